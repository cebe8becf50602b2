//! `herd build start|show|log|cancel|retry`.

use crate::client::Client;
use crate::{exit_codes, outln, ClientArgs, Output};
use clap::Subcommand;
use herd_api::builds::{Attempt, Build, Cancelling, Job, RetryBuild, StartBuild};
use herd_api::{RunState, StepState};
use indicatif::{ProgressBar, ProgressStyle};
use miette::{miette, Result};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum BuildCommand {
    /// Start a build; prints its id as the first line.
    Start {
        /// The project to build (`herd project list` shows them).
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
        /// A value for one of herd.yml's `params:` (repeatable); steps see
        /// it as HERD_PARAM_KEY.
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = crate::cmd::workers::parse_key_value)]
        params: Vec<(String, String)>,
        /// Wait for the end, showing progress; exit 0 only on success.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show a build: jobs, attempts, steps.
    Show {
        /// The build's id (the first line `herd build start` prints).
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a build's output exactly as the steps wrote it (step headers go to stderr).
    Log {
        /// The build's id.
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
        /// The build's id.
        id: i64,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the files a build's jobs kept (`artifacts:` in herd.yml), or
    /// download them with `-o DIR`.
    Artifacts {
        /// The build's id.
        id: i64,
        /// Only this job's: `builder/job`, or `builder` for all its jobs.
        #[arg(long)]
        job: Option<String>,
        /// Download into this directory (one job's files straight in it,
        /// several jobs' under DIR/BUILDER/JOB), checking each file's SHA-256.
        #[arg(long, short = 'o', value_name = "DIR")]
        output_dir: Option<std::path::PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Run a build's jobs again, as a new build of the same revision and
    /// origin; prints the new build's id as the first line.
    Retry {
        /// The build's id.
        id: i64,
        /// Only the jobs that failed, erred or were cancelled.
        #[arg(long)]
        failed: bool,
        /// Wait for the end, showing progress; exit 0 only on success.
        #[arg(long)]
        wait: bool,
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
            params,
            wait,
            client,
        } => {
            let c = Client::new(&client)?;
            let b: Build = c
                .post(
                    "/api/v1/builds",
                    &StartBuild {
                        project,
                        builder,
                        rev,
                        priority,
                        reason: None,
                        params: params.into_iter().collect(),
                    },
                )
                .await?;
            started(&c, &b, wait, client.output).await
        }
        BuildCommand::Show { id, client } => {
            let c = Client::new(&client)?;
            let b: Build = c.get(&format!("/api/v1/builds/{id}")).await?;
            show(&b, client.output)?;
            if client.output == Output::Human {
                crate::cmd::artifacts::summary(&c, id).await?;
            }
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
        BuildCommand::Artifacts {
            id,
            job,
            output_dir,
            client,
        } => {
            let c = Client::new(&client)?;
            crate::cmd::artifacts::run(&c, id, job.as_deref(), output_dir.as_deref(), client.output)
                .await
        }
        BuildCommand::Cancel { id, client } => {
            let c = Client::new(&client)?;
            let _: Cancelling = c.act(&format!("/api/v1/builds/{id}/cancel")).await?;
            eprintln!("cancelling build {id}");
            Ok(ExitCode::SUCCESS)
        }
        BuildCommand::Retry {
            id,
            failed,
            wait,
            client,
        } => {
            let c = Client::new(&client)?;
            let b: Build = c
                .post(
                    &format!("/api/v1/builds/{id}/retry"),
                    &RetryBuild { failed },
                )
                .await?;
            started(&c, &b, wait, client.output).await
        }
    }
}

/// A build just started: its id first; with `wait`, its progress, then
/// what became of it.
async fn started(c: &Client, b: &Build, wait: bool, output: Output) -> Result<ExitCode> {
    outln!("{}", b.id);
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let end = wait_for(c, b.id).await?;
    show(&end, output)?;
    Ok(verdict(&end))
}

/// Exit 0 for a build that succeeded, [`exit_codes::FAILED`] otherwise.
pub fn verdict(b: &Build) -> ExitCode {
    if b.state == RunState::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(exit_codes::FAILED)
    }
}

/// Prints a build as asked: the table, or the API's JSON.
pub fn show(b: &Build, output: Output) -> Result<()> {
    match output {
        Output::Human => print_build(b),
        Output::Json => print_json(b)?,
    }
    Ok(())
}

/// One value as the API's JSON.
pub fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| miette!("cannot write JSON: {e}"))?;
    crate::out::json(&text);
    Ok(())
}

