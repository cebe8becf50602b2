//! The worker endpoint: one WebSocket per worker, authenticated by the
//! worker's token, speaking the protocol of `herd-proto`.
//!
//! Events arrive numbered per attempt. A batch of frames is stored in one
//! transaction and only then acknowledged, so a worker never drops output the
//! server has not stored; duplicates (a resend after a reconnect) are
//! recognised by their sequence numbers and acknowledged again.

use crate::access::{refusal, MaybeCaller};
use crate::auth::Principal;
use crate::hub::Outbound;
use crate::store::{Applied, AttemptEvents, StoredEvent, LOG_ZSTD_LEVEL};
use crate::App;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{FutureExt, SinkExt, StreamExt};
use herd_core::state::RunState;
use herd_proto::{
    negotiate, AttemptId, JobEvent, JobResult, LogFrame, ServerMsg, Welcome, WorkerMsg,
    MAX_BINARY_FRAME, MAX_TEXT_FRAME, SUPPORTED_PROTOCOLS,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Frames taken into one store transaction at most, and bytes of output.
const BATCH_FRAMES: usize = 512;
const BATCH_BYTES: usize = 8 * 1024 * 1024;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const READ_BUFFER: usize = 16 * 1024;

/// The worker endpoint: a WebSocket speaking the worker protocol
/// (docs/protocol.md), for a worker token only.
#[utoipa::path(
    get,
    path = "/api/v1/worker/connect",
    tag = "workers",
    responses(
        (status = 101, description = "Switching to the worker protocol over a WebSocket"),
        (status = 400, description = "Not a WebSocket upgrade request", body = herd_api::ErrorBody),
        crate::api::openapi::TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn worker_endpoint(
    State(app): State<Arc<App>>,
    // Checked by the token guard: only a valid worker token gets here.
    MaybeCaller(caller): MaybeCaller,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let worker = match caller {
        Some(Principal::Worker {
            worker, expires_at, ..
        }) => Some((worker, expires_at)),
        _ => None,
    };
    let Some((worker, expires_at)) = worker else {
        tracing::warn!("worker connection refused: missing or invalid worker token");
        return refusal(
            axum::http::StatusCode::UNAUTHORIZED,
            "a valid worker token is required: create one with `herd token create --worker NAME`",
        );
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return refusal(
                axum::http::StatusCode::BAD_REQUEST,
                format!(
                    "this is the worker endpoint, a WebSocket: {}",
                    e.body_text()
                ),
            )
        }
    };
    ws.max_message_size(MAX_TEXT_FRAME.max(MAX_BINARY_FRAME))
        .max_frame_size(MAX_TEXT_FRAME.max(MAX_BINARY_FRAME))
        // Thousands of mostly idle workers: small buffers per connection
        // (the defaults are 128 KiB each way).
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            let compressor = match zstd::bulk::Compressor::new(LOG_ZSTD_LEVEL) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!("cannot create a zstd compressor: {e}");
                    return;
                }
            };
            let mut conn = Connection {
                app,
                name: worker,
                token_expires_at: expires_at,
                cursors: HashMap::new(),
                conn_id: 0,
                compressor,
            };
            conn.run(socket).await;
        })
}

/// What the server knows of one attempt the connection carries.
struct Cursor {
    last_seq: u64,
    step_sizes: HashMap<u32, u64>,
    builder_key: Option<String>,
}

struct Connection {
    app: Arc<App>,
    name: String,
    cursors: HashMap<AttemptId, Cursor>,
    conn_id: u64,
    /// When the worker's token expires (ms since the epoch): the
    /// connection ends then, as at a revocation.
    token_expires_at: Option<i64>,
    /// Reused for every log chunk of the connection (a context per chunk costs more than the chunk).
    compressor: zstd::bulk::Compressor<'static>,
}

#[derive(Default)]
struct Batch {
    /// Per attempt, in arrival order: the newest seq and the new events.
    attempts: Vec<(AttemptId, u64, Vec<StoredEvent>)>,
    /// Attempts that only got duplicates: acknowledge again.
    reack: Vec<AttemptId>,
    /// Attempts the worker reported on that it does not hold.
    unknown: Vec<AttemptId>,
    probe_results: Vec<herd_proto::ProbeResult>,
    /// Requests of split-step shards, answered after the events are stored.
    splits: Vec<herd_proto::SplitRequest>,
    /// The worker said it stops now: its attempts are dead.
    stopping: bool,
    bytes: usize,
    frames: usize,
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
}

enum Flow {
    Continue,
    Stop(String),
}

