//! `herd workers`: the workers the server knows.

use crate::client::Client;
use crate::ClientArgs;
use miette::Result;
use std::process::ExitCode;

pub async fn run(args: ClientArgs) -> Result<ExitCode> {
    let c = Client::new(&args)?;
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
        let state = if w["online"].as_bool() == Some(true) {
            "online"
        } else {
            "offline"
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
