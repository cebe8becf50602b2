//! The grid (`/`): a column per builder, a row per change (a revision of
//! a project on a branch; each try build is its own), each cell the state
//! of that builder's jobs in the change's latest build that ran it
//! (rebuilds stack in the row, the earlier ones linked), and in each
//! column's head how many connected workers can run it.

use super::session::render;
use super::view::{ago, esc, origin_label, server_error, short, Page};
use crate::App;
use askama::Template;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use herd_core::plan::JobSpec;
use serde::Deserialize;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

/// Rows of the grid.
const GRID_ROWS: i64 = 100;

pub struct GridRow {
    pub id: i64,
    pub state: String,
    pub revision: String,
    pub message: String,
    pub author: String,
    pub when: String,
    pub project: String,
    /// The branch of a change, `try by …` for a try build, `PR #12 by …`.
    pub origin: String,
    /// A pull request's page at its forge; empty when unknown.
    pub origin_url: String,
    /// The row's most common cell state (its cells need no class of their own).
    pub common: &'static str,
    /// The row's cells, prerendered: a grid of 200 x 100 must stay small.
    pub cells: String,
    /// The change's earlier builds, newest first.
    pub earlier: Vec<i64>,
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
    State(app): State<Arc<App>>,
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
            .push((*build, *id, name.as_str(), state.as_str()));
    }
    // One row per change: its builds, newest first (the list is).
    let mut changes: Vec<Vec<&crate::store::BuildRow>> = Vec::new();
    let mut change_of: HashMap<ChangeKey, usize> = HashMap::new();
    for b in &builds {
        match change_key(b) {
            Some(k) => match change_of.get(&k) {
                Some(&i) => changes[i].push(b),
                None => {
                    change_of.insert(k, changes.len());
                    changes.push(vec![b]);
                }
            },
            None => changes.push(vec![b]),
        }
    }
    let mut rows = Vec::with_capacity(changes.len());
    for builds_of_change in &changes {
        let b = builds_of_change[0];
        let earlier: Vec<i64> = builds_of_change[1..].iter().map(|e| e.id).collect();
        // Per column, the newest of the change's builds that ran it.
        let mut stacked: Vec<Vec<CellJob>> = vec![Vec::new(); columns.len()];
        let mut any = false;
        for e in builds_of_change {
            if let Some(cells) = by_build.get(&e.id) {
                for (slot, c) in stacked.iter_mut().zip(cells) {
                    if slot.is_empty() && !c.is_empty() {
                        slot.clone_from(c);
                        any = true;
                    }
                }
            }
        }
        if !any {
            if q.builder.is_empty() {
                rows.push(grid_row(b, &[], "n", earlier));
            }
            continue;
        }
        let cells = &stacked;
        // The most common single-job state of the row.
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for c in cells {
            if let [(_, _, _, st)] = c.as_slice() {
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
        rows.push(grid_row(b, cells, common, earlier));
    }
    for r in rows.iter_mut() {
        if let Some(b) = builds
            .iter()
            .find(|b| b.id == r.id && b.pull_request.is_some())
        {
            r.origin_url = super::view::origin_url(app, b).await;
        }
    }
    let columns = columns
        .into_iter()
        .map(|name| {
            let why = app
                .hub
                .why_not(specs.get(&name).unwrap_or(&JobSpec::default()));
            let capable: Vec<&crate::hub::WorkerWhyNot> =
                why.workers.iter().filter(|w| w.unmet.is_none()).collect();
            let busy = capable
                .iter()
                .filter(|w| w.state == crate::hub::Fit::Busy)
                .count();
            let workers_title = if capable.is_empty() {
                why.summary.clone()
            } else {
                capable
                    .iter()
                    .map(|w| format!("{} ({})", w.worker, w.note()))
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

/// A job in a grid cell: its build, id, name, state.
type CellJob<'a> = (i64, i64, &'a str, &'a str);

/// What makes builds the same change: project, revision, branch or tag,
/// kind. None for a build that is a change of its own (a try, or no
/// revision).
type ChangeKey = (String, String, Option<String>, &'static str);

fn change_key(b: &crate::store::BuildRow) -> Option<ChangeKey> {
    if b.kind == crate::store::BuildKind::Try {
        return None;
    }
    let rev = b.revision.clone()?;
    Some((
        b.project.clone(),
        rev,
        b.ref_name.clone(),
        match b.kind {
            crate::store::BuildKind::Manual => "manual",
            k => k.as_str(),
        },
    ))
}

fn grid_row(
    b: &crate::store::BuildRow,
    cells: &[Vec<CellJob>],
    common: &'static str,
    earlier: Vec<i64>,
) -> GridRow {
    let mut html = String::with_capacity(cells.len() * 6);
    for c in cells {
        // A cell from an earlier build of the change opens that build.
        let from = match c.first() {
            Some((build, ..)) if *build != b.id => format!(" data-b={build}"),
            _ => String::new(),
        };
        match c.as_slice() {
            [] if common == "n" => html.push_str("<td>"),
            [] => html.push_str("<td class=n>"),
            [(_, _, name, st)] if *name == herd_core::pipeline::MAIN_JOB => {
                let class = cell_class(st);
                if class == common && from.is_empty() {
                    html.push_str("<td>");
                } else if class == common {
                    let _ = write!(html, "<td{from}>");
                } else {
                    let _ = write!(html, "<td class={class}{from}>");
                }
                html.push_str(glyph(st));
            }
            jobs => {
                let _ = write!(html, "<td class=m{from}>");
                for (build, id, name, st) in jobs {
                    let _ = write!(
                        html,
                        "<a class={} href=/builds/{build}#job-{id}>{} {}</a>",
                        cell_class(st),
                        glyph(st),
                        esc(name)
                    );
                }
            }
        }
    }
    GridRow {
        id: b.id,
        state: b.state.to_string(),
        revision: short(&b.revision),
        message: b.message.clone().or(b.error.clone()).unwrap_or_default(),
        author: b.author.clone().unwrap_or_default(),
        when: ago(b.created_at),
        project: b.project.clone(),
        origin: origin_label(b),
        origin_url: String::new(),
        common,
        cells: html,
        earlier,
    }
}
