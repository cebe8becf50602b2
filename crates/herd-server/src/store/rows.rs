//! Rows as stored, one struct per table; `api/` turns them into the
//! `herd-api` types it answers with.

use super::encoding::decode_job_spec;
use super::{get, Result, StoreError};
use herd_core::plan::JobSpec;
use herd_core::state::{AttemptState, RunState, StepState};
use sqlx::any::AnyRow;

/// A state column read into its enum; an unknown word is corrupt data.
pub(super) fn state<T>(r: &AnyRow, col: &str, parse: fn(&str) -> Option<T>) -> Result<T> {
    let text: String = get(r, col)?;
    parse(&text).ok_or_else(|| StoreError::Corrupt(format!("unknown {col} `{text}`")))
}

#[derive(Debug, Clone)]
pub struct TokenRow {
    pub id: String,
    pub secret_hash: String,
    pub kind: String,
    pub worker: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Enrollment tokens: workers it may still enroll (None: no limit).
    pub uses_left: Option<i64>,
    /// Enrollment tokens: labels for the workers it enrolls (JSON object).
    pub labels: Option<String>,
}

impl TokenRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(TokenRow {
            id: get(r, "id")?,
            secret_hash: get(r, "secret_hash")?,
            kind: get(r, "kind")?,
            worker: get(r, "worker")?,
            created_at: get(r, "created_at")?,
            expires_at: get(r, "expires_at")?,
            revoked_at: get(r, "revoked_at")?,
            uses_left: get(r, "uses_left")?,
            labels: get(r, "labels")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ProjectRow {
    pub name: String,
    pub repo: Option<String>,
    pub pipeline: Option<String>,
}

impl ProjectRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(ProjectRow {
            name: get(r, "name")?,
            repo: get(r, "repo")?,
            pipeline: get(r, "pipeline")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub name: String,
    pub slots: i64,
    /// JSON object text.
    pub labels: String,
    /// JSON object text.
    pub facts: String,
    pub version: String,
    pub online: bool,
    pub paused: bool,
    pub first_seen: i64,
    /// When it came online or went offline.
    pub last_change: i64,
    /// When its owner was told it is away (None: not told, or back).
    pub away_notified_at: Option<i64>,
    /// Its disk as it last said (JSON of `herd_proto::DiskReport`).
    pub disk: Option<String>,
}

impl WorkerRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(WorkerRow {
            name: get(r, "name")?,
            slots: get(r, "slots")?,
            labels: get(r, "labels")?,
            facts: get(r, "facts")?,
            version: get(r, "version")?,
            online: get::<i64>(r, "online")? != 0,
            paused: get::<i64>(r, "paused")? != 0,
            first_seen: get(r, "first_seen")?,
            last_change: get(r, "last_change")?,
            away_notified_at: get(r, "away_notified_at")?,
            disk: get(r, "disk")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct BuildRow {
    pub id: i64,
    pub project: String,
    pub ref_name: Option<String>,
    pub revision: Option<String>,
    pub state: RunState,
    pub priority: i64,
    pub reason: String,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub author: Option<String>,
    pub message: Option<String>,
    /// The branch a change came from.
    pub branch: Option<String>,
    pub kind: super::BuildKind,
    /// Who sent a try build.
    pub sender: Option<String>,
    /// The values of herd.yml's `params:` it ran with.
    pub params: std::collections::BTreeMap<String, String>,
    /// The pull request it builds.
    pub pull_request: Option<i64>,
    /// Where its statuses go, when not to `revision` (a pull request's
    /// head when its merge was built).
    pub status_revision: Option<String>,
}

impl BuildRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(BuildRow {
            id: get(r, "id")?,
            project: get(r, "project")?,
            ref_name: get(r, "ref_name")?,
            revision: get(r, "revision")?,
            state: state(r, "state", RunState::parse)?,
            priority: get(r, "priority")?,
            reason: get(r, "reason")?,
            error: get(r, "error")?,
            created_at: get(r, "created_at")?,
            author: get(r, "author")?,
            message: get(r, "message")?,
            branch: get(r, "branch")?,
            kind: state(r, "kind", super::BuildKind::parse)?,
            sender: get(r, "sender")?,
            params: get::<Option<String>>(r, "params")?
                .map(|t| {
                    serde_json::from_str(&t)
                        .map_err(|e| StoreError::Corrupt(format!("build params `{t}`: {e}")))
                })
                .transpose()?
                .unwrap_or_default(),
            started_at: get(r, "started_at")?,
            finished_at: get(r, "finished_at")?,
            pull_request: get(r, "pull_request")?,
            status_revision: get(r, "status_revision")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub build_id: i64,
    pub builder: String,
    pub name: String,
    pub state: RunState,
    pub spec: JobSpec,
    pub error: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(JobRow {
            id: get(r, "id")?,
            build_id: get(r, "build_id")?,
            builder: get(r, "builder")?,
            name: get(r, "name")?,
            state: state(r, "state", RunState::parse)?,
            spec: decode_job_spec(&get::<String>(r, "spec")?)?,
            error: get(r, "error")?,
            created_at: get(r, "created_at")?,
            started_at: get(r, "started_at")?,
            finished_at: get(r, "finished_at")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub id: i64,
    pub job_id: i64,
    pub number: i64,
    pub worker: String,
    pub state: AttemptState,
    pub reason: Option<String>,
    pub last_seq: i64,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl AttemptRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(AttemptRow {
            id: get(r, "id")?,
            job_id: get(r, "job_id")?,
            number: get(r, "number")?,
            worker: get(r, "worker")?,
            state: state(r, "state", AttemptState::parse)?,
            reason: get(r, "reason")?,
            last_seq: get(r, "last_seq")?,
            created_at: get(r, "created_at")?,
            finished_at: get(r, "finished_at")?,
        })
    }
}

#[derive(Debug, Clone)]
pub struct StepRow {
    pub attempt_id: i64,
    pub idx: i64,
    pub name: String,
    pub state: StepState,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
    pub log_size: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl StepRow {
    pub(crate) fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(StepRow {
            attempt_id: get(r, "attempt_id")?,
            idx: get(r, "idx")?,
            name: get(r, "name")?,
            state: state(r, "state", StepState::parse)?,
            exit_code: get(r, "exit_code")?,
            message: get(r, "message")?,
            log_size: get(r, "log_size")?,
            started_at: get(r, "started_at")?,
            finished_at: get(r, "finished_at")?,
        })
    }
}
