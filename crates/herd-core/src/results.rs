//! Reading test results beside JUnit (`junit`): TAP and subunit v2 (what
//! `trial --reporter=subunitv2` writes), matched to the batch's ids the
//! same way. Every reader returns only the batch's tests it found; bad
//! input is an error, never a panic.

use herd_proto::{RunOutcome, TestRun};
use std::collections::HashMap;

/// Largest report read (as for JUnit).
pub use crate::junit::MAX_REPORT_BYTES;
/// Most bytes of a failure's message kept.
const MAX_MESSAGE: usize = 4096;

/// Finds the batch id a runner's name stands for; without a batch (a
/// step's own report), every name is an id.
struct Ids<'a> {
    by_norm: Option<HashMap<String, &'a String>>,
}

impl<'a> Ids<'a> {
    fn new(batch: Option<&'a [String]>) -> Self {
        Ids {
            by_norm: batch.map(|b| b.iter().map(|id| (crate::junit::norm(id), id)).collect()),
        }
    }

    fn find(&self, name: &str) -> Option<String> {
        match &self.by_norm {
            Some(m) => m
                .get(&crate::junit::norm(name.trim()))
                .map(|id| (*id).clone()),
            None => Some(name.trim())
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        }
    }
}

/// Every result a report holds, by its format (a step's own report, not
/// a batch's): the ids are the runner's names.
pub fn read_all(format: herd_proto::ReportFormat, data: &[u8]) -> Result<Vec<TestRun>, String> {
    use herd_proto::ReportFormat;
    match format {
        ReportFormat::Junit => crate::junit::results_in(&String::from_utf8_lossy(data), None),
        ReportFormat::Tap => tap_in(&String::from_utf8_lossy(data), None),
        ReportFormat::Subunit => subunit_in(data, None),
    }
}

/// Every result the output names, by a `results: {pattern}`.
pub fn pattern_all(pattern: &str, output: &str) -> Result<Vec<TestRun>, String> {
    pattern_in(pattern, output, None)
}

fn clip(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The results of a TAP stream (`ok 1 - ID`, `not ok 2 - ID # SKIP …`,
/// a YAML diagnostic block after a failure as its message).
pub fn tap(text: &str, batch: &[String]) -> Result<Vec<TestRun>, String> {
    tap_in(text, Some(batch))
}

fn tap_in(text: &str, batch: Option<&[String]>) -> Result<Vec<TestRun>, String> {
    if text.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "the report is {} bytes, more than {MAX_REPORT_BYTES}",
            text.len()
        ));
    }
    let ids = Ids::new(batch);
    let mut out: Vec<TestRun> = Vec::new();
    let mut seen_plan_or_test = false;
    let mut diag: Option<(usize, String)> = None;
    for line in text.lines() {
        if let Some((i, buf)) = &mut diag {
            if line.trim() == "..." {
                if let Some(r) = out.get_mut(*i) {
                    r.message = Some(clip(std::mem::take(buf)));
                }
                diag = None;
            } else {
                buf.push_str(line.trim_start());
                buf.push('\n');
            }
            continue;
        }
        if line.trim() == "---" {
            if let Some(last) = out.len().checked_sub(1) {
                diag = Some((last, String::new()));
            }
            continue;
        }
        let (passed, rest) = if let Some(r) = line.strip_prefix("not ok") {
            (false, r)
        } else if let Some(r) = line.strip_prefix("ok") {
            (true, r)
        } else {
            seen_plan_or_test |= line.starts_with("1..") || line.starts_with("TAP version");
            continue;
        };
        seen_plan_or_test = true;
        // `ok 3 - description # directive`
        let rest = rest
            .trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit());
        let rest = rest.trim_start().strip_prefix('-').unwrap_or(rest);
        let (desc, directive) = match rest.split_once(" # ") {
            Some((d, dir)) => (d, dir.trim().to_ascii_uppercase()),
            None => (rest, String::new()),
        };
        let Some(id) = ids.find(desc) else { continue };
        let outcome = if directive.starts_with("SKIP") {
            RunOutcome::Skipped
        } else if passed || directive.starts_with("TODO") {
            RunOutcome::Passed
        } else {
            RunOutcome::Failed
        };
        out.push(TestRun {
            id: id.clone(),
            outcome,
            secs: None,
            message: None,
        });
    }
    if !seen_plan_or_test && !text.trim().is_empty() {
        return Err("no TAP test lines (`ok …`, `not ok …`) in the report".into());
    }
    Ok(out)
}

