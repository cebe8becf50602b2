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
if [ -n "${HERD_CHECKOUT_PATCH:-}" ]; then
  # --index: the files a patch adds are tracked, so the next checkout removes them.
  git apply --index --whitespace=nowarn "$HERD_CHECKOUT_PATCH"
  echo "applied the try patch:"
  git diff --cached --stat
fi
"#;

pub struct JobContext {
    pub worker_name: String,
    /// Where split steps ask the server for batches.
    pub split: std::sync::Arc<crate::split::SplitLink>,
    pub workdir: PathBuf,
    pub reaper: Option<std::sync::Arc<crate::reaper::Reaper>>,
}

pub(crate) struct StepOutcome {
    pub status: StepStatus,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
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
    let output = OutputRules {
        mask: crate::mask::Masker::new(&job.mask).map(std::sync::Arc::new),
        log_limit: job.log_limit.unwrap_or(herd_proto::DEFAULT_STEP_LOG_LIMIT),
    };
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
            ctx, &workspace, step, idx, &base_env, attempt, &outbox, &output, &mut stop,
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
    output: &OutputRules,
    stop: &mut watch::Receiver<Option<StopKind>>,
) -> Option<StepOutcome> {
    let mut env = base_env.clone();
    let mut patch_file = None;
    if let StepAction::Checkout {
        repo,
        revision,
        patch,
    } = &step.action
    {
        env.insert("HERD_CHECKOUT_REPO".into(), repo.clone());
        env.insert("HERD_CHECKOUT_REV".into(), revision.clone());
        env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
        if let Some(patch) = patch {
            // Beside the workspace, not in it: the patch is not part of the tree.
            let path = ctx.workdir.join(format!("try-{attempt}.patch"));
            if let Err(e) = tokio::fs::write(&path, patch).await {
                return Some(spawn_error(format!(
                    "cannot write the try patch to {}: {e}",
                    path.display()
                )));
            }
            env.insert("HERD_CHECKOUT_PATCH".into(), path.display().to_string());
            patch_file = Some(path);
        }
    }
    env.extend(step.env.clone());
    let timeout = step.timeout_secs.map(Duration::from_secs);
    let cmd = StepRunner {
        ctx,
        workspace,
        env: &env,
        attempt,
        outbox,
        step: idx,
        deadline: timeout.map(|t| tokio::time::Instant::now() + t),
        output,
    };
    let (script, failure_status) = match &step.action {
        StepAction::Shell { run } => (run.as_str(), StepStatus::Failure),
        // A failed checkout is herd's failure to run the job, not the step's.
        StepAction::Checkout { .. } => (CHECKOUT_SCRIPT, StepStatus::Error),
        StepAction::Split { list, run, junit } => {
            let split = crate::split::SplitStep {
                list,
                run,
                junit: junit.as_deref(),
                timeout,
            };
            return split.run(&cmd, stop).await;
        }
    };
    let ran = cmd.run(script, 0, false, stop).await;
    if let Some(path) = patch_file {
        let _ = tokio::fs::remove_file(path).await;
    }
    let ran = match ran {
        Ok(r) => r,
        Err(message) => return Some(spawn_error(message)),
    };
    let outcome = match ran.end {
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
        End::TimedOut => timed_out(timeout),
        End::Stopped(StopKind::Cancel) => cancelled(),
        End::Stopped(StopKind::Abandon) | End::Abandoned => return None,
    };
    Some(outcome)
}

pub(crate) fn timed_out(timeout: Option<Duration>) -> StepOutcome {
    StepOutcome {
        status: StepStatus::Failure,
        exit_code: None,
        message: Some(format!(
            "timed out after {}",
            herd_core::duration::format_duration(timeout.unwrap_or_default())
        )),
    }
}

pub(crate) fn cancelled() -> StepOutcome {
    StepOutcome {
        status: StepStatus::Cancelled,
        exit_code: None,
        message: Some("cancelled".into()),
    }
}

