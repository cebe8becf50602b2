//! `herd`: one binary that is the server, the worker and the client.

mod client;
mod cmd;
mod exit_codes;
mod out;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "A build master and a herd of build workers",
    after_help = exit_codes::HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server, a local worker and an example project: the quickest start.
    Up(cmd::up::UpArgs),
    /// Run the server: HTTP API, worker endpoint and web page on one port.
    Server(cmd::server::ServerArgs),
    /// Run a worker that connects out to a server and runs its jobs.
    Worker(cmd::worker::WorkerArgs),
    /// Validate a herd.yml without a server.
    Check {
        /// The file to check (default: ./herd.yml).
        file: Option<PathBuf>,
    },
    /// Start, show, follow and cancel builds.
    #[command(subcommand)]
    Build(cmd::build::BuildCommand),
    /// Copy a SQLite data directory's database into PostgreSQL (for
    /// several servers on one database).
    Migrate(cmd::migrate::MigrateArgs),
    /// Projects: what they watch, polling state, recent changes.
    #[command(subcommand)]
    Project(cmd::project::ProjectCommand),
    /// Approve a pull request's change that waits for approval.
    #[command(subcommand)]
    Change(cmd::change::ChangeCommand),
    /// Build this checkout's changes without pushing them (a try build).
    Try(cmd::try_patch::TryArgs),
    /// List the workers, show one with its capabilities, ask for new probes.
    Workers(cmd::workers::WorkersArgs),
    /// Create, list and revoke tokens.
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// Remove what the projects' `keep:` lets go now (the server's janitor
    /// does it hourly); --dry-run prints what would go.
    Gc(cmd::ops::GcArgs),
    /// Copy a running SQLite server's data (database, artifacts, TLS files,
    /// admin token) into one file.
    Backup(cmd::ops::BackupArgs),
    /// Unpack a `herd backup` file into a new data directory.
    Restore(cmd::ops::RestoreArgs),
    /// Hash a password (read from standard input) for `users:` in the
    /// server config: web sign-in without the admin token.
    HashPassword,
    /// Print a shell completion script: `herd completions bash > /etc/bash_completion.d/herd`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Internal: stops a dead worker's steps (started by the worker).
    #[command(name = "__reaper", hide = true)]
    Reaper,
    /// Internal: answers git's credential prompt for the server (`GIT_ASKPASS`).
    #[command(name = "__askpass", hide = true)]
    Askpass { prompt: Option<String> },
}

/// Where the server is and which token to present.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// Server address.
    #[arg(
        long,
        env = "HERD_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Token for calls that change state (default: ./herd-data/admin-token when present).
    #[arg(long, env = "HERD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// The server's TLS pin (`sha256//…`, printed by `herd server`), for an
    /// https server with a self-signed certificate.
    #[arg(long, env = "HERD_TLS_PIN", global = true)]
    pub tls_pin: Option<String>,
    /// How read commands print: `human` (tables) or `json` (the API's
    /// types, one document).
    #[arg(long, value_enum, default_value_t = Output::Human, global = true)]
    pub output: Output,
}

/// How read commands print what they read.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Human,
    Json,
}

fn main() -> ExitCode {
    // One TLS crypto provider (ring) for every client and server in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else is a usage error.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit_codes::USAGE
            } else {
                exit_codes::SUCCESS
            });
        }
    };
    if let Command::Askpass { prompt } = &cli.command {
        // git asks for the user, then the password; nothing else is answered.
        let var = match prompt.as_deref() {
            Some(p) if p.starts_with("Username") => herd_server::git::ASKPASS_USER,
            Some(p) if p.starts_with("Password") => herd_server::git::ASKPASS_TOKEN,
            _ => return ExitCode::from(exit_codes::ERROR),
        };
        return match std::env::var(var) {
            Ok(v) => {
                out::write(format_args!("{v}"), true);
                ExitCode::SUCCESS
            }
            Err(_) => ExitCode::from(exit_codes::ERROR),
        };
    }
    if let Command::Reaper = cli.command {
        // No runtime needed: read the worker's pipe until it closes.
        herd_worker::reaper::run_reaper(std::io::stdin().lock(), herd_worker::process::KILL_GRACE);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herd: cannot start the async runtime: {e}");
            return ExitCode::from(exit_codes::ERROR);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Up(a) => cmd::up::run(a).await,
            Command::Server(a) => cmd::server::run(a).await,
            Command::Worker(a) => cmd::worker::run(a).await,
            Command::Check { file } => cmd::check::run(file),
            Command::Build(c) => cmd::build::run(c).await,
            Command::Workers(a) => cmd::workers::run(a).await,
            Command::Project(c) => cmd::project::run(c).await,
            Command::Change(c) => cmd::change::run(c).await,
            Command::Migrate(a) => cmd::migrate::run(a).await,
            Command::Try(a) => cmd::try_patch::run(a).await,
            Command::Token(c) => cmd::token::run(c).await,
            Command::Gc(a) => cmd::ops::gc(a).await,
            Command::Backup(a) => cmd::ops::backup(a).await,
            Command::Restore(a) => cmd::ops::restore(a),
            Command::HashPassword => cmd::token::hash_password(),
            Command::Completions { shell } => {
                let mut command = <Cli as clap::CommandFactory>::command();
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut command, "herd", &mut script);
                out::bytes(&script);
                Ok(ExitCode::SUCCESS)
            }
            Command::Reaper | Command::Askpass { .. } => Ok(ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(report) => {
            let code = report
                .downcast_ref::<client::ClientError>()
                .map_or(exit_codes::ERROR, client::ClientError::exit_code);
            // A server's error may quote what a build said.
            errln!("error: {report}");
            ExitCode::from(code)
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default level.
/// How the server and the worker write their log (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors: `timestamp`, `level`,
    /// `message`, the event's fields (`build`, `attempt`, `worker` …) and
    /// the current `span`'s (a worker's job: `build`, `attempt`).
    Json,
}

pub fn init_logging(default: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
