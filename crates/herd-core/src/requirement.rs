//! Requirements (`requires:` in herd.yml) and matching them against what a
//! worker has. Pure code: the scheduler calls [`Requirement::check`] to decide
//! where a job may run, and the why-not report uses its error.

use crate::version::compare_versions;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// One entry of `requires:`: alternatives joined by `|`, any of which suffices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub alternatives: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Condition {
    /// `NAME`: a fact, label or probe that is present.
    Present { name: String },
    /// `!NAME`: absent.
    Absent { name: String },
    /// `NAME OP VALUE`.
    Compare { name: String, op: Op, value: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Ge => ">=",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Lt => "<",
        }
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Ge => ord != Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Lt => ord == Ordering::Less,
        }
    }
}

/// What a worker has, by name: facts (`os`, `arch` ...), labels, and probe
/// results. A name that is missing, or present with `present: false`, is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub entries: BTreeMap<String, Capability>,
    /// Names asked about but not answered yet: neither present nor absent,
    /// so no requirement on them is met (not even `!NAME`).
    #[serde(default)]
    pub unknown: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub present: bool,
    /// A version, or the value of a fact or label.
    pub value: Option<String>,
}

impl Capabilities {
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.entries.insert(
            name.into(),
            Capability {
                present: true,
                value: Some(value.into()),
            },
        );
    }

    pub fn set_absent(&mut self, name: impl Into<String>) {
        self.entries.insert(
            name.into(),
            Capability {
                present: false,
                value: None,
            },
        );
    }

    fn get(&self, name: &str) -> Option<&Capability> {
        self.entries.get(name).filter(|c| c.present)
    }
}

