//! Splitting one test suite over several workers by measured timings: the
//! server-side queue of a split step. Pure: the server feeds it the test list
//! and known timings, asks it for batches as workers ask, and tells it
//! about lost batches.
//!
//! Rules (the splitting issue):
//! * longest tests first; a test never seen before is estimated at the
//!   median of the known ones and goes early;
//! * batches are sized from what is left: about `remaining / (2 x workers)`
//!   of estimated time, so large at first and small at the end, but never
//!   under the runner's start-up cost times [`MIN_BATCH_FACTOR`] unless
//!   what is left, spread over every worker, is less;
//! * a lost batch goes back to the front of the queue; a batch lost on two
//!   different workers is halved; a single test lost on two workers fails
//!   as "worker lost while running".

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};

mod state;
pub use state::*;

/// A batch is never planned shorter than this many start-ups of the runner.
pub const MIN_BATCH_FACTOR: f64 = 2.0;
/// Share of the suite the first round of batches hands out, with every
/// timing known, and with none known; later rounds hand out this share of
/// what is left, with every timing known and with none. Each round costs
/// every worker a runner start-up: with known timings the first round
/// balances the load and one more round evens out the rest; with guessed
/// ones, rounds halve what is left so that a surprise lands early.
pub const FIRST_ROUND_KNOWN: f64 = 0.9;
pub const FIRST_ROUND_UNKNOWN: f64 = 0.5;
pub const LATER_ROUNDS_KNOWN: f64 = 1.0;
pub const LATER_ROUNDS_UNKNOWN: f64 = 0.5;
/// Estimate for tests when nothing at all is known.
pub const DEFAULT_ESTIMATE_SECS: f64 = 1.0;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: u64,
    pub tests: Vec<String>,
    /// Workers this batch (or the batch it came from) was lost on.
    pub lost_on: BTreeSet<String>,
    pub estimate_secs: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    tests: Vec<String>,
    lost_on: BTreeSet<String>,
    /// Workers that should not get these tests while another can take
    /// them: where they were lost, or where they failed (a retry goes elsewhere).
    avoid: BTreeSet<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitQueue {
    /// Returned batches, served before fresh tests.
    returned: VecDeque<Pending>,
    /// Fresh tests, longest estimate first.
    fresh: VecDeque<String>,
    estimates: HashMap<String, f64>,
    workers: usize,
    startup_secs: f64,
    next_id: u64,
    /// Share of the tests whose timing is known.
    known_share: f64,
    /// Tests with no timing of their own: estimated at `guess`, which
    /// follows the mean of what this run has measured so far.
    guessed: BTreeSet<String>,
    guess: f64,
    observed: (f64, u64),
    /// Batches left in the current round, and their size.
    round_left: usize,
    round_target: f64,
}

impl SplitQueue {
    /// `timings`: known seconds per test id (others get the median).
    pub fn new(
        tests: Vec<String>,
        timings: &HashMap<String, f64>,
        workers: usize,
        startup_secs: f64,
    ) -> SplitQueue {
        let mut known: Vec<f64> = tests
            .iter()
            .filter_map(|t| timings.get(t).copied())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .collect();
        known.sort_by(|a, b| a.total_cmp(b));
        let median = if known.is_empty() {
            DEFAULT_ESTIMATE_SECS
        } else {
            known[known.len() / 2]
        };
        let mut estimates = HashMap::with_capacity(tests.len());
        let mut unknown = Vec::new();
        let mut seen = BTreeSet::new();
        let mut ordered = Vec::with_capacity(tests.len());
        for t in tests {
            if !seen.insert(t.clone()) {
                continue; // a test id listed twice runs once
            }
            match timings
                .get(&t)
                .copied()
                .filter(|v| v.is_finite() && *v >= 0.0)
            {
                Some(v) => {
                    estimates.insert(t.clone(), v);
                    ordered.push(t);
                }
                None => {
                    estimates.insert(t.clone(), median);
                    unknown.push(t);
                }
            }
        }
        // Longest first; unknown tests early (right after those longer than
        // the median) so that a surprise does not come last.
        ordered.sort_by(|a, b| estimates[b].total_cmp(&estimates[a]).then_with(|| a.cmp(b)));
        let cut = ordered
            .iter()
            .position(|t| estimates[t] < median)
            .unwrap_or(ordered.len());
        let mut fresh: VecDeque<String> = ordered[..cut].iter().cloned().collect();
        fresh.extend(unknown.iter().cloned());
        fresh.extend(ordered[cut..].iter().cloned());
        let guessed: BTreeSet<String> = unknown.iter().cloned().collect();
        let known_share = if estimates.is_empty() {
            0.0
        } else {
            ordered.len() as f64 / estimates.len() as f64
        };
        SplitQueue {
            returned: VecDeque::new(),
            fresh,
            estimates,
            known_share,
            guessed,
            guess: median,
            observed: (0.0, 0),
            workers: workers.max(1),
            startup_secs: startup_secs.max(0.0),
            next_id: 0,
            round_left: 0,
            round_target: 0.0,
        }
    }

