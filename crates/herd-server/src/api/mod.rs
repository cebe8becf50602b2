//! The REST API under `/api/v1/`, JSON in and out, described by the OpenAPI
//! document it serves at `/api/v1/openapi.json`.
//!
//! Reading is open (unless the server is private); every call that changes
//! state needs the admin token. Which token may make which call is one
//! table, [`access::scope_of`].

pub mod access;
mod enroll;
mod handlers;
mod hooks;
mod projects;
mod splits;
mod try_build;

use crate::auth;
use crate::store::StoreError;
use crate::App;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;

pub use enroll::install_command;

pub const OPENAPI: &str = include_str!("openapi.json");
/// Largest request body the API reads.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v1/health", get(handlers::health))
        .route("/api/v1/openapi.json", get(handlers::openapi))
        .route("/api/v1/projects", get(projects::list))
        .route("/api/v1/projects/{name}", get(projects::show))
        .route(
            "/api/v1/projects/{name}/builders",
            get(handlers::project_builders),
        )
        .route(
            "/api/v1/builds",
            get(handlers::list_builds).post(handlers::create_build),
        )
        .route("/api/v1/builds/{id}", get(handlers::get_build))
        .route("/api/v1/builds/{id}/cancel", post(handlers::cancel_build))
        .route("/api/v1/builds/{id}/tests", get(splits::build_tests))
        .route("/api/v1/splits/{id}/junit.xml", get(splits::junit))
        .route(
            "/api/v1/attempts/{id}/steps/{idx}/log",
            get(handlers::get_log),
        )
        .route("/api/v1/workers", get(handlers::list_workers))
        .route("/api/v1/workers/{name}", get(handlers::get_worker))
        .route("/api/v1/workers/reprobe", post(handlers::reprobe))
        .route("/api/v1/workers/{name}/pause", post(handlers::pause_worker))
        .route(
            "/api/v1/workers/{name}/resume",
            post(handlers::resume_worker),
        )
        .route(
            "/api/v1/tokens",
            get(enroll::list_tokens).post(handlers::create_token),
        )
        .route("/api/v1/tokens/{id}/revoke", post(enroll::revoke_token))
        .route("/api/v1/enroll", post(enroll::enroll))
        .route("/api/v1/whoami", get(enroll::whoami))
        .route("/api/v1/workers/{name}/forget", post(enroll::forget_worker))
        .route(
            "/api/v1/hooks/{forge}/{project}",
            post(hooks::receive).layer(DefaultBodyLimit::max(hooks::MAX_HOOK_BODY)),
        )
        .route("/api/v1/try", post(try_build::create))
        .route("/install.sh", get(enroll::install_sh))
        .route("/download/{file}", get(enroll::download))
        .route(herd_proto::WORKER_ENDPOINT, get(crate::ws::worker_endpoint))
        .merge(crate::web::router())
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            access::token_guard,
        ))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::web::private_guard,
        ))
        // gzip for pages and JSON when the client asks; not for event
        // streams (they must flow) nor executables and logs (bytes as they are).
        .layer(
            tower_http::compression::CompressionLayer::new().compress_when(
                tower_http::compression::Predicate::and(
                    tower_http::compression::predicate::DefaultPredicate::new(),
                    tower_http::compression::predicate::NotForContentType::const_new(
                        "application/octet-stream",
                    ),
                ),
            ),
        )
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(app)
}

/// An error answer: a status and a JSON body `{"error": ..., "hint": ...}`
/// that says what went wrong and what to do next.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    /// A body that is not the JSON expected, or too large (413).
    pub fn from_json(e: axum::extract::rejection::JsonRejection) -> Self {
        Self::new(
            e.status(),
            format!("invalid request body: {}", e.body_text()),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!("store error: {e}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the server could not read or write its database: {e}; see the server log"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, Json(json!({ "error": self.message }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

/// Extractor for calls that need the admin token.
pub struct Admin;

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<access::Caller>() {
            Some(access::Caller(p)) if p.allows(auth::Scope::Admin) => Ok(Admin),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this token may not make this call: it needs the admin token",
            )),
            None => Err(ApiError::unauthorized(
                "this call needs the admin token: pass it as `Authorization: Bearer TOKEN` (the CLI reads HERD_TOKEN); it is in DATA/admin-token",
            )),
        }
    }
}
