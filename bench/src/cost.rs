//! Where the trigger-to-step-start time goes: the latency series again,
//! with the server and the worker logging JSON lines (`info`) to files,
//! and each build's moments read from those lines: the build stored and
//! queued, its attempt written and handed to the connection, the worker
//! holding the assignment, the step's process running `date`. Logging
//! costs a few microseconds a line, so the total is a little above the
//! `latency` figure; the parts are what to compare.
//!
//! Then the same for throughput: 2,000 trivial builds on 4 workers of one
//! slot, each worker's cycle from one assignment to the next cut into its
//! parts, while builds are still being posted and after.

use crate::{now_ns, stamp_pipeline, Bench, THROUGHPUT_BUILDS};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

const BUILDS: usize = 200;

/// Where the processes started while measuring costs write their logs
/// (None: they log as usual, to the benchmark's stderr).
static LOG_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

fn log_dir() -> Option<PathBuf> {
    LOG_DIR.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set_log_dir(dir: Option<PathBuf>) {
    *LOG_DIR.lock().unwrap_or_else(|p| p.into_inner()) = dir;
}

/// `HERD_BENCH_LOG_DIR=DIR`: every started process logs JSON lines at
/// `info` to a file there (`server.log`, `worker-NAME.log`), for any mode.
pub(crate) fn keep_logs_from_env() {
    if let Some(dir) = std::env::var_os("HERD_BENCH_LOG_DIR") {
        let _ = std::fs::create_dir_all(&dir);
        set_log_dir(Some(PathBuf::from(dir)));
    }
}

/// The environment of a started process: JSON logs at `info` while
/// logs are kept, nothing extra otherwise.
pub(crate) fn log_env() -> Vec<(&'static str, &'static str)> {
    match log_dir() {
        Some(_) => vec![("RUST_LOG", "info"), ("HERD_LOG_FORMAT", "json")],
        None => Vec::new(),
    }
}

/// A started process's stderr: its log file while measuring costs.
pub(crate) fn log_file(name: &str) -> Stdio {
    match log_dir() {
        Some(dir) => std::fs::File::create(dir.join(format!("{name}.log")))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::inherit()),
        None => Stdio::inherit(),
    }
}

/// Every moment a log line matching `what` names a build, in order.
fn all_moments(path: &Path, what: impl Fn(&serde_json::Value) -> Option<i64>) -> Vec<(i128, i64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| Some((stamp_ns(&v)?, what(&v)?)))
        .collect()
}

fn queued_line(v: &serde_json::Value) -> Option<i64> {
    let m = v["message"].as_str()?;
    (m.starts_with("build ") && m.contains(" queued")).then(|| v["build"].as_i64())?
}

fn assigned_line(v: &serde_json::Value) -> Option<i64> {
    let m = v["message"].as_str()?;
    m.contains(" assigned to ").then(|| v["build"].as_i64())?
}

fn ended_line(v: &serde_json::Value) -> Option<i64> {
    let m = v["message"].as_str()?;
    (m.starts_with("attempt ") && m.contains(" ended")).then(|| v["build"].as_i64())?
}

fn received_line(v: &serde_json::Value) -> Option<i64> {
    let m = v["message"].as_str()?;
    m.starts_with("running attempt ")
        .then(|| v["span"]["build"].as_i64().or(v["build"].as_i64()))?
}

/// Nanoseconds since the epoch of a log line's `timestamp`.
fn stamp_ns(line: &serde_json::Value) -> Option<i128> {
    let t = line["timestamp"].as_str()?;
    let t = chrono::DateTime::parse_from_rfc3339(t).ok()?;
    Some(i128::from(t.timestamp_nanos_opt()?))
}

