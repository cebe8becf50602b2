//! `herd migrate`: copies everything of a SQLite store into an empty
//! PostgreSQL store (builds, jobs, attempts, logs, tokens, workers, …),
//! table by table in one transaction, ids kept.

use super::{Result, Store, StoreError};
use sqlx::any::AnyRow;
use sqlx::Row;

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Int,
    Real,
    Bytes,
}

use Kind::{Bytes, Int, Real, Text};

/// Every table and its columns, parents before children. Columns are
/// named so that both schemas' column orders may differ.
const TABLES: &[(&str, &[(&str, Kind)])] = &[
    (
        "tokens",
        &[
            ("id", Text),
            ("secret_hash", Text),
            ("kind", Text),
            ("worker", Text),
            ("created_at", Int),
            ("expires_at", Int),
            ("revoked_at", Int),
            ("uses_left", Int),
            ("labels", Text),
        ],
    ),
    (
        "projects",
        &[
            ("name", Text),
            ("repo", Text),
            ("pipeline", Text),
            ("updated_at", Int),
        ],
    ),
    (
        "workers",
        &[
            ("name", Text),
            ("slots", Int),
            ("labels", Text),
            ("facts", Text),
            ("version", Text),
            ("online", Int),
            ("paused", Int),
            ("first_seen", Int),
            ("last_change", Int),
        ],
    ),
    (
        "builds",
        &[
            ("id", Int),
            ("project", Text),
            ("ref_name", Text),
            ("revision", Text),
            ("state", Text),
            ("priority", Int),
            ("reason", Text),
            ("error", Text),
            ("created_at", Int),
            ("started_at", Int),
            ("finished_at", Int),
            ("author", Text),
            ("message", Text),
            ("branch", Text),
            ("kind", Text),
            ("sender", Text),
            ("report_pending", Int),
            ("concurrency_group", Text),
            ("params", Text),
            ("pull_request", Int),
            ("status_revision", Text),
        ],
    ),
    (
        "jobs",
        &[
            ("id", Int),
            ("build_id", Int),
            ("builder", Text),
            ("name", Text),
            ("state", Text),
            ("spec", Text),
            ("error", Text),
            ("created_at", Int),
            ("started_at", Int),
            ("finished_at", Int),
        ],
    ),
    (
        "attempts",
        &[
            ("id", Int),
            ("job_id", Int),
            ("number", Int),
            ("worker", Text),
            ("state", Text),
            ("reason", Text),
            ("last_seq", Int),
            ("created_at", Int),
            ("finished_at", Int),
        ],
    ),
    (
        "steps",
        &[
            ("attempt_id", Int),
            ("idx", Int),
            ("name", Text),
            ("state", Text),
            ("exit_code", Int),
            ("message", Text),
            ("log_size", Int),
            ("started_at", Int),
            ("finished_at", Int),
        ],
    ),
    (
        "log_chunks",
        &[
            ("attempt_id", Int),
            ("step", Int),
            ("byte_offset", Int),
            ("len", Int),
            ("data", Bytes),
        ],
    ),
    (
        "probes",
        &[("name", Text), ("command", Text), ("updated_at", Int)],
    ),
    (
        "worker_labels",
        &[("worker", Text), ("key", Text), ("value", Text)],
    ),
    (
        "worker_probes",
        &[
            ("worker", Text),
            ("name", Text),
            ("present", Int),
            ("version", Text),
            ("output", Text),
            ("probed_at", Int),
        ],
    ),
    (
        "splits",
        &[
            ("id", Int),
            ("build_id", Int),
            ("builder", Text),
            ("job", Text),
            ("step_idx", Int),
            ("step_name", Text),
            ("state", Text),
            ("failed", Int),
            ("summary", Text),
            ("data", Text),
            ("created_at", Int),
            ("finished_at", Int),
            ("seq", Int),
            ("stamp", Int),
            ("counts", Text),
        ],
    ),
    (
        "split_snapshots",
        &[("split_id", Int), ("data_seq", Int), ("data", Bytes)],
    ),
    (
        "split_events",
        &[
            ("split_id", Int),
            ("seq", Int),
            ("stamp", Int),
            ("data", Text),
        ],
    ),
    ("split_holders", &[("attempt_id", Int), ("split_id", Int)]),
    (
        "test_timings",
        &[
            ("project", Text),
            ("builder", Text),
            ("step", Text),
            ("test", Text),
            ("secs", Real),
            ("runs", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "branch_heads",
        &[
            ("project", Text),
            ("branch", Text),
            ("revision", Text),
            ("updated_at", Int),
        ],
    ),
    (
        "changes",
        &[
            ("id", Int),
            ("project", Text),
            ("branch", Text),
            ("revision", Text),
            ("author", Text),
            ("message", Text),
            ("committed_at", Int),
            ("files", Text),
            ("created_at", Int),
            ("build_id", Int),
            ("skipped", Text),
            ("kind", Text),
            ("pull_request", Int),
            ("waiting", Text),
            ("approved_by", Text),
        ],
    ),
    (
        "pull_requests",
        &[
            ("project", Text),
            ("number", Int),
            ("title", Text),
            ("author", Text),
            ("url", Text),
            ("fork", Int),
            ("base", Text),
            ("closed_at", Int),
            ("updated_at", Int),
        ],
    ),
    (
        "hook_deliveries",
        &[("project", Text), ("delivery", Text), ("received_at", Int)],
    ),
    (
        "status_reports",
        &[
            ("build_id", Int),
            ("target", Text),
            ("context", Text),
            ("sent", Text),
            ("attempts", Int),
            ("next_at", Int),
            ("last_error", Text),
        ],
    ),
    ("build_patches", &[("build_id", Int), ("patch", Text)]),
    (
        "artifacts",
        &[
            ("id", Int),
            ("build_id", Int),
            ("job_id", Int),
            ("attempt_id", Int),
            ("path", Text),
            ("size", Int),
            ("sha256", Text),
            ("created_at", Int),
        ],
    ),
];

/// Tables whose `id` is an identity column: its sequence moves past the
/// copied ids.
const IDENTITY_TABLES: &[&str] = &[
    "builds",
    "jobs",
    "attempts",
    "splits",
    "changes",
    "artifacts",
];

/// Rows copied per table.
pub type Copied = Vec<(&'static str, u64)>;

impl Store {
    /// Copies `self` (SQLite) into `to` (PostgreSQL, migrated, empty).
    pub async fn copy_into(&self, to: &Store) -> Result<Copied> {
        if to.postgres.is_none() {
            return Err(StoreError::Corrupt(
                "herd migrate copies into PostgreSQL: give a postgres:// URL".into(),
            ));
        }
        let existing = sqlx::query("SELECT COUNT(*) AS n FROM builds")
            .fetch_one(&to.read)
            .await?
            .try_get::<i64, _>("n")?
            + sqlx::query("SELECT COUNT(*) AS n FROM tokens")
                .fetch_one(&to.read)
                .await?
                .try_get::<i64, _>("n")?;
        if existing > 0 {
            return Err(StoreError::Corrupt(
                "the PostgreSQL database already holds builds or tokens: migrate into an empty one (createdb a new database)".into(),
            ));
        }
        let mut tx = to.write.begin().await?;
        let mut copied = Vec::new();
        for (table, columns) in TABLES {
            let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
            let select = format!("SELECT {} FROM {table}", names.join(", "));
            let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
            let insert = format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                placeholders.join(", ")
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(select))
                .fetch_all(&self.read)
                .await?;
            for row in &rows {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
                for (name, kind) in columns.iter() {
                    q = bind_column(q, row, name, *kind)?;
                }
                q.execute(&mut *tx).await?;
            }
            copied.push((*table, rows.len() as u64));
        }
        for table in IDENTITY_TABLES {
            let sql = format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            );
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(copied)
    }
}

fn bind_column<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    row: &AnyRow,
    name: &str,
    kind: Kind,
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>> {
    Ok(match kind {
        Text => q.bind(row.try_get::<Option<String>, _>(name)?),
        Int => q.bind(row.try_get::<Option<i64>, _>(name)?),
        Real => q.bind(row.try_get::<Option<f64>, _>(name)?),
        Bytes => q.bind(row.try_get::<Option<Vec<u8>>, _>(name)?),
    })
}
