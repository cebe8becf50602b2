//! The transaction steps that fix the lock order, in one place.
//!
//! Architecture invariant: a transaction that reads a build's jobs or
//! splits and writes from what it read takes the build's row lock
//! ([`lock_build`]) before it reads them. Rows are locked in one order:
//! the attempt a transaction is about (a report, a loss), then its build,
//! then the build's jobs and splits; nothing locks a build and then an
//! attempt. On PostgreSQL two servers (or two connections) then follow
//! each other instead of each writing from a stale read, and no two wait
//! on each other in opposite orders. SQLite has one writer, so the lock
//! costs nothing there.
//!
//! The steps here call each other (a job that ends may end its build, a
//! build that ends closes its splits, an attempt that ends releases its
//! batch and may skip queued shards); `builds` and `splits` call them and
//! never each other.

use super::encoding::{decode_job_spec, decode_split_state, encode_split_state};
use super::{Result, StoreError};
use herd_core::split::SplitState;
use herd_core::state::RunState;
use sqlx::{Any, Row, Transaction};

pub(super) type Tx<'a> = Transaction<'a, Any>;

/// A job that ended, and what its build's state became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedJob {
    pub job_id: i64,
    pub build_id: i64,
    pub build_state: RunState,
}

/// Takes the build's row lock for the rest of the transaction (a no-op
/// UPDATE: a row lock in PostgreSQL).
pub(super) async fn lock_build(tx: &mut Tx<'_>, build_id: i64) -> Result<()> {
    lock_build_state(tx, build_id).await.map(|_| ())
}

/// [`lock_build`], returning the build's state as the lock found it (the
/// same statement: no extra round trip). None: no such build.
async fn lock_build_state(tx: &mut Tx<'_>, build_id: i64) -> Result<Option<String>> {
    let row = sqlx::query("UPDATE builds SET state = state WHERE id = $1 RETURNING state")
        .bind(build_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| r.try_get("state")).transpose()?)
}

/// The build a job belongs to, with its lock taken.
pub(super) async fn lock_build_of_job(tx: &mut Tx<'_>, job_id: i64) -> Result<Option<i64>> {
    Ok(lock_build_of_job_state(tx, job_id).await?.map(|(id, _)| id))
}