/// Reads a subunit stream: version 2 (binary packets, what python-subunit
/// writes) or version 1 (text, what `trial --reporter=subunit` writes),
/// told apart by the first byte.
pub fn subunit(data: &[u8], batch: &[String]) -> Result<Vec<TestRun>, String> {
    subunit_in(data, Some(batch))
}

fn subunit_in(data: &[u8], batch: Option<&[String]>) -> Result<Vec<TestRun>, String> {
    if data.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "the report is {} bytes, more than {MAX_REPORT_BYTES}",
            data.len()
        ));
    }
    match data.first() {
        Some(0xB3) | None => subunit_v2(data, batch),
        Some(_) => subunit_v1(&String::from_utf8_lossy(data), batch),
    }
}

/// Subunit v1: `test: ID`, then `success: ID`, `failure: ID [` … `]`,
/// `error:`, `skip:`, `xfail:`, `uxsuccess:`; a bracketed block is the
/// outcome's details (a traceback), kept as the message.
fn subunit_v1(text: &str, batch: Option<&[String]>) -> Result<Vec<TestRun>, String> {
    let ids = Ids::new(batch);
    let mut out: Vec<TestRun> = Vec::new();
    let mut details: Option<(Option<usize>, String)> = None;
    let mut any = false;
    for line in text.lines() {
        if let Some((at, buf)) = &mut details {
            if line == "]" {
                if let Some(r) = at.and_then(|i| out.get_mut(i)) {
                    if r.outcome == RunOutcome::Failed {
                        r.message = Some(clip(std::mem::take(buf)));
                    }
                }
                details = None;
            } else if buf.len() < MAX_MESSAGE {
                buf.push_str(line);
                buf.push('\n');
            }
            continue;
        }
        let Some((word, rest)) = line.split_once([':', ' ']) else {
            continue;
        };
        let rest = rest.trim_start_matches(':').trim();
        let (name, opens) = match rest.strip_suffix('[') {
            Some(n) => (n.trim(), true),
            None => (
                rest.strip_suffix("[ multipart").map_or(rest, str::trim),
                rest.ends_with("[ multipart"),
            ),
        };
        let outcome = match word.to_ascii_lowercase().as_str() {
            "success" | "successful" | "xfail" => Some(RunOutcome::Passed),
            "failure" | "error" | "uxsuccess" => Some(RunOutcome::Failed),
            "skip" => Some(RunOutcome::Skipped),
            "test" | "testing" | "time" | "tags" | "progress" => {
                any = true;
                None
            }
            _ => None,
        };
        let mut at = None;
        if let Some(outcome) = outcome {
            any = true;
            if let Some(id) = ids.find(name) {
                out.push(TestRun {
                    id: id.clone(),
                    outcome,
                    secs: None,
                    message: (outcome == RunOutcome::Failed).then(|| word.to_string()),
                });
                at = Some(out.len() - 1);
            }
        }
        if opens {
            details = Some((at, String::new()));
        }
    }
    if !any && !text.trim().is_empty() {
        return Err("not a subunit stream: no `test:` or outcome lines, and no v2 packet".into());
    }
    Ok(out)
}

