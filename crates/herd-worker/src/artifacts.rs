//! The artifact steps: `upload artifacts` sends the workspace's files that
//! the job's `artifacts:` select to the server, each resumable at an
//! offset; `fetch artifacts` puts the files of the jobs this one needs
//! into the workspace, each checked against its SHA-256.
//!
//! Both talk HTTP to the server this worker is connected to, with its
//! token, and say in the step's log what they moved and how fast.

use crate::outbox::StopKind;
use crate::process::{cancelled, spawn_error, StepOutcome, StepRunner};
use crate::source::SourceAccess;
use herd_proto::{ArtifactFile, StepStatus};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

/// Most files one job uploads.
pub const MAX_UPLOAD_FILES: usize = 10_000;
/// Most directory entries looked at while selecting them.
const MAX_WALK: usize = 1_000_000;
/// Tries of one file in a row that move no byte before the step gives up.
const MAX_STALLED_TRIES: u32 = 12;

/// What moved, for the log's last line.
#[derive(Default)]
struct Tally {
    files: usize,
    bytes: u64,
}

pub(crate) struct Transfer<'a, 'r> {
    pub access: &'a SourceAccess,
    pub attempt: i64,
    pub workspace: &'a Path,
    pub cmd: &'a StepRunner<'r>,
    pub offset: u64,
}

enum Stop {
    /// The attempt was cancelled or is no longer this worker's.
    Stopped(StopKind),
    /// The log could not take more (the attempt was abandoned).
    Gone,
    Failed(String),
}

impl Transfer<'_, '_> {
    async fn say(&mut self, text: &str) -> Result<(), Stop> {
        if self.cmd.note(&mut self.offset, text).await {
            Ok(())
        } else {
            Err(Stop::Gone)
        }
    }

    fn client(&self) -> Result<reqwest::Client, Stop> {
        crate::http_client(&self.access.base, self.access.tls_pin.as_deref(), None)
            .map_err(|e| Stop::Failed(format!("cannot reach the server: {e}")))
    }

    /// Uploads the files `paths` select. None: the attempt was abandoned.
    pub async fn upload(
        mut self,
        paths: &[String],
        stop: &mut watch::Receiver<Option<StopKind>>,
    ) -> Option<StepOutcome> {
        let started = Instant::now();
        let result = self.upload_all(paths, stop).await;
        finish(&mut self, result, started, "uploaded").await
    }

    async fn upload_all(
        &mut self,
        paths: &[String],
        stop: &mut watch::Receiver<Option<StopKind>>,
    ) -> Result<Tally, Stop> {
        let root = self.workspace.to_path_buf();
        let globs = paths.to_vec();
        let files = tokio::task::spawn_blocking(move || select(&root, &globs))
            .await
            .map_err(|e| Stop::Failed(format!("cannot look for artifacts: {e}")))?
            .map_err(Stop::Failed)?;
        if files.is_empty() {
            self.say(&format!(
                "[herd] no file in the workspace matches `artifacts: [{}]`: nothing to upload\n",
                paths.join(", ")
            ))
            .await?;
            return Ok(Tally::default());
        }
        let http = self.client()?;
        let mut tally = Tally::default();
        for rel in files {
            if let Err(why) = herd_proto::check_artifact_path(&rel) {
                return Err(Stop::Failed(format!(
                    "`{}` cannot be an artifact: {why}; rename it or leave it out of `artifacts:`",
                    rel.escape_debug()
                )));
            }
            let t = Instant::now();
            let size = self.upload_file(&http, &rel, stop).await?;
            tally.files += 1;
            tally.bytes += size;
            self.say(&format!(
                "{rel} ({}) {}\n",
                human(size),
                rate(size, t.elapsed())
            ))
            .await?;
        }
        Ok(tally)
    }

