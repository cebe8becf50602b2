//! Builds, jobs, attempts and steps: creating them and applying what workers
//! report, each change in one transaction.

use super::encoding::{decode_job_spec, encode_job_spec};
pub use super::locks::FinishedJob;
use super::locks::{
    finish_job, finish_job_of_locked_build, lock_build, lock_build_of_job,
    lock_build_of_job_for_attempt, release_attempt, Tx,
};
use super::{now_ms, AttemptRow, BuildRow, JobRow, Result, StepRow, Store, StoreError};
use herd_core::plan::JobSpec;
use herd_core::state::{AttemptState, RunState};
use herd_proto::StepStatus;
use sqlx::Row;

/// Step rows one INSERT writes at most (two parameters each, well under
/// SQLite's oldest limit of 999).
const STEP_ROWS_PER_INSERT: usize = 400;

pub struct NewBuild {
    pub project: String,
    pub ref_name: Option<String>,
    pub revision: Option<String>,
    pub priority: i64,
    pub reason: String,
    /// Set when the build cannot run at all (e.g. a broken herd.yml): the
    /// build is stored as `error` with no jobs.
    pub error: Option<String>,
    pub jobs: Vec<NewJob>,
    /// The commit's author and subject, when known.
    pub author: Option<String>,
    pub message: Option<String>,
    pub branch: Option<String>,
    pub kind: BuildKind,
    pub sender: Option<String>,
    /// Statuses are to be sent for it (the project has reporters).
    pub report: bool,
    /// A try build's patch.
    pub patch: Option<String>,
    /// Its concurrency group (a change's build whose herd.yml has one).
    pub concurrency_group: Option<String>,
    /// Its parameters' values (herd.yml `params:`).
    pub params: std::collections::BTreeMap<String, String>,
    /// The pull request it builds.
    pub pull_request: Option<i64>,
    /// Where its statuses go, when not to `revision`.
    pub status_revision: Option<String>,
}

/// Where a build came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildKind {
    Manual,
    Change,
    Try,
    /// A new tag.
    Tag,
    /// A pull or merge request's head.
    PullRequest,
    /// Started by a `schedule:`.
    Schedule,
}

