//! Workers fetch a job's sources from the server's own mirror, over git's
//! smart HTTP (`git http-backend`) on the server's port, with their worker
//! token. So a private repository needs credentials on the server only,
//! the forge sees one fetcher, and a worker running as another user than
//! the repository's owner can still check it out.
//!
//! The URL names the revision (`/git/PROJECT/REVISION`): the first request
//! of a fetch makes sure the mirror has that commit (a server that took a
//! build over from another may not have fetched it yet).
//!
//! Only fetching is served (upload-pack); a push is refused before git
//! runs. A worker token may fetch a project only while its worker runs one
//! of that project's jobs.

use crate::access::{refusal, Caller};
use crate::auth::Principal;
use crate::App;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Where a job's checkout fetches from, relative to the server's address.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route(
            &format!(
                "{}/{{project}}/{{revision}}/info/refs",
                herd_proto::SOURCE_PREFIX
            ),
            get(info_refs),
        )
        .route(
            &format!(
                "{}/{{project}}/{{revision}}/git-upload-pack",
                herd_proto::SOURCE_PREFIX
            ),
            post(upload_pack),
        )
}

/// Fetches served at once; more wait (a farm starting many jobs at once
/// queues here instead of starting a git per job).
pub const MAX_FETCHES: usize = 16;
/// The longest one fetch may take, waiting included.
const FETCH_DEADLINE: Duration = Duration::from_secs(600);
/// The most a client may send in one request (its wants and haves).
pub const MAX_REQUEST: usize = 4 * 1024 * 1024;

async fn info_refs(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path((project, revision)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let repo = match allowed(&app, caller.map(|c| c.0 .0), &project, &revision).await {
        Ok(repo) => repo,
        Err(r) => return r,
    };
    if query.as_deref() != Some("service=git-upload-pack") {
        return refusal(
            StatusCode::FORBIDDEN,
            "the server's mirrors can only be fetched from (git-upload-pack)",
        );
    }
    if let Err(e) = app.mirrors.ensure_commit(&project, &repo, &revision).await {
        tracing::warn!("cannot serve {revision} of {project} to a worker: {e}");
        return refusal(
            StatusCode::BAD_GATEWAY,
            format!("the server cannot fetch {revision} of {project}: {e}"),
        );
    }
    http_backend(
        &app,
        &project,
        "info/refs",
        "GET",
        query,
        &headers,
        Bytes::new(),
    )
    .await
}

async fn upload_pack(
    State(app): State<Arc<App>>,
    caller: Option<Extension<Caller>>,
    Path((project, revision)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = allowed(&app, caller.map(|c| c.0 .0), &project, &revision).await {
        return r;
    }
    let body = match axum::body::to_bytes(body, MAX_REQUEST).await {
        Ok(b) => b,
        Err(_) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a fetch request may be at most {MAX_REQUEST} bytes"),
            )
        }
    };
    http_backend(
        &app,
        &project,
        "git-upload-pack",
        "POST",
        None,
        &headers,
        body,
    )
    .await
}

/// The project's repository when `caller` may fetch `revision` of it.
async fn allowed(
    app: &App,
    caller: Option<Principal>,
    project: &str,
    revision: &str,
) -> Result<String, Response> {
    let need = "fetching sources needs the token of a worker that runs a job of this project";
    let worker = match caller {
        None => return Err(refusal(StatusCode::UNAUTHORIZED, need)),
        Some(Principal::Worker { worker, .. }) => Some(worker),
        Some(Principal::Admin { .. }) => None,
        Some(_) => return Err(refusal(StatusCode::FORBIDDEN, need)),
    };
    let store_error = |e: crate::store::StoreError| {
        tracing::error!("store error while checking a fetch of {project}: {e}");
        refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server could not read its database; the server log says why",
        )
    };
    let repo = app
        .hub
        .store
        .project(project)
        .await
        .map_err(store_error)?
        .and_then(|p| p.repo)
        .filter(|_| is_full_sha(revision))
        .ok_or_else(|| {
            refusal(
                StatusCode::NOT_FOUND,
                format!("no project `{project}` with a repository, or `{revision}` is not a full commit id"),
            )
        })?;
    if let Some(worker) = worker {
        match app.hub.store.worker_runs_project(&worker, project).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(
                    "refused worker {worker} a fetch of {project}: it runs no job of it"
                );
                return Err(refusal(StatusCode::FORBIDDEN, need));
            }
            Err(e) => return Err(store_error(e)),
        }
    }
    Ok(repo)
}

fn is_full_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Runs `git http-backend` (CGI) on the project's mirror: the request goes
/// in as its environment and standard input, the answer's head and body
/// come back on its standard output and are streamed on.
async fn http_backend(
    app: &App,
    project: &str,
    tail: &str,
    method: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Ok(permit)) = tokio::time::timeout(
        FETCH_DEADLINE,
        Arc::clone(&app.limits.source_fetches).acquire_owned(),
    )
    .await
    else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server serves too many fetches at once: try again",
        );
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .map(str::to_string)
    };
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &app.data_dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", app.mirrors.dir())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{project}.git/{tail}"))
        .env("REQUEST_METHOD", method)
        .env("QUERY_STRING", query.unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        // Any commit of the mirror, also one a force-push left behind.
        .env("GIT_CONFIG_COUNT", "1")
        .env("GIT_CONFIG_KEY_0", "uploadpack.allowAnySHA1InWant")
        .env("GIT_CONFIG_VALUE_0", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (var, name) in [
        ("CONTENT_TYPE", "content-type"),
        ("HTTP_CONTENT_ENCODING", "content-encoding"),
        ("GIT_PROTOCOL", "git-protocol"),
    ] {
        if let Some(v) = header(name) {
            cmd.env(var, v);
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot run git http-backend: {e}");
            return refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server cannot run git; the server log says why",
            );
        }
    };
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return refusal(StatusCode::INTERNAL_SERVER_ERROR, "git's pipes are missing");
    };
    tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let what = format!("{project}/{tail}");
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut n = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            if n < 20 {
                tracing::info!("git http-backend ({what}): {line}");
            }
            n += 1;
        }
    });
    // The process lives until it ends or the deadline, whichever first;
    // the permit with it.
    tokio::spawn(async move {
        let _permit = permit;
        if tokio::time::timeout(FETCH_DEADLINE, child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    });
    let mut reader = BufReader::new(stdout);
    let mut res = Response::builder();
    let mut status = StatusCode::OK;
    let mut line = String::new();
    for _ in 0..64 {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                return refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "git http-backend ended without an answer; the server log says why",
                )
            }
            Ok(_) => {}
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
            return res.status(status).body(body).unwrap_or_else(|_| {
                refusal(StatusCode::INTERNAL_SERVER_ERROR, "a bad answer from git")
            });
        }
        let Some((name, value)) = l.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            status = value
                .split(' ')
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) = (
            header::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            res = res.header(n, v);
        }
    }
    refusal(
        StatusCode::INTERNAL_SERVER_ERROR,
        "git http-backend's answer has too long a head",
    )
    .into_response()
}
