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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

/// What changes a split, as the store keeps it: replaying a split's events
/// on its last snapshot gives its state again, so that a shard's request
/// writes O(batch), not the whole state, and any server can answer the
/// next one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SplitEvent {
    /// A batch handed to a shard: what [`SplitState::next`] chose.
    Handed {
        job: i64,
        attempt: i64,
        worker: String,
        at_ms: i64,
        batch: u64,
        tests: Vec<String>,
    },
    /// A shard's report of the batch it held: only the batch's tests, their
    /// messages clipped.
    Reported {
        attempt: i64,
        at_ms: i64,
        report: BatchReport,
    },
    /// The attempt ended while it held a batch.
    Released {
        attempt: i64,
        at_ms: i64,
        reason: String,
    },
    /// No shard is left to run the rest.
    Abandoned { reason: String },
}

/// Counts by outcome, and the names of the tests whose outcome is worth
/// naming, kept as outcomes change so that a request does not walk the
/// suite. Rebuilt from `tests` when missing (a state just decoded).
#[derive(Debug, Clone, Default)]
struct Tally {
    summary: Summary,
    named: BTreeMap<Outcome, BTreeSet<String>>,
}

impl Tally {
    fn of(tests: &BTreeMap<String, TestRecord>) -> Tally {
        let mut t = Tally::default();
        t.summary.total = tests.len();
        t.summary.pending = tests.len();
        for (name, rec) in tests {
            t.record(name, None, rec.outcome);
        }
        t
    }

    fn count(&mut self, o: Option<Outcome>) -> &mut usize {
        let s = &mut self.summary;
        match o {
            None => &mut s.pending,
            Some(Outcome::Passed) => &mut s.passed,
            Some(Outcome::Failed) => &mut s.failed,
            Some(Outcome::Flaky) => &mut s.flaky,
            Some(Outcome::Skipped) => &mut s.skipped,
            Some(Outcome::Lost) => &mut s.lost,
            Some(Outcome::NotRun) => &mut s.not_run,
        }
    }

    fn record(&mut self, test: &str, old: Option<Outcome>, new: Option<Outcome>) {
        if old == new {
            return;
        }
        let c = self.count(old);
        *c = c.saturating_sub(1);
        *self.count(new) += 1;
        if let Some(o) = old {
            if let Some(set) = self.named.get_mut(&o) {
                set.remove(test);
            }
        }
        if let Some(o @ (Outcome::Failed | Outcome::Flaky | Outcome::Lost | Outcome::NotRun)) = new
        {
            self.named.entry(o).or_default().insert(test.to_string());
        }
    }

    fn named(&self, o: Outcome) -> impl Iterator<Item = &String> {
        self.named.get(&o).into_iter().flatten()
    }
}

