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
    /// A new tag (then `branch` is None): what builders' `tags:` look at.
    pub tag: Option<String>,
}

/// `tags:` of a builder: whether it builds new tags (the project's
/// `tags:` in the server config says which tags are watched at all).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TagRule {
    /// Branches and tags alike.
    #[default]
    Also,
    /// Tags only (a release builder).
    Only,
    /// Never a tag.
    Never,
}

impl TagRule {
    pub fn is_also(&self) -> bool {
        *self == TagRule::Also
    }
}

/// `pull_requests: {approval: …}` of a project: which pull requests wait
/// for a signed-in user before they are built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// Those from a fork or an author not in `authors:` (and any whose
    /// origin no webhook told).
    #[default]
    Untrusted,
    /// Every pull request.
    All,
    /// None (an untrusted one still gets no secret).
    None,
}

/// What is known of a pull request when its new head is to be built.
#[derive(Debug, Clone, Copy)]
pub struct PullRequestFacts<'a> {
    /// None: no webhook told (the pull request was only polled).
    pub fork: Option<bool>,
    /// The author's login, as the forge's webhook said.
    pub author: Option<&'a str>,
    /// Who approved this head, if anyone did.
    pub approved_by: Option<&'a str>,
}

/// Whether a pull request's head is built now, and as what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullRequestVerdict {
    /// `untrusted`: from a fork or an unknown author (no secrets, only the
    /// workers labelled for it).
    Build { untrusted: bool },
    /// Waits for approval; the reason says why.
    Wait(String),
}

/// Decides a pull request's head: trusted when the webhook said it is
/// from the repository itself or its author is one of `authors`; waits
/// for approval per `approval` unless someone approved this very head.
pub fn pull_request_verdict(
    approval: Approval,
    authors: &[String],
    facts: PullRequestFacts<'_>,
) -> PullRequestVerdict {
    let trusted_author = facts
        .author
        .is_some_and(|a| !a.is_empty() && authors.iter().any(|t| t == a));
    let untrusted = !(facts.fork == Some(false) || trusted_author);
    if facts.approved_by.is_some() {
        return PullRequestVerdict::Build { untrusted };
    }
    let why = match (approval, untrusted) {
        (Approval::None, _) | (Approval::Untrusted, false) => {
            return PullRequestVerdict::Build { untrusted }
        }
        (Approval::All, _) => "the project builds a pull request once someone approves it".into(),
        (Approval::Untrusted, true) => match (facts.fork, facts.author) {
            (Some(true), Some(a)) if !a.is_empty() => {
                format!("it comes from a fork (by {a}): someone signed in approves it first")
            }
            (Some(true), _) => "it comes from a fork: someone signed in approves it first".into(),
            _ => "no webhook said where it comes from: someone signed in approves it first".into(),
        },
    };
    PullRequestVerdict::Wait(why)
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
    tags: TagRule,
    change: &ChangeFacts,
) -> Option<String> {
    match (&change.tag, tags) {
        (Some(tag), TagRule::Never) => {
            return Some(format!("it says `tags: never` and `{tag}` is a tag"))
        }
        (None, TagRule::Only) => return Some("it says `tags: only`".into()),
        // A tag is not a branch: `branches:` does not hold it back.
        (Some(_), _) => return None,
        (None, _) => {}
    }
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
            tag: None,
        };
        let also = TagRule::Also;
        assert!(builder_skips(&v(&["main"]), &[], also, &change)
            .unwrap()
            .contains("feature/x"));
        assert!(builder_skips(&[], &v(&["src/**"]), also, &change)
            .unwrap()
            .contains("1 changed file"));
        assert_eq!(
            builder_skips(&v(&["feature/*"]), &v(&["docs/**"]), also, &change),
            None
        );
        // Unknown branch or files hold nothing back.
        assert_eq!(
            builder_skips(
                &v(&["main"]),
                &v(&["src/**"]),
                also,
                &ChangeFacts::default()
            ),
            None
        );
    }

    #[test]
    fn a_pull_request_waits_unless_it_is_trusted_or_approved() {
        let authors = v(&["alice"]);
        let facts = |fork, author, approved_by| PullRequestFacts {
            fork,
            author,
            approved_by,
        };
        let verdict = |approval, f| pull_request_verdict(approval, &authors, f);
        use PullRequestVerdict::*;
        // The repository's own branch: built, trusted.
        assert_eq!(
            verdict(Approval::Untrusted, facts(Some(false), Some("bob"), None)),
            Build { untrusted: false }
        );
        // A fork: waits, and says who sent it.
        let Wait(why) = verdict(
            Approval::Untrusted,
            facts(Some(true), Some("mallory"), None),
        ) else {
            panic!("a fork waits")
        };
        assert!(why.contains("fork (by mallory)"), "{why}");
        // Only polled: nobody said where it is from.
        assert!(
            matches!(verdict(Approval::Untrusted, facts(None, None, None)), Wait(w) if w.contains("no webhook"))
        );
        // A trusted author's fork: built, trusted.
        assert_eq!(
            verdict(Approval::Untrusted, facts(Some(true), Some("alice"), None)),
            Build { untrusted: false }
        );
        // Approved: built, but a fork stays untrusted.
        assert_eq!(
            verdict(
                Approval::Untrusted,
                facts(Some(true), Some("mallory"), Some("admin"))
            ),
            Build { untrusted: true }
        );
        // `all` holds even the trusted; `none` holds nobody.
        assert!(matches!(
            verdict(Approval::All, facts(Some(false), Some("alice"), None)),
            Wait(_)
        ));
        assert_eq!(
            verdict(Approval::None, facts(Some(true), Some("mallory"), None)),
            Build { untrusted: true }
        );
        // An empty login trusts nobody, even with an empty name listed.
        assert!(matches!(
            pull_request_verdict(
                Approval::Untrusted,
                &v(&[""]),
                facts(Some(true), Some(""), None)
            ),
            Wait(_)
        ));
    }

    #[test]
    fn tags_only_and_never_pick_builders_and_a_tag_ignores_branch_filters() {
        let tag = ChangeFacts {
            tag: Some("v1.2".into()),
            ..Default::default()
        };
        let push = ChangeFacts {
            branch: Some("main".into()),
            ..Default::default()
        };
        assert_eq!(builder_skips(&v(&["main"]), &[], TagRule::Also, &tag), None);
        assert_eq!(builder_skips(&[], &[], TagRule::Only, &tag), None);
        assert!(builder_skips(&[], &[], TagRule::Never, &tag)
            .unwrap()
            .contains("`v1.2` is a tag"));
        assert!(builder_skips(&[], &[], TagRule::Only, &push)
            .unwrap()
            .contains("tags: only"));
        assert_eq!(builder_skips(&[], &[], TagRule::Never, &push), None);
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
