//! The herd worker protocol: the messages a worker and the server exchange over
//! one WebSocket connection, and their encoding.
//!
//! Control messages are JSON in text frames ([`WorkerMsg`], [`ServerMsg`]); log
//! output travels in binary frames ([`LogFrame`]) so that a step printing
//! hundreds of megabytes costs no base64 or JSON escaping. `docs/protocol.md`
//! documents every message; this crate is the single source of truth for them.
//!
//! Architecture invariant: decoding never panics on any input. Every decoder
//! returns a [`DecodeError`], and the receiver closes that one connection.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod log_frame;
pub use log_frame::{LogFrame, LOG_FRAME_HEADER_LEN, LOG_FRAME_KIND};

/// Protocol versions this build speaks, oldest first. The hello negotiates the
/// highest version both sides know.
pub const SUPPORTED_PROTOCOLS: &[u32] = &[1, 2];

/// Largest text frame either side accepts. Larger frames close the connection.
pub const MAX_TEXT_FRAME: usize = 1024 * 1024;
/// Largest patch of a try build: it travels inside the job's assignment,
/// which must fit in one frame with room for JSON escaping.
/// Most bytes of output kept per step, unless the server says otherwise.
pub const DEFAULT_STEP_LOG_LIMIT: u64 = 256 * 1024 * 1024;
/// What a worker may send past a step's limit: the notice that says so.
pub const STEP_LOG_NOTICE_ROOM: u64 = 4096;
pub const MAX_TRY_PATCH: usize = 384 * 1024;
/// Largest payload of one log frame; workers split output into chunks this big.
/// Where the server serves its mirrors to workers (git smart HTTP).
pub const SOURCE_PREFIX: &str = "/git";

/// The path, on the server, a worker fetches `revision` of `project` from.
pub fn source_path(project: &str, revision: &str) -> String {
    format!("{SOURCE_PREFIX}/{project}/{revision}")
}

pub const MAX_LOG_CHUNK: usize = 64 * 1024;
/// Largest binary frame (a log frame with its header).
pub const MAX_BINARY_FRAME: usize = MAX_LOG_CHUNK + LOG_FRAME_HEADER_LEN;

/// Path of the worker endpoint on the server.
pub const WORKER_ENDPOINT: &str = "/api/v1/worker/connect";

pub type AttemptId = i64;

/// Picks the protocol version to speak: the highest one both sides support.
pub fn negotiate(theirs: &[u32]) -> Option<u32> {
    SUPPORTED_PROTOCOLS
        .iter()
        .rev()
        .find(|v| theirs.contains(v))
        .copied()
}

/// Messages from a worker to the server (text frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerMsg {
    /// First message on every connection.
    Hello(Hello),
    /// A numbered event of one attempt (log output travels as [`LogFrame`]).
    Event {
        attempt: AttemptId,
        seq: u64,
        event: JobEvent,
    },
    /// Sent every heartbeat interval; any frame counts as a sign of life.
    Heartbeat,
    /// Results of the probes the server asked for.
    ProbeResults { results: Vec<ProbeResult> },
    /// The worker is shutting down gracefully: it finishes what it runs
    /// and wants no new jobs.
    Draining,
    /// The worker stops now: every attempt it ran is dead, move them at once.
    Stopping,
    /// Its disk changed: while `low` is set it takes no new jobs.
    Disk(DiskReport),
    /// A shard of a split step asks for tests to run, reporting the batch
    /// it ran before. The server answers with [`ServerMsg::Split`] carrying
    /// the same `req`; asking again (after a lost answer) is harmless.
    Split(SplitRequest),
    /// One part of a test list too large for one frame, sent before the
    /// [`SplitRequest`] that names how many parts it has (`list_parts`).
    /// The parts live on this connection only: after a reconnect the
    /// server asks for them again ([`SplitReply::SendList`]).
    SplitList {
        attempt: AttemptId,
        step: u32,
        ids: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitRequest {
    pub attempt: AttemptId,
    pub step: u32,
    /// Chosen by the worker; the answer repeats it.
    pub req: u64,
    /// The test ids the `list` command printed (first request only, when
    /// they fit in one frame).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<Vec<String>>,
    /// The list's digest (`herd_core::split::list_digest`), with the
    /// first request: a server that holds this list already needs no copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_digest: Option<String>,
    /// The list came just before, in this many [`WorkerMsg::SplitList`] parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_parts: Option<u32>,
    /// How long the `list` command took, a hint of the runner's start-up cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_secs: Option<f64>,
    /// The batch this shard ran since its last request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<BatchReport>,
}

/// What a worker reports when a batch of a split step ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchReport {
    pub batch: u64,
    pub exit_code: Option<i32>,
    pub wall_secs: f64,
    /// Per-test results from the runner's JUnit report; None when the step
    /// has no `junit:` (then the exit code decides for every test).
    #[serde(default)]
    pub tests: Option<Vec<TestRun>>,
}

