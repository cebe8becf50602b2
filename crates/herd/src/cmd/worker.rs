//! `herd worker`: connect out to a server and run its jobs.

use clap::Args;
use herd_worker::{Shutdown, WorkerOptions};
use miette::{miette, IntoDiagnostic, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    #[command(subcommand)]
    command: Option<WorkerCommand>,
    /// Read server, token, name, workdir, slots and labels from this file
    /// (written by `herd worker install`); flags given too win.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Server address, e.g. http://ci.example.org:8080. Repeat it (or
    /// separate with commas) for several servers sharing one database: the
    /// worker moves to another when its server goes away.
    #[arg(long, env = "HERD_SERVER", value_delimiter = ',')]
    server: Vec<String>,
    /// This worker's token (from `herd token create --worker NAME`).
    #[arg(long, env = "HERD_WORKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Worker name; the token decides, this only checks.
    #[arg(long)]
    name: Option<String>,
    /// Where workspaces live (default ./herd-work).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Jobs run at once (default 1).
    #[arg(long)]
    slots: Option<u32>,
    /// KEY=VALUE labels matched by `requires:` (repeatable). A label the
    /// worker states itself never meets a secret's `labels:`: those are set
    /// by the server (`herd workers label`, an enrollment token).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// NAME=COMMAND: a custom probe this machine answers with its own shell
    /// command (it wins over the server's definition), e.g.
    /// `--probe 'wx=wx-config --version'` (repeatable).
    #[arg(long = "probe", value_name = "NAME=COMMAND")]
    probes: Vec<String>,
    /// The server's TLS pin (`sha256//…`, printed by `herd server`): trust
    /// exactly that key rather than the machine's CAs.
    #[arg(long, env = "HERD_TLS_PIN")]
    tls_pin: Option<String>,
    #[command(flatten)]
    disk: DiskArgs,
    /// Seconds between two looks at the disk (the worker also looks after
    /// every job).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86400))]
    disk_interval: u64,
    /// `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, value_enum, default_value_t, env = "HERD_LOG_FORMAT")]
    log_format: crate::LogFormat,
}

/// How a worker keeps its disk.
#[derive(Args, Clone)]
pub struct DiskArgs {
    /// Free space to keep where workspaces live: a percentage of the disk
    /// or a size (`10%`, `20GB`). Under it, least recently used workspaces
    /// are removed; if that is not enough the worker takes no new jobs
    /// (default 10%).
    #[arg(long, value_name = "PERCENT|SIZE")]
    min_free: Option<String>,
    /// Workspaces kept warm at most; the least recently used go first
    /// (default 50).
    #[arg(long, value_name = "N")]
    max_workspaces: Option<usize>,
}

impl DiskArgs {
    /// The policy: these flags, else the config file's, else the defaults.
    fn policy(
        &self,
        file: Option<&herd_worker::install::WorkerConfig>,
    ) -> Result<herd_worker::disk::DiskPolicy> {
        let default = herd_worker::disk::DiskPolicy::default();
        let min_free = match self
            .min_free
            .clone()
            .or(file.and_then(|f| f.min_free.clone()))
        {
            Some(t) => herd_worker::disk::MinFree::parse(&t).map_err(|e| miette!("{e}"))?,
            None => default.min_free,
        };
        Ok(herd_worker::disk::DiskPolicy {
            min_free,
            max_workspaces: self
                .max_workspaces
                .or(file.and_then(|f| f.max_workspaces))
                .unwrap_or(default.max_workspaces),
        })
    }
}

