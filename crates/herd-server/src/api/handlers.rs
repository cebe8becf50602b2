//! Handlers of the REST API.

use super::{Admin, ApiError, OPENAPI};
use crate::auth::{self, TokenKind};
use crate::builds::{start_build, StartBuild};
use crate::hub::WhyNot;
use crate::store::{BuildDetail, JobSpec, WorkerRow};
use crate::App;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type AppState = State<Arc<App>>;

/// Longest a long-poll waits before answering with what it has.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Largest log range one call returns.
const MAX_LOG_RANGE: u64 = 8 * 1024 * 1024;

pub async fn health(State(app): AppState) -> Json<Value> {
    Json(
        json!({ "ok": true, "version": env!("CARGO_PKG_VERSION"), "workers_online": app.hub.live_workers().len(), "queued_jobs": app.hub.queue_len() }),
    )
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the API is described at /api/v1/openapi.json")
}

#[derive(Deserialize)]
pub struct BuildListQuery {
    project: Option<String>,
    state: Option<String>,
    before: Option<i64>,
    limit: Option<i64>,
}

pub async fn list_builds(
    State(app): AppState,
    Query(q): Query<BuildListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let builds = app
        .hub
        .store
        .builds(q.project.as_deref(), q.state.as_deref(), q.before, limit)
        .await?;
    Ok(Json(json!({ "builds": builds })))
}

pub async fn create_build(
    _: Admin,
    State(app): AppState,
    body: Result<Json<StartBuild>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(ApiError::from_json)?;
    let id = start_build(&app, req).await?;
    let detail = app.hub.store.build_detail(id).await?;
    let body = detail
        .map(|d| build_json(&d, 0, &why_not_map(&app, &d)))
        .unwrap_or(json!({ "id": id }));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
pub struct WaitQuery {
    /// Answer once the server's change counter differs from this.
    since: Option<u64>,
    /// How long to wait for that, at most 30 s.
    wait_ms: Option<u64>,
}

pub async fn get_build(
    State(app): AppState,
    Path(id): Path<i64>,
    Query(q): Query<WaitQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(since) = q.since {
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(25_000)).min(MAX_WAIT);
        let mut rx = app.hub.subscribe();
        if *rx.borrow_and_update() == since {
            let _ = tokio::time::timeout(wait, rx.changed()).await;
        }
    }
    let version = *app.hub.subscribe().borrow();
    let detail = app
        .hub
        .store
        .build_detail(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
    let mut out = build_json(&detail, version, &why_not_map(&app, &detail));
    let splits = app.hub.store.splits_of_build(id).await?;
    out["splits"] = Value::Array(super::splits::split_summaries(&splits));
    Ok(Json(out))
}

/// Why each queued job of the build waits.
fn why_not_map(app: &App, d: &BuildDetail) -> HashMap<i64, WhyNot> {
    d.jobs
        .iter()
        .filter(|j| j.state == "queued")
        .filter_map(|j| {
            let spec: JobSpec = serde_json::from_str(&j.spec).ok()?;
            Some((j.id, app.hub.why_not(&spec.requires)))
        })
        .collect()
}

pub async fn cancel_build(
    _: Admin,
    State(app): AppState,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let build = app
        .hub
        .store
        .build(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
    if build.state != "queued" && build.state != "running" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("build {id} has already ended ({})", build.state),
        ));
    }
    app.hub.cancel_build(id).await?;
    Ok(Json(json!({ "id": id, "cancelling": true })))
}

#[derive(Deserialize)]
pub struct LogQuery {
    offset: Option<u64>,
    limit: Option<u64>,
    /// When nothing is there yet past `offset` and the step still runs,
    /// wait up to this long for output.
    wait_ms: Option<u64>,
}

pub async fn get_log(
    State(app): AppState,
    Path((attempt, idx)): Path<(i64, i64)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let offset = q.offset.unwrap_or(0);
    let limit = q.limit.unwrap_or(MAX_LOG_RANGE).clamp(1, MAX_LOG_RANGE);
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.unwrap_or(0)).min(MAX_WAIT);
    let mut rx = app.hub.subscribe();
    loop {
        rx.borrow_and_update();
        let step =
            app.hub.store.step(attempt, idx).await?.ok_or_else(|| {
                ApiError::not_found(format!("no step {idx} in attempt {attempt}"))
            })?;
        let done = !matches!(step.state.as_str(), "pending" | "running");
        let attempt_live = app
            .hub
            .store
            .attempt(attempt)
            .await?
            .is_some_and(|a| matches!(a.state.as_str(), "assigned" | "running"));
        let size = step.log_size as u64;
        let more_coming = !done && attempt_live;
        if offset < size || !more_coming || tokio::time::Instant::now() >= deadline {
            let data = if offset < size {
                app.hub.store.read_log(attempt, idx, offset, limit).await?
            } else {
                Vec::new()
            };
            return Ok(Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header("x-herd-log-size", size.to_string())
                .header("x-herd-step-state", step.state.as_str())
                .header("x-herd-more", if more_coming { "1" } else { "0" })
                .body(Body::from(data))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
        }
        let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
    }
}

