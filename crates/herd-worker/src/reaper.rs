//! The reaper: a small process beside the worker that stops the steps'
//! process groups when the worker itself dies (`kill -9`, a crash, OOM).
//!
//! Steps run in process groups of their own, so nothing else would stop
//! them. The worker tells the reaper, through a pipe, each group it starts
//! (`+PGID`) and ends (`-PGID`); when the pipe closes without a final `.`
//! the worker is gone, and the reaper sends every remaining group TERM, waits
//! the grace period, then KILL.

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name of the hidden `herd` subcommand that runs the reaper.
pub const REAPER_COMMAND: &str = "__reaper";

pub struct Reaper {
    stdin: Mutex<Option<ChildStdin>>,
    child: Mutex<Child>,
}

impl Reaper {
    /// Starts `HERD_BIN __reaper` in a process group of its own (so that a
    /// Ctrl-C meant for the worker does not reach it).
    pub fn spawn(herd_bin: &Path) -> std::io::Result<Reaper> {
        let mut child = Command::new(herd_bin)
            .arg(REAPER_COMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            // It may outlive the worker by the grace period: hold no one's terminal or pipe.
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()?;
        let stdin = child.stdin.take();
        Ok(Reaper {
            stdin: Mutex::new(stdin),
            child: Mutex::new(child),
        })
    }

    fn send(&self, line: &str) {
        let mut guard = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stdin) = guard.as_mut() {
            if stdin
                .write_all(line.as_bytes())
                .and_then(|_| stdin.flush())
                .is_err()
            {
                tracing::warn!("the reaper is gone: steps may outlive a crash of this worker");
                *guard = None;
            }
        }
    }

    pub fn watch(&self, pgid: i32) {
        self.send(&format!("+{pgid}\n"));
    }

    pub fn unwatch(&self, pgid: i32) {
        self.send(&format!("-{pgid}\n"));
    }

    /// Orderly end: the worker stopped its steps itself.
    pub fn finish(&self) {
        self.send(".\n");
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        let _ = self.child.lock().unwrap_or_else(|p| p.into_inner()).wait();
    }
}

/// The reaper process itself: reads the pipe until it closes.
pub fn run_reaper(input: impl BufRead, grace: Duration) {
    let mut groups: BTreeSet<i32> = BTreeSet::new();
    for line in input.lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "." {
            return;
        }
        let (op, num) = line.split_at(line.len().min(1));
        match (op, num.parse::<i32>()) {
            ("+", Ok(p)) if p > 1 => {
                groups.insert(p);
            }
            ("-", Ok(p)) => {
                groups.remove(&p);
            }
            _ => {}
        }
    }
    // The worker died: stop what it left behind.
    for &p in &groups {
        let _ = killpg(Pid::from_raw(p), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        groups.retain(|&p| killpg(Pid::from_raw(p), None).is_ok());
        if groups.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for &p in &groups {
        let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_kills_the_watched_groups() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 30"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        let input = format!("+{pgid}\n+999999\n-999999\n");
        run_reaper(std::io::Cursor::new(input), Duration::from_millis(200));
        let status = child.wait().unwrap();
        assert!(!status.success(), "the group was killed");
    }

    #[test]
    fn an_orderly_end_kills_nothing() {
        let mut child = Command::new("sleep")
            .arg("0.3")
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        run_reaper(
            std::io::Cursor::new(format!("+{pgid}\n.\n")),
            Duration::from_millis(100),
        );
        assert!(child.wait().unwrap().success());
    }
}
