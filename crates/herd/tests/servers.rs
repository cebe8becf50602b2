//! Several servers on one PostgreSQL database: the real binary twice on
//! 127.0.0.1, workers that know both, builds started through either.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(90);

fn inline_project(name: &str, pipeline: &str) -> String {
    let mut config = format!("projects:\n  {name}:\n    pipeline: |\n");
    for line in pipeline.lines() {
        config.push_str(&format!("      {line}\n"));
    }
    config
}

/// `n` one-slot workers, the first half at home on A, the others on B;
/// each knows both servers.
fn workers_on_both(a: &Server, b: &Server, n: usize) -> Vec<Worker> {
    let mut workers = Vec::new();
    for i in 0..n {
        let name = format!("w{i}");
        let token = a.worker_token(&name);
        let (home, other) = if i < n / 2 { (a, b) } else { (b, a) };
        workers.push(Worker::spawn(
            &format!("{},{}", home.url, other.url),
            &token,
            &name,
            &a.dir.path().join(format!("work-{name}")),
            1,
            &[],
        ));
        home.wait_online(&name);
    }
    workers
}

/// Builds of project `p`, started alternately through A and B.
fn start_builds_through_both(a: &Server, b: &Server, n: usize) -> Vec<i64> {
    (0..n)
        .map(|i| if i % 2 == 0 { a } else { b }.start_build("p", &[]))
        .collect()
}

#[test]
fn a_build_started_through_one_server_runs_on_a_worker_of_another_and_its_log_is_followed_live() {
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    let done = gate.path().join("done");
    let pipeline = format!(
        "builders:\n  slow:\n    steps:\n      - run: 'while [ ! -e {go} ]; do sleep 0.05; done; echo first line; while [ ! -e {done} ]; do sleep 0.05; done; echo last line'\n",
        go = go.display(),
        done = done.display()
    );
    let config = inline_project("p", &pipeline);
    let a = Server::start_on_postgres(&config, &[]);
    let b = Server::start_sharing(&a, &config, &[]);
    // The only worker is on B (it knows A too).
    let token = a.worker_token("on-b");
    let _w = Worker::spawn(
        &format!("{},{}", b.url, a.url),
        &token,
        "on-b",
        &a.dir.path().join("work-on-b"),
        1,
        &[],
    );
    b.wait_online("on-b");

    // Started through A: B hears of it and its idle worker takes it.
    let id = a.start_build("p", &[]);
    let running = wait_until(LONG, "the job to start on B's worker", || {
        let build = a.build(id);
        let attempt = build["jobs"][0]["attempts"][0].clone();
        (attempt["state"] == "running").then_some(attempt)
    });
    assert_eq!(running["worker"], "on-b");

    // A follower on A, waiting before the step prints anything.
    let mut follower = Command::new(HERD)
        .args(["build", "log", &id.to_string(), "--follow"])
        .env("HERD_SERVER", &a.url)
        .env("HERD_TOKEN", &a.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The follower names the step (on stderr) just before it starts
    // waiting for its output.
    let (header_tx, header_rx) = std::sync::mpsc::channel();
    let stderr = follower.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with("==> ") && header_tx.send(line).is_err() {
                break;
            }
        }
    });
    let header = header_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(header.contains("step 0"), "{header}");
    std::fs::write(&go, "").unwrap();
    // The follower's long poll waits 20 s when nobody wakes it: B's
    // notification makes the line arrive well before.
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, "first line");
    std::fs::write(&done, "").unwrap();
    let last = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(last, "last line");
    assert!(follower.wait().unwrap().success());
    assert_eq!(a.wait_build(id, LONG)["state"], "success");
    // B's page shows what A's shows.
    assert_eq!(b.build(id)["state"], "success");
}

