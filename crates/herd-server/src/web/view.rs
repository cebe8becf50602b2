//! What every page shares: the frame (`Page`), error pages, and the small
//! formatters (times, durations, revisions, escaping) the view models use.

use super::session::Viewer;
use crate::App;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::BTreeMap;

/// What every page's frame needs.
pub struct Page {
    pub live: bool,
    pub signed_in: bool,
    pub csrf: String,
}

impl Page {
    pub fn new(app: &App, headers: &HeaderMap, live: bool) -> Page {
        let Viewer {
            signed_in, csrf, ..
        } = app.sessions.viewer(headers);
        Page {
            live,
            signed_in,
            csrf,
        }
    }
}

/// A failure on this server: the detail goes to the log, the page says
/// where to look.
pub(super) fn server_error(e: impl std::fmt::Display) -> Response {
    tracing::error!("page failed: {e}");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "server error: the server log says why",
    )
        .into_response()
}

pub(super) fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, what).into_response()
}

pub(super) fn ago(ms: i64) -> String {
    let secs = (crate::store::now_ms() - ms).max(0) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

pub(super) fn duration(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => fmt_ms(e - s),
        (Some(s), None) => format!("{}…", fmt_ms(crate::store::now_ms() - s)),
        _ => String::new(),
    }
}

pub(super) fn fmt_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

pub(super) fn short(rev: &Option<String>) -> String {
    rev.as_deref()
        .map(|r| r[..r.len().min(10)].to_string())
        .unwrap_or_default()
}

/// Escapes text for HTML that is written by hand (grid cells, the
/// timeline); templates escape by themselves.
pub(super) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Where a build came from, in a few words: its branch, or who tried what.
pub(super) fn origin_label(b: &crate::store::BuildRow) -> String {
    use crate::store::BuildKind;
    match (b.kind, &b.branch, &b.sender) {
        (BuildKind::Try, _, Some(sender)) => format!("try by {sender}"),
        (BuildKind::Try, _, None) => "try".into(),
        (BuildKind::PullRequest, _, sender) => {
            let n = b.pull_request.unwrap_or_default();
            match sender {
                Some(s) if !s.is_empty() => format!("PR #{n} by {s}"),
                _ => format!("PR #{n}"),
            }
        }
        (BuildKind::Tag, _, _) => format!("tag {}", b.ref_name.as_deref().unwrap_or("")),
        (BuildKind::Schedule, Some(branch), _) => format!("scheduled · {branch}"),
        (BuildKind::Schedule, None, _) => "scheduled".into(),
        (_, Some(branch), _) => branch.clone(),
        _ => String::new(),
    }
}

/// Where a build's origin links to: a pull request's page at its forge
/// (as its webhook told), else nowhere.
pub(super) async fn origin_url(app: &App, b: &crate::store::BuildRow) -> String {
    let Some(n) = b.pull_request else {
        return String::new();
    };
    match app.hub.store.pull_request(&b.project, n).await {
        Ok(Some(p)) if p.url.starts_with("https://") || p.url.starts_with("http://") => p.url,
        _ => String::new(),
    }
}

pub(super) fn worker_state(app: &App, w: &crate::store::WorkerRow) -> String {
    if app.hub.quarantined_until(&w.name).is_some() {
        "quarantined".into()
    } else if w.paused {
        "paused".into()
    } else if w.online && disk_of(app, w).is_some_and(|d| d.low.is_some()) {
        "low-disk".into()
    } else if w.online {
        "online".into()
    } else {
        "offline".into()
    }
}

/// What the worker last said of its disk: to this server if it is
/// connected here, else as stored.
pub(super) fn disk_of(app: &App, w: &crate::store::WorkerRow) -> Option<herd_proto::DiskReport> {
    app.hub
        .live_disk(&w.name)
        .or_else(|| serde_json::from_str(w.disk.as_deref()?).ok())
}

pub(super) fn json_map(s: &str) -> BTreeMap<String, String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// None when the request carries a signed-in session and its CSRF token;
/// else the way to the sign-in page, back here after.
pub(super) fn signed_in_or_login(
    app: &App,
    headers: &HeaderMap,
    csrf: &str,
    back: &str,
) -> Option<Response> {
    if app.sessions.check(headers, csrf) {
        return None;
    }
    Some(Redirect::to(&format!("/login?next={back}")).into_response())
}
