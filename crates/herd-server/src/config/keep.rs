//! `keep:` (server-wide and per project): how long builds, logs and
//! artifacts stay. A project's fields fall back to the server's, then to
//! [`KeepPolicy::DEFAULT`].
//!
//! ```yaml
//! keep: {days: 90, builds: 1000, logs_days: 30, artifacts_days: 14}
//! keep: forever                  # nothing is ever removed
//! keep: {days: forever, builds: 2000}
//! ```

use herd_core::retention::KeepPolicy;
use herd_core::ConfigError;
use serde::Deserialize;
use serde_saphyr::Spanned;

/// One limit as written: a number, or `forever`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    At(u32),
    Forever,
}

/// `keep:` as written; a field not given falls back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeepConfig {
    pub days: Option<Limit>,
    pub builds: Option<Limit>,
    pub logs_days: Option<Limit>,
    pub artifacts_days: Option<Limit>,
}

impl KeepConfig {
    /// `keep: forever`.
    pub const FOREVER: KeepConfig = KeepConfig {
        days: Some(Limit::Forever),
        builds: Some(Limit::Forever),
        logs_days: Some(Limit::Forever),
        artifacts_days: Some(Limit::Forever),
    };

    /// The policy of a project that says `self`, on a server that says
    /// `server`.
    pub fn resolve(&self, server: &KeepConfig) -> KeepPolicy {
        let pick = |own: Option<Limit>, srv: Option<Limit>, default: Option<u32>| match own.or(srv)
        {
            Some(Limit::At(n)) => Some(n),
            Some(Limit::Forever) => None,
            None => default,
        };
        let d = KeepPolicy::DEFAULT;
        KeepPolicy {
            days: pick(self.days, server.days, d.days),
            builds: pick(self.builds, server.builds, d.builds),
            logs_days: pick(self.logs_days, server.logs_days, d.logs_days),
            artifacts_days: pick(self.artifacts_days, server.artifacts_days, d.artifacts_days),
        }
    }
}

pub(super) enum RawKeep {
    Word(String),
    Fields(Box<RawKeepFields>),
}

// By hand, not `untagged`: an untagged enum buffers its input and the
// fields would lose their line and column.
impl<'de> Deserialize<'de> for RawKeep {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keep;
        impl<'de> serde::de::Visitor<'de> for Keep {
            type Value = RawKeep;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`forever` or {days, builds, logs_days, artifacts_days}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawKeep, E> {
                Ok(RawKeep::Word(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawKeep, A::Error> {
                RawKeepFields::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(|f| RawKeep::Fields(Box::new(f)))
            }
        }
        d.deserialize_any(Keep)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeepFields {
    days: Option<Spanned<RawLimit>>,
    builds: Option<Spanned<RawLimit>>,
    logs_days: Option<Spanned<RawLimit>>,
    artifacts_days: Option<Spanned<RawLimit>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Count(i64),
    Word(String),
}

const HELP: &str = "write `keep: {days: 90, builds: 1000, logs_days: 30, artifacts_days: 14}` \
     (each a whole number of at least 1, or `forever`), or `keep: forever`";

pub(super) fn lower(
    file: &str,
    text: &str,
    raw: &Spanned<RawKeep>,
) -> Result<KeepConfig, ConfigError> {
    let fields = match &raw.value {
        RawKeep::Word(w) if w == "forever" => return Ok(KeepConfig::FOREVER),
        RawKeep::Word(w) => {
            return Err(ConfigError::at_location(
                file,
                text,
                &raw.referenced,
                format!("`keep: {w}` is not a retention"),
            )
            .with_help(HELP))
        }
        RawKeep::Fields(f) => f,
    };
    let limit = |name: &str, v: &Option<Spanned<RawLimit>>| -> Result<Option<Limit>, ConfigError> {
        let Some(v) = v else { return Ok(None) };
        match &v.value {
            RawLimit::Word(w) if w == "forever" => Ok(Some(Limit::Forever)),
            RawLimit::Count(n) if (1..=i64::from(u32::MAX)).contains(n) => {
                Ok(Some(Limit::At(*n as u32)))
            }
            RawLimit::Count(n) => Err(ConfigError::at_location(
                file,
                text,
                &v.referenced,
                format!("`keep.{name}` must be at least 1, not {n}"),
            )
            .with_help(HELP)),
            RawLimit::Word(w) => Err(ConfigError::at_location(
                file,
                text,
                &v.referenced,
                format!("`keep.{name}` must be a number or `forever`, not `{w}`"),
            )
            .with_help(HELP)),
        }
    };
    Ok(KeepConfig {
        days: limit("days", &fields.days)?,
        builds: limit("builds", &fields.builds)?,
        logs_days: limit("logs_days", &fields.logs_days)?,
        artifacts_days: limit("artifacts_days", &fields.artifacts_days)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<KeepConfig, ConfigError> {
        let raw: Spanned<RawKeep> = serde_saphyr::from_str(yaml).expect("yaml");
        lower("herd-server.yml", yaml, &raw)
    }

    #[test]
    fn a_project_falls_back_field_by_field_to_the_server_then_the_default() {
        let server = parse("{builds: 50, logs_days: 7}").expect("server");
        let project = parse("{days: forever, logs_days: 3}").expect("project");
        let p = project.resolve(&server);
        assert_eq!(p.days, None);
        assert_eq!(p.builds, Some(50));
        assert_eq!(p.logs_days, Some(3));
        assert_eq!(p.artifacts_days, None);
        assert_eq!(
            KeepConfig::default().resolve(&KeepConfig::default()),
            KeepPolicy::DEFAULT
        );
        assert_eq!(
            KeepConfig::default().resolve(&parse("forever").expect("forever")),
            KeepPolicy::FOREVER
        );
    }

    #[test]
    fn a_bad_limit_names_its_field_line_and_column() {
        let e = parse("{days: 90,\n builds: 0}").expect_err("zero");
        assert!(e.message.contains("keep.builds` must be at least 1"), "{e}");
        assert_eq!((e.line, e.column), (2, 10));
        let e = parse("{days: soon}").expect_err("word");
        assert!(e.message.contains("number or `forever`, not `soon`"), "{e}");
        let e = parse("always").expect_err("word");
        assert!(
            e.message.contains("`keep: always` is not a retention"),
            "{e}"
        );
    }
}
