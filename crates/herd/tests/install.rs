//! One command makes a machine a worker: the real `curl … | sh` against a
//! server on 127.0.0.1, as root on this (disposable) machine, with a
//! service user of its own per test.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the installer tests run as root (they create users); run them on a disposable machine"
    );
}

/// A place for the executable and config that the service user can reach.
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn enroll_token(server: &Server, extra: &[&str]) -> String {
    let mut args = vec!["token", "create", "--enroll"];
    args.extend_from_slice(extra);
    let out = server.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let token = text.lines().next().unwrap().trim().to_string();
    let hint = String::from_utf8_lossy(&out.stderr);
    assert!(
        hint.contains(&format!("/install.sh?token={token}' | sudo sh")),
        "the one-liner is shown: {hint}"
    );
    token
}

/// `curl -fsSL URL/install.sh?token=T | sh -s -- ARGS`, as a user would.
fn curl_sh(server: &Server, token: &str, args: &[&str], path: Option<&str>) -> Output {
    let script = format!(
        "curl -fsSL '{}/install.sh?token={token}' | sh -s -- {}",
        server.url,
        args.join(" ")
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    cmd.output().unwrap()
}

/// The pid a pid file holds.
fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn user_exists(name: &str) -> bool {
    nix::unistd::User::from_name(name).unwrap().is_some()
}

fn uid_of_pid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

struct Install {
    user: String,
    dir: tempfile::TempDir,
}

impl Install {
    fn new(tag: &str) -> Install {
        require_root();
        Install {
            user: format!("herdt{tag}{}", std::process::id() % 100_000),
            dir: open_dir(),
        }
    }
    fn config(&self) -> PathBuf {
        self.dir.path().join("etc/worker.yml")
    }
    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }
    fn args(&self) -> Vec<String> {
        vec![
            "--user".into(),
            self.user.clone(),
            "--bin-dir".into(),
            self.bin_dir().display().to_string(),
            "--config".into(),
            self.config().display().to_string(),
        ]
    }
    fn home(&self) -> PathBuf {
        PathBuf::from("/var/lib").join(&self.user)
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        // Leave nothing behind even when an assertion failed.
        if self.config().exists() {
            let _ = Command::new(self.bin_dir().join("herd"))
                .args(["worker", "uninstall", "--purge", "--config"])
                .arg(self.config())
                .output();
        }
        if user_exists(&self.user) {
            let _ = Command::new("userdel").arg(&self.user).output();
        }
        let _ = std::fs::remove_dir_all(self.home());
    }
}

