//! Splitting at scale: a synthetic suite of `HERD_BENCH_SPLIT_TESTS`
//! (default 100,000) tests over `HERD_BENCH_SPLIT_SHARDS` (default 50)
//! simulated shards that speak the real protocol to the real server. A
//! shard "runs" a batch by sleeping its tests' summed seconds and reports
//! every test passed with its time. Two builds: the first (no timings) and
//! the second (its own timings). Figures: the makespan against the bound
//! max(total / N, longest), the server's CPU per split request and its
//! peak RSS.
//!
//!     target/release/herd-bench split-scale

use crate::{rss_mb, Bench};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// The simulated seconds of test `i`: mostly short, a few long.
fn secs(i: usize) -> f64 {
    let x = ((i * 7919) % 1000) as f64 / 1000.0;
    0.004 + 0.04 * x.powi(3)
}

fn id(i: usize) -> String {
    // Ids as long as real ones (a module path and a test name).
    format!(
        "tests/unit/test_module_{:04}.py::TestCase::test_case_{i:06}",
        i / 50
    )
}

struct Counters {
    requests: AtomicU64,
    /// Microseconds from sending a request to its answer, summed.
    waited_us: AtomicU64,
    stop: AtomicBool,
}

pub(crate) async fn run() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let tests = env("HERD_BENCH_SPLIT_TESTS", 100_000);
    let shards = env("HERD_BENCH_SPLIT_SHARDS", 50);
    let pipeline = format!(
        "builders:\n  big:\n    steps:\n      - name: tests\n        split:\n          list: 'true'\n          run: 'true @$HERD_TESTS_FILE'\n          junit: r.xml\n          workers: {shards}\n"
    );
    let b = Bench::start(&[("scale", pipeline)]);
    let list: Arc<Vec<String>> = Arc::new((0..tests).map(id).collect());
    let digest = Arc::new(herd_core::split::list_digest(&list));
    let by_id: Arc<std::collections::HashMap<String, f64>> =
        Arc::new((0..tests).map(|i| (id(i), secs(i))).collect());
    let counters = Arc::new(Counters {
        requests: AtomicU64::new(0),
        waited_us: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let ws_url = format!(
        "{}/api/v1/worker/connect",
        b.url.replace("http://", "ws://")
    );
    let mut tasks = Vec::new();
    for s in 0..shards {
        let res = b
            .post(
                "/api/v1/tokens",
                json!({"kind": "worker", "worker": format!("shard-{s}")}),
            )
            .await;
        let token = res["token"].as_str().unwrap().to_string();
        tasks.push(tokio::spawn(shard(
            ws_url.clone(),
            token,
            Arc::clone(&list),
            Arc::clone(&digest),
            Arc::clone(&by_id),
            Arc::clone(&counters),
        )));
    }
    let total: f64 = (0..tests).map(secs).sum();
    let longest = (0..tests).map(secs).fold(0.0, f64::max);
    let bound = (total / shards as f64).max(longest);
    println!(
        "split at scale: {tests} simulated tests, {total:.0} s in all, over {shards} simulated shards speaking the protocol; bound {bound:.2} s"
    );
    let pid = b.server.0.id();
    for label in ["first run, no timings", "second run, its own timings"] {
        let before = counters.requests.load(Ordering::SeqCst);
        let waited0 = counters.waited_us.load(Ordering::SeqCst);
        let cpu0 = crate::failover::cpu_ticks(pid);
        let res = b
            .post(
                "/api/v1/builds",
                json!({"project": "scale", "builder": "big"}),
            )
            .await;
        let build_id = res["id"].as_i64().unwrap();
        // Peak RSS, sampled while the build runs.
        let peak = Arc::new(AtomicU64::new(0));
        let sampler = {
            let peak = Arc::clone(&peak);
            tokio::spawn(async move {
                for _ in 0..100_000 {
                    let kb = (rss_mb(pid) * 1024.0) as u64;
                    peak.fetch_max(kb, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let build = b.wait_build(build_id).await;
        sampler.abort();
        assert_eq!(build["state"], "success", "{build}");
        let cpu = (crate::failover::cpu_ticks(pid) - cpu0) as f64 / 100.0;
        let requests = counters.requests.load(Ordering::SeqCst) - before;
        let waited = (counters.waited_us.load(Ordering::SeqCst) - waited0) as f64 / 1e6;
        let started = build["started_at"].as_i64().unwrap_or(0);
        let finished = build["finished_at"].as_i64().unwrap_or(0);
        let makespan = (finished - started).max(0) as f64 / 1000.0;
        println!(
            "  {label}: {makespan:.2} s, {:.3}x the bound; {requests} split requests, server CPU {cpu:.2} s ({:.2} ms per request, {:.2} % of the makespan), request round trips {waited:.2} s in all; server peak RSS {:.0} MB",
            makespan / bound,
            cpu * 1000.0 / requests.max(1) as f64,
            cpu / makespan * 100.0,
            peak.load(Ordering::SeqCst) as f64 / 1024.0
        );
    }
    counters.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.abort();
    }
}

/// One simulated worker with one slot, taking shard after shard.
async fn shard(
    url: String,
    token: String,
    list: Arc<Vec<String>>,
    digest: Arc<String>,
    secs_of: Arc<std::collections::HashMap<String, f64>>,
    counters: Arc<Counters>,
) {
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    let hello = json!({"type": "hello", "protocols": [1], "version": env!("CARGO_PKG_VERSION"), "slots": 1,
                       "facts": {"os": "linux", "arch": "x86_64", "cpus": "1"}});
    tx.send(Message::Text(hello.to_string().into()))
        .await
        .unwrap();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    let mut req_no = 0u64;
    // The attempt running, its next event number, the batch it runs and
    // when that batch ends, when the current request was sent.
    let mut attempt: Option<(i64, u64)> = None;
    let mut running: Option<(Value, tokio::time::Instant)> = None;
    let mut asked = Instant::now();
    let mut wait_until: Option<tokio::time::Instant> = None;
    // Whether the server took this shard's list (any answer but `wait`).
    let mut accepted = false;
    let send = |v: Value| Message::Text(v.to_string().into());
    while !counters.stop.load(Ordering::SeqCst) {
        let next_batch_end = running.as_ref().map(|(_, at)| *at);
        let wake = next_batch_end.or(wait_until);
        tokio::select! {
            _ = heartbeat.tick() => {
                if tx.send(send(json!({"type": "heartbeat"}))).await.is_err() { return; }
            }
            _ = async { match wake { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                let Some((a, _)) = attempt else { continue };
                req_no += 1;
                let mut r = json!({"type": "split", "attempt": a, "step": 0, "req": req_no});
                if let Some((done, _)) = running.take() {
                    r["done"] = done;
                } else if !accepted {
                    // Until the server has the list, each request names it.
                    r["list_digest"] = json!(&*digest);
                }
                wait_until = None;
                asked = Instant::now();
                counters.requests.fetch_add(1, Ordering::SeqCst);
                if tx.send(send(r)).await.is_err() { return; }
            }
            m = rx.next() => {
                let Some(Ok(Message::Text(t))) = m else {
                    if matches!(m, Some(Ok(_))) { continue; }
                    return;
                };
                let Ok(msg) = serde_json::from_str::<Value>(&t) else { continue };
                match msg["type"].as_str() {
                    Some("probe") => {
                        let _ = tx.send(send(json!({"type": "probe_results", "results": []}))).await;
                    }
                    Some("assign") => {
                        let a = msg["attempt"].as_i64().unwrap();
                        attempt = Some((a, 2));
                        accepted = false;
                        let _ = tx.send(send(json!({"type": "event", "attempt": a, "seq": 1,
                            "event": {"kind": "step_started", "step": 0}}))).await;
                        req_no += 1;
                        asked = Instant::now();
                        counters.requests.fetch_add(1, Ordering::SeqCst);
                        // As the worker does: the list's digest first; the
                        // server asks one shard for the list itself.
                        let r = json!({"type": "split", "attempt": a, "step": 0, "req": req_no,
                            "list_secs": 0.1, "list_digest": &*digest});
                        if tx.send(send(r)).await.is_err() { return; }
                    }
                    Some("split") => {
                        counters.waited_us.fetch_add(asked.elapsed().as_micros() as u64, Ordering::SeqCst);
                        let reply = &msg["reply"];
                        let Some((a, seq)) = attempt else { continue };
                        if !matches!(reply["kind"].as_str(), Some("wait") | Some("send_list")) {
                            accepted = true;
                        }
                        match reply["kind"].as_str() {
                            Some("batch") => {
                                let ids: Vec<&str> = reply["tests"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
                                let total: f64 = ids.iter().map(|t| secs_of.get(*t).copied().unwrap_or(0.0)).sum();
                                let runs: Vec<Value> = ids.iter().map(|t| json!({"id": t, "outcome": "passed", "secs": secs_of.get(*t).copied().unwrap_or(0.0)})).collect();
                                let done = json!({"batch": reply["id"], "exit_code": 0, "wall_secs": total + 0.05, "tests": runs});
                                running = Some((done, tokio::time::Instant::now() + Duration::from_secs_f64(total)));
                            }
                            Some("wait") => {
                                let ms = reply["ms"].as_u64().unwrap_or(300).clamp(50, 5000);
                                wait_until = Some(tokio::time::Instant::now() + Duration::from_millis(ms));
                            }
                            Some("send_list") => {
                                req_no += 1;
                                let mut r = json!({"type": "split", "attempt": a, "step": 0, "req": req_no,
                                    "list_secs": 0.1, "list_digest": &*digest, "list": &*list});
                                // Inline when it fits in a frame, else in parts first.
                                if r.to_string().len() > herd_proto::MAX_TEXT_FRAME {
                                    r.as_object_mut().unwrap().remove("list");
                                    let mut parts = 0;
                                    for chunk in list.chunks(4000) {
                                        parts += 1;
                                        let part = json!({"type": "split_list", "attempt": a, "step": 0, "ids": chunk});
                                        if tx.send(send(part)).await.is_err() { return; }
                                    }
                                    r["list_parts"] = json!(parts);
                                }
                                asked = Instant::now();
                                counters.requests.fetch_add(1, Ordering::SeqCst);
                                if tx.send(send(r)).await.is_err() { return; }
                            }
                            Some("done") => {
                                let _ = tx.send(send(json!({"type": "event", "attempt": a, "seq": seq,
                                    "event": {"kind": "step_finished", "step": 0, "status": "success", "exit_code": 0, "duration_ms": 1}}))).await;
                                let _ = tx.send(send(json!({"type": "event", "attempt": a, "seq": seq + 1,
                                    "event": {"kind": "finished", "result": "success"}}))).await;
                                attempt = None;
                            }
                            _ => panic!("split request failed: {msg}"),
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}
