//! Rereading the server's config file while it runs (SIGHUP, `herd server
//! reload`): projects, secrets, users, reporters and retention change in
//! place; connections, builds and workers stay. A config with an error
//! changes nothing and says why.
//!
//! What is bound at the start (listen address, data directory, database,
//! TLS, heartbeats, limits, SMTP, a project's credentials for its mirror)
//! needs a restart: a reload that finds one changed says so.

use crate::config::{ProjectConfig, ServerConfig};
use crate::store::{ProjectRow, StoreError};
use crate::{App, LiveConfig};
use herd_api::ops::ReloadReport;
use herd_core::ConfigError;
use std::path::PathBuf;
use std::sync::Arc;

/// Where a reload reads from: the config file, and the projects of
/// `--project` flags (they win over the file, as at the start).
#[derive(Debug, Clone)]
pub struct ReloadSource {
    pub file: PathBuf,
    pub cli_projects: Vec<ProjectConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the server was started without --config: there is nothing to reread")]
    NoFile,
    #[error("cannot read {file}: {source}; the config in use stays")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{0}; the config in use stays")]
    Config(ConfigError),
    #[error("cannot record the projects: {0}; the config in use stays")]
    Store(#[from] StoreError),
}

/// Rereads the config file and puts it in place.
pub async fn reload(app: &Arc<App>) -> Result<ReloadReport, ReloadError> {
    let source = app.reload_from.as_ref().ok_or(ReloadError::NoFile)?;
    let file = source.file.display().to_string();
    let text = std::fs::read_to_string(&source.file).map_err(|e| ReloadError::Read {
        file: file.clone(),
        source: e,
    })?;
    let config = ServerConfig::parse(&file, &text).map_err(ReloadError::Config)?;
    let mut projects = config.projects.clone();
    for p in &source.cli_projects {
        projects.retain(|q| q.name != p.name);
        projects.push(p.clone());
    }
    for p in &projects {
        app.hub
            .store
            .upsert_project(&ProjectRow {
                name: p.name.clone(),
                repo: p.repo.clone(),
                pipeline: p.pipeline.clone(),
            })
            .await?;
    }
    let old = app.live();
    let new = LiveConfig::new(&projects, config.users.clone(), config.private, config.keep);
    let mut changes = describe(&old, &new);
    let old_secrets = app.hub.settings.secrets.load_full();
    if *old_secrets != config.secrets {
        changes.push("secrets changed".into());
    }
    for p in &projects {
        let before = old.projects.get(&p.name);
        if before.is_some_and(|b| b.credentials != p.credentials) {
            changes.push(format!(
                "project {}: new credentials take effect at the next restart",
                p.name
            ));
        }
    }
    for (what, changed) in fixed_at_start(app, &config) {
        if changed {
            changes.push(format!(
                "{what} changed: it takes effect at the next restart"
            ));
        }
    }
    app.hub.settings.secrets.store(Arc::new(config.secrets));
    let names = {
        let mut n: Vec<String> = new.projects.keys().cloned().collect();
        n.sort();
        n
    };
    app.replace_live(new);
    crate::poll::Pollers::respawn(app);
    app.hub.wake();
    app.hub.changed();
    Ok(ReloadReport {
        file,
        projects: names,
        changes,
    })
}

/// Settings read once at the start, and whether the file now says otherwise.
fn fixed_at_start(app: &App, config: &ServerConfig) -> Vec<(&'static str, bool)> {
    let s = &app.hub.settings;
    vec![
        (
            "max_step_log",
            config.max_step_log.is_some_and(|b| b != s.max_step_log),
        ),
        (
            "heartbeat_interval",
            config
                .heartbeat_interval
                .is_some_and(|d| d != s.heartbeat_interval),
        ),
        (
            "heartbeat_timeout",
            config
                .heartbeat_timeout
                .is_some_and(|d| d != s.heartbeat_timeout),
        ),
        (
            "idle_heartbeat_interval",
            config
                .idle_heartbeat_interval
                .is_some_and(|d| d != s.idle_heartbeat_interval),
        ),
        (
            "idle_heartbeat_timeout",
            config
                .idle_heartbeat_timeout
                .is_some_and(|d| d != s.idle_heartbeat_timeout),
        ),
        ("limits", config.limits != s.limits),
        ("probes", config.probes != *s.probe_commands),
    ]
}

/// What differs between two configs, in words.
fn describe(old: &LiveConfig, new: &LiveConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut names: Vec<&String> = old.projects.keys().chain(new.projects.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        match (old.projects.get(name), new.projects.get(name)) {
            (None, Some(_)) => out.push(format!("project {name} added")),
            (Some(_), None) => out.push(format!(
                "project {name} removed (its builds stay; the server's keep: applies to them)"
            )),
            (Some(a), Some(b)) if a != b => out.push(format!("project {name} changed")),
            _ => {}
        }
    }
    if old.users != new.users {
        out.push("users changed".into());
    }
    if old.private != new.private {
        out.push(format!("private is now {}", new.private));
    }
    if old.keep != new.keep {
        out.push("keep: changed".into());
    }
    out
}