fn stat(p: &Path) -> (Vec<u8>, i64, u32, u32) {
    let m = std::fs::metadata(p).unwrap();
    (
        std::fs::read(p).unwrap(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.uid(),
        m.mode() & 0o7777,
    )
}

#[test]
fn curl_sh_makes_a_worker_that_runs_builds_again_changes_nothing_and_purge_leaves_nothing() {
    let pipeline = "builders:\n  who:\n    requires: [pool == lent]\n    steps:\n      - run: echo \"user=$(id -un)\"\n";
    let server = Server::start_with_pipelines(&[("p", pipeline)], &[]);
    let inst = Install::new("a");
    let token = enroll_token(&server, &["--uses", "1", "--label", "pool=lent"]);
    let args = inst.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl_sh(&server, &token, &args, None);
    let report = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{report}");
    for line in [
        "Checking prerequisites (git, sh, disk)...done",
        &format!("Creating service user {}", inst.user),
        "Registering with 127.0.0.1",
        &format!("Trying a checkout as {}", inst.user),
        "Detecting capabilities...",
        "Starting...",
        "online",
    ] {
        assert!(report.contains(line), "`{line}` missing from:\n{report}");
    }
    assert!(
        report.contains("will NOT start again after a reboot"),
        "{report}"
    );

    // The user, its files, owners and modes.
    let account = nix::unistd::User::from_name(&inst.user).unwrap().unwrap();
    assert!(
        account.shell.display().to_string().ends_with("nologin"),
        "{:?}",
        account.shell
    );
    let (text, _, owner, mode) = stat(&inst.config());
    assert_eq!(
        (owner, mode),
        (account.uid.as_raw(), 0o600),
        "config owned by the user, 0600"
    );
    let text = String::from_utf8(text).unwrap();
    assert!(
        text.contains("herd_worker_"),
        "the worker's own token, not the enrollment token"
    );
    assert!(!text.contains(&token));
    // The token's label is the server's to give: it is stored there, not
    // in a file the worker's user could edit.
    assert!(!text.contains("pool: lent"), "{text}");
    assert_eq!(
        std::fs::metadata(inst.home()).unwrap().uid(),
        account.uid.as_raw()
    );
    let (_, _, _, bin_mode) = stat(&inst.bin_dir().join("herd"));
    assert_eq!(bin_mode, 0o755);

    // The worker runs as that user and is online; it runs a build.
    let pid: i32 = read_pid(&inst.home().join("worker.pid"));
    assert_eq!(uid_of_pid(pid), account.uid.as_raw());
    let name = text
        .lines()
        .find_map(|l| l.strip_prefix("name: "))
        .unwrap()
        .trim()
        .to_string();
    let w = server.get(&format!("/api/v1/workers/{name}")).unwrap();
    assert_eq!(w["online"], true, "{w}");
    assert_eq!(w["server_labels"]["pool"], "lent", "{w}");
    let id = server.start_build("p", &[]);
    let b = server.wait_build(id, Duration::from_secs(60));
    assert_eq!(b["state"], "success", "{b:#}");
    let log = String::from_utf8(server.step_log(id, "who", "0")).unwrap();
    assert_eq!(log.trim(), format!("user={}", inst.user));

    // Again: nothing changes (the used-up token is not even needed).
    let before = (stat(&inst.config()), stat(&inst.bin_dir().join("herd")));
    let tokens_before = server.cli(&["token", "list"]).stdout;
    let again = curl_sh(&server, &token, &args, None);
    // The enrollment token is used up: install.sh refuses it, saying so.
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && said.contains("used up"),
        "{said}"
    );
    let fresh = enroll_token(&server, &[]);
    let again = curl_sh(&server, &fresh, &args, None);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let after = (stat(&inst.config()), stat(&inst.bin_dir().join("herd")));
    assert_eq!(
        before, after,
        "config and executable untouched, identity kept"
    );
    let tokens_after = server.cli(&["token", "list"]).stdout;
    assert_eq!(
        String::from_utf8_lossy(&tokens_after)
            .matches("worker ")
            .count(),
        String::from_utf8_lossy(&tokens_before)
            .matches("worker ")
            .count(),
        "no new worker token"
    );
    let pid_again: i32 = read_pid(&inst.home().join("worker.pid"));
    assert_eq!(pid_again, pid, "the running worker was left alone");

    // Uninstall --purge: no user, file or registration left.
    let out = Command::new(inst.bin_dir().join("herd"))
        .args(["worker", "uninstall", "--purge", "--config"])
        .arg(inst.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!user_exists(&inst.user));
    assert!(!inst.config().exists());
    assert!(!inst.home().exists());
    assert!(!inst.bin_dir().join("herd").exists());
    assert!(!alive(pid), "the worker stopped");
    assert!(
        server.get(&format!("/api/v1/workers/{name}")).is_err(),
        "registration gone"
    );
}

#[test]
fn a_missing_prerequisite_stops_before_any_change() {
    let server = Server::start(&[]);
    let inst = Install::new("b");
    let token = enroll_token(&server, &[]);
    // A PATH with the tools the script needs, but no git.
    let bin = tempfile::tempdir().unwrap();
    for tool in [
        "sh",
        "curl",
        "uname",
        "tr",
        "mktemp",
        "rm",
        "cut",
        "sha256sum",
        "chmod",
        "apt-get",
        "cat",
    ] {
        for dir in ["/usr/bin", "/bin", "/usr/sbin"] {
            let p = Path::new(dir).join(tool);
            if p.exists() {
                let _ = std::os::unix::fs::symlink(&p, bin.path().join(tool));
                break;
            }
        }
    }
    let args = inst.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl_sh(
        &server,
        &token,
        &args,
        Some(&bin.path().display().to_string()),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("git is not installed"), "{said}");
    assert!(
        said.contains("apt-get install git"),
        "the fix is named: {said}"
    );
    assert!(said.contains("nothing was changed"), "{said}");
    assert!(!user_exists(&inst.user), "no user created");
    assert!(!inst.config().exists(), "no config written");
    assert!(
        !inst.bin_dir().join("herd").exists(),
        "no executable put in place"
    );
    // The token was not used.
    let tokens = String::from_utf8(server.cli(&["token", "list"]).stdout).unwrap();
    assert!(!tokens.contains("worker "), "{tokens}");
}

