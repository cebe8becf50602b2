//! Changes from polling and webhooks, the branch heads they move, webhook
//! deliveries already seen, and the statuses still to report.

use super::{get, now_ms, Result, Store};
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::BTreeMap;

/// How long a server's claim on building a change holds.
const CHANGE_CLAIM_MS: i64 = 5 * 60 * 1000;

/// What moved: a watched branch, a new tag, a pull request's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Branch,
    Tag,
    PullRequest,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Branch => "branch",
            ChangeKind::Tag => "tag",
            ChangeKind::PullRequest => "pr",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "branch" => ChangeKind::Branch,
            "tag" => ChangeKind::Tag,
            "pr" => ChangeKind::PullRequest,
            _ => return None,
        })
    }
}

/// A commit on a watched branch (or a tag, or a pull request's head), to
/// be built (or recorded as skipped).
#[derive(Debug, Clone)]
pub struct NewChange {
    pub revision: String,
    pub author: String,
    pub message: String,
    pub committed_at: i64,
    pub files: Option<Vec<String>>,
    pub kind: ChangeKind,
    pub pull_request: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ChangeRow {
    pub id: i64,
    pub project: String,
    pub branch: String,
    pub revision: String,
    pub author: String,
    pub message: String,
    pub committed_at: i64,
    pub files: Option<Vec<String>>,
    pub created_at: i64,
    pub build_id: Option<i64>,
    pub skipped: Option<String>,
    pub kind: ChangeKind,
    pub pull_request: Option<i64>,
    /// Why it waits (for approval), while it does.
    pub waiting: Option<String>,
    pub approved_by: Option<String>,
}

impl ChangeRow {
    pub(super) fn from_row(r: &AnyRow) -> Result<Self> {
        let files: Option<String> = get(r, "files")?;
        Ok(ChangeRow {
            id: get(r, "id")?,
            project: get(r, "project")?,
            branch: get(r, "branch")?,
            revision: get(r, "revision")?,
            author: get(r, "author")?,
            message: get(r, "message")?,
            committed_at: get(r, "committed_at")?,
            files: files.and_then(|f| serde_json::from_str(&f).ok()),
            created_at: get(r, "created_at")?,
            build_id: get(r, "build_id")?,
            skipped: get(r, "skipped")?,
            kind: super::rows::state(r, "kind", ChangeKind::parse)?,
            pull_request: get(r, "pull_request")?,
            waiting: get(r, "waiting")?,
            approved_by: get(r, "approved_by")?,
        })
    }
}

/// One status of one build as last sent to one reporter.
#[derive(Debug, Clone)]
pub struct ReportRow {
    pub target: String,
    pub context: String,
    pub sent: Option<String>,
    pub attempts: i64,
    pub next_at: i64,
}

impl Store {
    /// Last seen revision per watched branch of a project.
    pub async fn branch_heads(&self, project: &str) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query("SELECT branch, revision FROM branch_heads WHERE project = $1")
            .bind(project)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((get(r, "branch")?, get(r, "revision")?)))
            .collect()
    }

    /// Moves a branch head from `old` (None: not seen before) to `new` and
    /// records its changes, in one transaction. None when the head was not
    /// `old` any more (another server recorded these changes first).
    pub async fn advance_branch(
        &self,
        project: &str,
        branch: &str,
        old: Option<&str>,
        new: &str,
        changes: &[NewChange],
    ) -> Result<Option<Vec<i64>>> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let moved = match old {
            None => sqlx::query(
                "INSERT INTO branch_heads (project, branch, revision, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (project, branch) DO NOTHING",
            )
            .bind(project)
            .bind(branch)
            .bind(new)
            .bind(now)
            .execute(&mut *tx)
            .await?,
            Some(old) => sqlx::query(
                "UPDATE branch_heads SET revision = $1, updated_at = $2 \
                 WHERE project = $3 AND branch = $4 AND revision = $5",
            )
            .bind(new)
            .bind(now)
            .bind(project)
            .bind(branch)
            .bind(old)
            .execute(&mut *tx)
            .await?,
        };
        if moved.rows_affected() == 0 {
            return Ok(None);
        }
        let mut ids = Vec::with_capacity(changes.len());
        // A tag's or pull request's key (`tag:NAME`, `pr:N`): its change
        // is of NAME (N).
        let name = branch.split_once(':').map_or(branch, |(_, n)| n);
        for c in changes {
            let files = c
                .files
                .as_ref()
                .map(|f| serde_json::to_string(f).unwrap_or_default());
            let row = sqlx::query(
                "INSERT INTO changes (project, branch, revision, author, message, committed_at, files, created_at, kind, pull_request) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(project)
            .bind(name)
            .bind(&c.revision)
            .bind(&c.author)
            .bind(&c.message)
            .bind(c.committed_at)
            .bind(files)
            .bind(now)
            .bind(c.kind.as_str())
            .bind(c.pull_request)
            .fetch_one(&mut *tx)
            .await?;
            ids.push(row.try_get("id")?);
        }
        tx.commit().await?;
        Ok(Some(ids))
    }

    /// A branch that is gone from the repository.
    pub async fn forget_branch(&self, project: &str, branch: &str) -> Result<()> {
        sqlx::query("DELETE FROM branch_heads WHERE project = $1 AND branch = $2")
            .bind(project)
            .bind(branch)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// What became of a change: its build, or why there is none.
    pub async fn settle_change(
        &self,
        id: i64,
        build_id: Option<i64>,
        skipped: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE changes SET build_id = $1, skipped = $2 WHERE id = $3")
            .bind(build_id)
            .bind(skipped)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn change(&self, id: i64) -> Result<Option<ChangeRow>> {
        let row = sqlx::query("SELECT * FROM changes WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(ChangeRow::from_row).transpose()
    }

    /// Claims an unsettled change for `server` to build; false when another
    /// server holds a fresh claim on it or it is settled.
    pub async fn claim_change(&self, id: i64, server: &str) -> Result<bool> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE changes SET claimed_by = $2, claimed_at = $3 \
             WHERE id = $1 AND build_id IS NULL AND skipped IS NULL \
             AND (claimed_at IS NULL OR claimed_at < $4 OR claimed_by = $2)",
        )
        .bind(id)
        .bind(server)
        .bind(now)
        .bind(now - CHANGE_CLAIM_MS)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Changes recorded but not yet settled (the server stopped between
    /// recording and building), oldest first.
    pub async fn unsettled_changes(&self, project: &str) -> Result<Vec<ChangeRow>> {
        let rows = sqlx::query(
            "SELECT * FROM changes WHERE project = $1 AND build_id IS NULL AND skipped IS NULL \
             AND waiting IS NULL ORDER BY id",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(ChangeRow::from_row).collect()
    }

    /// The newest changes of a project.
    pub async fn changes(&self, project: &str, limit: i64) -> Result<Vec<ChangeRow>> {
        let rows =
            sqlx::query("SELECT * FROM changes WHERE project = $1 ORDER BY id DESC LIMIT $2")
                .bind(project)
                .bind(limit)
                .fetch_all(&self.read)
                .await?;
        rows.iter().map(ChangeRow::from_row).collect()
    }

    /// Records a webhook delivery id; false when it was seen before.
    pub async fn note_delivery(&self, project: &str, delivery: &str) -> Result<bool> {
        let now = now_ms();
        // Deliveries older than a week are forgotten: forges stop retrying
        // long before that.
        sqlx::query("DELETE FROM hook_deliveries WHERE received_at < $1")
            .bind(now - 7 * 24 * 3600 * 1000)
            .execute(&self.write)
            .await?;
        let r = sqlx::query(
            "INSERT INTO hook_deliveries (project, delivery, received_at) VALUES ($1, $2, $3) \
             ON CONFLICT (project, delivery) DO NOTHING",
        )
        .bind(project)
        .bind(delivery)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    // ---- status reports -------------------------------------------------

    /// Builds with statuses still to send.
    pub async fn builds_to_report(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query("SELECT id FROM builds WHERE report_pending = 1 ORDER BY id")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    pub async fn reports_of(&self, build_id: i64) -> Result<Vec<ReportRow>> {
        let rows = sqlx::query("SELECT * FROM status_reports WHERE build_id = $1")
            .bind(build_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ReportRow {
                    target: get(r, "target")?,
                    context: get(r, "context")?,
                    sent: get(r, "sent")?,
                    attempts: get(r, "attempts")?,
                    next_at: get(r, "next_at")?,
                })
            })
            .collect()
    }

    /// After a try to send a status: `Ok` moves `sent` on and resets the
    /// attempts; `Err` counts the attempt and sets when to try again.
    pub async fn save_report(
        &self,
        build_id: i64,
        target: &str,
        context: &str,
        outcome: std::result::Result<&str, (&str, i64)>,
    ) -> Result<()> {
        let (sent, attempts_add, next_at, error) = match outcome {
            Ok(state) => (Some(state), 0, 0, None),
            Err((error, next_at)) => (None, 1, next_at, Some(error)),
        };
        sqlx::query(
            "INSERT INTO status_reports (build_id, target, context, sent, attempts, next_at, last_error) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (build_id, target, context) DO UPDATE SET \
               sent = COALESCE(excluded.sent, status_reports.sent), \
               attempts = CASE WHEN excluded.sent IS NULL THEN status_reports.attempts + 1 ELSE 0 END, \
               next_at = excluded.next_at, last_error = excluded.last_error",
        )
        .bind(build_id)
        .bind(target)
        .bind(context)
        .bind(sent)
        .bind(attempts_add)
        .bind(next_at)
        .bind(error)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Every status of the build is sent (or given up on).
    pub async fn reports_done(&self, build_id: i64) -> Result<()> {
        sqlx::query("UPDATE builds SET report_pending = 0 WHERE id = $1")
            .bind(build_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The state of the last finished build before `build` of the same
    /// project and branch (or tag), pull requests and try builds aside:
    /// what `fixed` compares with.
    pub async fn previous_finished_state(
        &self,
        build: &super::BuildRow,
    ) -> Result<Option<herd_core::state::RunState>> {
        let Some(at) = build.branch.as_deref().or(build.ref_name.as_deref()) else {
            return Ok(None);
        };
        let row = sqlx::query(
            "SELECT state FROM builds WHERE project = $1 AND id < $2 \
             AND COALESCE(branch, ref_name) = $3 AND kind NOT IN ('try', 'pr') \
             AND state IN ('success', 'failure', 'error') ORDER BY id DESC LIMIT 1",
        )
        .bind(&build.project)
        .bind(build.id)
        .bind(at)
        .fetch_optional(&self.read)
        .await?;
        Ok(match row {
            Some(r) => herd_core::state::RunState::parse(&get::<String>(&r, "state")?),
            None => None,
        })
    }
}
