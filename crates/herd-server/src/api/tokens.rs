//! Tokens: creating every kind through one path, listing, revoking;
//! enrolling a worker (an enrollment token traded for a worker token);
//! what a presented token is.

use super::{Admin, ApiError, ApiJson, ApiPath, AppState};
use crate::access::MaybeCaller;
use crate::access::{BodyRefusals, TokenRefusals};
use crate::auth::{self, EnrollRefusal, NewToken, Principal};
use crate::App;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_api::tokens::{
    CreateToken, CreatedToken, EnrollRequest, Enrolled, Revoked, TokenInfo, TokenKind, TokenList,
    WhoAmI,
};
#[cfg(test)]
use herd_api::tokens::{DURATION_PATTERN, WORKER_NAME_PATTERN};
use herd_api::ErrorBody;
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// The API's name of a token kind.
pub(crate) fn kind_view(k: auth::TokenKind) -> TokenKind {
    match k {
        auth::TokenKind::Admin => TokenKind::Admin,
        auth::TokenKind::Worker => TokenKind::Worker,
        auth::TokenKind::Enroll => TokenKind::Enroll,
        auth::TokenKind::Try => TokenKind::Try,
        auth::TokenKind::Read => TokenKind::Read,
        auth::TokenKind::Metrics => TokenKind::Metrics,
    }
}

/// Makes a token of any kind but admin; its secret is in this answer only.
#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body = CreateToken,
    responses(
        (status = 201, body = CreatedToken),
        BodyRefusals,
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn create_token(
    _: Admin,
    State(app): AppState,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let (kind, opts) = match req {
        CreateToken::Worker { worker, expires } => {
            if !valid_worker_name(&worker) {
                return Err(ApiError::bad_request(
                    "a worker token needs `worker`: a name of letters, digits, `-`, `_` and `.`",
                ));
            }
            let mut opts = token_options(None, expires.as_deref(), None)?;
            opts.worker = Some(worker);
            (auth::TokenKind::Worker, opts)
        }
        CreateToken::Enroll {
            uses,
            expires,
            labels,
        } => (
            auth::TokenKind::Enroll,
            token_options(uses, expires.as_deref(), labels)?,
        ),
        CreateToken::Try { user, expires } => {
            let mut opts = token_options(None, expires.as_deref(), None)?;
            if let Some(user) = user.filter(|u| !u.trim().is_empty()) {
                opts.labels = Some([("user".to_string(), user)].into());
            }
            (auth::TokenKind::Try, opts)
        }
        CreateToken::Read { expires } => (
            auth::TokenKind::Read,
            token_options(None, expires.as_deref(), None)?,
        ),
        CreateToken::Metrics { expires } => (
            auth::TokenKind::Metrics,
            token_options(None, expires.as_deref(), None)?,
        ),
        other => {
            return Err(ApiError::bad_request(format!(
                "this server does not create such tokens ({other:?}): it creates `worker`, `enroll`, `try`, `read` and `metrics` tokens"
            )))
        }
    };
    let worker = opts.worker.clone();
    let token = auth::create_token_with(&app.hub.store, kind, opts).await?;
    let install = (kind == auth::TokenKind::Enroll)
        .then(|| crate::install::install_command(&app, &headers, &token))
        .flatten();
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            kind: kind_view(kind),
            install,
            worker,
        }),
    ))
}

/// Every token, without its secret.
#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    responses((status = 200, body = TokenList), TokenRefusals),
    security(("token" = [])),
)]
pub async fn list_tokens(_: Admin, State(app): AppState) -> Result<Json<TokenList>, ApiError> {
    let mut tokens = Vec::new();
    for t in app.hub.store.tokens().await? {
        let Some(kind) = auth::TokenKind::parse(&t.kind) else {
            tracing::warn!("token {} has an unknown kind `{}`", t.id, t.kind);
            continue;
        };
        let labels: BTreeMap<String, String> = t
            .labels
            .as_deref()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_default();
        tokens.push(TokenInfo {
            id: t.id,
            kind: kind_view(kind),
            worker: t.worker,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            uses_left: t.uses_left,
            labels,
        });
    }
    Ok(Json(TokenList { tokens }))
}

