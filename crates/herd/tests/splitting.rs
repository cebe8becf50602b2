//! One test suite split over several workers by its timings: every test
//! runs once, a lost worker's batch runs elsewhere, a test that fails once
//! is flaky, and the results come back as one.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// A fake test runner: `list` prints the ids; `run JUNIT FILE` runs the ids
/// in FILE (sleeping each test's duration), writes a JUnit report
/// and records which worker ran which tests in RAN_DIR.
const RUNNER: &str = r#"
import os, sys, time
N = int(os.environ.get("SUITE_SIZE", "300"))
ran_dir = os.environ["RAN_DIR"]
def duration(t):
    if t == os.environ.get("LONG_TEST"):
        return 0.5
    if os.environ.get("SLOW"):
        return float(os.environ["SLOW"])
    n = int(t[1:])
    return 0.3 if n % 97 == 0 else (n % 7) * 0.002
if sys.argv[1] == "list":
    for i in range(N):
        print("t%03d" % i)
    if os.environ.get("HERD_WORKER") == os.environ.get("ODD_WORKER"):
        print("extra")
    sys.exit(0)
ids = [l.strip() for l in open(sys.argv[3]) if l.strip()]
worker = os.environ["HERD_WORKER"]
with open(os.path.join(ran_dir, "started-%s-%s" % (worker, os.environ["HERD_BATCH"])), "w") as f:
    f.write("\n".join(ids) + "\n")
if worker == os.environ.get("HANG_WORKER"):
    open(os.path.join(ran_dir, "hanging"), "w").write(str(os.getpid()))
    time.sleep(300)
cases = []
for t in ids:
    if t == os.environ.get("GATE_TEST"):
        # Held until the test opens the gate (bounded).
        for _ in range(1200):
            if os.path.exists(os.path.join(ran_dir, "open")):
                break
            time.sleep(0.1)
    time.sleep(duration(t))
    body = ""
    if t == os.environ.get("FLAKY_TEST"):
        marker = os.path.join(ran_dir, "flaky-failed-once")
        if not os.path.exists(marker):
            open(marker, "w").write(worker)
            body = '<failure message="first run fails">boom</failure>'
    if t == os.environ.get("BROKEN_TEST"):
        body = '<failure message="always fails">assert 1 == 2</failure>'
    cases.append('<testcase classname="suite" name="%s" time="%.3f">%s</testcase>' % (t, duration(t), body))
os.makedirs(os.path.dirname(sys.argv[2]) or ".", exist_ok=True)
with open(sys.argv[2], "w") as f:
    f.write('<?xml version="1.0"?><testsuites name="fake"><testsuite name="suite" tests="%d">%s</testsuite></testsuites>' % (len(cases), "".join(cases)))
with open(os.path.join(ran_dir, "ran-%s-%s" % (worker, os.environ["HERD_BATCH"])), "w") as f:
    f.write("\n".join(ids) + "\n")
failed = any("<failure" in c for c in cases)
sys.exit(1 if failed else 0)
"#;

struct Suite {
    _root: tempfile::TempDir,
    runner: String,
    ran: std::path::PathBuf,
}

fn suite() -> Suite {
    let root = tempfile::tempdir().unwrap();
    let runner = root.path().join("runner.py");
    std::fs::write(&runner, RUNNER).unwrap();
    let ran = root.path().join("ran");
    std::fs::create_dir_all(&ran).unwrap();
    Suite {
        runner: runner.display().to_string(),
        ran,
        _root: root,
    }
}

fn pipeline(s: &Suite, workers: u32, env: &[(&str, &str)]) -> String {
    let mut envs = format!("RAN_DIR: {}", s.ran.display());
    for (k, v) in env {
        envs.push_str(&format!(", {k}: \"{v}\""));
    }
    format!(
        "builders:
  suite:
    steps:
      - run: echo setup on $HERD_WORKER
      - name: tests
        split:
          list: python3 {r} list
          run: python3 {r} run {{junit}} \"$HERD_TESTS_FILE\"
          junit: reports/junit.xml
          workers: {workers}
        env: {{{envs}}}
      - name: cleanup
        run: echo cleanup
        always: true
",
        r = s.runner
    )
}

