//! Results out: commit statuses to GitHub, Gitea/Forgejo and GitLab (one
//! per builder: pending, then success or failure, linking to the build
//! page), and a JSON webhook when a build ends.
//!
//! The reporter reconciles: for each build with statuses still to send
//! (`builds.report_pending`) it computes what each status should say now
//! and sends what differs from what was last sent (`status_reports`). A
//! failed send is retried with backoff, across restarts; it never changes
//! the build.

use crate::config::Reporter as Target;
use crate::store::{BuildRow, JobRow};
use crate::App;
use herd_core::state::RunState;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Sends of one status before giving up on it.
pub const MAX_ATTEMPTS: i64 = 12;
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);
const IDLE_CHECK: Duration = Duration::from_secs(30);

pub struct StatusReporter {
    wake: Notify,
    pub(crate) http: reqwest::Client,
}

impl StatusReporter {
    pub fn new() -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("herd/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(StatusReporter {
            wake: Notify::new(),
            http,
        })
    }

    /// Something changed (a build started or ended): look again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn spawn(app: &Arc<App>) -> tokio::task::JoinHandle<()> {
        let app = Arc::clone(app);
        tokio::spawn(async move {
            let mut changes = app.hub.subscribe();
            loop {
                let next = match reconcile(&app).await {
                    Ok(next) => next,
                    Err(e) => {
                        tracing::warn!("status reporting: {e}");
                        Some(crate::store::now_ms() + IDLE_CHECK.as_millis() as i64)
                    }
                };
                let wait = next
                    .map(|at| Duration::from_millis((at - crate::store::now_ms()).max(0) as u64))
                    .unwrap_or(IDLE_CHECK)
                    .min(IDLE_CHECK);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = app.reporter.wake.notified() => {}
                    _ = changes.changed() => {}
                }
                // Many changes come at once (a batch of events): look once.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

/// One pass over the builds with statuses to send. Returns when the next
/// retry is due, if one is waiting.
async fn reconcile(app: &App) -> Result<Option<i64>, crate::store::StoreError> {
    let store = &app.hub.store;
    // Several servers on one database: one of them reports (or one status
    // would be sent by each).
    if !app.speaks_for_cluster().await? {
        return Ok(Some(crate::store::now_ms() + IDLE_CHECK.as_millis() as i64));
    }
    let mut next_due: Option<i64> = None;
    for build_id in store.builds_to_report().await? {
        let Some(detail) = store.build_detail(build_id).await? else {
            store.reports_done(build_id).await?;
            continue;
        };
        let targets = app
            .live()
            .projects
            .get(&detail.build.project)
            .map(|p| p.report.clone())
            .unwrap_or_default();
        let sent = store.reports_of(build_id).await?;
        let mut pass = Pass {
            store,
            build_id,
            sent: &sent,
            next_due: &mut next_due,
            settled: true,
        };
        for target in &targets {
            let key = target.target();
            for (context, wanted) in wanted_statuses(target, &detail.build, &detail.jobs) {
                let Some(attempts) = pass.due(&key, &context, wanted.as_str()) else {
                    continue;
                };
                let result = send(app, target, &detail.build, &context, wanted, &detail.jobs).await;
                let finished = wanted.is_finished();
                pass.record(&key, &context, wanted.as_str(), attempts, result, finished)
                    .await?;
            }
        }
        let notifiers = app
            .live()
            .projects
            .get(&detail.build.project)
            .map(|p| p.notify.clone())
            .unwrap_or_default();
        if detail.build.state.is_finished() && !notifiers.is_empty() {
            let previous = store.previous_finished_state(&detail.build).await?;
            let mut message = None;
            for n in notifiers
                .iter()
                .filter(|n| crate::notify::wanted(n, &detail.build, previous))
            {
                let key = n.target();
                let state = detail.build.state.as_str();
                let Some(attempts) = pass.due(&key, crate::notify::CONTEXT, state) else {
                    continue;
                };
                if message.is_none() {
                    let first = first_failing_test(store, build_id).await?;
                    let fixed = detail.build.state == RunState::Success
                        && previous
                            .is_some_and(|p| matches!(p, RunState::Failure | RunState::Error));
                    message = Some(crate::notify::message_of(
                        app,
                        &detail.build,
                        &detail.jobs,
                        first.as_deref(),
                        fixed,
                    ));
                }
                let Some(msg) = &message else { continue };
                let result = crate::notify::send(app, n, msg, &detail.build, &detail.jobs).await;
                pass.record(&key, crate::notify::CONTEXT, state, attempts, result, true)
                    .await?;
            }
        }
        let settled = pass.settled;
        let finished = detail.build.state.is_finished();
        if settled && finished {
            store.reports_done(build_id).await?;
        }
    }
    Ok(next_due)
}

/// Delay before attempt `attempt + 1`: 1 s, doubling, at most 5 minutes.
fn retry_delay(attempt: i64) -> Duration {
    FIRST_RETRY
        .saturating_mul(1 << (attempt - 1).clamp(0, 16))
        .min(MAX_RETRY)
}

/// The statuses a target should show for a build: per builder for a forge
/// (context `herd/BUILDER`; a build without jobs, such as a broken
/// herd.yml, has one context `herd`), one at the end for a webhook.
fn wanted_statuses(target: &Target, build: &BuildRow, jobs: &[JobRow]) -> Vec<(String, RunState)> {
    let build_state = build.state;
    if let Target::Webhook { .. } = target {
        return if build_state.is_finished() {
            vec![(String::new(), build_state)]
        } else {
            Vec::new()
        };
    }
    crate::notify::builder_statuses(build_state, jobs)
}

fn description(state: RunState, build: &BuildRow) -> String {
    let text = match state {
        RunState::Queued => "waiting for a worker".to_string(),
        RunState::Running => "running".to_string(),
        RunState::Success | RunState::Skipped => "passed".to_string(),
        RunState::Failure => "failed".to_string(),
        RunState::Cancelled => "cancelled".to_string(),
        RunState::Error => match &build.error {
            Some(e) => format!("could not run: {e}"),
            None => "could not run".to_string(),
        },
    };
    // GitHub refuses descriptions over 140 characters.
    text.chars().take(140).collect()
}

/// GitHub and Gitea/Forgejo: pending, success, failure, error.
fn github_state(s: RunState) -> &'static str {
    match s {
        RunState::Queued | RunState::Running => "pending",
        RunState::Success | RunState::Skipped => "success",
        RunState::Failure => "failure",
        RunState::Error | RunState::Cancelled => "error",
    }
}

/// GitLab: pending, running, success, failed, canceled.
fn gitlab_state(s: RunState) -> &'static str {
    match s {
        RunState::Queued => "pending",
        RunState::Running => "running",
        RunState::Success | RunState::Skipped => "success",
        RunState::Failure | RunState::Error => "failed",
        RunState::Cancelled => "canceled",
    }
}

