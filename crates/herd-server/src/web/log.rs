//! A step's log page (`/attempts/{id}/steps/{idx}`): a page of the log
//! (by default its end), ANSI colours, line anchors, live while it runs.

use super::session::render;
use super::view::{not_found, server_error, Page};
use crate::App;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use std::sync::Arc;

/// Log bytes shown per page of the log view.
const LOG_PAGE: u64 = 256 * 1024;

#[derive(Template)]
#[template(path = "log.html")]
pub struct LogPage {
    pub page: Page,
    pub title: String,
    pub state: String,
    pub build: i64,
    pub attempt: i64,
    /// The attempt's number within its job (1, 2, …), as the build page says.
    pub number: i64,
    /// `builder/job`.
    pub job: String,
    pub job_id: i64,
    pub worker: String,
    pub duration: String,
    pub exit_code: Option<i64>,
    /// The steps before and after this one: index and name.
    pub prev_step: Option<(i64, String)>,
    pub next_step: Option<(i64, String)>,
    pub idx: i64,
    pub size: u64,
    pub offset: u64,
    pub limit: u64,
    pub end: u64,
    pub prev: Option<u64>,
    pub next: Option<u64>,
    pub follow: bool,
    pub first_line: u64,
    pub lines: String,
    /// When the log was removed (`keep: {logs_days}`), if it was.
    pub expired: Option<String>,
}

#[derive(Deserialize)]
pub struct LogQuery {
    offset: Option<u64>,
}

pub async fn log(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((attempt, idx)): Path<(i64, i64)>,
    Query(q): Query<LogQuery>,
) -> Response {
    let store = &app.hub.store;
    let (a, step) = match (store.attempt(attempt).await, store.step(attempt, idx).await) {
        (Ok(Some(a)), Ok(Some(s))) => (a, s),
        (Err(e), _) | (_, Err(e)) => return server_error(e),
        _ => return not_found(format!("no step {idx} in attempt {attempt}")),
    };
    let build = match store.job_build(a.job_id).await {
        Ok(b) => b,
        Err(e) => return server_error(e),
    };
    let detail = match store.build_detail(build).await {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    let job = detail
        .as_ref()
        .and_then(|d| d.jobs.iter().find(|j| j.id == a.job_id))
        .map(|j| format!("{}/{}", j.builder, j.name))
        .unwrap_or_default();
    let neighbour = |i: i64| {
        detail.as_ref().and_then(|d| {
            d.steps
                .iter()
                .find(|s| s.attempt_id == attempt && s.idx == i)
                .map(|s| (i, s.name.clone()))
        })
    };
    let (prev_step, next_step) = (neighbour(idx - 1), neighbour(idx + 1));
    let expired = match store.attempt_logs_expired(attempt).await {
        Ok(t) => t.map(super::view::ago),
        Err(e) => return server_error(e),
    };
    let size = step.log_size as u64;
    // By default the end of the log (where the action is), a page of it.
    let offset = q
        .offset
        .unwrap_or_else(|| size.saturating_sub(LOG_PAGE))
        .min(size);
    let data = match store.read_log(attempt, idx, offset, LOG_PAGE).await {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    let mut text = String::from_utf8_lossy(&data).into_owned();
    // Start at a line boundary when not at the start of the log.
    let mut start = offset;
    if offset > 0 {
        if let Some(nl) = text.find('\n') {
            start += nl as u64 + 1;
            text = text[nl + 1..].to_string();
        }
    }
    let end = offset + data.len() as u64;
    let live = !step.state.is_finished() && !a.state.is_finished();
    let follow = live && end >= size;
    // Line numbers count from the start of the page (the log is not scanned whole).
    let first_line = 1;
    let page = Page::new(&app, &headers, false);
    render(&LogPage {
        page,
        title: format!("{} (step {idx})", step.name),
        state: step.state.to_string(),
        build,
        attempt,
        number: a.number,
        job,
        job_id: a.job_id,
        worker: a.worker.clone(),
        duration: super::view::duration(step.started_at, step.finished_at),
        exit_code: step.exit_code,
        prev_step,
        next_step,
        idx,
        size,
        offset: start,
        limit: LOG_PAGE,
        end,
        prev: (offset > 0).then(|| offset.saturating_sub(LOG_PAGE)),
        next: (end < size).then_some(end),
        follow,
        first_line,
        lines: super::ansi::to_html(&text, first_line),
        expired,
    })
}
