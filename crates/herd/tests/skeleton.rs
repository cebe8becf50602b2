//! The walking skeleton end to end: real server, real workers, real git.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::time::Duration;

const PIPELINE: &str = r#"builders:
  unix:
    steps:
      - name: compile
        run: mkdir -p out && echo "compiled by $HERD_WORKER for $HERD_BUILDER/$HERD_JOB at $HERD_REVISION" > out/result && cat out/result
        timeout: 1m
      - name: test
        run: printf 'test output\nsecond line' && printf ' (stderr)' >&2
        env: {GREETING: "1"}
      - name: cleanup
        run: rm -rf out && echo cleaned
        always: true
  batteries:
    jobs:
      default-reactor:
        steps:
          - run: echo "default $HERD_JOB"
      poll-reactor:
        requires: [os == linux]
        steps:
          - run: echo "poll $HERD_JOB"
"#;

#[test]
fn a_build_runs_its_jobs_on_several_workers_and_keeps_exact_logs() {
    let root = tempfile::tempdir().unwrap();
    let repo = git_repo(root.path(), "proj", &[("herd.yml", PIPELINE.as_bytes())]);
    let server = Server::start(&["--project", &format!("proj={}", repo.display())]);
    let _w1 = server.worker("w1", 2, &[]);
    let _w2 = server.worker("w2", 2, &[]);

    let out = server.cli(&["build", "start", "proj", "--wait"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = stdout.lines().next().unwrap().trim().parse().unwrap();
    assert!(stdout.contains("success"), "{stdout}");

    let b = server.build(id);
    assert_eq!(b["state"], "success");
    assert_eq!(b["jobs"].as_array().unwrap().len(), 3);
    let unix = server.job(&b, "unix", "main");
    let attempt = &unix["attempts"][0];
    let steps = attempt["steps"].as_array().unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["checkout", "compile", "test", "cleanup"]);
    assert!(steps
        .iter()
        .all(|s| s["state"] == "success" && s["exit_code"] == 0));
    assert!(steps.iter().all(|s| s["duration_ms"].as_i64().is_some()));

    let revision = b["revision"].as_str().unwrap();
    let worker = attempt["worker"].as_str().unwrap();
    assert_eq!(
        String::from_utf8(server.step_log(id, "unix", "compile")).unwrap(),
        format!("compiled by {worker} for unix/main at {revision}\n")
    );
    // stdout and stderr, interleaved as written, no newline added.
    assert_eq!(
        server.step_log(id, "unix", "test"),
        b"test output\nsecond line (stderr)"
    );
    assert_eq!(
        server.step_log(id, "batteries/poll-reactor", "1"),
        b"poll poll-reactor\n"
    );

    // `herd build show` prints the jobs and steps.
    let show = server.cli(&["build", "show", &id.to_string()]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("batteries/default-reactor: success"),
        "{text}"
    );

    // Both workers are listed, online.
    let workers = server.cli(&["workers"]);
    let text = String::from_utf8_lossy(&workers.stdout);
    assert!(
        text.contains("w1") && text.contains("w2") && text.contains("online"),
        "{text}"
    );
}

#[test]
fn a_failing_step_ends_the_job_but_always_steps_run() {
    let root = tempfile::tempdir().unwrap();
    let pipeline = r#"builders:
  b:
    steps:
      - name: ok
        run: echo fine
      - name: broken
        run: echo about to fail; exit 3
      - name: never
        run: echo should not run
      - name: cleanup
        run: echo cleaning
        always: true
"#;
    let repo = git_repo(root.path(), "p", &[("herd.yml", pipeline.as_bytes())]);
    let server = Server::start(&["--project", &format!("p={}", repo.display())]);
    let _w = server.worker("w", 1, &[]);
    let out = server.cli(&["build", "start", "p", "--wait"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--wait exits 1 when the build fails"
    );
    let id: i64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let b = server.build(id);
    assert_eq!(b["state"], "failure");
    let steps = &server.job(&b, "b", "main")["attempts"][0]["steps"];
    let states: Vec<(&str, &str)> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("checkout", "success"),
            ("ok", "success"),
            ("broken", "failure"),
            ("never", "skipped"),
            ("cleanup", "success")
        ]
    );
    assert_eq!(steps[2]["exit_code"], 3);
    assert_eq!(server.step_log(id, "b", "cleanup"), b"cleaning\n");
}

/// One process of the step ignores TERM: it is KILLed after the grace period.
#[test]
fn a_step_that_times_out_is_killed_with_its_whole_process_group() {
    let root = tempfile::tempdir().unwrap();
    let pidfile = root.path().join("pids");
    let pipeline = format!(
        r#"builders:
  slow:
    steps:
      - name: hang
        run: sleep 300 & echo $! > {pids}; sh -c 'trap "" TERM; sleep 300' & echo $! >> {pids}; wait
        timeout: 1s
      - name: after
        run: echo cleanup ran
        always: true
"#,
        pids = pidfile.display()
    );
    let server = Server::start_with_pipelines(&[("slow", &pipeline)], &[]);
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("slow", &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "failure");
    let hang = &server.job(&b, "slow", "main")["attempts"][0]["steps"][0];
    assert_eq!(hang["state"], "failure");
    assert!(
        hang["message"]
            .as_str()
            .unwrap()
            .contains("timed out after"),
        "{hang}"
    );
    let pids: Vec<i32> = std::fs::read_to_string(&pidfile)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in pids {
        assert!(!alive(pid), "process {pid} of the timed-out step survived");
    }
    assert_eq!(server.step_log(id, "slow", "after"), b"cleanup ran\n");
}

