//! What starts a build besides a push: pull requests (polled refs and
//! forge webhooks, approval of untrusted ones, cancellation when updated or
//! closed) and tags. Real git repositories, the real server and workers.
#![allow(clippy::unwrap_used)]

mod common;

use common::forge::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: &str = "pr-secret-value-77";

const PR_PIPELINE: &str = "builders:
  test:
    steps:
      - run: 'echo \"key=[$KEY] pr=$HERD_PULL_REQUEST\"; if [ -f slow ]; then sleep 60; fi'
        env: {KEY: '${{ secrets.key }}'}
";

/// Pushes the work clone's HEAD as pull request `n`'s head ref, as GitHub
/// keeps it in the base repository.
fn push_pull_request(forge: &Forge, n: u32, files: &[(&str, &[u8])], message: &str) -> String {
    let sha = commit(&forge.work, files, message);
    run_git(
        &forge.work,
        &[
            "push",
            "-q",
            "-f",
            "origin",
            &format!("HEAD:refs/pull/{n}/head"),
        ],
    );
    sha
}

fn change_of(server: &Server, sha: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_until(LONG, &format!("the change of {sha}"), || {
        project(server, "p")["changes"]
            .as_array()?
            .iter()
            .find(|c| c["revision"] == sha && pred(c))
            .cloned()
    })
}

/// A GitHub `pull_request` delivery, signed with `secret`.
fn github_pull_request(
    server: &Server,
    secret: &str,
    action: &str,
    n: u32,
    fork: bool,
    delivery: &str,
) {
    let head_repo = if fork { "stranger/p" } else { "o/p" };
    let body = json!({
        "action": action,
        "number": n,
        "pull_request": {
            "number": n,
            "html_url": format!("https://github.com/o/p/pull/{n}"),
            "title": format!("Pull request number {n}"),
            "user": {"login": "octo"},
            "head": {"sha": "0000000000000000000000000000000000000000", "ref": "topic", "repo": {"full_name": head_repo}},
            "base": {"ref": "main", "repo": {"full_name": "o/p"}},
        },
    })
    .to_string();
    let (status, answer) = post_raw(
        &format!("{}/api/v1/hooks/github/p", server.url),
        &[
            ("X-GitHub-Event", "pull_request".into()),
            ("X-GitHub-Delivery", delivery.into()),
            (
                "X-Hub-Signature-256",
                format!("sha256={}", hmac_hex(secret, body.as_bytes())),
            ),
        ],
        body.as_bytes(),
    );
    assert!(status == 200 || status == 202, "{status} {answer}");
}

