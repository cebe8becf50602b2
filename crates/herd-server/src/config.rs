//! The server's config file (YAML): where to listen, where to keep data,
//! timings, and the projects to build.
//!
//! ```yaml
//! listen: 127.0.0.1:8080
//! data: ./herd-data
//! heartbeat_interval: 5s
//! heartbeat_timeout: 15s
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

#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub listen: Option<String>,
    pub data: Option<String>,
    pub heartbeat_interval: Option<Duration>,
    pub heartbeat_timeout: Option<Duration>,
    pub projects: Vec<ProjectConfig>,
    /// Web sign-in: user name -> argon2 password hash (`herd hash-password`).
    pub users: std::collections::BTreeMap<String, String>,
    /// The web page and the reading API need a sign-in too.
    pub private: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProjectConfig {
    pub name: String,
    pub repo: Option<String>,
    /// herd.yml text for a project without a repository.
    pub pipeline: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data: Option<String>,
    heartbeat_interval: Option<Spanned<String>>,
    heartbeat_timeout: Option<Spanned<String>>,
    /// `projects:` with nothing under it is allowed (null).
    #[serde(default)]
    projects: Option<IndexMap<Spanned<String>, RawProject>>,
    #[serde(default)]
    users: IndexMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    private: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProject {
    repo: Option<String>,
    pipeline: Option<Spanned<String>>,
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
        let mut projects = Vec::new();
        for (name, p) in raw.projects.unwrap_or_default() {
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
            projects.push(ProjectConfig {
                name: name.value,
                repo: p.repo,
                pipeline: p.pipeline.map(|s| s.value),
            });
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
        Ok(ServerConfig {
            users,
            private: raw.private,
            listen: raw.listen,
            data: raw.data,
            heartbeat_interval: duration(&raw.heartbeat_interval)?,
            heartbeat_timeout: duration(&raw.heartbeat_timeout)?,
            projects,
        })
    }
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
    Ok(ProjectConfig {
        name: name.to_string(),
        repo: Some(repo.to_string()),
        pipeline: None,
    })
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
}
