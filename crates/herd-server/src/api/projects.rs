//! Projects: each one's repository, what it watches, its polling state and
//! recent changes (`herd project list/show`). Secrets are never shown,
//! only whether set.

use super::{ApiError, ApiPath, AppState};
use crate::access::TokenRefusals;
use crate::store::{ChangeRow, ProjectRow};
use crate::App;
use axum::extract::State;
use axum::Json;
use herd_api::projects::{Change, PollStatus, Project, ProjectDetail, ProjectList};
use herd_api::ErrorBody;

fn project_view(app: &App, row: &ProjectRow) -> Project {
    let live = app.live();
    let config = live.projects.get(&row.name);
    Project {
        name: row.name.clone(),
        repo: row.repo.as_deref().map(herd_core::redact::redact_url),
        branches: config.map(|c| c.branches.clone()).unwrap_or_default(),
        poll_secs: config.and_then(|c| c.poll).map(|d| d.as_secs_f64()),
        collapse: config.is_none_or(|c| c.collapse),
        webhook: config.is_some_and(|c| c.webhook_secret.is_some()),
        report: config
            .map(|c| c.report.iter().map(|r| r.target()).collect())
            .unwrap_or_default(),
        polling: app.pollers.status(&row.name).map(|p| PollStatus {
            last_poll_at: p.last_poll_at,
            last_success_at: p.last_success_at,
            last_error: p.last_error.as_deref().map(herd_core::redact::redact_text),
            failures: p.failures,
            next_poll_at: p.next_poll_at,
            branches: p.branches,
            wakes: p.wakes,
        }),
    }
}

fn change_view(c: ChangeRow) -> Change {
    Change {
        id: c.id,
        project: c.project,
        branch: c.branch,
        revision: c.revision,
        author: c.author,
        message: c.message,
        committed_at: c.committed_at,
        files: c.files,
        created_at: c.created_at,
        build_id: c.build_id,
        skipped: c.skipped,
        kind: match c.kind {
            crate::store::ChangeKind::Branch => "branch",
            crate::store::ChangeKind::Tag => "tag",
            crate::store::ChangeKind::PullRequest => "pull_request",
        }
        .into(),
        pull_request: c.pull_request,
        waiting: c.waiting,
        approved_by: c.approved_by,
    }
}

/// Every project, with its polling state.
#[utoipa::path(
    get,
    path = "/api/v1/projects",
    tag = "projects",
    responses((status = 200, body = ProjectList), TokenRefusals),
    security((), ("token" = [])),
)]
pub async fn list(State(app): AppState) -> Result<Json<ProjectList>, ApiError> {
    let projects = app
        .hub
        .store
        .projects()
        .await?
        .iter()
        .map(|p| project_view(&app, p))
        .collect();
    Ok(Json(ProjectList { projects }))
}

/// One project with its latest changes and what became of each.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{name}",
    tag = "projects",
    params(("name" = String, Path, description = "The project's name")),
    responses(
        (status = 200, body = ProjectDetail),
        (status = 404, description = "No such project", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn show(
    State(app): AppState,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProjectDetail>, ApiError> {
    let Some(row) = app.hub.store.project(&name).await? else {
        return Err(ApiError::not_found(format!(
            "unknown project `{name}`: `herd project list` shows them"
        )));
    };
    let changes = app.hub.store.changes(&name, 20).await?;
    Ok(Json(ProjectDetail {
        project: project_view(&app, &row),
        changes: changes.into_iter().map(change_view).collect(),
    }))
}

/// Lets a pull request's change that waits for approval be built (a fork,
/// an author the project does not trust): it is built at once, still
/// without secrets and only on the workers labelled for untrusted code.
#[utoipa::path(
    post,
    path = "/api/v1/changes/{id}/approve",
    tag = "projects",
    params(("id" = i64, Path, description = "The change's id (`herd project show` lists them)")),
    responses(
        (status = 200, body = herd_api::projects::Approval),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such change", body = ErrorBody),
        (status = 409, description = "The change does not wait for approval", body = ErrorBody),
        TokenRefusals,
    ),
    security(("token" = [])),
)]
pub async fn approve(
    _: super::Admin,
    State(app): AppState,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<herd_api::projects::Approval>, ApiError> {
    let Some(change) = app.hub.store.change(id).await? else {
        return Err(ApiError::not_found(format!(
            "no change {id}: `herd project show PROJECT` lists the changes"
        )));
    };
    match crate::poll::approve(&app, id, "admin").await? {
        crate::poll::Approved::Built(build_id, skipped) => Ok(Json(herd_api::projects::Approval {
            change: id,
            build_id,
            skipped,
        })),
        crate::poll::Approved::NotWaiting => Err(ApiError::conflict(match change.build_id {
            Some(b) => format!("change {id} does not wait for approval: it is build {b}"),
            None => format!(
                "change {id} does not wait for approval ({})",
                change.skipped.as_deref().unwrap_or("it is being built")
            ),
        })),
    }
}
