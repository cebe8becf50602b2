//! `GET /api/v1/projects` and `/api/v1/projects/{name}`: each project's
//! repository, what it watches, its polling state and recent changes
//! (`herd project list/show`). Secrets are never shown, only whether set.

use super::ApiError;
use crate::config::ProjectConfig;
use crate::store::ProjectRow;
use crate::App;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

fn project_json(app: &App, row: &ProjectRow) -> Value {
    let config: Option<&ProjectConfig> = app.project_configs.get(&row.name);
    let poll = app.pollers.status(&row.name);
    json!({
        "name": row.name,
        "repo": row.repo,
        "branches": config.map(|c| c.branches.clone()).unwrap_or_default(),
        "poll_secs": config.and_then(|c| c.poll).map(|d| d.as_secs_f64()),
        "collapse": config.is_none_or(|c| c.collapse),
        "webhook": config.is_some_and(|c| c.webhook_secret.is_some()),
        "report": config
            .map(|c| c.report.iter().map(|r| r.target()).collect::<Vec<_>>())
            .unwrap_or_default(),
        "polling": poll,
    })
}

pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Value>, ApiError> {
    let projects: Vec<Value> = app
        .hub
        .store
        .projects()
        .await?
        .iter()
        .map(|p| project_json(&app, p))
        .collect();
    Ok(Json(json!({ "projects": projects })))
}

pub async fn show(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let Some(row) = app.hub.store.project(&name).await? else {
        return Err(ApiError::not_found(format!(
            "unknown project `{name}`: `herd project list` shows them"
        )));
    };
    let mut v = project_json(&app, &row);
    v["changes"] = json!(app.hub.store.changes(&name, 20).await?);
    Ok(Json(v))
}
