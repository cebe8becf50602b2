//! The store: everything herd keeps, behind one type that works on the
//! embedded SQLite file (and, with the same portable SQL, on PostgreSQL).
//!
//! Architecture invariant: SQL here is portable between SQLite and
//! PostgreSQL: `$N` placeholders, `RETURNING`, no backend-specific functions.
//! Backend differences live in the migrations only.
//!
//! SQLite takes one writer at a time; the store therefore keeps a pool of one
//! connection for writes and a pool of several for reads (WAL lets readers run
//! beside the writer without blocking).

mod artifacts;
mod builds;
mod changes;
pub mod encoding;
mod locks;
mod logs;
mod migrate;
mod probes;
mod pulls;
mod retention;
mod rows;
mod schedules;
mod servers;
mod split_log;
mod splits;
mod timings;

pub use artifacts::{ArtifactRow, UploadingAttempt};
pub use builds::*;
pub use changes::{ChangeKind, ChangeRow, NewChange, ReportRow};
pub use logs::LOG_ZSTD_LEVEL;
pub use pulls::{PullFacts, PullRow};
pub use retention::{JanitorRun, Removed};
pub use rows::*;
pub use servers::NOTIFY_CHANNEL;
pub use splits::{SplitAnswer, SplitHead, SplitRow, SPLIT_WAIT_MS};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    write: AnyPool,
    read: AnyPool,
    /// The PostgreSQL URL, when the store is there (servers sharing it
    /// listen for each other's notifications on their own connection).
    postgres: Option<String>,
    /// The SQLite file, when the store is one.
    sqlite: Option<std::path::PathBuf>,
    /// Split states this server wrote last (`split_log`).
    split_cache: std::sync::Arc<split_log::SplitCache>,
}

/// Whether `database` names a PostgreSQL database rather than a file.
pub fn is_postgres_url(database: &str) -> bool {
    database.starts_with("postgres://") || database.starts_with("postgresql://")
}

const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;";

/// Makes the SQLite file give freed pages back when asked
/// (`PRAGMA incremental_vacuum`, the janitor's): a new file is made so, an
/// older one is rewritten once (VACUUM), which takes a while for a big one.
async fn incremental_vacuum_on(write: &AnyPool) -> Result<()> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = Row::try_get(
        &sqlx::query("PRAGMA auto_vacuum").fetch_one(write).await?,
        0,
    )?;
    if mode != INCREMENTAL {
        let tables: i64 = Row::try_get(
            &sqlx::query("SELECT COUNT(*) FROM sqlite_master")
                .fetch_one(write)
                .await?,
            0,
        )?;
        if tables > 0 {
            tracing::info!("rewriting the database once so that it gives space back (VACUUM)");
        }
        write
            .execute("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
            .await?;
    }
    Ok(())
}

