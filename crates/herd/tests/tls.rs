//! TLS: a `--tls self-signed` server, workers and the CLI that pin its key,
//! and the refusals when the key is not the pinned one.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = "builders:\n  hello:\n    steps:\n      - run: echo over-tls\n";

/// A pin of some other key: a second self-signed setup's.
fn other_pin() -> String {
    let dir = tempfile::tempdir().unwrap();
    herd_tls::server::self_signed(&dir.path().join("tls"), &[])
        .unwrap()
        .pin
}

/// Runs a worker with `pin` for a few seconds and returns what it printed.
fn worker_output(server: &Server, pin: Option<&str>) -> String {
    let token = server.worker_token("doubter");
    let log = server.dir.path().join("doubter.log");
    let mut cmd = Command::new(HERD);
    cmd.args(["worker", "--server", &server.url, "--token", &token])
        .arg("--workdir")
        .arg(server.dir.path().join("work-doubter"))
        .env_remove("HERD_TLS_PIN")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(p) = pin {
        cmd.args(["--tls-pin", p]);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("connection to") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn a_pinned_worker_and_cli_work_over_tls_and_a_wrong_key_is_refused() {
    let server = Server::start_with_pipelines(&[("p", PIPELINE)], &["--tls", "self-signed"]);
    assert!(server.url.starts_with("https://"), "{}", server.url);
    let pin = server.pin.clone().unwrap();

    // The pinned worker connects over wss and runs a build; the pinned CLI
    // starts and reads it.
    let _w = server.worker("w1", 1, &[]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success", "{b:#}");
    let log = String::from_utf8(server.step_log(id, "hello", "0")).unwrap();
    assert_eq!(log.trim(), "over-tls");

    // Plain HTTP on the TLS port gets nowhere.
    let plain = server.url.replace("https://", "http://");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt.block_on(async { http_get(format!("{plain}/api/v1/health")).await });
    assert!(answer.is_err() || !answer.unwrap().status().is_success());

    // A worker with another pin never comes online, and says why.
    let wrong = other_pin();
    assert_ne!(wrong, pin);
    let said = worker_output(&server, Some(&wrong));
    assert!(said.contains("does not verify"), "{said}");
    assert!(said.contains(&format!("not the pinned {wrong}")), "{said}");
    assert!(server.get("/api/v1/workers/doubter").is_err());

    // Without a pin, a self-signed certificate is not trusted either.
    let said = worker_output(&server, None);
    assert!(said.contains("does not verify"), "{said}");

    // The CLI refuses likewise, with a message that says what to do.
    for pin in [Some(wrong.as_str()), None] {
        let mut cmd = Command::new(HERD);
        cmd.args(["workers"])
            .env("HERD_SERVER", &server.url)
            .env("HERD_TOKEN", &server.token)
            .env_remove("HERD_TLS_PIN");
        if let Some(p) = pin {
            cmd.env("HERD_TLS_PIN", p);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("TLS certificate does not verify"), "{err}");
    }
    let out = server.cli(&["workers"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A pin for a plain-HTTP address is a mistake, said so.
    let out = Command::new(HERD)
        .args(["workers", "--server", &plain, "--tls-pin", &pin])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain http"));
}

#[test]
fn the_install_one_liner_carries_the_pin_and_curl_checks_it() {
    // TLS from the config file this time.
    let server = Server::start_with_config("tls: self-signed\n", &[]);
    let pin = server.pin.clone().unwrap();
    let out = server.cli(&["token", "create", "--enroll"]);
    assert!(out.status.success());
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let hint = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = format!(
        "curl -fsSL -k --pinnedpubkey '{pin}' '{}/install.sh?token={token}' | sudo sh",
        server.url
    );
    assert!(hint.contains(&line), "{hint}");

    // The script curl fetches with the pin hands the pin on to the worker.
    let fetch = |pin: &str| {
        Command::new("curl")
            .args(["-fsSL", "-k", "--pinnedpubkey", pin])
            .arg(format!("{}/install.sh?token={token}", server.url))
            .output()
            .unwrap()
    };
    let got = fetch(&pin);
    assert!(got.status.success());
    let script = String::from_utf8_lossy(&got.stdout);
    assert!(script.contains(&format!("PIN='{pin}'")), "{script}");
    assert!(script.contains(&format!("SERVER='{}'", server.url)));
    // With another pin curl stops before it reads a byte.
    let refused = fetch(&other_pin());
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
}
