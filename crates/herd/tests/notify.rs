//! Who hears of a build: email through a small SMTP server started here,
//! Slack-compatible and Matrix chat through a small HTTP receiver, on
//! failure, on fixed and always, with a failed send retried.
#![allow(clippy::unwrap_used)]

mod common;

use common::forge::*;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Mails received: envelope recipients and the data.
type Mailbox = Arc<Mutex<Vec<(Vec<String>, String)>>>;

/// A tiny SMTP server: takes every message (no auth, no TLS) and keeps
/// its envelope recipients and data.
fn smtp_sink() -> (u16, Mailbox) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mails: Mailbox = Arc::default();
    let kept = Arc::clone(&mails);
    std::thread::spawn(move || {
        for stream in listener.incoming().take(200) {
            let Ok(mut out) = stream else { continue };
            let _ = out.set_read_timeout(Some(Duration::from_secs(10)));
            let mut input = BufReader::new(out.try_clone().unwrap());
            let _ = out.write_all(b"220 sink ESMTP\r\n");
            let mut rcpt = Vec::new();
            loop {
                let mut line = String::new();
                if input.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let upper = line.to_ascii_uppercase();
                let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                    b"250-sink\r\n250 8BITMIME\r\n"
                } else if upper.starts_with("RCPT TO:") {
                    rcpt.push(line[8..].trim().trim_matches(['<', '>']).to_string());
                    b"250 ok\r\n"
                } else if upper.starts_with("DATA") {
                    let _ = out.write_all(b"354 go on\r\n");
                    let mut data = String::new();
                    loop {
                        let mut l = String::new();
                        if input.read_line(&mut l).unwrap_or(0) == 0 || l == ".\r\n" {
                            break;
                        }
                        data.push_str(&l);
                    }
                    kept.lock().unwrap().push((std::mem::take(&mut rcpt), data));
                    b"250 queued\r\n"
                } else if upper.starts_with("QUIT") {
                    let _ = out.write_all(b"221 bye\r\n");
                    break;
                } else {
                    b"250 ok\r\n"
                };
                let _ = out.write_all(reply);
            }
        }
    });
    (port, mails)
}

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    auth: String,
    body: serde_json::Value,
}

/// An HTTP receiver that answers 500 to its first `fail_first` requests.
fn receiver(fail_first: usize) -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log: Arc<Mutex<Vec<Request>>> = Arc::default();
    let seen = Arc::clone(&log);
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().take(200).enumerate() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let (mut len, mut auth) = (0, String::new());
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = v.trim().to_string();
                    }
                }
            }
            let mut raw = vec![0; len];
            let _ = reader.read_exact(&mut raw);
            let status = if n < fail_first { 500 } else { 200 };
            seen.lock().unwrap().push(Request {
                method,
                path,
                auth,
                body: serde_json::from_slice(&raw).unwrap_or_default(),
            });
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
        }
    });
    (url, log)
}

const PIPELINE: &str = "builders:
  check:
    steps:
      - run: |
          if [ -f broken ]; then
            printf '<testsuite><testcase classname=\"pkg.test_net\" name=\"test_connect\"><failure message=\"refused\"/></testcase></testsuite>' > report.xml
            exit 1
          fi
          printf '<testsuite><testcase classname=\"pkg.test_net\" name=\"test_connect\"/></testsuite>' > report.xml
        results: {junit: report.xml}
";