/// A worker's disk report as the `workers.disk` column keeps it.
pub fn disk_json(disk: &herd_proto::DiskReport) -> String {
    serde_json::to_string(disk).unwrap_or_else(|_| "{}".into())
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens (creating if needed) the SQLite database at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(60))
            // A connection to a local file does not go stale: no ping (a
            // round trip to its thread) before every transaction.
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        incremental_vacuum_on(&write).await?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await?;
        let read = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(60))
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(SQLITE_PRAGMAS).await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Store {
            write,
            read,
            postgres: None,
            sqlite: Some(path.to_path_buf()),
            split_cache: Default::default(),
        })
    }

    /// Opens the PostgreSQL database at `url` and migrates it. Reads and
    /// writes share one pool: PostgreSQL takes concurrent writers.
    pub async fn open_postgres(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(60))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Store {
            write: pool.clone(),
            read: pool,
            postgres: Some(url.to_string()),
            sqlite: None,
            split_cache: Default::default(),
        })
    }

    /// The SQLite file of a store kept in one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        self.sqlite.as_deref()
    }

    /// Bytes of the SQLite file with its write-ahead log; None on PostgreSQL.
    pub fn database_bytes(&self) -> Option<u64> {
        let path = self.sqlite.as_ref()?;
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Some(size(path) + size(Path::new(&wal)))
    }

    /// The PostgreSQL URL of a store kept there.
    pub fn postgres_url(&self) -> Option<&str> {
        self.postgres.as_deref()
    }

    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    // ---- tokens -------------------------------------------------------

    pub async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, secret_hash, kind, worker, created_at, expires_at, revoked_at, uses_left, labels) \
             VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8)",
        )
        .bind(&t.id)
        .bind(&t.secret_hash)
        .bind(&t.kind)
        .bind(&t.worker)
        .bind(t.created_at)
        .bind(t.expires_at)
        .bind(t.uses_left)
        .bind(&t.labels)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows = sqlx::query("SELECT * FROM tokens ORDER BY created_at, id")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(TokenRow::from_row).collect()
    }

    /// Revokes a token now. False when there is no such live token.
    pub async fn revoke_token(&self, id: &str) -> Result<Option<TokenRow>> {
        let res =
            sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now_ms())
                .execute(&self.write)
                .await?;
        if res.rows_affected() == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_one(&self.write)
            .await?;
        Ok(Some(TokenRow::from_row(&row)?))
    }

    /// Revokes every live token of one kind; how many.
    pub async fn revoke_tokens_of_kind(&self, kind: &str) -> Result<u64> {
        let res =
            sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE kind = $1 AND revoked_at IS NULL")
                .bind(kind)
                .bind(now_ms())
                .execute(&self.write)
                .await?;
        Ok(res.rows_affected())
    }

    /// Takes one use of an enrollment token, in one statement so that two
    /// machines cannot both take the last one. False when none is left.
    pub async fn take_enroll_use(&self, id: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE tokens SET uses_left = CASE WHEN uses_left IS NULL THEN NULL ELSE uses_left - 1 END \
             WHERE id = $1 AND kind = 'enroll' AND revoked_at IS NULL \
             AND (uses_left IS NULL OR uses_left > 0) AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(res.rows_affected() == 1)
    }

    /// Forgets a worker: its tokens are revoked and its row removed.
    pub async fn forget_worker(&self, name: &str) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE worker = $1 AND revoked_at IS NULL")
            .bind(name)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM worker_probes WHERE worker = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM worker_labels WHERE worker = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM workers WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>> {
        let row = sqlx::query("SELECT * FROM tokens WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| TokenRow::from_row(&r)).transpose()
    }

    pub async fn count_tokens(&self, kind: &str) -> Result<i64> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM tokens WHERE kind = $1 AND revoked_at IS NULL")
                .bind(kind)
                .fetch_one(&self.read)
                .await?;
        Ok(row.try_get("n")?)
    }

    // ---- projects -----------------------------------------------------

    pub async fn upsert_project(&self, p: &ProjectRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO projects (name, repo, pipeline, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET repo = $2, pipeline = $3, updated_at = $4",
        )
        .bind(&p.name)
        .bind(&p.repo)
        .bind(&p.pipeline)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn projects(&self) -> Result<Vec<ProjectRow>> {
        let rows = sqlx::query("SELECT name, repo, pipeline FROM projects ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(ProjectRow::from_row).collect()
    }

    pub async fn project(&self, name: &str) -> Result<Option<ProjectRow>> {
        let row = sqlx::query("SELECT name, repo, pipeline FROM projects WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(ProjectRow::from_row).transpose()
    }

    /// Whether `worker` has a live attempt of a job of `project` (what
    /// lets it fetch the project's sources from the server).
    pub async fn worker_runs_project(&self, worker: &str, project: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM attempts a JOIN jobs j ON j.id = a.job_id \
             JOIN builds b ON b.id = j.build_id \
             WHERE a.worker = $1 AND a.state IN ('assigned', 'running') AND b.project = $2 \
             LIMIT 1",
        )
        .bind(worker)
        .bind(project)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.is_some())
    }

    // ---- workers ------------------------------------------------------

    /// A worker connected to server `server`.
    pub async fn worker_online(&self, w: &WorkerRow, server: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO workers (name, slots, labels, facts, version, online, paused, first_seen, last_change, server, disk) \
             VALUES ($1, $2, $3, $4, $5, 1, 0, $6, $6, $7, $8) \
             ON CONFLICT (name) DO UPDATE SET slots = $2, labels = $3, facts = $4, version = $5, \
             online = 1, last_change = $6, server = $7, disk = COALESCE($8, workers.disk)",
        )
        .bind(&w.name)
        .bind(w.slots)
        .bind(&w.labels)
        .bind(&w.facts)
        .bind(&w.version)
        .bind(now)
        .bind(server)
        .bind(&w.disk)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The worker's connection to `server` ended (it may be on another
    /// server already: then nothing changes).
    /// `disk`: what it last said of its disk, kept for the pages.
    pub async fn worker_offline(
        &self,
        name: &str,
        server: &str,
        disk: Option<&herd_proto::DiskReport>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE workers SET online = 0, last_change = $2, disk = COALESCE($4, disk) \
             WHERE name = $1 AND (server = $3 OR server IS NULL)",
        )
        .bind(name)
        .bind(now_ms())
        .bind(server)
        .bind(disk.map(disk_json))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// What a worker said of its disk (JSON of `herd_proto::DiskReport`).
    pub async fn set_worker_disk(&self, name: &str, disk: &herd_proto::DiskReport) -> Result<()> {
        sqlx::query("UPDATE workers SET disk = $2 WHERE name = $1")
            .bind(name)
            .bind(disk_json(disk))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Pauses or resumes a worker; false when no such worker has connected yet.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<bool> {
        let res = sqlx::query("UPDATE workers SET paused = $2 WHERE name = $1")
            .bind(name)
            .bind(i64::from(paused))
            .execute(&self.write)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Marks every worker offline: at server start no connection exists yet.
    pub async fn all_workers_offline(&self) -> Result<()> {
        sqlx::query("UPDATE workers SET online = 0 WHERE online = 1")
            .execute(&self.write)
            .await?;
        Ok(())
    }

    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        let rows = sqlx::query("SELECT * FROM workers ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(WorkerRow::from_row).collect()
    }

    /// The labels the server gave a worker.
    pub async fn worker_labels(&self, name: &str) -> Result<BTreeMap<String, String>> {
        let rows =
            sqlx::query("SELECT key, value FROM worker_labels WHERE worker = $1 ORDER BY key")
                .bind(name)
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key")?, r.try_get("value")?)))
            .collect()
    }

    /// The labels the server gave every worker: worker -> labels.
    pub async fn all_worker_labels(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
        let rows = sqlx::query("SELECT worker, key, value FROM worker_labels ORDER BY worker, key")
            .fetch_all(&self.read)
            .await?;
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for r in &rows {
            out.entry(r.try_get("worker")?)
                .or_default()
                .insert(r.try_get("key")?, r.try_get("value")?);
        }
        Ok(out)
    }

    /// Sets and removes labels the server gives a worker, in one transaction.
    pub async fn set_worker_labels(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        for key in remove.iter().chain(set.keys()) {
            sqlx::query("DELETE FROM worker_labels WHERE worker = $1 AND key = $2")
                .bind(name)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        for (key, value) in set {
            sqlx::query("INSERT INTO worker_labels (worker, key, value) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn worker(&self, name: &str) -> Result<Option<WorkerRow>> {
        let row = sqlx::query("SELECT * FROM workers WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(WorkerRow::from_row).transpose()
    }
}

pub(crate) fn get<'r, T>(row: &'r AnyRow, col: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    Ok(row.try_get(col)?)
}
