//! Pull and merge requests: whether a new head is built now or waits for
//! approval (`herd_core::change::pull_request_verdict`), approving it,
//! what a forge's webhook tells (author, fork, closed), and closing one.
//!
//! Architecture invariant: a webhook never names what is built. It only
//! records facts git does not have; the commit built is the one the
//! server's own mirror has at `refs/pull/N/head`
//! (`refs/merge-requests/N/head`).

use crate::builds::{BuildRequest, Origin, PullOrigin};
use crate::store::{BuildKind, ChangeKind, ChangeRow, PullFacts, StoreError};
use crate::App;
use herd_core::change::{pull_request_verdict, PullRequestFacts, PullRequestVerdict};
use herd_core::webhook::{PullRequestAction, PullRequestEvent};

/// The build of a pull request's change, or None when it waits (recorded
/// here, with the reason) or was dropped (the pull request is closed).
pub async fn request_for(
    app: &App,
    change: &ChangeRow,
) -> Result<Option<(BuildRequest, Origin)>, StoreError> {
    let store = &app.hub.store;
    let Some(number) = change.pull_request else {
        store
            .settle_change(
                change.id,
                None,
                Some("a pull request change without a number"),
            )
            .await?;
        return Ok(None);
    };
    let facts = store.pull_request(&change.project, number).await?;
    if facts.as_ref().is_some_and(|f| f.closed_at.is_some()) {
        store
            .settle_change(change.id, None, Some("the pull request is closed"))
            .await?;
        return Ok(None);
    }
    let untrusted = match verdict(app, change, facts.as_ref()) {
        PullRequestVerdict::Build { untrusted } => untrusted,
        PullRequestVerdict::Wait(why) => {
            tracing::info!(project = %change.project, "pull request #{number} ({}) waits: {why}", short(&change.revision));
            store.hold_change(change.id, &why).await?;
            app.hub.changed();
            return Ok(None);
        }
    };
    let subject = change.message.lines().next().unwrap_or("").to_string();
    let title = facts
        .as_ref()
        .map(|f| f.title.clone())
        .filter(|t| !t.is_empty())
        .unwrap_or(subject);
    let author = facts
        .as_ref()
        .map(|f| f.author.clone())
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| change.author.clone());
    let merge = app
        .live()
        .projects
        .get(&change.project)
        .and_then(|p| p.pull_requests.as_ref())
        .is_some_and(|p| p.merge);
    let rev = if merge {
        let base = facts.as_ref().and_then(|f| f.base.as_deref());
        match app
            .mirrors
            .merge_for_pull_request(&change.project, number, base, &change.revision)
            .await
        {
            Ok(sha) => sha,
            Err(e) => {
                store
                    .settle_change(change.id, None, Some(&e.to_string()))
                    .await?;
                return Ok(None);
            }
        }
    } else {
        change.revision.clone()
    };
    let req = BuildRequest {
        project: change.project.clone(),
        status_revision: merge.then(|| change.revision.clone()),
        rev: Some(rev),
        reason: Some(match &change.approved_by {
            Some(by) => format!("pull request #{number}: {title} (approved by {by})"),
            None => format!("pull request #{number}: {title}"),
        }),
        ..Default::default()
    };
    let origin = Origin {
        kind: BuildKind::PullRequest,
        branch: None,
        sender: Some(author),
        // A pull request is no branch: `branches:`/`paths:` do not hold
        // it back, `tags: only` does.
        change: Some(Default::default()),
        patch: None,
        tag: None,
        pull_request: Some(PullOrigin { number, untrusted }),
    };
    Ok(Some((req, origin)))
}

fn verdict(
    app: &App,
    change: &ChangeRow,
    facts: Option<&crate::store::PullRow>,
) -> PullRequestVerdict {
    let policy = app
        .live()
        .projects
        .get(&change.project)
        .and_then(|p| p.pull_requests.clone())
        .unwrap_or_default();
    pull_request_verdict(
        policy.approval,
        &policy.authors,
        PullRequestFacts {
            fork: facts.and_then(|f| f.fork),
            author: facts.map(|f| f.author.as_str()),
            approved_by: change.approved_by.as_deref(),
        },
    )
}

/// Waiting changes whose pull request is now known to be trusted (a
/// webhook told after the poll) go on to be built; those of a closed one
/// are dropped.
pub async fn recheck_waiting(app: &App, project: &str) {
    let store = &app.hub.store;
    let waiting = match store.waiting_changes(project).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(project, "cannot read the waiting changes: {e}");
            return;
        }
    };
    for change in waiting {
        let Some(number) = change.pull_request else {
            continue;
        };
        let facts = store.pull_request(project, number).await.ok().flatten();
        let result = if facts.as_ref().is_some_and(|f| f.closed_at.is_some()) {
            store
                .settle_change(change.id, None, Some("the pull request is closed"))
                .await
        } else if matches!(
            verdict(app, &change, facts.as_ref()),
            PullRequestVerdict::Build { .. }
        ) {
            store.release_change(change.id).await.map(|_| ())
        } else {
            Ok(())
        };
        if let Err(e) = result {
            tracing::warn!(project, "cannot recheck change {}: {e}", change.id);
        }
    }
}

/// What a forge's webhook said about a pull request: recorded; a closed
/// one's waiting changes are dropped and its builds cancelled. True when
/// the poller is to fetch (opened, updated).
pub async fn on_event(
    app: &App,
    project: &str,
    event: &PullRequestEvent,
) -> Result<bool, StoreError> {
    let number = i64::try_from(event.number).unwrap_or(i64::MAX);
    let closed = event.action == PullRequestAction::Closed;
    let was_closed = app
        .hub
        .store
        .pull_request(project, number)
        .await?
        .is_some_and(|p| p.closed_at.is_some());
    app.hub
        .store
        .save_pull_request(
            project,
            &PullFacts {
                number,
                title: event.title.clone(),
                author: event.author.clone(),
                url: event.url.clone(),
                fork: event.fork,
                base: event.base.clone(),
                closed,
            },
        )
        .await?;
    if closed {
        close(app, project, number).await?;
        return Ok(false);
    }
    if was_closed && event.action == PullRequestAction::Opened {
        // Reopened: its head was dropped when it closed; the next poll
        // sees it as new and builds it again.
        app.hub
            .store
            .forget_branch(project, &format!("pr:{number}"))
            .await?;
    }
    Ok(true)
}

async fn close(app: &App, project: &str, number: i64) -> Result<(), StoreError> {
    let store = &app.hub.store;
    let why = format!("pull request #{number} was closed");
    store
        .drop_pull_request_changes(project, number, None, &why)
        .await?;
    for build in store.open_builds_of_pull_request(project, number).await? {
        tracing::info!(project, "cancelling build {build}: {why}");
        store.note_build_error(build, &why).await?;
        app.hub.cancel_build(build).await?;
    }
    app.hub.changed();
    Ok(())
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// For the kinds a change row can have: the label shown for it.
pub fn change_label(change: &ChangeRow) -> String {
    match (change.kind, change.pull_request) {
        (ChangeKind::PullRequest, Some(n)) => format!("PR #{n}"),
        (ChangeKind::Tag, _) => format!("tag {}", change.branch),
        _ => change.branch.clone(),
    }
}
