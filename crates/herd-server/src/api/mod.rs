//! The REST API under `/api/v1/`: JSON in and out, in the types of the
//! `herd-api` crate, described by the OpenAPI document generated from them
//! (`openapi`) and served at `/api/v1/openapi.json`.
//!
//! Reading is open (unless the server is private); every call that changes
//! state needs the admin token. Which token may make which call is one
//! table, `access::scope_of`.
//!
//! Architecture invariant: [`ApiError`] lives here only. Domain errors
//! (`StartError`, `StoreError`) are mapped to statuses once, in the `From`
//! impls below; a store failure is a 500 whose body says where to look,
//! never the database's own words.

mod artifacts;
mod builds;
mod downloads;
mod hooks;
pub mod openapi;
mod ops;
mod projects;
mod splits;
mod tokens;
mod try_build;
mod workers;

use crate::builds::StartError;
use crate::store::StoreError;
use crate::App;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use std::sync::Arc;

pub use tokens::valid_worker_name;

/// Largest request body the API reads.
pub const MAX_REQUEST_BODY: usize = 1024 * 1024;

type AppState = axum::extract::State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v1/health", get(openapi::health))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/projects", get(projects::list))
        .route("/api/v1/projects/{name}", get(projects::show))
        .route("/api/v1/changes/{id}/approve", post(projects::approve))
        .route(
            "/api/v1/projects/{name}/builders",
            get(workers::project_builders),
        )
        .route(
            "/api/v1/builds",
            get(builds::list_builds).post(builds::create_build),
        )
        .route("/api/v1/builds/{id}", get(builds::get_build))
        .route("/api/v1/builds/{id}/cancel", post(builds::cancel_build))
        .route("/api/v1/builds/{id}/retry", post(builds::retry_build))
        .route("/api/v1/builds/{id}/tests", get(splits::build_tests))
        .route("/api/v1/builds/{id}/artifacts", get(artifacts::list))
        .route(
            "/api/v1/builds/{id}/artifacts/{artifact}",
            get(artifacts::download),
        )
        .route(
            "/api/v1/attempts/{id}/uploads",
            get(artifacts::upload_state)
                .put(artifacts::upload)
                .layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/attempts/{id}/artifacts/{artifact}",
            get(artifacts::fetch),
        )
        .route("/api/v1/splits/{id}/junit.xml", get(splits::junit))
        .route(
            "/api/v1/attempts/{id}/steps/{idx}/log",
            get(builds::get_log),
        )
        .route("/api/v1/workers", get(workers::list_workers))
        .route("/api/v1/workers/{name}", get(workers::get_worker))
        .route("/api/v1/workers/reprobe", post(workers::reprobe))
        .route("/api/v1/workers/{name}/pause", post(workers::pause_worker))
        .route(
            "/api/v1/workers/{name}/resume",
            post(workers::resume_worker),
        )
        .route("/api/v1/workers/{name}/labels", post(workers::set_labels))
        .route(
            "/api/v1/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/api/v1/tokens/{id}/revoke", post(tokens::revoke_token))
        .route("/api/v1/enroll", post(tokens::enroll))
        .route("/api/v1/whoami", get(tokens::whoami))
        .route(
            "/api/v1/workers/{name}/forget",
            post(workers::forget_worker),
        )
        .route(
            "/api/v1/hooks/{forge}/{project}",
            post(hooks::receive).layer(DefaultBodyLimit::max(hooks::MAX_HOOK_BODY)),
        )
        .route("/api/v1/try", post(try_build::create))
        .route("/api/v1/gc", post(ops::gc))
        .route("/api/v1/reload", post(ops::reload))
        .route("/metrics", get(ops::metrics))
        .route("/install.sh", get(downloads::install_sh))
        .route("/download/{file}", get(downloads::download))
        .route(herd_proto::WORKER_ENDPOINT, get(crate::ws::worker_endpoint))
        .merge(crate::web::router())
        .merge(crate::source::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::access::token_guard,
        ))
        .fallback(not_found)
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
                    tower_http::compression::Predicate::and(
                        tower_http::compression::predicate::NotForContentType::const_new(
                            "application/octet-stream",
                        ),
                        // git's packs are compressed already.
                        tower_http::compression::predicate::NotForContentType::const_new(
                            "application/x-git-",
                        ),
                    ),
                ),
            ),
        )
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            crate::headers::security_headers,
        ))
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; the API is described at /api/v1/openapi.json")
}

