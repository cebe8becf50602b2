//! Secrets of the server config reach only the jobs of builders allowed to
//! use them, only on workers that the server gave the labels they require
//! (a label a worker states itself never counts), and never a stored log
//! (plainly, split over two writes, or in base64) nor the API.
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use common::*;
use std::time::Duration;

const SECRET: &str = "s3cr3t-XYZ-0123";

const PIPELINE: &str = r#"builders:
  release:
    steps:
      - run: |
          echo "plain $KEY"
          printf '%s' "$KEY" | head -c 6; sleep 0.3; printf '%s\n' "$KEY" | tail -c +7
          printf '%s' "$KEY" | base64
          printf 'x%s' "$KEY" | base64
          printf 'xy%s' "$KEY" | base64 -w0 | tr '+/' '-_'; echo
          echo "done"
        env: {KEY: "${{ secrets.release_key }}"}
  other:
    steps:
      - run: echo "$K"
        env: {K: "${{ secrets.release_key }}"}
"#;

fn config() -> String {
    let mut c = format!(
        "secrets:\n  release_key:\n    value: \"{SECRET}\"\n    builders: [release]\n    labels: {{trusted: \"yes\"}}\nprojects:\n  p:\n    pipeline: |\n"
    );
    for line in PIPELINE.lines() {
        c.push_str(&format!("      {line}\n"));
    }
    c
}

#[test]
fn a_secret_reaches_only_allowed_builders_on_workers_the_server_labelled_and_never_a_stored_log() {
    let server = Server::start_with_config(&config(), &[]);
    // The attack: a volunteer claims the label that gates the secret.
    let _volunteer = server.worker("volunteer", 1, &["trusted=yes"]);

    let id = server.start_build("p", &["--builder", "release"]);
    let why = wait_until(Duration::from_secs(20), "the job's reason to wait", || {
        let b = server.build(id);
        let job = server.job(&b, "release", "main").clone();
        job["waiting"]["workers"][0]["unmet"]
            .as_str()
            .map(str::to_string)
    });
    assert!(why.contains("set by the server"), "{why}");
    assert_eq!(server.build(id)["state"], "queued");

    // The admin labels another worker: it runs the job.
    let _trusted = server.worker("trusted", 1, &[]);
    let out = server.cli(&["workers", "label", "trusted", "trusted=yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("trusted      yes"));
    let build = server.wait_build(id, Duration::from_secs(60));
    assert_eq!(build["state"], "success", "{build}");
    let job = server.job(&build, "release", "main");
    assert_eq!(
        job["attempts"][0]["worker"], "trusted",
        "the volunteer never gets it"
    );
    let w = server.get("/api/v1/workers/trusted").unwrap();
    assert_eq!(w["server_labels"], serde_json::json!({"trusted": "yes"}));
    let v = server.get("/api/v1/workers/volunteer").unwrap();
    assert_eq!(v["server_labels"], serde_json::json!({}));
    assert_eq!(v["labels"]["trusted"], "yes", "shown as its own word");
    let page = server.get_text("/workers/trusted").unwrap();
    assert!(page.contains("Set by the server"), "{page}");

    let log = String::from_utf8(server.step_log(id, "release", "0")).unwrap();
    assert!(log.contains("plain ***"), "{log}");
    assert!(log.contains("done"), "{log}");
    assert!(!log.contains(SECRET), "plain or split: {log}");
    let std = base64::engine::general_purpose::STANDARD;
    for prefix in ["", "x", "xy"] {
        let encoded = std.encode(format!("{prefix}{SECRET}"));
        // The characters that carry the secret's bits alone.
        let core = &encoded[(prefix.len() * 4).div_ceil(3) + 1..encoded.len() - 3];
        assert!(!log.contains(core), "base64 after {prefix:?}: {log}");
        let url_safe = core.replace('+', "-").replace('/', "_");
        assert!(
            !log.contains(&url_safe),
            "url-safe base64 after {prefix:?}: {log}"
        );
    }
    // Nothing the API shows holds it: not the build, not the job's spec.
    let shown = server.get_text(&format!("/api/v1/builds/{id}")).unwrap();
    assert!(!shown.contains(SECRET));
    assert!(
        shown.contains("trusted"),
        "the label requirement shows: {shown}"
    );

    // A builder not allowed to use it runs without it, and says why.
    let id = server.start_build("p", &["--builder", "other"]);
    let build = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(build["state"], "success", "{build}");
    let job = server.job(&build, "other", "main");
    assert_eq!(job["withheld"][0]["secret"], "release_key");
    let reason = job["withheld"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("builder `other` is not among its builders"),
        "{reason}"
    );
    let log = String::from_utf8(server.step_log(id, "other", "0")).unwrap();
    assert!(!log.contains(SECRET), "{log}");
    assert!(log.contains("is withheld from this job"), "{log}");

    // Removing the label takes the secret's jobs away from that worker.
    let out = server.cli(&["workers", "label", "trusted", "--remove", "trusted"]);
    assert!(out.status.success());
    let id = server.start_build("p", &["--builder", "release"]);
    wait_until(Duration::from_secs(20), "the job to wait again", || {
        let b = server.build(id);
        server.job(&b, "release", "main")["waiting"]["workers"]
            .as_array()
            .is_some_and(|w| w.len() == 2)
            .then_some(())
    });
    assert_eq!(server.build(id)["state"], "queued");
}
