//! Split steps: the state of each (`herd_core::split::SplitState`, kept as
//! a snapshot and its events, `store::split_log`), changed in one
//! transaction per shard request. Releasing a batch when an attempt ends,
//! and closing splits when a build ends, are lock-order steps
//! (`store::locks`).

use super::encoding::{decode_job_spec, SPLIT_STATE_MARKER};
use super::locks::{lock_build, persist_split};
use super::split_log;
use super::{now_ms, timings, Result, Store, StoreError};
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
    /// The split changed so that a waiting shard may get something: tests
    /// are queued, or every test has its outcome. (A change that leaves
    /// the queue empty with batches still running wakes nobody.)
    pub wakes: bool,
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

/// What a build's page shows of a split: no state, its counts.
#[derive(Debug, Clone)]
pub struct SplitHead {
    pub id: i64,
    pub builder: String,
    pub job: String,
    pub step_name: String,
    pub state: String,
    pub failed: bool,
    pub summary: Option<String>,
    pub counts: herd_core::split::Summary,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

impl SplitRow {
    pub fn head(&self) -> SplitHead {
        SplitHead {
            id: self.id,
            builder: self.builder.clone(),
            job: self.job.clone(),
            step_name: self.step_name.clone(),
            state: self.state.clone(),
            failed: self.failed,
            summary: self.summary.clone(),
            counts: self.data.summary(),
            created_at: self.created_at,
            finished_at: self.finished_at,
        }
    }

    fn from_row(r: &sqlx::any::AnyRow, data: SplitState) -> Result<SplitRow> {
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
            data,
            created_at: r.try_get("created_at")?,
            finished_at: r.try_get("finished_at")?,
        })
    }
}

fn send_list() -> SplitAnswer {
    SplitAnswer {
        reply: SplitReply::SendList,
        split: None,
        skipped: Vec::new(),
        wakes: false,
    }
}

