//! What workers can do: the wanted probe set, probe results, and why a job
//! waits (per worker, the first requirement it fails).

use super::{Hub, LiveWorker, Outbound};
use crate::store::StoreError;
use herd_core::probe::{is_fact, ProbeSpec};
use herd_core::requirement::{Capabilities, Capability};
use herd_core::schedule;
use herd_proto::{ProbeRequest, ProbeResult, ServerMsg};
use std::collections::BTreeMap;

impl Hub {
    /// Adds the probes a pipeline needs to the wanted set; workers are asked
    /// for the new ones at once.
    pub async fn want_probes(
        &self,
        specs: impl IntoIterator<Item = ProbeSpec>,
    ) -> Result<(), StoreError> {
        let new: Vec<(String, Option<String>)> = {
            let st = self.lock();
            specs
                .into_iter()
                .filter(|p| !is_fact(&p.name))
                .filter(|p| st.probe_set.get(&p.name) != Some(&p.command))
                .map(|p| (p.name, p.command))
                .collect()
        };
        if new.is_empty() {
            return Ok(());
        }
        self.store.set_wanted_probes(&new).await?;
        self.apply_probe_set(new);
        self.tell_peers(super::peers::PeerMsg::Probes);
        Ok(())
    }

    /// Takes these wanted probes (those not wanted already, or with a new
    /// command) and asks the connected workers to run them.
    pub(super) fn apply_probe_set(&self, wanted: Vec<(String, Option<String>)>) {
        let mut st = self.lock();
        let new: Vec<(String, Option<String>)> = wanted
            .into_iter()
            .filter(|(name, command)| st.probe_set.get(name) != Some(command))
            .collect();
        if new.is_empty() {
            return;
        }
        for (name, command) in &new {
            st.probe_set.insert(name.clone(), command.clone());
        }
        // Changed commands must run again: forget old results for them.
        for w in st.workers.values_mut() {
            for (name, _) in &new {
                w.probes.remove(name);
            }
        }
        let probes: Vec<ProbeRequest> = new
            .iter()
            .map(|(name, command)| ProbeRequest {
                name: name.clone(),
                command: command.clone(),
            })
            .collect();
        for w in st.workers.values() {
            let _ = w.tx.send(Outbound::send(ServerMsg::Probe {
                probes: probes.clone(),
                fresh: false,
            }));
        }
    }

    /// A worker reported probe results.
    pub async fn probe_results(
        &self,
        name: &str,
        conn_id: u64,
        results: Vec<ProbeResult>,
    ) -> Result<(), StoreError> {
        self.store.save_probe_results(name, &results).await?;
        {
            let mut st = self.lock();
            if let Some(w) = st.workers.get_mut(name).filter(|w| w.conn_id == conn_id) {
                for r in results {
                    w.probes.insert(r.name.clone(), r);
                }
            }
        }
        self.wake();
        self.changed();
        Ok(())
    }

