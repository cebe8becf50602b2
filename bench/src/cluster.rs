//! Trivial-build throughput and trigger-to-start latency on PostgreSQL,
//! with one server and with two servers sharing the database (beside the
//! SQLite figures of `latency` and `throughput`).
//!
//! Needs PostgreSQL: HERD_TEST_POSTGRES (default
//! postgres://postgres@127.0.0.1:5432); each run makes its own database.

use crate::{latency_samples, percentile, stamp_pipeline, Bench};
use std::process::Command;
use std::time::Instant;

const BUILDS_LATENCY: usize = 100;
const BUILDS_THROUGHPUT: usize = 1000;

fn postgres_base() -> String {
    std::env::var("HERD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .args([&format!("{}/postgres", postgres_base()), "-qc", sql])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "psql -c {sql} failed (is PostgreSQL running?)");
}

struct Database(String);

impl Database {
    fn fresh(tag: &str) -> Database {
        let name = format!("herd_bench_{tag}_{}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&format!("CREATE DATABASE {name}"));
        Database(name)
    }
    fn url(&self) -> String {
        format!("{}/{}", postgres_base(), self.0)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

fn pipelines(stamps: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("lat", stamp_pipeline(stamps)),
        (
            "triv",
            "builders:\n  t:\n    steps:\n      - run: \"true\"\n".to_string(),
        ),
    ]
}

/// BUILDS_THROUGHPUT trivial builds posted by 8 posters spread over
/// `servers`; builds per second until all ended.
async fn throughput(servers: &[&Bench]) -> f64 {
    let start = Instant::now();
    let mut ids = Vec::new();
    let per_poster = BUILDS_THROUGHPUT / 8;
    let mut posters = Vec::new();
    for p in 0..8 {
        let b = servers[p % servers.len()];
        posters.push(async move {
            let mut ids = Vec::new();
            for _ in 0..per_poster {
                ids.push(b.start_build("triv").await);
            }
            ids
        });
    }
    for ids_of in futures_util::future::join_all(posters).await {
        ids.extend(ids_of);
    }
    let b = servers[0];
    b.wait_all_ended().await;
    let failed = b.get("/api/v1/builds?state=failure&limit=1").await;
    assert!(failed["builds"].as_array().unwrap().is_empty());
    ids.len() as f64 / start.elapsed().as_secs_f64()
}

fn print_latency(what: &str, s: &[f64]) {
    println!(
        "  {what}: p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms",
        percentile(s, 0.5),
        percentile(s, 0.99),
        s[s.len() - 1]
    );
}

pub async fn postgres() {
    let stamps = tempfile::tempdir().unwrap();
    println!("PostgreSQL ({}), {BUILDS_LATENCY} builds for latency, {BUILDS_THROUGHPUT} trivial builds for throughput, 4 workers x 1 slot:", postgres_base());
    {
        let db = Database::fresh("one");
        let mut a = Bench::start_on(&pipelines(stamps.path()), Some(&db.url()), None);
        for i in 0..4 {
            a.add_worker(&format!("w{i}"), 1).await;
        }
        let lat = latency_samples(&a, stamps.path(), BUILDS_LATENCY).await;
        print_latency("one server, trigger-to-step-start", &lat);
        let rate = throughput(&[&a]).await;
        println!("  one server, throughput: {rate:.0} builds/s");
    }
    {
        let db = Database::fresh("two");
        let mut a = Bench::start_on(&pipelines(stamps.path()), Some(&db.url()), None);
        let mut b = Bench::start_on(&pipelines(stamps.path()), Some(&db.url()), Some(&a.token));
        let (ua, ub) = (a.url.clone(), b.url.clone());
        for i in 0..2 {
            a.add_worker_with(&format!("a{i}"), 1, &format!("{ua},{ub}"))
                .await;
            b.add_worker_with(&format!("b{i}"), 1, &format!("{ub},{ua}"))
                .await;
        }
        // Latency across servers: triggered through A, run by B's workers.
        for i in 0..2 {
            a.post(
                &format!("/api/v1/workers/a{i}/pause"),
                serde_json::json!({}),
            )
            .await;
        }
        let lat = latency_samples(&a, stamps.path(), BUILDS_LATENCY).await;
        print_latency("two servers, trigger on A, step on a worker of B", &lat);
        for i in 0..2 {
            a.post(
                &format!("/api/v1/workers/a{i}/resume"),
                serde_json::json!({}),
            )
            .await;
        }
        let lat = latency_samples(&b, stamps.path(), BUILDS_LATENCY).await;
        print_latency("two servers, trigger on B, any worker", &lat);
        let rate = throughput(&[&a, &b]).await;
        println!("  two servers, throughput (posts spread over both): {rate:.0} builds/s");
    }
}
