//! Servers sharing one PostgreSQL database: what the hub tells the others
//! ([`PeerMsg`], JSON in a NOTIFY payload) and does with what they tell it.
//!
//! The store stays the source of truth: a message only says where to look.
//! Messages carry a format version; a server reads the words of the
//! release before versions (`jobs 12`, `paused NAME` …) too, so that a
//! rolling upgrade loses nothing, and ignores (with a note in its log)
//! what it cannot read.

use super::{AttemptId, Hub, Orphan, Outbound};
use herd_proto::ServerMsg;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The format of the peer messages this server writes.
pub const PEER_FORMAT: u64 = 1;

/// What one server tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PeerMsg {
    /// Readers (pages, long polls) should look again.
    Changed,
    /// Jobs were queued: of this build, or (None) look at the whole queue.
    Jobs { build: Option<i64> },
    /// The set of wanted probes grew.
    Probes,
    /// A worker was paused or resumed.
    Paused { worker: String },
    /// An attempt of a worker connected elsewhere is to be cancelled.
    Cancel { attempt: AttemptId, worker: String },
    /// A worker's connection is to be closed (revoked, removed).
    Close { worker: String, reason: String },
    /// The labels the server gives a worker changed.
    Labels { worker: String },
    /// A split changed (None: any may have): its shards waiting here ask again.
    Split { split: Option<i64> },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u64,
    #[serde(flatten)]
    msg: PeerMsg,
}

impl PeerMsg {
    pub fn encode(&self) -> String {
        serde_json::to_string(&Envelope {
            v: PEER_FORMAT,
            msg: self.clone(),
        })
        .unwrap_or_else(|_| r#"{"v":1,"kind":"changed"}"#.to_string())
    }

    /// A message in this format or in the words of the release before.
    pub fn decode(text: &str) -> Result<PeerMsg, String> {
        if text.starts_with('{') {
            let e: Envelope = serde_json::from_str(text).map_err(|e| e.to_string())?;
            if e.v > PEER_FORMAT {
                return Err(format!(
                    "format {} is newer than this server's {PEER_FORMAT}",
                    e.v
                ));
            }
            return Ok(e.msg);
        }
        Self::decode_words(text)
    }

    /// `changed`, `jobs [BUILD]`, `probes`, `paused NAME`,
    /// `cancel ATTEMPT WORKER`, `close NAME REASON`.
    fn decode_words(text: &str) -> Result<PeerMsg, String> {
        if let Some(rest) = text.strip_prefix("close ") {
            let (worker, reason) = rest.split_once(' ').unwrap_or((rest, "closed"));
            return Ok(PeerMsg::Close {
                worker: worker.to_string(),
                reason: reason.to_string(),
            });
        }
        let mut words = text.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some("changed"), _, _) => Ok(PeerMsg::Changed),
            (Some("jobs"), build, _) => Ok(PeerMsg::Jobs {
                build: build.and_then(|b| b.parse().ok()),
            }),
            (Some("probes"), _, _) => Ok(PeerMsg::Probes),
            (Some("paused"), Some(worker), _) => Ok(PeerMsg::Paused {
                worker: worker.to_string(),
            }),
            (Some("cancel"), Some(attempt), Some(worker)) => Ok(PeerMsg::Cancel {
                attempt: attempt
                    .parse()
                    .map_err(|_| format!("bad attempt `{attempt}`"))?,
                worker: worker.to_string(),
            }),
            _ => Err("unknown message".to_string()),
        }
    }
}

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
    pub fn tell_peers(&self, message: PeerMsg) {
        if let Some(tx) = &self.peers {
            let _ = tx.send(message);
        }
    }

    /// The outgoing messages, for the task that sends them (once).
    pub fn take_peer_outbox(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<PeerMsg>> {
        self.peer_outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// What another server said.
    pub async fn on_peer_message(&self, text: &str) {
        let message = match PeerMsg::decode(text) {
            Ok(m) => m,
            Err(why) => {
                tracing::debug!("ignored a message from another server ({why}): {text}");
                return;
            }
        };
        let result = match &message {
            PeerMsg::Close { worker, reason } => {
                self.close_here(worker, reason);
                Ok(())
            }
            PeerMsg::Changed => {
                self.changed_here();
                Ok(())
            }
            PeerMsg::Split { split } => {
                self.split_changed_here(*split);
                Ok(())
            }
            PeerMsg::Jobs { build: Some(build) } => self.add_queued_of_build(*build).await,
            PeerMsg::Jobs { build: None } => self.reload_queue().await,
            PeerMsg::Probes => self.reload_probes().await,
            PeerMsg::Paused { worker } => self.reload_paused(worker).await,
            PeerMsg::Cancel { attempt, worker } => {
                self.cancel_here(*attempt, worker);
                Ok(())
            }
            PeerMsg::Labels { worker } => self.reload_server_labels(worker).await,
        };
        if let Err(e) = result {
            tracing::warn!("could not act on {message:?} from another server: {e}");
        }
    }

    /// The queue as the store has it (jobs queued through other servers
    /// join; jobs they claimed leave).
    pub async fn reload_queue(&self) -> Result<(), crate::store::StoreError> {
        let queue = self.store.queued_jobs(None).await?;
        self.lock().queue = queue.into();
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
                let _ = w.tx.send(Outbound::send(ServerMsg::Cancel {
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

#[cfg(test)]
mod tests {
    use super::PeerMsg;

    #[test]
    fn messages_round_trip_and_old_words_are_read() {
        let all = [
            PeerMsg::Changed,
            PeerMsg::Jobs { build: Some(12) },
            PeerMsg::Jobs { build: None },
            PeerMsg::Probes,
            PeerMsg::Paused {
                worker: "w1".into(),
            },
            PeerMsg::Cancel {
                attempt: 7,
                worker: "w 2".into(),
            },
            PeerMsg::Close {
                worker: "w3".into(),
                reason: "its token was revoked".into(),
            },
            PeerMsg::Labels {
                worker: "w4".into(),
            },
        ];
        for m in &all {
            let text = m.encode();
            assert!(text.contains("\"v\":1"), "{text}");
            assert_eq!(&PeerMsg::decode(&text).unwrap(), m);
        }
        // The words of the release before versions.
        assert_eq!(PeerMsg::decode("jobs 12").unwrap(), all[1]);
        assert_eq!(PeerMsg::decode("jobs").unwrap(), all[2]);
        assert_eq!(
            PeerMsg::decode("close w3 its token was revoked").unwrap(),
            all[6]
        );
        assert_eq!(
            PeerMsg::decode("cancel 7 w1").unwrap(),
            PeerMsg::Cancel {
                attempt: 7,
                worker: "w1".into()
            }
        );
        assert!(PeerMsg::decode("cancel x w1").is_err());
        assert!(PeerMsg::decode("bogus").is_err());
        assert!(PeerMsg::decode(r#"{"v":2,"kind":"changed"}"#).is_err());
        assert!(PeerMsg::decode(r#"{"v":1,"kind":"unheard_of"}"#).is_err());
    }
}
