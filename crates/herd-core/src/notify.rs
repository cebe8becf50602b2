//! Notifications: when a finished build is worth a message (`on: failure`,
//! `fixed`, `always`, per branch), and what the message says. Pure: the
//! server gathers the facts, sends, retries and records.

use crate::state::RunState;
use serde::Deserialize;

/// When a notifier speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// The build failed or could not run.
    Failure,
    /// The first success after a failure (of the same project and branch).
    Fixed,
    /// Every finished build (cancelled ones too).
    Always,
}

fn failed(s: RunState) -> bool {
    matches!(s, RunState::Failure | RunState::Error)
}

/// Whether a build that ended in `state` is worth a message, given the
/// state of the build before it on the same branch (None: none before).
pub fn fires(on: &[NotifyOn], state: RunState, previous: Option<RunState>) -> bool {
    if !state.is_finished() {
        return false;
    }
    on.iter().any(|o| match o {
        NotifyOn::Always => true,
        NotifyOn::Failure => failed(state),
        NotifyOn::Fixed => state == RunState::Success && previous.is_some_and(failed),
    })
}

/// What a message is about.
#[derive(Debug, Clone, Default)]
pub struct BuildFacts<'a> {
    pub id: i64,
    pub project: &'a str,
    pub state: Option<RunState>,
    /// Branch, tag, `PR #12`…
    pub origin: &'a str,
    pub revision: Option<&'a str>,
    pub subject: &'a str,
    pub author: &'a str,
    /// `builder/job` of each job that failed or erred.
    pub failed_jobs: Vec<String>,
    pub first_failing_test: Option<&'a str>,
    /// Why the build could not run at all.
    pub error: Option<&'a str>,
    pub link: &'a str,
    /// The build before it failed (then a success is "fixed").
    pub fixed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    pub text: String,
}

/// Longest text of any one line taken from a build (a commit subject, an
/// error, a test id).
const MAX_LINE: usize = 300;
/// Most failed jobs named.
const MAX_JOBS: usize = 20;

fn line(s: &str) -> String {
    let first = s.lines().next().unwrap_or("");
    let mut out: String = first
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LINE)
        .collect();
    if first.chars().count() > MAX_LINE {
        out.push('…');
    }
    out
}

/// The message of a finished build: a subject for an email or a chat's
/// first line, and a plain-text body that names the build, what failed
/// and the link.
pub fn message(f: &BuildFacts<'_>) -> Message {
    let verdict = match f.state {
        Some(RunState::Success) if f.fixed => "fixed",
        Some(RunState::Success) | Some(RunState::Skipped) => "passed",
        Some(RunState::Failure) => "failed",
        Some(RunState::Error) => "could not run",
        Some(RunState::Cancelled) => "was cancelled",
        _ => "is running",
    };
    let at = if f.origin.is_empty() {
        String::new()
    } else {
        format!(" {}", line(f.origin))
    };
    let subject = format!("[herd] {}{at}: build {} {verdict}", line(f.project), f.id);
    let mut text = format!("Build {} of {}{at} {verdict}.\n", f.id, line(f.project));
    if let Some(rev) = f.revision {
        let short: String = rev.chars().take(12).collect();
        text.push_str(&format!("\nCommit:  {short} {}", line(f.subject)));
        if !f.author.is_empty() {
            text.push_str(&format!(" ({})", line(f.author)));
        }
        text.push('\n');
    }
    if let Some(e) = f.error {
        text.push_str(&format!("Why:     {}\n", line(e)));
    }
    if !f.failed_jobs.is_empty() {
        let named: Vec<String> = f
            .failed_jobs
            .iter()
            .take(MAX_JOBS)
            .map(|j| line(j))
            .collect();
        let more = f.failed_jobs.len().saturating_sub(MAX_JOBS);
        text.push_str(&format!("Failed:  {}", named.join(", ")));
        if more > 0 {
            text.push_str(&format!(" and {more} more"));
        }
        text.push('\n');
    }
    if let Some(t) = f.first_failing_test {
        text.push_str(&format!("First failing test: {}\n", line(t)));
    }
    text.push_str(&format!("\n{}\n", f.link));
    Message { subject, text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunState::*;

    #[test]
    fn failure_fixed_and_always_fire_when_they_should() {
        let on = [NotifyOn::Failure, NotifyOn::Fixed];
        assert!(fires(&on, Failure, None));
        assert!(fires(&on, Error, Some(Success)));
        assert!(fires(&on, Success, Some(Failure)), "fixed");
        assert!(!fires(&on, Success, Some(Success)));
        assert!(!fires(&on, Success, None), "a first success fixes nothing");
        assert!(!fires(&on, Cancelled, Some(Failure)));
        assert!(!fires(&on, Running, Some(Failure)), "only finished builds");
        assert!(fires(&[NotifyOn::Always], Cancelled, None));
        assert!(!fires(&[], Failure, None));
    }

    #[test]
    fn the_message_names_the_build_what_failed_and_the_link() {
        let f = BuildFacts {
            id: 42,
            project: "twisted",
            state: Some(Failure),
            origin: "trunk",
            revision: Some("0123456789abcdef0123"),
            subject: "Fix the reactor\n\nlong body",
            author: "glyph",
            failed_jobs: vec!["linux/py312".into(), "osx/main".into()],
            first_failing_test: Some("twisted.test.test_tcp.ListenTests.test_close"),
            error: None,
            link: "https://ci.example.org/builds/42",
            fixed: false,
        };
        let m = message(&f);
        assert_eq!(m.subject, "[herd] twisted trunk: build 42 failed");
        assert!(
            m.text
                .contains("Commit:  0123456789ab Fix the reactor (glyph)"),
            "{}",
            m.text
        );
        assert!(m.text.contains("Failed:  linux/py312, osx/main"));
        assert!(m
            .text
            .contains("First failing test: twisted.test.test_tcp.ListenTests.test_close"));
        assert!(m.text.ends_with("https://ci.example.org/builds/42\n"));
        assert!(!m.text.contains("long body"));
        let fixed = message(&BuildFacts {
            state: Some(Success),
            fixed: true,
            failed_jobs: vec![],
            first_failing_test: None,
            ..f.clone()
        });
        assert_eq!(fixed.subject, "[herd] twisted trunk: build 42 fixed");
        // Control characters from a commit never reach a terminal or a mail header.
        let evil = message(&BuildFacts {
            subject: "a\u{1b}[31mred\r\nBcc: x@y",
            origin: "main\r\nX: y",
            ..f
        });
        assert!(!evil.subject.contains('\r') && !evil.subject.contains('\n'));
        assert!(!evil.text.contains('\u{1b}'));
    }
}
