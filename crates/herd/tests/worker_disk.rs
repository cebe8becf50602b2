//! Workers keep their disk: workspaces stay warm but bounded (least
//! recently used first, never one in use), a worker whose disk stays too
//! full takes no jobs and says why, and `herd worker gc` by hand. The real
//! binary on 127.0.0.1, on the real file system.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn workspace(w: &Worker, builder: &str) -> std::path::PathBuf {
    w.workdir.join("p").join(builder).join("run")
}

fn build_one(server: &Server, builder: &str) -> Value {
    let id = server.start_build("p", &["--builder", builder]);
    server.wait_build(id, LIMIT)
}

/// Free bytes where `path` lives, as `df` says.
fn free_bytes(path: &Path) -> u64 {
    let o = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the free bytes")
}

#[test]
fn the_least_recently_used_workspaces_go_and_herd_worker_gc_removes_by_hand() {
    let pipeline = "builders:\n  a:\n    jobs:\n      run:\n        steps:\n          - run: echo a > mark\n  b:\n    jobs:\n      run:\n        steps:\n          - run: echo b > mark\n  c:\n    jobs:\n      run:\n        steps:\n          - run: test ! -e mark && echo c > mark\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let w = server.worker_with_args(
        "w1",
        &[
            "--max-workspaces",
            "2",
            "--min-free",
            "0",
            "--disk-interval",
            "1",
        ],
    );
    server.wait_online("w1");
    for b in ["a", "b"] {
        assert_eq!(build_one(&server, b)["state"], "success");
    }
    assert!(
        workspace(&w, "a").join("mark").exists(),
        "workspaces stay warm"
    );
    assert_eq!(build_one(&server, "c")["state"], "success");
    // Three workspaces, two allowed: the least recently used (a) goes.
    wait_until(LIMIT, "workspace a to go", || {
        (!workspace(&w, "a").exists()).then_some(())
    });
    assert!(workspace(&w, "b").join("mark").exists());
    assert!(workspace(&w, "c").join("mark").exists());
    assert!(
        w.log().contains("removed workspace") && w.log().contains("--max-workspaces 2"),
        "{}",
        w.log()
    );
    // The worker page and the API show the disk.
    let worker = server.get("/api/v1/workers/w1").unwrap();
    wait_until(LIMIT, "the worker to report two workspaces", || {
        let v = server.get("/api/v1/workers/w1").unwrap();
        (v["disk"]["workspaces"] == 2).then_some(())
    });
    assert!(
        worker["disk"]["total_bytes"].as_u64().unwrap() > 0,
        "{worker}"
    );
    assert!(worker["disk"]["low"].is_null(), "{worker}");
    let page = server.get_text("/workers/w1").unwrap();
    assert!(page.contains("Disk:") && page.contains("free of"), "{page}");

    // By hand: a dry run names both and removes nothing; then one is kept.
    let workdir = w.workdir.display().to_string();
    let dry = server.cli(&["worker", "gc", "--workdir", &workdir, "--all", "--dry-run"]);
    assert!(dry.status.success(), "{}", out(&dry));
    let text = out(&dry);
    assert!(
        text.contains("would remove") && text.contains("p/b/run") && text.contains("p/c/run"),
        "{text}"
    );
    assert!(workspace(&w, "b").exists());
    let gc = server.cli(&[
        "worker",
        "gc",
        "--workdir",
        &workdir,
        "--max-workspaces",
        "1",
    ]);
    assert!(gc.status.success(), "{}", out(&gc));
    assert!(out(&gc).contains("1 workspace(s) removed"), "{}", out(&gc));
    assert!(!workspace(&w, "b").exists() && workspace(&w, "c").exists());
    // The worker goes on: a build in a removed workspace starts afresh.
    assert_eq!(
        build_one(&server, "c")["state"],
        "failure",
        "c's mark stayed"
    );
    assert_eq!(build_one(&server, "b")["state"], "success");
    let bad = server.cli(&["worker", "gc", "--workdir", &workdir, "--min-free", "lots"]);
    assert!(!bad.status.success());
    assert!(out(&bad).contains("e.g. 500MB"), "{}", out(&bad));
}

