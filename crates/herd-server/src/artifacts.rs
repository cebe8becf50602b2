//! The artifact store: files on disk named by the SHA-256 of their content
//! (`DIR/blobs/ab/abcdef…`), DIR being `artifacts_dir` of the config or
//! DATA/artifacts. The index (which attempt kept which path) is in the
//! database (`store::artifacts`); servers sharing one database share DIR.
//!
//! An upload arrives as a part file (`DIR/tmp/ATTEMPT-KEY.part`) that
//! grows by requests at an offset: a request cut off (a reconnect, the
//! body deadline) keeps what arrived and the worker goes on from there.
//! When the part holds the whole file it is hashed, synced and renamed
//! into place; content already kept is kept once.
//!
//! Architecture invariant: a blob is never written in place. It appears
//! whole, by rename, or not at all; so a reader never sees a part.

use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Hash states of parts being uploaded, so that a resumed upload need not
/// read its part again (at most this many; an evicted one is rehashed).
const MAX_HASH_STATES: usize = 256;
/// Unfinished uploads one attempt may hold at once. A worker uploads its
/// files one after the other; more parts than this is not an upload but
/// a way to fill the disk, part by part, past the per-job limit.
pub const MAX_PARTS_PER_ATTEMPT: usize = 4;
/// Part files untouched this long are removed (their attempt is gone).
pub const STALE_PART: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub struct ArtifactStore {
    dir: PathBuf,
    /// Part file -> (bytes hashed, the hash so far).
    hashes: Mutex<HashMap<PathBuf, (u64, Sha256)>>,
    /// Parts a request writes now: a second writer is refused.
    busy: Mutex<HashSet<PathBuf>>,
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("the upload is at byte {have}, not {asked}: go on from {have}")]
    Offset { have: u64, asked: u64 },
    #[error("more bytes arrived than the {size} announced")]
    TooLong { size: u64 },
    #[error("this file is being uploaded by another request; retry in a moment")]
    Busy,
    #[error(
        "this attempt has {MAX_PARTS_PER_ATTEMPT} unfinished uploads already: finish one first"
    )]
    TooManyParts,
    #[error("the upload was cut off at byte {offset}: go on from there")]
    Interrupted { offset: u64 },
    #[error("the artifact store cannot write: {0}")]
    Io(#[from] std::io::Error),
}

/// How far an upload got.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// More is to come, from this offset.
    Partial { offset: u64 },
    /// The whole file is kept, under this hash.
    Whole { sha256: String },
}