#[test]
fn used_up_expired_and_revoked_tokens_are_refused_clearly() {
    let server = Server::start(&[]);
    let enroll = |token: &str| {
        server.post(
            "/api/v1/enroll",
            serde_json::json!({ "token": token, "hostname": "lender.example.org" }),
            None,
        )
    };
    let once = enroll_token(&server, &["--uses", "1"]);
    let (status, body) = enroll(&once);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["worker"], "lender", "named after the host");
    let (status, body) = enroll(&once);
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap().contains("used up"),
        "{body}"
    );

    let short = enroll_token(&server, &["--expires", "1s"]);
    // Presented as a bearer, a live enrollment token may ask who it is.
    wait_until(Duration::from_secs(10), "the token to expire", || {
        let out = server.cli(&["token", "list", "--token", &short]);
        let refused = String::from_utf8_lossy(&out.stderr).contains("401");
        refused.then_some(())
    });
    let (status, body) = enroll(&short);
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    let revoked = enroll_token(&server, &[]);
    let id = revoked.split('_').nth(2).unwrap();
    let out = server.cli(&["token", "revoke", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, body) = enroll(&revoked);
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    // The one-liner says so too, instead of a bare HTTP error.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -fsSL '{}/install.sh?token={revoked}' | sh",
            server.url
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("the enrollment token was revoked"),
        "{said}"
    );
    // A forged token is not valid at all.
    let (status, _) = enroll("herd_enroll_0000_1111");
    assert_eq!(status, 401);
}

