//! The worker endpoint: one WebSocket per worker, authenticated by the
//! worker's token, speaking the protocol of `herd-proto`.
//!
//! A connection is a [`handshake`] (hello, admission by the hub, welcome)
//! that makes a [`session::Session`], then the session's event loop: every
//! input (frames from the worker, a message from the hub, a timer) becomes
//! one [`session::Event`], handled by one function, and everything sent to
//! the worker goes through one `send`.
//!
//! Events arrive numbered per attempt. A batch of frames is stored in one
//! transaction and only then acknowledged (`batch`), so a worker never drops
//! output the server has not stored; duplicates (a resend after a
//! reconnect) are recognised by their sequence numbers and acknowledged
//! again.

mod batch;
mod session;
mod uploads;

use crate::access::{refusal, MaybeCaller};
use crate::auth::Principal;
use crate::App;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use herd_proto::{
    negotiate, Hello, ServerMsg, Welcome, WorkerMsg, MAX_BINARY_FRAME, MAX_TEXT_FRAME,
    SUPPORTED_PROTOCOLS,
};
use session::Session;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from a worker's socket at a time. Every connection holds
/// this much while it waits, and tungstenite zeroes it before each read:
/// small, for thousands of idle workers. A larger frame is read whole
/// into a buffer of its own size, 8 KiB at a time.
const READ_BUFFER: usize = 8 * 1024;

/// The worker endpoint: a WebSocket speaking the worker protocol
/// (docs/protocol.md), for a worker token only.
#[utoipa::path(
    get,
    path = "/api/v1/worker/connect",
    tag = "workers",
    responses(
        (status = 101, description = "Switching to the worker protocol over a WebSocket"),
        (status = 400, description = "Not a WebSocket upgrade request", body = herd_api::ErrorBody),
        crate::access::TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn worker_endpoint(
    State(app): State<Arc<App>>,
    // Checked by the token guard: only a valid worker token gets here.
    MaybeCaller(caller): MaybeCaller,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(Principal::Worker {
        worker, expires_at, ..
    }) = caller
    else {
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
        // (the defaults are 128 KiB each way; see READ_BUFFER).
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            // Boxed, as the session's store work: a task is as large as
            // its largest future, and thousands of idle ones wait in
            // `run`'s small one.
            if let Some(session) = Box::pin(handshake(app, worker, expires_at, socket)).await {
                session.run().await;
            }
        })
}

/// Why a connection was refused before its session began.
struct Refused(String);

/// Reads the hello, has the hub admit the worker, and sends the welcome
/// (with the attempts it resumes) and abandon orders for attempts that are
/// no longer its own. None when the connection ended or was refused.
async fn handshake(
    app: Arc<App>,
    name: String,
    token_expires_at: Option<i64>,
    socket: WebSocket,
) -> Option<Session> {
    let (mut sink, mut stream) = socket.split();
    let hello = match read_hello(&mut stream).await {
        Ok(Some(h)) => h,
        Ok(None) => return None,
        Err(Refused(reason)) => return refuse(&mut sink, &name, &reason).await,
    };
    let Some(protocol) = negotiate(&hello.protocols) else {
        let msg = format!(
            "no common protocol version: the worker speaks {:?}, this server {:?}; install the server's herd version on the worker",
            hello.protocols, SUPPORTED_PROTOCOLS
        );
        return refuse(&mut sink, &name, &msg).await;
    };
    if hello.slots == 0 || hello.slots > 1024 {
        return refuse(&mut sink, &name, "slots must be between 1 and 1024").await;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let hub = Arc::clone(&app.hub);
    let admitted = match hub.admit(&name, &hello, tx).await {
        Ok(a) => a,
        Err(e) => {
            tracing::error!("could not admit worker {name}: {e}");
            return refuse(&mut sink, &name, "server error: the server log says why").await;
        }
    };
    if herd_core::version::compare_versions(&hello.version, env!("CARGO_PKG_VERSION"))
        == std::cmp::Ordering::Less
    {
        tracing::warn!(
            "worker {name} runs herd {}, older than this server's {}: upgrade it with `herd worker upgrade`",
            hello.version,
            env!("CARGO_PKG_VERSION")
        );
    }
    tracing::info!(
        "worker {name} connected (protocol {protocol}, {} slots, resuming {:?})",
        hello.slots,
        admitted
            .resume
            .iter()
            .map(|r| r.attempt)
            .collect::<Vec<_>>()
    );
    let settings = &hub.settings;
    let cadence = session::Cadence::of(settings, protocol);
    let welcome = ServerMsg::Welcome(Welcome {
        protocol,
        worker: name.clone(),
        heartbeat_interval_ms: settings.heartbeat_interval.as_millis() as u64,
        heartbeat_timeout_ms: settings.heartbeat_timeout.as_millis() as u64,
        idle_heartbeat_interval_ms: cadence
            .idle
            .map(|(interval, _)| interval.as_millis() as u64),
        idle_heartbeat_timeout_ms: cadence.idle.map(|(_, timeout)| timeout.as_millis() as u64),
        resume: admitted.resume.clone(),
        server_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    });
    let mut session = Session::new(
        app,
        name,
        admitted.conn_id,
        token_expires_at,
        cadence,
        sink,
        stream,
        rx,
    );
    let mut opening = vec![welcome];
    opening.extend(admitted.abandon.iter().map(|&attempt| ServerMsg::Abandon {
        attempt,
        reason: "this attempt is no longer yours".into(),
    }));
    match session.open(&admitted.resume, opening).await {
        Ok(()) => Some(session),
        Err(reason) => {
            session.end(reason).await;
            None
        }
    }
}

/// The first message: a hello in a text frame, within [`HELLO_TIMEOUT`].
/// None when the worker went away without one.
async fn read_hello<S>(stream: &mut S) -> Result<Option<Hello>, Refused>
where
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    match tokio::time::timeout(HELLO_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => match WorkerMsg::decode(&text) {
            Ok(WorkerMsg::Hello(h)) => Ok(Some(h)),
            Ok(_) => Err(Refused("the first message must be a hello".into())),
            Err(e) => Err(Refused(e.to_string())),
        },
        Ok(Some(Ok(_))) => Err(Refused(
            "the first message must be a hello in a text frame".into(),
        )),
        Ok(Some(Err(e))) => Err(Refused(e.to_string())),
        Ok(None) => Ok(None),
        Err(_) => Err(Refused("no hello within 10 seconds".into())),
    }
}

/// Tells the worker why it is refused, and closes.
async fn refuse<S>(sink: &mut S, name: &str, reason: &str) -> Option<Session>
where
    S: futures_util::Sink<Message> + Unpin,
{
    tracing::warn!("closing connection of worker {name}: {reason}");
    let error = ServerMsg::Error {
        message: reason.to_string(),
    };
    let _ = sink.send(Message::Text(error.encode().into())).await;
    let _ = sink.close().await;
    None
}
