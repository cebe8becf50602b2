//! Running one assignment: check out the revision, run the steps in order
//! with `sh -c`, each in its own process group, streaming output to the
//! outbox as it comes.
//!
//! Architecture invariant: when a step ends (exit, timeout, cancel, or the
//! job being abandoned) no process of its group survives: the group gets
//! TERM, a grace period, then KILL.

use crate::outbox::{Outbox, Payload, StopKind};
use herd_proto::{
    Assignment, JobEvent, JobResult, StepAction, StepSpec, StepStatus, MAX_LOG_CHUNK,
};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// Time between TERM and KILL when a step is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long to keep reading output after a step's process group is gone
/// (a process that left the group may still hold the pipe).
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long a short read of output waits for more before it is sent.
const COALESCE: Duration = Duration::from_millis(5);

/// Shell script of the checkout step; REPO and REV come in the environment.
const CHECKOUT_SCRIPT: &str = r#"set -e
if [ ! -d .git ]; then
  git init -q .
  git remote add origin "$HERD_CHECKOUT_REPO"
else
  git remote set-url origin "$HERD_CHECKOUT_REPO"
fi
if ! git cat-file -e "$HERD_CHECKOUT_REV^{commit}" 2>/dev/null; then
  git fetch -q origin "$HERD_CHECKOUT_REV" 2>/dev/null || \
    git fetch -q origin '+refs/heads/*:refs/remotes/origin/*' '+refs/tags/*:refs/tags/*'
fi
git checkout -q --force --detach "$HERD_CHECKOUT_REV"
echo "checked out $(git rev-parse HEAD)"
"#;

pub struct JobContext {
    pub worker_name: String,
    pub workdir: PathBuf,
    pub reaper: Option<std::sync::Arc<crate::reaper::Reaper>>,
}

struct StepOutcome {
    status: StepStatus,
    exit_code: Option<i32>,
    message: Option<String>,
}

/// Runs a job to its end and queues all its events; returns when the
/// Finished event is queued (or the attempt was abandoned).
pub async fn run_job(
    ctx: &JobContext,
    job: Assignment,
    outbox: Outbox,
    mut stop: watch::Receiver<Option<StopKind>>,
) {
    let attempt = job.attempt;
    let workspace = ctx
        .workdir
        .join(safe(&job.project))
        .join(safe(&job.builder))
        .join(safe(&job.job));
    let mut failed = false;
    let mut error: Option<String> = None;
    let mut cancelled = false;
    if let Err(e) = std::fs::create_dir_all(&workspace) {
        error = Some(format!(
            "cannot create workspace {}: {e}",
            workspace.display()
        ));
    }
    let mut base_env = BTreeMap::new();
    base_env.insert("HERD_BUILD_ID".to_string(), job.build.to_string());
    base_env.insert("HERD_PROJECT".to_string(), job.project.clone());
    base_env.insert("HERD_BUILDER".to_string(), job.builder.clone());
    base_env.insert("HERD_JOB".to_string(), job.job.clone());
    base_env.insert("HERD_ATTEMPT".to_string(), attempt.to_string());
    base_env.insert(
        "HERD_REVISION".to_string(),
        job.revision.clone().unwrap_or_default(),
    );
    base_env.insert("HERD_WORKER".to_string(), ctx.worker_name.clone());

    for (idx, step) in job.steps.iter().enumerate() {
        let idx = idx as u32;
        let skip = cancelled || (failed || error.is_some()) && !step.always;
        if skip || *stop.borrow() == Some(StopKind::Abandon) {
            if !push(
                &outbox,
                attempt,
                finished(idx, StepStatus::Skipped, None, 0, None),
            )
            .await
            {
                return;
            }
            continue;
        }
        if !push(
            &outbox,
            attempt,
            Payload::Event(JobEvent::StepStarted { step: idx }),
        )
        .await
        {
            return;
        }
        let started = Instant::now();
        let outcome = run_step(
            ctx, &workspace, step, idx, &base_env, attempt, &outbox, &mut stop,
        )
        .await;
        let Some(outcome) = outcome else { return };
        match outcome.status {
            StepStatus::Failure => failed = true,
            StepStatus::Error => {
                error.get_or_insert_with(|| {
                    format!(
                        "step `{}`: {}",
                        step.name,
                        outcome
                            .message
                            .clone()
                            .unwrap_or_else(|| "herd could not run it".into())
                    )
                });
            }
            StepStatus::Cancelled => cancelled = true,
            StepStatus::Success | StepStatus::Skipped => {}
        }
        let ms = started.elapsed().as_millis() as u64;
        if !push(
            &outbox,
            attempt,
            finished(idx, outcome.status, outcome.exit_code, ms, outcome.message),
        )
        .await
        {
            return;
        }
    }
    let result = if cancelled {
        JobResult::Cancelled
    } else if error.is_some() {
        JobResult::Error
    } else if failed {
        JobResult::Failure
    } else {
        JobResult::Success
    };
    push(
        &outbox,
        attempt,
        Payload::Event(JobEvent::Finished { result, error }),
    )
    .await;
}

