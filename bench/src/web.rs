//! The web page: server time to render the grid of 200 builders x 100
//! changes and the build page of a split step with 2,000 tests, and the
//! grid's weight. Measured as the time of a GET over loopback (the server
//! renders per request; nothing is cached).

use crate::Bench;
use std::time::Instant;

async fn timed_get(b: &Bench, path: &str, n: usize) -> (Vec<f64>, usize) {
    let mut times = Vec::with_capacity(n);
    let mut size = 0;
    for _ in 0..n {
        let t = Instant::now();
        let body = b
            .http
            .get(format!("{}{path}", b.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        size = body.len();
    }
    times.sort_by(|a, b| a.total_cmp(b));
    (times, size)
}

pub async fn pages() {
    let mut wide = String::from("builders:\n");
    for i in 0..200 {
        // No worker has `bench_never`: the jobs stay queued, the grid full.
        wide.push_str(&format!(
            "  b{i:03}:\n    requires: [bench_never]\n    steps:\n      - run: \"true\"\n"
        ));
    }
    let suite = "builders:\n  suite:\n    steps:\n      - name: tests\n        split:\n          list: seq -f 'tests/test_%04g.py::test_case' 1 2000\n          run: \"true {tests}\"\n          workers: 2\n".to_string();
    let mut b = Bench::start(&[("wide", wide), ("suite", suite)]);
    // 100 builds of 200 builders; no worker for them: they stay queued.
    for _ in 0..100 {
        b.start_build("wide").await;
    }
    let (grid, weight) = timed_get(&b, "/", 30).await;
    let gzipped = b
        .http
        .get(format!("{}/", b.url))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .len();
    let p = |v: &[f64], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "web: grid of 200 builders x 100 changes: median {:.1} ms, p90 {:.1} ms, {} KB before compression, {} KB gzipped",
        p(&grid, 0.5),
        p(&grid, 0.9),
        weight / 1024,
        gzipped / 1024
    );
    b.add_worker("w1", 1).await;
    b.add_worker("w2", 1).await;
    let id = b.start_build("suite").await;
    let done = b.wait_build(id).await;
    assert_eq!(done["state"], "success", "{done}");
    let (build, build_weight) = timed_get(&b, &format!("/builds/{id}"), 30).await;
    println!(
        "web: build page of a split step with 2,000 tests: median {:.1} ms, p90 {:.1} ms, {} KB",
        p(&build, 0.5),
        p(&build, 0.9),
        build_weight / 1024
    );
    println!("     (targets: <= 50 ms each; grid <= 200 KB)");
}
