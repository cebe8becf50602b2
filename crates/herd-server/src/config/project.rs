//! A project in the server config: its repository, which branches to
//! build, how often to poll, its webhook secret and where to report.
//!
//! ```yaml
//! projects:
//!   herd:
//!     repo: https://github.com/o/herd.git
//!     branches: [main, 'release/*']   # default: the repository's default branch
//!     poll: 1m                        # or `off` (webhooks only); default 1m
//!     collapse: true                  # false: build each commit of a push
//!     webhook_secret: {env: HERD_HOOK_SECRET}
//!     tags: ['v*']                    # build new tags matching these globs
//!     pull_requests:                  # build pull/merge requests
//!       approval: untrusted           # untrusted (default) | all | none
//!       authors: [alice]              # logins trusted like the repository's own branches
//!       workers: {untrusted: ok}      # labels a worker needs to run untrusted code
//!     report:
//!       - github: {repo: o/herd, token: {env: GITHUB_TOKEN}}
//!       - gitea: {url: https://codeberg.org, repo: o/herd, token: {file: /etc/herd/gitea-token}}
//!       - gitlab: {url: https://gitlab.com, project: group/herd, token: {env: GITLAB_TOKEN}}
//!       - webhook: {url: https://example.org/ci-hook, secret: {env: HOOK_SECRET}}
//! ```

use herd_core::ConfigError;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::time::Duration;

/// Polling interval of a project that does not say.
pub const DEFAULT_POLL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq)]
pub struct ProjectConfig {
    pub name: String,
    pub repo: Option<String>,
    /// herd.yml text for a project without a repository.
    pub pipeline: Option<String>,
    /// Branch globs to build; empty: the repository's default branch.
    pub branches: Vec<String>,
    /// None: no polling (webhooks only).
    pub poll: Option<Duration>,
    /// Build only the newest commit of several pushed at once.
    pub collapse: bool,
    pub webhook_secret: Option<Secret>,
    pub report: Vec<Reporter>,
    /// What the server's git presents to fetch the repository.
    pub credentials: Option<Credentials>,
    /// Where workers check out from: the server's mirror (the default),
    /// or the repository itself (`checkout: direct`).
    pub checkout: CheckoutFrom,
    /// Tag globs whose new tags are built; empty: no tag is.
    pub tags: Vec<String>,
    /// None: pull requests are not built.
    pub pull_requests: Option<PullRequestPolicy>,
    /// Who hears of finished builds.
    pub notify: Vec<super::notify::Notifier>,
    /// Builds started by the clock.
    pub schedule: Vec<ScheduleConfig>,
    /// How long its builds, logs and artifacts stay (falls back to the
    /// server's `keep:`).
    pub keep: super::KeepConfig,
}

/// One `schedule:` entry of a project (checked when the config is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Names its firings in the store (default: the pattern).
    pub name: String,
    pub cron: String,
    pub timezone: String,
    /// None: the repository's default branch.
    pub branch: Option<String>,
    /// Build nothing when the branch's head is what it last built.
    pub only_if_changed: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    cron: String,
    timezone: Option<String>,
    branch: Option<String>,
    #[serde(default)]
    only_if_changed: bool,
    name: Option<String>,
}

/// `pull_requests:` of a project: which pull requests wait for a
/// signed-in user's approval, and where untrusted ones may run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PullRequestPolicy {
    pub approval: herd_core::change::Approval,
    /// Forge logins whose pull requests are trusted.
    pub authors: Vec<String>,
    /// Labels (given by the server) a worker needs to run an untrusted
    /// pull request's jobs; empty: any worker, once approved.
    pub workers: std::collections::BTreeMap<String, String>,
    /// Build the merge of the head into its base, not the head alone.
    pub merge: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPullRequests {
    #[serde(default)]
    approval: herd_core::change::Approval,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    workers: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    merge: bool,
}

/// `checkout:` of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckoutFrom {
    /// Workers fetch from the server (git smart HTTP, their worker token).
    #[default]
    Server,
    /// Workers fetch from the repository URL themselves.
    Direct,
}

/// A user and a token for a repository over https, given to git by the
/// server (through `GIT_ASKPASS`, never on a command line or in a URL).
#[derive(Debug, Clone, PartialEq)]
pub struct Credentials {
    pub user: String,
    pub token: Secret,
}

