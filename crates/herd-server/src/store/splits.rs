//! Split steps: the state of each (one row, `herd_core::split::SplitState`
//! as JSON), changed in one transaction per shard request, and the test
//! timings remembered between builds.

use super::builds::{finish_job, JobSpec};
use super::{now_ms, Result, Store, StoreError};
use herd_core::split::{moving_average, Next, SplitState, MAX_SPLIT_TESTS, MAX_TEST_ID_LEN};
use herd_core::state::RunState;
use herd_proto::{SplitReply, SplitRequest};
use sqlx::{Any, Row, Transaction};
use std::collections::HashMap;

/// How long a shard with nothing to do waits before it asks again.
pub const SPLIT_WAIT_MS: u64 = 300;
/// Start-up cost assumed for a runner never seen, when the list took no time.
const DEFAULT_STARTUP_SECS: f64 = 0.5;

pub struct SplitAnswer {
    pub reply: SplitReply,
    /// Shard jobs that ended `skipped` (nothing left for them).
    pub skipped: Vec<i64>,
}

#[derive(Debug, Clone)]
pub struct SplitRow {
    pub id: i64,
    pub build_id: i64,
    pub builder: String,
    pub job: String,
    pub step_idx: i64,
    pub step_name: String,
    pub state: String,
    pub failed: bool,
    pub summary: Option<String>,
    pub data: SplitState,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl SplitRow {
    fn from_row(r: &sqlx::any::AnyRow) -> Result<SplitRow> {
        let data: String = r.try_get("data")?;
        Ok(SplitRow {
            id: r.try_get("id")?,
            build_id: r.try_get("build_id")?,
            builder: r.try_get("builder")?,
            job: r.try_get("job")?,
            step_idx: r.try_get("step_idx")?,
            step_name: r.try_get("step_name")?,
            state: r.try_get("state")?,
            failed: r.try_get::<i64, _>("failed")? != 0,
            summary: r.try_get("summary")?,
            data: serde_json::from_str(&data)
                .map_err(|e| StoreError::Corrupt(format!("split state: {e}")))?,
            created_at: r.try_get("created_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    }
}

fn fail(message: impl Into<String>) -> SplitAnswer {
    SplitAnswer {
        reply: SplitReply::Fail {
            message: message.into(),
        },
        skipped: Vec::new(),
    }
}

/// Checks a list a worker sent: size and id lengths.
fn check_list(list: &[String]) -> std::result::Result<(), String> {
    if list.is_empty() {
        return Err("the list command printed no test ids".into());
    }
    if list.len() > MAX_SPLIT_TESTS {
        return Err(format!(
            "the list has {} test ids, more than the limit of {MAX_SPLIT_TESTS}",
            list.len()
        ));
    }
    if let Some(long) = list.iter().find(|t| t.len() > MAX_TEST_ID_LEN) {
        return Err(format!(
            "a test id is {} bytes long, more than the limit of {MAX_TEST_ID_LEN}: {}…",
            long.len(),
            long.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

impl Store {
    /// Answers a shard of a split step: records the batch it ran, hands
    /// out the next. Only the attempt's own worker, while it is live, gets
    /// an answer other than `fail`.
    pub async fn split_request(&self, worker: &str, req: &SplitRequest) -> Result<SplitAnswer> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "SELECT a.job_id, j.build_id, j.builder, j.spec, b.project FROM attempts a \
             JOIN jobs j ON j.id = a.job_id JOIN builds b ON b.id = j.build_id \
             WHERE a.id = $1 AND a.worker = $2 AND a.state IN ('assigned', 'running')",
        )
        .bind(req.attempt)
        .bind(worker)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(fail(format!(
                "attempt {} is not live on worker {worker}",
                req.attempt
            )));
        };
        let job_id: i64 = row.try_get("job_id")?;
        let build_id: i64 = row.try_get("build_id")?;
        let builder: String = row.try_get("builder")?;
        let project: String = row.try_get("project")?;
        let spec: JobSpec = serde_json::from_str(&row.try_get::<String, _>("spec")?)
            .map_err(|e| StoreError::Corrupt(format!("job spec: {e}")))?;
        let Some(shard) = spec.shard else {
            return Ok(fail("this job has no split step"));
        };
        if shard.step != req.step {
            return Ok(fail(format!(
                "step {} is not the split step of this job (that is step {})",
                req.step, shard.step
            )));
        }
        super::builds::lock_build(&mut tx, build_id).await?;
        let existing = sqlx::query(
            "SELECT * FROM splits WHERE build_id = $1 AND builder = $2 AND job = $3 AND step_idx = $4",
        )
        .bind(build_id)
        .bind(&builder)
        .bind(&shard.job)
        .bind(i64::from(shard.step))
        .fetch_optional(&mut *tx)
        .await?;
        let created = existing.is_none();
        let (split_id, mut state) = match (existing, &req.list) {
            (Some(r), list) => {
                let split = SplitRow::from_row(&r)?;
                if let Some(list) = list {
                    if let Err(msg) = split.data.check_list(list) {
                        return Ok(fail(msg));
                    }
                }
                (split.id, split.data)
            }
            (None, Some(list)) => {
                if let Err(msg) = check_list(list) {
                    return Ok(fail(msg));
                }
                let mut timings = timings_in(&mut tx, &project, &builder, &shard.step_name).await?;
                let startup = timings
                    .remove("")
                    .or(req.list_secs.filter(|s| s.is_finite() && *s > 0.0))
                    .unwrap_or(DEFAULT_STARTUP_SECS);
                let state = SplitState::new(
                    list.clone(),
                    &timings,
                    shard.of as usize,
                    startup,
                    shard.flaky_fails,
                );
                let id: i64 = sqlx::query(
                    "INSERT INTO splits (build_id, builder, job, step_idx, step_name, state, data, created_at) \
                     VALUES ($1, $2, $3, $4, $5, 'running', $6, $7) RETURNING id",
                )
                .bind(build_id)
                .bind(&builder)
                .bind(&shard.job)
                .bind(i64::from(shard.step))
                .bind(&shard.step_name)
                .bind(encode(&state)?)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
                .try_get("id")?;
                (id, state)
            }
            (None, None) => {
                return Ok(fail(
                    "the server has no test list for this split: the first request must carry it",
                ))
            }
        };
        let reported = req
            .done
            .as_ref()
            .is_some_and(|done| state.report(req.attempt, done, now));
        let reply = match state.next(job_id, req.attempt, worker, now) {
            Next::Batch { id, tests } => SplitReply::Batch { id, tests },
            Next::Wait => SplitReply::Wait { ms: SPLIT_WAIT_MS },
            Next::Done { failed, summary } => SplitReply::Done { failed, summary },
        };
        // A shard that only waits changes nothing: no write for it.
        let skipped = if created || reported || !matches!(reply, SplitReply::Wait { .. }) {
            persist(&mut tx, split_id, &state, now).await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        Ok(SplitAnswer { reply, skipped })
    }

    pub async fn splits_of_build(&self, build_id: i64) -> Result<Vec<SplitRow>> {
        let rows = sqlx::query("SELECT * FROM splits WHERE build_id = $1 ORDER BY id")
            .bind(build_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(SplitRow::from_row).collect()
    }

    pub async fn split(&self, id: i64) -> Result<Option<SplitRow>> {
        let row = sqlx::query("SELECT * FROM splits WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(SplitRow::from_row).transpose()
    }
}

async fn timings_in(
    tx: &mut Transaction<'_, Any>,
    project: &str,
    builder: &str,
    step: &str,
) -> Result<HashMap<String, f64>> {
    let rows = sqlx::query(
        "SELECT test, secs FROM test_timings WHERE project = $1 AND builder = $2 AND step = $3",
    )
    .bind(project)
    .bind(builder)
    .bind(step)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("test")?, r.try_get("secs")?)))
        .collect()
}

fn encode(state: &SplitState) -> Result<String> {
    serde_json::to_string(state).map_err(|e| StoreError::Corrupt(format!("split state: {e}")))
}

/// Writes a split's state and, when nothing is left to hand out, ends its
/// queued shards that owe no verdict as `skipped` (returned).
async fn persist(
    tx: &mut Transaction<'_, Any>,
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
            let spec: JobSpec = serde_json::from_str(&r.try_get::<String, _>("spec")?)
                .map_err(|e| StoreError::Corrupt(format!("job spec: {e}")))?;
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
    tx: &mut Transaction<'_, Any>,
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
    .bind(encode(state)?)
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
        remember_timings(tx, build_id, &builder, &step_name, state, now).await?;
    }
    Ok(Some((build_id, builder, job)))
}

async fn remember_timings(
    tx: &mut Transaction<'_, Any>,
    build_id: i64,
    builder: &str,
    step: &str,
    state: &SplitState,
    now: i64,
) -> Result<()> {
    let project: String = sqlx::query("SELECT project FROM builds WHERE id = $1")
        .bind(build_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("project")?;
    let old = timings_in(tx, &project, builder, step).await?;
    let mut fresh = state.passing_timings();
    if let Some(s) = state.measured_startup_secs() {
        fresh.push((String::new(), s));
    }
    for (test, secs) in fresh {
        let avg = moving_average(old.get(&test).copied(), secs);
        sqlx::query(
            "INSERT INTO test_timings (project, builder, step, test, secs, runs, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $6) \
             ON CONFLICT (project, builder, step, test) DO UPDATE SET \
             secs = excluded.secs, runs = test_timings.runs + 1, updated_at = excluded.updated_at",
        )
        .bind(&project)
        .bind(builder)
        .bind(step)
        .bind(&test)
        .bind(avg)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The attempt ended while it may hold a batch of a split: the batch goes
/// back to the queue (or its test is lost for good).
pub(super) async fn release_attempt(
    tx: &mut Transaction<'_, Any>,
    attempt: i64,
    reason: &str,
    now: i64,
) -> Result<()> {
    let build = sqlx::query(
        "SELECT j.build_id FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.id = $1",
    )
    .bind(attempt)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(b) = build {
        super::builds::lock_build(tx, b.try_get("build_id")?).await?;
    }
    let rows = sqlx::query(
        "SELECT s.* FROM splits s JOIN jobs j ON j.build_id = s.build_id AND j.builder = s.builder \
         JOIN attempts a ON a.job_id = j.id WHERE a.id = $1 AND s.state = 'running'",
    )
    .bind(attempt)
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        let mut split = SplitRow::from_row(&r)?;
        if split.data.release(attempt, reason, now) {
            persist(tx, split.id, &split.data, now).await?;
        }
    }
    Ok(())
}

/// The build ended: a split that still has tests without an outcome (its
/// shards gave up or were cancelled) ends with them `not_run`.
pub(super) async fn finalize_build(
    tx: &mut Transaction<'_, Any>,
    build_id: i64,
    now: i64,
) -> Result<()> {
    let rows = sqlx::query("SELECT * FROM splits WHERE build_id = $1 AND state = 'running'")
        .bind(build_id)
        .fetch_all(&mut **tx)
        .await?;
    for r in rows {
        let mut split = SplitRow::from_row(&r)?;
        split
            .data
            .abandon_rest("no shard was left to run it (the build ended)");
        write_split(tx, split.id, &split.data, now).await?;
    }
    Ok(())
}
