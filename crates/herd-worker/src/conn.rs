//! The connection to the server: hello, welcome, then assignments in and
//! events out, heartbeats both ways; reconnects with backoff and jitter.

use crate::exec::{run_job, JobContext};
use crate::outbox::{Frame, Limits, Outbox, StopKind};
use crate::reaper::Reaper;
use crate::split::SplitLink;
use crate::{facts, probe, Shutdown, WorkerError, WorkerOptions};
use futures_util::{SinkExt, StreamExt};
use herd_proto::{
    Hello, ServerMsg, Welcome, WorkerMsg, MAX_BINARY_FRAME, MAX_TEXT_FRAME, SUPPORTED_PROTOCOLS,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Frames sent between two looks at what the server said.
const SEND_BATCH: usize = 256;

enum SessionEnd {
    Shutdown,
    Lost(String),
}

/// Runs the worker until `shutdown` turns true. Running steps are stopped
/// then (their jobs move to other workers on the server).
pub async fn run(
    opts: WorkerOptions,
    mut shutdown: watch::Receiver<Shutdown>,
) -> Result<(), WorkerError> {
    let urls = crate::endpoint_urls(&opts.server)?;
    let tls = crate::tls_config(&opts.server, opts.tls_pin.as_deref())?;
    let mut current = 0;
    std::fs::create_dir_all(&opts.workdir).map_err(|source| WorkerError::Workdir {
        path: opts.workdir.clone(),
        source,
    })?;
    let reaper = match &opts.herd_bin {
        Some(bin) => match Reaper::spawn(bin) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(
                    "cannot start the reaper ({e}): steps may outlive a crash of this worker"
                );
                None
            }
        },
        None => None,
    };
    let spill_dir = opts.workdir.join(".outbox");
    let outbox = match Outbox::with_spill_dir(spill_dir.clone(), Limits::default()) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(
                "cannot use {} for buffered output ({e}): buffering in memory only",
                spill_dir.display()
            );
            Outbox::default()
        }
    };
    let executors = Arc::new(AtomicUsize::new(0));
    let split = Arc::new(SplitLink::default());
    let mut failures: u32 = 0;
    loop {
        let mode = *shutdown.borrow();
        if mode == Shutdown::Now || (mode == Shutdown::Drain && outbox.is_empty()) {
            break;
        }
        let started = Instant::now();
        let shared = Shared {
            reaper: reaper.clone(),
            executors: Arc::clone(&executors),
            split: Arc::clone(&split),
            tls: tls.clone(),
        };
        let url = &urls[current % urls.len()];
        match session(url, &opts, &outbox, &shared, &mut shutdown).await {
            SessionEnd::Shutdown => break,
            SessionEnd::Lost(reason) => {
                tracing::warn!("connection to {url} lost: {reason}");
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            failures = 0;
        }
        // The next server at once; once all were tried, back off.
        current += 1;
        let delay = if urls.len() > 1 && (failures as usize) < urls.len() - 1 {
            Duration::from_millis(50)
        } else {
            backoff(failures)
        };
        failures = failures.saturating_add(1);
        tracing::info!("reconnecting in {:.1}s", delay.as_secs_f64());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
            _ = outbox.emptied.notified() => {}
        }
    }
    for r in outbox.running() {
        outbox.stop(r.attempt, StopKind::Abandon);
    }
    // Let the executors stop their process groups (TERM, grace, KILL).
    let deadline = Instant::now() + crate::exec::KILL_GRACE + Duration::from_secs(1);
    while executors.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(r) = reaper {
        r.finish();
    }
    Ok(())
}

/// What every session of one worker process shares.
struct Shared {
    reaper: Option<Arc<Reaper>>,
    executors: Arc<AtomicUsize>,
    split: Arc<SplitLink>,
    /// For `wss://` servers: the pinned or CA-checked client configuration.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Exponential backoff with full jitter between half and all of the step.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << failures.min(10))
        .min(BACKOFF_MAX);
    let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
    base.mul_f64(jitter)
}

