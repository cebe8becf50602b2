//! Projects: what each watches, how its polling goes, its recent changes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// How a project's polling goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PollStatus {
    pub last_poll_at: Option<i64>,
    pub last_success_at: Option<i64>,
    /// The last fetch's error, until a fetch succeeds.
    pub last_error: Option<String>,
    /// Fetches failed in a row.
    pub failures: u32,
    pub next_poll_at: Option<i64>,
    /// The watched branches and their heads at the last poll.
    pub branches: BTreeMap<String, String>,
    /// Webhooks that woke the poller since the server started.
    #[serde(default)]
    pub wakes: u64,
}

/// A project (`GET /api/v1/projects`). Secrets are never shown, only
/// whether one is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    pub name: String,
    /// Its repository; null for a project with its pipeline inline.
    pub repo: Option<String>,
    /// Watched branches (globs); empty: the repository's default branch.
    pub branches: Vec<String>,
    /// Seconds between fetches; null: webhooks only.
    pub poll_secs: Option<f64>,
    /// A push of many commits builds the newest only.
    pub collapse: bool,
    /// Whether a webhook secret is set.
    pub webhook: bool,
    /// Where statuses go: `github:o/r`, `webhook:URL` …
    pub report: Vec<String>,
    /// Null until the first poll, and for projects without a repository.
    pub polling: Option<PollStatus>,
}

/// `GET /api/v1/projects`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectList {
    pub projects: Vec<Project>,
}

/// A commit on a watched branch, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub id: i64,
    pub project: String,
    pub branch: String,
    pub revision: String,
    pub author: String,
    pub message: String,
    pub committed_at: i64,
    /// Files touched; null when unknown (a new branch).
    pub files: Option<Vec<String>>,
    pub created_at: i64,
    /// The build it became.
    pub build_id: Option<i64>,
    /// Why it was not built.
    pub skipped: Option<String>,
    /// `branch`, `tag` (then `branch` is the tag) or `pull_request`.
    #[serde(default = "branch_kind")]
    pub kind: String,
    /// A pull request's number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<i64>,
    /// Why it waits (for approval: `herd change approve ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// Who approved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
}

fn branch_kind() -> String {
    "branch".into()
}

/// `POST /api/v1/changes/{id}/approve`: what became of the approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Approval {
    pub change: i64,
    /// The build it became.
    pub build_id: Option<i64>,
    /// Why no build was started (no builder takes it…).
    pub skipped: Option<String>,
}

/// `GET /api/v1/projects/{name}`: the project and its latest changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectDetail {
    #[serde(flatten)]
    pub project: Project,
    /// Newest first.
    pub changes: Vec<Change>,
}
