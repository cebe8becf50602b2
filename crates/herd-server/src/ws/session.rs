//! One admitted worker's connection: an event loop. [`Session::next_event`]
//! waits for whatever comes first (frames, the hub, a timer) and makes it
//! an [`Event`]; [`Session::handle`] acts on it; [`Session::send`] is the
//! one way out.

use super::batch::{Batch, Flow, Ledger, BATCH_BYTES, BATCH_FRAMES};
use crate::hub::Outbound;
use crate::App;
use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use herd_proto::{ResumeAttempt, ServerMsg};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What the session reacts to.
pub(super) enum Event {
    /// A frame from the worker (what else is ready joins it in one batch).
    Frame(Message),
    /// The worker's connection ended (or failed) with nothing read.
    Closed(String),
    /// The hub has something for this worker.
    Hub(Outbound),
    /// The hub replaced this connection with a newer one of the same worker.
    Replaced,
    /// Nothing heard from the worker for the heartbeat timeout.
    Silence,
    /// The worker's token expired.
    TokenExpired,
    /// Time to send our heartbeat.
    HeartbeatDue,
}

/// Why a session ends, and whether the worker gets its grace period to
/// come back and resume.
pub(super) struct End {
    reason: String,
    /// Tell the worker why before closing.
    tell: bool,
    grace: bool,
}

impl End {
    fn quiet(reason: impl Into<String>) -> End {
        End {
            reason: reason.into(),
            tell: false,
            grace: true,
        }
    }

    fn told(reason: impl Into<String>) -> End {
        End {
            reason: reason.into(),
            tell: true,
            grace: true,
        }
    }

    fn without_grace(mut self) -> End {
        self.grace = false;
        self
    }
}

pub(super) struct Session {
    app: Arc<App>,
    name: String,
    conn_id: u64,
    ledger: Ledger,
    sink: SplitSink<WebSocket, Message>,
    stream: SplitStream<WebSocket>,
    hub_rx: mpsc::UnboundedReceiver<Outbound>,
    cadence: Cadence,
    /// Since when the worker's silence counts: its last frame, or a job
    /// given to it (it owes an answer within the busy timeout).
    silent_since: Instant,
    last_sent: Instant,
    /// The two timers are re-armed when they fire, not on every frame:
    /// an idle connection costs one wake-up per heartbeat it receives.
    /// Silence is noticed when it reaches the timeout, not at a tick.
    silence: Pin<Box<tokio::time::Sleep>>,
    heartbeat: Pin<Box<tokio::time::Sleep>>,
    expiry: Pin<Box<tokio::time::Sleep>>,
    expires: bool,
}

/// Heartbeat interval and silence timeout, busy and idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cadence {
    pub busy: (Duration, Duration),
    /// None: a protocol-1 worker, busy cadence always.
    pub idle: Option<(Duration, Duration)>,
}

impl Cadence {
    pub fn of(settings: &crate::hub::Settings, protocol: u32) -> Cadence {
        Cadence {
            busy: (settings.heartbeat_interval, settings.heartbeat_timeout),
            idle: (protocol >= 2).then_some((
                settings.idle_heartbeat_interval,
                settings.idle_heartbeat_timeout,
            )),
        }
    }

