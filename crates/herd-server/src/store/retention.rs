//! What the janitor reads and removes: builds as `herd_core::retention`
//! sees them, the builds that must stay, and removals in small
//! transactions (so that builds keep flowing beside it); the lease that
//! lets one server of several be the janitor.

use super::{get, Result, Store};
use herd_core::retention::BuildAge;
use herd_core::state::RunState;
use std::collections::HashSet;

/// What one removal took away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub builds: u64,
    /// Builds whose logs went (a whole build's count too).
    pub logs: u64,
    /// Builds whose artifacts went.
    pub artifacts: u64,
    /// Compressed log bytes deleted.
    pub log_bytes: u64,
    /// The contents (SHA-256) whose last row may have gone: the caller
    /// removes each file no row names any more.
    pub blobs: Vec<String>,
}

impl Removed {
    pub fn add(&mut self, other: Removed) {
        self.builds += other.builds;
        self.logs += other.logs;
        self.artifacts += other.artifacts;
        self.log_bytes += other.log_bytes;
        self.blobs.extend(other.blobs);
    }
}

/// One janitor pass as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JanitorRun {
    pub server: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub builds: i64,
    pub logs: i64,
    pub artifacts: i64,
    pub log_bytes: i64,
    pub blob_bytes: i64,
}