#[test]
fn the_served_install_script_passes_shellcheck() {
    let server = Server::start(&[]);
    let token = enroll_token(&server, &[]);
    let script = server
        .get_text(&format!("/install.sh?token={token}"))
        .unwrap();
    assert!(script.contains(&server.url) && script.contains(&token));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("install.sh");
    std::fs::write(&path, &script).unwrap();
    let out = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(&path)
        .output()
        .expect("shellcheck (Debian package shellcheck) is needed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The executable it downloads matches the checksum it is given.
    let sum = server
        .get_text(&format!(
            "/download/herd-{}-{}.sha256",
            std::env::consts::OS,
            std::env::consts::ARCH
        ))
        .unwrap();
    assert_eq!(sum.split_whitespace().next().unwrap().len(), 64);
    assert!(server
        .get_text("/download/herd-plan9-mips")
        .unwrap_err()
        .contains("--dist"));
}

#[test]
fn without_root_it_installs_for_the_user_and_says_how_it_starts() {
    require_root(); // to create the user that installs without root
    let server = Server::start(&[]);
    let user = format!("herdu{}", std::process::id() % 100_000);
    let home = PathBuf::from("/home").join(&user);
    let ok = Command::new("useradd")
        .args(["--create-home", "--home-dir"])
        .arg(&home)
        .args(["--shell", "/bin/sh", &user])
        .status()
        .unwrap();
    assert!(ok.success());
    struct Cleanup(String, PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            // The worker this test started, by the pid it recorded.
            if let Some(pid) = std::fs::read_to_string(self.1.join(".local/share/herd/worker.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = Command::new("userdel").args(["-r", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(user.clone(), home.clone());
    let token = enroll_token(&server, &[]);
    let as_user = |script: &str| {
        Command::new("runuser")
            .args(["-u", &user, "--", "env"])
            .arg(format!("HOME={}", home.display()))
            .args(["PATH=/usr/local/bin:/usr/bin:/bin", "sh", "-c", script])
            .current_dir(&home)
            .output()
            .unwrap()
    };
    let out = as_user(&format!(
        "curl -fsSL '{}/install.sh?token={token}' | sh -s -- --name lent-by-a-user",
        server.url
    ));
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(
        !report.contains("Creating service user"),
        "no user is created: {report}"
    );
    assert!(
        report.contains("crontab @reboot line")
            || report.contains("will NOT start again after a reboot"),
        "it says how (or that) it starts at boot: {report}"
    );
    let bin = home.join(".local/bin/herd");
    let config = home.join(".config/herd/worker.yml");
    let account = nix::unistd::User::from_name(&user).unwrap().unwrap();
    assert!(bin.is_file());
    let m = std::fs::metadata(&config).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (account.uid.as_raw(), 0o600));
    let w = server.get("/api/v1/workers/lent-by-a-user").unwrap();
    assert_eq!(w["online"], true);
    let pid: i32 = read_pid(&home.join(".local/share/herd/worker.pid"));
    assert_eq!(uid_of_pid(pid), account.uid.as_raw());
    let out = as_user("~/.local/bin/herd worker uninstall --purge");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!config.exists() && !bin.exists());
    assert!(!home.join(".local/share/herd").exists());
    assert!(server.get("/api/v1/workers/lent-by-a-user").is_err());
}

#[test]
fn upgrade_replaces_the_executable_and_restarts_without_losing_the_running_job() {
    let dist = open_dir();
    let pipeline = "builders:\n  slow:\n    steps:\n      - run: sleep 3; echo finished\n";
    let dist_arg = dist.path().display().to_string();
    let server = Server::start_with_pipelines(&[("p", pipeline)], &["--dist", &dist_arg]);
    let inst = Install::new("c");
    let token = enroll_token(&server, &[]);
    let args = inst.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl_sh(&server, &token, &args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let old_pid: i32 = read_pid(&inst.home().join("worker.pid"));
    // A "newer" herd appears on the server: the same program with a marker
    // appended (an ELF loader ignores trailing bytes).
    let mut newer = std::fs::read(inst.bin_dir().join("herd")).unwrap();
    newer.extend_from_slice(b"\nherd-upgrade-marker\n");
    let file = format!("herd-{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    std::fs::write(dist.path().join(&file), &newer).unwrap();
    std::fs::set_permissions(
        dist.path().join(&file),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let id = server.start_build("p", &[]);
    wait_until(Duration::from_secs(30), "the slow step to start", || {
        let b = server.build(id);
        (b["jobs"][0]["attempts"][0]["steps"][0]["state"] == "running").then_some(())
    });
    let out = Command::new(inst.bin_dir().join("herd"))
        .args(["worker", "upgrade", "--config"])
        .arg(inst.config())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = server.wait_build(id, Duration::from_secs(60));
    assert_eq!(b["state"], "success", "{b:#}");
    assert_eq!(
        b["jobs"][0]["attempts"].as_array().unwrap().len(),
        1,
        "the job ran once, to its end"
    );
    assert_eq!(std::fs::read(inst.bin_dir().join("herd")).unwrap(), newer);
    let new_pid: i32 = read_pid(&inst.home().join("worker.pid"));
    assert_ne!(new_pid, old_pid, "restarted");
    assert!(!alive(old_pid));
    let name = std::fs::read_to_string(inst.config())
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("name: ").map(|n| n.trim().to_string()))
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the upgraded worker online",
        || (server.get(&format!("/api/v1/workers/{name}")).ok()?["online"] == true).then_some(()),
    );
}

#[test]
fn a_temporary_directory_that_cannot_be_made_is_named_with_its_cause() {
    let server = Server::start(&[]);
    let token = enroll_token(&server, &[]);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "curl -fsSL '{}/install.sh?token={token}' | sh",
            server.url
        ))
        .env("TMPDIR", "/nonexistent/herd-test")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("cannot create a temporary directory in /nonexistent/herd-test: mktemp:"),
        "mktemp's own words: {said}"
    );
}

#[test]
fn a_service_user_that_cannot_check_out_is_told_before_online_with_the_fix() {
    let server = Server::start(&[]);
    let inst = Install::new("c");
    let token = enroll_token(&server, &[]);
    // A work directory the service user cannot reach: its parent is root's, 0700.
    let closed = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        closed.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let workdir = closed.path().join("work");
    let mut args = inst.args();
    args.extend(["--workdir".to_string(), workdir.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = curl_sh(&server, &token, &args, None);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    let trial = said
        .lines()
        .find(|l| l.starts_with(&format!("Trying a checkout as {}", inst.user)));
    assert!(trial.is_some_and(|l| l.ends_with("failed")), "{said}");
    assert!(
        said.contains("Permission denied") && said.contains("fix:"),
        "{said}"
    );
    assert!(!said.contains("online"), "not said to be online: {said}");
}