/// Revokes a token at once; a revoked worker is disconnected.
#[utoipa::path(
    post,
    path = "/api/v1/tokens/{id}/revoke",
    tag = "tokens",
    params(("id" = String, Path, description = "The token's id (`herd token list`)")),
    responses(
        (status = 200, body = Revoked),
        (status = 404, description = "No live token with that id", body = ErrorBody),
        (status = 409, description = "The admin token is replaced by a restart, not revoked", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn revoke_token(
    _: Admin,
    State(app): AppState,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Revoked>, ApiError> {
    if app
        .hub
        .store
        .token(&id)
        .await?
        .is_some_and(|t| t.kind == auth::TokenKind::Admin.as_str())
    {
        return Err(ApiError::conflict(
            "the admin token is not revoked through the API: that would lock every admin out. To replace it, restart the server with --new-admin-token",
        ));
    }
    let Some(row) = app.hub.store.revoke_token(&id).await? else {
        return Err(ApiError::not_found(format!(
            "no live token `{id}` (see `herd token list`)"
        )));
    };
    if let Some(w) = &row.worker {
        app.hub.close_worker(w, "its token was revoked");
    }
    Ok(Json(Revoked { id, revoked: true }))
}

/// Trades one use of an enrollment token for a worker token; the worker
/// gets the token's labels. Limited per client address and minute.
#[utoipa::path(
    post,
    path = "/api/v1/enroll",
    tag = "tokens",
    request_body = EnrollRequest,
    responses(
        (status = 201, body = Enrolled),
        (status = 429, description = "Too many enrollments from this address in the last minute", body = ErrorBody,
         headers(("retry-after" = u64, description = "Seconds to wait"))),
        BodyRefusals,
        TokenRefusals,
    ),
    security(()),
)]
pub async fn enroll(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<ApiJson<EnrollRequest>, ApiError>,
) -> Result<Response, ApiError> {
    if let Err(wait) = count_enrollment(&app, peer) {
        let secs = wait.as_secs().max(1);
        let mut res = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many enrollments from this address in the last minute: try again in {secs} s"
            ),
        )
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Ok(res);
    }
    let ApiJson(req) = body?;
    if req
        .owner
        .as_deref()
        .is_some_and(|o| !crate::owners::valid_owner(o))
    {
        return Err(ApiError::bad_request(
            "`owner` is not an email address: give one such as alice@example.org",
        ));
    }
    let store = &app.hub.store;
    let (row, labels) = match auth::check_enroll(store, &req.token).await? {
        Ok(ok) => ok,
        Err(why) => {
            let status = if why == EnrollRefusal::Invalid {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            return Err(ApiError::new(
                status,
                format!(
                    "{}; ask the server's admin for a new one (`herd token create --enroll`)",
                    why.message()
                ),
            ));
        }
    };
    let wanted = match &req.name {
        Some(n) if valid_worker_name(n) => n.clone(),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "invalid worker name `{n}`: use letters, digits, `-`, `_` and `.`"
            )))
        }
        None => name_from_host(req.hostname.as_deref().unwrap_or("worker")),
    };
    let taken: std::collections::HashSet<String> = store
        .tokens()
        .await?
        .into_iter()
        .filter(|t| t.revoked_at.is_none())
        .filter_map(|t| t.worker)
        .chain(store.workers().await?.into_iter().map(|w| w.name))
        .collect();
    let name = std::iter::once(wanted.clone())
        .chain((2..1000).map(|i| format!("{wanted}-{i}")))
        .find(|n| !taken.contains(n))
        .ok_or_else(|| ApiError::bad_request(format!("no free name like `{wanted}`")))?;
    if !store.take_enroll_use(&row.id).await? {
        return Err(ApiError::forbidden(EnrollRefusal::UsedUp.message()));
    }
    let token = auth::create_token(store, auth::TokenKind::Worker, Some(&name)).await?;
    // The enrollment token's labels are the server's word, not the worker's;
    // whoever holds the token may name the machine's owner when the token
    // does not (they lend it).
    let mut labels = labels;
    if let Some(owner) = &req.owner {
        if !labels.contains_key(crate::owners::OWNER_LABEL) {
            labels.insert(crate::owners::OWNER_LABEL.to_string(), owner.clone());
        }
    }
    if !labels.is_empty() {
        app.hub.set_server_labels(&name, &labels, &[]).await?;
    }
    tracing::info!("enrolled worker {name} with enrollment token {}", row.id);
    Ok((
        StatusCode::CREATED,
        Json(Enrolled {
            worker: name,
            token,
            labels,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
        }),
    )
        .into_response())
}

