//! `herd migrate`: move a SQLite data directory's database into PostgreSQL.

use clap::Args;
use herd_server::store::Store;
use miette::{miette, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct MigrateArgs {
    /// The data directory whose `herd.db` to copy (stop its server first).
    #[arg(long, default_value = "herd-data")]
    data: PathBuf,
    /// The SQLite file, when not DATA/herd.db.
    #[arg(long)]
    from: Option<PathBuf>,
    /// The PostgreSQL database to fill: empty, e.g. made with `createdb herd`.
    #[arg(long, value_name = "postgres://…")]
    to: String,
}

pub async fn run(args: MigrateArgs) -> Result<ExitCode> {
    let from = args.from.unwrap_or_else(|| args.data.join("herd.db"));
    if !from.exists() {
        return Err(miette!(
            "no SQLite database at {}\n  help: give the server's data directory with --data, or the file with --from",
            from.display()
        ));
    }
    if !herd_server::store::is_postgres_url(&args.to) {
        return Err(miette!(
            "--to must be a postgres:// URL, e.g. postgres://herd@db.example.org/herd"
        ));
    }
    let source = Store::open_sqlite(&from)
        .await
        .map_err(|e| miette!("cannot open {}: {e}", from.display()))?;
    let target = Store::open_postgres(&args.to)
        .await
        .map_err(|e| miette!("cannot open the PostgreSQL database: {e}"))?;
    let copied = source
        .copy_into(&target)
        .await
        .map_err(|e| miette!("{e}\n  nothing was written (one transaction)"))?;
    for (table, rows) in &copied {
        eprintln!("{table:<16} {rows:>8} rows");
    }
    eprintln!(
        "done: start the servers with --database and that URL; the admin token in {} still works",
        args.data.join(herd_server::ADMIN_TOKEN_FILE).display()
    );
    source.close().await;
    target.close().await;
    Ok(ExitCode::SUCCESS)
}
