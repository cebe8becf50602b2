//! The herd server: store, HTTP API, worker endpoint, scheduler, git mirrors.
//!
//! [`start`] opens the data directory, restores the hub from the store and
//! serves everything on one port.

pub mod access;
pub mod api;
pub mod artifacts;
pub mod auth;
pub mod backup;
pub mod builds;
pub mod cluster;
pub mod config;
pub mod git;
pub mod headers;
pub mod hub;
pub mod install;
pub mod janitor;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod owners;
pub mod poll;
pub mod pulls;
pub mod reload;
pub mod report;
pub mod schedules;
pub mod serve;
pub mod source;
pub mod store;
pub mod web;
mod ws;

use crate::config::ProjectConfig;
use crate::hub::{Hub, Settings};
use crate::store::{ProjectRow, Store, StoreError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::oneshot;

pub struct App {
    pub hub: Arc<Hub>,
    pub mirrors: git::Mirrors,
    pub data_dir: PathBuf,
    /// Where `herd-OS-ARCH` executables for other platforms are found.
    pub dist_dir: Option<PathBuf>,
    /// Signed-in web sessions.
    pub sessions: web::Sessions,
    /// What a reload of the config file changes (`live()`).
    live: arc_swap::ArcSwap<LiveConfig>,
    /// Where a reload rereads the config; None: started without one.
    pub reload_from: Option<reload::ReloadSource>,
    pub pollers: poll::Pollers,
    pub reporter: report::StatusReporter,
    /// This server's address as others reach it (links in statuses).
    pub public_url: String,
    /// Sign-ins and enrollments per client address.
    pub limits: limits::Limits,
    /// The pin of the server's TLS key (`sha256//…`), when it serves TLS:
    /// install one-liners carry it.
    pub tls_pin: Option<String>,
    /// The files jobs kept.
    pub artifacts: artifacts::ArtifactStore,
    /// How email leaves (`smtp:`); None: no email is sent.
    pub smtp: Option<config::SmtpConfig>,
    /// How long a worker is away before its owner hears.
    pub offline_notice: std::time::Duration,
}

/// The part of the server config that a reload (SIGHUP, `herd server
/// reload`) replaces while connections stay: readers take a snapshot.
#[derive(Debug, Clone, Default)]
pub struct LiveConfig {
    /// Projects as configured (branches, polling, webhook secret, reporters).
    pub projects: std::collections::HashMap<String, ProjectConfig>,
    /// Web sign-in users: name -> argon2 hash.
    pub users: std::collections::BTreeMap<String, String>,
    /// Reading needs a sign-in (or a token) too.
    pub private: bool,
    /// What projects keep unless they say otherwise.
    pub keep: config::KeepConfig,
}

impl LiveConfig {
    pub fn new(
        projects: &[ProjectConfig],
        users: std::collections::BTreeMap<String, String>,
        private: bool,
        keep: config::KeepConfig,
    ) -> LiveConfig {
        LiveConfig {
            projects: projects
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            users,
            private,
            keep,
        }
    }
}

impl App {
    /// The config as it is now (a reload swaps it whole).
    pub fn live(&self) -> Arc<LiveConfig> {
        self.live.load_full()
    }

    /// Puts `live` in place of the config (a reload).
    pub fn replace_live(&self, live: LiveConfig) {
        self.live.store(Arc::new(live));
    }

    /// Whether browsers reach this server over HTTPS: it serves TLS itself,
    /// or its public address (behind a proxy) says `https`.
    pub fn https(&self) -> bool {
        self.tls_pin.is_some() || self.public_url.starts_with("https://")
    }

    /// Whether this server does what one server does for all that share
    /// its database (reports, notices): alone, or the first live one.
    pub async fn speaks_for_cluster(&self) -> Result<bool, store::StoreError> {
        if self.hub.store.postgres_url().is_none() {
            return Ok(true);
        }
        let first = self
            .hub
            .store
            .first_live_server(hub::peers::alive_since())
            .await?;
        Ok(first.is_none_or(|id| id == self.hub.server_id))
    }

    /// Whether builds of this project send statuses anywhere.
    pub fn reports_for(&self, project: &str) -> bool {
        self.live()
            .projects
            .get(project)
            .is_some_and(|p| !p.report.is_empty() || !p.notify.is_empty())
    }
}

pub struct ServerOptions {
    pub listen: String,
    pub data_dir: PathBuf,
    /// `--dist DIR`: executables served to installers of other platforms.
    pub dist_dir: Option<PathBuf>,
    pub users: std::collections::BTreeMap<String, String>,
    pub private: bool,
    pub projects: Vec<ProjectConfig>,
    pub settings: Settings,
    /// The server's address as others reach it; default http://LISTEN.
    pub public_url: Option<String>,
    /// `postgres://…` to keep everything in PostgreSQL (several servers may
    /// share it); None: SQLite in the data directory.
    pub database: Option<String>,
    pub tls: TlsSetting,
    pub conn_limits: serve::ConnLimits,
    /// Revoke every admin token and make a new one (`--new-admin-token`).
    pub new_admin_token: bool,
    /// Where artifacts are kept; None: DATA/artifacts.
    pub artifacts_dir: Option<PathBuf>,
    /// How email leaves (`smtp:`).
    pub smtp: Option<config::SmtpConfig>,
    /// How long a worker is away before its owner hears; None: 1 h.
    pub offline_notice: Option<std::time::Duration>,
    /// What projects keep unless they say otherwise (`keep:`).
    pub keep: config::KeepConfig,
    /// How often the janitor runs; None: hourly.
    pub janitor_interval: Option<std::time::Duration>,
    /// The config file a reload rereads (None: no reload).
    pub reload_from: Option<reload::ReloadSource>,
}

/// Where the server's TLS certificate comes from.
#[derive(Debug, Clone, Default)]
pub enum TlsSetting {
    /// Plain HTTP (behind a TLS-terminating proxy, or on loopback).
    #[default]
    Off,
    /// `--tls-cert FILE --tls-key FILE`, both PEM.
    Files { cert: PathBuf, key: PathBuf },
    /// `--tls self-signed`: a CA and certificate made in DATA/tls on first
    /// start.
    SelfSigned,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] herd_tls::TlsError),
    #[error("cannot set up the HTTP client for status reports: {0}")]
    HttpClient(String),
    #[error("cannot listen on {addr}: {source} (is another server running there? choose another with --listen)")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

