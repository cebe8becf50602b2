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
use tracing::Instrument;

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
    let disk = crate::disk::DiskKeeper::new(crate::disk::Workspaces::new(
        opts.workdir.clone(),
        opts.disk,
    ));
    // The first pass before the first hello, so that it carries the disk.
    disk.pass().await;
    let disk_task = tokio::spawn(Arc::clone(&disk).run(opts.disk_interval));
    let split = Arc::new(SplitLink::default());
    let secrets = crate::mask::KnownSecrets::new(vec![opts.token.trim().to_string()]);
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
            secrets: secrets.clone(),
            disk: Arc::clone(&disk),
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
    let deadline = Instant::now() + crate::process::KILL_GRACE + Duration::from_secs(1);
    while executors.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disk_task.abort();
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
    /// The worker's token and the secrets of its running jobs: masked in
    /// all it sends.
    secrets: crate::mask::KnownSecrets,
    disk: Arc<crate::disk::DiskKeeper>,
}

/// Exponential backoff with full jitter between half and all of the step.
fn backoff(failures: u32) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << failures.min(10))
        .min(BACKOFF_MAX);
    let jitter: f64 = 0.5 + rand::random::<f64>() * 0.5;
    base.mul_f64(jitter)
}

/// One connection: the handshake, then the session's event loop.
async fn session(
    url: &str,
    opts: &WorkerOptions,
    outbox: &Outbox,
    shared: &Shared,
    shutdown: &mut watch::Receiver<Shutdown>,
) -> SessionEnd {
    match handshake(url, opts, outbox, shared, shutdown).await {
        Ok(mut s) => s.run().await,
        Err(end) => end,
    }
}

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;
type Stream = futures_util::stream::SplitStream<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
>;

/// Connects, says hello with what the worker runs, and reads the welcome
/// (the attempts the server resumes).
async fn handshake<'a>(
    url: &str,
    opts: &WorkerOptions,
    outbox: &'a Outbox,
    shared: &'a Shared,
    shutdown: &'a mut watch::Receiver<Shutdown>,
) -> Result<Session<'a>, SessionEnd> {
    let mut request = url
        .into_client_request()
        .map_err(|e| SessionEnd::Lost(format!("bad server URL {url}: {e}")))?;
    let Ok(auth) = HeaderValue::from_str(&format!("Bearer {}", opts.token.trim())) else {
        return Err(SessionEnd::Lost(
            "the token has characters that cannot be sent".into(),
        ));
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
            Err(_) => return Err(SessionEnd::Lost(format!("no answer from {url} within {CONNECT_TIMEOUT:?}"))),
            Ok(Err(tungstenite::Error::Http(resp))) if resp.status() == 401 => {
                return Err(SessionEnd::Lost("the server refused the worker token (401): check --token, or create one with `herd token create --worker NAME`".into()))
            }
            Ok(Err(e)) => return Err(SessionEnd::Lost(match herd_tls::client::refusal(&e) {
                Some(why) => format!("refusing {url}: its TLS certificate does not verify: {why}"),
                None => format!("cannot connect to {url}: {e}"),
            })),
            Ok(Ok((ws, _))) => ws,
        },
        _ = shutdown.changed() => return Err(SessionEnd::Shutdown),
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
        disk: shared.disk.current(),
    });
    if let Err(e) = sink.send(Message::Text(hello.encode().into())).await {
        return Err(SessionEnd::Lost(format!("cannot send hello: {e}")));
    }
    let welcome = read_welcome(&mut stream).await?;
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
        source: crate::source::SourceAccess::for_endpoint(
            url,
            &opts.token,
            opts.tls_pin.as_deref(),
        ),
        secrets: shared.secrets.clone(),
        worker_name: name,
        workdir: opts.workdir.clone(),
        disk: Arc::clone(&shared.disk),
        reaper: shared.reaper.clone(),
        split: Arc::clone(&shared.split),
    });
    // This connection sends the split requests of all running steps.
    let split_rx = shared.split.rx.lock().await;
    let busy = (
        Duration::from_millis(welcome.heartbeat_interval_ms.max(100)),
        Duration::from_millis(welcome.heartbeat_timeout_ms.max(1000)),
    );
    // A protocol-1 server says nothing of idle: busy cadence always.
    let idle = match (
        welcome.idle_heartbeat_interval_ms,
        welcome.idle_heartbeat_timeout_ms,
    ) {
        (Some(interval), Some(timeout)) => Some((
            Duration::from_millis(interval).max(busy.0),
            Duration::from_millis(timeout).max(busy.1),
        )),
        _ => None,
    };
    let (ctl_tx, ctl_rx) = tokio::sync::mpsc::unbounded_channel::<WorkerMsg>();
    let mut disk = shared.disk.subscribe();
    // The hello carried the current report.
    disk.mark_unchanged();
    Ok(Session {
        disk,
        ctx,
        outbox,
        executors: &shared.executors,
        shutdown,
        sink,
        stream,
        split_rx,
        ctl_tx,
        ctl_rx,
        busy,
        idle,
        last_heard: Instant::now(),
        last_sent: Instant::now(),
        probed: HashSet::new(),
        own_probes: Arc::new(opts.probes.clone()),
    })
}

