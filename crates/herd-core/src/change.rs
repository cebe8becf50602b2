//! Changes: which commits of a branch become builds, and which builders a
//! change wakes (branch and path filters, `[skip ci]`). Pure: the server
//! gathers the facts from git and applies the answers.

use globset::{Glob, GlobBuilder, GlobMatcher};

/// What herd knows about one change when it decides what to build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeFacts {
    pub branch: Option<String>,
    /// Files touched since the last built revision of the branch; `None`
    /// when unknown (a new branch): then path filters do not hold it back.
    pub files: Option<Vec<String>>,
}

/// A commit message that asks not to be built.
pub fn skip_requested(message: &str) -> Option<&'static str> {
    const MARKERS: [&str; 6] = [
        "[skip ci]",
        "[ci skip]",
        "[no ci]",
        "[skip herd]",
        "[herd skip]",
        "***NO_CI***",
    ];
    let lower = message.to_ascii_lowercase();
    MARKERS
        .into_iter()
        .find(|m| lower.contains(&m.to_ascii_lowercase()))
}

/// Compiles one glob of a `branches:` or `paths:` list (`!` negates).
/// `*` stays within one path segment, `**` crosses them.
pub fn compile_glob(pattern: &str) -> Result<(bool, GlobMatcher), String> {
    let (negated, body) = match pattern.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    if body.is_empty() {
        return Err("an empty pattern matches nothing".into());
    }
    let glob: Glob = GlobBuilder::new(body)
        .literal_separator(true)
        .build()
        .map_err(|e| e.kind().to_string())?;
    Ok((negated, glob.compile_matcher()))
}

/// Whether `value` is selected by an ordered list of globs: the last
/// pattern that matches decides (`!` excludes), as in GitHub Actions.
/// Patterns were validated when herd.yml was parsed; one that does not
/// compile selects nothing.
pub fn globs_select(patterns: &[String], value: &str) -> bool {
    let mut selected = false;
    for p in patterns {
        if let Ok((negated, m)) = compile_glob(p) {
            if m.is_match(value) {
                selected = !negated;
            }
        }
    }
    selected
}

/// Why a builder does not take a change, or None when it does.
pub fn builder_skips(
    branches: &[String],
    paths: &[String],
    change: &ChangeFacts,
) -> Option<String> {
    if !branches.is_empty() {
        if let Some(branch) = &change.branch {
            if !globs_select(branches, branch) {
                return Some(format!("branch `{branch}` is not in its `branches:`"));
            }
        }
    }
    if !paths.is_empty() {
        if let Some(files) = &change.files {
            if !files.iter().any(|f| globs_select(paths, f)) {
                return Some(format!(
                    "none of the {} changed file(s) is in its `paths:`",
                    files.len()
                ));
            }
        }
    }
    None
}

/// New commits of a branch, newest first, as `git rev-list` gives them.
/// Which of them become changes: the newest only when collapsing, else
/// each (oldest first), at most `limit` of the newest.
pub fn commits_to_build(new_commits: &[String], collapse: bool, limit: usize) -> Vec<String> {
    if collapse {
        return new_commits.first().cloned().into_iter().collect();
    }
    let mut picked: Vec<String> = new_commits.iter().take(limit.max(1)).cloned().collect();
    picked.reverse();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn skip_markers_anywhere_in_the_message_any_case() {
        assert_eq!(skip_requested("fix typo [skip ci]"), Some("[skip ci]"));
        assert_eq!(skip_requested("docs\n\nbody [CI SKIP]"), Some("[ci skip]"));
        assert_eq!(skip_requested("skip ci please"), None);
        assert_eq!(skip_requested(""), None);
    }

    #[test]
    fn star_stays_in_one_segment_and_double_star_crosses() {
        assert!(globs_select(&v(&["release/*"]), "release/1.0"));
        assert!(!globs_select(&v(&["release/*"]), "release/1.0/hotfix"));
        assert!(globs_select(&v(&["release/**"]), "release/1.0/hotfix"));
        assert!(globs_select(&v(&["src/**"]), "src/a/b.rs"));
        assert!(!globs_select(&v(&["*.md"]), "docs/a.md"));
        assert!(globs_select(&v(&["**/*.md"]), "docs/a.md"));
        assert!(globs_select(&v(&["**/*.md"]), "README.md"));
    }

    #[test]
    fn the_last_matching_pattern_decides() {
        let p = v(&["src/**", "!src/vendor/**"]);
        assert!(globs_select(&p, "src/main.rs"));
        assert!(!globs_select(&p, "src/vendor/x.rs"));
        let p = v(&["!docs/**", "docs/important.md"]);
        assert!(globs_select(&p, "docs/important.md"));
        assert!(!globs_select(&p, "docs/other.md"));
    }

    #[test]
    fn filters_explain_why_a_builder_skips() {
        let change = ChangeFacts {
            branch: Some("feature/x".into()),
            files: Some(v(&["docs/a.md"])),
        };
        assert!(builder_skips(&v(&["main"]), &[], &change)
            .unwrap()
            .contains("feature/x"));
        assert!(builder_skips(&[], &v(&["src/**"]), &change)
            .unwrap()
            .contains("1 changed file"));
        assert_eq!(
            builder_skips(&v(&["feature/*"]), &v(&["docs/**"]), &change),
            None
        );
        // Unknown branch or files hold nothing back.
        assert_eq!(
            builder_skips(&v(&["main"]), &v(&["src/**"]), &ChangeFacts::default()),
            None
        );
    }

    #[test]
    fn bad_globs_are_reported() {
        assert!(compile_glob("src/[").is_err());
        assert!(compile_glob("!").is_err());
        assert!(compile_glob("!src/**").unwrap().0);
    }

    #[test]
    fn collapse_builds_the_newest_else_each_oldest_first() {
        let c = v(&["c3", "c2", "c1"]);
        assert_eq!(commits_to_build(&c, true, 10), v(&["c3"]));
        assert_eq!(commits_to_build(&c, false, 10), v(&["c1", "c2", "c3"]));
        assert_eq!(commits_to_build(&c, false, 2), v(&["c2", "c3"]));
        assert!(commits_to_build(&[], true, 10).is_empty());
    }

    proptest! {
        #[test]
        fn any_pattern_and_value_never_panic(p in ".{0,20}", s in ".{0,40}") {
            let _ = globs_select(std::slice::from_ref(&p), &s);
            let _ = compile_glob(&p);
            let _ = skip_requested(&s);
        }

        #[test]
        fn collapse_never_builds_more_than_one(n in 0usize..20) {
            let commits: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            prop_assert!(commits_to_build(&commits, true, 50).len() <= 1);
            prop_assert_eq!(commits_to_build(&commits, false, 50).len(), n);
        }
    }
}