/// The digest of a test list as a split compares lists: over the ids
/// sorted and without duplicates, so that two shards listing the same
/// tests in another order agree. A shard sends it instead of a list the
/// server already holds.
pub fn list_digest<S: AsRef<str>>(list: &[S]) -> String {
    use sha2::{Digest, Sha256};
    let mut ids: Vec<&str> = list.iter().map(AsRef::as_ref).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitState {
    /// [`list_digest`] of the first shard's list (empty in states written
    /// before digests).
    #[serde(default)]
    pub list_digest: String,
    pub queue: SplitQueue,
    pub batches: Vec<BatchRecord>,
    pub tests: BTreeMap<String, TestRecord>,
    pub flaky_fails: bool,
    /// Estimated start-up cost of the runner, seconds.
    pub startup_secs: f64,
    /// Start-up costs measured in this run (wall time minus the report's
    /// test times), to remember for the next.
    pub measured_startup: Vec<f64>,
    #[serde(skip)]
    tally: Option<Tally>,
    /// What changed since the store last took the events.
    #[serde(skip)]
    log: Vec<SplitEvent>,
}

impl SplitState {
    pub fn new(
        list: Vec<String>,
        timings: &HashMap<String, f64>,
        workers: usize,
        startup_secs: f64,
        flaky_fails: bool,
    ) -> SplitState {
        let list_digest = list_digest(&list);
        let tests: BTreeMap<String, TestRecord> = list
            .iter()
            .map(|t| (t.clone(), TestRecord::default()))
            .collect();
        let queue = SplitQueue::new(list, timings, workers, startup_secs);
        let tally = Some(Tally::of(&tests));
        SplitState {
            list_digest,
            queue,
            batches: Vec::new(),
            tests,
            flaky_fails,
            startup_secs,
            measured_startup: Vec::new(),
            tally,
            log: Vec::new(),
        }
    }

    /// Whether something changed since the events were last taken.
    pub fn has_changes(&self) -> bool {
        !self.log.is_empty()
    }

    /// The events since the last call, for the store to append.
    pub fn take_events(&mut self) -> Vec<SplitEvent> {
        std::mem::take(&mut self.log)
    }

    /// Replays one stored event. A batch the planner would now choose
    /// otherwise (the log was written by another release) is handed out
    /// as the log says.
    pub fn replay(&mut self, event: &SplitEvent) {
        let mark = self.log.len();
        match event {
            SplitEvent::Handed {
                job,
                attempt,
                worker,
                at_ms,
                batch,
                tests,
            } => {
                let before = self.batches.len();
                self.next(*job, *attempt, worker, *at_ms);
                let same = self.batches.len() == before + 1
                    && self
                        .batches
                        .last()
                        .is_some_and(|b| b.batch.id == *batch && &b.batch.tests == tests);
                if !same {
                    if self.batches.len() > before {
                        if let Some(wrong) = self.batches.pop() {
                            self.queue.put_back(wrong.batch);
                        }
                    }
                    let batch = self.queue.take_exact(*batch, tests);
                    self.batches.push(BatchRecord {
                        batch,
                        job: *job,
                        attempt: *attempt,
                        worker: worker.clone(),
                        state: BatchState::Running,
                        started_ms: *at_ms,
                        finished_ms: None,
                        exit_code: None,
                    });
                }
            }
            SplitEvent::Reported {
                attempt,
                at_ms,
                report,
            } => {
                self.report(*attempt, report, *at_ms);
            }
            SplitEvent::Released {
                attempt,
                at_ms,
                reason,
            } => {
                self.release(*attempt, reason, *at_ms);
            }
            SplitEvent::Abandoned { reason } => self.abandon_rest(reason),
        }
        self.log.truncate(mark);
    }

    fn tally_mut(&mut self) -> &mut Tally {
        let tests = &self.tests;
        self.tally.get_or_insert_with(|| Tally::of(tests))
    }

    /// Reads the tally, or counts afresh when there is none yet.
    fn with_tally<R>(&self, f: impl FnOnce(&Tally) -> R) -> R {
        match &self.tally {
            Some(t) => f(t),
            None => f(&Tally::of(&self.tests)),
        }
    }

    /// Whether a shard's list with this [`list_digest`] is the first shard's.
    pub fn list_matches(&self, digest: &str) -> bool {
        !self.list_digest.is_empty() && self.list_digest == digest
    }

    /// Every shard must list the same ids: the difference otherwise.
    pub fn check_list(&self, list: &[String]) -> Result<(), String> {
        let theirs = canonical(list);
        if theirs.len() == self.tests.len() && theirs.iter().eq(self.tests.keys()) {
            return Ok(());
        }
        let ours: BTreeSet<&String> = self.tests.keys().collect();
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
            self.tests.len()
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
                self.log.push(SplitEvent::Handed {
                    job,
                    attempt,
                    worker: worker.to_string(),
                    at_ms: now_ms,
                    batch: batch.id,
                    tests: batch.tests.clone(),
                });
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
        self.with_tally(|tally| {
            self.failing_outcomes()
                .flat_map(|o| tally.named(o))
                .any(|name| self.tests.get(name).is_some_and(|t| t.job == Some(job)))
        })
    }

    /// Whether the split as a whole fails its build.
    pub fn failed(&self) -> bool {
        self.with_tally(|tally| {
            self.failing_outcomes()
                .any(|o| tally.named(o).next().is_some())
        })
    }

    fn failing_outcomes(&self) -> impl Iterator<Item = Outcome> + '_ {
        [
            Outcome::Failed,
            Outcome::Lost,
            Outcome::NotRun,
            Outcome::Flaky,
        ]
        .into_iter()
        .filter(|o| self.fails_build(*o))
    }

    /// Records what a shard reported for the batch it held. False when the
    /// batch is not running on this attempt (a resend: nothing changes).
    pub fn report(&mut self, attempt: i64, report: &BatchReport, now_ms: i64) -> bool {
        // Counted before outcomes change, so that changes are not counted twice.
        self.tally_mut();
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
        self.log.push(SplitEvent::Reported {
            attempt,
            at_ms: now_ms,
            report: trimmed(report, &tests, wall),
        });
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
        let again = match outcome {
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
        };
        let new = rec.outcome;
        self.tally_mut().record(test, None, new);
        again
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
            self.tally_mut().record(test, None, Some(Outcome::NotRun));
            false
        } else {
            true
        }
    }

    /// The attempt ended (its worker was lost, or it stopped) while holding
    /// a batch: the batch goes back, or its test is lost for good.
    pub fn release(&mut self, attempt: i64, reason: &str, now_ms: i64) -> bool {
        if self.running_batch_of(attempt).is_none() {
            return false;
        }
        self.tally_mut();
        self.log.push(SplitEvent::Released {
            attempt,
            at_ms: now_ms,
            reason: reason.to_string(),
        });
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
                    let old = rec.outcome.replace(Outcome::Lost);
                    rec.worker = Some(worker.clone());
                    rec.job = Some(job);
                    rec.message = Some(format!(
                        "worker lost while running it, on two workers (last: {reason})"
                    ));
                    self.tally_mut().record(&t, old, Some(Outcome::Lost));
                }
            }
        }
        changed
    }

    /// No shard is left to run the rest (they ended or gave up): every test
    /// without an outcome is `not_run`.
    pub fn abandon_rest(&mut self, reason: &str) {
        self.tally_mut();
        self.log.push(SplitEvent::Abandoned {
            reason: reason.to_string(),
        });
        self.queue.clear();
        let mut marked = Vec::new();
        for (name, rec) in self.tests.iter_mut() {
            if rec.outcome.is_none() {
                rec.outcome = Some(Outcome::NotRun);
                rec.message = Some(reason.to_string());
                marked.push(name.clone());
            }
        }
        let tally = self.tally_mut();
        for name in marked {
            tally.record(&name, None, Some(Outcome::NotRun));
        }
    }

    pub fn summary(&self) -> Summary {
        self.with_tally(|t| t.summary)
    }

    /// `400 tests: 396 passed, 1 flaky, 2 failed (a, b), 1 skipped`.
    pub fn summary_line(&self) -> String {
        let s = self.summary();
        let mut parts = vec![format!("{} passed", s.passed)];
        let names = |o: Outcome| {
            self.with_tally(|t| {
                let v: Vec<&str> = t.named(o).map(String::as_str).take(5).collect();
                v.join(", ")
            })
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

/// A report as the log keeps it: only the batch's tests, messages
/// clipped, a wall time that JSON can hold.
fn trimmed(report: &BatchReport, batch: &[String], wall: f64) -> BatchReport {
    let ids: BTreeSet<&str> = batch.iter().map(String::as_str).collect();
    BatchReport {
        batch: report.batch,
        exit_code: report.exit_code,
        wall_secs: wall,
        tests: report.tests.as_ref().map(|runs| {
            runs.iter()
                .filter(|r| ids.contains(r.id.as_str()))
                .map(|r| TestRun {
                    id: r.id.clone(),
                    outcome: r.outcome,
                    secs: r.secs.filter(|s| s.is_finite()),
                    message: r.message.as_deref().map(clip),
                })
                .collect()
        }),
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