async fn read_welcome(stream: &mut Stream) -> Result<Welcome, SessionEnd> {
    match tokio::time::timeout(CONNECT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => match ServerMsg::decode(&t) {
            Ok(ServerMsg::Welcome(w)) => Ok(w),
            Ok(ServerMsg::Error { message }) => Err(SessionEnd::Lost(format!(
                "the server refused us: {message}"
            ))),
            Ok(other) => Err(SessionEnd::Lost(format!(
                "expected a welcome, got {other:?}"
            ))),
            Err(e) => Err(SessionEnd::Lost(format!("bad welcome: {e}"))),
        },
        Ok(Some(Ok(other))) => Err(SessionEnd::Lost(format!(
            "expected a welcome, got {other:?}"
        ))),
        Ok(Some(Err(e))) => Err(SessionEnd::Lost(format!("connection error: {e}"))),
        Ok(None) => Err(SessionEnd::Lost("the server closed the connection".into())),
        Err(_) => Err(SessionEnd::Lost("no welcome within 10s".into())),
    }
}

/// What a session reacts to.
enum Event {
    /// A frame from the server.
    Frame(Message),
    /// The connection ended or failed.
    Lost(String),
    /// The outbox has new frames to send.
    OutboxReady,
    /// A message from a task of this worker (a split request, probe results).
    Outgoing(WorkerMsg),
    /// Nothing heard from the server for the heartbeat timeout.
    Silence,
    /// Time to send our heartbeat.
    HeartbeatDue,
    /// The outbox emptied while draining.
    Emptied,
    /// The owner asked to drain or stop.
    Shutdown(Shutdown),
    /// A full batch was sent and more is waiting: send on.
    More,
}

/// One connection to the server, after the welcome.
struct Session<'a> {
    ctx: Arc<JobContext>,
    outbox: &'a Outbox,
    executors: &'a Arc<AtomicUsize>,
    shutdown: &'a mut watch::Receiver<Shutdown>,
    sink: Sink,
    stream: Stream,
    split_rx: tokio::sync::MutexGuard<'a, tokio::sync::mpsc::UnboundedReceiver<WorkerMsg>>,
    /// Messages from tasks of this session (probe results) to the server.
    ctl_tx: tokio::sync::mpsc::UnboundedSender<WorkerMsg>,
    ctl_rx: tokio::sync::mpsc::UnboundedReceiver<WorkerMsg>,
    /// Heartbeat interval and silence timeout while running jobs (or
    /// holding their unsent events), and while idle (protocol 2).
    busy: (Duration, Duration),
    idle: Option<(Duration, Duration)>,
    last_heard: Instant,
    /// Any frame sent is a sign of life: a heartbeat goes only after an
    /// interval without one.
    last_sent: Instant,
    /// Probes run on this connection (a `fresh` request runs them again).
    probed: HashSet<String>,
    /// Probes this worker defines itself (`--probe NAME=COMMAND`).
    own_probes: Arc<std::collections::BTreeMap<String, String>>,
    /// The disk keeper's reports: sent when they change.
    disk: watch::Receiver<Option<herd_proto::DiskReport>>,
}