/// Releases a part's `busy` mark when its request ends, however it ends.
struct BusyGuard<'a> {
    store: &'a ArtifactStore,
    part: PathBuf,
}

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        lock(&self.store.busy).remove(&self.part);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ArtifactStore {
    pub fn open(dir: &Path) -> std::io::Result<ArtifactStore> {
        std::fs::create_dir_all(dir.join("blobs"))?;
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(ArtifactStore {
            dir: dir.to_path_buf(),
            hashes: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the content with this hash is kept. None for a hash that is
    /// not 64 hex digits (it cannot name a file).
    pub fn blob_path(&self, sha256: &str) -> Option<PathBuf> {
        let ok = sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| self.dir.join("blobs").join(&sha256[..2]).join(sha256))
    }

    fn part_path(&self, attempt: i64, path: &str) -> PathBuf {
        let key = hex::encode(&Sha256::digest(path.as_bytes())[..16]);
        self.dir.join("tmp").join(format!("{attempt}-{key}.part"))
    }

    /// How many bytes of `path` of `attempt` have arrived.
    pub async fn offset(&self, attempt: i64, path: &str) -> u64 {
        tokio::fs::metadata(self.part_path(attempt, path))
            .await
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Takes the bytes of `path` from `offset` on, out of `body`, into the
    /// part; once the part holds `size` bytes, keeps the file.
    pub async fn receive<S, E>(
        &self,
        attempt: i64,
        path: &str,
        size: u64,
        offset: u64,
        mut body: S,
    ) -> Result<Received, UploadError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    {
        use futures_util::StreamExt;
        let part = self.part_path(attempt, path);
        if !lock(&self.busy).insert(part.clone()) {
            return Err(UploadError::Busy);
        }
        let _guard = BusyGuard {
            store: self,
            part: part.clone(),
        };
        let have = if offset == 0 {
            0
        } else {
            tokio::fs::metadata(&part)
                .await
                .map(|m| m.len())
                .unwrap_or(0)
        };
        if offset == 0 && have == 0 && self.parts_of(attempt, &part).await >= MAX_PARTS_PER_ATTEMPT
        {
            return Err(UploadError::TooManyParts);
        }
        if have != offset {
            return Err(UploadError::Offset {
                have,
                asked: offset,
            });
        }
        let held = lock(&self.hashes).remove(&part);
        let mut hasher = match held {
            Some((n, h)) if n == offset => h,
            _ if offset == 0 => Sha256::new(),
            _ => rehash(&part, offset).await?,
        };
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .open(&part)
            .await?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        if offset > 0 {
            use tokio::io::AsyncSeekExt;
            out.seek(std::io::SeekFrom::Start(offset)).await?;
        }
        let mut at = offset;
        let mut cut = false;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                cut = true;
                break;
            };
            let n = chunk.len() as u64;
            if at + n > size {
                drop(out);
                let _ = tokio::fs::remove_file(&part).await;
                return Err(UploadError::TooLong { size });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await?;
            at += n;
        }
        out.flush().await?;
        if at < size {
            self.keep_hash(part, at, hasher);
            return if cut {
                Err(UploadError::Interrupted { offset: at })
            } else {
                Ok(Received::Partial { offset: at })
            };
        }
        let file = out.into_inner();
        // On disk before it is named: a crash leaves a part, never a
        // short blob.
        file.sync_data().await?;
        drop(file);
        let sha256 = hex::encode(hasher.finalize());
        let Some(blob) = self.blob_path(&sha256) else {
            return Err(UploadError::Io(std::io::Error::other("bad hash")));
        };
        if tokio::fs::metadata(&blob).await.is_ok() {
            tokio::fs::remove_file(&part).await?;
        } else {
            if let Some(parent) = blob.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::rename(&part, &blob).await?;
        }
        Ok(Received::Whole { sha256 })
    }

    /// The unfinished uploads of `attempt` other than `part`.
    async fn parts_of(&self, attempt: i64, part: &Path) -> usize {
        let prefix = format!("{attempt}-");
        let Ok(mut dir) = tokio::fs::read_dir(self.dir.join("tmp")).await else {
            return 0;
        };
        let mut n = 0;
        while let Ok(Some(e)) = dir.next_entry().await {
            if e.file_name().to_string_lossy().starts_with(&prefix) && e.path() != part {
                n += 1;
            }
        }
        n
    }

    fn keep_hash(&self, part: PathBuf, at: u64, hasher: Sha256) {
        let mut hashes = lock(&self.hashes);
        if hashes.len() >= MAX_HASH_STATES {
            if let Some(k) = hashes.keys().next().cloned() {
                hashes.remove(&k);
            }
        }
        hashes.insert(part, (at, hasher));
    }

    /// Removes part files not written to for `older_than`: uploads whose
    /// attempt ended without finishing them.
    pub fn sweep_parts(&self, older_than: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(self.dir.join("tmp")) else {
            return 0;
        };
        let mut removed = 0;
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > older_than);
            if old && std::fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

/// The hash of the first `len` bytes of a part (a resumed upload whose
/// hash state this server does not hold).
async fn rehash(part: &Path, len: u64) -> std::io::Result<Sha256> {
    let mut f = tokio::fs::File::open(part).await?.take(len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(h);
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(
        parts: &[&[u8]],
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, ()>> + Unpin {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok(bytes::Bytes::copy_from_slice(p)))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn an_upload_resumes_at_its_offset_and_appears_whole_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let first = store
            .receive(1, "dist/a", 10, 0, chunks(&[b"hello"]))
            .await
            .unwrap();
        assert_eq!(first, Received::Partial { offset: 5 });
        assert_eq!(store.offset(1, "dist/a").await, 5);
        let wrong = store.receive(1, "dist/a", 10, 3, chunks(&[b"xx"])).await;
        assert!(matches!(
            wrong,
            Err(UploadError::Offset { have: 5, asked: 3 })
        ));
        // A server that did not hold the hash state reads the part again.
        lock(&store.hashes).clear();
        let whole = store
            .receive(1, "dist/a", 10, 5, chunks(&[b"world"]))
            .await
            .unwrap();
        let sha = hex::encode(Sha256::digest(b"helloworld"));
        assert_eq!(
            whole,
            Received::Whole {
                sha256: sha.clone()
            }
        );
        let blob = store.blob_path(&sha).unwrap();
        assert_eq!(std::fs::read(&blob).unwrap(), b"helloworld");
        assert_eq!(store.offset(1, "dist/a").await, 0, "the part is gone");
        // The same content again is kept once.
        let again = store
            .receive(2, "other", 10, 0, chunks(&[b"helloworld"]))
            .await
            .unwrap();
        assert_eq!(again, Received::Whole { sha256: sha });
        let too_long = store.receive(3, "x", 2, 0, chunks(&[b"abc"])).await;
        assert!(matches!(too_long, Err(UploadError::TooLong { size: 2 })));
        assert_eq!(store.offset(3, "x").await, 0);
        assert!(store.blob_path("../../etc/passwd").is_none());
    }

    #[tokio::test]
    async fn an_attempt_holds_a_bounded_number_of_unfinished_uploads() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        for i in 0..MAX_PARTS_PER_ATTEMPT {
            let got = store
                .receive(7, &format!("f{i}"), 10, 0, chunks(&[b"x"]))
                .await
                .unwrap();
            assert_eq!(got, Received::Partial { offset: 1 });
        }
        let more = store.receive(7, "another", 10, 0, chunks(&[b"x"])).await;
        assert!(matches!(more, Err(UploadError::TooManyParts)));
        // Going on with a part it holds, and another attempt, are fine.
        assert!(store.receive(7, "f0", 10, 1, chunks(&[b"y"])).await.is_ok());
        assert!(store
            .receive(8, "another", 10, 0, chunks(&[b"x"]))
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_cut_body_keeps_what_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        let body = futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(b"abc")), Err(())]);
        let cut = store.receive(1, "f", 6, 0, body).await;
        assert!(matches!(cut, Err(UploadError::Interrupted { offset: 3 })));
        let rest = store
            .receive(1, "f", 6, 3, chunks(&[b"def"]))
            .await
            .unwrap();
        assert_eq!(
            rest,
            Received::Whole {
                sha256: hex::encode(Sha256::digest(b"abcdef"))
            }
        );
        assert_eq!(store.sweep_parts(std::time::Duration::ZERO), 0);
    }
}
