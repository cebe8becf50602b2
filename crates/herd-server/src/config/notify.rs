//! `notify:` of a project (who hears of a finished build, and when) and
//! `smtp:` of the server (how email leaves).
//!
//! ```yaml
//! smtp:
//!   host: smtp.example.org
//!   port: 587                       # default: 465 (tls), 587 (starttls), 25 (none)
//!   tls: starttls                   # tls | starttls | none
//!   from: herd@example.org
//!   user: herd                      # optional, with password
//!   password: {env: SMTP_PASSWORD}
//! offline_notice: 1h                # a worker's owner hears when it is away this long
//! projects:
//!   herd:
//!     notify:
//!       - email: [dev@example.org]
//!         on: [failure, fixed]      # failure | fixed | always (default: failure, fixed)
//!         branches: [main]          # globs; default: every branch and tag
//!       - slack: {env: SLACK_WEBHOOK_URL}   # the hook URL is a secret
//!       - matrix: {homeserver: https://matrix.org, room: '!abc:matrix.org', token: {env: MATRIX_TOKEN}}
//!       - webhook: {url: https://example.org/ci, secret: {env: HOOK_SECRET}}
//! ```

use super::project::{Lower, RawSecret, Secret};
use herd_core::notify::NotifyOn;
use herd_core::ConfigError;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// One `notify:` entry of a project.
#[derive(Debug, Clone, PartialEq)]
pub struct Notifier {
    pub channel: Channel,
    pub on: Vec<NotifyOn>,
    /// Branch and tag globs; empty: any.
    pub branches: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Channel {
    Email {
        to: Vec<String>,
    },
    /// A Slack-compatible incoming webhook (Mattermost, Rocket.Chat,
    /// Discord's `/slack` endpoint): its URL is the secret.
    Slack {
        url: Secret,
    },
    Matrix {
        homeserver: String,
        room: String,
        token: Secret,
    },
    /// herd's signed JSON (as a `report:` webhook), on these events only.
    Webhook {
        url: String,
        secret: Option<Secret>,
    },
}

impl Notifier {
    /// Names it in the record of what was sent and on pages: never a
    /// secret (a Slack hook's URL is one: only its host shows).
    pub fn target(&self) -> String {
        match &self.channel {
            Channel::Email { to } => format!("email:{}", to.join(",")),
            Channel::Slack { url } => format!(
                "slack:{}",
                url.0
                    .split("://")
                    .nth(1)
                    .and_then(|r| r.split('/').next())
                    .unwrap_or("?")
            ),
            Channel::Matrix {
                homeserver, room, ..
            } => format!("matrix:{homeserver}/{room}"),
            Channel::Webhook { url, .. } => format!("notify:{url}"),
        }
    }
}

/// `tls:` of `smtp:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain, then STARTTLS before anything is sent (port 587).
    Starttls,
    /// No TLS: a relay on this machine only.
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: String,
    pub login: Option<(String, Secret)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotifier {
    email: Option<Vec<String>>,
    slack: Option<RawSecret>,
    matrix: Option<RawMatrix>,
    webhook: Option<RawHook>,
    on: Option<Vec<NotifyOn>>,
    #[serde(default)]
    branches: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    homeserver: String,
    room: String,
    token: RawSecret,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHook {
    url: String,
    secret: Option<RawSecret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSmtp {
    host: String,
    port: Option<u16>,
    tls: Option<SmtpTls>,
    from: String,
    user: Option<String>,
    password: Option<RawSecret>,
}

fn http_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://")) && !u.contains(char::is_whitespace)
}

/// A mailbox as lettre takes it: `name@host`, no spaces or brackets.
fn mailbox(a: &str) -> bool {
    a.split_once('@').is_some_and(|(l, h)| {
        !l.is_empty()
            && !h.is_empty()
            && !a.contains(|c: char| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
    })
}

impl Lower<'_> {
    pub(super) fn notifier(&self, raw: &Spanned<RawNotifier>) -> Result<Notifier, ConfigError> {
        let at = &raw.referenced;
        let r = &raw.value;
        let given = [
            r.email.is_some(),
            r.slack.is_some(),
            r.matrix.is_some(),
            r.webhook.is_some(),
        ]
        .iter()
        .filter(|g| **g)
        .count();
        if given != 1 {
            return Err(self
                .err(
                    at,
                    "a notifier has exactly one of `email:`, `slack:`, `matrix:`, `webhook:`",
                )
                .with_help("write one entry per channel: `- email: [dev@example.org]`"));
        }
        for b in &r.branches {
            herd_core::change::compile_glob(b).map_err(|e| {
                self.err(at, format!("invalid branch pattern `{b}`: {e}"))
                    .with_help("branches and tags as globs: `main`, `release/*`, `v*`")
            })?;
        }
        let channel = if let Some(to) = &r.email {
            if to.is_empty() {
                return Err(self
                    .err(at, "`email:` names nobody")
                    .with_help("give a list of addresses: `email: [dev@example.org]`"));
            }
            if let Some(bad) = to.iter().find(|a| !mailbox(a)) {
                return Err(self
                    .err(at, format!("`{bad}` is not an email address"))
                    .with_help("write plain addresses: `dev@example.org`"));
            }
            Channel::Email { to: to.clone() }
        } else if let Some(url) = &r.slack {
            let url = self.secret_at(url, at)?;
            if !http_url(&url.0) {
                return Err(self
                    .err(at, "the Slack webhook is not an http(s) URL")
                    .with_help("give the incoming webhook's URL, e.g. {env: SLACK_WEBHOOK_URL}"));
            }
            Channel::Slack { url }
        } else if let Some(m) = &r.matrix {
            if !http_url(&m.homeserver) {
                return Err(self
                    .err(at, format!("`{}` is not an http(s) URL", m.homeserver))
                    .with_help("the homeserver's address, e.g. https://matrix.org"));
            }
            if !m.room.starts_with('!') || !m.room.contains(':') {
                return Err(self
                    .err(at, format!("`{}` is not a room id", m.room))
                    .with_help(
                        "a room id looks like `!abcdef:matrix.org` (room settings, Advanced)",
                    ));
            }
            Channel::Matrix {
                homeserver: m.homeserver.trim_end_matches('/').to_string(),
                room: m.room.clone(),
                token: self.secret_at(&m.token, at)?,
            }
        } else if let Some(h) = &r.webhook {
            if !http_url(&h.url) {
                return Err(self
                    .err(at, format!("`{}` is not an http(s) URL", h.url))
                    .with_help("write the URL with its scheme"));
            }
            Channel::Webhook {
                url: h.url.clone(),
                secret: h
                    .secret
                    .as_ref()
                    .map(|s| self.secret_at(s, at))
                    .transpose()?,
            }
        } else {
            unreachable!("exactly one channel was counted")
        };
        Ok(Notifier {
            channel,
            on: r
                .on
                .clone()
                .unwrap_or_else(|| vec![NotifyOn::Failure, NotifyOn::Fixed]),
            branches: r.branches.clone(),
        })
    }

    pub(super) fn smtp(&self, raw: &Spanned<RawSmtp>) -> Result<SmtpConfig, ConfigError> {
        let at = &raw.referenced;
        let r = &raw.value;
        if !mailbox(&r.from) {
            return Err(self
                .err(at, format!("`from: {}` is not an email address", r.from))
                .with_help("the address messages come from, e.g. herd@example.org"));
        }
        let tls = r.tls.unwrap_or(SmtpTls::Starttls);
        let login = match (&r.user, &r.password) {
            (Some(u), Some(p)) => Some((u.clone(), self.secret_at(p, at)?)),
            (None, None) => None,
            _ => {
                return Err(self
                    .err(at, "`user:` and `password:` go together")
                    .with_help("give both, or neither for a relay that needs no login"))
            }
        };
        Ok(SmtpConfig {
            host: r.host.clone(),
            port: r.port.unwrap_or(match tls {
                SmtpTls::Tls => 465,
                SmtpTls::Starttls => 587,
                SmtpTls::None => 25,
            }),
            tls,
            from: r.from.clone(),
            login,
        })
    }
}