/// `$from, $from+1, …` for `n` values.
fn placeholders(from: usize, n: usize) -> String {
    (from..from + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The attempts of the builds named by placeholders `$1…$n`.
fn attempts_of(n: usize) -> String {
    format!(
        "SELECT a.id FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.build_id IN ({})",
        placeholders(1, n)
    )
}

impl Store {
    /// Every project that has builds (a project gone from the config
    /// keeps what the server's `keep:` says).
    pub async fn projects_with_builds(&self) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT project FROM builds ORDER BY project")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| get(r, "project")).collect()
    }

    /// The builds of `project` as the janitor weighs them.
    pub async fn builds_for_retention(&self, project: &str) -> Result<Vec<BuildAge>> {
        let rows = sqlx::query(
            "SELECT id, finished_at, logs_expired_at, artifacts_expired_at FROM builds \
             WHERE project = $1",
        )
        .bind(project)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(BuildAge {
                    id: get(r, "id")?,
                    finished_at: get(r, "finished_at")?,
                    logs_expired: get::<Option<i64>>(r, "logs_expired_at")?.is_some(),
                    artifacts_expired: get::<Option<i64>>(r, "artifacts_expired_at")?.is_some(),
                })
            })
            .collect()
    }

    /// The builds of `project` that stay whatever `keep:` says: for each
    /// builder and branch, the last where it succeeded and the last where
    /// it failed.
    pub async fn protected_builds(&self, project: &str) -> Result<HashSet<i64>> {
        let rows = sqlx::query(
            "SELECT MAX(j.build_id) AS id FROM jobs j JOIN builds b ON b.id = j.build_id \
             WHERE b.project = $1 AND j.state IN ($2, $3, $4) \
             GROUP BY j.builder, COALESCE(b.branch, b.ref_name, ''), \
                      CASE WHEN j.state = $2 THEN 0 ELSE 1 END",
        )
        .bind(project)
        .bind(RunState::Success.as_str())
        .bind(RunState::Failure.as_str())
        .bind(RunState::Error.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    /// Removes the finished builds `ids` whole, in one transaction: their
    /// jobs, attempts, steps, logs, splits, artifact rows, statuses and
    /// the changes that led to them. A build that is not finished (a
    /// retry raced the janitor) stays.
    pub async fn remove_builds(&self, ids: &[i64]) -> Result<Removed> {
        if ids.is_empty() {
            return Ok(Removed::default());
        }
        let mut tx = self.write.begin().await?;
        let finished_sql = format!(
            "SELECT id FROM builds WHERE id IN ({}) AND finished_at IS NOT NULL",
            placeholders(1, ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(finished_sql.clone()));
        for id in ids {
            q = q.bind(*id);
        }
        let ids: Vec<i64> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| get(r, "id"))
            .collect::<Result<_>>()?;
        if ids.is_empty() {
            tx.rollback().await?;
            return Ok(Removed::default());
        }
        let list = placeholders(1, ids.len());
        let log_bytes_sql = format!(
            "SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) AS n FROM log_chunks WHERE attempt_id IN ({})",
            attempts_of(ids.len())
        );
        let blobs_sql = format!("SELECT DISTINCT sha256 FROM artifacts WHERE build_id IN ({list})");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(log_bytes_sql.clone()));
        for id in &ids {
            q = q.bind(*id);
        }
        let log_bytes: i64 = get(&q.fetch_one(&mut *tx).await?, "n")?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(blobs_sql.clone()));
        for id in &ids {
            q = q.bind(*id);
        }
        let blobs: Vec<String> = q
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| get(r, "sha256"))
            .collect::<Result<_>>()?;
        // Children before parents: the foreign keys hold at every step.
        let statements = [
            format!("DELETE FROM log_chunks WHERE attempt_id IN ({})", attempts_of(ids.len())),
            format!("DELETE FROM steps WHERE attempt_id IN ({})", attempts_of(ids.len())),
            format!("DELETE FROM artifacts WHERE build_id IN ({list})"),
            format!(
                "DELETE FROM attempts WHERE job_id IN (SELECT id FROM jobs WHERE build_id IN ({list}))"
            ),
            format!(
                "DELETE FROM split_events WHERE split_id IN (SELECT id FROM splits WHERE build_id IN ({list}))"
            ),
            format!(
                "DELETE FROM split_snapshots WHERE split_id IN (SELECT id FROM splits WHERE build_id IN ({list}))"
            ),
            format!(
                "DELETE FROM split_holders WHERE split_id IN (SELECT id FROM splits WHERE build_id IN ({list}))"
            ),
            format!("DELETE FROM splits WHERE build_id IN ({list})"),
            format!("DELETE FROM jobs WHERE build_id IN ({list})"),
            format!("DELETE FROM status_reports WHERE build_id IN ({list})"),
            format!("DELETE FROM build_patches WHERE build_id IN ({list})"),
            format!("DELETE FROM changes WHERE build_id IN ({list})"),
            format!("UPDATE schedule_runs SET build_id = NULL WHERE build_id IN ({list})"),
            format!("DELETE FROM builds WHERE id IN ({list})"),
        ];
        for sql in &statements {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for id in &ids {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Removed {
            builds: ids.len() as u64,
            logs: ids.len() as u64,
            artifacts: ids.len() as u64,
            log_bytes: log_bytes.max(0) as u64,
            blobs,
        })
    }

    /// Removes the logs of builds `ids` (the builds stay and say so).
    pub async fn expire_logs(&self, ids: &[i64], now: i64) -> Result<Removed> {
        if ids.is_empty() {
            return Ok(Removed::default());
        }
        let mut tx = self.write.begin().await?;
        let log_bytes_sql = format!(
            "SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) AS n FROM log_chunks WHERE attempt_id IN ({})",
            attempts_of(ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(log_bytes_sql.clone()));
        for id in ids {
            q = q.bind(*id);
        }
        let log_bytes: i64 = get(&q.fetch_one(&mut *tx).await?, "n")?;
        let delete = format!(
            "DELETE FROM log_chunks WHERE attempt_id IN ({})",
            attempts_of(ids.len())
        );
        let mark = format!(
            "UPDATE builds SET logs_expired_at = ${} WHERE id IN ({}) AND finished_at IS NOT NULL",
            ids.len() + 1,
            placeholders(1, ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(delete.clone()));
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
        let mut q = sqlx::query(sqlx::AssertSqlSafe(mark.clone()));
        for id in ids {
            q = q.bind(*id);
        }
        let marked = q.bind(now).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(Removed {
            logs: marked,
            log_bytes: log_bytes.max(0) as u64,
            ..Removed::default()
        })
    }

    /// Removes the artifact rows of builds `ids` (the builds stay and say
    /// so); the files are the caller's to remove.
    pub async fn expire_artifacts(&self, ids: &[i64], now: i64) -> Result<Removed> {
        if ids.is_empty() {
            return Ok(Removed::default());
        }
        let list = placeholders(1, ids.len());
        let mut tx = self.write.begin().await?;
        let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT sha256 FROM artifacts WHERE build_id IN ({list})"
        )));
        for id in ids {
            q = q.bind(*id);
        }
        let blobs = q.fetch_all(&mut *tx).await?;
        let delete = format!("DELETE FROM artifacts WHERE build_id IN ({list})");
        let mut q = sqlx::query(sqlx::AssertSqlSafe(delete.clone()));
        for id in ids {
            q = q.bind(*id);
        }
        q.execute(&mut *tx).await?;
        let mark = format!(
            "UPDATE builds SET artifacts_expired_at = ${} WHERE id IN ({list}) AND finished_at IS NOT NULL",
            ids.len() + 1
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(mark.clone()));
        for id in ids {
            q = q.bind(*id);
        }
        let marked = q.bind(now).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(Removed {
            artifacts: marked,
            blobs,
            ..Removed::default()
        })
    }

    /// Compressed bytes of the logs of builds `ids`.
    pub async fn log_bytes_of(&self, ids: &[i64]) -> Result<u64> {
        let mut total = 0;
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) AS n FROM log_chunks WHERE attempt_id IN ({})",
                attempts_of(chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for id in chunk {
                q = q.bind(*id);
            }
            total += get::<i64>(&q.fetch_one(&self.read).await?, "n")?.max(0) as u64;
        }
        Ok(total)
    }

    /// Bytes of the artifact rows of builds `ids`.
    pub async fn artifact_bytes_of(&self, ids: &[i64]) -> Result<u64> {
        let mut total = 0;
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS n FROM artifacts WHERE build_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for id in chunk {
                q = q.bind(*id);
            }
            total += get::<i64>(&q.fetch_one(&self.read).await?, "n")?.max(0) as u64;
        }
        Ok(total)
    }

    /// Whether any artifact row names this content.
    pub async fn blob_referenced(&self, sha256: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM artifacts WHERE sha256 = $1 LIMIT 1")
            .bind(sha256)
            .fetch_optional(&self.write)
            .await?;
        Ok(row.is_some())
    }

    /// Removes what only served builds and changes long gone: webhook
    /// deliveries and schedule firings older than `before` (the newest
    /// firing of each schedule stays: the next one is counted from it),
    /// changes that built nothing, and the janitor's own old records.
    pub async fn prune_bookkeeping(&self, before: i64) -> Result<u64> {
        let mut removed = 0;
        for sql in [
            "DELETE FROM hook_deliveries WHERE received_at < $1",
            "DELETE FROM schedule_runs WHERE fire_at < $1 AND fire_at < \
             (SELECT MAX(fire_at) FROM schedule_runs r \
              WHERE r.project = schedule_runs.project AND r.schedule = schedule_runs.schedule)",
            "DELETE FROM changes WHERE build_id IS NULL AND waiting IS NULL AND created_at < $1",
            "DELETE FROM janitor_runs WHERE started_at < $1 \
             AND id < (SELECT MAX(id) FROM janitor_runs)",
        ] {
            removed += sqlx::query(sql)
                .bind(before)
                .execute(&self.write)
                .await?
                .rows_affected();
        }
        Ok(removed)
    }

    /// When the logs of the build that `attempt` belongs to were removed.
    pub async fn attempt_logs_expired(&self, attempt: i64) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT b.logs_expired_at FROM attempts a JOIN jobs j ON j.id = a.job_id \
             JOIN builds b ON b.id = j.build_id WHERE a.id = $1",
        )
        .bind(attempt)
        .fetch_optional(&self.read)
        .await?;
        Ok(row
            .map(|r| get(&r, "logs_expired_at"))
            .transpose()?
            .flatten())
    }

    /// When the logs and the artifacts of `build` were removed.
    pub async fn build_expiry(&self, build: i64) -> Result<(Option<i64>, Option<i64>)> {
        let row =
            sqlx::query("SELECT logs_expired_at, artifacts_expired_at FROM builds WHERE id = $1")
                .bind(build)
                .fetch_optional(&self.read)
                .await?;
        match row {
            Some(r) => Ok((
                get(&r, "logs_expired_at")?,
                get(&r, "artifacts_expired_at")?,
            )),
            None => Ok((None, None)),
        }
    }

    /// Takes (or keeps) the lease `name` for `holder` until `until`: false
    /// while another holder's lease runs.
    pub async fn claim_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO leases (name, holder, held_until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, held_until = excluded.held_until \
             WHERE leases.holder = excluded.holder OR leases.held_until < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(until)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Gives the lease back (another server may take it at once).
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn record_janitor_run(&self, run: &JanitorRun) -> Result<()> {
        sqlx::query(
            "INSERT INTO janitor_runs (server, started_at, finished_at, builds, logs, artifacts, \
             log_bytes, blob_bytes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&run.server)
        .bind(run.started_at)
        .bind(run.finished_at)
        .bind(run.builds)
        .bind(run.logs)
        .bind(run.artifacts)
        .bind(run.log_bytes)
        .bind(run.blob_bytes)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The janitor passes, newest first, at most `limit`.
    pub async fn janitor_runs(&self, limit: i64) -> Result<Vec<JanitorRun>> {
        let rows = sqlx::query(
            "SELECT server, started_at, finished_at, builds, logs, artifacts, log_bytes, blob_bytes \
             FROM janitor_runs ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JanitorRun {
                    server: get(r, "server")?,
                    started_at: get(r, "started_at")?,
                    finished_at: get(r, "finished_at")?,
                    builds: get(r, "builds")?,
                    logs: get(r, "logs")?,
                    artifacts: get(r, "artifacts")?,
                    log_bytes: get(r, "log_bytes")?,
                    blob_bytes: get(r, "blob_bytes")?,
                })
            })
            .collect()
    }

    /// Gives freed pages back to the file system (SQLite; PostgreSQL's
    /// autovacuum does this by itself). At most `pages` pages per call,
    /// so that writers wait little.
    pub async fn give_space_back(&self, pages: i64) -> Result<()> {
        if self.postgres.is_none() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "PRAGMA incremental_vacuum({pages})"
            )))
            .execute(&self.write)
            .await?;
        }
        Ok(())
    }

    /// Pages of the SQLite file that are free (0 on PostgreSQL).
    pub async fn free_pages(&self) -> Result<i64> {
        if self.postgres.is_some() {
            return Ok(0);
        }
        let row = sqlx::query("PRAGMA freelist_count")
            .fetch_one(&self.read)
            .await?;
        Ok(sqlx::Row::try_get::<i64, _>(&row, 0)?)
    }
}
