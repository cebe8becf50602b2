//! Splitting a suite: makespan of the server's real batching rules
//! (`herd_core::split::SplitState`) over a synthetic suite, against the lower
//! bound max(total / N, longest test) and a naive equal-count split.
//!
//! The workers are simulated (an event loop over virtual time), the
//! decisions are the server's own code: what a split step does between its
//! batches is what is measured here, without machine noise.

use herd_core::split::{BatchReport, Next, RunOutcome, SplitState, TestRun};
use std::collections::HashMap;

/// Start-up cost of the runner per batch (a Python test runner), seconds.
const STARTUP: f64 = 0.3;
/// How long a silently dead worker's batch takes to come back (the
/// default heartbeat timeout).
const HEARTBEAT_TIMEOUT: f64 = 15.0;

/// 400 tests, log-normal durations with a few long ones, ~40 s in all.
fn suite() -> (Vec<String>, HashMap<String, f64>) {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 1_000_000) as f64 / 1_000_000.0
    };
    let ids: Vec<String> = (0..400)
        .map(|i| format!("tests/test_{:03}.py::test", i))
        .collect();
    let mut d = HashMap::new();
    for (i, id) in ids.iter().enumerate() {
        // Box-Muller for a normal, then exp: log-normal around 0.05 s.
        let (u1, u2) = (next().max(1e-9), next());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let mut secs = (z * 1.0).exp() * 0.05;
        if i % 97 == 3 {
            secs += 3.0; // a few long ones
        }
        d.insert(id.clone(), secs);
    }
    (ids, d)
}

/// Simulates `workers` workers on the server's rules; `kill`: worker 0
/// dies at that time and its batch comes back a heartbeat timeout later.
fn makespan(
    ids: &[String],
    real: &HashMap<String, f64>,
    known: &HashMap<String, f64>,
    workers: usize,
    kill: Option<f64>,
) -> (f64, f64) {
    let mut lost_cost = 0.0;
    let mut state = SplitState::new(ids.to_vec(), known, workers, STARTUP, false);
    // (free at, running batch (id, ends at))
    let mut at = vec![0.0f64; workers];
    let mut holding: Vec<Option<(u64, f64, Vec<String>)>> = vec![None; workers];
    let mut dead = vec![false; workers];
    let mut release_at: Option<f64> = None;
    let mut end: f64 = 0.0;
    for _ in 0..1_000_000 {
        // The next event: the earliest free or finishing live worker.
        let Some(w) = (0..workers)
            .filter(|w| !dead[*w])
            .min_by(|a, b| at[*a].total_cmp(&at[*b]))
        else {
            break;
        };
        let now = at[w];
        if let (Some(k), false) = (kill, dead[0]) {
            if k <= now {
                dead[0] = true;
                lost_cost = holding[0]
                    .as_ref()
                    .map(|(_, _, t)| STARTUP + t.iter().map(|x| real[x]).sum::<f64>())
                    .unwrap_or(0.0);
                release_at = Some(k + HEARTBEAT_TIMEOUT);
                continue;
            }
        }
        if let Some(r) = release_at.filter(|r| *r <= now) {
            state.release(1, "killed", (r * 1000.0) as i64);
            release_at = None;
        }
        let ms = (now * 1000.0) as i64;
        if let Some((id, _, tests)) = holding[w].take() {
            let runs = tests
                .iter()
                .map(|t| TestRun {
                    id: t.clone(),
                    outcome: RunOutcome::Passed,
                    secs: real.get(t).copied(),
                    message: None,
                })
                .collect();
            let wall = STARTUP + tests.iter().map(|t| real[t]).sum::<f64>();
            state.report(
                w as i64 + 1,
                &BatchReport {
                    batch: id,
                    exit_code: Some(0),
                    wall_secs: wall,
                    tests: Some(runs),
                },
                ms,
            );
            end = end.max(now);
        }
        match state.next(w as i64 + 1, w as i64 + 1, &format!("w{w}"), ms) {
            Next::Batch { id, tests } => {
                let cost = STARTUP + tests.iter().map(|t| real[t]).sum::<f64>();
                holding[w] = Some((id, now + cost, tests));
                at[w] = now + cost;
                if dead[0] || kill.is_none() || w != 0 {
                    continue;
                }
            }
            Next::Wait => {
                // Wake at the next event (a finish or the release).
                let next = (0..workers)
                    .filter(|o| *o != w && !dead[*o] && holding[*o].is_some())
                    .map(|o| at[o])
                    .chain(release_at)
                    .fold(f64::INFINITY, f64::min);
                at[w] = if next.is_finite() {
                    next.max(now + 0.01)
                } else {
                    now + 0.3
                };
            }
            Next::Done { .. } => {
                at[w] = f64::INFINITY;
                if (0..workers).all(|o| dead[o] || at[o].is_infinite()) {
                    break;
                }
            }
        }
    }
    (end, lost_cost)
}

fn naive(ids: &[String], real: &HashMap<String, f64>, workers: usize) -> f64 {
    let per = ids.len().div_ceil(workers);
    ids.chunks(per)
        .map(|c| STARTUP + c.iter().map(|t| real[t]).sum::<f64>())
        .fold(0.0, f64::max)
}

pub fn run() {
    let (ids, real) = suite();
    let total: f64 = real.values().sum();
    let longest = real.values().copied().fold(0.0, f64::max);
    println!(
        "split: 400 tests, {total:.1} s in all on one worker, longest {longest:.2} s, runner start-up {STARTUP} s per batch"
    );
    println!(
        "  {:>7} {:>9} {:>14} {:>14} {:>14} {:>12} {:>22}",
        "workers", "bound", "known", "first run", "naive split", "killed", "killed target"
    );
    for n in [2usize, 4, 8] {
        let bound = (total / n as f64).max(longest);
        let (known, _) = makespan(&ids, &real, &real, n, None);
        let (first, _) = makespan(&ids, &real, &HashMap::new(), n, None);
        let naive = naive(&ids, &real, n);
        let (killed, lost) = makespan(&ids, &real, &real, n, Some(known / 2.0));
        // The target: fault-free + heartbeat timeout + the lost batch.
        let target = known + HEARTBEAT_TIMEOUT + lost;
        println!(
            "  {n:>7} {bound:>8.2}s {:>8.2}s {:>4.2} {:>8.2}s {:>4.2} {:>8.2}s {:>4.2} {:>8.2}s {:>6.2}s {}",
            known,
            known / bound,
            first,
            first / bound,
            naive,
            naive / bound,
            killed,
            target,
            if killed <= target { "ok" } else { "OVER" }
        );
    }
    println!("  (ratios are makespan / bound; targets: known <= 1.15, first run <= 1.35)");
}
