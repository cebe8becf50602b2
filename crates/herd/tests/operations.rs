//! Running for years: retention (`keep:`, the janitor, `herd gc`),
//! `/metrics`, backup and restore, config reload. The real binary on
//! 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A project whose one builder fails while FLAG exists and sleeps while
/// SLOW exists.
fn flag_config(dir: &std::path::Path, keep: &str) -> String {
    let flag = dir.join("FAIL");
    let slow = dir.join("SLOW");
    format!(
        "projects:\n  p:\n    keep: {keep}\n    pipeline: |\n      builders:\n        b:\n          steps:\n            - run: 'echo output of this build; if [ -e {} ]; then sleep 3; fi; test ! -e {}'\n",
        slow.display(),
        flag.display()
    )
}

fn state(server: &Server, id: i64) -> Option<String> {
    server
        .get(&format!("/api/v1/builds/{id}"))
        .ok()
        .map(|b| b["state"].as_str().unwrap_or_default().to_string())
}

#[test]
fn retention_keeps_the_newest_and_the_last_success_and_failure_while_builds_run() {
    let flags = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(&flag_config(flags.path(), "{builds: 3}"), &[]);
    let _w = server.worker("w1", 2, &[]);
    server.wait_online("w1");
    std::fs::write(flags.path().join("FAIL"), "").unwrap();
    let failed = server.start_build("p", &[]);
    assert_eq!(server.wait_build(failed, LIMIT)["state"], "failure");
    std::fs::remove_file(flags.path().join("FAIL")).unwrap();
    let mut ok = Vec::new();
    for _ in 0..6 {
        let id = server.start_build("p", &[]);
        assert_eq!(server.wait_build(id, LIMIT)["state"], "success");
        ok.push(id);
    }
    // Newest three: ok[3..6]; the last failure stays too.
    let dry = server.cli(&["gc", "--dry-run"]);
    assert!(dry.status.success(), "{}", out(&dry));
    let text = out(&dry);
    let would: Vec<String> = ok[..3].iter().map(i64::to_string).collect();
    assert!(
        text.contains(&format!("would remove builds: {}", would.join(" "))),
        "{text}"
    );
    assert_eq!(
        state(&server, ok[0]).as_deref(),
        Some("success"),
        "a dry run removes nothing"
    );

    // A build runs while the janitor works: it stays and finishes.
    std::fs::write(flags.path().join("SLOW"), "").unwrap();
    let running = server.start_build("p", &[]);
    wait_until(LIMIT, "the slow build to run", || {
        (state(&server, running).as_deref() == Some("running")).then_some(())
    });
    let gc = server.cli(&["gc", "--output", "json"]);
    assert!(gc.status.success(), "{}", out(&gc));
    let report: Value = serde_json::from_slice(&gc.stdout).unwrap();
    let removed: Vec<i64> = report["projects"][0]["builds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    // Newest three are now ok[4], ok[5] and the running one.
    assert_eq!(removed, ok[..4], "{report}");
    assert!(
        report["projects"][0]["log_bytes"].as_u64().unwrap() > 0,
        "{report}"
    );
    for id in &ok[..4] {
        assert_eq!(state(&server, *id), None, "build {id} is gone");
    }
    for id in [failed, ok[4], ok[5]] {
        assert!(state(&server, id).is_some(), "build {id} stays");
    }
    assert_eq!(server.wait_build(running, LIMIT)["state"], "success");
    // The last failure's log is whole.
    let log = String::from_utf8(server.step_log(failed, "b", "0")).unwrap();
    assert!(log.contains("output of this build"), "{log}");
    // A second pass finds nothing more to do but the newest three rule.
    let again = server.cli(&["gc", "--output", "json"]);
    let report: Value = serde_json::from_slice(&again.stdout).unwrap();
    let removed = report["projects"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|p| p["builds"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
        })
        .unwrap_or(0);
    assert_eq!(removed, 0, "{report}");
}

#[test]
fn the_janitor_runs_by_itself_and_gives_sqlite_space_back() {
    let flags = tempfile::tempdir().unwrap();
    let config = format!(
        "janitor_interval: 1s\n{}",
        flag_config(flags.path(), "{builds: 1}")
    );
    let server = Server::start_on_sqlite(&config, &[]);
    let _w = server.worker("w1", 2, &[]);
    server.wait_online("w1");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = server.start_build("p", &[]);
        server.wait_build(id, LIMIT);
        ids.push(id);
    }
    // The last success (the newest) stays; the three before it go.
    wait_until(
        Duration::from_secs(120),
        "the janitor to remove old builds",
        || {
            ids[..3]
                .iter()
                .all(|id| state(&server, *id).is_none())
                .then_some(())
        },
    );
    assert!(state(&server, ids[3]).is_some());
    let db = server.data.join("herd.db");
    let mode = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('PRAGMA auto_vacuum').fetchone()[0])",
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&mode.stdout).trim(),
        "2",
        "incremental auto_vacuum"
    );
}

