//! Which token may make which call: one table for every route, checked in
//! one place before any handler runs.
//!
//! A call without a token goes on to the handler (reading is open unless
//! the server is private; the handler of a call that changes state asks
//! for the admin token). A call *with* a token needs that token valid now
//! (else 401, even where no token is needed: a revoked token is never
//! quietly ignored) and of a kind the route allows (else 403).

use crate::auth::{self, Principal, Scope};
use crate::App;
use axum::extract::{FromRequestParts, MatchedPath, State};
use axum::http::request::Parts;
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::sync::Arc;
use utoipa::IntoResponses;

/// A token that is not valid (401) or of a kind that may not make the
/// call (403): every route may answer these when a token is presented.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only: `token_guard` answers these
pub enum TokenRefusals {
    /// The token is mistyped, revoked or expired; or the call needs one
    /// and none was given.
    #[response(status = 401)]
    Unauthorized(herd_api::ErrorBody),
    /// The token is valid but of a kind that may not make this call.
    #[response(status = 403)]
    Forbidden(herd_api::ErrorBody),
}

/// A JSON body that could not be taken.
#[derive(IntoResponses)]
#[allow(dead_code)] // documentation only: `api::ApiJson` answers these
pub enum BodyRefusals {
    /// The body is not valid JSON, or not what the call takes.
    #[response(status = 400)]
    BadRequest(herd_api::ErrorBody),
    /// The body is larger than the server takes.
    #[response(status = 413)]
    TooLarge(herd_api::ErrorBody),
    /// The body is not sent as `application/json`.
    #[response(status = 415)]
    NotJson(herd_api::ErrorBody),
    /// The body is JSON of the wrong shape.
    #[response(status = 422)]
    WrongShape(herd_api::ErrorBody),
}

/// A refusal in the API's error form (`{"error": …}`); 401 says which
/// scheme to use.
pub fn refusal(status: StatusCode, message: impl Into<String>) -> Response {
    let mut res = (
        status,
        Json(herd_api::ErrorBody {
            error: message.into(),
        }),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    res
}

/// A failure of the store while checking a token: the detail goes to the
/// log, not to the client.
fn store_failure(e: &crate::store::StoreError) -> Response {
    tracing::error!("store error while checking a token: {e}");
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the server could not read or write its database; the server log says why",
    )
}

/// What `method route` needs; `route` is the route's template as
/// registered (`/api/v1/builds/{id}`). Unknown routes need the admin token.
pub fn scope_of(method: &Method, route: &str) -> Option<Scope> {
    let read = *method == Method::GET || *method == Method::HEAD;
    Some(match route {
        // Webhooks carry their own signature and are checked by it.
        "/api/v1/hooks/{forge}/{project}" => return None,
        "/api/v1/health" | "/download/{file}" | "/install.sh" | "/api/v1/enroll" | "/login"
        | "/logout" | "/static/app.css" | "/static/app.js" => Scope::Open,
        "/api/v1/whoami" => Scope::AnyToken,
        "/metrics" => Scope::Metrics,
        herd_proto::WORKER_ENDPOINT => Scope::Worker,
        // The handlers check that the attempt is the worker's, and live.
        "/api/v1/attempts/{id}/uploads" | "/api/v1/attempts/{id}/artifacts/{artifact}" => {
            Scope::Worker
        }
        "/api/v1/workers/{name}/forget" => Scope::OwnWorkerOrAdmin,
        "/api/v1/workers/{name}" if read => Scope::OwnWorkerOrRead,
        "/api/v1/try" => Scope::Try,
        // The handler checks that the worker runs a job of the project.
        r if r.starts_with(herd_proto::SOURCE_PREFIX) => Scope::AnyToken,
        // Token ids and their kinds are the admin's business.
        "/api/v1/tokens" => Scope::Admin,
        _ if read => Scope::Read,
        _ => Scope::Admin,
    })
}

/// Whether `path` (`/api/v1/workers/NAME[/…]`) is about `worker`.
fn names_worker(path: &str, worker: &str) -> bool {
    path.strip_prefix("/api/v1/workers/")
        .map(|rest| rest.split('/').next() == Some(worker))
        .unwrap_or(false)
}

