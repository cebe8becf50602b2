//! Bad input gets a clear error, loses nothing, and the server goes on.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

#[test]
fn herd_check_names_file_line_column_and_suggests() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herd.yml");
    std::fs::write(
        &file,
        "builders:\n  a:\n    steps:\n      - run: make\n        alwyas: true\n",
    )
    .unwrap();
    let out = std::process::Command::new(HERD)
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:5:9: unknown key `alwyas`", file.display())),
        "{err}"
    );
    assert!(err.contains("did you mean `always`?"), "{err}");

    std::fs::write(&file, "builders:\n  a:\n    steps:\n      - run: make\n").unwrap();
    let out = std::process::Command::new(HERD)
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (1 builders, 1 jobs)"));

    let out = std::process::Command::new(HERD)
        .arg("check")
        .arg(dir.path().join("missing.yml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn a_commit_with_a_broken_herd_yml_fails_only_its_build() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "p",
        &[(
            "herd.yml",
            b"builders:\n  a:\n    steps: [{run: echo good}]\n",
        )],
    );
    let server = Server::start(&["--project", &format!("p={}", repo.display())]);
    let _w = server.worker("w", 1, &[]);
    let broken = commit(
        &repo,
        &[("herd.yml", b"builders:\n  a:\n    stepz: [{run: echo}]\n")],
        "break it",
    );
    let id = server.start_build("p", &["--rev", &broken]);
    let b = server.wait_build(id, Duration::from_secs(20));
    assert_eq!(b["state"], "error");
    let error = b["error"].as_str().unwrap();
    assert!(
        error.contains("herd.yml:3:5: unknown key `stepz`"),
        "{error}"
    );
    assert!(error.contains("did you mean `steps`?"), "{error}");
    let show = server.cli(&["build", "show", &id.to_string()]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("herd.yml:3:5"));

    commit(
        &repo,
        &[(
            "herd.yml",
            b"builders:\n  a:\n    steps: [{run: echo fixed}]\n",
        )],
        "fix it",
    );
    let id = server.start_build("p", &["--rev", "main"]);
    assert_eq!(
        server.wait_build(id, Duration::from_secs(20))["state"],
        "success"
    );

    let out = server.cli(&["build", "start", "p", "--rev", "no-such-branch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no revision `no-such-branch`"));
}

