//! The server's bare mirror of each project's repository: it resolves what
//! to build (a branch, tag or commit) to a commit, and reads the herd.yml of
//! that commit. Shells out to `git`, with the user's usual credential setup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::process::Command;
use tokio::sync::Mutex;

const GIT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error("could not run git: {0} (is git installed and on PATH?)")]
    Spawn(std::io::Error),
    #[error("git {0} took longer than {GIT_TIMEOUT:?}")]
    Timeout(String),
    #[error("no revision `{0}` in the repository")]
    UnknownRevision(String),
    #[error("no herd.yml at the root of the repository at {0}")]
    NoPipeline(String),
}

pub struct Mirrors {
    dir: PathBuf,
    locks: std::sync::Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

pub struct Resolved {
    pub revision: String,
    pub pipeline_text: String,
    /// The commit's author and first line of its message.
    pub author: String,
    pub message: String,
}

impl Mirrors {
    pub fn new(dir: PathBuf) -> Self {
        Mirrors {
            dir,
            locks: Default::default(),
        }
    }

    fn lock_for(&self, project: &str) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(locks.entry(project.to_string()).or_default())
    }

    /// Brings the mirror up to date (cloning it the first time), resolves
    /// `rev` (default: the repository's HEAD) and reads its herd.yml.
    pub async fn resolve(
        &self,
        project: &str,
        repo: &str,
        rev: Option<&str>,
    ) -> Result<Resolved, GitError> {
        let lock = self.lock_for(project);
        let _guard = lock.lock().await;
        let mirror = self.dir.join(format!("{project}.git"));
        let rev = rev.unwrap_or("HEAD");
        let is_full_sha = rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit());
        if !mirror.join("HEAD").exists() {
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(GitError::Spawn)?;
            let tmp = self.dir.join(format!("{project}.git.tmp"));
            let _ = tokio::fs::remove_dir_all(&tmp).await;
            git(
                &self.dir,
                &["clone", "--mirror", "--quiet", repo, &tmp.to_string_lossy()],
            )
            .await?;
            tokio::fs::rename(&tmp, &mirror)
                .await
                .map_err(GitError::Spawn)?;
        } else if !(is_full_sha && has_commit(&mirror, rev).await) {
            git(&mirror, &["remote", "set-url", "origin", repo]).await?;
            git(&mirror, &["fetch", "--prune", "--quiet", "origin"]).await?;
        }
        let spec = format!("{rev}^{{commit}}");
        let revision = git(&mirror, &["rev-parse", "--verify", "--quiet", &spec])
            .await
            .map_err(|_| GitError::UnknownRevision(rev.to_string()))?
            .trim()
            .to_string();
        let info = git(&mirror, &["show", "-s", "--format=%an%x00%s", &revision])
            .await
            .unwrap_or_default();
        let mut parts = info.trim_end_matches('\n').splitn(2, '\0');
        let author = parts.next().unwrap_or("").to_string();
        let message = parts.next().unwrap_or("").to_string();
        let pipeline_text = git(&mirror, &["show", &format!("{revision}:herd.yml")])
            .await
            .map_err(|_| GitError::NoPipeline(revision.clone()))?;
        Ok(Resolved {
            revision,
            pipeline_text,
            author,
            message,
        })
    }
}

async fn has_commit(repo: &Path, sha: &str) -> bool {
    git(repo, &["cat-file", "-e", &format!("{sha}^{{commit}}")])
        .await
        .is_ok()
}

async fn git(cwd: &Path, args: &[&str]) -> Result<String, GitError> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| GitError::Timeout(args.join(" ")))?
        .map_err(GitError::Spawn)?;
    if !out.status.success() {
        return Err(GitError::Failed {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
