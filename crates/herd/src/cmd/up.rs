//! `herd up`: a server with embedded SQLite, one local worker, an example
//! project (a small git repository it creates) and this repository when it
//! has a herd.yml; on its first start builds each project once, and says
//! where to look and how other machines can join.

use clap::Args;
use herd_server::auth::{self, TokenKind};
use herd_server::builds::{start_build, BuildRequest};
use herd_server::config::ProjectConfig;
use herd_server::hub::Settings;
use herd_server::ServerOptions;
use herd_worker::WorkerOptions;
use miette::{miette, IntoDiagnostic, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

#[derive(Args)]
pub struct UpArgs {
    /// Where the server listens. 127.0.0.1 (the default) is this machine
    /// only; `0.0.0.0:8080` lets other machines' workers connect.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR:PORT")]
    listen: String,
    /// How other machines reach this server (`http://ci.example.org:8080`):
    /// the address printed for workers and in the install one-liner.
    /// Default: the listen address.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The server's data directory (database, tokens, mirrors, artifacts,
    /// the example repository); a restart reuses it.
    #[arg(long, default_value = "herd-data")]
    data: PathBuf,
    /// Jobs the local worker runs at once.
    #[arg(long, default_value_t = 2)]
    slots: u32,
}

const EXAMPLE_PIPELINE: &str = r#"# The example project of `herd up`: one builder with ordered steps and an
# `always` step, and one builder with two jobs that may run on different
# workers at once.
builders:
  build:
    steps:
      - name: compile
        run: mkdir -p out && cat greeting.txt > out/hello && echo "compiled out/hello"
      - name: test
        run: grep -q hello out/hello && echo "test passed"
        timeout: 1m
      - name: cleanup
        run: rm -rf out && echo "cleaned up"
        always: true
  checks:
    jobs:
      lint:
        steps:
          - run: test -s greeting.txt && echo "lint ok"
      unit:
        steps:
          - run: for i in 1 2 3; do echo "unit test $i ok"; sleep 0.3; done
"#;

pub async fn run(args: UpArgs) -> Result<ExitCode> {
    crate::init_logging("warn", crate::LogFormat::Text);
    // Before anything is created: a taken port leaves no herd-data behind.
    if let Err(e) = std::net::TcpListener::bind(&args.listen) {
        return Err(miette!(
            help = "stop what runs there, or choose another address with --listen 127.0.0.1:8081",
            "cannot listen on {}: {e}",
            args.listen
        ));
    }
    let first_start = !args.data.join("herd.db").exists();
    std::fs::create_dir_all(&args.data).into_diagnostic()?;
    let data = std::path::absolute(&args.data).into_diagnostic()?;
    let example = data.join("example-repo");
    create_example_repo(&example)?;
    let mut projects = vec![ProjectConfig::with_repo(
        "example",
        &example.display().to_string(),
    )];
    if let Some(root) = this_repository() {
        projects.push(ProjectConfig::with_repo(
            "herd",
            &root.display().to_string(),
        ));
    }
    let names: Vec<String> = projects.iter().map(|p| p.name.clone()).collect();
    let server = herd_server::start(ServerOptions {
        new_admin_token: false,
        listen: args.listen.clone(),
        data_dir: data.clone(),
        dist_dir: None,
        users: Default::default(),
        private: false,
        projects,
        settings: Settings::default(),
        public_url: args.url.clone().or_else(|| every_address_url(&args.listen)),
        database: None,
        tls: Default::default(),
        conn_limits: Default::default(),
        artifacts_dir: None,
        smtp: None,
        offline_notice: None,
        keep: Default::default(),
        janitor_interval: None,
        reload_from: None,
    })
    .await
    .map_err(|e| miette!("{e}"))?;
    let url = format!("http://{}", server.addr);
    let public = server.app.public_url.clone();

    // The local worker's token, kept beside the data so a restart reuses it.
    let token_file = data.join("local-worker-token");
    let token = match std::fs::read_to_string(&token_file) {
        Ok(t)
            if auth::verify(&server.app.hub.store, t.trim())
                .await
                .ok()
                .flatten()
                .is_some() =>
        {
            t.trim().to_string()
        }
        _ => {
            let t = auth::create_token(&server.app.hub.store, TokenKind::Worker, Some("local"))
                .await
                .map_err(|e| miette!("{e}"))?;
            write_private(&token_file, &t)?;
            t
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(herd_worker::Shutdown::Run);
    let worker = tokio::spawn(herd_worker::run(
        WorkerOptions {
            server: url.clone(),
            token,
            name: Some("local".into()),
            workdir: data.join("work"),
            slots: args.slots,
            labels: Default::default(),
            herd_bin: std::env::current_exe().ok(),
            tls_pin: None,
            probes: Default::default(),
            disk: Default::default(),
            disk_interval: herd_worker::disk::DEFAULT_INTERVAL,
        },
        stop_rx,
    ));
    // The first start builds each project's head once, so that its
    // builders show; a restart builds nothing by itself.
    let mut first_builds = Vec::new();
    if first_start {
        for project in &names {
            let started = start_build(
                &server.app,
                BuildRequest {
                    project: project.clone(),
                    reason: Some("herd up: first start".into()),
                    ..Default::default()
                },
            )
            .await;
            match started {
                Ok(build) => first_builds.push(build),
                // The example is herd's own: it must build. Another
                // project's refusal is its own business.
                Err(e) if project == "example" => {
                    return Err(miette!("could not start the first build: {e}"))
                }
                Err(e) => eprintln!("no first build of {project}: {e}"),
            }
        }
    }

    crate::outln!("herd is running at {url}");
    crate::outln!("  web page:    {url}");
    crate::outln!("  data:        {}", data.display());
    crate::outln!(
        "  admin token: {}",
        data.join(herd_server::ADMIN_TOKEN_FILE).display()
    );
    crate::outln!("  projects:    {}", names.join(", "));
    crate::outln!("  worker:      local ({} slots)", args.slots);
    crate::outln!();
    match first_builds.first() {
        Some(build) => {
            crate::outln!("First build: {build}. Follow it with:");
            crate::outln!("  herd build log {build} --follow");
        }
        None => crate::outln!("Started again on the same data: nothing was built by this start."),
    }
    crate::outln!("Start a build:");
    crate::outln!("  herd build start example --wait");
    if reachable_from_elsewhere(&public) {
        crate::outln!("Add a worker on another machine (this server's address for it: {public}; if it reaches this machine by another name, restart with --url):");
        crate::outln!("  herd token create --enroll               # prints the install one-liner");
        crate::outln!("  curl -fsSL '{public}/install.sh?token=TOKEN' | sudo sh   # as root: | sh");
    } else {
        crate::outln!("This server listens on this machine only: no other machine can reach it.");
        crate::outln!("To add workers elsewhere, start it with an address they reach:");
        crate::outln!("  herd up --listen 0.0.0.0:8080 --url http://THIS-HOST:8080");
    }
    crate::outln!();
    crate::outln!(
        "Ctrl-C stops herd; running it again reuses {} (its builds, tokens and worker) and starts no build.",
        data.display()
    );

    super::stop_signal().await;
    eprintln!("stopping");
    let _ = stop_tx.send(herd_worker::Shutdown::Now);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), worker).await;
    server.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// For a server listening on every address (`0.0.0.0:PORT`) without
/// `--url`: this machine's name and the port, the best guess of how others
/// reach it.
fn every_address_url(listen: &str) -> Option<String> {
    let addr: std::net::SocketAddr = listen.parse().ok()?;
    if !addr.ip().is_unspecified() {
        return None;
    }
    let host = herd_worker::facts::gather().remove("hostname")?;
    Some(format!("http://{host}:{}", addr.port()))
}

/// Whether `url` names an address other machines can use (not loopback).
fn reachable_from_elsewhere(url: &str) -> bool {
    !herd_server::install::is_loopback_url(url)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .into_diagnostic()?;
    f.write_all(text.as_bytes()).into_diagnostic()
}

/// The git repository around the current directory, when it has a herd.yml.
fn this_repository() -> Option<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    root.join("herd.yml").exists().then_some(root)
}

fn create_example_repo(dir: &Path) -> Result<()> {
    if dir.join(".git").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).into_diagnostic()?;
    std::fs::write(dir.join("herd.yml"), EXAMPLE_PIPELINE).into_diagnostic()?;
    std::fs::write(dir.join("greeting.txt"), "hello from the herd example\n").into_diagnostic()?;
    let git = |args: &[&str]| -> Result<()> {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "herd")
            .env("GIT_AUTHOR_EMAIL", "herd@localhost")
            .env("GIT_COMMITTER_NAME", "herd")
            .env("GIT_COMMITTER_EMAIL", "herd@localhost")
            .output()
            .map_err(|e| miette!("cannot run git: {e} (install git)"))?;
        if !out.status.success() {
            return Err(miette!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    git(&["init", "-q", "-b", "main"])?;
    git(&["add", "."])?;
    git(&["commit", "-q", "-m", "Example project for herd"])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::reachable_from_elsewhere;

    #[test]
    fn loopback_and_unspecified_addresses_are_this_machine_only() {
        assert!(!reachable_from_elsewhere("http://127.0.0.1:8080"));
        assert!(!reachable_from_elsewhere("http://localhost:8080"));
        assert!(!reachable_from_elsewhere("http://[::1]:8080"));
        assert!(!reachable_from_elsewhere("http://0.0.0.0:8080"));
        assert!(reachable_from_elsewhere("http://ci.example.org:8080"));
        assert!(reachable_from_elsewhere("https://192.0.2.7"));
    }
}
