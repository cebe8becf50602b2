//! `herd server`: the build master.

use clap::Args;
use herd_server::config::{parse_project_arg, ServerConfig, TlsConfig};
use herd_server::hub::Settings;
use herd_server::ServerOptions;
use miette::{miette, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ServerArgs {
    #[command(subcommand)]
    command: Option<ServerCommand>,
    /// Address to serve the API, the worker endpoint and the web page on.
    #[arg(long)]
    listen: Option<String>,
    /// Data directory: the SQLite database, git mirrors, the admin token.
    #[arg(long)]
    data: Option<PathBuf>,
    /// This server's address as others reach it (links in commit
    /// statuses), e.g. https://ci.example.org; default http://LISTEN.
    #[arg(long)]
    url: Option<String>,
    /// Where to keep everything: `postgres://USER@HOST/DB` (several servers
    /// may share it) or a SQLite file (default: DATA/herd.db).
    #[arg(long, env = "HERD_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Config file (YAML).
    #[arg(long)]
    config: Option<PathBuf>,
    /// NAME=REPO: a project to build, REPO a git URL or local path (repeatable).
    #[arg(long = "project", value_name = "NAME=REPO")]
    projects: Vec<String>,
    /// Interval of heartbeats, e.g. 5s.
    #[arg(long)]
    heartbeat_interval: Option<String>,
    /// Silence after which a worker counts as lost, e.g. 15s.
    #[arg(long)]
    heartbeat_timeout: Option<String>,
    /// Interval of heartbeats while a worker runs nothing, e.g. 30s.
    #[arg(long)]
    idle_heartbeat_interval: Option<String>,
    /// Silence after which a worker running nothing counts as lost, e.g.
    /// 90s (one given a job answers within --heartbeat-timeout).
    #[arg(long)]
    idle_heartbeat_timeout: Option<String>,
    /// Extra attempts a job gets when its worker is lost (a step that fails
    /// on its own is never retried).
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Directory of `herd-OS-ARCH` executables that installers of other
    /// platforms download (this server's own platform is served from itself).
    #[arg(long, value_name = "DIR")]
    dist: Option<PathBuf>,
    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// `self-signed`: make a CA and a certificate in DATA/tls on first start
    /// and serve TLS with it; workers pin its key (the install one-liner
    /// carries the pin).
    #[arg(long, value_name = "MODE", value_parser = ["self-signed"])]
    tls: Option<String>,
    /// How long a client may take to send a request's head or finish a TLS
    /// handshake before the connection is closed.
    /// (Default 10s.)
    #[arg(long, value_name = "DURATION")]
    client_timeout: Option<String>,
    /// Revoke every admin token and write a new one to DATA/admin-token
    /// (the way to replace the admin token; the API does not revoke it).
    #[arg(long)]
    new_admin_token: bool,
    /// `text` for people, `json` (one object per line, with `build`,
    /// `attempt`, `worker` fields on a build's lines) for log collectors.
    #[arg(long, value_enum, default_value_t, env = "HERD_LOG_FORMAT")]
    log_format: crate::LogFormat,
}

#[derive(clap::Subcommand)]
enum ServerCommand {
    /// Make the running server reread its config file (as SIGHUP does):
    /// projects, secrets, users, reporters, retention. Connections stay; a
    /// config with an error changes nothing and says why.
    Reload {
        #[command(flatten)]
        client: crate::ClientArgs,
    },
}

pub fn load(args: &ServerArgs) -> Result<ServerOptions> {
    let config = match &args.config {
        None => ServerConfig::default(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| miette!("cannot read config {}: {e}", path.display()))?;
            ServerConfig::parse(&path.display().to_string(), &text).map_err(|e| miette!("{e}"))?
        }
    };
    let mut projects = config.projects.clone();
    let mut cli_projects = Vec::new();
    for p in &args.projects {
        let p = parse_project_arg(p).map_err(|e| miette!("--project {e}"))?;
        projects.retain(|q| q.name != p.name);
        projects.push(p.clone());
        cli_projects.push(p);
    }
    let dur = |flag: &str, v: &Option<String>| -> Result<Option<std::time::Duration>> {
        v.as_ref()
            .map(|s| herd_core::duration::parse_duration(s).map_err(|e| miette!("{flag} {s}: {e}")))
            .transpose()
    };
    let mut settings = Settings {
        max_attempts: i64::from(args.retries) + 1,
        secrets: std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(config.secrets.clone())),
        probe_commands: std::sync::Arc::new(config.probes.clone()),
        limits: config.limits,
        ..Settings::default()
    };
    if let Some(bytes) = config.max_step_log {
        if bytes < 1024 {
            return Err(miette!(
                "max_step_log: {bytes} bytes is too small (at least 1024)"
            ));
        }
        settings.max_step_log = bytes;
    }
    if let Some(d) =
        dur("--heartbeat-interval", &args.heartbeat_interval)?.or(config.heartbeat_interval)
    {
        settings.heartbeat_interval = d;
    }
    if let Some(d) =
        dur("--heartbeat-timeout", &args.heartbeat_timeout)?.or(config.heartbeat_timeout)
    {
        settings.heartbeat_timeout = d;
    }
    // Unset, the idle cadence is never tighter than the busy one.
    settings.idle_heartbeat_interval =
        dur("--idle-heartbeat-interval", &args.idle_heartbeat_interval)?
            .or(config.idle_heartbeat_interval)
            .unwrap_or(
                settings
                    .idle_heartbeat_interval
                    .max(settings.heartbeat_interval),
            );
    settings.idle_heartbeat_timeout =
        dur("--idle-heartbeat-timeout", &args.idle_heartbeat_timeout)?
            .or(config.idle_heartbeat_timeout)
            .unwrap_or(
                settings
                    .idle_heartbeat_timeout
                    .max(settings.heartbeat_timeout),
            );
    check_heartbeats(&settings)?;
    // Flags win over the config file.
    let tls = match (&args.tls, &args.tls_cert, &args.tls_key, &config.tls) {
        (Some(_), _, _, _) => herd_server::TlsSetting::SelfSigned,
        (None, Some(cert), Some(key), _) => herd_server::TlsSetting::Files {
            cert: cert.clone(),
            key: key.clone(),
        },
        (_, _, _, Some(TlsConfig::SelfSigned)) => herd_server::TlsSetting::SelfSigned,
        (_, _, _, Some(TlsConfig::Files { cert, key })) => herd_server::TlsSetting::Files {
            cert: cert.into(),
            key: key.into(),
        },
        _ => herd_server::TlsSetting::Off,
    };
    let client_timeout = match (&args.client_timeout, config.client_timeout) {
        (Some(t), _) => herd_core::duration::parse_duration(t)
            .map_err(|e| miette!("--client-timeout {t}: {e}"))?,
        (None, Some(d)) => d,
        (None, None) => herd_server::serve::ConnLimits::default().client_timeout,
    };
    Ok(ServerOptions {
        new_admin_token: args.new_admin_token,
        tls,
        conn_limits: herd_server::serve::ConnLimits {
            client_timeout,
            ..Default::default()
        },
        dist_dir: args.dist.clone(),
        artifacts_dir: config.artifacts_dir.clone().map(PathBuf::from),
        smtp: config.smtp.clone(),
        offline_notice: config.offline_notice,
        keep: config.keep,
        janitor_interval: config.janitor_interval,
        reload_from: args
            .config
            .clone()
            .map(|file| herd_server::reload::ReloadSource {
                file,
                cli_projects: cli_projects.clone(),
            }),
        users: config.users.clone(),
        private: config.private,
        listen: args
            .listen
            .clone()
            .or(config.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into()),
        data_dir: args
            .data
            .clone()
            .or(config.data.map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("herd-data")),
        projects,
        settings,
        database: args.database.clone().or(config.database.clone()),
        public_url: args
            .url
            .clone()
            .or(config.url.clone())
            .map(|u| u.trim_end_matches('/').to_string()),
    })
}

