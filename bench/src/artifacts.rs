//! Artifact throughput: a job keeps a 1 GB file, a job that needs it gets
//! it into its workspace, and the CLI downloads it; the server's RSS is
//! sampled while the gigabyte passes through it (it must stay flat: files
//! are streamed, never held).

use crate::{herd_bin, rss_mb, Bench};
use std::time::{Duration, Instant};

const BYTES: u64 = 1_000_000_000;

pub async fn run() {
    let pipeline = format!(
        "builders:\n  make:\n    steps:\n      - run: head -c {BYTES} /dev/urandom > big.bin\n    artifacts: [big.bin]\n  use:\n    needs: [{{job: make, artifacts: true}}]\n    steps:\n      - run: test $(stat -c %s big.bin) = {BYTES}\n"
    );
    let mut b = Bench::start(&[("a", pipeline)]);
    b.add_worker("w1", 1).await;
    let pid = b.server.0.id();
    let before = rss_mb(pid);
    let id = b.start_build("a").await;
    // The server's RSS while the build runs (bounded by the build's end).
    let mut peak = before;
    let deadline = Instant::now() + crate::LIMIT;
    loop {
        peak = peak.max(rss_mb(pid));
        let build = b.get(&format!("/api/v1/builds/{id}")).await;
        if build["state"] != "queued" && build["state"] != "running" {
            break;
        }
        assert!(Instant::now() < deadline, "the build did not end");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let build = b.wait_build(id).await;
    assert_eq!(build["state"], "success", "{build}");
    let step_ms = |job: &str, name: &str| -> f64 {
        let j = build["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["builder"] == job)
            .unwrap();
        let s = j["attempts"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap();
        s["duration_ms"].as_f64().unwrap()
    };
    let up = step_ms("make", "upload artifacts");
    let down = step_ms("use", "fetch artifacts");
    let dir = b.dir.path().join("cli");
    let t = Instant::now();
    let st = std::process::Command::new(herd_bin())
        .args(["build", "artifacts", &id.to_string(), "-o"])
        .arg(&dir)
        .args(["--server", &b.url, "--token", &b.token])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let cli = t.elapsed().as_secs_f64();
    let after = rss_mb(pid);
    println!(
        "artifacts, one {} MB file (worker and server on this machine):",
        BYTES / 1_000_000
    );
    let mbs = |ms: f64| BYTES as f64 / 1e6 / (ms / 1000.0);
    println!(
        "  upload (worker -> server, hashed and synced): {:.0} MB/s ({:.2} s)",
        mbs(up),
        up / 1000.0
    );
    println!(
        "  fetch into a needing job (server -> worker, checked): {:.0} MB/s ({:.2} s)",
        mbs(down),
        down / 1000.0
    );
    println!(
        "  herd build artifacts -o (server -> CLI, checked): {:.0} MB/s ({cli:.2} s)",
        BYTES as f64 / 1e6 / cli
    );
    println!(
        "  server RSS: {before:.1} MB before, {peak:.1} MB at most during, {after:.1} MB after"
    );
}
