//! The server's config file (YAML): where to listen, where to keep data,
//! timings, and the projects to build.
//!
//! ```yaml
//! listen: 127.0.0.1:8080
//! data: ./herd-data
//! heartbeat_interval: 5s
//! heartbeat_timeout: 15s
//! idle_heartbeat_interval: 30s   # a worker running nothing
//! idle_heartbeat_timeout: 90s
//! max_step_log: 268435456        # bytes of output kept per step
//! tls: self-signed               # or tls: {cert: FILE, key: FILE}
//! client_timeout: 10s
//! projects:
//!   twisted:
//!     repo: https://github.com/twisted/twisted.git
//!   smoke:                       # a project without a repository
//!     pipeline: |
//!       builders:
//!         hello:
//!           steps:
//!             - run: echo hello
//! ```

use herd_core::duration::parse_duration;
use herd_core::{ConfigError, Pipeline};
use indexmap::IndexMap;
use serde::Deserialize;
use serde_saphyr::Spanned;
use std::time::Duration;

mod keep;
mod notify;
mod project;
pub use keep::{KeepConfig, Limit};
pub use notify::{Channel, Notifier, SmtpConfig, SmtpTls};
pub use project::{
    CheckoutFrom, ProjectConfig, Reporter, ScheduleConfig, Secret, SecretConfig, DEFAULT_POLL,
};
use project::{RawProject, RawSecretConfig};

#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub listen: Option<String>,
    /// The server's address as others reach it (links in reported statuses).
    pub url: Option<String>,
    /// `postgres://…` or a SQLite file; default DATA/herd.db.
    pub database: Option<String>,
    pub data: Option<String>,
    pub heartbeat_interval: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    pub idle_heartbeat_interval: Option<Duration>,
    pub idle_heartbeat_timeout: Option<Duration>,
    pub projects: Vec<ProjectConfig>,
    /// Web sign-in: user name -> argon2 password hash (`herd hash-password`).
    pub users: std::collections::BTreeMap<String, String>,
    /// The web page and the reading API need a sign-in too.
    pub private: bool,
    /// `secrets:`, referenced in herd.yml as `${{ secrets.NAME }}`.
    pub secrets: std::collections::BTreeMap<String, SecretConfig>,
    /// Bytes of output kept per step.
    pub max_step_log: Option<u64>,
    pub tls: Option<TlsConfig>,
    /// How long a client may take for its first byte, TLS handshake or
    /// request head.
    pub client_timeout: Option<Duration>,
    /// Custom probes (the server's and its projects'): name -> command.
    pub probes: std::collections::BTreeMap<String, String>,
    pub limits: BuildLimits,
    /// Where artifacts are kept (default DATA/artifacts); servers sharing
    /// one PostgreSQL database share this directory too.
    pub artifacts_dir: Option<String>,
    /// How email leaves (notifications, owners' notices).
    pub smtp: Option<SmtpConfig>,
    /// How long a worker is away before its owner hears (default 1 h).
    pub offline_notice: Option<Duration>,
    /// What every project keeps unless it says otherwise (`keep:`).
    pub keep: KeepConfig,
    /// How often the janitor removes what `keep:` lets go (default 1 h).
    pub janitor_interval: Option<Duration>,
}

/// `tls:` of the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsConfig {
    SelfSigned,
    Files { cert: String, key: String },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTls {
    Mode(String),
    Files { cert: String, key: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    url: Option<String>,
    database: Option<String>,
    data: Option<String>,
    heartbeat_interval: Option<Spanned<String>>,
    heartbeat_timeout: Option<Spanned<String>>,
    idle_heartbeat_interval: Option<Spanned<String>>,
    idle_heartbeat_timeout: Option<Spanned<String>>,
    /// `projects:` with nothing under it is allowed (null).
    #[serde(default)]
    projects: Option<IndexMap<Spanned<String>, RawProject>>,
    #[serde(default)]
    users: IndexMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    secrets: IndexMap<Spanned<String>, Spanned<RawSecretConfig>>,
    max_step_log: Option<u64>,
    tls: Option<Spanned<RawTls>>,
    client_timeout: Option<Spanned<String>>,
    /// Custom probes: name -> the shell command that prints a version.
    #[serde(default)]
    probes: IndexMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    limits: Option<Spanned<RawLimits>>,
    artifacts_dir: Option<String>,
    smtp: Option<Spanned<notify::RawSmtp>>,
    offline_notice: Option<Spanned<String>>,
    keep: Option<Spanned<keep::RawKeep>>,
    janitor_interval: Option<Spanned<String>>,
}

/// `limits:` of the config file: what one build and one sender may ask.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_builders_per_build: Option<u32>,
    max_jobs_per_build: Option<u32>,
    try_builds_per_hour: Option<u32>,
    max_attempt_log: Option<u64>,
    max_artifact_file: Option<u64>,
    max_artifacts_per_job: Option<u64>,
}

