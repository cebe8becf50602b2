//! What a webhook delivery says, once its signature is checked: a ping, an
//! event that does not change the repository, a push, or a pull/merge
//! request event. The server only wakes the project's poller on a push;
//! nothing here names a commit that would be built (see ARCHITECTURE.md,
//! "a webhook names no commit"). A pull request event brings the facts
//! git does not have (author, fork or not, title, link, closed).

use serde_json::Value;

/// The forges whose webhooks herd reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    /// Gitea and Forgejo sign alike.
    Gitea,
    GitLab,
    /// herd's own form: `X-Herd-Signature-256` or `X-Herd-Token`.
    Generic,
}

impl Forge {
    /// The forge named in the hook's address (`/api/v1/hooks/{forge}/…`).
    pub fn parse(s: &str) -> Option<Forge> {
        Some(match s {
            "github" => Forge::GitHub,
            "gitea" | "forgejo" => Forge::Gitea,
            "gitlab" => Forge::GitLab,
            "generic" => Forge::Generic,
            _ => return None,
        })
    }
}

/// What one delivery asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    Ping,
    /// An event that does not change the repository (issues, comments…).
    Ignored(String),
    /// Something was pushed; `reference` is the payload's `ref`, if any,
    /// shown to the sender only.
    Push {
        reference: Option<String>,
    },
    PullRequest(PullRequestEvent),
}

/// A pull request (GitHub, Gitea, Forgejo) or merge request (GitLab)
/// event, as far as herd needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub number: u64,
    pub action: PullRequestAction,
    /// The head commit the forge names (herd builds what its mirror has
    /// at the pull request's ref, never this).
    pub head: Option<String>,
    /// The head is in another repository than the base.
    pub fork: bool,
    /// The author's login.
    pub author: String,
    pub title: String,
    pub url: String,
    /// The branch it would merge into.
    pub base: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullRequestAction {
    /// Opened or reopened.
    Opened,
    /// New commits on its head.
    Updated,
    /// Closed or merged.
    Closed,
    /// Edited, labelled…: the facts may change, nothing to build.
    Other,
}

/// Longest title, author and link kept from a payload.
const MAX_FIELD: usize = 512;

/// Reads a delivery: `event` is the forge's event header (none: a push),
/// `body` the JSON payload (empty: `{}`). Errors say what is wrong with it.
pub fn read_event(event: Option<&str>, body: &[u8]) -> Result<HookEvent, String> {
    let event = event.unwrap_or("push");
    if event == "ping" {
        return Ok(HookEvent::Ping);
    }
    let payload: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(body).map_err(|e| format!("the webhook's body is not JSON: {e}"))?
    };
    if matches!(event, "pull_request" | "Merge Request Hook") {
        return read_pull_request(&payload).map(HookEvent::PullRequest);
    }
    if !matches!(event, "push" | "Push Hook" | "Tag Push Hook" | "create") {
        return Ok(HookEvent::Ignored(event.to_string()));
    }
    let reference = payload
        .get("ref")
        .and_then(Value::as_str)
        .map(|r| r.chars().take(256).collect());
    Ok(HookEvent::Push { reference })
}

fn text(v: &Value, path: &[&str]) -> Option<String> {
    let mut at = v;
    for p in path {
        at = at.get(p)?;
    }
    at.as_str().map(|s| s.chars().take(MAX_FIELD).collect())
}

fn number(v: &Value, path: &[&str]) -> Option<u64> {
    let mut at = v;
    for p in path {
        at = at.get(p)?;
    }
    at.as_u64()
}

/// GitHub's and Gitea's `pull_request` payload, or GitLab's merge request.
fn read_pull_request(p: &Value) -> Result<PullRequestEvent, String> {
    if p.get("object_kind").and_then(Value::as_str) == Some("merge_request") {
        fn at(k: &str) -> [&str; 2] {
            ["object_attributes", k]
        }
        let number = number(p, &at("iid"))
            .ok_or("the merge request event has no `object_attributes.iid`")?;
        let action = match text(p, &at("action")).as_deref() {
            Some("open" | "reopen") => PullRequestAction::Opened,
            Some("update") if p.pointer("/object_attributes/oldrev").is_some() => {
                PullRequestAction::Updated
            }
            Some("close" | "merge") => PullRequestAction::Closed,
            _ => PullRequestAction::Other,
        };
        let source = number_or_text(p, &["object_attributes", "source_project_id"]);
        let target = number_or_text(p, &["object_attributes", "target_project_id"]);
        return Ok(PullRequestEvent {
            number,
            action,
            head: text(p, &["object_attributes", "last_commit", "id"]),
            // Unknown projects count as a fork: trust must be shown.
            fork: source.is_none() || source != target,
            author: text(p, &["user", "username"]).unwrap_or_default(),
            title: text(p, &at("title")).unwrap_or_default(),
            url: text(p, &at("url")).unwrap_or_default(),
            base: text(p, &at("target_branch")),
        });
    }
    let number = number(p, &["number"])
        .or_else(|| number(p, &["pull_request", "number"]))
        .ok_or("the pull request event has no `number`")?;
    let action = match text(p, &["action"]).as_deref() {
        Some("opened" | "reopened") => PullRequestAction::Opened,
        Some("synchronize" | "synchronized") => PullRequestAction::Updated,
        Some("closed") => PullRequestAction::Closed,
        _ => PullRequestAction::Other,
    };
    let head_repo = text(p, &["pull_request", "head", "repo", "full_name"]);
    let base_repo = text(p, &["pull_request", "base", "repo", "full_name"]);
    Ok(PullRequestEvent {
        number,
        action,
        head: text(p, &["pull_request", "head", "sha"]),
        fork: head_repo.is_none() || head_repo != base_repo,
        author: text(p, &["pull_request", "user", "login"]).unwrap_or_default(),
        title: text(p, &["pull_request", "title"]).unwrap_or_default(),
        url: text(p, &["pull_request", "html_url"]).unwrap_or_default(),
        base: text(p, &["pull_request", "base", "ref"]),
    })
}

