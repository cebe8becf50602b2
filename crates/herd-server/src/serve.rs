//! The accept loop: plain HTTP or TLS on one port, with the limits that keep
//! slow or stuck clients from holding the server.
//!
//! Each connection is its own task. The first byte, a TLS handshake and
//! the head of every request must arrive within `client_timeout`; a
//! request body must keep coming (a read at least every `client_timeout`)
//! and be whole within `body_deadline`; a kept-alive connection with no
//! request for `idle_timeout` is closed. Connections beyond
//! `max_connections`, or beyond `max_per_address` from one address, are
//! closed at once: one client cannot take every slot. An upgraded
//! WebSocket leaves both counts (thousands of idle workers are expected). The client's address
//! reaches the handlers as `ConnectInfo<SocketAddr>` (rate limits key on
//! it).

use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch, Semaphore};
use tower::ServiceExt;

/// How long and how many: see the module comment.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub client_timeout: Duration,
    /// The longest a whole request body may take.
    pub body_deadline: Duration,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// HTTP connections open at once from one address (a quarter of
    /// `max_connections` once fitted to the open-file limit).
    pub max_per_address: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            client_timeout: Duration::from_secs(10),
            body_deadline: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            max_connections: 16_384,
            max_per_address: 4096,
        }
    }
}

impl ConnLimits {
    /// Raises this process's soft limit of open files to its hard limit,
    /// and keeps the HTTP connections under half of it: the rest is for
    /// workers' WebSockets (they leave the count), the database and git.
    pub fn fit_to_open_files(mut self) -> ConnLimits {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let soft = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            };
            let room = usize::try_from(soft / 2).unwrap_or(usize::MAX).max(64);
            if room < self.max_connections {
                tracing::info!(
                    "at most {room} HTTP connections at once: half of the {soft} files this process may open"
                );
                self.max_connections = room;
            }
        }
        self.max_per_address = self.max_per_address.min((self.max_connections / 4).max(16));
        self
    }
}

/// A request body with deadlines: each read within `per_read`, the whole
/// by `total`. Past either, it fails: the handler answers, and the
/// connection (whose body was not read to its end) closes.
struct Deadlined<B> {
    inner: B,
    per_read: Duration,
    total: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Deadlined<B> {
    fn new(inner: B, per_read: Duration, total: Duration) -> Self {
        let now = tokio::time::Instant::now();
        let total = now + total;
        Deadlined {
            inner,
            per_read,
            total,
            timer: Box::pin(tokio::time::sleep_until((now + per_read).min(total))),
        }
    }
}

impl<B> Body for Deadlined<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            let next = (tokio::time::Instant::now() + self.per_read).min(self.total);
            self.timer.as_mut().reset(next);
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(
                "the request body came too slowly: the connection is closed".into(),
            )));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// When a connection last started or finished a request, and how many it
/// has in flight: what tells an idle kept-alive connection.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
}

fn now_ms() -> u64 {
    u64::try_from(crate::store::now_ms()).unwrap_or(0)
}

/// Serves `router` on `listener` until `shutdown` fires; then lets open
/// requests finish for up to 5 s.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnLimits,
    mut shutdown: oneshot::Receiver<()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let (stopping_tx, stopping) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = crate::limits::InFlight::new(limits.max_per_address);
    let open = Arc::new(AtomicUsize::new(0));
    let mut refused_logged = false;
    loop {
        let (tcp, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, mostly: wait, do not spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !refused_logged {
                tracing::warn!(
                    "{} connections are open, the limit: closing new ones until some end",
                    limits.max_connections
                );
                refused_logged = true;
            }
            drop(tcp);
            continue;
        };
        let Some(address_slot) = per_address.start(addr.ip()) else {
            tracing::debug!(
                "{} has {} connections open, the most one address may: closing a new one",
                addr.ip(),
                limits.max_per_address
            );
            drop(tcp);
            continue;
        };
        refused_logged = false;
        // Small frames (assignments, acknowledgements) must not wait for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let router = router.clone();
        let acceptor = acceptor.clone();
        let stopping = stopping.clone();
        let open = Arc::clone(&open);
        open.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let _slots = (slot, address_slot);
            let activity = Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                last_ms: AtomicU64::new(now_ms()),
            });
            let seen = Arc::clone(&activity);
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                let seen = Arc::clone(&seen);
                seen.in_flight.fetch_add(1, Ordering::SeqCst);
                seen.last_ms.store(now_ms(), Ordering::SeqCst);
                let req = req.map(|b| {
                    axum::body::Body::new(Deadlined::new(
                        b,
                        limits.client_timeout,
                        limits.body_deadline,
                    ))
                });
                let answer = router.clone().oneshot(req);
                async move {
                    let res = answer.await;
                    seen.last_ms.store(now_ms(), Ordering::SeqCst);
                    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                    res
                }
            });
            // HTTP/1.1 only: telling HTTP/2 apart waits for bytes with no
            // timeout, and workers, browsers and the CLI all speak 1.1.
            let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.client_timeout);
            match acceptor {
                None => {
                    // hyper's head timeout starts with the first byte: a
                    // client that sends none is cut off here.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(limits.client_timeout, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => {
                            tracing::debug!("{addr} sent nothing in time");
                            open.fetch_sub(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    drive(conn, addr, &activity, limits.idle_timeout, stopping).await;
                }
                Some(acceptor) => {
                    match tokio::time::timeout(limits.client_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let conn =
                                builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                            drive(conn, addr, &activity, limits.idle_timeout, stopping).await;
                        }
                        Ok(Err(e)) => tracing::debug!("TLS handshake with {addr} failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake with {addr} took too long"),
                    }
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if open.load(Ordering::SeqCst) > 0 {
        tracing::debug!("some connections were still open after 5 s");
    }
}

/// Runs one connection to its end; closes it gracefully (the request in
/// flight finishes, no new one starts) when it idles past `idle` or the
/// server stops.
async fn drive<C>(
    conn: C,
    addr: std::net::SocketAddr,
    activity: &Activity,
    idle: Duration,
    mut stopping: watch::Receiver<bool>,
) where
    C: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + GracefulConn,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    let tick = (idle / 4).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!("connection from {addr} ended: {e}");
                }
                return;
            }
            _ = stopping.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(tick), if !closing => {
                let quiet = now_ms().saturating_sub(activity.last_ms.load(Ordering::SeqCst));
                if activity.in_flight.load(Ordering::SeqCst) == 0
                    && quiet >= u64::try_from(idle.as_millis()).unwrap_or(u64::MAX)
                {
                    tracing::debug!("closing the idle connection from {addr}");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A connection that can be told to finish its request and close.
trait GracefulConn {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulConn for auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::Service<hyper::Request<Incoming>, Response = hyper::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        auto::UpgradeableConnection::graceful_shutdown(self);
    }
}
