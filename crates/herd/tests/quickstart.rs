//! The README's first command: `herd up`.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `herd up` in `dir` with `args`; returns the child, the
/// server's URL and what it prints (collected as it comes).
fn up_with(
    dir: &std::path::Path,
    args: &[&str],
) -> (
    std::process::Child,
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut child = Command::new(HERD)
        .args(["up", "--listen", "127.0.0.1:0"])
        .args(args)
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
    let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&printed);
    std::thread::spawn(move || {
        for l in lines.by_ref().map_while(Result::ok) {
            keep.lock().unwrap().push(l);
        }
    });
    (child, url, printed)
}

fn up(dir: &std::path::Path) -> (std::process::Child, String) {
    let (child, url, _) = up_with(dir, &[]);
    (child, url)
}

/// Waits until herd up has printed a line containing `text`; all it printed.
fn printed_line(printed: &std::sync::Mutex<Vec<String>>, text: &str) -> String {
    wait_until(
        Duration::from_secs(20),
        &format!("herd up to print `{text}`"),
        || {
            let lines = printed.lock().unwrap();
            lines
                .iter()
                .any(|l| l.contains(text))
                .then(|| lines.join("\n"))
        },
    )
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

    // Again: same data, the first build is still there, and this start
    // builds nothing by itself (it says so once it has started everything).
    let (child, url, printed) = up_with(dir.path(), &[]);
    assert_eq!(get(&format!("{url}/api/v1/builds/1"))["state"], "success");
    let text = printed_line(&printed, "nothing was built by this start");
    assert!(text.contains("listens on this machine only"), "{text}");
    let builds = get(&format!("{url}/api/v1/builds"));
    assert_eq!(builds["builds"].as_array().unwrap().len(), 1, "{builds}");
    let workers = get(&format!("{url}/api/v1/workers"));
    assert_eq!(
        workers["workers"].as_array().unwrap().len(),
        1,
        "the local worker kept its identity"
    );
    stop(child);
}

#[test]
fn herd_up_says_where_others_reach_it_and_a_taken_port_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (child, url, printed) = up_with(dir.path(), &["--url", "http://ci.example.org:8080"]);
    let text = printed_line(&printed, "install.sh?token=TOKEN");
    assert!(
        text.contains("curl -fsSL 'http://ci.example.org:8080/install.sh?token=TOKEN' | sudo sh"),
        "{text}"
    );
    // The enrollment one-liner asked for on this machine names that address.
    let token = std::fs::read_to_string(dir.path().join("herd-data/admin-token")).unwrap();
    let out = Command::new(HERD)
        .args([
            "token",
            "create",
            "--enroll",
            "--server",
            &url,
            "--token",
            token.trim(),
        ])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("http://ci.example.org:8080/install.sh?token="),
        "{said}"
    );
    assert!(said.contains("as root where there is no sudo"), "{said}");
    stop(child);

    // A port in use: a clear error, and no data directory made.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(HERD)
        .args(["up", "--listen", &addr])
        .current_dir(other.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert!(!other.path().join("herd-data").exists());
}