/// What a runner's report said about one test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRun {
    pub id: String,
    pub outcome: RunOutcome,
    #[serde(default)]
    pub secs: Option<f64>,
    /// The failure's message (clipped by the server).
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Passed,
    Failed,
    Skipped,
}

/// The server's answer to a [`SplitRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SplitReply {
    /// Run these tests, then ask again with the report.
    Batch { id: u64, tests: Vec<String> },
    /// Nothing to run now, but batches run elsewhere and may come back: ask
    /// again after `ms`.
    Wait { ms: u64 },
    /// Every test has its outcome; `failed` when one that this shard ran
    /// fails the build. `summary` is for the log.
    Done { failed: bool, summary: String },
    /// The split step fails on this worker (e.g. its list differs).
    Fail { message: String },
    /// The server needs the test list (it has none with this digest):
    /// send it in [`WorkerMsg::SplitList`] parts, then ask again with
    /// `list_parts`.
    SendList,
}

/// What a probe found on the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeResult {
    pub name: String,
    pub present: bool,
    #[serde(default)]
    pub version: Option<String>,
    /// The probe's output when it failed (at most 1 KiB), to show why.
    #[serde(default)]
    pub output: Option<String>,
    /// When it was probed, in milliseconds since the Unix epoch.
    pub probed_at: i64,
}

/// One probe to run: an executable (`NAME`), `pkg:NAME`, `py:MODULE`, or a
/// custom probe with its shell command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeRequest {
    pub name: String,
    #[serde(default)]
    pub command: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// Protocol versions the worker speaks.
    pub protocols: Vec<u32>,
    /// herd version of the worker binary.
    pub version: String,
    /// How many jobs the worker runs at once.
    pub slots: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Facts the worker found out about its machine (os, arch, cpus ...).
    #[serde(default)]
    pub facts: BTreeMap<String, String>,
    /// Attempts the worker is still running (or holds unacknowledged events
    /// of), so that the server can resume them instead of starting over.
    #[serde(default)]
    pub running: Vec<RunningAttempt>,
    /// The worker is shutting down gracefully: send it no new jobs.
    #[serde(default)]
    pub draining: bool,
    /// Its disk where workspaces live (then [`WorkerMsg::Disk`] on change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskReport>,
}

/// The disk where a worker keeps its workspaces, as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskReport {
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Workspaces kept warm on it.
    pub workspaces: u32,
    /// Set while the worker takes no new jobs because the disk is too
    /// full even after removing every unused workspace: why, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunningAttempt {
    pub attempt: AttemptId,
    /// Lowest sequence number the worker still holds (not yet acknowledged).
    pub first_unacked_seq: u64,
}

/// What happened in an attempt. Sequence numbers are shared with log frames:
/// every event and every log frame of one attempt has the next number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum JobEvent {
    StepStarted {
        step: u32,
    },
    StepFinished {
        step: u32,
        status: StepStatus,
        exit_code: Option<i32>,
        duration_ms: u64,
        /// Why herd ended the step, when it did (timeout, cancel, spawn error).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    Finished {
        result: JobResult,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Success,
    Failure,
    Error,
    Cancelled,
    Skipped,
}

