//! `herd project list|show`: projects, what they watch, how polling goes,
//! and their recent changes.

use crate::client::Client;
use crate::ClientArgs;
use clap::Subcommand;
use miette::Result;
use serde_json::Value;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Every project: repository, branches, polling state.
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// One project: its settings, polling, webhooks, reporters and recent changes.
    Show {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn when(v: &Value) -> String {
    v.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn polling(p: &Value) -> String {
    let poll = &p["polling"];
    if let Some(e) = poll["last_error"].as_str() {
        return format!(
            "FAILING ({} in a row, next try {}): {e}",
            poll["failures"],
            when(&poll["next_poll_at"])
        );
    }
    match p["poll_secs"].as_f64() {
        None if p["repo"].is_null() => "no repository".into(),
        None => "webhooks only".into(),
        Some(s) => format!("every {s}s, last {}", when(&poll["last_success_at"])),
    }
}

pub async fn run(cmd: ProjectCommand) -> Result<ExitCode> {
    match cmd {
        ProjectCommand::List { client } => {
            let c = Client::new(&client)?;
            let res = c.get("/api/v1/projects").await?;
            println!("{:<20} {:<40} POLLING", "PROJECT", "REPOSITORY");
            for p in res["projects"].as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<40} {}",
                    p["name"].as_str().unwrap_or(""),
                    p["repo"].as_str().unwrap_or("(inline pipeline)"),
                    polling(p)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ProjectCommand::Show { name, client } => {
            let c = Client::new(&client)?;
            let p = c.get(&format!("/api/v1/projects/{name}")).await?;
            println!("project     {}", p["name"].as_str().unwrap_or(""));
            println!("repository  {}", p["repo"].as_str().unwrap_or("-"));
            let branches = crate::client::str_list(&p["branches"]);
            println!(
                "branches    {}",
                if branches.is_empty() {
                    "the default branch".to_string()
                } else {
                    branches.join(", ")
                }
            );
            println!("polling     {}", polling(&p));
            println!(
                "webhook     {}",
                if p["webhook"] == true {
                    format!("POST /api/v1/hooks/{{github|gitea|gitlab|generic}}/{name}")
                } else {
                    "none (set webhook_secret)".into()
                }
            );
            let report = crate::client::str_list(&p["report"]);
            if !report.is_empty() {
                println!("reports to  {}", report.join(", "));
            }
            if let Some(heads) = p["polling"]["branches"].as_object() {
                for (b, sha) in heads {
                    println!(
                        "  {b:<20} {}",
                        sha.as_str().unwrap_or("").get(..12).unwrap_or("")
                    );
                }
            }
            println!("\nrecent changes:");
            for ch in p["changes"].as_array().into_iter().flatten() {
                let built = match (ch["build_id"].as_i64(), ch["skipped"].as_str()) {
                    (Some(id), _) => format!("build {id}"),
                    (None, Some(why)) => format!("not built: {why}"),
                    (None, None) => "pending".into(),
                };
                println!(
                    "  {} {:<16} {} {:<24} {}",
                    ch["revision"]
                        .as_str()
                        .unwrap_or("")
                        .get(..10)
                        .unwrap_or(""),
                    ch["branch"].as_str().unwrap_or(""),
                    when(&ch["created_at"]),
                    ch["message"]
                        .as_str()
                        .and_then(|m| m.lines().next())
                        .unwrap_or("")
                        .chars()
                        .take(24)
                        .collect::<String>(),
                    built
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
