//! Splitting end to end with real processes: a suite of sleep-tests of
//! known durations (a Python runner: start-up, `list`, JUnit reports
//! included) split over real workers, its makespan against the lower bound
//! max(total / N, longest test). Three runs: a builder's first (no
//! timings), its second (its own timings), and a sibling builder's first
//! (the first builder's timings as priors).
//!
//!     target/release/herd-bench split-real        # 4 workers; HERD_BENCH_SPLIT_WORKERS=8

use crate::Bench;
use std::time::Duration;

const TESTS: usize = 120;

/// The runner: `list` prints the ids; `run JUNIT FILE` sleeps each test's
/// duration and writes a JUnit report with it.
const RUNNER: &str = r#"
import os, sys, time
def duration(i):
    # Deterministic, skewed: most short, a few long (as real suites are).
    x = ((i * 7919) % 1000) / 1000.0
    secs = 0.02 + 0.5 * x ** 4
    if i % 31 == 5:
        secs += 2.5
    return secs
N = int(sys.argv[2]) if sys.argv[1] == "list" else 0
if sys.argv[1] == "list":
    for i in range(N):
        print("test_%03d" % i)
    sys.exit(0)
ids = [l.strip() for l in open(sys.argv[3]) if l.strip()]
cases = []
for t in ids:
    d = duration(int(t[5:]))
    time.sleep(d)
    cases.append('<testcase classname="s" name="%s" time="%.3f"/>' % (t, d))
os.makedirs(os.path.dirname(sys.argv[2]) or ".", exist_ok=True)
with open(sys.argv[2], "w") as f:
    f.write('<testsuites><testsuite name="s" tests="%d">%s</testsuite></testsuites>' % (len(cases), "".join(cases)))
"#;

/// The same durations as the runner's, for the bound.
fn duration(i: usize) -> f64 {
    let x = ((i * 7919) % 1000) as f64 / 1000.0;
    let mut secs = 0.02 + 0.5 * x.powi(4);
    if i % 31 == 5 {
        secs += 2.5;
    }
    secs
}

fn builder(name: &str, runner: &str, workers: usize) -> String {
    format!(
        "  {name}:\n    steps:\n      - name: tests\n        split:\n          list: python3 {runner} list {TESTS}\n          run: python3 {runner} run {{junit}} \"$HERD_TESTS_FILE\"\n          junit: reports/junit.xml\n          workers: {workers}\n"
    )
}

pub(crate) async fn run() {
    let workers: usize = std::env::var("HERD_BENCH_SPLIT_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("runner.py");
    std::fs::write(&runner, RUNNER).unwrap();
    let runner = runner.display().to_string();
    let pipeline = format!(
        "builders:\n{}{}",
        builder("first", &runner, workers),
        builder("sibling", &runner, workers)
    );
    let mut b = Bench::start(&[("suite", pipeline)]);
    for i in 0..workers {
        b.add_worker(&format!("w{i}"), 1).await;
    }
    let total: f64 = (0..TESTS).map(duration).sum();
    let longest = (0..TESTS).map(duration).fold(0.0, f64::max);
    let bound = (total / workers as f64).max(longest);
    println!(
        "split with real workers: {TESTS} sleep-tests, {total:.1} s in all (longest {longest:.1} s), {workers} workers x 1 slot; bound {bound:.2} s"
    );
    for (label, name) in [
        ("first run, no timings", "first"),
        ("second run, its own timings", "first"),
        (
            "a sibling's first run, the first's timings as priors",
            "sibling",
        ),
    ] {
        let res = b
            .post(
                "/api/v1/builds",
                serde_json::json!({"project": "suite", "builder": name}),
            )
            .await;
        let id = res["id"].as_i64().unwrap();
        let build = b.wait_build(id).await;
        assert_eq!(build["state"], "success", "{build}");
        let started = build["started_at"].as_i64().unwrap_or(0);
        let finished = build["finished_at"].as_i64().unwrap_or(0);
        let secs = Duration::from_millis((finished - started).max(0) as u64).as_secs_f64();
        println!("  {label}: {secs:.2} s, {:.2}x the bound", secs / bound);
        if std::env::var_os("HERD_BENCH_SPLIT_TRACE").is_some() {
            trace(&b, id, started).await;
        }
    }
}

/// Each shard's batches on the build's clock: when handed out, when
/// reported, how many tests and their real seconds (where the time goes).
async fn trace(b: &Bench, id: i64, started: i64) {
    let build = b.get(&format!("/api/v1/builds/{id}")).await;
    let rel = |v: &serde_json::Value| (v.as_i64().unwrap_or(started) - started) as f64 / 1000.0;
    for job in build["jobs"].as_array().into_iter().flatten() {
        let mut line = format!(
            "    job {} created {:.2} started {:.2}:",
            job["name"].as_str().unwrap_or("?"),
            rel(&job["created_at"]),
            rel(&job["started_at"])
        );
        for a in job["attempts"].as_array().into_iter().flatten() {
            for s in a["steps"].as_array().into_iter().flatten() {
                line.push_str(&format!(
                    " {} {:.2}-{:.2}",
                    s["name"].as_str().unwrap_or("?"),
                    rel(&s["started_at"]),
                    rel(&s["finished_at"])
                ));
            }
        }
        println!("{line}");
    }
    let tests = b.get(&format!("/api/v1/builds/{id}/tests")).await;
    let empty = Vec::new();
    for split in tests["splits"].as_array().unwrap_or(&empty) {
        for lane in split["workers"].as_array().unwrap_or(&empty) {
            let mut line = format!("    {}:", lane["worker"].as_str().unwrap_or("?"));
            for batch in lane["batches"].as_array().unwrap_or(&empty) {
                let at = |k: &str| (batch[k].as_i64().unwrap_or(0) - started) as f64 / 1000.0;
                let ids = batch["ids"].as_array().unwrap_or(&empty);
                let real: f64 = ids
                    .iter()
                    .filter_map(|t| t.as_str()?.get(5..)?.parse::<usize>().ok())
                    .map(duration)
                    .sum();
                line.push_str(&format!(
                    " [{:.2}-{:.2} {}t {real:.2}s]",
                    at("started_ms"),
                    at("finished_ms"),
                    ids.len()
                ));
            }
            println!("{line}");
        }
    }
}
