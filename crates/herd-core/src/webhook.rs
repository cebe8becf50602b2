//! What a webhook delivery says, once its signature is checked: a ping, an
//! event that does not change the repository, or a push. The server only
//! wakes the project's poller on a push; nothing here names a commit that
//! would be built (see ARCHITECTURE.md, "a webhook names no commit").

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
}

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
    if !matches!(event, "push" | "Push Hook" | "Tag Push Hook" | "create") {
        return Ok(HookEvent::Ignored(event.to_string()));
    }
    let reference = payload
        .get("ref")
        .and_then(Value::as_str)
        .map(|r| r.chars().take(256).collect());
    Ok(HookEvent::Push { reference })
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
