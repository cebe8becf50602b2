//! `POST /api/v1/try`: build a patch that the repository does not have, on
//! top of a revision it has (`herd try`). Needs a try token or the admin
//! token; the build is marked `try` with who sent it.

use super::{ApiError, ApiJson, AppState};
use crate::access::MaybeCaller;
use crate::access::{BodyRefusals, TokenRefusals};
use crate::auth::Principal;
use crate::builds::{start, BuildRequest, Origin, Started};
use crate::store::BuildKind;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use herd_api::{ErrorBody, TryRequest, TryStarted};
use herd_proto::MAX_TRY_PATCH;
use std::time::Instant;

/// Builds a patch on top of a revision the server has (`herd try`).
#[utoipa::path(
    post,
    path = "/api/v1/try",
    tag = "builds",
    request_body = TryRequest,
    responses(
        (status = 201, body = TryStarted),
        (status = 404, description = "No such project", body = ErrorBody),
        (status = 409, description = "The patch does not apply, or the project has no repository", body = ErrorBody),
        (status = 429, description = "The try token's builds per hour are spent", body = ErrorBody),
        BodyRefusals,
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn create(
    State(app): AppState,
    MaybeCaller(caller): MaybeCaller,
    body: Result<ApiJson<TryRequest>, ApiError>,
) -> Result<(StatusCode, Json<TryStarted>), ApiError> {
    let token_user = match caller {
        Some(Principal::Try { token_id, user }) => {
            // Per token, before any work (git, planning) is spent on it.
            let per_hour = app.hub.settings.limits.try_builds_per_hour;
            if let Err(wait) =
                app.limits
                    .try_builds
                    .take(&token_id.to_string(), per_hour as usize, Instant::now())
            {
                return Err(ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "this try token started {per_hour} try builds in the last hour, the most the server allows (limits: try_builds_per_hour): the next may start in {} min",
                        wait.as_secs().div_ceil(60).max(1)
                    ),
                ));
            }
            user.unwrap_or_else(|| format!("token {token_id}"))
        }
        Some(Principal::Admin { .. }) => "admin".to_string(),
        Some(other) => {
            return Err(ApiError::forbidden(format!(
                "a {} token cannot send try builds: use a try token",
                other.kind().as_str()
            )))
        }
        None => {
            return Err(ApiError::unauthorized(
                "herd try needs a try token: ask an admin for `herd token create --try --user NAME` and pass it as HERD_TOKEN",
            ))
        }
    };
    let ApiJson(req) = body?;
    if req.patch.len() > MAX_TRY_PATCH {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the patch is {} bytes, more than the {MAX_TRY_PATCH} a try build takes: commit and push it, or try a smaller change",
                req.patch.len()
            ),
        ));
    }
    if req.patch.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the patch is empty: there is nothing to try",
        ));
    }
    if !(req.base.len() == 40 && req.base.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(ApiError::bad_request(
            "`base` must be a full 40-character commit id (the merge base with the server's branch)",
        ));
    }
    let sender = match req
        .author
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        Some(author) => format!("{author} ({token_user})"),
        None => token_user,
    };
    let start_req = BuildRequest {
        project: req.project,
        builder: req.builder,
        rev: Some(req.base),
        priority: 0,
        reason: Some(format!("try by {sender}")),
        ..Default::default()
    };
    let origin = Origin {
        kind: BuildKind::Try,
        branch: None,
        sender: Some(sender),
        change: None,
        patch: Some(req.patch),
        tag: None,
        pull_request: None,
    };
    match start(&app, start_req, origin).await? {
        Started::Build(id) => Ok((
            StatusCode::CREATED,
            Json(TryStarted {
                id,
                url: format!("{}/builds/{id}", app.public_url),
            }),
        )),
        Started::NothingToBuild(why) => Err(ApiError::bad_request(why)),
    }
}
