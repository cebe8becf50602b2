//! Sign-in for the page's actions: the admin token, traded for a session
//! cookie (HttpOnly, SameSite=Strict) and a CSRF token that every form
//! carries. Sessions live in memory: a server restart signs everyone out.

use super::view::Page;
use crate::auth::{self, random_hex, Principal};
use crate::App;
use askama::Template;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

const COOKIE: &str = "herd_session";
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

struct Session {
    csrf: String,
    /// Who signed in: a user of the config, or `admin` (the admin token).
    user: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

/// Who is looking at a page: signed in (with the form's CSRF token) or not.
#[derive(Clone, Default)]
pub struct Viewer {
    pub signed_in: bool,
    pub csrf: String,
    /// Who is signed in (empty when nobody is).
    pub user: String,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn viewer(&self, headers: &HeaderMap) -> Viewer {
        let Some(id) = cookie(headers) else {
            return Viewer::default();
        };
        let mut map = self.lock();
        map.retain(|_, s| s.expires > Instant::now());
        match map.get(&id) {
            Some(s) => Viewer {
                signed_in: true,
                csrf: s.csrf.clone(),
                user: s.user.clone(),
            },
            None => Viewer::default(),
        }
    }

    /// Whether a form post comes from a signed-in page of this server.
    pub fn check(&self, headers: &HeaderMap, csrf: &str) -> bool {
        let v = self.viewer(headers);
        v.signed_in && !csrf.is_empty() && bool::from(v.csrf.as_bytes().ct_eq(csrf.as_bytes()))
    }

    /// Who signed in on a form post that [`Sessions::check`] passes.
    pub fn user_of(&self, headers: &HeaderMap, csrf: &str) -> Option<String> {
        self.check(headers, csrf).then(|| self.viewer(headers).user)
    }

    fn create(&self, user: &str) -> String {
        let id = random_hex(32);
        self.lock().insert(
            id.clone(),
            Session {
                csrf: random_hex(32),
                user: user.to_string(),
                expires: Instant::now() + LIFETIME,
            },
        );
        id
    }

    fn remove(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers) {
            self.lock().remove(&id);
        }
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    page: Page,
    error: Option<String>,
    next: String,
    users: bool,
}

#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// In a private server (`private: true` in the config), everything but
/// signing in, the worker's and installer's endpoints and health needs a
/// session or a token.
pub async fn private_guard(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !app.live().private {
        return next.run(req).await;
    }
    let path = req.uri().path();
    let open = path == "/login"
        || path.starts_with("/static/")
        || path == "/install.sh"
        || path.starts_with("/download/")
        || path == herd_proto::WORKER_ENDPOINT
        || path == "/api/v1/enroll"
        || path.starts_with("/api/v1/hooks/")
        || path == "/api/v1/health";
    if open || app.sessions.viewer(req.headers()).signed_in {
        return next.run(req).await;
    }
    let bearer = auth::presented(req.headers()).map(str::to_string);
    if let Some(t) = bearer {
        // Which kind of token may read is the token guard's decision; a
        // token that is not valid is refused here, page or not.
        return match auth::verify(&app.hub.store, &t).await {
            Ok(Some(p)) => {
                let mut req = req;
                req.extensions_mut().insert(crate::access::Caller(p));
                next.run(req).await
            }
            Ok(None) => crate::access::refusal(
                StatusCode::UNAUTHORIZED,
                "the token is not valid (mistyped, revoked or expired): ask the server's admin for a new one",
            ),
            Err(e) => super::view::server_error(e),
        };
    }
    if path.starts_with("/api/") {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(serde_json::json!({"error": "this server is private: pass a token as `Authorization: Bearer TOKEN`"})),
        )
            .into_response();
    }
    Redirect::to(&format!("/login?next={path}")).into_response()
}

/// Only local paths: a sign-in never sends the browser elsewhere.
/// Where to go after signing in: only a path on this server. Browsers drop
/// tabs and newlines from a URL and read `\\` as `/`, so `/\t/evil.example`
/// would be `//evil.example`, another site: anything but printable ASCII
/// without a backslash, or a second leading slash, means the front page.
pub(crate) fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.to_string()
        }
        _ => "/".into(),
    }
}

/// The session cookie's attributes; `Secure` when the server speaks TLS, so
/// a browser never sends it over plain HTTP.
fn cookie_attributes(app: &App) -> &'static str {
    if app.https() {
        "Path=/; HttpOnly; SameSite=Strict; Secure"
    } else {
        "Path=/; HttpOnly; SameSite=Strict"
    }
}

pub async fn login_form(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let page = Page::new(&app, &headers, false);
    render(&Login {
        page,
        error: None,
        next: safe_next(q.next.as_deref()),
        users: !app.live().users.is_empty(),
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// A user's password against the config's argon2 hash (slow on purpose:
/// off the async threads).
async fn password_ok(app: &App, user: &str, password: &str) -> bool {
    let Some(hash) = app.live().users.get(user).cloned() else {
        return false;
    };
    let password = password.to_string();
    tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

pub async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let next = safe_next(f.next.as_deref());
    let refuse = |msg: &str, status: StatusCode| {
        let page = Page::new(&app, &headers, false);
        let mut r = render(&Login {
            page,
            error: Some(msg.to_string()),
            next: next.clone(),
            users: !app.live().users.is_empty(),
        });
        *r.status_mut() = status;
        r
    };
    if let Some(wait) = app.limits.login_failures.blocked(peer.ip(), Instant::now()) {
        return refuse(
            &format!(
                "too many failed sign-ins from your address: try again in {} s",
                wait.as_secs().max(1)
            ),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let admin = if !f.user.is_empty() {
        Ok(password_ok(&app, &f.user, &f.password).await)
    } else {
        auth::verify(&app.hub.store, f.token.trim())
            .await
            .map(|p| matches!(p, Some(Principal::Admin { .. })))
    };
    match admin {
        Ok(true) => {
            let id = app
                .sessions
                .create(if f.user.is_empty() { "admin" } else { &f.user });
            (
                [(
                    header::SET_COOKIE,
                    format!(
                        "{COOKIE}={id}; {}; Max-Age={}",
                        cookie_attributes(&app),
                        LIFETIME.as_secs()
                    ),
                )],
                Redirect::to(&next),
            )
                .into_response()
        }
        Ok(false) => {
            tracing::info!("failed sign-in from {}", peer.ip());
            app.limits.login_failures.note(peer.ip(), Instant::now());
            refuse(
                if f.user.is_empty() {
                    "that is not the admin token (it is in DATA/admin-token on the server)"
                } else {
                    "wrong user name or password"
                },
                StatusCode::UNAUTHORIZED,
            )
        }
        Err(e) => refuse(
            &format!("server error: {e}"),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

pub async fn logout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if app.sessions.check(&headers, &f.csrf) {
        app.sessions.remove(&headers);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; {}; Max-Age=0", cookie_attributes(&app)),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the page: {e}"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_is_a_path_on_this_server_or_the_front_page() {
        for ok in ["/", "/builds/3", "/workers?x=1&y=%2F", "/b/a.b-c_d~e"] {
            assert_eq!(safe_next(Some(ok)), ok);
        }
        for off in [
            "//evil.example",
            "/\t/evil.example",
            "/\t//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example",
            "/\n/evil.example",
            "/ /evil.example",
            "/\u{7f}/evil.example",
            "/\u{3000}/evil.example",
            "evil.example",
            "",
        ] {
            assert_eq!(safe_next(Some(off)), "/", "{off:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