async fn send(
    app: &App,
    target: &Target,
    build: &BuildRow,
    context: &str,
    wanted: RunState,
    jobs: &[JobRow],
) -> Result<(), String> {
    let Some(sha) = build.status_revision.as_ref().or(build.revision.as_ref()) else {
        return Ok(()); // nothing to attach a status to
    };
    let link = format!("{}/builds/{}", app.public_url, build.id);
    let http = &app.reporter.http;
    let request = match target {
        Target::GitHub { api, repo, token } => http
            .post(format!("{api}/repos/{repo}/statuses/{sha}"))
            .bearer_auth(&token.0)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28")
            .json(&json!({
                "state": github_state(wanted),
                "target_url": link,
                "description": description(wanted, build),
                "context": context,
            })),
        Target::Gitea { url, repo, token } => http
            .post(format!("{url}/api/v1/repos/{repo}/statuses/{sha}"))
            .header("Authorization", format!("token {}", token.0))
            .json(&json!({
                "state": github_state(wanted),
                "target_url": link,
                "description": description(wanted, build),
                "context": context,
            })),
        Target::GitLab {
            url,
            project,
            token,
        } => {
            let mut body = json!({
                "state": gitlab_state(wanted),
                "name": context,
                "target_url": link,
                "description": description(wanted, build),
            });
            if let Some(branch) = &build.branch {
                body["ref"] = json!(branch);
            }
            http.post(format!(
                "{url}/api/v4/projects/{}/statuses/{sha}",
                crate::notify::encode(project)
            ))
            .header("PRIVATE-TOKEN", &token.0)
            .json(&body)
        }
        Target::Webhook { url, secret } => {
            crate::notify::finished_webhook(app, url, secret.as_ref(), build, jobs)?
        }
    };
    let response = request.send().await.map_err(|e| {
        // reqwest's error names the URL, never the token.
        format!("cannot reach it: {e}")
    })?;
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

/// The first test (by name) that failed in the build's split suites and
/// step reports, if any did.
async fn first_failing_test(
    store: &crate::store::Store,
    build_id: i64,
) -> Result<Option<String>, crate::store::StoreError> {
    Ok(store
        .splits_of_build(build_id)
        .await?
        .iter()
        .flat_map(|s| s.data.tests.iter())
        .find(|(_, t)| t.outcome == Some(herd_core::split::Outcome::Failed))
        .map(|(id, _)| id.clone()))
}

/// One reconcile pass over one build's sends: what is due, and recording
/// what each send did (with its retry time when it failed).
struct Pass<'a> {
    store: &'a crate::store::Store,
    build_id: i64,
    sent: &'a [crate::store::ReportRow],
    next_due: &'a mut Option<i64>,
    /// Nothing is left to send (or to retry) for the build.
    settled: bool,
}