async fn session(
    url: &str,
    opts: &WorkerOptions,
    outbox: &Outbox,
    shared: &Shared,
    shutdown: &mut watch::Receiver<Shutdown>,
) -> SessionEnd {
    let mut request = match url.into_client_request() {
        Ok(r) => r,
        Err(e) => return SessionEnd::Lost(format!("bad server URL {url}: {e}")),
    };
    let Ok(auth) = HeaderValue::from_str(&format!("Bearer {}", opts.token.trim())) else {
        return SessionEnd::Lost("the token has characters that cannot be sent".into());
    };
    request.headers_mut().insert("authorization", auth);
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_TEXT_FRAME.max(MAX_BINARY_FRAME)))
        .max_frame_size(Some(MAX_TEXT_FRAME.max(MAX_BINARY_FRAME)));
    let connector = shared
        .tls
        .as_ref()
        .map(|c| tokio_tungstenite::Connector::Rustls(Arc::clone(c)));
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, connector);
    let ws = tokio::select! {
        r = tokio::time::timeout(CONNECT_TIMEOUT, connect) => match r {
            Err(_) => return SessionEnd::Lost(format!("no answer from {url} within {CONNECT_TIMEOUT:?}")),
            Ok(Err(tungstenite::Error::Http(resp))) if resp.status() == 401 => {
                return SessionEnd::Lost("the server refused the worker token (401): check --token, or create one with `herd token create --worker NAME`".into())
            }
            Ok(Err(e)) => return SessionEnd::Lost(match herd_tls::client::refusal(&e) {
                Some(why) => format!("refusing {url}: its TLS certificate does not verify: {why}"),
                None => format!("cannot connect to {url}: {e}"),
            }),
            Ok(Ok((ws, _))) => ws,
        },
        _ = shutdown.changed() => return SessionEnd::Shutdown,
    };
    let (mut sink, mut stream) = ws.split();
    let hello = WorkerMsg::Hello(Hello {
        protocols: SUPPORTED_PROTOCOLS.to_vec(),
        version: env!("CARGO_PKG_VERSION").into(),
        slots: opts.slots,
        labels: opts.labels.clone(),
        facts: facts::gather(),
        running: outbox.running(),
        draining: *shutdown.borrow() == Shutdown::Drain,
    });
    if let Err(e) = sink.send(Message::Text(hello.encode().into())).await {
        return SessionEnd::Lost(format!("cannot send hello: {e}"));
    }
    let welcome: Welcome = match tokio::time::timeout(CONNECT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => match ServerMsg::decode(&t) {
            Ok(ServerMsg::Welcome(w)) => w,
            Ok(ServerMsg::Error { message }) => {
                return SessionEnd::Lost(format!("the server refused us: {message}"))
            }
            Ok(other) => return SessionEnd::Lost(format!("expected a welcome, got {other:?}")),
            Err(e) => return SessionEnd::Lost(format!("bad welcome: {e}")),
        },
        Ok(Some(Ok(other))) => {
            return SessionEnd::Lost(format!("expected a welcome, got {other:?}"))
        }
        Ok(Some(Err(e))) => return SessionEnd::Lost(format!("connection error: {e}")),
        Ok(None) => return SessionEnd::Lost("the server closed the connection".into()),
        Err(_) => return SessionEnd::Lost("no welcome within 10s".into()),
    };
    let name = welcome.worker.clone();
    if let Some(wanted) = &opts.name {
        if wanted != &name {
            tracing::warn!("--name {wanted} ignored: the token belongs to worker {name}");
        }
    }
    tracing::info!(
        "connected to {} as worker {name} (protocol {})",
        opts.server,
        welcome.protocol
    );
    if let Some(v) = &welcome.server_version {
        if herd_core::version::compare_versions(env!("CARGO_PKG_VERSION"), v)
            == std::cmp::Ordering::Less
        {
            tracing::warn!(
                "this worker runs herd {}, older than the server's {v}: upgrade it with `herd worker upgrade` (running jobs finish first)",
                env!("CARGO_PKG_VERSION")
            );
        }
    }
    for r in &welcome.resume {
        outbox.resume(r.attempt, r.acked_seq);
    }
    let ctx = Arc::new(JobContext {
        worker_name: name,
        workdir: opts.workdir.clone(),
        reaper: shared.reaper.clone(),
        split: Arc::clone(&shared.split),
    });
    // This connection sends the split requests of all running steps.
    let mut split_rx = shared.split.rx.lock().await;
    let hb_timeout = Duration::from_millis(welcome.heartbeat_timeout_ms.max(1000));
    let mut heartbeat = tokio::time::interval(Duration::from_millis(
        welcome.heartbeat_interval_ms.max(100),
    ));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // Messages from tasks of this session (probe results) to the server.
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::unbounded_channel::<WorkerMsg>();
    let mut probed: HashSet<String> = HashSet::new();
    loop {
        let draining = *shutdown.borrow() == Shutdown::Drain;
        let emptied = outbox.emptied.notified();
        if draining && outbox.is_empty() {
            let _ = sink.close().await;
            return SessionEnd::Shutdown;
        }
        let ready = outbox.ready.notified();
        let frames = outbox.take_unsent(SEND_BATCH);
        let more = frames.len() == SEND_BATCH;
        for f in frames {
            let msg = match f {
                Frame::Text(t) => Message::Text(t.into()),
                Frame::Binary(b) => Message::Binary(b.into()),
            };
            if let Err(e) = sink.feed(msg).await {
                return SessionEnd::Lost(format!("send failed: {e}"));
            }
        }
        if let Err(e) = sink.flush().await {
            return SessionEnd::Lost(format!("send failed: {e}"));
        }
        tokio::select! {
            biased;
            incoming = stream.next() => {
                last_heard = Instant::now();
                match incoming {
                    None => return SessionEnd::Lost("the server closed the connection".into()),
                    Some(Err(e)) => return SessionEnd::Lost(format!("connection error: {e}")),
                    Some(Ok(Message::Text(t))) => match ServerMsg::decode(&t) {
                        Ok(ServerMsg::Probe { probes, fresh }) => {
                            if fresh {
                                probed.clear();
                            }
                            let todo: Vec<_> = probes.into_iter().filter(|p| probed.insert(p.name.clone())).collect();
                            if !todo.is_empty() {
                                let tx = ctl_tx.clone();
                                tokio::spawn(async move {
                                    let results = probe::run_all(todo).await;
                                    let _ = tx.send(WorkerMsg::ProbeResults { results });
                                });
                            }
                        }
                        Ok(m) => {
                            if let Some(end) = handle(m, &ctx, outbox, &shared.executors) {
                                return end;
                            }
                        }
                        Err(e) => return SessionEnd::Lost(format!("malformed message from the server: {e}")),
                    },
                    Some(Ok(Message::Close(_))) => return SessionEnd::Lost("the server closed the connection".into()),
                    Some(Ok(_)) => {}
                }
            }
            _ = ready, if !more => {}
            Some(msg) = split_rx.recv() => {
                if let Err(e) = sink.send(Message::Text(msg.encode().into())).await {
                    return SessionEnd::Lost(format!("send failed: {e}"));
                }
            }
            Some(msg) = ctl_rx.recv() => {
                if let Err(e) = sink.send(Message::Text(msg.encode().into())).await {
                    return SessionEnd::Lost(format!("send failed: {e}"));
                }
            }
            _ = tokio::time::sleep_until((last_heard + hb_timeout).into()) => {
                return SessionEnd::Lost(format!("no heartbeat from the server for {hb_timeout:?}"));
            }
            _ = heartbeat.tick() => {
                if let Err(e) = sink.send(Message::Text(WorkerMsg::Heartbeat.encode().into())).await {
                    return SessionEnd::Lost(format!("send failed: {e}"));
                }
            }
            _ = emptied, if draining => {}
            changed = shutdown.changed() => {
                let mode = if changed.is_ok() { *shutdown.borrow() } else { Shutdown::Now };
                match mode {
                    Shutdown::Run => {}
                    Shutdown::Drain => {
                        tracing::info!("draining: finishing {} running job(s), taking no new ones", outbox.len());
                        let _ = sink.send(Message::Text(WorkerMsg::Draining.encode().into())).await;
                    }
                    Shutdown::Now => {
                        // Say so first, so that the server moves the jobs at once.
                        let _ = sink.send(Message::Text(WorkerMsg::Stopping.encode().into())).await;
                        let _ = sink.close().await;
                        return SessionEnd::Shutdown;
                    }
                }
            }
            _ = std::future::ready(()), if more => {}
        }
    }
}

