//! The artifact index: which attempt kept which file (by its SHA-256; the
//! content is in the artifact store, `crate::artifacts`). A job's artifacts
//! are those of its latest attempt: an attempt lost half way through its
//! uploads leaves nothing that shows.

use super::{get, now_ms, Result, Store};
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRow {
    pub id: i64,
    pub build_id: i64,
    pub job_id: i64,
    pub attempt_id: i64,
    /// The job's `builder/name`.
    pub job: String,
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub created_at: i64,
}

impl ArtifactRow {
    fn from_row(r: &AnyRow) -> Result<Self> {
        let builder: String = get(r, "builder")?;
        let name: String = get(r, "name")?;
        Ok(ArtifactRow {
            id: get(r, "id")?,
            build_id: get(r, "build_id")?,
            job_id: get(r, "job_id")?,
            attempt_id: get(r, "attempt_id")?,
            job: format!("{builder}/{name}"),
            path: get(r, "path")?,
            size: get(r, "size")?,
            sha256: get(r, "sha256")?,
            created_at: get(r, "created_at")?,
        })
    }
}

/// An attempt that may upload, with its job and build.
#[derive(Debug, Clone)]
pub struct UploadingAttempt {
    pub build_id: i64,
    pub job_id: i64,
    pub worker: String,
    /// Assigned or running.
    pub live: bool,
}

const SELECT: &str = "SELECT r.id, r.build_id, r.job_id, r.attempt_id, r.path, r.size, r.sha256, \
     r.created_at, j.builder, j.name FROM artifacts r JOIN jobs j ON j.id = r.job_id";

/// Only rows of the latest attempt of their job.
const LATEST: &str = "r.attempt_id = (SELECT MAX(t.id) FROM attempts t WHERE t.job_id = r.job_id)";

impl Store {
    pub async fn uploading_attempt(&self, attempt: i64) -> Result<Option<UploadingAttempt>> {
        let row = sqlx::query(
            "SELECT a.worker, a.state, a.job_id, j.build_id FROM attempts a \
             JOIN jobs j ON j.id = a.job_id WHERE a.id = $1",
        )
        .bind(attempt)
        .fetch_optional(&self.read)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let state: String = get(&r, "state")?;
        Ok(Some(UploadingAttempt {
            build_id: get(&r, "build_id")?,
            job_id: get(&r, "job_id")?,
            worker: get(&r, "worker")?,
            live: state == "assigned" || state == "running",
        }))
    }

    /// Bytes of artifacts `attempt` has kept, `path` left out (an upload
    /// of the same path replaces it).
    pub async fn attempt_artifact_bytes(&self, attempt: i64, path: &str) -> Result<i64> {
        let rows = sqlx::query("SELECT size FROM artifacts WHERE attempt_id = $1 AND path <> $2")
            .bind(attempt)
            .bind(path)
            .fetch_all(&self.read)
            .await?;
        let mut total = 0i64;
        for r in &rows {
            total = total.saturating_add(get::<i64>(r, "size")?);
        }
        Ok(total)
    }

    /// Records that `attempt` kept `path` with this content, while the
    /// attempt is live (fencing: a late worker's upload is not recorded).
    /// The same path again replaces it. None when the attempt has ended.
    pub async fn add_artifact(
        &self,
        attempt: i64,
        path: &str,
        size: i64,
        sha256: &str,
    ) -> Result<Option<i64>> {
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "SELECT a.job_id, j.build_id FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE a.id = $1 AND a.state IN ('assigned', 'running')",
        )
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let job_id: i64 = get(&r, "job_id")?;
        let build_id: i64 = get(&r, "build_id")?;
        sqlx::query("DELETE FROM artifacts WHERE attempt_id = $1 AND path = $2")
            .bind(attempt)
            .bind(path)
            .execute(&mut *tx)
            .await?;
        let id: i64 = sqlx::query(
            "INSERT INTO artifacts (build_id, job_id, attempt_id, path, size, sha256, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(build_id)
        .bind(job_id)
        .bind(attempt)
        .bind(path)
        .bind(size)
        .bind(sha256)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        tx.commit().await?;
        Ok(Some(id))
    }

    /// The artifacts of a build (each job's latest attempt), by job and path.
    pub async fn build_artifacts(&self, build: i64) -> Result<Vec<ArtifactRow>> {
        let sql = format!(
            "{SELECT} WHERE r.build_id = $1 AND {LATEST} ORDER BY j.builder, j.name, r.path"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(build)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(ArtifactRow::from_row).collect()
    }

    pub async fn artifact(&self, id: i64) -> Result<Option<ArtifactRow>> {
        let sql = format!("{SELECT} WHERE r.id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(ArtifactRow::from_row).transpose()
    }

    /// The artifacts a job fetches: those of the build's jobs named in
    /// `from` (`builder/job`; a split job stands for its shards).
    pub async fn artifacts_from(&self, build: i64, from: &[String]) -> Result<Vec<ArtifactRow>> {
        let all = self.build_artifacts(build).await?;
        Ok(all
            .into_iter()
            .filter(|a| {
                from.iter().any(|f| {
                    a.job == *f
                        || a.job
                            .strip_prefix(f.as_str())
                            .is_some_and(|rest| rest.starts_with('#'))
                })
            })
            .collect())
    }
}