/// Long-polls the build until it ends, drawing a progress bar on stderr.
pub async fn wait_for(c: &Client, id: i64) -> Result<Build> {
    // The bar starts empty at 0 of the build's jobs, once they are known.
    let first: Build = c.get(&format!("/api/v1/builds/{id}")).await?;
    let bar = ProgressBar::new(first.jobs.len().max(1) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} build {prefix} [{bar:24}] {pos}/{len} jobs {elapsed} {wide_msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(id.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    let mut next = Some(first);
    let mut since: Option<i64> = None;
    loop {
        let b: Build = match next.take() {
            Some(b) => b,
            None => {
                let path = match since {
                    Some(v) => format!("/api/v1/builds/{id}?since={v}&wait_ms=20000"),
                    None => format!("/api/v1/builds/{id}"),
                };
                c.get(&path).await?
            }
        };
        bar.set_length(b.jobs.len() as u64);
        bar.set_position(b.jobs.iter().filter(|j| j.state.is_finished()).count() as u64);
        bar.set_message(current_activity(&b.jobs));
        if b.is_finished() {
            bar.finish_and_clear();
            return Ok(b);
        }
        since = Some(b.version);
    }
}

/// "linux/main: test (worker-1)" for the running steps.
fn current_activity(jobs: &[Job]) -> String {
    let mut parts = Vec::new();
    for j in jobs {
        if j.state == RunState::Queued {
            parts.push(format!("{}/{}: waiting for a worker", j.builder, j.name));
            continue;
        }
        let Some(a) = j.attempts.last() else {
            continue;
        };
        if let Some(step) = a.steps.iter().find(|s| s.state == StepState::Running) {
            parts.push(format!(
                "{}/{}: {} ({})",
                j.builder, j.name, step.name, a.worker
            ));
        }
    }
    parts.join("; ")
}

fn ms(v: Option<i64>) -> String {
    v.map(|m| herd_core::duration::format_duration(Duration::from_millis(m.max(0) as u64)))
        .unwrap_or_else(|| "-".into())
}

pub fn print_build(b: &Build) {
    outln!(
        "build {} of {} {}: {}",
        b.id,
        b.project,
        b.revision
            .as_deref()
            .map(|r| &r[..r.len().min(12)])
            .unwrap_or("(no repository)"),
        b.state
    );
    if let Some(m) = &b.message {
        let subject = m.lines().next().unwrap_or("");
        match &b.author {
            Some(a) => outln!("  commit: {subject} ({a})"),
            None => outln!("  commit: {subject}"),
        }
    }
    if let Some(e) = &b.error {
        outln!("  error: {e}");
    }
    if !b.params.is_empty() {
        let p: Vec<String> = b.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!("  params: {}", p.join(" "));
    }
    // One width for the step names of every job, so that columns line up.
    let name_w = b
        .jobs
        .iter()
        .flat_map(|j| &j.attempts)
        .flat_map(|a| &a.steps)
        .map(|s| crate::out::clean(&s.name).chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 80);
    for j in &b.jobs {
        outln!("  job {} {}/{}: {}", j.id, j.builder, j.name, j.state);
        if let Some(e) = &j.error {
            outln!("    error: {e}");
        }
        for w in &j.withheld {
            outln!("    secret `{}` is withheld: {}", w.secret, w.reason);
        }
        if !j.needs.is_empty() {
            outln!("    needs: {}", j.needs.join(", "));
        }
        if let Some(w) = &j.waiting {
            outln!(
                "    waiting: {}{}",
                w.summary,
                if j.requires.is_empty() {
                    String::new()
                } else {
                    format!(" (requires {})", j.requires.join(", "))
                }
            );
            for x in &w.workers {
                match &x.unmet {
                    Some(u) => outln!("      {}: {u}", x.worker),
                    None => outln!("      {}: {}", x.worker, x.state),
                }
            }
        }
        for a in &j.attempts {
            print_attempt(a, name_w);
        }
    }
    for sp in &b.splits {
        outln!(
            "  tests {}/{} step {} ({}): {}",
            sp.builder,
            sp.job,
            sp.step,
            sp.state,
            sp.summary.as_deref().unwrap_or("")
        );
        outln!("    merged JUnit report: {}", sp.junit);
    }
}

fn print_attempt(a: &Attempt, name_w: usize) {
    let reason = a
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    outln!(
        "    attempt {} on {}: {}{reason}",
        a.number,
        a.worker,
        a.state
    );
    for st in &a.steps {
        let code = st
            .exit_code
            .map(|c| format!(" exit {c}"))
            .unwrap_or_default();
        let msg = st
            .message
            .as_deref()
            .map(|m| format!(" — {m}"))
            .unwrap_or_default();
        let name = crate::out::clean(&st.name);
        let pad = name_w.saturating_sub(name.chars().count());
        outln!(
            "      {:>2} {name}{:pad$} {:<9} {:>8}{code}{msg}",
            st.idx,
            "",
            st.state.to_string(),
            ms(st.duration_ms)
        );
    }
}

fn job_matches(j: &Job, filter: &str) -> bool {
    format!("{}/{}", j.builder, j.name) == filter
        || j.builder == filter
        || j.id.to_string() == filter
}

/// Which part of a build's output to print.
struct LogSelection<'a> {
    job: Option<&'a str>,
    step: Option<&'a str>,
    attempt: Option<i64>,
}

impl LogSelection<'_> {
    /// The attempt of a job to print: the asked number, or the latest.
    fn pick(&self, j: &Job) -> Option<Attempt> {
        match self.attempt {
            None => j.attempts.last().cloned(),
            Some(n) => j.attempts.iter().find(|a| a.number == n).cloned(),
        }
    }
}