impl Connection {
    async fn run(&mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => match WorkerMsg::decode(&text) {
                Ok(WorkerMsg::Hello(h)) => h,
                Ok(_) => {
                    return refuse(&mut sink, &self.name, "the first message must be a hello").await
                }
                Err(e) => return refuse(&mut sink, &self.name, &e.to_string()).await,
            },
            Ok(Some(Ok(_))) => {
                return refuse(
                    &mut sink,
                    &self.name,
                    "the first message must be a hello in a text frame",
                )
                .await
            }
            Ok(Some(Err(e))) => return refuse(&mut sink, &self.name, &e.to_string()).await,
            Ok(None) => return,
            Err(_) => return refuse(&mut sink, &self.name, "no hello within 10 seconds").await,
        };
        let Some(protocol) = negotiate(&hello.protocols) else {
            let msg = format!(
                "no common protocol version: the worker speaks {:?}, this server {:?}; install the server's herd version on the worker",
                hello.protocols, SUPPORTED_PROTOCOLS
            );
            return refuse(&mut sink, &self.name, &msg).await;
        };
        if hello.slots == 0 || hello.slots > 1024 {
            return refuse(&mut sink, &self.name, "slots must be between 1 and 1024").await;
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let hub = Arc::clone(&self.app.hub);
        let admitted = match hub.admit(&self.name, &hello, tx).await {
            Ok(a) => a,
            Err(e) => return refuse(&mut sink, &self.name, &format!("server error: {e}")).await,
        };
        self.conn_id = admitted.conn_id;
        for r in &admitted.resume {
            let step_sizes = match hub.store.step_sizes(r.attempt).await {
                Ok(s) => s,
                Err(e) => {
                    return refuse(&mut sink, &self.name, &format!("server error: {e}")).await
                }
            };
            self.cursors.insert(
                r.attempt,
                Cursor {
                    last_seq: r.acked_seq,
                    step_sizes,
                    builder_key: None,
                },
            );
        }
        if herd_core::version::compare_versions(&hello.version, env!("CARGO_PKG_VERSION"))
            == std::cmp::Ordering::Less
        {
            tracing::warn!(
                "worker {} runs herd {}, older than this server's {}: upgrade it with `herd worker upgrade`",
                self.name,
                hello.version,
                env!("CARGO_PKG_VERSION")
            );
        }
        tracing::info!(
            "worker {} connected (protocol {protocol}, {} slots, resuming {:?})",
            self.name,
            hello.slots,
            admitted
                .resume
                .iter()
                .map(|r| r.attempt)
                .collect::<Vec<_>>()
        );
        let settings = hub.settings.clone();
        let mut outgoing = vec![ServerMsg::Welcome(Welcome {
            protocol,
            worker: self.name.clone(),
            heartbeat_interval_ms: settings.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: settings.heartbeat_timeout.as_millis() as u64,
            resume: admitted.resume.clone(),
            server_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        })];
        outgoing.extend(admitted.abandon.iter().map(|&attempt| ServerMsg::Abandon {
            attempt,
            reason: "this attempt is no longer yours".into(),
        }));
        for m in outgoing {
            if sink.send(Message::Text(m.encode().into())).await.is_err() {
                hub.disconnected(&self.name, admitted.conn_id, settings.reconnect_grace)
                    .await;
                return;
            }
        }

        let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Silence is noticed when it reaches the timeout, not at the next tick.
        let silence = tokio::time::sleep(settings.heartbeat_timeout);
        tokio::pin!(silence);
        let mut last_sent = Instant::now();
        let mut grace = settings.reconnect_grace;
        let expires_at = self.token_expires_at;
        let expiry = async move {
            match expires_at {
                Some(at) => {
                    let left = u64::try_from(at - crate::store::now_ms()).unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(left)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let end_reason: String = loop {
            tokio::select! {
                incoming = stream.next() => {
                    let mut batch = Batch::default();
                    let mut flow = match incoming {
                        None => break "connection closed".into(),
                        Some(Err(e)) => break format!("connection error: {e}"),
                        Some(Ok(m)) => self.take(m, &mut batch),
                    };
                    silence.as_mut().reset((Instant::now() + settings.heartbeat_timeout).into());
                    // Take whatever else is ready into the same transaction;
                    // a lone heartbeat need not look (it would cost a read).
                    let busy = !batch.attempts.is_empty();
                    while busy && matches!(flow, Flow::Continue) && batch.frames < BATCH_FRAMES && batch.bytes < BATCH_BYTES {
                        match stream.next().now_or_never() {
                            Some(Some(Ok(m))) => flow = self.take(m, &mut batch),
                            Some(Some(Err(e))) => flow = Flow::Stop(format!("connection error: {e}")),
                            Some(None) => flow = Flow::Stop("connection closed".into()),
                            None => break,
                        }
                    }
                    // Store (and acknowledge) what arrived intact even when the
                    // connection is about to end.
                    let replies = match self.flush(batch).await {
                        Ok((_, true)) => break "out of step with the store: reconnect to resume".into(),
                        Ok((r, false)) => r,
                        Err(e) => break format!("could not store events: {e}"),
                    };
                    let mut send_failed = false;
                    let mut replies = replies;
                    // Answer a worker's heartbeat with ours when ours is due
                    // within half an interval: one wake-up per interval for
                    // an idle worker instead of two.
                    if replies.is_empty() && last_sent.elapsed() >= settings.heartbeat_interval / 2 {
                        replies.push(ServerMsg::Heartbeat);
                    }
                    if !replies.is_empty() {
                        last_sent = Instant::now();
                        heartbeat.reset();
                    }
                    for m in replies {
                        if sink.send(Message::Text(m.encode().into())).await.is_err() {
                            send_failed = true;
                            break;
                        }
                    }
                    if let Flow::Stop(reason) = flow {
                        let _ = sink.send(Message::Text(ServerMsg::Error { message: reason.clone() }.encode().into())).await;
                        break reason;
                    }
                    if send_failed {
                        break "connection closed while sending".into();
                    }
                }
                out = rx.recv() => {
                    let msg = match out {
                        None => break "replaced".into(),
                        Some(Outbound::Close(reason)) => {
                            let _ = sink.send(Message::Text(ServerMsg::Error { message: reason.clone() }.encode().into())).await;
                            break reason;
                        }
                        Some(Outbound::Send(m)) => m,
                        Some(Outbound::Assign(a)) => {
                            self.cursors.insert(a.attempt, Cursor {
                                last_seq: 0,
                                step_sizes: HashMap::new(),
                                builder_key: Some(format!("{}/{}", a.project, a.builder)),
                            });
                            ServerMsg::Assign(a)
                        }
                    };
                    last_sent = Instant::now();
                    heartbeat.reset();
                    if sink.send(Message::Text(msg.encode().into())).await.is_err() {
                        break "connection closed while sending".into();
                    }
                }
                _ = &mut silence => {
                    grace = Duration::ZERO;
                    break format!("no heartbeat for {:?}", settings.heartbeat_timeout);
                }
                _ = &mut expiry => {
                    grace = Duration::ZERO;
                    let reason = "its token expired: create a new one with `herd token create --worker NAME`".to_string();
                    let _ = sink.send(Message::Text(ServerMsg::Error { message: reason.clone() }.encode().into())).await;
                    break reason;
                }
                _ = heartbeat.tick() => {
                    last_sent = Instant::now();
                    if sink.send(Message::Text(ServerMsg::Heartbeat.encode().into())).await.is_err() {
                        break "connection closed while sending".into();
                    }
                }
            }
        };
        tracing::info!("worker {} disconnected: {end_reason}", self.name);
        let _ = sink.close().await;
        hub.disconnected(&self.name, admitted.conn_id, grace).await;
    }

    /// Takes one frame into the batch, checking it against the attempt's cursor.
    fn take(&mut self, msg: Message, batch: &mut Batch) -> Flow {
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
                Ok(WorkerMsg::ProbeResults { results }) => {
                    batch.probe_results.extend(results);
                    Flow::Continue
                }
                Ok(WorkerMsg::Split(req)) => {
                    batch.splits.push(req);
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
                    let compressed = match self.compressor.compress(&frame.data) {
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
        if let Some((step, offset, len)) = log {
            let size = cursor.step_sizes.entry(step).or_insert(0);
            if offset != *size {
                return Flow::Stop(format!(
                    "attempt {attempt} step {step}: output at byte {offset}, expected {size}"
                ));
            }
            // A worker that ignores the limit it was given is cut off
            // rather than allowed to fill the disk.
            let limit = self.app.hub.settings.max_step_log + herd_proto::STEP_LOG_NOTICE_ROOM;
            if *size + len > limit {
                return Flow::Stop(format!(
                    "attempt {attempt} step {step}: output past the limit of {limit} bytes"
                ));
            }
            *size += len;
        }
        cursor.last_seq = seq;
        batch.push(attempt, seq, ev);
        Flow::Continue
    }

    /// Stores the batch, and returns the replies: acknowledgements, and
    /// abandon orders for attempts that are not this worker's.
    /// The second value is true when the connection must end so that the
    /// worker resumes from what the store has (see [`Applied::Behind`]).
    async fn flush(
        &mut self,
        batch: Batch,
    ) -> Result<(Vec<ServerMsg>, bool), crate::store::StoreError> {
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
        for req in batch.splits {
            let reply = hub.split_request(&self.name, &req).await?;
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

async fn refuse<S>(sink: &mut S, name: &str, reason: &str)
where
    S: futures_util::Sink<Message> + Unpin,
{
    tracing::warn!("closing connection of worker {name}: {reason}");
    let _ = sink
        .send(Message::Text(
            ServerMsg::Error {
                message: reason.to_string(),
            }
            .encode()
            .into(),
        ))
        .await;
    let _ = sink.close().await;
}