/// The principal of the token presented with the request, once checked.
#[derive(Clone, Debug)]
pub struct Caller(pub Principal);

/// Middleware on every route: checks a presented token against the route's
/// scope and leaves the principal in the request for the handler.
pub async fn token_guard(
    State(app): State<Arc<App>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let Some(scope) = scope_of(req.method(), &route) else {
        return next.run(req).await;
    };
    let presented = auth::presented(req.headers()).map(str::to_string);
    let Some(token) = presented else {
        return next.run(req).await;
    };
    let principal = match req.extensions().get::<Caller>() {
        Some(Caller(p)) => Some(p.clone()),
        None => match auth::verify(&app.hub.store, &token).await {
            Ok(p) => p,
            Err(e) => return store_failure(&e),
        },
    };
    let Some(principal) = principal else {
        tracing::info!(route = %route, "refused a call with an invalid, revoked or expired token");
        return refusal(
            StatusCode::UNAUTHORIZED,
            "the token is not valid (mistyped, revoked or expired): ask the server's admin for a new one",
        );
    };
    let own = match (&principal, scope) {
        (Principal::Worker { worker, .. }, Scope::OwnWorkerOrAdmin | Scope::OwnWorkerOrRead) => {
            names_worker(req.uri().path(), worker)
        }
        _ => true,
    };
    if !principal.allows(scope) || !own {
        tracing::info!(route = %route, kind = principal.kind().as_str(), "refused a call with a token of the wrong kind");
        return refusal(
            StatusCode::FORBIDDEN,
            format!(
                "a {} token may not make this call: it needs {}",
                principal.kind().as_str(),
                scope.needs()
            ),
        );
    }
    req.extensions_mut().insert(Caller(principal));
    next.run(req).await
}

/// The checked principal, if a token came with the request.
pub struct MaybeCaller(pub Option<Principal>);

impl FromRequestParts<Arc<App>> for MaybeCaller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<App>) -> Result<Self, Self::Rejection> {
        Ok(MaybeCaller(
            parts.extensions.get::<Caller>().map(|c| c.0.clone()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_makes_only_its_own_calls() {
        let admin = Principal::Admin {
            token_id: "a".into(),
        };
        let worker = Principal::Worker {
            token_id: "w".into(),
            worker: "w".into(),
            expires_at: None,
        };
        let read = Principal::Read {
            token_id: "r".into(),
        };
        let try_ = Principal::Try {
            token_id: "t".into(),
            user: None,
        };
        let enroll = Principal::Enroll {
            token_id: "e".into(),
        };
        let post = Method::POST;
        let get = Method::GET;
        let cases = [
            (&get, "/api/v1/builds", [true, false, true, true, false]),
            (&post, "/api/v1/builds", [true, false, false, false, false]),
            (&post, "/api/v1/try", [true, false, false, true, false]),
            (&get, "/api/v1/tokens", [true, false, false, false, false]),
            (
                &get,
                herd_proto::WORKER_ENDPOINT,
                [false, true, false, false, false],
            ),
            (
                &post,
                "/api/v1/workers/{name}/forget",
                [true, true, false, false, false],
            ),
            (
                &get,
                "/api/v1/workers/{name}",
                [true, true, true, true, false],
            ),
            (&get, "/api/v1/workers", [true, false, true, true, false]),
            (&get, "/api/v1/whoami", [true, true, true, true, true]),
            (&post, "/some/new/route", [true, false, false, false, false]),
        ];
        for (method, route, want) in cases {
            let scope = scope_of(method, route).expect("a scope");
            let got = [&admin, &worker, &read, &try_, &enroll].map(|p| p.allows(scope));
            assert_eq!(got, want, "{method} {route}");
        }
        assert_eq!(scope_of(&post, "/api/v1/hooks/{forge}/{project}"), None);
        assert!(names_worker("/api/v1/workers/w1", "w1"));
        assert!(names_worker("/api/v1/workers/w1/forget", "w1"));
        assert!(!names_worker("/api/v1/workers/w10", "w1"));
        assert!(!names_worker("/api/v1/workers/w2/forget", "w1"));
    }
}
