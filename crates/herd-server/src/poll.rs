//! Changes in: each project with a repository has a poller that fetches its
//! bare mirror every `poll` interval (or at once when a webhook wakes it),
//! records each new commit on a watched branch as a change, and starts its
//! build. A failing fetch is retried with backoff and shown on the project;
//! other projects go on.

use crate::builds::{start, BuildRequest, Origin, Started};
use crate::config::ProjectConfig;
use crate::store::{BuildKind, ChangeKind, ChangeRow, NewChange};
use crate::App;
use herd_core::change::{commits_to_build, globs_select, skip_requested, ChangeFacts};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Most new commits of one branch looked at in one poll.
const MAX_NEW_COMMITS: usize = 100;
/// Most of them built one by one when `collapse: false`.
const MAX_CHANGES_PER_PUSH: usize = 50;
/// Most tags (and most pull requests) of one project looked at in a poll.
const MAX_REFS_PER_KIND: usize = 10_000;
/// Longest wait between retries of a failing fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// What the project page and `herd project show` tell about polling.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PollStatus {
    pub last_poll_at: Option<i64>,
    pub last_success_at: Option<i64>,
    /// The last fetch's error, until a fetch succeeds.
    pub last_error: Option<String>,
    /// Fetches failed in a row.
    pub failures: u32,
    pub next_poll_at: Option<i64>,
    /// The watched branches and their heads at the last poll.
    pub branches: BTreeMap<String, String>,
    /// Webhooks that woke the poller since the server started.
    pub wakes: u64,
}

#[derive(Default)]
pub struct Pollers {
    wake: Mutex<HashMap<String, Arc<Notify>>>,
    status: Mutex<HashMap<String, PollStatus>>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Pollers {
    pub fn new(projects: &[ProjectConfig]) -> Self {
        let pollers = Pollers::default();
        pollers.set_projects(projects.iter());
        pollers
    }

    /// One wake-up per project with a repository (kept for those that stay).
    fn set_projects<'a>(&self, projects: impl Iterator<Item = &'a ProjectConfig>) {
        let mut wake = lock(&self.wake);
        let old = std::mem::take(&mut *wake);
        for p in projects.filter(|p| p.repo.is_some()) {
            let n = old
                .get(&p.name)
                .cloned()
                .unwrap_or_else(|| Arc::new(Notify::new()));
            wake.insert(p.name.clone(), n);
        }
    }

    /// After a reload: stops every poller and starts one per project of
    /// the config now in place (a fetch each, at once).
    pub fn respawn(app: &Arc<App>) {
        app.pollers.stop();
        let live = app.live();
        app.pollers.set_projects(live.projects.values());
        lock(&app.pollers.status).retain(|name, _| live.projects.contains_key(name));
        Pollers::spawn_all(app);
    }

    /// Starts one poller per project with a repository.
    pub fn spawn_all(app: &Arc<App>) {
        let mut tasks = Vec::new();
        let wakes = lock(&app.pollers.wake).clone();
        for project in app.live().projects.values() {
            let (Some(repo), Some(wake)) = (&project.repo, wakes.get(&project.name)) else {
                continue;
            };
            let app = Arc::clone(app);
            let (project, repo, wake) = (project.clone(), repo.clone(), Arc::clone(wake));
            tasks.push(tokio::spawn(async move {
                poll_loop(app, project, repo, wake).await;
            }));
        }
        lock(&app.pollers.tasks).extend(tasks);
    }

    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// Fetch now (a webhook said something was pushed). False for a project
    /// without a repository.
    pub fn wake(&self, project: &str) -> bool {
        let n = lock(&self.wake).get(project).cloned();
        match n {
            Some(n) => {
                self.update(project, |s| s.wakes += 1);
                n.notify_one();
                true
            }
            None => false,
        }
    }

    pub fn status(&self, project: &str) -> Option<PollStatus> {
        lock(&self.status).get(project).cloned()
    }

