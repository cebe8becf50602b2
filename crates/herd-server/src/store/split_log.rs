//! A split's state as the store keeps it: a snapshot (`split_snapshots`,
//! as of event `data_seq`; `splits.data` for splits from before events)
//! and the events after it (`split_events`,
//! `herd_core::split::SplitEvent`). A shard's request appends its events,
//! O(batch); a snapshot is written every [`SNAPSHOT_EVERY`] events and when
//! the split ends, so that a server that has none of it in memory replays
//! a bounded tail.
//!
//! Architecture invariant: the database alone holds the truth. The
//! [`SplitCache`] keeps the states this server served last, each with the
//! `(seq, stamp)` of the write it saw; it is used only when that write is
//! still in the log, so a request another server answered in between is
//! replayed from its events, and a write that did not commit is never
//! believed.

use super::encoding::{decode_split_snapshot, decode_split_state, encode_split_snapshot};
use super::locks::Tx;
use super::{Result, StoreError};
use herd_core::split::{SplitEvent, SplitState};
use sqlx::Row;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Events after which the state is written whole again, at least; a
/// suite of many tests waits longer (a snapshot costs O(suite)), so that
/// snapshots stay a small share of the requests' work.
pub const SNAPSHOT_EVERY: i64 = 256;
const SNAPSHOT_TESTS_PER_EVENT: usize = 64;
/// Most tests the cache holds over all its splits, and most splits.
const CACHE_TESTS: usize = 250_000;
const CACHE_SPLITS: usize = 32;
/// A state not asked about for this long leaves the cache at the next put.
const CACHE_IDLE: Duration = Duration::from_secs(600);

/// One split's state, loaded for a change.
pub(super) struct LoadedSplit {
    pub id: i64,
    pub state: SplitState,
    seq: i64,
    data_seq: i64,
    /// The stamp of the write this state is as of.
    stamp: i64,
    /// It holds changes that were not written (the split had ended): the
    /// cache must not get it.
    unwritten: bool,
}

impl LoadedSplit {
    /// A split just made: its snapshot (written by the caller) is event 0.
    pub fn new(id: i64, state: SplitState) -> LoadedSplit {
        LoadedSplit {
            id,
            state,
            seq: 0,
            data_seq: 0,
            stamp: 0,
            unwritten: false,
        }
    }
}

struct Cached {
    seq: i64,
    stamp: i64,
    state: SplitState,
    used: u64,
    at: Instant,
}

/// How long the shard asked for a split's list has to send it before
/// another is asked.
const UPLOAD_CLAIM: Duration = Duration::from_secs(30);

/// A split not made yet: its build, builder, job and step.
pub(super) type SplitKey = (i64, String, String, u32);

/// The split states this server wrote last (see the module's invariant),
/// and which shard was asked for the list of a split not made yet.
#[derive(Default)]
pub struct SplitCache {
    entries: Mutex<(HashMap<i64, Cached>, u64)>,
    /// One shard at a time sends a split's list (they all have it): the
    /// others wait for the split instead of all sending it at once.
    uploads: Mutex<HashMap<SplitKey, (i64, Instant)>>,
}

impl SplitCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<i64, Cached>, u64)> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, id: i64) -> Option<Cached> {
        self.lock().0.remove(&id)
    }

    fn put(&self, id: i64, seq: i64, stamp: i64, state: SplitState) {
        let mut guard = self.lock();
        let (entries, clock) = &mut *guard;
        *clock += 1;
        entries.insert(
            id,
            Cached {
                seq,
                stamp,
                state,
                used: *clock,
                at: Instant::now(),
            },
        );
        // Those unused for long, then the least recently used, go first.
        entries.retain(|_, c| c.at.elapsed() < CACHE_IDLE);
        while entries.len() > CACHE_SPLITS
            || entries.values().map(|c| c.state.tests.len()).sum::<usize>() > CACHE_TESTS
        {
            let Some(oldest) = entries.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| *k) else {
                break;
            };
            entries.remove(&oldest);
        }
    }

    pub(super) fn forget(&self, id: i64) {
        self.lock().0.remove(&id);
    }

    /// Whether `attempt` is the one to send the list of split `key`.
    pub(super) fn claim_upload(&self, key: &SplitKey, attempt: i64) -> bool {
        let mut claims = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        claims.retain(|_, (_, at)| at.elapsed() < UPLOAD_CLAIM);
        match claims.get(key) {
            Some((holder, _)) if *holder != attempt => false,
            _ => {
                claims.insert(key.clone(), (attempt, Instant::now()));
                true
            }
        }
    }

    /// The split is made: nobody needs to send its list any more.
    pub(super) fn uploaded(&self, key: &SplitKey) {
        let mut claims = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        claims.remove(key);
    }
}

