//! Limits: slow or stuck clients, oversize requests and too many attempts
//! are cut off, and the server goes on serving everyone else.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr_of(url: &str) -> String {
    url.split_once("://").unwrap().1.to_string()
}

/// Waits until the server closes `conn` (EOF or reset); how long it took.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((start + limit).into(), conn.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[test]
fn slow_and_silent_clients_are_cut_off_while_others_are_served() {
    let server = Server::start(&["--client-timeout", "1s"]);
    let tls = Server::start(&["--client-timeout", "1s", "--tls", "self-signed"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let addr = addr_of(&server.url);
        let mut silent = Vec::new();
        for _ in 0..32 {
            silent.push(TcpStream::connect(&addr).await.unwrap());
        }
        // Slowloris: a request head one byte at a time, never finished.
        let mut dribblers = Vec::new();
        for _ in 0..32 {
            let mut c = TcpStream::connect(&addr).await.unwrap();
            c.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            dribblers.push(c);
        }
        let dribbling = tokio::spawn(async move {
            let mut closed = 0;
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                closed = 0;
                for c in dribblers.iter_mut() {
                    if c.write_all(b"X").await.is_err() {
                        closed += 1;
                    }
                }
            }
            closed
        });
        // Meanwhile everyone else is served.
        let res = http_get(format!("{}/api/v1/health", server.url))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        for c in silent.iter_mut() {
            let took = closed_within(c, Duration::from_secs(5)).await;
            assert!(took.is_some(), "a silent client is cut off");
        }
        assert_eq!(
            dribbling.await.unwrap(),
            32,
            "every slowloris connection was closed"
        );
        // A TLS handshake that never starts is cut off too.
        let mut c = TcpStream::connect(addr_of(&tls.url)).await.unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(5))
            .await
            .is_some());
        let res = tls
            .client()
            .get(format!("{}/api/v1/health", tls.url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    });
}

#[test]
fn oversize_requests_are_refused_and_the_server_goes_on() {
    let server = Server::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = http().build().unwrap();
    rt.block_on(async {
        // A 2 MiB API body (the limit is 1 MiB).
        let big = json!({ "project": "p", "x": "a".repeat(2 * 1024 * 1024) });
        let res = client
            .post(format!("{}/api/v1/builds", server.url))
            .bearer_auth(&server.token)
            .json(&big)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 413);
        // An 11 MiB webhook (the limit is 10 MiB).
        let res = client
            .post(format!("{}/api/v1/hooks/generic/p", server.url))
            .body(vec![b' '; 11 * 1024 * 1024])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 413);
        // A 1 MiB request head.
        let res = client
            .get(format!("{}/api/v1/health", server.url))
            .header("x-filler", "a".repeat(1024 * 1024))
            .send()
            .await;
        assert!(res.as_ref().map_or(true, |r| r.status() == 431), "{res:?}");
    });
    // A herd.yml over 1 MiB is refused, saying so.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("herd.yml");
    let mut text = String::from("builders:\n  a:\n    steps:\n");
    while text.len() <= 1024 * 1024 {
        text.push_str("      - run: echo padding padding padding padding\n");
    }
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(HERD)
        .arg("check")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("herd.yml") && err.contains("1048576"), "{err}");
    assert_eq!(server.get("/api/v1/health").unwrap()["ok"], true);
}

#[test]
fn sign_ins_and_enrollments_are_limited_per_address() {
    let server = Server::start(&[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = http()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    rt.block_on(async {
        let login = |token: String| {
            client
                .post(format!("{}/login", server.url))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={token}&next=%2F"))
                .send()
        };
        for i in 0..10 {
            let res = login(format!("wrong-{i}")).await.unwrap();
            assert_eq!(res.status(), 401, "failure {i}");
        }
        let res = login("wrong-again".into()).await.unwrap();
        assert_eq!(res.status(), 429);
        let text = res.text().await.unwrap();
        assert!(text.contains("too many failed sign-ins"), "{text}");
        // Held back for the minute even with the right token.
        let res = login(server.token.clone()).await.unwrap();
        assert_eq!(res.status(), 429);

        let enroll = || {
            client
                .post(format!("{}/api/v1/enroll", server.url))
                .json(&json!({ "token": "herd_enroll_nope_nope" }))
                .send()
        };
        for i in 0..20 {
            let res = enroll().await.unwrap();
            assert_eq!(res.status(), 401, "attempt {i}");
        }
        let res = enroll().await.unwrap();
        assert_eq!(res.status(), 429);
        assert!(res.headers().contains_key("retry-after"));
        let script = client
            .get(format!("{}/install.sh?token=herd_enroll_a_b", server.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(script.contains("too many enrollments"), "{script}");
    });
    // Reading is not limited.
    assert_eq!(server.get("/api/v1/health").unwrap()["ok"], true);
    assert!(server.log().contains("failed sign-in from 127.0.0.1"));
}

#[test]
fn a_flooding_step_keeps_its_limit_of_log_and_goes_on() {
    let pipeline = "builders:\n  flood:\n    steps:\n      - run: yes flood | head -c 200000; echo finished > done.txt\n      - run: cat done.txt\n";
    let mut config = String::from("max_step_log: 4096\nprojects:\n  p:\n    pipeline: |\n");
    for line in pipeline.lines() {
        config.push_str(&format!("      {line}\n"));
    }
    let server = Server::start_with_config(&config, &[]);
    let _w = server.worker("w", 1, &[]);
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success", "{b:#}");
    let log = server.step_log(id, "flood", "0");
    let text = String::from_utf8_lossy(&log);
    assert!(log.len() < 4096 + 512, "{} bytes kept", log.len());
    assert!(text.starts_with("flood\nflood\n"));
    assert!(
        text.ends_with(
            "[herd] this step's output passed the limit of 4096 bytes: the rest is dropped (the step goes on)\n"
        ),
        "{text}"
    );
    let next = server.step_log(id, "flood", "1");
    assert_eq!(String::from_utf8_lossy(&next).trim(), "finished");
}

#[test]
fn a_worker_that_ignores_the_step_log_limit_is_cut_off() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let config = "max_step_log: 4096\nprojects:\n  p:\n    pipeline: |\n      builders:\n        a:\n          steps: [{run: echo}]\n";
    let server = Server::start_with_config(config, &[]);
    let token = server.worker_token("hostile");
    let id = server.start_build("p", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let told = rt.block_on(async {
        let mut ws = connect(&server.url, Some(&token)).await.unwrap();
        ws.send(hello()).await.unwrap();
        // Wait for the job.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut attempt = None;
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "assign" {
                    assert_eq!(v["log_limit"], 4096, "{v}");
                    attempt = v["attempt"].as_i64();
                    break;
                }
            }
        }
        let attempt = attempt.expect("an assignment");
        // 16 KiB of output for a step allowed 4 KiB (and room for a notice).
        for seq in 1..=16u64 {
            let frame = herd_proto::LogFrame {
                attempt,
                seq,
                step: 0,
                offset: (seq - 1) * 1024,
                data: vec![b'x'; 1024],
            };
            if ws
                .send(Message::Binary(frame.encode().into()))
                .await
                .is_err()
            {
                break;
            }
        }
        drain(&mut ws).await
    });
    assert!(
        told.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.contains("past the limit"))),
        "{told:?}"
    );
    // What was stored stays within the limit and its room.
    let log = server.step_log(id, "a", "0");
    assert!(
        log.len() as u64 <= 4096 + 4096,
        "{} bytes stored",
        log.len()
    );
}
