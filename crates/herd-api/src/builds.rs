//! Builds, their jobs, attempts and steps; starting and cancelling them;
//! the query parameters of the build calls.

use crate::{AttemptState, RunState, StepState};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `POST /api/v1/builds`: build a project (every builder, or one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBuild {
    pub project: String,
    /// Only this builder.
    #[serde(default)]
    pub builder: Option<String>,
    /// Branch, tag or commit (default: the repository's HEAD).
    #[serde(default)]
    pub rev: Option<String>,
    /// Higher runs first.
    #[serde(default, deserialize_with = "crate::int::integral")]
    pub priority: i64,
    /// Shown with the build (default "started by hand").
    #[serde(default)]
    pub reason: Option<String>,
    /// Values for herd.yml's `params:` (the others take their defaults);
    /// an undeclared name or a value outside `choices:` is refused (409:
    /// the project's herd.yml does not allow it).
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/builds/{id}/retry`: run a build's jobs again, as a new
/// build of the same revision and origin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBuild {
    /// Only the jobs that failed, erred or were cancelled (the build must
    /// have ended); a split job runs again whole.
    #[serde(default)]
    pub failed: bool,
}

/// Where a build came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BuildKind {
    /// Started by hand (`herd build start`, the API, a rebuild).
    Manual,
    /// A new commit on a watched branch.
    Change,
    /// A patch sent with `herd try`.
    Try,
    /// A new tag (`tags:` of the project).
    Tag,
    /// A pull or merge request's head.
    PullRequest,
    /// Started by a `schedule:` of the project.
    Schedule,
}

/// A build as lists show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildSummary {
    pub id: i64,
    pub project: String,
    /// The revision as asked for (branch, tag or commit), when one was.
    pub ref_name: Option<String>,
    /// The commit built, when the project has a repository.
    pub revision: Option<String>,
    pub state: RunState,
    pub priority: i64,
    pub reason: String,
    /// Why the build could not run (a broken herd.yml names line and column).
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub author: Option<String>,
    pub message: Option<String>,
    /// The branch of a change.
    pub branch: Option<String>,
    pub kind: BuildKind,
    /// Who sent a try build; a pull request's author.
    pub sender: Option<String>,
    /// The pull request it builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<i64>,
}

/// `GET /api/v1/builds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuildList {
    /// Newest first.
    pub builds: Vec<BuildSummary>,
}

/// One build with its jobs, attempts and steps (`GET /api/v1/builds/{id}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Build {
    pub id: i64,
    pub project: String,
    #[serde(rename = "ref")]
    pub ref_name: Option<String>,
    pub revision: Option<String>,
    pub state: RunState,
    pub priority: i64,
    pub reason: String,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The server's change counter when this answer was made: pass it as
    /// `since` to wait for the next change.
    pub version: i64,
    pub jobs: Vec<Job>,
    pub kind: BuildKind,
    pub branch: Option<String>,
    pub sender: Option<String>,
    pub author: Option<String>,
    pub message: Option<String>,
    /// The build's split test suites, one line each.
    #[serde(default)]
    pub splits: Vec<crate::tests::SplitSummary>,
    /// The values of herd.yml's `params:` it ran with.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
    /// The pull request it builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<i64>,
}

impl Build {
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

/// One job of a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: i64,
    pub builder: String,
    pub name: String,
    pub state: RunState,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// Its requirements, as written (`python3 >= 3.10`).
    pub requires: Vec<String>,
    /// Why a queued job waits; null once it runs.
    pub waiting: Option<WhyNot>,
    /// Secrets its steps refer to that this build may not have: they are
    /// empty in the job's environment.
    #[serde(default)]
    pub withheld: Vec<WithheldSecret>,
    /// The jobs of this build it waits for (`needs:`), `builder/job`.
    #[serde(default)]
    pub needs: Vec<String>,
    pub attempts: Vec<Attempt>,
}

/// A secret a job refers to and does not get, and why (its `projects:`,
/// `refs:` or `try:` rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WithheldSecret {
    pub secret: String,
    pub reason: String,
}

/// One attempt at running a job on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub id: i64,
    /// 1 for the first attempt of its job.
    pub number: i64,
    pub worker: String,
    pub state: AttemptState,
    /// Why it ended when herd ended it (lost, cancelled).
    pub reason: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub steps: Vec<Step>,
}

/// One step of an attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Step {
    pub idx: i64,
    pub name: String,
    pub state: StepState,
    pub exit_code: Option<i64>,
    /// Why herd ended it, when it did (timeout, cancel, could not start).
    pub message: Option<String>,
    /// Bytes of output stored.
    pub log_size: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub duration_ms: Option<i64>,
}

/// Why a queued job waits: per connected worker, the first requirement it
/// fails, or what keeps it from taking the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WhyNot {
    /// One line: "no worker is online", "waiting for a free slot on …".
    pub summary: String,
    pub workers: Vec<WorkerWhyNot>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerWhyNot {
    pub worker: String,
    /// The first requirement it fails; null when it could run the job.
    pub unmet: Option<String>,
    pub state: WorkerFit,
    /// More about the state, in the worker's words (why its disk is low).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// How a connected worker stands towards a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum WorkerFit {
    /// It does not meet a requirement.
    Incapable,
    /// It finishes its jobs and takes no new ones.
    Draining,
    Paused,
    /// It lost jobs again and again and rests a while.
    Quarantined,
    /// Its disk is too full even without unused workspaces: no new jobs
    /// until space is freed (`detail` says how full).
    LowDisk,
    /// Every slot is taken.
    Busy,
    /// It could take the job now.
    Free,
}

/// `POST /api/v1/builds/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancelling {
    pub id: i64,
    pub cancelling: bool,
}

/// Query of `GET /api/v1/builds`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BuildListQuery {
    /// Only this project's builds.
    pub project: Option<String>,
    /// Only builds in this state.
    pub state: Option<RunState>,
    /// Only builds with a smaller id (the next page).
    pub before: Option<i64>,
    /// At most this many (1 to 500, default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// Query of `GET /api/v1/builds/{id}`: a long poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Answer once the server's change counter (`version` of an earlier
    /// answer) differs from this.
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// How long to wait for that, at most 30 000 ms (default 25 000).
    #[param(minimum = 0)]
    pub wait_ms: Option<i64>,
}

/// Query of `GET /api/v1/attempts/{id}/steps/{idx}/log`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// First byte (default 0).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
    /// At most this many bytes (default and most: 8 MiB).
    #[param(minimum = 0)]
    pub limit: Option<i64>,
    /// When nothing is there past `offset` and the step still runs, wait
    /// up to this long for output (at most 30 000 ms).
    #[param(minimum = 0)]
    pub wait_ms: Option<i64>,
}

/// Headers of a log range.
pub mod log_headers {
    /// Bytes of output stored so far.
    pub const SIZE: &str = "x-herd-log-size";
    /// The step's state.
    pub const STEP_STATE: &str = "x-herd-step-state";
    /// `1` while more output may come, else `0`.
    pub const MORE: &str = "x-herd-more";
}

crate::wire_names!(BuildKind {
    Manual => "manual",
    Change => "change",
    Try => "try",
    Tag => "tag",
    PullRequest => "pull_request",
    Schedule => "schedule",
});

crate::wire_names!(WorkerFit {
    Incapable => "incapable",
    Draining => "draining",
    Paused => "paused",
    Quarantined => "quarantined",
    LowDisk => "low_disk",
    Busy => "busy",
    Free => "free",
});
