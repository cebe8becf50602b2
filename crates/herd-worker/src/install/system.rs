//! The machine side of installing: users, files, prerequisites, and the
//! background worker of a machine without a service manager.

use super::Layout;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Free space the work directory needs at least.
const MIN_FREE_BYTES: u64 = 1024 * 1024 * 1024;
/// A clock further off than this breaks token expiry and logs.
const MAX_CLOCK_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

pub fn user(name: &str) -> Result<Account, String> {
    match User::from_name(name) {
        Ok(Some(u)) => Ok(Account {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }),
        Ok(None) => Err(format!("there is no user `{name}`")),
        Err(e) => Err(format!("cannot look up user `{name}`: {e}")),
    }
}

pub fn current_user() -> Result<Account, String> {
    match User::from_uid(nix::unistd::getuid()) {
        Ok(Some(u)) => Ok(Account {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        }),
        _ => Err("cannot find out who runs this (no entry in the user database)".into()),
    }
}

/// Runs a system command; Err names it with what it printed.
pub(super) fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nologin() -> &'static str {
    [
        "/usr/sbin/nologin",
        "/sbin/nologin",
        "/usr/bin/false",
        "/bin/false",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap_or("/bin/false")
}

/// Creates a system user without a login shell. False when it exists.
pub fn ensure_user(name: &str, home: &Path) -> Result<bool, String> {
    if User::from_name(name).ok().flatten().is_some() {
        return Ok(false);
    }
    let h = home.display().to_string();
    if cfg!(target_os = "macos") {
        run(
            "sysadminctl",
            &["-addUser", name, "-home", &h, "-shell", "/usr/bin/false"],
        )?;
    } else if cfg!(target_os = "freebsd") {
        run(
            "pw",
            &[
                "useradd",
                name,
                "-d",
                &h,
                "-m",
                "-s",
                nologin(),
                "-c",
                "herd worker",
            ],
        )?;
    } else {
        run(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--create-home",
                "--home-dir",
                &h,
                "--shell",
                nologin(),
                "--comment",
                "herd worker",
                name,
            ],
        )?;
    }
    Ok(true)
}

pub fn remove_user(name: &str, home: &Path) -> Result<(), String> {
    if User::from_name(name).ok().flatten().is_some() {
        if cfg!(target_os = "macos") {
            run("sysadminctl", &["-deleteUser", name])?;
        } else if cfg!(target_os = "freebsd") {
            run("pw", &["userdel", name])?;
        } else {
            run("userdel", &[name])?;
        }
    }
    let _ = std::fs::remove_dir_all(home);
    Ok(())
}

pub fn chown(path: &Path, a: &Account) -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    std::os::unix::fs::chown(path, Some(a.uid), Some(a.gid))
        .map_err(|e| format!("cannot give {} to {}: {e}", path.display(), a.name))
}

/// Writes `bytes` to `path` when its content differs (atomically: a temp
/// file renamed over it). True when it wrote.
pub fn write_bytes_if_changed(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, String> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        return Ok(false);
    }
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("herd")
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })?;
    Ok(true)
}

pub fn write_if_changed(path: &Path, text: &str, mode: u32) -> Result<bool, String> {
    write_bytes_if_changed(path, text.as_bytes(), mode)
}

/// Puts this executable at `dest`. True when it changed.
pub fn install_binary(dest: &Path) -> Result<bool, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    if me == dest {
        return Ok(false);
    }
    let bytes = std::fs::read(&me).map_err(|e| format!("cannot read {}: {e}", me.display()))?;
    write_bytes_if_changed(dest, &bytes, 0o755)
}

/// Whether `cmd` is an executable on PATH.
pub(super) fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// The command that installs a package here, for the messages.
fn install_hint(package: &str) -> String {
    for (tool, cmd) in [
        ("apt-get", "apt-get install"),
        ("dnf", "dnf install"),
        ("yum", "yum install"),
        ("apk", "apk add"),
        ("pacman", "pacman -S"),
        ("zypper", "zypper install"),
        ("brew", "brew install"),
        ("pkg", "pkg install"),
    ] {
        if on_path(tool) {
            return format!("{cmd} {package}");
        }
    }
    format!("install {package} with your package manager")
}

