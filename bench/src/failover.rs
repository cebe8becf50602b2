//! Failover figures: how long until a lost worker's job runs elsewhere, and
//! what thousands of idle workers cost the server.

use crate::{now_ns, rss_mb, Bench};
use futures_util::{SinkExt, StreamExt};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const ROUNDS: usize = 5;

async fn wait_file(path: &std::path::Path, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        })
        .unwrap_or(false)
}

/// One round: the victim runs the step; `stop` makes it disappear; the
/// figure is the time until the step starts on the other worker.
async fn round(
    b: &Bench,
    stamps: &std::path::Path,
    victim_index: usize,
    hang: bool,
) -> (f64, bool) {
    let _ = b.post("/api/v1/workers/other/pause", json!({})).await;
    let id = b.start_build("fo").await;
    let pidfile = stamps.join(format!("pid-{id}"));
    let pid: i32 = wait_file(&pidfile, Duration::from_secs(30))
        .await
        .trim()
        .parse()
        .unwrap();
    let _ = b.post("/api/v1/workers/other/resume", json!({})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let worker_pid = b.workers[victim_index].0.id() as i32;
    let t0 = now_ns();
    kill(
        Pid::from_raw(worker_pid),
        if hang {
            Signal::SIGSTOP
        } else {
            Signal::SIGKILL
        },
    )
    .unwrap();
    let started: u128 = wait_file(
        &stamps.join(format!("moved-{id}")),
        Duration::from_secs(120),
    )
    .await
    .trim()
    .parse()
    .unwrap();
    let seconds = started.saturating_sub(t0) as f64 / 1e9;
    b.wait_build(id).await;
    // Give the reaper its grace period, then look for leftovers.
    let deadline = Instant::now() + Duration::from_secs(7);
    while alive(pid) && Instant::now() < deadline && !hang {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = alive(pid);
    if hang {
        kill(Pid::from_raw(worker_pid), Signal::SIGCONT).unwrap();
    }
    (seconds, left)
}

pub async fn kill_and_hang() {
    let stamps = tempfile::tempdir().unwrap();
    let dir = stamps.path().display();
    let pipeline = format!(
        "builders:\n  fo:\n    steps:\n      - run: |\n          if [ \"$HERD_WORKER\" = other ]; then date +%s%N > {dir}/moved-$HERD_BUILD_ID; exit 0; fi\n          sleep 300 & echo $! > {dir}/pid-$HERD_BUILD_ID; wait\n"
    );
    let mut b = Bench::start(&[("fo", pipeline)]);
    b.add_worker("other", 1).await;
    let mut kills = Vec::new();
    let mut leftovers = 0;
    for r in 0..ROUNDS {
        // A new name each round: one worker losing many jobs is quarantined.
        b.add_worker(&format!("victim{r}"), 1).await;
        let idx = b.workers.len() - 1;
        let (s, left) = round(&b, stamps.path(), idx, false).await;
        kills.push(s);
        leftovers += usize::from(left);
    }
    kills.sort_by(|a, b| a.total_cmp(b));
    println!("failover, kill -9 of a busy worker until its job's step starts on another (defaults: 2 s grace), {ROUNDS} rounds:");
    println!(
        "  median {:.2} s, max {:.2} s; processes of the killed worker's step left running: {leftovers}",
        kills[kills.len() / 2],
        kills[kills.len() - 1]
    );
    b.add_worker("hanger", 1).await;
    let idx = b.workers.len() - 1;
    let (s, _) = round(&b, stamps.path(), idx, true).await;
    println!("failover, SIGSTOP of a busy worker (silent hang, heartbeat timeout 15 s) until its job's step starts on another:");
    println!("  {s:.2} s");
}

/// Holds `n` simulated idle workers (real protocol: hello, heartbeats) and
/// reports the server's memory and CPU.
pub async fn idle_workers(n: usize) {
    let mut b = Bench::start(&[]);
    // Tokens, created concurrently.
    let mut tokens = Vec::with_capacity(n);
    let b_ref = &b;
    for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
        let futs = chunk.iter().map(|i| async move {
            let v = b_ref
                .post(
                    "/api/v1/tokens",
                    json!({"kind": "worker", "worker": format!("sim-{i}")}),
                )
                .await;
            v["token"].as_str().unwrap().to_string()
        });
        tokens.extend(futures_util::future::join_all(futs).await);
    }
    let ws_url = format!(
        "{}/api/v1/worker/connect",
        b.url.replace("http://", "ws://")
    );
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    let online = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Why connections failed, by reason: a figure with workers missing
    // says why.
    let failures = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        usize,
    >::new()));
    // Upgrades in progress at once, under the server's per-address limit
    // of HTTP connections (a quarter of its connection limit): all these
    // workers share 127.0.0.1, where real ones would have their own
    // addresses or retry.
    let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(1000));
    // HERD_BENCH_PROTOCOLS=1 simulates workers of protocol 1 (a heartbeat
    // every busy interval, idle or not).
    let protocols: Vec<u32> = std::env::var("HERD_BENCH_PROTOCOLS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    for token in tokens {
        let url = ws_url.clone();
        let online = std::sync::Arc::clone(&online);
        let failures = std::sync::Arc::clone(&failures);
        let connecting = std::sync::Arc::clone(&connecting);
        let protocols = protocols.clone();
        tasks.push(tokio::spawn(async move {
            let mut req = url.into_client_request().unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            let permit = connecting.acquire_owned().await.unwrap();
            let upgraded = tokio_tungstenite::connect_async(req).await;
            drop(permit);
            let mut ws = match upgraded {
                Ok((ws, _)) => ws,
                Err(e) => {
                    *failures.lock().unwrap().entry(e.to_string()).or_default() += 1;
                    return;
                }
            };
            let hello = json!({"type": "hello", "protocols": protocols, "version": env!("CARGO_PKG_VERSION"), "slots": 1,
                               "facts": {"os": "linux", "arch": "x86_64", "cpus": "1"}});
            if ws
                .send(Message::Text(hello.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            // As a real worker running nothing: a heartbeat every idle
            // interval of the welcome (the busy one from a protocol-1 server).
            let interval = loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(welcome) = serde_json::from_str::<Value>(&t) else {
                            return;
                        };
                        if welcome["type"] != "welcome" {
                            continue;
                        }
                        online.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let ms = welcome["idle_heartbeat_interval_ms"]
                            .as_u64()
                            .or(welcome["heartbeat_interval_ms"].as_u64())
                            .unwrap_or(5000);
                        break Duration::from_millis(ms);
                    }
                    Some(Ok(_)) => {}
                    _ => return,
                }
            };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            // Bounded: the benchmark ends these tasks by aborting them.
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(_)) => {}
                        _ => return,
                    },
                    _ = tick.tick() => {
                        if ws.send(Message::Text(r#"{"type":"heartbeat"}"#.into())).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }));
        if tasks.len() % 500 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while online.load(std::sync::atomic::Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connected = online.load(std::sync::atomic::Ordering::SeqCst);
    let connect_time = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = b.server.0.id();
    let cpu0 = cpu_ticks(pid);
    let window = Duration::from_secs(
        std::env::var("HERD_BENCH_WINDOW")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(20),
    );
    tokio::time::sleep(window).await;
    let cpu1 = cpu_ticks(pid);
    let ticks_per_s = 100.0; // USER_HZ on Linux
    let cpu = (cpu1 - cpu0) as f64 / ticks_per_s / window.as_secs_f64() * 100.0;
    println!(
        "{n} simulated idle workers (hello, then a heartbeat every idle interval of the welcome):"
    );
    println!(
        "  {connected} online after {:.1} s; server RSS {:.0} MB; server CPU {:.1} % of one core over {}s",
        connect_time.as_secs_f64(),
        rss_mb(pid),
        cpu,
        window.as_secs()
    );
    for (why, count) in failures.lock().unwrap().iter() {
        println!("  {count} could not connect: {why}");
    }
    for t in tasks {
        t.abort();
    }
    b.workers.clear();
}

pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; here 11 and 12 after the name.
    let utime: u64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
    utime + stime
}
