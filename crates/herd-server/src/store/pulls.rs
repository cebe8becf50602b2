//! Pull and merge requests: what the forge's webhook said about each (git
//! knows only the head), the changes that wait for approval, approving
//! them, and closing a pull request.

use super::{get, now_ms, ChangeRow, Result, Store};
use sqlx::any::AnyRow;

/// What a webhook tells about a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullFacts {
    pub number: i64,
    pub title: String,
    pub author: String,
    pub url: String,
    pub fork: bool,
    pub base: Option<String>,
    pub closed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRow {
    pub project: String,
    pub number: i64,
    pub title: String,
    pub author: String,
    pub url: String,
    /// None: no webhook has told (only polled).
    pub fork: Option<bool>,
    pub base: Option<String>,
    pub closed_at: Option<i64>,
}

impl PullRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        Ok(PullRow {
            project: get(r, "project")?,
            number: get(r, "number")?,
            title: get(r, "title")?,
            author: get(r, "author")?,
            url: get(r, "url")?,
            fork: get::<Option<i64>>(r, "fork")?.map(|f| f != 0),
            base: get(r, "base")?,
            closed_at: get(r, "closed_at")?,
        })
    }
}

impl Store {
    /// Records what a webhook said about a pull request (the newest word
    /// wins).
    pub async fn save_pull_request(&self, project: &str, f: &PullFacts) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO pull_requests (project, number, title, author, url, fork, base, closed_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (project, number) DO UPDATE SET title = $3, author = $4, url = $5, fork = $6, \
             base = $7, closed_at = $8, updated_at = $9",
        )
        .bind(project)
        .bind(f.number)
        .bind(&f.title)
        .bind(&f.author)
        .bind(&f.url)
        .bind(i64::from(f.fork))
        .bind(&f.base)
        .bind(f.closed.then_some(now))
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn pull_request(&self, project: &str, number: i64) -> Result<Option<PullRow>> {
        let row = sqlx::query("SELECT * FROM pull_requests WHERE project = $1 AND number = $2")
            .bind(project)
            .bind(number)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(PullRow::from_row).transpose()
    }

    /// The pull requests a webhook told about, newest first (at most `limit`).
    pub async fn pull_requests(&self, project: &str, limit: i64) -> Result<Vec<PullRow>> {
        let rows = sqlx::query(
            "SELECT * FROM pull_requests WHERE project = $1 ORDER BY updated_at DESC LIMIT $2",
        )
        .bind(project)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(PullRow::from_row).collect()
    }

    /// A change that may not be built yet, and why; its claim is let go.
    pub async fn hold_change(&self, id: i64, why: &str) -> Result<()> {
        sqlx::query(
            "UPDATE changes SET waiting = $2, claimed_by = NULL, claimed_at = NULL \
             WHERE id = $1 AND build_id IS NULL AND skipped IS NULL",
        )
        .bind(id)
        .bind(why)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The changes of a project that wait (for approval), oldest first.
    pub async fn waiting_changes(&self, project: &str) -> Result<Vec<ChangeRow>> {
        let rows = sqlx::query(
            "SELECT * FROM changes WHERE project = $1 AND waiting IS NOT NULL \
             AND build_id IS NULL AND skipped IS NULL ORDER BY id",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(ChangeRow::from_row).collect()
    }

    /// Lets a waiting change be built: None when it does not wait (built,
    /// skipped, approved already, or no such change).
    pub async fn approve_change(&self, id: i64, by: &str) -> Result<Option<ChangeRow>> {
        let r = sqlx::query(
            "UPDATE changes SET waiting = NULL, approved_by = $2 \
             WHERE id = $1 AND waiting IS NOT NULL AND build_id IS NULL AND skipped IS NULL",
        )
        .bind(id)
        .bind(by)
        .execute(&self.write)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(None);
        }
        self.change(id).await
    }

    /// A waiting change that is trusted now (a webhook told): it becomes
    /// an ordinary unsettled change. False when it no longer waits.
    pub async fn release_change(&self, id: i64) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE changes SET waiting = NULL \
             WHERE id = $1 AND waiting IS NOT NULL AND build_id IS NULL AND skipped IS NULL",
        )
        .bind(id)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Settles the unbuilt changes of a pull request other than `keep`
    /// (a newer push, or the pull request closed) with `why`.
    pub async fn drop_pull_request_changes(
        &self,
        project: &str,
        number: i64,
        keep: Option<i64>,
        why: &str,
    ) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE changes SET skipped = $4, waiting = NULL \
             WHERE project = $1 AND pull_request = $2 AND id <> $3 \
             AND build_id IS NULL AND skipped IS NULL",
        )
        .bind(project)
        .bind(number)
        .bind(keep.unwrap_or(-1))
        .bind(why)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    /// The builds of a pull request that are queued or running.
    pub async fn open_builds_of_pull_request(
        &self,
        project: &str,
        number: i64,
    ) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT id FROM builds WHERE project = $1 AND pull_request = $2 \
             AND state IN ('queued', 'running') ORDER BY id",
        )
        .bind(project)
        .bind(number)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| get(r, "id")).collect()
    }
}