/// What the presented token is (the installer checks that a worker's
/// saved token still works).
#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "tokens",
    responses((status = 200, body = WhoAmI), TokenRefusals),
    security(("token" = [])),
)]
pub async fn whoami(MaybeCaller(caller): MaybeCaller) -> Result<Json<WhoAmI>, ApiError> {
    let Some(principal) = caller else {
        return Err(ApiError::unauthorized(
            "no token: pass it as `Authorization: Bearer TOKEN`",
        ));
    };
    let kind = kind_view(principal.kind());
    Ok(Json(match principal {
        Principal::Worker { worker, .. } => WhoAmI {
            kind,
            worker: Some(worker),
            user: None,
        },
        Principal::Try { user, .. } => WhoAmI {
            kind,
            worker: None,
            user,
        },
        _ => WhoAmI {
            kind,
            worker: None,
            user: None,
        },
    }))
}

/// Counts an enrollment attempt of `peer`; Err(how long to wait) when it
/// has used up its minute.
pub(super) fn count_enrollment(app: &App, peer: SocketAddr) -> Result<(), std::time::Duration> {
    let now = std::time::Instant::now();
    if let Some(wait) = app.limits.enrollments.blocked(peer.ip(), now) {
        tracing::warn!(
            "enrollment from {} refused: too many in a minute",
            peer.ip()
        );
        return Err(wait);
    }
    app.limits.enrollments.note(peer.ip(), now);
    Ok(())
}

/// A worker name from a host name: `Kestrel.example.org` -> `kestrel`.
fn name_from_host(host: &str) -> String {
    let first = host.split('.').next().unwrap_or("").to_lowercase();
    let n: String = first
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    if n.trim_matches('-').is_empty() {
        "worker".into()
    } else {
        n
    }
}

/// Uses, expiry and labels of a new token.
pub fn token_options(
    uses: Option<i64>,
    expires: Option<&str>,
    labels: Option<BTreeMap<String, String>>,
) -> Result<NewToken, ApiError> {
    if uses.is_some_and(|u| u < 1) {
        return Err(ApiError::bad_request("`uses` must be at least 1"));
    }
    let expires_at = match expires {
        None => None,
        Some(e) => {
            let d = herd_core::duration::parse_duration(e).map_err(|err| {
                ApiError::bad_request(format!("invalid `expires` {e}: {err} (e.g. 24h, 7d)"))
            })?;
            Some(crate::store::now_ms().saturating_add(d.as_millis().min(i64::MAX as u128) as i64))
        }
    };
    Ok(NewToken {
        worker: None,
        expires_at,
        uses,
        labels,
    })
}

pub fn valid_worker_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A strategy for the strings a whole-string pattern (`^…$`) allows.
    fn matching(pattern: &str) -> impl Strategy<Value = String> {
        let body = pattern.trim_start_matches('^').trim_end_matches('$');
        proptest::string::string_regex(body).expect("a valid regex")
    }

    proptest! {
        /// What the document calls a valid duration or name, the server takes.
        #[test]
        fn every_duration_the_schema_allows_is_taken(d in matching(DURATION_PATTERN)) {
            prop_assert!(herd_core::duration::parse_duration(&d).is_ok(), "{d:?}");
            prop_assert!(token_options(None, Some(&d), None).is_ok(), "{d:?}");
        }

        #[test]
        fn every_worker_name_the_schema_allows_is_taken(n in matching(WORKER_NAME_PATTERN)) {
            prop_assert!(valid_worker_name(&n), "{n:?}");
        }
    }

    #[test]
    fn the_document_uses_the_patterns_the_server_checks() {
        let doc = super::super::openapi::json();
        assert!(
            doc.contains(&DURATION_PATTERN.replace('\\', "\\\\")),
            "duration pattern"
        );
        assert!(doc.contains(WORKER_NAME_PATTERN), "worker name pattern");
    }
}
