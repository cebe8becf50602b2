//! The herd worker: connects out to the server (works behind NAT, no
//! inbound port), says hello with its facts, runs the jobs it is given and
//! streams their output back. Reconnects forever with exponential backoff
//! and jitter; attempts keep running while the connection is down, and
//! their buffered events are resent after it comes back.

mod artifacts;
mod conn;
pub mod disk;
pub mod exec;
pub mod facts;
pub mod install;
pub mod mask;
pub mod outbox;
pub mod probe;
pub mod process;
pub mod reaper;
mod results;
mod source;
mod split;

pub use conn::run;

use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// `http://host:port` or `ws://host:port` of the server; several
    /// servers sharing one database, separated by commas: the worker uses
    /// the first that answers and moves to the next when one goes away.
    pub server: String,
    pub token: String,
    pub name: Option<String>,
    pub workdir: PathBuf,
    pub slots: u32,
    pub labels: BTreeMap<String, String>,
    /// The `herd` executable, to start the reaper that stops steps if this
    /// worker dies. None: no reaper (steps may outlive a crash).
    pub herd_bin: Option<PathBuf>,
    /// The server's TLS pin (`sha256//…`): for `https://` servers, trust
    /// exactly that key instead of the machine's CAs.
    pub tls_pin: Option<String>,
    /// Custom probes this worker defines itself: name -> shell command.
    /// They win over the server's definition of the same name.
    pub probes: BTreeMap<String, String>,
    /// When workspaces are removed and when the worker stops taking jobs.
    pub disk: disk::DiskPolicy,
    /// How often the worker looks at its disk (also after every job).
    pub disk_interval: std::time::Duration,
}

/// What the worker's owner asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Run,
    /// Finish the running jobs, take no new ones, then exit (first SIGTERM).
    Drain,
    /// Stop the steps and exit now (SIGINT, or a second SIGTERM).
    Now,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid server address `{0}`: expected http://HOST:PORT or ws://HOST:PORT")]
    BadServer(String),
    #[error("{0}")]
    Tls(#[from] herd_tls::TlsError),
    #[error("--tls-pin is given but the server address `{0}` is plain http: use https://")]
    PinWithoutTls(String),
    #[error("cannot create an HTTP client: {0}")]
    Http(String),
    #[error("cannot use work directory {path}: {source}")]
    Workdir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The TLS configuration for `servers` (a comma-separated list): None when
/// all are plain HTTP.
pub fn tls_config(
    servers: &str,
    pin: Option<&str>,
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, WorkerError> {
    let any_tls = servers
        .split(',')
        .any(|s| herd_tls::client::needed(s.trim()));
    match (any_tls, pin) {
        (false, Some(_)) => Err(WorkerError::PinWithoutTls(servers.to_string())),
        (false, None) => Ok(None),
        (true, pin) => Ok(Some(std::sync::Arc::new(herd_tls::client::config(pin)?))),
    }
}

/// An HTTP client for the server at `server` (installer, CLI): pinned to
/// `pin` when given, checked against the machine's CAs for https otherwise.
pub fn http_client(
    server: &str,
    pin: Option<&str>,
    timeout: Option<std::time::Duration>,
) -> Result<reqwest::Client, WorkerError> {
    let mut builder =
        reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    if let Some(tls) = tls_config(server, pin)? {
        builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(&tls));
    }
    builder
        .build()
        .map_err(|e| WorkerError::Http(e.to_string()))
}

/// The worker endpoint URLs of a comma-separated list of servers.
pub fn endpoint_urls(servers: &str) -> Result<Vec<String>, WorkerError> {
    let urls = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(endpoint_url)
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(WorkerError::BadServer(servers.to_string()));
    }
    Ok(urls)
}

/// The worker endpoint URL for a server address given as http(s) or ws(s).
pub fn endpoint_url(server: &str) -> Result<String, WorkerError> {
    let s = server.trim_end_matches('/');
    let rest = if let Some(r) = s.strip_prefix("http://") {
        format!("ws://{r}")
    } else if let Some(r) = s.strip_prefix("https://") {
        format!("wss://{r}")
    } else if s.starts_with("ws://") || s.starts_with("wss://") {
        s.to_string()
    } else if !s.contains("://") && !s.is_empty() {
        format!("ws://{s}")
    } else {
        return Err(WorkerError::BadServer(server.to_string()));
    };
    Ok(format!("{rest}{}", herd_proto::WORKER_ENDPOINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            endpoint_url("http://127.0.0.1:8080/").unwrap(),
            "ws://127.0.0.1:8080/api/v1/worker/connect"
        );
        assert_eq!(
            endpoint_url("https://ci.example.org").unwrap(),
            "wss://ci.example.org/api/v1/worker/connect"
        );
        assert_eq!(
            endpoint_url("127.0.0.1:9").unwrap(),
            "ws://127.0.0.1:9/api/v1/worker/connect"
        );
        assert!(endpoint_url("ftp://x").is_err());
    }
}