impl ProjectConfig {
    /// A project with a repository and every default.
    pub fn with_repo(name: &str, repo: &str) -> Self {
        ProjectConfig {
            name: name.to_string(),
            repo: Some(repo.to_string()),
            pipeline: None,
            branches: Vec::new(),
            poll: Some(DEFAULT_POLL),
            collapse: true,
            webhook_secret: None,
            report: Vec::new(),
            credentials: None,
            checkout: CheckoutFrom::Server,
            tags: Vec::new(),
            pull_requests: None,
            notify: Vec::new(),
            schedule: Vec::new(),
            keep: super::KeepConfig::default(),
        }
    }
}

/// A secret of the server config (`secrets:`): its value, the builders
/// that may use it, and the labels a worker needs to get it.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretConfig {
    pub value: Secret,
    /// `BUILDER` or `PROJECT/BUILDER`; empty: any builder.
    pub builders: Vec<String>,
    /// Only workers with all these labels, set by the server (an
    /// enrollment token, `herd workers label`), run a job that uses it.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Projects that may use it; empty: any.
    pub projects: Vec<String>,
    /// Branches and tags (globs) whose builds get it; empty: any.
    pub refs: Vec<String>,
    /// Whether try builds get it (never, unless said).
    pub try_builds: bool,
}

/// `NAME: {env: X}` (any builder, any worker) or `NAME: {value: …,
/// builders: […], labels: {…}}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSecretConfig {
    Full {
        value: RawSecret,
        #[serde(default)]
        builders: Vec<String>,
        #[serde(default)]
        labels: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        projects: Vec<String>,
        #[serde(default)]
        refs: Vec<String>,
        #[serde(default, rename = "try")]
        try_builds: bool,
    },
    Plain(RawSecret),
}

/// A secret value; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the statuses of a project's builds go.
#[derive(Debug, Clone, PartialEq)]
pub enum Reporter {
    /// `api` defaults to https://api.github.com (GitHub Enterprise: https://HOST/api/v3).
    GitHub {
        api: String,
        repo: String,
        token: Secret,
    },
    /// Gitea and Forgejo: `url` is the instance.
    Gitea {
        url: String,
        repo: String,
        token: Secret,
    },
    /// `project` is `group/name` or the numeric id.
    GitLab {
        url: String,
        project: String,
        token: Secret,
    },
    /// A JSON POST when a build ends, signed with `secret` when given.
    Webhook { url: String, secret: Option<Secret> },
}