impl StepStatus {
    /// The name on the wire, which is also the step's stored state.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Success => "success",
            StepStatus::Failure => "failure",
            StepStatus::Error => "error",
            StepStatus::Cancelled => "cancelled",
            StepStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    Success,
    Failure,
    Error,
    Cancelled,
}

/// Messages from the server to a worker (text frames).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMsg {
    Welcome(Welcome),
    Assign(Box<Assignment>),
    /// Stop the attempt: kill its process group, run nothing more, report `cancelled`.
    Cancel {
        attempt: AttemptId,
        reason: String,
    },
    /// The attempt is no longer the worker's (moved elsewhere, or unknown):
    /// stop it silently and drop its buffered events.
    Abandon {
        attempt: AttemptId,
        reason: String,
    },
    /// Every event of the attempt up to and including `seq` is stored.
    Ack {
        attempt: AttemptId,
        seq: u64,
    },
    Heartbeat,
    /// Run these probes and report with `probe_results`. Sent after the
    /// welcome and whenever the set the builders need grows; `fresh` asks
    /// to run them all again rather than only those not yet reported on
    /// this connection.
    Probe {
        probes: Vec<ProbeRequest>,
        #[serde(default)]
        fresh: bool,
    },
    /// The answer to a [`WorkerMsg::Split`] request.
    Split {
        attempt: AttemptId,
        step: u32,
        req: u64,
        reply: SplitReply,
    },
    /// The server is about to close the connection, and says why.
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    pub protocol: u32,
    /// The worker's name as the server knows it (bound to its token).
    pub worker: String,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_timeout_ms: u64,
    /// Protocol 2: the heartbeat interval and silence timeout while a
    /// worker runs nothing (it sends nothing else then). A worker given a
    /// job answers within `heartbeat_timeout_ms` again. Absent (protocol
    /// 1): the same as busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_heartbeat_interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_heartbeat_timeout_ms: Option<u64>,
    /// Attempts the server resumes: the worker resends events after `acked_seq`.
    #[serde(default)]
    pub resume: Vec<ResumeAttempt>,
    /// The server's herd version: a worker older than it says so in its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeAttempt {
    pub attempt: AttemptId,
    /// Highest sequence number the server has stored (0: none).
    pub acked_seq: u64,
}

/// One job given to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    pub attempt: AttemptId,
    pub build: i64,
    pub project: String,
    pub builder: String,
    pub job: String,
    /// The revision built (a commit id), when the project has a repository.
    #[serde(default)]
    pub revision: Option<String>,
    pub steps: Vec<StepSpec>,
    /// Secret values the job's environment holds: the worker masks them
    /// (and their base64 forms) in the output it sends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mask: Vec<String>,
    /// Most bytes of output kept per step; the worker drops the rest with
    /// a notice (the step goes on). None: [`DEFAULT_STEP_LOG_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_limit: Option<u64>,
    /// Most bytes of output kept for the whole attempt (all its steps);
    /// past it the worker drops output as past a step's limit. None: no
    /// limit but the steps'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_log_limit: Option<u64>,
    /// What the job should know before it starts (a secret withheld, and
    /// why): the worker writes each as a line at the top of the first
    /// step's log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    pub action: StepAction,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Runs even after an earlier step failed.
    #[serde(default)]
    pub always: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StepAction {
    /// Check out `revision` of `repo` into the job's workspace.
    /// A try build also applies `patch` (a `git diff --binary`) on top.
    Checkout {
        /// The repository as configured (credentials redacted when the
        /// server serves the sources).
        repo: String,
        revision: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
        /// Where on the server the worker fetches from
        /// ([`source_path`]); None: from `repo` itself (`checkout: direct`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        served: Option<String>,
    },
    /// Run a command with `sh -c`; with `results`, then read its per-test
    /// results and send them to the server (as one batch of a split).
    Shell {
        run: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        results: Option<StepResults>,
    },
    /// Run one share of a test suite: `list` prints the test ids; `run`
    /// runs a batch of them (`{tests}`, `{junit}`, `$HERD_TESTS_FILE`), as
    /// often as the server hands out batches.
    Split {
        list: String,
        run: String,
        /// Where `run` writes its report (the name is from when JUnit was
        /// the only format).
        #[serde(default)]
        junit: Option<String>,
        /// The report's format.
        #[serde(default, skip_serializing_if = "ReportFormat::is_junit")]
        format: ReportFormat,
        /// A regex over each batch's output whose `id` and `outcome`
        /// groups give the results (when there is no report file).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    /// Put the artifacts of the jobs this one needs into the workspace,
    /// at their paths. `from` names the jobs (`builder/job`, a split's
    /// shards included); the server fills `files` when it assigns the job.
    Fetch {
        from: Vec<String>,
        #[serde(default)]
        files: Vec<ArtifactFile>,
    },
    /// Upload the workspace's files that `paths` (globs, `!` excludes)
    /// select as the job's artifacts.
    Upload { paths: Vec<String> },
}

/// One stored artifact, as a worker fetches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactFile {
    pub id: i64,
    /// The job that made it (`builder/job`).
    pub job: String,
    /// Relative to the workspace, `/`-separated ([`check_artifact_path`]).
    pub path: String,
    pub size: u64,
    /// Hex SHA-256 of the content: the worker checks what it got.
    pub sha256: String,
}

