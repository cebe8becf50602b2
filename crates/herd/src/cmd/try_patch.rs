//! `herd try`: build the changes of this checkout (commits not pushed and
//! files not committed, untracked ones included) without pushing them. The
//! diff against the merge base with the upstream goes to the server, which
//! builds that base with the patch applied on the workers.

use crate::client::Client;
use crate::{outln, ClientArgs};
use clap::Args;
use herd_api::projects::ProjectList;
use herd_api::{TryRequest, TryStarted};
use miette::{miette, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use herd_proto::MAX_TRY_PATCH as MAX_PATCH;

#[derive(Args)]
pub struct TryArgs {
    /// The project (default: the one whose repository is this checkout's
    /// `origin`, or the only project).
    #[arg(long)]
    project: Option<String>,
    /// Only this builder (default: all of them).
    #[arg(long)]
    builder: Option<String>,
    /// The upstream to diff against (default: the branch's upstream, else
    /// origin/HEAD): the patch is taken against its merge base with HEAD.
    #[arg(long, value_name = "REF")]
    base: Option<String>,
    /// Follow the build and end with its verdict (exit status 0 on success).
    #[arg(long)]
    wait: bool,
    /// The checkout (default: the current directory).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    #[command(flatten)]
    client: ClientArgs,
}

pub async fn run(args: TryArgs) -> Result<ExitCode> {
    let top = PathBuf::from(git(&args.dir, &["rev-parse", "--show-toplevel"], &[])?.trim());
    let base = merge_base(&top, args.base.as_deref())?;
    let patch = diff_against(&top, &base)?;
    if patch.trim().is_empty() {
        return Err(miette!(
            "nothing to try: this checkout does not differ from {base}\n  help: change something, or commit locally, then run herd try again"
        ));
    }
    if patch.len() > MAX_PATCH {
        return Err(miette!(
            "the patch is {} bytes; a try build takes at most {MAX_PATCH}\n  help: push the change to a branch instead",
            patch.len()
        ));
    }
    let c = Client::new(&args.client)?;
    let project = match args.project {
        Some(p) => p,
        None => guess_project(&c, &top).await?,
    };
    let author = identity(&top);
    let patch_len = patch.len();
    let res: TryStarted = c
        .post(
            "/api/v1/try",
            &TryRequest {
                project: project.clone(),
                base: base.clone(),
                patch,
                builder: args.builder,
                author,
            },
        )
        .await?;
    let id = res.id;
    outln!("{id}");
    eprintln!(
        "try build {id} of {project} at {} with {patch_len} bytes of patch: {}",
        &base[..12.min(base.len())],
        res.url
    );
    if !args.wait {
        return Ok(ExitCode::SUCCESS);
    }
    let end = super::build::wait_for(&c, id).await?;
    super::build::show(&end, args.client.output)?;
    Ok(super::build::verdict(&end))
}

fn git(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .map_err(|e| miette!("cannot run git: {e}\n  help: install git"))?;
    if !out.status.success() {
        return Err(miette!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| miette!("git {} printed non-UTF-8", args.join(" ")))
}

fn merge_base(top: &Path, base: Option<&str>) -> Result<String> {
    let candidates: Vec<&str> = match base {
        Some(b) => vec![b],
        None => vec!["@{upstream}", "origin/HEAD", "origin/main", "origin/master"],
    };
    for c in &candidates {
        if let Ok(sha) = git(top, &["merge-base", "HEAD", c], &[]) {
            return Ok(sha.trim().to_string());
        }
    }
    Err(miette!(
        "cannot find where this checkout left its upstream (tried {})\n  help: pass --base REF, a branch the server's repository has",
        candidates.join(", ")
    ))
}

/// `git diff --binary BASE` of the working tree, untracked files included,
/// through a scratch index so the user's index stays as it is.
fn diff_against(top: &Path, base: &str) -> Result<String> {
    let index = PathBuf::from(git(top, &["rev-parse", "--git-path", "index"], &[])?.trim());
    let index = if index.is_absolute() {
        index
    } else {
        top.join(index)
    };
    let scratch = index.with_file_name(format!("herd-try-index-{}", std::process::id()));
    if index.exists() {
        std::fs::copy(&index, &scratch)
            .map_err(|e| miette!("cannot copy the git index to {}: {e}", scratch.display()))?;
    }
    let scratch_str = scratch.display().to_string();
    let env = [("GIT_INDEX_FILE", scratch_str.as_str())];
    let result = git(top, &["add", "--all", "."], &env).and_then(|_| {
        git(
            top,
            &["diff", "--cached", "--binary", "--full-index", base],
            &env,
        )
    });
    let _ = std::fs::remove_file(&scratch);
    result
}

fn identity(top: &Path) -> Option<String> {
    let name = git(top, &["config", "user.name"], &[]).ok()?;
    let email = git(top, &["config", "user.email"], &[]).unwrap_or_default();
    let (name, email) = (name.trim(), email.trim());
    Some(if email.is_empty() {
        name.to_string()
    } else {
        format!("{name} <{email}>")
    })
}

/// The project whose repository is this checkout's `origin`; else the only one.
async fn guess_project(c: &Client, top: &Path) -> Result<String> {
    let res: ProjectList = c.get("/api/v1/projects").await?;
    let origin = git(top, &["remote", "get-url", "origin"], &[]).ok();
    if let Some(origin) = origin.as_deref().map(str::trim) {
        let found: Vec<&str> = res
            .projects
            .iter()
            .filter(|p| {
                p.repo
                    .as_deref()
                    .is_some_and(|r| same_repository(r, origin))
            })
            .map(|p| p.name.as_str())
            .collect();
        if let [one] = found[..] {
            return Ok(one.to_string());
        }
    }
    let with_repo: Vec<&str> = res
        .projects
        .iter()
        .filter(|p| p.repo.is_some())
        .map(|p| p.name.as_str())
        .collect();
    match with_repo[..] {
        [one] => Ok(one.to_string()),
        _ => Err(miette!(
            "cannot tell which project this checkout is: pass --project (one of: {})",
            with_repo.join(", ")
        )),
    }
}

/// Whether two repository addresses name the same repository:
/// `https://host/o/n.git`, `git@host:o/n` and `ssh://git@host/o/n/` do.
fn same_repository(a: &str, b: &str) -> bool {
    fn key(u: &str) -> String {
        let u = u.trim().trim_end_matches('/');
        let u = u.strip_suffix(".git").unwrap_or(u);
        let u = u.split_once("://").map_or(u, |(_, rest)| rest);
        let u = u.split_once('@').map_or(u, |(_, rest)| rest);
        u.replacen(':', "/", 1).to_lowercase()
    }
    if a.starts_with('/') && b.starts_with('/') {
        let canon = |p: &str| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
        return canon(a) == canon(b);
    }
    key(a) == key(b)
}

#[cfg(test)]
mod tests {
    use super::same_repository;

    #[test]
    fn repository_addresses_compare_by_host_and_path() {
        assert!(same_repository(
            "https://github.com/twisted/twisted.git",
            "git@github.com:twisted/twisted"
        ));
        assert!(same_repository(
            "ssh://git@github.com/twisted/twisted/",
            "https://github.com/Twisted/twisted"
        ));
        assert!(!same_repository(
            "https://github.com/twisted/twisted",
            "https://github.com/twisted/other"
        ));
    }
}