/// An error answer: a status and a JSON body [`herd_api::ErrorBody`] that
/// says what went wrong and what to do next.
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
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, m)
    }
    /// Something on this server failed; the detail goes to the log.
    pub fn internal(what: &str, detail: impl std::fmt::Display) -> Self {
        tracing::error!("{what}: {detail}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{what}; the server log says why"),
        )
    }
}

impl From<StoreError> for ApiError {
    /// The database's own words stay in the server log; the answer says
    /// where to look.
    fn from(e: StoreError) -> Self {
        ApiError::internal("the server could not read or write its database", e)
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        match e {
            // The request names a project, revision or builder that is not there.
            StartError::UnknownProject { .. }
            | StartError::UnknownRevision { .. }
            | StartError::UnknownBuild(_)
            | StartError::Refused(_) => ApiError::not_found(e.to_string()),
            // The request is fine; the project's state does not allow it.
            StartError::PatchDoesNotApply(_)
            | StartError::NoSource(_)
            | StartError::NoRepository(_)
            | StartError::NotFinished(_)
            | StartError::BadParams(_)
            | StartError::NothingToBuild(_) => ApiError::conflict(e.to_string()),
            StartError::Store(e) => e.into(),
        }
    }
}

impl From<JsonRejection> for ApiError {
    /// A body that is not the JSON expected (400, 422), is not JSON (415)
    /// or is too large (413).
    fn from(e: JsonRejection) -> Self {
        Self::new(
            e.status(),
            format!(
                "invalid request body: {}; the API is described at /api/v1/openapi.json",
                e.body_text()
            ),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::bad_request(format!(
            "invalid query: {}; the API is described at /api/v1/openapi.json",
            e.body_text()
        ))
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        Self::bad_request(format!(
            "invalid path: {}; the API is described at /api/v1/openapi.json",
            e.body_text()
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        crate::access::refusal(self.status, self.message)
    }
}

/// A JSON body; a rejection answers in the API's error form. The body
/// must be a JSON object (or `null` where the call takes nothing): serde
/// would also read a struct from an array, which no document allows.
pub struct ApiJson<T>(pub T);

/// Whether the request says its body is JSON (`application/json` or
/// `application/…+json`).
fn says_json(headers: &axum::http::HeaderMap) -> bool {
    let Some(kind) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = kind
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if !says_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON, sent with `Content-Type: application/json`",
            ));
        }
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::new(
                e.status(),
                format!("cannot read the body: {}", e.body_text()),
            )
        })?;
        let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace());
        if !matches!(first, Some(b'{') | Some(b'n')) {
            return Err(ApiError::bad_request(
                "the body must be a JSON object; the API is described at /api/v1/openapi.json",
            ));
        }
        let axum::Json(v) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(ApiJson(v))
    }
}

/// An optional JSON body: none when the request has no body at all.
impl<S: Send + Sync, T: DeserializeOwned> axum::extract::OptionalFromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, ApiError> {
        if req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .is_none()
        {
            return Ok(None);
        }
        <ApiJson<T> as FromRequest<S>>::from_request(req, state)
            .await
            .map(Some)
    }
}

/// Query parameters; a rejection answers in the API's error form.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

/// Path parameters; a rejection answers in the API's error form.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// Extractor for calls that need the admin token.
pub struct Admin;

impl FromRequestParts<Arc<App>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<crate::access::Caller>() {
            Some(crate::access::Caller(p)) if p.allows(crate::auth::Scope::Admin) => Ok(Admin),
            Some(_) => Err(ApiError::forbidden(
                "this token may not make this call: it needs the admin token",
            )),
            None => Err(ApiError::unauthorized(
                "this call needs the admin token: pass it as `Authorization: Bearer TOKEN` (the CLI reads HERD_TOKEN); it is in DATA/admin-token",
            )),
        }
    }
}