/// What one build and one sender may ask (`limits:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildLimits {
    /// Builders one build may have (a try's herd.yml is its sender's).
    pub max_builders_per_build: u32,
    /// Jobs (shards included) one build may have.
    pub max_jobs_per_build: u32,
    /// Try builds one try token may send per hour.
    pub try_builds_per_hour: u32,
    /// Bytes of output kept per attempt, all its steps together.
    pub max_attempt_log: u64,
    /// Largest artifact file, in bytes.
    pub max_artifact_file: u64,
    /// Bytes of artifacts one attempt of a job may upload, all files.
    pub max_artifacts_per_job: u64,
}

impl Default for BuildLimits {
    fn default() -> Self {
        BuildLimits {
            max_builders_per_build: 200,
            max_jobs_per_build: 1_000,
            try_builds_per_hour: 60,
            max_attempt_log: 1024 * 1024 * 1024,
            max_artifact_file: 4 << 30,
            max_artifacts_per_job: 16 << 30,
        }
    }
}

impl ServerConfig {
    pub fn parse(file: &str, text: &str) -> Result<ServerConfig, ConfigError> {
        let raw: RawConfig =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::from_yaml(file, text, &e))?;
        let duration = |v: &Option<Spanned<String>>| -> Result<Option<Duration>, ConfigError> {
            v.as_ref()
                .map(|s| {
                    parse_duration(&s.value).map_err(|e| {
                        ConfigError::at_location(
                            file,
                            text,
                            &s.referenced,
                            format!("invalid duration `{}`: {e}", s.value),
                        )
                    })
                })
                .transpose()
        };
        let mut probes = std::collections::BTreeMap::new();
        let mut add_probe =
            |name: &Spanned<String>, command: &Spanned<String>| -> Result<(), ConfigError> {
                check_probe(file, text, name, command)?;
                match probes.get(&name.value) {
                    Some(c) if *c != command.value => Err(ConfigError::at_location(
                        file,
                        text,
                        &name.referenced,
                        format!(
                            "probe `{}` is defined twice, with another command",
                            name.value
                        ),
                    )
                    .with_help("one name is one probe on every worker: rename one of them")),
                    _ => {
                        probes.insert(name.value.clone(), command.value.clone());
                        Ok(())
                    }
                }
            };
        for (name, command) in &raw.probes {
            add_probe(name, command)?;
        }
        let mut projects = Vec::new();
        for (name, p) in raw.projects.unwrap_or_default() {
            for (probe, command) in &p.probes {
                add_probe(probe, command)?;
            }
            if !valid_project_name(&name.value) {
                return Err(ConfigError::at_location(
                    file,
                    text,
                    &name.referenced,
                    format!("invalid project name `{}`", name.value),
                )
                .with_help("names use letters, digits, `-`, `_` and `.`"));
            }
            if p.repo.is_none() && p.pipeline.is_none() {
                return Err(ConfigError::at_location(
                    file,
                    text,
                    &name.referenced,
                    format!("project `{}` has neither `repo:` nor `pipeline:`", name.value),
                )
                .with_help("give `repo:` (a git URL or path whose herd.yml says what to build) or an inline `pipeline:`"));
            }
            if let Some(pl) = &p.pipeline {
                Pipeline::parse(&format!("{file} (pipeline of {})", name.value), &pl.value)?;
            }
            let has_smtp = raw.smtp.is_some();
            let at = name.referenced;
            let project = project::Lower { file, text }.project(name.value, p)?;
            if !has_smtp
                && project
                    .notify
                    .iter()
                    .any(|n| matches!(n.channel, Channel::Email { .. }))
            {
                return Err(ConfigError::at_location(
                    file,
                    text,
                    &at,
                    format!(
                        "project `{}` sends email, and the server has no `smtp:`",
                        project.name
                    ),
                )
                .with_help(
                    "add `smtp: {host: HOST, from: herd@example.org}` at the top of the config",
                ));
            }
            projects.push(project);
        }
        let mut users = std::collections::BTreeMap::new();
        for (name, hash) in raw.users {
            if argon2::PasswordHash::new(&hash.value).is_err() {
                return Err(ConfigError::at_location(
                    file,
                    text,
                    &hash.referenced,
                    format!("the password of user `{}` is not an argon2 hash", name.value),
                )
                .with_help("make one with `herd hash-password` (it reads the password from standard input)"));
            }
            users.insert(name.value, hash.value);
        }
        let mut secrets = std::collections::BTreeMap::new();
        for (name, raw) in &raw.secrets {
            if !valid_project_name(&name.value) {
                return Err(ConfigError::at_location(
                    file,
                    text,
                    &name.referenced,
                    format!("invalid secret name `{}`", name.value),
                )
                .with_help("names use letters, digits, `-`, `_` and `.`"));
            }
            secrets.insert(
                name.value.clone(),
                project::Lower { file, text }.secret_config(raw)?,
            );
        }
        Ok(ServerConfig {
            secrets,
            users,
            private: raw.private,
            listen: raw.listen,
            url: raw.url.map(|u| u.trim_end_matches('/').to_string()),
            database: raw.database,
            data: raw.data,
            heartbeat_interval: duration(&raw.heartbeat_interval)?,
            heartbeat_timeout: duration(&raw.heartbeat_timeout)?,
            idle_heartbeat_interval: duration(&raw.idle_heartbeat_interval)?,
            idle_heartbeat_timeout: duration(&raw.idle_heartbeat_timeout)?,
            projects,
            max_step_log: raw.max_step_log,
            tls: match raw.tls {
                None => None,
                Some(t) => {
                    Some(match t.value {
                        RawTls::Files { cert, key } => TlsConfig::Files { cert, key },
                        RawTls::Mode(m) if m == "self-signed" => TlsConfig::SelfSigned,
                        RawTls::Mode(m) => return Err(ConfigError::at_location(
                            file,
                            text,
                            &t.referenced,
                            format!("unknown tls mode `{m}`"),
                        )
                        .with_help(
                            "use `tls: self-signed`, or `tls: {cert: FILE, key: FILE}` (both PEM)",
                        )),
                    })
                }
            },
            client_timeout: duration(&raw.client_timeout)?,
            probes,
            limits: lower_limits(file, text, raw.limits)?,
            artifacts_dir: raw.artifacts_dir,
            smtp: raw
                .smtp
                .as_ref()
                .map(|s| project::Lower { file, text }.smtp(s))
                .transpose()?,
            offline_notice: duration(&raw.offline_notice)?,
            keep: raw
                .keep
                .as_ref()
                .map(|k| keep::lower(file, text, k))
                .transpose()?
                .unwrap_or_default(),
            janitor_interval: duration(&raw.janitor_interval)?,
        })
    }
}

