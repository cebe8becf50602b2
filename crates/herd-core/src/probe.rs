//! Probes: what a worker is asked to look for, derived from the builders'
//! requirements, and how a version is read from a tool's output.
//!
//! A requirement name is one of:
//! * a **fact** every worker reports unasked (`os`, `arch`, `cpus` ...);
//! * `pkg:NAME`: a library, through `pkg-config --modversion NAME`;
//! * `py:MODULE`: a Python module importable by `python3`;
//! * a **custom probe**: its shell command defined by the server's admin
//!   (`probes:` in the server config) or by the worker's owner (`herd
//!   worker --probe NAME=COMMAND`, which wins on that worker); never by
//!   herd.yml, which only names probes;
//! * otherwise an **executable** on PATH, its version from `NAME --version`
//!   (then `-version`, `-V`).
//!
//! A worker label of the same name takes precedence over a probe.

use crate::pipeline::Pipeline;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Names every worker reports without probing.
pub const FACTS: &[&str] = &[
    "os",
    "arch",
    "distro",
    "os_version",
    "cpus",
    "memory",
    "hostname",
    "herd",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind<'a> {
    Executable(&'a str),
    PkgConfig(&'a str),
    Python(&'a str),
    Custom(&'a str),
}

/// One probe a worker is asked to run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub name: String,
    /// The shell command of a custom probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl ProbeSpec {
    pub fn kind(&self) -> ProbeKind<'_> {
        if let Some(cmd) = &self.command {
            return ProbeKind::Custom(cmd);
        }
        if let Some(lib) = self.name.strip_prefix("pkg:") {
            ProbeKind::PkgConfig(lib)
        } else if let Some(module) = self.name.strip_prefix("py:") {
            ProbeKind::Python(module)
        } else {
            ProbeKind::Executable(&self.name)
        }
    }
}

pub fn is_fact(name: &str) -> bool {
    FACTS.contains(&name)
}

/// The probes a pipeline's requirements need (facts excluded), with the
/// commands the server's config gives custom probes.
pub fn probes_for(
    pipeline: &Pipeline,
    commands: &BTreeMap<String, String>,
) -> BTreeMap<String, ProbeSpec> {
    let mut out = BTreeMap::new();
    for b in &pipeline.builders {
        for j in &b.jobs {
            for r in &j.requires {
                for name in r.names() {
                    if is_fact(name) {
                        continue;
                    }
                    out.insert(
                        name.to_string(),
                        ProbeSpec {
                            name: name.to_string(),
                            command: commands.get(name).cloned(),
                        },
                    );
                }
            }
        }
    }
    out
}

/// The first version-looking token of a tool's output: digits with dots
/// and what sticks to them (`3.11.7`, `1.0.2k`, `3.12.0b1`); a bare number
/// (`17`) only when nothing has a dot. `gcc (Debian 12.2.0-14) 12.2.0` gives
/// `12.2.0`.
pub fn first_version(output: &str) -> Option<String> {
    let mut bare: Option<String> = None;
    let chars: Vec<char> = output.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        // `go1.21.3` and `v2.4` count: a number may follow letters, not digits or a dot.
        let starts_token = i == 0 || !(chars[i - 1].is_ascii_digit() || chars[i - 1] == '.');
        if !(chars[i].is_ascii_digit() && starts_token) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let mut dotted = false;
        loop {
            if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_alphanumeric() {
                dotted = true;
                i += 1;
                while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                    i += 1;
                }
            } else if i < chars.len() && chars[i].is_ascii_alphabetic() {
                while i < chars.len() && chars[i].is_ascii_alphanumeric() {
                    i += 1;
                }
            } else {
                break;
            }
        }
        let token: String = chars[start..i].iter().collect();
        if dotted {
            return Some(token);
        }
        if bare.is_none() && token.chars().all(|c| c.is_ascii_digit()) {
            bare = Some(token);
        }
    }
    bare
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_real_outputs() {
        let cases = [
            ("Python 3.11.7", "3.11.7"),
            ("git version 2.47.3", "2.47.3"),
            (
                "gcc (Debian 12.2.0-14+deb12u1) 12.2.0\nCopyright (C) 2022",
                "12.2.0",
            ),
            ("OpenSSL 1.0.2k-fips  26 Jan 2017", "1.0.2k"),
            ("rustc 1.95.0 (59807616e 2026-04-14)", "1.95.0"),
            ("3.24.41\n", "3.24.41"),
            ("openjdk version \"17.0.15\" 2025-04-15", "17.0.15"),
            ("Python 3.12.0b1", "3.12.0b1"),
            ("go version go1.21.3 linux/amd64", "1.21.3"),
            ("tool v2.4.1", "2.4.1"),
            ("javac 17", "17"),
        ];
        for (out, want) in cases {
            assert_eq!(first_version(out).as_deref(), Some(want), "{out:?}");
        }
        assert_eq!(first_version("no digits here"), None);
        assert_eq!(first_version(""), None);
    }

    #[test]
    fn probes_come_from_requirements_without_facts() {
        let p = Pipeline::parse(
            "f",
            "builders:\n  a:\n    requires: [os == linux, python3 >= 3.10]\n    jobs:\n      j:\n        requires: [pkg:gtk+-3.0 | wx, py:yaml]\n        steps: [{run: x}]\n",
        )
        .unwrap();
        let commands = BTreeMap::from([("wx".to_string(), "wx-config --version".to_string())]);
        let probes = probes_for(&p, &commands);
        let names: Vec<&str> = probes.keys().map(String::as_str).collect();
        assert_eq!(names, ["pkg:gtk+-3.0", "py:yaml", "python3", "wx"]);
        assert_eq!(
            probes["wx"].kind(),
            ProbeKind::Custom("wx-config --version")
        );
        assert_eq!(
            probes["pkg:gtk+-3.0"].kind(),
            ProbeKind::PkgConfig("gtk+-3.0")
        );
        assert_eq!(probes["py:yaml"].kind(), ProbeKind::Python("yaml"));
        assert_eq!(probes["python3"].kind(), ProbeKind::Executable("python3"));
    }

    proptest::proptest! {
        #[test]
        fn version_reading_never_panics(s in "\\PC{0,100}") {
            let _ = first_version(&s);
        }
    }
}