pub struct RunningServer {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    /// The admin token, when this start created it (first start).
    pub new_admin_token: Option<String>,
    /// The TLS certificate served, if any.
    pub tls: Option<TlsInfo>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    /// Reporter and cluster tasks, stopped with the server.
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// Stops accepting requests, closes connections and the store.
    pub async fn stop(mut self) {
        self.app.pollers.stop();
        for t in &self.background {
            t.abort();
        }
        if self.app.hub.store.postgres_url().is_some() {
            if let Err(e) = self
                .app
                .hub
                .store
                .server_leaving(&self.app.hub.server_id)
                .await
            {
                tracing::warn!("could not tell the other servers this one stops: {e}");
            }
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
        self.app.hub.store.close().await;
    }
}

/// What a TLS server tells its operator.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub pin: String,
    pub cert_path: PathBuf,
    pub ca_path: Option<PathBuf>,
}

pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The host names a self-signed certificate is made for: the public URL's
/// and the listening address's (unless it is a wildcard).
fn certificate_names(listen: &str, public_url: Option<&str>) -> Vec<String> {
    let listen_url = format!("http://{listen}");
    let mut names: Vec<String> = Vec::new();
    for url in public_url.into_iter().chain([listen_url.as_str()]) {
        let host = reqwest::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(|h| h.trim_matches(['[', ']']).to_string()));
        if let Some(h) = host.filter(|h| h != "0.0.0.0" && h != "::") {
            if !names.contains(&h) {
                names.push(h);
            }
        }
    }
    names
}

