//! The web page: server-rendered HTML (askama templates in `templates/`),
//! a little hand-written CSS and JS embedded in the binary, live updates
//! over server-sent events. Reading is open; actions need a sign-in (the
//! admin token) and carry a CSRF token.
//!
//! Architecture invariant: every text that comes from a build (commit
//! messages, log output, test names) reaches the page through askama's
//! escaping or `ansi::to_html`, never raw.

mod add_worker;
mod ansi;
mod badge;
mod build;
mod builder;
mod grid;
mod log;
mod matrix;
mod projects;
mod session;
mod timeline;
mod view;
mod workers;

use crate::App;
use axum::extract::State;
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::stream::{self, Stream, StreamExt};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

pub use grid::{grid_page, GridQuery};
pub use session::{private_guard, Sessions};
pub use view::Page;

const APP_CSS: &str = include_str!("static/app.css");
const APP_JS: &str = include_str!("static/app.js");

pub fn router() -> Router<Arc<App>> {
    Router::new()
        .route("/", get(grid::grid))
        .route("/badge/{file}", get(badge::project))
        .route("/badge/{project}/{file}", get(badge::builder))
        .route("/builds/{id}", get(build::build))
        .route("/builders/{project}/{builder}", get(builder::builder))
        .route("/builds/{id}/cancel", post(build::cancel))
        .route("/builds/{id}/rebuild", post(build::rebuild))
        .route("/attempts/{id}/steps/{idx}", get(log::log))
        .route("/projects", get(projects::projects))
        .route("/projects/{name}", get(projects::project))
        .route("/projects/{name}/builds", post(projects::start))
        .route("/changes/{id}/approve", post(projects::approve))
        .route("/workers", get(workers::workers))
        .route("/workers/matrix", get(matrix::matrix))
        .route(
            "/workers/add",
            get(add_worker::add_worker).post(add_worker::make_install_command),
        )
        .route("/workers/{name}", get(workers::worker))
        .route("/workers/{name}/pause", post(workers::pause))
        .route("/workers/{name}/resume", post(workers::resume))
        .route("/login", get(session::login_form).post(session::login))
        .route("/logout", post(session::logout))
        .route("/events", get(events))
        .route(
            "/static/app.css",
            get(|| async { asset(APP_CSS, "text/css") }),
        )
        .route(
            "/static/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// `GET /events`: one event per change of the server's state (at most four
/// a second); pages refetch what they show. The first event comes at once:
/// a change between the page's render and this subscription is not missed.
async fn events(State(app): State<Arc<App>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut rx = app.hub.subscribe();
    let first = *rx.borrow_and_update();
    let head = stream::once(async move { Ok(Event::default().data(first.to_string())) });
    let s = stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let v = *rx.borrow_and_update();
        // Coalesce bursts: one refetch per quarter second is plenty.
        tokio::time::sleep(Duration::from_millis(250)).await;
        rx.borrow_and_update();
        Some((Ok(Event::default().data(v.to_string())), rx))
    });
    Sse::new(head.chain(s)).keep_alive(KeepAlive::default())
}
