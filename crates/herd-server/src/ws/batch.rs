//! What the worker sends, taken in batches: each frame is checked against
//! its attempt's cursor (the next sequence number, the next byte of each
//! step's log, the log limit), and a batch is stored in one transaction
//! before anything is acknowledged.

use crate::store::{Applied, AttemptEvents, StoreError, StoredEvent, LOG_ZSTD_LEVEL};
use crate::App;
use axum::extract::ws::Message;
use herd_core::state::RunState;
use herd_proto::{AttemptId, JobEvent, JobResult, LogFrame, ResumeAttempt, ServerMsg, WorkerMsg};
use std::collections::HashMap;
use std::sync::Arc;

/// Frames taken into one store transaction at most, and bytes of output.
pub(super) const BATCH_FRAMES: usize = 512;
pub(super) const BATCH_BYTES: usize = 8 * 1024 * 1024;

/// What the server knows of one attempt the connection carries.
struct Cursor {
    last_seq: u64,
    /// How many steps the attempt has: events of any other step are refused.
    steps: u32,
    step_sizes: HashMap<u32, u64>,
    /// Bytes of output of all its steps.
    total: u64,
    /// Its `finished` event came: it takes nothing more.
    finished: bool,
    builder_key: Option<String>,
}

#[derive(Default)]
pub(super) struct Batch {
    /// Per attempt, in arrival order: the newest seq and the new events.
    attempts: Vec<(AttemptId, u64, Vec<StoredEvent>)>,
    /// Attempts that only got duplicates: acknowledge again.
    reack: Vec<AttemptId>,
    /// Attempts the worker reported on that it does not hold.
    unknown: Vec<AttemptId>,
    probe_results: Vec<herd_proto::ProbeResult>,
    /// Requests of split-step shards, answered after the events are
    /// stored; with why, when one is refused here already.
    splits: Vec<(herd_proto::SplitRequest, Option<String>)>,
    /// The worker said it stops now: its attempts are dead.
    stopping: bool,
    /// The last disk report of the batch (only the last one counts).
    disk: Option<herd_proto::DiskReport>,
    pub bytes: usize,
    pub frames: usize,
}

impl Batch {
    fn push(&mut self, attempt: AttemptId, seq: u64, ev: StoredEvent) {
        match self.attempts.iter_mut().find(|(a, _, _)| *a == attempt) {
            Some(entry) => {
                entry.1 = seq;
                entry.2.push(ev);
            }
            None => self.attempts.push((attempt, seq, vec![ev])),
        }
    }

    /// Whether it carries events to store (a lone heartbeat does not).
    pub fn has_events(&self) -> bool {
        !self.attempts.is_empty()
    }
}

/// Whether the connection goes on after a frame.
pub(super) enum Flow {
    Continue,
    Stop(String),
}

/// The connection's account of its attempts.
pub(super) struct Ledger {
    app: Arc<App>,
    name: String,
    conn_id: u64,
    cursors: HashMap<AttemptId, Cursor>,
    /// Reused for every log chunk of the connection (a context per chunk
    /// costs more than the chunk); made at the first chunk, so that an
    /// idle worker's connection holds none.
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Test lists arriving in parts.
    uploads: super::uploads::Uploads,
}

/// `data` compressed with the connection's compressor, made on first use.
fn compress(
    compressor: &mut Option<zstd::bulk::Compressor<'static>>,
    data: &[u8],
) -> std::io::Result<Vec<u8>> {
    let compressor = match compressor {
        Some(c) => c,
        None => compressor.insert(zstd::bulk::Compressor::new(LOG_ZSTD_LEVEL)?),
    };
    compressor.compress(data)
}

impl Ledger {
    pub fn new(app: Arc<App>, name: String, conn_id: u64) -> Ledger {
        Ledger {
            app,
            name,
            conn_id,
            cursors: HashMap::new(),
            compressor: None,
            uploads: Default::default(),
        }
    }

    /// Attempts resumed at the welcome: their cursors start where the store is.
    pub async fn resume(&mut self, resume: &[ResumeAttempt]) -> Result<(), StoreError> {
        for r in resume {
            let step_sizes = self.app.hub.store.step_sizes(r.attempt).await?;
            self.cursors.insert(
                r.attempt,
                Cursor {
                    last_seq: r.acked_seq,
                    steps: step_sizes.len() as u32,
                    total: step_sizes.values().sum(),
                    step_sizes,
                    finished: false,
                    builder_key: None,
                },
            );
        }
        Ok(())
    }

    /// A new attempt given to this worker: its events start at 1.
    pub fn assigned(&mut self, a: &herd_proto::Assignment) {
        self.cursors.insert(
            a.attempt,
            Cursor {
                last_seq: 0,
                steps: a.steps.len() as u32,
                step_sizes: HashMap::new(),
                total: 0,
                finished: false,
                builder_key: Some(format!("{}/{}", a.project, a.builder)),
            },
        );
    }

