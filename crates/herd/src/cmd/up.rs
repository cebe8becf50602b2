//! `herd up`: a server with embedded SQLite, one local worker, an example
//! project (a small git repository it creates) and this repository when it
//! has a herd.yml; starts a first build and says where to look.

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
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
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
    crate::init_logging("warn");
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
        public_url: None,
        database: None,
        tls: Default::default(),
        conn_limits: Default::default(),
        artifacts_dir: None,
    })
    .await
    .map_err(|e| miette!("{e}"))?;
    let url = format!("http://{}", server.addr);

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
        },
        stop_rx,
    ));
    let build = start_build(
        &server.app,
        BuildRequest {
            project: "example".into(),
            builder: None,
            rev: None,
            priority: 0,
            reason: Some("herd up".into()),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| miette!("could not start the first build: {e}"))?;

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
    crate::outln!("First build: {build}. Follow it with:");
    crate::outln!("  herd build log {build} --follow");
    crate::outln!("Start another:");
    crate::outln!("  herd build start example --wait");
    crate::outln!("Add a worker on another machine:");
    crate::outln!("  herd token create --worker NAME          # prints TOKEN");
    crate::outln!("  herd worker --server {url} --token TOKEN");
    crate::outln!();
    crate::outln!(
        "Ctrl-C stops herd; running it again reuses {}.",
        data.display()
    );

    super::stop_signal().await;
    eprintln!("stopping");
    let _ = stop_tx.send(herd_worker::Shutdown::Now);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), worker).await;
    server.stop().await;
    Ok(ExitCode::SUCCESS)
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
