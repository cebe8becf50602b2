//! Quarantine: a worker that loses jobs again and again gets none for a
//! while, longer each time.

use super::{Hub, HubState};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A worker's record of lost jobs.
#[derive(Default)]
pub(super) struct Health {
    pub(super) losses: VecDeque<Instant>,
    /// How many times it was quarantined (the next quarantine is longer).
    pub(super) level: u32,
    pub(super) until: Option<(Instant, std::time::SystemTime)>,
}

impl Hub {
    /// Counts a job lost by `worker`; quarantines it when it loses them
    /// again and again.
    pub(super) fn record_loss(&self, worker: &str) {
        let now = Instant::now();
        let s = &self.settings;
        let mut st = self.lock();
        let h = st.health.entry(worker.to_string()).or_default();
        h.losses.push_back(now);
        while h
            .losses
            .front()
            .is_some_and(|t| now.duration_since(*t) > s.quarantine_window)
        {
            h.losses.pop_front();
        }
        if h.losses.len() >= s.quarantine_after {
            let length = s
                .quarantine_base
                .saturating_mul(1u32 << h.level.min(6))
                .min(Duration::from_secs(3600));
            h.level += 1;
            h.losses.clear();
            h.until = Some((now + length, std::time::SystemTime::now() + length));
            tracing::warn!(
                "worker {worker} lost {} jobs in a row: quarantined for {length:?}",
                s.quarantine_after
            );
        }
    }

    pub(super) fn quarantined(st: &HubState, worker: &str) -> bool {
        st.health
            .get(worker)
            .and_then(|h| h.until)
            .is_some_and(|(u, _)| u > Instant::now())
    }

    /// When the worker's quarantine ends (ms since the epoch), if it is in one.
    pub fn quarantined_until(&self, worker: &str) -> Option<i64> {
        let st = self.lock();
        if !Self::quarantined(&st, worker) {
            return None;
        }
        st.health
            .get(worker)
            .and_then(|h| h.until)
            .map(|(_, wall)| {
                wall.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            })
    }
}

impl Hub {
    /// The live counts a metrics scrape shows (queue per builder, jobs
    /// running, workers by state).
    pub fn live_metrics(&self) -> crate::metrics::Live {
        let st = self.lock();
        let mut queued: std::collections::BTreeMap<(String, String), u64> = Default::default();
        for j in &st.queue {
            *queued
                .entry((j.project.clone(), j.builder.clone()))
                .or_default() += 1;
        }
        let mut live = crate::metrics::Live {
            queued: queued.into_iter().collect(),
            ..Default::default()
        };
        for (name, w) in &st.workers {
            live.workers_connected += 1;
            live.jobs_running += w.running.len() as u64;
            live.workers_busy += u64::from(!w.running.is_empty());
            live.workers_paused += u64::from(w.paused);
            live.workers_draining += u64::from(w.draining);
            live.workers_low_disk += u64::from(w.disk.as_ref().is_some_and(|d| d.low.is_some()));
            live.workers_quarantined += u64::from(Self::quarantined(&st, name));
        }
        drop(st);
        live.split_shards_waiting = self.parked_shards() as u64;
        live
    }
}
