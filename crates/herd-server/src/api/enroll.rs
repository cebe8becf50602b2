//! Lending a machine: enrollment tokens traded for worker tokens, the
//! install script, and the executables it downloads.

use super::access::MaybeCaller;
use super::{Admin, ApiError};
use crate::auth::{self, EnrollRefusal, NewToken, Principal, TokenKind};
use crate::App;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

type AppState = State<Arc<App>>;

const INSTALL_SH: &str = include_str!("assets/install.sh");

/// `herd-linux-x86_64`: what this server's own executable is served as.
pub fn own_platform_file() -> String {
    format!("herd-{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The address the caller used to reach us, as `http(s)://HOST[:PORT]`.
fn caller_base(app: &App, headers: &HeaderMap) -> Option<String> {
    let scheme = if app.tls_pin.is_some() {
        "https"
    } else {
        "http"
    };
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    ok.then(|| format!("{scheme}://{host}"))
}

/// The one-liner that makes a machine a worker with enrollment `token`.
/// On a TLS server it pins the server's key with curl (`-k` only skips the
/// CA check, which the pin replaces), so nothing unverified runs.
pub fn install_command(app: &App, headers: &HeaderMap, token: &str) -> Option<String> {
    let base = caller_base(app, headers)?;
    let curl = match &app.tls_pin {
        Some(pin) => format!("curl -fsSL -k --pinnedpubkey '{pin}'"),
        None => "curl -fsSL".to_string(),
    };
    Some(format!(
        "{curl} '{base}/install.sh?token={token}' | sudo sh"
    ))
}

/// A token as it may appear inside the script: nothing a shell reads specially.
fn plain_token(t: &str) -> bool {
    !t.is_empty() && t.len() <= 200 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Deserialize)]
pub struct InstallQuery {
    token: Option<String>,
}

fn script_error(message: &str) -> Response {
    // Served as a script that says why, so that `curl | sh` shows it.
    let quoted = message.replace('\'', "'\\''");
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        format!("#!/bin/sh\nprintf '%s\\n' 'error: {quoted}' >&2\nexit 1\n"),
    )
        .into_response()
}

/// `GET /install.sh?token=ENROLL`: the installer, with this server's
/// address and the token filled in.
pub async fn install_sh(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<InstallQuery>,
) -> Response {
    if let Err(wait) = count_enrollment(&app, peer) {
        return script_error(&format!(
            "too many enrollments from this address in the last minute: try again in {} s",
            wait.as_secs().max(1)
        ));
    }
    let Some(base) = caller_base(&app, &headers) else {
        return script_error("the request named no usable Host");
    };
    let Some(token) = q.token.filter(|t| plain_token(t)) else {
        return script_error(&format!(
            "no enrollment token in the address: use {base}/install.sh?token=TOKEN (create one with `herd token create --enroll`)"
        ));
    };
    match auth::check_enroll(&app.hub.store, &token).await {
        Ok(Ok(_)) => {}
        Ok(Err(why)) => {
            return script_error(&format!(
                "{}; ask the server's admin for a new one (`herd token create --enroll`)",
                why.message()
            ))
        }
        Err(e) => return script_error(&format!("server error: {e}")),
    }
    let text = INSTALL_SH
        .replace("@SERVER@", &base)
        .replace("@TOKEN@", &token)
        .replace("@PIN@", app.tls_pin.as_deref().unwrap_or(""));
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        text,
    )
        .into_response()
}

/// Path of the executable served as `file` (`herd-OS-ARCH`), if any.
fn executable_for(app: &App, file: &str) -> Option<std::path::PathBuf> {
    let plain = !file.is_empty()
        && file.len() <= 64
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !plain || !file.starts_with("herd-") {
        return None;
    }
    if let Some(dir) = &app.dist_dir {
        let p = dir.join(file);
        if p.is_file() {
            return Some(p);
        }
    }
    if file == own_platform_file() {
        // /proc/self/exe still reads when the file was replaced on disk
        // (an upgrade in place) while this server runs.
        let proc_exe = std::path::PathBuf::from("/proc/self/exe");
        if proc_exe.exists() {
            return Some(proc_exe);
        }
        return std::env::current_exe().ok();
    }
    None
}

/// The SHA-256 of this server's own executable, computed once.
static OWN_SHA256: OnceLock<String> = OnceLock::new();

fn sha256_of(path: &std::path::Path, own: bool) -> std::io::Result<String> {
    if own {
        if let Some(s) = OWN_SHA256.get() {
            return Ok(s.clone());
        }
    }
    let bytes = std::fs::read(path)?;
    let sum = hex::encode(Sha256::digest(&bytes));
    if own {
        let _ = OWN_SHA256.set(sum.clone());
    }
    Ok(sum)
}

