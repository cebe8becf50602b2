//! `${{ secrets.NAME }}` in herd.yml values: finding the names, and
//! putting the values in (which the server does only when it hands a job
//! to a worker, so that job specs, pages and the API never hold them).

/// The secret names a value refers to, in order.
pub fn secret_refs(value: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let _ = walk(value, |name| {
        names.push(name);
        None
    });
    names
}

/// The value with each reference replaced by what `lookup` gives (a
/// reference it does not know stays as written).
pub fn fill_secrets(value: &str, lookup: impl FnMut(&str) -> Option<String>) -> String {
    walk(value, lookup)
}

fn walk<'a>(value: &'a str, mut on_ref: impl FnMut(&'a str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        let inner = after[..end].trim();
        match inner.strip_prefix("secrets.") {
            Some(name)
                if !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) =>
            {
                match on_ref(name) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&rest[start..start + 3 + end + 2]),
                }
            }
            _ => out.push_str(&rest[start..start + 3 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn references_are_found_and_filled() {
        let v = "a=${{ secrets.pypi }} b=${{secrets.gh-token}} c=${{ env.X }}";
        assert_eq!(secret_refs(v), vec!["pypi", "gh-token"]);
        let filled = fill_secrets(v, |n| (n == "pypi").then(|| "P".to_string()));
        assert_eq!(filled, "a=P b=${{secrets.gh-token}} c=${{ env.X }}");
        assert_eq!(
            secret_refs("${{ secrets. }} ${{ unterminated"),
            Vec::<&str>::new()
        );
    }

    proptest! {
        #[test]
        fn filling_nothing_changes_nothing(v in ".{0,80}") {
            prop_assert_eq!(fill_secrets(&v, |_| None), v);
        }
    }
}
