//! `herd backup` and `herd restore` for a server on SQLite: one file (tar,
//! zstd-compressed) with a consistent copy of the database, the artifact
//! files, the TLS files and the admin token.
//!
//! The database is copied with `VACUUM INTO` on a read-only connection: one
//! read transaction, so the copy is the database as of one instant while
//! the server goes on writing (WAL lets writers run beside a reader). The
//! artifact files are copied after it: content files never change once
//! named, so every file the copy's rows name is there unless the janitor
//! removed its last row in between (then the copy has a row without its
//! file, shown as missing). Git mirrors are not kept: a server fetches them
//! again.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

/// The file in the archive that says what it is.
const MANIFEST: &str = "HERD-BACKUP";
const DB_NAME: &str = "herd.db";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot copy the database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a backup or restore holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub database_bytes: u64,
    pub artifact_files: u64,
    pub artifact_bytes: u64,
    pub other_files: Vec<String>,
}

/// Where a server's data lives.
#[derive(Debug, Clone)]
pub struct DataPaths {
    pub data: PathBuf,
    /// The SQLite file (default DATA/herd.db).
    pub database: PathBuf,
    /// The artifact store (default DATA/artifacts).
    pub artifacts: PathBuf,
}

impl DataPaths {
    pub fn new(data: &Path, database: Option<&Path>, artifacts: Option<&Path>) -> DataPaths {
        DataPaths {
            data: data.to_path_buf(),
            database: database.map_or_else(|| data.join(DB_NAME), Path::to_path_buf),
            artifacts: artifacts.map_or_else(|| data.join("artifacts"), Path::to_path_buf),
        }
    }
}

/// Writes a backup of `paths` to `to` (through `to.part`, renamed when whole).
pub async fn backup(paths: &DataPaths, to: &Path) -> Result<Summary, BackupError> {
    if !paths.database.is_file() {
        return Err(BackupError::Refused(format!(
            "no database at {}: give --data DIR of a server on SQLite (for PostgreSQL, see docs/operations.md: pg_dump and the artifact directory)",
            paths.database.display()
        )));
    }
    let stage = tempfile::Builder::new()
        .prefix(".herd-backup-")
        .tempdir_in(
            to.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .map_err(io(to))?;
    let copy = stage.path().join(DB_NAME);
    snapshot(&paths.database, &copy).await?;
    let part = with_suffix(to, ".part");
    let paths = paths.clone();
    let to = to.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let summary = write_archive(&paths, &copy, &part)?;
        std::fs::rename(&part, &to).map_err(io(&to))?;
        drop(stage);
        Ok(summary)
    })
    .await
    .map_err(|e| BackupError::Refused(format!("the backup task failed: {e}")))?
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A consistent copy of the SQLite database at `db` in `copy`.
async fn snapshot(db: &Path, copy: &Path) -> Result<(), BackupError> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await?;
    let target = copy
        .to_str()
        .ok_or_else(|| BackupError::Refused(format!("{} is not UTF-8", copy.display())))?;
    sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

fn write_archive(paths: &DataPaths, db_copy: &Path, part: &Path) -> Result<Summary, BackupError> {
    // It holds the admin token: readable by its owner only.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(part)
            .map_err(io(part))?
    };
    let enc = zstd::Encoder::new(BufWriter::new(file), 3).map_err(io(part))?;
    let mut tar = tar::Builder::new(enc);
    tar.follow_symlinks(false);
    let mut summary = Summary::default();
    let manifest = format!(
        "herd backup {}\nmade {}\n",
        env!("CARGO_PKG_VERSION"),
        chrono::Utc::now().to_rfc3339()
    );
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, MANIFEST, manifest.as_bytes())
        .map_err(io(part))?;
    summary.database_bytes = std::fs::metadata(db_copy).map_err(io(db_copy))?.len();
    tar.append_path_with_name(db_copy, DB_NAME)
        .map_err(io(db_copy))?;
    for name in [crate::ADMIN_TOKEN_FILE, "local-worker-token"] {
        let p = paths.data.join(name);
        if p.is_file() {
            tar.append_path_with_name(&p, name).map_err(io(&p))?;
            summary.other_files.push(name.to_string());
        }
    }
    let tls = paths.data.join("tls");
    if tls.is_dir() {
        tar.append_dir_all("tls", &tls).map_err(io(&tls))?;
        summary.other_files.push("tls/".into());
    }
    let blobs = paths.artifacts.join("blobs");
    if let Ok(dirs) = std::fs::read_dir(&blobs) {
        for d in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(d.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                let (Some(dir), Some(name)) = (
                    d.file_name().to_str().map(str::to_string),
                    f.file_name().to_str().map(str::to_string),
                ) else {
                    continue;
                };
                // A file the janitor removed meanwhile is simply not kept.
                match tar.append_path_with_name(&path, format!("artifacts/blobs/{dir}/{name}")) {
                    Ok(()) => {
                        summary.artifact_files += 1;
                        summary.artifact_bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io(&path)(e)),
                }
            }
        }
    }
    let enc = tar.into_inner().map_err(io(part))?;
    let out = enc.finish().map_err(io(part))?;
    let file = out.into_inner().map_err(|e| io(part)(e.into_error()))?;
    file.sync_all().map_err(io(part))?;
    Ok(summary)
}

/// Unpacks the backup `file` into the data directory `data`, which must
/// hold no database yet (a restore never overwrites a server's data).
pub fn restore(file: &Path, data: &Path) -> Result<Summary, BackupError> {
    if data.join(DB_NAME).exists() {
        return Err(BackupError::Refused(format!(
            "{} already holds a database: restore into an empty directory (and point the server's --data there)",
            data.display()
        )));
    }
    let f = File::open(file).map_err(io(file))?;
    let dec = zstd::Decoder::new(BufReader::new(f)).map_err(io(file))?;
    let mut tar = tar::Archive::new(dec);
    tar.set_preserve_permissions(true);
    std::fs::create_dir_all(data).map_err(io(data))?;
    let mut summary = Summary::default();
    let mut saw_manifest = false;
    for entry in tar.entries().map_err(io(file))? {
        let mut entry = entry.map_err(io(file))?;
        let path = entry.path().map_err(io(file))?.into_owned();
        let name = path.to_string_lossy().to_string();
        if name == MANIFEST {
            saw_manifest = true;
            continue;
        }
        if !saw_manifest {
            return Err(BackupError::Refused(format!(
                "{} is not a herd backup (it does not start with {MANIFEST})",
                file.display()
            )));
        }
        let size = entry.size();
        // unpack_in refuses paths that leave `data` (`..`, absolute).
        if !entry.unpack_in(data).map_err(io(data))? {
            return Err(BackupError::Refused(format!(
                "{} holds a path outside the data directory: {name}",
                file.display()
            )));
        }
        if name == DB_NAME {
            summary.database_bytes = size;
        } else if name.starts_with("artifacts/blobs/") && entry.header().entry_type().is_file() {
            summary.artifact_files += 1;
            summary.artifact_bytes += size;
        } else if entry.header().entry_type().is_file() {
            summary.other_files.push(name);
        }
    }
    if !saw_manifest || summary.database_bytes == 0 {
        return Err(BackupError::Refused(format!(
            "{} is not a whole herd backup (no database in it)",
            file.display()
        )));
    }
    Ok(summary)
}
