//! A split step on the worker: list the tests, then ask the server for
//! batches and run them until it says every test has its outcome.
//!
//! Requests go through [`SplitLink`], which outlives connections: a
//! request whose answer does not come is sent again (the server answers a
//! repeat with the same batch), so a reconnect costs a delay, not a test.

use crate::outbox::StopKind;
use crate::process::{
    cancelled, signal_message, spawn_error, timed_out, End, StepOutcome, StepRunner,
};
use herd_core::junit;
use herd_core::split::MAX_TEST_ID_LEN;
use herd_proto::{
    AttemptId, BatchReport, RunOutcome, SplitReply, SplitRequest, StepStatus, TestRun, WorkerMsg,
    MAX_TEXT_FRAME,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// How long a request waits for its answer before it is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(10);
/// A substituted `run` longer than this goes to a script file: one
/// argument of `sh -c` may not exceed 128 KiB on Linux.
const MAX_INLINE_SCRIPT: usize = 64 * 1024;
/// Times a list too large for one frame is sent before giving up.
const MAX_LIST_UPLOADS: usize = 4;
/// Bytes of ids per part of such a list (a frame holds twice that).
const LIST_PART_BYTES: usize = MAX_TEXT_FRAME / 2;
/// Most runs spent narrowing one failed batch down (a batch where every
/// test fails would otherwise run each test alone).
pub const MAX_BISECT_RUNS: usize = 32;

/// The split requests of all running steps, across reconnects.
pub struct SplitLink {
    tx: mpsc::UnboundedSender<WorkerMsg>,
    /// Taken by the current connection, which sends what arrives.
    pub(crate) rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<WorkerMsg>>,
    waiters: Mutex<HashMap<(AttemptId, u64), oneshot::Sender<SplitReply>>>,
    next_req: AtomicU64,
}

impl Default for SplitLink {
    fn default() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        SplitLink {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            waiters: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
        }
    }
}

/// Why a request got no answer.
pub(crate) enum Interrupted {
    Stop(StopKind),
    TimedOut,
    /// It cannot be sent: larger than a frame even without messages.
    TooLarge(usize),
}

/// Makes a request fit in one text frame: failure messages are shortened,
/// then dropped. Err when even that is not enough (a huge list).
fn fit_in_a_frame(req: &mut SplitRequest) -> Result<(), Interrupted> {
    let size = |r: &SplitRequest| WorkerMsg::Split(r.clone()).encode().len();
    if size(req) <= MAX_TEXT_FRAME {
        return Ok(());
    }
    for limit in [512usize, 0] {
        if let Some(tests) = req.done.as_mut().and_then(|d| d.tests.as_mut()) {
            for t in tests.iter_mut() {
                if let Some(m) = &mut t.message {
                    if limit == 0 {
                        t.message = None;
                    } else if m.len() > limit {
                        let mut end = limit;
                        while !m.is_char_boundary(end) {
                            end -= 1;
                        }
                        m.truncate(end);
                    }
                }
            }
        }
        if size(req) <= MAX_TEXT_FRAME {
            return Ok(());
        }
    }
    Err(Interrupted::TooLarge(size(req)))
}

