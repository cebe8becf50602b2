//! Who may read and act on the web page: users with argon2 passwords from
//! the config, and a private server that shows nothing without a sign-in.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn hash(password: &str) -> String {
    let mut child = Command::new(HERD)
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn a_private_server_needs_a_sign_in_and_users_sign_in_with_their_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.yml");
    std::fs::write(
        &config,
        format!(
            "private: true\nusers:\n  alice: \"{}\"\n",
            hash("correct horse battery")
        ),
    )
    .unwrap();
    let server = Server::start(&["--config", &config.display().to_string()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = http()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let get = |path: &str| http.get(format!("{}{path}", server.url)).send();
        // Nothing to read without a sign-in ...
        let r = get("/").await.unwrap();
        assert!(r.status().is_redirection());
        assert!(r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login"));
        assert_eq!(get("/api/v1/builds").await.unwrap().status(), 401);
        assert_eq!(get("/workers").await.unwrap().status().as_u16(), 303);
        assert_eq!(get("/projects").await.unwrap().status().as_u16(), 303);
        assert_eq!(get("/api/v1/projects").await.unwrap().status(), 401);
        // Webhooks carry their own signature: a private server still takes
        // them (and refuses a bad one itself).
        let hook = http
            .post(format!("{}/api/v1/hooks/github/nope", server.url))
            .send()
            .await
            .unwrap();
        assert_eq!(hook.status(), 404);
        // ... except what workers and installers need, and signing in.
        assert_eq!(get("/api/v1/health").await.unwrap().status(), 200);
        assert_eq!(get("/login").await.unwrap().status(), 200);
        let with_token = http
            .get(format!("{}/api/v1/builds", server.url))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap();
        assert_eq!(with_token.status(), 200);
        let login = |user: &str, password: &str| {
            http.post(format!("{}/login", server.url))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "user={user}&password={}&next=/workers",
                    password.replace(' ', "+")
                ))
                .send()
        };
        let wrong = login("alice", "wrong password").await.unwrap();
        assert_eq!(wrong.status(), 401);
        assert!(wrong
            .text()
            .await
            .unwrap()
            .contains("wrong user name or password"));
        assert_eq!(
            login("mallory", "correct horse battery")
                .await
                .unwrap()
                .status(),
            401
        );
        let ok = login("alice", "correct horse battery").await.unwrap();
        assert!(ok.status().is_redirection());
        assert_eq!(ok.headers()["location"], "/workers");
        let cookie = ok.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        let session = cookie.split(';').next().unwrap().to_string();
        let page = http
            .get(format!("{}/", server.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("Sign out"));
    });
}

#[test]
fn a_password_that_is_not_an_argon2_hash_stops_the_server_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.yml");
    std::fs::write(&config, "users:\n  bob: hunter2\n").unwrap();
    let out = Command::new(HERD)
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2:") && err.contains("not an argon2 hash"),
        "{err}"
    );
    assert!(err.contains("herd hash-password"), "{err}");
}

#[test]
fn pages_are_gzipped_for_browsers_but_event_streams_and_executables_are_not() {
    let server = Server::start(&[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let http = http().build().unwrap();
        let enc = |path: String| {
            let http = http.clone();
            async move {
                let r = http
                    .get(path)
                    .header("accept-encoding", "gzip")
                    .send()
                    .await
                    .unwrap();
                r.headers()
                    .get("content-encoding")
                    .map(|v| v.to_str().unwrap().to_string())
            }
        };
        assert_eq!(
            enc(format!("{}/static/app.css", server.url))
                .await
                .as_deref(),
            Some("gzip")
        );
        assert_eq!(
            enc(format!("{}/api/v1/openapi.json", server.url))
                .await
                .as_deref(),
            Some("gzip")
        );
        let exe = format!(
            "{}/download/herd-{}-{}",
            server.url,
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        assert_eq!(enc(exe).await, None, "bytes as they are");
        // The event stream flows uncompressed: its first event arrives at once.
        let mut r = http
            .get(format!("{}/events", server.url))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert!(r.headers().get("content-encoding").is_none());
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), r.chunk())
            .await
            .expect("the first event at once")
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&first).starts_with("data:"));
    });
}
