//! `matrix:` on a builder or a job: axes of values, `exclude:` and
//! `include:` cells. Each cell becomes a job of its own, with
//! `${{ matrix.AXIS }}` replaced in its name, requirements, commands and
//! env: so `requires: [python3 == ${{ matrix.python }}]` lets the
//! capability matcher pick the workers of each cell.
//!
//! ```yaml
//! matrix:
//!   python: ["3.10", "3.12", "3.13"]
//!   reactor: [default, poll]
//!   exclude:
//!     - {python: "3.10", reactor: poll}
//!   include:
//!     - {python: "3.14", reactor: default}
//! ```
//!
//! Values are text as written (`3.10` stays `3.10`, not the number 3.1).

use indexmap::IndexMap;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

/// Most jobs one matrix may make.
pub const MAX_CELLS: usize = 256;

/// One cell: a value per axis, in the axes' order.
pub type Cell = IndexMap<String, String>;

/// `matrix:` as written.
#[derive(Debug, Default)]
pub(super) struct RawMatrix {
    pub axes: Vec<(Spanned<String>, Vec<String>)>,
    pub exclude: Vec<IndexMap<String, String>>,
    pub include: Vec<IndexMap<String, String>>,
}

impl<'de> Deserialize<'de> for RawMatrix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMatrix;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of axes (`python: [\"3.12\", \"3.13\"]`), with optional `exclude:` and `include:` lists of cells")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawMatrix, A::Error> {
                let mut m = RawMatrix::default();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    match key.value.as_str() {
                        // Each value is read as text (a list of strings),
                        // never through a buffered "any" that would make
                        // 3.10 the number 3.1.
                        "exclude" => m.exclude = map.next_value()?,
                        "include" => m.include = map.next_value()?,
                        _ => {
                            let values: Vec<String> = map.next_value()?;
                            m.axes.push((key, values));
                        }
                    }
                }
                Ok(m)
            }
        }
        d.deserialize_map(V)
    }
}

/// The cells of a matrix, or why there are none.
pub(super) fn cells(m: &RawMatrix) -> Result<Vec<Cell>, (Option<usize>, String)> {
    let axis_names: Vec<&str> = m.axes.iter().map(|(k, _)| k.value.as_str()).collect();
    for (i, (name, values)) in m.axes.iter().enumerate() {
        if !is_axis_name(&name.value) {
            return Err((
                Some(i),
                format!("invalid matrix axis name `{}`", name.value),
            ));
        }
        if values.is_empty() {
            return Err((
                Some(i),
                format!("matrix axis `{}` has no values", name.value),
            ));
        }
    }
    let mut cells: Vec<Cell> = vec![Cell::new()];
    if !m.axes.is_empty() {
        for (name, values) in &m.axes {
            let mut next = Vec::new();
            for c in &cells {
                for v in values {
                    let mut c = c.clone();
                    c.insert(name.value.clone(), v.clone());
                    next.push(c);
                }
            }
            if next.len() > MAX_CELLS * 4 {
                return Err((None, too_many(next.len())));
            }
            cells = next;
        }
    } else {
        cells.clear();
    }
    for (what, list) in [("exclude", &m.exclude), ("include", &m.include)] {
        for entry in list {
            if entry.is_empty() {
                return Err((None, format!("an empty cell in `{what}:`")));
            }
            if let Some(k) = entry
                .keys()
                .find(|k| what == "exclude" && !axis_names.contains(&k.as_str()))
            {
                return Err((
                    None,
                    format!(
                        "`exclude:` names `{k}`, which is not an axis (axes: {})",
                        axis_names.join(", ")
                    ),
                ));
            }
            if let Some(k) = entry.keys().find(|k| !is_axis_name(k)) {
                return Err((None, format!("invalid matrix axis name `{k}` in `{what}:`")));
            }
        }
    }
    cells.retain(|c| {
        !m.exclude
            .iter()
            .any(|e| e.iter().all(|(k, v)| c.get(k) == Some(v)))
    });
    for inc in &m.include {
        if !cells.contains(inc) {
            cells.push(inc.clone());
        }
    }
    if cells.is_empty() {
        return Err((None, "the matrix has no cells left after `exclude:`".into()));
    }
    if cells.len() > MAX_CELLS {
        return Err((None, too_many(cells.len())));
    }
    Ok(cells)
}

