//! Version ordering the way packagers compare:
//!
//! * missing parts are zero: `8.0 == 8.0.0`;
//! * numbers compare as numbers: `3.10 > 3.9`;
//! * pre-release words come before the release: `1.2.3rc1 < 1.2.3`,
//!   `3.12.0b1 < 3.12.0`, `1.2.3~rc1 < 1.2.3` (dev < alpha < beta < pre < rc);
//! * other letters are post-release marks: `1.0.2k > 1.0.2j > 1.0.2`;
//! * an epoch outranks everything: `2:1.2 > 1:9.9`;
//! * a leading `v` is ignored: `v1.2 == 1.2`.
//!
//! (The `version-compare` crate orders `1.0.2k` *before* `1.0.2`, which
//! would make `openssl >= 1.0.2` refuse OpenSSL 1.0.2k; hence this module.)

use std::cmp::Ordering;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part<'a> {
    Num(u128),
    /// A pre-release word with its rank (dev 0, alpha 1, beta 2, pre 3, rc 4).
    Pre(u8),
    /// Any other run of letters: a post-release mark or a name.
    Word(&'a str),
}

pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ra) = split_epoch(a);
    let (eb, rb) = split_epoch(b);
    ea.cmp(&eb)
        .then_with(|| compare_parts(&parts(ra), &parts(rb)))
}

fn split_epoch(v: &str) -> (u128, &str) {
    let v = v.trim();
    match v.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|c| c.is_ascii_digit()) => {
            (epoch.parse().unwrap_or(u128::MAX), rest)
        }
        _ => (0, v),
    }
}

fn pre_rank(word: &str) -> Option<u8> {
    match word.to_ascii_lowercase().as_str() {
        "dev" | "snapshot" | "nightly" => Some(0),
        "alpha" | "a" => Some(1),
        "beta" | "b" => Some(2),
        "pre" | "preview" => Some(3),
        "rc" | "c" | "cr" => Some(4),
        _ => None,
    }
}

fn parts(v: &str) -> Vec<Part<'_>> {
    let v = v
        .strip_prefix('v')
        .or_else(|| v.strip_prefix('V'))
        .filter(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        .unwrap_or(v);
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            out.push(Part::Num(v[start..i].parse().unwrap_or(u128::MAX)));
        } else if c.is_ascii_alphabetic() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let word = &v[start..i];
            out.push(match pre_rank(word) {
                Some(r) => Part::Pre(r),
                None => Part::Word(word),
            });
        } else if c == b'~' {
            // Debian's "sorts before anything, even the end".
            out.push(Part::Pre(0));
            i += 1;
        } else {
            i += 1; // separators: . - _ + and anything else
        }
    }
    out
}

/// Rank of what stands at a position: pre-release < end (or zero) < word < number.
fn compare_parts(a: &[Part<'_>], b: &[Part<'_>]) -> Ordering {
    let n = a.len().max(b.len());
    for i in 0..n {
        let ord = match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) => compare_part(x, y),
            (Some(x), None) => against_end(x),
            (None, Some(y)) => against_end(y).reverse(),
            (None, None) => Ordering::Equal,
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn against_end(p: &Part<'_>) -> Ordering {
    match p {
        Part::Num(0) => Ordering::Equal,
        Part::Num(_) | Part::Word(_) => Ordering::Greater,
        Part::Pre(_) => Ordering::Less,
    }
}

fn compare_part(x: &Part<'_>, y: &Part<'_>) -> Ordering {
    match (x, y) {
        (Part::Num(a), Part::Num(b)) => a.cmp(b),
        (Part::Pre(a), Part::Pre(b)) => a.cmp(b),
        (Part::Word(a), Part::Word(b)) => a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()),
        (Part::Pre(_), _) => Ordering::Less,
        (_, Part::Pre(_)) => Ordering::Greater,
        (Part::Word(_), Part::Num(_)) => Ordering::Less,
        (Part::Num(_), Part::Word(_)) => Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Ordering::*;

    /// Versions as real tools print them, and how packagers order them.
    const TABLE: &[(&str, &str, Ordering)] = &[
        // the issue's rules
        ("8.0", "8.0.0", Equal),
        ("1.2.3rc1", "1.2.3", Less),
        ("1.0.2k", "1.0.2j", Greater),
        ("2:1.2", "1:9.9", Greater),
        ("3.10", "3.9", Greater),
        // python
        ("3.12.3", "3.10", Greater),
        ("3.9.6", "3.10", Less),
        ("3.12.0b1", "3.12.0", Less),
        ("3.12.0a7", "3.12.0b1", Less),
        ("3.13.0rc2", "3.13.0rc1", Greater),
        ("3.11.0", "3.11.0rc3", Greater),
        ("2.7.18", "3.0", Less),
        ("3.10.0.dev0", "3.10.0a1", Less),
        // gtk / glib / pkg-config
        ("3.24.41", "3.24.5", Greater),
        ("3.24.41", "3.24.41", Equal),
        ("2.78.4", "2.80.0", Less),
        ("4.12", "3.24.41", Greater),
        // openssl
        ("1.0.2k", "1.0.2", Greater),
        ("1.1.1w", "1.1.1", Greater),
        ("1.1.1w", "3.0.13", Less),
        ("3.0.13", "3.0.2", Greater),
        // gcc / clang
        ("13.2.0", "13.2", Equal),
        ("12.2.0", "13", Less),
        ("14.0.0", "13.2.0", Greater),
        ("18.1.8", "18.1.8", Equal),
        // Debian epochs, revisions and tildes
        ("1:2.39.2-1", "2.45.0", Greater),
        ("2.39.2-1", "2.39.2", Greater),
        ("2.39.2-1", "2.39.2-2", Less),
        ("1.2.3~rc1", "1.2.3", Less),
        ("1.2.3~rc1-1", "1.2.3-1", Less),
        ("1:1.0", "2.0", Greater),
        // wx, xcode, go, rust
        ("3.2.4", "3.0.5", Greater),
        ("15.4", "15.0.1", Greater),
        ("go1.21.3", "go1.9", Greater),
        ("v1.2", "1.2", Equal),
        ("1.95.0", "1.85", Greater),
        ("1.10.0-nightly", "1.10.0", Less),
        ("1.0.2p1", "1.0.2", Greater),
        ("1.2.3-alpha", "1.2.3-beta", Less),
    ];

    #[test]
    fn packager_ordering_table() {
        assert!(TABLE.len() >= 30);
        for &(a, b, want) in TABLE {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    fn version() -> impl Strategy<Value = String> {
        proptest::string::string_regex(
            "([0-9]:)?[0-9]{1,3}(\\.[0-9]{1,3}){0,3}((rc|a|b|~rc|-|[a-k])[0-9]?)?",
        )
        .unwrap()
    }

    proptest! {
        #[test]
        fn never_both_less_and_greater(a in version(), b in version()) {
            prop_assert_eq!(compare_versions(&a, &b), compare_versions(&b, &a).reverse());
        }

        #[test]
        fn reflexive(a in version()) {
            prop_assert_eq!(compare_versions(&a, &a), Equal);
        }

        #[test]
        fn transitive(a in version(), b in version(), c in version()) {
            let (ab, bc) = (compare_versions(&a, &b), compare_versions(&b, &c));
            if ab != Greater && bc != Greater {
                prop_assert_ne!(compare_versions(&a, &c), Greater, "{} <= {} <= {}", a, b, c);
            }
        }

        #[test]
        fn garbage_never_panics(a in "\\PC{0,40}", b in "\\PC{0,40}") {
            let _ = compare_versions(&a, &b);
        }
    }
}
