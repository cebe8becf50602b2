//! Operating the server: the janitor (`POST /api/v1/gc`) and the config
//! reload (`POST /api/v1/reload`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/gc`: run the janitor now, or only say what it would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcRequest {
    /// Only say what would go; remove nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What `keep:` lets go of one project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcProject {
    pub project: String,
    /// The policy applied, as `days=90 builds=1000 logs_days=- artifacts_days=-`.
    pub keep: String,
    /// Builds removed whole (or that would be), oldest first.
    pub builds: Vec<i64>,
    /// Builds whose logs go (the build stays).
    pub logs: Vec<i64>,
    /// Builds whose artifacts go (the build stays).
    pub artifacts: Vec<i64>,
    /// Compressed log bytes that go with them.
    pub log_bytes: u64,
    /// Bytes of artifact rows that go (files shared with kept builds stay).
    pub artifact_bytes: u64,
}

/// The answer of `POST /api/v1/gc`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GcReport {
    pub dry_run: bool,
    /// Another server holds the janitor's lease: nothing was done here.
    #[serde(default)]
    pub busy: bool,
    pub projects: Vec<GcProject>,
    /// Artifact files removed (no row names them any more).
    #[serde(default)]
    pub files_removed: u64,
    /// Bytes of those files.
    #[serde(default)]
    pub file_bytes: u64,
    /// Webhook deliveries, schedule firings and changes that built nothing,
    /// removed because they were old.
    #[serde(default)]
    pub bookkeeping: u64,
    /// How long it took, in milliseconds.
    #[serde(default)]
    pub took_ms: u64,
}

/// The answer of `POST /api/v1/reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReloadReport {
    /// The config file read.
    pub file: String,
    /// Projects now configured.
    pub projects: Vec<String>,
    /// What changed, in words (`project p added`, `users changed`).
    pub changes: Vec<String>,
}
