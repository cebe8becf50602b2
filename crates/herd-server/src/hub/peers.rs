//! Servers sharing one PostgreSQL database: what the hub tells the others
//! and does with what they tell it. Messages are words: `changed` (readers
//! should look again), `jobs` (new queued jobs), `probes` (new wanted
//! probes), `paused NAME`, `cancel ATTEMPT WORKER`, `close NAME REASON`
//! (a revoked or removed worker); `jobs BUILD` names the build whose jobs
//! were queued.
//!
//! The store stays the source of truth: a message only says where to look.

use super::{AttemptId, Hub, Orphan, Outbound};
use herd_proto::ServerMsg;
use std::time::{Duration, Instant};

/// How often a server refreshes its row in `servers`.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A server not heard of for this long is dead; another takes over.
pub const DEAD_AFTER: Duration = Duration::from_secs(10);

/// Servers seen since this time (ms since the epoch) count as alive.
pub fn alive_since() -> i64 {
    crate::store::now_ms() - DEAD_AFTER.as_millis() as i64
}

impl Hub {
    /// Queues a message for the other servers (nothing when alone).
    pub fn tell_peers(&self, message: &str) {
        if let Some(tx) = &self.peers {
            let _ = tx.send(message.to_string());
        }
    }

    /// The outgoing messages, for the task that sends them (once).
    pub fn take_peer_outbox(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        self.peer_outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// What another server said.
    pub async fn on_peer_message(&self, message: &str) {
        if let Some(rest) = message.strip_prefix("close ") {
            let (name, reason) = rest.split_once(' ').unwrap_or((rest, "closed"));
            self.close_here(name, reason);
            return;
        }
        let mut words = message.split(' ');
        let result = match (words.next(), words.next(), words.next()) {
            (Some("changed"), _, _) => {
                self.changed_here();
                Ok(())
            }
            (Some("jobs"), Some(build), _) => match build.parse::<i64>() {
                Ok(build) => self.add_queued_of_build(build).await,
                Err(_) => self.reload_queue().await,
            },
            (Some("jobs"), None, _) => self.reload_queue().await,
            (Some("probes"), _, _) => self.reload_probes().await,
            (Some("paused"), Some(name), _) => self.reload_paused(name).await,
            (Some("cancel"), Some(attempt), Some(worker)) => {
                if let Ok(attempt) = attempt.parse::<AttemptId>() {
                    self.cancel_here(attempt, worker);
                }
                Ok(())
            }
            _ => {
                tracing::debug!("ignored a message from another server: {message}");
                Ok(())
            }
        };
        if let Err(e) = result {
            tracing::warn!("could not act on `{message}` from another server: {e}");
        }
    }

    /// The queue as the store has it (jobs queued through other servers
    /// join; jobs they claimed leave).
    pub async fn reload_queue(&self) -> Result<(), crate::store::StoreError> {
        let queue = self.store.queued_jobs(None).await?;
        self.lock().queue = queue;
        self.wake();
        self.changed_here();
        Ok(())
    }

    /// Jobs another server queued for a build join this server's queue.
    async fn add_queued_of_build(&self, build: i64) -> Result<(), crate::store::StoreError> {
        let jobs = self.store.queued_jobs_of_build(build).await?;
        {
            let mut st = self.lock();
            let known: std::collections::HashSet<i64> = st.queue.iter().map(|j| j.job_id).collect();
            st.queue
                .extend(jobs.into_iter().filter(|j| !known.contains(&j.job_id)));
        }
        self.wake();
        self.changed_here();
        Ok(())
    }

    async fn reload_paused(&self, name: &str) -> Result<(), crate::store::StoreError> {
        let paused = self.store.worker(name).await?.is_some_and(|w| w.paused);
        if let Some(w) = self.lock().workers.get_mut(name) {
            w.paused = paused;
        }
        self.wake();
        Ok(())
    }

    async fn reload_probes(&self) -> Result<(), crate::store::StoreError> {
        let wanted = self.store.wanted_probes().await?;
        self.apply_probe_set(wanted.into_iter().collect());
        Ok(())
    }

    /// Cancels an attempt of a worker connected here.
    fn cancel_here(&self, attempt: AttemptId, worker: &str) {
        let st = self.lock();
        if let Some(w) = st.workers.get(worker) {
            if w.running.contains(&attempt) {
                let _ = w.tx.send(Outbound::Send(ServerMsg::Cancel {
                    attempt,
                    reason: "build cancelled".into(),
                }));
            }
        }
    }

    /// A dead server's workers' live attempts: they wait here for their
    /// workers to come back (to any server) before they move. The server
    /// was silent for DEAD_AFTER already, so its workers had that long to
    /// find another; they get as long again.
    pub fn adopt_orphans(&self, attempts: Vec<(AttemptId, String)>) {
        let deadline = Instant::now() + DEAD_AFTER;
        let mut st = self.lock();
        for (attempt, worker) in attempts {
            st.orphans.insert(attempt, Orphan { worker, deadline });
        }
    }
}
