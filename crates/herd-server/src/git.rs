//! The server's bare mirror of each project's repository: it resolves what
//! to build (a branch, tag or commit) to a commit, and reads the herd.yml of
//! that commit. Shells out to `git`, with the user's usual credential setup,
//! or a project's `credentials:` given through `GIT_ASKPASS` (`herd
//! __askpass`), so that a token is never on a command line or in a URL.
//! Errors have the user information of any URL in them hidden.

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
    #[error("{0}")]
    MergeConflict(String),
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
    /// Tag name -> the commit it points at (an annotated tag peeled).
    pub tags: std::collections::BTreeMap<String, String>,
    /// Pull request (`refs/pull/N/head`) or merge request
    /// (`refs/merge-requests/N/head`) number -> its head commit.
    pub pulls: std::collections::BTreeMap<i64, String>,
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
    /// Per project: the environment that makes git ask `herd __askpass`
    /// for the project's credentials.
    auth: HashMap<String, Vec<(&'static str, String)>>,
}

pub struct Resolved {
    pub revision: String,
    pub pipeline_text: String,
    /// The commit's author and first line of its message.
    pub author: String,
    pub message: String,
    /// The branch or tag built, when the revision was asked by one (or
    /// left to the repository's default branch).
    pub ref_name: Option<String>,
    /// `ref_name` is a tag (not a branch).
    pub is_tag: bool,
}

/// The environment of `herd __askpass`: the user and the token it gives git.
pub const ASKPASS_USER: &str = "HERD_GIT_USER";
pub const ASKPASS_TOKEN: &str = "HERD_GIT_TOKEN";

impl Mirrors {
    pub fn new(dir: PathBuf) -> Self {
        Mirrors {
            dir,
            locks: Default::default(),
            auth: HashMap::new(),
        }
    }

    /// Fetches of `project` present `user` and `token` through
    /// `askpass` (the `herd` executable, run as `herd __askpass PROMPT`).
    pub fn with_credentials(
        mut self,
        project: &str,
        askpass: &Path,
        user: &str,
        token: &str,
    ) -> Self {
        self.auth.insert(
            project.to_string(),
            vec![
                ("GIT_ASKPASS", format!("{}", askpass.display())),
                ("HERD_ASKPASS", "1".to_string()),
                (ASKPASS_USER, user.to_string()),
                (ASKPASS_TOKEN, token.to_string()),
            ],
        );
        self
    }

    /// The environment of git commands that reach `project`'s remote.
    fn remote_env(&self, project: &str) -> Vec<(&str, String)> {
        self.auth
            .get(project)
            .map(|e| e.iter().map(|(k, v)| (*k, v.clone())).collect())
            .unwrap_or_default()
    }

    /// herd.yml at `rev` of the mirror as it is (no fetch): None when the
    /// mirror or the file is not there.
    pub async fn pipeline_at(&self, project: &str, rev: &str) -> Option<String> {
        let mirror = self.mirror(project);
        if !mirror.join("HEAD").exists() {
            return None;
        }
        git(&mirror, &["show", &format!("{rev}:herd.yml")])
            .await
            .ok()
    }

