//! Scheduling decisions: which queued job goes to which worker. Pure: the
//! server passes a snapshot of its queue and workers and applies the result.
//!
//! Rules: higher priority first; within a priority, builders take turns so
//! that one builder with hundreds of queued jobs cannot starve another; a job
//! that no free worker can run is passed over and never holds up the jobs
//! behind it; among capable workers, one that recently ran the same builder
//! (warm workspace) is preferred, then the one with the most free slots.

use crate::requirement::{Capabilities, Requirement, Unmet};
use std::collections::{BTreeMap, HashMap, VecDeque};

#[derive(Debug, Clone)]
pub struct QueuedJob {
    pub job_id: i64,
    /// Fairness key: `project/builder`.
    pub builder: String,
    pub priority: i64,
    pub requires: Vec<Requirement>,
    /// Met by labels the server gave the worker only (see [`WorkerView`]).
    pub trusted_requires: Vec<Requirement>,
    /// The builder's `max_concurrent`: jobs of this builder running at once.
    pub cap: Option<u32>,
    /// Jobs with the same spread key (the shards of one split step) never
    /// run on the same worker at once.
    pub spread: Option<String>,
}

#[derive(Debug, Clone)]
pub struct WorkerView {
    pub name: String,
    pub free_slots: u32,
    /// False while paused, draining or quarantined.
    pub accepting: bool,
    /// Facts, probe results and labels: what `requires` is matched with.
    pub caps: Capabilities,
    /// Labels the server gave the worker (an enrollment token, `herd
    /// workers label`): the only thing `trusted_requires` is matched with.
    pub trusted_caps: Capabilities,
    /// Builders this worker ran recently, most recent first.
    pub recent_builders: Vec<String>,
    /// Spread keys of the jobs it runs now.
    pub spreads: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job_id: i64,
    pub worker: String,
}

/// Whether `worker` satisfies every requirement; the first unmet one's reason otherwise.
pub fn can_run(requires: &[Requirement], caps: &Capabilities) -> Result<(), Unmet> {
    requires.iter().try_for_each(|r| r.check(caps))
}

/// Whether a worker may run a job: its requirements against all the
/// worker has, its trusted requirements against the labels the server
/// gave it alone. The same function places jobs and explains waits.
pub fn fits(
    requires: &[Requirement],
    trusted_requires: &[Requirement],
    caps: &Capabilities,
    trusted_caps: &Capabilities,
) -> Result<(), Unmet> {
    can_run(requires, caps)?;
    can_run(trusted_requires, trusted_caps).map_err(|u| Unmet {
        message: format!(
            "{} (a secret needs it set by the server: `herd workers label`; a label the worker states itself does not count)",
            u.message
        ),
        name: u.name,
    })
}

/// Places queued jobs (given oldest first) on free worker slots. `running`
/// counts the jobs of each builder that run now (for `max_concurrent`).
///
/// The queue may be borrowed views (`&[&QueuedJob]`): the server keeps one
/// per queued job and passes them every pass without copying.
pub fn plan<Q: std::borrow::Borrow<QueuedJob>>(
    queue: &[Q],
    workers: &[WorkerView],
    running: &HashMap<String, u32>,
) -> Vec<Placement> {
    let mut running = running.clone();
    let mut free: Vec<u32> = workers
        .iter()
        .map(|w| if w.accepting { w.free_slots } else { 0 })
        .collect();
    let mut total_free: u64 = free.iter().map(|&f| u64::from(f)).sum();
    let mut spreads: Vec<Vec<String>> = workers.iter().map(|w| w.spreads.clone()).collect();
    let mut placements = Vec::new();
    if total_free == 0 {
        return placements;
    }
    for job in fair_order(queue) {
        if total_free == 0 {
            break;
        }
        let now = running.get(&job.builder).copied().unwrap_or(0);
        if job.cap.is_some_and(|cap| now >= cap) {
            continue;
        }
        let best = workers
            .iter()
            .enumerate()
            .filter(|(i, _)| free[*i] > 0)
            .filter(|(i, _)| job.spread.as_ref().is_none_or(|k| !spreads[*i].contains(k)))
            .filter(|(_, w)| {
                fits(
                    &job.requires,
                    &job.trusted_requires,
                    &w.caps,
                    &w.trusted_caps,
                )
                .is_ok()
            })
            .max_by_key(|(i, w)| {
                let warmth = w
                    .recent_builders
                    .iter()
                    .position(|b| *b == job.builder)
                    .map(|p| usize::MAX - p)
                    .unwrap_or(0);
                (warmth, free[*i], std::cmp::Reverse(*i))
            })
            .map(|(i, _)| i);
        if let Some(i) = best {
            free[i] -= 1;
            total_free -= 1;
            if let Some(k) = &job.spread {
                spreads[i].push(k.clone());
            }
            *running.entry(job.builder.clone()).or_insert(0) += 1;
            placements.push(Placement {
                job_id: job.job_id,
                worker: workers[i].name.clone(),
            });
        }
    }
    placements
}

