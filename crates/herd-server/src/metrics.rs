//! What `GET /metrics` shows, in the OpenMetrics text format that
//! Prometheus scrapes (prometheus-client). Counters and histograms are
//! counted where things happen; gauges (queue, workers, database size) are
//! read from the hub and the store at each scrape.
//!
//! Label values come from herd.yml (projects, builders), which whoever can
//! push writes: the number of distinct values is capped (then `_other`),
//! so that no pipeline makes the server hold unbounded series.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

/// Distinct project and builder label values kept; later ones are `_other`.
const MAX_LABEL_VALUES: usize = 1000;
pub const OTHER: &str = "_other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProjectLabel {
    project: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    project: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuilderLabels {
    project: String,
    builder: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhatLabel {
    what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

/// Why an attempt was lost (a fixed set: the label of `herd_attempts_lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The worker restarted and did not know the attempt.
    Restarted,
    /// The worker said it stops.
    Stopped,
    /// The worker's connection went and it did not come back in time.
    Gone,
    /// The worker went before it got the job.
    Undelivered,
}

impl Loss {
    fn as_str(self) -> &'static str {
        match self {
            Loss::Restarted => "restarted",
            Loss::Stopped => "stopped",
            Loss::Gone => "gone",
            Loss::Undelivered => "undelivered",
        }
    }
}

/// The live state read at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Queued jobs per (project, builder).
    pub queued: Vec<((String, String), u64)>,
    pub jobs_running: u64,
    /// Shards of split steps waiting on this server for work.
    pub split_shards_waiting: u64,
    pub workers_connected: u64,
    pub workers_busy: u64,
    pub workers_paused: u64,
    pub workers_quarantined: u64,
    pub workers_draining: u64,
    pub workers_low_disk: u64,
    /// Bytes of the SQLite file (and its WAL); None on PostgreSQL.
    pub database_bytes: Option<u64>,
}

/// The server's metrics: one set per process, like Prometheus clients'
/// default registry (the store counts where no handle reaches).
pub fn global() -> &'static Metrics {
    static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