#[test]
fn cancelling_a_running_step_stops_every_process_of_it() {
    let root = tempfile::tempdir().unwrap();
    let pidfile = root.path().join("pids");
    let pipeline = format!(
        r#"builders:
  long:
    steps:
      - name: run
        run: sleep 300 & echo $! > {pids}; echo started; wait
"#,
        pids = pidfile.display()
    );
    let server = Server::start_with_pipelines(&[("long", &pipeline)], &[]);
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("long", &[]);
    wait_until(Duration::from_secs(20), "the step to start", || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    let out = server.cli(&["build", "cancel", &id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = server.wait_build(id, Duration::from_secs(20));
    assert_eq!(b["state"], "cancelled");
    assert_eq!(
        server.job(&b, "long", "main")["attempts"][0]["steps"][0]["state"],
        "cancelled"
    );
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until(
        Duration::from_secs(2),
        "the step's process to be gone",
        || (!alive(pid)).then_some(()),
    );
    // Cancelling again: the build has ended.
    let again = server.cli(&["build", "cancel", &id.to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already ended"));
}

#[test]
fn huge_and_binary_output_is_stored_byte_for_byte() {
    let root = tempfile::tempdir().unwrap();
    let big = root.path().join("big.bin");
    let small = root.path().join("small.bin");
    // 100 MB of pseudo-random bytes, and 1 MB of binary with no newline.
    std::fs::write(&big, pseudo_random_bytes(100_000_000, 42)).unwrap();
    let mut binary = pseudo_random_bytes(1_000_000, 7);
    binary.retain(|b| *b != b'\n');
    std::fs::write(&small, &binary).unwrap();
    let pipeline = format!(
        "builders:\n  out:\n    steps:\n      - name: big\n        run: cat {}\n      - name: binary\n        run: cat {}\n",
        big.display(),
        small.display()
    );
    let server = Server::start_with_pipelines(&[("out", &pipeline)], &[]);
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("out", &[]);
    let b = server.wait_build(id, Duration::from_secs(300));
    assert_eq!(b["state"], "success", "{b}");
    let got = server.step_log(id, "out", "big");
    assert_eq!(got.len(), 100_000_000);
    assert!(got == std::fs::read(&big).unwrap(), "100 MB log differs");
    assert!(
        server.step_log(id, "out", "binary") == binary,
        "binary log differs"
    );

    // A byte range from the middle, through the API.
    let attempt = server.job(&b, "out", "main")["attempts"][0]["id"]
        .as_i64()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let range = rt.block_on(async {
        http_get(format!(
            "{}/api/v1/attempts/{attempt}/steps/0/log?offset=50000000&limit=1000",
            server.url
        ))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
    });
    assert_eq!(&range[..], &got[50_000_000..50_001_000]);
}

#[test]
fn a_follower_sees_output_while_the_step_runs() {
    let server = Server::start_with_pipelines(&[("tick", "builders:\n  t:\n    steps:\n      - run: for i in 1 2 3 4 5; do echo tick $i; sleep 0.3; done\n")], &[]);
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("tick", &[]);
    let out = server.cli(&["build", "log", &id.to_string(), "--follow"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n"
    );
}

#[test]
fn a_worker_runs_as_many_jobs_at_once_as_it_has_slots() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    // Each job waits (at most 20 s) for the other to have started: they only
    // both succeed when they run at the same time.
    let pipeline = format!(
        r#"builders:
  pair:
    jobs:
      left:
        steps:
          - run: touch {dir}/left; i=0; while [ ! -e {dir}/right ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; test -e {dir}/right
      right:
        steps:
          - run: touch {dir}/right; i=0; while [ ! -e {dir}/left ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; test -e {dir}/left
"#
    );
    let server = Server::start_with_pipelines(&[("pair", &pipeline)], &[]);
    let _w = server.worker("two-slots", 2, &[]);
    let id = server.start_build("pair", &[]);
    let b = server.wait_build(id, Duration::from_secs(60));
    assert_eq!(b["state"], "success", "{b}");
    for job in ["left", "right"] {
        assert_eq!(
            server.job(&b, "pair", job)["attempts"][0]["worker"],
            "two-slots"
        );
    }
}

#[test]
fn every_path_in_the_openapi_document_is_served() {
    let server = Server::start(&[]);
    let doc = server.get("/api/v1/openapi.json").unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for path in paths.keys() {
        let concrete = path
            .replace("{id}", "1")
            .replace("{idx}", "0")
            .replace("{name}", "w");
        let res = rt
            .block_on(http_get(format!("{}{concrete}", server.url)))
            .unwrap();
        let status = res.status();
        let body = rt.block_on(res.text()).unwrap();
        assert!(
            !body.contains("no such route"),
            "{path} is documented but not routed ({status})"
        );
    }
    // And an undocumented path is answered by the fallback.
    let body = rt.block_on(async {
        http_get(format!("{}/api/v1/nope", server.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(body.contains("no such route"));
}
