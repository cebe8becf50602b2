//! What the one-line installer fetches: the install script with this
//! server's address and the enrollment token in it, and the `herd`
//! executables (with their SHA-256).

use super::{ApiError, ApiPath, AppState};
use crate::access::TokenRefusals;
use crate::install;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use herd_api::ErrorBody;
use serde::Deserialize;
use std::net::SocketAddr;
use utoipa::IntoParams;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InstallQuery {
    /// An enrollment token (`herd token create --enroll`).
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

/// The installer, with this server's address and the token filled in. A
/// refusal is a script too, that prints why and exits 1.
#[utoipa::path(
    get,
    path = "/install.sh",
    tag = "tokens",
    params(InstallQuery),
    responses(
        (status = 200, description = "A POSIX shell script", content_type = "text/x-shellscript", body = String),
        TokenRefusals,
    ),
    security(()),
)]
pub async fn install_sh(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    q: Result<Query<InstallQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Err(wait) = super::tokens::count_enrollment(&app, peer) {
        return script_error(&format!(
            "too many enrollments from this address in the last minute: try again in {} s",
            wait.as_secs().max(1)
        ));
    }
    let Some(base) = install::caller_base(&app, &headers) else {
        return script_error("the request named no usable Host");
    };
    let token = q.ok().and_then(|Query(q)| q.token);
    let Some(token) = token.filter(|t| install::plain_token(t)) else {
        return script_error(&format!(
            "no enrollment token in the address: use {base}/install.sh?token=TOKEN (create one with `herd token create --enroll`)"
        ));
    };
    match crate::auth::check_enroll(&app.hub.store, &token).await {
        Ok(Ok(_)) => {}
        Ok(Err(why)) => {
            return script_error(&format!(
                "{}; ask the server's admin for a new one (`herd token create --enroll`)",
                why.message()
            ))
        }
        Err(e) => {
            tracing::error!("could not check an enrollment token: {e}");
            return script_error("the server could not check the token; its log says why");
        }
    }
    (
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        install::install_script(&base, &token, app.tls_pin.as_deref()),
    )
        .into_response()
}

/// `herd-OS-ARCH`: a `herd` executable, streamed from its file (at most
/// two at once per address); `herd-OS-ARCH.sha256`: its SHA-256.
#[utoipa::path(
    get,
    path = "/download/{file}",
    tag = "tokens",
    params(("file" = String, Path, description = "`herd-OS-ARCH` or `herd-OS-ARCH.sha256`")),
    responses(
        (status = 200, description = "The executable, or its checksum as `SUM  NAME`", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No executable for that platform here", body = ErrorBody),
        (status = 429, description = "This address downloads two already", body = ErrorBody),
        TokenRefusals,
    ),
    security(()),
)]
pub async fn download(
    State(app): AppState,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiPath(file): ApiPath<String>,
) -> Result<Response, ApiError> {
    let (name, checksum) = match file.strip_suffix(".sha256") {
        Some(n) => (n.to_string(), true),
        None => (file.clone(), false),
    };
    let Some(path) = install::executable_for(&app, &name) else {
        return Err(ApiError::not_found(format!(
            "no `{name}` here; this server has: {}; put executables for other platforms in a directory given with `herd server --dist DIR`",
            install::served_executables(&app).join(", ")
        )));
    };
    let own = app.dist_dir.as_ref().is_none_or(|d| !path.starts_with(d));
    if checksum {
        let p = path.clone();
        let sum = tokio::task::spawn_blocking(move || install::sha256_of(&p, own))
            .await
            .map_err(|e| ApiError::internal("could not compute a checksum", e))?
            .map_err(|e| ApiError::internal("could not read an executable", e))?;
        return Ok((
            [(header::CONTENT_TYPE, "text/plain")],
            format!("{sum}  {name}\n"),
        )
            .into_response());
    }
    // Streamed a chunk at a time: a slow client holds 64 KiB, not the file.
    let Some(slot) = app.limits.downloads.start(peer.ip()) else {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "this address downloads two executables already: try again when one is done",
        ));
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| ApiError::internal("could not open an executable", e))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal("could not read an executable", e))?
        .len();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024).map(move |chunk| {
        // The slot is the stream's: it frees when the download ends.
        let _held = &slot;
        chunk
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}
