//! Credentials in repository URLs are never shown: `https://user:TOKEN@host/x`
//! is displayed and logged as `https://***@host/x`, in a URL alone and
//! wherever one appears in a text (git's error messages quote the URL).

/// Whether a URL carries user information (`user@` or `user:password@`).
pub fn has_credentials(url: &str) -> bool {
    userinfo_span(url, 0).is_some()
}

/// The secret parts of a URL's user information: `user:password`, and the
/// password alone (or the user alone when there is no password: a token).
pub fn url_credentials(url: &str) -> Vec<String> {
    let Some((start, end)) = userinfo_span(url, 0) else {
        return Vec::new();
    };
    let info = &url[start..end];
    let mut out = vec![info.to_string()];
    match info.split_once(':') {
        Some((_, pass)) if !pass.is_empty() => out.push(pass.to_string()),
        Some(_) => {}
        None => {}
    }
    out
}

/// The URL with its user information replaced by `***`.
pub fn redact_url(url: &str) -> String {
    redact_text(url)
}

/// The text with the user information of every URL in it replaced by `***`.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut searched = 0;
    while let Some((start, end)) = userinfo_span(rest, searched) {
        out.push_str(&rest[..start]);
        out.push_str("***");
        rest = &rest[end..];
        searched = 0;
    }
    out.push_str(rest);
    out
}

/// Where the user information of the first URL at or after `from` lies:
/// the bytes between `://` and `@` when no `/`, space or quote comes first.
fn userinfo_span(text: &str, from: usize) -> Option<(usize, usize)> {
    let mut at = from;
    while let Some(i) = text[at..].find("://") {
        let start = at + i + 3;
        let authority_end = text[start..]
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'' || c == '>')
            .map_or(text.len(), |j| start + j);
        if let Some(j) = text[start..authority_end].rfind('@') {
            if j > 0 {
                return Some((start, start + j));
            }
        }
        at = start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn user_information_is_hidden_wherever_a_url_appears() {
        assert_eq!(
            redact_url("https://user:ghp_secret@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        assert_eq!(
            redact_url("ssh://git@host.example/o/r"),
            "ssh://***@host.example/o/r"
        );
        assert_eq!(
            redact_url("https://github.com/o/r.git"),
            "https://github.com/o/r.git"
        );
        assert_eq!(redact_url("/srv/git/r.git"), "/srv/git/r.git");
        assert_eq!(
            redact_text("fatal: unable to access 'https://u:p@h/x/': 403\nagain https://a:b@c"),
            "fatal: unable to access 'https://***@h/x/': 403\nagain https://***@c"
        );
        // An @ in the path is not user information.
        assert_eq!(redact_url("https://h/a@b"), "https://h/a@b");
        assert!(has_credentials("https://t@h/x"));
        assert_eq!(
            url_credentials("https://u:p4ss@h/x"),
            ["u:p4ss".to_string(), "p4ss".to_string()]
        );
        assert!(url_credentials("https://h/x").is_empty());
        assert!(!has_credentials("https://h/x@y"));
    }

    proptest! {
        #[test]
        fn a_password_never_survives(user in "[a-z]{1,8}", pass in "[A-Za-z0-9_]{6,30}", host in "[a-z]{1,10}", path in "[a-z/]{0,20}") {
            let url = format!("https://{user}:{pass}@{host}.example/{path}");
            let text = format!("error fetching {url}: denied");
            prop_assert!(!redact_text(&text).contains(&pass));
            prop_assert!(!redact_url(&url).contains(&pass));
        }

        #[test]
        fn any_text_is_taken(text in "\\PC{0,100}") {
            let _ = redact_text(&text);
        }
    }
}