/// Why no worker could ever meet all of `reqs` (requirements on one name
/// that contradict each other: `python3 == 3.10` and `python3 >= 3.12`), or
/// None. A requirement with alternatives is taken as satisfiable.
pub fn contradiction(reqs: &[Requirement]) -> Option<String> {
    let mut by_name: BTreeMap<&str, Vec<&Requirement>> = BTreeMap::new();
    for r in reqs.iter().filter(|r| r.alternatives.len() == 1) {
        by_name.entry(r.alternatives[0].name()).or_default().push(r);
    }
    for (name, rs) in by_name.into_iter().filter(|(_, rs)| rs.len() > 1) {
        // What a worker could have: nothing, or a value these name, or one
        // just past it (for `> 3.12, < 3.13`).
        let mut candidates: Vec<Option<String>> = vec![None];
        for r in &rs {
            if let Condition::Compare { value, .. } = &r.alternatives[0] {
                candidates.push(Some(value.clone()));
                candidates.push(Some(format!("{value}.1")));
            }
        }
        candidates.push(Some("1".into()));
        let possible = candidates.iter().any(|c| {
            let mut caps = Capabilities::default();
            match c {
                Some(v) => caps.set(name, v.clone()),
                None => caps.set_absent(name),
            }
            rs.iter().all(|r| r.check(&caps).is_ok())
        });
        if !possible {
            let text: Vec<String> = rs.iter().map(|r| format!("`{r}`")).collect();
            return Some(format!("{} can never all hold", text.join(" and ")));
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// 0-based character offset in the requirement text.
    pub offset: usize,
    pub message: String,
}

impl Requirement {
    pub fn parse(text: &str) -> Result<Requirement, ParseError> {
        let mut alternatives = Vec::new();
        let mut start = 0;
        for part in text.split('|') {
            alternatives.push(parse_condition(part, start)?);
            start += part.chars().count() + 1;
        }
        Ok(Requirement { alternatives })
    }

    /// Ok when the worker satisfies one of the alternatives; otherwise why
    /// the first alternative fails, worded for a person.
    pub fn check(&self, caps: &Capabilities) -> Result<(), Unmet> {
        let mut first = None;
        for cond in &self.alternatives {
            match cond.check(caps) {
                Ok(()) => return Ok(()),
                Err(message) => {
                    first.get_or_insert(Unmet {
                        name: cond.name().to_string(),
                        message,
                    });
                }
            }
        }
        Err(first.unwrap_or_else(|| Unmet {
            name: String::new(),
            message: "empty requirement".into(),
        }))
    }

    /// Every name the requirement mentions (what the worker must probe).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.alternatives.iter().map(Condition::name)
    }
}

/// Why a worker does not meet a requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// The fact, label or probe that failed.
    pub name: String,
    /// E.g. `python3 3.9.6 does not satisfy >= 3.10`.
    pub message: String,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Condition {
    fn check(&self, caps: &Capabilities) -> Result<(), String> {
        if caps.unknown.contains(self.name()) {
            return Err(format!("{} not probed yet", self.name()));
        }
        self.check_known(caps)
    }

    pub fn name(&self) -> &str {
        match self {
            Condition::Present { name }
            | Condition::Absent { name }
            | Condition::Compare { name, .. } => name,
        }
    }

    fn check_known(&self, caps: &Capabilities) -> Result<(), String> {
        match self {
            Condition::Present { name } => match caps.get(name) {
                Some(_) => Ok(()),
                None => Err(format!("{name} not found")),
            },
            Condition::Absent { name } => match caps.get(name) {
                None => Ok(()),
                Some(c) => Err(format!(
                    "{name} is present{}",
                    c.value
                        .as_deref()
                        .map(|v| format!(" ({v})"))
                        .unwrap_or_default()
                )),
            },
            Condition::Compare { name, op, value } => {
                let Some(cap) = caps.get(name) else {
                    return Err(format!("{name} not found"));
                };
                let Some(have) = cap.value.as_deref() else {
                    return Err(format!("{name} has no known version"));
                };
                if compare_values(have, value, *op) {
                    Ok(())
                } else {
                    Err(format!(
                        "{name} {have} does not satisfy {} {value}",
                        op.as_str()
                    ))
                }
            }
        }
    }
}

/// Versions compare as versions; words (`linux`, `macos`) compare exactly,
/// ignoring case, and only with `==` and `!=`.
fn compare_values(have: &str, want: &str, op: Op) -> bool {
    let versionish = |s: &str| s.chars().next().is_some_and(|c| c.is_ascii_digit());
    if versionish(have) && versionish(want) {
        return op.holds(compare_versions(have, want));
    }
    let equal = have.eq_ignore_ascii_case(want);
    match op {
        Op::Eq => equal,
        Op::Ne => !equal,
        _ => false,
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '+' | '/' | '@')
}

fn parse_condition(part: &str, base: usize) -> Result<Condition, ParseError> {
    let err = |offset: usize, message: String| ParseError {
        offset: base + offset,
        message,
    };
    let lead = part.chars().take_while(|c| c.is_whitespace()).count();
    let body: Vec<char> = part.chars().skip(lead).collect();
    let body_str: String = body.iter().collect();
    let trimmed = body_str.trim_end();
    if trimmed.is_empty() {
        return Err(err(
            lead,
            "empty requirement: expected a name such as `python3`, `!gtk` or `os == linux`".into(),
        ));
    }
    let (negated, rest, name_start) = match trimmed.strip_prefix('!') {
        Some(r) => (
            true,
            r.trim_start(),
            lead + 1 + (r.len() - r.trim_start().len()),
        ),
        None => (false, trimmed, lead),
    };
    let name_len = rest.chars().take_while(|c| is_name_char(*c)).count();
    if name_len == 0 {
        return Err(err(
            name_start,
            format!("expected a name, found `{rest}`: names are letters, digits and _-.:+/@"),
        ));
    }
    let name: String = rest.chars().take(name_len).collect();
    let after: String = rest.chars().skip(name_len).collect();
    let after_trim = after.trim_start();
    let op_offset = name_start + name_len + (after.chars().count() - after_trim.chars().count());
    if after_trim.is_empty() {
        return Ok(if negated {
            Condition::Absent { name }
        } else {
            Condition::Present { name }
        });
    }
    if negated {
        return Err(err(
            op_offset,
            format!("`!{name}` takes no comparison: write `!{name}` alone or `{name} != VALUE`"),
        ));
    }
    let ops = [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        (">=", Op::Ge),
        ("<=", Op::Le),
        (">", Op::Gt),
        ("<", Op::Lt),
        ("=", Op::Eq),
    ];
    let Some((sym, op)) = ops.iter().find(|(s, _)| after_trim.starts_with(s)) else {
        return Err(err(
            op_offset,
            format!("expected an operator (== != >= <= > <) after `{name}`, found `{after_trim}`"),
        ));
    };
    let value_part = &after_trim[sym.len()..];
    let value = value_part.trim();
    let value_offset = op_offset + sym.len() + (value_part.len() - value_part.trim_start().len());
    if value.is_empty() {
        return Err(err(
            value_offset,
            format!("expected a version or value after `{name} {}`", op.as_str()),
        ));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(err(
            value_offset,
            format!("`{value}` has a space: a value is one word; use `|` between alternatives"),
        ));
    }
    Ok(Condition::Compare {
        name,
        op: *op,
        value: value.to_string(),
    })
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.alternatives.iter().enumerate() {
            if i > 0 {
                f.write_str(" | ")?;
            }
            match c {
                Condition::Present { name } => write!(f, "{name}")?,
                Condition::Absent { name } => write!(f, "!{name}")?,
                Condition::Compare { name, op, value } => {
                    write!(f, "{name} {} {value}", op.as_str())?
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(pairs: &[(&str, &str)]) -> Capabilities {
        let mut c = Capabilities::default();
        for (k, v) in pairs {
            c.set(*k, *v);
        }
        c
    }

    #[test]
    fn parses_all_forms() {
        let r = Requirement::parse("os == linux | os == freebsd").unwrap();
        assert_eq!(r.alternatives.len(), 2);
        assert_eq!(r.to_string(), "os == linux | os == freebsd");
        assert_eq!(
            Requirement::parse("!pkg:gtk+-3.0").unwrap().alternatives[0],
            Condition::Absent {
                name: "pkg:gtk+-3.0".into()
            }
        );
        assert_eq!(
            Requirement::parse("python3>=3.10").unwrap().to_string(),
            "python3 >= 3.10"
        );
    }

    #[test]
    fn malformed_requirements_say_where() {
        let e = Requirement::parse("python3 >=").unwrap_err();
        assert!(e.message.contains("expected a version"), "{e}");
        assert_eq!(e.offset, 10);
        let e = Requirement::parse("os == linux | ").unwrap_err();
        assert_eq!(e.offset, 14);
        let e = Requirement::parse("python3 ~ 3").unwrap_err();
        assert_eq!(e.offset, 8);
        assert!(Requirement::parse("!gtk >= 3").is_err());
        assert!(Requirement::parse("a == b c").is_err());
    }

    #[test]
    fn checks_explain_failures() {
        let c = caps(&[("os", "linux"), ("python3", "3.9.6")]);
        assert!(Requirement::parse("os == linux").unwrap().check(&c).is_ok());
        assert!(Requirement::parse("os == Linux").unwrap().check(&c).is_ok());
        assert_eq!(
            Requirement::parse("python3 >= 3.10")
                .unwrap()
                .check(&c)
                .unwrap_err()
                .message,
            "python3 3.9.6 does not satisfy >= 3.10"
        );
        assert_eq!(
            Requirement::parse("pkg:gtk+-3.0")
                .unwrap()
                .check(&c)
                .unwrap_err()
                .message,
            "pkg:gtk+-3.0 not found"
        );
        assert!(Requirement::parse("os == macos | python3")
            .unwrap()
            .check(&c)
            .is_ok());
        assert!(Requirement::parse("!gtk").unwrap().check(&c).is_ok());
        let mut pending = c.clone();
        pending.unknown.insert("gtk".into());
        assert_eq!(
            Requirement::parse("!gtk")
                .unwrap()
                .check(&pending)
                .unwrap_err()
                .message,
            "gtk not probed yet"
        );
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let name = prop_oneof![
            Just("os"),
            Just("python3"),
            Just("gcc"),
            Just("pkg:gtk+-3.0"),
            Just("gpu")
        ];
        let value = prop_oneof![
            Just("linux"),
            Just("3.10"),
            Just("3.9.6"),
            Just("12.2.0"),
            Just("a100")
        ];
        let op = prop_oneof![
            Just(Op::Eq),
            Just(Op::Ne),
            Just(Op::Ge),
            Just(Op::Le),
            Just(Op::Gt),
            Just(Op::Lt)
        ];
        let cond = prop_oneof![
            name.clone()
                .prop_map(|n| Condition::Present { name: n.into() }),
            name.clone()
                .prop_map(|n| Condition::Absent { name: n.into() }),
            (name, op, value).prop_map(|(n, op, v)| Condition::Compare {
                name: n.into(),
                op,
                value: v.into()
            }),
        ];
        proptest::collection::vec(cond, 1..3).prop_map(|alternatives| Requirement { alternatives })
    }

    fn capabilities() -> impl Strategy<Value = Capabilities> {
        let entry = (
            prop_oneof![
                Just("os"),
                Just("python3"),
                Just("gcc"),
                Just("pkg:gtk+-3.0")
            ],
            prop_oneof![
                Just("linux"),
                Just("3.10"),
                Just("3.9.6"),
                Just("12.2.0"),
                Just("macos")
            ],
        );
        proptest::collection::vec(entry, 0..4).prop_map(|pairs| {
            let mut c = Capabilities::default();
            for (k, v) in pairs {
                c.set(k, v);
            }
            c
        })
    }

    use proptest::prelude::*;

    proptest! {
        /// A new fact (a name the worker did not have) never removes a
        /// match, unless a requirement says `!NAME`.
        #[test]
        fn adding_a_fact_keeps_matches_without_negation(r in requirement(), caps in capabilities(), value in "[0-9a-z.]{1,6}") {
            let negated = r.alternatives.iter().any(|c| matches!(c, Condition::Absent { .. }));
            if r.check(&caps).is_ok() && !negated {
                let mut more = caps.clone();
                more.set("gpu", value);
                prop_assert!(r.check(&more).is_ok() || caps.entries.contains_key("gpu"));
            }
        }

        #[test]
        fn display_parses_back(r in requirement()) {
            prop_assert_eq!(Requirement::parse(&r.to_string()).unwrap(), r);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = Requirement::parse(&s);
        }
    }

    #[test]
    fn contradictions_are_found_and_ranges_that_meet_are_not() {
        let reqs = |t: &[&str]| -> Vec<Requirement> {
            t.iter().map(|r| Requirement::parse(r).unwrap()).collect()
        };
        assert!(contradiction(&reqs(&["python3 == 3.10", "python3 >= 3.12"])).is_some());
        assert!(contradiction(&reqs(&["gtk", "!gtk"])).is_some());
        assert!(contradiction(&reqs(&["os == linux", "os == freebsd"])).is_some());
        assert!(contradiction(&reqs(&["python3 > 3.12", "python3 < 3.13"])).is_none());
        assert!(contradiction(&reqs(&["python3 >= 3.12", "python3 <= 3.12"])).is_none());
        assert!(contradiction(&reqs(&["python3 > 3.12", "python3 <= 3.12"])).is_some());
        assert!(contradiction(&reqs(&["python3 == 3.10", "os == linux"])).is_none());
        assert!(contradiction(&reqs(&["os == linux | os == freebsd", "os == mac"])).is_none());
    }
}