#[test]
fn fifty_builds_over_two_servers_run_each_job_once_even_when_one_server_is_killed() {
    let pipeline = "builders:\n  x:\n    jobs:\n      a:\n        steps: [{run: 'sleep 0.3; echo a'}]\n      b:\n        steps: [{run: 'sleep 0.3; echo b'}]\n";
    let config = inline_project("p", pipeline);
    let mut a = Server::start_on_postgres(&config, &[]);
    let b = Server::start_sharing(&a, &config, &[]);
    let workers = workers_on_both(&a, &b, 6);
    let ids = start_builds_through_both(&a, &b, 50);
    // Mid-way, server A dies; its workers go to B and resume.
    wait_until(LONG, "ten builds done", || {
        let done = ids
            .iter()
            .filter(|id| b.build(**id)["state"] == "success")
            .count();
        (done >= 10).then_some(())
    });
    a.kill9();
    for id in &ids {
        let build = b.wait_build(*id, LONG);
        assert_eq!(build["state"], "success", "{build}");
        for job in build["jobs"].as_array().unwrap() {
            let attempts = job["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 1, "job ran once: {job}");
            assert_eq!(attempts[0]["state"], "success");
        }
    }
    // Work went to the workers of both servers.
    let mut used = std::collections::BTreeSet::new();
    for id in &ids {
        for job in b.build(*id)["jobs"].as_array().unwrap() {
            used.insert(job["attempts"][0]["worker"].as_str().unwrap().to_string());
        }
    }
    assert!(used.len() >= 4, "jobs spread over the workers: {used:?}");
    drop(workers);
    let database = a.database.take();
    drop(a);
    drop(b);
    if let Some(url) = database {
        drop_postgres_database(&url);
    }
}

#[test]
fn herd_migrate_moves_a_sqlite_server_into_postgres_with_builds_and_logs() {
    let config = inline_project(
        "p",
        "builders:\n  b:\n    steps:\n      - run: printf 'line %s\\n' 1 2 3\n",
    );
    let mut old = Server::start_on_sqlite(&config, &[]);
    let w = old.worker("w1", 1, &[]);
    let id = old.start_build("p", &[]);
    assert_eq!(old.wait_build(id, LONG)["state"], "success");
    let log = old.step_log(id, "b", "0");
    assert_eq!(log, b"line 1\nline 2\nline 3\n");
    drop(w);
    old.kill9();

    let url = fresh_postgres_database();
    let migrate = |to: &str| {
        Command::new(HERD)
            .args(["migrate", "--data"])
            .arg(&old.data)
            .args(["--to", to])
            .output()
            .unwrap()
    };
    let out = migrate(&url);
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("builds") && said.contains("log_chunks"),
        "{said}"
    );

    let new = Server::start_with_database(&config, &url, &old.token);
    let build = new.build(id);
    assert_eq!(build["state"], "success", "{build}");
    assert_eq!(new.step_log(id, "b", "0"), log, "logs byte for byte");
    // The old admin token works, workers' tokens too, and ids go on.
    let _w = new.worker("w1", 1, &[]);
    let next = new.start_build("p", &[]);
    assert_eq!(next, id + 1);
    assert_eq!(new.wait_build(next, LONG)["state"], "success");
    // Into a database that is not empty: refused, nothing written.
    let again = migrate(&url);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("empty"));
    drop(new);
    drop_postgres_database(&url);
}

#[test]
fn the_job_of_a_worker_that_knew_only_the_dead_server_moves_to_a_live_one() {
    // The first attempt hangs; a second one (elsewhere) passes.
    let pipeline = "builders:\n  b:\n    steps:\n      - run: 'if [ \"$HERD_ATTEMPT\" = 1 ]; then sleep 300; fi; echo ran attempt $HERD_ATTEMPT'\n";
    let config = inline_project("p", pipeline);
    let mut a = Server::start_on_postgres(&config, &[]);
    let b = Server::start_sharing(&a, &config, &[]);
    let token = a.worker_token("only-a");
    let _stuck = Worker::spawn(&a.url, &token, "only-a", &a.dir.path().join("wa"), 1, &[]);
    a.wait_online("only-a");
    let token = a.worker_token("on-b");
    let _w = Worker::spawn(&b.url, &token, "on-b", &a.dir.path().join("wb"), 1, &[]);
    b.wait_online("on-b");
    let (status, _) = b.post(
        "/api/v1/workers/on-b/pause",
        serde_json::json!({}),
        Some(&b.token),
    );
    assert_eq!(status, 200);
    let id = a.start_build("p", &[]);
    wait_until(LONG, "the first attempt running on only-a", || {
        let attempt = a.build(id)["jobs"][0]["attempts"][0].clone();
        (attempt["state"] == "running" && attempt["worker"] == "only-a").then_some(())
    });
    b.post(
        "/api/v1/workers/on-b/resume",
        serde_json::json!({}),
        Some(&b.token),
    );
    a.kill9();
    // B notices A is gone, waits for only-a to come back (it cannot), then
    // the job moves to on-b.
    let build = b.wait_build(id, LONG);
    assert_eq!(build["state"], "success", "{build}");
    let attempts = build["jobs"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{build}");
    assert_eq!(attempts[0]["state"], "lost");
    assert!(
        attempts[0]["reason"].as_str().unwrap().contains("only-a"),
        "{build}"
    );
    assert_eq!(attempts[1]["worker"], "on-b");
    let workers = b.get("/api/v1/workers").unwrap();
    let only_a = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "only-a")
        .unwrap()
        .clone();
    assert_eq!(only_a["online"], false, "{only_a}");
}

