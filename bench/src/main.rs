//! herd-bench: the figures of docs/benchmarks.md, measured with the real
//! `herd` binary on 127.0.0.1. Not a test: it prints numbers.
//!
//!     cargo build --release -p herd -p herd-bench && target/release/herd-bench
//!
//! Every loop here is bounded in count and in time.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod artifacts;
mod cluster;
mod cost;
mod failover;
mod soak;
mod split;
mod split_real;
mod split_scale;
mod web;

const LATENCY_BUILDS: usize = 200;
pub(crate) const THROUGHPUT_BUILDS: usize = 2000;
const LOG_BYTES: u64 = 100_000_000;
pub(crate) const LIMIT: Duration = Duration::from_secs(300);

pub(crate) struct Proc(pub(crate) Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn herd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERD_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().join("herd")
}

pub(crate) struct Bench {
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) http: reqwest::Client,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) server: Proc,
    pub(crate) workers: Vec<Proc>,
}

impl Bench {
    pub(crate) fn start(pipelines: &[(&str, String)]) -> Bench {
        Self::start_on(pipelines, None, None)
    }

    /// A server on `database` (default: SQLite in its data directory),
    /// presenting `token` when another server created the admin token.
    pub(crate) fn start_on(
        pipelines: &[(&str, String)],
        database: Option<&str>,
        token: Option<&str>,
    ) -> Bench {
        let mut config = String::from("projects:\n");
        for (name, p) in pipelines {
            config.push_str(&project_config(name, p));
        }
        Self::start_config(&config, database, token)
    }

