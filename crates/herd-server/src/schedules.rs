//! Scheduled builds: each project's `schedule:` fires on its cron pattern
//! in its time zone (`herd_core::cron`). A firing is claimed in the store
//! (so of several servers one builds it), builds the branch's head, or
//! records why not (`only_if_changed` and nothing new).
//!
//! The clock is passed in ([`tick`] takes the time): the loop uses the
//! system's, tests of the decision use theirs.

use crate::builds::{start, BuildRequest, Origin, Started};
use crate::config::ScheduleConfig;
use crate::store::BuildKind;
use crate::App;
use herd_core::cron::CronSchedule;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// How often the schedules are looked at (the finest pattern fires each
/// second).
const TICK: Duration = Duration::from_secs(1);

/// Starts the loop (it reads the schedules anew each tick: a reload may
/// add some).
pub fn spawn(app: &Arc<App>) -> Option<tokio::task::JoinHandle<()>> {
    let app = Arc::clone(app);
    Some(tokio::spawn(async move {
        let started = crate::store::now_ms();
        let mut since: HashMap<(String, String), i64> = HashMap::new();
        loop {
            tick(&app, started, crate::store::now_ms(), &mut since).await;
            tokio::time::sleep(TICK).await;
        }
    }))
}

/// Fires what is due at `now` (ms). `since` keeps, per schedule, the time
/// it last fired or was last looked at from; a schedule first seen starts
/// from its last recorded firing, else from `started` (what fell due while
/// no server ran is built once, the latest firing only).
pub async fn tick(app: &App, started: i64, now: i64, since: &mut HashMap<(String, String), i64>) {
    for project in app.live().projects.values() {
        for s in &project.schedule {
            let key = (project.name.clone(), s.name.clone());
            let from = match since.get(&key) {
                Some(t) => *t,
                None => match app
                    .hub
                    .store
                    .last_schedule_fire(&project.name, &s.name)
                    .await
                {
                    Ok(last) => last.unwrap_or(started),
                    Err(e) => {
                        tracing::warn!(project = %project.name, "schedule {}: {e}", s.name);
                        continue;
                    }
                },
            };
            let Ok(cron) = CronSchedule::parse(&s.cron, &s.timezone) else {
                continue; // checked when the config was read
            };
            let Some(at) = cron.due(from, now) else {
                since.insert(key, from);
                continue;
            };
            since.insert(key, at);
            fire(app, &project.name, s, at).await;
        }
    }
}

async fn fire(app: &App, project: &str, s: &ScheduleConfig, at: i64) {
    let store = &app.hub.store;
    match store
        .claim_schedule_run(project, &s.name, at, &app.hub.server_id)
        .await
    {
        Ok(true) => {}
        Ok(false) => return, // another server fires it
        Err(e) => {
            tracing::warn!(project, "schedule {}: cannot claim its firing: {e}", s.name);
            return;
        }
    }
    let outcome = build(app, project, s, at).await;
    let settled = match &outcome {
        Ok((id, rev)) => {
            tracing::info!(project, "schedule {} started build {id}", s.name);
            store
                .settle_schedule_run(project, &s.name, at, Ok((*id, rev)))
                .await
        }
        Err(why) => {
            tracing::info!(project, "schedule {} built nothing: {why}", s.name);
            store
                .settle_schedule_run(project, &s.name, at, Err(why))
                .await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(
            project,
            "schedule {}: cannot record its firing: {e}",
            s.name
        );
    }
}

/// Starts the scheduled build: its build and revision, or why none.
async fn build(
    app: &App,
    project: &str,
    s: &ScheduleConfig,
    at: i64,
) -> Result<(i64, String), String> {
    let Some(row) = app
        .hub
        .store
        .project(project)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err("the project is gone".into());
    };
    let (revision, branch) = match &row.repo {
        Some(repo) => {
            let resolved = app
                .mirrors
                .resolve(project, repo, s.branch.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            (resolved.revision, resolved.ref_name.or(s.branch.clone()))
        }
        None => (String::new(), None),
    };
    if s.only_if_changed && !revision.is_empty() {
        let last = app
            .hub
            .store
            .last_schedule_revision(project, &s.name)
            .await
            .map_err(|e| e.to_string())?;
        if last.as_deref() == Some(revision.as_str()) {
            return Err(format!(
                "nothing changed since its last build ({})",
                revision.get(..12).unwrap_or(&revision)
            ));
        }
    }
    let req = BuildRequest {
        project: project.to_string(),
        rev: (!revision.is_empty()).then(|| revision.clone()),
        reason: Some(format!(
            "scheduled: {} ({}) for {}",
            s.name,
            s.cron,
            chrono::DateTime::from_timestamp_millis(at)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default()
        )),
        ..Default::default()
    };
    let origin = Origin {
        kind: BuildKind::Schedule,
        branch: branch.clone(),
        ..Origin::manual()
    };
    match start(app, req, origin).await {
        Ok(Started::Build(id)) => Ok((id, revision)),
        Ok(Started::NothingToBuild(why)) => Err(why),
        Err(e) => Err(e.to_string()),
    }
}
