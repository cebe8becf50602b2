//! Every route, tried with no token, a token of each kind, a revoked and an
//! expired token: each kind makes only its own calls.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// What a route needs (mirrors `herd_server::auth::Scope`, seen from outside).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Needs {
    Open,
    AnyToken,
    Read,
    Try,
    Admin,
    /// The worker named in the path (`w`), or a reader.
    OwnWorkerOrRead,
    /// The worker named in the path, or the admin; the path names another.
    OtherWorkerOrAdmin,
    /// A worker token (the handler then checks the attempt is its own).
    Worker,
    /// A metrics or admin token.
    Metrics,
}

/// Web actions take a signed-in session; a token is only ever refused there.
#[derive(Clone, Copy, PartialEq)]
enum Check {
    All,
    RefusalsOnly,
}

const ROUTES: &[(&str, &str, Needs, Check)] = &[
    ("GET", "/api/v1/health", Needs::Open, Check::All),
    ("GET", "/api/v1/openapi.json", Needs::Read, Check::All),
    ("GET", "/api/v1/projects", Needs::Read, Check::All),
    ("GET", "/api/v1/projects/p", Needs::Read, Check::All),
    (
        "GET",
        "/api/v1/projects/p/builders",
        Needs::Read,
        Check::All,
    ),
    ("GET", "/api/v1/builds", Needs::Read, Check::All),
    ("POST", "/api/v1/builds", Needs::Admin, Check::All),
    (
        "POST",
        "/api/v1/changes/999/approve",
        Needs::Admin,
        Check::All,
    ),
    ("GET", "/api/v1/builds/1", Needs::Read, Check::All),
    (
        "POST",
        "/api/v1/builds/999/cancel",
        Needs::Admin,
        Check::All,
    ),
    ("GET", "/api/v1/builds/1/tests", Needs::Read, Check::All),
    ("GET", "/api/v1/builds/1/artifacts", Needs::Read, Check::All),
    (
        "GET",
        "/api/v1/builds/1/artifacts/1",
        Needs::Read,
        Check::All,
    ),
    (
        "GET",
        "/api/v1/attempts/1/uploads?path=a",
        Needs::Worker,
        Check::All,
    ),
    (
        "GET",
        "/api/v1/attempts/1/artifacts/1",
        Needs::Worker,
        Check::All,
    ),
    ("GET", "/api/v1/splits/1/junit.xml", Needs::Read, Check::All),
    (
        "GET",
        "/api/v1/attempts/1/steps/0/log",
        Needs::Read,
        Check::All,
    ),
    ("GET", "/api/v1/workers", Needs::Read, Check::All),
    (
        "GET",
        "/api/v1/workers/w",
        Needs::OwnWorkerOrRead,
        Check::All,
    ),
    ("POST", "/api/v1/workers/reprobe", Needs::Admin, Check::All),
    (
        "POST",
        "/api/v1/workers/nobody/pause",
        Needs::Admin,
        Check::All,
    ),
    (
        "POST",
        "/api/v1/workers/nobody/resume",
        Needs::Admin,
        Check::All,
    ),
    (
        "POST",
        "/api/v1/workers/nobody/forget",
        Needs::OtherWorkerOrAdmin,
        Check::All,
    ),
    ("GET", "/api/v1/tokens", Needs::Admin, Check::All),
    ("POST", "/api/v1/tokens", Needs::Admin, Check::All),
    (
        "POST",
        "/api/v1/tokens/nosuch/revoke",
        Needs::Admin,
        Check::All,
    ),
    ("POST", "/api/v1/enroll", Needs::Open, Check::All),
    ("GET", "/api/v1/whoami", Needs::AnyToken, Check::All),
    ("POST", "/api/v1/try", Needs::Try, Check::All),
    ("POST", "/api/v1/gc", Needs::Admin, Check::All),
    ("POST", "/api/v1/reload", Needs::Admin, Check::All),
    ("GET", "/metrics", Needs::Metrics, Check::All),
    ("GET", "/install.sh", Needs::Open, Check::All),
    ("GET", "/download/nosuch", Needs::Open, Check::All),
    ("GET", "/", Needs::Read, Check::All),
    ("GET", "/builds/1", Needs::Read, Check::All),
    ("GET", "/builders/p/a", Needs::Read, Check::All),
    ("GET", "/attempts/1/steps/0", Needs::Read, Check::All),
    ("GET", "/projects", Needs::Read, Check::All),
    ("GET", "/projects/p", Needs::Read, Check::All),
    ("GET", "/workers", Needs::Read, Check::All),
    ("GET", "/workers/add", Needs::Read, Check::All),
    ("GET", "/workers/matrix", Needs::Read, Check::All),
    ("GET", "/badge/p.svg", Needs::Read, Check::All),
    ("GET", "/badge/p/a.svg", Needs::Read, Check::All),
    ("GET", "/workers/w", Needs::Read, Check::All),
    ("GET", "/events", Needs::Read, Check::All),
    ("POST", "/workers/add", Needs::Admin, Check::RefusalsOnly),
    (
        "POST",
        "/changes/999/approve",
        Needs::Admin,
        Check::RefusalsOnly,
    ),
    (
        "POST",
        "/builds/1/cancel",
        Needs::Admin,
        Check::RefusalsOnly,
    ),
    (
        "POST",
        "/builds/1/rebuild",
        Needs::Admin,
        Check::RefusalsOnly,
    ),
    (
        "POST",
        "/workers/w/pause",
        Needs::Admin,
        Check::RefusalsOnly,
    ),
    (
        "POST",
        "/workers/w/resume",
        Needs::Admin,
        Check::RefusalsOnly,
    ),
    ("GET", "/login", Needs::Open, Check::All),
    ("GET", "/static/app.css", Needs::Open, Check::All),
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Admin,
    Read,
    Try,
    Worker,
    Enroll,
    Metrics,
}

