//! Errors in YAML files (herd.yml, the server config) that point at a place:
//! file, line, column, what was expected, and a suggestion where one helps.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the error concerns the whole file.
    pub line: u64,
    /// 1-based; 0 when unknown.
    pub column: u64,
    pub message: String,
    pub help: Option<String>,
    /// The offending line of the file, for display under the message.
    pub source_line: Option<String>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )?;
        if let Some(src) = &self.source_line {
            let gutter = self.line.to_string();
            let pad = " ".repeat(gutter.len());
            let caret_pad = " ".repeat(self.column.saturating_sub(1) as usize);
            write!(f, "\n {gutter} | {src}\n {pad} | {caret_pad}^")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    pub fn at(file: &str, text: &str, line: u64, column: u64, message: impl Into<String>) -> Self {
        let source_line = (line > 0)
            .then(|| text.lines().nth((line - 1) as usize))
            .flatten()
            .map(|l| l.to_string());
        ConfigError {
            file: file.to_string(),
            line,
            column,
            message: message.into(),
            help: None,
            source_line,
        }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn at_location(
        file: &str,
        text: &str,
        loc: &serde_saphyr::Location,
        message: impl Into<String>,
    ) -> Self {
        Self::at(file, text, loc.line(), loc.column(), message)
    }

    /// Turns a YAML deserialization error into one that names the place and,
    /// for a misspelt key, suggests the key that was probably meant.
    pub fn from_yaml(file: &str, text: &str, err: &serde_saphyr::Error) -> Self {
        let (line, column) = err
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        let raw = err.without_snippet().to_string();
        let message = strip_location_prefix(&raw);
        let mut out = Self::at(file, text, line, column, message.clone());
        if let Some((unknown, expected)) = parse_unknown_field(&message) {
            out.message = format!("unknown key `{unknown}`");
            let mut help = String::new();
            if let Some(best) = closest(&unknown, &expected) {
                help.push_str(&format!("did you mean `{best}`? "));
            }
            if expected.is_empty() {
                help.push_str("no keys are allowed here");
            } else {
                help.push_str(&format!("expected one of: {}", expected.join(", ")));
            }
            out.help = Some(help);
        } else if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
            let key = rest.split(',').next().unwrap_or(rest).trim();
            out.message = format!("duplicate name `{key}`");
            out.help = Some("every key of a mapping must be unique: rename or remove one".into());
        } else if message == "invalid boolean" {
            out.message = "expected a boolean (true or false)".into();
        } else if message.contains("untagged enum RawNeed") {
            out.message = "not a need herd knows".into();
            out.help = Some(
                "a need is a name (`builder`, `builder/job`, `job`) or `{job: NAME, artifacts: true}`"
                    .into(),
            );
        } else if message.contains("untagged enum RawArtifacts") {
            out.message = "not a list of artifacts herd knows".into();
            out.help = Some(
                "write a list of paths (`[dist/*.whl]`) or `{paths: [...], when: always}`".into(),
            );
        }
        out
    }
}

/// "error: line 5 column 9: unknown field ..." -> "unknown field ...".
fn strip_location_prefix(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or(raw);
    let mut s = first.strip_prefix("error: ").unwrap_or(first);
    if let Some(rest) = s.strip_prefix("line ") {
        if let Some(idx) = rest.find(": ") {
            s = &rest[idx + 2..];
        }
    }
    // ... and "message at line 5, column 9" -> "message".
    if let Some(idx) = s.rfind(" at line ") {
        if s[idx..].contains(", column ") {
            s = &s[..idx];
        }
    }
    s.to_string()
}

/// Parses serde's "unknown field `x`, expected one of `a`, `b`" (and the
/// variants "expected `a`" and "there are no fields").
fn parse_unknown_field(msg: &str) -> Option<(String, Vec<String>)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    let unknown = rest[..end].to_string();
    let tail = &rest[end + 1..];
    let list = tail
        .split_once("expected one of ")
        .map(|(_, l)| l)
        .or_else(|| tail.split_once("expected ").map(|(_, l)| l))
        .unwrap_or("");
    let expected = list
        .split(',')
        .map(|s| s.trim().trim_matches('`').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Some((unknown, expected))
}

/// The candidate closest to `word`, if it is close enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_message_is_parsed() {
        let (u, e) =
            parse_unknown_field("unknown field `alwys`, expected one of name, run, always")
                .unwrap();
        assert_eq!(u, "alwys");
        assert_eq!(e, vec!["name", "run", "always"]);
        assert_eq!(closest(&u, &e), Some("always"));
        let (_, e) = parse_unknown_field("unknown field `x`, expected `steps`").unwrap();
        assert_eq!(e, vec!["steps"]);
    }

    #[test]
    fn distant_words_get_no_suggestion() {
        let c = vec!["steps".to_string(), "jobs".to_string()];
        assert_eq!(closest("zzzzzz", &c), None);
    }
}