pub struct Metrics {
    registry: Mutex<Registry>,
    /// Label values seen (`project` or `project/builder`), capped.
    seen: Mutex<HashSet<String>>,
    builds_started: Family<ProjectLabel, Counter>,
    builds_finished: Family<FinishedLabels, Counter>,
    queue_wait: Family<BuilderLabels, Histogram>,
    attempts_lost: Family<ReasonLabel, Counter>,
    log_bytes: Counter,
    split_batches: Counter,
    store_seconds: Family<OpLabel, Histogram>,
    janitor_passes: Counter,
    janitor_seconds: Histogram,
    janitor_removed: Family<WhatLabel, Counter>,
    janitor_freed_bytes: Family<WhatLabel, Counter>,
    webhooks: Family<OutcomeLabel, Counter>,
    reports: Family<OutcomeLabel, Counter>,
    queued: Family<BuilderLabels, Gauge>,
    jobs_running: Gauge,
    split_shards_waiting: Gauge,
    workers: Family<StateLabel, Gauge>,
    database_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn seconds_histogram() -> Histogram {
    // 1 ms … ~9 h.
    Histogram::new(exponential_buckets(0.001, 4.0, 13))
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("herd")),
            seen: Mutex::new(HashSet::new()),
            builds_started: Family::default(),
            builds_finished: Family::default(),
            queue_wait: Family::new_with_constructor(seconds_histogram),
            attempts_lost: Family::default(),
            log_bytes: Counter::default(),
            split_batches: Counter::default(),
            store_seconds: Family::new_with_constructor(seconds_histogram),
            janitor_passes: Counter::default(),
            janitor_seconds: seconds_histogram(),
            janitor_removed: Family::default(),
            janitor_freed_bytes: Family::default(),
            webhooks: Family::default(),
            reports: Family::default(),
            queued: Family::default(),
            jobs_running: Gauge::default(),
            split_shards_waiting: Gauge::default(),
            workers: Family::default(),
            database_bytes: Gauge::default(),
        };
        {
            let mut r = m.lock_registry();
            r.register(
                "builds_started",
                "Builds started, by project",
                m.builds_started.clone(),
            );
            r.register(
                "builds_finished",
                "Builds that ended, by project and state",
                m.builds_finished.clone(),
            );
            r.register_with_unit(
                "queue_wait",
                "How long jobs waited in the queue for a worker, by builder",
                Unit::Seconds,
                m.queue_wait.clone(),
            );
            r.register(
                "attempts_lost",
                "Attempts lost with their worker, by reason",
                m.attempts_lost.clone(),
            );
            r.register_with_unit(
                "log_stored",
                "Log bytes stored (compressed)",
                Unit::Bytes,
                m.log_bytes.clone(),
            );
            r.register(
                "split_batches",
                "Batches of split test suites handed out",
                m.split_batches.clone(),
            );
            r.register_with_unit(
                "store",
                "Time of the store's writes, by operation",
                Unit::Seconds,
                m.store_seconds.clone(),
            );
            r.register(
                "janitor_passes",
                "Janitor passes that ran here",
                m.janitor_passes.clone(),
            );
            r.register_with_unit(
                "janitor",
                "How long janitor passes took",
                Unit::Seconds,
                m.janitor_seconds.clone(),
            );
            r.register(
                "janitor_removed",
                "What the janitor removed: builds, logs (of kept builds), artifacts (of kept builds)",
                m.janitor_removed.clone(),
            );
            r.register_with_unit(
                "janitor_freed",
                "Bytes the janitor freed: logs (compressed) and artifact files",
                Unit::Bytes,
                m.janitor_freed_bytes.clone(),
            );
            r.register(
                "webhooks",
                "Webhook deliveries, by outcome (accepted, refused)",
                m.webhooks.clone(),
            );
            r.register(
                "reports",
                "Commit statuses and notifications sent, by outcome (sent, failed)",
                m.reports.clone(),
            );
            r.register(
                "queue_jobs",
                "Jobs waiting in the queue, by builder",
                m.queued.clone(),
            );
            r.register("jobs_running", "Jobs running now", m.jobs_running.clone());
            r.register(
                "split_shards_waiting",
                "Shards of split steps waiting on this server for work",
                m.split_shards_waiting.clone(),
            );
            r.register(
                "workers",
                "Workers by state (connected, busy, paused, quarantined, draining)",
                m.workers.clone(),
            );
            r.register_with_unit(
                "database",
                "Size of the SQLite database with its WAL (absent on PostgreSQL)",
                Unit::Bytes,
                m.database_bytes.clone(),
            );
        }
        m
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `value` as a label, or [`OTHER`] once too many distinct ones were seen.
    fn capped(&self, value: &str) -> String {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(value) {
            return value.to_string();
        }
        if seen.len() >= MAX_LABEL_VALUES {
            return OTHER.to_string();
        }
        seen.insert(value.to_string());
        value.to_string()
    }

    fn builder_labels(&self, project: &str, builder: &str) -> BuilderLabels {
        let key = self.capped(&format!("{project}/{builder}"));
        if key == OTHER {
            return BuilderLabels {
                project: self.capped(project),
                builder: OTHER.into(),
            };
        }
        BuilderLabels {
            project: self.capped(project),
            builder: builder.to_string(),
        }
    }

    pub fn build_started(&self, project: &str) {
        self.builds_started
            .get_or_create(&ProjectLabel {
                project: self.capped(project),
            })
            .inc();
    }

    pub fn build_finished(&self, project: &str, state: herd_core::state::RunState) {
        self.builds_finished
            .get_or_create(&FinishedLabels {
                project: self.capped(project),
                state: state.as_str().to_string(),
            })
            .inc();
    }

    pub fn queue_waited(&self, project: &str, builder: &str, wait: Duration) {
        self.queue_wait
            .get_or_create(&self.builder_labels(project, builder))
            .observe(wait.as_secs_f64());
    }

    pub fn attempt_lost(&self, why: Loss) {
        self.attempts_lost
            .get_or_create(&ReasonLabel {
                reason: why.as_str().into(),
            })
            .inc();
    }

    pub fn log_stored(&self, bytes: u64) {
        self.log_bytes.inc_by(bytes);
    }

    pub fn split_batch(&self) {
        self.split_batches.inc();
    }

    /// A write of the store (`op`: a fixed name) took `took`.
    pub fn store_write(&self, op: &'static str, took: Duration) {
        self.store_seconds
            .get_or_create(&OpLabel { op: op.into() })
            .observe(took.as_secs_f64());
    }

    /// A janitor pass removed `removed` (builds, logs, artifacts) and
    /// freed `freed` bytes (logs, files).
    pub fn janitor_pass(&self, removed: [i64; 3], freed: [i64; 2], took: Duration) {
        self.janitor_passes.inc();
        self.janitor_seconds.observe(took.as_secs_f64());
        for (what, n) in ["builds", "logs", "artifacts"].into_iter().zip(removed) {
            self.janitor_removed
                .get_or_create(&WhatLabel { what: what.into() })
                .inc_by(n.max(0) as u64);
        }
        for (what, n) in ["logs", "files"].into_iter().zip(freed) {
            self.janitor_freed_bytes
                .get_or_create(&WhatLabel { what: what.into() })
                .inc_by(n.max(0) as u64);
        }
    }

    /// A webhook delivery was `accepted` or `refused`.
    pub fn webhook(&self, outcome: &'static str) {
        self.webhooks
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A status or notification was `sent` or `failed`.
    pub fn report(&self, outcome: &'static str) {
        self.reports
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// The text of a scrape, with the live gauges set from `live`.
    pub fn render(&self, live: &Live) -> String {
        self.queued.clear();
        for ((project, builder), n) in &live.queued {
            self.queued
                .get_or_create(&self.builder_labels(project, builder))
                .inc_by(*n as i64);
        }
        self.jobs_running.set(live.jobs_running as i64);
        self.split_shards_waiting
            .set(live.split_shards_waiting as i64);
        for (state, n) in [
            ("connected", live.workers_connected),
            ("busy", live.workers_busy),
            ("paused", live.workers_paused),
            ("quarantined", live.workers_quarantined),
            ("draining", live.workers_draining),
            ("low_disk", live.workers_low_disk),
        ] {
            self.workers
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .set(n as i64);
        }
        self.database_bytes
            .set(live.database_bytes.unwrap_or(0).min(i64::MAX as u64) as i64);
        let mut out = String::new();
        let registry = self.lock_registry();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!("could not encode the metrics: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_shows_counts_and_gauges_and_ends_with_eof() {
        let m = Metrics::new();
        m.build_started("p");
        m.build_started("p");
        m.build_finished("p", herd_core::state::RunState::Failure);
        m.attempt_lost(Loss::Gone);
        m.queue_waited("p", "b", Duration::from_millis(30));
        let text = m.render(&Live {
            queued: vec![(("p".into(), "b".into()), 3)],
            workers_connected: 2,
            ..Live::default()
        });
        assert!(
            text.contains("herd_builds_started_total{project=\"p\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("herd_builds_finished_total{project=\"p\",state=\"failure\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herd_attempts_lost_total{reason=\"gone\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("herd_queue_jobs{project=\"p\",builder=\"b\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("herd_workers{state=\"connected\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("herd_queue_wait_seconds_count{project=\"p\",builder=\"b\"} 1"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
        // The queue gauge shows only what waits now.
        let text = m.render(&Live::default());
        assert!(!text.contains("herd_queue_jobs{"), "{text}");
    }

    #[test]
    fn label_values_from_pipelines_are_capped() {
        let m = Metrics::new();
        for i in 0..(MAX_LABEL_VALUES + 50) {
            m.build_started(&format!("p{i}"));
        }
        let text = m.render(&Live::default());
        let series = text
            .lines()
            .filter(|l| l.starts_with("herd_builds_started_total{"))
            .count();
        assert_eq!(series, MAX_LABEL_VALUES + 1, "{text}");
        assert!(text.contains("herd_builds_started_total{project=\"_other\"} 50"));
    }
}
