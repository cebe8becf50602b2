//! `herd workers [show NAME | reprobe [NAME]]`.

use crate::client::Client;
use crate::ClientArgs;
use clap::{Args, Subcommand};
use miette::Result;
use serde_json::json;
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
    Show { name: String },
    /// Run the probes again on one worker, or on every connected one.
    Reprobe { name: Option<String> },
    /// No new jobs for this worker (running ones finish); survives restarts.
    Pause { name: String },
    /// Give a paused worker jobs again.
    Resume { name: String },
}

pub async fn run(args: WorkersArgs) -> Result<ExitCode> {
    let c = Client::new(&args.client)?;
    match args.command {
        None => list(&c).await,
        Some(WorkersCommand::Show { name }) => show(&c, &name).await,
        Some(WorkersCommand::Pause { name }) => {
            c.post(&format!("/api/v1/workers/{name}/pause"), &json!({}))
                .await?;
            println!("paused {name}: running jobs finish, no new ones start");
            Ok(ExitCode::SUCCESS)
        }
        Some(WorkersCommand::Resume { name }) => {
            c.post(&format!("/api/v1/workers/{name}/resume"), &json!({}))
                .await?;
            println!("resumed {name}");
            Ok(ExitCode::SUCCESS)
        }
        Some(WorkersCommand::Reprobe { name }) => {
            let res = c
                .post("/api/v1/workers/reprobe", &json!({ "worker": name }))
                .await?;
            let asked: Vec<&str> = crate::client::str_list(&res["reprobing"]);
            println!(
                "reprobing: {}",
                if asked.is_empty() {
                    "no worker is online".to_string()
                } else {
                    asked.join(", ")
                }
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn show(c: &Client, name: &str) -> Result<ExitCode> {
    let w = c.get(&format!("/api/v1/workers/{name}")).await?;
    let state = if w["online"] == true {
        "online"
    } else {
        "offline"
    };
    println!(
        "worker {name}: {state}, {} slots, herd {}",
        w["slots"],
        w["version"].as_str().unwrap_or("?")
    );
    println!("facts:");
    for (k, v) in w["facts"].as_object().into_iter().flatten() {
        println!("  {k:<12} {}", v.as_str().unwrap_or(""));
    }
    let labels = w["labels"].as_object().cloned().unwrap_or_default();
    if !labels.is_empty() {
        println!("labels:");
        for (k, v) in labels {
            println!("  {k:<12} {}", v.as_str().unwrap_or(""));
        }
    }
    let probes = w["probes"].as_array().cloned().unwrap_or_default();
    if !probes.is_empty() {
        println!("probes:");
        for p in probes {
            let what = if p["present"] == true {
                p["version"]
                    .as_str()
                    .unwrap_or("present (version unknown)")
                    .to_string()
            } else {
                format!(
                    "not found{}",
                    p["output"]
                        .as_str()
                        .map(|o| format!(": {}", o.lines().next().unwrap_or("")))
                        .unwrap_or_default()
                )
            };
            println!("  {:<20} {what}", p["name"].as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(c: &Client) -> Result<ExitCode> {
    let res = c.get("/api/v1/workers").await?;
    let workers = res["workers"].as_array().cloned().unwrap_or_default();
    if workers.is_empty() {
        println!("no workers yet: create a token with `herd token create --worker NAME` and start `herd worker`");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20} {:<8} {:>5} {:<8} {:<24} LABELS",
        "NAME", "STATE", "SLOTS", "RUNNING", "PLATFORM"
    );
    for w in workers {
        let state = match (w["online"].as_bool() == Some(true), w["paused"] == true) {
            _ if w["quarantined_until"].is_i64() => "quarantined",
            (true, true) => "paused",
            (true, false) => "online",
            (false, true) => "offline, paused",
            (false, false) => "offline",
        };
        let running = w["running_attempts"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0);
        let facts = &w["facts"];
        let platform = format!(
            "{} {} {}cpu",
            facts["os"].as_str().unwrap_or("?"),
            facts["arch"].as_str().unwrap_or("?"),
            facts["cpus"].as_str().unwrap_or("?")
        );
        let labels = w["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        println!(
            "{:<20} {:<8} {:>5} {:<8} {:<24} {}",
            w["name"].as_str().unwrap_or("?"),
            state,
            w["slots"].as_i64().unwrap_or(0),
            running,
            platform,
            labels
        );
    }
    Ok(ExitCode::SUCCESS)
}