    /// Takes one frame into the batch, checking it against the attempt's cursor.
    pub fn take(&mut self, msg: Message, batch: &mut Batch) -> Flow {
        batch.frames += 1;
        match msg {
            Message::Text(text) => match WorkerMsg::decode(&text) {
                Err(e) => Flow::Stop(format!("malformed message: {e}")),
                Ok(WorkerMsg::Hello(_)) => Flow::Stop("a second hello on one connection".into()),
                Ok(WorkerMsg::Heartbeat) => Flow::Continue,
                Ok(WorkerMsg::Draining) => {
                    self.app.hub.set_draining(&self.name, true);
                    Flow::Continue
                }
                Ok(WorkerMsg::Stopping) => {
                    batch.stopping = true;
                    Flow::Continue
                }
                Ok(WorkerMsg::Disk(report)) => {
                    batch.disk = Some(report);
                    Flow::Continue
                }
                Ok(WorkerMsg::ProbeResults { results }) => {
                    batch.probe_results.extend(results);
                    Flow::Continue
                }
                Ok(WorkerMsg::Split(mut req)) => {
                    let mut refused = None;
                    if let Some(parts) = req.list_parts.take() {
                        match self.uploads.take(req.attempt, req.step, parts) {
                            Ok(list) => req.list = list,
                            Err(why) => refused = Some(why),
                        }
                    }
                    batch.splits.push((req, refused));
                    Flow::Continue
                }
                Ok(WorkerMsg::SplitList { attempt, step, ids }) => {
                    // Only for an attempt this connection carries.
                    if self.cursors.contains_key(&attempt) {
                        self.uploads.part(attempt, step, ids);
                    }
                    Flow::Continue
                }
                Ok(WorkerMsg::Event {
                    attempt,
                    seq,
                    event,
                }) => {
                    let stored = match event {
                        JobEvent::StepStarted { step } => StoredEvent::StepStarted { step },
                        JobEvent::StepFinished {
                            step,
                            status,
                            exit_code,
                            message,
                            ..
                        } => StoredEvent::StepFinished {
                            step,
                            status,
                            exit_code,
                            message,
                        },
                        JobEvent::Finished { result, error } => StoredEvent::Finished {
                            result: match result {
                                JobResult::Success => RunState::Success,
                                JobResult::Failure => RunState::Failure,
                                JobResult::Error => RunState::Error,
                                JobResult::Cancelled => RunState::Cancelled,
                            },
                            error,
                        },
                    };
                    self.accept(batch, attempt, seq, None, stored)
                }
            },
            Message::Binary(bytes) => match LogFrame::decode(&bytes) {
                Err(e) => Flow::Stop(e.to_string()),
                Ok(frame) => {
                    let compressed = match compress(&mut self.compressor, &frame.data) {
                        Ok(c) => c,
                        Err(e) => return Flow::Stop(format!("could not compress output: {e}")),
                    };
                    batch.bytes += frame.data.len();
                    let ev = StoredEvent::Log {
                        step: frame.step,
                        offset: frame.offset,
                        len: frame.data.len() as u64,
                        compressed,
                    };
                    self.accept(
                        batch,
                        frame.attempt,
                        frame.seq,
                        Some((frame.step, frame.offset, frame.data.len() as u64)),
                        ev,
                    )
                }
            },
            Message::Ping(_) | Message::Pong(_) => Flow::Continue,
            Message::Close(_) => Flow::Stop("worker closed the connection".into()),
        }
    }

    fn accept(
        &mut self,
        batch: &mut Batch,
        attempt: AttemptId,
        seq: u64,
        log: Option<(u32, u64, u64)>,
        ev: StoredEvent,
    ) -> Flow {
        let Some(cursor) = self.cursors.get_mut(&attempt) else {
            if !batch.unknown.contains(&attempt) {
                batch.unknown.push(attempt);
            }
            return Flow::Continue;
        };
        if seq <= cursor.last_seq {
            if !batch.reack.contains(&attempt) {
                batch.reack.push(attempt);
            }
            return Flow::Continue;
        }
        if seq != cursor.last_seq + 1 {
            return Flow::Stop(format!(
                "attempt {attempt}: event {seq} arrived after {}: events must come in order without gaps",
                cursor.last_seq
            ));
        }
        // Every event is fenced, not only every batch: after `finished` an
        // attempt takes nothing more, and only its own steps exist.
        if cursor.finished {
            return Flow::Stop(format!(
                "attempt {attempt}: event {seq} after the attempt finished"
            ));
        }
        let step = match &ev {
            StoredEvent::StepStarted { step }
            | StoredEvent::StepFinished { step, .. }
            | StoredEvent::Log { step, .. } => Some(*step),
            StoredEvent::Finished { .. } => None,
        };
        if let Some(step) = step.filter(|s| *s >= cursor.steps) {
            return Flow::Stop(format!(
                "attempt {attempt}: step {step} does not exist (it has {} steps)",
                cursor.steps
            ));
        }
        if let Some((step, offset, len)) = log {
            let size = cursor.step_sizes.entry(step).or_insert(0);
            if offset != *size {
                return Flow::Stop(format!(
                    "attempt {attempt} step {step}: output at byte {offset}, expected {size}"
                ));
            }
            // A worker that ignores the limit it was given is cut off
            // rather than allowed to fill the disk.
            let settings = &self.app.hub.settings;
            let limit = settings.max_step_log + herd_proto::STEP_LOG_NOTICE_ROOM;
            if *size + len > limit {
                return Flow::Stop(format!(
                    "attempt {attempt} step {step}: output past the limit of {limit} bytes"
                ));
            }
            let attempt_limit = settings
                .limits
                .max_attempt_log
                .saturating_add(herd_proto::STEP_LOG_NOTICE_ROOM * u64::from(cursor.steps));
            if cursor.total + len > attempt_limit {
                return Flow::Stop(format!(
                    "attempt {attempt}: output past the limit of {attempt_limit} bytes for all its steps"
                ));
            }
            *size += len;
            cursor.total += len;
        }
        if matches!(ev, StoredEvent::Finished { .. }) {
            cursor.finished = true;
        }
        cursor.last_seq = seq;
        batch.push(attempt, seq, ev);
        Flow::Continue
    }