    fn update(&self, project: &str, f: impl FnOnce(&mut PollStatus)) {
        f(lock(&self.status).entry(project.to_string()).or_default());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn poll_loop(app: Arc<App>, project: ProjectConfig, repo: String, wake: Arc<Notify>) {
    let interval = project.poll;
    loop {
        let started = crate::store::now_ms();
        let result = poll_once(&app, &project, &repo).await;
        let failures = match &result {
            Ok(_) => 0,
            Err(_) => app.pollers.status(&project.name).map_or(0, |s| s.failures) + 1,
        };
        let delay = match (&result, interval) {
            (Ok(_), Some(every)) => Some(every),
            (Ok(_), None) => None,
            (Err(_), every) => Some(backoff(failures, every)),
        };
        app.pollers.update(&project.name, |s| {
            s.last_poll_at = Some(started);
            s.failures = failures;
            s.next_poll_at = delay.map(|d| crate::store::now_ms() + d.as_millis() as i64);
            match result {
                Ok(branches) => {
                    s.last_success_at = Some(started);
                    s.last_error = None;
                    s.branches = branches;
                }
                Err(e) => {
                    let e = herd_core::redact::redact_text(&e);
                    tracing::warn!(project = %project.name, "poll failed ({failures} in a row): {e}");
                    s.last_error = Some(e);
                }
            }
        });
        match delay {
            Some(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// Retry delay after `failures` failed fetches in a row: from a tenth of the
/// interval (at most 10 s), doubling, never above 10 minutes.
fn backoff(failures: u32, interval: Option<Duration>) -> Duration {
    let base = interval
        .map(|i| i / 10)
        .unwrap_or(Duration::from_secs(10))
        .clamp(Duration::from_millis(100), Duration::from_secs(10));
    base.saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// One fetch: records the changes of the watched branches and builds them.
/// Returns the watched branches' heads.
async fn poll_once(
    app: &App,
    project: &ProjectConfig,
    repo: &str,
) -> Result<BTreeMap<String, String>, String> {
    let name = &project.name;
    let heads = app
        .mirrors
        .fetch(name, repo)
        .await
        .map_err(|e| e.to_string())?;
    let watched: BTreeMap<String, String> = heads
        .branches
        .iter()
        .filter(|(branch, _)| {
            if project.branches.is_empty() {
                heads.default_branch.as_deref() == Some(branch.as_str())
            } else {
                globs_select(&project.branches, branch)
            }
        })
        .map(|(b, sha)| (b.clone(), sha.clone()))
        .collect();
    let store = &app.hub.store;
    let all_stored = store.branch_heads(name).await.map_err(|e| e.to_string())?;
    // Tags and pull requests share the table under `tag:`/`pr:` keys (a
    // branch name never has a `:`); each kind has its own first poll.
    let stored: BTreeMap<String, String> = all_stored
        .iter()
        .filter(|(k, _)| !k.contains(':'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The first poll of a project takes the branches as they are: what was
    // pushed before herd watched is not a change (`herd build start` builds it).
    let first_poll = stored.is_empty();
    for (branch, head) in &watched {
        let old = stored.get(branch).map(String::as_str);
        if old == Some(head.as_str()) {
            continue;
        }
        let changes = if first_poll {
            Vec::new()
        } else {
            new_changes(app, project, old, head)
                .await
                .map_err(|e| e.to_string())?
        };
        store
            .advance_branch(name, branch, old, head, &changes)
            .await
            .map_err(|e| e.to_string())?;
    }
    if first_poll && watched.is_empty() {
        // Nothing to take yet; an empty marker keeps the next poll from
        // being a "first poll" that would ignore the first push.
        store
            .advance_branch(name, "", None, "", &[])
            .await
            .map_err(|e| e.to_string())?;
    }
    for branch in stored.keys() {
        if !branch.is_empty() && !watched.contains_key(branch) {
            store
                .forget_branch(name, branch)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    if !project.tags.is_empty() {
        let tags = heads
            .tags
            .iter()
            .filter(|(t, _)| globs_select(&project.tags, t))
            .map(|(t, sha)| (t.clone(), sha.clone()));
        advance_refs(app, project, &all_stored, "tag:", tags, ChangeKind::Tag).await?;
    }
    if project.pull_requests.is_some() {
        let pulls = heads
            .pulls
            .iter()
            .map(|(n, sha)| (n.to_string(), sha.clone()));
        advance_refs(
            app,
            project,
            &all_stored,
            "pr:",
            pulls,
            ChangeKind::PullRequest,
        )
        .await?;
        crate::pulls::recheck_waiting(app, name).await;
    }
    for change in store
        .unsettled_changes(name)
        .await
        .map_err(|e| e.to_string())?
    {
        build_change(app, change).await;
    }
    Ok(watched)
}

/// Records the tags or pull requests (under `prefix` in the heads table)
/// that are new or moved as changes. The first poll of a kind (no
/// `prefix` marker yet) takes them as they are.
async fn advance_refs(
    app: &App,
    project: &ProjectConfig,
    stored: &BTreeMap<String, String>,
    prefix: &str,
    current: impl Iterator<Item = (String, String)>,
    kind: ChangeKind,
) -> Result<(), String> {
    let store = &app.hub.store;
    let name = &project.name;
    let first_poll = !stored.contains_key(prefix);
    let mut seen = std::collections::BTreeSet::new();
    for (id, head) in current.take(MAX_REFS_PER_KIND) {
        let key = format!("{prefix}{id}");
        let old = stored.get(&key).map(String::as_str);
        seen.insert(key.clone());
        if old == Some(head.as_str()) {
            continue;
        }
        let mut changes = Vec::new();
        if !first_poll {
            let info = app
                .mirrors
                .commit_info(name, &head)
                .await
                .map_err(|e| e.to_string())?;
            let pull_request = match kind {
                ChangeKind::PullRequest => id.parse::<i64>().ok(),
                _ => None,
            };
            changes.push(NewChange {
                revision: head.clone(),
                author: info.author,
                message: info.message,
                committed_at: info.time_ms,
                files: None,
                kind,
                pull_request,
            });
        }
        let recorded = store
            .advance_branch(name, &key, old, &head, &changes)
            .await
            .map_err(|e| e.to_string())?;
        if let (Some(ids), ChangeKind::PullRequest, Some(_)) = (recorded, kind, old) {
            // A newer push: what waited for the older head never runs,
            // and its builds are superseded (see `builds::start`).
            if let (Some(n), Some(newest)) = (id.parse::<i64>().ok(), ids.last()) {
                store
                    .drop_pull_request_changes(
                        name,
                        n,
                        Some(*newest),
                        "a newer push to the pull request",
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    if first_poll {
        store
            .advance_branch(name, prefix, None, "", &[])
            .await
            .map_err(|e| e.to_string())?;
    }
    for key in stored.keys() {
        if key.starts_with(prefix) && key.len() > prefix.len() && !seen.contains(key) {
            store
                .forget_branch(name, key)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// The changes that moving a branch from `old` to `new` brings.
async fn new_changes(
    app: &App,
    project: &ProjectConfig,
    old: Option<&str>,
    new: &str,
) -> Result<Vec<NewChange>, crate::git::GitError> {
    let name = &project.name;
    let picked = match old {
        // A new branch: its head is the change; which files it touches
        // is unknown, so path filters do not hold it back.
        None => vec![new.to_string()],
        Some(old) => {
            let commits = app
                .mirrors
                .new_commits(name, old, new, MAX_NEW_COMMITS)
                .await?;
            commits_to_build(&commits, project.collapse, MAX_CHANGES_PER_PUSH)
        }
    };
    let mut changes = Vec::with_capacity(picked.len());
    for sha in picked {
        let info = app.mirrors.commit_info(name, &sha).await?;
        let files = match old {
            None => None,
            // Collapsed: everything the push changed, so a path filter sees
            // the files of the commits that are not built on their own.
            Some(old) if project.collapse => {
                Some(app.mirrors.changed_files(name, Some(old), &sha).await?)
            }
            Some(_) => Some(app.mirrors.changed_files(name, None, &sha).await?),
        };
        changes.push(NewChange {
            revision: sha,
            author: info.author,
            message: info.message,
            committed_at: info.time_ms,
            files,
            kind: ChangeKind::Branch,
            pull_request: None,
        });
    }
    Ok(changes)
}

/// Starts the build of a recorded change, or records why there is none
/// (or, for a pull request that waits for approval, why it waits).
pub(crate) async fn build_change(app: &App, change: ChangeRow) {
    let store = &app.hub.store;
    // Another server polling the same project may be building it already.
    match store.claim_change(change.id, &app.hub.server_id).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(project = %change.project, "cannot claim change {}: {e}", change.id);
            return;
        }
    }
    let settled = if let Some(marker) = skip_requested(&change.message) {
        store
            .settle_change(
                change.id,
                None,
                Some(&format!("{marker} in the commit message")),
            )
            .await
    } else {
        let request = match change.kind {
            ChangeKind::PullRequest => crate::pulls::request_for(app, &change).await,
            _ => Ok(Some(request_for(&change))),
        };
        match request {
            Ok(Some((req, origin))) => match start(app, req, origin).await {
                Ok(Started::Build(id)) => store.settle_change(change.id, Some(id), None).await,
                Ok(Started::NothingToBuild(why)) => {
                    store.settle_change(change.id, None, Some(&why)).await
                }
                Err(e) => {
                    store
                        .settle_change(change.id, None, Some(&format!("not built: {e}")))
                        .await
                }
            },
            // Waits (for approval): recorded by `request_for`.
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        }
    };
    if let Err(e) = settled {
        tracing::warn!(project = %change.project, "cannot record what became of change {}: {e}", change.id);
    }
}

/// What became of an approval.
#[derive(Debug)]
pub enum Approved {
    /// Its build (or, when none was started, why).
    Built(Option<i64>, Option<String>),
    /// The change does not wait (unknown, built, skipped, approved).
    NotWaiting,
}

/// A signed-in user lets a waiting pull request's head be built.
pub async fn approve(
    app: &App,
    change_id: i64,
    by: &str,
) -> Result<Approved, crate::store::StoreError> {
    let store = &app.hub.store;
    let Some(change) = store.approve_change(change_id, by).await? else {
        return Ok(Approved::NotWaiting);
    };
    tracing::info!(project = %change.project, "{by} approved change {change_id} ({})", change.revision.get(..12).unwrap_or(&change.revision));
    build_change(app, change).await;
    let after = store.change(change_id).await?;
    app.hub.changed();
    Ok(Approved::Built(
        after.as_ref().and_then(|c| c.build_id),
        after.and_then(|c| c.skipped),
    ))
}

/// The build of a branch's or a tag's change.
fn request_for(change: &ChangeRow) -> (BuildRequest, Origin) {
    let subject = change.message.lines().next().unwrap_or("").to_string();
    let tag = (change.kind == ChangeKind::Tag).then(|| change.branch.clone());
    let req = BuildRequest {
        project: change.project.clone(),
        builder: None,
        rev: Some(change.revision.clone()),
        priority: 0,
        reason: Some(match &tag {
            Some(t) => format!("new tag {t}: {subject}"),
            None => format!("new commit on {}: {subject}", change.branch),
        }),
        ref_name: tag.clone(),
        ..Default::default()
    };
    let branch = tag.is_none().then(|| change.branch.clone());
    let origin = Origin {
        kind: if tag.is_some() {
            BuildKind::Tag
        } else {
            BuildKind::Change
        },
        branch: branch.clone(),
        sender: None,
        change: Some(ChangeFacts {
            branch,
            files: change.files.clone(),
            tag: tag.clone(),
        }),
        patch: None,
        tag,
        pull_request: None,
    };
    (req, origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_tenth_of_the_interval_and_is_capped() {
        let every = Some(Duration::from_secs(60));
        assert_eq!(backoff(1, every), Duration::from_secs(6));
        assert_eq!(backoff(2, every), Duration::from_secs(12));
        assert_eq!(backoff(40, every), MAX_BACKOFF);
        assert_eq!(
            backoff(1, Some(Duration::from_millis(200))),
            Duration::from_millis(100)
        );
        assert_eq!(backoff(1, None), Duration::from_secs(10));
    }
}