pub async fn start(opts: ServerOptions) -> Result<RunningServer, ServerError> {
    let data_err = |source| ServerError::DataDir {
        path: opts.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&opts.data_dir).map_err(data_err)?;
    // One crypto provider for every TLS client and server in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let reporter =
        report::StatusReporter::new().map_err(|e| ServerError::HttpClient(e.to_string()))?;
    let store = match &opts.database {
        Some(url) if store::is_postgres_url(url) => Store::open_postgres(url).await?,
        Some(path) => Store::open_sqlite(Path::new(path)).await?,
        None => Store::open_sqlite(&opts.data_dir.join("herd.db")).await?,
    };
    if opts.new_admin_token {
        let revoked = store.revoke_tokens_of_kind("admin").await?;
        tracing::warn!("revoked {revoked} admin token(s); a new one follows");
    }
    let new_admin_token = ensure_admin_token(&store, &opts.data_dir).await?;
    for p in &opts.projects {
        store
            .upsert_project(&ProjectRow {
                name: p.name.clone(),
                repo: p.repo.clone(),
                pipeline: p.pipeline.clone(),
            })
            .await?;
    }
    let tls = match &opts.tls {
        TlsSetting::Off => None,
        TlsSetting::Files { cert, key } => Some(herd_tls::server::from_files(cert, key)?),
        TlsSetting::SelfSigned => Some(herd_tls::server::self_signed(
            &opts.data_dir.join("tls"),
            &certificate_names(&opts.listen, opts.public_url.as_deref()),
        )?),
    };
    let server_id = auth::random_hex(8);
    let mirrors = mirrors(&opts);
    let artifacts_dir = opts
        .artifacts_dir
        .clone()
        .unwrap_or_else(|| opts.data_dir.join("artifacts"));
    let artifacts =
        artifacts::ArtifactStore::open(&artifacts_dir).map_err(|source| ServerError::DataDir {
            path: artifacts_dir.clone(),
            source,
        })?;
    let hub = Hub::start(store, opts.settings, server_id).await?;
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: opts.listen.clone(),
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: opts.listen.clone(),
            source,
        })?;
    let app = Arc::new(App {
        hub,
        mirrors,
        data_dir: opts.data_dir.clone(),
        dist_dir: opts.dist_dir.clone(),
        sessions: web::Sessions::default(),
        live: arc_swap::ArcSwap::from_pointee(LiveConfig::new(
            &opts.projects,
            opts.users.clone(),
            opts.private,
            opts.keep,
        )),
        reload_from: opts.reload_from.clone(),
        pollers: poll::Pollers::new(&opts.projects),
        reporter,
        public_url: opts.public_url.clone().unwrap_or_else(|| {
            let scheme = if tls.is_some() { "https" } else { "http" };
            format!("{scheme}://{addr}")
        }),
        tls_pin: tls.as_ref().map(|t| t.pin.clone()),
        limits: limits::Limits::default(),
        artifacts,
        smtp: opts.smtp.clone(),
        offline_notice: opts
            .offline_notice
            .unwrap_or(std::time::Duration::from_secs(3600)),
    });
    poll::Pollers::spawn_all(&app);
    let mut background = vec![
        report::StatusReporter::spawn(&app),
        spawn_part_sweeper(Arc::clone(&app)),
    ];
    background.push(janitor::spawn(
        &app,
        opts.janitor_interval
            .unwrap_or(std::time::Duration::from_secs(3600)),
    ));
    background.extend(schedules::spawn(&app));
    background.extend(owners::spawn(&app));
    if let Some(url) = app.hub.store.postgres_url() {
        background.extend(cluster::spawn(
            Arc::clone(&app.hub),
            url.to_string(),
            app.public_url.clone(),
        ));
    }
    let router = api::router(Arc::clone(&app));
    let (tx, rx) = oneshot::channel::<()>();
    let tls_info = tls.as_ref().map(|t| TlsInfo {
        pin: t.pin.clone(),
        cert_path: t.cert_path.clone(),
        ca_path: t.ca_path.clone(),
    });
    let task = tokio::spawn(serve::serve(
        listener,
        router,
        tls.map(|t| t.config),
        opts.conn_limits.fit_to_open_files(),
        rx,
    ));
    tracing::info!("herd server listening on {}", app.public_url);
    Ok(RunningServer {
        addr,
        app,
        new_admin_token,
        tls: tls_info,
        shutdown: Some(tx),
        task,
        background,
    })
}

/// The mirrors, with each project's credentials handed to git through
/// `herd __askpass` (this very executable).
/// Removes, every hour, upload parts that stopped growing a day ago (their
/// attempt ended without finishing them).
fn spawn_part_sweeper(app: Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            let app = Arc::clone(&app);
            let removed = tokio::task::spawn_blocking(move || {
                app.artifacts.sweep_parts(artifacts::STALE_PART)
            })
            .await
            .unwrap_or(0);
            if removed > 0 {
                tracing::info!("removed {removed} unfinished artifact uploads a day old");
            }
        }
    })
}

fn mirrors(opts: &ServerOptions) -> git::Mirrors {
    let mut mirrors = git::Mirrors::new(opts.data_dir.join("repos"));
    let askpass = std::env::current_exe().ok();
    for p in &opts.projects {
        if let (Some(c), Some(exe)) = (&p.credentials, &askpass) {
            mirrors = mirrors.with_credentials(&p.name, exe, &c.user, &c.token.0);
        }
    }
    mirrors
}

/// On first start, creates the admin token and writes it to
/// `DATA/admin-token` (mode 0600); the store keeps only its hash.
async fn ensure_admin_token(store: &Store, data_dir: &Path) -> Result<Option<String>, ServerError> {
    if store.count_tokens("admin").await? > 0 {
        return Ok(None);
    }
    let token = auth::create_token(store, auth::TokenKind::Admin, None).await?;
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    write_private(&path, &format!("{token}\n")).map_err(|source| ServerError::DataDir {
        path: path.clone(),
        source,
    })?;
    Ok(Some(token))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_certificate_is_made_for_the_public_and_the_listening_host() {
        use super::certificate_names as names;
        assert_eq!(
            names("10.0.0.5:8080", Some("https://ci.example.org/herd")),
            ["ci.example.org", "10.0.0.5"]
        );
        assert_eq!(names("0.0.0.0:8080", None), Vec::<String>::new());
        assert_eq!(names("[::1]:8080", Some("https://[::1]:8080")), ["::1"]);
    }
}
