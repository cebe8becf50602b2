//! A builder's page (`/builders/{project}/{builder}`): who can run it,
//! who cannot and why, what waits, what ran.

use super::session::render;
use super::view::{ago, not_found, server_error, Page};
use crate::App;
use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::collections::HashMap;
use std::sync::Arc;

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
    State(app): State<Arc<App>>,
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
    let spec = &latest.spec;
    let why = app.hub.why_not(spec);
    let (mut capable, mut incapable) = (Vec::new(), Vec::new());
    for w in &why.workers {
        match &w.unmet {
            None => capable.push((w.worker.clone(), w.note())),
            Some(u) => incapable.push((w.worker.clone(), u.clone())),
        }
    }
    let waiting = mine
        .iter()
        .filter(|j| j.state == herd_core::state::RunState::Queued)
        .map(|j| (j.build_id, j.name.clone(), why.summary.clone()))
        .collect();
    let when: HashMap<i64, i64> = builds.iter().map(|b| (b.id, b.created_at)).collect();
    let mut recent: Vec<(i64, String, String, String)> = mine
        .iter()
        .map(|j| {
            (
                j.build_id,
                j.name.clone(),
                j.state.to_string(),
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
