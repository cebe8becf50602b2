//! When a worker goes away, its work moves; a restarted server loses nothing.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::time::Duration;

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).unwrap();
}

fn attempts(b: &Value) -> Vec<Value> {
    b["jobs"][0]["attempts"].as_array().unwrap().clone()
}

/// A builder only the `fence` worker runs: a build of it that ends
/// proves the scheduler has since passed over every job queued before it.
const FENCE: &str = "  fence:\n    requires: [fence == yes]\n    steps:\n      - run: echo fence\n";

/// How the server sees `worker` towards the first job of a queued build.
fn standing(b: &Value, worker: &str) -> Value {
    b["jobs"][0]["waiting"]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker"] == worker)
        .map(|w| w["state"].clone())
        .unwrap_or(Value::Null)
}

/// Runs a fence build of `project` to its end (see [`FENCE`]).
fn fence(server: &Server, project: &str) {
    let id = server.start_build(project, &["--builder", "fence"]);
    assert_eq!(
        server.wait_build(id, Duration::from_secs(20))["state"],
        "success"
    );
}

fn pause(server: &Server, name: &str, on: bool) {
    let verb = if on { "pause" } else { "resume" };
    let out = server.cli(&["workers", verb, name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killing_a_worker_mid_step_moves_its_job_and_leaves_no_process_20_times() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:
  job:
    requires: [pool == x]
    steps:
      - run: case \"$HERD_WORKER\" in victim*) sleep 300 & echo $! > {dir}/pid-$HERD_BUILD_ID; wait;; esac; echo \"done on $HERD_WORKER\"
"
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let _a = server.worker("a", 1, &["pool=x"]);
    let _b = server.worker("b", 1, &["pool=x"]);
    let workdir = root.path().join("victim-work");
    for round in 0..20 {
        pause(&server, "a", true);
        pause(&server, "b", true);
        // A new name each round: one worker losing 20 jobs would be quarantined.
        let name = format!("victim{round}");
        let token = server.worker_token(&name);
        let mut victim = Worker::spawn(&server.url, &token, &name, &workdir, 1, &["pool=x"]);
        server.wait_online(&name);
        let id = server.start_build("p", &[]);
        let pidfile = root.path().join(format!("pid-{id}"));
        let pid: i32 = wait_until(
            Duration::from_secs(20),
            "the step to start on the victim",
            || {
                std::fs::read_to_string(&pidfile)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
            },
        );
        pause(&server, "a", false);
        pause(&server, "b", false);
        victim.kill9();
        let b = server.wait_build(id, Duration::from_secs(30));
        assert_eq!(b["state"], "success", "round {round}: {b}");
        let att = attempts(&b);
        assert_eq!(att.len(), 2, "round {round}: {b}");
        assert_eq!(att[0]["worker"], name.as_str());
        assert_eq!(att[0]["state"], "lost");
        assert!(
            att[0]["reason"].as_str().unwrap().contains("worker lost"),
            "{b}"
        );
        assert_eq!(att[1]["state"], "success");
        let winner = att[1]["worker"].as_str().unwrap().to_string();
        assert!(winner == "a" || winner == "b");
        assert_eq!(
            server.step_log(id, "job", "0"),
            format!("done on {winner}\n").into_bytes()
        );
        wait_until(
            Duration::from_secs(10),
            "the killed worker's step to be gone",
            || (!alive(pid)).then_some(()),
        );
    }
    // 20 builds, each succeeded once.
    let builds = server.get("/api/v1/builds?limit=100").unwrap();
    let builds = builds["builds"].as_array().unwrap();
    assert_eq!(builds.len(), 20);
    assert!(builds.iter().all(|b| b["state"] == "success"));
}

#[test]
fn a_hung_worker_loses_its_job_after_the_heartbeat_timeout_and_its_late_report_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:
  job:
    steps:
      - run: echo \"start on $HERD_WORKER\"; touch {dir}/started-$HERD_WORKER; if [ \"$HERD_WORKER\" = victim ]; then sleep 2; fi; echo \"done on $HERD_WORKER\"
"
    );
    let server = Server::start_with_pipelines(
        &[("p", &pipeline)],
        &[
            "--heartbeat-interval",
            "300ms",
            "--heartbeat-timeout",
            "1500ms",
        ],
    );
    let victim = server.worker("victim", 1, &[]);
    let _b = server.worker("b", 1, &[]);
    pause(&server, "b", true);
    let id = server.start_build("p", &[]);
    wait_until(
        Duration::from_secs(20),
        "the step to start on the victim",
        || root.path().join("started-victim").exists().then_some(()),
    );
    pause(&server, "b", false);
    signal(victim.pid(), Signal::SIGSTOP);
    let b = server.wait_build(id, Duration::from_secs(20));
    assert_eq!(b["state"], "success");
    let att = attempts(&b);
    assert_eq!(
        (att[0]["worker"].as_str(), att[0]["state"].as_str()),
        (Some("victim"), Some("lost"))
    );
    assert_eq!(
        (att[1]["worker"].as_str(), att[1]["state"].as_str()),
        (Some("b"), Some("success"))
    );
    // Wake the victim: it reconnects, is told the attempt is not its own,
    // and nothing it reports changes the build.
    signal(victim.pid(), Signal::SIGCONT);
    server.wait_online("victim");
    let lost = att[0]["id"].as_i64().unwrap();
    victim.wait_log(&format!("abandoning attempt {lost}"));
    let after = server.build(id);
    assert_eq!(after["state"], "success");
    assert_eq!(attempts(&after).len(), 2);
    assert_eq!(attempts(&after)[0]["state"], "lost");
    assert_eq!(server.step_log(id, "job", "0"), b"start on b\ndone on b\n");
    // The lost attempt keeps its log.
    let out = server.cli(&["build", "log", &id.to_string(), "--attempt", "1"]);
    assert_eq!(out.stdout, b"start on victim\n");
    let out = server.cli(&["build", "log", &id.to_string(), "--attempt", "7"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no attempt 7"));
}

/// An idle worker heartbeats seldom and is watched loosely (here a 60 s
/// idle timeout); a job given to it must be answered within the busy
/// timeout all the same, or it moves.
#[test]
fn a_job_given_to_a_hung_idle_worker_moves_after_the_busy_timeout_not_the_idle_one() {
    let pipeline = "builders:\n  job:\n    steps:\n      - run: echo \"done on $HERD_WORKER\"\n";
    let server = Server::start_with_pipelines(
        &[("p", pipeline)],
        &[
            "--heartbeat-interval",
            "300ms",
            "--heartbeat-timeout",
            "1500ms",
            "--idle-heartbeat-interval",
            "1s",
            "--idle-heartbeat-timeout",
            "60s",
        ],
    );
    let sleeper = server.worker("sleeper", 1, &[]);
    signal(sleeper.pid(), Signal::SIGSTOP);
    // Twice the busy timeout (the stimulus): idle, it is still online.
    std::thread::sleep(Duration::from_secs(3));
    let w = server.get("/api/v1/workers/sleeper").unwrap();
    assert_eq!(w["online"], true, "{w}");
    let id = server.start_build("p", &[]);
    wait_until(
        Duration::from_secs(20),
        "the job to be given to the sleeper",
        || (attempts(&server.build(id)).first()?["worker"] == "sleeper").then_some(()),
    );
    let _spare = server.worker("spare", 1, &[]);
    // Well within the idle timeout: the busy one applied from the assignment.
    let b = server.wait_build(id, Duration::from_secs(20));
    assert_eq!(b["state"], "success", "{b}");
    let att = attempts(&b);
    assert_eq!(
        (att[0]["worker"].as_str(), att[0]["state"].as_str()),
        (Some("sleeper"), Some("lost"))
    );
    assert_eq!(att[1]["worker"], "spare");
    signal(sleeper.pid(), Signal::SIGCONT);
}

/// The idle cadence is protocol 2: a protocol-1 worker's welcome has no
/// field it would refuse, and such a worker keeps the busy cadence.
#[test]
fn the_welcome_names_the_idle_cadence_only_to_a_worker_of_protocol_2() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(&["--idle-heartbeat-interval", "40s"]);
    let token = server.worker_token("raw");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let welcome = |protocols: Vec<u32>| {
        rt.block_on(async {
            let mut ws = connect(&server.url, Some(&token)).await.unwrap();
            let hello = serde_json::json!({"type": "hello", "protocols": protocols, "version": "test", "slots": 1});
            ws.send(Message::Text(hello.to_string().into())).await.unwrap();
            let Some(Ok(Message::Text(t))) = ws.next().await else {
                panic!("no welcome");
            };
            serde_json::from_str::<Value>(&t).unwrap()
        })
    };
    let old = welcome(vec![1]);
    assert_eq!(
        (old["type"].as_str(), old["protocol"].as_u64()),
        (Some("welcome"), Some(1))
    );
    assert!(old.get("idle_heartbeat_interval_ms").is_none(), "{old}");
    let new = welcome(vec![1, 2]);
    assert_eq!(new["protocol"], 2);
    assert_eq!(new["idle_heartbeat_interval_ms"], 40_000);
    assert_eq!(new["idle_heartbeat_timeout_ms"], 90_000);
    assert_eq!(new["heartbeat_interval_ms"], 5_000);
    // An idle cadence tighter than the busy one is refused at the start.
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(HERD)
        .args(["server", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .args(["--idle-heartbeat-interval", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("must be at least the busy ones")
            && text.contains("--idle-heartbeat-interval"),
        "{text}"
    );
}

#[test]
fn the_server_killed_with_builds_in_flight_loses_nothing() {
    let pipeline =
        "builders:\n  job:\n    steps:\n      - run: sleep 1; echo \"done $HERD_BUILD_ID\"\n";
    let mut server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _workers: Vec<Worker> = (0..4)
        .map(|i| server.worker(&format!("w{i}"), 5, &[]))
        .collect();
    let ids: Vec<i64> = (0..70).map(|_| server.start_build("p", &[])).collect();
    wait_until(Duration::from_secs(30), "20 running builds", || {
        let running = server
            .get("/api/v1/builds?state=running&limit=100")
            .unwrap();
        (running["builds"].as_array().unwrap().len() >= 20).then_some(())
    });
    server.kill_and_restart();
    for id in &ids {
        let b = server.wait_build(*id, Duration::from_secs(120));
        assert_eq!(b["state"], "success", "{b}");
        let att = attempts(&b);
        assert_eq!(
            att.iter().filter(|a| a["state"] == "success").count(),
            1,
            "{b}"
        );
        assert_eq!(
            server.step_log(*id, "job", "0"),
            format!("done {id}\n").into_bytes()
        );
    }
}

#[test]
fn a_paused_worker_gets_no_jobs_and_stays_paused_across_a_restart() {
    let pipeline = format!(
        "builders:\n  job:\n    requires: ['!fence']\n    steps:\n      - run: echo ok\n{FENCE}"
    );
    let mut server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let _w = server.worker("w", 1, &[]);
    let _f = server.worker("f", 1, &["fence=yes"]);
    pause(&server, "w", true);
    let id = server.start_build("p", &["--builder", "job"]);
    fence(&server, "p");
    let b = server.build(id);
    assert_eq!(b["state"], "queued");
    assert_eq!(standing(&b, "w"), "paused");
    let list = server.cli(&["workers"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("paused"));
    server.kill_and_restart();
    server.wait_online("w");
    server.wait_online("f");
    fence(&server, "p");
    assert_eq!(server.build(id)["state"], "queued");
    pause(&server, "w", false);
    assert_eq!(
        server.wait_build(id, Duration::from_secs(20))["state"],
        "success"
    );
}

#[test]
fn sigterm_finishes_running_jobs_and_takes_no_new_ones() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!("builders:\n  job:\n    steps:\n      - run: touch {dir}/started-$HERD_BUILD_ID; sleep 1; echo finished\n");
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let mut w = server.worker("w", 1, &[]);
    let first = server.start_build("p", &[]);
    wait_until(Duration::from_secs(20), "the first step", || {
        root.path()
            .join(format!("started-{first}"))
            .exists()
            .then_some(())
    });
    signal(w.pid(), Signal::SIGTERM);
    let second = server.start_build("p", &[]);
    // The worker is busy with the first job: the second waits for it,
    // until the server hears that it drains.
    wait_until(
        Duration::from_secs(20),
        "the server to hear that w drains",
        || {
            let b = server.build(second);
            (standing(&b, "w") == "draining").then_some(())
        },
    );
    let b = server.wait_build(first, Duration::from_secs(20));
    assert_eq!(b["state"], "success");
    assert_eq!(server.step_log(first, "job", "0"), b"finished\n");
    let status = wait_until(Duration::from_secs(20), "the worker to exit", || {
        w.child.try_wait().unwrap()
    });
    assert!(status.success());
    assert_eq!(
        server.build(second)["state"],
        "queued",
        "a draining worker takes no new job"
    );
}

#[test]
fn a_second_signal_stops_at_once_and_the_job_moves_without_waiting() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:\n  job:\n    steps:\n      - run: if [ \"$HERD_WORKER\" = quitter ]; then sleep 300 & echo $! > {dir}/pid; wait; fi; echo \"done on $HERD_WORKER\"\n"
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let mut quitter = server.worker("quitter", 1, &[]);
    let _other = server.worker("other", 1, &[]);
    pause(&server, "other", true);
    let id = server.start_build("p", &[]);
    let pid: i32 = wait_until(Duration::from_secs(20), "the step", || {
        std::fs::read_to_string(root.path().join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    pause(&server, "other", false);
    signal(quitter.pid(), Signal::SIGTERM);
    quitter.wait_log("draining: finishing 1 running job(s)");
    signal(quitter.pid(), Signal::SIGINT);
    let status = wait_until(Duration::from_secs(20), "the worker to exit", || {
        quitter.child.try_wait().unwrap()
    });
    assert!(status.success());
    assert!(!alive(pid), "the worker stopped its step before exiting");
    let b = server.wait_build(id, Duration::from_secs(20));
    assert_eq!(b["state"], "success");
    let att = attempts(&b);
    assert_eq!(att[0]["state"], "lost");
    assert!(
        att[0]["reason"].as_str().unwrap().contains("stopped"),
        "{b}"
    );
    assert_eq!(att[1]["worker"], "other");
}

#[test]
fn a_job_nobody_can_run_does_not_hold_up_the_others() {
    let pipeline = "builders:\n  never:\n    requires: [os == plan9]\n    steps:\n      - run: echo never\n  now:\n    steps:\n      - run: echo now\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let _w = server.worker("w", 1, &[]);
    let blocked = server.start_build("p", &["--builder", "never"]);
    let ids: Vec<i64> = (0..5)
        .map(|_| server.start_build("p", &["--builder", "now"]))
        .collect();
    for id in ids {
        assert_eq!(
            server.wait_build(id, Duration::from_secs(20))["state"],
            "success"
        );
    }
    assert_eq!(server.build(blocked)["state"], "queued");
}

#[test]
fn a_worker_that_keeps_losing_jobs_is_quarantined() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:\n  job:\n    requires: ['!fence']\n    steps:\n      - run: sleep 300 & echo $! > {dir}/pid-$HERD_BUILD_ID; wait\n{FENCE}"
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &["--retries", "0"]);
    let _f = server.worker("f", 1, &["fence=yes"]);
    let token = server.worker_token("flaky");
    let workdir = root.path().join("work");
    for round in 0..3 {
        let mut w = Worker::spawn(&server.url, &token, "flaky", &workdir, 1, &[]);
        server.wait_online("flaky");
        let id = server.start_build("p", &["--builder", "job"]);
        wait_until(Duration::from_secs(20), "the step", || {
            root.path().join(format!("pid-{id}")).exists().then_some(())
        });
        w.kill9();
        let b = server.wait_build(id, Duration::from_secs(20));
        // --retries 0: a lost job is not tried again.
        assert_eq!(b["state"], "error", "round {round}: {b}");
        assert!(
            b["jobs"][0]["error"]
                .as_str()
                .unwrap()
                .contains("gave up after 1 attempts"),
            "{b}"
        );
    }
    let _w = Worker::spawn(&server.url, &token, "flaky", &workdir, 1, &[]);
    server.wait_online("flaky");
    let w = server.get("/api/v1/workers/flaky").unwrap();
    assert!(w["quarantined_until"].is_i64(), "{w}");
    let id = server.start_build("p", &["--builder", "job"]);
    fence(&server, "p");
    let b = server.build(id);
    assert_eq!(b["state"], "queued");
    assert_eq!(standing(&b, "flaky"), "quarantined");
    assert!(String::from_utf8_lossy(&server.cli(&["workers"]).stdout).contains("quarantined"));
}

/// Heartbeats every 300 ms, lost after 2 s of silence.
const FAST: &[&str] = &["--heartbeat-interval", "300ms", "--heartbeat-timeout", "2s"];

#[test]
fn a_short_network_outage_is_ridden_out_with_one_attempt_and_a_whole_log() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:\n  job:\n    steps:\n      - run: touch {dir}/started; for i in $(seq 1 30); do echo $i; sleep 0.1; done\n"
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], FAST);
    let proxy = Proxy::start(&server.url);
    let token = server.worker_token("behind-proxy");
    let _w = Worker::spawn(
        &proxy.url,
        &token,
        "behind-proxy",
        &root.path().join("w"),
        1,
        &[],
    );
    server.wait_online("behind-proxy");
    let id = server.start_build("p", &[]);
    wait_until(Duration::from_secs(20), "output to flow", || {
        let b = server.build(id);
        (attempts(&b).first()?["steps"][0]["log_size"].as_i64()? > 0).then_some(())
    });
    proxy.stall(true);
    let outage = std::time::Instant::now();
    wait_until(
        Duration::from_millis(1500),
        "the outage to hold up both ways",
        || proxy.holds_both_ways().then_some(()),
    );
    // The outage itself: 1.2 s, 60 % of the heartbeat timeout (the
    // stimulus, not a wait for something to happen).
    std::thread::sleep(Duration::from_millis(1200).saturating_sub(outage.elapsed()));
    proxy.stall(false);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success");
    assert_eq!(attempts(&b).len(), 1, "{b}");
    let want: String = (1..=30).map(|i| format!("{i}\n")).collect();
    assert_eq!(
        String::from_utf8(server.step_log(id, "job", "0")).unwrap(),
        want
    );
}

#[test]
fn a_long_network_outage_moves_the_job_and_then_stops_the_stale_worker() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:\n  job:\n    steps:\n      - run: case \"$HERD_WORKER\" in cut-off) sleep 300 & echo $! > {dir}/pid; wait;; esac; echo \"done on $HERD_WORKER\"\n"
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], FAST);
    let proxy = Proxy::start(&server.url);
    let token = server.worker_token("cut-off");
    let _victim = Worker::spawn(
        &proxy.url,
        &token,
        "cut-off",
        &root.path().join("v"),
        1,
        &[],
    );
    server.wait_online("cut-off");
    let _b = server.worker("direct", 1, &[]);
    pause(&server, "direct", true);
    let id = server.start_build("p", &[]);
    let pid: i32 = wait_until(Duration::from_secs(20), "the step", || {
        std::fs::read_to_string(root.path().join("pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    });
    pause(&server, "direct", false);
    proxy.stall(true);
    let b = server.wait_build(id, Duration::from_secs(20));
    assert_eq!(b["state"], "success");
    let att = attempts(&b);
    assert_eq!(
        (att[0]["worker"].as_str(), att[0]["state"].as_str()),
        (Some("cut-off"), Some("lost"))
    );
    assert_eq!(att[1]["worker"], "direct");
    assert!(alive(pid), "the cut-off worker does not know yet");
    proxy.stall(false);
    // It comes back, is told the job moved, and stops its step.
    wait_until(
        Duration::from_secs(30),
        "the stale step to be stopped",
        || (!alive(pid)).then_some(()),
    );
    let after = server.build(id);
    assert_eq!(attempts(&after).len(), 2);
    assert_eq!(server.step_log(id, "job", "0"), b"done on direct\n");
}

#[test]
fn max_concurrent_caps_a_builder_whatever_the_free_slots() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    // mkdir is atomic: a second job running at the same time would fail.
    let step = format!("mkdir {dir}/lock && sleep 0.3 && rmdir {dir}/lock");
    let pipeline = format!(
        "builders:\n  one-at-a-time:\n    max_concurrent: 1\n    jobs:\n      a:\n        steps: [{{run: '{step}'}}]\n      b:\n        steps: [{{run: '{step}'}}]\n      c:\n        steps: [{{run: '{step}'}}]\n"
    );
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let _w = server.worker("big", 3, &[]);
    let _v = server.worker("bigger", 3, &[]);
    let ids: Vec<i64> = (0..2).map(|_| server.start_build("p", &[])).collect();
    for id in ids {
        let b = server.wait_build(id, Duration::from_secs(30));
        assert_eq!(b["state"], "success", "{b}");
    }
}

#[test]
fn a_cut_off_worker_keeps_running_and_buffers_its_output_on_disk() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("out.bin");
    std::fs::write(&data, pseudo_random_bytes(24_000_000, 5)).unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:\n  job:\n    steps:\n      - run: touch {dir}/started; sleep 0.5; cat {}; touch {dir}/finished\n",
        data.display()
    );
    // Timeouts long enough that nobody gives up during the outage.
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &["--heartbeat-timeout", "20s"]);
    let proxy = Proxy::start(&server.url);
    let token = server.worker_token("island");
    let work = root.path().join("w");
    let _w = Worker::spawn(&proxy.url, &token, "island", &work, 1, &[]);
    server.wait_online("island");
    let id = server.start_build("p", &[]);
    wait_until(Duration::from_secs(20), "the step", || {
        root.path().join("started").exists().then_some(())
    });
    proxy.stall(true);
    // 24 MB is more than the outbox keeps in memory: the step finishes
    // anyway, its output waiting on disk.
    wait_until(
        Duration::from_secs(30),
        "the step to finish while cut off",
        || root.path().join("finished").exists().then_some(()),
    );
    let spilled: u64 = std::fs::read_dir(work.join(".outbox"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(spilled > 8_000_000, "spilled {spilled} bytes");
    proxy.stall(false);
    let b = server.wait_build(id, Duration::from_secs(60));
    assert_eq!(b["state"], "success");
    assert_eq!(attempts(&b).len(), 1);
    assert!(
        server.step_log(id, "job", "0") == std::fs::read(&data).unwrap(),
        "log differs"
    );
}

#[test]
fn a_restarted_worker_says_it_runs_nothing_and_its_job_moves_at_once() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:\n  job:\n    steps:\n      - run: if [ ! -e {dir}/once ]; then touch {dir}/once; sleep 300; fi; echo second time\n"
    );
    // The restarted worker reports that it runs nothing: no waiting for the grace period.
    let server = Server::start_with_pipelines(&[("p", &pipeline)], &[]);
    let token = server.worker_token("phoenix");
    let work = root.path().join("w");
    let mut w = Worker::spawn(&server.url, &token, "phoenix", &work, 1, &[]);
    server.wait_online("phoenix");
    let id = server.start_build("p", &[]);
    wait_until(Duration::from_secs(20), "the step", || {
        root.path().join("once").exists().then_some(())
    });
    w.kill9();
    // Restarted at once, as a service manager would.
    let _w = Worker::spawn(&server.url, &token, "phoenix", &work, 1, &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success");
    let att = attempts(&b);
    assert_eq!(att[0]["state"], "lost");
    assert_eq!(att[0]["reason"], "worker lost: it restarted");
    assert_eq!(att[1]["worker"], "phoenix");
    assert_eq!(server.step_log(id, "job", "0"), b"second time\n");
}