    async fn upload_file(
        &mut self,
        http: &reqwest::Client,
        rel: &str,
        stop: &mut watch::Receiver<Option<StopKind>>,
    ) -> Result<u64, Stop> {
        let path = self.workspace.join(rel);
        let size = tokio::fs::metadata(&path)
            .await
            .map_err(|e| Stop::Failed(format!("cannot read {rel}: {e}")))?
            .len();
        let url = format!(
            "{}{}",
            self.access.base,
            herd_proto::artifact_upload_path(self.attempt)
        );
        let mut offset = 0u64;
        // After a cut request, where the server's part ends is asked
        // before the next one (the server may be back, or another).
        let mut known = true;
        let mut furthest = 0u64;
        let mut stalled = 0u32;
        loop {
            if let Some(kind) = *stop.borrow() {
                return Err(Stop::Stopped(kind));
            }
            if !known {
                match upload_offset(http, &url, &self.access.token, rel).await {
                    Ok(Some(at)) => {
                        tracing::info!("going on with {rel} from byte {at}");
                        offset = at;
                        known = true;
                    }
                    Ok(None) => {
                        return Err(Stop::Failed(
                            "the server no longer takes uploads of this attempt".into(),
                        ))
                    }
                    Err(e) => tracing::info!("cannot ask where the upload of {rel} stands: {e}"),
                }
            }
            if known {
                match put_from(http, &url, &self.access.token, rel, &path, size, offset).await {
                    Ok(Put::Kept) => return Ok(size),
                    Ok(Put::At(at)) => offset = at,
                    Ok(Put::Refused(why)) => return Err(Stop::Failed(why)),
                    Err(e) => {
                        tracing::info!("upload of {rel} interrupted: {e}; asking where to go on");
                        known = false;
                    }
                }
            }
            if offset > furthest {
                furthest = offset;
                stalled = 0;
                if known {
                    continue;
                }
            }
            stalled += 1;
            if stalled >= MAX_STALLED_TRIES {
                return Err(Stop::Failed(format!(
                    "could not upload {rel}: {MAX_STALLED_TRIES} tries in a row moved nothing; is the server reachable?"
                )));
            }
            let pause = Duration::from_millis(250 << stalled.min(5));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Downloads `files` into the workspace. None: the attempt was abandoned.
    pub async fn fetch(
        mut self,
        files: &[ArtifactFile],
        from: &[String],
        stop: &mut watch::Receiver<Option<StopKind>>,
    ) -> Option<StepOutcome> {
        let started = Instant::now();
        let result = self.fetch_all(files, from, stop).await;
        finish(&mut self, result, started, "fetched").await
    }

    async fn fetch_all(
        &mut self,
        files: &[ArtifactFile],
        from: &[String],
        stop: &mut watch::Receiver<Option<StopKind>>,
    ) -> Result<Tally, Stop> {
        if files.is_empty() {
            self.say(&format!(
                "[herd] {} kept no artifacts: nothing to fetch\n",
                from.join(", ")
            ))
            .await?;
            return Ok(Tally::default());
        }
        let http = self.client()?;
        let mut tally = Tally::default();
        for f in files {
            if let Err(why) = herd_proto::check_artifact_path(&f.path) {
                return Err(Stop::Failed(format!(
                    "the server named an artifact `{}` that cannot be a path: {why}",
                    f.path.escape_debug()
                )));
            }
            let t = Instant::now();
            let mut tries = 0;
            loop {
                if let Some(kind) = *stop.borrow() {
                    return Err(Stop::Stopped(kind));
                }
                tries += 1;
                match self.fetch_file(&http, f).await {
                    Ok(()) => break,
                    Err(e) if tries >= 5 => {
                        return Err(Stop::Failed(format!(
                            "could not fetch {} of {}: {e}",
                            f.path, f.job
                        )))
                    }
                    Err(e) => {
                        tracing::info!("fetch of {} failed ({e}); trying again", f.path);
                        tokio::time::sleep(Duration::from_millis(500 * tries)).await;
                    }
                }
            }
            tally.files += 1;
            tally.bytes += f.size;
            self.say(&format!(
                "{} ({}, from {}) {}\n",
                f.path,
                human(f.size),
                f.job,
                rate(f.size, t.elapsed())
            ))
            .await?;
        }
        Ok(tally)
    }

    async fn fetch_file(&self, http: &reqwest::Client, f: &ArtifactFile) -> Result<(), String> {
        use futures_util::StreamExt;
        let url = format!(
            "{}{}",
            self.access.base,
            herd_proto::artifact_fetch_path(self.attempt, f.id)
        );
        let res = http
            .get(&url)
            .bearer_auth(&self.access.token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(error_of(res).await);
        }
        let dest = self.workspace.join(&f.path);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let part = part_name(&dest);
        let file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| format!("cannot write {}: {e}", part.display()))?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut body = res.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            got += chunk.len() as u64;
            if got > f.size {
                break;
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(|e| e.to_string())?;
        }
        out.flush().await.map_err(|e| e.to_string())?;
        drop(out);
        let sha = hex::encode(hasher.finalize());
        if got != f.size || sha != f.sha256 {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(format!(
                "got {got} bytes with SHA-256 {sha}, expected {} bytes with {}",
                f.size, f.sha256
            ));
        }
        tokio::fs::rename(&part, &dest)
            .await
            .map_err(|e| format!("cannot put {}: {e}", dest.display()))
    }
}

async fn finish(
    t: &mut Transfer<'_, '_>,
    result: Result<Tally, Stop>,
    started: Instant,
    verb: &str,
) -> Option<StepOutcome> {
    match result {
        Ok(tally) => {
            if tally.files > 0 {
                let line = format!(
                    "[herd] {verb} {} file{} ({}) {}\n",
                    tally.files,
                    if tally.files == 1 { "" } else { "s" },
                    human(tally.bytes),
                    rate(tally.bytes, started.elapsed())
                );
                if !t.cmd.note(&mut t.offset, &line).await {
                    return None;
                }
            }
            Some(StepOutcome {
                status: StepStatus::Success,
                exit_code: Some(0),
                message: None,
            })
        }
        Err(Stop::Stopped(StopKind::Cancel)) => Some(cancelled()),
        Err(Stop::Stopped(StopKind::Abandon)) | Err(Stop::Gone) => None,
        Err(Stop::Failed(why)) => {
            let _ = t.cmd.note(&mut t.offset, &format!("[herd] {why}\n")).await;
            Some(spawn_error(why))
        }
    }
}

enum Put {
    /// The whole file is kept.
    Kept,
    /// The server holds this many bytes (go on from there).
    At(u64),
    /// The server will not take it (too large, a bad path): no retry helps.
    Refused(String),
}

/// Sends the file from `offset` on.
async fn put_from(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    rel: &str,
    path: &Path,
    size: u64,
    offset: u64,
) -> Result<Put, String> {
    use tokio::io::AsyncSeekExt;
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read {rel}: {e}"))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| format!("cannot read {rel}: {e}"))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
    let res = http
        .put(url)
        .bearer_auth(token)
        .query(&[
            ("path", rel.to_string()),
            ("size", size.to_string()),
            ("offset", offset.to_string()),
        ])
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size - offset)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status();
    if status.is_success() {
        let state: UploadState = res.json().await.map_err(|e| e.to_string())?;
        return Ok(match state.artifact {
            Some(_) => Put::Kept,
            None => Put::At(state.offset.max(0) as u64),
        });
    }
    let why = error_of(res).await;
    if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE
        || status == reqwest::StatusCode::BAD_REQUEST
    {
        return Ok(Put::Refused(why));
    }
    Err(why)
}