/// Reads subunit v2 packets: status packets give outcomes, timestamps
/// the duration, file attachments (a traceback) the message. The CRC is
/// not checked; lengths and fields are, so garbage is an error.
fn subunit_v2(data: &[u8], batch: Option<&[String]>) -> Result<Vec<TestRun>, String> {
    let ids = Ids::new(batch);
    let mut started: HashMap<String, f64> = HashMap::new();
    let mut attached: HashMap<String, String> = HashMap::new();
    let mut out: Vec<TestRun> = Vec::new();
    let mut pos = 0;
    while pos < data.len() {
        let p = Packet::read(data, pos)?;
        pos = p.end;
        let Some(test) = p.test_id.as_deref() else {
            continue;
        };
        if let Some(text) = p.content {
            let buf = attached.entry(test.to_string()).or_default();
            if buf.len() < MAX_MESSAGE {
                buf.push_str(&String::from_utf8_lossy(text));
            }
        }
        let outcome = match p.status {
            2 => {
                if let Some(t) = p.time {
                    started.insert(test.to_string(), t);
                }
                continue;
            }
            3 | 7 => RunOutcome::Passed,
            5 => RunOutcome::Skipped,
            4 | 6 => RunOutcome::Failed,
            _ => continue,
        };
        let Some(id) = ids.find(test) else { continue };
        let secs = p
            .time
            .zip(started.get(test))
            .map(|(end, start)| (end - start).max(0.0));
        let message = (outcome == RunOutcome::Failed).then(|| {
            clip(attached.remove(test).unwrap_or_else(|| {
                if p.status == 4 {
                    "it passed unexpectedly (an expected failure)".into()
                } else {
                    "it failed".into()
                }
            }))
        });
        out.push(TestRun {
            id: id.clone(),
            outcome,
            secs,
            message,
        });
    }
    Ok(out)
}

struct Packet<'a> {
    end: usize,
    status: u16,
    time: Option<f64>,
    test_id: Option<String>,
    content: Option<&'a [u8]>,
}