/// Where a worker uploads the artifacts of `attempt` (`PUT` one file with
/// `?path=&size=&offset=`; `GET` with `?path=` says how much arrived).
pub fn artifact_upload_path(attempt: AttemptId) -> String {
    format!("/api/v1/attempts/{attempt}/uploads")
}

/// Where a worker running `attempt` downloads artifact `id` of its build.
pub fn artifact_fetch_path(attempt: AttemptId, id: i64) -> String {
    format!("/api/v1/attempts/{attempt}/artifacts/{id}")
}

/// Longest artifact path, in bytes.
pub const MAX_ARTIFACT_PATH: usize = 1024;

/// Why `path` cannot name an artifact, if it cannot: it must be relative,
/// `/`-separated, without `.` or `..` or empty parts, at most
/// [`MAX_ARTIFACT_PATH`] bytes and without control characters. Both ends
/// check it: a path from the other side never leaves the workspace.
pub fn check_artifact_path(path: &str) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path.len() > MAX_ARTIFACT_PATH {
        return Err("the path is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Err("the path is absolute");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err("the path holds a control character or a backslash");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err("the path has an empty, `.` or `..` part");
    }
    Ok(())
}

/// Where a step's per-test results are: a report file in `format`, or
/// `pattern` (a regex with `id` and `outcome` groups) over its output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepResults {
    #[serde(default, skip_serializing_if = "ReportFormat::is_junit")]
    pub format: ReportFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// The format of a split's per-test report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    #[default]
    Junit,
    Tap,
    /// Subunit v2 (binary), as `trial --reporter=subunitv2` writes it.
    Subunit,
}

impl ReportFormat {
    pub fn is_junit(&self) -> bool {
        *self == ReportFormat::Junit
    }

    /// Its key in herd.yml's `split:`.
    pub fn key(self) -> &'static str {
        match self {
            ReportFormat::Junit => "junit",
            ReportFormat::Tap => "tap",
            ReportFormat::Subunit => "subunit",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("malformed message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed log frame: {0}")]
    LogFrame(&'static str),
}

fn decode_text<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, DecodeError> {
    if text.len() > MAX_TEXT_FRAME {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit: MAX_TEXT_FRAME,
        });
    }
    Ok(serde_json::from_str(text)?)
}

impl WorkerMsg {
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        decode_text(text)
    }
    pub fn encode(&self) -> String {
        encode_json(self)
    }
}

impl ServerMsg {
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        decode_text(text)
    }
    pub fn encode(&self) -> String {
        encode_json(self)
    }
}

fn encode_json<T: Serialize>(value: &T) -> String {
    // These types hold only strings, numbers and maps with string keys, which
    // serde_json always encodes; the fallback keeps this panic-free anyway.
    serde_json::to_string(value)
        .unwrap_or_else(|e| format!(r#"{{"type":"error","message":"encode failed: {e}"}}"#))
}

#[cfg(test)]
mod tests;
