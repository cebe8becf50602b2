//! Start-at-boot services for the worker: which service manager a machine
//! has, the files each one takes (pure functions, pinned by snapshot
//! tests), and installing, starting and removing them.

use super::system::{on_path, run};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SERVICE_NAME: &str = "herd-worker";
pub const LAUNCHD_LABEL: &str = "org.herd.worker";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Manager {
    Systemd,
    SystemdUser,
    Launchd,
    LaunchdAgent,
    OpenRc,
    RcD,
    Crontab,
    /// No service manager (a container): started in the background only.
    None,
}

impl Manager {
    pub fn describe(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd service herd-worker",
            Manager::SystemdUser => "systemd user service herd-worker",
            Manager::Launchd => "launchd daemon org.herd.worker",
            Manager::LaunchdAgent => "launchd agent org.herd.worker",
            Manager::OpenRc => "OpenRC service herd-worker",
            Manager::RcD => "rc.d service herd_worker",
            Manager::Crontab => "crontab @reboot line",
            Manager::None => "no service manager",
        }
    }
}

/// What the service runs.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub bin: PathBuf,
    pub config: PathBuf,
    pub user: String,
    pub home: PathBuf,
}

fn command_ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The service manager of this machine, for a system install or a user one.
pub fn detect(system: bool) -> Manager {
    if cfg!(target_os = "macos") {
        return if system {
            Manager::Launchd
        } else {
            Manager::LaunchdAgent
        };
    }
    if cfg!(target_os = "freebsd") && system {
        return Manager::RcD;
    }
    // systemd is the manager only when it runs as PID 1.
    if Path::new("/run/systemd/system").is_dir() {
        if system {
            return Manager::Systemd;
        }
        if command_ok("systemctl", &["--user", "is-system-running"])
            || command_ok("systemctl", &["--user", "show-environment"])
        {
            return Manager::SystemdUser;
        }
    }
    if system && Path::new("/run/openrc").is_dir() && on_path("openrc-run") {
        return Manager::OpenRc;
    }
    if !system && on_path("crontab") {
        return Manager::Crontab;
    }
    Manager::None
}

