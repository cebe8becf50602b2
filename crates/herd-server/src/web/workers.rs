//! The workers' pages (`/workers`, `/workers/{name}`): state, slots,
//! labels, facts and probe results; pausing and resuming.

use super::session::{render, CsrfForm};
use super::view::{ago, json_map, not_found, server_error, signed_in_or_login, worker_state, Page};
use crate::App;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use std::sync::Arc;

pub struct WorkerRowView {
    pub name: String,
    pub state: String,
    pub since: String,
    pub running: usize,
    pub slots: i64,
    pub platform: String,
    pub labels: String,
    pub cpus: String,
    /// GiB.
    pub memory: String,
    pub version: String,
    /// What its probes found: `python3 3.12.3, gcc 13.2.0`.
    pub capabilities: String,
    /// Who lends it (its `owner` server label).
    pub owner: String,
    /// Its owner was told it is away.
    pub owner_told: bool,
}

#[derive(Template)]
#[template(path = "workers.html")]
pub struct WorkersPage {
    pub page: Page,
    pub workers: Vec<WorkerRowView>,
}

pub async fn workers(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let rows = match app.hub.store.workers().await {
        Ok(r) => r,
        Err(e) => return server_error(e),
    };
    let live = app.hub.live_workers();
    let mut server_labels = app.hub.store.all_worker_labels().await.unwrap_or_default();
    let mut probes = app
        .hub
        .store
        .probes_by_worker(None)
        .await
        .unwrap_or_default();
    let workers = rows
        .iter()
        .map(|w| {
            let facts = json_map(&w.facts);
            let found = probes
                .remove(&w.name)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p.present)
                .map(|p| match p.version {
                    Some(v) => format!("{} {v}", p.name),
                    None => p.name,
                })
                .collect::<Vec<_>>()
                .join(", ");
            let given = server_labels.remove(&w.name).unwrap_or_default();
            WorkerRowView {
                owner: given
                    .get(crate::owners::OWNER_LABEL)
                    .cloned()
                    .unwrap_or_default(),
                owner_told: w.away_notified_at.is_some(),
                cpus: facts.get("cpus").cloned().unwrap_or_default(),
                memory: facts.get("memory").cloned().unwrap_or_default(),
                version: w.version.clone(),
                capabilities: found,
                name: w.name.clone(),
                state: worker_state(&app, w),
                since: ago(w.last_change),
                running: live.get(&w.name).map_or(0, Vec::len),
                slots: w.slots,
                platform: format!(
                    "{} {}",
                    facts.get("os").cloned().unwrap_or_default(),
                    facts.get("arch").cloned().unwrap_or_default()
                ),
                labels: given
                    .iter()
                    .map(|(k, v)| format!("{k}={v} (server)"))
                    .chain(json_map(&w.labels).iter().map(|(k, v)| format!("{k}={v}")))
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        })
        .collect();
    render(&WorkersPage {
        page: Page::new(&app, &headers, true),
        workers,
    })
}

pub struct ProbeView {
    pub name: String,
    pub present: bool,
    pub version: String,
    pub output: String,
}

#[derive(Template)]
#[template(path = "worker.html")]
pub struct WorkerPage {
    pub page: Page,
    pub name: String,
    pub state: String,
    pub since: String,
    pub slots: i64,
    pub version: String,
    pub paused: bool,
    pub running: Vec<(i64, String)>,
    /// (build, builder/job, attempt, state, when)
    pub recent: Vec<(i64, String, i64, String, String)>,
    /// Labels the worker states itself.
    pub labels: Vec<(String, String)>,
    /// Labels the server gave it (enrollment, `herd workers label`).
    pub server_labels: Vec<(String, String)>,
    pub facts: Vec<(String, String)>,
    pub probes: Vec<ProbeView>,
    /// "12.3 GB free of 100.0 GB · 7 workspaces"; empty before it said.
    pub disk: String,
    /// Why it takes no new jobs for its disk; empty when it does.
    pub disk_low: String,
}

pub async fn worker(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let store = &app.hub.store;
    let w = match store.worker(&name).await {
        Ok(Some(w)) => w,
        Ok(None) => return not_found(format!("no worker `{name}` has connected yet")),
        Err(e) => return server_error(e),
    };
    let probes = store.worker_probes(&name).await.unwrap_or_default();
    let mut running = Vec::new();
    for a in store.live_attempts(Some(&name)).await.unwrap_or_default() {
        if let Ok(b) = store.job_build(a.job_id).await {
            running.push((b, format!("attempt {} (job {})", a.number, a.job_id)));
        }
    }
    let recent = store
        .recent_attempts(&name, 20)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(b, job, n, st, at)| (b, job, n, st, ago(at)))
        .collect();
    let disk = super::view::disk_of(&app, &w);
    render(&WorkerPage {
        page: Page::new(&app, &headers, true),
        disk: disk
            .as_ref()
            .map(|d| {
                format!(
                    "{} free of {} · {} workspace(s)",
                    herd_core::size::human_bytes(d.free_bytes),
                    herd_core::size::human_bytes(d.total_bytes),
                    d.workspaces
                )
            })
            .unwrap_or_default(),
        disk_low: disk.and_then(|d| d.low).unwrap_or_default(),
        recent,
        state: worker_state(&app, &w),
        since: ago(w.last_change),
        slots: w.slots,
        version: w.version.clone(),
        paused: w.paused,
        running,
        labels: json_map(&w.labels).into_iter().collect(),
        server_labels: store
            .worker_labels(&name)
            .await
            .unwrap_or_default()
            .into_iter()
            .collect(),
        facts: json_map(&w.facts).into_iter().collect(),
        probes: probes
            .into_iter()
            .map(|p| ProbeView {
                name: p.name,
                present: p.present,
                version: p.version.unwrap_or_default(),
                output: p.output.unwrap_or_default(),
            })
            .collect(),
        name,
    })
}

pub async fn pause(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_paused(app, headers, name, f, true).await
}

pub async fn resume(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_paused(app, headers, name, f, false).await
}

async fn set_paused(
    app: Arc<App>,
    headers: HeaderMap,
    name: String,
    f: CsrfForm,
    paused: bool,
) -> Response {
    let back = format!("/workers/{name}");
    if let Some(r) = signed_in_or_login(&app, &headers, &f.csrf, &back) {
        return r;
    }
    match app.hub.set_paused(&name, paused).await {
        Ok(true) => Redirect::to(&back).into_response(),
        Ok(false) => not_found(format!("no worker `{name}`")),
        Err(e) => server_error(e),
    }
}