pub async fn list_workers(State(app): AppState) -> Result<Json<Value>, ApiError> {
    let live = app.hub.live_workers();
    let mut workers = Vec::new();
    let mut probes = app.hub.store.probes_by_worker(None).await?;
    for w in app.hub.store.workers().await?.iter() {
        let probes = probes.remove(&w.name).unwrap_or_default();
        let mut j = worker_json(w, live.get(&w.name), &probes);
        j["quarantined_until"] = json!(app.hub.quarantined_until(&w.name));
        workers.push(j);
    }
    Ok(Json(json!({ "workers": workers })))
}

pub async fn get_worker(
    State(app): AppState,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let w = app
        .hub
        .store
        .worker(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no worker `{name}` has connected yet")))?;
    let live = app.hub.live_workers();
    let probes = app.hub.store.worker_probes(&name).await?;
    let mut j = worker_json(&w, live.get(&name), &probes);
    j["quarantined_until"] = json!(app.hub.quarantined_until(&name));
    Ok(Json(j))
}

pub async fn pause_worker(
    _: Admin,
    State(app): AppState,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&app, &name, true).await
}

pub async fn resume_worker(
    _: Admin,
    State(app): AppState,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_paused(&app, &name, false).await
}

async fn set_paused(app: &App, name: &str, paused: bool) -> Result<Json<Value>, ApiError> {
    if !app.hub.set_paused(name, paused).await? {
        return Err(ApiError::not_found(format!(
            "no worker `{name}` has connected yet"
        )));
    }
    Ok(Json(json!({ "worker": name, "paused": paused })))
}

#[derive(Deserialize, Default)]
pub struct ReprobeBody {
    worker: Option<String>,
}

/// Asks one worker (or every connected one) to run its probes again.
pub async fn reprobe(
    _: Admin,
    State(app): AppState,
    body: Option<Json<ReprobeBody>>,
) -> Result<Json<Value>, ApiError> {
    let worker = body.and_then(|Json(b)| b.worker);
    let asked = app.hub.reprobe(worker.as_deref());
    if let (Some(w), true) = (&worker, asked.is_empty()) {
        return Err(ApiError::not_found(format!("worker `{w}` is not online")));
    }
    Ok(Json(json!({ "reprobing": asked })))
}