    /// A server with this whole config file.
    pub(crate) fn start_config(config: &str, database: Option<&str>, token: Option<&str>) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("herd-server.yml");
        std::fs::write(&cfg, config).unwrap();
        let mut child = Command::new(herd_bin())
            .args(["server", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&cfg)
            .args(database.map(|d| ["--database", d]).into_iter().flatten())
            .env("RUST_LOG", log_filter())
            .envs(cost::log_env())
            .stderr(cost::log_file("server"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("run herd server (build it with cargo build --release -p herd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let token = token.map(str::to_string).unwrap_or_else(|| {
            std::fs::read_to_string(dir.path().join("data/admin-token"))
                .unwrap()
                .trim()
                .to_string()
        });
        Bench {
            url: line.trim().to_string(),
            token,
            http: reqwest::Client::new(),
            dir,
            server: Proc(child),
            workers: Vec::new(),
        }
    }

    /// An admin call.
    pub(crate) async fn post(&self, path: &str, body: Value) -> Value {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(json!({}))
    }

    pub(crate) async fn add_worker(&mut self, name: &str, slots: u32) {
        let servers = self.url.clone();
        self.add_worker_with(name, slots, &servers).await;
    }

    /// A worker that knows `servers` (comma-separated; the first is its home).
    pub(crate) async fn add_worker_with(&mut self, name: &str, slots: u32, servers: &str) {
        let res = self
            .post("/api/v1/tokens", json!({"kind": "worker", "worker": name}))
            .await;
        let child = Command::new(herd_bin())
            .args([
                "worker",
                "--server",
                servers,
                "--token",
                res["token"].as_str().unwrap(),
                "--slots",
                &slots.to_string(),
                "--workdir",
            ])
            .arg(self.dir.path().join(format!("work-{name}")))
            .env("RUST_LOG", log_filter())
            .envs(cost::log_env())
            .stderr(cost::log_file(&format!("worker-{name}")))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.workers.push(Proc(child));
        let deadline = Instant::now() + LIMIT;
        while Instant::now() < deadline {
            let w: Value = self.get(&format!("/api/v1/workers/{name}")).await;
            if w["online"] == true {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("worker {name} did not come online on {}", self.url);
    }

    /// Waits until no build is queued or running (at most LIMIT).
    pub(crate) async fn wait_all_ended(&self) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let q = self.get("/api/v1/builds?state=queued&limit=1").await;
            let r = self.get("/api/v1/builds?state=running&limit=1").await;
            if q["builds"].as_array().is_some_and(|a| a.is_empty())
                && r["builds"].as_array().is_some_and(|a| a.is_empty())
            {
                return;
            }
            assert!(Instant::now() < deadline, "the builds did not end");
            // Not faster: on two cores a tight poll takes CPU from the
            // server it measures. The throughput figure comes from the
            // stored `finished_at` (`last_finished_ms`), not from this poll.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The latest `finished_at` of all builds (milliseconds since the
    /// epoch, the server's clock), read page by page.
    pub(crate) async fn last_finished_ms(&self) -> i64 {
        let mut last = 0;
        let mut before: Option<i64> = None;
        loop {
            let path = match before {
                Some(b) => format!("/api/v1/builds?limit=500&before={b}"),
                None => "/api/v1/builds?limit=500".to_string(),
            };
            let page = self.get(&path).await;
            let builds = page["builds"].as_array().cloned().unwrap_or_default();
            for b in &builds {
                last = last.max(b["finished_at"].as_i64().unwrap_or(0));
            }
            match builds.last().and_then(|b| b["id"].as_i64()) {
                Some(id) if builds.len() == 500 => before = Some(id),
                _ => return last,
            }
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(json!({}))
    }

    pub(crate) async fn start_build(&self, project: &str) -> i64 {
        let res = self
            .post("/api/v1/builds", json!({"project": project}))
            .await;
        res["id"].as_i64().unwrap()
    }

    pub(crate) async fn wait_build(&self, id: i64) -> Value {
        let deadline = Instant::now() + LIMIT;
        let mut since: Option<u64> = None;
        while Instant::now() < deadline {
            let path = match since {
                Some(v) => format!("/api/v1/builds/{id}?since={v}&wait_ms=5000"),
                None => format!("/api/v1/builds/{id}"),
            };
            let b = self.get(&path).await;
            if !matches!(b["state"].as_str(), Some("queued") | Some("running")) {
                return b;
            }
            since = b["version"].as_u64();
        }
        panic!("build {id} did not finish in {LIMIT:?}");
    }
}

/// One project's entry under `projects:` of a server config.
pub(crate) fn project_config(name: &str, pipeline: &str) -> String {
    let mut out = format!("  {name}:\n    pipeline: |\n");
    for line in pipeline.lines() {
        out.push_str(&format!("      {line}\n"));
    }
    out
}

pub(crate) fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The pipeline whose step writes the instant it starts to STAMPS/BUILD_ID.
pub(crate) fn stamp_pipeline(stamps: &Path) -> String {
    format!(
        "builders:\n  lat:\n    steps:\n      - run: date +%s%N > {}/$HERD_BUILD_ID\n",
        stamps.display()
    )
}

/// `n` builds of project `lat` (a [`stamp_pipeline`]) triggered through
/// `trigger` one at a time: ms from just before the POST to the step's
/// first instant, sorted.
pub(crate) async fn latency_samples(trigger: &Bench, stamps: &Path, n: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = now_ns();
        let id = trigger.start_build("lat").await;
        trigger.wait_build(id).await;
        let text = std::fs::read_to_string(stamps.join(id.to_string())).unwrap();
        let t1: u128 = text.trim().parse().unwrap();
        samples.push(t1.saturating_sub(t0) as f64 / 1e6);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples
}

async fn latency() {
    let stamps = tempfile::tempdir().unwrap();
    let mut b = Bench::start(&[("lat", stamp_pipeline(stamps.path()))]);
    b.add_worker("idle", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_worker_mb = rss_mb(b.workers[0].0.id());
    let idle_server_mb = rss_mb(b.server.0.id());
    let samples = latency_samples(&b, stamps.path(), LATENCY_BUILDS).await;
    println!("trigger-to-step-start, idle worker, {LATENCY_BUILDS} builds:");
    println!(
        "  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
    println!(
        "memory: idle server {idle_server_mb:.1} MB, idle worker {idle_worker_mb:.1} MB (RSS)"
    );
}

/// A server with one trivial project (`triv`: a step running `true`)
/// and 4 workers of one slot.
pub(crate) async fn trivial_bench() -> std::sync::Arc<Bench> {
    let mut b = Bench::start(&[(
        "triv",
        "builders:\n  t:\n    steps:\n      - run: \"true\"\n".to_string(),
    )]);
    for i in 0..4 {
        b.add_worker(&format!("w{i}"), 1).await;
    }
    std::sync::Arc::new(b)
}

/// 8 clients at once post `THROUGHPUT_BUILDS` builds of `triv`: their ids.
pub(crate) async fn post_trivial(b: &std::sync::Arc<Bench>) -> Vec<i64> {
    let mut posters = Vec::new();
    for p in 0..8 {
        let b = std::sync::Arc::clone(b);
        posters.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in (p..THROUGHPUT_BUILDS).step_by(8) {
                ids.push(b.start_build("triv").await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for p in posters {
        ids.extend(p.await.unwrap());
    }
    ids
}

async fn throughput() {
    let b = trivial_bench().await;
    let start = Instant::now();
    let start_ms = (now_ns() / 1_000_000) as i64;
    let ids = post_trivial(&b).await;
    let posted = start.elapsed();
    b.wait_all_ended().await;
    let seen = start.elapsed();
    let elapsed = Duration::from_millis((b.last_finished_ms().await - start_ms).max(1) as u64);
    let failed = b.get("/api/v1/builds?state=failure&limit=1").await;
    let errors = b.get("/api/v1/builds?state=error&limit=1").await;
    assert!(
        failed["builds"].as_array().unwrap().is_empty()
            && errors["builds"].as_array().unwrap().is_empty()
    );
    println!(
        "throughput, trivial one-step builds, 4 workers x 1 slot, {} builds:",
        ids.len()
    );
    println!(
        "  {:.0} builds/s (all posted in {:.2} s, the last finished at {:.2} s, seen by a 50 ms poll at {:.2} s); server RSS after: {:.1} MB",
        ids.len() as f64 / elapsed.as_secs_f64(),
        posted.as_secs_f64(),
        elapsed.as_secs_f64(),
        seen.as_secs_f64(),
        rss_mb(b.server.0.id())
    );
}

fn time_local(cmd: &str) -> Duration {
    let t = Instant::now();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!("{{ {cmd} ; }} > /dev/null"))
        .status()
        .unwrap();
    assert!(st.success());
    t.elapsed()
}

async fn step_time(b: &Bench, project: &str) -> (Duration, u64) {
    let t = Instant::now();
    let id = b.start_build(project).await;
    let build = b.wait_build(id).await;
    let wall = t.elapsed();
    assert_eq!(build["state"], "success", "{build}");
    let step = &build["jobs"][0]["attempts"][0]["steps"][0];
    let _ = wall;
    (
        Duration::from_millis(step["duration_ms"].as_u64().unwrap()),
        step["log_size"].as_u64().unwrap(),
    )
}

async fn logs() {
    let burst = format!(
        "yes 'a typical log line: compiling src/module.rs ... ok 0123456789' | head -c {LOG_BYTES}"
    );
    let work = "seq 1 1500000 | awk '{ s += $1 * $1; print \"test\", $1, \"ok\", s }'".to_string();
    let mut b = Bench::start(&[
        (
            "burst",
            format!("builders:\n  b:\n    steps:\n      - run: |\n          {burst}\n"),
        ),
        (
            "work",
            format!("builders:\n  w:\n    steps:\n      - run: |\n          {work}\n"),
        ),
    ]);
    b.add_worker("w", 1).await;
    let local_burst = time_local(&burst);
    let (herd_burst, size) = step_time(&b, "burst").await;
    assert_eq!(size, LOG_BYTES);
    println!(
        "log ingestion, a step printing {} MB as fast as it can:",
        LOG_BYTES / 1_000_000
    );
    println!(
        "  {:.0} MB/s through herd ({:.2} s; the same command to /dev/null: {:.2} s)",
        LOG_BYTES as f64 / 1e6 / herd_burst.as_secs_f64(),
        herd_burst.as_secs_f64(),
        local_burst.as_secs_f64()
    );
    let mut local = Vec::new();
    let mut herd = Vec::new();
    let mut bytes = 0;
    for _ in 0..3 {
        local.push(time_local(&work).as_secs_f64());
        let (d, s) = step_time(&b, "work").await;
        herd.push(d.as_secs_f64());
        bytes = s;
    }
    local.sort_by(|a, b| a.total_cmp(b));
    herd.sort_by(|a, b| a.total_cmp(b));
    println!(
        "a step that computes while printing {:.0} MB (median of 3):",
        bytes as f64 / 1e6
    );
    println!(
        "  {:.2} s through herd vs {:.2} s to /dev/null: slow-down {:+.1} %",
        herd[1],
        local[1],
        (herd[1] / local[1] - 1.0) * 100.0
    );
}

fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let bin = herd_bin();
    assert!(
        Path::new(&bin).exists(),
        "no herd binary at {} (cargo build --release -p herd)",
        bin.display()
    );
    cost::keep_logs_from_env();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let which: Vec<String> = std::env::args().skip(1).collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    println!(
        "herd benchmark ({}; {} cpus)",
        bin.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if run("latency") {
        rt.block_on(latency());
    }
    if run("throughput") {
        rt.block_on(throughput());
    }
    if run("cost") {
        rt.block_on(cost::run());
    }
    if run("postgres") {
        rt.block_on(cluster::postgres());
    }
    if run("logs") {
        rt.block_on(logs());
    }
    if run("artifacts") {
        rt.block_on(artifacts::run());
    }
    if run("failover") {
        rt.block_on(failover::kill_and_hang());
    }
    if run("web") {
        rt.block_on(web::pages());
    }
    if run("split") {
        split::run();
    }
    // Long: only when named.
    if which.iter().any(|w| w == "soak") {
        rt.block_on(soak::run("{builds: 2000}"));
    }
    if which.iter().any(|w| w == "split-real") {
        rt.block_on(split_real::run());
    }
    if which.iter().any(|w| w == "split-scale") {
        rt.block_on(split_scale::run());
    }
    if which.iter().any(|w| w == "soak-forever") {
        rt.block_on(soak::run("forever"));
    }
    if run("idle") {
        raise_fd_limit();
        // HERD_BENCH_IDLE=10000 measures one size only (e.g. to profile it).
        let sizes: Vec<usize> = std::env::var("HERD_BENCH_IDLE")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1_000, 10_000]);
        for n in sizes {
            rt.block_on(failover::idle_workers(n));
        }
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// What the server and workers log: `HERD_BENCH_LOG` (a `RUST_LOG` filter)
/// to see where a figure's time goes, warnings only by default.
fn log_filter() -> String {
    std::env::var("HERD_BENCH_LOG").unwrap_or_else(|_| "warn".into())
}
