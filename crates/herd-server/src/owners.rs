//! The seed's own case: a lent machine goes away and its owner should know.
//! A worker's owner is its server label `owner` (given on the enrollment
//! token, `herd token create --enroll --owner EMAIL`, or by the admin,
//! `herd workers label NAME owner=EMAIL`). When it has been offline for
//! `offline_notice` (default 1 h) the owner gets one email; when it is
//! back, another. What was sent is kept on the worker's row, so a restart
//! (or another server sharing the database) does not send it again.

use crate::App;
use std::sync::Arc;
use std::time::Duration;

/// The label that names a worker's owner.
pub const OWNER_LABEL: &str = "owner";

/// An owner the server may mail: one plain address, nothing a mail header
/// could be made of.
pub fn valid_owner(a: &str) -> bool {
    a.len() <= 254
        && a.split_once('@')
            .is_some_and(|(l, h)| !l.is_empty() && !h.is_empty())
        && !a.contains(|c: char| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
}

/// Starts the loop when the server can send email.
pub fn spawn(app: &Arc<App>) -> Option<tokio::task::JoinHandle<()>> {
    app.smtp.as_ref()?;
    let app = Arc::clone(app);
    // Often enough that a notice is late by a fraction of the wait.
    let every = (app.offline_notice / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    Some(tokio::spawn(async move {
        loop {
            if let Err(e) = tick(&app, crate::store::now_ms()).await {
                tracing::warn!("owner notices: {e}");
            }
            tokio::time::sleep(every).await;
        }
    }))
}

/// Sends what is due at `now` (ms).
pub async fn tick(app: &App, now: i64) -> Result<(), crate::store::StoreError> {
    let store = &app.hub.store;
    // Several servers on one database: the first live one tells.
    if !app.speaks_for_cluster().await? {
        return Ok(());
    }
    let Some(smtp) = &app.smtp else {
        return Ok(());
    };
    let wait = app.offline_notice.as_millis() as i64;
    for w in store.workers().await? {
        // Away long enough and not told yet, or back after being told.
        let away = !w.online && now - w.last_change >= wait && w.away_notified_at.is_none();
        let back = w.online && w.away_notified_at.is_some();
        if !away && !back {
            continue;
        }
        let labels = store.worker_labels(&w.name).await?;
        let Some(owner) = labels.get(OWNER_LABEL) else {
            continue;
        };
        let since = chrono::DateTime::from_timestamp_millis(w.last_change)
            .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
            .unwrap_or_default();
        let link = format!("{}/workers/{}", app.public_url, w.name);
        let msg = if back {
            herd_core::notify::Message {
                subject: format!("[herd] worker {} is back", w.name),
                text: format!(
                    "Worker {} is online again (since {since}) and takes jobs.\n\n{link}\n",
                    w.name
                ),
            }
        } else {
            herd_core::notify::Message {
                subject: format!("[herd] worker {} is offline", w.name),
                text: format!(
                    "Worker {} has been offline since {since}.\n\nIts jobs went to other workers. If the machine should be up, \
                     check that its service runs (`systemctl status herd-worker` on it, or your system's equivalent) and that it reaches {}.\n\n{link}\n",
                    w.name, app.public_url
                ),
            }
        };
        match crate::notify::send_email(smtp, std::slice::from_ref(owner), &msg).await {
            Ok(()) => {
                tracing::info!(worker = %w.name, "told its owner it is {}", if back { "back" } else { "away" });
                store
                    .note_away_notice(&w.name, (!back).then_some(now))
                    .await?;
            }
            Err(e) => {
                tracing::warn!(worker = %w.name, "cannot tell its owner: {e} (tried again soon)")
            }
        }
    }
    Ok(())
}
