//! `herd worker`: connect out to a server and run its jobs.

use clap::Args;
use herd_worker::{Shutdown, WorkerOptions};
use miette::{miette, IntoDiagnostic, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Args)]
pub struct WorkerArgs {
    /// Server address, e.g. http://ci.example.org:8080.
    #[arg(long, env = "HERD_SERVER")]
    server: String,
    /// This worker's token (from `herd token create --worker NAME`).
    #[arg(long, env = "HERD_WORKER_TOKEN", hide_env_values = true)]
    token: String,
    /// Worker name; the token decides, this only checks.
    #[arg(long)]
    name: Option<String>,
    /// Where workspaces live.
    #[arg(long, default_value = "./herd-work")]
    workdir: PathBuf,
    /// Jobs run at once.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// KEY=VALUE labels matched by `requires:` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
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
    crate::init_logging("info");
    if args.slots == 0 || args.slots > 1024 {
        return Err(miette!("--slots must be between 1 and 1024"));
    }
    let workdir = std::path::absolute(&args.workdir).into_diagnostic()?;
    let opts = WorkerOptions {
        server: args.server,
        token: args.token,
        name: args.name,
        workdir,
        slots: args.slots,
        labels: parse_labels(&args.labels)?,
        herd_bin: std::env::current_exe().ok(),
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