fn attempt_worker(build: &Value) -> String {
    build["jobs"][0]["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|a| a["worker"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn pull_requests_wait_for_approval_run_untrusted_apart_and_end_when_updated_or_closed() {
    let forge = Forge::new(PR_PIPELINE);
    let hook_secret = "pr-hook-secret";
    let server = Server::start_with_config(
        &format!(
            "secrets:\n  key: {SECRET}\nprojects:\n  p:\n    repo: {}\n    poll: 300ms\n    webhook_secret: {hook_secret}\n    pull_requests:\n      workers: {{untrusted: ok}}\n",
            forge.repo()
        ),
        &[],
    );
    // With more free slots (and both cold), `inside` is where the
    // scheduler would send the first job: only the label keeps untrusted
    // code off it.
    let _trusted = server.worker("inside", 4, &[]);
    let _sandbox = server.worker("sandbox", 1, &[]);
    let out = server.cli(&["workers", "label", "sandbox", "untrusted=ok"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The first poll looks at pull requests too: none is new then.
    wait_first_poll(&server, "p");

    // 1. Only polled: nobody said where it comes from, so it waits.
    let sha1 = push_pull_request(
        &forge,
        1,
        &[("a.txt", b"from a stranger")],
        "stranger's change",
    );
    let waiting = change_of(&server, &sha1, |c| c["waiting"].is_string());
    assert_eq!(waiting["kind"], "pull_request", "{waiting}");
    assert_eq!(waiting["pull_request"], 1);
    assert!(waiting["build_id"].is_null());
    assert!(
        waiting["waiting"]
            .as_str()
            .unwrap()
            .contains("no webhook said"),
        "{waiting}"
    );
    // Still no build a few polls later.
    std::thread::sleep(Duration::from_secs(1));
    let builds = server.get("/api/v1/builds?project=p").unwrap();
    assert_eq!(builds["builds"].as_array().unwrap().len(), 0, "{builds}");
    let show = server.cli(&["project", "show", "p"]);
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("PR #1"), "{shown}");
    assert!(
        shown.contains(&format!("herd change approve {}", waiting["id"])),
        "{shown}"
    );

    // Approved: built, with no secret, on the worker labelled for it only.
    let id = waiting["id"].as_i64().unwrap().to_string();
    let out = server.cli(&["change", "approve", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let build_id: i64 = said
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no build in {said}"));
    let build = server.wait_build(build_id, LONG);
    assert_eq!(build["state"], "success", "{build:#}");
    assert_eq!(build["kind"], "pull_request");
    assert_eq!(build["pull_request"], 1);
    assert_eq!(build["revision"], sha1.as_str());
    assert_eq!(attempt_worker(&build), "sandbox", "{build:#}");
    let job = &build["jobs"][0];
    assert_eq!(job["withheld"][0]["secret"], "key", "{job:#}");
    let log = String::from_utf8(server.step_log(build_id, "test", "1")).unwrap();
    assert!(log.contains("key=[] pr=1"), "{log}");
    assert!(!log.contains(SECRET));
    // Approving again is refused: it no longer waits.
    let again = server.cli(&["change", "approve", &id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("does not wait for approval"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // 2. The webhook says PR 2 is from the repository itself: built at once,
    // with the secret, anywhere; shown as `PR #2 by octo` with its link.
    github_pull_request(&server, hook_secret, "opened", 2, false, "d-2-opened");
    let sha2 = push_pull_request(&forge, 2, &[("slow", b"1")], "a slow change of our own");
    let first = change_of(&server, &sha2, |c| c["build_id"].is_i64());
    let first_build = first["build_id"].as_i64().unwrap();
    wait_until(LONG, "PR 2's first build to run", || {
        (server.build(first_build)["state"] == "running").then_some(())
    });
    let b = server.build(first_build);
    assert_eq!(b["sender"], "octo");
    assert!(
        b["jobs"][0]["withheld"]
            .as_array()
            .is_none_or(|w| w.is_empty()),
        "{b:#}"
    );
    let grid = server.get_text("/").unwrap();
    assert!(
        grid.contains(
            r#"<a class="origin" href="https://github.com/o/p/pull/2">PR #2 by octo</a>"#
        ),
        "the grid names the pull request"
    );

    // 3. A newer push to PR 2 cancels the build of the older head.
    let sha3 = push_pull_request(&forge, 2, &[("b.txt", b"more")], "more of it");
    let second = change_of(&server, &sha3, |c| c["build_id"].is_i64());
    let second_build = second["build_id"].as_i64().unwrap();
    let old = server.wait_build(first_build, LONG);
    assert_eq!(old["state"], "cancelled", "{old:#}");
    assert!(
        old["error"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("superseded by build {second_build}")),
        "{old:#}"
    );
    wait_until(LONG, "PR 2's second build to run", || {
        (server.build(second_build)["state"] == "running").then_some(())
    });
    let log = wait_until(LONG, "the trusted build's output", || {
        let l = String::from_utf8(server.step_log(second_build, "test", "1")).ok()?;
        l.contains("pr=2").then_some(l)
    });
    assert!(log.contains("key=[***] pr=2"), "masked, but given: {log}");

    // 4. Closing PR 2 cancels its running build.
    github_pull_request(&server, hook_secret, "closed", 2, false, "d-2-closed");
    let closed = server.wait_build(second_build, LONG);
    assert_eq!(closed["state"], "cancelled", "{closed:#}");
    assert!(
        closed["error"]
            .as_str()
            .unwrap_or("")
            .contains("pull request #2 was closed"),
        "{closed:#}"
    );
    // Reopened: its head builds again.
    github_pull_request(&server, hook_secret, "reopened", 2, false, "d-2-reopened");
    wait_until(LONG, "a build of the reopened pull request", || {
        server.get("/api/v1/builds?project=p").ok()?["builds"]
            .as_array()?
            .iter()
            .find(|b| b["revision"] == sha3.as_str() && b["id"].as_i64() > Some(second_build))
            .and_then(|b| b["id"].as_i64())
    });

    // 5. A fork's pull request waits even with a webhook, and says so.
    github_pull_request(&server, hook_secret, "opened", 3, true, "d-3-opened");
    std::fs::remove_file(forge.work.join("slow")).unwrap();
    let sha4 = push_pull_request(&forge, 3, &[("c.txt", b"fork")], "from a fork");
    let fork = change_of(&server, &sha4, |c| c["waiting"].is_string());
    assert!(
        fork["waiting"].as_str().unwrap().contains("fork (by octo)"),
        "{fork}"
    );
    // Signed in on the project page: the Approve button builds it.
    let page = server.get_text("/projects/p").unwrap();
    assert!(page.contains("waits for approval"), "{page}");
    let (status, answer) = server.post(
        &format!("/api/v1/changes/{}/approve", fork["id"]),
        json!({}),
        None,
    );
    assert_eq!(status, 401, "approving needs the admin token: {answer}");
    let (status, answer) = server.post(
        &format!("/api/v1/changes/{}/approve", fork["id"]),
        json!({}),
        Some(&server.token),
    );
    assert_eq!(status, 200, "{answer}");
    let fork_build = server.wait_build(answer["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(fork_build["state"], "success", "{fork_build:#}");
    assert_eq!(attempt_worker(&fork_build), "sandbox");
}

const TAG_PIPELINE: &str = "builders:
  test:
    tags: never
    steps:
      - run: echo testing
  release:
    tags: only
    steps:
      - run: 'echo \"release ${{ tag }} as $HERD_TAG\"'
";

#[test]
fn a_new_tag_builds_its_release_builder_with_the_tag() {
    let forge = Forge::new(TAG_PIPELINE);
    run_git(&forge.work, &["tag", "v0.9"]);
    run_git(&forge.work, &["push", "-q", "origin", "v0.9"]);
    let (server, _w) = watching(&forge, "    poll: 300ms\n    tags: ['v*']\n", 2);
    // Tags already there when herd first looked are not new.
    assert!(project(&server, "p")["changes"]
        .as_array()
        .unwrap()
        .is_empty());

    run_git(&forge.work, &["tag", "-a", "-m", "release 1.0", "v1.0"]);
    run_git(&forge.work, &["tag", "nightly-1"]);
    run_git(&forge.work, &["push", "-q", "origin", "v1.0", "nightly-1"]);
    let sha = String::from_utf8_lossy(&run_git(&forge.work, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_string();
    let change = settled_change(&server, "p", &sha);
    assert_eq!(change["kind"], "tag", "{change}");
    assert_eq!(
        change["branch"], "v1.0",
        "the annotated tag, peeled to its commit"
    );
    let build = server.wait_build(change["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(build["state"], "success", "{build:#}");
    assert_eq!(build["kind"], "tag");
    assert_eq!(build["ref"], "v1.0");
    let builders: Vec<&str> = build["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["builder"].as_str())
        .collect();
    assert_eq!(builders, ["release"]);
    let log =
        String::from_utf8(server.step_log(build["id"].as_i64().unwrap(), "release", "1")).unwrap();
    assert!(log.contains("release v1.0 as v1.0"), "{log}");
    // `nightly-1` is not among the project's tags: no change for it.
    let changes = project(&server, "p")["changes"].as_array().unwrap().clone();
    assert_eq!(changes.len(), 1, "{changes:?}");

    // A push to the branch: the test builder, never the release one.
    let pushed = forge.push(&[("x.txt", b"x")], "a branch commit");
    let change = settled_change(&server, "p", &pushed);
    let build = server.wait_build(change["build_id"].as_i64().unwrap(), LONG);
    let builders: Vec<&str> = build["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["builder"].as_str())
        .collect();
    assert_eq!(builders, ["test"], "{build:#}");
    let grid = server.get_text("/").unwrap();
    assert!(grid.contains("tag v1.0"), "the grid names the tag");
    // A build by hand of a tag is of that tag too.
    let id = server.start_build("p", &["--rev", "v1.0", "--builder", "release"]);
    let build = server.wait_build(id, LONG);
    assert_eq!(build["state"], "success", "{build:#}");
    let log = String::from_utf8(server.step_log(id, "release", "1")).unwrap();
    assert!(log.contains("release v1.0 as v1.0"), "{log}");
}

fn scheduled_builds(server: &Server) -> Vec<Value> {
    let mut b: Vec<Value> = server.get("/api/v1/builds?project=p").unwrap()["builds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "schedule")
        .cloned()
        .collect();
    b.sort_by_key(|b| b["id"].as_i64());
    b
}

#[test]
fn a_schedule_builds_the_branch_head_and_only_when_it_changed() {
    let forge = Forge::new("builders:\n  nightly:\n    steps:\n      - run: echo scheduled\n");
    // Every two seconds (a pattern with seconds) instead of a night.
    let (server, _w) = watching(
        &forge,
        "    poll: off\n    schedule:\n      - {cron: '*/2 * * * * *', name: often, only_if_changed: true, timezone: Europe/Paris}\n",
        1,
    );
    let first = wait_until(LONG, "the first scheduled build", || {
        scheduled_builds(&server).first().cloned()
    });
    let build = server.wait_build(first["id"].as_i64().unwrap(), LONG);
    assert_eq!(build["state"], "success", "{build:#}");
    assert!(
        build["reason"]
            .as_str()
            .unwrap()
            .contains("scheduled: often"),
        "{build}"
    );
    let head = String::from_utf8_lossy(&run_git(&forge.work, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_string();
    assert_eq!(build["revision"], head.as_str());
    // Nothing new: the next firings build nothing.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(scheduled_builds(&server).len(), 1);
    // A new commit (no poll, no hook): the next firing builds it.
    let sha = forge.push(&[("n.txt", b"1")], "for tonight");
    let second = wait_until(LONG, "a scheduled build of the new commit", || {
        scheduled_builds(&server)
            .into_iter()
            .find(|b| b["revision"] == sha.as_str())
    });
    assert_eq!(
        server.wait_build(second["id"].as_i64().unwrap(), LONG)["state"],
        "success"
    );
    assert_eq!(scheduled_builds(&server).len(), 2);
    let grid = server.get_text("/").unwrap();
    assert!(grid.contains("scheduled · "), "the grid shows the origin");
}

#[test]
fn servers_sharing_a_database_start_each_firing_once() {
    let forge = Forge::new("builders:\n  b:\n    steps:\n      - run: 'true'\n");
    let config = format!(
        "projects:\n  p:\n    repo: {}\n    poll: off\n    schedule:\n      - cron: '* * * * * *'\n",
        forge.repo()
    );
    let a = Server::start_on_postgres(&config, &[]);
    let b = Server::start_sharing(&a, &config, &[]);
    let builds = wait_until(LONG, "five scheduled builds", || {
        let got = scheduled_builds(&a);
        (got.len() >= 5).then_some(got)
    });
    drop(b);
    // Each firing (one a second) is one build, whichever server took it:
    // the reason names the firing, and no two builds name the same one.
    let reasons: Vec<&str> = builds
        .iter()
        .map(|b| b["reason"].as_str().unwrap())
        .collect();
    let distinct: std::collections::BTreeSet<&&str> = reasons.iter().collect();
    assert!(reasons.iter().all(|r| r.contains(" for 20")), "{reasons:?}");
    assert_eq!(
        distinct.len(),
        reasons.len(),
        "two builds for one firing: {reasons:?}"
    );
}

#[test]
fn a_pull_request_can_be_built_merged_with_its_base_and_a_conflict_says_so() {
    let forge = Forge::new(
        "builders:\n  b:\n    steps:\n      - run: 'cat base.txt pr.txt; git log -1 --format=parents=%P'\n",
    );
    let (server, _w) = watching(
        &forge,
        "    poll: 300ms\n    pull_requests: {merge: true, approval: none}\n",
        1,
    );
    let main = String::from_utf8_lossy(
        &run_git(&forge.work, &["rev-parse", "--abbrev-ref", "HEAD"]).stdout,
    )
    .trim()
    .to_string();
    // The pull request branches off before the base moves on.
    run_git(&forge.work, &["checkout", "-q", "-b", "topic"]);
    let head = commit(
        &forge.work,
        &[("pr.txt", b"from the pull request\n")],
        "the change",
    );
    run_git(&forge.work, &["checkout", "-q", &main]);
    let base = forge.push(&[("base.txt", b"from the base\n")], "meanwhile on the base");
    run_git(&forge.work, &["checkout", "-q", "topic"]);
    run_git(
        &forge.work,
        &["push", "-q", "origin", "HEAD:refs/pull/1/head"],
    );

    let change = settled_change(&server, "p", &head);
    let build = server.wait_build(change["build_id"].as_i64().unwrap(), LONG);
    assert_eq!(build["state"], "success", "{build:#}");
    assert_ne!(
        build["revision"],
        head.as_str(),
        "the merge is built, not the head"
    );
    let log = String::from_utf8(server.step_log(build["id"].as_i64().unwrap(), "b", "1")).unwrap();
    assert!(
        log.contains("from the base") && log.contains("from the pull request"),
        "{log}"
    );
    assert!(log.contains(&format!("parents={base} {head}")), "{log}");

    // A head that conflicts with the base: no build, and why.
    let conflict = forge.push(
        &[("base.txt", b"the pull request's own base.txt\n")],
        "conflicting",
    );
    run_git(
        &forge.work,
        &["push", "-q", "-f", "origin", "HEAD:refs/pull/2/head"],
    );
    let change = settled_change(&server, "p", &conflict);
    assert!(change["build_id"].is_null(), "{change}");
    assert!(
        change["skipped"]
            .as_str()
            .unwrap()
            .contains("does not merge cleanly"),
        "{change}"
    );
}