/// `GET /download/herd-OS-ARCH` and `GET /download/herd-OS-ARCH.sha256`.
pub async fn download(
    State(app): AppState,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let (name, checksum) = match file.strip_suffix(".sha256") {
        Some(n) => (n.to_string(), true),
        None => (file.clone(), false),
    };
    let Some(path) = executable_for(&app, &name) else {
        let mut have = vec![own_platform_file()];
        if let Some(dir) = &app.dist_dir {
            if let Ok(rd) = std::fs::read_dir(dir) {
                have.extend(
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.starts_with("herd-") && !n.ends_with(".sha256")),
                );
            }
        }
        return Err(ApiError::not_found(format!(
            "no `{name}` here; this server has: {}; put executables for other platforms in a directory given with `herd server --dist DIR`",
            have.join(", ")
        )));
    };
    let own = app.dist_dir.as_ref().is_none_or(|d| !path.starts_with(d));
    if checksum {
        let p = path.clone();
        let sum = tokio::task::spawn_blocking(move || sha256_of(&p, own))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        return Ok((
            [(header::CONTENT_TYPE, "text/plain")],
            format!("{sum}  {name}\n"),
        )
            .into_response());
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    token: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
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

/// `POST /api/v1/enroll`: trades one use of an enrollment token for a
/// worker token; the worker gets the token's labels.
/// Counts an enrollment attempt of `peer`; Err(how long to wait) when it
/// has used up its minute.
fn count_enrollment(app: &App, peer: SocketAddr) -> Result<(), std::time::Duration> {
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

pub async fn enroll(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<EnrollRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    if let Err(wait) = count_enrollment(&app, peer) {
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
            Json(json!({ "error": format!(
                "too many enrollments from this address in the last minute: try again in {} s",
                wait.as_secs().max(1)
            ) })),
        )
            .into_response());
    }
    let Json(req) = body.map_err(ApiError::from_json)?;
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
        Some(n) if super::handlers::valid_worker_name(n) => n.clone(),
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
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            EnrollRefusal::UsedUp.message(),
        ));
    }
    let token = auth::create_token(store, TokenKind::Worker, Some(&name)).await?;
    tracing::info!("enrolled worker {name} with enrollment token {}", row.id);
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "worker": name,
            "token": token,
            "labels": labels,
            "server_version": env!("CARGO_PKG_VERSION"),
        })),
    )
        .into_response())
}

/// `GET /api/v1/tokens`: every token, without its secret.
pub async fn list_tokens(_: Admin, State(app): AppState) -> Result<Json<Value>, ApiError> {
    let tokens: Vec<Value> = app
        .hub
        .store
        .tokens()
        .await?
        .into_iter()
        .map(|t| {
            let labels: BTreeMap<String, String> = t
                .labels
                .as_deref()
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or_default();
            json!({
                "id": t.id,
                "kind": t.kind,
                "worker": t.worker,
                "created_at": t.created_at,
                "expires_at": t.expires_at,
                "revoked_at": t.revoked_at,
                "uses_left": t.uses_left,
                "labels": labels,
            })
        })
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `POST /api/v1/tokens/{id}/revoke`: at once; a revoked worker is disconnected.
pub async fn revoke_token(
    _: Admin,
    State(app): AppState,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(row) = app.hub.store.revoke_token(&id).await? else {
        return Err(ApiError::not_found(format!(
            "no live token `{id}` (see `herd token list`)"
        )));
    };
    if let Some(w) = &row.worker {
        app.hub.close_worker(w, "its token was revoked");
    }
    Ok(Json(json!({ "id": id, "revoked": true })))
}

/// `POST /api/v1/workers/{name}/forget`: by the admin or the worker itself
/// (`herd worker uninstall --purge`): its tokens are revoked, its row gone.
pub async fn forget_worker(
    State(app): AppState,
    MaybeCaller(caller): MaybeCaller,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match caller {
        Some(Principal::Admin { .. }) => {}
        Some(Principal::Worker { worker, .. }) if worker == name => {}
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a worker token may only forget its own worker",
            ))
        }
        None => {
            return Err(ApiError::unauthorized(
                "this call needs the admin token or the worker's own token",
            ))
        }
    }
    app.hub.close_worker(&name, "the worker was removed");
    app.hub.store.forget_worker(&name).await?;
    app.hub.changed();
    Ok(Json(json!({ "worker": name, "forgotten": true })))
}

/// Options of `POST /api/v1/tokens`: uses, expiry and labels of a new token.
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
            Some(crate::store::now_ms() + d.as_millis() as i64)
        }
    };
    Ok(NewToken {
        worker: None,
        expires_at,
        uses,
        labels,
    })
}

/// `GET /api/v1/whoami`: what the presented token is (the installer checks
/// that a worker's saved token still works).
pub async fn whoami(MaybeCaller(caller): MaybeCaller) -> Result<Json<Value>, ApiError> {
    let Some(principal) = caller else {
        return Err(ApiError::unauthorized(
            "no token: pass it as `Authorization: Bearer TOKEN`",
        ));
    };
    let kind = principal.kind().as_str();
    Ok(Json(match principal {
        Principal::Worker { worker, .. } => json!({ "kind": kind, "worker": worker }),
        Principal::Try { user, .. } => json!({ "kind": kind, "user": user }),
        _ => json!({ "kind": kind }),
    }))
}