impl Reporter {
    /// Names this reporter in the store and on pages (no secrets).
    pub fn target(&self) -> String {
        match self {
            Reporter::GitHub { repo, .. } => format!("github:{repo}"),
            Reporter::Gitea { url, repo, .. } => format!("gitea:{url}/{repo}"),
            Reporter::GitLab { url, project, .. } => format!("gitlab:{url}/{project}"),
            Reporter::Webhook { url, .. } => format!("webhook:{url}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProject {
    pub repo: Option<String>,
    pub pipeline: Option<Spanned<String>>,
    #[serde(default)]
    pub branches: Vec<Spanned<String>>,
    pub poll: Option<Spanned<String>>,
    pub collapse: Option<bool>,
    pub webhook_secret: Option<Spanned<RawSecret>>,
    #[serde(default)]
    pub report: Vec<Spanned<RawReporter>>,
    /// Custom probes this project's builders name.
    #[serde(default)]
    pub probes: indexmap::IndexMap<Spanned<String>, Spanned<String>>,
    /// How the server reaches a private repository (never in the URL).
    pub credentials: Option<Spanned<RawCredentials>>,
    /// `server` (the default) or `direct`.
    #[serde(default)]
    pub checkout: CheckoutFrom,
    #[serde(default)]
    pub tags: Vec<Spanned<String>>,
    pub pull_requests: Option<Spanned<RawPullRequests>>,
    #[serde(default)]
    pub notify: Vec<Spanned<super::notify::RawNotifier>>,
    #[serde(default)]
    pub schedule: Vec<Spanned<RawSchedule>>,
    pub keep: Option<Spanned<super::keep::RawKeep>>,
}

/// `credentials: {user: NAME, token: SECRET}` of a project's repository.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredentials {
    pub user: String,
    pub token: RawSecret,
}

/// `secret: text`, `secret: {env: NAME}` or `secret: {file: PATH}`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawSecret {
    Text(String),
    Env { env: String },
    File { file: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawReporter {
    Github {
        repo: String,
        token: RawSecret,
        api: Option<String>,
    },
    Gitea {
        url: String,
        repo: String,
        token: RawSecret,
    },
    Forgejo {
        url: String,
        repo: String,
        token: RawSecret,
    },
    Gitlab {
        url: Option<String>,
        project: String,
        token: RawSecret,
    },
    Webhook {
        url: String,
        secret: Option<RawSecret>,
    },
}

pub(super) struct Lower<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl Lower<'_> {
    pub(super) fn err(&self, loc: &serde_saphyr::Location, msg: impl Into<String>) -> ConfigError {
        ConfigError::at_location(self.file, self.text, loc, msg)
    }

    pub fn project(&self, name: String, raw: RawProject) -> Result<ProjectConfig, ConfigError> {
        let mut p = ProjectConfig {
            pipeline: raw.pipeline.map(|s| s.value),
            repo: raw.repo,
            checkout: raw.checkout,
            ..ProjectConfig::with_repo(&name, "")
        };
        for b in &raw.branches {
            herd_core::change::compile_glob(&b.value).map_err(|e| {
                self.err(
                    &b.referenced,
                    format!("invalid branch pattern `{}`: {e}", b.value),
                )
                .with_help("`*` matches within one segment (`release/*`), `**` across them")
            })?;
            p.branches.push(b.value.clone());
        }
        if let Some(poll) = &raw.poll {
            p.poll = match poll.value.as_str() {
                "off" | "never" | "false" => None,
                text => Some(
                    herd_core::duration::parse_duration(text)
                        .ok()
                        .filter(|d| *d >= Duration::from_millis(100))
                        .ok_or_else(|| {
                            self.err(&poll.referenced, format!("invalid poll interval `{text}`"))
                                .with_help("write a duration such as `30s` or `5m`, or `off` for webhooks only")
                        })?,
                ),
            };
        }
        p.collapse = raw.collapse.unwrap_or(true);
        for t in &raw.tags {
            herd_core::change::compile_glob(&t.value).map_err(|e| {
                self.err(
                    &t.referenced,
                    format!("invalid tag pattern `{}`: {e}", t.value),
                )
                .with_help("tags as globs: `v*`, `release-*`, `*` for every tag")
            })?;
            p.tags.push(t.value.clone());
        }
        if let Some(pr) = &raw.pull_requests {
            for (key, value) in &pr.value.workers {
                if herd_core::requirement::Requirement::parse(&format!("{key} == {value}")).is_err()
                {
                    return Err(self
                        .err(&pr.referenced, format!("`{key}: {value}` is not a label"))
                        .with_help("labels are names and values such as `untrusted: ok`"));
                }
            }
            p.pull_requests = Some(PullRequestPolicy {
                approval: pr.value.approval,
                authors: pr.value.authors.clone(),
                workers: pr.value.workers.clone(),
                merge: pr.value.merge,
            });
            if pr.value.merge && p.checkout == CheckoutFrom::Direct {
                return Err(self
                    .err(&pr.referenced, "`merge: true` needs `checkout: server`")
                    .with_help("the merge commit exists only in the server's mirror: workers fetch it from there"));
            }
        }
        if let Some(s) = &raw.webhook_secret {
            p.webhook_secret = Some(self.secret(s)?);
        }
        for r in &raw.report {
            p.report.push(self.reporter(r)?);
        }
        for n in &raw.notify {
            p.notify.push(self.notifier(n)?);
        }
        for s in &raw.schedule {
            let r = &s.value;
            let timezone = r.timezone.clone().unwrap_or_else(|| "UTC".into());
            herd_core::cron::CronSchedule::parse(&r.cron, &timezone).map_err(|e| {
                self.err(&s.referenced, e).with_help(
                    "five fields `MIN HOUR DAY MONTH WEEKDAY` (`0 3 * * *`: 03:00 daily), six with seconds first, or @daily/@hourly/@weekly",
                )
            })?;
            let name = r.name.clone().unwrap_or_else(|| r.cron.clone());
            if p.schedule.iter().any(|o: &ScheduleConfig| o.name == name) {
                return Err(self
                    .err(&s.referenced, format!("two schedules are named `{name}`"))
                    .with_help("give each a `name:`"));
            }
            p.schedule.push(ScheduleConfig {
                name,
                cron: r.cron.clone(),
                timezone,
                branch: r.branch.clone(),
                only_if_changed: r.only_if_changed,
            });
        }
        if let Some(k) = &raw.keep {
            p.keep = super::keep::lower(self.file, self.text, k)?;
        }
        if let Some(c) = &raw.credentials {
            if c.value.user.is_empty() || c.value.user.contains(['\n', ':']) {
                return Err(self
                    .err(&c.referenced, "`credentials.user` is empty or has a `:`")
                    .with_help("give the user name the forge expects, e.g. `x-access-token` for a GitHub token"));
            }
            p.credentials = Some(Credentials {
                user: c.value.user.clone(),
                token: self.secret_at(&c.value.token, &c.referenced)?,
            });
        }
        if let Some(repo) = &p.repo {
            if herd_core::redact::has_credentials(repo) {
                tracing::warn!(
                    "project {name}: the repository URL carries credentials; give them as `credentials:` (from an env or a file) instead, so that nothing shows them"
                );
            }
        }
        Ok(p)
    }

    pub fn secret_config(
        &self,
        raw: &Spanned<RawSecretConfig>,
    ) -> Result<SecretConfig, ConfigError> {
        Ok(match &raw.value {
            RawSecretConfig::Plain(s) => SecretConfig {
                value: self.secret_at(s, &raw.referenced)?,
                builders: Vec::new(),
                labels: Default::default(),
                projects: Vec::new(),
                refs: Vec::new(),
                try_builds: false,
            },
            RawSecretConfig::Full {
                value,
                builders,
                labels,
                projects,
                refs,
                try_builds,
            } => {
                for r in refs {
                    herd_core::change::compile_glob(r).map_err(|e| {
                        self.err(&raw.referenced, format!("invalid ref pattern `{r}`: {e}"))
                            .with_help("branches and tags as globs: `main`, `release/*`, `v*`")
                    })?;
                }
                SecretConfig {
                    value: self.secret_at(value, &raw.referenced)?,
                    builders: builders.clone(),
                    labels: labels.clone(),
                    projects: projects.clone(),
                    refs: refs.clone(),
                    try_builds: *try_builds,
                }
            }
        })
    }

    fn secret(&self, s: &Spanned<RawSecret>) -> Result<Secret, ConfigError> {
        self.secret_at(&s.value, &s.referenced)
    }

    pub(super) fn secret_at(
        &self,
        s: &RawSecret,
        at: &serde_saphyr::Location,
    ) -> Result<Secret, ConfigError> {
        let value = match s {
            RawSecret::Text(t) => t.clone(),
            RawSecret::Env { env } => std::env::var(env).map_err(|_| {
                self.err(at, format!("the environment variable `{env}` is not set"))
                    .with_help(format!(
                        "set {env} in the server's environment, or use {{file: PATH}}"
                    ))
            })?,
            RawSecret::File { file } => std::fs::read_to_string(file)
                .map_err(|e| {
                    self.err(at, format!("cannot read the secret file `{file}`: {e}"))
                        .with_help("give a readable file holding only the secret")
                })?
                .trim()
                .to_string(),
        };
        if value.is_empty() {
            return Err(self
                .err(at, "the secret is empty")
                .with_help("an empty secret would let anyone in"));
        }
        Ok(Secret(value))
    }

    fn reporter(&self, r: &Spanned<RawReporter>) -> Result<Reporter, ConfigError> {
        let at = &r.referenced;
        let url = |u: &str| -> Result<String, ConfigError> {
            if u.starts_with("https://") || u.starts_with("http://") {
                Ok(u.trim_end_matches('/').to_string())
            } else {
                Err(self
                    .err(at, format!("`{u}` is not an http(s) URL"))
                    .with_help("write the URL with its scheme, e.g. https://codeberg.org"))
            }
        };
        let repo = |repo: &str| -> Result<String, ConfigError> {
            match repo.split_once('/') {
                Some((o, n)) if !o.is_empty() && !n.is_empty() && !n.contains('/') => {
                    Ok(repo.to_string())
                }
                _ => Err(self
                    .err(at, format!("`{repo}` is not OWNER/NAME"))
                    .with_help("name the repository as OWNER/NAME, e.g. twisted/twisted")),
            }
        };
        Ok(match &r.value {
            RawReporter::Github {
                repo: rp,
                token,
                api,
            } => Reporter::GitHub {
                api: url(api.as_deref().unwrap_or("https://api.github.com"))?,
                repo: repo(rp)?,
                token: self.secret_at(token, at)?,
            },
            RawReporter::Gitea {
                url: u,
                repo: rp,
                token,
            }
            | RawReporter::Forgejo {
                url: u,
                repo: rp,
                token,
            } => Reporter::Gitea {
                url: url(u)?,
                repo: repo(rp)?,
                token: self.secret_at(token, at)?,
            },
            RawReporter::Gitlab {
                url: u,
                project,
                token,
            } => Reporter::GitLab {
                url: url(u.as_deref().unwrap_or("https://gitlab.com"))?,
                project: project.clone(),
                token: self.secret_at(token, at)?,
            },
            RawReporter::Webhook { url: u, secret } => Reporter::Webhook {
                url: url(u)?,
                secret: secret.as_ref().map(|s| self.secret_at(s, at)).transpose()?,
            },
        })
    }
}