#[test]
fn stopping_one_server_at_a_time_while_builds_run_loses_nothing() {
    let pipeline = "builders:\n  x:\n    jobs:\n      a:\n        steps: [{run: 'sleep 0.3'}]\n      b:\n        steps: [{run: 'sleep 0.3'}]\n";
    let config = inline_project("p", pipeline);
    let mut a = Server::start_on_postgres(&config, &[]);
    let mut b = Server::start_sharing(&a, &config, &[]);
    let _workers = workers_on_both(&a, &b, 4);
    let ids = start_builds_through_both(&a, &b, 30);
    let done = |s: &Server| {
        ids.iter()
            .filter(|id| s.build(**id)["state"] == "success")
            .count()
    };
    wait_until(LONG, "five builds done", || (done(&b) >= 5).then_some(()));
    a.stop_and_restart();
    wait_until(LONG, "fifteen builds done", || {
        (done(&a) >= 15).then_some(())
    });
    b.stop_and_restart();
    for id in &ids {
        let build = a.wait_build(*id, LONG);
        assert_eq!(build["state"], "success", "{build}");
        for job in build["jobs"].as_array().unwrap() {
            let attempts = job["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 1, "job ran once: {job}");
        }
    }
}

#[test]
fn two_servers_polling_one_repository_build_each_commit_once() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(
        root.path(),
        "app",
        &[(
            "herd.yml",
            b"builders:\n  b:\n    steps:\n      - run: echo ok\n",
        )],
    );
    let config = format!(
        "projects:\n  app:\n    repo: {}\n    poll: 200ms\n",
        repo.display()
    );
    let a = Server::start_on_postgres(&config, &[]);
    let b = Server::start_sharing(&a, &config, &[]);
    let token = a.worker_token("w");
    let _w = Worker::spawn(&b.url, &token, "w", &a.dir.path().join("w"), 2, &[]);
    b.wait_online("w");
    for s in [&a, &b] {
        wait_until(LONG, "a first poll", || {
            s.get("/api/v1/projects/app").ok()?["polling"]["last_success_at"].as_i64()
        });
    }
    let mut shas = Vec::new();
    for i in 0..5 {
        let sha = commit(
            &repo,
            &[("n.txt", i.to_string().as_bytes())],
            &format!("commit {i}"),
        );
        // One commit per poll (collapse would build only the newest of
        // several): the next comes once a server has recorded this one.
        wait_until(LONG, &format!("commit {i} recorded"), || {
            let p = a.get("/api/v1/projects/app").ok()?;
            p["changes"]
                .as_array()?
                .iter()
                .any(|c| c["revision"] == sha.as_str())
                .then_some(())
        });
        shas.push(sha);
    }
    let changes = wait_until(LONG, "every commit built", || {
        let p = a.get("/api/v1/projects/app").ok()?;
        let changes = p["changes"].as_array()?.clone();
        (changes.len() >= 5 && changes.iter().all(|c| c["build_id"].is_i64())).then_some(changes)
    });
    assert_eq!(changes.len(), 5, "each commit recorded once: {changes:?}");
    let builds = a.get("/api/v1/builds?project=app").unwrap();
    assert_eq!(builds["builds"].as_array().unwrap().len(), 5, "{builds}");
    for sha in &shas {
        assert_eq!(
            changes
                .iter()
                .filter(|c| c["revision"] == sha.as_str())
                .count(),
            1
        );
    }
}

