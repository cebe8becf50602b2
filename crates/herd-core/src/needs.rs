//! `needs:` between the jobs of one build: a job waits until the jobs it
//! needs have ended, then runs or is skipped, by its `if:`. Pure: the
//! server passes the states of the build's jobs and acts on the verdict.

use crate::state::RunState;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// When a job with `needs:` runs, once they have all ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunIf {
    /// Every job it needs succeeded (the default).
    #[default]
    Success,
    /// Some job it needs did not succeed (a job that reports a failure).
    Failure,
    /// Whatever became of them (cleanup, notification).
    Always,
}

impl RunIf {
    pub fn is_success(&self) -> bool {
        *self == RunIf::Success
    }

    pub fn parse(text: &str) -> Option<RunIf> {
        match text {
            "success" => Some(RunIf::Success),
            "failure" => Some(RunIf::Failure),
            "always" => Some(RunIf::Always),
            _ => None,
        }
    }
}

/// What to do with a job that needs others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some job it needs has not ended yet.
    Wait,
    Run,
    /// It will not run; why.
    Skip(String),
}

/// The verdict for a job that needs `needs` (`builder/job` names of its
/// build), given the states of the build's jobs by the same names. A name
/// the build does not have is not waited for. A shard (`job#N`) that was
/// skipped was not needed, which is no failure.
pub fn verdict(needs: &[String], run_if: RunIf, states: &HashMap<String, RunState>) -> Verdict {
    let mut failed: Option<(&str, RunState)> = None;
    for n in needs {
        let Some(&st) = states.get(n) else { continue };
        if !st.is_finished() {
            return Verdict::Wait;
        }
        let passed = st == RunState::Success || (st == RunState::Skipped && n.contains('#'));
        if !passed && failed.is_none() {
            failed = Some((n, st));
        }
    }
    match (failed, run_if) {
        (None, RunIf::Success | RunIf::Always) | (Some(_), RunIf::Failure | RunIf::Always) => {
            Verdict::Run
        }
        (None, RunIf::Failure) => Verdict::Skip(
            "it runs only when a job it needs fails (`if: failure`), and none did".into(),
        ),
        (Some((n, st)), RunIf::Success) => Verdict::Skip(format!(
            "it needs {n}, which ended {st} (`if: always` or `if: failure` would run it anyway)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(s: &[(&str, RunState)]) -> HashMap<String, RunState> {
        s.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_job_waits_then_runs_or_is_skipped_by_its_if() {
        let needs = vec!["a/x".to_string(), "b/main#2".to_string()];
        let running = states(&[("a/x", RunState::Running), ("b/main#2", RunState::Success)]);
        assert_eq!(verdict(&needs, RunIf::Success, &running), Verdict::Wait);
        let ok = states(&[("a/x", RunState::Success), ("b/main#2", RunState::Skipped)]);
        assert_eq!(verdict(&needs, RunIf::Success, &ok), Verdict::Run);
        assert!(matches!(
            verdict(&needs, RunIf::Failure, &ok),
            Verdict::Skip(_)
        ));
        let failed = states(&[("a/x", RunState::Failure), ("b/main#2", RunState::Success)]);
        let Verdict::Skip(why) = verdict(&needs, RunIf::Success, &failed) else {
            panic!("should skip");
        };
        assert!(why.contains("a/x") && why.contains("failure"), "{why}");
        assert_eq!(verdict(&needs, RunIf::Always, &failed), Verdict::Run);
        assert_eq!(verdict(&needs, RunIf::Failure, &failed), Verdict::Run);
        // A skipped job (not a shard) did not succeed: its dependents skip too.
        let skipped = states(&[("a/x", RunState::Skipped)]);
        assert!(matches!(
            verdict(&needs, RunIf::Success, &skipped),
            Verdict::Skip(_)
        ));
        // What the build does not have is not waited for.
        assert_eq!(
            verdict(&needs, RunIf::Success, &HashMap::new()),
            Verdict::Run
        );
    }
}