pub async fn run(args: ServerArgs) -> Result<ExitCode> {
    if let Some(ServerCommand::Reload { client }) = &args.command {
        return super::ops::reload(client).await;
    }
    crate::init_logging("info", args.log_format);
    let opts = load(&args)?;
    let data_dir = opts.data_dir.clone();
    let server = herd_server::start(opts).await.map_err(|e| miette!("{e}"))?;
    if server.new_admin_token.is_some() {
        tracing::info!(
            "created the admin token: {}",
            data_dir.join(herd_server::ADMIN_TOKEN_FILE).display()
        );
    }
    if let Some(tls) = &server.tls {
        tracing::info!(
            "serving TLS with {}; its pin (workers and the CLI take it as --tls-pin or HERD_TLS_PIN): {}",
            tls.cert_path.display(),
            tls.pin
        );
        if let Some(ca) = &tls.ca_path {
            tracing::info!(
                "the CA that signed it (for a browser's trust store): {}",
                ca.display()
            );
        }
    }
    // The first line on stdout is the address, for scripts and tests.
    let scheme = if server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    crate::outln!("{scheme}://{}", server.addr);
    let hangups = spawn_reload_on_hangup(std::sync::Arc::clone(&server.app));
    super::stop_signal().await;
    hangups.abort();
    tracing::info!("stopping");
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP rereads the config file (the answer goes to the log).
fn spawn_reload_on_hangup(app: std::sync::Arc<herd_server::App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            match herd_server::reload::reload(&app).await {
                Ok(r) => tracing::info!(
                    "reloaded {}: {} projects; {}",
                    r.file,
                    r.projects.len(),
                    if r.changes.is_empty() {
                        "nothing changed".to_string()
                    } else {
                        r.changes.join("; ")
                    }
                ),
                Err(e) => tracing::error!("reload refused: {e}"),
            }
        }
    })
}

/// Each timeout longer than its interval, and an idle worker no more
/// watched than a busy one: else connections end between heartbeats.
fn check_heartbeats(s: &Settings) -> Result<()> {
    let pairs = [
        ("heartbeat", s.heartbeat_interval, s.heartbeat_timeout),
        (
            "idle heartbeat",
            s.idle_heartbeat_interval,
            s.idle_heartbeat_timeout,
        ),
    ];
    for (what, interval, timeout) in pairs {
        if timeout <= interval {
            return Err(miette!(
                "the {what} timeout ({timeout:?}) must be longer than its interval ({interval:?}): a worker would be lost between two heartbeats"
            ));
        }
    }
    if s.idle_heartbeat_interval < s.heartbeat_interval
        || s.idle_heartbeat_timeout < s.heartbeat_timeout
    {
        return Err(miette!(
            "the idle heartbeat interval and timeout ({:?}, {:?}) must be at least the busy ones ({:?}, {:?}): raise --idle-heartbeat-interval/--idle-heartbeat-timeout",
            s.idle_heartbeat_interval,
            s.idle_heartbeat_timeout,
            s.heartbeat_interval,
            s.heartbeat_timeout
        ));
    }
    Ok(())
}
