//! Test harness: the real `herd` binary as server and workers on 127.0.0.1,
//! each test with its own data directory, port and git repositories.
//! Processes are stopped by their own PIDs when the handles drop.
#![allow(dead_code)]

pub mod forge;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub const HERD: &str = env!("CARGO_BIN_EXE_herd");

pub struct Server {
    pub url: String,
    pub data: PathBuf,
    pub token: String,
    child: Child,
    pub dir: TempDir,
    args: Vec<String>,
    /// The PostgreSQL database this server uses, dropped with it.
    pub database: Option<String>,
    /// The pin of its TLS key, when it serves https.
    pub pin: Option<String>,
    /// Its limit of open files (soft and hard), when the test sets one.
    open_files: Option<u64>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_pipelines(&[], extra)
    }

    /// A server whose config declares projects without repositories, each
    /// with its pipeline inline.
    pub fn start_with_pipelines(projects: &[(&str, &str)], extra: &[&str]) -> Server {
        let mut config = String::new();
        if !projects.is_empty() {
            config.push_str("projects:\n");
            for (name, pipeline) in projects {
                config.push_str(&format!("  {name}:\n    pipeline: |\n"));
                for line in pipeline.lines() {
                    config.push_str(&format!("      {line}\n"));
                }
            }
        }
        Self::start_with_config(&config, extra)
    }

    /// A server with this config file (none when empty).
    pub fn start_with_config(config: &str, extra: &[&str]) -> Server {
        // HERD_TEST_BACKEND=postgres: the same tests, each server on a
        // fresh PostgreSQL database.
        let database = (std::env::var("HERD_TEST_BACKEND").as_deref() == Ok("postgres"))
            .then(fresh_postgres_database);
        Self::launch(config, extra, database, None)
    }

    /// A server on SQLite (whatever HERD_TEST_BACKEND says).
    pub fn start_on_sqlite(config: &str, extra: &[&str]) -> Server {
        Self::launch(config, extra, None, None)
    }

    /// A server that may open at most `n` files (soft and hard limit), as
    /// on a machine with a low `ulimit -n`.
    pub fn start_with_open_files(config: &str, extra: &[&str], n: u64) -> Server {
        Self::launch_limited(config, extra, None, None, Some(n))
    }

    /// A server on this database, presenting this admin token.
    pub fn start_with_database(config: &str, database: &str, token: &str) -> Server {
        Self::launch(
            config,
            &[],
            Some(database.to_string()),
            Some(token.to_string()),
        )
    }

    /// A server on SQLite on this data directory (a restored backup): its
    /// admin token is the one in it.
    pub fn start_on_data(data: &Path) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let (child, url) = spawn_server(data, "127.0.0.1:0", &[], None);
        let token = std::fs::read_to_string(data.join("admin-token"))
            .expect("admin token in the data directory")
            .trim()
            .to_string();
        Server {
            url,
            data: data.to_path_buf(),
            token,
            child,
            dir,
            args: Vec::new(),
            database: None,
            pin: None,
            open_files: None,
        }
    }

    /// A server on a fresh PostgreSQL database (whatever HERD_TEST_BACKEND says).
    pub fn start_on_postgres(config: &str, extra: &[&str]) -> Server {
        Self::launch(config, extra, Some(fresh_postgres_database()), None)
    }

    /// Another server on `first`'s database (its admin token works here too).
    /// The database stays `first`'s to drop.
    pub fn start_sharing(first: &Server, config: &str, extra: &[&str]) -> Server {
        let url = first
            .database
            .clone()
            .expect("the first server is on PostgreSQL");
        let mut s = Self::launch(config, extra, Some(url), Some(first.token.clone()));
        s.database = None;
        s
    }

    fn launch(
        config: &str,
        extra: &[&str],
        database: Option<String>,
        token: Option<String>,
    ) -> Server {
        Self::launch_limited(config, extra, database, token, None)
    }

    fn launch_limited(
        config: &str,
        extra: &[&str],
        database: Option<String>,
        token: Option<String>,
        open_files: Option<u64>,
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(url) = &database {
            args.push("--database".into());
            args.push(url.clone());
        }
        if !config.is_empty() {
            let path = dir.path().join("herd-server.yml");
            std::fs::write(&path, config).expect("write config");
            args.push("--config".into());
            args.push(path.display().to_string());
        }
        let (child, url) = spawn_server(&data, "127.0.0.1:0", &args, open_files);
        let token = token.unwrap_or_else(|| {
            std::fs::read_to_string(data.join("admin-token"))
                .expect("admin token written on first start")
                .trim()
                .to_string()
        });
        let pin = url.starts_with("https://").then(|| tls_pin_of(&data));
        Server {
            url,
            data,
            token,
            child,
            dir,
            args,
            database,
            pin,
            open_files,
        }
    }

    /// kill -9, then start again on the same port and data.
    pub fn kill_and_restart(&mut self) {
        self.kill9();
        self.start_again();
    }

    /// Starts the stopped server again on the same port and data.
    fn start_again(&mut self) {
        let addr = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, a)| a)
            .to_string();
        let (child, url) = spawn_server(&self.data, &addr, &self.args, self.open_files);
        assert_eq!(url, self.url);
        self.child = child;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (a graceful stop, as for an upgrade), then start again on
    /// the same port and data.
    pub fn stop_and_restart(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        self.start_again();
    }

    /// kill -9, no restart.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs a `herd` client command against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(HERD);
        cmd.args(args)
            .env("HERD_SERVER", &self.url)
            .env("HERD_TOKEN", &self.token)
            .current_dir(self.dir.path());
        if let Some(pin) = &self.pin {
            cmd.env("HERD_TLS_PIN", pin);
        }
        cmd.output().expect("run herd")
    }

    /// An HTTP client that trusts this server (its pin, for https).
    pub fn client(&self) -> reqwest::Client {
        let mut b = http();
        if let Some(pin) = &self.pin {
            b = b.tls_backend_preconfigured(herd_tls::client::config(Some(pin)).expect("pin"));
        }
        b.build().expect("http client")
    }

    pub fn worker(&self, name: &str, slots: u32, labels: &[&str]) -> Worker {
        self.worker_with_env(name, slots, labels, &[])
    }

    /// A worker with extra environment (a PATH with fake tools, say).
    pub fn worker_with_env(
        &self,
        name: &str,
        slots: u32,
        labels: &[&str],
        env: &[(&str, String)],
    ) -> Worker {
        let token = self.worker_token(name);
        let workdir = self.dir.path().join(format!("work-{name}"));
        let mut env = env.to_vec();
        if let Some(pin) = &self.pin {
            env.push(("HERD_TLS_PIN", pin.clone()));
        }
        let w = Worker::spawn_with_env(&self.url, &token, name, &workdir, slots, labels, &env);
        self.wait_online(name);
        w
    }

    /// A worker started with extra command-line arguments (`--probe …`).
    pub fn worker_with_args(&self, name: &str, args: &[&str]) -> Worker {
        self.worker_with_slots_and_args(name, 1, args)
    }

    pub fn worker_with_slots_and_args(&self, name: &str, slots: u32, args: &[&str]) -> Worker {
        let token = self.worker_token(name);
        let workdir = self.dir.path().join(format!("work-{name}"));
        let mut env = Vec::new();
        if let Some(pin) = &self.pin {
            env.push(("HERD_TLS_PIN", pin.clone()));
        }
        let w = Worker::spawn_full(&self.url, &token, name, &workdir, slots, &[], &env, args);
        self.wait_online(name);
        w
    }

    pub fn worker_token(&self, name: &str) -> String {
        let out = self.cli(&["token", "create", "--worker", name]);
        assert!(
            out.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn wait_online(&self, name: &str) {
        wait_until(
            Duration::from_secs(20),
            &format!("worker {name} online"),
            || {
                let w = self.get(&format!("/api/v1/workers/{name}")).ok()?;
                (w["online"] == true).then_some(())
            },
        );
    }

    pub fn get(&self, path: &str) -> Result<Value, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let res = self
                .client()
                .get(format!("{}{path}", self.url))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = res.status();
            let v: Value = res.json().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(v)
            } else {
                Err(format!("{status}: {v}"))
            }
        })
    }

    /// The body of a GET as text (for answers that are not JSON).
    pub fn get_text(&self, path: &str) -> Result<String, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let res = self
                .client()
                .get(format!("{}{path}", self.url))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = res.status();
            let text = res.text().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(text)
            } else {
                Err(format!("{status}: {text}"))
            }
        })
    }

    pub fn post(&self, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut req = self
                .client()
                .post(format!("{}{path}", self.url))
                .json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.expect("post");
            let status = res.status().as_u16();
            (status, res.json().await.unwrap_or(json!(null)))
        })
    }

    /// Starts a build through the CLI and returns its id.
    pub fn start_build(&self, project: &str, extra: &[&str]) -> i64 {
        let mut args = vec!["build", "start", project];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "build start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .expect("build id on the first line")
    }

    pub fn build(&self, id: i64) -> Value {
        self.get(&format!("/api/v1/builds/{id}"))
            .expect("get build")
    }

    pub fn wait_build(&self, id: i64, limit: Duration) -> Value {
        wait_until(limit, &format!("build {id} to finish"), || {
            let b = self.build(id);
            (!matches!(b["state"].as_str(), Some("queued") | Some("running"))).then_some(b)
        })
    }

    pub fn job<'a>(&self, build: &'a Value, builder: &str, job: &str) -> &'a Value {
        build["jobs"]
            .as_array()
            .and_then(|jobs| {
                jobs.iter()
                    .find(|j| j["builder"] == builder && j["name"] == job)
            })
            .unwrap_or_else(|| panic!("no job {builder}/{job} in {build}"))
    }

    /// Full output of one step of a job's last attempt, via the CLI.
    pub fn step_log(&self, build: i64, job: &str, step: &str) -> Vec<u8> {
        let out = self.cli(&[
            "build",
            "log",
            &build.to_string(),
            "--job",
            job,
            "--step",
            step,
        ]);
        assert!(
            out.status.success(),
            "build log: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

/// Where a server's log goes: beside its data (shown when a test fails).
pub fn server_log(data: &Path) -> PathBuf {
    data.with_extension("log")
}

fn spawn_server(
    data: &Path,
    listen: &str,
    extra: &[String],
    open_files: Option<u64>,
) -> (Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(server_log(data))
        .expect("server log");
    // prlimit sets the limit and execs herd: the child's PID is herd's.
    let mut cmd = match open_files {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(HERD);
            c
        }
        None => Command::new(HERD),
    };
    let mut child = cmd
        .args(["server", "--listen", listen, "--data"])
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn herd server");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("server prints its address");
    let url = line.trim().to_string();
    assert!(
        url.starts_with("http://127.0.0.1:") || url.starts_with("https://127.0.0.1:"),
        "server said {url:?}"
    );
    (child, url)
}

/// The pin of the certificate a `--tls self-signed` server keeps in DATA/tls.
pub fn tls_pin_of(data: &Path) -> String {
    let pem = std::fs::read(data.join("tls/cert.pem")).expect("DATA/tls/cert.pem");
    let der = rustls::pki_types::pem::PemObject::pem_slice_iter(&pem)
        .next()
        .expect("a certificate")
        .expect("PEM");
    let der: rustls::pki_types::CertificateDer = der;
    herd_tls::spki_pin(&der).expect("pin")
}

impl Server {
    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(server_log(&self.data)).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of the server at {} ---\n{}", self.url, self.log());
        }
        if let Some(url) = &self.database {
            drop_postgres_database(url);
        }
    }
}

