//! The README's first command: `herd up`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `herd up` in `dir`; returns the child and the server's URL.
fn up(dir: &std::path::Path) -> (std::process::Child, String) {
    let mut child = Command::new(HERD)
        .args(["up", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .strip_prefix("herd is running at ")
        .expect("first line names the address")
        .to_string();
    // Keep reading the rest so that herd never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});
    (child, url)
}

fn get(url: &str) -> serde_json::Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { http_get(url).await.unwrap().json().await.unwrap() })
}

fn stop(mut child: std::process::Child) {
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = wait_until(Duration::from_secs(20), "herd up to stop", || {
        child.try_wait().unwrap()
    });
    assert!(status.success(), "herd up exited with {status}");
}

#[test]
fn herd_up_builds_the_example_and_reuses_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = up(dir.path());
    let b = wait_until(Duration::from_secs(60), "the first build", || {
        let b = get(&format!("{url}/api/v1/builds/1"));
        matches!(
            b["state"].as_str(),
            Some("success") | Some("failure") | Some("error")
        )
        .then_some(b)
    });
    assert_eq!(b["state"], "success", "{b}");
    assert_eq!(b["project"], "example");
    let jobs: Vec<String> = b["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            format!(
                "{}/{}",
                j["builder"].as_str().unwrap(),
                j["name"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(jobs, ["build/main", "checks/lint", "checks/unit"]);
    assert!(dir.path().join("herd-data/herd.db").exists());
    stop(child);

    // Again: same data, the first build is still there, a second one runs.
    let (child, url) = up(dir.path());
    assert_eq!(get(&format!("{url}/api/v1/builds/1"))["state"], "success");
    let b = wait_until(Duration::from_secs(60), "the second build", || {
        let b = get(&format!("{url}/api/v1/builds/2"));
        (b["state"] == "success").then_some(b)
    });
    assert_eq!(b["project"], "example");
    let workers = get(&format!("{url}/api/v1/workers"));
    assert_eq!(
        workers["workers"].as_array().unwrap().len(),
        1,
        "the local worker kept its identity"
    );
    stop(child);
}
