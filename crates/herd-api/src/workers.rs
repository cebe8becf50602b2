//! Workers: what each is, what it found out about itself, and the calls
//! that pause, resume and probe them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// What a probe found on a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Probe {
    pub name: String,
    pub present: bool,
    pub version: Option<String>,
    /// The probe's output when it failed, to show why.
    pub output: Option<String>,
    pub probed_at: i64,
}

/// A worker the server has seen (`GET /api/v1/workers/{name}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Worker {
    pub name: String,
    pub online: bool,
    pub slots: i64,
    /// Labels the worker states itself (`--label`): they meet `requires:`,
    /// never a secret's labels.
    pub labels: BTreeMap<String, String>,
    /// Labels the server gave it (its enrollment token, `herd workers
    /// label`): they win over stated ones and alone meet a secret's labels.
    #[serde(default)]
    pub server_labels: BTreeMap<String, String>,
    /// What it reports unasked: os, arch, cpus, memory …
    pub facts: BTreeMap<String, String>,
    /// Its herd version.
    pub version: String,
    pub paused: bool,
    pub running_attempts: Vec<i64>,
    pub probes: Vec<Probe>,
    pub first_seen: i64,
    /// When it last came or went.
    pub last_change: i64,
    /// Quarantined (it lost jobs again and again) until then.
    pub quarantined_until: Option<i64>,
    /// The disk its workspaces live on, as it last said.
    #[serde(default)]
    pub disk: Option<WorkerDisk>,
}

/// The disk a worker keeps its workspaces on, as the worker said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerDisk {
    pub free_bytes: u64,
    pub total_bytes: u64,
    /// Workspaces kept warm.
    pub workspaces: u32,
    /// Set while it takes no new jobs because the disk is too full: why.
    pub low: Option<String>,
}

/// `GET /api/v1/workers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<Worker>,
}

/// `POST /api/v1/workers/{name}/pause` and `/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Paused {
    pub worker: String,
    pub paused: bool,
}

/// Body of `POST /api/v1/workers/reprobe`: one worker, or every connected one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReprobeRequest {
    #[serde(default)]
    pub worker: Option<String>,
}

/// A label's key: what a requirement can name.
pub const LABEL_KEY_PATTERN: &str = "^[A-Za-z0-9._-]{1,100}$";
/// A label's value: printable text (no control characters, no
/// bidirectional overrides), at most 200 characters.
pub const LABEL_VALUE_PATTERN: &str =
    "^[^\\x00-\\x1f\\x7f-\\x9f\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069]{0,200}$";
/// Labels set or removed in one request, each.
pub const MAX_LABELS_AT_ONCE: usize = 100;

/// `POST /api/v1/workers/{name}/labels`: labels the server gives a worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetLabels {
    /// Labels to set (a key set again gets the new value).
    #[serde(default)]
    #[schema(schema_with = label_map)]
    pub set: BTreeMap<String, String>,
    /// Keys to remove.
    #[serde(default)]
    #[schema(schema_with = label_keys)]
    pub remove: Vec<String>,
}

fn label_key() -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(LABEL_KEY_PATTERN))
}

fn label_map() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(label_key()))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(LABEL_VALUE_PATTERN)),
        ))
        .max_properties(Some(MAX_LABELS_AT_ONCE))
        .build()
}

fn label_keys() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(label_key())
        .max_items(Some(MAX_LABELS_AT_ONCE))
        .build()
}

/// The answer to a reprobe: the workers asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Reprobing {
    pub reprobing: Vec<String>,
}

/// `POST /api/v1/workers/{name}/forget`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Forgotten {
    pub worker: String,
    pub forgotten: bool,
}

/// `GET /api/v1/projects/{name}/builders`: per job of the project's latest
/// build, the connected workers able to run it and why the others cannot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ProjectBuilders {
    pub project: String,
    /// The build whose jobs are shown; null before the first build.
    pub build: Option<i64>,
    pub builders: Vec<BuilderFit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuilderFit {
    pub builder: String,
    pub jobs: Vec<JobFit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobFit {
    pub job: String,
    pub requires: Vec<String>,
    pub capable_workers: Vec<String>,
    pub workers: Vec<crate::builds::WorkerWhyNot>,
}
