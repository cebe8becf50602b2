//! Issue 17's attacks on the wire: a worker that sends what it was not
//! given (steps that do not exist, output past the attempt's cap, events
//! after `finished`), clients that hold connections (slow downloads,
//! request heads without a body), and a browser led off site or into a
//! frame.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Connects as a worker by hand and waits for an assignment: (socket,
/// attempt id).
async fn assigned(server: &Server, token: &str) -> (WsStream, i64) {
    let mut ws = connect(&server.url, Some(token)).await.unwrap();
    ws.send(hello()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["type"] == "assign" {
                return (ws, v["attempt"].as_i64().unwrap());
            }
        }
    }
    panic!("no assignment came");
}

fn event(attempt: i64, seq: u64, event: Value) -> Message {
    Message::Text(
        json!({"type": "event", "attempt": attempt, "seq": seq, "event": event})
            .to_string()
            .into(),
    )
}

fn log_frame(attempt: i64, seq: u64, step: u32, offset: u64, len: usize) -> Message {
    let frame = herd_proto::LogFrame {
        attempt,
        seq,
        step,
        offset,
        data: vec![b'x'; len],
    };
    Message::Binary(frame.encode().into())
}

/// The message the server closed with.
fn told(got: &[Value]) -> String {
    got.iter()
        .filter(|v| v["type"] == "error")
        .filter_map(|v| v["message"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_worker_cannot_log_to_steps_that_do_not_exist_nor_past_the_attempt_cap() {
    let config = "max_step_log: 4096\nlimits:\n  max_attempt_log: 6000\nprojects:\n  p:\n    pipeline: |\n      builders:\n        a:\n          steps: [{run: echo 1}, {run: echo 2}, {run: echo 3}]\n";
    let server = Server::start_with_config(config, &[]);
    let token = server.worker_token("hostile");
    let id = server.start_build("p", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (first, said) = rt.block_on(async {
        // The attack of the issue: frames for steps 0..39 of a 3-step job.
        let (mut ws, attempt) = assigned(&server, &token).await;
        for step in 0..40u32 {
            if ws
                .send(log_frame(attempt, u64::from(step) + 1, step, 0, 1000))
                .await
                .is_err()
            {
                break;
            }
        }
        (attempt, told(&drain(&mut ws).await))
    });
    assert!(
        said.contains("step 3 does not exist (it has 3 steps)"),
        "{said}"
    );
    // Nothing past the real steps was stored, and the real ones kept what
    // came before the bad frame.
    let stored = |attempt: i64, step: u32| {
        server
            .get(&format!(
                "/api/v1/attempts/{attempt}/steps/{step}/log?limit=1"
            ))
            .map(|_| ())
    };
    assert!(stored(first, 3).is_err());
    assert!(stored(first, 39).is_err());
    let b = server.build(id);
    let sizes: Vec<i64> = server.job(&b, "a", "main")["attempts"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["log_size"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!(sizes, [1000, 1000, 1000], "{b:#}");

    // Each step under its own cap (8000 of 4096 bytes and 4096 of room for
    // herd's notice), the attempt (24000 bytes) over its cap: cut off.
    let (second, said) = rt.block_on(async {
        let (mut ws, attempt) = assigned(&server, &token).await;
        let mut seq = 0;
        for step in 0..3u32 {
            for part in 0..2u64 {
                seq += 1;
                if ws
                    .send(log_frame(attempt, seq, step, part * 4000, 4000))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        (attempt, told(&drain(&mut ws).await))
    });
    assert_ne!(first, second);
    assert!(said.contains("for all its steps"), "{said}");
    let b = server.build(id);
    let attempt = server.job(&b, "a", "main")["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == second)
        .cloned()
        .unwrap();
    let total: i64 = attempt["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["log_size"].as_i64().unwrap_or(0))
        .sum();
    // The cap, and room for herd's notice at the end of each step.
    let room = herd_proto::STEP_LOG_NOTICE_ROOM as i64;
    assert!(total <= 6000 + 3 * room, "{total} bytes kept: {attempt:#}");
    assert!(total < 24_000, "{total} bytes kept: {attempt:#}");
    assert_eq!(server.get("/api/v1/health").unwrap()["ok"], true);
}

#[test]
fn after_finished_an_attempt_takes_nothing_more() {
    let server = Server::start_with_pipelines(
        &[("p", "builders:\n  a:\n    steps: [{run: exit 1}]\n")],
        &[],
    );
    let token = server.worker_token("hostile");
    let id = server.start_build("p", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let said = rt.block_on(async {
        let (mut ws, attempt) = assigned(&server, &token).await;
        // One batch: a failure, then a step's end and a success after it.
        let frames = [
            event(attempt, 1, json!({"kind": "step_started", "step": 0})),
            event(
                attempt,
                2,
                json!({"kind": "finished", "result": "failure", "error": null}),
            ),
            event(
                attempt,
                3,
                json!({"kind": "step_finished", "step": 0, "status": "success", "exit_code": 0, "duration_ms": 1}),
            ),
            event(attempt, 4, json!({"kind": "finished", "result": "success"})),
        ];
        let mut all = futures_util::stream::iter(frames.into_iter().map(Ok));
        let _ = ws.send_all(&mut all).await;
        told(&drain(&mut ws).await)
    });
    assert!(said.contains("after the attempt finished"), "{said}");
    let b = server.wait_build(id, Duration::from_secs(20));
    assert_eq!(b["state"], "failure", "{b:#}");
    let attempt = &server.job(&b, "a", "main")["attempts"][0];
    assert_eq!(attempt["state"], "failure", "{attempt:#}");
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A TCP connection from `source` (any 127.0.0.0/8 address) to the server.
fn try_connect_from(server: &Server, source: [u8; 4]) -> std::io::Result<TcpStream> {
    let target: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&target.into(), Duration::from_secs(5))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    Ok(stream)
}

fn connect_from(server: &Server, source: [u8; 4]) -> TcpStream {
    try_connect_from(server, source).unwrap()
}

/// Sends a GET and reads the status line and a little more.
fn start_get(mut s: &TcpStream, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn slow_downloads_stream_and_are_limited_per_address() {
    let server = Server::start(&[]);
    let file = format!("herd-{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    let size = std::fs::metadata(HERD).unwrap().len();
    let path = format!("/download/{file}");
    let before = rss(server.pid());
    // Eight readers from four addresses that take the head and stall.
    let mut held = Vec::new();
    for i in 0..8u8 {
        let s = connect_from(&server, [127, 0, 0, 2 + i / 2]);
        let head = start_get(&s, &path);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        held.push(s);
    }
    // Time for a server that reads whole files to have read them.
    std::thread::sleep(Duration::from_secs(2));
    let grown = rss(server.pid()).saturating_sub(before);
    assert!(
        grown < size / 2,
        "8 stalled downloads of {size} bytes grew the server by {grown} bytes"
    );
    assert!(grown < 64 << 20, "grew by {grown} bytes");
    // A third from one address waits its turn; another address does not.
    let third = connect_from(&server, [127, 0, 0, 2]);
    let head = start_get(&third, &path);
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let sum = server.get_text(&format!("{path}.sha256")).unwrap();
    assert!(sum.ends_with(&format!("  {file}\n")), "{sum}");
    // A download that ends frees its slot.
    drop(held.remove(0));
    drop(held.remove(0));
    wait_until(Duration::from_secs(10), "a free download slot", || {
        let s = connect_from(&server, [127, 0, 0, 2]);
        start_get(&s, &path)
            .starts_with("HTTP/1.1 200")
            .then_some(())
    });
}

#[test]
fn slow_clients_hold_a_connection_each_for_a_bounded_time() {
    // A machine with few files: the server fits its limits under them.
    let server = Server::start_with_open_files("", &["--client-timeout", "2s"], 512);
    let started = Instant::now();
    // The attack: request heads that promise a body and never send it,
    // from one address, more than the server may hold.
    let mut held = Vec::new();
    for i in 0..500 {
        // Refused connections are fine: the server is full for this address.
        let Ok(mut s) = try_connect_from(&server, [127, 0, 0, 3]) else {
            continue;
        };
        let path = if i % 2 == 0 {
            "/api/v1/enroll"
        } else {
            "/api/v1/builds"
        };
        let _ = write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        );
        held.push(s);
    }
    // Others are served meanwhile.
    for _ in 0..5 {
        assert_eq!(server.get("/api/v1/health").unwrap()["ok"], true);
    }
    // Every held connection ends: within the client timeout (and the
    // server's own answer) for those it kept, at once for those over its
    // per-address share.
    for mut s in held {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut sink = Vec::new();
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a held connection stayed open: {e}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.get("/api/v1/health").unwrap()["ok"], true);
    let log = server.log();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(log.contains("HTTP connections at once"), "{log}");
}

#[test]
fn pages_keep_to_themselves_and_sign_in_stays_on_site() {
    let server = Server::start(&[]);
    let client = || {
        http()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for path in [
            "/",
            "/workers",
            "/api/v1/health",
            "/no/such/page",
            "/static/app.js",
        ] {
            let res = client()
                .get(format!("{}{path}", server.url))
                .send()
                .await
                .unwrap();
            let h = res.headers();
            assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
            assert_eq!(h["x-frame-options"], "DENY", "{path}");
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(csp.contains("default-src 'self'"), "{path}: {csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
            assert!(h.contains_key("referrer-policy"), "{path}");
            assert!(
                !h.contains_key("strict-transport-security"),
                "plain HTTP: {path}"
            );
        }
        // Sign-in's `next` with a tab, a newline, a backslash, two slashes
        // or another scheme goes to the front page.
        for next in [
            "/%09/evil.example",
            "/%0a/evil.example",
            "/%5Cevil.example",
            "//evil.example",
            "https://evil.example",
            "/%E3%80%80/evil.example",
        ] {
            let res = client()
                .post(format!("{}/login", server.url))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={}&next={next}", server.token))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 303, "{next}");
            assert_eq!(res.headers()["location"], "/", "{next}");
            let cookie = res.headers()["set-cookie"].to_str().unwrap();
            assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
        }
        let res = client()
            .post(format!("{}/login", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={}&next=/workers%3Fx%3D1", server.token))
            .send()
            .await
            .unwrap();
        assert_eq!(res.headers()["location"], "/workers?x=1");
    });

    // Under TLS: the cookie is Secure and HSTS is sent.
    let tls = Server::start(&["--tls", "self-signed"]);
    let pin = tls.pin.clone().unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-k",
            "--pinnedpubkey",
            &pin,
            "-o",
            "/dev/null",
            "-D",
            "-",
        ])
        .args(["--data", &format!("token={}&next=/", tls.token)])
        .arg(format!("{}/login", tls.url))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 303"), "{head}");
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap_or_default();
    assert!(cookie.contains("; secure"), "{cookie}");
    assert!(cookie.contains("httponly"), "{cookie}");
    assert!(
        head.contains("strict-transport-security: max-age="),
        "{head}"
    );
}