/// Test id -> workers that ran it to the end (from the runner's records).
fn ran(dir: &Path, prefix: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(prefix) else {
            continue;
        };
        let worker = rest.rsplit_once('-').unwrap().0.to_string();
        for t in std::fs::read_to_string(dir.join(&name)).unwrap().lines() {
            out.entry(t.to_string()).or_default().push(worker.clone());
        }
    }
    out
}

fn tests_of(server: &Server, build: i64) -> Value {
    let t = server
        .get(&format!("/api/v1/builds/{build}/tests"))
        .unwrap();
    assert_eq!(t["splits"].as_array().unwrap().len(), 1, "{t}");
    t["splits"][0].clone()
}

fn outcome_map(split: &Value) -> BTreeMap<String, Value> {
    split["tests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

/// A builder whose one step splits the suite of `runner` (its `list` and
/// `run JUNIT FILE`) over `workers`, with `env` (YAML mapping entries).
fn split_builder(name: &str, runner: &str, workers: u32, env: &str) -> String {
    format!(
        "  {name}:
    steps:
      - name: tests
        split:
          list: python3 {runner} list
          run: python3 {runner} run {{junit}} \"$HERD_TESTS_FILE\"
          junit: reports/junit.xml
          workers: {workers}
        env: {{{env}}}
"
    )
}

/// Every step's message, over the build's jobs and attempts.
fn step_messages(build: &Value) -> Vec<String> {
    build["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|j| j["attempts"].as_array().unwrap().clone())
        .flat_map(|a| a["steps"].as_array().unwrap().clone())
        .filter_map(|st| st["message"].as_str().map(String::from))
        .collect()
}

fn workers(server: &Server, n: usize) -> Vec<Worker> {
    (0..n)
        .map(|i| {
            let name = format!("w{i}");
            let w = server.worker(&name, 1, &[]);
            server.wait_online(&name);
            w
        })
        .collect()
}

#[test]
fn a_suite_split_over_four_workers_runs_every_test_exactly_once() {
    let s = suite();
    let server = Server::start_with_pipelines(&[("p", &pipeline(&s, 4, &[]))], &[]);
    let _w = workers(&server, 4);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "success", "{b:#}");
    let runs = ran(&s.ran, "ran-");
    assert_eq!(runs.len(), 300);
    assert!(
        runs.values().all(|w| w.len() == 1),
        "a test ran twice: {:?}",
        runs.iter().find(|(_, w)| w.len() > 1)
    );
    let by_worker: BTreeSet<&String> = runs.values().flatten().collect();
    assert!(
        by_worker.len() >= 2,
        "the suite was not spread: {by_worker:?}"
    );

    let split = tests_of(&server, id);
    assert_eq!(split["state"], "done");
    assert_eq!(split["counts"]["passed"], 300, "{}", split["summary"]);
    let tests = outcome_map(&split);
    assert!(tests
        .values()
        .all(|t| t["runs"] == 1 && t["outcome"] == "passed"));
    assert_eq!(
        tests["t097"]["secs"].as_f64(),
        Some(0.3),
        "time from the JUnit report"
    );
    // The timeline: each worker's batches in time order, covering every test.
    let lanes = split["workers"].as_array().unwrap();
    let mut total = 0;
    for lane in lanes {
        let starts: Vec<i64> = lane["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["started_ms"].as_i64().unwrap())
            .collect();
        assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{lane}");
        total += lane["batches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["tests"].as_u64().unwrap())
            .sum::<u64>();
    }
    assert_eq!(total, 300);
    // Every shard ran its setup and its cleanup; none that was started failed.
    for j in b["jobs"].as_array().unwrap() {
        assert!(j["state"] == "success" || j["state"] == "skipped", "{j:#}");
    }
    // One merged JUnit report.
    let xml = server
        .get_text(&format!("/api/v1/splits/{}/junit.xml", split["id"]))
        .unwrap();
    assert_eq!(
        xml.matches("<testcase ").count(),
        300,
        "{}",
        &xml[..xml.len().min(500)]
    );
    // The CLI shows the summary.
    let out = server.cli(&["build", "show", &id.to_string()]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("300 tests: 300 passed"), "{shown}");

    // A second build uses the timings of the first: the long tests go first.
    let id2 = server.start_build("p", &[]);
    let b2 = server.wait_build(id2, Duration::from_secs(120));
    assert_eq!(b2["state"], "success");
    let mut batches: Vec<Value> = tests_of(&server, id2)["workers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["batches"].as_array().unwrap().clone())
        .collect();
    batches.sort_by_key(|b| b["batch"].as_u64());
    // The first round (one batch per worker) holds the four long tests;
    // without timings (list order) the last two would come much later.
    let first_round: BTreeSet<String> = batches
        .iter()
        .take(4)
        .flat_map(|b| b["ids"].as_array().unwrap().clone())
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    for long in ["t000", "t097", "t194", "t291"] {
        assert!(
            first_round.contains(long),
            "{long} (long, known from the first build) goes in the first round: {:?}",
            batches
                .iter()
                .take(4)
                .map(|b| &b["ids"])
                .collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_test_that_fails_once_is_flaky_and_one_that_always_fails_fails_the_build() {
    let s = suite();
    let env = [
        ("SUITE_SIZE", "40"),
        ("FLAKY_TEST", "t013"),
        ("BROKEN_TEST", "t020"),
    ];
    let server = Server::start_with_pipelines(&[("p", &pipeline(&s, 2, &env))], &[]);
    let _w = workers(&server, 2);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "failure", "{b:#}");
    let split = tests_of(&server, id);
    let tests = outcome_map(&split);
    assert_eq!(tests["t013"]["outcome"], "flaky", "{:#}", tests["t013"]);
    assert_eq!(tests["t013"]["runs"], 2);
    assert_eq!(tests["t020"]["outcome"], "failed");
    assert_eq!(tests["t020"]["runs"], 2);
    assert!(tests["t020"]["message"]
        .as_str()
        .unwrap()
        .contains("always fails"));
    assert_eq!(split["counts"]["passed"], 38);
    assert_eq!(split["counts"]["flaky"], 1);
    assert_eq!(split["counts"]["failed"], 1);
    // Failures and flaky tests come first.
    let order: Vec<&str> = split["tests"].as_array().unwrap()[..2]
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["t020", "t013"]);
    // The retry ran on the other worker (both are free by then).
    let started = ran(&s.ran, "ran-");
    let flaky_on = &started["t013"];
    assert_eq!(flaky_on.len(), 2);
    assert_ne!(flaky_on[0], flaky_on[1], "the retry goes to another worker");
    // The failing shard says why; the build's summary shows both.
    let summary = split["summary"].as_str().unwrap();
    assert!(
        summary.contains("1 flaky (t013)") && summary.contains("1 failed (t020)"),
        "{summary}"
    );
}

#[test]
fn killing_a_worker_mid_batch_moves_its_batch_and_every_test_gets_one_outcome() {
    let s = suite();
    let env = [("SUITE_SIZE", "60"), ("HANG_WORKER", "victim")];
    let server = Server::start_with_pipelines(&[("p", &pipeline(&s, 3, &env))], &[]);
    let mut victim = server.worker("victim", 1, &[]);
    server.wait_online("victim");
    let _w = workers(&server, 2);
    let id = server.start_build("p", &[]);
    wait_until(
        Duration::from_secs(60),
        "the victim to start a batch",
        || s.ran.join("hanging").exists().then_some(()),
    );
    let held = ran(&s.ran, "started-");
    let victim_tests: Vec<String> = held
        .iter()
        .filter(|(_, w)| w.contains(&"victim".to_string()))
        .map(|(t, _)| t.clone())
        .collect();
    assert!(!victim_tests.is_empty());
    victim.kill9();
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "success", "{b:#}");
    let split = tests_of(&server, id);
    let tests = outcome_map(&split);
    assert_eq!(tests.len(), 60);
    assert!(
        tests.values().all(|t| t["outcome"] == "passed"),
        "{}",
        split["summary"]
    );
    let finished = ran(&s.ran, "ran-");
    for t in &victim_tests {
        let on = &finished[t];
        assert_eq!(on.len(), 1, "{t} ran to the end once: {on:?}");
        assert_ne!(on[0], "victim");
    }
    let victim_lane = split["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["worker"] == "victim")
        .expect("the victim's lane");
    assert_eq!(victim_lane["batches"][0]["state"], "lost");
}

#[test]
fn shards_that_list_different_tests_fail_with_the_difference() {
    let s = suite();
    let env = [("SUITE_SIZE", "20"), ("ODD_WORKER", "w1"), ("SLOW", "0.1")];
    let server = Server::start_with_pipelines(&[("p", &pipeline(&s, 2, &env))], &[]);
    let _w = workers(&server, 2);
    // Each test takes long enough that both shards list before the end.
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "failure", "{b:#}");
    let messages = step_messages(&b);
    let diff = messages
        .iter()
        .find(|m| m.contains("listed other tests"))
        .unwrap_or_else(|| panic!("no mismatch message in {messages:?}"));
    assert!(diff.contains("extra"), "{diff}");
}

const PYTEST_HERD_YML: &str = r#"builders:
  pytest:
    steps:
      - name: tests
        split:
          list: python3 -m pytest -p no:cacheprovider --collect-only -q | grep '::'
          run: python3 -m pytest -p no:cacheprovider --junitxml={junit} @$HERD_TESTS_FILE
          junit: reports/junit.xml
          workers: 3
"#;

const PYTEST_SUITE: &[(&str, &str)] = &[
    (
        "tests/test_math.py",
        "import pytest\n\n\n@pytest.mark.parametrize('n', range(12))\ndef test_square(n):\n    assert n * n >= n\n\n\ndef test_broken():\n    assert 1 + 1 == 3\n\n\n@pytest.mark.skip(reason='not here')\ndef test_skipped():\n    pass\n",
    ),
    (
        "tests/test_classes.py",
        "class TestText:\n    def test_upper(self):\n        assert 'a'.upper() == 'A'\n\n    def test_split(self):\n        assert 'a b'.split() == ['a', 'b']\n\n    def test_wrong(self):\n        assert 'a' == 'b'\n",
    ),
    (
        "tests/sub/test_nested.py",
        "import time\n\n\ndef test_slow():\n    time.sleep(0.2)\n\n\ndef test_ids_with_spaces_and_quotes():\n    assert \"it's\"\n",
    ),
];

/// `nodeid OUTCOME` per test, from a local `pytest -v` run.
fn local_pytest(dir: &Path) -> BTreeMap<String, String> {
    let out = std::process::Command::new("python3")
        .args(["-m", "pytest", "-p", "no:cacheprovider", "-v"])
        .current_dir(dir)
        .output()
        .expect("python3 -m pytest");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("No module named pytest"),
        "pytest is needed (scripts/test installs it): {text}"
    );
    text.lines()
        .filter_map(|l| {
            let (id, rest) = l.split_once(' ')?;
            let outcome = rest.split_whitespace().next()?;
            (id.contains("::") && matches!(outcome, "PASSED" | "FAILED" | "SKIPPED"))
                .then(|| (id.to_string(), outcome.to_lowercase()))
        })
        .collect()
}

#[test]
fn a_real_pytest_suite_split_over_three_workers_matches_a_local_run() {
    let root = tempfile::tempdir().unwrap();
    let mut files: Vec<(&str, &[u8])> = PYTEST_SUITE
        .iter()
        .map(|(p, c)| (*p, c.as_bytes()))
        .collect();
    files.push(("herd.yml", PYTEST_HERD_YML.as_bytes()));
    let repo = git_repo(root.path(), "py", &files);
    let local = local_pytest(&repo);
    assert_eq!(local.len(), 19, "{local:?}");
    let server = Server::start(&["--project", &format!("py={}", repo.display())]);
    let _w = workers(&server, 3);
    let id = server.start_build("py", &[]);
    let b = server.wait_build(id, Duration::from_secs(180));
    assert_eq!(b["state"], "failure", "two tests fail: {b:#}");
    let split = tests_of(&server, id);
    let herd: BTreeMap<String, String> = outcome_map(&split)
        .into_iter()
        .map(|(id, t)| (id, t["outcome"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(herd, local, "{}", split["summary"]);
    let tests = outcome_map(&split);
    assert_eq!(
        tests["tests/test_math.py::test_broken"]["runs"], 2,
        "failed tests run twice"
    );
    assert!(
        tests["tests/sub/test_nested.py::test_slow"]["secs"]
            .as_f64()
            .unwrap()
            >= 0.2
    );
}

#[test]
fn a_runner_without_per_test_results_has_its_failing_test_found_by_bisection() {
    // Like trial without a JUnit reporter: only an exit code per batch.
    let pipeline = "builders:\n  trial:\n    steps:\n      - split:\n          list: seq -f 't%02g' 1 16\n          run: 'fail=0; for t in {tests}; do [ \"$t\" = t07 ] && fail=1; done; exit $fail'\n          workers: 2\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = workers(&server, 2);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "failure", "{b:#}");
    let split = tests_of(&server, id);
    let tests = outcome_map(&split);
    assert_eq!(tests.len(), 16);
    for (t, v) in &tests {
        let want = if t == "t07" { "failed" } else { "passed" };
        assert_eq!(v["outcome"], want, "{t}: {v}");
    }
    assert_eq!(split["counts"]["passed"], 15, "{split:#}");
    // The log says what happened: parts of the failed batch ran again.
    let log = server.cli(&["build", "log", &id.to_string()]);
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(
        text.contains("running parts of it again to find the failing tests"),
        "{text}"
    );
}

#[test]
fn a_real_trial_suite_gives_per_test_outcomes_through_subunit() {
    let has_twisted = std::process::Command::new("python3")
        .args(["-c", "import twisted"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_twisted,
        "Twisted is not installed: run ./scripts/test (it installs it), or `python3 -m pip install --user twisted`"
    );
    let root = tempfile::tempdir().unwrap();
    let pkg = root.path().join("trialpkg");
    std::fs::create_dir(&pkg).unwrap();
    std::fs::write(pkg.join("__init__.py"), "").unwrap();
    let mut tests =
        String::from("from twisted.trial import unittest\n\nclass T(unittest.TestCase):\n");
    for i in 0..8 {
        tests.push_str(&format!("    def test_ok{i}(self):\n        pass\n"));
    }
    tests.push_str("    def test_bad(self):\n        self.fail('boom')\n");
    tests.push_str("    def test_err(self):\n        raise ValueError('broken')\n");
    tests.push_str("    def test_skip(self):\n        raise unittest.SkipTest('not here')\n");
    std::fs::write(pkg.join("test_a.py"), tests).unwrap();
    let r = root.path().display();
    let pipeline = format!(
        "builders:\n  trial:\n    steps:\n      - split:\n          list: PYTHONPATH={r} python3 -m twisted.trial -n --reporter=bwverbose trialpkg | sed -n 's/ \\.\\.\\. .*//p'\n          run: PYTHONPATH={r} python3 -m twisted.trial --reporter=subunit {{tests}} > {{subunit}}\n          subunit: reports/trial.subunit\n          workers: 2\n"
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let _w = workers(&server, 2);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "failure", "{b:#}");
    let split = tests_of(&server, id);
    let tests = outcome_map(&split);
    assert_eq!(tests.len(), 11, "{split:#}");
    for (t, v) in &tests {
        let want = match t.rsplit('.').next().unwrap() {
            "test_bad" | "test_err" => "failed",
            "test_skip" => "skipped",
            _ => "passed",
        };
        assert_eq!(v["outcome"], want, "{t}: {v}");
    }
    let bad = &tests["trialpkg.test_a.T.test_bad"];
    assert!(bad["message"].as_str().unwrap().contains("boom"), "{bad}");
    let err = &tests["trialpkg.test_a.T.test_err"];
    assert!(
        err["message"].as_str().unwrap().contains("ValueError"),
        "{err}"
    );
    assert_eq!(split["counts"]["passed"], 8, "{split:#}");
}

#[test]
fn a_results_pattern_reads_each_tests_outcome_from_the_output() {
    // A runner that only prints `ID ... ok|FAIL|skipped` lines.
    let pipeline = "builders:\n  suite:\n    steps:\n      - split:\n          list: seq -f 't%02g' 1 12\n          run: 'rc=0; for t in {tests}; do case $t in t05) echo \"$t ... FAIL\"; rc=1;; t06) echo \"$t ... skipped\";; *) echo \"$t ... ok\";; esac; done; exit $rc'\n          results: {pattern: '^(?P<id>t\\d+) \\.\\.\\. (?P<outcome>ok|FAIL|skipped)$'}\n          workers: 2\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = workers(&server, 2);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "failure", "{b:#}");
    let split = tests_of(&server, id);
    let tests = outcome_map(&split);
    assert_eq!(tests.len(), 12);
    for (t, v) in &tests {
        let want = match t.as_str() {
            "t05" => "failed",
            "t06" => "skipped",
            _ => "passed",
        };
        assert_eq!(v["outcome"], want, "{t}: {v}");
    }
    assert!(tests["t05"]["message"]
        .as_str()
        .unwrap()
        .contains("t05 ... FAIL"));
    // Read from the output: nothing was run again to find out.
    let log = server.cli(&["build", "log", &id.to_string()]);
    let text = String::from_utf8_lossy(&log.stdout);
    assert!(
        text.contains("t01 ... ok"),
        "the output still reaches the log: {text}"
    );
    assert!(!text.contains("running parts of it again"), "{text}");
}

/// A builder's first split of a suite starts from the timings its sibling
/// (another builder of the project with a step of the same name) measured:
/// the longest test, last in the list, goes first.
#[test]
fn a_first_split_takes_its_siblings_timings_as_priors() {
    let s = suite();
    let builder = |name: &str| {
        let ran = s.ran.join(name);
        std::fs::create_dir_all(&ran).unwrap();
        split_builder(
            name,
            &s.runner,
            1,
            &format!(
                "RAN_DIR: {}, SUITE_SIZE: \"30\", LONG_TEST: t029",
                ran.display()
            ),
        )
    };
    let pipeline = format!("builders:\n{}{}", builder("linux"), builder("macos"));
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let _w = workers(&server, 1);
    let first_batch = |name: &str| -> Vec<String> {
        let dir = s.ran.join(name);
        let mut batches: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("started-"))
            .collect();
        batches.sort_by_key(|n| n.rsplit('-').next().unwrap().parse::<u64>().unwrap());
        std::fs::read_to_string(dir.join(&batches[0]))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let id = server.start_build("p", &["--builder", "linux"]);
    assert_eq!(
        server.wait_build(id, Duration::from_secs(120))["state"],
        "success"
    );
    // No timings anywhere: the list's order.
    assert_eq!(first_batch("linux")[0], "t000");
    let id = server.start_build("p", &["--builder", "macos"]);
    assert_eq!(
        server.wait_build(id, Duration::from_secs(120))["state"],
        "success"
    );
    // macos has none of its own; linux's say t029 is the longest.
    assert_eq!(
        first_batch("macos")[0],
        "t029",
        "{:?}",
        first_batch("macos")
    );
}

/// A shard with nothing left to take waits on the server, not on a timer:
/// it is parked (the metric counts it) and answered once the batch it
/// waits for reports.
#[test]
fn a_shard_with_nothing_to_take_waits_on_the_server_until_the_split_changes() {
    let s = suite();
    let p = pipeline(&s, 2, &[("SUITE_SIZE", "12"), ("GATE_TEST", "t000")]);
    let server = Server::start_with_pipelines(&[("p", &p)], &[]);
    let _w = workers(&server, 2);
    let id = server.start_build("p", &[]);
    let parked = |n: u32| {
        let o = std::process::Command::new("curl")
            .args(["-s", "-H"])
            .arg(format!("Authorization: Bearer {}", server.token))
            .arg(format!("{}/metrics", server.url))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        text.lines()
            .any(|l| l == format!("herd_split_shards_waiting {n}"))
            .then_some(())
    };
    // One shard holds t000 behind the gate; the other runs the rest, then waits.
    const LIMIT: Duration = Duration::from_secs(120);
    wait_until(LIMIT, "one shard parked", || parked(1));
    let split = tests_of(&server, id);
    let pending: Vec<_> = split["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["outcome"] == "pending")
        .collect();
    assert!(
        pending.iter().any(|t| t["id"] == "t000"),
        "the gated test is still running: {split}"
    );
    std::fs::write(s.ran.join("open"), "").unwrap();
    let build = server.wait_build(id, LIMIT);
    assert_eq!(build["state"], "success", "{build}");
    wait_until(LIMIT, "no shard parked", || parked(0));
    let ran = ran(&s.ran, "ran-");
    assert_eq!(ran.len(), 12, "every test ran: {ran:?}");
    assert!(ran.values().all(|w| w.len() == 1), "{ran:?}");
}

/// A runner of a suite whose list is larger than one protocol frame
/// (1 MiB): `list` prints 20,000 long ids (plus one more on ODD_WORKER);
/// `run JUNIT FILE` passes each and records how many it ran.
const BIG_RUNNER: &str = r#"
import os, sys
if sys.argv[1] == "list":
    out = ["tests/test_module_%05d.py::TestSomethingLong::test_case_number_%05d" % (i // 40, i) for i in range(20000)]
    if os.environ.get("HERD_WORKER") == os.environ.get("ODD_WORKER"):
        out.append("tests/test_only_here.py::test_extra")
    sys.stdout.write("\n".join(out) + "\n")
    sys.exit(0)
ids = [l.strip() for l in open(sys.argv[3]) if l.strip()]
cases = "".join('<testcase classname="c" name="%s" time="0.001"/>' % t for t in ids)
os.makedirs(os.path.dirname(sys.argv[2]) or ".", exist_ok=True)
with open(sys.argv[2], "w") as f:
    f.write('<testsuites><testsuite name="s" tests="%d">%s</testsuite></testsuites>' % (len(ids), cases))
with open(os.path.join(os.environ["RAN_DIR"], "ran-%s-%s" % (os.environ["HERD_WORKER"], os.environ["HERD_BATCH"])), "w") as f:
    f.write("\n".join(ids) + "\n")
"#;

#[test]
fn a_list_larger_than_a_frame_goes_in_parts_and_a_different_one_still_shows_the_difference() {
    let s = suite();
    let runner = s.ran.parent().unwrap().join("big.py");
    std::fs::write(&runner, BIG_RUNNER).unwrap();
    let builder = |name: &str, odd: &str| {
        split_builder(
            name,
            &runner.display().to_string(),
            2,
            &format!("RAN_DIR: {}, ODD_WORKER: \"{odd}\"", s.ran.display()),
        )
    };
    let yml = format!(
        "builders:\n{}{}",
        builder("same", "nobody"),
        builder("odd", "w1")
    );
    let server = Server::start_with_pipelines(&[("p", &yml)], &[]);
    let _w = workers(&server, 2);

    // Every shard lists the same 20,000 ids (about 1.4 MB as JSON).
    let id = server.start_build("p", &["--builder", "same"]);
    let b = server.wait_build(id, Duration::from_secs(180));
    assert_eq!(b["state"], "success", "{b:#}");
    let split = tests_of(&server, id);
    assert_eq!(split["summary"], "20000 tests: 20000 passed");
    let ran = ran(&s.ran, "ran-");
    assert_eq!(ran.len(), 20000);
    assert!(ran.values().all(|w| w.len() == 1), "a test ran twice");

    // w1 lists one more: the shard that did not list first fails and
    // names the difference, which the server could only find with its list.
    let id = server.start_build("p", &["--builder", "odd"]);
    let b = server.wait_build(id, Duration::from_secs(180));
    let messages = step_messages(&b);
    let diff = messages
        .iter()
        .find(|m| m.contains("listed other tests"))
        .unwrap_or_else(|| panic!("no mismatch message in {messages:?} ({b:#})"));
    assert!(
        diff.contains("20000 vs 20001") || diff.contains("20001 vs 20000"),
        "{diff}"
    );
    assert!(
        diff.contains("tests/test_only_here.py::test_extra"),
        "{diff}"
    );
}
