//! The pages: view models built from the store and the hub, rendered by
//! the templates. Templates get plain strings; the work happens here.

use super::session::{render, CsrfForm, Viewer};
use crate::builds::{start_build, StartBuild};
use crate::store::{JobSpec, SplitRow};
use crate::App;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use herd_core::split::Outcome;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

type AppState = State<Arc<App>>;

/// Rows of the grid.
const GRID_ROWS: i64 = 100;
/// Log bytes shown per page of the log view.
const LOG_PAGE: u64 = 256 * 1024;
/// Passing tests listed on the build page (failures are all listed).
const MAX_TEST_ROWS: usize = 500;

/// What every page's frame needs.
pub struct Page {
    pub live: bool,
    pub signed_in: bool,
    pub csrf: String,
}

impl Page {
    pub fn new(app: &App, headers: &HeaderMap, live: bool) -> Page {
        let Viewer { signed_in, csrf } = app.sessions.viewer(headers);
        Page {
            live,
            signed_in,
            csrf,
        }
    }
}

pub(super) fn server_error(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("server error: {e}"),
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

fn duration(start: Option<i64>, end: Option<i64>) -> String {
    match (start, end) {
        (Some(s), Some(e)) => fmt_ms(e - s),
        (Some(s), None) => format!("{}…", fmt_ms(crate::store::now_ms() - s)),
        _ => String::new(),
    }
}

fn fmt_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

fn short(rev: &Option<String>) -> String {
    rev.as_deref()
        .map(|r| r[..r.len().min(10)].to_string())
        .unwrap_or_default()
}

// ---- grid -----------------------------------------------------------------

pub struct GridRow {
    pub id: i64,
    pub state: String,
    pub revision: String,
    pub message: String,
    pub author: String,
    pub when: String,
    pub project: String,
    /// The branch of a change, `try by …` for a try build.
    pub origin: String,
    /// The row's most common cell state (its cells need no class of their own).
    pub common: &'static str,
    /// The row's cells, prerendered: a grid of 200 x 100 must stay small.
    pub cells: String,
}

pub struct GridColumn {
    pub name: String,
    /// The project the column's builder belongs to (empty when several).
    pub project: String,
    pub capable: usize,
    pub online: usize,
    pub busy: usize,
    pub workers_title: String,
}

#[derive(Template)]
#[template(path = "grid.html")]
pub struct Grid {
    pub page: Page,
    pub projects: Vec<String>,
    pub filter_project: String,
    pub filter_branch: String,
    pub filter_builder: String,
    pub columns: Vec<GridColumn>,
    pub rows: Vec<GridRow>,
}

#[derive(Deserialize, Default)]
pub struct GridQuery {
    #[serde(default)]
    pub project: String,
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub builder: String,
}

pub async fn grid(
    State(app): AppState,
    headers: HeaderMap,
    Query(q): Query<GridQuery>,
) -> Response {
    match grid_page(&app, Page::new(&app, &headers, true), &q).await {
        Ok(g) => render(&g),
        Err(e) => server_error(e),
    }
}

/// One-letter cell classes (the stylesheet colours them): a cell costs a
/// few bytes, so that 20,000 of them make a page that loads at once.
fn cell_class(state: &str) -> &'static str {
    match state {
        "success" => "s",
        "failure" => "f",
        "error" => "e",
        "running" => "r",
        "queued" => "q",
        "cancelled" => "c",
        "skipped" => "k",
        _ => "n",
    }
}

/// A glyph as well as a colour: the state reads without colour vision.
fn glyph(state: &str) -> &'static str {
    match state {
        "success" => "✓",
        "failure" => "✗",
        "error" => "!",
        "running" => "▶",
        "queued" => "·",
        _ => "–",
    }
}