pub fn systemd_unit(s: &ServiceSpec, user_service: bool) -> String {
    let user_lines = if user_service {
        String::new()
    } else {
        format!("User={}\nWorkingDirectory={}\n", s.user, s.home.display())
    };
    let wanted = if user_service {
        "default.target"
    } else {
        "multi-user.target"
    };
    format!(
        "[Unit]
Description=herd build worker
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
{user_lines}ExecStart={bin} worker --config {config}
# The first SIGTERM drains: running jobs finish, no new ones start.
KillMode=mixed
KillSignal=SIGTERM
TimeoutStopSec=1h
Restart=on-failure
RestartSec=5s

[Install]
WantedBy={wanted}
",
        bin = s.bin.display(),
        config = s.config.display(),
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn launchd_plist(s: &ServiceSpec, daemon: bool) -> String {
    let user = if daemon {
        format!(
            "    <key>UserName</key>\n    <string>{}</string>\n",
            xml_escape(&s.user)
        )
    } else {
        String::new()
    };
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
    <key>Label</key>
    <string>{LAUNCHD_LABEL}</string>
    <key>ProgramArguments</key>
    <array>
        <string>{bin}</string>
        <string>worker</string>
        <string>--config</string>
        <string>{config}</string>
    </array>
{user}    <key>WorkingDirectory</key>
    <string>{home}</string>
    <key>RunAtLoad</key>
    <true/>
    <key>KeepAlive</key>
    <dict>
        <key>SuccessfulExit</key>
        <false/>
    </dict>
    <key>ExitTimeOut</key>
    <integer>3600</integer>
    <key>StandardOutPath</key>
    <string>{home}/worker.log</string>
    <key>StandardErrorPath</key>
    <string>{home}/worker.log</string>
</dict>
</plist>
"#,
        bin = xml_escape(&s.bin.display().to_string()),
        config = xml_escape(&s.config.display().to_string()),
        home = xml_escape(&s.home.display().to_string()),
    )
}

pub fn openrc_script(s: &ServiceSpec) -> String {
    format!(
        r#"#!/sbin/openrc-run
description="herd build worker"
command="{bin}"
command_args="worker --config {config}"
command_user="{user}"
command_background=true
pidfile="/run/${{RC_SVCNAME}}.pid"
directory="{home}"
output_log="{home}/worker.log"
error_log="{home}/worker.log"
# The first SIGTERM drains: running jobs finish, no new ones start.
retry="TERM/3600/KILL/5"

depend() {{
    need net
}}
"#,
        bin = s.bin.display(),
        config = s.config.display(),
        user = s.user,
        home = s.home.display(),
    )
}

pub fn rcd_script(s: &ServiceSpec) -> String {
    format!(
        r#"#!/bin/sh
# PROVIDE: herd_worker
# REQUIRE: NETWORKING
# KEYWORD: shutdown

. /etc/rc.subr

name="herd_worker"
rcvar="herd_worker_enable"
herd_worker_user="{user}"
pidfile="/var/run/${{name}}.pid"
command="/usr/sbin/daemon"
command_args="-f -P ${{pidfile}} -u {user} -o {home}/worker.log {bin} worker --config {config}"

load_rc_config $name
: ${{herd_worker_enable:="NO"}}
run_rc_command "$1"
"#,
        bin = s.bin.display(),
        config = s.config.display(),
        user = s.user,
        home = s.home.display(),
    )
}

/// Where a manager's file for this service lives.
pub fn service_file(m: Manager, home_of_user: &Path) -> Option<PathBuf> {
    match m {
        Manager::Systemd => Some(PathBuf::from("/etc/systemd/system/herd-worker.service")),
        Manager::SystemdUser => Some(home_of_user.join(".config/systemd/user/herd-worker.service")),
        Manager::Launchd => Some(PathBuf::from(
            "/Library/LaunchDaemons/org.herd.worker.plist",
        )),
        Manager::LaunchdAgent => {
            Some(home_of_user.join("Library/LaunchAgents/org.herd.worker.plist"))
        }
        Manager::OpenRc => Some(PathBuf::from("/etc/init.d/herd-worker")),
        Manager::RcD => Some(PathBuf::from("/usr/local/etc/rc.d/herd_worker")),
        Manager::Crontab | Manager::None => None,
    }
}

/// The file's text for a manager.
pub fn service_text(m: Manager, s: &ServiceSpec) -> Option<String> {
    match m {
        Manager::Systemd => Some(systemd_unit(s, false)),
        Manager::SystemdUser => Some(systemd_unit(s, true)),
        Manager::Launchd => Some(launchd_plist(s, true)),
        Manager::LaunchdAgent => Some(launchd_plist(s, false)),
        Manager::OpenRc => Some(openrc_script(s)),
        Manager::RcD => Some(rcd_script(s)),
        Manager::Crontab | Manager::None => None,
    }
}

/// Enables and (re)starts the service its file describes.
pub fn enable_and_start(m: Manager, file: &Path, changed: bool) -> Result<(), String> {
    let f = file.display().to_string();
    match m {
        Manager::Systemd => {
            run("systemctl", &["daemon-reload"])?;
            run("systemctl", &["enable", SERVICE_NAME])?;
            let verb = if changed { "restart" } else { "start" };
            run("systemctl", &[verb, SERVICE_NAME])
        }
        Manager::SystemdUser => {
            run("systemctl", &["--user", "daemon-reload"])?;
            run("systemctl", &["--user", "enable", SERVICE_NAME])?;
            let verb = if changed { "restart" } else { "start" };
            run("systemctl", &["--user", verb, SERVICE_NAME])
        }
        Manager::Launchd => {
            let _ = run(
                "launchctl",
                &["bootout", &format!("system/{LAUNCHD_LABEL}")],
            );
            run("launchctl", &["bootstrap", "system", &f])
        }
        Manager::LaunchdAgent => {
            let _ = run("launchctl", &["unload", &f]);
            run("launchctl", &["load", "-w", &f])
        }
        Manager::OpenRc => {
            run("rc-update", &["add", SERVICE_NAME, "default"])?;
            let verb = if changed { "restart" } else { "start" };
            run("rc-service", &[SERVICE_NAME, verb])
        }
        Manager::RcD => {
            run("sysrc", &["herd_worker_enable=YES"])?;
            let verb = if changed { "restart" } else { "start" };
            run("service", &["herd_worker", verb])
        }
        Manager::Crontab | Manager::None => Ok(()),
    }
}

/// Stops and disables the service; its file is removed by the caller.
pub fn stop_and_disable(m: Manager, file: &Path) {
    let f = file.display().to_string();
    let _ = match m {
        Manager::Systemd => run("systemctl", &["disable", "--now", SERVICE_NAME]),
        Manager::SystemdUser => run("systemctl", &["--user", "disable", "--now", SERVICE_NAME]),
        Manager::Launchd => run(
            "launchctl",
            &["bootout", &format!("system/{LAUNCHD_LABEL}")],
        ),
        Manager::LaunchdAgent => run("launchctl", &["unload", "-w", &f]),
        Manager::OpenRc => run("rc-service", &[SERVICE_NAME, "stop"])
            .and_then(|_| run("rc-update", &["del", SERVICE_NAME, "default"])),
        Manager::RcD => run("service", &["herd_worker", "stop"]),
        Manager::Crontab | Manager::None => Ok(()),
    };
}

/// The crontab line that starts the worker at boot (user installs).
pub fn crontab_line(s: &ServiceSpec) -> String {
    format!(
        "@reboot {} worker --config {} >>{}/worker.log 2>&1 # herd-worker",
        s.bin.display(),
        s.config.display(),
        s.home.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            bin: "/usr/local/bin/herd".into(),
            config: "/etc/herd/worker.yml".into(),
            user: "herd".into(),
            home: "/var/lib/herd".into(),
        }
    }

    #[test]
    fn systemd_unit_is_pinned() {
        insta::assert_snapshot!(systemd_unit(&spec(), false));
    }

    #[test]
    fn launchd_plist_is_pinned() {
        insta::assert_snapshot!(launchd_plist(&spec(), true));
    }

    #[test]
    fn openrc_script_is_pinned() {
        insta::assert_snapshot!(openrc_script(&spec()));
    }

    #[test]
    fn rcd_script_is_pinned() {
        insta::assert_snapshot!(rcd_script(&spec()));
    }

    #[test]
    fn plist_is_well_formed_with_the_keys_launchd_needs() {
        let text = launchd_plist(&spec(), true);
        let mut reader = quick_xml::Reader::from_str(&text);
        let mut keys = Vec::new();
        let mut in_key = false;
        let mut depth: i32 = 0;
        loop {
            match reader.read_event() {
                Ok(quick_xml::events::Event::Start(e)) => {
                    depth += 1;
                    in_key = e.name().as_ref() == b"key";
                }
                Ok(quick_xml::events::Event::End(_)) => {
                    depth -= 1;
                    in_key = false;
                }
                Ok(quick_xml::events::Event::Text(t)) if in_key => {
                    keys.push(String::from_utf8_lossy(t.as_ref()).into_owned());
                }
                Ok(quick_xml::events::Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("not well-formed XML: {e}"),
            }
        }
        assert_eq!(depth, 0, "every element closed");
        for k in [
            "Label",
            "ProgramArguments",
            "UserName",
            "RunAtLoad",
            "KeepAlive",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn systemd_analyze_verify_accepts_the_unit() {
        // systemd-analyze comes with Debian's systemd package (scripts/test
        // installs it); PID 1 need not be systemd for `verify`.
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("herd");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let s = ServiceSpec {
            bin: bin.clone(),
            config: dir.path().join("worker.yml"),
            user: "root".into(),
            home: dir.path().to_path_buf(),
        };
        let unit = dir.path().join("herd-worker.service");
        std::fs::write(&unit, systemd_unit(&s, false)).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .expect("systemd-analyze (Debian package systemd) is needed");
        let err = String::from_utf8_lossy(&out.stderr);
        // Lines about units other than ours (the host's) are not ours to judge.
        let ours: Vec<&str> = err.lines().filter(|l| l.contains("herd-worker")).collect();
        assert!(out.status.success() && ours.is_empty(), "{err}");
    }
}
