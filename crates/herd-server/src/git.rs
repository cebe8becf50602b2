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
    #[error("the patch does not apply to the base revision: {0}")]
    PatchDoesNotApply(String),
}

/// The branches of a mirror after a fetch.
#[derive(Debug, Clone, Default)]
pub struct Heads {
    /// Branch name (without `refs/heads/`) -> commit.
    pub branches: std::collections::BTreeMap<String, String>,
    /// The branch the repository's HEAD names.
    pub default_branch: Option<String>,
}

/// One commit as a change shows it.
#[derive(Debug, Clone)]
pub struct CommitInfo {
    pub author: String,
    /// The whole message.
    pub message: String,
    /// Committer time, milliseconds since the epoch.
    pub time_ms: i64,
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
        let (mirror, revision) = self.update_and_resolve(project, repo, rev).await?;
        let pipeline_text = git(&mirror, &["show", &format!("{revision}:herd.yml")])
            .await
            .map_err(|_| GitError::NoPipeline(revision.clone()))?;
        commit_summary(&mirror, revision, pipeline_text).await
    }

    /// Like [`Mirrors::resolve`], with `patch` applied on top of the
    /// revision: the herd.yml read is the patched one. The patch is checked
    /// against a scratch index, so the mirror's refs do not change.
    pub async fn resolve_patched(
        &self,
        project: &str,
        repo: &str,
        rev: Option<&str>,
        patch: &str,
    ) -> Result<Resolved, GitError> {
        let lock = self.lock_for(project);
        let _guard = lock.lock().await;
        let (mirror, revision) = self.update_and_resolve(project, repo, rev).await?;
        let index = self
            .dir
            .join(format!("{project}.try-{}.index", std::process::id()));
        let index_env = [("GIT_INDEX_FILE", index.to_string_lossy().into_owned())];
        let result = async {
            git_with(&mirror, &["read-tree", &revision], &index_env, None).await?;
            git_with(
                &mirror,
                &["apply", "--cached", "--whitespace=nowarn", "-"],
                &index_env,
                Some(patch.as_bytes()),
            )
            .await
            .map_err(|e| match e {
                GitError::Failed { stderr, .. } => GitError::PatchDoesNotApply(stderr),
                other => other,
            })?;
            let tree = git_with(&mirror, &["write-tree"], &index_env, None).await?;
            git(&mirror, &["show", &format!("{}:herd.yml", tree.trim())])
                .await
                .map_err(|_| GitError::NoPipeline(format!("{revision} with the patch")))
        }
        .await;
        let _ = tokio::fs::remove_file(&index).await;
        commit_summary(&mirror, revision, result?).await
    }

    /// Fetches the mirror (cloning it the first time) and lists its branches.
    pub async fn fetch(&self, project: &str, repo: &str) -> Result<Heads, GitError> {
        let lock = self.lock_for(project);
        let _guard = lock.lock().await;
        let mirror = self.update(project, repo, None).await?;
        let out = git(
            &mirror,
            &[
                "for-each-ref",
                "--format=%(objectname) %(refname:strip=2)",
                "refs/heads",
            ],
        )
        .await?;
        let branches = out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(sha, name)| (name.to_string(), sha.to_string()))
            .collect();
        let default_branch = git(&mirror, &["symbolic-ref", "--quiet", "HEAD"])
            .await
            .ok()
            .and_then(|r| r.trim().strip_prefix("refs/heads/").map(str::to_string));
        Ok(Heads {
            branches,
            default_branch,
        })
    }

    /// Commits reachable from `new` and not from `old`, newest first, at
    /// most `limit`.
    pub async fn new_commits(
        &self,
        project: &str,
        old: &str,
        new: &str,
        limit: usize,
    ) -> Result<Vec<String>, GitError> {
        let mirror = self.mirror(project);
        let out = git(
            &mirror,
            &[
                "rev-list",
                &format!("--max-count={limit}"),
                new,
                &format!("^{old}"),
                "--",
            ],
        )
        .await?;
        Ok(out.lines().map(str::to_string).collect())
    }

    pub async fn commit_info(&self, project: &str, sha: &str) -> Result<CommitInfo, GitError> {
        let out = git(
            &self.mirror(project),
            &["show", "-s", "--format=%an%x00%ct%x00%B", sha],
        )
        .await?;
        let mut parts = out.splitn(3, '\0');
        let author = parts.next().unwrap_or("").to_string();
        let time_ms = parts
            .next()
            .and_then(|t| t.trim().parse::<i64>().ok())
            .unwrap_or(0)
            * 1000;
        let message = parts.next().unwrap_or("").trim_end().to_string();
        Ok(CommitInfo {
            author,
            message,
            time_ms,
        })
    }

    /// Files that differ between `from` and `to`; `from` None: the files
    /// `to` changed against its first parent (all of them for a root).
    pub async fn changed_files(
        &self,
        project: &str,
        from: Option<&str>,
        to: &str,
    ) -> Result<Vec<String>, GitError> {
        let mirror = self.mirror(project);
        let out = match from {
            Some(from) => git(&mirror, &["diff", "--name-only", "--no-renames", from, to]).await?,
            None => {
                git(
                    &mirror,
                    &[
                        "diff-tree",
                        "--no-commit-id",
                        "--name-only",
                        "--no-renames",
                        "-r",
                        "--root",
                        "-m",
                        "--first-parent",
                        to,
                    ],
                )
                .await?
            }
        };
        let mut files: Vec<String> = out.lines().map(str::to_string).collect();
        files.sort();
        files.dedup();
        Ok(files)
    }

    fn mirror(&self, project: &str) -> PathBuf {
        self.dir.join(format!("{project}.git"))
    }

    /// Under the project's lock: brings the mirror up to date (unless `rev`
    /// is a full sha it already has) and resolves `rev` to a commit.
    async fn update_and_resolve(
        &self,
        project: &str,
        repo: &str,
        rev: Option<&str>,
    ) -> Result<(PathBuf, String), GitError> {
        let rev = rev.unwrap_or("HEAD");
        let mirror = self.update(project, repo, Some(rev)).await?;
        let spec = format!("{rev}^{{commit}}");
        let revision = git(&mirror, &["rev-parse", "--verify", "--quiet", &spec])
            .await
            .map_err(|_| GitError::UnknownRevision(rev.to_string()))?
            .trim()
            .to_string();
        Ok((mirror, revision))
    }

    async fn update(
        &self,
        project: &str,
        repo: &str,
        rev: Option<&str>,
    ) -> Result<PathBuf, GitError> {
        let mirror = self.mirror(project);
        let is_full_sha =
            rev.is_some_and(|r| r.len() == 40 && r.bytes().all(|b| b.is_ascii_hexdigit()));
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
        } else if !(is_full_sha && has_commit(&mirror, rev.unwrap_or("")).await) {
            git(&mirror, &["remote", "set-url", "origin", repo]).await?;
            git(&mirror, &["fetch", "--prune", "--quiet", "origin"]).await?;
        }
        Ok(mirror)
    }
}

async fn commit_summary(
    mirror: &Path,
    revision: String,
    pipeline_text: String,
) -> Result<Resolved, GitError> {
    let info = git(mirror, &["show", "-s", "--format=%an%x00%s", &revision])
        .await
        .unwrap_or_default();
    let mut parts = info.trim_end_matches('\n').splitn(2, '\0');
    let author = parts.next().unwrap_or("").to_string();
    let message = parts.next().unwrap_or("").to_string();
    Ok(Resolved {
        revision,
        pipeline_text,
        author,
        message,
    })
}

async fn has_commit(repo: &Path, sha: &str) -> bool {
    git(repo, &["cat-file", "-e", &format!("{sha}^{{commit}}")])
        .await
        .is_ok()
}

async fn git(cwd: &Path, args: &[&str]) -> Result<String, GitError> {
    git_with(cwd, args, &[], None).await
}

async fn git_with(
    cwd: &Path,
    args: &[&str],
    env: &[(&str, String)],
    stdin: Option<&[u8]>,
) -> Result<String, GitError> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = async {
        let mut child = cmd.spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // git reads while it runs; a write error shows as its exit status.
            let _ = pipe.write_all(input).await;
            drop(pipe);
        }
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(GIT_TIMEOUT, run)
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
