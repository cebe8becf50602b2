//! Workers: listing and showing them with their capabilities, pausing,
//! resuming, asking for new probes, forgetting one; and which workers can
//! run which job of a project.

use super::{Admin, ApiError, ApiJson, ApiPath, AppState};
use crate::access::MaybeCaller;
use crate::access::{BodyRefusals, TokenRefusals};
use crate::auth::Principal;
use crate::store::WorkerRow;
use axum::extract::State;
use axum::Json;
use herd_api::workers::{
    BuilderFit, Forgotten, JobFit, Paused, Probe, ProjectBuilders, ReprobeRequest, Reprobing,
    SetLabels, Worker, WorkerList,
};
use herd_api::ErrorBody;
use herd_proto::ProbeResult;
use std::collections::BTreeMap;

/// Every worker the server has seen.
#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "workers",
    responses((status = 200, body = WorkerList), TokenRefusals),
    security((), ("token" = [])),
)]
pub async fn list_workers(State(app): AppState) -> Result<Json<WorkerList>, ApiError> {
    let live = app.hub.live_workers();
    let mut probes = app.hub.store.probes_by_worker(None).await?;
    let mut server_labels = app.hub.store.all_worker_labels().await?;
    let workers = app
        .hub
        .store
        .workers()
        .await?
        .iter()
        .map(|w| {
            let probes = probes.remove(&w.name).unwrap_or_default();
            let mut v = worker_view(
                w,
                live.get(&w.name),
                &probes,
                app.hub.quarantined_until(&w.name),
                app.hub.live_disk(&w.name),
            );
            v.server_labels = server_labels.remove(&w.name).unwrap_or_default();
            v
        })
        .collect();
    Ok(Json(WorkerList { workers }))
}

