//! `herd worker install|uninstall|upgrade`: one command makes a machine a
//! worker that starts at boot.
//!
//! Order matters: every check runs before the first change, so a missing
//! prerequisite leaves the machine as it was. Every change is idempotent:
//! running the installer again repairs what differs and keeps the worker's
//! identity (its token, kept in the config file).

pub mod config;
pub mod service;
mod system;
mod trial;

pub use config::{InstallInfo, WorkerConfig};
use service::{Manager, ServiceSpec};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub server: String,
    pub token: String,
    pub name: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub slots: u32,
    /// The service user (root installs; ignored otherwise).
    pub user: String,
    pub workdir: Option<PathBuf>,
    pub bin_dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    /// How long to wait for the worker to come online.
    pub online_timeout: Duration,
    /// The server's TLS pin (`sha256//…`) for an https server.
    pub tls_pin: Option<String>,
    /// Who lends the machine: told when it goes away and comes back.
    pub owner: Option<String>,
}

/// Where things go: for a system install (as root) or for the current user.
#[derive(Debug, Clone)]
pub struct Layout {
    pub system: bool,
    pub user: String,
    pub home: PathBuf,
    pub bin: PathBuf,
    pub config: PathBuf,
    pub workdir: PathBuf,
}

impl Layout {
    pub fn new(
        user: &str,
        workdir: Option<&Path>,
        bin_dir: Option<&Path>,
        config: Option<&Path>,
    ) -> Result<Layout, String> {
        let system = nix::unistd::geteuid().is_root();
        if system {
            let home = PathBuf::from("/var/lib").join(user);
            Ok(Layout {
                system,
                user: user.to_string(),
                workdir: workdir.map(Path::to_path_buf).unwrap_or(home.join("work")),
                home,
                bin: bin_dir.unwrap_or(Path::new("/usr/local/bin")).join("herd"),
                config: config
                    .map(Path::to_path_buf)
                    .unwrap_or(PathBuf::from("/etc/herd/worker.yml")),
            })
        } else {
            let me = system::current_user()?;
            let home = me.home.clone();
            let data = home.join(".local/share/herd");
            Ok(Layout {
                system,
                user: me.name,
                workdir: workdir.map(Path::to_path_buf).unwrap_or(data.join("work")),
                home: data,
                bin: bin_dir
                    .map(Path::to_path_buf)
                    .unwrap_or(home.join(".local/bin"))
                    .join("herd"),
                config: config
                    .map(Path::to_path_buf)
                    .unwrap_or(home.join(".config/herd/worker.yml")),
            })
        }
    }
}

/// One line of the installer's report: `Doing this...          done`.
fn step(what: &str) {
    eprint!("{:<41}", format!("{what}..."));
    let _ = std::io::stderr().flush();
}

fn done(detail: &str) {
    eprintln!("{detail}");
}

fn failed(why: &str) -> String {
    eprintln!("failed");
    why.to_string()
}

