//! The hub: the server's live view of connected workers, queued jobs and
//! attempts whose worker went away, and the scheduler loop that joins them.
//!
//! Architecture invariant: the store is the source of truth. The hub holds
//! only what can be rebuilt from it at start (the queue, the live attempts)
//! plus the connections themselves; every decision is written to the store
//! before a worker hears of it.

mod assign;
mod capabilities;
mod disk;
mod health;
mod needs;
pub mod peers;
mod split_wait;
pub use split_wait::SPLIT_PARK_MAX;

use crate::metrics::Loss;
use capabilities::{capabilities, probe_requests, trusted_capabilities};
pub use capabilities::{Fit, WhyNot, WorkerWhyNot};
use health::Health;
use peers::PeerMsg;

use crate::store::{
    Applied, FinishedJob, LostOutcome, QueuedJobInfo, Store, StoreError, WorkerRow,
};
use herd_core::schedule::{self, QueuedJob, WorkerView};
use herd_proto::{Assignment, AttemptId, Hello, ProbeResult, ResumeAttempt, ServerMsg};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// Most artifacts one job fetches: their list travels in the assignment,
/// which is one frame.
pub const MAX_FETCH_FILES: usize = 2_000;
/// Most bytes that list may take in the assignment (its frame is 1 MiB).
pub const MAX_FETCH_LIST_BYTES: usize = 512 * 1024;

/// The server's secrets, replaced whole by a config reload.
pub type SharedSecrets = Arc<arc_swap::ArcSwap<BTreeMap<String, crate::config::SecretConfig>>>;

#[derive(Debug, Clone)]
pub struct Settings {
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// The same for a worker running nothing (protocol 2): thousands of
    /// idle workers cost a sixth of the wake-ups. A job given to one is
    /// answered within `heartbeat_timeout` again.
    pub idle_heartbeat_interval: Duration,
    pub idle_heartbeat_timeout: Duration,
    /// How long a worker whose connection closed may take to come back and
    /// resume its attempts before they move elsewhere.
    pub reconnect_grace: Duration,
    /// The same, from the start of the server, for attempts that were live
    /// when the previous server process stopped.
    pub restart_grace: Duration,
    /// Attempts a job gets in all when workers are lost under it.
    pub max_attempts: i64,
    /// A worker that loses this many jobs within `quarantine_window` is
    /// quarantined: no jobs for `quarantine_base`, doubling each time.
    pub quarantine_after: usize,
    pub quarantine_window: Duration,
    pub quarantine_base: Duration,
    /// `secrets:` of the server config (their Debug shows no value).
    /// A reload swaps them whole.
    pub secrets: SharedSecrets,
    /// Bytes of output kept per step (workers drop the rest with a notice).
    pub max_step_log: u64,
    /// Custom probes of the server's config: name -> command.
    pub probe_commands: Arc<BTreeMap<String, String>>,
    /// What one build and one sender may ask.
    pub limits: crate::config::BuildLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(15),
            idle_heartbeat_interval: Duration::from_secs(30),
            idle_heartbeat_timeout: Duration::from_secs(90),
            reconnect_grace: Duration::from_secs(2),
            restart_grace: Duration::from_secs(30),
            max_attempts: 3,
            quarantine_after: 3,
            quarantine_window: Duration::from_secs(600),
            quarantine_base: Duration::from_secs(60),
            secrets: Arc::default(),
            max_step_log: herd_proto::DEFAULT_STEP_LOG_LIMIT,
            probe_commands: Arc::default(),
            limits: crate::config::BuildLimits::default(),
        }
    }
}

/// What the hub asks a connection task to do.
///
/// Small (boxed payloads): each worker's channel holds a block of 32 of
/// them from the start, idle or not.
#[derive(Debug)]
pub enum Outbound {
    Send(Box<ServerMsg>),
    /// A new attempt: register it, then send the assignment.
    Assign(Box<Assignment>),
    Close(String),
}

impl Outbound {
    pub fn send(msg: ServerMsg) -> Outbound {
        Outbound::Send(Box::new(msg))
    }
}

