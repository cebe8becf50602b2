//! Workers fetch sources from the server's mirror (git smart HTTP on the
//! server's port, with their worker token): a private repository that only
//! the server can read, a worker running as another user, over TLS with a
//! pinned key; and who may fetch what.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// `nobody` on Debian: a user that owns none of the test's files.
const NOBODY: u32 = 65534;

fn log_text(server: &Server, id: i64, job: &str, step: &str) -> String {
    String::from_utf8_lossy(&server.step_log(id, job, step)).to_string()
}

/// A repository under a directory only root may read.
fn private_repo(root: &Path, pipeline: &str) -> (std::path::PathBuf, String) {
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711)).unwrap();
    let private = root.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let repo = git_repo(
        &private,
        "r",
        &[
            ("herd.yml", pipeline.as_bytes()),
            ("hello.txt", b"hello from the private repository\n"),
        ],
    );
    let sha = String::from_utf8_lossy(&run_git(&repo, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_string();
    (repo, sha)
}

#[test]
fn a_worker_of_another_user_checks_out_a_private_repository_through_the_server() {
    let root = tempfile::tempdir().unwrap();
    let pipeline = "builders:\n  show:\n    steps:\n      - run: cat hello.txt; git remote get-url origin; id -u\n";
    let (repo, sha) = private_repo(root.path(), pipeline);
    let config = format!(
        "projects:\n  p:\n    repo: {r}\n    poll: off\n  direct:\n    repo: {r}\n    poll: off\n    checkout: direct\n",
        r = repo.display()
    );
    for tls in [false, true] {
        let extra: &[&str] = if tls { &["--tls", "self-signed"] } else { &[] };
        let server = Server::start_with_config(&config, extra);
        let token = server.worker_token("w");
        let mut args = vec![];
        if let Some(pin) = &server.pin {
            args.extend(["--tls-pin", pin.as_str()]);
        }
        let w = Worker::spawn_as(
            NOBODY,
            &server.url,
            &token,
            "w",
            &root.path().join(format!("w-{tls}")),
            &args,
        );
        server.wait_online("w");

        let id = server.start_build("p", &[]);
        let b = server.wait_build(id, Duration::from_secs(60));
        assert_eq!(b["state"], "success", "tls {tls}: {b:#}\n{}", w.log());
        let checkout = log_text(&server, id, "show", "0");
        assert!(
            checkout.contains(&format!("checked out {sha}")),
            "{checkout}"
        );
        let out = log_text(&server, id, "show", "1");
        assert!(out.contains("hello from the private repository"), "{out}");
        assert!(
            out.contains(&format!("{}/git/p/{sha}", server.url)),
            "fetched from the server: {out}"
        );
        assert!(out.trim_end().ends_with(&NOBODY.to_string()), "{out}");
        assert!(
            !server.log().contains(&token),
            "the token stays out of the server log"
        );

        // The same repository checked out directly: this worker cannot read it.
        let id = server.start_build("direct", &[]);
        let b = server.wait_build(id, Duration::from_secs(60));
        assert_eq!(b["state"], "error", "{b:#}");
        // The cause, from git's last words, not only an exit code.
        let step = &b["jobs"][0]["attempts"][0]["steps"][0];
        let message = step["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("checkout failed with exit code"),
            "{step}"
        );
        assert!(message.contains("fatal:"), "git's error: {message}");
        let shown = server.cli(&["build", "show", &id.to_string()]);
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(text.contains("fatal:"), "{text}");
        drop(w);
    }
}

fn curl(url: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{content_type}",
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, kind) = text.split_once(' ').unwrap_or((&text, ""));
    (code.parse().unwrap_or(0), kind.to_string())
}

fn git_with_token(token: &str, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args([
            "-c",
            &format!("http.extraHeader=Authorization: Bearer {token}"),
        ])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git")
}

