//! Builds: listing, starting, showing (a long poll), cancelling, and the
//! steps' logs by byte range.

use super::{Admin, ApiError, ApiJson, ApiPath, ApiQuery, AppState};
use crate::access::{BodyRefusals, TokenRefusals};
use crate::builds::{start_build, BuildRequest};
use crate::hub::WhyNot;
use crate::store::{BuildDetail, BuildKind, BuildRow};
use crate::App;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::Response;
use axum::Json;
use herd_api::builds::{
    log_headers, Attempt, Build, BuildList, BuildListQuery, BuildSummary, Cancelling, Job,
    LogQuery, RetryBuild, StartBuild, Step, WaitQuery,
};
use herd_api::ErrorBody;
use std::collections::HashMap;
use std::time::Duration;

/// Longest a long-poll waits before answering with what it has.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Largest log range one call returns.
const MAX_LOG_RANGE: u64 = 8 * 1024 * 1024;

/// Builds, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/builds",
    tag = "builds",
    params(BuildListQuery),
    responses(
        (status = 200, body = BuildList),
        (status = 400, description = "A query value out of range", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn list_builds(
    State(app): AppState,
    ApiQuery(q): ApiQuery<BuildListQuery>,
) -> Result<Json<BuildList>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be from 1 to 500, not {limit}"
        )));
    }
    let builds = app
        .hub
        .store
        .builds(
            q.project.as_deref(),
            q.state.map(|s| s.as_str()),
            q.before,
            limit,
        )
        .await?;
    Ok(Json(BuildList {
        builds: builds.iter().map(summary).collect(),
    }))
}