fn allowed(kind: Kind, needs: Needs) -> bool {
    use Kind as K;
    match needs {
        Needs::Open | Needs::AnyToken => true,
        Needs::Read => matches!(kind, K::Admin | K::Read | K::Try),
        Needs::Try => matches!(kind, K::Admin | K::Try),
        Needs::Admin => kind == K::Admin,
        Needs::OwnWorkerOrRead => !matches!(kind, K::Enroll | K::Metrics),
        Needs::OtherWorkerOrAdmin => kind == K::Admin,
        Needs::Worker => kind == K::Worker,
        Needs::Metrics => matches!(kind, K::Admin | K::Metrics),
    }
}

/// The status of one call (redirects are not followed: a page that sends
/// to /login refused).
fn call(
    client: &reqwest::Client,
    rt: &tokio::runtime::Runtime,
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    rt.block_on(async {
        let url = format!("{base}{path}");
        let mut req = match method {
            "GET" => client.get(url),
            _ => client.post(url).json(&json!({})),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let location = res
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or("")
            .to_string();
        (res.status().as_u16(), location)
    })
}

fn refused_unsigned((status, location): &(u16, String)) -> bool {
    *status == 401 || (*status == 303 && location.starts_with("/login"))
}

fn new_token(server: &Server, args: &[&str]) -> String {
    let out = server.cli(args);
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
}

#[test]
fn every_route_takes_only_its_own_kind_of_token() {
    let pipeline = "builders:\n  a:\n    steps: [{run: echo}]\n";
    let mut config = String::from("private: true\nprojects:\n  p:\n    pipeline: |\n");
    for line in pipeline.lines() {
        config.push_str(&format!("      {line}\n"));
    }
    let server = Server::start_with_config(&config, &[]);
    let tokens = [
        (Kind::Admin, server.token.clone()),
        (
            Kind::Read,
            new_token(&server, &["token", "create", "--read"]),
        ),
        (
            Kind::Try,
            new_token(&server, &["token", "create", "--try", "--user", "t"]),
        ),
        (Kind::Worker, server.worker_token("w")),
        (
            Kind::Enroll,
            new_token(&server, &["token", "create", "--enroll"]),
        ),
        (
            Kind::Metrics,
            new_token(&server, &["token", "create", "--metrics"]),
        ),
    ];
    // A revoked read token, and one that expired.
    let revoked = new_token(&server, &["token", "create", "--read"]);
    let revoked_id = revoked.split('_').nth(2).unwrap().to_string();
    let out = server.cli(&["token", "revoke", &revoked_id]);
    assert!(out.status.success());
    let expired = new_token(&server, &["token", "create", "--read", "--expires", "1s"]);
    wait_until(Duration::from_secs(10), "the token to expire", || {
        let out = server.cli(&["workers", "--token", &expired]);
        (out.status.code() == Some(4)).then_some(())
    });

    let client = http()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut wrong = Vec::new();
    for &(method, path, needs, check) in ROUTES {
        let got = call(&client, &rt, &server.url, method, path, None);
        let ok = match needs {
            Needs::Open => !refused_unsigned(&got) && got.0 != 403,
            _ => refused_unsigned(&got),
        };
        if !ok {
            wrong.push(format!("{method} {path} without a token: {got:?}"));
        }
        for (kind, token) in &tokens {
            let got = call(&client, &rt, &server.url, method, path, Some(token));
            let ok = if allowed(*kind, needs) {
                check == Check::RefusalsOnly || (got.0 != 401 && got.0 != 403 && got.0 != 303)
            } else {
                got.0 == 403
            };
            if !ok {
                wrong.push(format!("{method} {path} with a {kind:?} token: {got:?}"));
            }
        }
        for (what, token) in [("revoked", &revoked), ("expired", &expired)] {
            let got = call(&client, &rt, &server.url, method, path, Some(token));
            if got.0 != 401 {
                wrong.push(format!("{method} {path} with a {what} token: {got:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Refusals say what the call needs.
    let (_, read) = &tokens[1];
    let (status, v) = server.post("/api/v1/builds", json!({"project": "p"}), Some(read));
    assert_eq!(status, 403);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("needs the admin token"),
        "{v}"
    );
    // Nothing the refused calls asked for happened.
    let builds: serde_json::Value = rt.block_on(async {
        client
            .get(format!("{}/api/v1/builds", server.url))
            .bearer_auth(&server.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(builds["builds"].as_array().unwrap().len(), 0, "{builds}");
}

#[test]
fn on_an_open_server_a_presented_token_must_still_be_valid_and_of_its_kind() {
    let server = Server::start(&[]);
    let worker = server.worker_token("w");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = http().build().unwrap();
    let base = server.url.as_str();
    assert_eq!(
        call(&client, &rt, base, "GET", "/api/v1/builds", None).0,
        200
    );
    // A worker token reads nothing but its own worker.
    assert_eq!(
        call(&client, &rt, base, "GET", "/api/v1/builds", Some(&worker)).0,
        403
    );
    assert_eq!(
        call(
            &client,
            &rt,
            base,
            "GET",
            "/api/v1/workers/w",
            Some(&worker)
        )
        .0,
        404,
        "allowed (the worker is not registered yet)"
    );
    assert_eq!(
        call(
            &client,
            &rt,
            base,
            "GET",
            "/api/v1/workers/x",
            Some(&worker)
        )
        .0,
        403
    );
    let id = worker.split('_').nth(2).unwrap().to_string();
    assert!(server.cli(&["token", "revoke", &id]).status.success());
    assert_eq!(
        call(&client, &rt, base, "GET", "/api/v1/builds", Some(&worker)).0,
        401
    );
    assert_eq!(
        call(
            &client,
            &rt,
            base,
            "GET",
            "/api/v1/health",
            Some("herd_read_x_y")
        )
        .0,
        401
    );
}

#[test]
fn the_worker_endpoint_takes_only_worker_tokens_and_a_worker_reports_only_for_its_own_attempts() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let pipeline = "builders:\n  slow:\n    steps:\n      - run: sleep 2; echo done-by-a\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let read = new_token(&server, &["token", "create", "--read"]);
    let try_ = new_token(&server, &["token", "create", "--try"]);
    let enroll = new_token(&server, &["token", "create", "--enroll"]);
    let gone = server.worker_token("gone");
    let gone_id = gone.split('_').nth(2).unwrap().to_string();
    assert!(server.cli(&["token", "revoke", &gone_id]).status.success());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (what, token, status) in [
            ("no token", None, "401"),
            ("the admin token", Some(server.token.as_str()), "403"),
            ("a read token", Some(read.as_str()), "403"),
            ("a try token", Some(try_.as_str()), "403"),
            ("an enrollment token", Some(enroll.as_str()), "403"),
            ("a revoked worker token", Some(gone.as_str()), "401"),
            ("garbage", Some("herd_worker_zz_zz"), "401"),
        ] {
            let err = connect(&server.url, token).await.err();
            assert!(
                err.as_deref().is_some_and(|e| e.contains(status)),
                "{what}: {err:?}"
            );
        }
    });

    // Worker a runs the job; worker b claims to have finished it.
    let _a = server.worker("a", 1, &[]);
    let id = server.start_build("p", &[]);
    let attempt = wait_until(Duration::from_secs(20), "the job running on a", || {
        let b = server.get(&format!("/api/v1/builds/{id}")).ok()?;
        let a = &server.job(&b, "slow", "main")["attempts"][0];
        (a["worker"] == "a").then(|| a["id"].as_i64()).flatten()
    });
    let b_token = server.worker_token("b");
    let replies = rt.block_on(async {
        let mut ws = connect(&server.url, Some(&b_token)).await.unwrap();
        ws.send(hello()).await.unwrap();
        let welcome = ws.next().await.unwrap().unwrap();
        assert!(welcome.to_text().unwrap().contains("welcome"), "{welcome:?}");
        let forged = json!({"type": "event", "attempt": attempt, "seq": 1, "event":
            {"kind": "step_finished", "step": 0, "status": "failure", "exit_code": 1, "duration_ms": 1}});
        ws.send(Message::Text(forged.to_string().into()))
            .await
            .unwrap();
        let mut replies = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout_at(deadline, ws.next()).await {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            let abandoned = v["type"] == "abandon" && v["attempt"] == attempt;
            replies.push(v);
            if abandoned {
                break;
            }
        }
        replies
    });
    let refusal = replies
        .iter()
        .find(|v| v["type"] == "abandon")
        .unwrap_or_else(|| panic!("no refusal in {replies:?}"));
    assert!(refusal["reason"].as_str().unwrap().contains("not yours"));
    assert!(
        server.log().contains(&format!(
            "refused a report of worker b for attempt {attempt}, which is not its own"
        )),
        "the refusal is logged"
    );
    // a's job went on untouched and is a's success.
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success", "{b:#}");
    let log = String::from_utf8(server.step_log(id, "slow", "0")).unwrap();
    assert_eq!(log.trim(), "done-by-a");
}

#[test]
fn a_worker_is_disconnected_when_its_token_expires() {
    let server = Server::start(&[]);
    let token = new_token(
        &server,
        &["token", "create", "--worker", "brief", "--expires", "3s"],
    );
    let workdir = server.dir.path().join("work-brief");
    let _w = Worker::spawn(&server.url, &token, "brief", &workdir, 1, &[]);
    server.wait_online("brief");
    wait_until(Duration::from_secs(15), "the worker offline", || {
        let w = server.get("/api/v1/workers/brief").ok()?;
        (w["online"] == false).then_some(())
    });
    assert!(
        server
            .log()
            .contains("worker brief disconnected: its token expired"),
        "the server says why"
    );
}