fn number_or_text(v: &Value, path: &[&str]) -> Option<String> {
    number(v, path)
        .map(|n| n.to_string())
        .or_else(|| text(v, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_pings_pushes_and_other_events() {
        assert_eq!(read_event(Some("ping"), b"garbage"), Ok(HookEvent::Ping));
        assert_eq!(
            read_event(None, br#"{"ref": "refs/heads/main"}"#),
            Ok(HookEvent::Push {
                reference: Some("refs/heads/main".into())
            })
        );
        assert_eq!(
            read_event(Some("Push Hook"), b""),
            Ok(HookEvent::Push { reference: None })
        );
        assert_eq!(
            read_event(Some("issues"), b"{}"),
            Ok(HookEvent::Ignored("issues".into()))
        );
        let err = read_event(Some("push"), b"{not json").expect_err("bad JSON");
        assert!(err.contains("not JSON"), "{err}");
        assert_eq!(Forge::parse("forgejo"), Some(Forge::Gitea));
        assert_eq!(Forge::parse("svn"), None);
    }

    #[test]
    fn github_pull_request_events_from_its_documentation() {
        let opened = include_str!("../tests/webhooks/github-pull_request-opened.json");
        let HookEvent::PullRequest(e) =
            read_event(Some("pull_request"), opened.as_bytes()).unwrap()
        else {
            panic!("not a pull request")
        };
        assert_eq!(e.number, 2);
        assert_eq!(e.action, PullRequestAction::Opened);
        assert_eq!(
            e.head.as_deref(),
            Some("ec26c3e57ca3a959ca5aad62de7213c562f8c821")
        );
        assert!(!e.fork);
        assert_eq!(e.author, "Codertocat");
        assert_eq!(e.title, "Update the README with new information.");
        assert_eq!(e.url, "https://github.com/Codertocat/Hello-World/pull/2");
        assert_eq!(e.base.as_deref(), Some("master"));
        let mut fork: Value = serde_json::from_str(opened).unwrap();
        fork["pull_request"]["head"]["repo"]["full_name"] = "Stranger/Hello-World".into();
        let fork = fork.to_string();
        let HookEvent::PullRequest(e) = read_event(Some("pull_request"), fork.as_bytes()).unwrap()
        else {
            panic!("not a pull request")
        };
        assert!(e.fork);
        for (action, want) in [
            ("synchronize", PullRequestAction::Updated),
            ("closed", PullRequestAction::Closed),
            ("reopened", PullRequestAction::Opened),
            ("labeled", PullRequestAction::Other),
        ] {
            let body = opened.replace(r#""action": "opened""#, &format!(r#""action": "{action}""#));
            let HookEvent::PullRequest(e) =
                read_event(Some("pull_request"), body.as_bytes()).unwrap()
            else {
                panic!("not a pull request")
            };
            assert_eq!(e.action, want, "{action}");
        }
    }

    #[test]
    fn gitea_and_gitlab_events_from_their_documentation() {
        let gitea = include_str!("../tests/webhooks/gitea-pull_request-synchronized.json");
        let HookEvent::PullRequest(e) = read_event(Some("pull_request"), gitea.as_bytes()).unwrap()
        else {
            panic!("not a pull request")
        };
        assert_eq!((e.number, e.action), (1, PullRequestAction::Updated));
        assert_eq!(e.author, "gitea");
        assert!(e.fork, "the head is in a fork");
        assert_eq!(e.base.as_deref(), Some("master"));
        let gitlab = include_str!("../tests/webhooks/gitlab-merge_request-open.json");
        let HookEvent::PullRequest(e) =
            read_event(Some("Merge Request Hook"), gitlab.as_bytes()).unwrap()
        else {
            panic!("not a merge request")
        };
        assert_eq!((e.number, e.action), (1, PullRequestAction::Opened));
        assert_eq!(e.author, "root");
        assert!(e.fork, "source project 14 is not target project 5");
        assert_eq!(
            e.head.as_deref(),
            Some("da1560886d4f094c3e6c9ef40349f7d38b5d27d7")
        );
        assert_eq!(e.url, "http://example.com/diaspora/merge_requests/1");
        let update = gitlab.replace(
            r#""action": "open""#,
            r#""action": "update", "oldrev": "aaa""#,
        );
        let HookEvent::PullRequest(e) =
            read_event(Some("Merge Request Hook"), update.as_bytes()).unwrap()
        else {
            panic!("not a merge request")
        };
        assert_eq!(e.action, PullRequestAction::Updated);
        assert!(read_event(Some("pull_request"), b"{}")
            .unwrap_err()
            .contains("no `number`"));
    }

    proptest! {
        #[test]
        fn any_body_is_read_or_refused_without_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            event in proptest::option::of("[a-zA-Z ]{0,12}"),
        ) {
            let _ = read_event(event.as_deref(), &body);
        }

        #[test]
        fn a_push_reports_its_ref(reference in "\\PC{0,300}") {
            let body = serde_json::json!({ "ref": reference }).to_string();
            let read = read_event(Some("push"), body.as_bytes());
            let want: String = reference.chars().take(256).collect();
            prop_assert_eq!(read, Ok(HookEvent::Push { reference: Some(want) }));
        }
    }
}