/// Loads split `id` for a change, in the transaction that holds its
/// build's lock: from the cache when what it holds is still in the log,
/// else from the snapshot; then the events after it.
pub(super) async fn load(
    tx: &mut Tx<'_>,
    id: i64,
    cache: Option<&SplitCache>,
) -> Result<LoadedSplit> {
    let row = sqlx::query(
        "SELECT s.seq, s.stamp, COALESCE(n.data_seq, 0) AS data_seq FROM splits s \
         LEFT JOIN split_snapshots n ON n.split_id = s.id WHERE s.id = $1",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    let seq: i64 = row.try_get("seq")?;
    let data_seq: i64 = row.try_get("data_seq")?;
    let stamp: i64 = row.try_get("stamp")?;
    if let Some(c) = cache.and_then(|c| c.take(id)) {
        if c.seq == seq && c.stamp == stamp {
            return Ok(LoadedSplit {
                id,
                state: c.state,
                seq,
                data_seq,
                stamp,
                unwritten: false,
            });
        }
        if c.seq >= data_seq && c.seq < seq {
            // Another server wrote since: replay its events, if the cached
            // write is the one the log holds at that number.
            let events = events_from(&mut **tx, id, c.seq).await?;
            if events
                .first()
                .is_some_and(|(s, st, _)| *s == c.seq && *st == c.stamp)
                && events.len() as i64 == seq - c.seq + 1
            {
                let mut state = c.state;
                for (_, _, e) in &events[1..] {
                    state.replay(e);
                }
                return Ok(LoadedSplit {
                    id,
                    state,
                    seq,
                    data_seq,
                    stamp,
                    unwritten: false,
                });
            }
        }
    }
    let started = Instant::now();
    let mut state = snapshot(&mut **tx, id).await?;
    let events = events_from(&mut **tx, id, data_seq + 1).await?;
    check_continuous(id, data_seq, seq, &events)?;
    for (_, _, e) in &events {
        state.replay(e);
    }
    tracing::debug!(split = id, events = events.len(), elapsed = ?started.elapsed(), "split state read from its snapshot");
    Ok(LoadedSplit {
        id,
        state,
        seq,
        data_seq,
        stamp,
        unwritten: false,
    })
}

/// What a write of a split did: whether it was running and is now
/// complete, and the split's build, builder, job and step.
pub(super) struct Saved {
    pub build_id: i64,
    pub builder: String,
    pub job: String,
    pub step_name: String,
    pub complete: bool,
}

/// Appends the state's new events, and the snapshot when it is due or the
/// split is complete. None when the split had ended already (nothing is
/// written). The cache gets the state once the caller commits
/// ([`remember`]).
pub(super) async fn save(
    tx: &mut Tx<'_>,
    split: &mut LoadedSplit,
    now: i64,
) -> Result<Option<Saved>> {
    let events = split.state.take_events();
    let stamp = rand::random::<i64>();
    let complete = split.state.is_complete();
    let first_seq = split.seq + 1;
    split.seq += events.len() as i64;
    let every = SNAPSHOT_EVERY.max((split.state.tests.len() / SNAPSHOT_TESTS_PER_EVENT) as i64);
    let snapshot = complete || split.seq - split.data_seq >= every;
    let meta = sqlx::query(
        "UPDATE splits SET seq = $2, stamp = $3, state = $4, failed = $5, summary = $6, \
         finished_at = CASE WHEN $4 = 'done' THEN COALESCE(finished_at, $7) ELSE NULL END, \
         counts = $8 WHERE id = $1 AND state = 'running' RETURNING build_id, builder, job, step_name",
    )
    .bind(split.id)
    .bind(split.seq)
    .bind(stamp)
    .bind(if complete { "done" } else { "running" })
    .bind(i64::from(split.state.failed()))
    .bind(split.state.summary_line())
    .bind(now)
    .bind(serde_json::to_string(&split.state.summary()).ok())
    .fetch_optional(&mut **tx)
    .await?;
    let Some(meta) = meta else {
        split.unwritten = true;
        return Ok(None);
    };
    for (i, e) in events.iter().enumerate() {
        let text = serde_json::to_string(e)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode a split event: {e}")))?;
        sqlx::query(
            "INSERT INTO split_events (split_id, seq, stamp, data) VALUES ($1, $2, $3, $4)",
        )
        .bind(split.id)
        .bind(first_seq + i as i64)
        .bind(stamp)
        .bind(text)
        .execute(&mut **tx)
        .await?;
        holders(tx, split.id, e).await?;
    }
    if snapshot {
        let started = Instant::now();
        write_snapshot(tx, split.id, split.seq, &split.state).await?;
        tracing::debug!(split = split.id, seq = split.seq, elapsed = ?started.elapsed(), "split snapshot written");
        sqlx::query("DELETE FROM split_events WHERE split_id = $1 AND seq < $2")
            .bind(split.id)
            .bind(split.seq)
            .execute(&mut **tx)
            .await?;
        split.data_seq = split.seq;
    }
    if complete {
        sqlx::query("DELETE FROM split_holders WHERE split_id = $1")
            .bind(split.id)
            .execute(&mut **tx)
            .await?;
    }
    split.stamp = stamp;
    Ok(Some(Saved {
        build_id: meta.try_get("build_id")?,
        builder: meta.try_get("builder")?,
        job: meta.try_get("job")?,
        step_name: meta.try_get("step_name")?,
        complete,
    }))
}

/// Writes the state whole, as of event `seq`.
pub(super) async fn write_snapshot(
    tx: &mut Tx<'_>,
    id: i64,
    seq: i64,
    state: &SplitState,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO split_snapshots (split_id, data_seq, data) VALUES ($1, $2, $3) \
         ON CONFLICT (split_id) DO UPDATE SET data_seq = excluded.data_seq, data = excluded.data",
    )
    .bind(id)
    .bind(seq)
    .bind(encode_split_snapshot(state)?)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The last snapshot: in `split_snapshots`, or in `splits.data` for a
/// split from before events (formats 1 and 2).
async fn snapshot<'e, E>(db: E, id: i64) -> Result<SplitState>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT n.data AS snap, CASE WHEN n.data IS NULL THEN s.data END AS old \
         FROM splits s LEFT JOIN split_snapshots n ON n.split_id = s.id WHERE s.id = $1",
    )
    .bind(id)
    .fetch_one(db)
    .await?;
    match row.try_get::<Option<Vec<u8>>, _>("snap")? {
        Some(bytes) => decode_split_snapshot(&bytes),
        None => decode_split_state(&row.try_get::<String, _>("old")?),
    }
}