impl Pass<'_> {
    /// The attempts made so far when `wanted` is to be sent to
    /// `target`/`context` now; None when it was sent, was given up, or its
    /// retry is not due yet.
    fn due(&mut self, target: &str, context: &str, wanted: &str) -> Option<i64> {
        let row = self
            .sent
            .iter()
            .find(|r| r.target == target && r.context == context);
        if row.and_then(|r| r.sent.as_deref()) == Some(wanted) {
            return None;
        }
        let attempts = row.map_or(0, |r| r.attempts);
        if attempts >= MAX_ATTEMPTS {
            return None; // given up (logged when it happened)
        }
        if let Some(due) = row
            .map(|r| r.next_at)
            .filter(|t| *t > crate::store::now_ms())
        {
            *self.next_due = Some(self.next_due.map_or(due, |n: i64| n.min(due)));
            self.settled = false;
            return None;
        }
        Some(attempts)
    }

    async fn record(
        &mut self,
        target: &str,
        context: &str,
        wanted: &str,
        attempts: i64,
        result: Result<(), String>,
        finished: bool,
    ) -> Result<(), crate::store::StoreError> {
        let build_id = self.build_id;
        crate::metrics::global().report(if result.is_ok() { "sent" } else { "failed" });
        match result {
            Ok(()) => {
                self.store
                    .save_report(build_id, target, context, Ok(wanted))
                    .await?;
                if !finished {
                    self.settled = false;
                }
            }
            Err(e) => {
                let delay = retry_delay(attempts + 1);
                let due = crate::store::now_ms() + delay.as_millis() as i64;
                if attempts + 1 >= MAX_ATTEMPTS {
                    tracing::warn!(build = build_id, target = %target, "giving up sending `{context}` after {MAX_ATTEMPTS} attempts: {e}");
                } else {
                    tracing::info!(build = build_id, target = %target, "sending `{context}` failed, again in {delay:?}: {e}");
                    *self.next_due = Some(self.next_due.map_or(due, |n| n.min(due)));
                    self.settled = false;
                }
                self.store
                    .save_report(build_id, target, context, Err((&e, due)))
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_each_forge() {
        assert_eq!(github_state(RunState::Running), "pending");
        assert_eq!(github_state(RunState::Cancelled), "error");
        assert_eq!(gitlab_state(RunState::Running), "running");
        assert_eq!(gitlab_state(RunState::Error), "failed");
        assert_eq!(gitlab_state(RunState::Cancelled), "canceled");
    }

    #[test]
    fn retries_double_and_are_capped() {
        assert_eq!(retry_delay(1), Duration::from_secs(1));
        assert_eq!(retry_delay(2), Duration::from_secs(2));
        assert_eq!(retry_delay(20), MAX_RETRY);
    }
}