/// A custom probe's name must be one a requirement can name, and not a
/// fact; its command must say something.
fn check_probe(
    file: &str,
    text: &str,
    name: &Spanned<String>,
    command: &Spanned<String>,
) -> Result<(), ConfigError> {
    let n = &name.value;
    let ok = !n.is_empty()
        && n.len() <= 100
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'))
        && !herd_core::probe::is_fact(n);
    if !ok {
        return Err(ConfigError::at_location(
            file,
            text,
            &name.referenced,
            format!("invalid probe name `{n}`"),
        )
        .with_help("a probe is named as requirements name it: letters, digits, `-`, `_`, `.`, `+`, and not a fact such as `os`"));
    }
    if command.value.trim().is_empty() {
        return Err(ConfigError::at_location(
            file,
            text,
            &command.referenced,
            format!("probe `{n}` has an empty command"),
        )
        .with_help("give a shell command that prints a version, e.g. `wx-config --version`"));
    }
    Ok(())
}

fn lower_limits(
    file: &str,
    text: &str,
    raw: Option<Spanned<RawLimits>>,
) -> Result<BuildLimits, ConfigError> {
    let mut limits = BuildLimits::default();
    let Some(raw) = raw else {
        return Ok(limits);
    };
    let zero = |what: &str| {
        ConfigError::at_location(
            file,
            text,
            &raw.referenced,
            format!("`{what}` must be at least 1"),
        )
        .with_help("leave it out for the default")
    };
    let r = &raw.value;
    if let Some(n) = r.max_builders_per_build {
        limits.max_builders_per_build = (n > 0)
            .then_some(n)
            .ok_or_else(|| zero("max_builders_per_build"))?;
    }
    if let Some(n) = r.max_jobs_per_build {
        limits.max_jobs_per_build = (n > 0)
            .then_some(n)
            .ok_or_else(|| zero("max_jobs_per_build"))?;
    }
    if let Some(n) = r.try_builds_per_hour {
        limits.try_builds_per_hour = (n > 0)
            .then_some(n)
            .ok_or_else(|| zero("try_builds_per_hour"))?;
    }
    if let Some(n) = r.max_artifact_file {
        limits.max_artifact_file = (n > 0)
            .then_some(n)
            .ok_or_else(|| zero("max_artifact_file"))?;
    }
    if let Some(n) = r.max_artifacts_per_job {
        limits.max_artifacts_per_job = (n > 0)
            .then_some(n)
            .ok_or_else(|| zero("max_artifacts_per_job"))?;
    }
    if let Some(n) = r.max_attempt_log {
        limits.max_attempt_log = (n >= 1024).then_some(n).ok_or_else(|| {
            ConfigError::at_location(
                file,
                text,
                &raw.referenced,
                "`max_attempt_log` must be at least 1024 bytes",
            )
        })?;
    }
    Ok(limits)
}

