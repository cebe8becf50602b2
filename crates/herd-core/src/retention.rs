//! What a project keeps (`keep:`) and, from a snapshot of its builds, what
//! the janitor removes: whole builds, or only their logs or artifacts.
//!
//! Pure: the store gives the builds (newest first) and the builds that
//! must stay (the last success and the last failure of each builder and
//! branch), the caller gives the time.

use std::collections::HashSet;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// `keep:` of a project (each field falls back to the server's `keep:`,
/// then to [`KeepPolicy::DEFAULT`]). None: no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Builds finished longer ago than this many days go.
    pub days: Option<u32>,
    /// Only the newest this many builds of the project stay.
    pub builds: Option<u32>,
    /// Logs of builds finished longer ago go (the build row stays).
    pub logs_days: Option<u32>,
    /// Artifacts of builds finished longer ago go (the build row stays).
    pub artifacts_days: Option<u32>,
}

impl KeepPolicy {
    /// What a server keeps when its config says nothing: three months, and
    /// at most a thousand builds per project.
    pub const DEFAULT: KeepPolicy = KeepPolicy {
        days: Some(90),
        builds: Some(1000),
        logs_days: None,
        artifacts_days: None,
    };

    /// Keeps everything for ever (`keep: forever`).
    pub const FOREVER: KeepPolicy = KeepPolicy {
        days: None,
        builds: None,
        logs_days: None,
        artifacts_days: None,
    };

    /// Whether it ever removes anything.
    pub fn removes_anything(&self) -> bool {
        *self != KeepPolicy::FOREVER
    }
}

impl Default for KeepPolicy {
    fn default() -> Self {
        KeepPolicy::DEFAULT
    }
}

/// One build as the janitor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildAge {
    pub id: i64,
    /// None while it is queued or running: such a build always stays.
    pub finished_at: Option<i64>,
    /// Its logs are already gone.
    pub logs_expired: bool,
    /// Its artifacts are already gone.
    pub artifacts_expired: bool,
}

/// What goes, by build id (ascending: the oldest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Builds removed whole (with their jobs, logs and artifacts).
    pub builds: Vec<i64>,
    /// Builds that stay but lose their logs.
    pub logs: Vec<i64>,
    /// Builds that stay but lose their artifacts.
    pub artifacts: Vec<i64>,
}

impl Sweep {
    pub fn is_empty(&self) -> bool {
        self.builds.is_empty() && self.logs.is_empty() && self.artifacts.is_empty()
    }
}