#[test]
fn unknown_projects_and_builders_are_named() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "p",
        &[("herd.yml", b"builders:\n  a:\n    steps: [{run: echo}]\n")],
    );
    let server = Server::start(&["--project", &format!("p={}", repo.display())]);
    // Exit code 5: what was named does not exist.
    let out = server.cli(&["build", "start", "nope"]);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("404") && err.contains("unknown project `nope`; known projects: p"),
        "{err}"
    );
    let out = server.cli(&["build", "start", "p", "--builder", "zz"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no builder `zz`"));
    let out = server.cli(&["build", "show", "999"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no build 999"));
}

#[test]
fn state_changes_need_the_admin_token() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "p",
        &[("herd.yml", b"builders:\n  a:\n    steps: [{run: echo}]\n")],
    );
    let server = Server::start(&["--project", &format!("p={}", repo.display())]);
    let body = json!({ "project": "p" });
    let (status, v) = server.post("/api/v1/builds", body.clone(), None);
    assert_eq!(status, 401, "{v}");
    assert!(v["error"].as_str().unwrap().contains("admin token"));
    let (status, _) = server.post("/api/v1/builds", body.clone(), Some("herd_admin_0000_1111"));
    assert_eq!(status, 401);
    // A token with the right id but a wrong secret.
    let id = server.token.split('_').nth(2).unwrap();
    let (status, _) = server.post(
        "/api/v1/builds",
        body.clone(),
        Some(&format!("herd_admin_{id}_{}", "0".repeat(64))),
    );
    assert_eq!(status, 401);
    // A worker token is not an admin token.
    let out = server.cli(&["token", "create", "--worker", "w"]);
    let worker_token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (status, _) = server.post("/api/v1/builds", body.clone(), Some(&worker_token));
    assert_eq!(status, 403);
    let (status, _) = server.post("/api/v1/builds/1/cancel", json!({}), None);
    assert_eq!(status, 401);
    let (status, _) = server.post(
        "/api/v1/tokens",
        json!({"kind": "worker", "worker": "x"}),
        None,
    );
    assert_eq!(status, 401);
    // Nothing was created by the refused calls.
    assert_eq!(
        server.get("/api/v1/builds").unwrap()["builds"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // The CLI says what to do.
    let out = std::process::Command::new(HERD)
        .args(["build", "start", "p"])
        .env("HERD_SERVER", &server.url)
        .env("HERD_TOKEN", "wrong")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // The admin token file is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(server.data.join("admin-token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The admin token is stored only as a hash.
    let db = match &server.database {
        Some(url) => {
            let out = std::process::Command::new("psql")
                .args([url.as_str(), "-Atc", "SELECT * FROM tokens"])
                .output()
                .unwrap();
            assert!(out.status.success());
            out.stdout
        }
        None => std::fs::read(server.data.join("herd.db")).unwrap(),
    };
    let secret = server.token.rsplit('_').next().unwrap();
    assert!(!db.is_empty());
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));
}

#[test]
fn a_worker_with_a_wrong_token_is_refused_and_the_server_goes_on() {
    let server = Server::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let bad = Worker::spawn(
        &server.url,
        "herd_worker_abc_def",
        "bad",
        dir.path(),
        1,
        &[],
    );
    bad.wait_log("refused the worker token (401)");
    assert!(server.get("/api/v1/workers/bad").is_err());
    assert_eq!(server.get("/api/v1/health").unwrap()["ok"], true);
}

#[test]
fn garbage_on_the_worker_endpoint_closes_only_that_connection() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "p",
        &[(
            "herd.yml",
            b"builders:\n  a:\n    steps: [{run: echo still working}]\n",
        )],
    );
    let server = Server::start(&["--project", &format!("p={}", repo.display())]);
    let out = server.cli(&["token", "create", "--worker", "raw"]);
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // No token: refused before the upgrade.
        let err = connect(&server.url, None).await.unwrap_err();
        assert!(err.contains("401"), "{err}");

        // Not JSON as the hello.
        let mut ws = connect(&server.url, Some(&token)).await.unwrap();
        ws.send(Message::Text("}{ not json".into())).await.unwrap();
        let got = drain(&mut ws).await;
        assert_eq!(got[0]["type"], "error", "{got:?}");
        assert!(got[0]["message"].as_str().unwrap().contains("malformed"));

        // An unknown protocol version.
        let mut ws = connect(&server.url, Some(&token)).await.unwrap();
        ws.send(Message::Text(
            json!({"type": "hello", "protocols": [99], "version": "x", "slots": 1})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let got = drain(&mut ws).await;
        assert!(
            got[0]["message"]
                .as_str()
                .unwrap()
                .contains("no common protocol version"),
            "{got:?}"
        );

        // After a good hello: garbage text closes the connection with a reason.
        let mut ws = connect(&server.url, Some(&token)).await.unwrap();
        ws.send(hello()).await.unwrap();
        ws.send(Message::Text(
            json!({"type": "event", "attempt": 1, "seq": "x"})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
        let got = drain(&mut ws).await;
        assert_eq!(got[0]["type"], "welcome");
        assert!(
            got.last().unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("malformed"),
            "{got:?}"
        );

        // A binary frame that is not a log frame.
        let mut ws = connect(&server.url, Some(&token)).await.unwrap();
        ws.send(hello()).await.unwrap();
        ws.send(Message::Binary(vec![9u8; 40].into()))
            .await
            .unwrap();
        let got = drain(&mut ws).await;
        assert!(
            got.last().unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("log frame"),
            "{got:?}"
        );

        // Output for an attempt that is not this worker's: told to abandon it.
        let mut ws = connect(&server.url, Some(&token)).await.unwrap();
        ws.send(hello()).await.unwrap();
        let frame = herd_proto::LogFrame {
            attempt: 12345,
            seq: 1,
            step: 0,
            offset: 0,
            data: b"x".to_vec(),
        };
        ws.send(Message::Binary(frame.encode().into()))
            .await
            .unwrap();
        let mut abandon = None;
        for _ in 0..5 {
            if let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::from_secs(5), ws.next()).await
            {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "abandon" {
                    abandon = Some(v);
                    break;
                }
            }
        }
        assert_eq!(abandon.expect("an abandon message")["attempt"], 12345);
        drop(ws);

        // An oversized frame: the connection is cut, the server is fine.
        let mut ws = connect(&server.url, Some(&token)).await.unwrap();
        ws.send(hello()).await.unwrap();
        let _ = ws
            .send(Message::Binary(vec![1u8; 4 * 1024 * 1024].into()))
            .await;
        let _ = drain(&mut ws).await;
    });
    assert_eq!(server.get("/api/v1/health").unwrap()["ok"], true);
    // A proper worker still runs builds.
    let _w = server.worker("good", 1, &[]);
    let id = server.start_build("p", &[]);
    assert_eq!(
        server.wait_build(id, Duration::from_secs(20))["state"],
        "success"
    );
    assert_eq!(server.step_log(id, "a", "1"), b"still working\n");
}

#[test]
fn a_restarted_server_keeps_builds_and_tokens() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "p",
        &[(
            "herd.yml",
            b"builders:\n  a:\n    steps: [{run: echo persisted}]\n",
        )],
    );
    let mut server = Server::start(&["--project", &format!("p={}", repo.display())]);
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("p", &[]);
    server.wait_build(id, Duration::from_secs(20));
    server.kill_and_restart();
    let b = server.build(id);
    assert_eq!(b["state"], "success");
    assert_eq!(server.step_log(id, "a", "1"), b"persisted\n");
    // The worker reconnects with its token and runs the next build.
    server.wait_online("w");
    let id = server.start_build("p", &[]);
    assert_eq!(
        server.wait_build(id, Duration::from_secs(30))["state"],
        "success"
    );
}