impl SplitLink {
    fn waiters(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(AttemptId, u64), oneshot::Sender<SplitReply>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection got an answer.
    pub(crate) fn deliver(&self, attempt: AttemptId, req: u64, reply: SplitReply) {
        if let Some(w) = self.waiters().remove(&(attempt, req)) {
            let _ = w.send(reply);
        }
    }

    /// Sends a request and waits for its answer. The list's digest goes
    /// with it; a list too large for one frame goes in parts
    /// ([`WorkerMsg::SplitList`]) when the server asks for it.
    pub(crate) async fn request(
        &self,
        mut req: SplitRequest,
        stop: &mut watch::Receiver<Option<StopKind>>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<SplitReply, Interrupted> {
        req.req = self.next_req.fetch_add(1, Ordering::SeqCst);
        // The digest goes first: the server asks for the list only when
        // it has none with that digest (one shard of a split sends it).
        let held = req.list.take();
        if let Some(list) = &held {
            if req.list_digest.is_none() {
                req.list_digest = Some(herd_core::split::list_digest(list));
            }
        }
        fit_in_a_frame(&mut req)?;
        for upload in 0..=MAX_LIST_UPLOADS {
            let reply = self.ask(&req, stop, deadline).await?;
            let SplitReply::SendList = reply else {
                return Ok(reply);
            };
            let Some(list) = &held else {
                return Ok(SplitReply::Fail {
                    message: "the server asked for a test list this request has none of".into(),
                });
            };
            if upload == MAX_LIST_UPLOADS {
                break;
            }
            if upload > 0 {
                // Asked again: the parts were lost (a reconnect) or the
                // server was busy receiving others' lists.
                tokio::time::sleep(Duration::from_secs(upload as u64)).await;
            }
            // In the request when it fits in a frame, else in parts before it.
            req.list = Some(list.clone());
            req.list_parts = None;
            if WorkerMsg::Split(req.clone()).encode().len() > MAX_TEXT_FRAME {
                req.list = None;
                req.list_parts = Some(self.send_list(req.attempt, req.step, list));
            }
        }
        Ok(SplitReply::Fail {
            message: format!(
                "the server did not take the test list, sent {MAX_LIST_UPLOADS} times in parts"
            ),
        })
    }

    /// Sends a list in parts that each fit in a frame; returns how many.
    fn send_list(&self, attempt: AttemptId, step: u32, list: &[String]) -> u32 {
        let mut parts = 0;
        let mut ids = Vec::new();
        let mut size = 0;
        for id in list {
            // An id's JSON form, and its comma.
            let len = serde_json::to_string(id).map_or(id.len() * 6, |s| s.len()) + 1;
            if !ids.is_empty() && size + len > LIST_PART_BYTES {
                let _ = self.tx.send(WorkerMsg::SplitList {
                    attempt,
                    step,
                    ids: std::mem::take(&mut ids),
                });
                parts += 1;
                size = 0;
            }
            size += len;
            ids.push(id.clone());
        }
        if !ids.is_empty() {
            let _ = self.tx.send(WorkerMsg::SplitList { attempt, step, ids });
            parts += 1;
        }
        parts
    }

    async fn ask(
        &self,
        req: &SplitRequest,
        stop: &mut watch::Receiver<Option<StopKind>>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<SplitReply, Interrupted> {
        let key = (req.attempt, req.req);
        let (tx, mut rx) = oneshot::channel();
        self.waiters().insert(key, tx);
        let asked = Instant::now();
        let result = loop {
            let _ = self.tx.send(WorkerMsg::Split(req.clone()));
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                reply = &mut rx => match reply {
                    Ok(r) => break Ok(r),
                    // The sender went away: cannot happen while registered; ask again.
                    Err(_) => {
                        let (tx, new_rx) = oneshot::channel();
                        self.waiters().insert(key, tx);
                        rx = new_rx;
                    }
                },
                _ = tokio::time::sleep(RESEND_AFTER) => {}
                _ = until_deadline => break Err(Interrupted::TimedOut),
                changed = stop.changed() => {
                    match (changed, *stop.borrow()) {
                        (Ok(()), Some(kind)) => break Err(Interrupted::Stop(kind)),
                        (Ok(()), None) => {}
                        (Err(_), _) => break Err(Interrupted::Stop(StopKind::Abandon)),
                    }
                }
            }
        };
        self.waiters().remove(&key);
        tracing::debug!(attempt = key.0, req = key.1, elapsed = ?asked.elapsed(), "split request answered");
        result
    }
}

pub(crate) struct SplitStep<'a> {
    pub list: &'a str,
    pub run: &'a str,
    /// Where the batch's report is written, and its format.
    pub junit: Option<&'a str>,
    pub format: herd_proto::ReportFormat,
    /// A regex over each batch's output giving its results.
    pub pattern: Option<&'a str>,
    pub timeout: Option<Duration>,
    /// Where the step asks the server for batches.
    pub link: &'a SplitLink,
    /// The worker's work directory (the test lists go beside workspaces).
    pub workdir: &'a std::path::Path,
}

impl SplitStep<'_> {
    /// Runs this worker's share of the suite. None when abandoned.
    pub async fn run(
        &self,
        cmd: &StepRunner<'_>,
        start: u64,
        stop: &mut watch::Receiver<Option<StopKind>>,
    ) -> Option<StepOutcome> {
        let mut offset = start;
        if !cmd.note(&mut offset, &format!("$ {}\n", self.list)).await {
            return None;
        }
        let started = Instant::now();
        let ran = match cmd.run(self.list, offset, true, stop).await {
            Ok(r) => r,
            Err(m) => return Some(spawn_error(m)),
        };
        offset = ran.offset;
        match ran.end {
            End::Exited(Ok(status)) if status.success() => {}
            End::Exited(Ok(status)) => {
                return Some(StepOutcome {
                    status: StepStatus::Failure,
                    exit_code: status.code(),
                    message: Some(match status.code() {
                        Some(c) => format!("the list command failed with exit code {c}"),
                        None => format!("the list command was {}", signal_message(&status)),
                    }),
                })
            }
            End::Exited(Err(e)) => {
                return Some(spawn_error(format!(
                    "cannot wait for the list command: {e}"
                )))
            }
            other => return self.interrupted(other),
        }
        let list_secs = started.elapsed().as_secs_f64();
        // Test ids leave the worker: a secret in one is masked too.
        let masker = cmd.output.mask.as_deref();
        let ids: Vec<String> = String::from_utf8_lossy(&ran.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| crate::mask::mask_opt(masker, l))
            .collect();
        if ids.is_empty() {
            let _ = cmd
                .note(&mut offset, "the list command printed no test ids\n")
                .await;
            return Some(failure("the list command printed no test ids".into()));
        }
        if let Some(long) = ids.iter().find(|t| t.len() > MAX_TEST_ID_LEN) {
            let msg = format!(
                "a test id is {} bytes long, more than the limit of {MAX_TEST_ID_LEN}: {}…",
                long.len(),
                long.chars().take(80).collect::<String>()
            );
            let _ = cmd.note(&mut offset, &format!("{msg}\n")).await;
            return Some(failure(msg));
        }
        if !cmd
            .note(&mut offset, &format!("listed {} tests\n", ids.len()))
            .await
        {
            return None;
        }
        let tests_file = self
            .workdir
            .join(".split")
            .join(format!("{}-{}.txt", cmd.attempt, cmd.step));
        if let Some(parent) = tests_file.parent() {
            if let Err(e) = std::fs::create_dir_all(parent) {
                return Some(spawn_error(format!(
                    "cannot create {}: {e}",
                    parent.display()
                )));
            }
        }
        let mut req = SplitRequest {
            attempt: cmd.attempt,
            step: cmd.step,
            req: 0,
            list_digest: Some(herd_core::split::list_digest(&ids)),
            list: Some(ids),
            list_secs: Some(list_secs),
            list_parts: None,
            done: None,
        };
        loop {
            let reply = match self.link.request(req.clone(), stop, cmd.deadline).await {
                Ok(r) => r,
                Err(Interrupted::TimedOut) => return Some(timed_out(self.timeout)),
                Err(Interrupted::Stop(StopKind::Cancel)) => return Some(cancelled()),
                Err(Interrupted::Stop(StopKind::Abandon)) => return None,
                Err(Interrupted::TooLarge(n)) => {
                    let msg = format!(
                        "a split request is too large to send: {n} bytes, the protocol's limit is {MAX_TEXT_FRAME}; split the suite into several jobs, or list shorter ids"
                    );
                    let _ = cmd.note(&mut offset, &format!("{msg}\n")).await;
                    return Some(failure(msg));
                }
            };
            // Until the server has the list (it may answer `wait` while
            // another shard sends it), each request names it.
            if !matches!(reply, SplitReply::Wait { .. }) {
                req.list = None;
                req.list_digest = None;
                req.list_secs = None;
            }
            req.done = None;
            match reply {
                SplitReply::Batch { id, tests } => {
                    let (mut report, next_offset) =
                        match self.batch(cmd, stop, &tests_file, id, &tests, offset).await {
                            Ok(r) => r,
                            Err(outcome) => return outcome,
                        };
                    offset = next_offset;
                    // No per-test results and a failure: find the failing
                    // tests instead of failing the whole batch.
                    if report.tests.is_none() && report.exit_code != Some(0) && tests.len() > 1 {
                        match self
                            .bisect(cmd, stop, &tests_file, id, &tests, offset)
                            .await
                        {
                            Ok((runs, next)) => {
                                offset = next;
                                report.tests = Some(runs);
                            }
                            Err(outcome) => return outcome,
                        }
                    }
                    req.done = Some(report);
                }
                SplitReply::Wait { ms } => {
                    let wait = Duration::from_millis(ms.clamp(50, 5_000));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        changed = stop.changed() => {
                            match (changed, *stop.borrow()) {
                                (Ok(()), Some(StopKind::Cancel)) => return Some(cancelled()),
                                (Ok(()), None) => {}
                                _ => return None,
                            }
                        }
                    }
                }
                SplitReply::Done { failed, summary } => {
                    let _ = std::fs::remove_file(&tests_file);
                    if !cmd.note(&mut offset, &format!("{summary}\n")).await {
                        return None;
                    }
                    return Some(if failed {
                        failure(summary)
                    } else {
                        StepOutcome {
                            status: StepStatus::Success,
                            exit_code: Some(0),
                            message: Some(summary),
                        }
                    });
                }
                SplitReply::Fail { message } => {
                    let _ = cmd.note(&mut offset, &format!("{message}\n")).await;
                    return Some(failure(message));
                }
                // `request` sends the list itself when asked.
                SplitReply::SendList => {
                    let message = "the server asked for the test list again after it had it";
                    let _ = cmd.note(&mut offset, &format!("{message}\n")).await;
                    return Some(failure(message.into()));
                }
            }
        }
    }

    /// Finds which tests of a failed batch fail, when the runner reports no
    /// per-test results: halves are run again, a half that passes passes
    /// all its tests, a failing one is halved again, down to single tests.
    /// At most [`MAX_BISECT_RUNS`] runs; the tests still undecided then
    /// fail as their batch did.
    async fn bisect(
        &self,
        cmd: &StepRunner<'_>,
        stop: &mut watch::Receiver<Option<StopKind>>,
        tests_file: &std::path::Path,
        id: u64,
        tests: &[String],
        mut offset: u64,
    ) -> Result<(Vec<TestRun>, u64), Option<StepOutcome>> {
        let note = format!(
            "── batch {id} failed and its runner reports no per-test results: running parts of it again to find the failing tests ──\n"
        );
        if !cmd.note(&mut offset, &note).await {
            return Err(None);
        }
        let mut runs = Vec::with_capacity(tests.len());
        let (a, b) = tests.split_at(tests.len() / 2);
        let mut todo: Vec<Vec<String>> = vec![b.to_vec(), a.to_vec()];
        let mut budget = MAX_BISECT_RUNS;
        while let Some(group) = todo.pop() {
            if budget == 0 {
                runs.extend(group.into_iter().map(|t| TestRun {
                    id: t,
                    outcome: RunOutcome::Failed,
                    secs: None,
                    message: Some(format!(
                        "its batch failed, and it was not narrowed down within {MAX_BISECT_RUNS} runs"
                    )),
                }));
                continue;
            }
            budget -= 1;
            let (report, next) = self
                .batch(cmd, stop, tests_file, id, &group, offset)
                .await?;
            offset = next;
            let secs = Some(report.wall_secs / group.len().max(1) as f64);
            if report.exit_code == Some(0) {
                runs.extend(group.into_iter().map(|t| TestRun {
                    id: t,
                    outcome: RunOutcome::Passed,
                    secs,
                    message: None,
                }));
            } else if group.len() == 1 {
                let why = match report.exit_code {
                    Some(c) => format!("it fails on its own (exit code {c})"),
                    None => "it fails on its own (killed)".to_string(),
                };
                runs.extend(group.into_iter().map(|t| TestRun {
                    id: t,
                    outcome: RunOutcome::Failed,
                    secs,
                    message: Some(why.clone()),
                }));
            } else {
                let (a, b) = group.split_at(group.len() / 2);
                todo.push(b.to_vec());
                todo.push(a.to_vec());
            }
        }
        Ok((runs, offset))
    }

    /// Runs one batch; its report and the log's new end. Err: the step ends.
    async fn batch(
        &self,
        cmd: &StepRunner<'_>,
        stop: &mut watch::Receiver<Option<StopKind>>,
        tests_file: &std::path::Path,
        id: u64,
        tests: &[String],
        mut offset: u64,
    ) -> Result<(BatchReport, u64), Option<StepOutcome>> {
        let mut file_text = tests.join("\n");
        file_text.push('\n');
        if let Err(e) = std::fs::write(tests_file, file_text) {
            return Err(Some(spawn_error(format!(
                "cannot write {}: {e}",
                tests_file.display()
            ))));
        }
        let junit_path = self.junit.map(|j| cmd.workspace.join(j));
        if let Some(p) = &junit_path {
            // A report left from an earlier batch must not count for this one.
            let _ = std::fs::remove_file(p);
            if let Some(dir) = p.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
        }
        let quoted: Vec<String> = tests
            .iter()
            .map(|t| {
                shlex::try_quote(t)
                    .map(|q| q.into_owned())
                    .unwrap_or_else(|_| String::new())
            })
            .collect();
        let mut script = self.run.replace("{tests}", &quoted.join(" "));
        if let Some(j) = self.junit {
            script = script.replace(
                &format!("{{{}}}", self.format.key()),
                &shlex::try_quote(j)
                    .map(|q| q.into_owned())
                    .unwrap_or_default(),
            );
        }
        // For a pattern, the batch's output is also kept in a file (and
        // still streamed to the log); the exit code is the batch's.
        let output_path = tests_file.with_extension("out");
        if self.pattern.is_some() {
            let q = |p: &std::path::Path| {
                shlex::try_quote(&p.to_string_lossy())
                    .map(|q| q.into_owned())
                    .unwrap_or_default()
            };
            let rc = tests_file.with_extension("rc");
            script = format!(
                "( ( {script}\n); echo $? > {rc} ) 2>&1 | tee {out}; exit \"$(cat {rc} 2>/dev/null || echo 1)\"",
                rc = q(&rc),
                out = q(&output_path),
            );
        }
        let mut env: BTreeMap<String, String> = cmd.env.clone();
        env.insert(
            "HERD_TESTS_FILE".into(),
            tests_file.to_string_lossy().into_owned(),
        );
        env.insert("HERD_BATCH".into(), id.to_string());
        if script.len() > MAX_INLINE_SCRIPT {
            let path = tests_file.with_extension("sh");
            if let Err(e) = std::fs::write(&path, &script) {
                return Err(Some(spawn_error(format!(
                    "cannot write {}: {e}",
                    path.display()
                ))));
            }
            script = format!(
                ". {}",
                shlex::try_quote(&path.to_string_lossy()).unwrap_or_default()
            );
        }
        let header = format!("── batch {id}: {} tests ──\n", tests.len());
        if !cmd.note(&mut offset, &header).await {
            return Err(None);
        }
        let runner = StepRunner { env: &env, ..*cmd };
        let started = Instant::now();
        let ran = runner
            .run(&script, offset, false, stop)
            .await
            .map_err(|m| Some(spawn_error(m)))?;
        let wall_secs = started.elapsed().as_secs_f64();
        tracing::debug!(batch = id, tests = tests.len(), wall_secs, "batch ran");
        let exit_code = match ran.end {
            End::Exited(Ok(status)) => status.code(),
            End::Exited(Err(e)) => {
                return Err(Some(spawn_error(format!("cannot wait for the batch: {e}"))))
            }
            other => return Err(self.interrupted(other)),
        };
        offset = ran.offset;
        let tests_report = match (&junit_path, self.pattern) {
            (None, Some(pattern)) => {
                // The start of the output, at most as much as a report.
                let mut output = Vec::new();
                if let Ok(f) = std::fs::File::open(&output_path) {
                    use std::io::Read as _;
                    let limit = herd_core::results::MAX_REPORT_BYTES as u64;
                    let _ = f.take(limit).read_to_end(&mut output);
                }
                let _ = std::fs::remove_file(&output_path);
                match herd_core::results::pattern(pattern, &String::from_utf8_lossy(&output), tests)
                {
                    Ok(mut runs) => {
                        let masker = cmd.output.mask.as_deref();
                        for r in &mut runs {
                            r.message = r.message.take().map(|m| crate::mask::mask_opt(masker, &m));
                        }
                        // Tests the output does not name: the exit code
                        // decides (or bisection, if it failed).
                        (!runs.is_empty()).then_some(runs)
                    }
                    Err(e) => {
                        if !cmd
                            .note(&mut offset, &format!("cannot read results: {e}\n"))
                            .await
                        {
                            return Err(None);
                        }
                        None
                    }
                }
            }
            (None, None) => None,
            (Some(p), _) => match std::fs::read(p) {
                Ok(bytes) => match read_report(self.format, &bytes, tests) {
                    Ok(mut runs) => {
                        // Failure messages quote what a test printed.
                        let masker = cmd.output.mask.as_deref();
                        for r in &mut runs {
                            r.message = r.message.take().map(|m| crate::mask::mask_opt(masker, &m));
                        }
                        Some(runs)
                    }
                    Err(e) => {
                        let msg = format!(
                            "cannot read the {} report {}: {e}\n",
                            self.format.key(),
                            p.display()
                        );
                        if !cmd.note(&mut offset, &msg).await {
                            return Err(None);
                        }
                        Some(Vec::new())
                    }
                },
                Err(e) => {
                    let msg = format!("no {} report at {} ({e})\n", self.format.key(), p.display());
                    if !cmd.note(&mut offset, &msg).await {
                        return Err(None);
                    }
                    Some(Vec::new())
                }
            },
        };
        Ok((
            BatchReport {
                batch: id,
                exit_code,
                wall_secs,
                tests: tests_report,
            },
            offset,
        ))
    }

    fn interrupted(&self, end: End) -> Option<StepOutcome> {
        match end {
            End::TimedOut => Some(timed_out(self.timeout)),
            End::Stopped(StopKind::Cancel) => Some(cancelled()),
            End::Stopped(StopKind::Abandon) | End::Abandoned => None,
            End::Exited(_) => Some(spawn_error("the command ended unexpectedly".into())),
        }
    }
}