    /// The directory of the mirrors (`PROJECT.git` each).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes sure the mirror has commit `sha` (fetching when it does not)
    /// and returns the mirror's path.
    pub async fn ensure_commit(
        &self,
        project: &str,
        repo: &str,
        sha: &str,
    ) -> Result<PathBuf, GitError> {
        let lock = self.lock_for(project);
        let _guard = lock.lock().await;
        let mirror = self.update(project, repo, Some(sha)).await?;
        if has_commit(&mirror, sha).await {
            Ok(mirror)
        } else {
            Err(GitError::UnknownRevision(sha.to_string()))
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
        let (mirror, revision, ref_name, is_tag) =
            self.update_and_resolve(project, repo, rev).await?;
        let pipeline_text = git(&mirror, &["show", &format!("{revision}:herd.yml")])
            .await
            .map_err(|_| GitError::NoPipeline(revision.clone()))?;
        let mut resolved = commit_summary(&mirror, revision, pipeline_text, ref_name).await?;
        resolved.is_tag = is_tag;
        Ok(resolved)
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
        // A try is of no branch: its patch is its sender's.
        let (mirror, revision, _, _) = self.update_and_resolve(project, repo, rev).await?;
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
        commit_summary(&mirror, revision, result?, None).await
    }

    /// Fetches the mirror (cloning it the first time) and lists its branches.
    pub async fn fetch(&self, project: &str, repo: &str) -> Result<Heads, GitError> {
        let lock = self.lock_for(project);
        let _guard = lock.lock().await;
        let mirror = self.update(project, repo, None).await?;
        // `%(*objectname)` is an annotated tag's commit (empty otherwise).
        let out = git(
            &mirror,
            &[
                "for-each-ref",
                "--format=%(objectname) %(*objectname) %(refname)",
                "refs/heads",
                "refs/tags",
                "refs/pull",
                "refs/merge-requests",
            ],
        )
        .await?;
        let mut heads = Heads::default();
        for line in out.lines() {
            let mut parts = line.splitn(3, ' ');
            let (Some(sha), Some(peeled), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let Some(branch) = name.strip_prefix("refs/heads/") {
                heads.branches.insert(branch.to_string(), sha.to_string());
            } else if let Some(tag) = name.strip_prefix("refs/tags/") {
                let commit = if peeled.is_empty() { sha } else { peeled };
                heads.tags.insert(tag.to_string(), commit.to_string());
            } else if let Some(n) = name
                .strip_prefix("refs/pull/")
                .or_else(|| name.strip_prefix("refs/merge-requests/"))
                .and_then(|rest| rest.strip_suffix("/head"))
                .and_then(|n| n.parse::<i64>().ok())
            {
                heads.pulls.insert(n, sha.to_string());
            }
        }
        let default_branch = git(&mirror, &["symbolic-ref", "--quiet", "HEAD"])
            .await
            .ok()
            .and_then(|r| r.trim().strip_prefix("refs/heads/").map(str::to_string));
        heads.default_branch = default_branch;
        Ok(heads)
    }

    /// The merge of a pull request's `head` into `base` (a branch of the
    /// mirror, else its default branch), made in the mirror without a work
    /// tree and kept under `refs/herd/merge/N` (so that workers can fetch
    /// it). Err(MergeConflict) when it does not merge cleanly.
    pub async fn merge_for_pull_request(
        &self,
        project: &str,
        number: i64,
        base: Option<&str>,
        head: &str,
    ) -> Result<String, GitError> {
        let lock = self.lock_for(project);
        let _guard = lock.lock().await;
        let mirror = self.mirror(project);
        let base_ref = match base.filter(|b| !b.starts_with('-') && !b.is_empty()) {
            Some(b) => format!("refs/heads/{b}"),
            None => git(&mirror, &["symbolic-ref", "--quiet", "HEAD"])
                .await?
                .trim()
                .to_string(),
        };
        let base_sha = git(
            &mirror,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &format!("{base_ref}^{{commit}}"),
            ],
        )
        .await
        .map_err(|_| GitError::UnknownRevision(base_ref.clone()))?
        .trim()
        .to_string();
        let tree = match git(&mirror, &["merge-tree", "--write-tree", "--no-messages", &base_sha, head]).await {
            Ok(out) => out.lines().next().unwrap_or("").trim().to_string(),
            Err(GitError::Failed { .. }) => {
                return Err(GitError::MergeConflict(format!(
                    "pull request #{number} does not merge cleanly into {}: build its head, or rebase it",
                    base_ref.trim_start_matches("refs/heads/")
                )))
            }
            Err(e) => return Err(e),
        };
        // A fixed author and date: the same head and base give the same
        // merge commit on every server.
        let stamp = "1970-01-01T00:00:00Z".to_string();
        let env = [
            ("GIT_AUTHOR_NAME", "herd".to_string()),
            ("GIT_AUTHOR_EMAIL", "herd@localhost".to_string()),
            ("GIT_COMMITTER_NAME", "herd".to_string()),
            ("GIT_COMMITTER_EMAIL", "herd@localhost".to_string()),
            ("GIT_AUTHOR_DATE", stamp.clone()),
            ("GIT_COMMITTER_DATE", stamp),
        ];
        let message = format!(
            "Merge pull request #{number} into {}",
            base_ref.trim_start_matches("refs/heads/")
        );
        let merge = git_with(
            &mirror,
            &[
                "commit-tree",
                &tree,
                "-p",
                &base_sha,
                "-p",
                head,
                "-m",
                &message,
            ],
            &env,
            None,
        )
        .await?
        .trim()
        .to_string();
        git(
            &mirror,
            &["update-ref", &format!("refs/herd/merge/{number}"), &merge],
        )
        .await?;
        Ok(merge)
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
    ) -> Result<(PathBuf, String, Option<String>, bool), GitError> {
        let asked = rev.unwrap_or("HEAD");
        let mirror = self.update(project, repo, Some(asked)).await?;
        // A name is a branch first, then a tag, each by its full ref: git's
        // own order would let a pushed tag called `main` stand for the
        // branch, and a secret bound to `refs: [main]` follow it.
        let mut ref_name = None;
        let mut is_tag = false;
        let mut full = None;
        match rev {
            None => {
                ref_name = git(&mirror, &["symbolic-ref", "--quiet", "--short", "HEAD"])
                    .await
                    .ok()
                    .map(|b| b.trim().to_string());
            }
            Some(r) if !r.starts_with('-') => {
                for prefix in ["refs/heads/", "refs/tags/"] {
                    let candidate = format!("{prefix}{r}");
                    if git(&mirror, &["show-ref", "--verify", "--quiet", &candidate])
                        .await
                        .is_ok()
                    {
                        ref_name = Some(r.to_string());
                        is_tag = prefix == "refs/tags/";
                        full = Some(candidate);
                        break;
                    }
                }
            }
            Some(_) => {}
        }
        let spec = format!("{}^{{commit}}", full.as_deref().unwrap_or(asked));
        let revision = git(
            &mirror,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &spec,
            ],
        )
        .await
        .map_err(|_| GitError::UnknownRevision(asked.to_string()))?
        .trim()
        .to_string();
        Ok((mirror, revision, ref_name, is_tag))
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
            git_with(
                &self.dir,
                &["clone", "--mirror", "--quiet", repo, &tmp.to_string_lossy()],
                &self.remote_env(project),
                None,
            )
            .await?;
            tokio::fs::rename(&tmp, &mirror)
                .await
                .map_err(GitError::Spawn)?;
        } else if !(is_full_sha && has_commit(&mirror, rev.unwrap_or("")).await) {
            git(&mirror, &["remote", "set-url", "origin", repo]).await?;
            git_with(
                &mirror,
                &["fetch", "--prune", "--quiet", "origin"],
                &self.remote_env(project),
                None,
            )
            .await?;
        }
        Ok(mirror)
    }
}

async fn commit_summary(
    mirror: &Path,
    revision: String,
    pipeline_text: String,
    ref_name: Option<String>,
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
        ref_name,
        is_tag: false,
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
        .map_err(|_| GitError::Timeout(herd_core::redact::redact_text(&args.join(" "))))?
        .map_err(GitError::Spawn)?;
    if !out.status.success() {
        // git quotes URLs in its errors: no credentials in them go further.
        return Err(GitError::Failed {
            args: herd_core::redact::redact_text(&args.join(" ")),
            stderr: herd_core::redact::redact_text(String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
