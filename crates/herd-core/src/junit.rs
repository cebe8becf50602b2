//! Reading a runner's JUnit report and matching its test cases to the ids
//! of the batch (the ids the `list` command printed).
//!
//! Runners name cases differently from their ids: pytest lists
//! `tests/test_a.py::TestX::test_y` and reports classname `tests.test_a.TestX`
//! with name `test_y`. Both sides are compared in a normal form where `::`,
//! `/`, `.py` and spaces separate the same way.

use herd_proto::{RunOutcome, TestRun};
use quick_junit::{NonSuccessKind, Report, TestCaseStatus};
use std::collections::HashMap;

/// Largest report read.
pub const MAX_REPORT_BYTES: usize = 64 * 1024 * 1024;

/// The results of the batch's tests that the report mentions.
pub fn results(xml: &str, batch: &[String]) -> Result<Vec<TestRun>, String> {
    results_in(xml, Some(batch))
}

/// The results of the batch's tests (or, without a batch, of every test)
/// that the report mentions.
pub(crate) fn results_in(xml: &str, batch: Option<&[String]>) -> Result<Vec<TestRun>, String> {
    if xml.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "the report is {} bytes, more than the limit of {MAX_REPORT_BYTES}",
            xml.len()
        ));
    }
    let report = parse(xml)?;
    let by_norm: HashMap<String, &String> = batch
        .unwrap_or_default()
        .iter()
        .map(|id| (norm(id), id))
        .collect();
    let mut out: HashMap<String, TestRun> = HashMap::new();
    for suite in &report.test_suites {
        for case in &suite.test_cases {
            let name = case.name.as_str();
            let class = case.classname.as_ref().map(|c| c.as_str()).unwrap_or("");
            let id = match batch {
                Some(batch) => match find(&by_norm, batch, class, name) {
                    Some(id) => id.clone(),
                    None => continue,
                },
                None if class.is_empty() => name.to_string(),
                None => format!("{class}.{name}"),
            };
            let (outcome, message) = match &case.status {
                TestCaseStatus::Success { .. } => (RunOutcome::Passed, None),
                TestCaseStatus::Skipped { .. } => (RunOutcome::Skipped, None),
                TestCaseStatus::NonSuccess {
                    kind,
                    message,
                    description,
                    ..
                } => {
                    let kind = match kind {
                        NonSuccessKind::Failure => "failure",
                        NonSuccessKind::Error => "error",
                    };
                    let text = [message.as_ref(), description.as_ref()]
                        .into_iter()
                        .flatten()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join("\n");
                    (RunOutcome::Failed, Some(format!("{kind}: {text}")))
                }
            };
            let run = TestRun {
                id: id.clone(),
                outcome,
                secs: case.time.map(|d| d.as_secs_f64()),
                message,
            };
            // A parametrised case reported twice: a failure wins.
            match out.get(&id) {
                Some(prev) if prev.outcome == RunOutcome::Failed => {}
                _ => {
                    out.insert(id, run);
                }
            }
        }
    }
    let mut runs: Vec<TestRun> = out.into_values().collect();
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(runs)
}

/// quick-junit reads `<testsuites>` documents; many runners write a bare
/// `<testsuite>`, which is wrapped first.
fn parse(xml: &str) -> Result<Report, String> {
    let body = strip_prolog(xml);
    let wrapped;
    let doc = if body.starts_with("<testsuite") && !body.starts_with("<testsuites") {
        wrapped = format!("<testsuites name=\"\">{body}</testsuites>");
        wrapped.as_str()
    } else {
        body
    };
    let named = name_suites(doc);
    Report::deserialize_from_str(&named).map_err(|e| e.to_string())
}

/// The document with `name=""` added to each `<testsuite>` without a
/// name: quick-junit requires one, and hand-written reports (a shell
/// script's) often leave it out.
fn name_suites(doc: &str) -> std::borrow::Cow<'_, str> {
    const TAG: &str = "<testsuite";
    let mut out = String::new();
    let mut rest = doc;
    let mut changed = false;
    while let Some(at) = rest.find(TAG) {
        let after = &rest[at + TAG.len()..];
        let is_suite = after.starts_with(|c: char| c.is_whitespace() || c == '>' || c == '/');
        // The tag's end: the first `>` outside a quoted value.
        let mut quote = None;
        let end = after.char_indices().find_map(|(i, c)| match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                None
            }
            (Some(q), c) if c == q => {
                quote = None;
                None
            }
            (None, '>') => Some(i),
            _ => None,
        });
        let head = &after[..end.unwrap_or(after.len())];
        out.push_str(&rest[..at + TAG.len()]);
        if is_suite && !has_name_attribute(head) {
            out.push_str(" name=\"\"");
            changed = true;
        }
        rest = after;
    }
    if !changed {
        return std::borrow::Cow::Borrowed(doc);
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

fn has_name_attribute(head: &str) -> bool {
    head.split_whitespace()
        .any(|a| a.starts_with("name=") || a.starts_with("name ="))
}

/// The document from its root element on (no declaration or comments).
fn strip_prolog(xml: &str) -> &str {
    let mut rest = xml.trim_start_matches('\u{feff}').trim_start();
    loop {
        if let Some(r) = rest.strip_prefix("<?") {
            rest = r
                .split_once("?>")
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else if let Some(r) = rest.strip_prefix("<!--") {
            rest = r
                .split_once("-->")
                .map(|(_, r)| r)
                .unwrap_or("")
                .trim_start();
        } else {
            return rest;
        }
    }
}

fn find<'a>(
    by_norm: &HashMap<String, &'a String>,
    batch: &'a [String],
    class: &str,
    name: &str,
) -> Option<&'a String> {
    if !class.is_empty() {
        if let Some(id) = by_norm.get(&norm(&format!("{class}.{name}"))) {
            return Some(id);
        }
    }
    if let Some(id) = by_norm.get(&norm(name)) {
        return Some(id);
    }
    // The id may carry a prefix the report leaves out (a path, a package):
    // accept a unique id that ends with the case.
    let tail = if class.is_empty() {
        norm(name)
    } else {
        norm(&format!("{class}.{name}"))
    };
    let suffix = format!(".{tail}");
    let mut hits = batch.iter().filter(|id| norm(id).ends_with(&suffix));
    match (hits.next(), hits.next()) {
        (Some(id), None) => Some(id),
        _ => None,
    }
}

