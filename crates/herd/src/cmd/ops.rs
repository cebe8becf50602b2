//! Operating a server: `herd gc` (the janitor now, or what it would
//! remove), `herd backup` / `herd restore` (SQLite data directories) and
//! `herd server reload`.

use crate::client::Client;
use crate::cmd::build::print_json;
use crate::{outln, ClientArgs, Output};
use clap::Args;
use herd_api::ops::{GcReport, GcRequest, ReloadReport};
use herd_server::backup::{self, DataPaths};
use miette::{miette, Result};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct GcArgs {
    /// Only print what would go; remove nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    client: ClientArgs,
}

fn ids(v: &[i64]) -> String {
    match v {
        [] => "none".into(),
        [one] => one.to_string(),
        _ if v.len() <= 12 => v.iter().map(i64::to_string).collect::<Vec<_>>().join(" "),
        _ => format!(
            "{} builds, {} … {}",
            v.len(),
            v.first().copied().unwrap_or_default(),
            v.last().copied().unwrap_or_default()
        ),
    }
}

pub async fn gc(args: GcArgs) -> Result<ExitCode> {
    let c = Client::new(&args.client)?;
    let r: GcReport = c
        .post(
            "/api/v1/gc",
            &GcRequest {
                dry_run: args.dry_run,
            },
        )
        .await?;
    if args.client.output == Output::Json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.busy {
        outln!("another server sharing the database is running the janitor now; nothing done here");
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    if r.projects.is_empty() {
        outln!(
            "nothing to remove: every project keeps all it has ({} ms)",
            r.took_ms
        );
    }
    for p in &r.projects {
        outln!("{} ({}):", p.project, p.keep);
        outln!("  {verb} builds: {}", ids(&p.builds));
        if !p.logs.is_empty() {
            outln!("  {verb} the logs of builds: {}", ids(&p.logs));
        }
        if !p.artifacts.is_empty() {
            outln!("  {verb} the artifacts of builds: {}", ids(&p.artifacts));
        }
        outln!(
            "  {} of logs, {} of artifacts",
            herd_core::size::human_bytes(p.log_bytes),
            herd_core::size::human_bytes(p.artifact_bytes)
        );
    }
    if !r.dry_run {
        outln!(
            "{} artifact files ({}) removed, {} old records, in {} ms",
            r.files_removed,
            herd_core::size::human_bytes(r.file_bytes),
            r.bookkeeping,
            r.took_ms
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct BackupArgs {
    /// The file to write (a zstd-compressed tar; it holds the admin token,
    /// so it is made readable by you only).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// The server's data directory.
    #[arg(long, default_value = "herd-data")]
    data: PathBuf,
    /// The SQLite file, when the server's `database:` puts it elsewhere.
    #[arg(long)]
    database: Option<PathBuf>,
    /// The artifact directory, when the server's `artifacts_dir:` puts it
    /// elsewhere.
    #[arg(long)]
    artifacts_dir: Option<PathBuf>,
}

pub async fn backup(args: BackupArgs) -> Result<ExitCode> {
    let paths = DataPaths::new(
        &args.data,
        args.database.as_deref(),
        args.artifacts_dir.as_deref(),
    );
    let s = backup::backup(&paths, &args.to)
        .await
        .map_err(|e| miette!("backup failed: {e}"))?;
    outln!(
        "wrote {}: database {}, {} artifact files ({}){}",
        args.to.display(),
        herd_core::size::human_bytes(s.database_bytes),
        s.artifact_files,
        herd_core::size::human_bytes(s.artifact_bytes),
        if s.other_files.is_empty() {
            String::new()
        } else {
            format!(", {}", s.other_files.join(", "))
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A file written by `herd backup`.
    file: PathBuf,
    /// An empty (or new) data directory to restore into.
    #[arg(long)]
    data: PathBuf,
}

pub fn restore(args: RestoreArgs) -> Result<ExitCode> {
    let s = backup::restore(&args.file, &args.data).map_err(|e| miette!("restore failed: {e}"))?;
    outln!(
        "restored into {}: database {}, {} artifact files ({}); start it with `herd server --data {}`",
        args.data.display(),
        herd_core::size::human_bytes(s.database_bytes),
        s.artifact_files,
        herd_core::size::human_bytes(s.artifact_bytes),
        args.data.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `herd server reload`: the running server rereads its config file.
pub async fn reload(client: &ClientArgs) -> Result<ExitCode> {
    let c = Client::new(client)?;
    let r: ReloadReport = c.act("/api/v1/reload").await?;
    if client.output == Output::Json {
        print_json(&r)?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("reloaded {}: {} projects", r.file, r.projects.len());
    for c in &r.changes {
        outln!("  {c}");
    }
    Ok(ExitCode::SUCCESS)
}
