//! Test results of split steps: per test, per batch, and the counts.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How many tests of a split ended how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestCounts {
    pub total: u64,
    pub passed: u64,
    pub failed: u64,
    pub flaky: u64,
    pub skipped: u64,
    pub lost: u64,
    pub not_run: u64,
    pub pending: u64,
}

/// State of a split as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SplitState {
    /// Tests are still being handed out or run.
    Running,
    /// Every test has its outcome.
    Done,
}

/// One split test suite of a build, in one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SplitSummary {
    pub id: i64,
    pub builder: String,
    pub job: String,
    /// The split step's name.
    pub step: String,
    pub state: SplitState,
    /// Whether a test failed the build.
    pub failed: bool,
    /// "1200 tests: 1198 passed, 2 failed".
    pub summary: Option<String>,
    pub counts: TestCounts,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    /// The merged JUnit report's path.
    pub junit: String,
}

/// The final outcome of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TestOutcome {
    Passed,
    Failed,
    /// Failed, then passed.
    Flaky,
    Skipped,
    /// Its worker was lost while running it, twice.
    Lost,
    /// The runner's report never mentioned it, twice.
    NotRun,
    /// Not run yet.
    Pending,
}

/// One test of a split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestResult {
    pub id: String,
    pub outcome: TestOutcome,
    pub secs: Option<f64>,
    pub runs: u32,
    pub worker: Option<String>,
    /// The failure's message.
    pub message: Option<String>,
}

/// State of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BatchState {
    Running,
    Done,
    Lost,
}

/// One batch of tests one shard ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    pub batch: u64,
    /// The shard job and attempt that ran it.
    pub job: i64,
    pub attempt: i64,
    pub state: BatchState,
    /// How many tests.
    pub tests: u64,
    pub ids: Vec<String>,
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    pub exit_code: Option<i32>,
}

/// One worker's batches, in time order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerLane {
    pub worker: String,
    pub batches: Vec<BatchView>,
}

/// One split with its tests (failed, flaky, lost and not run first) and
/// each worker's batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SplitDetail {
    #[serde(flatten)]
    pub summary: SplitSummary,
    pub workers: Vec<WorkerLane>,
    pub tests: Vec<TestResult>,
}

/// `GET /api/v1/builds/{id}/tests`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BuildTests {
    pub build: i64,
    pub splits: Vec<SplitDetail>,
}

crate::wire_names!(SplitState {
    Running => "running",
    Done => "done",
});

crate::wire_names!(TestOutcome {
    Passed => "passed",
    Failed => "failed",
    Flaky => "flaky",
    Skipped => "skipped",
    Lost => "lost",
    NotRun => "not_run",
    Pending => "pending",
});

crate::wire_names!(BatchState {
    Running => "running",
    Done => "done",
    Lost => "lost",
});