/// The builders of a project (as of its latest build) and, per job, the
/// connected workers able to run it and why the others cannot.
pub async fn project_builders(
    State(app): AppState,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
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
        return Ok(Json(
            json!({ "project": name, "build": null, "builders": [] }),
        ));
    };
    let detail = app
        .hub
        .store
        .build_detail(latest.id)
        .await?
        .ok_or_else(|| ApiError::not_found("the build vanished"))?;
    let mut builders: Vec<(String, Vec<Value>)> = Vec::new();
    for j in &detail.jobs {
        let spec: JobSpec = serde_json::from_str(&j.spec).unwrap_or_default();
        let why = app.hub.why_not(&spec.requires);
        let capable: Vec<&str> = why
            .workers
            .iter()
            .filter(|w| w.unmet.is_none())
            .map(|w| w.worker.as_str())
            .collect();
        let job = json!({
            "job": j.name,
            "requires": spec.requires.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            "capable_workers": capable,
            "workers": why.workers,
        });
        match builders.iter_mut().find(|(b, _)| *b == j.builder) {
            Some((_, jobs)) => jobs.push(job),
            None => builders.push((j.builder.clone(), vec![job])),
        }
    }
    let builders: Vec<Value> = builders
        .into_iter()
        .map(|(b, jobs)| json!({ "builder": b, "jobs": jobs }))
        .collect();
    Ok(Json(
        json!({ "project": name, "build": latest.id, "builders": builders }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    kind: String,
    worker: Option<String>,
    /// Enrollment tokens: how many workers it may enroll.
    #[serde(default)]
    uses: Option<i64>,
    /// Enrollment tokens: a duration such as 24h.
    #[serde(default)]
    expires: Option<String>,
    /// Enrollment tokens: labels the workers get.
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    /// Try tokens: who it is for (shown on their try builds).
    #[serde(default)]
    user: Option<String>,
}

pub async fn create_token(
    _: Admin,
    State(app): AppState,
    headers: axum::http::HeaderMap,
    body: Result<Json<CreateToken>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body.map_err(ApiError::from_json)?;
    let (uses, labels) = if req.kind == "enroll" {
        (req.uses, req.labels)
    } else {
        (None, None)
    };
    let mut opts = super::enroll::token_options(uses, req.expires.as_deref(), labels)?;
    let kind = match req.kind.as_str() {
        "enroll" => TokenKind::Enroll,
        "read" => TokenKind::Read,
        "try" => {
            if let Some(user) = req.user.filter(|u| !u.trim().is_empty()) {
                opts.labels = Some([("user".to_string(), user)].into());
            }
            TokenKind::Try
        }
        "worker" => {
            let Some(worker) = req.worker.filter(|w| valid_worker_name(w)) else {
                return Err(ApiError::bad_request(
                    "a worker token needs `worker`: a name of letters, digits, `-`, `_` and `.`",
                ));
            };
            opts.worker = Some(worker);
            TokenKind::Worker
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown token kind `{other}`: this server creates `worker`, `enroll`, `try` and `read` tokens"
            )))
        }
    };
    let worker = opts.worker.clone();
    let token = auth::create_token_with(&app.hub.store, kind, opts).await?;
    let mut answer = json!({ "token": token, "kind": kind.as_str() });
    if kind == TokenKind::Enroll {
        answer["install"] = json!(super::install_command(&app, &headers, &token));
    }
    if let Some(w) = worker {
        answer["worker"] = json!(w);
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

pub fn valid_worker_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn worker_json(
    w: &WorkerRow,
    running: Option<&Vec<i64>>,
    probes: &[herd_proto::ProbeResult],
) -> Value {
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(json!({}));
    json!({
        "name": w.name,
        "online": running.is_some() || w.online,
        "slots": w.slots,
        "labels": parse(&w.labels),
        "facts": parse(&w.facts),
        "version": w.version,
        "paused": w.paused,
        "running_attempts": running.cloned().unwrap_or_default(),
        "probes": probes,
        "first_seen": w.first_seen,
        "last_change": w.last_change,
    })
}

fn build_json(d: &BuildDetail, version: u64, waiting: &HashMap<i64, WhyNot>) -> Value {
    let jobs: Vec<Value> = d
        .jobs
        .iter()
        .map(|j| {
            let attempts: Vec<Value> = d
                .attempts
                .iter()
                .filter(|a| a.job_id == j.id)
                .map(|a| {
                    let steps: Vec<Value> = d
                        .steps
                        .iter()
                        .filter(|s| s.attempt_id == a.id)
                        .map(|s| {
                            json!({
                                "idx": s.idx, "name": s.name, "state": s.state, "exit_code": s.exit_code,
                                "message": s.message, "log_size": s.log_size,
                                "started_at": s.started_at, "finished_at": s.finished_at,
                                "duration_ms": s.started_at.zip(s.finished_at).map(|(a, b)| b - a),
                            })
                        })
                        .collect();
                    json!({
                        "id": a.id, "number": a.number, "worker": a.worker, "state": a.state,
                        "reason": a.reason, "created_at": a.created_at, "finished_at": a.finished_at,
                        "steps": steps,
                    })
                })
                .collect();
            json!({
                "id": j.id, "builder": j.builder, "name": j.name, "state": j.state, "error": j.error,
                "created_at": j.created_at, "started_at": j.started_at, "finished_at": j.finished_at,
                "requires": serde_json::from_str::<JobSpec>(&j.spec).map(|s| s.requires.iter().map(|r| r.to_string()).collect::<Vec<_>>()).unwrap_or_default(),
                "waiting": waiting.get(&j.id),
                "attempts": attempts,
            })
        })
        .collect();
    let b = &d.build;
    json!({
        "id": b.id, "project": b.project, "ref": b.ref_name, "revision": b.revision, "state": b.state,
        "priority": b.priority, "reason": b.reason, "error": b.error, "created_at": b.created_at,
        "started_at": b.started_at, "finished_at": b.finished_at, "version": version, "jobs": jobs,
        "kind": b.kind, "branch": b.branch, "sender": b.sender, "author": b.author, "message": b.message,
    })
}
