//! Add a worker (`/workers/add`): a one-line install command with a fresh
//! enrollment token (one machine, 24 hours).

use super::session::render;
use super::view::{server_error, signed_in_or_login, Page};
use crate::App;
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Template)]
#[template(path = "add_worker.html")]
pub struct AddWorker {
    pub page: Page,
    pub command: Option<String>,
}

pub async fn add_worker(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
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
    State(app): State<Arc<App>>,
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
        command: crate::install::install_command(&app, &headers, &token),
    })
}
