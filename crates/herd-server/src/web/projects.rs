//! The projects page and each project's page: repository, what is
//! watched, how polling goes (a failing fetch shows here), webhooks,
//! reporters, and the recent changes with what became of each.

use super::session::render;
use super::view::{ago, not_found, server_error, signed_in_or_login, Page};
use crate::builds::{start_build, BuildRequest, StartError};
use crate::App;
use askama::Template;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;

pub struct ProjectView {
    pub name: String,
    pub repo: String,
    pub branches: String,
    /// "every 1m", "webhooks only", "no repository".
    pub polling: String,
    pub last_poll: String,
    /// The last fetch's error, while fetches fail.
    pub error: Option<String>,
    pub webhooks: bool,
    pub reporters: Vec<String>,
    pub heads: Vec<(String, String)>,
}

pub struct ChangeView {
    pub revision: String,
    pub branch: String,
    pub subject: String,
    pub author: String,
    pub when: String,
    pub build: Option<i64>,
    pub skipped: String,
    /// Why it waits (for approval); empty when it does not.
    pub waiting: String,
    pub id: i64,
    /// A pull request's link, when a webhook told it.
    pub url: String,
}

#[derive(Template)]
#[template(path = "projects.html")]
pub struct ProjectsPage {
    pub page: Page,
    pub projects: Vec<ProjectView>,
}

#[derive(Template)]
#[template(path = "project.html")]
pub struct ProjectPage {
    pub page: Page,
    pub project: ProjectView,
    pub changes: Vec<ChangeView>,
    /// The `params:` of its herd.yml (at the mirror's HEAD), for the form
    /// that starts a build.
    pub params: Vec<herd_core::pipeline::Param>,
}

/// The form that starts a build: `rev`, and `param.NAME` per parameter.
pub async fn start(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let back = format!("/projects/{name}");
    let csrf = form.get("csrf").map(String::as_str).unwrap_or_default();
    if let Some(r) = signed_in_or_login(&app, &headers, csrf, &back) {
        return r;
    }
    let params = form
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("param.").map(|k| (k.to_string(), v.clone())))
        .collect();
    let rev = form.get("rev").map(|r| r.trim()).filter(|r| !r.is_empty());
    let req = BuildRequest {
        project: name,
        rev: rev.map(str::to_string),
        reason: Some("started from the web page".into()),
        params,
        ..Default::default()
    };
    match start_build(&app, req).await {
        Ok(id) => Redirect::to(&format!("/builds/{id}")).into_response(),
        Err(StartError::Store(e)) => server_error(e),
        Err(e @ StartError::UnknownProject { .. }) => not_found(e.to_string()),
        Err(e) => (StatusCode::CONFLICT, e.to_string()).into_response(),
    }
}

fn view(app: &App, row: &crate::store::ProjectRow) -> ProjectView {
    let live = app.live();
    let config = live.projects.get(&row.name);
    let status = app.pollers.status(&row.name).unwrap_or_default();
    let polling = match (&row.repo, config.and_then(|c| c.poll)) {
        (None, _) => "no repository".to_string(),
        (Some(_), None) => "webhooks only".to_string(),
        (Some(_), Some(d)) => format!("every {}", herd_core::duration::format_duration(d)),
    };
    ProjectView {
        name: row.name.clone(),
        repo: row
            .repo
            .as_deref()
            .map(herd_core::redact::redact_url)
            .unwrap_or_default(),
        branches: match config.map(|c| c.branches.join(", ")) {
            Some(b) if !b.is_empty() => b,
            _ => "the default branch".into(),
        },
        polling,
        last_poll: status.last_poll_at.map(ago).unwrap_or_default(),
        error: status.last_error.map(|e| {
            format!(
                "{e} ({} failed fetch{} in a row)",
                status.failures,
                if status.failures == 1 { "" } else { "es" }
            )
        }),
        webhooks: config.is_some_and(|c| c.webhook_secret.is_some()),
        reporters: config
            .map(|c| c.report.iter().map(|r| r.target()).collect())
            .unwrap_or_default(),
        heads: status
            .branches
            .into_iter()
            .map(|(b, sha)| (b, sha.chars().take(10).collect()))
            .collect(),
    }
}

pub async fn projects(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    match app.hub.store.projects().await {
        Ok(rows) => render(&ProjectsPage {
            page: Page::new(&app, &headers, false),
            projects: rows.iter().map(|r| view(&app, r)).collect(),
        }),
        Err(e) => server_error(e),
    }
}

pub async fn project(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let row = match app.hub.store.project(&name).await {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(format!("no project {name}")),
        Err(e) => return server_error(e),
    };
    let changes = match app.hub.store.changes(&name, 50).await {
        Ok(c) => c,
        Err(e) => return server_error(e),
    };
    let text = match (&row.repo, &row.pipeline) {
        (Some(_), _) => app.mirrors.pipeline_at(&name, "HEAD").await,
        (None, p) => p.clone(),
    };
    let params = text
        .and_then(|t| herd_core::Pipeline::parse("herd.yml", &t).ok())
        .map(|p| p.params)
        .unwrap_or_default();
    let pulls: std::collections::HashMap<i64, crate::store::PullRow> = app
        .hub
        .store
        .pull_requests(&name, 200)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|p| (p.number, p))
        .collect();
    render(&ProjectPage {
        page: Page::new(&app, &headers, false),
        params,
        project: view(&app, &row),
        changes: changes
            .into_iter()
            .map(|c| {
                let pull = c.pull_request.and_then(|n| pulls.get(&n));
                ChangeView {
                    id: c.id,
                    revision: c.revision.chars().take(10).collect(),
                    branch: crate::pulls::change_label(&c),
                    subject: pull
                        .map(|p| p.title.clone())
                        .filter(|t| !t.is_empty())
                        .unwrap_or_else(|| c.message.lines().next().unwrap_or("").to_string()),
                    author: pull
                        .map(|p| p.author.clone())
                        .filter(|a| !a.is_empty())
                        .unwrap_or(c.author),
                    when: ago(c.created_at),
                    build: c.build_id,
                    skipped: c.skipped.unwrap_or_default(),
                    waiting: c.waiting.unwrap_or_default(),
                    url: pull
                        .map(|p| p.url.clone())
                        .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
                        .unwrap_or_default(),
                }
            })
            .collect(),
    })
}

/// `POST /changes/{id}/approve`: a signed-in user lets a waiting pull
/// request's head be built.
pub async fn approve(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Form(f): Form<super::session::CsrfForm>,
) -> Response {
    let project = match app.hub.store.change(id).await {
        Ok(Some(c)) => c.project,
        Ok(None) => return not_found(format!("no change {id}")),
        Err(e) => return server_error(e),
    };
    let back = format!("/projects/{project}");
    let Some(user) = app.sessions.user_of(&headers, &f.csrf) else {
        return axum::response::Redirect::to(&format!("/login?next={back}")).into_response();
    };
    match crate::poll::approve(&app, id, &user).await {
        Ok(crate::poll::Approved::Built(Some(build), _)) => {
            axum::response::Redirect::to(&format!("/builds/{build}")).into_response()
        }
        Ok(_) => axum::response::Redirect::to(&back).into_response(),
        Err(e) => server_error(e),
    }
}