fn finished(
    step: u32,
    status: StepStatus,
    exit_code: Option<i32>,
    ms: u64,
    message: Option<String>,
) -> Payload {
    Payload::Event(JobEvent::StepFinished {
        step,
        status,
        exit_code,
        duration_ms: ms,
        message,
    })
}

async fn push(outbox: &Outbox, attempt: i64, p: Payload) -> bool {
    outbox.push(attempt, p).await
}

/// Runs one step. None when the attempt was abandoned meanwhile.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    ctx: &JobContext,
    workspace: &Path,
    step: &StepSpec,
    idx: u32,
    base_env: &BTreeMap<String, String>,
    attempt: i64,
    outbox: &Outbox,
    stop: &mut watch::Receiver<Option<StopKind>>,
) -> Option<StepOutcome> {
    let mut env = base_env.clone();
    let (script, failure_status) = match &step.action {
        StepAction::Shell { run } => (run.as_str(), StepStatus::Failure),
        StepAction::Checkout { repo, revision } => {
            env.insert("HERD_CHECKOUT_REPO".into(), repo.clone());
            env.insert("HERD_CHECKOUT_REV".into(), revision.clone());
            env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
            // A failed checkout is herd's failure to run the job, not the step's.
            (CHECKOUT_SCRIPT, StepStatus::Error)
        }
    };
    env.extend(step.env.clone());
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return Some(spawn_error(format!("cannot create a pipe: {e}"))),
    };
    let writer2 = match writer.try_clone() {
        Ok(w) => w,
        Err(e) => return Some(spawn_error(format!("cannot duplicate a pipe: {e}"))),
    };
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(workspace)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0)
        .kill_on_drop(false);
    let spawned = cmd.spawn();
    // Close our copies of the pipe's write end, so that EOF comes when the
    // step's processes are done with it.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Some(spawn_error(format!("cannot start `sh`: {e}"))),
    };
    let Some(pid) = child.id() else {
        return Some(spawn_error("the step's process vanished at start".into()));
    };
    let pgid = Pid::from_raw(pid as i32);
    if let Some(r) = &ctx.reaper {
        r.watch(pid as i32);
    }
    let reader = match tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
        Ok(r) => r,
        Err(e) => {
            kill_group(pgid, &mut child).await;
            if let Some(r) = &ctx.reaper {
                r.unwatch(pid as i32);
            }
            return Some(spawn_error(format!("cannot read the step's output: {e}")));
        }
    };
    let pump = tokio::spawn(pump_output(reader, outbox.clone(), attempt, idx));

    let timeout = step.timeout_secs.map(Duration::from_secs);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    enum End {
        Exited(std::io::Result<std::process::ExitStatus>),
        TimedOut,
        Stopped(StopKind),
    }
    let end = loop {
        tokio::select! {
            status = child.wait() => break End::Exited(status),
            _ = &mut sleep_until => break End::TimedOut,
            changed = stop.changed() => {
                match (changed, *stop.borrow()) {
                    (Ok(()), Some(kind)) => break End::Stopped(kind),
                    (Ok(()), None) => continue,
                    // The outbox dropped the attempt: treat as abandoned.
                    (Err(_), _) => break End::Stopped(StopKind::Abandon),
                }
            }
        }
    };
    // Whatever happened, the group goes: leftovers of a finished step too.
    kill_group(pgid, &mut child).await;
    let _ = child.wait().await;
    if let Some(r) = &ctx.reaper {
        r.unwatch(pid as i32);
    }
    match tokio::time::timeout(DRAIN_LIMIT, pump).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return None,
        Ok(Err(_)) | Err(_) => {}
    }
    let outcome = match end {
        End::Exited(Ok(status)) => match status.code() {
            Some(0) => StepOutcome {
                status: StepStatus::Success,
                exit_code: Some(0),
                message: None,
            },
            Some(code) => StepOutcome {
                status: failure_status,
                exit_code: Some(code),
                message: (failure_status == StepStatus::Error)
                    .then(|| format!("checkout failed with exit code {code}")),
            },
            None => StepOutcome {
                status: failure_status,
                exit_code: None,
                message: Some(signal_message(&status)),
            },
        },
        End::Exited(Err(e)) => spawn_error(format!("cannot wait for the step: {e}")),
        End::TimedOut => StepOutcome {
            status: StepStatus::Failure,
            exit_code: None,
            message: Some(format!(
                "timed out after {}",
                herd_core::duration::format_duration(timeout.unwrap_or_default())
            )),
        },
        End::Stopped(StopKind::Cancel) => StepOutcome {
            status: StepStatus::Cancelled,
            exit_code: None,
            message: Some("cancelled".into()),
        },
        End::Stopped(StopKind::Abandon) => return None,
    };
    Some(outcome)
}

