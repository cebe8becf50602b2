//! Workers find out what they can do; jobs go only where they can run, and
//! a waiting job says why.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

const GTK_PIPELINE: &str = "builders:
  gtk:
    requires: [python3 >= 3.10, pkg:gtk+-3.0 >= 3.24]
    steps:
      - run: echo built on $HERD_WORKER
  any:
    steps:
      - run: echo anywhere
";

#[test]
fn a_job_goes_only_to_the_worker_that_can_run_it() {
    let server = Server::start_with_pipelines(&[("gtk", GTK_PIPELINE)], &[]);
    let root = tempfile::tempdir().unwrap();
    let old = fake_tools(
        &root.path().join("old"),
        "3.9.6",
        &[("gtk+-3.0", "3.24.41")],
    );
    let nogtk = fake_tools(&root.path().join("nogtk"), "3.12.3", &[]);
    let new = fake_tools(
        &root.path().join("new"),
        "3.12.3",
        &[("gtk+-3.0", "3.24.41")],
    );
    let _a = server.worker_with_env("old-python", 1, &[], &[("PATH", old)]);
    let _b = server.worker_with_env("no-gtk", 1, &[], &[("PATH", nogtk)]);
    let _c = server.worker_with_env("kestrel", 1, &[], &[("PATH", new)]);
    let ids: Vec<i64> = (0..5).map(|_| server.start_build("gtk", &[])).collect();
    for id in ids {
        let b = server.wait_build(id, Duration::from_secs(30));
        assert_eq!(b["state"], "success", "{b}");
        assert_eq!(
            server.job(&b, "gtk", "main")["attempts"][0]["worker"],
            "kestrel"
        );
        assert_eq!(server.step_log(id, "gtk", "0"), b"built on kestrel\n");
    }
    // What each worker found is visible.
    let out = server.cli(&["workers", "show", "old-python"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("python3") && text.contains("3.9.6"), "{text}");
    assert!(text.contains("os") && text.contains("linux"), "{text}");
    let out = server.cli(&["workers", "show", "no-gtk"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pkg:gtk+-3.0") && text.contains("not found: Package gtk+-3.0 was not found"),
        "{text}"
    );
    // The builder's capable workers, through the API.
    let builders = server.get("/api/v1/projects/gtk/builders").unwrap();
    let gtk = builders["builders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["builder"] == "gtk")
        .unwrap();
    assert_eq!(
        gtk["jobs"][0]["capable_workers"],
        serde_json::json!(["kestrel"])
    );
    let any = builders["builders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["builder"] == "any")
        .unwrap();
    assert_eq!(
        any["jobs"][0]["capable_workers"].as_array().unwrap().len(),
        3
    );
}

#[test]
fn a_job_nobody_can_run_waits_with_the_reason_and_runs_when_a_capable_worker_joins() {
    let server = Server::start_with_pipelines(&[("gtk", GTK_PIPELINE)], &[]);
    let root = tempfile::tempdir().unwrap();
    let id = server.start_build("gtk", &["--builder", "gtk"]);
    let b = server.build(id);
    assert_eq!(b["state"], "queued");
    assert_eq!(
        server.job(&b, "gtk", "main")["waiting"]["summary"],
        "no worker is online"
    );

    let old = fake_tools(&root.path().join("old"), "3.9.6", &[]);
    let _old = server.worker_with_env("mac-mini", 1, &[], &[("PATH", old)]);
    let why = wait_until(
        Duration::from_secs(20),
        "the worker's probe results",
        || {
            let b = server.build(id);
            let w = server.job(&b, "gtk", "main")["waiting"]["workers"][0].clone();
            (w["unmet"]
                .as_str()
                .is_some_and(|u| !u.contains("not probed yet")))
            .then_some(w)
        },
    );
    assert_eq!(why["worker"], "mac-mini");
    assert_eq!(why["unmet"], "python3 3.9.6 does not satisfy >= 3.10");
    let show = server.cli(&["build", "show", &id.to_string()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains(
            "waiting: no capable worker online: none of the online workers meets the requirements"
        ),
        "{text}"
    );
    assert!(
        text.contains("mac-mini: python3 3.9.6 does not satisfy >= 3.10"),
        "{text}"
    );

    let pi = fake_tools(&root.path().join("pi"), "3.11.2", &[]);
    let _pi = server.worker_with_env("pi4", 1, &[], &[("PATH", pi)]);
    wait_until(Duration::from_secs(20), "pi4's reason", || {
        let b = server.build(id);
        let workers = server.job(&b, "gtk", "main")["waiting"]["workers"].clone();
        workers
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["worker"] == "pi4" && w["unmet"] == "pkg:gtk+-3.0 not found")
            .then_some(())
    });
    assert_eq!(server.build(id)["state"], "queued");

    let good = fake_tools(
        &root.path().join("good"),
        "3.12.3",
        &[("gtk+-3.0", "3.24.41")],
    );
    let mut good = server.worker_with_env("kestrel", 1, &[], &[("PATH", good)]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success");
    assert_eq!(
        server.job(&b, "gtk", "main")["attempts"][0]["worker"],
        "kestrel"
    );

    // The only capable worker goes away: its column says so in red, and a
    // queued job says since when.
    good.kill9();
    wait_until(Duration::from_secs(30), "kestrel offline", || {
        (server.get("/api/v1/workers/kestrel").ok()?["online"] == false).then_some(())
    });
    let id = server.start_build("gtk", &["--builder", "gtk"]);
    let b = server.build(id);
    let summary = server.job(&b, "gtk", "main")["waiting"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        summary.starts_with("no capable worker online since 20"),
        "{summary}"
    );
    let grid = server.get_text("/").unwrap();
    assert!(
        grid.contains(r#"<div class="wcount nocap">no capable worker online</div>"#),
        "the gtk column says it in red"
    );
}

#[test]
fn real_tools_custom_probes_labels_and_absence() {
    // herd.yml names the probe `wx`; the server config defines it.
    let config = "probes:
  wx: echo 'wx-config 3.2.4'
projects:
  real:
    pipeline: |
      builders:
        real:
          requires: [git >= 1.0, sh, wx >= 3.0, gpu == a100, '!no-such-tool-for-herd', os == linux | os == freebsd]
          steps:
            - run: echo ok
";
    let server = Server::start_with_config(config, &[]);
    let _plain = server.worker("plain", 1, &[]);
    let _gpu = server.worker("gpu-box", 1, &["gpu=a100"]);
    let id = server.start_build("real", &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success");
    assert_eq!(
        server.job(&b, "real", "main")["attempts"][0]["worker"],
        "gpu-box"
    );
    let w = server.get("/api/v1/workers/gpu-box").unwrap();
    let probe = |n: &str| {
        w["probes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == n)
            .cloned()
            .unwrap()
    };
    let git = std::process::Command::new("git")
        .arg("--version")
        .output()
        .unwrap();
    let git_version = String::from_utf8_lossy(&git.stdout)
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    assert_eq!(probe("git")["version"], git_version.as_str());
    assert_eq!(probe("wx")["version"], "3.2.4");
    assert_eq!(probe("no-such-tool-for-herd")["present"], false);
    assert!(
        w["probes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["name"] != "os"),
        "facts are not probed"
    );
}

#[test]
fn reprobe_picks_up_a_new_version() {
    let pipeline =
        "builders:\n  py:\n    requires: [python3 >= 3.12]\n    steps:\n      - run: echo ok\n";
    let server = Server::start_with_pipelines(&[("py", pipeline)], &[]);
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tools");
    let path = fake_tools(&dir, "3.11.0", &[]);
    let _w = server.worker_with_env("upgradable", 1, &[], &[("PATH", path)]);
    let id = server.start_build("py", &[]);
    wait_until(
        Duration::from_secs(20),
        "the old version to be reported",
        || {
            let w = server.get("/api/v1/workers/upgradable").unwrap();
            w["probes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["version"] == "3.11.0")
                .then_some(())
        },
    );
    assert_eq!(server.build(id)["state"], "queued");
    std::fs::write(dir.join("python-version"), "3.12.1").unwrap();
    let out = server.cli(&["workers", "reprobe", "upgradable"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("reprobing: upgradable"));
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success");
    let out = server.cli(&["workers", "reprobe", "nobody"]);
    assert!(!out.status.success());
}