/// `tests/test_a.py::TestX::test_y` and `tests.test_a.TestX.test_y` alike.
pub(crate) fn norm(s: &str) -> String {
    s.replace(".py::", ".")
        .replace("::", ".")
        .replace(['/', '\\', ' '], ".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suite_without_a_name_is_read() {
        let runs = results(
            "<testsuite><testcase name=\"a\"><failure message=\"m\">x</failure></testcase><testcase name=\"b\"/></testsuite>",
            &["a".to_string(), "b".to_string()],
        )
        .unwrap();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0].outcome, RunOutcome::Failed);
        assert_eq!(runs[0].message.as_deref(), Some("failure: m\nx"));
        let named = name_suites("<testsuites><testsuite tests=\"1\" x='a>b'><testsuite name=\"n\"/></testsuite></testsuites>");
        assert_eq!(
            named,
            "<testsuites><testsuite name=\"\" tests=\"1\" x='a>b'><testsuite name=\"n\"/></testsuite></testsuites>"
        );
    }

    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="0.05" timestamp="2026-11-29T10:00:00.000000+00:00" hostname="h"><testcase classname="tests.test_a.TestX" name="test_y" time="0.001" /><testcase classname="tests.test_a" name="test_p[1-2]" time="0.25"><failure message="assert 1 == 2">def test_p(): assert 1 == 2</failure></testcase><testcase classname="tests.test_a" name="test_s" time="0.000"><skipped type="pytest.skip" message="no">skip</skipped></testcase><testcase classname="tests.test_b" name="test_other" time="0.1" /></testsuite></testsuites>"#;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pytest_report_matches_pytest_ids() {
        let batch = ids(&[
            "tests/test_a.py::TestX::test_y",
            "tests/test_a.py::test_p[1-2]",
            "tests/test_a.py::test_s",
            "tests/test_a.py::test_missing",
        ]);
        let runs = results(PYTEST, &batch).expect("parses");
        let by: HashMap<&str, &TestRun> = runs.iter().map(|r| (r.id.as_str(), r)).collect();
        assert_eq!(
            runs.len(),
            3,
            "test_other is not in the batch; test_missing not in the report"
        );
        assert_eq!(
            by["tests/test_a.py::TestX::test_y"].outcome,
            RunOutcome::Passed
        );
        let p = by["tests/test_a.py::test_p[1-2]"];
        assert_eq!(p.outcome, RunOutcome::Failed);
        assert_eq!(p.secs, Some(0.25));
        assert!(p.message.as_deref().unwrap_or("").contains("assert 1 == 2"));
        assert_eq!(by["tests/test_a.py::test_s"].outcome, RunOutcome::Skipped);
    }

    #[test]
    fn bare_testsuite_and_suffix_ids() {
        let xml = r#"<?xml version="1.0"?>
<!-- written by some runner -->
<testsuite name="pkg" tests="1"><testcase classname="mod" name="t1" time="1.5"/></testsuite>"#;
        let runs = results(xml, &ids(&["src/pkg/mod t1"])).expect("parses");
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].secs, Some(1.5));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "<",
            "<testsuites>",
            "not xml at all",
            "<testsuite><testcase/></testsuite>",
        ] {
            let _ = results(bad, &ids(&["a"]));
        }
        assert!(results("<<<", &ids(&["a"])).is_err());
    }

    use proptest::prelude::*;

    fn case() -> impl Strategy<Value = String> {
        (
            "[a-z_.]{0,8}",
            "[a-z_\\[\\]0-9-]{0,8}",
            prop_oneof![
                Just(String::new()),
                Just("<failure message=\"m\">x</failure>".to_string()),
                Just("<skipped/>".to_string()),
                "\\PC{0,12}",
            ],
        )
            .prop_map(|(class, name, body)| {
                format!("<testcase classname=\"{class}\" name=\"{name}\" time=\"0.5\">{body}</testcase>")
            })
    }

    proptest! {
        /// Whatever a runner writes, the answer is results for ids of the
        /// batch only, or an error: never a panic, never a stranger's id.
        #[test]
        fn reports_give_only_batch_ids(cases in proptest::collection::vec(case(), 0..6),
                                        junk in "\\PC{0,40}", bare in any::<bool>()) {
            let body = cases.concat();
            let xml = if bare {
                format!("<testsuite name=\"s\">{body}{junk}</testsuite>")
            } else {
                format!("<testsuites><testsuite name=\"s\">{body}</testsuite></testsuites>{junk}")
            };
            let batch = ids(&["tests/a.py::t1", "b.t_2", "c d"]);
            if let Ok(runs) = results(&xml, &batch) {
                prop_assert!(runs.len() <= batch.len());
                prop_assert!(runs.iter().all(|r| batch.contains(&r.id)));
            }
        }

        #[test]
        fn any_text_is_read_or_refused(text in "\\PC{0,300}") {
            let _ = results(&text, &ids(&["a"]));
        }
    }
}