/// What `policy` removes of `builds` (any order) at `now`, never one in
/// `protected` and never an unfinished one.
pub fn sweep(
    policy: &KeepPolicy,
    now_ms: i64,
    builds: &[BuildAge],
    protected: &HashSet<i64>,
) -> Sweep {
    let mut newest_first: Vec<&BuildAge> = builds.iter().collect();
    newest_first.sort_by_key(|b| std::cmp::Reverse(b.id));
    let cutoff = |days: Option<u32>| days.map(|d| now_ms.saturating_sub(i64::from(d) * DAY_MS));
    let (build_cutoff, log_cutoff, artifact_cutoff) = (
        cutoff(policy.days),
        cutoff(policy.logs_days),
        cutoff(policy.artifacts_days),
    );
    let older = |finished: i64, cut: Option<i64>| cut.is_some_and(|c| finished < c);
    let mut out = Sweep::default();
    for (rank, b) in newest_first.iter().enumerate() {
        let Some(finished) = b.finished_at else {
            continue;
        };
        if protected.contains(&b.id) {
            continue;
        }
        let beyond_count = policy.builds.is_some_and(|n| rank >= n as usize);
        if beyond_count || older(finished, build_cutoff) {
            out.builds.push(b.id);
            continue;
        }
        if !b.logs_expired && older(finished, log_cutoff) {
            out.logs.push(b.id);
        }
        if !b.artifacts_expired && older(finished, artifact_cutoff) {
            out.artifacts.push(b.id);
        }
    }
    out.builds.sort_unstable();
    out.logs.sort_unstable();
    out.artifacts.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_000 * DAY_MS;

    fn finished(id: i64, days_ago: i64) -> BuildAge {
        BuildAge {
            id,
            finished_at: Some(NOW - days_ago * DAY_MS),
            logs_expired: false,
            artifacts_expired: false,
        }
    }

    fn policy(days: Option<u32>, builds: Option<u32>) -> KeepPolicy {
        KeepPolicy {
            days,
            builds,
            ..KeepPolicy::FOREVER
        }
    }

    #[test]
    fn the_newest_n_stay_and_the_rest_go_oldest_first() {
        let builds: Vec<BuildAge> = (1..=10).map(|id| finished(id, 0)).collect();
        let s = sweep(&policy(None, Some(3)), NOW, &builds, &HashSet::new());
        assert_eq!(s.builds, [1, 2, 3, 4, 5, 6, 7]);
        assert!(s.logs.is_empty() && s.artifacts.is_empty());
    }

    #[test]
    fn builds_older_than_the_days_go() {
        let builds = [
            finished(1, 100),
            finished(2, 91),
            finished(3, 89),
            finished(4, 1),
        ];
        let s = sweep(&policy(Some(90), None), NOW, &builds, &HashSet::new());
        assert_eq!(s.builds, [1, 2]);
    }

    #[test]
    fn protected_and_unfinished_builds_stay_whatever_their_age() {
        let mut running = finished(2, 500);
        running.finished_at = None;
        let builds = [finished(1, 500), running, finished(3, 500), finished(4, 0)];
        let protected = HashSet::from([3]);
        let s = sweep(&policy(Some(1), Some(1)), NOW, &builds, &protected);
        assert_eq!(s.builds, [1]);
    }

    #[test]
    fn logs_and_artifacts_may_go_before_the_build_and_only_once() {
        let mut done = finished(1, 40);
        done.logs_expired = true;
        let builds = [done, finished(2, 40), finished(3, 10), finished(4, 1)];
        let p = KeepPolicy {
            logs_days: Some(30),
            artifacts_days: Some(7),
            ..KeepPolicy::FOREVER
        };
        let s = sweep(&p, NOW, &builds, &HashSet::new());
        assert!(s.builds.is_empty());
        assert_eq!(s.logs, [2]);
        assert_eq!(s.artifacts, [1, 2, 3]);
    }

    #[test]
    fn forever_removes_nothing() {
        let builds: Vec<BuildAge> = (1..=50).map(|id| finished(id, id * 30)).collect();
        assert!(sweep(&KeepPolicy::FOREVER, NOW, &builds, &HashSet::new()).is_empty());
        assert!(!KeepPolicy::FOREVER.removes_anything());
        assert!(KeepPolicy::DEFAULT.removes_anything());
    }

    proptest! {
        #[test]
        fn a_sweep_never_takes_what_must_stay(
            ages in prop::collection::vec(prop::option::of(0i64..400), 0..80),
            protect in prop::collection::vec(any::<bool>(), 80),
            days in prop::option::of(0u32..200),
            keep in prop::option::of(0u32..40),
        ) {
            let builds: Vec<BuildAge> = ages.iter().enumerate().map(|(i, a)| BuildAge {
                id: i as i64 + 1,
                finished_at: a.map(|d| NOW - d * DAY_MS),
                logs_expired: false,
                artifacts_expired: false,
            }).collect();
            let protected: HashSet<i64> = builds.iter()
                .filter(|b| protect[(b.id - 1) as usize]).map(|b| b.id).collect();
            let s = sweep(&policy(days, keep), NOW, &builds, &protected);
            let gone: HashSet<i64> = s.builds.iter().copied().collect();
            for b in &builds {
                if protected.contains(&b.id) || b.finished_at.is_none() {
                    prop_assert!(!gone.contains(&b.id));
                }
            }
            // The newest `keep` builds stay unless too old.
            if let Some(n) = keep {
                let mut ids: Vec<i64> = builds.iter().map(|b| b.id).collect();
                ids.sort_unstable_by(|a, b| b.cmp(a));
                for id in ids.iter().take(n as usize) {
                    let b = &builds[(*id - 1) as usize];
                    let too_old = days.is_some_and(|d| b.finished_at.is_some_and(|f| f < NOW - i64::from(d) * DAY_MS));
                    prop_assert!(too_old || !gone.contains(id));
                }
            }
            // Nothing finished, unprotected, beyond both limits stays.
            let mut ids: Vec<i64> = builds.iter().map(|b| b.id).collect();
            ids.sort_unstable_by(|a, b| b.cmp(a));
            for (rank, id) in ids.iter().enumerate() {
                let b = &builds[(*id - 1) as usize];
                let beyond = keep.is_some_and(|n| rank >= n as usize);
                if beyond && b.finished_at.is_some() && !protected.contains(id) {
                    prop_assert!(gone.contains(id));
                }
            }
        }
    }
}
