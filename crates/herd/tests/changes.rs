//! Changes in, results out: real git repositories on disk (a bare "forge"
//! repository and a clone to push from), the real server polling them,
//! webhooks, `herd try`, and statuses reported to a small local HTTP server
//! standing in for the forges' APIs.
#![allow(clippy::unwrap_used)]

mod common;

use common::forge::*;
use common::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn builders_of(build: &Value) -> Vec<String> {
    let mut b: Vec<String> = build["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["builder"].as_str().map(str::to_string))
        .collect();
    b.sort();
    b.dedup();
    b
}

const FILTERED: &str = "builders:
  all:
    steps:
      - run: echo built
  docs:
    paths: ['docs/**']
    steps:
      - run: echo docs
  release:
    branches: ['release/*']
    steps:
      - run: echo release
";

#[test]
fn pushed_commits_build_by_themselves_with_filters_skip_ci_and_collapse() {
    let forge = Forge::new(FILTERED);
    let (server, _w) = watching(
        &forge,
        "    poll: 300ms\n    branches: [main, 'release/*']\n",
        2,
    );
    // What was there before herd watched is not a change.
    assert_eq!(project(&server, "p")["changes"], json!([]));

    // A commit to main touching code: `all` builds; `docs` (paths) and
    // `release` (branches) hold back.
    let sha = forge.push(&[("src/a.txt", b"a")], "change code");
    let change = settled_change(&server, "p", &sha);
    assert_eq!(change["branch"], "main");
    assert_eq!(change["files"], json!(["src/a.txt"]));
    let build = server.wait_build(change["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(build["state"], "success", "{build}");
    assert_eq!(build["kind"], "change");
    assert_eq!(build["branch"], "main");
    assert_eq!(build["revision"], sha);
    assert_eq!(builders_of(&build), vec!["all"]);

    // [skip ci] in the message: recorded, not built.
    let sha = forge.push(&[("src/b.txt", b"b")], "tidy\n\nnothing to see [skip ci]");
    let change = settled_change(&server, "p", &sha);
    assert!(change["build_id"].is_null());
    assert!(
        change["skipped"].as_str().unwrap().contains("[skip ci]"),
        "{change}"
    );
    // The project's page shows both, escaped.
    let page = server.get_text("/projects/p").unwrap();
    assert!(
        page.contains("not built: [skip ci] in the commit message"),
        "{page}"
    );
    assert!(page.contains("<a href=\"/builds/1\">#1</a>"), "{page}");
    let sha = forge.push(&[("src/c.txt", b"c")], "<b>bold</b> [ci skip]");
    settled_change(&server, "p", &sha);
    let page = server.get_text("/projects/p").unwrap();
    assert!(
        page.contains("&#60;b&#62;bold") && !page.contains("<b>bold"),
        "{page}"
    );

    // Docs touched: `docs` joins.
    let sha = forge.push(&[("docs/guide.md", b"# guide")], "document");
    let change = settled_change(&server, "p", &sha);
    let build = server.wait_build(change["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(builders_of(&build), vec!["all", "docs"]);

    // Three commits in one push: one build, of the newest, seeing every
    // file the push touched.
    commit(&forge.work, &[("docs/one.md", b"1")], "one");
    commit(&forge.work, &[("src/two.txt", b"2")], "two");
    let newest = forge.push(&[("src/three.txt", b"3")], "three");
    let change = settled_change(&server, "p", &newest);
    let build = server.wait_build(change["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(
        builders_of(&build),
        vec!["all", "docs"],
        "docs/one.md is in the push"
    );
    let changes = project(&server, "p")["changes"].clone();
    assert!(
        !changes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["message"] == "one" || c["message"] == "two"),
        "collapsed commits are not changes of their own: {changes}"
    );

    // A new branch matching `release/*`: its head builds, with `release`.
    run_git(&forge.work, &["checkout", "-q", "-b", "release/1.0"]);
    let sha = forge.push(&[("VERSION", b"1.0")], "release 1.0");
    let change = settled_change(&server, "p", &sha);
    assert_eq!(change["branch"], "release/1.0");
    let build = server.wait_build(change["build_id"].as_i64().unwrap(), LONG);
    assert!(
        builders_of(&build).contains(&"release".to_string()),
        "{build}"
    );

    // A branch outside `branches:` is not watched at all.
    run_git(&forge.work, &["checkout", "-q", "-b", "wip"]);
    let wip = forge.push(&[("wip.txt", b"x")], "wip");
    // Give the poller a few rounds, then check nothing came of it.
    let rounds = project(&server, "p")["polling"]["last_poll_at"]
        .as_i64()
        .unwrap();
    wait_until(LONG, "two more polls", || {
        (project(&server, "p")["polling"]["last_poll_at"].as_i64()? > rounds + 600).then_some(())
    });
    let changes = project(&server, "p")["changes"].clone();
    assert!(
        !changes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["revision"] == wip),
        "{changes}"
    );
}

#[test]
fn a_broken_herd_yml_fails_only_its_own_commit() {
    let forge = Forge::new("builders:\n  ok:\n    steps:\n      - run: echo fine\n");
    let (server, _w) = watching(&forge, "    poll: 300ms\n    collapse: false\n", 1);
    let broken = forge.push(
        &[(
            "herd.yml",
            b"builders:\n  ok:\n    steps:\n      - rnu: echo typo\n",
        )],
        "break the pipeline",
    );
    let fixed = forge.push(
        &[(
            "herd.yml",
            b"builders:\n  ok:\n    steps:\n      - run: echo fixed\n",
        )],
        "fix the pipeline",
    );
    let bad = settled_change(&server, "p", &broken);
    let bad = server.wait_build(bad["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(bad["state"], "error");
    let error = bad["error"].as_str().unwrap();
    assert!(
        error.contains("herd.yml") && error.contains("4:"),
        "names line and column: {error}"
    );
    assert!(error.contains("rnu"), "{error}");
    let good = settled_change(&server, "p", &fixed);
    let good = server.wait_build(good["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(good["state"], "success", "{good}");
}

#[test]
fn webhooks_fetch_at_once_and_refuse_bad_signatures_and_replays() {
    let forge = Forge::new("builders:\n  b:\n    steps:\n      - run: echo hooked\n");
    let secret = "hook-secret-1";
    let (server, _w) = watching(
        &forge,
        &format!("    poll: off\n    webhook_secret: {secret}\n"),
        1,
    );
    let hook = |kind: &str| format!("{}/api/v1/hooks/{kind}/p", server.url);
    let body = br#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}"#;

    let sha = forge.push(&[("a.txt", b"a")], "first hooked commit");
    let wakes = |server: &Server| {
        project(server, "p")["polling"]["wakes"]
            .as_u64()
            .unwrap_or(0)
    };
    let woken_before = wakes(&server);
    // Bad signature, missing signature, wrong GitLab token: 401, nothing happens.
    let bad_sig = format!("sha256={}", hmac_hex("wrong", body));
    let (status, _) = post_raw(
        &hook("github"),
        &[
            ("X-GitHub-Event", "push".into()),
            ("X-Hub-Signature-256", bad_sig),
        ],
        body,
    );
    assert_eq!(status, 401);
    let (status, _) = post_raw(&hook("github"), &[("X-GitHub-Event", "push".into())], body);
    assert_eq!(status, 401);
    let (status, _) = post_raw(
        &hook("gitlab"),
        &[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", "nope".into()),
        ],
        body,
    );
    assert_eq!(status, 401);
    // A hook wakes the poller before it answers: a refused one did not.
    assert_eq!(wakes(&server), woken_before, "a refused hook wakes nothing");
    assert_eq!(
        project(&server, "p")["changes"],
        json!([]),
        "a refused hook fetched nothing"
    );

    // A good GitHub signature: fetched and built at once (polling is off).
    let github = |delivery: &str, body: &[u8]| {
        post_raw(
            &hook("github"),
            &[
                ("X-GitHub-Event", "push".into()),
                ("X-GitHub-Delivery", delivery.into()),
                (
                    "X-Hub-Signature-256",
                    format!("sha256={}", hmac_hex(secret, body)),
                ),
            ],
            body,
        )
    };
    let (status, answer) = github("d-1", body);
    assert_eq!(status, 202, "{answer}");
    let change = settled_change(&server, "p", &sha);
    let build = server.wait_build(change["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(build["state"], "success");

    // The same delivery again is ignored.
    let (status, answer) = github("d-1", body);
    assert_eq!(status, 200);
    assert!(
        answer["ignored"].as_str().unwrap().contains("before"),
        "{answer}"
    );

    // A signed body that is not JSON is refused, and GitHub's ping is answered.
    let (status, _) = github("d-2", b"not json");
    assert_eq!(status, 400);
    let (status, answer) = post_raw(
        &hook("github"),
        &[
            ("X-GitHub-Event", "ping".into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(secret, b"{}")),
            ),
        ],
        b"{}",
    );
    assert_eq!((status, answer["ok"].as_str()), (200, Some("pong")));

    // GitLab's secret token, Gitea's and the generic signature each fetch.
    let sha = forge.push(&[("b.txt", b"b")], "second");
    let (status, _) = post_raw(
        &hook("gitlab"),
        &[
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", secret.into()),
        ],
        body,
    );
    assert_eq!(status, 202);
    settled_change(&server, "p", &sha);
    let sha = forge.push(&[("c.txt", b"c")], "third");
    let (status, _) = post_raw(
        &hook("gitea"),
        &[
            ("X-Gitea-Event", "push".into()),
            ("X-Gitea-Delivery", "g-1".into()),
            ("X-Gitea-Signature", hmac_hex(secret, body)),
        ],
        body,
    );
    assert_eq!(status, 202);
    settled_change(&server, "p", &sha);
    let sha = forge.push(&[("d.txt", b"d")], "fourth");
    let (status, _) = post_raw(
        &hook("generic"),
        &[(
            "X-Herd-Signature-256",
            format!("sha256={}", hmac_hex(secret, b"{}")),
        )],
        b"{}",
    );
    assert_eq!(status, 202);
    settled_change(&server, "p", &sha);

    // Unknown kinds and projects without a secret are not found.
    let (status, _) = post_raw(
        &format!("{}/api/v1/hooks/bitbucket/p", server.url),
        &[],
        body,
    );
    assert_eq!(status, 404);
    let (status, _) = post_raw(
        &format!("{}/api/v1/hooks/github/nope", server.url),
        &[],
        body,
    );
    assert_eq!(status, 404);
}

#[test]
fn herd_try_builds_a_patch_the_repository_does_not_have() {
    let forge = Forge::new(
        "builders:\n  check:\n    steps:\n      - run: cat feature.txt && grep -q tried feature.txt\n",
    );
    let server = Server::start_with_config(
        &format!(
            "projects:\n  p:\n    repo: {}\n    poll: off\n",
            forge.repo()
        ),
        &[],
    );
    let _w = server.worker("w1", 1, &[]);
    let out = server.cli(&["token", "create", "--try", "--user", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let try_token = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // A local commit and an untracked file: neither is on the server.
    commit(
        &forge.work,
        &[("local.txt", b"committed locally")],
        "local commit",
    );
    std::fs::write(forge.work.join("feature.txt"), "tried here\n").unwrap();
    // The patch may change herd.yml too: the try build uses the patched one.
    let mut yml = std::fs::read_to_string(forge.work.join("herd.yml")).unwrap();
    yml.push_str("  extra:\n    steps:\n      - run: echo from the patched herd.yml\n");
    std::fs::write(forge.work.join("herd.yml"), yml).unwrap();
    let try_cmd = |token: &str| {
        std::process::Command::new(HERD)
            .args(["try", "--wait"])
            .env("HERD_SERVER", &server.url)
            .env("HERD_TOKEN", token)
            .env("HERD_DATA", "/nonexistent")
            .current_dir(&forge.work)
            .output()
            .expect("herd try")
    };
    let out = try_cmd(&try_token);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "herd try: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: i64 = stdout.lines().next().unwrap().trim().parse().unwrap();
    let build = server.build(id);
    assert_eq!(build["state"], "success");
    assert_eq!(build["kind"], "try");
    assert_eq!(builders_of(&build), vec!["check", "extra"]);
    assert!(
        build["sender"].as_str().unwrap().contains("alice"),
        "{build}"
    );
    let checkout = String::from_utf8_lossy(&server.step_log(id, "check", "0")).to_string();
    assert!(checkout.contains("applied the try patch"), "{checkout}");
    let log = String::from_utf8_lossy(&server.step_log(id, "check", "1")).to_string();
    assert!(log.contains("tried here"), "{log}");
    // The user's index was left alone: feature.txt is still untracked.
    let status = run_git(&forge.work, &["status", "--porcelain"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("?? feature.txt"));

    // Without a token, with a worker token, and with a patch that does not apply.
    let worker_token = server.worker_token("w2");
    assert!(!try_cmd(&worker_token).status.success());
    let base = String::from_utf8_lossy(&run_git(&forge.work, &["rev-parse", "origin/main"]).stdout)
        .trim()
        .to_string();
    let bad_patch = "diff --git a/nope.txt b/nope.txt\n--- a/nope.txt\n+++ b/nope.txt\n@@ -1 +1 @@\n-old\n+new\n";
    let body = json!({"project": "p", "base": base, "patch": bad_patch});
    let (status, _) = server.post("/api/v1/try", body.clone(), None);
    assert_eq!(status, 401);
    let (status, answer) = server.post("/api/v1/try", body, Some(&try_token));
    assert_eq!(status, 409, "the patch conflicts with the base");
    assert!(
        answer["error"].as_str().unwrap().contains("does not apply"),
        "{answer}"
    );
}

/// One request as the stand-in forge received it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    raw: Vec<u8>,
    status: u16,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A small HTTP server standing in for the forges' status APIs: records
/// every request; the first `fail_first` GitHub requests get a 500.
fn stand_in_forge(fail_first: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let log: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut github_seen = 0;
        for stream in listener.incoming().take(500) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut headers = Vec::new();
            let mut len = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some((k, v)) = h.trim_end().split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    headers.push((k.to_string(), v.trim().to_string()));
                }
            }
            let mut raw = vec![0; len];
            let _ = reader.read_exact(&mut raw);
            let status = if path.starts_with("/repos/") {
                github_seen += 1;
                if github_seen <= fail_first {
                    500
                } else {
                    201
                }
            } else {
                201
            };
            seen.lock().unwrap().push(Received {
                body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                path,
                headers,
                raw,
                status,
            });
            let reason = if status == 500 {
                "Internal Server Error"
            } else {
                "Created"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            );
        }
    });
    (url, log)
}

/// The last accepted status per context at one path prefix.
fn final_states(log: &[Received], prefix: &str, context_key: &str) -> Vec<(String, String)> {
    let mut last = std::collections::BTreeMap::new();
    for r in log
        .iter()
        .filter(|r| r.path.starts_with(prefix) && r.status == 201)
    {
        last.insert(
            r.body[context_key].as_str().unwrap_or("").to_string(),
            r.body["state"].as_str().unwrap_or("").to_string(),
        );
    }
    last.into_iter().collect()
}

#[test]
fn statuses_reach_the_forges_and_failed_reports_are_retried() {
    let forge = Forge::new(
        "builders:\n  good:\n    steps:\n      - run: 'true'\n  bad:\n    steps:\n      - run: 'false'\n",
    );
    let (api, log) = stand_in_forge(2);
    let config = format!(
        "url: https://ci.example.org/\nprojects:
  p:
    repo: {repo}
    poll: 300ms
    report:
      - github: {{api: {api}, repo: o/r, token: gh-token}}
      - gitea: {{url: {api}, repo: o/r, token: gitea-token}}
      - gitlab: {{url: {api}, project: group/r, token: gl-token}}
      - webhook: {{url: {api}/hook, secret: hook-key}}
",
        repo = forge.repo()
    );
    let server = Server::start_with_config(&config, &[]);
    let _w = server.worker("w1", 2, &[]);
    wait_first_poll(&server, "p");
    let sha = forge.push(&[("x.txt", b"x")], "report me");
    let change = settled_change(&server, "p", &sha);
    let id = change["build_id"].as_i64().unwrap();
    let build = server.wait_build(id, LONG);
    // Reporting failed twice; the build is what its steps made it.
    assert_eq!(build["state"], "failure");

    let want = vec![
        ("herd/bad".to_string(), "failure".to_string()),
        ("herd/good".to_string(), "success".to_string()),
    ];
    let github_prefix = format!("/repos/o/r/statuses/{sha}");
    let gitea_prefix = format!("/api/v1/repos/o/r/statuses/{sha}");
    let gitlab_prefix = format!("/api/v4/projects/group%2Fr/statuses/{sha}");
    let log = wait_until(LONG, "final statuses everywhere", || {
        let log = log.lock().unwrap().clone();
        let done = final_states(&log, &github_prefix, "context") == want
            && final_states(&log, &gitea_prefix, "context") == want
            && final_states(&log, &gitlab_prefix, "name")
                == vec![
                    ("herd/bad".to_string(), "failed".to_string()),
                    ("herd/good".to_string(), "success".to_string()),
                ]
            && log.iter().any(|r| r.path == "/hook");
        done.then_some(log)
    });

    let github: Vec<&Received> = log
        .iter()
        .filter(|r| r.path.starts_with("/repos/"))
        .collect();
    assert!(
        github.len() >= 4,
        "two failures, then both builders: {github:?}"
    );
    assert_eq!(github[0].status, 500);
    assert_eq!(github[1].status, 500);
    for r in &github {
        assert_eq!(r.path, github_prefix);
        assert_eq!(r.header("authorization"), Some("Bearer gh-token"));
        assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
        assert!(r
            .header("user-agent")
            .is_some_and(|u| u.starts_with("herd/")));
        assert_eq!(
            r.body["target_url"],
            format!("https://ci.example.org/builds/{id}")
        );
        assert!(r.body["description"].as_str().unwrap().len() <= 140);
        assert!(
            ["pending", "success", "failure", "error"].contains(&r.body["state"].as_str().unwrap())
        );
    }
    for r in log.iter().filter(|r| r.path.starts_with("/api/v1/")) {
        assert_eq!(r.header("authorization"), Some("token gitea-token"));
    }
    for r in log.iter().filter(|r| r.path.starts_with("/api/v4/")) {
        assert_eq!(r.header("private-token"), Some("gl-token"));
        assert_eq!(r.body["ref"], "main");
    }
    let hooks: Vec<&Received> = log.iter().filter(|r| r.path == "/hook").collect();
    assert_eq!(hooks.len(), 1, "one webhook at the end of the build");
    let hook = hooks[0];
    assert_eq!(hook.body["event"], "build_finished");
    assert_eq!(hook.body["build"]["state"], "failure");
    assert_eq!(hook.body["builders"]["good"], "success");
    assert_eq!(
        hook.header("x-herd-signature-256"),
        Some(format!("sha256={}", hmac_hex("hook-key", &hook.raw)).as_str())
    );
    // No token ever reaches a log line the server wrote (stderr is not
    // captured here; the reported errors are stored): the project page
    // shows reporter names only.
    let shown = project(&server, "p").to_string();
    assert!(
        !shown.contains("gh-token") && !shown.contains("hook-key"),
        "{shown}"
    );
}

#[test]
fn a_failing_fetch_is_retried_and_shown_while_other_projects_go_on() {
    let forge = Forge::new("builders:\n  b:\n    steps:\n      - run: echo ok\n");
    let later = forge.bare.with_file_name("later.git");
    let server = Server::start_with_config(
        &format!(
            "projects:\n  broken:\n    repo: {}\n    poll: 300ms\n  fine:\n    repo: {}\n    poll: 300ms\n",
            later.display(),
            forge.repo()
        ),
        &[],
    );
    let _w = server.worker("w1", 1, &[]);
    let failing = wait_until(LONG, "two failed fetches in a row", || {
        let p = project(&server, "broken");
        (p["polling"]["failures"].as_u64()? >= 2).then_some(p)
    });
    assert!(
        failing["polling"]["last_error"]
            .as_str()
            .unwrap()
            .contains("git"),
        "{failing}"
    );
    assert!(failing["polling"]["next_poll_at"].is_i64());
    let out = server.cli(&["project", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("broken") && listed.contains("FAILING"),
        "{listed}"
    );
    let page = server.get_text("/projects/broken").unwrap();
    assert!(page.contains("failed fetches in a row"), "{page}");

    // The other project is polled and built meanwhile.
    wait_first_poll(&server, "fine");
    let sha = forge.push(&[("a.txt", b"a")], "meanwhile");
    let change = settled_change(&server, "fine", &sha);
    assert_eq!(
        server.wait_build(change["build_id"].as_i64().unwrap(), LONG)["state"],
        "success"
    );

    // Once the repository is there, the retries find it.
    run_git(
        forge.bare.parent().unwrap(),
        &[
            "clone",
            "-q",
            "--bare",
            &forge.repo(),
            &later.display().to_string(),
        ],
    );
    wait_until(LONG, "the broken project to recover", || {
        let p = project(&server, "broken");
        (p["polling"]["last_error"].is_null() && p["polling"]["failures"] == 0).then_some(())
    });
    let out = server.cli(&["project", "show", "broken"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("polling     every"));
}

#[test]
fn a_restarted_server_neither_rebuilds_nor_misses_a_commit() {
    let forge = Forge::new("builders:\n  b:\n    steps:\n      - run: echo ok\n");
    let (mut server, _w) = watching(&forge, "    poll: 300ms\n", 1);
    let a = forge.push(&[("a.txt", b"a")], "before the crash");
    settled_change(&server, "p", &a);
    // Pushed just as the server dies: the old one or the new one records it.
    let b = forge.push(&[("b.txt", b"b")], "around the crash");
    server.kill_and_restart();
    let change = settled_change(&server, "p", &b);
    assert_eq!(
        server.wait_build(change["build_id"].as_i64().unwrap(), LONG)["state"],
        "success"
    );
    let c = forge.push(&[("c.txt", b"c")], "after the crash");
    settled_change(&server, "p", &c);
    let changes = project(&server, "p")["changes"].clone();
    for sha in [&a, &b, &c] {
        let n = changes
            .as_array()
            .unwrap()
            .iter()
            .filter(|ch| &ch["revision"] == sha)
            .count();
        assert_eq!(n, 1, "{sha} recorded once: {changes}");
    }
    let builds = server.get("/api/v1/builds?project=p").unwrap();
    assert_eq!(builds["builds"].as_array().unwrap().len(), 3, "{builds}");
}

#[test]
fn a_newer_change_of_a_concurrency_group_cancels_the_older_build() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let yml = format!(
        "concurrency:\n  group: ci-${{{{ branch }}}}\nbuilders:\n  slow:\n    steps:\n      - run: touch {d}/started-$HERD_BUILD_ID; for i in $(seq 600); do [ -e {d}/stop ] && break; sleep 0.1; done\n"
    );
    let forge = Forge::new(&yml);
    let (server, _w) = watching(&forge, "    poll: 300ms\n", 1);
    let first_sha = forge.push(&[("a.txt", b"1")], "first");
    let first = settled_change(&server, "p", &first_sha)["build_id"]
        .as_i64()
        .unwrap();
    wait_until(LONG, "the first build's step", || {
        dir.path()
            .join(format!("started-{first}"))
            .exists()
            .then_some(())
    });
    let second_sha = forge.push(&[("a.txt", b"2")], "second");
    let second = settled_change(&server, "p", &second_sha)["build_id"]
        .as_i64()
        .unwrap();
    let old = server.wait_build(first, LONG);
    assert_eq!(old["state"], "cancelled", "{old:#}");
    assert_eq!(old["error"], format!("superseded by build {second}"));
    std::fs::write(dir.path().join("stop"), "").unwrap();
    let new = server.wait_build(second, LONG);
    assert_eq!(new["state"], "success", "{new:#}");
    // A build by hand is asked for on purpose: it supersedes nothing.
    let by_hand = server.start_build("p", &[]);
    assert_eq!(server.wait_build(by_hand, LONG)["state"], "success");
    assert_eq!(server.build(second)["state"], "success");
}