fn handle(
    msg: ServerMsg,
    ctx: &Arc<JobContext>,
    outbox: &Outbox,
    executors: &Arc<AtomicUsize>,
) -> Option<SessionEnd> {
    match msg {
        ServerMsg::Assign(job) => {
            if outbox.running().iter().any(|r| r.attempt == job.attempt) {
                return None;
            }
            tracing::info!(
                "running attempt {} of build {} ({}/{}/{})",
                job.attempt,
                job.build,
                job.project,
                job.builder,
                job.job
            );
            let stop = outbox.open(job.attempt);
            let ctx = Arc::clone(ctx);
            let outbox = outbox.clone();
            let executors = Arc::clone(executors);
            executors.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                run_job(&ctx, *job, outbox, stop).await;
                executors.fetch_sub(1, Ordering::SeqCst);
            });
        }
        ServerMsg::Cancel { attempt, reason } => {
            tracing::info!("cancelling attempt {attempt}: {reason}");
            outbox.stop(attempt, StopKind::Cancel);
        }
        ServerMsg::Abandon { attempt, reason } => {
            tracing::info!("abandoning attempt {attempt}: {reason}");
            outbox.stop(attempt, StopKind::Abandon);
        }
        ServerMsg::Ack { attempt, seq } => outbox.ack(attempt, seq),
        ServerMsg::Split {
            attempt,
            req,
            reply,
            ..
        } => ctx.split.deliver(attempt, req, reply),
        ServerMsg::Heartbeat | ServerMsg::Welcome(_) | ServerMsg::Probe { .. } => {}
        ServerMsg::Error { message } => {
            return Some(SessionEnd::Lost(format!(
                "the server closed the connection: {message}"
            )))
        }
    }
    None
}
