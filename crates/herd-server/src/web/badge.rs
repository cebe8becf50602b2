//! Status badges (`/badge/PROJECT.svg`, `/badge/PROJECT/BUILDER.svg`,
//! `?branch=B`): the last ended build's state as a small SVG for a
//! README, cached for a minute. Readable like any page: public on a
//! public server, behind the sign-in on a private one.

use super::view::esc;
use crate::App;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use herd_core::state::RunState;
use serde::Deserialize;
use std::sync::Arc;

/// Builds looked at for the last ended one.
const LOOK_BACK: i64 = 100;

#[derive(Deserialize)]
pub struct BadgeQuery {
    branch: Option<String>,
}

pub async fn project(
    State(app): State<Arc<App>>,
    Path(file): Path<String>,
    Query(q): Query<BadgeQuery>,
) -> Response {
    let Some(project) = file.strip_suffix(".svg") else {
        return not_svg();
    };
    badge(&app, project, None, q.branch.as_deref()).await
}

pub async fn builder(
    State(app): State<Arc<App>>,
    Path((project, file)): Path<(String, String)>,
    Query(q): Query<BadgeQuery>,
) -> Response {
    let Some(builder) = file.strip_suffix(".svg") else {
        return not_svg();
    };
    badge(&app, &project, Some(builder), q.branch.as_deref()).await
}

fn not_svg() -> Response {
    (
        StatusCode::NOT_FOUND,
        "a badge is /badge/PROJECT.svg or /badge/PROJECT/BUILDER.svg",
    )
        .into_response()
}

async fn badge(app: &App, project: &str, builder: Option<&str>, branch: Option<&str>) -> Response {
    let state = match last_state(app, project, builder, branch).await {
        Ok(s) => s,
        Err(e) => return super::view::server_error(e),
    };
    let label = builder.unwrap_or(project);
    let svg = render(label, state.map_or("unknown", |s| s.as_str()));
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=60"),
        ],
        svg,
    )
        .into_response()
}

/// The state of the last ended build (of the builder's jobs in it, when
/// one is named), on `branch` when given.
async fn last_state(
    app: &App,
    project: &str,
    builder: Option<&str>,
    branch: Option<&str>,
) -> Result<Option<RunState>, crate::store::StoreError> {
    let store = &app.hub.store;
    let builds: Vec<_> = store
        .builds(Some(project), None, None, LOOK_BACK)
        .await?
        .into_iter()
        .filter(|b| b.state.is_finished())
        .filter(|b| branch.is_none_or(|br| b.ref_name.as_deref() == Some(br)))
        .collect();
    let Some(builder) = builder else {
        return Ok(builds.first().map(|b| b.state));
    };
    let ids: Vec<i64> = builds.iter().map(|b| b.id).collect();
    let jobs = store.jobs_of_builds(&ids).await?;
    for b in &builds {
        let states: Vec<RunState> = jobs
            .iter()
            .filter(|j| j.build_id == b.id && j.builder == builder)
            .map(|j| j.state)
            .collect();
        if !states.is_empty() {
            return Ok(Some(RunState::of_build(&states)));
        }
    }
    Ok(None)
}

/// A two-part badge: the label on grey, the state on its colour.
fn render(label: &str, state: &str) -> String {
    let colour = match state {
        "success" => "#2e8b47",
        "failure" => "#c0392b",
        "error" => "#7d3c98",
        "cancelled" | "skipped" => "#8a8a8a",
        _ => "#9f9f9f",
    };
    // About 7 px a character at 11 px Verdana, as shields do.
    let width = |t: &str| 10 + 7 * t.chars().count().min(60);
    let (lw, rw) = (width(label), width(state));
    let (label, state) = (esc(label), esc(state));
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="20" role="img" aria-label="{label}: {state}"><title>{label}: {state}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{rw}" height="20" fill="{colour}"/><g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11" text-anchor="middle"><text x="{lx}" y="14">{label}</text><text x="{rx}" y="14">{state}</text></g></svg>"##,
        w = lw + rw,
        lx = lw / 2,
        rx = lw + rw / 2,
    )
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn a_badge_escapes_its_text_and_colours_its_state() {
        let svg = render("a<b", "failure");
        assert!(
            svg.contains("a&lt;b: failure") && svg.contains("#c0392b"),
            "{svg}"
        );
        assert!(!svg.contains("a<b"));
    }
}