/// One worker: facts, labels, probe results. A worker's own token may read
/// its own record (the installer waits on it).
#[utoipa::path(
    get,
    path = "/api/v1/workers/{name}",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name")),
    responses(
        (status = 200, body = Worker),
        (status = 404, description = "No such worker has connected yet", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn get_worker(
    State(app): AppState,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Worker>, ApiError> {
    let w = app
        .hub
        .store
        .worker(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no worker `{name}` has connected yet")))?;
    let live = app.hub.live_workers();
    let probes = app.hub.store.worker_probes(&name).await?;
    let mut v = worker_view(
        &w,
        live.get(&name),
        &probes,
        app.hub.quarantined_until(&name),
        app.hub.live_disk(&name),
    );
    v.server_labels = app.hub.store.worker_labels(&name).await?;
    Ok(Json(v))
}

/// Sets and removes labels the server gives a worker. Unlike the labels a
/// worker states itself, these meet the `labels:` of a secret. The worker
/// need not have connected yet (an enrollment names it first).
#[utoipa::path(
    post,
    path = "/api/v1/workers/{name}/labels",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name")),
    request_body = SetLabels,
    responses(
        (status = 200, description = "The labels the server now gives it", body = std::collections::BTreeMap<String, String>),
        (status = 400, description = "A name or key that is not valid", body = ErrorBody),
        BodyRefusals,
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn set_labels(
    _: Admin,
    State(app): AppState,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<SetLabels>,
) -> Result<Json<BTreeMap<String, String>>, ApiError> {
    if !super::valid_worker_name(&name) {
        return Err(ApiError::bad_request(format!(
            "invalid worker name `{name}`: use letters, digits, `-`, `_` and `.`"
        )));
    }
    for key in req.set.keys().chain(&req.remove) {
        if !valid_label_key(key) {
            return Err(ApiError::bad_request(format!(
                "invalid label `{key}`: a label is named with letters, digits, `-`, `_` and `.`"
            )));
        }
    }
    for (key, value) in &req.set {
        if value.chars().count() > 200 || value.chars().any(herd_core::pipeline::is_hidden_char) {
            return Err(ApiError::bad_request(format!(
                "invalid value of label `{key}`: at most 200 printable characters"
            )));
        }
    }
    if req.set.len().max(req.remove.len()) > herd_api::workers::MAX_LABELS_AT_ONCE {
        return Err(ApiError::bad_request(format!(
            "at most {} labels set, and as many removed, at once",
            herd_api::workers::MAX_LABELS_AT_ONCE
        )));
    }
    app.hub
        .set_server_labels(&name, &req.set, &req.remove)
        .await?;
    Ok(Json(app.hub.store.worker_labels(&name).await?))
}

/// A label's key: what a requirement can name.
pub fn valid_label_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 100
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// No new jobs for the worker (running ones finish); kept across restarts.
#[utoipa::path(
    post,
    path = "/api/v1/workers/{name}/pause",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name")),
    responses(
        (status = 200, body = Paused),
        (status = 404, description = "No such worker has connected yet", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn pause_worker(
    _: Admin,
    State(app): AppState,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Paused>, ApiError> {
    set_paused(&app, name, true).await
}

/// Jobs again for a paused worker.
#[utoipa::path(
    post,
    path = "/api/v1/workers/{name}/resume",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name")),
    responses(
        (status = 200, body = Paused),
        (status = 404, description = "No such worker has connected yet", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn resume_worker(
    _: Admin,
    State(app): AppState,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Paused>, ApiError> {
    set_paused(&app, name, false).await
}

async fn set_paused(
    app: &crate::App,
    name: String,
    paused: bool,
) -> Result<Json<Paused>, ApiError> {
    if !app.hub.set_paused(&name, paused).await? {
        return Err(ApiError::not_found(format!(
            "no worker `{name}` has connected yet"
        )));
    }
    Ok(Json(Paused {
        worker: name,
        paused,
    }))
}

/// Asks one worker (or every connected one) to run its probes again.
#[utoipa::path(
    post,
    path = "/api/v1/workers/reprobe",
    tag = "workers",
    request_body(content = Option<ReprobeRequest>, description = "The worker; none: every connected worker"),
    responses(
        (status = 200, body = Reprobing),
        (status = 404, description = "That worker is not online", body = ErrorBody),
        BodyRefusals,
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn reprobe(
    _: Admin,
    State(app): AppState,
    body: Option<ApiJson<Option<ReprobeRequest>>>,
) -> Result<Json<Reprobing>, ApiError> {
    let worker = body.and_then(|ApiJson(b)| b).and_then(|b| b.worker);
    let asked = app.hub.reprobe(worker.as_deref());
    if let (Some(w), true) = (&worker, asked.is_empty()) {
        return Err(ApiError::not_found(format!("worker `{w}` is not online")));
    }
    Ok(Json(Reprobing { reprobing: asked }))
}

/// Forgets a worker: its tokens are revoked and its record removed. By
/// the admin, or by the worker itself (`herd worker uninstall --purge`).
#[utoipa::path(
    post,
    path = "/api/v1/workers/{name}/forget",
    tag = "workers",
    params(("name" = String, Path, description = "The worker's name")),
    responses((status = 200, body = Forgotten), TokenRefusals),
    security(("token" = [])),
)]
pub async fn forget_worker(
    State(app): AppState,
    MaybeCaller(caller): MaybeCaller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Forgotten>, ApiError> {
    match caller {
        Some(Principal::Admin { .. }) => {}
        Some(Principal::Worker { worker, .. }) if worker == name => {}
        Some(_) => {
            return Err(ApiError::forbidden(
                "a worker token may only forget its own worker",
            ))
        }
        None => {
            return Err(ApiError::unauthorized(
                "this call needs the admin token or the worker's own token",
            ))
        }
    }
    app.hub.close_worker(&name, "the worker was removed");
    app.hub.store.forget_worker(&name).await?;
    app.hub.changed();
    Ok(Json(Forgotten {
        worker: name,
        forgotten: true,
    }))
}

/// The builders of a project (as of its latest build) and, per job, the
/// connected workers able to run it and why the others cannot.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{name}/builders",
    tag = "projects",
    params(("name" = String, Path, description = "The project's name")),
    responses(
        (status = 200, body = ProjectBuilders),
        (status = 404, description = "No such project", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn project_builders(
    State(app): AppState,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProjectBuilders>, ApiError> {
    if app.hub.store.project(&name).await?.is_none() {
        return Err(ApiError::not_found(format!("unknown project `{name}`")));
    }
    let latest = app
        .hub
        .store
        .builds(Some(&name), None, None, 20)
        .await?
        .into_iter()
        .find(|b| b.error.is_none());
    let Some(latest) = latest else {
        return Ok(Json(ProjectBuilders {
            project: name,
            build: None,
            builders: Vec::new(),
        }));
    };
    let detail = app
        .hub
        .store
        .build_detail(latest.id)
        .await?
        .ok_or_else(|| ApiError::not_found("the build vanished"))?;
    let mut builders: Vec<BuilderFit> = Vec::new();
    for j in &detail.jobs {
        let why = app.hub.why_not(&j.spec);
        let job = JobFit {
            job: j.name.clone(),
            requires: j.spec.requires.iter().map(|r| r.to_string()).collect(),
            capable_workers: why
                .workers
                .iter()
                .filter(|w| w.unmet.is_none())
                .map(|w| w.worker.clone())
                .collect(),
            workers: why
                .workers
                .iter()
                .map(super::builds::worker_why_not_view)
                .collect(),
        };
        match builders.iter_mut().find(|b| b.builder == j.builder) {
            Some(b) => b.jobs.push(job),
            None => builders.push(BuilderFit {
                builder: j.builder.clone(),
                jobs: vec![job],
            }),
        }
    }
    Ok(Json(ProjectBuilders {
        project: name,
        build: Some(latest.id),
        builders,
    }))
}

fn worker_view(
    w: &WorkerRow,
    running: Option<&Vec<i64>>,
    probes: &[ProbeResult],
    quarantined_until: Option<i64>,
    live_disk: Option<herd_proto::DiskReport>,
) -> Worker {
    let map = |s: &str| serde_json::from_str::<BTreeMap<String, String>>(s).unwrap_or_default();
    Worker {
        name: w.name.clone(),
        online: running.is_some() || w.online,
        slots: w.slots,
        labels: map(&w.labels),
        server_labels: BTreeMap::new(),
        facts: map(&w.facts),
        version: w.version.clone(),
        paused: w.paused,
        running_attempts: running.cloned().unwrap_or_default(),
        probes: probes
            .iter()
            .map(|p| Probe {
                name: p.name.clone(),
                present: p.present,
                version: p.version.clone(),
                output: p.output.clone(),
                probed_at: p.probed_at,
            })
            .collect(),
        first_seen: w.first_seen,
        last_change: w.last_change,
        quarantined_until,
        disk: live_disk
            .or_else(|| {
                w.disk
                    .as_deref()
                    .and_then(|d| serde_json::from_str::<herd_proto::DiskReport>(d).ok())
            })
            .map(|d| herd_api::workers::WorkerDisk {
                free_bytes: d.free_bytes,
                total_bytes: d.total_bytes,
                workspaces: d.workspaces,
                low: d.low,
            }),
    }
}