    /// (interval, timeout) for a worker that runs attempts or not.
    pub fn now(&self, busy: bool) -> (Duration, Duration) {
        match self.idle {
            Some(idle) if !busy => idle,
            _ => self.busy,
        }
    }
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        app: Arc<App>,
        name: String,
        conn_id: u64,
        token_expires_at: Option<i64>,
        cadence: Cadence,
        sink: SplitSink<WebSocket, Message>,
        stream: SplitStream<WebSocket>,
        hub_rx: mpsc::UnboundedReceiver<Outbound>,
    ) -> Session {
        // Busy at first: the attempts it resumes, if any, are known only
        // once the session runs; the timers settle at their first firing.
        let (interval, timeout) = cadence.busy;
        let now = Instant::now();
        let heartbeat = Box::pin(tokio::time::sleep(interval));
        let silence = Box::pin(tokio::time::sleep(timeout));
        let expiry = Box::pin(tokio::time::sleep(
            token_expires_at
                .map(|at| {
                    Duration::from_millis(u64::try_from(at - crate::store::now_ms()).unwrap_or(0))
                })
                .unwrap_or(Duration::MAX / 4),
        ));
        Session {
            ledger: Ledger::new(Arc::clone(&app), name.clone(), conn_id),
            app,
            name,
            conn_id,
            sink,
            stream,
            hub_rx,
            cadence,
            silent_since: now,
            last_sent: now,
            silence,
            heartbeat,
            expiry,
            expires: token_expires_at.is_some(),
        }
    }

    /// Takes the resumed attempts into the ledger and sends the opening
    /// messages (the welcome, abandon orders).
    pub async fn open(
        &mut self,
        resume: &[ResumeAttempt],
        opening: Vec<ServerMsg>,
    ) -> Result<(), End> {
        if let Err(e) = self.ledger.resume(resume).await {
            tracing::error!("could not resume the attempts of worker {}: {e}", self.name);
            return Err(End::told("server error: the server log says why"));
        }
        for m in opening {
            self.send(m).await?;
        }
        Ok(())
    }

    /// The event loop, until the connection ends.
    pub async fn run(mut self) {
        let end = loop {
            let event = self.next_event().await;
            if let Err(end) = self.handle(event).await {
                break end;
            }
        };
        Box::pin(self.end(end)).await;
    }

    /// Says why (when asked to), closes, and lets the hub know.
    pub async fn end(mut self, end: End) {
        tracing::info!("worker {} disconnected: {}", self.name, end.reason);
        if end.tell {
            let error = ServerMsg::Error {
                message: end.reason.clone(),
            };
            let _ = self.sink.send(Message::Text(error.encode().into())).await;
        }
        let _ = self.sink.close().await;
        let settings = &self.app.hub.settings;
        let grace = if end.grace {
            settings.reconnect_grace
        } else {
            Duration::ZERO
        };
        self.app
            .hub
            .disconnected(&self.name, self.conn_id, grace)
            .await;
    }

    /// Waits for whatever comes first.
    async fn next_event(&mut self) -> Event {
        tokio::select! {
            incoming = self.stream.next() => match incoming {
                None => Event::Closed("connection closed".into()),
                Some(Err(e)) => Event::Closed(format!("connection error: {e}")),
                Some(Ok(first)) => Event::Frame(first),
            },
            out = self.hub_rx.recv() => match out {
                Some(o) => Event::Hub(o),
                None => Event::Replaced,
            },
            _ = &mut self.silence => Event::Silence,
            _ = &mut self.expiry, if self.expires => Event::TokenExpired,
            _ = &mut self.heartbeat => Event::HeartbeatDue,
        }
    }

    /// Acts on one event; Err ends the session.
    async fn handle(&mut self, event: Event) -> Result<(), End> {
        match event {
            Event::Frame(first) => self.frames(first).await,
            Event::Closed(reason) => Err(End::quiet(reason)),
            Event::Hub(Outbound::Close(reason)) => Err(End::told(reason)),
            Event::Hub(Outbound::Send(m)) => self.send(*m).await,
            Event::Hub(Outbound::Assign(a)) => {
                self.ledger.assigned(&a);
                self.now_busy();
                self.send(ServerMsg::Assign(a)).await
            }
            Event::Replaced => Err(End::quiet("replaced")),
            Event::Silence => {
                let (_, timeout) = self.cadence();
                let deadline = self.silent_since + timeout;
                if Instant::now() < deadline {
                    self.silence.as_mut().reset(deadline.into());
                    return Ok(());
                }
                Err(End::quiet(format!("no heartbeat for {timeout:?}")).without_grace())
            }
            Event::TokenExpired => Err(End::told(
                "its token expired: create a new one with `herd token create --worker NAME`",
            )
            .without_grace()),
            Event::HeartbeatDue => {
                let (interval, _) = self.cadence();
                if self.last_sent.elapsed() >= interval {
                    self.send(ServerMsg::Heartbeat).await?;
                }
                self.heartbeat
                    .as_mut()
                    .reset((self.last_sent + interval).into());
                Ok(())
            }
        }
    }

    /// The heartbeat interval and timeout that hold now: busy while the
    /// hub counts attempts on this connection.
    fn cadence(&self) -> (Duration, Duration) {
        let busy =
            self.cadence.idle.is_none() || self.app.hub.runs_attempts(&self.name, self.conn_id);
        self.cadence.now(busy)
    }

    /// A job was given: the worker owes an answer within the busy timeout
    /// from now, and hears from us at the busy interval.
    fn now_busy(&mut self) {
        let now = Instant::now();
        self.silent_since = now;
        let (interval, timeout) = self.cadence.busy;
        let (silence_at, heartbeat_at) = ((now + timeout).into(), (now + interval).into());
        if self.silence.deadline() > silence_at {
            self.silence.as_mut().reset(silence_at);
        }
        if self.heartbeat.deadline() > heartbeat_at {
            self.heartbeat.as_mut().reset(heartbeat_at);
        }
    }

    /// A frame from the worker, with whatever else is ready now (up to a
    /// batch's size), taken into one batch, stored, answered. A lone
    /// heartbeat takes no more: looking would cost a read.
    async fn frames(&mut self, first: Message) -> Result<(), End> {
        let settings = &self.app.hub.settings;
        self.silent_since = Instant::now();
        let mut batch = Batch::default();
        let mut flow = self.ledger.take(first, &mut batch);
        let mut ended = None;
        while batch.has_events()
            && matches!(flow, Flow::Continue)
            && batch.frames < BATCH_FRAMES
            && batch.bytes < BATCH_BYTES
        {
            match self.stream.next().now_or_never() {
                Some(Some(Ok(m))) => flow = self.ledger.take(m, &mut batch),
                Some(Some(Err(e))) => ended = Some(format!("connection error: {e}")),
                Some(None) => ended = Some("connection closed".to_string()),
                None => break,
            }
            if ended.is_some() {
                break;
            }
        }
        // Store (and acknowledge) what arrived intact even when the
        // connection is about to end.
        let mut replies = match Box::pin(self.ledger.flush(batch)).await {
            Ok((_, true)) => {
                return Err(End::quiet(
                    "out of step with the store: reconnect to resume",
                ))
            }
            Ok((r, false)) => r,
            Err(e) => {
                tracing::error!("could not store events of worker {}: {e}", self.name);
                return Err(End::quiet("could not store events"));
            }
        };
        // Answer a worker's heartbeat with ours when ours is due within
        // half an interval: one wake-up per interval for an idle worker
        // instead of two. Half the busy interval, whatever the cadence: a
        // worker that thinks itself busy hears back in time.
        if replies.is_empty() && self.last_sent.elapsed() >= settings.heartbeat_interval / 2 {
            replies.push(ServerMsg::Heartbeat);
        }
        for m in replies {
            self.send(m).await?;
        }
        if let Flow::Stop(reason) = flow {
            return Err(End::told(reason));
        }
        match ended {
            Some(reason) => Err(End::quiet(reason)),
            None => Ok(()),
        }
    }

    /// The one way out to the worker. Any send counts as our heartbeat.
    async fn send(&mut self, msg: ServerMsg) -> Result<(), End> {
        self.last_sent = Instant::now();
        self.sink
            .send(Message::Text(msg.encode().into()))
            .await
            .map_err(|_| End::quiet("connection closed while sending"))
    }
}
