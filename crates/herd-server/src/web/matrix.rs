//! The capability matrix (`/workers/matrix`): each project's builders and
//! jobs (as its latest build planned them) against the connected workers,
//! each cell "can run" or the first requirement the worker fails. The
//! seed's "which slaves are capable of what roles", at a glance; the same
//! matching as the scheduler's (`Hub::why_not`).

use super::session::render;
use super::view::{server_error, Page};
use crate::App;
use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use std::collections::BTreeSet;
use std::sync::Arc;

pub struct MatrixCell {
    pub can: bool,
    /// Why not, or the worker's state when it could.
    pub note: String,
}

pub struct MatrixRow {
    pub project: String,
    pub builder: String,
    pub job: String,
    pub requires: String,
    pub cells: Vec<MatrixCell>,
    pub capable: usize,
}

#[derive(Template)]
#[template(path = "matrix.html")]
pub struct MatrixPage {
    pub page: Page,
    pub workers: Vec<String>,
    pub rows: Vec<MatrixRow>,
}

pub async fn matrix(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match rows(&app).await {
        // Not live: a table people read cell by cell does not jump.
        Ok((workers, rows)) => render(&MatrixPage {
            page: Page::new(&app, &headers, false),
            workers,
            rows,
        }),
        Err(e) => server_error(e),
    }
}

type Matrix = (Vec<String>, Vec<MatrixRow>);

async fn rows(app: &App) -> Result<Matrix, crate::store::StoreError> {
    let store = &app.hub.store;
    let mut jobs = Vec::new();
    for p in store.projects().await? {
        let latest = store
            .builds(Some(&p.name), None, None, 20)
            .await?
            .into_iter()
            .find(|b| b.error.is_none());
        let Some(latest) = latest else { continue };
        let Some(detail) = store.build_detail(latest.id).await? else {
            continue;
        };
        let mut seen = BTreeSet::new();
        for j in detail.jobs {
            // A split job's shards ask the same of a worker: one row.
            let name = j.name.split('#').next().unwrap_or(&j.name).to_string();
            if seen.insert((j.builder.clone(), name.clone())) {
                jobs.push((p.name.clone(), j.builder, name, j.spec));
            }
        }
    }
    let mut workers: BTreeSet<String> = BTreeSet::new();
    let mut rows = Vec::new();
    let fits: Vec<_> = jobs
        .iter()
        .map(|(_, _, _, spec)| app.hub.why_not(spec))
        .collect();
    for f in &fits {
        workers.extend(f.workers.iter().map(|w| w.worker.clone()));
    }
    let workers: Vec<String> = workers.into_iter().collect();
    for ((project, builder, job, spec), fit) in jobs.into_iter().zip(fits) {
        let cells: Vec<MatrixCell> = workers
            .iter()
            .map(|w| match fit.workers.iter().find(|x| &x.worker == w) {
                Some(x) => match &x.unmet {
                    None => MatrixCell {
                        can: true,
                        note: x.note(),
                    },
                    Some(why) => MatrixCell {
                        can: false,
                        note: why.clone(),
                    },
                },
                None => MatrixCell {
                    can: false,
                    note: "not connected".into(),
                },
            })
            .collect();
        rows.push(MatrixRow {
            capable: cells.iter().filter(|c| c.can).count(),
            project,
            builder,
            job,
            requires: spec
                .requires
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cells,
        });
    }
    Ok((workers, rows))
}
