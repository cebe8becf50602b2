//! Operating the server: the janitor by hand (`herd gc`), the config
//! reload (`herd server reload`) and the metrics Prometheus scrapes.

use super::{Admin, ApiError, ApiJson, AppState};
use crate::access::{BodyRefusals, MaybeCaller, TokenRefusals};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_api::ops::{GcReport, GcRequest, ReloadReport};
use herd_api::ErrorBody;

/// Runs the janitor now (removes what `keep:` lets go), or with
/// `dry_run` only says what it would remove.
#[utoipa::path(
    post,
    path = "/api/v1/gc",
    tag = "server",
    request_body = GcRequest,
    responses(
        (status = 200, body = GcReport),
        BodyRefusals,
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn gc(
    _: Admin,
    State(app): AppState,
    ApiJson(req): ApiJson<GcRequest>,
) -> Result<Json<GcReport>, ApiError> {
    Ok(Json(crate::janitor::pass(&app, req.dry_run, true).await?))
}

/// Rereads the server's config file: projects, secrets, users, reporters,
/// retention. Connections stay; a config with an error changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/reload",
    tag = "server",
    responses(
        (status = 200, body = ReloadReport),
        (status = 409, description = "The server was started without a config file", body = ErrorBody),
        (status = 422, description = "The config has an error: the old one stays", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn reload(_: Admin, State(app): AppState) -> Result<Json<ReloadReport>, ApiError> {
    match crate::reload::reload(&app).await {
        Ok(r) => Ok(Json(r)),
        Err(crate::reload::ReloadError::NoFile) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "this server was started without --config: there is nothing to reread",
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            e.to_string(),
        )),
    }
}

/// The server's metrics in the OpenMetrics text format (Prometheus
/// scrapes it). Needs a metrics or admin token.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    responses(
        (status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn metrics(State(app): AppState, MaybeCaller(caller): MaybeCaller) -> Response {
    if caller.is_none() {
        return crate::access::refusal(
            StatusCode::UNAUTHORIZED,
            "/metrics needs a metrics or admin token (`herd token create --metrics`): pass it as `Authorization: Bearer TOKEN`",
        );
    }
    let mut live = app.hub.live_metrics();
    live.database_bytes = app.hub.store.database_bytes();
    let text = crate::metrics::global().render(&live);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
