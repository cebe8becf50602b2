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

use super::encoding::decode_job_spec;
use super::split_log::{self, LoadedSplit};
use super::{Result, StoreError};
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

/// [`lock_build_of_job`] for a new attempt of the job, in one statement
/// that also marks a queued build running. False: no such job.
pub(super) async fn lock_build_of_job_for_attempt(
    tx: &mut Tx<'_>,
    job_id: i64,
    now: i64,
) -> Result<bool> {
    let row = sqlx::query(
        "UPDATE builds SET state = CASE WHEN state = 'queued' THEN 'running' ELSE state END, \
         started_at = CASE WHEN state = 'queued' THEN COALESCE(started_at, $2) ELSE started_at END \
         WHERE id = (SELECT build_id FROM jobs WHERE id = $1) RETURNING id",
    )
    .bind(job_id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.is_some())
}

/// The build an attempt belongs to, with its lock taken, and its state as
/// the lock found it (one statement).
pub(super) async fn lock_build_of_attempt(
    tx: &mut Tx<'_>,
    attempt: i64,
) -> Result<Option<(i64, String)>> {
    let row = sqlx::query(
        "UPDATE builds SET state = state WHERE id = \
         (SELECT j.build_id FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.id = $1) \
         RETURNING id, state",
    )
    .bind(attempt)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| Ok((r.try_get("id")?, r.try_get("state")?)))
        .transpose()
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
    finish_job_of_locked_build(tx, job_id, (build_id, &before), state, error, now).await
}

/// [`finish_job`] where this transaction holds the build's lock already
/// and read its state (`before`) since its last write to the build.
pub(super) async fn finish_job_of_locked_build(
    tx: &mut Tx<'_>,
    job_id: i64,
    (build_id, before): (i64, &str),
    state: RunState,
    error: Option<&str>,
    now: i64,
) -> Result<FinishedJob> {
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
        let was_finished = RunState::parse(before).is_some_and(|s| s.is_finished());
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

/// The attempt ended while it may hold a batch of a split: the batch goes
/// back to the queue (or its test is lost for good). Only splits where
/// it holds one are read (`split_holders`).
///
/// Returns the build's id and state as its lock found them when no batch
/// was held (then nothing of the build changed since); None otherwise.
pub(super) async fn release_attempt(
    tx: &mut Tx<'_>,
    attempt: i64,
    reason: &str,
    now: i64,
) -> Result<Option<(i64, String)>> {
    let locked = lock_build_of_attempt(tx, attempt).await?;
    let held: Vec<i64> = sqlx::query(
        "SELECT h.split_id FROM split_holders h JOIN splits s ON s.id = h.split_id \
         WHERE h.attempt_id = $1 AND s.state = 'running' ORDER BY h.split_id",
    )
    .bind(attempt)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(|r| r.try_get("split_id"))
    .collect::<std::result::Result<_, _>>()?;
    if held.is_empty() {
        return Ok(locked);
    }
    for id in held {
        let mut split = split_log::load(tx, id, None).await?;
        if split.state.release(attempt, reason, now) {
            persist_split(tx, &mut split, now).await?;
        }
    }
    Ok(None)
}

/// The build ended: a split that still has tests without an outcome (its
/// shards gave up or were cancelled) ends with them `not_run`.
async fn finalize_splits(tx: &mut Tx<'_>, build_id: i64, now: i64) -> Result<()> {
    let ids: Vec<i64> =
        sqlx::query("SELECT id FROM splits WHERE build_id = $1 AND state = 'running' ORDER BY id")
            .bind(build_id)
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
    for id in ids {
        let mut split = split_log::load(tx, id, None).await?;
        split
            .state
            .abandon_rest("no shard was left to run it (the build ended)");
        write_split(tx, &mut split, now).await?;
    }
    Ok(())
}

/// Writes a split's changes and, when nothing is left to hand out, ends
/// its queued shards that owe no verdict as `skipped` (returned).
pub(super) async fn persist_split(
    tx: &mut Tx<'_>,
    split: &mut LoadedSplit,
    now: i64,
) -> Result<Vec<i64>> {
    let Some(saved) = write_split(tx, split, now).await? else {
        return Ok(Vec::new());
    };
    let state = &split.state;
    let mut skipped = Vec::new();
    if state.queue.is_empty() {
        let queued = sqlx::query(
            "SELECT id, spec FROM jobs WHERE build_id = $1 AND builder = $2 AND state = 'queued'",
        )
        .bind(saved.build_id)
        .bind(&saved.builder)
        .fetch_all(&mut **tx)
        .await?;
        for r in queued {
            let id: i64 = r.try_get("id")?;
            let spec = decode_job_spec(&r.try_get::<String, _>("spec")?)?;
            let ours = spec.shard.is_some_and(|s| s.job == saved.job);
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

/// Writes a split's changes; when every test has its outcome, the split
/// ends and its passing timings are remembered. None when it had ended
/// already.
async fn write_split(
    tx: &mut Tx<'_>,
    split: &mut LoadedSplit,
    now: i64,
) -> Result<Option<split_log::Saved>> {
    let Some(saved) = split_log::save(tx, split, now).await? else {
        return Ok(None);
    };
    if saved.complete {
        let _t = crate::store::split_log::Timed::new("timings remembered");
        super::timings::remember(
            tx,
            saved.build_id,
            &saved.builder,
            &saved.step_name,
            &split.state,
            now,
        )
        .await?;
    }
    Ok(Some(saved))
}
