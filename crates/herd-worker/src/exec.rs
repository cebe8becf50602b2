//! Running one assignment: check out the revision, run the steps in order
//! (each through `process`, a split step through `split`), and report each
//! step's end and the job's result to the outbox.

use crate::outbox::{Outbox, Payload, StopKind};
use crate::process::{
    cancelled, signal_message, spawn_error, timed_out, End, OutputRules, StepOutcome, StepRunner,
};
use herd_proto::{Assignment, JobEvent, JobResult, StepAction, StepSpec, StepStatus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
    /// Workspaces and the disk they live on.
    pub disk: std::sync::Arc<crate::disk::DiskKeeper>,
    pub reaper: Option<std::sync::Arc<crate::reaper::Reaper>>,
    /// What this worker must never send: its own token, and the secrets of
    /// the jobs it runs now (probes mask their output with them too).
    pub secrets: crate::mask::KnownSecrets,
    /// The server of this connection, for checkouts it serves.
    pub source: crate::source::SourceAccess,
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
    let _held = ctx.secrets.hold(attempt, &job.mask);
    let output = OutputRules {
        mask: crate::mask::Masker::with_plain(&job.mask, &ctx.secrets.own())
            .map(std::sync::Arc::new),
        log_limit: job.log_limit.unwrap_or(herd_proto::DEFAULT_STEP_LOG_LIMIT),
        attempt_limit: job.attempt_log_limit.unwrap_or(u64::MAX),
        attempt_used: Default::default(),
        notices: std::sync::Arc::new(std::sync::Mutex::new(job.notices.clone())),
    };
    let masker = output.mask.clone();
    let masked = |text: Option<String>| text.map(|t| crate::mask::mask_opt(masker.as_deref(), &t));
    let parts = [safe(&job.project), safe(&job.builder), safe(&job.job)];
    let mut workspace = ctx.workdir.clone();
    workspace.extend(&parts);
    let mut failed = false;
    let mut error: Option<String> = None;
    let mut cancelled = false;
    // Held while the job runs: the disk keeper never removes it meanwhile.
    let keeper = std::sync::Arc::clone(&ctx.disk);
    let part_refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let taken = match keeper.workspaces.try_take(&part_refs) {
        Ok(Some(guard)) => Ok(Ok(guard)),
        Err(e) => Ok(Err(e)),
        // The disk keeper holds it (removing it): wait off the runtime.
        Ok(None) => {
            let parts = parts.clone();
            tokio::task::spawn_blocking(move || {
                let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
                keeper.workspaces.take(&parts)
            })
            .await
        }
    };
    let _workspace_held = match taken {
        Ok(Ok(guard)) => Some(OnDrop(Some(guard), std::sync::Arc::clone(&ctx.disk))),
        Ok(Err(e)) => {
            error = Some(format!(
                "cannot create workspace {}: {e}",
                workspace.display()
            ));
            None
        }
        Err(e) => {
            error = Some(format!(
                "cannot create workspace {}: {e}",
                workspace.display()
            ));
            None
        }
    };
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
            finished(
                idx,
                outcome.status,
                outcome.exit_code,
                ms,
                masked(outcome.message),
            ),
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
        Payload::Event(JobEvent::Finished {
            result,
            error: masked(error),
        }),
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
        served,
    } = &step.action
    {
        match served {
            Some(path) => {
                let (url, git_env) = ctx.source.checkout_env(path);
                env.insert("HERD_CHECKOUT_REPO".into(), url);
                env.extend(git_env);
            }
            None => {
                env.insert("HERD_CHECKOUT_REPO".into(), repo.clone());
            }
        }
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
        reaper: ctx.reaper.as_deref(),
        workspace,
        env: &env,
        attempt,
        outbox,
        step: idx,
        deadline: timeout.map(|t| tokio::time::Instant::now() + t),
        output,
    };
    // What the job should know first (a secret withheld) tops the first
    // step that runs.
    let notices = std::mem::take(&mut *output.notices.lock().unwrap_or_else(|p| p.into_inner()));
    let mut offset = 0u64;
    for n in notices {
        if !cmd.note(&mut offset, &format!("[herd] {n}\n")).await {
            return None;
        }
    }
    let transfer = crate::artifacts::Transfer {
        access: &ctx.source,
        attempt,
        workspace,
        cmd: &cmd,
        offset,
    };
    let (script, failure_status) = match &step.action {
        StepAction::Fetch { from, files } => return transfer.fetch(files, from, stop).await,
        StepAction::Upload { paths } => return transfer.upload(paths, stop).await,
        StepAction::Shell { run, .. } => (run.as_str(), StepStatus::Failure),
        // A failed checkout is herd's failure to run the job, not the step's.
        StepAction::Checkout { .. } => (CHECKOUT_SCRIPT, StepStatus::Error),
        StepAction::Split {
            list,
            run,
            junit,
            format,
            pattern,
        } => {
            let split = crate::split::SplitStep {
                list,
                run,
                junit: junit.as_deref(),
                format: *format,
                pattern: pattern.as_deref(),
                timeout,
                link: &ctx.split,
                workdir: &ctx.workdir,
            };
            return split.run(&cmd, offset, stop).await;
        }
    };
    // A step with `results: {pattern}` keeps its output in a file too.
    let results = match &step.action {
        StepAction::Shell {
            results: Some(r), ..
        } => Some(r),
        _ => None,
    };
    let output_file = results
        .filter(|r| r.pattern.is_some())
        .map(|_| crate::results::output_file(&ctx.workdir, attempt, idx));
    let teed;
    let script = match &output_file {
        Some(out) => {
            if let Some(dir) = out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            teed = crate::results::teed(script, out);
            teed.as_str()
        }
        None => script,
    };
    let started = std::time::Instant::now();
    let ran = cmd.run(script, offset, false, stop).await;
    if let Some(path) = patch_file {
        let _ = tokio::fs::remove_file(path).await;
    }
    let ran = match ran {
        Ok(r) => r,
        Err(message) => return Some(spawn_error(message)),
    };
    if let (Some(spec), End::Exited(Ok(status))) = (results, &ran.end) {
        crate::results::report(
            spec,
            &cmd,
            &ctx.split,
            output_file.as_deref(),
            status.code(),
            started.elapsed().as_secs_f64(),
            ran.offset,
            stop,
        )
        .await?;
    }
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
                // herd's own failure: say why, from what git printed last.
                message: (failure_status == StepStatus::Error).then(|| match ran.last_lines(3) {
                    cause if cause.is_empty() => format!("checkout failed with exit code {code}"),
                    cause => format!("checkout failed with exit code {code}: {cause}"),
                }),
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

/// A path component made from a name the server sent.
/// A held workspace that, when the job ends, lets go and asks the disk
/// keeper to look again.
struct OnDrop(
    Option<crate::disk::WorkspaceGuard>,
    std::sync::Arc<crate::disk::DiskKeeper>,
);

impl Drop for OnDrop {
    fn drop(&mut self) {
        drop(self.0.take());
        self.1.poke();
    }
}

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
