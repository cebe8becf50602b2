//! The OpenAPI document, generated from the `herd-api` types and the
//! handlers' `#[utoipa::path]` attributes, and the two routes that describe
//! the server itself (health, the document).

use super::AppState;
use crate::access::TokenRefusals;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::OnceLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Tagged enums that take no unknown fields (serde's `deny_unknown_fields`
/// on the enum): utoipa does not mark their variants closed, so this does.
struct ClosedVariants;

impl Modify for ClosedVariants {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{AdditionalProperties, Schema};
        use utoipa::openapi::RefOr;
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        for name in ["CreateToken"] {
            if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(name) {
                for item in &mut one_of.items {
                    if let RefOr::T(Schema::Object(object)) = item {
                        object.additional_properties =
                            Some(Box::new(AdditionalProperties::FreeForm(false)));
                    }
                }
            }
        }
    }
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A herd token: admin (everything), read, try, worker or enroll; each kind makes only its own calls (docs/security.md)",
                    ))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "herd API",
        version = "1",
        description = "Builds, jobs, attempts, steps, logs and workers of a herd server. Reading is open (unless the server is private); state-changing calls need the admin token as a Bearer token. Each kind of token (admin, read, try, worker, enroll) makes only its own calls: a valid token of the wrong kind gets 403, a revoked, expired or mistyped one 401 (see docs/security.md). Errors are `{\"error\": \"…\"}` and say what to do next.",
    ),
    paths(
        health,
        document,
        super::builds::list_builds,
        super::builds::create_build,
        super::builds::get_build,
        super::builds::cancel_build,
        super::builds::retry_build,
        super::builds::get_log,
        super::artifacts::list,
        super::artifacts::download,
        super::artifacts::upload_state,
        super::artifacts::upload,
        super::artifacts::fetch,
        super::splits::build_tests,
        super::splits::junit,
        super::workers::list_workers,
        super::workers::get_worker,
        super::workers::pause_worker,
        super::workers::resume_worker,
        super::workers::set_labels,
        super::workers::reprobe,
        super::workers::forget_worker,
        super::workers::project_builders,
        super::projects::list,
        super::projects::show,
        super::projects::approve,
        super::tokens::list_tokens,
        super::tokens::create_token,
        super::tokens::revoke_token,
        super::tokens::enroll,
        super::tokens::whoami,
        super::try_build::create,
        super::hooks::receive,
        super::downloads::install_sh,
        super::downloads::download,
        super::ops::gc,
        super::ops::reload,
        super::ops::metrics,
        crate::ws::worker_endpoint,
    ),
    modifiers(&BearerToken, &ClosedVariants),
    tags(
        (name = "builds", description = "Builds, their jobs, attempts, steps and logs"),
        (name = "tests", description = "Results of split test suites"),
        (name = "workers", description = "Workers and what they can do"),
        (name = "projects", description = "Projects, polling and changes"),
        (name = "tokens", description = "Tokens and enrolling workers"),
        (name = "server", description = "The server itself"),
    )
)]
pub struct ApiDoc;

/// The document as JSON, made once.
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!(r#"{{"error": "cannot render the document: {e}"}}"#))
    })
}

/// The server is up: its version, workers online, jobs queued.
#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "server",
    responses((status = 200, body = herd_api::Health), TokenRefusals),
    security((), ("token" = [])),
)]
pub async fn health(axum::extract::State(app): AppState) -> Json<herd_api::Health> {
    Json(herd_api::Health {
        ok: true,
        version: env!("CARGO_PKG_VERSION").to_string(),
        workers_online: app.hub.live_workers().len() as u64,
        queued_jobs: app.hub.queue_len() as u64,
    })
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "server",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = serde_json::Value),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_declares_every_path_parameter() {
        let doc: serde_json::Value = serde_json::from_str(json()).expect("valid JSON");
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() >= 25, "{}", paths.len());
        for (path, item) in paths {
            let wanted: Vec<&str> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .collect();
            for (method, op) in item.as_object().expect("path item") {
                let declared: Vec<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                for w in &wanted {
                    assert!(
                        declared.contains(w),
                        "{method} {path} does not declare `{w}`"
                    );
                }
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{method} {path} documents no answer"
                );
            }
        }
    }
}
