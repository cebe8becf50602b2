//! Artifacts end to end: jobs upload what `artifacts:` selects, a job that
//! needs them gets them in its workspace, people list and download them;
//! a worker killed mid-upload and a server restarted mid-upload lose
//! nothing and keep nothing twice.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Three platforms build a wheel each (windows a big one); publish needs
/// them all, with their artifacts.
fn fan_in(big_mb: u32) -> String {
    format!(
        r#"builders:
  wheels:
    matrix:
      os: [linux, macos, windows]
    requires: ["platform == ${{{{ matrix.os }}}}"]
    steps:
      - name: build
        run: |
          mkdir -p dist
          echo "wheel for ${{{{ matrix.os }}}}" > dist/app-${{{{ matrix.os }}}}.whl
          if [ ${{{{ matrix.os }}}} = windows ]; then head -c {big_mb}000000 /dev/urandom > dist/big.bin; fi
          sha256sum dist/*
    artifacts: [dist/*]
  publish:
    requires: [platform == linux]
    needs: [{{job: wheels, artifacts: true}}]
    steps:
      - run: find dist -type f | sort && sha256sum dist/*
"#
    )
}

/// The `.part` files of uploads in progress under a server's data.
fn parts(data: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(data.join("artifacts/tmp"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .collect()
        })
        .unwrap_or_default()
}

fn artifacts(server: &Server, id: i64) -> Vec<serde_json::Value> {
    server
        .get(&format!("/api/v1/builds/{id}/artifacts"))
        .unwrap()["artifacts"]
        .as_array()
        .unwrap()
        .clone()
}

/// `sha256sum` lines of a log: path -> hash.
fn sums(log: &str) -> std::collections::BTreeMap<String, String> {
    log.lines()
        .filter_map(|l| {
            let (sum, path) = l.split_once("  ")?;
            (sum.len() == 64).then(|| (path.to_string(), sum.to_string()))
        })
        .collect()
}

#[test]
fn a_fan_in_job_gets_every_platforms_artifacts_whole_once_after_a_worker_dies_mid_upload() {
    let pipeline = fan_in(300);
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let root = tempfile::tempdir().unwrap();
    let _linux = server.worker("linux", 2, &["platform=linux"]);
    let _macos = server.worker("macos", 1, &["platform=macos"]);
    // The first windows worker reaches the server through a proxy that
    // the test can hold still, so that it dies in the middle of its upload.
    let proxy = Proxy::start(&server.url);
    let token = server.worker_token("win1");
    let mut win1 = Worker::spawn(
        &proxy.url,
        &token,
        "win1",
        &root.path().join("win1"),
        1,
        &["platform=windows"],
    );
    server.wait_online("win1");
    let id = server.start_build("p", &[]);
    wait_until(Duration::from_secs(60), "the big upload to start", || {
        parts(&server.data)
            .iter()
            .any(|(_, len)| *len > 1_000_000)
            .then_some(())
    });
    proxy.stall(true);
    win1.kill9();
    proxy.stall(false);
    let _win2 = server.worker("win2", 1, &["platform=windows"]);
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "success", "{b:#}");
    let windows = server.job(&b, "wheels", "windows");
    let attempts = windows["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{windows:#}");
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(attempts[1]["worker"], "win2");

    // Each file once, from the attempt that finished.
    let list = artifacts(&server, id);
    let mut paths: Vec<(String, String)> = list
        .iter()
        .map(|a| {
            (
                a["job"].as_str().unwrap().to_string(),
                a["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("wheels/linux".into(), "dist/app-linux.whl".into()),
            ("wheels/macos".into(), "dist/app-macos.whl".into()),
            ("wheels/windows".into(), "dist/app-windows.whl".into()),
            ("wheels/windows".into(), "dist/big.bin".into()),
        ]
    );
    let made = sums(&String::from_utf8(server.step_log(id, "wheels/windows", "0")).unwrap());
    let big = list.iter().find(|a| a["path"] == "dist/big.bin").unwrap();
    assert_eq!(big["size"], 300_000_000);
    assert_eq!(big["sha256"].as_str().unwrap(), made["dist/big.bin"]);

    // Publish found every file in its workspace, as made.
    let publish = String::from_utf8(server.step_log(id, "publish/main", "1")).unwrap();
    let got = sums(&publish);
    assert_eq!(got.len(), 4, "{publish}");
    assert_eq!(got["dist/big.bin"], made["dist/big.bin"]);
    let fetch = String::from_utf8(server.step_log(id, "publish/main", "0")).unwrap();
    assert!(fetch.contains("[herd] fetched 4 files"), "{fetch}");

    // The CLI lists them and downloads one job's into a directory.
    let out = server.cli(&["build", "artifacts", &id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text.contains("wheels/windows") && text.contains("300.0 MB"),
        "{text}"
    );
    let show = server.cli(&["build", "show", &id.to_string()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains(&format!(
            "artifacts: 4 files (300.0 MB): herd build artifacts {id}"
        )),
        "{text}"
    );
    let dir = root.path().join("got");
    let out = server.cli(&[
        "build",
        "artifacts",
        &id.to_string(),
        "--job",
        "wheels/linux",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("dist/app-linux.whl")).unwrap(),
        "wheel for linux\n"
    );
    let out = server.cli(&["build", "artifacts", &id.to_string(), "--job", "nope"]);
    assert_eq!(out.status.code(), Some(5), "not found: {out:?}");
}

#[test]
fn an_upload_goes_on_from_where_it_was_when_the_server_restarts() {
    let pipeline = "builders:\n  b:\n    steps:\n      - run: head -c 400000000 /dev/urandom > big.bin && sha256sum big.bin\n    artifacts: [big.bin]\n";
    let mut server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let w = server.worker("w", 1, &[]);
    let id = server.start_build("p", &[]);
    wait_until(Duration::from_secs(60), "the upload to start", || {
        parts(&server.data)
            .iter()
            .any(|(_, len)| *len > 1_000_000)
            .then_some(())
    });
    server.kill_and_restart();
    let b = server.wait_build(id, Duration::from_secs(120));
    assert_eq!(b["state"], "success", "{b:#}");
    let job = server.job(&b, "b", "main");
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1, "{job:#}");
    let made = sums(&String::from_utf8(server.step_log(id, "b/main", "0")).unwrap());
    let list = artifacts(&server, id);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["sha256"].as_str().unwrap(), made["big.bin"]);
    assert!(parts(&server.data).is_empty(), "no part is left behind");
    // It went on from what the server had kept, not from the start.
    let log = w.log();
    let from = log
        .lines()
        .find_map(|l| l.split("going on with big.bin from byte ").nth(1))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(from.is_some_and(|n| n > 0), "{log}");
    // The bytes served are the bytes made.
    let dir = tempfile::tempdir().unwrap();
    let out = server.cli(&[
        "build",
        "artifacts",
        &id.to_string(),
        "-o",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::metadata(dir.path().join("big.bin")).unwrap().len(),
        400_000_000
    );
}

#[test]
fn limits_when_and_the_workers_own_attempt_hold() {
    let pipeline = r#"builders:
  big:
    steps:
      - run: head -c 5000 /dev/zero > out.bin
    artifacts: [out.bin]
  failing:
    steps:
      - run: echo report > report.txt && echo kept > kept.txt && false
        artifacts: [kept.txt]
    artifacts: {paths: [report.txt], when: always}
  quiet:
    steps:
      - run: echo nothing
    artifacts: [dist/*.whl]
"#;
    let config = format!(
        "limits:\n  max_artifact_file: 1000\nprojects:\n  p:\n    pipeline: |\n{}",
        pipeline
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    );
    let server = Server::start_with_config(&config, &[]);
    let _w = server.worker("w", 3, &[]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(60));
    let big = server.job(&b, "big", "main");
    assert_eq!(big["state"], "error", "{big:#}");
    let step = &big["attempts"][0]["steps"][1];
    assert_eq!(step["name"], "upload artifacts");
    assert!(
        step["message"]
            .as_str()
            .unwrap()
            .contains("max_artifact_file"),
        "{step:#}"
    );
    // `when: always` uploads after a failure, the rest of the job's
    // artifacts too (one upload step).
    let failing = server.job(&b, "failing", "main");
    assert_eq!(failing["state"], "failure");
    let list = artifacts(&server, id);
    let paths: Vec<&str> = list.iter().map(|a| a["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["kept.txt", "report.txt"], "{list:?}");
    let quiet = server.job(&b, "quiet", "main");
    assert_eq!(quiet["state"], "success");
    let log = String::from_utf8(server.step_log(id, "quiet/main", "1")).unwrap();
    assert!(log.contains("nothing to upload"), "{log}");

    // Only a worker, for its own live attempt, with a path inside.
    let attempt = failing["attempts"][0]["id"].as_i64().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = server.client();
    let put = |token: Option<String>, attempt: i64, path: &str| {
        let mut req = client
            .put(format!("{}/api/v1/attempts/{attempt}/uploads", server.url))
            .query(&[("path", path), ("size", "1")])
            .body("x");
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        rt.block_on(async { req.send().await.unwrap().status().as_u16() })
    };
    let w = server.worker_token("w");
    let _ = &w;
    assert_eq!(put(None, attempt, "a"), 401);
    assert_eq!(put(Some(server.token.clone()), attempt, "a"), 403);
    assert_eq!(put(Some(w.clone()), attempt, "a"), 409, "an ended attempt");
    let other = server.worker_token("other");
    assert_eq!(put(Some(other), attempt, "a"), 409);
    // A download by id names its build.
    let a = &list[0];
    let url = a["url"].as_str().unwrap();
    assert_eq!(server.get_text(url).unwrap(), "kept\n");
    let wrong = url.replace(&format!("/builds/{id}/"), "/builds/999/");
    assert!(server.get_text(&wrong).is_err());
}

#[test]
fn servers_sharing_a_database_share_the_artifact_store() {
    let shared = tempfile::tempdir().unwrap();
    let pipeline = fan_in(1);
    let config = format!(
        "artifacts_dir: {}\nprojects:\n  p:\n    pipeline: |\n{}",
        shared.path().display(),
        pipeline
            .lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    );
    let a = Server::start_on_postgres(&config, &[]);
    let b = Server::start_sharing(&a, &config, &[]);
    // The wheels are made through server a, published through server b.
    let _mac = a.worker("macos", 1, &["platform=macos"]);
    let _win = a.worker("windows", 1, &["platform=windows"]);
    let id = a.start_build("p", &[]);
    wait_until(Duration::from_secs(60), "the wheels to be kept", || {
        (artifacts(&a, id).len() == 3).then_some(())
    });
    let _linux = b.worker("linux", 2, &["platform=linux"]);
    let build = b.wait_build(id, Duration::from_secs(60));
    assert_eq!(build["state"], "success", "{build:#}");
    let publish = String::from_utf8(b.step_log(id, "publish/main", "1")).unwrap();
    assert_eq!(sums(&publish).len(), 4, "{publish}");
    for x in artifacts(&b, id) {
        let body = b.get_text(x["url"].as_str().unwrap());
        assert!(body.is_ok(), "{x}: {body:?}");
    }
}