/// With the write (or when nothing was to be written): the cache holds the
/// state as the row has it. A state with changes not written is dropped.
/// A split that ended stays: its late shards still ask, once each.
pub(super) fn remember(cache: &SplitCache, mut split: LoadedSplit) {
    if split.unwritten || !split.state.take_events().is_empty() {
        cache.forget(split.id);
    } else {
        cache.put(split.id, split.seq, split.stamp, split.state);
    }
}

/// Keeps `split_holders` in step with who holds a running batch.
async fn holders(tx: &mut Tx<'_>, split: i64, e: &SplitEvent) -> Result<()> {
    match e {
        SplitEvent::Handed { attempt, .. } => {
            sqlx::query(
                "INSERT INTO split_holders (attempt_id, split_id) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(attempt)
            .bind(split)
            .execute(&mut **tx)
            .await?;
        }
        SplitEvent::Reported { attempt, .. } | SplitEvent::Released { attempt, .. } => {
            sqlx::query("DELETE FROM split_holders WHERE attempt_id = $1 AND split_id = $2")
                .bind(attempt)
                .bind(split)
                .execute(&mut **tx)
                .await?;
        }
        SplitEvent::Abandoned { .. } => {}
    }
    Ok(())
}

type Event = (i64, i64, SplitEvent);

async fn events_from<'e, E>(db: E, split: i64, from_seq: i64) -> Result<Vec<Event>>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT seq, stamp, data FROM split_events WHERE split_id = $1 AND seq >= $2 ORDER BY seq",
    )
    .bind(split)
    .bind(from_seq)
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            let data: String = r.try_get("data")?;
            let event = serde_json::from_str(&data).map_err(|e| {
                StoreError::Corrupt(format!("split {split}: an event cannot be read: {e}"))
            })?;
            Ok((r.try_get("seq")?, r.try_get("stamp")?, event))
        })
        .collect()
}

/// The events after the snapshot must be all there, numbered on.
fn check_continuous(split: i64, data_seq: i64, seq: i64, events: &[Event]) -> Result<()> {
    let numbered = events
        .iter()
        .enumerate()
        .all(|(i, (s, _, _))| *s == data_seq + 1 + i as i64);
    if numbered && events.len() as i64 >= seq - data_seq {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "split {split}: events {}..={seq} are not all in the log",
            data_seq + 1
        )))
    }
}

/// A split's state for reading (pages, API), outside a transaction: the
/// snapshot and its events, read again when a snapshot was written in
/// between (its events are gone then).
pub(super) async fn read(pool: &sqlx::AnyPool, id: i64, seq: i64) -> Result<Option<SplitState>> {
    let data_seq = snapshot_seq(pool, id).await?;
    let events = events_from(pool, id, data_seq + 1).await?;
    if check_continuous(id, data_seq, seq, &events).is_err() {
        return Ok(None);
    }
    let mut state = snapshot(pool, id).await?;
    // A snapshot written since the events were read is newer than they
    // assume: read again.
    let again = snapshot_seq(pool, id).await?;
    if again != data_seq {
        return Ok(None);
    }
    for (s, _, e) in &events {
        if *s > seq {
            break;
        }
        state.replay(e);
    }
    Ok(Some(state))
}

/// The event the split's snapshot is as of (0: the first, or none yet).
async fn snapshot_seq(pool: &sqlx::AnyPool, id: i64) -> Result<i64> {
    let row = sqlx::query(
        "SELECT COALESCE((SELECT data_seq FROM split_snapshots WHERE split_id = $1), 0) AS d",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    Ok(row.try_get("d")?)
}

/// Logs at debug level how long its scope took.
pub(super) struct Timed(&'static str, Instant);
impl Timed {
    pub(super) fn new(what: &'static str) -> Timed {
        Timed(what, Instant::now())
    }
}
impl Drop for Timed {
    fn drop(&mut self) {
        tracing::debug!(elapsed = ?self.1.elapsed(), "{}", self.0);
    }
}