struct LiveWorker {
    conn_id: u64,
    tx: mpsc::UnboundedSender<Outbound>,
    slots: u32,
    facts: BTreeMap<String, String>,
    /// Labels the worker states itself (`--label`).
    labels: BTreeMap<String, String>,
    /// Labels the server gave it (enrollment token, `herd workers label`):
    /// they win over stated ones, and they alone meet a secret's labels.
    server_labels: BTreeMap<String, String>,
    /// Probe results reported on this connection.
    probes: BTreeMap<String, ProbeResult>,
    running: HashSet<AttemptId>,
    /// Spread keys of running shard attempts (see `schedule::QueuedJob::spread`).
    spreads: HashMap<AttemptId, String>,
    /// Slots promised by a scheduling pass that is still writing its attempts.
    reserved: u32,
    recent: VecDeque<String>,
    draining: bool,
    /// Paused by an admin: no new jobs; running ones finish. Kept in the store.
    paused: bool,
    /// Its disk as it last said; while `low` is set it takes no new jobs.
    disk: Option<herd_proto::DiskReport>,
}

struct Orphan {
    worker: String,
    deadline: Instant,
}

#[derive(Default)]
struct HubState {
    health: HashMap<String, Health>,
    workers: HashMap<String, LiveWorker>,
    /// Probes the builders need: name -> custom command.
    probe_set: BTreeMap<String, Option<String>>,
    /// A deque: placed jobs are mostly near its front, and taking one out
    /// then moves few others (its entries are large).
    queue: VecDeque<QueuedJobInfo>,
    /// What the planner sees of each queued job, made once per job (not on
    /// every pass: a pass places a few jobs, the queue may hold thousands).
    /// Entries of jobs that left the queue are pruned in passes.
    views: HashMap<i64, QueuedJob>,
    orphans: HashMap<AttemptId, Orphan>,
    next_conn_id: u64,
    /// Queued jobs with `needs:` whose needs have all ended well: the
    /// scheduler may place them (`needs`).
    released: std::collections::HashSet<i64>,
    /// Workers that went away: what they could run and when they left
    /// (what "no capable worker online since …" says). Bounded.
    departed: HashMap<String, Departed>,
}

/// A worker that went away, as it was.
struct Departed {
    caps: herd_core::requirement::Capabilities,
    trusted: herd_core::requirement::Capabilities,
    at_ms: i64,
}

/// Most departed workers remembered.
const MAX_DEPARTED: usize = 10_000;

pub struct Hub {
    pub store: Store,
    pub settings: Settings,
    state: Mutex<HubState>,
    wake_scheduler: Notify,
    /// Bumped on every change a reader might wait for (new build, event
    /// stored, worker came or went). Long-polls and live pages wait on it.
    changes: watch::Sender<u64>,
    /// This server among those sharing the database.
    pub server_id: String,
    /// Messages for the other servers sharing the database (None: alone).
    peers: Option<mpsc::UnboundedSender<PeerMsg>>,
    peer_outbox: Mutex<Option<mpsc::UnboundedReceiver<PeerMsg>>>,
    /// Shards of splits waiting for work (`split_wait`).
    split_waits: Mutex<split_wait::SplitWaits>,
}

/// The result of a worker's hello.
pub struct Admitted {
    pub conn_id: u64,
    pub resume: Vec<ResumeAttempt>,
    pub abandon: Vec<AttemptId>,
}