impl BuildKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildKind::Manual => "manual",
            BuildKind::Change => "change",
            BuildKind::Try => "try",
            BuildKind::Tag => "tag",
            BuildKind::PullRequest => "pr",
            BuildKind::Schedule => "schedule",
        }
    }

    pub fn parse(text: &str) -> Option<BuildKind> {
        match text {
            "manual" => Some(BuildKind::Manual),
            "change" => Some(BuildKind::Change),
            "try" => Some(BuildKind::Try),
            "tag" => Some(BuildKind::Tag),
            "pr" => Some(BuildKind::PullRequest),
            "schedule" => Some(BuildKind::Schedule),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct NewJob {
    pub builder: String,
    pub name: String,
    pub spec: JobSpec,
}

/// A job waiting for a worker, with what the scheduler and the assignment need.
#[derive(Debug, Clone)]
pub struct QueuedJobInfo {
    pub job_id: i64,
    pub build_id: i64,
    pub project: String,
    pub builder: String,
    pub job: String,
    pub revision: Option<String>,
    pub priority: i64,
    /// When it last became queued (ms): created, or its last attempt lost.
    pub queued_at: i64,
    pub spec: JobSpec,
}

/// An event of one attempt, ready to store (log data already compressed).
#[derive(Debug, Clone)]
pub enum StoredEvent {
    StepStarted {
        step: u32,
    },
    StepFinished {
        step: u32,
        status: StepStatus,
        exit_code: Option<i32>,
        message: Option<String>,
    },
    Log {
        step: u32,
        offset: u64,
        len: u64,
        compressed: Vec<u8>,
    },
    Finished {
        result: RunState,
        error: Option<String>,
    },
}

pub struct AttemptEvents {
    pub attempt: i64,
    pub worker: String,
    /// Sequence number of the last event in `events`.
    pub last_seq: u64,
    pub events: Vec<StoredEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stored; `finished` is set when the attempt's job ended.
    Stored { finished: Option<FinishedJob> },
    /// The attempt is not this worker's to report for (moved, cancelled,
    /// unknown): nothing was stored.
    Fenced,
    /// The attempt is this worker's, but the store already has these
    /// events (another connection of the same worker stored them first):
    /// nothing was stored; the connection must resynchronise.
    Behind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostOutcome {
    /// The job is queued again for a new attempt.
    Requeued(i64),
    /// The job ran out of attempts and ended `error`.
    GaveUp(FinishedJob),
    /// The attempt had already ended; nothing changed.
    AlreadyEnded,
}

pub struct BuildDetail {
    pub build: BuildRow,
    pub jobs: Vec<JobRow>,
    pub attempts: Vec<AttemptRow>,
    pub steps: Vec<StepRow>,
}

impl Store {
    pub async fn create_build(&self, b: &NewBuild) -> Result<(i64, Vec<i64>)> {
        let started = std::time::Instant::now();
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let state = if b.error.is_some() {
            RunState::Error
        } else {
            RunState::Queued
        };
        let row = sqlx::query(
            "INSERT INTO builds (project, ref_name, revision, state, priority, reason, error, created_at, finished_at, author, message, \
             branch, kind, sender, report_pending, concurrency_group, params, pull_request, status_revision) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19) RETURNING id",
        )
        .bind(&b.project)
        .bind(&b.ref_name)
        .bind(&b.revision)
        .bind(state.as_str())
        .bind(b.priority)
        .bind(&b.reason)
        .bind(&b.error)
        .bind(now)
        .bind(b.error.as_ref().map(|_| now))
        .bind(&b.author)
        .bind(&b.message)
        .bind(&b.branch)
        .bind(b.kind.as_str())
        .bind(&b.sender)
        .bind(i64::from(b.report))
        .bind(&b.concurrency_group)
        .bind(if b.params.is_empty() {
            None
        } else {
            serde_json::to_string(&b.params).ok()
        })
        .bind(b.pull_request)
        .bind(&b.status_revision)
        .fetch_one(&mut *tx)
        .await?;
        let build_id: i64 = row.try_get("id")?;
        if let Some(patch) = &b.patch {
            sqlx::query("INSERT INTO build_patches (build_id, patch) VALUES ($1, $2)")
                .bind(build_id)
                .bind(patch)
                .execute(&mut *tx)
                .await?;
        }
        let mut job_ids = Vec::with_capacity(b.jobs.len());
        for job in &b.jobs {
            let spec = encode_job_spec(&job.spec)?;
            let row = sqlx::query(
                "INSERT INTO jobs (build_id, builder, name, state, spec, created_at) \
                 VALUES ($1, $2, $3, 'queued', $4, $5) RETURNING id",
            )
            .bind(build_id)
            .bind(&job.builder)
            .bind(&job.name)
            .bind(spec)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            job_ids.push(row.try_get("id")?);
        }
        tx.commit().await?;
        let m = crate::metrics::global();
        m.build_started(&b.project);
        if state.is_finished() {
            m.build_finished(&b.project, state);
        }
        m.store_write("create_build", started.elapsed());
        Ok((build_id, job_ids))
    }

    /// The patch of a try build.
    /// The builds of `group` older than `newer` that are still queued or
    /// running (a newer change supersedes them).
    pub async fn superseded_by(&self, project: &str, group: &str, newer: i64) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT id FROM builds WHERE project = $1 AND concurrency_group = $2 AND id < $3 \
             AND state IN ('queued', 'running') ORDER BY id",
        )
        .bind(project)
        .bind(group)
        .bind(newer)
        .fetch_all(&self.write)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<i64, _>("id").map_err(Into::into))
            .collect()
    }

    /// The states of a build's jobs, by `builder/job`.
    pub async fn job_states(
        &self,
        build_id: i64,
    ) -> Result<std::collections::HashMap<String, RunState>> {
        let rows = sqlx::query("SELECT builder, name, state FROM jobs WHERE build_id = $1")
            .bind(build_id)
            .fetch_all(&self.write)
            .await?;
        rows.iter()
            .map(|r| {
                let builder: String = r.try_get("builder")?;
                let name: String = r.try_get("name")?;
                let s: String = r.try_get("state")?;
                let st = RunState::parse(&s)
                    .ok_or_else(|| StoreError::Corrupt(format!("job state `{s}`")))?;
                Ok((format!("{builder}/{name}"), st))
            })
            .collect()
    }

    /// Ends a queued job as `skipped`, with why (a job it needs failed):
    /// None when it is no longer queued (claimed or cancelled meanwhile).
    pub async fn skip_job(&self, job_id: i64, reason: &str) -> Result<Option<FinishedJob>> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let Some(_) = lock_build_of_job(&mut tx, job_id).await? else {
            return Ok(None);
        };
        let queued = sqlx::query("SELECT 1 AS one FROM jobs WHERE id = $1 AND state = 'queued'")
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await?;
        if queued.is_none() {
            return Ok(None);
        }
        let f = finish_job(&mut tx, job_id, RunState::Skipped, Some(reason), now).await?;
        tx.commit().await?;
        Ok(Some(f))
    }

    /// Says on a build that is still queued or running why it is about to
    /// end (kept when it says something already; a build that ended
    /// meanwhile keeps its own story).
    pub async fn note_build_error(&self, build_id: i64, text: &str) -> Result<()> {
        sqlx::query(
            "UPDATE builds SET error = COALESCE(error, $2) \
             WHERE id = $1 AND state IN ('queued', 'running')",
        )
        .bind(build_id)
        .bind(text)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    pub async fn build_patch(&self, build_id: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT patch FROM build_patches WHERE build_id = $1")
            .bind(build_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| r.try_get("patch"))
            .transpose()
            .map_err(Into::into)
    }

    /// Jobs waiting for a worker, oldest first; only `job_id` when given.
    pub async fn queued_jobs(&self, job_id: Option<i64>) -> Result<Vec<QueuedJobInfo>> {
        self.queued_where(job_id, None).await
    }

    /// The queued jobs of one build.
    pub async fn queued_jobs_of_build(&self, build_id: i64) -> Result<Vec<QueuedJobInfo>> {
        self.queued_where(None, Some(build_id)).await
    }

    async fn queued_where(
        &self,
        job_id: Option<i64>,
        build_id: Option<i64>,
    ) -> Result<Vec<QueuedJobInfo>> {
        let rows = sqlx::query(
            "SELECT j.id, j.build_id, j.builder, j.name, j.spec, b.project, b.revision, b.priority, \
             COALESCE((SELECT MAX(a.finished_at) FROM attempts a WHERE a.job_id = j.id), j.created_at) AS queued_at \
             FROM jobs j JOIN builds b ON b.id = j.build_id \
             WHERE j.state = 'queued' AND ($1 IS NULL OR j.id = $1) AND ($2 IS NULL OR j.build_id = $2) \
             ORDER BY j.id",
        )
        .bind(job_id)
        .bind(build_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let spec: String = r.try_get("spec")?;
                Ok(QueuedJobInfo {
                    job_id: r.try_get("id")?,
                    build_id: r.try_get("build_id")?,
                    project: r.try_get("project")?,
                    builder: r.try_get("builder")?,
                    job: r.try_get("name")?,
                    revision: r.try_get("revision")?,
                    priority: r.try_get("priority")?,
                    queued_at: r.try_get("queued_at")?,
                    spec: decode_job_spec(&spec)?,
                })
            })
            .collect()
    }

    /// Starts a new attempt of a queued job on `worker`. None when the job is
    /// no longer queued (cancelled meanwhile, or claimed by another server).
    pub async fn create_attempt(
        &self,
        job_id: i64,
        worker: &str,
        step_names: &[String],
    ) -> Result<Option<AttemptRow>> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        // Build before job, as everywhere: no two transactions wait on each
        // other. The lock also marks a queued build running (undone with
        // the rest when the job turns out not to be queued).
        if !lock_build_of_job_for_attempt(&mut tx, job_id, now).await? {
            return Ok(None);
        }
        let claimed = sqlx::query(
            "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, $2) \
             WHERE id = $1 AND state = 'queued'",
        )
        .bind(job_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(None);
        }
        let row = sqlx::query(
            "INSERT INTO attempts (job_id, number, worker, state, last_seq, created_at) \
             SELECT $1, COUNT(*) + 1, $2, 'assigned', 0, $3 FROM attempts WHERE job_id = $1 \
             RETURNING id, number",
        )
        .bind(job_id)
        .bind(worker)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let attempt_id: i64 = row.try_get("id")?;
        let number: i64 = row.try_get("number")?;
        // All its steps in one statement per chunk (a round trip each).
        for (chunk_no, chunk) in step_names.chunks(STEP_ROWS_PER_INSERT).enumerate() {
            let base = chunk_no * STEP_ROWS_PER_INSERT;
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("($1, ${}, ${}, 'pending', 0)", 2 * i + 2, 2 * i + 3))
                .collect();
            let sql = format!(
                "INSERT INTO steps (attempt_id, idx, name, state, log_size) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(attempt_id);
            for (i, name) in chunk.iter().enumerate() {
                q = q.bind((base + i) as i64).bind(name);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(AttemptRow {
            id: attempt_id,
            job_id,
            number,
            worker: worker.to_string(),
            state: AttemptState::Assigned,
            reason: None,
            last_seq: 0,
            created_at: now,
            finished_at: None,
        }))
    }

    /// Stores events of several attempts in one transaction.
    pub async fn apply_events(&self, batch: &[AttemptEvents]) -> Result<Vec<Applied>> {
        let started = std::time::Instant::now();
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let mut out = Vec::with_capacity(batch.len());
        for a in batch {
            // Fencing: only the attempt's own worker, while it is live, may report.
            let fenced = sqlx::query(
                "UPDATE attempts SET last_seq = $1, \
                 state = CASE WHEN state = 'assigned' THEN 'running' ELSE state END \
                 WHERE id = $2 AND worker = $3 AND state IN ('assigned', 'running') AND last_seq < $1",
            )
            .bind(a.last_seq as i64)
            .bind(a.attempt)
            .bind(&a.worker)
            .execute(&mut *tx)
            .await?;
            if fenced.rows_affected() == 0 {
                let live = sqlx::query(
                    "SELECT 1 AS one FROM attempts WHERE id = $1 AND worker = $2 AND state IN ('assigned', 'running')",
                )
                .bind(a.attempt)
                .bind(&a.worker)
                .fetch_optional(&mut *tx)
                .await?;
                out.push(if live.is_some() {
                    Applied::Behind
                } else {
                    Applied::Fenced
                });
                continue;
            }
            let mut finished = None;
            for ev in &a.events {
                // After `finished` an attempt takes nothing more.
                if finished.is_some() {
                    break;
                }
                if let Some(f) = apply_one(&mut tx, a.attempt, ev, now).await? {
                    finished = Some(f);
                }
            }
            out.push(Applied::Stored { finished });
        }
        tx.commit().await?;
        let m = crate::metrics::global();
        m.store_write("events", started.elapsed());
        let stored: usize = batch
            .iter()
            .zip(&out)
            .filter(|(_, o)| matches!(o, Applied::Stored { .. }))
            .flat_map(|(a, _)| &a.events)
            .map(|e| match e {
                StoredEvent::Log { compressed, .. } => compressed.len(),
                _ => 0,
            })
            .sum();
        m.log_stored(stored as u64);
        Ok(out)
    }

    /// Ends a live attempt as lost, and queues its job again while it has
    /// attempts left (`max_attempts` in all).
    pub async fn attempt_lost(
        &self,
        attempt: i64,
        reason: &str,
        max_attempts: i64,
    ) -> Result<LostOutcome> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let res = sqlx::query(
            "UPDATE attempts SET state = 'lost', reason = $2, finished_at = $3 \
             WHERE id = $1 AND state IN ('assigned', 'running')",
        )
        .bind(attempt)
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Ok(LostOutcome::AlreadyEnded);
        }
        release_attempt(&mut tx, attempt, reason, now).await?;
        let row = sqlx::query("SELECT job_id, number FROM attempts WHERE id = $1")
            .bind(attempt)
            .fetch_one(&mut *tx)
            .await?;
        let job_id: i64 = row.try_get("job_id")?;
        let number: i64 = row.try_get("number")?;
        let outcome = if number < max_attempts {
            sqlx::query("UPDATE jobs SET state = 'queued' WHERE id = $1 AND state = 'running'")
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            LostOutcome::Requeued(job_id)
        } else {
            let msg = format!("gave up after {number} attempts: {reason}");
            LostOutcome::GaveUp(
                finish_job(&mut tx, job_id, RunState::Error, Some(&msg), now).await?,
            )
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Cancels a build: queued jobs end at once; returns the live attempts,
    /// which the caller tells their workers to stop. The build's lock is
    /// taken before the queued jobs are read: a job claimed meanwhile (its
    /// attempt created under the same lock) is then live, not queued, and
    /// is never marked cancelled while its attempt runs.
    pub async fn cancel_build(
        &self,
        build_id: i64,
    ) -> Result<(Option<RunState>, Vec<(i64, String)>)> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        lock_build(&mut tx, build_id).await?;
        let queued = sqlx::query("SELECT id FROM jobs WHERE build_id = $1 AND state = 'queued'")
            .bind(build_id)
            .fetch_all(&mut *tx)
            .await?;
        let mut state = None;
        for r in queued {
            let job_id: i64 = r.try_get("id")?;
            state = Some(
                finish_job(&mut tx, job_id, RunState::Cancelled, Some("cancelled"), now)
                    .await?
                    .build_state,
            );
        }
        let live = sqlx::query(
            "SELECT a.id, a.worker FROM attempts a JOIN jobs j ON j.id = a.job_id \
             WHERE j.build_id = $1 AND a.state IN ('assigned', 'running')",
        )
        .bind(build_id)
        .fetch_all(&mut *tx)
        .await?;
        let live = live
            .iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("worker")?)))
            .collect::<Result<Vec<_>>>()?;
        tx.commit().await?;
        Ok((state, live))
    }

    /// Ends a live attempt that its worker can no longer report on (it was
    /// cancelled while the worker was away), together with its job.
    pub async fn end_attempt(
        &self,
        attempt: i64,
        state: RunState,
        reason: &str,
    ) -> Result<Option<FinishedJob>> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let res = sqlx::query(
            "UPDATE attempts SET state = $2, reason = $3, finished_at = $4 \
             WHERE id = $1 AND state IN ('assigned', 'running')",
        )
        .bind(attempt)
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Ok(None);
        }
        release_attempt(&mut tx, attempt, reason, now).await?;
        let job_id: i64 = sqlx::query("SELECT job_id FROM attempts WHERE id = $1")
            .bind(attempt)
            .fetch_one(&mut *tx)
            .await?
            .try_get("job_id")?;
        let f = finish_job(&mut tx, job_id, state, Some(reason), now).await?;
        tx.commit().await?;
        Ok(Some(f))
    }

    /// Live attempts (of one worker, when given), with their workers.
    pub async fn live_attempts(&self, worker: Option<&str>) -> Result<Vec<AttemptRow>> {
        let rows = sqlx::query(
            "SELECT * FROM attempts WHERE state IN ('assigned', 'running') \
             AND ($1 IS NULL OR worker = $1) ORDER BY id",
        )
        .bind(worker)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(AttemptRow::from_row).collect()
    }

    pub async fn attempt(&self, id: i64) -> Result<Option<AttemptRow>> {
        let row = sqlx::query("SELECT * FROM attempts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(AttemptRow::from_row).transpose()
    }

    pub async fn build(&self, id: i64) -> Result<Option<BuildRow>> {
        let row = sqlx::query("SELECT * FROM builds WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(BuildRow::from_row).transpose()
    }

    pub async fn builds(
        &self,
        project: Option<&str>,
        state: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<BuildRow>> {
        let rows = sqlx::query(
            "SELECT * FROM builds WHERE ($1 IS NULL OR project = $1) AND ($2 IS NULL OR id < $2) \
             AND ($4 IS NULL OR state = $4) ORDER BY id DESC LIMIT $3",
        )
        .bind(project)
        .bind(before)
        .bind(limit)
        .bind(state)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(BuildRow::from_row).collect()
    }

    pub async fn build_detail(&self, id: i64) -> Result<Option<BuildDetail>> {
        let Some(build) = self.build(id).await? else {
            return Ok(None);
        };
        let jobs = sqlx::query("SELECT * FROM jobs WHERE build_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(JobRow::from_row)
            .collect::<Result<Vec<_>>>()?;
        let attempts = sqlx::query(
            "SELECT a.* FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE j.build_id = $1 ORDER BY a.id",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(AttemptRow::from_row)
        .collect::<Result<Vec<_>>>()?;
        let steps = sqlx::query(
            "SELECT s.* FROM steps s JOIN attempts a ON a.id = s.attempt_id JOIN jobs j ON j.id = a.job_id \
             WHERE j.build_id = $1 ORDER BY s.attempt_id, s.idx",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(StepRow::from_row)
        .collect::<Result<Vec<_>>>()?;
        Ok(Some(BuildDetail {
            build,
            jobs,
            attempts,
            steps,
        }))
    }

    /// What the grid needs of the jobs of builds `lo..=hi`, without their
    /// specs: (id, build, builder, name, state), in id order.
    pub async fn grid_jobs(
        &self,
        lo: i64,
        hi: i64,
    ) -> Result<Vec<(i64, i64, String, String, String)>> {
        // One row per build (the `grid_cells` view): decoding 20,000 rows
        // one by one costs more than the whole page may.
        let rows = sqlx::query(
            "SELECT build_id, cells FROM grid_cells WHERE build_id >= $1 AND build_id <= $2",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let build: i64 = r.try_get("build_id")?;
            let cells: Option<String> = r.try_get("cells")?;
            for cell in cells
                .as_deref()
                .unwrap_or("")
                .split(';')
                .filter(|c| !c.is_empty())
            {
                let mut parts = cell.splitn(4, ':');
                let (Some(id), Some(builder), Some(name), Some(state)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(StoreError::Corrupt(format!("grid cell `{cell}`")));
                };
                let id: i64 = id
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("grid cell `{cell}`")))?;
                out.push((
                    id,
                    build,
                    builder.to_string(),
                    name.to_string(),
                    state.to_string(),
                ));
            }
        }
        out.sort_unstable_by_key(|j| j.0);
        Ok(out)
    }

    /// The spec of the newest job of each builder among builds `lo..=hi`.
    pub async fn latest_specs(&self, lo: i64, hi: i64) -> Result<Vec<(String, JobSpec)>> {
        let rows = sqlx::query(
            "SELECT builder, spec FROM jobs WHERE id IN \
             (SELECT MAX(id) FROM jobs WHERE build_id >= $1 AND build_id <= $2 GROUP BY builder)",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let spec: String = r.try_get("spec")?;
                Ok((r.try_get("builder")?, decode_job_spec(&spec)?))
            })
            .collect()
    }

    /// The jobs of several builds, in id order.
    pub async fn jobs_of_builds(&self, ids: &[i64]) -> Result<Vec<JobRow>> {
        let (Some(lo), Some(hi)) = (ids.iter().min(), ids.iter().max()) else {
            return Ok(Vec::new());
        };
        let rows =
            sqlx::query("SELECT * FROM jobs WHERE build_id >= $1 AND build_id <= $2 ORDER BY id")
                .bind(lo)
                .bind(hi)
                .fetch_all(&self.read)
                .await?;
        let wanted: std::collections::HashSet<i64> = ids.iter().copied().collect();
        rows.iter()
            .map(JobRow::from_row)
            .filter(|j| j.as_ref().map_or(true, |j| wanted.contains(&j.build_id)))
            .collect()
    }

    /// A worker's latest attempts: (build, builder/job, attempt number,
    /// state, when it started), newest first.
    pub async fn recent_attempts(
        &self,
        worker: &str,
        limit: i64,
    ) -> Result<Vec<(i64, String, i64, String, i64)>> {
        let rows = sqlx::query(
            "SELECT j.build_id, j.builder, j.name, a.number, a.state, a.created_at FROM attempts a \
             JOIN jobs j ON j.id = a.job_id WHERE a.worker = $1 ORDER BY a.id DESC LIMIT $2",
        )
        .bind(worker)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let builder: String = r.try_get("builder")?;
                let name: String = r.try_get("name")?;
                Ok((
                    r.try_get("build_id")?,
                    format!("{builder}/{name}"),
                    r.try_get("number")?,
                    r.try_get("state")?,
                    r.try_get("created_at")?,
                ))
            })
            .collect()
    }

    /// The build a job belongs to.
    pub async fn job_build(&self, job_id: i64) -> Result<i64> {
        Ok(sqlx::query("SELECT build_id FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&self.read)
            .await?
            .try_get("build_id")?)
    }

    /// Running jobs per `project/builder` (for `max_concurrent`).
    pub async fn running_per_builder(&self) -> Result<std::collections::HashMap<String, u32>> {
        let rows = sqlx::query(
            "SELECT b.project, j.builder, COUNT(*) AS n FROM jobs j JOIN builds b ON b.id = j.build_id \
             WHERE j.state = 'running' GROUP BY b.project, j.builder",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                let project: String = r.try_get("project")?;
                let builder: String = r.try_get("builder")?;
                let n: i64 = r.try_get("n")?;
                Ok((format!("{project}/{builder}"), n as u32))
            })
            .collect()
    }

    /// Bytes of output stored so far, per step of an attempt.
    pub async fn step_sizes(&self, attempt: i64) -> Result<std::collections::HashMap<u32, u64>> {
        let rows = sqlx::query("SELECT idx, log_size FROM steps WHERE attempt_id = $1")
            .bind(attempt)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                let idx: i64 = r.try_get("idx")?;
                let size: i64 = r.try_get("log_size")?;
                Ok((idx as u32, size as u64))
            })
            .collect()
    }

    pub async fn step(&self, attempt: i64, idx: i64) -> Result<Option<StepRow>> {
        let row = sqlx::query("SELECT * FROM steps WHERE attempt_id = $1 AND idx = $2")
            .bind(attempt)
            .bind(idx)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(StepRow::from_row).transpose()
    }
}

