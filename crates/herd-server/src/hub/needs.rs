//! Jobs with `needs:` wait in the queue, held back from the scheduler,
//! until the jobs they need have ended; then they are released, or ended
//! `skipped` with the reason. The decision is `herd_core::needs::verdict`
//! on the build's job states as stored (so it holds across servers and
//! restarts); the hub only remembers which jobs it released.

use super::Hub;
use crate::store::StoreError;
use herd_core::needs::{verdict, Verdict};
use std::collections::hash_map::Entry;
use std::collections::HashMap;

impl Hub {
    /// Whether any queued job still waits for the jobs it needs.
    pub(super) fn has_held(&self) -> bool {
        let st = self.lock();
        st.queue
            .iter()
            .any(|j| !j.spec.needs.is_empty() && !st.released.contains(&j.job_id))
    }

    /// Whether the scheduler may place this queued job now.
    pub(super) fn is_released(st: &super::HubState, j: &crate::store::QueuedJobInfo) -> bool {
        j.spec.needs.is_empty() || st.released.contains(&j.job_id)
    }

    /// Releases or skips the held jobs whose needs have all ended. Skips
    /// cascade (a skipped job's dependents are looked at again), bounded by
    /// the number of held jobs.
    pub(super) async fn gate_needs(&self) -> Result<(), StoreError> {
        let mut changed = false;
        let mut rounds = 0;
        loop {
            let held: Vec<_> = {
                let st = self.lock();
                st.queue
                    .iter()
                    .filter(|j| !Self::is_released(&st, j))
                    .map(|j| (j.job_id, j.build_id, j.spec.needs.clone(), j.spec.run_if))
                    .collect()
            };
            rounds += 1;
            if held.is_empty() || rounds > held.len() + 1 {
                break;
            }
            let mut states = HashMap::new();
            let mut skipped_any = false;
            for (job, build, needs, run_if) in held {
                let of_build = match states.entry(build) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => e.insert(self.store.job_states(build).await?),
                };
                match verdict(&needs, run_if, of_build) {
                    Verdict::Wait => {}
                    Verdict::Run => {
                        self.lock().released.insert(job);
                        changed = true;
                    }
                    Verdict::Skip(why) => {
                        self.lock().queue.retain(|q| q.job_id != job);
                        self.store.skip_job(job, &why).await?;
                        states.remove(&build);
                        skipped_any = true;
                        changed = true;
                    }
                }
            }
            if !skipped_any {
                break;
            }
        }
        if changed {
            self.changed();
        }
        Ok(())
    }
}