    /// A test of this suite took `secs`: tests without a timing of their
    /// own are estimated at the mean of what was measured.
    pub fn observe(&mut self, secs: f64) {
        if !secs.is_finite() || secs < 0.0 || self.guessed.is_empty() {
            return;
        }
        self.observed.0 += secs;
        self.observed.1 += 1;
        self.guess = self.observed.0 / self.observed.1 as f64;
    }

    fn estimate(&self, test: &str) -> f64 {
        if self.guessed.contains(test) {
            return self.guess;
        }
        self.estimates
            .get(test)
            .copied()
            .unwrap_or(DEFAULT_ESTIMATE_SECS)
    }

    /// Estimated seconds of work not handed out yet.
    pub fn remaining_secs(&self) -> f64 {
        let returned: f64 = self
            .returned
            .iter()
            .flat_map(|p| &p.tests)
            .map(|t| self.estimate(t))
            .sum();
        returned + self.fresh.iter().map(|t| self.estimate(t)).sum::<f64>()
    }

    pub fn is_empty(&self) -> bool {
        self.returned.is_empty() && self.fresh.is_empty()
    }

    /// How many tests wait to be handed out.
    pub fn remaining_tests(&self) -> usize {
        self.fresh.len() + self.returned.iter().map(|p| p.tests.len()).sum::<usize>()
    }

    /// Whether something is left that `worker` need not avoid.
    pub fn has_for(&self, worker: &str) -> bool {
        !self.fresh.is_empty() || self.returned.iter().any(|p| !p.avoid.contains(worker))
    }

    /// Drops everything not handed out yet.
    pub fn clear(&mut self) {
        self.returned.clear();
        self.fresh.clear();
    }

    /// Tests to run once more (they failed, or the report did not mention
    /// them), in a batch of their own, preferably not on `worker`.
    pub fn retry(&mut self, tests: Vec<String>, worker: &str) {
        if tests.is_empty() {
            return;
        }
        self.returned.push_back(Pending {
            tests,
            lost_on: BTreeSet::new(),
            avoid: BTreeSet::from([worker.to_string()]),
        });
    }

    /// The next batch for a worker that asks, or None when nothing is left.
    /// A returned batch is not given back to a worker it was lost on when
    /// fresh tests remain for that worker instead.
    pub fn next_batch(&mut self, worker: &str) -> Option<Batch> {
        if let Some(pos) = self.returned.iter().position(|p| !p.avoid.contains(worker)) {
            let p = self.returned.remove(pos)?;
            return Some(self.batch(p.tests, p.lost_on));
        }
        if self.fresh.is_empty() {
            // Only batches lost on this very worker are left: better it than nobody.
            let p = self.returned.pop_front()?;
            return Some(self.batch(p.tests, p.lost_on));
        }
        if self.round_left == 0 {
            // A round is one batch per worker. The first hands out most of
            // the suite when its timings are known (they are reliable), half
            // when they are not; later rounds all of what is left, or half.
            let (known, unknown) = if self.next_id == 0 {
                (FIRST_ROUND_KNOWN, FIRST_ROUND_UNKNOWN)
            } else {
                (LATER_ROUNDS_KNOWN, LATER_ROUNDS_UNKNOWN)
            };
            let share = unknown + (known - unknown) * self.known_share;
            // A batch is worth a few start-ups of the runner, unless what
            // is left, spread over every worker, is less: then each takes
            // its part, which ends soonest.
            let remaining = self.remaining_secs();
            let floor = (self.startup_secs * MIN_BATCH_FACTOR).min(remaining / self.workers as f64);
            self.round_target = (remaining * share / self.workers as f64).max(floor);
            self.round_left = self.workers;
        }
        self.round_left -= 1;
        let target = self.round_target;
        // First fit, longest first: a test too long for what is left of
        // the batch stays for a later one, smaller ones fill the gap. Only
        // what is looked at moves (O(batch), not O(suite)).
        let mut tests = Vec::new();
        let mut passed_over = Vec::new();
        let mut total = 0.0;
        // At least one test: a batch of tests measured at 0 s is not empty.
        while tests.is_empty() || total < target {
            let Some(t) = self.fresh.pop_front() else {
                break;
            };
            let e = self.estimate(&t);
            if tests.is_empty() || total + e <= target {
                total += e;
                tests.push(t);
            } else {
                passed_over.push(t);
            }
        }
        for t in passed_over.into_iter().rev() {
            self.fresh.push_front(t);
        }
        // After the round's last batch, a rest shorter than a batch worth
        // a start-up rides along: it would cost a worker another start-up
        // in a round of its own. (Within a round, idle workers take it.)
        if self.round_left == 0 && self.fresh_secs_below(self.startup_secs * MIN_BATCH_FACTOR) {
            tests.extend(self.fresh.drain(..));
        }
        Some(self.batch(tests, BTreeSet::new()))
    }