/// How a command of a step ended.
pub(crate) enum End {
    Exited(std::io::Result<std::process::ExitStatus>),
    TimedOut,
    Stopped(StopKind),
    /// The outbox dropped the attempt while its output was being sent.
    Abandoned,
}

pub(crate) struct Ran {
    pub end: End,
    /// Bytes of the step's log after this command.
    pub offset: u64,
    /// The command's standard output, when captured (not logged).
    pub stdout: Vec<u8>,
}

/// Runs the commands of one step: each in its own process group, output
/// appended to the step's log.
#[derive(Clone, Copy)]
pub(crate) struct StepRunner<'a> {
    pub ctx: &'a JobContext,
    pub workspace: &'a Path,
    pub env: &'a BTreeMap<String, String>,
    pub attempt: i64,
    pub outbox: &'a Outbox,
    pub step: u32,
    pub deadline: Option<tokio::time::Instant>,
    pub output: &'a OutputRules,
}

/// What becomes of a step's output on its way out.
#[derive(Clone)]
pub(crate) struct OutputRules {
    /// The job's secrets, masked in the output.
    pub mask: Option<std::sync::Arc<crate::mask::Masker>>,
    /// Bytes kept per step; the rest is dropped after a notice.
    pub log_limit: u64,
}

/// Most standard output kept from a captured command (a test list).
const MAX_CAPTURE: usize = 64 * 1024 * 1024;

impl StepRunner<'_> {
    /// Appends herd's own text to the step's log. False when abandoned.
    pub async fn note(&self, offset: &mut u64, text: &str) -> bool {
        let data = text.as_bytes().to_vec();
        let len = data.len() as u64;
        if !self
            .outbox
            .push(
                self.attempt,
                Payload::Log {
                    step: self.step,
                    offset: *offset,
                    data,
                },
            )
            .await
        {
            return false;
        }
        *offset += len;
        true
    }

    /// Runs `script` with `sh -c` in a new process group; output goes to the
    /// log from `offset` on (stdout kept apart when `capture`). Err: it
    /// could not start.
    pub async fn run(
        &self,
        script: &str,
        offset: u64,
        capture: bool,
        stop: &mut watch::Receiver<Option<StopKind>>,
    ) -> Result<Ran, String> {
        let (reader, writer) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
        let writer2 = writer
            .try_clone()
            .map_err(|e| format!("cannot duplicate a pipe: {e}"))?;
        let (out_reader, stdout) = if capture {
            let (r, w) = std::io::pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
            (Some(r), Stdio::from(w))
        } else {
            (None, Stdio::from(writer))
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .current_dir(self.workspace)
            .envs(self.env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(writer2))
            .process_group(0)
            .kill_on_drop(false);
        let spawned = cmd.spawn();
        // Close our copies of the pipes' write ends, so that EOF comes when
        // the step's processes are done with them.
        drop(cmd);
        let mut child = spawned.map_err(|e| format!("cannot start `sh`: {e}"))?;
        let Some(pid) = child.id() else {
            return Err("the step's process vanished at start".into());
        };
        let pgid = Pid::from_raw(pid as i32);
        if let Some(r) = &self.ctx.reaper {
            r.watch(pid as i32);
        }
        let receivers = tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader))
            .and_then(|r| {
                out_reader
                    .map(|o| tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(o)))
                    .transpose()
                    .map(|o| (r, o))
            });
        let (reader, out_reader) = match receivers {
            Ok(r) => r,
            Err(e) => {
                kill_group(pgid, &mut child).await;
                if let Some(r) = &self.ctx.reaper {
                    r.unwatch(pid as i32);
                }
                return Err(format!("cannot read the step's output: {e}"));
            }
        };
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(offset));
        let mut pump = tokio::spawn(pump_output(
            reader,
            self.outbox.clone(),
            self.attempt,
            self.step,
            std::sync::Arc::clone(&written),
            self.output.clone(),
        ));
        let capture_task = out_reader.map(|mut r| {
            tokio::spawn(async move {
                let mut out = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) if out.len() + n <= MAX_CAPTURE => out.extend_from_slice(&buf[..n]),
                        Ok(_) => {} // past the limit: drain, keep nothing more
                    }
                }
                out
            })
        });
        let deadline = self.deadline;
        let sleep_until = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(sleep_until);
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
        if let Some(r) = &self.ctx.reaper {
            r.unwatch(pid as i32);
        }
        let offset = match tokio::time::timeout(DRAIN_LIMIT, &mut pump).await {
            Ok(Ok(true)) => written.load(std::sync::atomic::Ordering::SeqCst),
            Ok(Ok(false)) => {
                return Ok(Ran {
                    end: End::Abandoned,
                    offset,
                    stdout: Vec::new(),
                })
            }
            // The pipe is held by a process that left the group: stop
            // reading it; the log goes on after what was sent.
            Ok(Err(_)) | Err(_) => {
                pump.abort();
                let _ = pump.await;
                written.load(std::sync::atomic::Ordering::SeqCst)
            }
        };
        let stdout = match capture_task {
            Some(t) => tokio::time::timeout(DRAIN_LIMIT, t)
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Ran {
            end,
            offset,
            stdout,
        })
    }
}

