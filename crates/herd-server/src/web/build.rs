//! A build's page (`/builds/{id}`): jobs, attempts and steps, the
//! timeline, test results; and its actions (cancel, rebuild).

use super::session::{render, CsrfForm};
use super::timeline::timeline_svg;
use super::view::{
    ago, duration, not_found, origin_label, server_error, short, signed_in_or_login, Page,
};
use crate::builds::StartError;
use crate::store::SplitRow;
use crate::App;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use herd_core::split::Outcome;
use herd_core::state::RunState;
use serde::Deserialize;
use std::sync::Arc;

/// Passing tests listed on the build page (failures are all listed).
const MAX_TEST_ROWS: usize = 500;

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
    /// "secret `x` is withheld: …", one per secret the job may not have.
    pub withheld: Vec<String>,
    /// The jobs it waits for (`needs:`).
    pub needs: String,
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
    pub origin_url: String,
    /// `key=value` of herd.yml's `params:`.
    pub params: String,
    pub when: String,
    /// From the first step's start to the end (so far, while it runs).
    pub duration: String,
    pub error: Option<String>,
    pub running: bool,
    pub any_failed: bool,
    pub timeline: String,
    pub tests: Vec<TestsView>,
    pub artifacts: Vec<ArtifactView>,
    pub jobs: Vec<JobView>,
}

/// One file a job kept, with its download link.
pub struct ArtifactView {
    pub job: String,
    pub path: String,
    pub size: String,
    pub url: String,
}

pub async fn build(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
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
    let artifacts = store
        .build_artifacts(id)
        .await?
        .into_iter()
        .map(|a| ArtifactView {
            size: herd_core::size::human_bytes(a.size.max(0) as u64),
            url: format!("/api/v1/builds/{id}/artifacts/{}", a.id),
            job: a.job,
            path: a.path,
        })
        .collect();
    let mut jobs = Vec::new();
    for j in &d.jobs {
        let (waiting, why) = if j.state == RunState::Queued {
            let w = app.hub.why_not(&j.spec);
            let why = w
                .workers
                .iter()
                .map(|x| match &x.unmet {
                    Some(u) => format!("{}: {u}", x.worker),
                    None => format!("{}: {}", x.worker, x.note()),
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
                state: a.state.to_string(),
                reason: a.reason.clone(),
                steps: d
                    .steps
                    .iter()
                    .filter(|s| s.attempt_id == a.id)
                    .map(|s| StepView {
                        idx: s.idx,
                        name: s.name.clone(),
                        state: s.state.to_string(),
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
            state: j.state.to_string(),
            error: j.error.clone(),
            waiting,
            why,
            withheld: j
                .spec
                .withheld
                .iter()
                .map(|w| format!("secret `{}` is withheld: {}", w.secret, w.reason))
                .collect(),
            needs: j.spec.needs.join(", "),
            attempts,
        });
    }
    let b = &d.build;
    Ok(Some(BuildPage {
        page,
        id,
        state: b.state.to_string(),
        project: b.project.clone(),
        revision: short(&b.revision),
        message: b.message.clone().unwrap_or_default(),
        author: b.author.clone().unwrap_or_default(),
        reason: b.reason.clone(),
        origin: origin_label(b),
        origin_url: super::view::origin_url(app, b).await,
        params: b
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        when: ago(b.created_at),
        duration: super::view::duration(b.started_at, b.finished_at),
        error: b.error.clone(),
        running: !b.state.is_finished(),
        any_failed: d
            .jobs
            .iter()
            .any(|j| matches!(j.state, RunState::Failure | RunState::Error)),
        timeline: timeline_svg(&d, &splits),
        tests: splits.iter().map(tests_view).collect(),
        artifacts,
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

pub async fn cancel(
    State(app): State<Arc<App>>,
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
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Query(q): Query<RebuildQuery>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let back = format!("/builds/{id}");
    if let Some(r) = signed_in_or_login(&app, &headers, &f.csrf, &back) {
        return r;
    }
    // The same revision and origin again: every job, or the failed ones.
    let last = match crate::builds::retry(&app, id, q.failed.is_some()).await {
        Ok(new) => new,
        Err(StartError::Store(e)) => return server_error(e),
        Err(e @ (StartError::UnknownProject { .. } | StartError::UnknownBuild(_))) => {
            return not_found(e.to_string())
        }
        Err(e @ (StartError::NotFinished(_) | StartError::NothingToBuild(_))) => {
            return (StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    Redirect::to(&format!("/builds/{last}")).into_response()
}