/// Orders the queue: priority descending, then builders in turn (each
/// builder's jobs keep their queue order).
fn fair_order<Q: std::borrow::Borrow<QueuedJob>>(queue: &[Q]) -> Vec<&QueuedJob> {
    let mut by_priority: BTreeMap<std::cmp::Reverse<i64>, Vec<&QueuedJob>> = BTreeMap::new();
    for job in queue.iter().map(Q::borrow) {
        by_priority
            .entry(std::cmp::Reverse(job.priority))
            .or_default()
            .push(job);
    }
    let mut out = Vec::with_capacity(queue.len());
    for (_, jobs) in by_priority {
        let mut lanes: Vec<(&str, VecDeque<&QueuedJob>)> = Vec::new();
        for job in jobs {
            match lanes.iter_mut().find(|(b, _)| *b == job.builder) {
                Some((_, lane)) => lane.push_back(job),
                None => lanes.push((&job.builder, VecDeque::from([job]))),
            }
        }
        loop {
            let mut any = false;
            for (_, lane) in lanes.iter_mut() {
                if let Some(job) = lane.pop_front() {
                    out.push(job);
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: i64, builder: &str, priority: i64, requires: &[&str]) -> QueuedJob {
        QueuedJob {
            job_id: id,
            builder: builder.into(),
            priority,
            requires: requires
                .iter()
                .map(|r| Requirement::parse(r).unwrap())
                .collect(),
            trusted_requires: vec![],
            cap: None,
            spread: None,
        }
    }

    fn worker(name: &str, slots: u32, facts: &[(&str, &str)]) -> WorkerView {
        let mut caps = Capabilities::default();
        for (k, v) in facts {
            caps.set(*k, *v);
        }
        WorkerView {
            name: name.into(),
            free_slots: slots,
            accepting: true,
            caps,
            trusted_caps: Capabilities::default(),
            recent_builders: vec![],
            spreads: vec![],
        }
    }

    #[test]
    fn unplaceable_job_does_not_block_the_queue() {
        let q = vec![
            job(1, "p/mac", 0, &["os == macos"]),
            job(2, "p/linux", 0, &[]),
        ];
        let w = vec![worker("a", 1, &[("os", "linux")])];
        assert_eq!(
            plan(&q, &w, &HashMap::new()),
            vec![Placement {
                job_id: 2,
                worker: "a".into()
            }]
        );
    }

    #[test]
    fn builders_take_turns() {
        let mut q: Vec<_> = (0..100).map(|i| job(i, "p/big", 0, &[])).collect();
        q.push(job(1000, "p/small", 0, &[]));
        let w = vec![worker("a", 2, &[])];
        let ids: Vec<_> = plan(&q, &w, &HashMap::new())
            .into_iter()
            .map(|p| p.job_id)
            .collect();
        assert_eq!(ids, vec![0, 1000]);
    }

    #[test]
    fn priority_goes_first() {
        let q = vec![job(1, "p/a", 0, &[]), job(2, "p/b", 5, &[])];
        let w = vec![worker("a", 1, &[])];
        assert_eq!(plan(&q, &w, &HashMap::new())[0].job_id, 2);
    }

    #[test]
    fn warm_worker_is_preferred_and_paused_ones_skipped() {
        let q = vec![job(1, "p/a", 0, &[])];
        let mut cold = worker("cold", 4, &[]);
        cold.recent_builders = vec!["p/other".into()];
        let mut warm = worker("warm", 1, &[]);
        warm.recent_builders = vec!["p/x".into(), "p/a".into()];
        assert_eq!(
            plan(&q, &[cold.clone(), warm.clone()], &HashMap::new())[0].worker,
            "warm"
        );
        warm.accepting = false;
        assert_eq!(plan(&q, &[cold, warm], &HashMap::new())[0].worker, "cold");
    }

    #[test]
    fn a_builder_cap_limits_its_running_jobs() {
        let mut q: Vec<_> = (0..5).map(|i| job(i, "p/capped", 0, &[])).collect();
        for j in &mut q {
            j.cap = Some(2);
        }
        q.push(job(9, "p/free", 0, &[]));
        let w = vec![worker("a", 10, &[])];
        let ids: Vec<_> = plan(&q, &w, &HashMap::new())
            .into_iter()
            .map(|p| p.job_id)
            .collect();
        assert_eq!(ids, vec![0, 9, 1]);
        let running = HashMap::from([("p/capped".to_string(), 2)]);
        let ids: Vec<_> = plan(&q, &w, &running)
            .into_iter()
            .map(|p| p.job_id)
            .collect();
        assert_eq!(ids, vec![9]);
    }

    #[test]
    fn slots_are_never_overfilled() {
        let q: Vec<_> = (0..10).map(|i| job(i, "p/a", 0, &[])).collect();
        let w = vec![worker("a", 2, &[]), worker("b", 3, &[])];
        let p = plan(&q, &w, &HashMap::new());
        assert_eq!(p.len(), 5);
        assert_eq!(p.iter().filter(|p| p.worker == "a").count(), 2);
    }

    #[test]
    fn a_trusted_requirement_is_met_by_a_server_label_only() {
        let mut j = job(1, "p/release", 0, &[]);
        j.trusted_requires = vec![Requirement::parse("trusted == yes").unwrap()];
        // States the label itself: not enough.
        let stated = worker("stated", 1, &[("trusted", "yes")]);
        assert!(plan(
            std::slice::from_ref(&j),
            std::slice::from_ref(&stated),
            &HashMap::new()
        )
        .is_empty());
        let e = fits(
            &j.requires,
            &j.trusted_requires,
            &stated.caps,
            &stated.trusted_caps,
        )
        .unwrap_err();
        assert!(e.message.contains("set by the server"), "{}", e.message);
        let mut given = worker("given", 1, &[]);
        given.trusted_caps.set("trusted", "yes");
        assert_eq!(
            plan(&[j], &[stated, given], &HashMap::new())[0].worker,
            "given"
        );
    }

    #[test]
    fn shards_of_one_split_spread_over_workers() {
        let mut q: Vec<_> = (0..4).map(|i| job(i, "p/a", 0, &[])).collect();
        for j in &mut q {
            j.spread = Some("build1/tests".into());
        }
        let mut busy = worker("busy", 4, &[]);
        busy.spreads = vec!["build1/tests".into()];
        let w = vec![worker("a", 4, &[]), worker("b", 4, &[]), busy];
        let p = plan(&q, &w, &HashMap::new());
        let mut on: Vec<&str> = p.iter().map(|p| p.worker.as_str()).collect();
        on.sort();
        assert_eq!(on, ["a", "b"], "one shard per worker, none where one runs");
    }
}