pub async fn install(opts: InstallOptions) -> Result<(), String> {
    let layout = Layout::new(
        &opts.user,
        opts.workdir.as_deref(),
        opts.bin_dir.as_deref(),
        opts.config.as_deref(),
    )?;
    let server = opts.server.trim_end_matches('/').to_string();
    let http = crate::http_client(
        &server,
        opts.tls_pin.as_deref(),
        Some(Duration::from_secs(20)),
    )
    .map_err(|e| e.to_string())?;
    let existing = WorkerConfig::load(&layout.config).ok();

    step("Checking prerequisites (git, sh, disk)");
    let checks = system::check_prerequisites(&http, &server, &layout).await;
    if let Err(problems) = checks {
        eprintln!("failed");
        return Err(format!(
            "nothing was changed; fix these first:\n{}",
            problems
                .iter()
                .map(|p| format!("  - {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    done("done");

    let mut created_user = existing
        .as_ref()
        .and_then(|c| c.install.as_ref())
        .is_some_and(|i| i.created_user && i.user == layout.user);
    if layout.system {
        step(&format!("Creating service user {}", layout.user));
        let created = system::ensure_user(&layout.user, &layout.home).map_err(|e| failed(&e))?;
        created_user |= created;
        done(if created { "done" } else { "exists" });
    }
    let account = system::user(&layout.user)?;
    for dir in [&layout.home, &layout.workdir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        system::chown(dir, &account)?;
    }

    step(&format!(
        "Installing herd {} to {}",
        env!("CARGO_PKG_VERSION"),
        layout.bin.display()
    ));
    let replaced = system::install_binary(&layout.bin).map_err(|e| failed(&e))?;
    done(if replaced { "done" } else { "up to date" });

    let host = server.split("://").nth(1).unwrap_or(&server).to_string();
    step(&format!("Registering with {host}"));
    let (name, token, labels) = match &existing {
        Some(c)
            if c.server.trim_end_matches('/') == server
                && token_works(&http, &server, &c.token).await =>
        {
            (c.name.clone(), c.token.clone(), c.labels.clone())
        }
        _ => {
            let hostname = nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "worker".into());
            let res = http
                .post(format!("{server}/api/v1/enroll"))
                .json(&serde_json::json!({ "token": opts.token, "name": opts.name, "hostname": hostname, "owner": opts.owner }))
                .send()
                .await
                .map_err(|e| failed(&format!("cannot reach {server}: {e}")))?;
            let status = res.status();
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            if !status.is_success() {
                return Err(failed(&format!(
                    "the server refused to enroll this machine: {}",
                    body["error"].as_str().unwrap_or("no reason given")
                )));
            }
            let name = body["worker"].as_str().unwrap_or("").to_string();
            let token = body["token"].as_str().unwrap_or("").to_string();
            // The enrollment token's labels stay the server's (it keeps
            // them for this worker); the config holds what the owner states.
            (name, token, opts.labels.clone())
        }
    };
    let mut labels = labels;
    labels.extend(opts.labels.clone());
    let manager = service::detect(layout.system);
    let spec = ServiceSpec {
        bin: layout.bin.clone(),
        config: layout.config.clone(),
        user: layout.user.clone(),
        home: layout.home.clone(),
    };
    let service_file = service::service_file(manager, &system::user(&layout.user)?.home);
    let config = WorkerConfig {
        server: server.clone(),
        token,
        name: name.clone(),
        workdir: layout.workdir.clone(),
        slots: existing
            .as_ref()
            .filter(|_| opts.slots == 0)
            .map(|c| c.slots)
            .unwrap_or(opts.slots.max(1)),
        labels,
        probes: existing
            .as_ref()
            .map(|c| c.probes.clone())
            .unwrap_or_default(),
        tls_pin: opts.tls_pin.clone(),
        // A reinstall keeps what the machine's owner set.
        min_free: existing.as_ref().and_then(|c| c.min_free.clone()),
        max_workspaces: existing.as_ref().and_then(|c| c.max_workspaces),
        install: Some(InstallInfo {
            user: layout.user.clone(),
            home: layout.home.clone(),
            bin: layout.bin.clone(),
            manager,
            service_file: service_file.clone(),
            created_user,
        }),
    };
    let config_changed = config.save(&layout.config, &account)?;
    done(&format!("done (worker \"{name}\")"));

    step(&format!("Trying a checkout as {}", layout.user));
    // As the service user when installing for it (root may switch).
    let switch = nix::unistd::geteuid().is_root() && account.uid != 0;
    trial::try_a_checkout(&account, &layout.workdir, switch).map_err(|e| failed(&e))?;
    done("done");

    step("Detecting capabilities");
    done(&system::capabilities_line().await);

    if manager == Manager::None {
        step("Looking for a service manager");
    } else {
        step(&format!("Installing {}", manager.describe()));
    }
    let mut service_changed = config_changed;
    if let (Some(file), Some(text)) = (&service_file, service::service_text(manager, &spec)) {
        service_changed |= system::write_if_changed(file, &text, 0o644)?;
        if let Err(e) = service::enable_and_start(manager, file, service_changed) {
            return Err(failed(&e));
        }
        done("done");
    } else if manager == Manager::Crontab {
        system::ensure_crontab_line(&service::crontab_line(&spec))?;
        done("done");
    } else {
        done("none found");
        eprintln!(
            "  No service manager runs here (a container?): the worker starts now in the\n  background as {}, but it will NOT start again after a reboot.",
            layout.user
        );
    }
    if matches!(manager, Manager::Crontab | Manager::None) {
        system::ensure_background(&layout, &account, config_changed)?;
    }

    step("Starting");
    wait_online(&http, &server, &name, &config.token, opts.online_timeout)
        .await
        .map_err(|e| failed(&e))?;
    done("online");
    eprintln!("Its page: {server}/workers/{name}");
    Ok(())
}

/// Whether a worker token is still accepted (the worker keeps its identity).
async fn token_works(http: &reqwest::Client, server: &str, token: &str) -> bool {
    http.get(format!("{server}/api/v1/whoami"))
        .bearer_auth(token)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Polls the server until it reports the worker online (with the worker's
/// own token: a private server shows nothing without one).
async fn wait_online(
    http: &reqwest::Client,
    server: &str,
    name: &str,
    token: &str,
    limit: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(r) = http
            .get(format!("{server}/api/v1/workers/{name}"))
            .bearer_auth(token)
            .send()
            .await
        {
            if let Ok(v) = r.json::<serde_json::Value>().await {
                if v["online"] == true {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the worker did not come online within {}s: see its log ({})",
                limit.as_secs(),
                "journalctl -u herd-worker, or worker.log in its home directory"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `herd worker uninstall [--purge]`.
pub async fn uninstall(config_path: Option<&Path>, purge: bool) -> Result<(), String> {
    let layout = Layout::new("herd", None, None, config_path)?;
    let config = WorkerConfig::load(&layout.config).map_err(|e| {
        format!("{e}: nothing to uninstall here (or give --config the worker's config file)")
    })?;
    let info = config.install.clone().ok_or_else(|| {
        format!(
            "{} was not written by `herd worker install`",
            layout.config.display()
        )
    })?;
    step("Stopping the worker");
    if let Some(file) = &info.service_file {
        service::stop_and_disable(info.manager, file);
        let _ = std::fs::remove_file(file);
        if info.manager == Manager::Systemd {
            let _ = std::process::Command::new("systemctl")
                .arg("daemon-reload")
                .status();
        }
    }
    if info.manager == Manager::Crontab {
        system::remove_crontab_line()?;
    }
    system::stop_background(&info.home)?;
    done("done");
    if !purge {
        eprintln!(
            "The service is gone; the user, files and registration stay (add --purge to remove them)."
        );
        return Ok(());
    }
    step("Removing the registration");
    let http = crate::http_client(
        &config.server,
        config.tls_pin.as_deref(),
        Some(Duration::from_secs(20)),
    )
    .map_err(|e| failed(&e.to_string()))?;
    match http
        .post(format!(
            "{}/api/v1/workers/{}/forget",
            config.server.trim_end_matches('/'),
            config.name
        ))
        .bearer_auth(&config.token)
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => done("done"),
        Ok(r) => done(&format!(
            "failed ({}): remove it on the server with the admin token",
            r.status()
        )),
        Err(e) => done(&format!("failed ({e}): remove it on the server later")),
    }
    step("Removing files");
    let _ = std::fs::remove_file(&layout.config);
    if let Some(dir) = layout.config.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    let _ = std::fs::remove_dir_all(&config.workdir);
    let _ = std::fs::remove_file(&info.bin);
    done("done");
    if layout.system && info.created_user && info.user != "root" {
        step(&format!("Removing user {}", info.user));
        system::remove_user(&info.user, &info.home).map_err(|e| failed(&e))?;
        done("done");
    } else {
        // A user the installer did not create stays; herd's files go.
        let _ = std::fs::remove_dir_all(&info.home);
    }
    Ok(())
}

/// `herd worker upgrade`: the server's executable replaces this one, and
/// the worker restarts (draining first: no job is lost).
pub async fn upgrade(config_path: Option<&Path>) -> Result<(), String> {
    let layout = Layout::new("herd", None, None, config_path)?;
    let config = WorkerConfig::load(&layout.config)?;
    let info = config
        .install
        .clone()
        .ok_or_else(|| "this worker was not installed by `herd worker install`".to_string())?;
    let server = config.server.trim_end_matches('/');
    let file = format!("herd-{}-{}", std::env::consts::OS, std::env::consts::ARCH);
    step(&format!("Downloading {file}"));
    let http = crate::http_client(
        server,
        config.tls_pin.as_deref(),
        Some(Duration::from_secs(600)),
    )
    .map_err(|e| failed(&e.to_string()))?;
    let bytes = http
        .get(format!("{server}/download/{file}"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| failed(&format!("cannot download: {e}")))?
        .bytes()
        .await
        .map_err(|e| failed(&e.to_string()))?;
    let want = http
        .get(format!("{server}/download/{file}.sha256"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| failed(&format!("cannot download the checksum: {e}")))?
        .text()
        .await
        .map_err(|e| failed(&e.to_string()))?;
    let got = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
    if want.split_whitespace().next() != Some(got.as_str()) {
        return Err(failed(&format!(
            "the download is damaged: SHA-256 {got}, the server says {want}"
        )));
    }
    done("done");
    step("Replacing the executable");
    let changed = system::write_bytes_if_changed(&info.bin, &bytes, 0o755)?;
    done(if changed {
        "done"
    } else {
        "already this version"
    });
    if !changed {
        return Ok(());
    }
    step("Restarting (running jobs finish first)");
    match (&info.service_file, info.manager) {
        (Some(f), m) => service::enable_and_start(m, f, true)?,
        (None, _) => {
            system::stop_background(&info.home)?;
            let account = system::user(&info.user)?;
            let layout = Layout {
                system: layout.system,
                user: info.user.clone(),
                home: info.home.clone(),
                bin: info.bin.clone(),
                config: layout.config.clone(),
                workdir: config.workdir.clone(),
            };
            system::ensure_background(&layout, &account, true)?;
        }
    }
    done("done");
    Ok(())
}