/// Starts a build of a project: every builder, or one.
#[utoipa::path(
    post,
    path = "/api/v1/builds",
    tag = "builds",
    request_body = StartBuild,
    responses(
        (status = 201, description = "The build, queued (or failed at once when its herd.yml is broken)", body = Build),
        (status = 404, description = "No such project, revision or builder", body = ErrorBody),
        (status = 409, description = "A parameter its herd.yml does not declare or a value it does not allow; or nothing to build", body = ErrorBody),
        BodyRefusals,
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn create_build(
    _: Admin,
    State(app): AppState,
    ApiJson(req): ApiJson<StartBuild>,
) -> Result<(StatusCode, Json<Build>), ApiError> {
    let id = start_build(
        &app,
        BuildRequest {
            project: req.project,
            builder: req.builder,
            rev: req.rev,
            priority: req.priority,
            reason: req.reason,
            params: req.params,
            ..Default::default()
        },
    )
    .await?;
    let detail = app
        .hub
        .store
        .build_detail(id)
        .await?
        .ok_or_else(|| ApiError::internal("a build vanished", id))?;
    let version = *app.hub.subscribe().borrow();
    let build = build_view(&detail, version, &why_not_map(&app, &detail));
    Ok((StatusCode::CREATED, Json(build)))
}

/// One build with its jobs, attempts and steps. With `since`, a long poll:
/// the answer comes once anything changed after that version.
#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}",
    tag = "builds",
    params(("id" = i64, Path, description = "The build's id"), WaitQuery),
    responses(
        (status = 200, body = Build),
        (status = 400, description = "A bad id or query", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn get_build(
    State(app): AppState,
    ApiPath(id): ApiPath<i64>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> Result<Json<Build>, ApiError> {
    let since = non_negative("since", q.since)?;
    let wait_ms = non_negative("wait_ms", q.wait_ms)?;
    if let Some(since) = since {
        let wait = Duration::from_millis(wait_ms.unwrap_or(25_000)).min(MAX_WAIT);
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
    let mut build = build_view(&detail, version, &why_not_map(&app, &detail));
    let splits = app.hub.store.split_heads_of_build(id).await?;
    build.splits = splits.iter().map(super::splits::summary).collect();
    Ok(Json(build))
}

/// Runs a build's jobs again, as a new build: the same revision, project
/// and origin (branch or tag, a try's patch), so the same secrets; every
/// job, or only those that failed.
#[utoipa::path(
    post,
    path = "/api/v1/builds/{id}/retry",
    tag = "builds",
    params(("id" = i64, Path, description = "The build to run again")),
    request_body = RetryBuild,
    responses(
        (status = 201, description = "The new build", body = Build),
        (status = 404, description = "No such build, or none of its jobs is in the pipeline any more", body = ErrorBody),
        (status = 409, description = "It has no failed jobs, or is still running (with `failed`)", body = ErrorBody),
        BodyRefusals,
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn retry_build(
    _: Admin,
    State(app): AppState,
    ApiPath(id): ApiPath<i64>,
    ApiJson(req): ApiJson<RetryBuild>,
) -> Result<(StatusCode, Json<Build>), ApiError> {
    let new = crate::builds::retry(&app, id, req.failed).await?;
    let detail = app
        .hub
        .store
        .build_detail(new)
        .await?
        .ok_or_else(|| ApiError::internal("a build vanished", new))?;
    let version = *app.hub.subscribe().borrow();
    let build = build_view(&detail, version, &why_not_map(&app, &detail));
    Ok((StatusCode::CREATED, Json(build)))
}

/// Cancels a build: queued jobs end, running steps get TERM, 5 s, KILL.
#[utoipa::path(
    post,
    path = "/api/v1/builds/{id}/cancel",
    tag = "builds",
    params(("id" = i64, Path, description = "The build's id")),
    responses(
        (status = 200, body = Cancelling),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        (status = 409, description = "The build has already ended", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn cancel_build(
    _: Admin,
    State(app): AppState,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Cancelling>, ApiError> {
    let build = app
        .hub
        .store
        .build(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no build {id}")))?;
    if build.state.is_finished() {
        return Err(ApiError::conflict(format!(
            "build {id} has already ended ({})",
            build.state
        )));
    }
    app.hub.cancel_build(id).await?;
    Ok(Json(Cancelling {
        id,
        cancelling: true,
    }))
}

/// Bytes of one step's output, exactly as the step wrote them. With
/// `wait_ms`, waits for output past `offset` while the step runs.
#[utoipa::path(
    get,
    path = "/api/v1/attempts/{id}/steps/{idx}/log",
    tag = "builds",
    params(
        ("id" = i64, Path, description = "The attempt's id"),
        ("idx" = i64, Path, description = "The step's index in the attempt (0: checkout, when there is one)"),
        LogQuery,
    ),
    responses(
        (status = 200, description = "The bytes of the range", content_type = "application/octet-stream", body = Vec<u8>,
         headers(
            ("x-herd-log-size" = u64, description = "Bytes of output stored so far"),
            ("x-herd-step-state" = String, description = "The step's state"),
            ("x-herd-more" = String, description = "`1` while more output may come, else `0`"),
         )),
        (status = 400, description = "A bad id or query", body = ErrorBody),
        (status = 404, description = "No such step", body = ErrorBody),
        (status = 410, description = "The log expired (`keep: {logs_days}`); the step's record stays", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn get_log(
    State(app): AppState,
    ApiPath((attempt, idx)): ApiPath<(i64, i64)>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let offset = non_negative("offset", q.offset)?.unwrap_or(0);
    let limit = non_negative("limit", q.limit)?
        .unwrap_or(MAX_LOG_RANGE)
        .clamp(1, MAX_LOG_RANGE);
    let wait_ms = non_negative("wait_ms", q.wait_ms)?.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms).min(MAX_WAIT);
    let mut rx = app.hub.subscribe();
    loop {
        rx.borrow_and_update();
        let step =
            app.hub.store.step(attempt, idx).await?.ok_or_else(|| {
                ApiError::not_found(format!("no step {idx} in attempt {attempt}"))
            })?;
        let attempt_live = app
            .hub
            .store
            .attempt(attempt)
            .await?
            .is_some_and(|a| !a.state.is_finished());
        if let Some(at) = app.hub.store.attempt_logs_expired(attempt).await? {
            return Err(ApiError::new(
                StatusCode::GONE,
                format!(
                    "the log of step {idx} of attempt {attempt} expired: the janitor removed it at {} (the project's keep: {{logs_days}}); the step's record stays",
                    chrono::DateTime::from_timestamp_millis(at)
                        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
                        .unwrap_or_default()
                ),
            ));
        }
        let size = step.log_size as u64;
        let more_coming = !step.state.is_finished() && attempt_live;
        if offset < size || !more_coming || tokio::time::Instant::now() >= deadline {
            let data = if offset < size {
                app.hub.store.read_log(attempt, idx, offset, limit).await?
            } else {
                Vec::new()
            };
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .header(log_headers::SIZE, size.to_string())
                .header(log_headers::STEP_STATE, step.state.as_str())
                .header(log_headers::MORE, if more_coming { "1" } else { "0" })
                .body(Body::from(data))
                .map_err(|e| ApiError::internal("could not make the log answer", e));
        }
        let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
    }
}

/// A query number that may not be negative.
fn non_negative(name: &str, v: Option<i64>) -> Result<Option<u64>, ApiError> {
    v.map(|n| {
        u64::try_from(n)
            .map_err(|_| ApiError::bad_request(format!("`{name}` must not be negative, not {n}")))
    })
    .transpose()
}

/// Why each queued job of the build waits.
fn why_not_map(app: &App, d: &BuildDetail) -> HashMap<i64, WhyNot> {
    let states: HashMap<String, herd_core::state::RunState> = d
        .jobs
        .iter()
        .map(|j| (format!("{}/{}", j.builder, j.name), j.state))
        .collect();
    d.jobs
        .iter()
        .filter(|j| j.state == herd_core::state::RunState::Queued)
        .map(|j| {
            // A job that needs others waits for them before any worker.
            let pending: Vec<&str> = j
                .spec
                .needs
                .iter()
                .filter(|n| states.get(*n).is_some_and(|s| !s.is_finished()))
                .map(String::as_str)
                .collect();
            let why = if pending.is_empty() {
                app.hub.why_not(&j.spec)
            } else {
                WhyNot {
                    summary: format!("waiting for {} (needs)", pending.join(", ")),
                    workers: Vec::new(),
                }
            };
            (j.id, why)
        })
        .collect()
}

pub(super) fn kind(k: BuildKind) -> herd_api::builds::BuildKind {
    match k {
        BuildKind::Manual => herd_api::builds::BuildKind::Manual,
        BuildKind::Change => herd_api::builds::BuildKind::Change,
        BuildKind::Try => herd_api::builds::BuildKind::Try,
        BuildKind::Tag => herd_api::builds::BuildKind::Tag,
        BuildKind::PullRequest => herd_api::builds::BuildKind::PullRequest,
        BuildKind::Schedule => herd_api::builds::BuildKind::Schedule,
    }
}

pub(super) fn why_not_view(w: &WhyNot) -> herd_api::builds::WhyNot {
    herd_api::builds::WhyNot {
        summary: w.summary.clone(),
        workers: w.workers.iter().map(worker_why_not_view).collect(),
    }
}

pub(super) fn worker_why_not_view(w: &crate::hub::WorkerWhyNot) -> herd_api::builds::WorkerWhyNot {
    use crate::hub::Fit;
    use herd_api::builds::WorkerFit;
    herd_api::builds::WorkerWhyNot {
        worker: w.worker.clone(),
        unmet: w.unmet.clone(),
        detail: w.detail.clone(),
        state: match w.state {
            Fit::LowDisk => WorkerFit::LowDisk,
            Fit::Incapable => WorkerFit::Incapable,
            Fit::Draining => WorkerFit::Draining,
            Fit::Paused => WorkerFit::Paused,
            Fit::Quarantined => WorkerFit::Quarantined,
            Fit::Busy => WorkerFit::Busy,
            Fit::Free => WorkerFit::Free,
        },
    }
}

pub(super) fn summary(b: &BuildRow) -> BuildSummary {
    BuildSummary {
        id: b.id,
        project: b.project.clone(),
        ref_name: b.ref_name.clone(),
        revision: b.revision.clone(),
        state: b.state,
        priority: b.priority,
        reason: b.reason.clone(),
        error: b.error.clone(),
        created_at: b.created_at,
        started_at: b.started_at,
        finished_at: b.finished_at,
        author: b.author.clone(),
        message: b.message.clone(),
        branch: b.branch.clone(),
        kind: kind(b.kind),
        sender: b.sender.clone(),
        pull_request: b.pull_request,
    }
}

fn build_view(d: &BuildDetail, version: u64, waiting: &HashMap<i64, WhyNot>) -> Build {
    let jobs = d
        .jobs
        .iter()
        .map(|j| Job {
            id: j.id,
            builder: j.builder.clone(),
            name: j.name.clone(),
            state: j.state,
            error: j.error.clone(),
            created_at: j.created_at,
            started_at: j.started_at,
            finished_at: j.finished_at,
            requires: j.spec.requires.iter().map(|r| r.to_string()).collect(),
            waiting: waiting.get(&j.id).map(why_not_view),
            needs: j.spec.needs.clone(),
            withheld: j
                .spec
                .withheld
                .iter()
                .map(|w| herd_api::builds::WithheldSecret {
                    secret: w.secret.clone(),
                    reason: w.reason.clone(),
                })
                .collect(),
            attempts: d
                .attempts
                .iter()
                .filter(|a| a.job_id == j.id)
                .map(|a| Attempt {
                    id: a.id,
                    number: a.number,
                    worker: a.worker.clone(),
                    state: a.state,
                    reason: a.reason.clone(),
                    created_at: a.created_at,
                    finished_at: a.finished_at,
                    steps: d
                        .steps
                        .iter()
                        .filter(|s| s.attempt_id == a.id)
                        .map(|s| Step {
                            idx: s.idx,
                            name: s.name.clone(),
                            state: s.state,
                            exit_code: s.exit_code,
                            message: s.message.clone(),
                            log_size: s.log_size,
                            started_at: s.started_at,
                            finished_at: s.finished_at,
                            duration_ms: s.started_at.zip(s.finished_at).map(|(a, b)| b - a),
                        })
                        .collect(),
                })
                .collect(),
        })
        .collect();
    let b = &d.build;
    Build {
        id: b.id,
        project: b.project.clone(),
        ref_name: b.ref_name.clone(),
        revision: b.revision.clone(),
        state: b.state,
        priority: b.priority,
        reason: b.reason.clone(),
        error: b.error.clone(),
        created_at: b.created_at,
        started_at: b.started_at,
        finished_at: b.finished_at,
        version: i64::try_from(version).unwrap_or(i64::MAX),
        jobs,
        kind: kind(b.kind),
        branch: b.branch.clone(),
        sender: b.sender.clone(),
        author: b.author.clone(),
        message: b.message.clone(),
        splits: Vec::new(),
        params: b.params.clone(),
        pull_request: b.pull_request,
    }
}
