//! The accept loop: plain HTTP or TLS on one port, with the limits that keep
//! slow or stuck clients from holding the server.
//!
//! Each connection is its own task. The first byte, a TLS handshake and
//! the head of every request must arrive within `client_timeout`;
//! connections beyond `max_connections` are closed at once. An upgraded
//! WebSocket leaves that count (thousands of idle workers are expected); a
//! kept-alive connection idling between requests holds one slot, nothing
//! else. The client's address reaches the handlers as
//! `ConnectInfo<SocketAddr>` (rate limits key on it).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tower::ServiceExt;

/// How long and how many: see the module comment.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub client_timeout: Duration,
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            client_timeout: Duration::from_secs(10),
            max_connections: 16_384,
        }
    }
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
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
        refused_logged = false;
        // Small frames (assignments, acknowledgements) must not wait for Nagle.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let router = router.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
            // HTTP/1.1 only: telling HTTP/2 apart waits for bytes with no
            // timeout, and workers, browsers and the CLI all speak 1.1.
            let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.client_timeout);
            let result = match acceptor {
                None => {
                    // hyper's head timeout starts with the first byte: a
                    // client that sends none is cut off here.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(limits.client_timeout, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => {
                            tracing::debug!("{addr} sent nothing in time");
                            return;
                        }
                    }
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(limits.client_timeout, acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!("TLS handshake with {addr} failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake with {addr} took too long");
                                return;
                            }
                        };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!("connection from {addr} ended: {e}");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("some connections were still open after 5 s");
    }
}