/// Per build: the first moment a log line matching `what` names it.
fn moments(path: &Path, what: impl Fn(&serde_json::Value) -> Option<i64>) -> HashMap<i64, i128> {
    let mut out = HashMap::new();
    for (t, build) in all_moments(path, what) {
        out.entry(build).or_insert(t);
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run() {
    let logs = tempfile::tempdir().unwrap();
    let kept = log_dir();
    let logs_path = kept.clone().unwrap_or_else(|| logs.path().to_path_buf());
    set_log_dir(Some(logs_path.clone()));
    let stamps = tempfile::tempdir().unwrap();
    let mut b = Bench::start(&[("lat", stamp_pipeline(stamps.path()))]);
    b.add_worker("idle", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // (build, client before the POST, client with the answer, step's date)
    let mut runs = Vec::with_capacity(BUILDS);
    for _ in 0..BUILDS {
        let t0 = now_ns() as i128;
        let id = b.start_build("lat").await;
        let answered = now_ns() as i128;
        b.wait_build(id).await;
        let text = std::fs::read_to_string(stamps.path().join(id.to_string())).unwrap();
        let ran: i128 = text.trim().parse().unwrap();
        runs.push((id, t0, answered, ran));
    }
    drop(b);
    let queued = moments(&logs_path.join("server.log"), queued_line);
    let assigned = moments(&logs_path.join("server.log"), assigned_line);
    let received = moments(&logs_path.join("worker-idle.log"), received_line);
    let ms = |a: i128, b: i128| (b - a) as f64 / 1e6;
    let mut parts: [Vec<f64>; 6] = Default::default();
    for (id, t0, answered, ran) in &runs {
        let (Some(q), Some(a), Some(r)) = (queued.get(id), assigned.get(id), received.get(id))
        else {
            continue;
        };
        parts[0].push(ms(*t0, *q));
        parts[1].push(ms(*q, *a));
        parts[2].push(ms(*a, *r));
        parts[3].push(ms(*r, *ran));
        parts[4].push(ms(*t0, *ran));
        parts[5].push(ms(*t0, *answered));
    }
    let matched = parts[4].len();
    // The floor of the last part: a plain process starting the same step.
    let mut spawn = Vec::with_capacity(BUILDS);
    let floor_file = stamps.path().join("floor");
    for _ in 0..BUILDS {
        let t0 = now_ns() as i128;
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("date +%s%N > {}", floor_file.display()))
            .status()
            .unwrap();
        assert!(st.success());
        let ran: i128 = std::fs::read_to_string(&floor_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        spawn.push(ms(t0, ran));
    }
    println!("where trigger-to-step-start goes, medians of {matched} of {BUILDS} builds (server and worker logging JSON at info):");
    let rows = [
        "POST sent -> build stored and queued (HTTP, token, project, herd.yml, plan, one transaction)",
        "queued -> attempt stored, handed to the worker's connection (scheduler pass, one transaction)",
        "handed over -> the worker holds the assignment (frame, loopback, parse)",
        "worker holds it -> the step's `date` runs (workspace, step started, sh starts)",
        "total: POST sent -> `date` runs",
        "(the client has the POST's answer)",
    ];
    for (label, v) in rows.iter().zip(parts) {
        println!("  {:>7.2} ms  {label}", median(v));
    }
    println!(
        "  {:>7.2} ms  (floor of the last part: a plain process spawning `sh -c 'date ...'`)",
        median(spawn)
    );
    throughput_cycle(&logs_path).await;
    // The modes after this one log as they did before it.
    set_log_dir(kept);
}

/// Each worker's cycle in a throughput run, from the logs in `logs`.
pub(crate) async fn throughput_cycle(logs: &Path) {
    let b = crate::trivial_bench().await;
    crate::post_trivial(&b).await;
    b.wait_all_ended().await;
    drop(b);
    let server = logs.join("server.log");
    let queued = all_moments(&server, queued_line);
    let assigned: HashMap<i64, i128> = moments(&server, assigned_line);
    let ended: HashMap<i64, i128> = moments(&server, ended_line);
    let last_posted = queued.iter().map(|(t, _)| *t).max().unwrap_or(0);
    let ms = |a: i128, b: i128| (b - a) as f64 / 1e6;
    // [posting, after] x [cycle, run and stored, to the next assignment, to the worker]
    let mut parts: [[Vec<f64>; 4]; 2] = Default::default();
    for w in 0..4 {
        let got = all_moments(&logs.join(format!("worker-w{w}.log")), received_line);
        for pair in got.windows(2) {
            let ((t, b), (t2, b2)) = (pair[0], pair[1]);
            let (Some(end), Some(next)) = (ended.get(&b), assigned.get(&b2)) else {
                continue;
            };
            let phase = usize::from(t >= last_posted);
            parts[phase][0].push(ms(t, t2));
            parts[phase][1].push(ms(t, *end));
            parts[phase][2].push(ms(*end, *next));
            parts[phase][3].push(ms(*next, t2));
        }
    }
    println!("a worker's cycle in the throughput run ({THROUGHPUT_BUILDS} builds of `true`, 4 workers x 1 slot; medians, logs on):");
    println!("  {:>28}  {:>12}  {:>12}", "", "while posting", "after");
    let rows = [
        "cycle (assignment to next)",
        "step runs, its end stored",
        "end stored -> next assigned",
        "assigned -> worker has it",
    ];
    for (i, label) in rows.iter().enumerate() {
        println!(
            "  {label:>28}  {:>9.2} ms  {:>9.2} ms",
            median(parts[0][i].clone()),
            median(parts[1][i].clone())
        );
    }
    println!(
        "  {:>28}  {:>12}  {:>12}",
        "cycles counted",
        parts[0][0].len(),
        parts[1][0].len()
    );
}