/// Prints the steps' output; headers go to stderr so stdout is exact.
async fn print_log(c: &Client, id: i64, which: &LogSelection<'_>, follow: bool) -> Result<()> {
    let build: Build = c.get(&format!("/api/v1/builds/{id}")).await?;
    let jobs: Vec<Job> = build
        .jobs
        .iter()
        .filter(|j| which.job.is_none_or(|f| job_matches(j, f)))
        .cloned()
        .collect();
    if jobs.is_empty() {
        return Err(match which.job {
            Some(f) => miette!("build {id} has no job `{f}`"),
            None => miette!(
                "build {id} has no jobs{}",
                build
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        });
    }
    for j in jobs {
        if let Some(n) = which.attempt {
            if !j.attempts.iter().any(|a| a.number == n) {
                return Err(miette!("job {}/{} has no attempt {n}", j.builder, j.name));
            }
        }
        let mut attempt = which.pick(&j);
        while attempt.is_none() && follow {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let b: Build = c.get(&format!("/api/v1/builds/{id}")).await?;
            match b.jobs.into_iter().find(|x| x.id == j.id) {
                Some(now) if now.state.is_finished() && which.pick(&now).is_none() => break,
                Some(now) => attempt = which.pick(&now),
                None => break,
            }
        }
        let Some(a) = attempt else {
            crate::errln!("==> {}/{}: no attempt ({})", j.builder, j.name, j.state);
            continue;
        };
        for st in &a.steps {
            if let Some(f) = which.step {
                if f != st.idx.to_string() && f != st.name {
                    continue;
                }
            }
            crate::errln!(
                "==> {}/{} step {}: {} <==",
                j.builder,
                j.name,
                st.idx,
                st.name
            );
            let mut offset = 0u64;
            let mut log = crate::out::LogWriter::new();
            loop {
                let r = c
                    .log(a.id, st.idx, offset, if follow { 20_000 } else { 0 })
                    .await?;
                offset += r.data.len() as u64;
                log.write(&r.data);
                let drained = offset >= r.size;
                if drained && (!follow || !r.more) {
                    break;
                }
            }
            log.finish();
        }
    }
    Ok(())
}