/// Builds the grid (also used by the benchmark).
pub async fn grid_page(
    app: &App,
    page: Page,
    q: &GridQuery,
) -> Result<Grid, crate::store::StoreError> {
    let store = &app.hub.store;
    let project = (!q.project.is_empty()).then_some(q.project.as_str());
    let mut builds = store.builds(project, None, None, GRID_ROWS * 2).await?;
    if !q.branch.is_empty() {
        builds.retain(|b| b.ref_name.as_deref() == Some(q.branch.as_str()));
    }
    builds.truncate(GRID_ROWS as usize);
    let lo = builds.iter().map(|b| b.id).min().unwrap_or(0);
    let hi = builds.iter().map(|b| b.id).max().unwrap_or(-1);
    let jobs = store.grid_jobs(lo, hi).await?;
    let specs: HashMap<String, JobSpec> = store.latest_specs(lo, hi).await?.into_iter().collect();
    // Columns: builders in order of first appearance.
    let mut columns: Vec<String> = Vec::new();
    let mut col_index: HashMap<String, usize> = HashMap::new();
    for (_, _, builder, _, _) in &jobs {
        if (!q.builder.is_empty() && *builder != q.builder) || col_index.contains_key(builder) {
            continue;
        }
        col_index.insert(builder.clone(), columns.len());
        columns.push(builder.clone());
    }
    // The project of each column, when one project has it.
    let project_of: HashMap<i64, &str> =
        builds.iter().map(|b| (b.id, b.project.as_str())).collect();
    let mut col_project: HashMap<String, Option<String>> = HashMap::new();
    for (_, build, builder, _, _) in &jobs {
        let p = project_of.get(build).map(|p| p.to_string());
        col_project
            .entry(builder.clone())
            .and_modify(|e| {
                if *e != p {
                    *e = None;
                }
            })
            .or_insert(p);
    }
    // Per build, per column: the jobs (id, name, state).
    let mut by_build: HashMap<i64, Vec<Vec<CellJob>>> = HashMap::new();
    for (id, build, builder, name, state) in &jobs {
        let Some(&ci) = col_index.get(builder) else {
            continue;
        };
        by_build
            .entry(*build)
            .or_insert_with(|| vec![Vec::new(); columns.len()])[ci]
            .push((*id, name.as_str(), state.as_str()));
    }
    let mut rows = Vec::with_capacity(builds.len());
    for b in &builds {
        let Some(cells) = by_build.get(&b.id) else {
            if q.builder.is_empty() {
                rows.push(grid_row(b, &[], "n"));
            }
            continue;
        };
        // The most common single-job state of the row.
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for c in cells {
            if let [(_, _, st)] = c.as_slice() {
                *counts.entry(cell_class(st)).or_default() += 1;
            } else if c.is_empty() {
                *counts.entry("n").or_default() += 1;
            }
        }
        let common = counts
            .into_iter()
            .max_by_key(|(k, n)| (*n, *k))
            .map(|(k, _)| k)
            .unwrap_or("n");
        rows.push(grid_row(b, cells, common));
    }
    let columns = columns
        .into_iter()
        .map(|name| {
            let why = app.hub.why_not(
                &specs
                    .get(&name)
                    .map(|s| s.requires.clone())
                    .unwrap_or_default(),
            );
            let capable: Vec<&crate::hub::WorkerWhyNot> =
                why.workers.iter().filter(|w| w.unmet.is_none()).collect();
            let busy = capable.iter().filter(|w| w.state == "busy").count();
            let workers_title = if capable.is_empty() {
                "no connected worker can run it".to_string()
            } else {
                capable
                    .iter()
                    .map(|w| format!("{} ({})", w.worker, w.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            GridColumn {
                project: col_project
                    .get(&name)
                    .cloned()
                    .flatten()
                    .unwrap_or_default(),
                name,
                capable: capable.len(),
                online: capable.len(),
                busy,
                workers_title,
            }
        })
        .collect();
    let projects = store
        .projects()
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    Ok(Grid {
        page,
        projects,
        filter_project: q.project.clone(),
        filter_branch: q.branch.clone(),
        filter_builder: q.builder.clone(),
        columns,
        rows,
    })
}

/// A job in a grid cell: id, name, state.
type CellJob<'a> = (i64, &'a str, &'a str);

fn grid_row(b: &crate::store::BuildRow, cells: &[Vec<CellJob>], common: &'static str) -> GridRow {
    let mut html = String::with_capacity(cells.len() * 6);
    for c in cells {
        match c.as_slice() {
            [] if common == "n" => html.push_str("<td>"),
            [] => html.push_str("<td class=n>"),
            [(_, name, st)] if *name == herd_core::pipeline::MAIN_JOB => {
                let class = cell_class(st);
                if class == common {
                    html.push_str("<td>");
                } else {
                    let _ = write!(html, "<td class={class}>");
                }
                html.push_str(glyph(st));
            }
            jobs => {
                html.push_str("<td class=m>");
                for (id, name, st) in jobs {
                    let _ = write!(
                        html,
                        "<a class={} href=/builds/{}#job-{id}>{} {}</a>",
                        cell_class(st),
                        b.id,
                        glyph(st),
                        esc(name)
                    );
                }
            }
        }
    }
    GridRow {
        id: b.id,
        state: b.state.clone(),
        revision: short(&b.revision),
        message: b.message.clone().or(b.error.clone()).unwrap_or_default(),
        author: b.author.clone().unwrap_or_default(),
        when: ago(b.created_at),
        project: b.project.clone(),
        origin: origin_label(b),
        common,
        cells: html,
    }
}

/// Where a build came from, in a few words: its branch, or who tried what.
fn origin_label(b: &crate::store::BuildRow) -> String {
    match (b.kind.as_str(), &b.branch, &b.sender) {
        ("try", _, Some(sender)) => format!("try by {sender}"),
        ("try", _, None) => "try".into(),
        (_, Some(branch), _) => branch.clone(),
        _ => String::new(),
    }
}

// ---- builder ----------------------------------------------------------------

#[derive(Template)]
#[template(path = "builder.html")]
pub struct BuilderPage {
    pub page: Page,
    pub project: String,
    pub name: String,
    pub requires: String,
    pub capable: Vec<(String, String)>,
    pub incapable: Vec<(String, String)>,
    pub waiting: Vec<(i64, String, String)>,
    pub recent: Vec<(i64, String, String, String)>,
}

/// `/builders/{project}/{builder}`: who can run it, who cannot and why,
/// what waits, what ran.
pub async fn builder(
    State(app): AppState,
    headers: HeaderMap,
    Path((project, name)): Path<(String, String)>,
) -> Response {
    let store = &app.hub.store;
    let builds = match store.builds(Some(&project), None, None, 50).await {
        Ok(b) => b,
        Err(e) => return server_error(e),
    };
    let ids: Vec<i64> = builds.iter().map(|b| b.id).collect();
    let jobs = match store.jobs_of_builds(&ids).await {
        Ok(j) => j,
        Err(e) => return server_error(e),
    };
    let mine: Vec<&crate::store::JobRow> = jobs.iter().filter(|j| j.builder == name).collect();
    let Some(latest) = mine.iter().max_by_key(|j| j.id) else {
        return not_found(format!(
            "no recent build of project `{project}` has a builder `{name}`"
        ));
    };
    let spec: JobSpec = serde_json::from_str(&latest.spec).unwrap_or_default();
    let why = app.hub.why_not(&spec.requires);
    let (mut capable, mut incapable) = (Vec::new(), Vec::new());
    for w in &why.workers {
        match &w.unmet {
            None => capable.push((w.worker.clone(), w.state.to_string())),
            Some(u) => incapable.push((w.worker.clone(), u.clone())),
        }
    }
    let waiting = mine
        .iter()
        .filter(|j| j.state == "queued")
        .map(|j| (j.build_id, j.name.clone(), why.summary.clone()))
        .collect();
    let when: HashMap<i64, i64> = builds.iter().map(|b| (b.id, b.created_at)).collect();
    let mut recent: Vec<(i64, String, String, String)> = mine
        .iter()
        .map(|j| {
            (
                j.build_id,
                j.name.clone(),
                j.state.clone(),
                when.get(&j.build_id).map(|t| ago(*t)).unwrap_or_default(),
            )
        })
        .collect();
    recent.sort_by_key(|r| std::cmp::Reverse(r.0));
    render(&BuilderPage {
        page: Page::new(&app, &headers, true),
        requires: spec
            .requires
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        project,
        name,
        capable,
        incapable,
        waiting,
        recent,
    })
}

// ---- build ----------------------------------------------------------------

pub struct StepView {
    pub idx: i64,
    pub name: String,
    pub state: String,
    pub duration: String,
    pub detail: String,
}

pub struct AttemptView {
    pub id: i64,
    pub number: i64,
    pub worker: String,
    pub state: String,
    pub reason: Option<String>,
    pub steps: Vec<StepView>,
}

pub struct JobView {
    pub id: i64,
    /// The first job of its builder on this page (it carries the builder's anchor).
    pub first_of_builder: bool,
    pub builder: String,
    pub name: String,
    pub state: String,
    pub error: Option<String>,
    pub waiting: Option<String>,
    pub why: Vec<String>,
    pub attempts: Vec<AttemptView>,
}

pub struct TestRow {
    pub id: String,
    pub outcome: String,
    pub secs: String,
    pub runs: u32,
    pub worker: String,
    pub message: Option<String>,
}

pub struct TestsView {
    pub title: String,
    pub summary: String,
    pub junit: String,
    pub rows: Vec<TestRow>,
    pub more: usize,
}

#[derive(Template)]
#[template(path = "build.html")]
pub struct BuildPage {
    pub page: Page,
    pub id: i64,
    pub state: String,
    pub project: String,
    pub revision: String,
    pub message: String,
    pub author: String,
    pub reason: String,
    pub origin: String,
    pub when: String,
    pub error: Option<String>,
    pub running: bool,
    pub any_failed: bool,
    pub timeline: String,
    pub tests: Vec<TestsView>,
    pub jobs: Vec<JobView>,
}

pub async fn build(State(app): AppState, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    let page = Page::new(&app, &headers, true);
    match build_page(&app, page, id).await {
        Ok(Some(b)) => render(&b),
        Ok(None) => not_found(format!("no build {id}")),
        Err(e) => server_error(e),
    }
}

pub async fn build_page(
    app: &App,
    page: Page,
    id: i64,
) -> Result<Option<BuildPage>, crate::store::StoreError> {
    let store = &app.hub.store;
    let Some(d) = store.build_detail(id).await? else {
        return Ok(None);
    };
    let splits = store.splits_of_build(id).await?;
    let mut jobs = Vec::new();
    for j in &d.jobs {
        let (waiting, why) = if j.state == "queued" {
            let spec: JobSpec = serde_json::from_str(&j.spec).unwrap_or_default();
            let w = app.hub.why_not(&spec.requires);
            let why = w
                .workers
                .iter()
                .map(|x| match &x.unmet {
                    Some(u) => format!("{}: {u}", x.worker),
                    None => format!("{}: {}", x.worker, x.state),
                })
                .collect();
            (Some(w.summary), why)
        } else {
            (None, Vec::new())
        };
        let attempts = d
            .attempts
            .iter()
            .filter(|a| a.job_id == j.id)
            .map(|a| AttemptView {
                id: a.id,
                number: a.number,
                worker: a.worker.clone(),
                state: a.state.clone(),
                reason: a.reason.clone(),
                steps: d
                    .steps
                    .iter()
                    .filter(|s| s.attempt_id == a.id)
                    .map(|s| StepView {
                        idx: s.idx,
                        name: s.name.clone(),
                        state: s.state.clone(),
                        duration: duration(s.started_at, s.finished_at),
                        detail: [s.exit_code.map(|c| format!("exit {c}")), s.message.clone()]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(" — "),
                    })
                    .collect(),
            })
            .collect();
        jobs.push(JobView {
            first_of_builder: !jobs.iter().any(|x: &JobView| x.builder == j.builder),
            id: j.id,
            builder: j.builder.clone(),
            name: j.name.clone(),
            state: j.state.clone(),
            error: j.error.clone(),
            waiting,
            why,
            attempts,
        });
    }
    let b = &d.build;
    Ok(Some(BuildPage {
        page,
        id,
        state: b.state.clone(),
        project: b.project.clone(),
        revision: short(&b.revision),
        message: b.message.clone().unwrap_or_default(),
        author: b.author.clone().unwrap_or_default(),
        reason: b.reason.clone(),
        origin: origin_label(b),
        when: ago(b.created_at),
        error: b.error.clone(),
        running: matches!(b.state.as_str(), "queued" | "running"),
        any_failed: d
            .jobs
            .iter()
            .any(|j| matches!(j.state.as_str(), "failure" | "error")),
        timeline: timeline_svg(&d, &splits),
        tests: splits.iter().map(tests_view).collect(),
        jobs,
    }))
}

fn tests_view(s: &SplitRow) -> TestsView {
    let rank = |o: Option<Outcome>| match o {
        Some(Outcome::Failed | Outcome::Lost | Outcome::NotRun) => 0,
        Some(Outcome::Flaky) => 1,
        None => 2,
        Some(Outcome::Skipped) => 3,
        Some(Outcome::Passed) => 4,
    };
    let mut tests: Vec<_> = s.data.tests.iter().collect();
    tests.sort_by_key(|(id, t)| (rank(t.outcome), id.as_str()));
    let interesting = tests.iter().filter(|(_, t)| rank(t.outcome) < 4).count();
    let shown = interesting.max(MAX_TEST_ROWS.min(tests.len()));
    let rows = tests
        .iter()
        .take(shown)
        .map(|(id, t)| TestRow {
            id: id.to_string(),
            outcome: t
                .outcome
                .map(Outcome::as_str)
                .unwrap_or("pending")
                .to_string(),
            secs: t.secs.map(|x| format!("{x:.2} s")).unwrap_or_default(),
            runs: t.runs,
            worker: t.worker.clone().unwrap_or_default(),
            message: t.message.clone(),
        })
        .collect();
    TestsView {
        title: format!("{}/{} {}", s.builder, s.job, s.step_name),
        summary: s.summary.clone().unwrap_or_default(),
        junit: format!("/api/v1/splits/{}/junit.xml", s.id),
        rows,
        more: tests.len() - shown,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One lane per worker; a bar per attempt, and per split batch.
fn timeline_svg(d: &crate::store::BuildDetail, splits: &[SplitRow]) -> String {
    struct Bar {
        lane: String,
        /// The attempt the bar is (or, for a batch, runs in).
        attempt: i64,
        start: i64,
        end: i64,
        class: String,
        label: String,
        href: String,
    }
    let now = crate::store::now_ms();
    let mut bars: Vec<Bar> = Vec::new();
    for a in &d.attempts {
        let job = d.jobs.iter().find(|j| j.id == a.job_id);
        let start = d
            .steps
            .iter()
            .filter(|s| s.attempt_id == a.id)
            .filter_map(|s| s.started_at)
            .min()
            .unwrap_or(a.created_at);
        bars.push(Bar {
            lane: a.worker.clone(),
            attempt: a.id,
            start,
            end: a.finished_at.unwrap_or(now),
            class: format!("st-{}", a.state),
            label: job
                .map(|j| format!("{}/{} attempt {}: {}", j.builder, j.name, a.number, a.state))
                .unwrap_or_default(),
            href: format!("#job-{}", a.job_id),
        });
    }
    for s in splits {
        for b in &s.data.batches {
            bars.push(Bar {
                lane: b.worker.clone(),
                attempt: b.attempt,
                start: b.started_ms,
                end: b.finished_ms.unwrap_or(now),
                class: format!(
                    "batch bs-{}",
                    match b.state {
                        herd_core::split::BatchState::Running => "running",
                        herd_core::split::BatchState::Done => "done",
                        herd_core::split::BatchState::Lost => "lost",
                    }
                ),
                label: format!(
                    "batch {} ({} tests){}",
                    b.batch.id,
                    b.batch.tests.len(),
                    if b.state == herd_core::split::BatchState::Lost {
                        ": lost"
                    } else {
                        ""
                    }
                ),
                href: format!("#job-{}", b.job),
            });
        }
    }
    if bars.is_empty() {
        return String::new();
    }
    let t0 = bars.iter().map(|b| b.start).min().unwrap_or(0);
    let t1 = bars
        .iter()
        .map(|b| b.end)
        .max()
        .unwrap_or(t0 + 1)
        .max(t0 + 1);
    // A worker with several slots runs attempts side by side: each attempt
    // gets the first row of its worker's lane that is free at its start;
    // batches go in their attempt's row.
    let mut workers: Vec<String> = bars.iter().map(|b| b.lane.clone()).collect();
    workers.sort();
    workers.dedup();
    let mut row_of: HashMap<i64, usize> = HashMap::new();
    let mut lanes: Vec<String> = Vec::new();
    for w in &workers {
        let mut attempts: Vec<&Bar> = bars
            .iter()
            .filter(|b| &b.lane == w && !b.class.starts_with("batch"))
            .collect();
        attempts.sort_by_key(|b| b.start);
        let mut ends: Vec<i64> = Vec::new();
        for b in attempts {
            let slot = match ends.iter().position(|e| *e <= b.start) {
                Some(i) => i,
                None => {
                    ends.push(0);
                    ends.len() - 1
                }
            };
            ends[slot] = b.end;
            row_of.insert(b.attempt, lanes.len() + slot);
        }
        for i in 0..ends.len().max(1) {
            lanes.push(if i == 0 { w.clone() } else { String::new() });
        }
    }
    let (label_w, width, lane_h) = (140.0, 860.0, 22.0);
    let height = lane_h * lanes.len() as f64 + 24.0;
    let x = |t: i64| label_w + (t - t0) as f64 / (t1 - t0) as f64 * (width - label_w - 10.0);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"timeline: which worker ran what, when\">"
    );
    for (i, lane) in lanes.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
        let y = i as f64 * lane_h;
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.1}\" class=\"lane\">{}</text>",
            y + 15.0,
            esc(lane)
        );
    }
    // Attempts first (under), batches on top.
    for b in &bars {
        let Some(&i) = row_of.get(&b.attempt) else {
            continue;
        };
        let batch = b.class.starts_with("batch");
        let y = i as f64 * lane_h + if batch { 5.0 } else { 2.0 };
        let h = if batch { lane_h - 10.0 } else { lane_h - 4.0 };
        let (x0, x1) = (x(b.start), x(b.end.max(b.start)));
        let _ = write!(
            svg,
            "<a href=\"{}\"><rect x=\"{x0:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" class=\"{}\"><title>{} ({})</title></rect></a>",
            esc(&b.href),
            (x1 - x0).max(2.0),
            esc(&b.class),
            esc(&b.label),
            fmt_ms(b.end - b.start)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{label_w}\" y=\"{:.1}\" class=\"axis\">0</text><text x=\"{:.1}\" y=\"{:.1}\" class=\"axis\" text-anchor=\"end\">{}</text></svg>",
        height - 4.0,
        width - 10.0,
        height - 4.0,
        fmt_ms(t1 - t0)
    );
    svg
}

fn signed_in_or_login(app: &App, headers: &HeaderMap, csrf: &str, back: &str) -> Option<Response> {
    if app.sessions.check(headers, csrf) {
        return None;
    }
    Some(Redirect::to(&format!("/login?next={back}")).into_response())
}

pub async fn cancel(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let back = format!("/builds/{id}");
    if let Some(r) = signed_in_or_login(&app, &headers, &f.csrf, &back) {
        return r;
    }
    match app.hub.cancel_build(id).await {
        Ok(()) => Redirect::to(&back).into_response(),
        Err(e) => server_error(e),
    }
}

#[derive(Deserialize)]
pub struct RebuildQuery {
    #[serde(default)]
    failed: Option<String>,
}

pub async fn rebuild(
    State(app): AppState,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<RebuildQuery>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let back = format!("/builds/{id}");
    if let Some(r) = signed_in_or_login(&app, &headers, &f.csrf, &back) {
        return r;
    }
    let d = match app.hub.store.build_detail(id).await {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(format!("no build {id}")),
        Err(e) => return server_error(e),
    };
    // Rebuild the same revision: all builders, or only the failed ones.
    let mut builders: Vec<Option<String>> = if q.failed.is_some() {
        let mut b: Vec<Option<String>> = d
            .jobs
            .iter()
            .filter(|j| matches!(j.state.as_str(), "failure" | "error"))
            .map(|j| Some(j.builder.clone()))
            .collect();
        b.dedup();
        b
    } else {
        vec![None]
    };
    if builders.is_empty() {
        builders.push(None);
    }
    let mut last = id;
    for builder in builders {
        let req = StartBuild {
            project: d.build.project.clone(),
            builder,
            rev: d.build.revision.clone(),
            priority: d.build.priority,
            reason: Some(format!("rebuild of build {id} from the web page")),
        };
        match start_build(&app, req).await {
            Ok(new) => last = new,
            Err(e) => return (StatusCode::BAD_REQUEST, e.message).into_response(),
        }
    }
    Redirect::to(&format!("/builds/{last}")).into_response()
}

// ---- log ------------------------------------------------------------------

#[derive(Template)]
#[template(path = "log.html")]
pub struct LogPage {
    pub page: Page,
    pub title: String,
    pub state: String,
    pub build: i64,
    pub attempt: i64,
    pub worker: String,
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
}

#[derive(Deserialize)]
pub struct LogQuery {
    offset: Option<u64>,
}

pub async fn log(
    State(app): AppState,
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
    let live = matches!(step.state.as_str(), "pending" | "running")
        && matches!(a.state.as_str(), "assigned" | "running");
    let follow = live && end >= size;
    // Line numbers count from the start of the page (the log is not scanned whole).
    let first_line = 1;
    let page = Page::new(&app, &headers, false);
    render(&LogPage {
        page,
        title: format!("{} (step {idx})", step.name),
        state: step.state.clone(),
        build,
        attempt,
        worker: a.worker.clone(),
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
    })
}

// ---- workers --------------------------------------------------------------

pub struct WorkerRowView {
    pub name: String,
    pub state: String,
    pub since: String,
    pub running: usize,
    pub slots: i64,
    pub platform: String,
    pub labels: String,
}

#[derive(Template)]
#[template(path = "workers.html")]
pub struct WorkersPage {
    pub page: Page,
    pub workers: Vec<WorkerRowView>,
}

fn worker_state(app: &App, w: &crate::store::WorkerRow) -> String {
    if app.hub.quarantined_until(&w.name).is_some() {
        "quarantined".into()
    } else if w.paused {
        "paused".into()
    } else if w.online {
        "online".into()
    } else {
        "offline".into()
    }
}

fn json_map(s: &str) -> BTreeMap<String, String> {
    serde_json::from_str(s).unwrap_or_default()
}

pub async fn workers(State(app): AppState, headers: HeaderMap) -> Response {
    let rows = match app.hub.store.workers().await {
        Ok(r) => r,
        Err(e) => return server_error(e),
    };
    let live = app.hub.live_workers();
    let workers = rows
        .iter()
        .map(|w| {
            let facts = json_map(&w.facts);
            WorkerRowView {
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
                labels: json_map(&w.labels)
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
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
    pub labels: Vec<(String, String)>,
    pub facts: Vec<(String, String)>,
    pub probes: Vec<ProbeView>,
}

pub async fn worker(
    State(app): AppState,
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
    render(&WorkerPage {
        page: Page::new(&app, &headers, true),
        recent,
        state: worker_state(&app, &w),
        since: ago(w.last_change),
        slots: w.slots,
        version: w.version.clone(),
        paused: w.paused,
        running,
        labels: json_map(&w.labels).into_iter().collect(),
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
    State(app): AppState,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_paused(app, headers, name, f, true).await
}

pub async fn resume(
    State(app): AppState,
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

// ---- add a worker -----------------------------------------------------------

#[derive(Template)]
#[template(path = "add_worker.html")]
pub struct AddWorker {
    pub page: Page,
    pub command: Option<String>,
}

pub async fn add_worker(State(app): AppState, headers: HeaderMap) -> Response {
    render(&AddWorker {
        page: Page::new(&app, &headers, false),
        command: None,
    })
}

#[derive(Deserialize)]
pub struct AddWorkerForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    labels: String,
}

pub async fn make_install_command(
    State(app): AppState,
    headers: HeaderMap,
    Form(f): Form<AddWorkerForm>,
) -> Response {
    if let Some(r) = signed_in_or_login(&app, &headers, &f.csrf, "/workers/add") {
        return r;
    }
    let mut labels = BTreeMap::new();
    for kv in f.labels.split_whitespace() {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                labels.insert(k.to_string(), v.to_string());
            }
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("label `{kv}`: expected KEY=VALUE"),
                )
                    .into_response()
            }
        }
    }
    let opts = crate::auth::NewToken {
        worker: None,
        expires_at: Some(crate::store::now_ms() + 24 * 3600 * 1000),
        uses: Some(1),
        labels: Some(labels),
    };
    let token =
        match crate::auth::create_token_with(&app.hub.store, crate::auth::TokenKind::Enroll, opts)
            .await
        {
            Ok(t) => t,
            Err(e) => return server_error(e),
        };
    render(&AddWorker {
        page: Page::new(&app, &headers, false),
        command: crate::api::install_command(&app, &headers, &token),
    })
}
