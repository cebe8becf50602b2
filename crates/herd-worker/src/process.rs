//! Running a step's commands: each in its own process group, its output
//! (masked, cut at the step's limit, coalesced into frames) appended to the
//! step's log in the outbox, and the whole group stopped when the command
//! ends, times out or is cancelled. Used by plain steps (`exec`) and split
//! steps (`split`) alike.
//!
//! Architecture invariant: when a step ends (exit, timeout, cancel, or the
//! job being abandoned) no process of its group survives: the group gets
//! TERM, a grace period, then KILL.

use crate::outbox::{Outbox, Payload, StopKind};
use crate::reaper::Reaper;
use herd_proto::{StepStatus, MAX_LOG_CHUNK};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::Path;
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

/// How a step ended, as its `step_finished` event says.
pub(crate) struct StepOutcome {
    pub status: StepStatus,
    pub exit_code: Option<i32>,
    pub message: Option<String>,
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
    /// The end of what it wrote to the log (masked): the cause of a failure.
    pub tail: Vec<u8>,
}

/// Bytes of a command's output kept as its tail.
const TAIL_BYTES: usize = 2048;

impl Ran {
    /// The last non-empty lines of its output, at most `n`, on one line
    /// each, control characters dropped.
    pub fn last_lines(&self, n: usize) -> String {
        let text = String::from_utf8_lossy(&self.tail);
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
            .filter(|l| !l.trim().is_empty())
            .collect();
        lines[lines.len().saturating_sub(n)..].join(" / ")
    }
}

