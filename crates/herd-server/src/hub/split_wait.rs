//! Shards of a split with nothing to do now wait on the server, not on a
//! timer: the answer goes out as soon as the split changes (a batch
//! reported, a batch lost), so a shard never idles a polling interval at
//! the end of a suite, and a waiting shard costs no requests.
//!
//! A parked shard is re-answered when its split changes here or on another
//! server sharing the database (`PeerMsg::Split`), and at the latest after
//! [`SPLIT_PARK_MAX`]: the store stays the source of truth, a change only
//! says when to look. At most one park per worker and attempt: a worker
//! cannot make the server hold more than its live attempts.

use super::peers::PeerMsg;
use super::{AttemptId, Hub, Outbound};
use crate::store::{SplitAnswer, StoreError, SPLIT_WAIT_MS};
use herd_proto::{ServerMsg, SplitReply, SplitRequest};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Longest a shard waits on the server before it is answered anyway (well
/// under the worker's resend interval).
pub const SPLIT_PARK_MAX: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct SplitWaits {
    /// Per split with parked shards: bumped when it changes.
    splits: HashMap<i64, watch::Sender<u64>>,
    /// The current park of each worker's attempt: a newer one supersedes it.
    parked: HashMap<(String, AttemptId), u64>,
    next_park: u64,
}

impl Hub {
    fn split_waits(&self) -> std::sync::MutexGuard<'_, SplitWaits> {
        self.split_waits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A shard of a split step asks for work (see `Store::split_request`).
    /// None: nothing for it now; it is parked and its answer goes out on
    /// its worker's connection when there is one.
    pub async fn split_request(
        self: &Arc<Self>,
        worker: &str,
        req: &SplitRequest,
    ) -> Result<Option<SplitReply>, StoreError> {
        let answer = self.answer_split(worker, req).await?;
        match (answer.reply, answer.split) {
            (SplitReply::Wait { .. }, Some(split)) => {
                // What it carried is in the split now: a parked request
                // holds no list and no report.
                let bare = SplitRequest {
                    attempt: req.attempt,
                    step: req.step,
                    req: req.req,
                    list: None,
                    list_digest: None,
                    list_parts: None,
                    done: None,
                    list_secs: None,
                };
                self.park(worker, split, bare);
                Ok(None)
            }
            (reply, _) => Ok(Some(reply)),
        }
    }

    async fn answer_split(
        &self,
        worker: &str,
        req: &SplitRequest,
    ) -> Result<SplitAnswer, StoreError> {
        let started = std::time::Instant::now();
        let answer = self.store.split_request(worker, req).await?;
        tracing::debug!(worker, attempt = req.attempt, reply = reply_kind(&answer.reply), elapsed = ?started.elapsed(), "split request answered");
        if !answer.skipped.is_empty() {
            self.lock()
                .queue
                .retain(|j| !answer.skipped.contains(&j.job_id));
        }
        if !matches!(answer.reply, SplitReply::Wait { .. }) {
            self.changed();
        }
        if let (true, Some(split)) = (answer.wakes, answer.split) {
            self.split_changed_here(Some(split));
            self.tell_peers(PeerMsg::Split { split: Some(split) });
        }
        Ok(answer)
    }

    /// Split `split` changed (here, or on another server): its parked
    /// shards ask again. None: any split may have (an attempt ended or was
    /// lost, and a batch it held went back to its queue).
    pub(super) fn split_changed_here(&self, split: Option<i64>) {
        let waits = self.split_waits();
        for (id, tx) in &waits.splits {
            if split.is_none_or(|s| s == *id) {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// An attempt ended or was lost: a batch it held may be back in its
    /// split's queue for a parked shard.
    pub(super) fn attempt_ended_for_splits(&self, tell_peers: bool) {
        // Nothing parked, nothing in the map: no cost.
        self.split_changed_here(None);
        if tell_peers {
            self.tell_peers(PeerMsg::Split { split: None });
        }
    }

    fn park(self: &Arc<Self>, worker: &str, split: i64, req: SplitRequest) {
        let key = (worker.to_string(), req.attempt);
        let (mut changed, token) = {
            let mut w = self.split_waits();
            w.next_park += 1;
            let token = w.next_park;
            w.parked.insert(key.clone(), token);
            let rx = w
                .splits
                .entry(split)
                .or_insert_with(|| watch::channel(0).0)
                .subscribe();
            (rx, token)
        };
        let hub = Arc::clone(self);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + SPLIT_PARK_MAX;
            // Asked again first: a change between the first answer and
            // the subscription is not missed.
            let reply = loop {
                if hub.split_waits().parked.get(&key) != Some(&token) {
                    break None; // superseded by a newer request of this attempt
                }
                let reply = match hub.answer_split(&key.0, &req).await {
                    Ok(a) => a.reply,
                    Err(e) => {
                        tracing::warn!(
                            "cannot answer the split request of worker {} for attempt {}: {e}",
                            key.0,
                            req.attempt
                        );
                        // The worker asks again after the wait.
                        break Some(SplitReply::Wait { ms: SPLIT_WAIT_MS });
                    }
                };
                if !matches!(reply, SplitReply::Wait { .. })
                    || tokio::time::Instant::now() >= deadline
                {
                    break Some(reply);
                }
                let _ = tokio::time::timeout_at(deadline, changed.changed()).await;
            };
            drop(changed);
            hub.unpark(&key, token, split);
            if let Some(reply) = reply {
                hub.send_to_worker(
                    &key.0,
                    ServerMsg::Split {
                        attempt: req.attempt,
                        step: req.step,
                        req: req.req,
                        reply,
                    },
                );
            }
        });
    }

    fn unpark(&self, key: &(String, AttemptId), token: u64, split: i64) {
        let mut w = self.split_waits();
        if w.parked.get(key) == Some(&token) {
            w.parked.remove(key);
        }
        if w.splits
            .get(&split)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            w.splits.remove(&split);
        }
    }

    /// Sends on the worker's current connection, if it has one here (a
    /// worker that reconnected gets it on its new connection: answers are
    /// matched by attempt and request number).
    fn send_to_worker(&self, worker: &str, msg: ServerMsg) {
        if let Some(w) = self.lock().workers.get(worker) {
            let _ = w.tx.send(Outbound::send(msg));
        }
    }

    /// Shards parked now (for tests and metrics).
    pub fn parked_shards(&self) -> usize {
        self.split_waits().parked.len()
    }
}

/// A reply's kind as the protocol names it, for the log.
fn reply_kind(reply: &SplitReply) -> &'static str {
    match reply {
        SplitReply::Batch { .. } => "batch",
        SplitReply::Wait { .. } => "wait",
        SplitReply::Done { .. } => "done",
        SplitReply::Fail { .. } => "fail",
        SplitReply::SendList => "send_list",
    }
}
