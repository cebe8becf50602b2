//! `herd build start|show|log|cancel`.

use crate::client::Client;
use crate::ClientArgs;
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use miette::{miette, Result};
use serde_json::{json, Value};
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum BuildCommand {
    /// Start a build; prints its id as the first line.
    Start {
        project: String,
        /// Only this builder.
        #[arg(long)]
        builder: Option<String>,
        /// Branch, tag or commit (default: the repository's HEAD).
        #[arg(long)]
        rev: Option<String>,
        /// Higher runs first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// Wait for the end, showing progress; exit 0 only on success.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a build: jobs, attempts, steps.
    Show {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a build's output exactly as the steps wrote it (step headers go to stderr).
    Log {
        id: i64,
        /// Only this job: `builder/job`, `builder` (its only job) or a job id.
        #[arg(long)]
        job: Option<String>,
        /// Only this step (its index or name).
        #[arg(long)]
        step: Option<String>,
        /// This attempt (1, 2, ...) instead of the latest: lost attempts keep their logs.
        #[arg(long)]
        attempt: Option<i64>,
        /// Follow output live until the build ends.
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Cancel a build: queued jobs end, running steps are stopped.
    Cancel {
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(cmd: BuildCommand) -> Result<ExitCode> {
    match cmd {
        BuildCommand::Start {
            project,
            builder,
            rev,
            priority,
            wait,
            client,
        } => {
            let c = Client::new(&client)?;
            let b = c
                .post(
                    "/api/v1/builds",
                    &json!({ "project": project, "builder": builder, "rev": rev, "priority": priority }),
                )
                .await?;
            let id = b["id"]
                .as_i64()
                .ok_or_else(|| miette!("the server answered without a build id"))?;
            println!("{id}");
            let _ = std::io::stdout().flush();
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let end = wait_for(&c, id).await?;
            print_build(&end);
            Ok(if end["state"] == "success" {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        BuildCommand::Show { id, client } => {
            let c = Client::new(&client)?;
            let b = c.get(&format!("/api/v1/builds/{id}")).await?;
            print_build(&b);
            Ok(ExitCode::SUCCESS)
        }
        BuildCommand::Log {
            id,
            job,
            step,
            attempt,
            follow,
            client,
        } => {
            let c = Client::new(&client)?;
            let which = LogSelection {
                job: job.as_deref(),
                step: step.as_deref(),
                attempt,
            };
            print_log(&c, id, &which, follow).await?;
            Ok(ExitCode::SUCCESS)
        }
        BuildCommand::Cancel { id, client } => {
            let c = Client::new(&client)?;
            c.post(&format!("/api/v1/builds/{id}/cancel"), &json!({}))
                .await?;
            eprintln!("cancelling build {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn finished(state: &Value) -> bool {
    !matches!(state.as_str(), Some("queued") | Some("running"))
}

/// Long-polls the build until it ends, drawing a progress bar on stderr.
pub async fn wait_for(c: &Client, id: i64) -> Result<Value> {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} build {prefix} [{bar:24}] {pos}/{len} jobs {elapsed} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut since: Option<u64> = None;
    loop {
        let path = match since {
            Some(v) => format!("/api/v1/builds/{id}?since={v}&wait_ms=20000"),
            None => format!("/api/v1/builds/{id}"),
        };
        let b = c.get(&path).await?;
        let jobs = b["jobs"].as_array().cloned().unwrap_or_default();
        bar.set_length(jobs.len() as u64);
        bar.set_position(jobs.iter().filter(|j| finished(&j["state"])).count() as u64);
        bar.set_message(current_activity(&jobs));
        if finished(&b["state"]) {
            bar.finish_and_clear();
            return Ok(b);
        }
        since = b["version"].as_u64();
    }
}

/// "linux/main: test (worker-1)" for the running steps.
fn current_activity(jobs: &[Value]) -> String {
    let mut parts = Vec::new();
    for j in jobs {
        if j["state"] == "queued" {
            parts.push(format!(
                "{}/{}: waiting for a worker",
                s(&j["builder"]),
                s(&j["name"])
            ));
            continue;
        }
        let Some(a) = j["attempts"].as_array().and_then(|a| a.last()) else {
            continue;
        };
        if let Some(step) = a["steps"]
            .as_array()
            .and_then(|st| st.iter().find(|x| x["state"] == "running"))
        {
            parts.push(format!(
                "{}/{}: {} ({})",
                s(&j["builder"]),
                s(&j["name"]),
                s(&step["name"]),
                s(&a["worker"])
            ));
        }
    }
    parts.join("; ")
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn ms(v: &Value) -> String {
    v.as_i64()
        .map(|m| herd_core::duration::format_duration(Duration::from_millis(m.max(0) as u64)))
        .unwrap_or_else(|| "-".into())
}

pub fn print_build(b: &Value) {
    println!(
        "build {} of {} {}: {}",
        b["id"],
        s(&b["project"]),
        b["revision"]
            .as_str()
            .map(|r| &r[..r.len().min(12)])
            .unwrap_or("(no repository)"),
        s(&b["state"])
    );
    if let Some(e) = b["error"].as_str() {
        println!("  error: {e}");
    }
    for j in b["jobs"].as_array().into_iter().flatten() {
        println!(
            "  job {} {}/{}: {}",
            j["id"],
            s(&j["builder"]),
            s(&j["name"]),
            s(&j["state"])
        );
        if let Some(e) = j["error"].as_str() {
            println!("    error: {e}");
        }
        let w = &j["waiting"];
        if let Some(summary) = w["summary"].as_str() {
            let reqs: Vec<&str> = crate::client::str_list(&j["requires"]);
            println!(
                "    waiting: {summary}{}",
                if reqs.is_empty() {
                    String::new()
                } else {
                    format!(" (requires {})", reqs.join(", "))
                }
            );
            for x in w["workers"].as_array().into_iter().flatten() {
                match x["unmet"].as_str() {
                    Some(u) => println!("      {}: {u}", s(&x["worker"])),
                    None => println!("      {}: {}", s(&x["worker"]), s(&x["state"])),
                }
            }
        }
        for a in j["attempts"].as_array().into_iter().flatten() {
            let reason = a["reason"]
                .as_str()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            println!(
                "    attempt {} on {}: {}{reason}",
                a["number"],
                s(&a["worker"]),
                s(&a["state"])
            );
            for st in a["steps"].as_array().into_iter().flatten() {
                let code = st["exit_code"]
                    .as_i64()
                    .map(|c| format!(" exit {c}"))
                    .unwrap_or_default();
                let msg = st["message"]
                    .as_str()
                    .map(|m| format!(" — {m}"))
                    .unwrap_or_default();
                println!(
                    "      {:>2} {:<32} {:<9} {:>8}{code}{msg}",
                    st["idx"],
                    s(&st["name"]),
                    s(&st["state"]),
                    ms(&st["duration_ms"])
                );
            }
        }
    }
    for sp in b["splits"].as_array().into_iter().flatten() {
        println!(
            "  tests {}/{} step {} ({}): {}",
            s(&sp["builder"]),
            s(&sp["job"]),
            s(&sp["step"]),
            s(&sp["state"]),
            s(&sp["summary"])
        );
        println!("    merged JUnit report: {}", s(&sp["junit"]));
    }
}

fn job_matches(j: &Value, filter: &str) -> bool {
    let full = format!("{}/{}", s(&j["builder"]), s(&j["name"]));
    full == filter
        || s(&j["builder"]) == filter
        || j["id"].as_i64().map(|i| i.to_string()).as_deref() == Some(filter)
}

/// Which part of a build's output to print.
struct LogSelection<'a> {
    job: Option<&'a str>,
    step: Option<&'a str>,
    attempt: Option<i64>,
}

/// Prints the steps' output; headers go to stderr so stdout is exact.
async fn print_log(c: &Client, id: i64, which: &LogSelection<'_>, follow: bool) -> Result<()> {
    let (job, step) = (which.job, which.step);
    let mut out = std::io::stdout().lock();
    let build = c.get(&format!("/api/v1/builds/{id}")).await?;
    let jobs: Vec<Value> = build["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|j| job.is_none_or(|f| job_matches(j, f)))
        .collect();
    if jobs.is_empty() {
        return Err(match job {
            Some(f) => miette!("build {id} has no job `{f}`"),
            None => miette!(
                "build {id} has no jobs{}",
                build["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        });
    }
    for j in jobs {
        let job_id = j["id"].as_i64().unwrap_or(0);
        if let Some(n) = which.attempt {
            let found = j["attempts"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["number"].as_i64() == Some(n));
            if !found {
                return Err(miette!(
                    "job {}/{} has no attempt {n}",
                    s(&j["builder"]),
                    s(&j["name"])
                ));
            }
        }
        let pick = |j: &Value| match which.attempt {
            None => latest_attempt(j),
            Some(n) => j["attempts"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["number"].as_i64() == Some(n)))
                .cloned(),
        };
        let mut attempt = pick(&j);
        while attempt.is_none() && follow {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let b = c.get(&format!("/api/v1/builds/{id}")).await?;
            let j = b["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["id"].as_i64() == Some(job_id))
                .cloned();
            match j {
                Some(j) if finished(&j["state"]) && pick(&j).is_none() => break,
                Some(j) => attempt = pick(&j),
                None => break,
            }
        }
        let Some(a) = attempt else {
            eprintln!(
                "==> {}/{}: no attempt ({})",
                s(&j["builder"]),
                s(&j["name"]),
                s(&j["state"])
            );
            continue;
        };
        let attempt_id = a["id"].as_i64().unwrap_or(0);
        for st in a["steps"].as_array().into_iter().flatten() {
            let idx = st["idx"].as_i64().unwrap_or(0);
            if let Some(f) = step {
                if f != idx.to_string() && f != s(&st["name"]) {
                    continue;
                }
            }
            eprintln!(
                "==> {}/{} step {idx}: {} <==",
                s(&j["builder"]),
                s(&j["name"]),
                s(&st["name"])
            );
            let mut offset = 0u64;
            loop {
                let r = c
                    .log(attempt_id, idx, offset, if follow { 20_000 } else { 0 })
                    .await?;
                offset += r.data.len() as u64;
                out.write_all(&r.data)
                    .map_err(|e| miette!("cannot write output: {e}"))?;
                out.flush()
                    .map_err(|e| miette!("cannot write output: {e}"))?;
                let drained = offset >= r.size;
                if drained && (!follow || !r.more) {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn latest_attempt(j: &Value) -> Option<Value> {
    j["attempts"].as_array().and_then(|a| a.last()).cloned()
}
