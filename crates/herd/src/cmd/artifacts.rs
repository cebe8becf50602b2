//! `herd build artifacts ID [--job J] [-o DIR]`: list a build's artifacts,
//! or download them.

use crate::client::Client;
use crate::Output;
use herd_api::artifacts::{Artifact, ArtifactList};
use miette::{miette, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Whether artifact `a` belongs to what `--job` names: `builder/job` (a
/// split job: all its shards), or `builder` (all its jobs).
fn of_job(a: &Artifact, job: &str) -> bool {
    let (builder, _) = a.job.split_once('/').unwrap_or((&a.job, ""));
    a.job == job
        || builder == job
        || a.job
            .strip_prefix(job)
            .is_some_and(|rest| rest.starts_with('#'))
}

pub async fn run(
    c: &Client,
    id: i64,
    job: Option<&str>,
    dir: Option<&Path>,
    output: Output,
) -> Result<ExitCode> {
    let list: ArtifactList = c.get(&format!("/api/v1/builds/{id}/artifacts")).await?;
    let chosen: Vec<&Artifact> = list
        .artifacts
        .iter()
        .filter(|a| job.is_none_or(|j| of_job(a, j)))
        .collect();
    if chosen.is_empty() {
        let what = match job {
            Some(j) => format!("job {j} of build {id} kept no artifacts"),
            None => format!("build {id} kept no artifacts"),
        };
        eprintln!("{what}");
        if job.is_some() && !list.artifacts.is_empty() {
            let mut jobs: Vec<&str> = list.artifacts.iter().map(|a| a.job.as_str()).collect();
            jobs.dedup();
            eprintln!("jobs with artifacts: {}", jobs.join(", "));
        }
        return Ok(ExitCode::from(crate::exit_codes::NOT_FOUND));
    }
    let Some(dir) = dir else {
        match output {
            Output::Json => crate::cmd::build::print_json(&chosen)?,
            Output::Human => print_table(&chosen),
        }
        return Ok(ExitCode::SUCCESS);
    };
    // One job's files go straight into DIR; several jobs' under DIR/JOB.
    let one_job = chosen.iter().all(|a| a.job == chosen[0].job);
    for a in &chosen {
        herd_proto::check_artifact_path(&a.path)
            .map_err(|why| miette!("the server named an artifact `{}`: {why}", a.path))?;
        let dest: PathBuf = if one_job {
            dir.join(&a.path)
        } else {
            dir.join(a.job.replace('#', "-")).join(&a.path)
        };
        let (size, sha) = c.download(&a.url, &dest).await?;
        if size != a.size as u64 || sha != a.sha256 {
            let _ = std::fs::remove_file(&dest);
            return Err(miette!(
                help =
                    "download it again; if it stays wrong, the server's artifact store is damaged",
                "{} arrived with {size} bytes and SHA-256 {sha}, not {} bytes with {}",
                a.path,
                a.size,
                a.sha256
            ));
        }
        eprintln!("{} ({})", dest.display(), human(size));
    }
    Ok(ExitCode::SUCCESS)
}

/// The line `herd build show` ends with when the build kept files.
pub async fn summary(c: &Client, id: i64) -> Result<()> {
    let list: ArtifactList = c.get(&format!("/api/v1/builds/{id}/artifacts")).await?;
    if !list.artifacts.is_empty() {
        let bytes: u64 = list.artifacts.iter().map(|a| a.size.max(0) as u64).sum();
        crate::outln!(
            "artifacts: {} file{} ({}): herd build artifacts {id}",
            list.artifacts.len(),
            if list.artifacts.len() == 1 { "" } else { "s" },
            human(bytes)
        );
    }
    Ok(())
}

fn print_table(list: &[&Artifact]) {
    let job_w = list
        .iter()
        .map(|a| a.job.chars().count())
        .max()
        .unwrap_or(3)
        .max(3);
    let path_w = list
        .iter()
        .map(|a| a.path.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    crate::outln!(
        "{:<job_w$}  {:<path_w$}  {:>9}  SHA-256",
        "JOB",
        "PATH",
        "SIZE"
    );
    for a in list {
        crate::outln!(
            "{:<job_w$}  {:<path_w$}  {:>9}  {}",
            crate::out::clean(&a.job),
            crate::out::clean(&a.path),
            human(a.size.max(0) as u64),
            &a.sha256[..a.sha256.len().min(12)]
        );
    }
}

fn human(bytes: u64) -> String {
    herd_core::size::human_bytes(bytes)
}