fn too_many(n: usize) -> String {
    format!("the matrix makes {n} jobs, more than {MAX_CELLS}")
}

fn is_axis_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 50
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// A cell's default job name: its values joined by `-`, each character a
/// name may not have replaced by `_` (`3.12-poll`).
pub fn default_name(cell: &Cell) -> String {
    cell.values()
        .map(|v| {
            v.chars()
                .map(|c| {
                    if c.is_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// `text` with every `${{ matrix.AXIS }}` replaced by the cell's value;
/// other `${{ … }}` (secrets) stay. An axis the cell does not have (or a
/// matrix reference where there is no matrix) is an error.
pub fn substitute(text: &str, cell: &Cell) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = after[..end].trim();
        match inner.strip_prefix("matrix.") {
            Some(axis) => match cell.get(axis) {
                Some(v) => out.push_str(v),
                None if cell.is_empty() => {
                    return Err(format!(
                        "`${{{{ matrix.{axis} }}}}` is used where there is no `matrix:`"
                    ))
                }
                None => {
                    return Err(format!(
                        "`${{{{ matrix.{axis} }}}}` names no axis of the matrix (axes: {})",
                        cell.keys().cloned().collect::<Vec<_>>().join(", ")
                    ))
                }
            },
            None => out.push_str(&rest[start..start + 3 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `text` refers to the matrix at all.
pub fn mentions_matrix(text: &str) -> bool {
    text.contains("matrix.") && text.contains("${{")
}

/// Every cell of `outer` with every cell of `inner` (a builder's matrix
/// and its job's).
pub(super) fn product(outer: &[Cell], inner: &[Cell]) -> Vec<Cell> {
    let mut out = Vec::with_capacity(outer.len() * inner.len());
    for o in outer {
        for i in inner {
            let mut c = o.clone();
            c.extend(i.iter().map(|(k, v)| (k.clone(), v.clone())));
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(text: &str) -> RawMatrix {
        serde_saphyr::from_str(text).unwrap()
    }

    #[test]
    fn axes_multiply_exclude_removes_and_include_adds() {
        let m = matrix(
            "python: [3.10, \"3.12\"]\nreactor: [default, poll]\nexclude:\n  - {python: 3.10, reactor: poll}\ninclude:\n  - {python: 3.14, reactor: asyncio}\n",
        );
        let names: Vec<String> = cells(&m).unwrap().iter().map(default_name).collect();
        assert_eq!(
            names,
            ["3.10-default", "3.12-default", "3.12-poll", "3.14-asyncio"]
        );
    }

    #[test]
    fn bad_matrices_say_what_is_wrong() {
        let err = |t: &str| cells(&matrix(t)).unwrap_err().1;
        assert!(err("a: []\n").contains("no values"));
        assert!(err("a: [x]\nexclude:\n  - {b: x}\n").contains("not an axis"));
        assert!(err("a: [x]\nexclude:\n  - {a: x}\n").contains("no cells left"));
        assert!(
            err("a: [1,2,3,4,5,6,7,8]\nb: [1,2,3,4,5,6,7,8]\nc: [1,2,3,4,5]\n")
                .contains("more than 256")
        );
        assert!(err("\"a b\": [x]\n").contains("invalid matrix axis name"));
    }

    #[test]
    fn substitution_replaces_axes_and_keeps_secrets() {
        let cell: Cell = [("python".to_string(), "3.12".to_string())].into();
        assert_eq!(
            substitute("python3 == ${{ matrix.python }} ${{secrets.k}}", &cell).unwrap(),
            "python3 == 3.12 ${{secrets.k}}"
        );
        assert!(substitute("${{ matrix.nope }}", &cell)
            .unwrap_err()
            .contains("names no axis"));
        assert!(substitute("${{ matrix.python }}", &Cell::new())
            .unwrap_err()
            .contains("no `matrix:`"));
        assert_eq!(substitute("a ${{ b", &cell).unwrap(), "a ${{ b");
    }
}
