//! Version ordering the way packagers compare: `8.0 == 8.0.0`,
//! `1.2.3rc1 < 1.2.3`, `1.0.2k > 1.0.2j`, `2:1.2 > 1:9.9` (Debian epochs).

use std::cmp::Ordering;
use version_compare::Cmp;

pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ea, ra) = split_epoch(a);
    let (eb, rb) = split_epoch(b);
    ea.cmp(&eb).then_with(|| compare_plain(ra, rb))
}

fn split_epoch(v: &str) -> (u64, &str) {
    match v.split_once(':') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|c| c.is_ascii_digit()) => {
            (epoch.parse().unwrap_or(0), rest)
        }
        _ => (0, v),
    }
}

fn compare_plain(a: &str, b: &str) -> Ordering {
    match version_compare::compare(a, b) {
        Ok(Cmp::Lt) => Ordering::Less,
        Ok(Cmp::Gt) => Ordering::Greater,
        Ok(Cmp::Eq) => Ordering::Equal,
        // version-compare declines some shapes; fall back to plain text order
        // so that the comparison stays total.
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_ordering() {
        assert_eq!(compare_versions("8.0", "8.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("3.10", "3.9"), Ordering::Greater);
        assert_eq!(compare_versions("2:1.2", "1:9.9"), Ordering::Greater);
    }
}