    /// Stores the batch, and returns the replies: acknowledgements, and
    /// abandon orders for attempts that are not this worker's.
    /// The second value is true when the connection must end so that the
    /// worker resumes from what the store has (see [`Applied::Behind`]).
    pub async fn flush(&mut self, batch: Batch) -> Result<(Vec<ServerMsg>, bool), StoreError> {
        let mut replies = Vec::new();
        let mut resync = false;
        for attempt in batch.unknown {
            tracing::warn!(
                "refused a report of worker {} for attempt {attempt}, which is not its own",
                self.name
            );
            replies.push(ServerMsg::Abandon {
                attempt,
                reason: "this attempt is not yours (moved to another worker or finished)".into(),
            });
        }
        let hub = Arc::clone(&self.app.hub);
        if !batch.probe_results.is_empty() {
            hub.probe_results(&self.name, self.conn_id, batch.probe_results)
                .await?;
        }
        if !batch.attempts.is_empty() {
            let events: Vec<AttemptEvents> = batch
                .attempts
                .into_iter()
                .map(|(attempt, last_seq, events)| AttemptEvents {
                    attempt,
                    worker: self.name.clone(),
                    last_seq,
                    events,
                })
                .collect();
            let outcomes = hub.store.apply_events(&events).await?;
            for (a, outcome) in events.iter().zip(outcomes) {
                let builder_key = self
                    .cursors
                    .get(&a.attempt)
                    .and_then(|c| c.builder_key.clone());
                hub.applied(&self.name, a.attempt, &outcome, builder_key.as_deref());
                if let Applied::Stored {
                    finished: Some(f), ..
                } = &outcome
                {
                    tracing::info!(
                        build = f.build_id,
                        attempt = a.attempt,
                        job_id = f.job_id,
                        worker = %self.name,
                        build_state = f.build_state.as_str(),
                        "attempt {} ended; build {} is {}",
                        a.attempt,
                        f.build_id,
                        f.build_state.as_str()
                    );
                }
                match outcome {
                    Applied::Behind => {
                        // Our cursor is ahead of the store: start over from
                        // what the store has, through a new connection.
                        resync = true;
                    }
                    Applied::Fenced => {
                        self.cursors.remove(&a.attempt);
                        tracing::warn!(
                            "refused events of attempt {} from worker {}: the attempt is not live on it",
                            a.attempt,
                            self.name
                        );
                        replies.push(ServerMsg::Abandon {
                            attempt: a.attempt,
                            reason: "this attempt is no longer yours".into(),
                        });
                    }
                    Applied::Stored { finished } => {
                        replies.push(ServerMsg::Ack {
                            attempt: a.attempt,
                            seq: a.last_seq,
                        });
                        if finished.is_some() {
                            self.cursors.remove(&a.attempt);
                        }
                    }
                }
            }
            hub.changed();
        }
        for (req, refused) in batch.splits {
            let reply = match refused {
                Some(message) => herd_proto::SplitReply::Fail { message },
                // None: parked, answered on this connection when there is work.
                None => match hub.split_request(&self.name, &req).await? {
                    Some(reply) => reply,
                    None => continue,
                },
            };
            if let herd_proto::SplitReply::Fail { message } = &reply {
                tracing::warn!(
                    "split request of worker {} for attempt {} refused: {}",
                    self.name,
                    req.attempt,
                    message.lines().next().unwrap_or("")
                );
            }
            replies.push(ServerMsg::Split {
                attempt: req.attempt,
                step: req.step,
                req: req.req,
                reply,
            });
        }
        if let Some(disk) = batch.disk {
            hub.set_disk(&self.name, self.conn_id, disk).await?;
        }
        if batch.stopping {
            hub.stopping(&self.name, self.conn_id).await?;
            self.cursors.clear();
        }
        for attempt in batch.reack {
            if let Some(c) = self.cursors.get(&attempt) {
                if !replies
                    .iter()
                    .any(|r| matches!(r, ServerMsg::Ack { attempt: a, .. } if *a == attempt))
                {
                    replies.push(ServerMsg::Ack {
                        attempt,
                        seq: c.last_seq,
                    });
                }
            }
        }
        Ok((replies, resync))
    }
}