#[derive(clap::Subcommand)]
// Parsed once at start: the size of the install variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum WorkerCommand {
    /// Make this machine a worker that starts at boot: service user,
    /// prerequisites, executable, registration, service, online.
    Install {
        /// Server address, e.g. http://ci.example.org:8080.
        #[arg(long)]
        server: String,
        /// An enrollment token (`herd token create --enroll`).
        #[arg(long, hide_env_values = true, env = "HERD_ENROLL_TOKEN")]
        token: String,
        /// Worker name (default: from the host name).
        #[arg(long)]
        name: Option<String>,
        /// KEY=VALUE labels (repeatable), beside the token's.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        /// Jobs run at once.
        #[arg(long, default_value_t = 1)]
        slots: u32,
        /// The service user (as root).
        #[arg(long, default_value = "herd")]
        user: String,
        /// Where workspaces live (default: the user's home/work).
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Where the executable goes (default /usr/local/bin, or ~/.local/bin).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The config file (default /etc/herd/worker.yml, or ~/.config/herd/worker.yml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The server's TLS pin (`sha256//…`); the install one-liner gives it.
        #[arg(long, env = "HERD_TLS_PIN")]
        tls_pin: Option<String>,
        /// Your email address: the server tells you when this machine has
        /// been offline for a while, and when it is back (unless the
        /// enrollment token names an owner).
        #[arg(long, value_name = "EMAIL")]
        owner: Option<String>,
    },
    /// Stop and remove the service; with --purge also the user, the files
    /// and the worker's registration on the server.
    Uninstall {
        #[arg(long)]
        purge: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replace the executable by the server's and restart (running jobs
    /// finish first).
    Upgrade {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove workspaces now, least recently used first, as the running
    /// worker would (never one a job holds, also of a running worker).
    Gc {
        /// The worker's config file (for its work directory and limits).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The work directory (default: the config file's, else ./herd-work).
        #[arg(long)]
        workdir: Option<PathBuf>,
        #[command(flatten)]
        disk: DiskArgs,
        /// Remove every workspace no job holds.
        #[arg(long)]
        all: bool,
        /// Say what would go; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

async fn run_command(cmd: WorkerCommand) -> Result<ExitCode> {
    let result = match cmd {
        WorkerCommand::Install {
            server,
            token,
            name,
            labels,
            slots,
            user,
            workdir,
            bin_dir,
            config,
            tls_pin,
            owner,
        } => {
            if slots == 0 || slots > 1024 {
                return Err(miette!("--slots must be between 1 and 1024"));
            }
            if let Some(o) = &owner {
                if !crate::cmd::token::is_email(o) {
                    return Err(miette!(
                        "--owner {o}: give your email address, e.g. --owner alice@example.org"
                    ));
                }
            }
            herd_worker::install::install(herd_worker::install::InstallOptions {
                server,
                token,
                name,
                labels: parse_labels(&labels)?,
                slots,
                user,
                workdir,
                bin_dir,
                config,
                online_timeout: std::time::Duration::from_secs(60),
                tls_pin,
                owner,
            })
            .await
        }
        WorkerCommand::Uninstall { purge, config } => {
            herd_worker::install::uninstall(config.as_deref(), purge).await
        }
        WorkerCommand::Upgrade { config } => herd_worker::install::upgrade(config.as_deref()).await,
        WorkerCommand::Gc {
            config,
            workdir,
            disk,
            all,
            dry_run,
        } => return gc(config, workdir, &disk, all, dry_run),
    };
    result.map_err(|e| miette!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn gc(
    config: Option<PathBuf>,
    workdir: Option<PathBuf>,
    disk: &DiskArgs,
    all: bool,
    dry_run: bool,
) -> Result<ExitCode> {
    let file = match &config {
        Some(p) => Some(herd_worker::install::WorkerConfig::load(p).map_err(|e| miette!("{e}"))?),
        None => None,
    };
    let workdir = workdir
        .or(file.as_ref().map(|f| f.workdir.clone()))
        .unwrap_or_else(|| PathBuf::from("./herd-work"));
    if !workdir.is_dir() {
        return Err(miette!(
            "{} is not a directory: give the worker's --workdir (or --config FILE)",
            workdir.display()
        ));
    }
    let keeper = herd_worker::disk::Workspaces::new(workdir, disk.policy(file.as_ref())?);
    let out = keeper.gc(all, dry_run).map_err(|e| {
        miette!(
            "cannot look after the workspaces in {}: {e}",
            keeper.root.display()
        )
    })?;
    let verb = if dry_run { "would remove" } else { "removed" };
    for e in &out.removed {
        let ago = e.last_used.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        println!("{verb} {} (last used {})", e.path.display(), ago_text(ago));
    }
    let r = &out.report;
    println!(
        "{} workspace(s) {}, {} kept ({} in use); {} free of {}",
        out.removed.len(),
        if dry_run { "would go" } else { "removed" },
        r.workspaces,
        out.in_use,
        herd_core::size::human_bytes(r.free_bytes),
        herd_core::size::human_bytes(r.total_bytes)
    );
    if let Some(why) = &r.low {
        eprintln!("{why}");
        return Ok(ExitCode::from(crate::exit_codes::FAILED));
    }
    Ok(ExitCode::SUCCESS)
}

fn ago_text(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

pub fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| miette!("label `{l}`: expected KEY=VALUE, e.g. --label gpu=a100"))?;
            if k.is_empty() {
                return Err(miette!("label `{l}`: the key is empty"));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

pub async fn run(args: WorkerArgs) -> Result<ExitCode> {
    if let Some(cmd) = args.command {
        return run_command(cmd).await;
    }
    crate::init_logging("info", args.log_format);
    let file = match &args.config {
        Some(p) => Some(herd_worker::install::WorkerConfig::load(p).map_err(|e| miette!("{e}"))?),
        None => None,
    };
    let server = Some(args.server.join(","))
        .filter(|s| !s.is_empty())
        .or(file.as_ref().map(|f| f.server.clone()))
        .ok_or_else(|| miette!("no server: give --server URL (or --config FILE)"))?;
    let token = args
        .token
        .or(file.as_ref().map(|f| f.token.clone()))
        .ok_or_else(|| {
            miette!(
                "no token: give --token (from `herd token create --worker NAME`) or --config FILE"
            )
        })?;
    let slots = args.slots.or(file.as_ref().map(|f| f.slots)).unwrap_or(1);
    if slots == 0 || slots > 1024 {
        return Err(miette!("--slots must be between 1 and 1024"));
    }
    let workdir = args
        .workdir
        .or(file.as_ref().map(|f| f.workdir.clone()))
        .unwrap_or_else(|| PathBuf::from("./herd-work"));
    let workdir = std::path::absolute(&workdir).into_diagnostic()?;
    let mut labels = file.as_ref().map(|f| f.labels.clone()).unwrap_or_default();
    labels.extend(parse_labels(&args.labels)?);
    let mut probes = file.as_ref().map(|f| f.probes.clone()).unwrap_or_default();
    for p in &args.probes {
        match p.split_once('=') {
            Some((name, command)) if !name.trim().is_empty() && !command.trim().is_empty() => {
                probes.insert(name.trim().to_string(), command.to_string());
            }
            _ => {
                return Err(miette!(
                    "--probe {p}: expected NAME=COMMAND, e.g. --probe 'wx=wx-config --version'"
                ))
            }
        }
    }
    let opts = WorkerOptions {
        server,
        token,
        name: args.name.or(file.as_ref().map(|f| f.name.clone())),
        workdir,
        slots,
        labels,
        herd_bin: std::env::current_exe().ok(),
        tls_pin: args
            .tls_pin
            .or(file.as_ref().and_then(|f| f.tls_pin.clone())),
        probes,
        disk: args.disk.policy(file.as_ref())?,
        disk_interval: std::time::Duration::from_secs(args.disk_interval),
    };
    let (tx, rx) = tokio::sync::watch::channel(Shutdown::Run);
    tokio::spawn(shutdown_signals(tx));
    herd_worker::run(opts, rx)
        .await
        .map_err(|e| miette!("{e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM: drain (finish the running jobs, take no new ones). A second
/// SIGTERM, or SIGINT: stop now.
async fn shutdown_signals(tx: tokio::sync::watch::Sender<Shutdown>) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        super::stop_signal().await;
        let _ = tx.send(Shutdown::Now);
        return;
    };
    tokio::select! {
        _ = term.recv() => {
            eprintln!("SIGTERM: finishing the running jobs; send SIGTERM or SIGINT again to stop now");
            let _ = tx.send(Shutdown::Drain);
        }
        _ = int.recv() => {
            let _ = tx.send(Shutdown::Now);
            return;
        }
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = tx.send(Shutdown::Now);
}