/// Drops a database made by [`fresh_postgres_database`].
pub fn drop_postgres_database(url: &str) {
    if let Some((_, name)) = url.rsplit_once('/') {
        let _ = Command::new("psql")
            .args([
                &format!("{}/postgres", postgres_base()),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            ])
            .output();
    }
}

pub struct Worker {
    pub name: String,
    pub child: Child,
    pub workdir: PathBuf,
    /// Its standard error (its log), printed when a test fails.
    log: PathBuf,
}

impl Worker {
    pub fn spawn(
        url: &str,
        token: &str,
        name: &str,
        workdir: &Path,
        slots: u32,
        labels: &[&str],
    ) -> Worker {
        Self::spawn_with_env(url, token, name, workdir, slots, labels, &[])
    }

    pub fn spawn_with_env(
        url: &str,
        token: &str,
        name: &str,
        workdir: &Path,
        slots: u32,
        labels: &[&str],
        env: &[(&str, String)],
    ) -> Worker {
        Self::spawn_full(url, token, name, workdir, slots, labels, env, &[])
    }

    #[allow(clippy::too_many_arguments)]
    pub fn spawn_full(
        url: &str,
        token: &str,
        name: &str,
        workdir: &Path,
        slots: u32,
        labels: &[&str],
        env: &[(&str, String)],
        args: &[&str],
    ) -> Worker {
        let cmd = Command::new(HERD);
        Self::launch(cmd, url, token, name, workdir, slots, labels, env, args)
    }