#[test]
fn a_worker_revoked_through_one_server_is_disconnected_from_the_other() {
    let config = inline_project("p", "builders:\n  b:\n    steps:\n      - run: 'true'\n");
    let a = Server::start_on_postgres(&config, &[]);
    let b = Server::start_sharing(&a, &config, &[]);
    let token = a.worker_token("revoked");
    let _w = Worker::spawn(&b.url, &token, "revoked", &a.dir.path().join("w"), 1, &[]);
    b.wait_online("revoked");
    let listed = a.cli(&["token", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).to_string();
    let id = listed
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("revoked"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let out = a.cli(&["token", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        Duration::from_secs(20),
        "B to drop the revoked worker",
        || {
            let w = b.get("/api/v1/workers/revoked").ok()?;
            (w["online"] == false).then_some(())
        },
    );
}

/// A runner: `list` prints 600 ids; `run JUNIT FILE` passes them and
/// records which worker ran them.
const SPLIT_RUNNER: &str = r#"#!/bin/sh
if [ "$1" = list ]; then seq -f 't%04g' 1 600; exit 0; fi
mkdir -p "$(dirname "$2")"
{ echo '<testsuites><testsuite name="s">'; sed 's/.*/<testcase classname="c" name="&" time="0.01"\/>/' "$3"; echo '</testsuite></testsuites>'; } > "$2"
cp "$3" "$RAN_DIR/ran-$HERD_WORKER-$HERD_BATCH"
sleep 0.2
"#;

#[test]
fn a_split_whose_shards_ask_two_servers_runs_every_test_once() {
    let dir = tempfile::tempdir().unwrap();
    let runner = dir.path().join("runner.sh");
    std::fs::write(&runner, SPLIT_RUNNER).unwrap();
    let ran_dir = dir.path().join("ran");
    std::fs::create_dir_all(&ran_dir).unwrap();
    let pipeline = format!(
        "builders:\n  suite:\n    steps:\n      - name: tests\n        split:\n          list: sh {r} list\n          run: sh {r} run {{junit}} \"$HERD_TESTS_FILE\"\n          junit: reports/junit.xml\n          workers: 4\n        env: {{RAN_DIR: {ran}}}\n",
        r = runner.display(),
        ran = ran_dir.display()
    );
    let config = inline_project("p", &pipeline);
    let a = Server::start_on_postgres(&config, &[]);
    let b = Server::start_sharing(&a, &config, &[]);
    let _w = workers_on_both(&a, &b, 4);
    // Two builds: the second plans by the first's timings. Each server
    // answers its own workers' shards from the split's log, which the
    // other server writes to as well.
    for round in 0..2 {
        for f in std::fs::read_dir(&ran_dir).unwrap() {
            std::fs::remove_file(f.unwrap().path()).unwrap();
        }
        let id = if round == 0 { &a } else { &b }.start_build("p", &[]);
        assert_eq!(a.wait_build(id, LONG)["state"], "success");
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        let mut runners = std::collections::BTreeSet::new();
        for f in std::fs::read_dir(&ran_dir).unwrap() {
            let f = f.unwrap();
            let name = f.file_name().to_string_lossy().into_owned();
            runners.insert(name.split('-').nth(1).unwrap().to_string());
            for t in std::fs::read_to_string(f.path()).unwrap().lines() {
                *seen.entry(t.to_string()).or_default() += 1;
            }
        }
        assert_eq!(seen.len(), 600, "round {round}");
        assert!(
            seen.values().all(|n| *n == 1),
            "round {round}: a test ran twice"
        );
        assert!(
            runners.iter().any(|w| w == "w0" || w == "w1")
                && runners.iter().any(|w| w == "w2" || w == "w3"),
            "round {round}: workers of both servers ran batches: {runners:?}"
        );
        // Both servers read the same split from the log.
        for s in [&a, &b] {
            let t = s.get(&format!("/api/v1/builds/{id}/tests")).unwrap();
            assert_eq!(t["splits"][0]["summary"], "600 tests: 600 passed", "{t}");
        }
    }
}