#[test]
fn failure_fixed_and_always_reach_email_and_chat_and_a_failed_send_is_retried() {
    let (smtp_port, mails) = smtp_sink();
    let (chat, requests) = receiver(1);
    let forge = Forge::new(PIPELINE);
    let config = format!(
        "smtp: {{host: 127.0.0.1, port: {smtp_port}, tls: none, from: herd@ci.example.org}}\n\
         secrets:\n  matrix_token: syt-matrix-secret-token\n\
         projects:\n  p:\n    repo: {repo}\n    poll: 300ms\n    notify:\n\
         \x20     - email: [dev@example.org, lead@example.org]\n\
         \x20       on: [failure, fixed]\n\
         \x20       branches: [main, master]\n\
         \x20     - slack: {chat}/slack/T000/B000/XXXX\n\
         \x20       on: [always]\n\
         \x20     - matrix: {{homeserver: {chat}, room: '!room:example.org', token: syt-matrix-secret-token}}\n\
         \x20       on: [failure]\n",
        repo = forge.repo(),
    );
    let server = Server::start_with_config(&config, &[]);
    let _w = server.worker("w1", 1, &[]);
    wait_first_poll(&server, "p");

    // A failure: email (both addresses), Slack (retried after a 500), Matrix.
    let sha = forge.push(&[("broken", b"1")], "break the network code");
    let change = settled_change(&server, "p", &sha);
    let failed = change["build_id"].as_i64().unwrap();
    assert_eq!(server.wait_build(failed, LONG)["state"], "failure");
    let mail = wait_until(LONG, "the failure's email", || {
        mails.lock().unwrap().first().cloned()
    });
    assert_eq!(mail.0, ["dev@example.org", "lead@example.org"]);
    let data = mail.1;
    assert!(
        data.contains(&format!("Subject: [herd] p master: build {failed} failed"))
            || data.contains(&format!("Subject: [herd] p main: build {failed} failed")),
        "{data}"
    );
    assert!(data.contains("Failed:  check/main"), "{data}");
    assert!(
        data.contains("First failing test: pkg.test_net.test_connect"),
        "{data}"
    );
    assert!(
        data.contains(&format!("{}/builds/{failed}", server.url)),
        "{data}"
    );
    let chats = wait_until(LONG, "Slack sent again after its 500, and Matrix", || {
        let r = requests.lock().unwrap().clone();
        (r.iter().filter(|q| q.path.starts_with("/slack/")).count() == 2
            && r.iter().any(|q| q.path.contains("/_matrix/")))
        .then_some(r)
    });
    let slack: Vec<&Request> = chats
        .iter()
        .filter(|q| q.path.starts_with("/slack/"))
        .collect();
    assert_eq!(
        slack[0].body, slack[1].body,
        "the retry sends the same message"
    );
    let text = slack[1].body["text"].as_str().unwrap();
    assert!(text.contains(&format!("build {failed} failed")), "{text}");
    let matrix = chats.iter().find(|q| q.path.contains("/_matrix/")).unwrap();
    assert_eq!(matrix.method, "PUT");
    assert!(
        matrix
            .path
            .starts_with("/_matrix/client/v3/rooms/%21room%3Aexample.org/send/m.room.message/"),
        "{}",
        matrix.path
    );
    assert_eq!(matrix.auth, "Bearer syt-matrix-secret-token");
    assert_eq!(matrix.body["msgtype"], "m.text");
    // The server log says what failed, and no secret.
    let log = std::fs::read_to_string(server_log(&server.data)).unwrap();
    assert!(log.contains("sending `notify` failed"), "{log}");
    assert!(!log.contains("syt-matrix-secret-token"));
    assert!(
        !log.contains("/slack/T000/B000/XXXX"),
        "a Slack hook's URL is a secret"
    );

    // Fixed: email and Slack; Matrix speaks of failures only.
    std::fs::remove_file(forge.work.join("broken")).unwrap();
    let fixed_sha = forge.push(&[], "remove the breakage");
    let change = settled_change(&server, "p", &fixed_sha);
    let fixed = change["build_id"].as_i64().unwrap();
    assert_eq!(server.wait_build(fixed, LONG)["state"], "success");
    let mail = wait_until(LONG, "the fixed email", || {
        mails.lock().unwrap().get(1).cloned()
    });
    assert!(
        mail.1.contains(&format!("build {fixed} fixed")),
        "{}",
        mail.1
    );
    wait_until(LONG, "Slack on the fix", || {
        requests
            .lock()
            .unwrap()
            .iter()
            .any(|q| {
                q.body["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&format!("build {fixed} fixed")))
            })
            .then_some(())
    });

    // Another success: Slack (always) only; no email, no Matrix.
    let again = forge.push(&[("more.txt", b"x")], "more");
    let change = settled_change(&server, "p", &again);
    let passed = change["build_id"].as_i64().unwrap();
    assert_eq!(server.wait_build(passed, LONG)["state"], "success");
    wait_until(LONG, "Slack on a plain success", || {
        requests
            .lock()
            .unwrap()
            .iter()
            .any(|q| {
                q.body["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&format!("build {passed} passed")))
            })
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        mails.lock().unwrap().len(),
        2,
        "no email for a plain success"
    );
    let matrix_sends = requests
        .lock()
        .unwrap()
        .iter()
        .filter(|q| q.path.contains("/_matrix/"))
        .count();
    assert_eq!(matrix_sends, 1);
}

#[test]
fn a_workers_owner_hears_once_when_it_is_away_and_once_when_it_is_back() {
    let (smtp_port, mails) = smtp_sink();
    let server = Server::start_with_config(
        &format!(
            "smtp: {{host: 127.0.0.1, port: {smtp_port}, tls: none, from: herd@ci.example.org}}\noffline_notice: 1s\nprojects:\n  p:\n    pipeline: 'builders: {{b: {{steps: [{{run: \"true\"}}]}}}}'\n"
        ),
        &[],
    );
    let out = server.cli(&["token", "create", "--enroll", "--owner", "not-an-address"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("email address"));
    // The token names the owner; without one, whoever installs may.
    let enroll = |extra: &[&str]| {
        let mut args = vec!["token", "create", "--enroll", "--uses", "1"];
        args.extend_from_slice(extra);
        let out = server.cli(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_string()
    };
    let token = enroll(&["--owner", "carol@example.org"]);
    let (status, answer) = server.post(
        "/api/v1/enroll",
        serde_json::json!({"token": token, "name": "carols", "owner": "mallory@example.org"}),
        None,
    );
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer["labels"]["owner"], "carol@example.org",
        "the token's word wins"
    );
    let token = enroll(&[]);
    let (status, answer) = server.post(
        "/api/v1/enroll",
        serde_json::json!({"token": token, "name": "bobs", "owner": "bob@example.org\r\nBcc: x@y"}),
        None,
    );
    assert_eq!(status, 400, "{answer}");
    let (status, answer) = server.post(
        "/api/v1/enroll",
        serde_json::json!({"token": token, "name": "bobs", "owner": "bob@example.org"}),
        None,
    );
    assert_eq!(status, 201, "a refused owner used nothing up: {answer}");
    assert_eq!(answer["labels"]["owner"], "bob@example.org");
    let mut lent = server.worker("lent", 1, &[]);
    let _other = server.worker("unowned", 1, &[]);
    let out = server.cli(&["workers", "label", "lent", "owner=alice@example.org"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    lent.kill9();
    let away = wait_until(LONG, "the away notice", || {
        mails.lock().unwrap().first().cloned()
    });
    assert_eq!(away.0, ["alice@example.org"]);
    assert!(
        away.1.contains("Subject: [herd] worker lent is offline"),
        "{}",
        away.1
    );
    assert!(
        away.1.contains(&format!("{}/workers/lent", server.url)),
        "{}",
        away.1
    );
    let page = server.get_text("/workers").unwrap();
    assert!(
        page.contains("alice@example.org (told it is away)"),
        "{page}"
    );
    // One notice per absence, however long it lasts.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(mails.lock().unwrap().len(), 1);

    let _back = server.worker("lent", 1, &[]);
    let back = wait_until(LONG, "the back notice", || {
        mails.lock().unwrap().get(1).cloned()
    });
    assert!(
        back.1.contains("Subject: [herd] worker lent is back"),
        "{}",
        back.1
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        mails.lock().unwrap().len(),
        2,
        "nobody is told of the unowned worker"
    );
}
