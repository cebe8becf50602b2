//! Artifacts over HTTP: the list and downloads of a build's artifacts for
//! people and the CLI, and for workers the upload of their job's files
//! (resumable at an offset) and the download of the files of the jobs
//! their job needs. Workers may touch only their own live attempt.

use super::{ApiError, ApiPath, ApiQuery, AppState};
use crate::access::{Caller, TokenRefusals};
use crate::artifacts::{Received, UploadError};
use crate::auth::Principal;
use crate::store::ArtifactRow;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::StreamExt;
use herd_api::artifacts::{Artifact, ArtifactList, UploadQuery, UploadState};
use herd_api::ErrorBody;

pub fn to_api(r: &ArtifactRow) -> Artifact {
    Artifact {
        id: r.id,
        job: r.job.clone(),
        path: r.path.clone(),
        size: r.size,
        sha256: r.sha256.clone(),
        created_at: r.created_at,
        url: format!("/api/v1/builds/{}/artifacts/{}", r.build_id, r.id),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}/artifacts",
    tag = "builds",
    params(("id" = i64, Path, description = "Build id")),
    responses(
        (status = 200, description = "The files its jobs kept (of each job's latest attempt)", body = ArtifactList),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn list(
    State(app): AppState,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<ArtifactList>, ApiError> {
    if app.hub.store.build(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no build {id}")));
    }
    let rows = app.hub.store.build_artifacts(id).await?;
    Ok(Json(ArtifactList {
        artifacts: rows.iter().map(to_api).collect(),
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}/artifacts/{artifact}",
    tag = "builds",
    params(
        ("id" = i64, Path, description = "Build id"),
        ("artifact" = i64, Path, description = "Artifact id, from the list"),
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such artifact in this build", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn download(
    State(app): AppState,
    ApiPath((build, id)): ApiPath<(i64, i64)>,
) -> Result<Response, ApiError> {
    let row = match app.hub.store.artifact(id).await? {
        Some(r) if r.build_id == build => r,
        _ => {
            return Err(ApiError::not_found(format!(
                "build {build} has no artifact {id}: `herd build artifacts {build}` lists them"
            )))
        }
    };
    serve_blob(&app, &row).await
}

#[utoipa::path(
    get,
    path = "/api/v1/attempts/{id}/artifacts/{artifact}",
    tag = "builds",
    params(
        ("id" = i64, Path, description = "The worker's attempt"),
        ("artifact" = i64, Path, description = "An artifact of the attempt's build"),
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such artifact in the attempt's build", body = ErrorBody),
        (status = 409, description = "The attempt is not this worker's live attempt", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn fetch(
    State(app): AppState,
    caller: Option<Extension<Caller>>,
    ApiPath((attempt, id)): ApiPath<(i64, i64)>,
) -> Result<Response, ApiError> {
    let a = own_live_attempt(&app, caller, attempt).await?;
    let row = match app.hub.store.artifact(id).await? {
        Some(r) if r.build_id == a.build_id => r,
        _ => {
            return Err(ApiError::not_found(format!(
                "the build of attempt {attempt} has no artifact {id}"
            )))
        }
    };
    serve_blob(&app, &row).await
}

#[utoipa::path(
    get,
    path = "/api/v1/attempts/{id}/uploads",
    tag = "builds",
    params(("id" = i64, Path, description = "The worker's attempt"), UploadQuery),
    responses(
        (status = 200, description = "How much of the file the server holds", body = UploadState),
        (status = 400, description = "A path that cannot name an artifact", body = ErrorBody),
        (status = 409, description = "The attempt is not this worker's live attempt", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn upload_state(
    State(app): AppState,
    caller: Option<Extension<Caller>>,
    ApiPath(attempt): ApiPath<i64>,
    ApiQuery(q): ApiQuery<UploadQuery>,
) -> Result<Json<UploadState>, ApiError> {
    own_live_attempt(&app, caller, attempt).await?;
    checked_path(&q.path)?;
    let offset = app.artifacts.offset(attempt, &q.path).await;
    Ok(Json(UploadState {
        offset: offset as i64,
        artifact: None,
    }))
}

#[utoipa::path(
    put,
    path = "/api/v1/attempts/{id}/uploads",
    tag = "builds",
    params(("id" = i64, Path, description = "The worker's attempt"), UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes from `offset` on"),
    responses(
        (status = 200, description = "What the server holds now; `artifact` once the file is whole", body = UploadState),
        (status = 400, description = "A path that cannot name an artifact, or no size", body = ErrorBody),
        (status = 408, description = "The body was cut off: the part that arrived is kept", body = ErrorBody),
        (status = 409, description = "Not this worker's live attempt, another offset, or an upload of the file in progress", body = ErrorBody),
        (status = 413, description = "Larger than the server's limits for one file or one job", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn upload(
    State(app): AppState,
    caller: Option<Extension<Caller>>,
    ApiPath(attempt): ApiPath<i64>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    body: Body,
) -> Result<Json<UploadState>, ApiError> {
    own_live_attempt(&app, caller, attempt).await?;
    checked_path(&q.path)?;
    let Some(size) = q.size.filter(|s| *s >= 0) else {
        return Err(ApiError::bad_request(
            "say the file's whole size with `size=BYTES`",
        ));
    };
    let offset = q.offset.unwrap_or(0).max(0);
    let limits = &app.hub.settings.limits;
    if size as u64 > limits.max_artifact_file {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "`{}` is {size} bytes, more than the server keeps for one file ({}); the server's `limits: max_artifact_file` sets it",
                q.path, limits.max_artifact_file
            ),
        ));
    }
    let others = app
        .hub
        .store
        .attempt_artifact_bytes(attempt, &q.path)
        .await?;
    if (others as u64).saturating_add(size as u64) > limits.max_artifacts_per_job {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "with `{}` this job's artifacts would be more than the {} bytes the server keeps per job; the server's `limits: max_artifacts_per_job` sets it",
                q.path, limits.max_artifacts_per_job
            ),
        ));
    }
    let stream = body.into_data_stream();
    let received = app
        .artifacts
        .receive(attempt, &q.path, size as u64, offset as u64, stream)
        .await;
    let sha256 = match received {
        Ok(Received::Partial { offset }) => {
            return Ok(Json(UploadState {
                offset: offset as i64,
                artifact: None,
            }))
        }
        Ok(Received::Whole { sha256 }) => sha256,
        Err(e @ UploadError::Interrupted { .. }) => {
            return Err(ApiError::new(StatusCode::REQUEST_TIMEOUT, e.to_string()))
        }
        Err(e @ (UploadError::Offset { .. } | UploadError::Busy | UploadError::TooManyParts)) => {
            return Err(ApiError::conflict(e.to_string()))
        }
        Err(e @ UploadError::TooLong { .. }) => return Err(ApiError::bad_request(e.to_string())),
        Err(UploadError::Io(e)) => return Err(ApiError::internal("could not keep an artifact", e)),
    };
    let Some(id) = app
        .hub
        .store
        .add_artifact(attempt, &q.path, size, &sha256)
        .await?
    else {
        return Err(ApiError::conflict(format!(
            "attempt {attempt} has ended: its uploads are not kept"
        )));
    };
    let row = app
        .hub
        .store
        .artifact(id)
        .await?
        .ok_or_else(|| ApiError::internal("could not read an artifact", "just stored"))?;
    tracing::info!(build = row.build_id, attempt, path = %row.path, size, "artifact kept");
    Ok(Json(UploadState {
        offset: size,
        artifact: Some(to_api(&row)),
    }))
}

fn checked_path(path: &str) -> Result<(), ApiError> {
    herd_proto::check_artifact_path(path).map_err(|why| {
        ApiError::bad_request(format!(
            "`{}` cannot name an artifact: {why}",
            path.escape_debug()
        ))
    })
}

/// The attempt, when the caller is the worker it runs on and it is live.
async fn own_live_attempt(
    app: &crate::App,
    caller: Option<Extension<Caller>>,
    attempt: i64,
) -> Result<crate::store::UploadingAttempt, ApiError> {
    let Some(Extension(Caller(Principal::Worker { worker, .. }))) = caller else {
        return Err(ApiError::unauthorized(
            "artifacts are uploaded and fetched with the token of the worker that runs the attempt",
        ));
    };
    match app.hub.store.uploading_attempt(attempt).await? {
        Some(a) if a.worker == worker && a.live => Ok(a),
        _ => Err(ApiError::conflict(format!(
            "attempt {attempt} is not a live attempt of worker {worker}: stop it"
        ))),
    }
}

/// The content of an artifact, streamed.
async fn serve_blob(app: &crate::App, row: &ArtifactRow) -> Result<Response, ApiError> {
    let Some(path) = app.artifacts.blob_path(&row.sha256) else {
        return Err(ApiError::internal("bad artifact hash", &row.sha256));
    };
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::internal(
            "the artifact's content is missing from the artifact store",
            format!("{}: {e}", path.display()),
        )
    })?;
    let name = row.path.rsplit('/').next().unwrap_or("artifact");
    let disposition = format!(
        "attachment; filename=\"{}\"",
        name.replace(
            |c: char| !c.is_ascii_graphic() || c == '"' || c == '\\',
            "_"
        )
    );
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024)
        .map(|c| c.map_err(std::io::Error::other));
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, row.size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (
                header::HeaderName::from_static("x-herd-sha256"),
                row.sha256.clone(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
