//! Turning a placement into an assignment: what it carries (secrets
//! joined on the way to the worker only, the artifacts of the jobs it
//! needs, a try's patch) and its attempt written. Until the attempt exists
//! the job is only taken in memory, so a failed write puts it back.

use super::{Hub, MAX_FETCH_FILES, MAX_FETCH_LIST_BYTES};
use crate::store::{QueuedJobInfo, StoreError};

/// Steps, values to mask, notices and the attempt of a job being assigned.
pub(super) type PreparedAssignment = (
    Vec<herd_proto::StepSpec>,
    Vec<String>,
    Vec<String>,
    Option<crate::store::AttemptRow>,
);

impl Hub {
    /// What an assignment carries (secrets joined, artifacts listed, the
    /// try patch), and its attempt written. Nothing of the job changes in
    /// memory here.
    pub(super) async fn prepare(
        &self,
        job: &QueuedJobInfo,
        worker: &str,
    ) -> Result<PreparedAssignment, StoreError> {
        let names: Vec<String> = job.spec.steps.iter().map(|s| s.name.clone()).collect();
        let mut steps = job.spec.steps.clone();
        let mut mask = Vec::new();
        let granted = &job.spec.secrets;
        if !granted.is_empty() || !job.spec.withheld.is_empty() {
            // Values join here, on the way to the worker only; a
            // withheld secret is empty.
            let secrets = self.settings.secrets.load();
            for s in &mut steps {
                for v in s.env.values_mut() {
                    *v = herd_core::secret_ref::fill_secrets(v, |name| {
                        if !granted.iter().any(|g| g == name) {
                            return Some(String::new());
                        }
                        let value = secrets.get(name)?.value.0.clone();
                        mask.push(value.clone());
                        Some(value)
                    });
                }
            }
        }
        // Credentials in the repository's URL are masked like secrets
        // (git may quote the URL in the checkout's log).
        for s in &steps {
            if let herd_proto::StepAction::Checkout { repo, .. } = &s.action {
                mask.extend(herd_core::redact::url_credentials(repo));
            }
        }
        let mut notices: Vec<String> = job
            .spec
            .withheld
            .iter()
            .map(|w| {
                format!(
                    "secret `{}` is withheld from this job: {}",
                    w.secret, w.reason
                )
            })
            .collect();
        // The artifacts of the jobs it needs join here: they exist now.
        for s in &mut steps {
            if let herd_proto::StepAction::Fetch { from, files } = &mut s.action {
                let rows = self.store.artifacts_from(job.build_id, from).await?;
                // The list must fit in the assignment's frame with the
                // rest: bounded in count and in bytes.
                let mut bytes = 0usize;
                let fit = rows
                    .iter()
                    .take(MAX_FETCH_FILES)
                    .take_while(|r| {
                        bytes += r.path.len() + r.job.len() + 160;
                        bytes <= MAX_FETCH_LIST_BYTES
                    })
                    .count();
                if fit < rows.len() {
                    notices.push(format!(
                        "the jobs it needs kept {} artifacts; only the first {fit} are fetched (the list of one job is bounded)",
                        rows.len()
                    ));
                }
                *files = rows
                    .into_iter()
                    .take(fit)
                    .map(|r| herd_proto::ArtifactFile {
                        id: r.id,
                        job: r.job,
                        path: r.path,
                        size: r.size.max(0) as u64,
                        sha256: r.sha256,
                    })
                    .collect();
            }
        }
        if job.spec.patched {
            let patch = self.store.build_patch(job.build_id).await?;
            for s in &mut steps {
                if let herd_proto::StepAction::Checkout { patch: p, .. } = &mut s.action {
                    p.clone_from(&patch);
                }
            }
        }
        let attempt = self
            .store
            .create_attempt(job.job_id, worker, &names)
            .await?;
        Ok((steps, mask, notices, attempt))
    }

    /// Placements that were not made: back in the queue, their slots free.
    pub(super) fn unplace(&self, placements: impl Iterator<Item = (QueuedJobInfo, String, u64)>) {
        let mut st = self.lock();
        for (job, worker, conn_id) in placements {
            if let Some(w) = st.workers.get_mut(&worker) {
                if w.conn_id == conn_id {
                    w.reserved = w.reserved.saturating_sub(1);
                }
            }
            if !job.spec.needs.is_empty() {
                st.released.insert(job.job_id);
            }
            st.queue.push_back(job);
        }
    }
}