/// Where the server's part of `rel` ends; None: the attempt is not ours.
async fn upload_offset(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    rel: &str,
) -> Result<Option<u64>, String> {
    let res = http
        .get(url)
        .bearer_auth(token)
        .query(&[("path", rel)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status() == reqwest::StatusCode::CONFLICT {
        return Ok(None);
    }
    if !res.status().is_success() {
        return Err(error_of(res).await);
    }
    let state: UploadState = res.json().await.map_err(|e| e.to_string())?;
    Ok(Some(state.offset.max(0) as u64))
}

async fn error_of(res: reqwest::Response) -> String {
    let status = res.status();
    match res.json::<ErrorBody>().await {
        Ok(b) => format!("{status}: {}", b.error),
        Err(_) => status.to_string(),
    }
}

/// The server's answer to an upload (herd-api's `UploadState`; only what
/// the worker reads).
#[derive(serde::Deserialize)]
struct UploadState {
    offset: i64,
    #[serde(default)]
    artifact: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

fn part_name(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".herd-part");
    dest.with_file_name(name)
}

/// The files under `root` (not `.git`, no symlinks) whose relative path
/// `globs` select, sorted.
fn select(root: &Path, globs: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    let mut seen = 0usize;
    while let Some(rel_dir) = dirs.pop() {
        let entries = match std::fs::read_dir(root.join(&rel_dir)) {
            Ok(e) => e,
            Err(e) => {
                return Err(format!(
                    "cannot list {}: {e}",
                    root.join(&rel_dir).display()
                ))
            }
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK {
                return Err(format!(
                    "the workspace has more than {MAX_WALK} entries: name the artifacts' directories more narrowly"
                ));
            }
            let Ok(kind) = e.file_type() else { continue };
            let rel = rel_dir.join(e.file_name());
            let Some(text) = rel.to_str() else { continue };
            if kind.is_dir() {
                if rel_dir.as_os_str().is_empty() && e.file_name() == ".git" {
                    continue;
                }
                dirs.push(rel);
            } else if kind.is_file() && herd_core::change::globs_select(globs, text) {
                out.push(text.to_string());
                if out.len() > MAX_UPLOAD_FILES {
                    return Err(format!(
                        "`artifacts:` select more than {MAX_UPLOAD_FILES} files: archive them into one (tar) or select fewer"
                    ));
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn human(bytes: u64) -> String {
    herd_core::size::human_bytes(bytes)
}

fn rate(bytes: u64, took: Duration) -> String {
    let secs = took.as_secs_f64().max(1e-6);
    format!("in {secs:.2} s, {:.1} MB/s", bytes as f64 / secs / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_takes_files_by_glob_and_skips_git_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "dist/a.whl",
            "dist/b.tar.gz",
            "docs/html/x/index.html",
            ".git/dist/a.whl",
            "src/a.whl",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "x").unwrap();
        }
        std::os::unix::fs::symlink("/etc/passwd", root.join("dist/c.whl")).unwrap();
        let got = select(root, &["dist/*.whl".into(), "docs/html/**".into()]).unwrap();
        assert_eq!(got, ["dist/a.whl", "docs/html/x/index.html"]);
        let got = select(root, &["**/*.whl".into(), "!src/**".into()]).unwrap();
        assert_eq!(got, ["dist/a.whl"]);
    }

    #[test]
    fn sizes_and_rates_read_well() {
        assert_eq!(human(999), "999 B");
        assert_eq!(human(1_500_000), "1.5 MB");
        assert_eq!(
            rate(200_000_000, Duration::from_secs(1)),
            "in 1.00 s, 200.0 MB/s"
        );
    }
}