impl Session<'_> {
    async fn run(&mut self) -> SessionEnd {
        loop {
            // Taken before the outbox is looked at: `emptied` wakes only
            // the waiters that exist when it fires.
            let emptied = Arc::clone(&self.outbox.emptied);
            let emptied = emptied.notified();
            let draining = *self.shutdown.borrow() == Shutdown::Drain;
            if draining && self.outbox.is_empty() {
                let _ = self.sink.close().await;
                return SessionEnd::Shutdown;
            }
            let more = match self.send_outbox().await {
                Ok(more) => more,
                Err(end) => return end,
            };
            let event = self.next_event(draining, more, emptied).await;
            if let Some(end) = self.handle(event).await {
                return end;
            }
        }
    }

    /// Sends what the outbox holds, up to a batch; true when more waits.
    async fn send_outbox(&mut self) -> Result<bool, SessionEnd> {
        let frames = self.outbox.take_unsent(SEND_BATCH);
        let more = frames.len() == SEND_BATCH;
        if !frames.is_empty() {
            self.last_sent = Instant::now();
        }
        for f in frames {
            let msg = match f {
                Frame::Text(t) => Message::Text(t.into()),
                Frame::Binary(b) => Message::Binary(b.into()),
            };
            self.sink
                .feed(msg)
                .await
                .map_err(|e| SessionEnd::Lost(format!("send failed: {e}")))?;
        }
        self.sink
            .flush()
            .await
            .map_err(|e| SessionEnd::Lost(format!("send failed: {e}")))?;
        Ok(more)
    }

    /// Waits for whatever comes first.
    async fn next_event(
        &mut self,
        draining: bool,
        more: bool,
        emptied: tokio::sync::futures::Notified<'_>,
    ) -> Event {
        // `ready` keeps a permit when nobody waits: no wake-up is missed.
        let ready = self.outbox.ready.notified();
        let (interval, timeout) = self.cadence();
        tokio::select! {
            biased;
            incoming = self.stream.next() => match incoming {
                None => Event::Lost("the server closed the connection".into()),
                Some(Err(e)) => Event::Lost(format!("connection error: {e}")),
                Some(Ok(m)) => Event::Frame(m),
            },
            _ = ready, if !more => Event::OutboxReady,
            Some(msg) = self.split_rx.recv() => Event::Outgoing(msg),
            Some(msg) = self.ctl_rx.recv() => Event::Outgoing(msg),
            Ok(()) = self.disk.changed() => match self.disk.borrow_and_update().clone() {
                Some(report) => Event::Outgoing(WorkerMsg::Disk(report)),
                None => Event::OutboxReady,
            },
            _ = tokio::time::sleep_until((self.last_heard + timeout).into()) => Event::Silence,
            _ = tokio::time::sleep_until((self.last_sent + interval).into()) => Event::HeartbeatDue,
            _ = emptied, if draining => Event::Emptied,
            changed = self.shutdown.changed() => {
                Event::Shutdown(if changed.is_ok() { *self.shutdown.borrow() } else { Shutdown::Now })
            }
            _ = std::future::ready(()), if more => Event::More,
        }
    }

    /// Acts on one event; Some ends the session.
    async fn handle(&mut self, event: Event) -> Option<SessionEnd> {
        match event {
            Event::Frame(m) => {
                self.last_heard = Instant::now();
                self.frame(m)
            }
            Event::Lost(reason) => Some(SessionEnd::Lost(reason)),
            Event::OutboxReady | Event::Emptied | Event::More => None,
            Event::Outgoing(msg) => self.send(&msg).await.err(),
            Event::Silence => Some(SessionEnd::Lost(format!(
                "no heartbeat from the server for {:?}",
                self.cadence().1
            ))),
            Event::HeartbeatDue => self.send(&WorkerMsg::Heartbeat).await.err(),
            Event::Shutdown(Shutdown::Run) => None,
            Event::Shutdown(Shutdown::Drain) => {
                tracing::info!(
                    "draining: finishing {} running job(s), taking no new ones",
                    self.outbox.len()
                );
                self.send(&WorkerMsg::Draining).await.err()
            }
            Event::Shutdown(Shutdown::Now) => {
                // Say so first, so that the server moves the jobs at once.
                let _ = self.send(&WorkerMsg::Stopping).await;
                let _ = self.sink.close().await;
                Some(SessionEnd::Shutdown)
            }
        }
    }

    /// A frame from the server.
    fn frame(&mut self, m: Message) -> Option<SessionEnd> {
        match m {
            Message::Text(t) => match ServerMsg::decode(&t) {
                Ok(ServerMsg::Probe { probes, fresh }) => {
                    if fresh {
                        self.probed.clear();
                    }
                    let todo: Vec<_> = probes
                        .into_iter()
                        .filter(|p| self.probed.insert(p.name.clone()))
                        .collect();
                    if !todo.is_empty() {
                        let tx = self.ctl_tx.clone();
                        let own = Arc::clone(&self.own_probes);
                        let known = self.ctx.secrets.clone();
                        tokio::spawn(async move {
                            let masker = known.masker();
                            let results = probe::run_all(todo, &own, masker.as_ref()).await;
                            let _ = tx.send(WorkerMsg::ProbeResults { results });
                        });
                    }
                    None
                }
                Ok(m) => handle(m, &self.ctx, self.outbox, self.executors),
                Err(e) => Some(SessionEnd::Lost(format!(
                    "malformed message from the server: {e}"
                ))),
            },
            Message::Close(_) => Some(SessionEnd::Lost("the server closed the connection".into())),
            _ => None,
        }
    }

    /// (interval, timeout) now: busy while a job runs or its events wait.
    fn cadence(&self) -> (Duration, Duration) {
        match self.idle {
            Some(idle) if self.executors.load(Ordering::SeqCst) == 0 && self.outbox.is_empty() => {
                idle
            }
            _ => self.busy,
        }
    }

    /// The one way out for control messages (log frames go by the outbox).
    async fn send(&mut self, msg: &WorkerMsg) -> Result<(), SessionEnd> {
        self.last_sent = Instant::now();
        self.sink
            .send(Message::Text(msg.encode().into()))
            .await
            .map_err(|e| SessionEnd::Lost(format!("send failed: {e}")))
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
            // Every line the job's life logs carries its build and attempt.
            let span = tracing::info_span!("job", build = job.build, attempt = job.attempt);
            span.in_scope(|| {
                tracing::info!(
                    "running attempt {} of build {} ({}/{}/{})",
                    job.attempt,
                    job.build,
                    job.project,
                    job.builder,
                    job.job
                )
            });
            let stop = outbox.open(job.attempt);
            let ctx = Arc::clone(ctx);
            let outbox = outbox.clone();
            let executors = Arc::clone(executors);
            executors.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(
                async move {
                    run_job(&ctx, *job, outbox, stop).await;
                    executors.fetch_sub(1, Ordering::SeqCst);
                }
                .instrument(span),
            );
        }
        ServerMsg::Cancel { attempt, reason } => {
            tracing::info!(attempt, "cancelling attempt {attempt}: {reason}");
            outbox.stop(attempt, StopKind::Cancel);
        }
        ServerMsg::Abandon { attempt, reason } => {
            tracing::info!(attempt, "abandoning attempt {attempt}: {reason}");
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
