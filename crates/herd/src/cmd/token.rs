//! `herd token create|list|revoke`.

use crate::client::Client;
use crate::cmd::build::print_json;
use crate::cmd::worker::parse_labels;
use crate::{outln, ClientArgs, Output};
use clap::Subcommand;
use herd_api::tokens::{CreateToken, CreatedToken, Revoked, TokenList};
use miette::{miette, Result};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once and stored only as a hash.
    /// Its kind is one of --worker NAME, --enroll, --try, --read, --metrics.
    #[command(group(clap::ArgGroup::new("kind").required(true).args(["worker", "enroll", "try_", "read", "metrics"])))]
    Create {
        /// A worker token for the worker of this name.
        #[arg(long)]
        worker: Option<String>,
        /// An enrollment token: `curl …/install.sh?token=TOKEN | sudo sh`
        /// on a machine makes it a worker.
        #[arg(long)]
        enroll: bool,
        /// How many workers it may enroll (default: no limit).
        #[arg(long, requires = "enroll")]
        uses: Option<i64>,
        /// A try token: `herd try` sends patches to build with it.
        #[arg(long = "try", conflicts_with = "enroll")]
        try_: bool,
        /// A read-only token: a private server's pages and API, nothing else.
        #[arg(long, conflicts_with_all = ["enroll", "try_"])]
        read: bool,
        /// A token that scrapes `GET /metrics` and nothing else (for
        /// Prometheus: `authorization: {credentials: TOKEN}`).
        #[arg(long, conflicts_with_all = ["enroll", "try_", "read"])]
        metrics: bool,
        /// Try tokens: who it is for (shown on their try builds).
        #[arg(long, requires = "try_")]
        user: Option<String>,
        /// How long the token is valid, e.g. 24h or 7d (default: until
        /// revoked).
        #[arg(long)]
        expires: Option<String>,
        /// KEY=VALUE labels the enrolled workers get (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", requires = "enroll")]
        labels: Vec<String>,
        /// Who lends the machines enrolled with it: told by email when one
        /// has been offline for the server's `offline_notice`, and when it
        /// is back (the `owner` label).
        #[arg(long, value_name = "EMAIL", requires = "enroll")]
        owner: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Every token: id, kind, worker, expiry, uses left, revoked (never the secret).
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Revoke a token at once (by the id `herd token list` shows); a
    /// revoked worker is disconnected.
    Revoke {
        /// The token's id (not its secret).
        id: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

fn when(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| "-".into())
}

/// Creates a token and prints it (stdout's first line); the server's answer
/// and the token, for the hint that follows on stderr.
async fn create(client: &ClientArgs, body: &CreateToken) -> Result<(CreatedToken, String)> {
    let res: CreatedToken = Client::new(client)?.post("/api/v1/tokens", body).await?;
    let token = res.token.clone();
    outln!("{token}");
    Ok((res, token))
}

pub async fn run(cmd: TokenCommand) -> Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            try_: true,
            user,
            expires,
            client,
            ..
        } => {
            let (_, token) = create(&client, &CreateToken::Try { user, expires }).await?;
            eprintln!(
                "in a checkout with changes, run:
  HERD_SERVER={} HERD_TOKEN={token} herd try --wait",
                client.server
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Create {
            metrics: true,
            expires,
            client,
            ..
        } => {
            create(&client, &CreateToken::Metrics { expires }).await?;
            eprintln!(
                "it scrapes {}/metrics only: give it to Prometheus as `authorization: {{credentials: TOKEN}}`",
                client.server
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Create {
            read: true,
            expires,
            client,
            ..
        } => {
            create(&client, &CreateToken::Read { expires }).await?;
            eprintln!("it reads only: pass it as `Authorization: Bearer TOKEN` or HERD_TOKEN");
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Create {
            worker: Some(worker),
            enroll: false,
            expires,
            client,
            ..
        } => {
            let (_, token) = create(
                &client,
                &CreateToken::Worker {
                    worker: worker.clone(),
                    expires,
                },
            )
            .await?;
            eprintln!(
                "start the worker with:\n  herd worker --server {} --token {token} --name {worker}",
                client.server
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Create {
            uses,
            expires,
            labels,
            owner,
            client,
            ..
        } => {
            let mut labels = parse_labels(&labels)?;
            if let Some(owner) = owner {
                if !is_email(&owner) {
                    return Err(miette::miette!(
                        "--owner {owner}: give the owner's email address, e.g. --owner alice@example.org"
                    ));
                }
                labels.insert("owner".into(), owner);
            }
            let (res, token) = create(
                &client,
                &CreateToken::Enroll {
                    uses,
                    expires,
                    labels: Some(labels),
                },
            )
            .await?;
            let server = client.server.trim_end_matches('/');
            let install = res.install.unwrap_or_else(|| {
                format!("curl -fsSL '{server}/install.sh?token={token}' | sudo sh")
            });
            let as_root = install
                .strip_suffix(" | sudo sh")
                .map(|c| format!("{c} | sh"));
            eprintln!(
                "on the machine to lend, run:\n  {install}\n{}\
                 (as another user without sudo it installs for that user). It creates the service user `herd`,\n\
                 checks git, a shell, disk and the clock, downloads herd, registers, detects capabilities,\n\
                 installs a service that starts at boot, and waits until the worker is online.",
                as_root
                    .map(|c| format!("or, as root where there is no sudo (a container):\n  {c}\n"))
                    .unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List { client } => {
            let c = Client::new(&client)?;
            let res: TokenList = c.get("/api/v1/tokens").await?;
            if client.output == Output::Json {
                print_json(&res)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{:<18} {:<7} {:<16} {:<17} {:<17} {:<11} REVOKED",
                "ID",
                "KIND",
                "WORKER",
                "CREATED",
                "EXPIRES",
                "USES LEFT"
            );
            for t in &res.tokens {
                outln!(
                    "{:<18} {:<7} {:<16} {:<17} {:<17} {:<11} {}",
                    t.id,
                    t.kind,
                    t.worker.as_deref().unwrap_or("-"),
                    when(Some(t.created_at)),
                    when(t.expires_at),
                    uses_left(t.kind.as_str(), t.uses_left),
                    when(t.revoked_at),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, client } => {
            let c = Client::new(&client)?;
            let _: Revoked = c.act(&format!("/api/v1/tokens/{id}/revoke")).await?;
            eprintln!("revoked token {id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What the USES LEFT column says: only enrollment tokens are used up.
fn uses_left(kind: &str, left: Option<i64>) -> String {
    match (kind, left) {
        ("enroll", None) => "unlimited".into(),
        ("enroll", Some(0)) => "0 (used)".into(),
        (_, Some(n)) => n.to_string(),
        (_, None) => "-".into(),
    }
}

/// `herd hash-password`: the argon2 hash of the password on standard input.
pub fn hash_password() -> Result<ExitCode> {
    use argon2::PasswordHasher;
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .map_err(|e| miette!("cannot read the password from standard input: {e}"))?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.len() < 8 {
        return Err(miette!(
            "the password is shorter than 8 characters: choose a longer one"
        ));
    }
    let mut salt = [0u8; 16];
    rand::fill(&mut salt[..]);
    let hash = argon2::Argon2::default()
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map_err(|e| miette!("cannot hash: {e}"))?;
    outln!("{hash}");
    Ok(ExitCode::SUCCESS)
}

/// An address the server can mail (and nothing a header could be made of).
pub fn is_email(a: &str) -> bool {
    a.len() <= 254
        && a.split_once('@').is_some_and(|(l, h)| {
            !l.is_empty() && h.contains('.') && !h.starts_with('.') && !h.ends_with('.')
        })
        && !a.contains(|c: char| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c))
}