/// [`lock_build_of_job`] with the build's state under the lock.
async fn lock_build_of_job_state(tx: &mut Tx<'_>, job_id: i64) -> Result<Option<(i64, String)>> {
    let row = sqlx::query("SELECT build_id FROM jobs WHERE id = $1")
        .bind(job_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let build_id: i64 = row.try_get("build_id")?;
    Ok(lock_build_state(tx, build_id)
        .await?
        .map(|state| (build_id, state)))
}

/// The build an attempt belongs to, with its lock taken.
pub(super) async fn lock_build_of_attempt(tx: &mut Tx<'_>, attempt: i64) -> Result<Option<i64>> {
    let row = sqlx::query(
        "SELECT j.build_id FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.id = $1",
    )
    .bind(attempt)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let build_id: i64 = row.try_get("build_id")?;
    lock_build(tx, build_id).await?;
    Ok(Some(build_id))
}

/// Ends a job and brings its build's state up to date; a build that ends
/// closes its splits.
pub(super) async fn finish_job(
    tx: &mut Tx<'_>,
    job_id: i64,
    state: RunState,
    error: Option<&str>,
    now: i64,
) -> Result<FinishedJob> {
    let (build_id, before) = lock_build_of_job_state(tx, job_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("job {job_id} has no build")))?;
    sqlx::query("UPDATE jobs SET state = $2, error = $3, finished_at = $4 WHERE id = $1")
        .bind(job_id)
        .bind(state.as_str())
        .bind(error)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    let states = sqlx::query("SELECT state FROM jobs WHERE build_id = $1")
        .bind(build_id)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(|r| {
            let s: String = r.try_get("state")?;
            RunState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("job state `{s}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let build_state = RunState::of_build(&states);
    let project: String = sqlx::query(
        "UPDATE builds SET state = $2, finished_at = CASE WHEN $3 = 1 THEN $4 ELSE finished_at END WHERE id = $1 \
         RETURNING project",
    )
    .bind(build_id)
    .bind(build_state.as_str())
    .bind(i64::from(build_state.is_finished()))
    .bind(now)
    .fetch_one(&mut **tx)
    .await?
    .try_get("project")?;
    if build_state.is_finished() {
        finalize_splits(tx, build_id, now).await?;
        let was_finished = RunState::parse(&before).is_some_and(|s| s.is_finished());
        if !was_finished {
            crate::metrics::global().build_finished(&project, build_state);
        }
    }
    Ok(FinishedJob {
        job_id,
        build_id,
        build_state,
    })
}

/// One split row as the lock-order steps need it.
struct OpenSplit {
    id: i64,
    data: SplitState,
}

fn open_split(r: &sqlx::any::AnyRow) -> Result<OpenSplit> {
    Ok(OpenSplit {
        id: r.try_get("id")?,
        data: decode_split_state(&r.try_get::<String, _>("data")?)?,
    })
}

/// The attempt ended while it may hold a batch of a split: the batch goes
/// back to the queue (or its test is lost for good).
pub(super) async fn release_attempt(
    tx: &mut Tx<'_>,
    attempt: i64,
    reason: &str,
    now: i64,
) -> Result<()> {
    lock_build_of_attempt(tx, attempt).await?;
    let rows = sqlx::query(
        "SELECT s.id, s.data FROM splits s JOIN jobs j ON j.build_id = s.build_id AND j.builder = s.builder \
         JOIN attempts a ON a.job_id = j.id WHERE a.id = $1 AND s.state = 'running'",
    )
    .bind(attempt)
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        let mut split = open_split(&r)?;
        if split.data.release(attempt, reason, now) {
            persist_split(tx, split.id, &split.data, now).await?;
        }
    }
    Ok(())
}

/// The build ended: a split that still has tests without an outcome (its
/// shards gave up or were cancelled) ends with them `not_run`.
async fn finalize_splits(tx: &mut Tx<'_>, build_id: i64, now: i64) -> Result<()> {
    let rows = sqlx::query("SELECT id, data FROM splits WHERE build_id = $1 AND state = 'running'")
        .bind(build_id)
        .fetch_all(&mut **tx)
        .await?;
    for r in rows {
        let mut split = open_split(&r)?;
        split
            .data
            .abandon_rest("no shard was left to run it (the build ended)");
        write_split(tx, split.id, &split.data, now).await?;
    }
    Ok(())
}

/// Writes a split's state and, when nothing is left to hand out, ends its
/// queued shards that owe no verdict as `skipped` (returned).
pub(super) async fn persist_split(
    tx: &mut Tx<'_>,
    split_id: i64,
    state: &SplitState,
    now: i64,
) -> Result<Vec<i64>> {
    let Some((build_id, builder, job)) = write_split(tx, split_id, state, now).await? else {
        return Ok(Vec::new());
    };
    let mut skipped = Vec::new();
    if state.queue.is_empty() {
        let queued = sqlx::query(
            "SELECT id, spec FROM jobs WHERE build_id = $1 AND builder = $2 AND state = 'queued'",
        )
        .bind(build_id)
        .bind(&builder)
        .fetch_all(&mut **tx)
        .await?;
        for r in queued {
            let id: i64 = r.try_get("id")?;
            let spec = decode_job_spec(&r.try_get::<String, _>("spec")?)?;
            let ours = spec.shard.is_some_and(|s| s.job == job);
            // A shard that a failure belongs to must run to report it.
            let owes = state.owes_failure(id);
            if ours && !owes {
                finish_job(
                    tx,
                    id,
                    RunState::Skipped,
                    Some("not needed: the other shards ran every test"),
                    now,
                )
                .await?;
                skipped.push(id);
            }
        }
    }
    Ok(skipped)
}

/// Writes a split's state; when every test has its outcome, the split ends
/// and its passing timings are remembered. None when it had ended already.
async fn write_split(
    tx: &mut Tx<'_>,
    split_id: i64,
    state: &SplitState,
    now: i64,
) -> Result<Option<(i64, String, String)>> {
    let complete = state.is_complete();
    let was_running = sqlx::query(
        "UPDATE splits SET data = $2, state = $3, failed = $4, summary = $5, \
         finished_at = CASE WHEN $3 = 'done' THEN COALESCE(finished_at, $6) ELSE NULL END \
         WHERE id = $1 AND state = 'running' RETURNING build_id, builder, job, step_name",
    )
    .bind(split_id)
    .bind(encode_split_state(state)?)
    .bind(if complete { "done" } else { "running" })
    .bind(i64::from(state.failed()))
    .bind(state.summary_line())
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(meta) = was_running else {
        return Ok(None);
    };
    let build_id: i64 = meta.try_get("build_id")?;
    let builder: String = meta.try_get("builder")?;
    let job: String = meta.try_get("job")?;
    let step_name: String = meta.try_get("step_name")?;
    if complete {
        super::timings::remember(tx, build_id, &builder, &step_name, state, now).await?;
    }
    Ok(Some((build_id, builder, job)))
}
