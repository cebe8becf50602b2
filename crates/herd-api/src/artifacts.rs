//! Artifacts: the files jobs kept (herd.yml `artifacts:`), and the
//! worker's side of uploading them.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// One file a job kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    pub id: i64,
    /// The job that made it, `builder/job`.
    pub job: String,
    /// Relative to the job's workspace, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: i64,
    /// Hex SHA-256 of the content.
    pub sha256: String,
    pub created_at: i64,
    /// Where to download it (relative to the server's address).
    pub url: String,
}

/// `GET /api/v1/builds/{id}/artifacts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<Artifact>,
}

/// Which file of an attempt an upload is about, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// The file's path relative to the workspace.
    pub path: String,
    /// The whole file's size in bytes (PUT).
    #[param(minimum = 0)]
    pub size: Option<i64>,
    /// Where this request's bytes start (PUT; default 0: from the start).
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

/// How far an upload is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UploadState {
    /// Bytes of the file the server holds.
    pub offset: i64,
    /// Set once the whole file is kept: the artifact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<Artifact>,
}