/// Runs the commands of one step: each in its own process group, output
/// appended to the step's log.
#[derive(Clone, Copy)]
pub(crate) struct StepRunner<'a> {
    /// Stops the step's groups if this worker dies.
    pub reaper: Option<&'a Reaper>,
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
    /// Bytes kept for the whole attempt, all steps together.
    pub attempt_limit: u64,
    /// Bytes of output the attempt has sent so far.
    pub attempt_used: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Lines herd writes at the top of the first step that runs (a secret
    /// withheld, and why); taken by that step.
    pub notices: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

/// Most standard output kept from a captured command (a test list).
const MAX_CAPTURE: usize = 64 * 1024 * 1024;

impl StepRunner<'_> {
    /// Appends herd's own text to the step's log (masked: it may quote
    /// what a command printed). False when abandoned.
    pub async fn note(&self, offset: &mut u64, text: &str) -> bool {
        let data = crate::mask::mask_opt(self.output.mask.as_deref(), text).into_bytes();
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
            // Only the copy on stderr writes to the log: holding this one
            // would keep the log's pipe open and the drain waiting its limit.
            drop(writer);
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
        if let Some(r) = self.reaper {
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
                if let Some(r) = self.reaper {
                    r.unwatch(pid as i32);
                }
                return Err(format!("cannot read the step's output: {e}"));
            }
        };
        let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(offset));
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut pump = tokio::spawn(pump_output(
            reader,
            self.outbox.clone(),
            self.attempt,
            self.step,
            std::sync::Arc::clone(&written),
            self.output.clone(),
            std::sync::Arc::clone(&tail),
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
        if let Some(r) = self.reaper {
            r.unwatch(pid as i32);
        }
        let offset = match tokio::time::timeout(DRAIN_LIMIT, &mut pump).await {
            Ok(Ok(true)) => written.load(std::sync::atomic::Ordering::SeqCst),
            Ok(Ok(false)) => {
                return Ok(Ran {
                    end: End::Abandoned,
                    offset,
                    stdout: Vec::new(),
                    tail: Vec::new(),
                })
            }
            // The pipe is held by a process that left the group: stop
            // reading it; the log goes on after what was sent.
            Ok(Err(_)) | Err(_) => {
                pump.abort();
                let _ = pump.await;
                let mut offset = written.load(std::sync::atomic::Ordering::SeqCst);
                let note = format!(
                    "[herd] a process this command started outside its process group still holds its output; herd stopped reading it {} s after the command ended\n",
                    DRAIN_LIMIT.as_secs()
                );
                // Abandoned meanwhile: the attempt is gone, nothing to tell.
                let _ = self.note(&mut offset, &note).await;
                offset
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
        let tail = std::mem::take(&mut *tail.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(Ran {
            end,
            offset,
            stdout,
            tail,
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
    tail: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> bool {
    let mut offset = written.load(std::sync::atomic::Ordering::SeqCst);
    let mut buf = vec![0u8; MAX_LOG_CHUNK];
    let mut masking = rules.mask.as_deref().map(crate::mask::MaskStream::new);
    // Past the limit the pipe is still drained (a blocked writer would
    // hang the step), but nothing more is sent.
    let used = |n: u64| {
        rules
            .attempt_used
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst)
            + n
    };
    let mut truncated = offset >= rules.log_limit
        || rules.attempt_used.load(std::sync::atomic::Ordering::SeqCst) >= rules.attempt_limit;
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
        let attempt_left = rules
            .attempt_limit
            .saturating_sub(rules.attempt_used.load(std::sync::atomic::Ordering::SeqCst));
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
        } else if data.len() as u64 > attempt_left {
            data.truncate(attempt_left as usize);
            data.extend_from_slice(
                format!(
                    "\n[herd] this job's output passed the limit of {} bytes for all its steps: the rest is dropped (the job goes on)\n",
                    rules.attempt_limit
                )
                .as_bytes(),
            );
            truncated = true;
        }
        used(data.len() as u64);
        {
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            t.extend_from_slice(&data);
            let excess = t.len().saturating_sub(TAIL_BYTES);
            t.drain(..excess);
        }
        // Masking's held-back tail and a limit's notice can make `data`
        // longer than one frame may carry.
        for piece in data.chunks(MAX_LOG_CHUNK) {
            let len = piece.len() as u64;
            let data = piece.to_vec();
            if !outbox
                .push(attempt, Payload::Log { step, offset, data })
                .await
            {
                return false;
            }
            // No await between the push and this store: an abort cannot split them.
            offset += len;
            written.store(offset, std::sync::atomic::Ordering::SeqCst);
        }
        if eof {
            return true;
        }
    }
}

/// TERM to the whole group, up to [`KILL_GRACE`] for it to go, then KILL.
/// Reaps the group's leader meanwhile, so that a zombie does not count.
pub(crate) async fn kill_group(pgid: Pid, leader: &mut tokio::process::Child) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> OutputRules {
        OutputRules {
            mask: None,
            log_limit: 1 << 20,
            attempt_limit: 1 << 20,
            attempt_used: Default::default(),
            notices: Default::default(),
        }
    }

    fn logged(outbox: &Outbox) -> String {
        let mut text = String::new();
        for frame in outbox.take_unsent(1000) {
            if let crate::outbox::Frame::Binary(bytes) = frame {
                let log = herd_proto::LogFrame::decode(&bytes).unwrap();
                text.push_str(&String::from_utf8_lossy(&log.data));
            }
        }
        text
    }

    async fn run(script: &str, capture: bool) -> (Ran, String) {
        let dir = tempfile::tempdir().unwrap();
        run_in(dir.path(), script, capture).await
    }

    async fn run_in(dir: &Path, script: &str, capture: bool) -> (Ran, String) {
        let outbox = Outbox::default();
        let mut stop = outbox.open(1);
        let env = BTreeMap::new();
        let output = rules();
        let runner = StepRunner {
            reaper: None,
            workspace: dir,
            env: &env,
            attempt: 1,
            outbox: &outbox,
            step: 0,
            deadline: None,
            output: &output,
        };
        let ran = runner.run(script, 0, capture, &mut stop).await.unwrap();
        (ran, logged(&outbox))
    }

    #[tokio::test]
    async fn a_captured_command_keeps_stdout_apart_and_its_log_closes_when_it_ends() {
        let (ran, log) = run("echo listed; echo note >&2", true).await;
        assert_eq!(String::from_utf8_lossy(&ran.stdout), "listed\n");
        assert_eq!(
            log, "note\n",
            "nothing else holds the log's pipe: it closes with the command, without a note"
        );
        let (ran, log) = run("echo both; echo note >&2", false).await;
        assert!(ran.stdout.is_empty());
        assert_eq!(log, "both\nnote\n");
    }

    #[tokio::test]
    async fn a_process_that_leaves_the_group_holding_the_output_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        // A new session, out of the step's group, holding the output; the
        // step ends only once it is there (bounded wait).
        let script = "echo before; setsid sh -c 'echo $$ > escaped.pid; exec sleep 30' & \
            i=0; while [ ! -s escaped.pid ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done; \
            echo after";
        let (_, log) = run_in(dir.path(), script, false).await;
        let pid: i32 = std::fs::read_to_string(dir.path().join("escaped.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        assert!(log.contains("before") && log.contains("after"), "{log}");
        assert!(log.contains("still holds its output"), "{log}");
    }
}
