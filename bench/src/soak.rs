//! The soak: many builds with 100 KB logs through one server, with and
//! without retention. What is measured along the way: the database file,
//! the whole data directory, the server's RSS, builds per second; at the
//! start and the end, trigger-to-step latency with the load paused.
//!
//!     target/release/herd-bench soak            # keep: {builds: 2000}
//!     target/release/herd-bench soak-forever    # keep: forever
//!
//! HERD_BENCH_SOAK_BUILDS sets the number of builds (default 50,000).

use crate::{latency_samples, percentile, rss_mb, stamp_pipeline, Bench};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_BUILDS: usize = 50_000;
/// Samples of size, RSS and rate over the run (every 2,500 of 50,000).
const SAMPLES: usize = 20;
/// Builds in flight at once (the posters each wait for theirs).
const POSTERS: usize = 8;
const LATENCY_SAMPLES: usize = 100;
/// The janitor's pace in the soak (the default is 1 h: a soak of minutes
/// would not see it).
const JANITOR: &str = "20s";

/// A 100,000-byte log that reads like a test run's (and compresses like
/// one, not like a repeated line).
const LOG_STEP: &str = "seq 1 40000 | awk '{ printf \"test_%06d module_%d/case_%d ... ok (%d ms)\\n\", $1, $1 % 97, ($1 * 7919) % 10007, ($1 * 31) % 997 }' | head -c 100000";

pub(crate) async fn run(keep: &str) {
    let builds: usize = std::env::var("HERD_BENCH_SOAK_BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BUILDS);
    let stamps = tempfile::tempdir().unwrap();
    let lat = stamp_pipeline(stamps.path());
    let logs = format!("builders:\n  t:\n    steps:\n      - run: |\n          {LOG_STEP}\n");
    let config = format!(
        "janitor_interval: {JANITOR}\nkeep: {keep}\nprojects:\n{}{}",
        crate::project_config("logs", &logs),
        crate::project_config("lat", &lat)
    );
    let mut b = Bench::start_config(&config, None, None);
    for i in 0..4 {
        b.add_worker(&format!("w{i}"), 1).await;
    }
    let data = b.dir.path().join("data");
    println!("soak: {builds} builds with 100 KB logs, 4 workers x 1 slot, keep: {keep}, janitor every {JANITOR}");
    let before = latency_samples(&b, stamps.path(), LATENCY_SAMPLES).await;
    let b = Arc::new(b);
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "builds", "db MB", "data MB", "rss MB", "builds/s", "elapsed"
    );
    let done = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut posters = Vec::new();
    for _ in 0..POSTERS {
        let b = Arc::clone(&b);
        let done = Arc::clone(&done);
        let ended = Arc::clone(&ended);
        posters.push(tokio::spawn(async move {
            let mut failed = 0usize;
            while done.fetch_add(1, Ordering::SeqCst) < builds {
                let id = b.start_build("logs").await;
                let build = b.wait_build(id).await;
                if build["state"] != "success" {
                    failed += 1;
                }
                ended.fetch_add(1, Ordering::SeqCst);
            }
            failed
        }));
    }
    let mut rates = Vec::new();
    let mut rss = Vec::new();
    let mut sizes = Vec::new();
    let sample_every = (builds / SAMPLES).max(1);
    let mut last = (0usize, Instant::now());
    // Bounded: the builds end (each within LIMIT) or a poster panics.
    let deadline = Instant::now() + Duration::from_secs(6 * 3600);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let n = ended.load(Ordering::SeqCst).min(builds);
        let finished = posters.iter().all(|p| p.is_finished());
        if n >= last.0 + sample_every || finished {
            let rate = (n - last.0) as f64 / last.1.elapsed().as_secs_f64();
            let db = db_bytes(&data) as f64 / 1e6;
            let all = tree_bytes(&data) as f64 / 1e6;
            let r = rss_mb(b.server.0.id());
            println!(
                "{n:>8} {db:>10.1} {all:>10.1} {r:>10.1} {rate:>9.0} {:>8.0}s",
                start.elapsed().as_secs_f64()
            );
            // A last window much shorter than the others says little of a rate.
            if n >= last.0 + sample_every / 2 {
                rates.push(rate);
                rss.push(r);
                sizes.push((n, db, all));
            }
            last = (n, Instant::now());
        }
        if finished {
            break;
        }
        assert!(Instant::now() < deadline, "the soak did not end in 6 h");
    }
    let mut failed = 0;
    for p in posters {
        failed += p.await.unwrap();
    }
    assert_eq!(failed, 0, "builds that did not succeed");
    let total = start.elapsed();
    let after = latency_samples(&b, stamps.path(), LATENCY_SAMPLES).await;
    let max_db = sizes.iter().map(|s| s.1).fold(0.0, f64::max);
    let max_all = sizes.iter().map(|s| s.2).fold(0.0, f64::max);
    println!(
        "  {builds} builds in {:.0} s: {:.0} builds/s overall; first window {:.0}/s, last {:.0}/s ({:+.1} %)",
        total.as_secs_f64(),
        builds as f64 / total.as_secs_f64(),
        rates.first().copied().unwrap_or(f64::NAN),
        rates.last().copied().unwrap_or(f64::NAN),
        (rates.last().unwrap_or(&f64::NAN) / rates.first().unwrap_or(&f64::NAN) - 1.0) * 100.0
    );
    println!(
        "  trigger-to-step p50 {:.2} ms at the start, {:.2} ms at the end ({:+.1} %); p99 {:.2} -> {:.2} ms",
        percentile(&before, 0.5),
        percentile(&after, 0.5),
        (percentile(&after, 0.5) / percentile(&before, 0.5) - 1.0) * 100.0,
        percentile(&before, 0.99),
        percentile(&after, 0.99)
    );
    println!(
        "  server RSS: first sample {:.1} MB, highest {:.1} MB, last {:.1} MB",
        rss.first().copied().unwrap_or(f64::NAN),
        rss.iter().copied().fold(0.0, f64::max),
        rss.last().copied().unwrap_or(f64::NAN)
    );
    if let (Some(first), Some(last)) = (sizes.first(), sizes.last()) {
        let per_build = if last.0 > first.0 {
            (last.2 - first.2) * 1e3 / (last.0 - first.0) as f64
        } else {
            f64::NAN
        };
        println!(
            "  database at most {max_db:.1} MB, data directory at most {max_all:.1} MB; at the end {:.1} MB and {:.1} MB; growth {per_build:.1} KB per build after the first sample",
            last.1, last.2
        );
    }
}

/// The SQLite database with its WAL.
fn db_bytes(data: &Path) -> u64 {
    ["herd.db", "herd.db-wal", "herd.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(data.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// Every file under `dir` (allocated size, as `du` counts).
fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(items) = std::fs::read_dir(&d) else {
            continue;
        };
        for item in items.flatten() {
            match item.metadata() {
                Ok(m) if m.is_dir() => stack.push(item.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}