fn fail(message: impl Into<String>) -> SplitAnswer {
    SplitAnswer {
        reply: SplitReply::Fail {
            message: message.into(),
        },
        split: None,
        skipped: Vec::new(),
        wakes: false,
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
        let existing: Option<i64> = sqlx::query(
            "SELECT id FROM splits WHERE build_id = $1 AND builder = $2 AND job = $3 AND step_idx = $4",
        )
        .bind(build_id)
        .bind(&builder)
        .bind(&shard.job)
        .bind(i64::from(shard.step))
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("id"))
        .transpose()?;
        let created = existing.is_none();
        let cache = &*self.split_cache;
        let key: split_log::SplitKey = (build_id, builder.clone(), shard.job.clone(), shard.step);
        let mut split = match (existing, &req.list) {
            (Some(id), list) => {
                let split = split_log::load(&mut tx, id, Some(cache)).await?;
                let same = req
                    .list_digest
                    .as_deref()
                    .is_some_and(|d| split.state.list_matches(d));
                match list {
                    Some(list) if !same => {
                        if let Err(msg) = split.state.check_list(list) {
                            return Ok(self.unchanged(split, fail(msg)));
                        }
                    }
                    // A later shard's list is not here: the server has one
                    // with another digest (to show the difference, it needs it).
                    None if req.list_digest.is_some() && !same => {
                        return Ok(self.unchanged(split, send_list()));
                    }
                    _ => {}
                }
                split
            }
            (None, Some(list)) => {
                if let Err(msg) = check_list(list) {
                    return Ok(fail(msg));
                }
                let _t = split_log::Timed::new("split made");
                let mut timings =
                    timings::with_priors(&mut tx, &project, &builder, &shard.step_name, list)
                        .await?;
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
                .bind(SPLIT_STATE_MARKER)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
                .try_get("id")?;
                split_log::write_snapshot(&mut tx, id, 0, &state).await?;
                cache.uploaded(&key);
                split_log::LoadedSplit::new(id, state)
            }
            // The split is not made yet: one shard sends the list, the
            // others wait for it (every shard has the list, and a large
            // one costs the server its size for each copy in flight).
            (None, None) if req.list_digest.is_some() => {
                return Ok(if cache.claim_upload(&key, req.attempt) {
                    send_list()
                } else {
                    SplitAnswer {
                        reply: SplitReply::Wait { ms: SPLIT_WAIT_MS },
                        split: None,
                        skipped: Vec::new(),
                        wakes: false,
                    }
                });
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
            .is_some_and(|done| split.state.report(req.attempt, done, now));
        let reply = match split.state.next(job_id, req.attempt, worker, now) {
            Next::Batch { id, tests } => {
                crate::metrics::global().split_batch();
                SplitReply::Batch { id, tests }
            }
            Next::Wait => SplitReply::Wait { ms: SPLIT_WAIT_MS },
            Next::Done { failed, summary } => SplitReply::Done { failed, summary },
        };
        let split_id = split.id;
        // A shard that waits, or asks again for the batch it holds,
        // changes nothing: no write for it.
        // The cache gets the state before the transaction ends: the next
        // request for this split waits on the build's lock until then, and
        // must find it. (A write that does not commit leaves the cache with
        // a stamp the log lacks, which `load` does not believe.)
        if !created && !reported && !split.state.has_changes() {
            split_log::remember(cache, split);
            drop(tx);
            return Ok(SplitAnswer {
                reply,
                split: Some(split_id),
                skipped: Vec::new(),
                wakes: false,
            });
        }
        let wakes = !split.state.queue.is_empty() || split.state.is_complete();
        let _ = reported;
        let skipped = persist_split(&mut tx, &mut split, now).await?;
        split_log::remember(cache, split);
        if let Err(e) = tx.commit().await {
            cache.forget(split_id);
            return Err(e.into());
        }
        Ok(SplitAnswer {
            reply,
            split: Some(split_id),
            skipped,
            wakes,
        })
    }

    /// An answer that changed nothing: the split's state goes back to the cache.
    fn unchanged(&self, split: split_log::LoadedSplit, mut answer: SplitAnswer) -> SplitAnswer {
        answer.split = Some(split.id);
        split_log::remember(&self.split_cache, split);
        answer
    }

    pub async fn splits_of_build(&self, build_id: i64) -> Result<Vec<SplitRow>> {
        let ids: Vec<i64> = sqlx::query("SELECT id FROM splits WHERE build_id = $1 ORDER BY id")
            .bind(build_id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<std::result::Result<_, _>>()?;
        let mut splits = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(s) = self.split(id).await? {
                splits.push(s);
            }
        }
        Ok(splits)
    }

    /// The build's splits as its page shows them: their counts, not their
    /// states (a split from before counts were kept is read whole).
    pub async fn split_heads_of_build(&self, build_id: i64) -> Result<Vec<SplitHead>> {
        let rows = sqlx::query(
            "SELECT id, builder, job, step_name, state, failed, summary, counts, created_at, finished_at \
             FROM splits WHERE build_id = $1 ORDER BY id",
        )
        .bind(build_id)
        .fetch_all(&self.read)
        .await?;
        let mut heads = Vec::with_capacity(rows.len());
        for r in rows {
            let counts = r
                .try_get::<Option<String>, _>("counts")?
                .and_then(|c| serde_json::from_str(&c).ok());
            let counts = match counts {
                Some(c) => c,
                None => match self.split(r.try_get("id")?).await? {
                    Some(s) => s.data.summary(),
                    None => continue,
                },
            };
            heads.push(SplitHead {
                id: r.try_get("id")?,
                builder: r.try_get("builder")?,
                job: r.try_get("job")?,
                step_name: r.try_get("step_name")?,
                state: r.try_get("state")?,
                failed: r.try_get::<i64, _>("failed")? != 0,
                summary: r.try_get("summary")?,
                counts,
                created_at: r.try_get("created_at")?,
                finished_at: r.try_get("finished_at")?,
            });
        }
        Ok(heads)
    }

    /// One split as it stands: its snapshot and the events after it (read
    /// again when a snapshot was written in between).
    pub async fn split(&self, id: i64) -> Result<Option<SplitRow>> {
        for _ in 0..8 {
            let Some(row) = sqlx::query("SELECT * FROM splits WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.read)
                .await?
            else {
                return Ok(None);
            };
            let read = split_log::read(&self.read, id, row.try_get("seq")?).await?;
            if let Some(state) = read {
                return SplitRow::from_row(&row, state).map(Some);
            }
        }
        Err(StoreError::Corrupt(format!(
            "split {id}: its events kept moving under eight reads; try again"
        )))
    }
}