#[test]
fn a_worker_whose_disk_stays_too_full_takes_no_jobs_says_why_and_resumes() {
    let flags = tempfile::tempdir().unwrap();
    let release = flags.path().join("RELEASE");
    // `big` fills 2 GiB of the disk in its workspace and holds it until
    // the test releases it (bounded: 120 s).
    let pipeline = format!(
        "builders:\n  small:\n    jobs:\n      run:\n        steps:\n          - run: echo small > mark\n  big:\n    jobs:\n      run:\n        steps:\n          - run: 'fallocate -l 2GiB fill 2>/dev/null || head -c 2147483648 /dev/zero > fill; for i in $(seq 1200); do test -e {} && exit 0; sleep 0.1; done; exit 1'\n",
        release.display()
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    // The watermark: 1 GiB under what is free now. The 2 GiB file takes
    // the disk under it; removing that file alone brings it back.
    let threshold = free_bytes(server.dir.path()) - (1 << 30);
    let w = server.worker_with_slots_and_args(
        "w1",
        2,
        &["--min-free", &threshold.to_string(), "--disk-interval", "1"],
    );
    server.wait_online("w1");
    assert_eq!(build_one(&server, "small")["state"], "success");
    assert!(workspace(&w, "small").exists());

    let big = server.start_build("p", &["--builder", "big"]);
    let low = wait_until(LIMIT, "the worker to say its disk is low", || {
        let v = server.get("/api/v1/workers/w1").unwrap();
        v["disk"]["low"].as_str().map(str::to_string)
    });
    assert!(
        low.contains("low disk") && low.contains("--min-free"),
        "{low}"
    );
    // Every unused workspace went; the one in use stays.
    assert!(!workspace(&w, "small").exists());
    assert!(workspace(&w, "big").join("fill").exists());
    assert_eq!(server.build(big)["state"], "running");

    // A new job waits, and says why.
    let waiting = server.start_build("p", &["--builder", "small"]);
    std::thread::sleep(Duration::from_secs(2));
    let b = server.build(waiting);
    assert_eq!(b["state"], "queued", "{b}");
    let why = &b["jobs"][0]["waiting"];
    assert!(
        why["summary"]
            .as_str()
            .unwrap()
            .contains("no capable worker takes jobs now"),
        "{why}"
    );
    assert_eq!(why["workers"][0]["state"], "low_disk", "{why}");
    assert!(
        why["workers"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("low disk"),
        "{why}"
    );
    let page = server.get_text("/workers/w1").unwrap();
    assert!(
        page.contains("Takes no new jobs") && page.contains("ws-low-disk"),
        "{page}"
    );
    let build_page = server.get_text(&format!("/builds/{waiting}")).unwrap();
    assert!(build_page.contains("low disk"), "{build_page}");
    let metrics = std::process::Command::new("curl")
        .args(["-sS", "-H"])
        .arg(format!("Authorization: Bearer {}", server.token))
        .arg(format!("{}/metrics", server.url))
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.contains("herd_workers{state=\"low_disk\"} 1"),
        "{metrics}"
    );

    // The big job ends: its workspace goes, the disk is back, the waiting
    // job runs.
    std::fs::write(&release, "").unwrap();
    assert_eq!(server.wait_build(big, LIMIT)["state"], "success");
    assert_eq!(server.wait_build(waiting, LIMIT)["state"], "success");
    assert!(!workspace(&w, "big").exists());
    let v = server.get("/api/v1/workers/w1").unwrap();
    assert!(v["disk"]["low"].is_null(), "{v}");
    assert!(w.log().contains("taking jobs again"), "{}", w.log());
}