    /// Whether the fresh tests sum to less than `limit` seconds (stops
    /// counting at the limit).
    fn fresh_secs_below(&self, limit: f64) -> bool {
        let mut sum = 0.0;
        for t in &self.fresh {
            sum += self.estimate(t);
            if sum >= limit {
                return false;
            }
        }
        true
    }

    /// Undoes handing out `batch`: its tests go back to the front. For a
    /// replay that finds the planner chose otherwise than the log says.
    pub fn put_back(&mut self, batch: Batch) {
        self.returned.push_front(Pending {
            tests: batch.tests,
            avoid: BTreeSet::new(),
            lost_on: batch.lost_on,
        });
    }

    /// Hands out exactly batch `id` with `tests` (as a log recorded it),
    /// wherever in the queue they are. O(queue): only for a replay whose
    /// planner chose otherwise (a log written by another release).
    pub fn take_exact(&mut self, id: u64, tests: &[String]) -> Batch {
        let wanted: BTreeSet<&str> = tests.iter().map(String::as_str).collect();
        self.fresh.retain(|t| !wanted.contains(t.as_str()));
        let mut lost_on = BTreeSet::new();
        for p in &mut self.returned {
            let before = p.tests.len();
            p.tests.retain(|t| !wanted.contains(t.as_str()));
            if p.tests.len() != before {
                lost_on.extend(p.lost_on.iter().cloned());
            }
        }
        self.returned.retain(|p| !p.tests.is_empty());
        self.next_id = self.next_id.max(id);
        Batch {
            id,
            estimate_secs: tests.iter().map(|t| self.estimate(t)).sum(),
            tests: tests.to_vec(),
            lost_on,
        }
    }

    fn batch(&mut self, tests: Vec<String>, lost_on: BTreeSet<String>) -> Batch {
        self.next_id += 1;
        let estimate_secs = tests.iter().map(|t| self.estimate(t)).sum();
        Batch {
            id: self.next_id,
            tests,
            lost_on,
            estimate_secs,
        }
    }

    /// A batch's worker was lost. Returns the tests that fail as "worker
    /// lost while running" (a single test lost on two different workers);
    /// the rest go back to the front of the queue, halved when the batch
    /// has now been lost on two different workers.
    pub fn lost(&mut self, batch: Batch, worker: &str) -> Vec<String> {
        let mut lost_on = batch.lost_on;
        lost_on.insert(worker.to_string());
        if lost_on.len() < 2 {
            self.returned.push_front(Pending {
                tests: batch.tests,
                avoid: lost_on.clone(),
                lost_on,
            });
            return Vec::new();
        }
        if batch.tests.len() <= 1 {
            return batch.tests;
        }
        let mut first = batch.tests;
        let second = first.split_off(first.len() / 2);
        // Each half starts afresh: it has not been lost as a half yet.
        for tests in [second, first] {
            self.returned.push_front(Pending {
                tests,
                lost_on: BTreeSet::new(),
                avoid: BTreeSet::new(),
            });
        }
        Vec::new()
    }
}

