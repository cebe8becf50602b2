//! One module per subcommand.

pub mod artifacts;
pub mod build;
pub mod change;
pub mod check;
pub mod migrate;
pub mod ops;
pub mod project;
pub mod server;
pub mod token;
pub mod try_patch;
pub mod up;
pub mod worker;
pub mod workers;

/// Waits for Ctrl-C or SIGTERM.
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