impl Hub {
    pub async fn start(
        store: Store,
        settings: Settings,
        server_id: String,
    ) -> Result<Arc<Hub>, StoreError> {
        let clustered = store.postgres_url().is_some();
        let online_elsewhere: HashSet<String> = if clustered {
            // Others may share the database: their workers stay theirs.
            store
                .workers_offline_without_live_server(peers::alive_since())
                .await?;
            store
                .workers()
                .await?
                .into_iter()
                .filter(|w| w.online)
                .map(|w| w.name)
                .collect()
        } else {
            store.all_workers_offline().await?;
            HashSet::new()
        };
        let queue = store.queued_jobs(None).await?;
        let deadline = Instant::now() + settings.restart_grace;
        let orphans = store
            .live_attempts(None)
            .await?
            .into_iter()
            .filter(|a| !online_elsewhere.contains(&a.worker))
            .map(|a| {
                (
                    a.id,
                    Orphan {
                        worker: a.worker,
                        deadline,
                    },
                )
            })
            .collect();
        // A probe's command is the server config's (an older release took
        // commands from herd.yml: those are forgotten, never run again).
        let stored = store.wanted_probes().await?;
        let probe_set: BTreeMap<String, Option<String>> = stored
            .keys()
            .map(|name| (name.clone(), settings.probe_commands.get(name).cloned()))
            .collect();
        if probe_set != stored {
            let corrected: Vec<(String, Option<String>)> = probe_set
                .iter()
                .map(|(n, c)| (n.clone(), c.clone()))
                .collect();
            store.set_wanted_probes(&corrected).await?;
        }
        let (peers, peer_outbox) = if clustered {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let hub = Arc::new(Hub {
            server_id,
            peers,
            peer_outbox: Mutex::new(peer_outbox),
            store,
            settings,
            state: Mutex::new(HubState {
                queue: queue.into(),
                orphans,
                probe_set,
                ..HubState::default()
            }),
            wake_scheduler: Notify::new(),
            changes: watch::channel(0).0,
            split_waits: Mutex::default(),
        });
        tokio::spawn(scheduler_loop(Arc::clone(&hub)));
        tokio::spawn(orphan_loop(Arc::clone(&hub)));
        Ok(hub)
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn changed(&self) {
        self.changed_here();
        self.tell_peers(PeerMsg::Changed);
    }

    /// A change readers of this server wait for, already known to the others.
    pub fn changed_here(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn wake(&self) {
        self.wake_scheduler.notify_one();
    }

    pub fn enqueue(&self, jobs: Vec<QueuedJobInfo>) {
        let mut builds: Vec<i64> = jobs.iter().map(|j| j.build_id).collect();
        builds.dedup();
        self.lock().queue.extend(jobs);
        self.wake();
        for b in builds {
            self.tell_peers(PeerMsg::Jobs { build: Some(b) });
        }
        self.changed();
    }

    pub fn forget_queued(&self, build_id: i64) {
        let mut st = self.lock();
        let gone: Vec<i64> = st
            .queue
            .iter()
            .filter(|j| j.build_id == build_id)
            .map(|j| j.job_id)
            .collect();
        st.queue.retain(|j| j.build_id != build_id);
        for id in gone {
            st.released.remove(&id);
        }
    }

    /// Closes a worker's connection (its token was revoked, it was
    /// removed), whichever server it is connected to.
    pub fn close_worker(&self, name: &str, reason: &str) {
        self.close_here(name, reason);
        self.tell_peers(PeerMsg::Close {
            worker: name.to_string(),
            reason: reason.to_string(),
        });
    }

    pub(crate) fn close_here(&self, name: &str, reason: &str) {
        if let Some(w) = self.lock().workers.get(name) {
            let _ = w.tx.send(Outbound::Close(reason.to_string()));
        }
    }

    pub fn queue_len(&self) -> usize {
        self.lock().queue.len()
    }

    /// Names of connected workers with the attempts each runs.
    pub fn live_workers(&self) -> BTreeMap<String, Vec<AttemptId>> {
        self.lock()
            .workers
            .iter()
            .map(|(n, w)| {
                let mut r: Vec<_> = w.running.iter().copied().collect();
                r.sort_unstable();
                (n.clone(), r)
            })
            .collect()
    }

    /// Admits a worker that said hello: decides which of the attempts it
    /// still runs it may resume, and which of its attempts were lost.
    pub async fn admit(
        &self,
        name: &str,
        hello: &Hello,
        tx: mpsc::UnboundedSender<Outbound>,
    ) -> Result<Admitted, StoreError> {
        let mut resume = Vec::new();
        let mut abandon = Vec::new();
        let mut kept = HashSet::new();
        for r in &hello.running {
            match self.store.attempt(r.attempt).await? {
                Some(a)
                    if a.worker == name && matches!(a.state.as_str(), "assigned" | "running") =>
                {
                    resume.push(ResumeAttempt {
                        attempt: a.id,
                        acked_seq: a.last_seq as u64,
                    });
                    kept.insert(a.id);
                }
                _ => abandon.push(r.attempt),
            }
        }
        // Attempts the server thinks this worker runs but the worker does
        // not: it restarted and they died with it. They move at once.
        let lost: Vec<AttemptId> = self
            .store
            .live_attempts(Some(name))
            .await?
            .into_iter()
            .filter(|a| !kept.contains(&a.id))
            .map(|a| a.id)
            .collect();
        for attempt in lost {
            self.lock().orphans.remove(&attempt);
            self.attempt_lost(attempt, Loss::Restarted, "worker lost: it restarted")
                .await?;
            self.record_loss(name);
        }
        let paused = self.store.worker(name).await?.is_some_and(|w| w.paused);
        let server_labels = self.store.worker_labels(name).await?;
        let conn_id = {
            let mut st = self.lock();
            st.next_conn_id += 1;
            let conn_id = st.next_conn_id;
            for a in &kept {
                st.orphans.remove(a);
            }
            st.departed.remove(name);
            if let Some(old) = st.workers.remove(name) {
                let _ = old.tx.send(Outbound::Close(
                    "replaced by a new connection of the same worker".into(),
                ));
            }
            let probes = probe_requests(&st.probe_set);
            if !probes.is_empty() {
                let _ = tx.send(Outbound::send(ServerMsg::Probe {
                    probes,
                    fresh: false,
                }));
            }
            st.workers.insert(
                name.to_string(),
                LiveWorker {
                    conn_id,
                    tx,
                    slots: hello.slots,
                    facts: hello.facts.clone(),
                    labels: hello.labels.clone(),
                    server_labels,
                    probes: BTreeMap::new(),
                    running: kept,
                    spreads: HashMap::new(),
                    reserved: 0,
                    recent: VecDeque::new(),
                    draining: hello.draining,
                    paused,
                    disk: hello.disk.clone().map(disk::bounded),
                },
            );
            conn_id
        };
        self.store
            .worker_online(
                &WorkerRow {
                    name: name.to_string(),
                    slots: i64::from(hello.slots),
                    labels: serde_json::to_string(&hello.labels).unwrap_or_else(|_| "{}".into()),
                    facts: serde_json::to_string(&hello.facts).unwrap_or_else(|_| "{}".into()),
                    version: hello.version.clone(),
                    online: true,
                    paused,
                    first_seen: 0,
                    last_change: 0,
                    away_notified_at: None,
                    disk: hello
                        .disk
                        .clone()
                        .map(|d| crate::store::disk_json(&disk::bounded(d))),
                },
                &self.server_id,
            )
            .await?;
        self.wake();
        self.changed();
        Ok(Admitted {
            conn_id,
            resume,
            abandon,
        })
    }

    /// A worker's connection ended. Its attempts wait `grace` for it to
    /// come back before they are given to another worker.
    pub async fn disconnected(&self, name: &str, conn_id: u64, grace: Duration) {
        let mut last_disk = None;
        let was_current = {
            let mut st = self.lock();
            match st.workers.get(name) {
                Some(w) if w.conn_id == conn_id => {
                    let w = st.workers.remove(name);
                    last_disk = w.as_ref().and_then(|w| w.disk.clone());
                    if let Some(w) = &w {
                        if st.departed.len() >= MAX_DEPARTED {
                            st.departed.clear();
                        }
                        let caps = capabilities::capabilities(w, &st.probe_set);
                        let trusted = capabilities::trusted_capabilities(w);
                        st.departed.insert(
                            name.to_string(),
                            Departed {
                                caps,
                                trusted,
                                at_ms: crate::store::now_ms(),
                            },
                        );
                    }
                    let deadline = Instant::now() + grace;
                    for a in w.map(|w| w.running).unwrap_or_default() {
                        st.orphans.insert(
                            a,
                            Orphan {
                                worker: name.to_string(),
                                deadline,
                            },
                        );
                    }
                    true
                }
                _ => false,
            }
        };
        if was_current {
            if let Err(e) = self
                .store
                .worker_offline(name, &self.server_id, last_disk.as_ref())
                .await
            {
                tracing::warn!("could not mark worker {name} offline: {e}");
            }
            self.changed();
        }
    }

    /// The worker stops now: its attempts died with their steps, so they
    /// move at once instead of after the grace period.
    pub async fn stopping(&self, name: &str, conn_id: u64) -> Result<(), StoreError> {
        let attempts: Vec<AttemptId> = {
            let mut st = self.lock();
            match st.workers.get_mut(name) {
                Some(w) if w.conn_id == conn_id => {
                    w.draining = true;
                    w.running.drain().collect()
                }
                _ => Vec::new(),
            }
        };
        for a in attempts {
            self.attempt_lost(a, Loss::Stopped, &format!("worker lost: {name} stopped"))
                .await?;
        }
        Ok(())
    }

    /// Pauses or resumes a worker (stored, so it survives restarts). False
    /// when the server has never seen the worker.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<bool, StoreError> {
        if !self.store.set_paused(name, paused).await? {
            return Ok(false);
        }
        if let Some(w) = self.lock().workers.get_mut(name) {
            w.paused = paused;
        }
        self.tell_peers(PeerMsg::Paused {
            worker: name.to_string(),
        });
        self.wake();
        self.changed();
        Ok(true)
    }

    /// The worker changed its mind about taking jobs (draining on SIGTERM).
    /// Whether the hub counts attempts on this connection of the worker:
    /// then its silence is judged by the busy heartbeat timeout.
    pub fn runs_attempts(&self, name: &str, conn_id: u64) -> bool {
        self.lock()
            .workers
            .get(name)
            .is_some_and(|w| w.conn_id == conn_id && !w.running.is_empty())
    }

    pub fn set_draining(&self, name: &str, draining: bool) {
        if let Some(w) = self.lock().workers.get_mut(name) {
            w.draining = draining;
        }
        self.wake();
    }

    /// A stored event batch reported outcomes: frees slots of ended attempts.
    pub fn applied(
        &self,
        name: &str,
        attempt: AttemptId,
        applied: &Applied,
        builder_key: Option<&str>,
    ) {
        match applied {
            Applied::Stored { finished: Some(_) } | Applied::Fenced => {
                let mut st = self.lock();
                if let Some(w) = st.workers.get_mut(name) {
                    w.running.remove(&attempt);
                    if let (Applied::Stored { .. }, Some(b)) = (applied, builder_key) {
                        w.recent.retain(|r| r != b);
                        w.recent.push_front(b.to_string());
                        w.recent.truncate(8);
                    }
                }
                drop(st);
                self.wake();
                self.attempt_ended_for_splits(false);
            }
            Applied::Stored { finished: None } | Applied::Behind => {}
        }
    }

    async fn attempt_lost(
        &self,
        attempt: AttemptId,
        why: Loss,
        reason: &str,
    ) -> Result<(), StoreError> {
        let outcome = self
            .store
            .attempt_lost(attempt, reason, self.settings.max_attempts)
            .await?;
        if outcome != LostOutcome::AlreadyEnded {
            crate::metrics::global().attempt_lost(why);
            self.attempt_ended_for_splits(true);
        }
        match outcome {
            LostOutcome::Requeued(job_id) => {
                let jobs = self.store.queued_jobs(Some(job_id)).await?;
                let build = jobs.first().map(|j| j.build_id);
                tracing::info!(
                    build,
                    attempt,
                    job_id,
                    "attempt {attempt} lost ({reason}); job {job_id} queued again"
                );
                self.enqueue(jobs);
            }
            LostOutcome::GaveUp(FinishedJob {
                job_id,
                build_id,
                build_state,
            }) => {
                tracing::warn!(
                    build = build_id,
                    attempt,
                    job_id,
                    build_state = build_state.as_str(),
                    "attempt {attempt} lost ({reason}); job {job_id} gave up"
                );
                self.changed();
            }
            LostOutcome::AlreadyEnded => {}
        }
        Ok(())
    }

    /// Cancels a build: queued jobs end, running attempts are told to stop.
    pub async fn cancel_build(&self, build_id: i64) -> Result<(), StoreError> {
        self.forget_queued(build_id);
        let (_, live) = self.store.cancel_build(build_id).await?;
        for (attempt, worker) in live {
            let sent = {
                let st = self.lock();
                st.workers.get(&worker).is_some_and(|w| {
                    w.running.contains(&attempt)
                        && w.tx
                            .send(Outbound::send(ServerMsg::Cancel {
                                attempt,
                                reason: "build cancelled".into(),
                            }))
                            .is_ok()
                })
            };
            if !sent
                && self.peers.is_some()
                && self
                    .store
                    .worker_online_elsewhere(&worker, &self.server_id, peers::alive_since())
                    .await?
            {
                // Its worker is on another server: that one tells it.
                self.tell_peers(PeerMsg::Cancel {
                    attempt,
                    worker: worker.clone(),
                });
            } else if !sent {
                // Its worker is away: end it here; a late report is fenced.
                self.lock().orphans.remove(&attempt);
                self.store
                    .end_attempt(
                        attempt,
                        herd_core::state::RunState::Cancelled,
                        "build cancelled",
                    )
                    .await?;
            }
        }
        self.changed();
        Ok(())
    }

    /// One scheduling pass: plan, write attempts, hand them to connections.
    async fn schedule_once(&self) -> Result<bool, StoreError> {
        if self.has_held() {
            self.gate_needs().await?;
        }
        {
            // Most passes (a build queued while every slot is taken) end
            // here, before any work that grows with the queue or the
            // workers, and before the store is asked anything.
            let st = self.lock();
            if st.queue.is_empty()
                || !st
                    .workers
                    .iter()
                    .any(|(name, w)| Self::accepting(&st, name, w) && Self::free_slots(w) > 0)
            {
                return Ok(false);
            }
        }
        // Only builders with `max_concurrent` need the count, from the store
        // (the truth, whatever happened to attempts meanwhile).
        let capped = self.lock().queue.iter().any(|j| j.spec.cap.is_some());
        let running = if capped {
            self.store.running_per_builder().await?
        } else {
            HashMap::new()
        };
        let placements: Vec<(QueuedJobInfo, String, u64)> = {
            let mut st = self.lock();
            if st.queue.is_empty() || st.workers.is_empty() {
                return Ok(false);
            }
            let workers: Vec<WorkerView> = st
                .workers
                .iter()
                .map(|(name, w)| WorkerView {
                    spreads: w
                        .running
                        .iter()
                        .filter_map(|a| w.spreads.get(a).cloned())
                        .collect(),
                    name: name.clone(),
                    free_slots: Self::free_slots(w),
                    accepting: Self::accepting(&st, name, w),
                    caps: capabilities(w, &st.probe_set),
                    trusted_caps: trusted_capabilities(w),
                    recent_builders: w.recent.iter().cloned().collect(),
                })
                .collect();
            let st = &mut *st;
            if st.views.len() > 2 * st.queue.len() + 64 {
                let queued: HashSet<i64> = st.queue.iter().map(|j| j.job_id).collect();
                st.views.retain(|id, _| queued.contains(id));
            }
            for j in &st.queue {
                if Self::is_released(st, j) && !st.views.contains_key(&j.job_id) {
                    st.views.insert(j.job_id, planner_view(j));
                }
            }
            let queue: Vec<&QueuedJob> = st
                .queue
                .iter()
                .filter(|j| Self::is_released(st, j))
                .filter_map(|j| st.views.get(&j.job_id))
                .collect();
            let plan = schedule::plan(&queue, &workers, &running);
            let placed: HashSet<i64> = plan.iter().map(|p| p.job_id).collect();
            let positions: Vec<usize> = st
                .queue
                .iter()
                .enumerate()
                .filter(|(_, j)| placed.contains(&j.job_id))
                .map(|(i, _)| i)
                .collect();
            let mut taken: HashMap<i64, QueuedJobInfo> = HashMap::with_capacity(plan.len());
            // From the back, so that the positions before stay true.
            for i in positions.into_iter().rev() {
                if let Some(job) = st.queue.remove(i) {
                    taken.insert(job.job_id, job);
                }
            }
            let mut out = Vec::with_capacity(plan.len());
            for p in plan {
                let Some(job) = taken.remove(&p.job_id) else {
                    continue;
                };
                st.released.remove(&job.job_id);
                st.views.remove(&job.job_id);
                match st.workers.get_mut(&p.worker) {
                    Some(w) => {
                        w.reserved += 1;
                        out.push((job, p.worker, w.conn_id));
                    }
                    None => st.queue.push_back(job),
                }
            }
            out
        };
        if placements.is_empty() {
            return Ok(false);
        }
        let mut placements = placements.into_iter();
        while let Some((job, worker, conn_id)) = placements.next() {
            // Until its attempt exists the job is only ours in memory: a
            // failed write (a busy database) puts it and the rest back.
            let (steps, mask, notices, attempt) = match self.prepare(&job, &worker).await {
                Ok(p) => p,
                Err(e) => {
                    self.unplace(std::iter::once((job, worker, conn_id)).chain(placements));
                    return Err(e);
                }
            };
            if let Some(a) = &attempt {
                let waited = crate::store::now_ms().saturating_sub(job.queued_at).max(0);
                tracing::info!(
                    build = job.build_id,
                    attempt = a.id,
                    job_id = job.job_id,
                    worker = %worker,
                    waited_ms = waited,
                    "job {}/{} assigned to {worker}",
                    job.builder,
                    job.job
                );
                crate::metrics::global().queue_waited(
                    &job.project,
                    &job.builder,
                    Duration::from_millis(waited as u64),
                );
            }
            let delivered = {
                let mut st = self.lock();
                match st.workers.get_mut(&worker) {
                    Some(w) if w.conn_id == conn_id => {
                        w.reserved = w.reserved.saturating_sub(1);
                        match &attempt {
                            Some(a) => {
                                w.running.insert(a.id);
                                let running = &w.running;
                                w.spreads.retain(|id, _| running.contains(id));
                                if let Some(s) = &job.spec.shard {
                                    w.spreads
                                        .insert(a.id, s.spread_key(job.build_id, &job.builder));
                                }
                                let assignment = Assignment {
                                    attempt: a.id,
                                    build: job.build_id,
                                    project: job.project.clone(),
                                    builder: job.builder.clone(),
                                    job: job.job.clone(),
                                    revision: job.revision.clone(),
                                    steps,
                                    mask,
                                    log_limit: Some(self.settings.max_step_log),
                                    attempt_log_limit: Some(self.settings.limits.max_attempt_log),
                                    notices,
                                };
                                w.tx.send(Outbound::Assign(Box::new(assignment))).is_ok()
                            }
                            None => true,
                        }
                    }
                    _ => false,
                }
            };
            if let (Some(a), false) = (&attempt, delivered) {
                if let Err(e) = self
                    .attempt_lost(
                        a.id,
                        Loss::Undelivered,
                        "worker disconnected before it got the job",
                    )
                    .await
                {
                    self.unplace(placements);
                    return Err(e);
                }
            }
        }
        self.changed();
        Ok(true)
    }

    fn free_slots(w: &LiveWorker) -> u32 {
        w.slots.saturating_sub(w.running.len() as u32 + w.reserved)
    }

    /// Whether a worker takes new jobs now (not paused, draining, short
    /// of disk or quarantined).
    fn accepting(st: &HubState, name: &str, w: &LiveWorker) -> bool {
        !w.draining
            && !w.paused
            && w.disk.as_ref().is_none_or(|d| d.low.is_none())
            && !Self::quarantined(st, name)
    }

    async fn expire_orphans(&self) {
        let now = Instant::now();
        let expired: Vec<(AttemptId, String)> = {
            let mut st = self.lock();
            let ids: Vec<AttemptId> = st
                .orphans
                .iter()
                .filter(|(_, o)| o.deadline <= now)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| st.orphans.remove(&id).map(|o| (id, o.worker)))
                .collect()
        };
        for (attempt, worker) in expired {
            if self.peers.is_some()
                && self
                    .store
                    .worker_online_elsewhere(&worker, &self.server_id, peers::alive_since())
                    .await
                    .unwrap_or(false)
            {
                // It came back, to another server: its attempts are there.
                continue;
            }
            let reason = format!("worker lost: {worker} did not come back in time");
            match self.attempt_lost(attempt, Loss::Gone, &reason).await {
                Ok(()) => self.record_loss(&worker),
                Err(e) => tracing::error!("could not move attempt {attempt}: {e}"),
            }
        }
        // A quarantine that ended frees the worker for jobs.
        let ended = {
            let mut st = self.lock();
            let mut ended = false;
            for h in st.health.values_mut() {
                if h.until.is_some_and(|(u, _)| u <= now) {
                    h.until = None;
                    ended = true;
                }
            }
            ended
        };
        if ended {
            self.wake();
            self.changed();
        }
    }
}

/// The planner's view of a queued job.
fn planner_view(j: &QueuedJobInfo) -> QueuedJob {
    QueuedJob {
        job_id: j.job_id,
        builder: format!("{}/{}", j.project, j.builder),
        priority: j.priority,
        requires: j.spec.requires.clone(),
        trusted_requires: j.spec.trusted_requires.clone(),
        cap: j.spec.cap,
        spread: j
            .spec
            .shard
            .as_ref()
            .map(|s| s.spread_key(j.build_id, &j.builder)),
    }
}

async fn scheduler_loop(hub: Arc<Hub>) {
    loop {
        hub.wake_scheduler.notified().await;
        // Keep going while passes place work: a pass may leave free slots
        // when a job was claimed elsewhere meanwhile.
        for _ in 0..1000 {
            match hub.schedule_once().await {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::error!("scheduling failed: {e}; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    hub.wake();
                    break;
                }
            }
        }
    }
}

async fn orphan_loop(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        hub.expire_orphans().await;
        // A job it needs may have ended on another server.
        if hub.has_held() {
            hub.wake();
        }
    }
}
