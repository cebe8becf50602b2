//! Split steps: the state of each (one row, `herd_core::split::SplitState`
//! in its versioned encoding), changed in one transaction per shard
//! request. Releasing a batch when an attempt ends, and closing splits
//! when a build ends, are lock-order steps (`store::locks`).

use super::encoding::{decode_job_spec, decode_split_state, encode_split_state};
use super::locks::{lock_build, persist_split};
use super::{now_ms, timings, Result, Store};
use herd_core::split::{Next, SplitState, MAX_SPLIT_TESTS, MAX_TEST_ID_LEN};
use herd_proto::{SplitReply, SplitRequest};
use sqlx::Row;

/// How long a shard with nothing to do waits before it asks again.
pub const SPLIT_WAIT_MS: u64 = 300;
/// Start-up cost assumed for a runner never seen, when the list took no time.
const DEFAULT_STARTUP_SECS: f64 = 0.5;

pub struct SplitAnswer {
    pub reply: SplitReply,
    /// The split asked about, once it exists.
    pub split: Option<i64>,
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
            data: decode_split_state(&data)?,
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
        split: None,
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
            "SELECT a.job_id, j.build_id, j.builder, j.name, j.spec, b.project FROM attempts a \
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
        let spec = decode_job_spec(&row.try_get::<String, _>("spec")?)?;
        let job_name: String = row.try_get("name")?;
        let shard = match spec.shard {
            Some(s) if s.step == req.step => s,
            // A `run:` step with `results:` reports as the one shard of
            // a split of its own.
            _ => match spec.steps.get(req.step as usize) {
                Some(herd_proto::StepSpec {
                    action:
                        herd_proto::StepAction::Shell {
                            results: Some(_), ..
                        },
                    name,
                    ..
                }) => herd_core::plan::Shard {
                    job: job_name,
                    index: 1,
                    of: 1,
                    step: req.step,
                    step_name: name.clone(),
                    flaky_fails: false,
                },
                _ => {
                    return Ok(fail(format!(
                        "step {} of this job is neither a split step nor one with `results:`",
                        req.step
                    )))
                }
            },
        };
        lock_build(&mut tx, build_id).await?;
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
                let mut timings =
                    timings::with_priors(&mut tx, &project, &builder, &shard.step_name).await?;
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
                .bind(encode_split_state(&state)?)
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
            Next::Batch { id, tests } => {
                crate::metrics::global().split_batch();
                SplitReply::Batch { id, tests }
            }
            Next::Wait => SplitReply::Wait { ms: SPLIT_WAIT_MS },
            Next::Done { failed, summary } => SplitReply::Done { failed, summary },
        };
        // A shard that only waits changes nothing: no write for it.
        let skipped = if created || reported || !matches!(reply, SplitReply::Wait { .. }) {
            persist_split(&mut tx, split_id, &state, now).await?
        } else {
            Vec::new()
        };
        tx.commit().await?;
        Ok(SplitAnswer {
            reply,
            split: Some(split_id),
            skipped,
        })
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
