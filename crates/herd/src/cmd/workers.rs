//! `herd workers [show NAME | reprobe [NAME] | pause NAME | resume NAME]`.

use crate::client::Client;
use crate::cmd::build::print_json;
use crate::{outln, ClientArgs, Output};
use clap::{Args, Subcommand};
use herd_api::workers::{Paused, ReprobeRequest, Reprobing, Worker, WorkerList};
use miette::Result;
use std::process::ExitCode;

#[derive(Args)]
pub struct WorkersArgs {
    #[command(subcommand)]
    command: Option<WorkersCommand>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum WorkersCommand {
    /// Facts, labels and probe results of one worker.
    Show {
        /// The worker's name (`herd workers` lists them).
        name: String,
    },
    /// Run the probes again on one worker, or on every connected one.
    Reprobe {
        /// The worker's name; none: every connected worker.
        name: Option<String>,
    },
    /// No new jobs for this worker (running ones finish); survives restarts.
    Pause {
        /// The worker's name.
        name: String,
    },
    /// Give a paused worker jobs again.
    Resume {
        /// The worker's name.
        name: String,
    },
}

pub async fn run(args: WorkersArgs) -> Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let output = args.client.output;
    match args.command {
        None => {
            let list: WorkerList = c.get("/api/v1/workers").await?;
            match output {
                Output::Json => print_json(&list)?,
                Output::Human => print_list(&list.workers),
            }
        }
        Some(WorkersCommand::Show { name }) => {
            let w: Worker = c.get(&format!("/api/v1/workers/{name}")).await?;
            match output {
                Output::Json => print_json(&w)?,
                Output::Human => print_worker(&w),
            }
        }
        Some(WorkersCommand::Pause { name }) => {
            let _: Paused = c.act(&format!("/api/v1/workers/{name}/pause")).await?;
            outln!("paused {name}: running jobs finish, no new ones start");
        }
        Some(WorkersCommand::Resume { name }) => {
            let _: Paused = c.act(&format!("/api/v1/workers/{name}/resume")).await?;
            outln!("resumed {name}");
        }
        Some(WorkersCommand::Reprobe { name }) => {
            let res: Reprobing = c
                .post("/api/v1/workers/reprobe", &ReprobeRequest { worker: name })
                .await?;
            outln!(
                "reprobing: {}",
                if res.reprobing.is_empty() {
                    "no worker is online".to_string()
                } else {
                    res.reprobing.join(", ")
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_worker(w: &Worker) {
    let state = if w.online { "online" } else { "offline" };
    outln!(
        "worker {}: {state}, {} slots, herd {}",
        w.name,
        w.slots,
        w.version
    );
    outln!("facts:");
    for (k, v) in &w.facts {
        outln!("  {k:<12} {v}");
    }
    if !w.labels.is_empty() {
        outln!("labels:");
        for (k, v) in &w.labels {
            outln!("  {k:<12} {v}");
        }
    }
    if !w.probes.is_empty() {
        outln!("probes:");
        for p in &w.probes {
            let what = if p.present {
                p.version
                    .clone()
                    .unwrap_or_else(|| "present (version unknown)".into())
            } else {
                format!(
                    "not found{}",
                    p.output
                        .as_deref()
                        .map(|o| format!(": {}", o.lines().next().unwrap_or("")))
                        .unwrap_or_default()
                )
            };
            outln!("  {:<20} {what}", p.name);
        }
    }
}

fn print_list(workers: &[Worker]) {
    if workers.is_empty() {
        outln!("no workers yet: create a token with `herd token create --worker NAME` and start `herd worker`");
        return;
    }
    outln!(
        "{:<20} {:<8} {:>5} {:<8} {:<24} LABELS",
        "NAME",
        "STATE",
        "SLOTS",
        "RUNNING",
        "PLATFORM"
    );
    for w in workers {
        let state = match (w.online, w.paused) {
            _ if w.quarantined_until.is_some() => "quarantined",
            (true, true) => "paused",
            (true, false) => "online",
            (false, true) => "offline, paused",
            (false, false) => "offline",
        };
        let fact = |k: &str| w.facts.get(k).map_or("?", String::as_str);
        let platform = format!("{} {} {}cpu", fact("os"), fact("arch"), fact("cpus"));
        let labels = w
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        outln!(
            "{:<20} {:<8} {:>5} {:<8} {:<24} {}",
            w.name,
            state,
            w.slots,
            w.running_attempts.len(),
            platform,
            labels
        );
    }
}