impl<'a> Packet<'a> {
    fn read(data: &'a [u8], start: usize) -> Result<Packet<'a>, String> {
        let bad = |what: &str| format!("not a subunit v2 stream: {what} at byte {start}");
        if data.get(start) != Some(&0xB3) {
            return Err(bad("no packet signature (0xB3)"));
        }
        let flags = u16::from_be_bytes([
            *data.get(start + 1).ok_or_else(|| bad("a cut packet"))?,
            *data.get(start + 2).ok_or_else(|| bad("a cut packet"))?,
        ]);
        if flags >> 12 != 2 {
            return Err(bad("a packet of another version than 2"));
        }
        let mut r = Reader {
            data,
            pos: start + 3,
        };
        let len = r.number().ok_or_else(|| bad("a cut length"))?;
        let end = start
            .checked_add(len)
            .filter(|e| *e <= data.len() && len >= 8);
        let end = end.ok_or_else(|| bad("a packet longer than the stream"))?;
        // The fields lie between the length and the 4-byte CRC.
        r.data = &data[..end - 4];
        let mut p = Packet {
            end,
            status: flags & 0x7,
            time: None,
            test_id: None,
            content: None,
        };
        if flags & 0x0200 != 0 {
            let secs = r.bytes(4).ok_or_else(|| bad("a cut timestamp"))?;
            let secs = u32::from_be_bytes([secs[0], secs[1], secs[2], secs[3]]);
            let nanos = r.number().ok_or_else(|| bad("a cut timestamp"))?;
            p.time = Some(f64::from(secs) + nanos as f64 / 1e9);
        }
        if flags & 0x0800 != 0 {
            p.test_id = Some(r.text().ok_or_else(|| bad("a cut test id"))?);
        }
        if flags & 0x0080 != 0 {
            let n = r.number().ok_or_else(|| bad("cut tags"))?;
            for _ in 0..n {
                r.text().ok_or_else(|| bad("cut tags"))?;
            }
        }
        if flags & 0x0020 != 0 {
            r.text().ok_or_else(|| bad("a cut mime type"))?;
        }
        if flags & 0x0040 != 0 {
            r.text().ok_or_else(|| bad("a cut file name"))?;
            let n = r.number().ok_or_else(|| bad("a cut file"))?;
            p.content = Some(r.bytes(n).ok_or_else(|| bad("a cut file"))?);
        }
        Ok(p)
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let b = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(b)
    }

    /// Subunit's number: the first byte's top two bits say how many bytes
    /// follow; big-endian.
    fn number(&mut self) -> Option<usize> {
        let first = *self.data.get(self.pos)?;
        self.pos += 1;
        let mut v = usize::from(first & 0x3f);
        for _ in 0..(first >> 6) {
            v = (v << 8) | usize::from(*self.data.get(self.pos)?);
            self.pos += 1;
        }
        Some(v)
    }

    fn text(&mut self) -> Option<String> {
        let n = self.number()?;
        Some(String::from_utf8_lossy(self.bytes(n)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tap_lines_give_outcomes_and_diagnostics_the_message() {
        let text = "TAP version 13\n1..4\nok 1 - t/a.t\nnot ok 2 - t/b.t\n  ---\n  message: boom\n  ...\nok 3 - t/c.t # SKIP no db\nnot ok 4 - t/d.t # TODO later\nok 5 - not/ours\n";
        let runs = tap(text, &batch(&["t/a.t", "t/b.t", "t/c.t", "t/d.t"])).unwrap();
        let by: HashMap<&str, &TestRun> = runs.iter().map(|r| (r.id.as_str(), r)).collect();
        assert_eq!(by["t/a.t"].outcome, RunOutcome::Passed);
        assert_eq!(by["t/b.t"].outcome, RunOutcome::Failed);
        assert!(by["t/b.t"].message.as_deref().unwrap().contains("boom"));
        assert_eq!(by["t/c.t"].outcome, RunOutcome::Skipped);
        assert_eq!(by["t/d.t"].outcome, RunOutcome::Passed);
        assert_eq!(runs.len(), 4, "only the batch's tests");
        assert!(tap("hello\n", &batch(&["x"])).is_err());
    }

    /// Packets as python-subunit's StreamResultToBytes writes them
    /// (`status(test_id=…, test_status=…)`): success, fail, inprogress.
    const PYTHON_SUBUNIT: &str = "b329031c13706b672e746573745f612e542e746573745f785f68cef1b329061c13706b672e746573745f612e542e746573745f7963e609a7b329021c13706b672e746573745f612e542e746573745f7aa64ecb1d";

    #[test]
    fn subunit_v2_from_python_subunit_is_read() {
        let data = hex::decode(PYTHON_SUBUNIT).unwrap();
        let ids = batch(&[
            "pkg.test_a.T.test_x",
            "pkg.test_a.T.test_y",
            "pkg.test_a.T.test_z",
        ]);
        let runs = subunit(&data, &ids).unwrap();
        assert_eq!(runs.len(), 2, "{runs:?}");
        assert_eq!(runs[0].outcome, RunOutcome::Passed);
        assert_eq!(runs[1].outcome, RunOutcome::Failed);
        assert!(subunit(b"garbage", &ids)
            .unwrap_err()
            .contains("not a subunit stream"));
        assert!(subunit(&[0xB3, 0x29], &ids)
            .unwrap_err()
            .contains("not a subunit v2 stream"));
        assert!(subunit(&data[..10], &ids).is_err(), "a cut stream");
    }

    #[test]
    fn subunit_v1_from_trial_is_read_with_its_tracebacks() {
        let text = "test: pkg.T.test_ok\nsuccessful: pkg.T.test_ok\ntest: pkg.T.test_bad\nfailure: pkg.T.test_bad [\nTraceback (most recent call last):\nFailTest: boom\n]\ntest: pkg.T.test_skip\nskip: pkg.T.test_skip [\nno\n]\nerror: pkg.T.test_err [ multipart\nx\n]\n";
        let ids = batch(&[
            "pkg.T.test_ok",
            "pkg.T.test_bad",
            "pkg.T.test_skip",
            "pkg.T.test_err",
        ]);
        let runs = subunit(text.as_bytes(), &ids).unwrap();
        let by: HashMap<&str, &TestRun> = runs.iter().map(|r| (r.id.as_str(), r)).collect();
        assert_eq!(by["pkg.T.test_ok"].outcome, RunOutcome::Passed);
        assert_eq!(by["pkg.T.test_bad"].outcome, RunOutcome::Failed);
        assert!(by["pkg.T.test_bad"]
            .message
            .as_deref()
            .unwrap()
            .contains("FailTest: boom"));
        assert_eq!(by["pkg.T.test_skip"].outcome, RunOutcome::Skipped);
        assert_eq!(by["pkg.T.test_err"].outcome, RunOutcome::Failed);
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_or_refused_without_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let ids = batch(&["a", "b"]);
            let _ = subunit(&data, &ids);
            let _ = tap(&String::from_utf8_lossy(&data), &ids);
        }
    }
}

/// Most bytes a `results: {pattern}` regex may compile to.
const MAX_PATTERN_SIZE: usize = 1 << 20;

/// A `results: {pattern}` regex, checked: it compiles within bounds and
/// has the named groups `id` and `outcome`.
pub fn compile_pattern(text: &str) -> Result<regex::Regex, String> {
    let re = regex::RegexBuilder::new(text)
        .multi_line(true)
        .size_limit(MAX_PATTERN_SIZE)
        .build()
        .map_err(|e| format!("invalid pattern: {e}"))?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    for group in ["id", "outcome"] {
        if !names.contains(&group) {
            return Err(format!(
                "the pattern has no group named `{group}`: write `(?P<{group}>…)`"
            ));
        }
    }
    Ok(re)
}

/// Results from a batch's output: each match of `pattern` names a test
/// (`id`) and its outcome (`outcome`: ok, pass, passed, success, xfail;
/// fail, failed, failure, error, not ok; skip, skipped). Unknown words
/// and ids outside the batch are left out.
pub fn pattern(pattern: &str, output: &str, batch: &[String]) -> Result<Vec<TestRun>, String> {
    pattern_in(pattern, output, Some(batch))
}

fn pattern_in(
    pattern: &str,
    output: &str,
    batch: Option<&[String]>,
) -> Result<Vec<TestRun>, String> {
    let re = compile_pattern(pattern)?;
    let ids = Ids::new(batch);
    let mut out = Vec::new();
    for caps in re.captures_iter(output) {
        let (Some(name), Some(word)) = (caps.name("id"), caps.name("outcome")) else {
            continue;
        };
        let outcome = match word.as_str().trim().to_ascii_lowercase().as_str() {
            "ok" | "pass" | "passed" | "success" | "successful" | "xfail" => RunOutcome::Passed,
            "fail" | "failed" | "failure" | "error" | "errored" | "not ok" => RunOutcome::Failed,
            "skip" | "skipped" => RunOutcome::Skipped,
            _ => continue,
        };
        let Some(id) = ids.find(name.as_str()) else {
            continue;
        };
        out.push(TestRun {
            id: id.clone(),
            outcome,
            secs: None,
            message: (outcome == RunOutcome::Failed)
                .then(|| clip(caps.get(0).map_or("", |m| m.as_str()).to_string())),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod pattern_tests {
    use super::*;

    #[test]
    fn a_pattern_reads_outcomes_from_the_output() {
        let out = "t1 ... ok\nt2 ... FAIL\nnoise\nt3 ... skipped 'x'\nt4 ... weird\n";
        let ids: Vec<String> = ["t1", "t2", "t3", "t4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let runs = pattern(r"^(?P<id>\S+) \.\.\. (?P<outcome>\w+)", out, &ids).unwrap();
        let got: Vec<(&str, RunOutcome)> =
            runs.iter().map(|r| (r.id.as_str(), r.outcome)).collect();
        assert_eq!(
            got,
            [
                ("t1", RunOutcome::Passed),
                ("t2", RunOutcome::Failed),
                ("t3", RunOutcome::Skipped)
            ]
        );
        assert!(compile_pattern("(?P<id>x)")
            .unwrap_err()
            .contains("`outcome`"));
        assert!(compile_pattern("(")
            .unwrap_err()
            .contains("invalid pattern"));
    }
}
