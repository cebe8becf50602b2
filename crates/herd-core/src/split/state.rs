//! One split step as a whole, across all its shards: the queue, every batch
//! handed out, and each test's outcome. Pure: the server loads it, calls one
//! of these methods for what a worker said, and stores it again in the same
//! transaction, so that any server holding the database can serve the next
//! request.
//!
//! Outcome rules (the splitting issue):
//! * a failed test runs once more, preferably on another worker: failed then
//!   passed is `flaky`, failed twice is `failed`;
//! * a test that a batch's report does not mention goes back once, then is
//!   `not_run`;
//! * a batch whose worker is lost goes back (see [`SplitQueue::lost`]); a
//!   single test lost on two workers is `lost`.

use super::{Batch, SplitQueue};
pub use herd_proto::{BatchReport, RunOutcome, TestRun};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Most test ids one split accepts.
pub const MAX_SPLIT_TESTS: usize = 100_000;
/// Longest test id accepted.
pub const MAX_TEST_ID_LEN: usize = 2048;
/// How much of a failure's message is kept per test.
pub const MAX_TEST_MESSAGE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    Flaky,
    Skipped,
    /// Its worker was lost while running it, twice.
    Lost,
    /// The runner's report never mentioned it, twice.
    NotRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "failed",
            Outcome::Flaky => "flaky",
            Outcome::Skipped => "skipped",
            Outcome::Lost => "lost",
            Outcome::NotRun => "not_run",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Running,
    Done,
    Lost,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub batch: Batch,
    /// The shard job and attempt that ran it, and where.
    pub job: i64,
    pub attempt: i64,
    pub worker: String,
    pub state: BatchState,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TestRecord {
    /// None while it still has to run (again).
    pub outcome: Option<Outcome>,
    pub runs: u32,
    pub failures: u32,
    pub missing: u32,
    pub secs: Option<f64>,
    pub worker: Option<String>,
    /// The shard job its final outcome belongs to.
    pub job: Option<i64>,
    pub message: Option<String>,
}