fn spawn_error(message: String) -> StepOutcome {
    StepOutcome {
        status: StepStatus::Error,
        exit_code: None,
        message: Some(message),
    }
}

fn signal_message(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(sig) => format!("killed by signal {sig}"),
        None => "ended without an exit code".into(),
    }
}

/// Copies the step's output into the outbox in chunks. A short read is
/// topped up for a few milliseconds, so that a step writing many small
/// pieces costs few frames. False when the attempt was abandoned.
async fn pump_output(
    mut reader: tokio::net::unix::pipe::Receiver,
    outbox: Outbox,
    attempt: i64,
    step: u32,
) -> bool {
    let mut offset: u64 = 0;
    let mut buf = vec![0u8; MAX_LOG_CHUNK];
    loop {
        let mut filled = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(n) => n,
        };
        let mut eof = false;
        let deadline = tokio::time::Instant::now() + COALESCE;
        while filled < buf.len() {
            match tokio::time::timeout_at(deadline, reader.read(&mut buf[filled..])).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    eof = true;
                    break;
                }
                Ok(Ok(n)) => filled += n,
                Err(_) => break,
            }
        }
        let data = buf[..filled].to_vec();
        if !outbox
            .push(attempt, Payload::Log { step, offset, data })
            .await
        {
            return false;
        }
        offset += filled as u64;
        if eof {
            return true;
        }
    }
}

/// TERM to the whole group, up to [`KILL_GRACE`] for it to go, then KILL.
/// Reaps the group's leader meanwhile, so that a zombie does not count.
async fn kill_group(pgid: Pid, leader: &mut tokio::process::Child) {
    if killpg(pgid, Signal::SIGTERM).is_err() {
        return; // no process left in the group
    }
    let deadline = Instant::now() + KILL_GRACE;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = leader.try_wait();
        if killpg(pgid, None).is_err() {
            return;
        }
    }
    let _ = killpg(pgid, Signal::SIGKILL);
}

/// A path component made from a name the server sent.
fn safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.chars().all(|c| c == '.') {
        "_".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_workdir() {
        assert_eq!(safe(".."), "_");
        assert_eq!(safe("a/../b"), "a_.._b");
        assert_eq!(safe(""), "_");
    }
}
