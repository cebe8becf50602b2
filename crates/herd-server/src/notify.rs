//! Notifications out: email (SMTP through lettre), Slack-compatible and
//! Matrix chat, and herd's signed webhook, for the builds a project's
//! `notify:` asks about. The reporter (`report.rs`) decides when and keeps
//! the record (one row per notifier in `status_reports`, context
//! `notify`), so sends are retried with backoff across restarts like
//! commit statuses; this module only says it.

use crate::config::{Channel, Notifier, SmtpConfig, SmtpTls};
use crate::store::{BuildRow, JobRow};
use crate::App;
use herd_core::notify::{BuildFacts, Message};
use herd_core::state::RunState;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// The context under which notifications are recorded.
pub const CONTEXT: &str = "notify";

/// Whether `notifier` speaks of this finished build (`previous`: the
/// state of the build before it on the same branch or tag).
pub fn wanted(n: &Notifier, build: &BuildRow, previous: Option<RunState>) -> bool {
    // Pull requests and try builds are their authors' business: statuses
    // on the forge tell them.
    if matches!(
        build.kind,
        crate::store::BuildKind::Try | crate::store::BuildKind::PullRequest
    ) {
        return false;
    }
    if !n.branches.is_empty() {
        let r = build.branch.as_deref().or(build.ref_name.as_deref());
        if !r.is_some_and(|r| herd_core::change::globs_select(&n.branches, r)) {
            return false;
        }
    }
    herd_core::notify::fires(&n.on, build.state, previous)
}

/// The message of a finished build.
pub fn message_of(
    app: &App,
    build: &BuildRow,
    jobs: &[JobRow],
    first_failing_test: Option<&str>,
    fixed: bool,
) -> Message {
    let link = format!("{}/builds/{}", app.public_url, build.id);
    let origin = match (build.kind, &build.branch, &build.ref_name) {
        (crate::store::BuildKind::Tag, _, Some(t)) => format!("tag {t}"),
        (_, Some(b), _) => b.clone(),
        (_, None, Some(r)) => r.clone(),
        _ => String::new(),
    };
    let failed_jobs = jobs
        .iter()
        .filter(|j| matches!(j.state, RunState::Failure | RunState::Error))
        .map(|j| format!("{}/{}", j.builder, j.name))
        .collect();
    herd_core::notify::message(&BuildFacts {
        id: build.id,
        project: &build.project,
        state: Some(build.state),
        origin: &origin,
        revision: build.revision.as_deref(),
        subject: build.message.as_deref().unwrap_or(""),
        author: build.author.as_deref().unwrap_or(""),
        failed_jobs,
        first_failing_test,
        error: build.error.as_deref(),
        link: &link,
        fixed,
    })
}

/// Sends one message; the error says what the other side answered (never
/// a secret: a Slack URL or a token is not in it).
pub async fn send(
    app: &App,
    n: &Notifier,
    msg: &Message,
    build: &BuildRow,
    jobs: &[JobRow],
) -> Result<(), String> {
    let http = &app.reporter.http;
    let request = match &n.channel {
        Channel::Email { to } => {
            let smtp = app
                .smtp
                .as_ref()
                .ok_or("the server has no `smtp:` to send email through")?;
            return send_email(smtp, to, msg).await;
        }
        Channel::Slack { url } => http.post(&url.0).json(&json!({
            "text": format!("*{}*\n{}", msg.subject, msg.text),
        })),
        Channel::Matrix {
            homeserver,
            room,
            token,
        } => {
            // The transaction id makes a retry of the same message one event.
            let txn = format!("herd-{}-{}-{}", build.id, build.state, n.target().len());
            http.put(format!(
                "{homeserver}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}",
                encode(room)
            ))
            .bearer_auth(&token.0)
            .json(&json!({
                "msgtype": "m.text",
                "body": format!("{}\n{}", msg.subject, msg.text),
            }))
        }
        Channel::Webhook { url, secret } => {
            finished_webhook(app, url, secret.as_ref(), build, jobs)?
        }
    };
    let response = request
        .send()
        .await
        .map_err(|e| format!("cannot reach it: {}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let text = response.text().await.unwrap_or_default();
    Err(format!(
        "answered {status}: {}",
        text.chars().take(300).collect::<String>()
    ))
}

/// One plain-text email to `to`.
pub async fn send_email(smtp: &SmtpConfig, to: &[String], msg: &Message) -> Result<(), String> {
    let mut email = lettre::Message::builder()
        .from(
            smtp.from
                .parse()
                .map_err(|e| format!("`from: {}`: {e}", smtp.from))?,
        )
        .subject(&msg.subject)
        .header(ContentType::TEXT_PLAIN);
    for a in to {
        email = email.to(a.parse().map_err(|e| format!("`{a}`: {e}"))?);
    }
    let email = email
        .body(msg.text.clone())
        .map_err(|e| format!("cannot make the message: {e}"))?;
    let builder = match smtp.tls {
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host),
        SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            &smtp.host,
        )),
    }
    .map_err(|e| format!("smtp {}: {e}", smtp.host))?;
    let mut builder = builder
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(30)));
    if let Some((user, password)) = &smtp.login {
        builder = builder.credentials(Credentials::new(user.clone(), password.0.clone()));
    }
    builder
        .build()
        .send(email)
        .await
        .map(|_| ())
        .map_err(|e| format!("smtp {}:{}: {e}", smtp.host, smtp.port))
}