/// Makespan of a greedy simulation: `workers` workers each take the next
/// batch when free; a batch costs `startup` plus its tests' real durations.
/// For tests and the benchmark; pure.
pub fn simulate(
    queue: &mut SplitQueue,
    real: &HashMap<String, f64>,
    workers: usize,
    startup: f64,
) -> f64 {
    let mut free_at = vec![0.0f64; workers.max(1)];
    let names: Vec<String> = (0..free_at.len()).map(|i| format!("w{i}")).collect();
    loop {
        let (i, t) = free_at
            .iter()
            .copied()
            .enumerate()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or((0, 0.0));
        let Some(batch) = queue.next_batch(&names[i]) else {
            break;
        };
        let cost: f64 = startup
            + batch
                .tests
                .iter()
                .map(|x| real.get(x).copied().unwrap_or(0.0))
                .sum::<f64>();
        free_at[i] = t + cost;
    }
    free_at.into_iter().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i:03}")).collect()
    }

    /// Log-normal-ish durations from a fixed seed: many short, a few long.
    fn durations(n: usize) -> HashMap<String, f64> {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        ids(n)
            .into_iter()
            .map(|id| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let u = (seed % 10_000) as f64 / 10_000.0;
                let z = (u - 0.5) * 4.0; // roughly -2..2
                (id, (0.1f64).max((z * 0.9).exp() * 0.08))
            })
            .collect()
    }

    #[test]
    fn every_test_is_handed_out_exactly_once() {
        let d = durations(400);
        let mut q = SplitQueue::new(ids(400), &d, 4, 0.2);
        let mut seen = Vec::new();
        while let Some(b) = q.next_batch("w") {
            assert!(!b.tests.is_empty());
            seen.extend(b.tests);
        }
        seen.sort();
        assert_eq!(seen, ids(400));
    }

    #[test]
    fn batches_shrink_towards_the_end_and_longest_go_first() {
        let d = durations(400);
        let mut q = SplitQueue::new(ids(400), &d, 4, 0.05);
        let first = q.next_batch("w").unwrap();
        let longest = d.values().copied().fold(0.0, f64::max);
        assert!((d[&first.tests[0]] - longest).abs() < 1e-9);
        let mut sizes = vec![first.estimate_secs];
        while let Some(b) = q.next_batch("w") {
            sizes.push(b.estimate_secs);
        }
        let half = sizes.len() / 2;
        let early: f64 = sizes[..half].iter().sum::<f64>() / half as f64;
        let late: f64 = sizes[half..].iter().sum::<f64>() / (sizes.len() - half) as f64;
        assert!(late < early, "early {early}, late {late}");
        assert!(
            sizes[..sizes.len() - 1]
                .iter()
                .all(|s| *s >= 0.1 - 1e-9 || *s >= longest),
            "no batch under 2 start-ups"
        );
    }

    #[test]
    fn unknown_tests_get_the_median_and_go_early() {
        let timings = HashMap::from([
            ("a".to_string(), 10.0),
            ("b".to_string(), 1.0),
            ("c".to_string(), 0.1),
        ]);
        let q = SplitQueue::new(
            vec!["c".into(), "new".into(), "a".into(), "b".into()],
            &timings,
            2,
            0.0,
        );
        let order: Vec<&str> = q.fresh.iter().map(String::as_str).collect();
        assert_eq!(order, ["a", "b", "new", "c"]);
        assert_eq!(q.estimate("new"), 1.0);
    }

    #[test]
    fn lost_batches_come_back_then_halve_then_fail() {
        let mut q = SplitQueue::new(ids(4), &HashMap::new(), 1, 100.0);
        let b = q.next_batch("w1").unwrap();
        assert_eq!(b.tests.len(), 4, "one worker, big start-up: one batch");
        assert!(q.lost(b, "w1").is_empty());
        // Back first, but not to the worker it was lost on while another asks.
        let again = q.next_batch("w2").unwrap();
        assert_eq!(again.tests.len(), 4);
        assert!(
            q.lost(again, "w2").is_empty(),
            "lost on two workers: halved"
        );
        let h1 = q.next_batch("w3").unwrap();
        let h2 = q.next_batch("w3").unwrap();
        assert_eq!((h1.tests.len(), h2.tests.len()), (2, 2));
        let mut single = SplitQueue::new(vec!["killer".into()], &HashMap::new(), 2, 0.0);
        let b = single.next_batch("w1").unwrap();
        assert!(single.lost(b, "w1").is_empty());
        let b = single.next_batch("w2").unwrap();
        assert_eq!(
            single.lost(b, "w2"),
            vec!["killer".to_string()],
            "a test that kills its machine cannot loop"
        );
        assert!(single.is_empty());
    }

    #[test]
    fn known_timings_give_a_makespan_near_the_lower_bound() {
        let d = durations(400);
        let total: f64 = d.values().sum();
        let longest = d.values().copied().fold(0.0, f64::max);
        for workers in [2, 4, 8] {
            let mut q = SplitQueue::new(ids(400), &d, workers, 0.05);
            let makespan = simulate(&mut q, &d, workers, 0.05);
            let bound = (total / workers as f64).max(longest);
            eprintln!(
                "{workers} workers: makespan {makespan:.2}, bound {bound:.2}, ratio {:.3}",
                makespan / bound
            );
            assert!(
                makespan / bound <= 1.15,
                "{workers} workers: {makespan:.2} vs bound {bound:.2}"
            );
            // A naive equal-count split for comparison is worse or equal.
            let per = 400 / workers;
            let naive = ids(400)
                .chunks(per)
                .map(|c| 0.05 + c.iter().map(|t| d[t]).sum::<f64>())
                .fold(0.0, f64::max);
            assert!(
                makespan <= naive + 1e-9,
                "{workers}: {makespan} vs naive {naive}"
            );
        }
    }

    #[test]
    fn a_long_test_that_does_not_fit_leaves_room_for_short_ones() {
        let timings = HashMap::from([
            ("long1".to_string(), 6.0),
            ("long2".to_string(), 5.0),
            ("s1".to_string(), 1.0),
            ("s2".to_string(), 1.0),
            ("s3".to_string(), 1.0),
        ]);
        let ids: Vec<String> = timings.keys().cloned().collect();
        // Known timings: the first round hands out 90% of 14 s over 2 workers.
        let mut q = SplitQueue::new(ids, &timings, 2, 0.0);
        let b = q.next_batch("w1").unwrap();
        assert_eq!(
            b.tests,
            ["long1"],
            "6 s fills most of 6.3 s; long2 does not fit"
        );
        let b = q.next_batch("w2").unwrap();
        assert_eq!(b.tests, ["long2", "s1"], "5 + 1 fits 6.3");
    }

    #[test]
    fn a_rest_too_short_for_a_batch_of_its_own_rides_along() {
        let timings = HashMap::from([
            ("a".to_string(), 5.0),
            ("b".to_string(), 5.0),
            ("c".to_string(), 0.1),
        ]);
        let ids: Vec<String> = timings.keys().cloned().collect();
        // Start-up 1 s: a batch of `c` alone (0.1 s) would cost 1.1 s.
        let mut q = SplitQueue::new(ids, &timings, 2, 1.0);
        let first = q.next_batch("w1").unwrap();
        let second = q.next_batch("w2").unwrap();
        assert_eq!(first.tests, ["a"]);
        assert_eq!(
            second.tests,
            ["b", "c"],
            "c rides along with the last batch"
        );
        assert!(q.is_empty());
    }

    #[test]
    fn the_tail_spreads_over_every_worker_even_when_the_runner_starts_slowly() {
        let ids: Vec<String> = (0..80).map(|i| format!("t{i:02}")).collect();
        let timings: HashMap<String, f64> = ids.iter().map(|t| (t.clone(), 0.3)).collect();
        // Start-up 1 s: two start-ups (2 s) is more than each worker's
        // share of the last 10% (0.3 s). One batch of it all would end
        // 2.1 s later than eight small ones.
        let mut q = SplitQueue::new(ids, &timings, 8, 1.0);
        let first: Vec<Batch> = (0..8)
            .map(|i| q.next_batch(&format!("w{i}")).unwrap())
            .collect();
        assert!(first.iter().all(|b| b.tests.len() == 9), "{first:?}");
        let tail: Vec<Batch> = (0..8)
            .map(|i| q.next_batch(&format!("w{i}")).unwrap())
            .collect();
        assert!(tail.iter().all(|b| b.tests.len() == 1), "{tail:?}");
        assert!(q.is_empty());
    }

    #[test]
    fn tests_without_timings_follow_what_this_run_measured() {
        let mut q = SplitQueue::new(ids(10), &HashMap::new(), 2, 0.0);
        assert_eq!(q.remaining_secs(), 10.0 * DEFAULT_ESTIMATE_SECS);
        q.observe(0.1);
        q.observe(0.3);
        assert!((q.remaining_secs() - 2.0).abs() < 1e-9);
    }
}