pub fn valid_project_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 100
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !n.starts_with('.')
}

/// `NAME=REPO` from `--project`.
pub fn parse_project_arg(arg: &str) -> Result<ProjectConfig, String> {
    let (name, repo) = arg.split_once('=').ok_or_else(|| {
        format!("`{arg}`: expected NAME=REPO, e.g. --project herd=https://example.org/herd.git")
    })?;
    if !valid_project_name(name) {
        return Err(format!(
            "`{name}`: a project name uses letters, digits, `-`, `_` and `.`"
        ));
    }
    if repo.is_empty() {
        return Err(format!("`{arg}`: the repository is empty"));
    }
    Ok(ProjectConfig::with_repo(name, repo))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_projects_and_durations() {
        let c = ServerConfig::parse(
            "herd-server.yml",
            "heartbeat_interval: 2s\nprojects:\n  a:\n    repo: /tmp/a\n  b:\n    pipeline: |\n      builders:\n        x:\n          steps: [{run: echo}]\n",
        )
        .unwrap();
        assert_eq!(c.heartbeat_interval, Some(Duration::from_secs(2)));
        assert_eq!(c.projects.len(), 2);
        assert!(c.projects[1]
            .pipeline
            .as_deref()
            .unwrap()
            .contains("builders"));
    }

    #[test]
    fn tls_and_limits_are_read_and_a_bad_mode_is_placed() {
        let c = ServerConfig::parse(
            "s.yml",
            "tls: self-signed\nclient_timeout: 3s\nmax_step_log: 4096\n",
        )
        .unwrap();
        assert_eq!(c.tls, Some(TlsConfig::SelfSigned));
        assert_eq!(c.client_timeout, Some(Duration::from_secs(3)));
        assert_eq!(c.max_step_log, Some(4096));
        let c = ServerConfig::parse("s.yml", "tls: {cert: /c.pem, key: /k.pem}\n").unwrap();
        assert_eq!(
            c.tls,
            Some(TlsConfig::Files {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        let e = ServerConfig::parse("s.yml", "listen: x\ntls: plaintext\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string().contains("unknown tls mode `plaintext`"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_projects_key_is_fine() {
        assert!(ServerConfig::parse("s.yml", "projects:\n")
            .unwrap()
            .projects
            .is_empty());
        assert!(ServerConfig::parse("s.yml", "")
            .unwrap()
            .projects
            .is_empty());
    }

    #[test]
    fn errors_name_the_place() {
        let e = ServerConfig::parse("s.yml", "projects:\n  a: {}\n").unwrap_err();
        assert_eq!((e.line, e.column), (2, 3));
        let e = ServerConfig::parse("s.yml", "listne: x\n").unwrap_err();
        assert!(e.help.unwrap().contains("listen"));
        assert!(parse_project_arg("noequals").is_err());
        assert!(parse_project_arg("a b=x").is_err());
        assert_eq!(
            parse_project_arg("a=/x").unwrap().repo.as_deref(),
            Some("/x")
        );
    }

    #[test]
    fn project_settings_and_reporters_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("gitea-token");
        std::fs::write(&secret, "from-a-file\n").unwrap();
        let text = format!(
            "url: https://ci.example.org/\nprojects:\n  p:\n    repo: /r\n    branches: [main, 'release/*']\n    poll: 30s\n    collapse: false\n    webhook_secret: s3cret\n    report:\n      - github: {{repo: o/r, token: t1}}\n      - forgejo: {{url: https://codeberg.org/, repo: o/r, token: {{file: {}}}}}\n      - gitlab: {{project: g/r, token: t3}}\n      - webhook: {{url: https://example.org/hook}}\n",
            secret.display()
        );
        let c = ServerConfig::parse("s.yml", &text).unwrap();
        assert_eq!(c.url.as_deref(), Some("https://ci.example.org"));
        let p = &c.projects[0];
        assert_eq!(p.branches, vec!["main", "release/*"]);
        assert_eq!(p.poll, Some(Duration::from_secs(30)));
        assert!(!p.collapse);
        assert_eq!(p.webhook_secret, Some(Secret("s3cret".into())));
        let targets: Vec<String> = p.report.iter().map(Reporter::target).collect();
        assert_eq!(
            targets,
            vec![
                "github:o/r",
                "gitea:https://codeberg.org/o/r",
                "gitlab:https://gitlab.com/g/r",
                "webhook:https://example.org/hook"
            ]
        );
        assert!(matches!(&p.report[1], Reporter::Gitea { token, .. } if token.0 == "from-a-file"));
        // Secrets never show in debug output.
        assert!(!format!("{p:?}").contains("s3cret"));
        // Defaults: poll every minute, collapse, the default branch.
        let d = ServerConfig::parse("s.yml", "projects:\n  q:\n    repo: /q\n").unwrap();
        assert_eq!(d.projects[0], ProjectConfig::with_repo("q", "/q"));
        let off =
            ServerConfig::parse("s.yml", "projects:\n  q:\n    repo: /q\n    poll: off\n").unwrap();
        assert_eq!(off.projects[0].poll, None);
    }

    #[test]
    fn project_setting_errors_name_the_place() {
        let at = |text: &str| {
            let e = ServerConfig::parse("s.yml", text).unwrap_err();
            (e.line, e.message)
        };
        let (line, msg) = at("projects:\n  q:\n    repo: /q\n    poll: soon\n");
        assert_eq!(line, 4);
        assert!(msg.contains("soon"), "{msg}");
        let (line, msg) = at("projects:\n  q:\n    repo: /q\n    branches: ['a[']\n");
        assert_eq!(line, 4);
        assert!(msg.contains("a["), "{msg}");
        let (line, msg) = at(
            "projects:\n  q:\n    repo: /q\n    webhook_secret: {env: HERD_TEST_SURELY_UNSET_1}\n",
        );
        assert_eq!(line, 4);
        assert!(msg.contains("HERD_TEST_SURELY_UNSET_1"), "{msg}");
        let (line, msg) =
            at("projects:\n  q:\n    repo: /q\n    report:\n      - github: {repo: noslash, token: t}\n");
        assert_eq!(line, 5);
        assert!(msg.contains("OWNER/NAME"), "{msg}");
        let (_, msg) =
            at("projects:\n  q:\n    repo: /q\n    report:\n      - bitbucket: {repo: a/b}\n");
        assert!(msg.contains("bitbucket"), "{msg}");
        let (line, _) = at("projects:\n  q:\n    repo: /q\n    webhook_secret: ''\n");
        assert_eq!(line, 4);
    }

    #[test]
    fn secrets_are_read_in_both_forms_and_never_printed() {
        let c = ServerConfig::parse(
            "s.yml",
            "secrets:\n  open: open-value\n  release:\n    value: rel-value\n    builders: [release, p/deploy]\n    labels: {trusted: 'yes'}\n",
        )
        .unwrap();
        assert_eq!(c.secrets["open"].value.0, "open-value");
        assert!(c.secrets["open"].builders.is_empty());
        assert_eq!(c.secrets["release"].builders, vec!["release", "p/deploy"]);
        assert_eq!(c.secrets["release"].labels["trusted"], "yes");
        assert!(!format!("{c:?}").contains("rel-value"));
        let e = ServerConfig::parse("s.yml", "secrets:\n  k: {env: HERD_TEST_SURELY_UNSET_2}\n")
            .unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("HERD_TEST_SURELY_UNSET_2"));
    }
}