#[test]
fn metrics_need_their_token_and_parse_as_openmetrics() {
    let server = Server::start_with_pipelines(
        &[("p", "builders:\n  b:\n    steps:\n      - run: echo hi\n")],
        &[],
    );
    let _w = server.worker("w1", 1, &[]);
    server.wait_online("w1");
    for _ in 0..3 {
        let id = server.start_build("p", &[]);
        server.wait_build(id, LIMIT);
    }
    let make = |kind: &str| {
        let o = server.cli(&["token", "create", kind]);
        assert!(o.status.success(), "{}", out(&o));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    let metrics_token = make("--metrics");
    let read_token = make("--read");
    let fetch = |token: Option<&str>| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}"]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let o = cmd.arg(format!("{}/metrics", server.url)).output().unwrap();
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), body.to_string())
    };
    assert_eq!(fetch(None).0, "401");
    assert_eq!(fetch(Some(&read_token)).0, "403");
    // A metrics token reads nothing else.
    let (code, _) = {
        let o = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {metrics_token}"))
            .arg(format!("{}/api/v1/builds", server.url))
            .output()
            .unwrap();
        (String::from_utf8_lossy(&o.stdout).to_string(), ())
    };
    assert_eq!(code, "403");
    let (code, body) = fetch(Some(&metrics_token));
    assert_eq!(code, "200", "{body}");
    assert_eq!(fetch(Some(&server.token)).0, "200");
    // The Prometheus project's own parser reads it.
    let parse = std::process::Command::new("python3")
        .args([
            "-c",
            r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        key = s.name + json.dumps(dict(sorted(s.labels.items())))
        out[key] = s.value
print(json.dumps(out))
"#,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        parse.status.success(),
        "{}\n{body}",
        String::from_utf8_lossy(&parse.stderr)
    );
    let samples: Value = serde_json::from_slice(&parse.stdout).unwrap();
    let get = |k: &str| samples.get(k).and_then(Value::as_f64);
    assert_eq!(
        get(r#"herd_builds_started_total{"project": "p"}"#),
        Some(3.0),
        "{samples}"
    );
    assert_eq!(
        get(r#"herd_builds_finished_total{"project": "p", "state": "success"}"#),
        Some(3.0),
        "{samples}"
    );
    assert_eq!(
        get(r#"herd_workers{"state": "connected"}"#),
        Some(1.0),
        "{samples}"
    );
    assert_eq!(get(r#"herd_jobs_running{}"#), Some(0.0), "{samples}");
    assert_eq!(
        get(r#"herd_queue_wait_seconds_count{"builder": "b", "project": "p"}"#),
        Some(3.0),
        "{samples}"
    );
    assert!(
        get(r#"herd_log_stored_bytes_total{}"#).unwrap_or(0.0) > 0.0,
        "{samples}"
    );
    if server.database.is_none() {
        assert!(
            get(r#"herd_database_bytes{}"#).unwrap_or(0.0) > 0.0,
            "{samples}"
        );
    }
}

#[test]
fn a_backup_taken_during_builds_restores_builds_and_logs_byte_for_byte() {
    let flags = tempfile::tempdir().unwrap();
    let server = Server::start_on_sqlite(&flag_config(flags.path(), "forever"), &[]);
    let _w = server.worker("w1", 2, &[]);
    server.wait_online("w1");
    let mut done = Vec::new();
    for _ in 0..3 {
        let id = server.start_build("p", &[]);
        server.wait_build(id, LIMIT);
        done.push(id);
    }
    std::fs::write(flags.path().join("SLOW"), "").unwrap();
    let running = server.start_build("p", &[]);
    wait_until(LIMIT, "a build to run", || {
        (state(&server, running).as_deref() == Some("running")).then_some(())
    });
    let file = flags.path().join("herd.backup");
    let b = server.cli(&[
        "backup",
        "--data",
        &server.data.display().to_string(),
        "--to",
        &file.display().to_string(),
    ]);
    assert!(b.status.success(), "{}", out(&b));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before: Vec<(Value, Vec<u8>)> = done
        .iter()
        .map(|id| (server.build(*id), server.step_log(*id, "b", "0")))
        .collect();
    server.wait_build(running, LIMIT);

    let restored = flags.path().join("restored");
    let r = server.cli(&[
        "restore",
        &file.display().to_string(),
        "--data",
        &restored.display().to_string(),
    ]);
    assert!(r.status.success(), "{}", out(&r));
    // A restore never overwrites a database.
    let again = server.cli(&[
        "restore",
        &file.display().to_string(),
        "--data",
        &restored.display().to_string(),
    ]);
    assert!(!again.status.success());
    assert!(
        out(&again).contains("already holds a database"),
        "{}",
        out(&again)
    );
    drop(server);
    let back = Server::start_on_data(&restored);
    for (id, (build, log)) in done.iter().zip(&before) {
        let b = back.build(*id);
        assert_eq!(b["state"], build["state"]);
        assert_eq!(b["revision"], build["revision"]);
        assert_eq!(&back.step_log(*id, "b", "0"), log, "log of build {id}");
    }
    // The build that ran during the backup is there as it was then; the
    // restored server moves it on (no worker of it came back).
    assert!(state(&back, running).is_some());
}

#[test]
fn garbage_is_not_restored() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a backup at all").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_herd"))
        .args(["restore", &junk.display().to_string(), "--data"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(out(&o).contains("restore failed"), "{}", out(&o));
    assert!(!dir.path().join("d/herd.db").exists());
}

#[test]
fn reload_takes_a_good_config_and_keeps_the_old_one_for_a_broken_one() {
    let project = |name: &str| {
        format!("  {name}:\n    pipeline: |\n      builders:\n        b:\n          steps:\n            - run: echo hi\n")
    };
    let one = format!("projects:\n{}", project("p"));
    let server = Server::start_with_config(&one, &[]);
    let w = server.worker("w1", 1, &[]);
    server.wait_online("w1");
    let config = server.dir.path().join("herd-server.yml");
    let names = |s: &Server| -> Vec<String> {
        s.get("/api/v1/projects").unwrap()["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&server), ["p"]);
    // A good config, by SIGHUP: project q appears, the worker stays.
    let two = format!("{one}{}", project("q"));
    std::fs::write(&config, &two).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_until(LIMIT, "project q after SIGHUP", || {
        names(&server).contains(&"q".to_string()).then_some(())
    });
    let id = server.start_build("q", &[]);
    assert_eq!(server.wait_build(id, LIMIT)["state"], "success");
    // A broken config: refused with where and why; nothing changes.
    std::fs::write(
        &config,
        format!("{two}  r:\n    keep: {{builds: 0}}\n    repo: /nonexistent\n"),
    )
    .unwrap();
    let r = server.cli(&["server", "reload"]);
    assert!(!r.status.success());
    let text = out(&r);
    let line = two.lines().count() + 2;
    assert!(text.contains(&format!("herd-server.yml:{line}:")), "{text}");
    assert!(text.contains("keep.builds` must be at least 1"), "{text}");
    assert!(text.contains("the config in use stays"), "{text}");
    assert_eq!(names(&server), ["p", "q"]);
    // And by the CLI, a good one again: q goes.
    std::fs::write(&config, &one).unwrap();
    let r = server.cli(&["server", "reload"]);
    assert!(r.status.success(), "{}", out(&r));
    assert!(out(&r).contains("project q removed"), "{}", out(&r));
    // The worker's connection never dropped.
    assert!(!w.log().contains("reconnect"), "{}", w.log());
    let id = server.start_build("p", &[]);
    assert_eq!(server.wait_build(id, LIMIT)["state"], "success");
}

/// Every line of a JSON log is one JSON object; the lines of a build's life
/// carry its id as a field (the server's) or in the job's span (the
/// worker's).
#[test]
fn json_logs_are_one_object_per_line_and_carry_the_build_id() {
    let flags = tempfile::tempdir().unwrap();
    let server = Server::start_with_config(
        &flag_config(flags.path(), "{builds: 10}"),
        &["--log-format", "json"],
    );
    let w = server.worker_with_args("w1", &["--log-format", "json"]);
    let id = server.start_build("p", &[]);
    assert_eq!(server.wait_build(id, LIMIT)["state"], "success");
    // The last line (the attempt's end) is written after the build shows.
    let parse = |text: &str| -> Vec<Value> {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .collect()
    };
    let lines = wait_until(LIMIT, "the server to log the attempt's end", || {
        let lines = parse(&server.log());
        lines
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains("ended")))
            .then_some(lines)
    });
    for l in &lines {
        assert!(
            l["timestamp"].is_string() && l["level"].is_string() && l["message"].is_string(),
            "{l}"
        );
    }
    let of_build: Vec<&str> = lines
        .iter()
        .filter(|l| l["build"] == id)
        .filter_map(|l| l["message"].as_str())
        .collect();
    for what in ["queued", "assigned to w1", "ended"] {
        assert!(
            of_build.iter().any(|m| m.contains(what)),
            "no `{what}` line with build={id}: {of_build:?}"
        );
    }
    // A line that names the build carries its id as a field.
    for l in &lines {
        let m = l["message"].as_str().unwrap();
        if m.contains(&format!("build {id} ")) {
            assert_eq!(l["build"], id, "{l}");
        }
    }
    let worker = parse(&w.log());
    let running = worker
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("running attempt"))
        })
        .unwrap_or_else(|| panic!("{worker:?}"));
    assert_eq!(running["span"]["build"], id, "{running}");
    assert!(running["span"]["attempt"].is_i64(), "{running}");
}