/// The JSON a webhook gets when a build ends (a `report:` webhook and a
/// `notify:` one alike).
pub fn finished_payload(app: &App, build: &BuildRow, jobs: &[JobRow]) -> serde_json::Value {
    let builders: BTreeMap<String, &str> = builder_statuses(build.state, jobs)
        .into_iter()
        .map(|(c, w)| (c.trim_start_matches("herd/").to_string(), w.as_str()))
        .collect();
    json!({
        "event": "build_finished",
        "build": {
            "id": build.id,
            "project": build.project,
            "revision": build.revision,
            "branch": build.branch,
            "ref": build.ref_name,
            "kind": build.kind.as_str(),
            "pull_request": build.pull_request,
            "state": build.state,
            "error": build.error,
            "reason": build.reason,
            "url": format!("{}/builds/{}", app.public_url, build.id),
            "created_at": build.created_at,
            "finished_at": build.finished_at,
        },
        "builders": builders,
    })
}

/// One status per builder, from its jobs' states.
pub fn builder_statuses(build_state: RunState, jobs: &[JobRow]) -> Vec<(String, RunState)> {
    let mut per_builder: BTreeMap<&str, Vec<RunState>> = BTreeMap::new();
    for j in jobs {
        per_builder
            .entry(j.builder.as_str())
            .or_default()
            .push(j.state);
    }
    if per_builder.is_empty() {
        return vec![("herd".into(), build_state)];
    }
    per_builder
        .into_iter()
        .map(|(b, states)| (format!("herd/{b}"), RunState::of_build(&states)))
        .collect()
}

/// The `build_finished` POST of a `report:` or `notify:` webhook, signed
/// with its secret when it has one.
pub fn finished_webhook(
    app: &App,
    url: &str,
    secret: Option<&crate::config::Secret>,
    build: &BuildRow,
    jobs: &[JobRow],
) -> Result<reqwest::RequestBuilder, String> {
    let bytes =
        serde_json::to_vec(&finished_payload(app, build, jobs)).map_err(|e| e.to_string())?;
    let mut req = app
        .reporter
        .http
        .post(url)
        .header("Content-Type", "application/json")
        .header("X-Herd-Event", "build_finished")
        .header("X-Herd-Delivery", format!("{}-{}", build.id, build.state));
    if let Some(s) = secret {
        req = req.header(
            "X-Herd-Signature-256",
            format!(
                "sha256={}",
                crate::auth::hmac_sha256_hex(s.0.as_bytes(), &bytes)
            ),
        );
    }
    Ok(req.body(bytes))
}

/// One URL path segment, percent-encoded (a Matrix room id, GitLab's
/// `group/name`).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn room_ids_are_encoded() {
        assert_eq!(super::encode("!abc:matrix.org"), "%21abc%3Amatrix.org");
        assert_eq!(super::encode("group/sub/name"), "group%2Fsub%2Fname");
        assert_eq!(super::encode("42"), "42");
    }
}
