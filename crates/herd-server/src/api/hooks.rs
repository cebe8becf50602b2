//! Webhooks at `/api/v1/hooks/{forge}/{project}`: GitHub, Gitea/Forgejo,
//! GitLab and a generic form. A hook is checked (HMAC-SHA256 signature, or
//! GitLab's secret token, in constant time) and then only wakes the
//! project's poller: herd fetches the mirror itself, so a forged payload
//! cannot name a commit that is not really in the repository.

use super::{ApiError, ApiPath, AppState};
use crate::auth::{hmac_sha256_verify, secrets_equal};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;
use herd_api::{ErrorBody, HookAnswer};
use herd_core::webhook::{read_event, Forge, HookEvent};

/// Largest webhook body read (the signature covers all of it). Push
/// payloads are mostly far smaller; one larger gets 413 and the next poll
/// still finds its commits.
pub const MAX_HOOK_BODY: usize = 10 * 1024 * 1024;

/// Longest delivery id remembered (forges use UUIDs).
const MAX_DELIVERY_ID: usize = 128;

fn header<'a>(h: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()))
}

/// A forge's delivery: checked by its signature, then it wakes the
/// project's poller (a hook never names what is built).
#[utoipa::path(
    post,
    path = "/api/v1/hooks/{forge}/{project}",
    tag = "projects",
    params(
        ("forge" = String, Path, description = "`github`, `gitea`, `forgejo`, `gitlab` or `generic`"),
        ("project" = String, Path, description = "The project's name"),
    ),
    request_body(content = serde_json::Value, description = "The forge's payload, as it sends it"),
    responses(
        (status = 200, description = "A ping, or nothing to do", body = HookAnswer),
        (status = 202, description = "The project is being fetched", body = HookAnswer),
        (status = 400, description = "A payload that cannot be read", body = ErrorBody),
        (status = 401, description = "A bad or missing signature", body = ErrorBody),
        (status = 404, description = "No such forge kind, or the project takes no webhooks", body = ErrorBody),
        (status = 413, description = "A payload larger than 10 MiB", body = ErrorBody),
    ),
    security(()),
)]
pub async fn receive(
    state: AppState,
    path: ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<HookAnswer>), ApiError> {
    let answer = handle(state, path, headers, body).await;
    crate::metrics::global().webhook(if answer.is_ok() {
        "accepted"
    } else {
        "refused"
    });
    answer
}

async fn handle(
    State(app): AppState,
    ApiPath((forge, project)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<HookAnswer>), ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let Some(forge) = Forge::parse(&forge) else {
        return Err(ApiError::not_found(format!(
            "no webhook kind `{forge}`: use github, gitea, forgejo, gitlab or generic"
        )));
    };
    let live = app.live();
    let Some(secret) = live
        .projects
        .get(&project)
        .and_then(|p| p.webhook_secret.as_ref())
    else {
        return Err(ApiError::not_found(format!(
            "project `{project}` takes no webhooks: give it `webhook_secret:` in the server config"
        )));
    };
    let key = secret.0.as_bytes();
    let signed = |value: Option<&str>, prefix: &str| {
        value
            .and_then(|v| v.trim().strip_prefix(prefix))
            .is_some_and(|sig| hmac_sha256_verify(key, &body, sig))
    };
    let authentic = match forge {
        Forge::GitHub => signed(header(&headers, &["x-hub-signature-256"]), "sha256="),
        Forge::Gitea => signed(
            header(&headers, &["x-forgejo-signature", "x-gitea-signature"]),
            "",
        ),
        Forge::GitLab => {
            header(&headers, &["x-gitlab-token"]).is_some_and(|t| secrets_equal(t, &secret.0))
        }
        Forge::Generic => {
            signed(header(&headers, &["x-herd-signature-256"]), "sha256=")
                || header(&headers, &["x-herd-token"]).is_some_and(|t| secrets_equal(t, &secret.0))
        }
    };
    if !authentic {
        tracing::warn!(project = %project, "refused a {forge:?} webhook: bad or missing signature");
        return Err(ApiError::unauthorized(
            "the webhook's signature does not match: the secret set at the forge must be the project's webhook_secret",
        ));
    }
    let event = header(
        &headers,
        &[
            "x-github-event",
            "x-forgejo-event",
            "x-gitea-event",
            "x-gitlab-event",
            "x-herd-event",
        ],
    );
    let reference = match read_event(event, &body).map_err(ApiError::bad_request)? {
        HookEvent::Ping => {
            return Ok((StatusCode::OK, Json(HookAnswer::Pong { ok: "pong".into() })))
        }
        HookEvent::Ignored(event) => {
            return Ok((
                StatusCode::OK,
                Json(HookAnswer::Ignored {
                    ignored: format!("event `{event}` does not change the repository"),
                }),
            ))
        }
        HookEvent::Push { reference } => Some(reference),
        HookEvent::PullRequest(pr) => {
            let fetch = app
                .live()
                .projects
                .get(&project)
                .is_some_and(|p| p.pull_requests.is_some());
            if !fetch {
                return Ok((
                    StatusCode::OK,
                    Json(HookAnswer::Ignored {
                        ignored: format!(
                            "project `{project}` does not build pull requests: give it `pull_requests:` in the server config"
                        ),
                    }),
                ));
            }
            if !crate::pulls::on_event(&app, &project, &pr).await? {
                return Ok((
                    StatusCode::OK,
                    Json(HookAnswer::Ignored {
                        ignored: format!(
                            "pull request #{} was closed: its builds are cancelled",
                            pr.number
                        ),
                    }),
                ));
            }
            None
        }
    };
    let delivery = header(
        &headers,
        &[
            "x-github-delivery",
            "x-forgejo-delivery",
            "x-gitea-delivery",
            "x-gitlab-event-uuid",
            "idempotency-key",
            "x-herd-delivery",
        ],
    );
    if let Some(id) = delivery {
        if id.len() > MAX_DELIVERY_ID {
            return Err(ApiError::bad_request(format!(
                "the delivery id is longer than {MAX_DELIVERY_ID} characters"
            )));
        }
        if !app.hub.store.note_delivery(&project, id).await? {
            return Ok((
                StatusCode::OK,
                Json(HookAnswer::Ignored {
                    ignored: format!("delivery `{id}` was received before"),
                }),
            ));
        }
    }
    if !app.pollers.wake(&project) {
        return Err(ApiError::bad_request(format!(
            "project `{project}` has no repository to fetch"
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(HookAnswer::Fetching {
            fetching: project,
            reference: reference.flatten(),
        }),
    ))
}