#[test]
fn only_a_worker_running_a_job_of_the_project_may_fetch_it_and_nobody_may_push() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().display();
    let pipeline = format!(
        "builders:\n  hold:\n    steps:\n      - run: touch {dir}/started; for i in $(seq 600); do [ -e {dir}/stop ] && break; sleep 0.1; done\n"
    );
    let repo = git_repo(root.path(), "r", &[("herd.yml", pipeline.as_bytes())]);
    let sha = String::from_utf8_lossy(&run_git(&repo, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_string();
    let server = Server::start_with_config(
        &format!(
            "projects:\n  p:\n    repo: {}\n    poll: off\n",
            repo.display()
        ),
        &[],
    );
    let busy_token = server.worker_token("busy");
    let _busy = Worker::spawn(
        &server.url,
        &busy_token,
        "busy",
        &root.path().join("busy"),
        1,
        &[],
    );
    server.wait_online("busy");
    let id = server.start_build("p", &[]);
    wait_until(Duration::from_secs(30), "the job to start", || {
        root.path().join("started").exists().then_some(())
    });
    let idle_token = server.worker_token("idle");
    let _idle = Worker::spawn(
        &server.url,
        &idle_token,
        "idle",
        &root.path().join("idle"),
        1,
        &[],
    );
    server.wait_online("idle");
    let read = server.cli(&["token", "create", "--read"]);
    let read_token = String::from_utf8_lossy(&read.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();

    let base = format!("{}/git/p/{sha}", server.url);
    let refs = format!("{base}/info/refs?service=git-upload-pack");
    assert_eq!(curl(&refs, None).0, 401);
    assert_eq!(
        curl(&refs, Some(&idle_token)).0,
        403,
        "a worker with no job of p"
    );
    assert_eq!(curl(&refs, Some(&read_token)).0, 403, "a read token");
    assert_eq!(curl(&refs, Some("herd_worker_garbage")).0, 401);
    let (code, kind) = curl(&refs, Some(&busy_token));
    assert_eq!(
        (code, kind.as_str()),
        (200, "application/x-git-upload-pack-advertisement")
    );
    let push = format!("{base}/info/refs?service=git-receive-pack");
    assert_eq!(curl(&push, Some(&busy_token)).0, 403, "no pushing");
    let by_name = format!(
        "{}/git/p/main/info/refs?service=git-upload-pack",
        server.url
    );
    assert_eq!(curl(&by_name, Some(&busy_token)).0, 404, "a commit id only");
    let other = format!(
        "{}/git/nope/{sha}/info/refs?service=git-upload-pack",
        server.url
    );
    assert_eq!(curl(&other, Some(&busy_token)).0, 404);

    // Real git through the same door: it lists and clones; it cannot push.
    let ls = git_with_token(&busy_token, &["ls-remote", &base]);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(String::from_utf8_lossy(&ls.stdout).contains(&format!("{sha}\trefs/heads/main")));
    let clone = root.path().join("clone");
    let out = git_with_token(
        &busy_token,
        &["clone", "-q", &base, &clone.display().to_string()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    commit(&clone, &[("x", b"x")], "try to push");
    let pushed = git_with_token(
        &busy_token,
        &[
            "-C",
            &clone.display().to_string(),
            "push",
            "origin",
            "HEAD:refs/heads/evil",
        ],
    );
    assert!(!pushed.status.success());
    assert!(
        run_git(&repo, &["branch", "--list", "evil"])
            .stdout
            .is_empty(),
        "nothing was pushed"
    );

    // Once its job is over, the worker may fetch no more.
    std::fs::write(root.path().join("stop"), "").unwrap();
    let b = server.wait_build(id, Duration::from_secs(30));
    assert_eq!(b["state"], "success", "{b:#}");
    assert_eq!(curl(&refs, Some(&busy_token)).0, 403);
    for t in [&busy_token, &idle_token, &read_token] {
        assert!(!server.log().contains(t.as_str()));
    }
}