/// Everything checked before the first change. Err: all problems found.
pub async fn check_prerequisites(
    http: &reqwest::Client,
    server: &str,
    layout: &Layout,
) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    if !on_path("git") {
        problems.push(format!(
            "git is not installed (or not on PATH): {}",
            install_hint("git")
        ));
    }
    if !Path::new("/bin/sh").exists() {
        problems.push("there is no /bin/sh".into());
    }
    let mut probe = layout.workdir.clone();
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p.to_path_buf(),
            None => break,
        }
    }
    match nix::sys::statvfs::statvfs(&probe) {
        Ok(s) => {
            // The field types differ between platforms (u32 on some).
            #[allow(clippy::unnecessary_cast)]
            let free = s.blocks_available() as u64 * s.fragment_size() as u64;
            if free < MIN_FREE_BYTES {
                problems.push(format!(
                    "only {} MiB free under {}: the worker needs at least {} MiB for workspaces (choose another place with --workdir)",
                    free / (1024 * 1024),
                    probe.display(),
                    MIN_FREE_BYTES / (1024 * 1024)
                ));
            }
        }
        Err(e) => problems.push(format!(
            "cannot check free space under {}: {e}",
            probe.display()
        )),
    }
    if nix::unistd::access(&probe, nix::unistd::AccessFlags::W_OK).is_err() {
        problems.push(format!(
            "{} is not writable (choose another place with --workdir)",
            probe.display()
        ));
    }
    match http.get(format!("{server}/api/v1/health")).send().await {
        Ok(r) if r.status().is_success() => {
            let date = r
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
            if let Some(d) = date {
                let skew = (chrono::Utc::now().timestamp() - d.timestamp()).abs();
                if skew > MAX_CLOCK_SKEW_SECS {
                    problems.push(format!(
                        "this machine's clock is {skew} s off from the server's: set it (e.g. `timedatectl set-ntp true`)"
                    ));
                }
            }
        }
        Ok(r) => problems.push(format!(
            "{server} answered {} to a health check: is it a herd server?",
            r.status()
        )),
        Err(e) => problems.push(format!("cannot reach the server at {server}: {e}")),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// `linux x86_64, 8 cpus, python3 3.12.3, gcc 13.2.0`: what the probes found.
pub async fn capabilities_line() -> String {
    let facts = crate::facts::gather();
    let mut parts: Vec<String> = vec![
        format!(
            "{} {}",
            facts.get("os").map(String::as_str).unwrap_or("?"),
            facts.get("arch").map(String::as_str).unwrap_or("?")
        ),
        format!(
            "{} cpus",
            facts.get("cpus").map(String::as_str).unwrap_or("?")
        ),
    ];
    let wanted = [
        "python3",
        "gcc",
        "clang",
        "go",
        "java",
        "node",
        "cargo",
        "make",
        "pkg-config",
    ];
    let results = crate::probe::run_all(
        wanted
            .iter()
            .map(|n| herd_proto::ProbeRequest {
                name: n.to_string(),
                command: None,
            })
            .collect(),
        &Default::default(),
        None,
    )
    .await;
    for n in wanted {
        if let Some(r) = results.iter().find(|r| r.name == n && r.present) {
            parts.push(match &r.version {
                Some(v) => format!("{n} {v}"),
                None => n.to_string(),
            });
        }
    }
    parts.join(", ")
}

fn crontab_lines() -> Vec<String> {
    Command::new("crontab")
        .arg("-l")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn write_crontab(lines: &[String]) -> Result<(), String> {
    let mut child = Command::new("crontab")
        .arg("-")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run crontab: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut text = lines.join("\n");
        text.push('\n');
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("cannot write the crontab: {e}"))?;
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err("crontab refused the new table".into())
    }
}

const CRON_MARK: &str = "# herd-worker";

pub fn ensure_crontab_line(line: &str) -> Result<(), String> {
    let mut lines: Vec<String> = crontab_lines()
        .into_iter()
        .filter(|l| !l.ends_with(CRON_MARK))
        .collect();
    lines.push(line.to_string());
    write_crontab(&lines)
}

pub fn remove_crontab_line() -> Result<(), String> {
    let before = crontab_lines();
    let after: Vec<String> = before
        .iter()
        .filter(|l| !l.ends_with(CRON_MARK))
        .cloned()
        .collect();
    if after.len() != before.len() {
        write_crontab(&after)?;
    }
    Ok(())
}

fn pid_file(home: &Path) -> PathBuf {
    home.join("worker.pid")
}

/// The pid of the background worker this installer started, if it still
/// runs (checked against its command line: only our own process).
fn running_worker(home: &Path) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(pid_file(home))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok();
    let ours = match cmdline {
        Some(c) => {
            let c = String::from_utf8_lossy(&c);
            c.contains("worker") && c.contains("--config")
        }
        // No /proc (macOS, FreeBSD): trust the pid file if the process lives.
        None => true,
    };
    (ours && kill(Pid::from_raw(pid), None).is_ok()).then(|| Pid::from_raw(pid))
}

/// Starts the worker in the background as the service user (no service
/// manager), unless it already runs and nothing changed.
pub fn ensure_background(layout: &Layout, a: &Account, restart: bool) -> Result<(), String> {
    if running_worker(&layout.home).is_some() {
        if !restart {
            return Ok(());
        }
        stop_background(&layout.home)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.home.join("worker.log"))
        .map_err(|e| format!("cannot open {}/worker.log: {e}", layout.home.display()))?;
    let _ = chown(&layout.home.join("worker.log"), a);
    let err = log.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&layout.bin);
    cmd.arg("worker")
        .arg("--config")
        .arg(&layout.config)
        .current_dir(&layout.home)
        .env("HOME", &a.home)
        .env("USER", &a.name)
        .env("LOGNAME", &a.name)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        // Its own group: the installer's terminal and signals are not its.
        .process_group(0);
    if nix::unistd::geteuid().is_root() && a.uid != 0 {
        cmd.uid(a.uid).gid(a.gid);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", layout.bin.display()))?;
    std::fs::write(pid_file(&layout.home), format!("{}\n", child.id()))
        .map_err(|e| format!("cannot write the pid file: {e}"))?;
    // Not waited for: it outlives the installer (init reaps it).
    std::mem::forget(child);
    Ok(())
}

/// Stops the background worker this installer started (by its pid file):
/// SIGTERM lets it finish its jobs, within a bound.
pub fn stop_background(home: &Path) -> Result<(), String> {
    let Some(pid) = running_worker(home) else {
        let _ = std::fs::remove_file(pid_file(home));
        return Ok(());
    };
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(600);
    while kill(pid, None).is_ok() && Instant::now() < deadline {
        // A zombie (its parent is gone) still answers; /proc tells.
        if std::fs::read_to_string(format!("/proc/{}/stat", pid.as_raw()))
            .is_ok_and(|s| s.split_whitespace().nth(2) == Some("Z"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if kill(pid, None).is_ok() && Instant::now() >= deadline {
        let _ = kill(pid, Signal::SIGKILL);
    }
    let _ = std::fs::remove_file(pid_file(home));
    Ok(())
}