/// The answer to a shard that asks for work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Next {
    Batch {
        id: u64,
        tests: Vec<String>,
    },
    /// Nothing to hand out now, but batches run elsewhere and may come back.
    Wait,
    /// Every test has its outcome. `failed`: a test whose final outcome
    /// belongs to this shard failed the build.
    Done {
        failed: bool,
        summary: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Summary {
    pub total: usize,
    pub passed: usize,
    pub failed: usize,
    pub flaky: usize,
    pub skipped: usize,
    pub lost: usize,
    pub not_run: usize,
    pub pending: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitState {
    /// The ids as listed by the first shard, sorted, without duplicates.
    pub list: Vec<String>,
    pub queue: SplitQueue,
    pub batches: Vec<BatchRecord>,
    pub tests: BTreeMap<String, TestRecord>,
    pub flaky_fails: bool,
    /// Estimated start-up cost of the runner, seconds.
    pub startup_secs: f64,
    /// Start-up costs measured in this run (wall time minus the report's
    /// test times), to remember for the next.
    pub measured_startup: Vec<f64>,
}

impl SplitState {
    pub fn new(
        list: Vec<String>,
        timings: &HashMap<String, f64>,
        workers: usize,
        startup_secs: f64,
        flaky_fails: bool,
    ) -> SplitState {
        let canonical = canonical(&list);
        let queue = SplitQueue::new(list, timings, workers, startup_secs);
        let tests = canonical
            .iter()
            .map(|t| (t.clone(), TestRecord::default()))
            .collect();
        SplitState {
            list: canonical,
            queue,
            batches: Vec::new(),
            tests,
            flaky_fails,
            startup_secs,
            measured_startup: Vec::new(),
        }
    }

    /// Every shard must list the same ids: the difference otherwise.
    pub fn check_list(&self, list: &[String]) -> Result<(), String> {
        let theirs = canonical(list);
        if theirs == self.list {
            return Ok(());
        }
        let ours: BTreeSet<&String> = self.list.iter().collect();
        let other: BTreeSet<&String> = theirs.iter().collect();
        let only_first: Vec<&&String> = ours.difference(&other).collect();
        let only_this: Vec<&&String> = other.difference(&ours).collect();
        let show = |v: &[&&String]| {
            let mut s: Vec<String> = v.iter().take(20).map(|t| format!("  {t}")).collect();
            if v.len() > 20 {
                s.push(format!("  … and {} more", v.len() - 20));
            }
            s.join("\n")
        };
        let mut msg = format!(
            "this worker listed other tests than the first shard ({} vs {} ids)",
            theirs.len(),
            self.list.len()
        );
        if !only_first.is_empty() {
            msg.push_str(&format!(
                "\nonly in the first shard's list ({}):\n{}",
                only_first.len(),
                show(&only_first)
            ));
        }
        if !only_this.is_empty() {
            msg.push_str(&format!(
                "\nonly in this worker's list ({}):\n{}",
                only_this.len(),
                show(&only_this)
            ));
        }
        Err(msg)
    }

    fn running_batch_of(&self, attempt: i64) -> Option<&BatchRecord> {
        self.batches
            .iter()
            .find(|b| b.attempt == attempt && b.state == BatchState::Running)
    }

    pub fn is_complete(&self) -> bool {
        self.queue.is_empty() && !self.batches.iter().any(|b| b.state == BatchState::Running)
    }

    /// Work for a shard that asks. Asking again without reporting returns
    /// the batch it already holds (the answer may have been lost).
    pub fn next(&mut self, job: i64, attempt: i64, worker: &str, now_ms: i64) -> Next {
        if let Some(b) = self.running_batch_of(attempt) {
            return Next::Batch {
                id: b.batch.id,
                tests: b.batch.tests.clone(),
            };
        }
        let others_running = self
            .batches
            .iter()
            .any(|b| b.state == BatchState::Running && b.worker != worker);
        // What is left avoids this worker (a retry, a lost batch) while
        // another shard, which will ask soon, could take it: let that one.
        if !self.queue.is_empty() && !self.queue.has_for(worker) && others_running {
            return Next::Wait;
        }
        match self.queue.next_batch(worker) {
            Some(batch) => {
                let next = Next::Batch {
                    id: batch.id,
                    tests: batch.tests.clone(),
                };
                self.batches.push(BatchRecord {
                    batch,
                    job,
                    attempt,
                    worker: worker.to_string(),
                    state: BatchState::Running,
                    started_ms: now_ms,
                    finished_ms: None,
                    exit_code: None,
                });
                next
            }
            None if self.is_complete() => Next::Done {
                failed: self.owes_failure(job),
                summary: self.summary_line(),
            },
            None => Next::Wait,
        }
    }

    fn fails_build(&self, o: Outcome) -> bool {
        match o {
            Outcome::Failed | Outcome::Lost | Outcome::NotRun => true,
            Outcome::Flaky => self.flaky_fails,
            Outcome::Passed | Outcome::Skipped => false,
        }
    }

    /// Whether a test whose final outcome fails the build belongs to this
    /// shard job (its shard must run to report it).
    pub fn owes_failure(&self, job: i64) -> bool {
        self.tests
            .values()
            .any(|t| t.job == Some(job) && t.outcome.is_some_and(|o| self.fails_build(o)))
    }

    /// Whether the split as a whole fails its build.
    pub fn failed(&self) -> bool {
        self.tests
            .values()
            .any(|t| t.outcome.is_some_and(|o| self.fails_build(o)))
    }

    /// Records what a shard reported for the batch it held. False when the
    /// batch is not running on this attempt (a resend: nothing changes).
    pub fn report(&mut self, attempt: i64, report: &BatchReport, now_ms: i64) -> bool {
        let Some(pos) = self.batches.iter().position(|b| {
            b.batch.id == report.batch && b.attempt == attempt && b.state == BatchState::Running
        }) else {
            return false;
        };
        let (job, worker, tests) = {
            let b = &mut self.batches[pos];
            b.state = BatchState::Done;
            b.finished_ms = Some(now_ms);
            b.exit_code = report.exit_code;
            (b.job, b.worker.clone(), b.batch.tests.clone())
        };
        let wall = if report.wall_secs.is_finite() {
            report.wall_secs.max(0.0)
        } else {
            0.0
        };
        let mut again = Vec::new();
        match &report.tests {
            None => {
                let outcome = if report.exit_code == Some(0) {
                    RunOutcome::Passed
                } else {
                    RunOutcome::Failed
                };
                let share = (wall - self.startup_secs).max(0.0) / tests.len().max(1) as f64;
                let message = (outcome == RunOutcome::Failed).then(|| match report.exit_code {
                    Some(c) => format!("its batch failed with exit code {c}"),
                    None => "its batch was killed".to_string(),
                });
                for t in &tests {
                    self.queue.observe(share);
                    if self.apply(t, outcome, Some(share), message.clone(), job, &worker) {
                        again.push(t.clone());
                    }
                }
            }
            Some(runs) => {
                let by_id: HashMap<&str, &TestRun> =
                    runs.iter().map(|r| (r.id.as_str(), r)).collect();
                let mut test_secs = 0.0;
                for t in &tests {
                    match by_id.get(t.as_str()) {
                        Some(r) => {
                            let secs = r.secs.filter(|s| s.is_finite() && *s >= 0.0);
                            test_secs += secs.unwrap_or(0.0);
                            if let Some(s) = secs {
                                self.queue.observe(s);
                            }
                            if self.apply(t, r.outcome, secs, r.message.clone(), job, &worker) {
                                again.push(t.clone());
                            }
                        }
                        None => {
                            if self.missing(t, job, &worker, report.exit_code) {
                                again.push(t.clone());
                            }
                        }
                    }
                }
                if wall > test_secs {
                    self.measured_startup.push(wall - test_secs);
                }
            }
        }
        self.queue.retry(again, &worker);
        true
    }

    /// One run of one test. True when it must run once more.
    fn apply(
        &mut self,
        test: &str,
        outcome: RunOutcome,
        secs: Option<f64>,
        message: Option<String>,
        job: i64,
        worker: &str,
    ) -> bool {
        let Some(rec) = self.tests.get_mut(test) else {
            return false;
        };
        if rec.outcome.is_some() {
            return false;
        }
        rec.runs += 1;
        rec.secs = secs.or(rec.secs);
        rec.worker = Some(worker.to_string());
        rec.job = Some(job);
        match outcome {
            RunOutcome::Passed => {
                rec.outcome = Some(if rec.failures > 0 {
                    Outcome::Flaky
                } else {
                    Outcome::Passed
                });
                false
            }
            RunOutcome::Skipped => {
                rec.outcome = Some(Outcome::Skipped);
                false
            }
            RunOutcome::Failed => {
                rec.failures += 1;
                rec.message = message.map(|m| clip(&m));
                if rec.failures >= 2 {
                    rec.outcome = Some(Outcome::Failed);
                    false
                } else {
                    true
                }
            }
        }
    }

    /// A test its batch's report did not mention. True when it goes back.
    fn missing(&mut self, test: &str, job: i64, worker: &str, exit: Option<i32>) -> bool {
        let Some(rec) = self.tests.get_mut(test) else {
            return false;
        };
        if rec.outcome.is_some() {
            return false;
        }
        rec.missing += 1;
        rec.worker = Some(worker.to_string());
        rec.job = Some(job);
        if rec.missing >= 2 {
            rec.outcome = Some(Outcome::NotRun);
            rec.message = Some(format!(
                "not in the runner's report, twice (the runner exited with {})",
                exit.map_or("a signal".to_string(), |c| format!("code {c}"))
            ));
            false
        } else {
            true
        }
    }

    /// The attempt ended (its worker was lost, or it stopped) while holding
    /// a batch: the batch goes back, or its test is lost for good.
    pub fn release(&mut self, attempt: i64, reason: &str, now_ms: i64) -> bool {
        let mut changed = false;
        for i in 0..self.batches.len() {
            let b = &mut self.batches[i];
            if b.attempt != attempt || b.state != BatchState::Running {
                continue;
            }
            b.state = BatchState::Lost;
            b.finished_ms = Some(now_ms);
            let (batch, worker, job) = (b.batch.clone(), b.worker.clone(), b.job);
            changed = true;
            for t in self.queue.lost(batch, &worker) {
                if let Some(rec) = self.tests.get_mut(&t) {
                    rec.outcome = Some(Outcome::Lost);
                    rec.worker = Some(worker.clone());
                    rec.job = Some(job);
                    rec.message = Some(format!(
                        "worker lost while running it, on two workers (last: {reason})"
                    ));
                }
            }
        }
        changed
    }

    /// No shard is left to run the rest (they ended or gave up): every test
    /// without an outcome is `not_run`.
    pub fn abandon_rest(&mut self, reason: &str) {
        self.queue.clear();
        for rec in self.tests.values_mut() {
            if rec.outcome.is_none() {
                rec.outcome = Some(Outcome::NotRun);
                rec.message = Some(reason.to_string());
            }
        }
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            total: self.tests.len(),
            ..Summary::default()
        };
        for t in self.tests.values() {
            match t.outcome {
                None => s.pending += 1,
                Some(Outcome::Passed) => s.passed += 1,
                Some(Outcome::Failed) => s.failed += 1,
                Some(Outcome::Flaky) => s.flaky += 1,
                Some(Outcome::Skipped) => s.skipped += 1,
                Some(Outcome::Lost) => s.lost += 1,
                Some(Outcome::NotRun) => s.not_run += 1,
            }
        }
        s
    }

    /// `400 tests: 396 passed, 1 flaky, 2 failed (a, b), 1 skipped`.
    pub fn summary_line(&self) -> String {
        let s = self.summary();
        let mut parts = vec![format!("{} passed", s.passed)];
        let names = |o: Outcome| {
            let v: Vec<&str> = self
                .tests
                .iter()
                .filter(|(_, t)| t.outcome == Some(o))
                .map(|(k, _)| k.as_str())
                .take(5)
                .collect();
            v.join(", ")
        };
        for (n, o) in [
            (s.flaky, Outcome::Flaky),
            (s.failed, Outcome::Failed),
            (s.lost, Outcome::Lost),
            (s.not_run, Outcome::NotRun),
        ] {
            if n > 0 {
                let more = if n > 5 { ", …" } else { "" };
                parts.push(format!("{n} {} ({}{more})", o.as_str(), names(o)));
            }
        }
        if s.skipped > 0 {
            parts.push(format!("{} skipped", s.skipped));
        }
        if s.pending > 0 {
            parts.push(format!("{} pending", s.pending));
        }
        format!("{} tests: {}", s.total, parts.join(", "))
    }

    /// Seconds of each test that passed in this run (flaky ones included),
    /// to remember for the next run's batches.
    pub fn passing_timings(&self) -> Vec<(String, f64)> {
        self.tests
            .iter()
            .filter(|(_, t)| matches!(t.outcome, Some(Outcome::Passed | Outcome::Flaky)))
            .filter_map(|(k, t)| t.secs.map(|s| (k.clone(), s)))
            .collect()
    }

    /// The runner's start-up cost measured in this run, if any batch had a report.
    pub fn measured_startup_secs(&self) -> Option<f64> {
        let v = &self.measured_startup;
        if v.is_empty() {
            return None;
        }
        let mut sorted = v.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        Some(sorted[sorted.len() / 2])
    }
}

/// Moving average of a test's time over passing runs: new = old + (x - old) / 3.
pub fn moving_average(old: Option<f64>, x: f64) -> f64 {
    match old {
        Some(o) if o.is_finite() => o + (x - o) / 3.0,
        _ => x,
    }
}

fn canonical(list: &[String]) -> Vec<String> {
    let set: BTreeSet<&String> = list.iter().collect();
    set.into_iter().cloned().collect()
}

fn clip(s: &str) -> String {
    if s.len() <= MAX_TEST_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_TEST_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests;
