//! `herd project list|show`: projects, what they watch, how polling goes,
//! and their recent changes.

use crate::client::Client;
use crate::cmd::build::print_json;
use crate::{outln, ClientArgs, Output};
use clap::Subcommand;
use herd_api::projects::{Project, ProjectDetail, ProjectList};
use miette::Result;
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
        /// The project's name (`herd project list` shows them).
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

fn polling(p: &Project) -> String {
    if let Some(poll) = &p.polling {
        if let Some(e) = &poll.last_error {
            return format!(
                "FAILING ({} in a row, next try {}): {e}",
                poll.failures,
                when(poll.next_poll_at)
            );
        }
    }
    match p.poll_secs {
        None if p.repo.is_none() => "no repository".into(),
        None => "webhooks only".into(),
        Some(s) => format!(
            "every {s}s, last {}",
            when(p.polling.as_ref().and_then(|x| x.last_success_at))
        ),
    }
}

pub async fn run(cmd: ProjectCommand) -> Result<ExitCode> {
    match cmd {
        ProjectCommand::List { client } => {
            let c = Client::new(&client)?;
            let res: ProjectList = c.get("/api/v1/projects").await?;
            if client.output == Output::Json {
                print_json(&res)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{:<20} {:<40} POLLING", "PROJECT", "REPOSITORY");
            for p in &res.projects {
                outln!(
                    "{:<20} {:<40} {}",
                    p.name,
                    p.repo.as_deref().unwrap_or("(inline pipeline)"),
                    polling(p)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ProjectCommand::Show { name, client } => {
            let c = Client::new(&client)?;
            let d: ProjectDetail = c.get(&format!("/api/v1/projects/{name}")).await?;
            if client.output == Output::Json {
                print_json(&d)?;
                return Ok(ExitCode::SUCCESS);
            }
            print_project(&d);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_project(d: &ProjectDetail) {
    let p = &d.project;
    outln!("project     {}", p.name);
    outln!("repository  {}", p.repo.as_deref().unwrap_or("-"));
    outln!(
        "branches    {}",
        if p.branches.is_empty() {
            "the default branch".to_string()
        } else {
            p.branches.join(", ")
        }
    );
    outln!("polling     {}", polling(p));
    outln!(
        "webhook     {}",
        if p.webhook {
            format!(
                "POST /api/v1/hooks/{{github|gitea|gitlab|generic}}/{}",
                p.name
            )
        } else {
            "none (set webhook_secret)".into()
        }
    );
    if !p.report.is_empty() {
        outln!("reports to  {}", p.report.join(", "));
    }
    if let Some(poll) = &p.polling {
        for (b, sha) in &poll.branches {
            outln!("  {b:<20} {}", sha.get(..12).unwrap_or(sha));
        }
    }
    outln!("\nrecent changes:");
    for ch in &d.changes {
        let built = match (ch.build_id, &ch.skipped, &ch.waiting) {
            (Some(id), _, _) => format!("build {id}"),
            (None, Some(why), _) => format!("not built: {why}"),
            (None, None, Some(why)) => {
                format!("WAITS: {why} (`herd change approve {}`)", ch.id)
            }
            (None, None, None) => "pending".into(),
        };
        let label = match (ch.kind.as_str(), ch.pull_request) {
            ("pull_request", Some(n)) => format!("PR #{n}"),
            ("tag", _) => format!("tag {}", ch.branch),
            _ => ch.branch.clone(),
        };
        outln!(
            "  {} {:<16} {} {:<24} {}",
            ch.revision.get(..10).unwrap_or(&ch.revision),
            label,
            when(Some(ch.created_at)),
            ch.message
                .lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(24)
                .collect::<String>(),
            built
        );
    }
}