    /// Asks one worker (or all) to run every wanted probe again. Returns
    /// the workers asked.
    pub fn reprobe(&self, name: Option<&str>) -> Vec<String> {
        let st = self.lock();
        let probes = probe_requests(&st.probe_set);
        st.workers
            .iter()
            .filter(|(n, _)| name.is_none_or(|want| want == n.as_str()))
            .filter(|(_, w)| {
                w.tx.send(Outbound::send(ServerMsg::Probe {
                    probes: probes.clone(),
                    fresh: true,
                }))
                .is_ok()
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Why a job is not running: per connected worker, the first
    /// requirement it fails and what it has.
    pub fn why_not(&self, spec: &herd_core::plan::JobSpec) -> WhyNot {
        let st = self.lock();
        let mut workers: Vec<WorkerWhyNot> = st
            .workers
            .iter()
            .map(|(name, w)| {
                let caps = capabilities(w, &st.probe_set);
                let unmet = schedule::fits(
                    &spec.requires,
                    &spec.trusted_requires,
                    &caps,
                    &trusted_capabilities(w),
                )
                .err()
                .map(|u| u.message);
                let full = w.running.len() as u32 + w.reserved >= w.slots;
                let quarantined = Self::quarantined(&st, name);
                let low_disk = w.disk.as_ref().and_then(|d| d.low.clone());
                let state = match (&unmet, w.draining, w.paused, full) {
                    (Some(_), _, _, _) => Fit::Incapable,
                    (None, true, _, _) => Fit::Draining,
                    (None, _, true, _) => Fit::Paused,
                    _ if quarantined => Fit::Quarantined,
                    _ if low_disk.is_some() => Fit::LowDisk,
                    (None, false, false, true) => Fit::Busy,
                    (None, false, false, false) => Fit::Free,
                };
                WorkerWhyNot {
                    worker: name.clone(),
                    unmet,
                    detail: low_disk.filter(|_| state == Fit::LowDisk),
                    state,
                }
            })
            .collect();
        workers.sort_by(|a, b| a.worker.cmp(&b.worker));
        let capable: Vec<&str> = workers
            .iter()
            .filter(|w| w.unmet.is_none())
            .map(|w| w.worker.as_str())
            .collect();
        // Since the last capable worker went away, when one did.
        let since = if capable.is_empty() {
            st.departed
                .values()
                .filter(|d| {
                    schedule::fits(&spec.requires, &spec.trusted_requires, &d.caps, &d.trusted)
                        .is_ok()
                })
                .map(|d| d.at_ms)
                .max()
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M:%S UTC")))
                .unwrap_or_default()
        } else {
            String::new()
        };
        let summary = if workers.is_empty() {
            format!("no worker is online{since}")
        } else if capable.is_empty() {
            format!("no capable worker online{since}: none of the online workers meets the requirements")
        } else if workers
            .iter()
            .filter(|w| w.unmet.is_none())
            .all(|w| !matches!(w.state, Fit::Busy | Fit::Free))
        {
            let notes: Vec<String> = workers
                .iter()
                .filter(|w| w.unmet.is_none())
                .map(|w| format!("{} ({})", w.worker, w.note()))
                .collect();
            format!("no capable worker takes jobs now: {}", notes.join(", "))
        } else {
            format!("waiting for a free slot on {}", capable.join(", "))
        };
        WhyNot { summary, workers }
    }
}

/// What the requirement matcher sees of a worker: facts, then probe
/// results, then labels (a label wins over a probe of the same name). A
/// wanted probe the worker has not reported yet is unknown.
pub(super) fn capabilities(
    w: &LiveWorker,
    probe_set: &BTreeMap<String, Option<String>>,
) -> Capabilities {
    let mut caps = Capabilities::default();
    for (k, v) in &w.facts {
        caps.set(k.clone(), v.clone());
    }
    for r in w.probes.values() {
        caps.entries.insert(
            r.name.clone(),
            Capability {
                present: r.present,
                value: r.version.clone(),
            },
        );
    }
    for (k, v) in w.labels.iter().chain(&w.server_labels) {
        caps.set(k.clone(), v.clone());
    }
    for name in probe_set.keys() {
        if !caps.entries.contains_key(name) {
            caps.unknown.insert(name.clone());
        }
    }
    caps
}

/// What a job's trusted requirements are matched with: the labels the
/// server gave the worker, nothing it states itself.
pub(super) fn trusted_capabilities(w: &LiveWorker) -> Capabilities {
    let mut caps = Capabilities::default();
    for (k, v) in &w.server_labels {
        caps.set(k.clone(), v.clone());
    }
    caps
}

impl Hub {
    /// The labels the server gives a worker changed (here or on another
    /// server): the live worker takes them, and the queue is looked at again.
    pub async fn reload_server_labels(&self, name: &str) -> Result<(), StoreError> {
        let labels = self.store.worker_labels(name).await?;
        if let Some(w) = self.lock().workers.get_mut(name) {
            w.server_labels = labels;
        }
        self.wake();
        self.changed_here();
        Ok(())
    }

    /// Sets and removes labels the server gives a worker; every server
    /// hears of it.
    pub async fn set_server_labels(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<(), StoreError> {
        self.store.set_worker_labels(name, set, remove).await?;
        self.reload_server_labels(name).await?;
        self.tell_peers(super::peers::PeerMsg::Labels {
            worker: name.to_string(),
        });
        self.changed();
        Ok(())
    }
}

pub(super) fn probe_requests(set: &BTreeMap<String, Option<String>>) -> Vec<ProbeRequest> {
    set.iter()
        .map(|(name, command)| ProbeRequest {
            name: name.clone(),
            command: command.clone(),
        })
        .collect()
}

/// Why a queued job waits, per worker.
#[derive(Debug, Clone)]
pub struct WhyNot {
    /// One line for people: "no worker is online", "every capable worker is busy" ...
    pub summary: String,
    pub workers: Vec<WorkerWhyNot>,
}

#[derive(Debug, Clone)]
pub struct WorkerWhyNot {
    pub worker: String,
    /// None when the worker could run the job (it is busy or paused).
    pub unmet: Option<String>,
    /// More about the state: the worker's own words on its low disk.
    pub detail: Option<String>,
    pub state: Fit,
}

impl WorkerWhyNot {
    /// The state, with its detail when there is one.
    pub fn note(&self) -> String {
        match &self.detail {
            Some(d) => d.clone(),
            None => self.state.as_str().to_string(),
        }
    }
}

/// How a connected worker stands towards a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// It does not meet a requirement.
    Incapable,
    Draining,
    Paused,
    Quarantined,
    /// Its disk is too full: it takes no new jobs until space is freed.
    LowDisk,
    /// Every slot is taken.
    Busy,
    Free,
}

impl Fit {
    pub fn as_str(self) -> &'static str {
        match self {
            Fit::Incapable => "incapable",
            Fit::Draining => "draining",
            Fit::Paused => "paused",
            Fit::Quarantined => "quarantined",
            Fit::LowDisk => "low disk",
            Fit::Busy => "busy",
            Fit::Free => "free",
        }
    }
}