    /// A worker running as user and group `id` (no other groups), its
    /// workdir (and HOME) owned by it.
    pub fn spawn_as(
        id: u32,
        url: &str,
        token: &str,
        name: &str,
        workdir: &Path,
        args: &[&str],
    ) -> Worker {
        std::fs::create_dir_all(workdir).expect("workdir");
        let owner = Some(nix::unistd::Uid::from_raw(id));
        nix::unistd::chown(workdir, owner, Some(nix::unistd::Gid::from_raw(id))).expect("chown");
        let mut cmd = Command::new("setpriv");
        cmd.args([
            format!("--reuid={id}"),
            format!("--regid={id}"),
            "--clear-groups".into(),
            "--".into(),
            HERD.into(),
        ]);
        let home = [("HOME", workdir.display().to_string())];
        Self::launch(cmd, url, token, name, workdir, 1, &[], &home, args)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        mut cmd: Command,
        url: &str,
        token: &str,
        name: &str,
        workdir: &Path,
        slots: u32,
        labels: &[&str],
        env: &[(&str, String)],
        args: &[&str],
    ) -> Worker {
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args([
            "worker",
            "--server",
            url,
            "--token",
            token,
            "--name",
            name,
            "--slots",
            &slots.to_string(),
            "--workdir",
        ])
        .arg(workdir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null());
        // Beside the workdir: a worker may be restarted on the same one.
        std::fs::create_dir_all(workdir).expect("workdir");
        let log = workdir.with_extension(format!("{}.log", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("worker log");
        cmd.stderr(file);
        for l in labels {
            cmd.args(["--label", l]);
        }
        cmd.args(args);
        Worker {
            name: name.to_string(),
            child: cmd.spawn().expect("spawn herd worker"),
            workdir: workdir.to_path_buf(),
            log,
        }
    }

    /// What the worker has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the worker's log says `text`.
    pub fn wait_log(&self, text: &str) {
        wait_until(
            Duration::from_secs(20),
            &format!("worker {} to log `{text}`", self.name),
            || self.log().contains(text).then_some(()),
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of worker {} ---\n{}", self.name, self.log());
        }
    }
}

/// Where tests find PostgreSQL (`HERD_TEST_POSTGRES`, default the local
/// server with trust auth).
pub fn postgres_base() -> String {
    std::env::var("HERD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// Creates an empty database for one test and returns its URL.
pub fn fresh_postgres_database() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "herd_test_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let base = postgres_base();
    let out = Command::new("psql")
        .args([
            &format!("{base}/postgres"),
            "-q",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("run psql (install postgresql-client)");
    assert!(
        out.status.success(),
        "create database {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("{base}/{name}")
}

/// Polls `f` until it gives a value, at most `limit`, every 50 ms.
/// A command's stdout and stderr, for assertions and their messages.
pub fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn wait_until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A git repository with the given files, committed; returns its path.
pub fn git_repo(root: &Path, name: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir repo");
    run_git(&dir, &["init", "-q", "-b", "main"]);
    commit(&dir, files, "initial");
    dir
}

pub fn commit(dir: &Path, files: &[(&str, &[u8])], message: &str) -> String {
    for (path, content) in files {
        let p = dir.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write file");
    }
    run_git(dir, &["add", "-A"]);
    run_git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    String::from_utf8_lossy(&run_git(dir, &["rev-parse", "HEAD"]).stdout)
        .trim()
        .to_string()
}

pub fn run_git(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@localhost")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@localhost")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // The state follows the command name in parentheses.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            state != Some("Z")
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), for byte-exact log checks.
pub fn pseudo_random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A TCP proxy on 127.0.0.1 that can go silent: while stalled it forwards
/// nothing and accepts nothing, without closing anything (a network that
/// drops traffic), then carries on.
pub struct Proxy {
    pub url: String,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Per direction (to the target, back): a chunk read while stalled
    /// waits to be written.
    held: std::sync::Arc<[std::sync::atomic::AtomicBool; 2]>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    pub fn start(target_url: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let target = target_url.trim_start_matches("http://").to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let stalled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let flag = std::sync::Arc::clone(&stalled);
        let held: std::sync::Arc<[std::sync::atomic::AtomicBool; 2]> = std::sync::Arc::new([
            std::sync::atomic::AtomicBool::new(false),
            std::sync::atomic::AtomicBool::new(false),
        ]);
        let held_by_tasks = std::sync::Arc::clone(&held);
        runtime.spawn(async move {
            loop {
                while flag.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                for (direction, (mut from, mut to)) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(uw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(ur), Box::new(cw)),
                ]
                .into_iter()
                .enumerate()
                {
                    let flag = std::sync::Arc::clone(&flag);
                    let held = std::sync::Arc::clone(&held_by_tasks);
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            while flag.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            match from.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    while flag.load(Ordering::SeqCst) {
                                        held[direction].store(true, Ordering::SeqCst);
                                        tokio::time::sleep(Duration::from_millis(10)).await;
                                    }
                                    if to.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown().await;
                    });
                }
            }
        });
        Proxy {
            url: format!("http://{addr}"),
            stalled,
            held,
            _runtime: runtime,
        }
    }

    pub fn stall(&self, on: bool) {
        if on {
            for h in self.held.iter() {
                h.store(false, std::sync::atomic::Ordering::SeqCst);
            }
        }
        self.stalled.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether traffic of both directions is held up by the stall.
    pub fn holds_both_ways(&self) -> bool {
        self.held
            .iter()
            .all(|h| h.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// An HTTP client builder. The workspace's reqwest uses rustls without a
/// built-in crypto provider: install ring once per process, as `herd` does.
pub fn http() -> reqwest::ClientBuilder {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http().build()?.get(url).send().await
}

// The worker protocol, spoken by hand.

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

pub async fn connect(url: &str, token: Option<&str>) -> Result<WsStream, String> {
    let ws_url = format!(
        "{}{}",
        url.replace("http://", "ws://"),
        "/api/v1/worker/connect"
    );
    let mut req = ws_url.into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| e.to_string())
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Reads until the server closes; returns the text messages it sent.
pub async fn drain(ws: &mut WsStream) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await {
        match m {
            Message::Text(t) => got.push(serde_json::from_str(&t).unwrap_or(json!(t.to_string()))),
            Message::Close(_) => break,
            _ => {}
        }
    }
    got
}

pub fn hello() -> Message {
    Message::Text(
        json!({"type": "hello", "protocols": [1], "version": "test", "slots": 1})
            .to_string()
            .into(),
    )
}

/// A directory of fake tools: `python3` printing the version in
/// `python-version`, and `pkg-config` knowing only the given libraries.
pub fn fake_tools(dir: &Path, python: &str, libs: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("python-version"), python).unwrap();
    let python3 = format!(
        "#!/bin/sh\necho \"Python $(cat {}/python-version)\"\n",
        dir.display()
    );
    let mut pkg = String::from("#!/bin/sh\n[ \"$1\" = --modversion ] || exit 2\ncase \"$2\" in\n");
    for (lib, version) in libs {
        pkg.push_str(&format!("  {lib}) echo {version}; exit 0;;\n"));
    }
    pkg.push_str(
        "esac\necho \"Package $2 was not found in the pkg-config search path.\" >&2\nexit 1\n",
    );
    for (name, text) in [("python3", python3), ("pkg-config", pkg)] {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(&p)
            .status()
            .unwrap();
    }
    format!("{}:/usr/bin:/bin", dir.display())
}
