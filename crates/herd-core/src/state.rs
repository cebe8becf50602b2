//! States of builds, jobs, attempts and steps, and how a build's state follows
//! from its jobs'.

use serde::{Deserialize, Serialize};

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

string_enum!(
    /// State of a build and of a job.
    RunState {
        Queued => "queued",
        Running => "running",
        Success => "success",
        Failure => "failure",
        Error => "error",
        Cancelled => "cancelled",
        // A shard of a split job that was not needed: the others ran every test.
        Skipped => "skipped",
    }
);

string_enum!(
    /// State of one attempt at running a job on one worker.
    AttemptState {
        Assigned => "assigned",
        Running => "running",
        Success => "success",
        Failure => "failure",
        Error => "error",
        Cancelled => "cancelled",
        Lost => "lost",
    }
);

string_enum!(
    StepState {
        Pending => "pending",
        Running => "running",
        Success => "success",
        Failure => "failure",
        Error => "error",
        Cancelled => "cancelled",
        Skipped => "skipped",
    }
);

impl AttemptState {
    /// Whether the attempt has ended (it is no longer live on its worker).
    pub fn is_finished(self) -> bool {
        !matches!(self, AttemptState::Assigned | AttemptState::Running)
    }
}

impl StepState {
    pub fn is_finished(self) -> bool {
        !matches!(self, StepState::Pending | StepState::Running)
    }
}

impl RunState {
    pub fn is_finished(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }

    /// A build's state from its jobs' states: running while any job is not
    /// finished (queued if none started), then the worst outcome, where
    /// error > failure > cancelled > success (a skipped shard counts as success).
    pub fn of_build(jobs: &[RunState]) -> RunState {
        if jobs.is_empty() {
            return RunState::Error;
        }
        if jobs.iter().any(|j| !j.is_finished()) {
            return if jobs.iter().all(|j| *j == RunState::Queued) {
                RunState::Queued
            } else {
                RunState::Running
            };
        }
        let rank = |s: &RunState| match s {
            RunState::Error => 3,
            RunState::Failure => 2,
            RunState::Cancelled => 1,
            _ => 0,
        };
        match jobs.iter().copied().max_by_key(rank) {
            Some(RunState::Skipped) | None => RunState::Success,
            Some(worst) => worst,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState::*;

    #[test]
    fn build_state_follows_jobs() {
        assert_eq!(RunState::of_build(&[Queued, Queued]), Queued);
        assert_eq!(RunState::of_build(&[Success, Queued]), Running);
        assert_eq!(RunState::of_build(&[Success, Success]), Success);
        assert_eq!(RunState::of_build(&[Success, Failure, Cancelled]), Failure);
        assert_eq!(RunState::of_build(&[Failure, Error]), Error);
        assert_eq!(RunState::of_build(&[Cancelled, Success]), Cancelled);
        assert_eq!(RunState::of_build(&[]), Error);
        assert_eq!(RunState::of_build(&[Success, Skipped]), Success);
        assert_eq!(RunState::of_build(&[Skipped, Failure]), Failure);
    }

    #[test]
    fn names_round_trip() {
        for s in [Queued, Running, Success, Failure, Error, Cancelled] {
            assert_eq!(RunState::parse(s.as_str()), Some(s));
        }
        assert_eq!(AttemptState::parse("lost"), Some(AttemptState::Lost));
        assert_eq!(StepState::parse("bogus"), None);
    }
}