pub(crate) fn spawn_error(message: String) -> StepOutcome {
    StepOutcome {
        status: StepStatus::Error,
        exit_code: None,
        message: Some(message),
    }
}

pub(crate) fn signal_message(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(sig) => format!("killed by signal {sig}"),
        None => "ended without an exit code".into(),
    }
}

/// Copies the step's output into the outbox in chunks, from `offset` on. A
/// short read is topped up for a few milliseconds, so that a step writing
/// many small pieces costs few frames. `written` follows the log's end (it
/// is exact even when the pump is aborted). False when the attempt was
/// abandoned.
async fn pump_output(
    mut reader: tokio::net::unix::pipe::Receiver,
    outbox: Outbox,
    attempt: i64,
    step: u32,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    rules: OutputRules,
) -> bool {
    let mut offset = written.load(std::sync::atomic::Ordering::SeqCst);
    let mut buf = vec![0u8; MAX_LOG_CHUNK];
    let mut masking = rules.mask.as_deref().map(crate::mask::MaskStream::new);
    // Past the limit the pipe is still drained (a blocked writer would
    // hang the step), but nothing more is sent.
    let mut truncated = offset >= rules.log_limit;
    loop {
        // The first read waits as long as the step is silent; then up to
        // COALESCE more to fill one frame.
        let (mut filled, mut eof) = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => (0, true),
            Ok(n) => (n, false),
        };
        let deadline = tokio::time::Instant::now() + COALESCE;
        while !eof && filled < buf.len() {
            match tokio::time::timeout_at(deadline, reader.read(&mut buf[filled..])).await {
                Ok(Ok(0)) | Ok(Err(_)) => eof = true,
                Ok(Ok(n)) => filled += n,
                Err(_) => break,
            }
        }
        let mut data = match &mut masking {
            None => buf[..filled].to_vec(),
            Some(m) => {
                let mut data = m.feed(&buf[..filled]);
                if eof {
                    // A tail held back as a possible secret was none.
                    data.extend(m.finish());
                }
                data
            }
        };
        if truncated {
            data.clear();
        } else if offset + data.len() as u64 > rules.log_limit {
            data.truncate((rules.log_limit - offset) as usize);
            data.extend_from_slice(
                format!(
                    "\n[herd] this step's output passed the limit of {} bytes: the rest is dropped (the step goes on)\n",
                    rules.log_limit
                )
                .as_bytes(),
            );
            truncated = true;
        }
        let len = data.len() as u64;
        if len > 0
            && !outbox
                .push(attempt, Payload::Log { step, offset, data })
                .await
        {
            return false;
        }
        // No await between the push and this store: an abort cannot split them.
        offset += len;
        written.store(offset, std::sync::atomic::Ordering::SeqCst);
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