/// The batch's results from its report, by the report's format.
pub(crate) fn read_report(
    format: herd_proto::ReportFormat,
    bytes: &[u8],
    tests: &[String],
) -> Result<Vec<TestRun>, String> {
    use herd_proto::ReportFormat;
    match format {
        ReportFormat::Junit => junit::results(&String::from_utf8_lossy(bytes), tests),
        ReportFormat::Tap => herd_core::results::tap(&String::from_utf8_lossy(bytes), tests),
        ReportFormat::Subunit => herd_core::results::subunit(bytes, tests),
    }
}

fn failure(message: String) -> StepOutcome {
    StepOutcome {
        status: StepStatus::Failure,
        exit_code: None,
        message: Some(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_proto::{RunOutcome, TestRun};

    fn request(tests: usize, message: usize, list: usize) -> SplitRequest {
        SplitRequest {
            attempt: 1,
            step: 1,
            req: 1,
            list: (list > 0).then(|| {
                (0..list)
                    .map(|i| format!("tests/test_{i:08}.py::t"))
                    .collect()
            }),
            list_secs: None,
            list_digest: None,
            list_parts: None,
            done: Some(BatchReport {
                batch: 1,
                exit_code: Some(1),
                wall_secs: 1.0,
                tests: Some(
                    (0..tests)
                        .map(|i| TestRun {
                            id: format!("t{i}"),
                            outcome: RunOutcome::Failed,
                            secs: Some(0.1),
                            message: Some("x".repeat(message)),
                        })
                        .collect(),
                ),
            }),
        }
    }

    #[test]
    fn long_failure_messages_are_cut_to_fit_a_frame() {
        let mut small = request(10, 100, 0);
        assert!(fit_in_a_frame(&mut small).is_ok());
        assert_eq!(
            small.done.as_ref().unwrap().tests.as_ref().unwrap()[0]
                .message
                .as_ref()
                .unwrap()
                .len(),
            100
        );
        let mut big = request(1000, 4096, 0);
        assert!(fit_in_a_frame(&mut big).is_ok());
        assert!(WorkerMsg::Split(big.clone()).encode().len() <= MAX_TEXT_FRAME);
        assert_eq!(
            big.done.unwrap().tests.unwrap().len(),
            1000,
            "no result is dropped"
        );
    }

    #[test]
    fn a_list_too_large_for_a_frame_is_refused_not_sent() {
        let mut huge = request(0, 0, 100_000);
        assert!(
            matches!(fit_in_a_frame(&mut huge), Err(Interrupted::TooLarge(n)) if n > MAX_TEXT_FRAME)
        );
    }
}
