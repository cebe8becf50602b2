//! `concurrency:` of a herd.yml: builds of changes in one group supersede
//! each other, so a branch pushed three times in a minute builds its newest
//! commit, not all three.
//!
//! ```yaml
//! concurrency:
//!   group: ${{ branch }}       # the default; also ${{ ref }}, ${{ project }}
//!   cancel_superseded: true    # the default: a newer change cancels the older build
//! ```

use serde::{Deserialize, Serialize};

/// The words a group may use.
pub const GROUP_WORDS: [&str; 3] = ["branch", "ref", "project"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Concurrency {
    /// The group's template, with `${{ branch }}` and the like.
    pub group: String,
    /// Whether a newer change's build cancels the older ones of its group
    /// that are still queued or running.
    pub cancel_superseded: bool,
}

impl Concurrency {
    /// The group of a change's build: None when the template names a fact
    /// the build does not have (a build with no branch has no group).
    pub fn group_of(&self, project: &str, branch: Option<&str>) -> Option<String> {
        let mut out = String::new();
        let mut rest = self.group.as_str();
        while let Some(start) = rest.find("${{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 3..];
            let end = after.find("}}")?;
            match after[..end].trim() {
                "branch" | "ref" => out.push_str(branch?),
                "project" => out.push_str(project),
                _ => return None,
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Some(out)
    }
}

/// The first `${{ … }}` of `template` that is not one of [`GROUP_WORDS`].
pub fn unknown_word(template: &str) -> Option<String> {
    let mut rest = template;
    while let Some(start) = rest.find("${{") {
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            return Some(after.to_string());
        };
        let word = after[..end].trim();
        if !GROUP_WORDS.contains(&word) {
            return Some(word.to_string());
        }
        rest = &after[end + 2..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_made_of_the_builds_facts() {
        let c = Concurrency {
            group: "ci-${{ project }}-${{ branch }}".into(),
            cancel_superseded: true,
        };
        assert_eq!(c.group_of("p", Some("main")).as_deref(), Some("ci-p-main"));
        assert_eq!(c.group_of("p", None), None);
        assert_eq!(
            unknown_word("${{ branch }}/${{ sha }}").as_deref(),
            Some("sha")
        );
        assert_eq!(unknown_word("x-${{ref}}"), None);
    }
}