async fn apply_one(
    tx: &mut Tx<'_>,
    attempt: i64,
    ev: &StoredEvent,
    now: i64,
) -> Result<Option<FinishedJob>> {
    match ev {
        StoredEvent::StepStarted { step } => {
            sqlx::query("UPDATE steps SET state = 'running', started_at = $3 WHERE attempt_id = $1 AND idx = $2")
                .bind(attempt)
                .bind(i64::from(*step))
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        StoredEvent::StepFinished {
            step,
            status,
            exit_code,
            message,
        } => {
            sqlx::query(
                "UPDATE steps SET state = $3, exit_code = $4, message = $5, finished_at = $6, \
                 started_at = COALESCE(started_at, $6) WHERE attempt_id = $1 AND idx = $2",
            )
            .bind(attempt)
            .bind(i64::from(*step))
            .bind(status.as_str())
            .bind(exit_code.map(i64::from))
            .bind(message)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        StoredEvent::Log {
            step,
            offset,
            len,
            compressed,
        } => {
            sqlx::query(
                "INSERT INTO log_chunks (attempt_id, step, byte_offset, len, data) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(attempt)
            .bind(i64::from(*step))
            .bind(*offset as i64)
            .bind(*len as i64)
            .bind(compressed.as_slice())
            .execute(&mut **tx)
            .await?;
            sqlx::query("UPDATE steps SET log_size = $3 WHERE attempt_id = $1 AND idx = $2")
                .bind(attempt)
                .bind(i64::from(*step))
                .bind((offset + len) as i64)
                .execute(&mut **tx)
                .await?;
        }
        StoredEvent::Finished { result, error } => {
            let locked =
                release_attempt(tx, attempt, "the job ended while it held the batch", now).await?;
            let job_id: i64 = sqlx::query(
                "UPDATE attempts SET state = $2, finished_at = $3 WHERE id = $1 RETURNING job_id",
            )
            .bind(attempt)
            .bind(result.as_str())
            .bind(now)
            .fetch_one(&mut **tx)
            .await?
            .try_get("job_id")?;
            let finished = match &locked {
                Some((build_id, before)) => {
                    finish_job_of_locked_build(
                        tx,
                        job_id,
                        (*build_id, before),
                        *result,
                        error.as_deref(),
                        now,
                    )
                    .await?
                }
                None => finish_job(tx, job_id, *result, error.as_deref(), now).await?,
            };
            return Ok(Some(finished));
        }
    }
    Ok(None)
}
