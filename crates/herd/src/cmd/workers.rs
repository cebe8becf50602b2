//! `herd workers [show NAME | reprobe [NAME] | pause NAME | resume NAME]`.

use crate::client::Client;
use crate::cmd::build::print_json;
use crate::{outln, ClientArgs, Output};
use clap::{Args, Subcommand};
use herd_api::workers::{Paused, ReprobeRequest, Reprobing, SetLabels, Worker, WorkerList};
use miette::Result;
use std::collections::BTreeMap;
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
    /// Labels the server gives a worker (admin). Unlike the labels a worker
    /// states itself, these meet the `labels:` of a secret.
    Label {
        /// The worker's name (it need not have connected yet).
        name: String,
        /// Labels to set, as KEY=VALUE.
        #[arg(value_parser = parse_key_value)]
        labels: Vec<(String, String)>,
        /// A label to remove (repeat for more).
        #[arg(long, value_name = "KEY")]
        remove: Vec<String>,
    },
}

pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
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
        Some(WorkersCommand::Label {
            name,
            labels,
            remove,
        }) => {
            if labels.is_empty() && remove.is_empty() {
                return Err(miette::miette!(
                    "nothing to do: give labels as KEY=VALUE, or --remove KEY"
                ));
            }
            let req = SetLabels {
                set: labels.into_iter().collect(),
                remove,
            };
            let now: BTreeMap<String, String> = c
                .post(&format!("/api/v1/workers/{name}/labels"), &req)
                .await?;
            match output {
                Output::Json => print_json(&now)?,
                Output::Human if now.is_empty() => {
                    outln!("{name} has no labels set by the server")
                }
                Output::Human => {
                    outln!("labels of {name} set by the server:");
                    for (k, v) in &now {
                        outln!("  {k:<12} {v}");
                    }
                }
            }
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
    if !w.server_labels.is_empty() {
        outln!("labels set by the server:");
        for (k, v) in &w.server_labels {
            outln!("  {k:<12} {v}");
        }
    }
    if !w.labels.is_empty() {
        outln!("labels the worker states (they never meet a secret's labels):");
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
        let join = |m: &BTreeMap<String, String>| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        // Whose word a label is matters (only the server's meet secrets).
        let labels = match (w.server_labels.is_empty(), w.labels.is_empty()) {
            (true, _) => join(&w.labels),
            (false, true) => format!("server: {}", join(&w.server_labels)),
            (false, false) => format!(
                "server: {}; own: {}",
                join(&w.server_labels),
                join(&w.labels)
            ),
        };
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
