//! The worker's disk: workspaces stay warm between jobs but are bounded.
//! The least recently used ones go when there are more than
//! `--max-workspaces`, or when free space falls under `--min-free`; one in
//! use never goes. When even that leaves too little space, the worker takes
//! no new jobs and says why (`DiskReport::low`).
//!
//! A workspace is `WORKDIR/<project>/<builder>/<job>`. A job holds a shared
//! `flock` on the directory for as long as it runs; removal takes the
//! exclusive lock without waiting, so a workspace in use is skipped, also by
//! `herd worker gc` in another process. Removal first renames the directory
//! into `WORKDIR/.trash` under the lock, so a job that starts meanwhile gets
//! a fresh directory, never a half-deleted one. The directory's mtime, set
//! when a job takes and leaves it, orders the workspaces by last use.

use herd_core::size::human_bytes;
use herd_proto::DiskReport;
use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How often a running worker looks at its disk by default.
pub const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Where herd's own files live in the work directory (not workspaces).
const TRASH: &str = ".trash";
/// Tries to take a workspace that a removal renamed away meanwhile.
const TAKE_TRIES: usize = 5;

/// How much free space the worker keeps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// Of the file system's size.
    Percent(f64),
    Bytes(u64),
}

impl MinFree {
    /// `10%` or a size (`5GiB`, `500MB`).
    pub fn parse(text: &str) -> Result<MinFree, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<f64>() {
                Ok(v) if (0.0..=100.0).contains(&v) => Ok(MinFree::Percent(v)),
                _ => Err(format!(
                    "--min-free {text}: expected a percentage from 0% to 100%, or a size such as 5GiB"
                )),
            };
        }
        herd_core::size::parse_bytes(t)
            .map(MinFree::Bytes)
            .map_err(|e| format!("--min-free {e}; or a percentage such as 10%"))
    }

    fn bytes(self, total: u64) -> u64 {
        match self {
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
            MinFree::Bytes(b) => b,
        }
    }
}

impl std::fmt::Display for MinFree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Bytes(b) => write!(f, "{}", human_bytes(*b)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiskPolicy {
    pub min_free: MinFree,
    pub max_workspaces: usize,
}

impl Default for DiskPolicy {
    fn default() -> Self {
        DiskPolicy {
            min_free: MinFree::Percent(10.0),
            max_workspaces: 50,
        }
    }
}

/// Free and total bytes of the file system holding `path`.
pub fn space(path: &Path) -> io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let frag = st.fragment_size();
    Ok((
        st.blocks_available().saturating_mul(frag),
        st.blocks().saturating_mul(frag),
    ))
}

/// A workspace on disk and when a job last took or left it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkspaceEntry {
    pub path: PathBuf,
    pub last_used: SystemTime,
}

/// What one pass did.
#[derive(Debug, Clone, PartialEq)]
pub struct GcOutcome {
    pub removed: Vec<WorkspaceEntry>,
    /// Workspaces a job holds now (left alone).
    pub in_use: usize,
    pub report: DiskReport,
}

/// A workspace a job holds; dropping it lets go and marks it used now.
#[derive(Debug)]
pub struct WorkspaceGuard {
    pub path: PathBuf,
    lock: Option<Flock<File>>,
}

impl Drop for WorkspaceGuard {
    fn drop(&mut self) {
        if let Some(lock) = &self.lock {
            touch(lock);
        }
    }
}

/// The workspaces under one work directory.
#[derive(Debug, Clone)]
pub struct Workspaces {
    pub root: PathBuf,
    pub policy: DiskPolicy,
}

impl Workspaces {
    pub fn new(root: PathBuf, policy: DiskPolicy) -> Workspaces {
        Workspaces { root, policy }
    }

    /// The workspace of a job, created if needed and held (shared: two
    /// attempts of the same job on one worker share it, as before). Waits
    /// while the disk keeper removes it.
    pub fn take(&self, parts: &[&str]) -> io::Result<WorkspaceGuard> {
        self.take_with(parts, FlockArg::LockShared)?
            .ok_or_else(|| io::Error::other("a blocking lock returned without the lock"))
    }

    /// [`Workspaces::take`] without waiting: None while the disk keeper
    /// holds the workspace (then take it on a blocking thread). The common
    /// case costs no thread hand-off before a job's first step.
    pub fn try_take(&self, parts: &[&str]) -> io::Result<Option<WorkspaceGuard>> {
        self.take_with(parts, FlockArg::LockSharedNonblock)
    }

    fn take_with(&self, parts: &[&str], how: FlockArg) -> io::Result<Option<WorkspaceGuard>> {
        let mut path = self.root.clone();
        for p in parts {
            path.push(p);
        }
        let mut last = None;
        for _ in 0..TAKE_TRIES {
            std::fs::create_dir_all(&path)?;
            let dir = match File::open(&path) {
                Ok(d) => d,
                // A removal took the directory (or its parent) meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let lock = match Flock::lock(dir, how) {
                Ok(lock) => lock,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(io::Error::from(e)),
            };
            // Still the directory at `path`, not one renamed into the trash?
            let held = lock.metadata()?;
            match std::fs::metadata(&path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                    touch(&lock);
                    return Ok(Some(WorkspaceGuard {
                        path,
                        lock: Some(lock),
                    }));
                }
                Ok(_) => continue,
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            io::Error::other(format!(
                "workspace {} was removed {TAKE_TRIES} times while taking it",
                path.display()
            ))
        }))
    }

    /// Every workspace, least recently used first.
    pub fn list(&self) -> io::Result<Vec<WorkspaceEntry>> {
        let mut out = Vec::new();
        for project in subdirs(&self.root)? {
            // herd's own directories (.outbox, .split, .trash).
            if name_of(&project).starts_with('.') {
                continue;
            }
            for builder in subdirs(&project)? {
                for job in subdirs(&builder)? {
                    let last_used = std::fs::metadata(&job)
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push(WorkspaceEntry {
                        path: job,
                        last_used,
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            a.last_used
                .cmp(&b.last_used)
                .then_with(|| a.path.cmp(&b.path))
        });
        Ok(out)
    }

    /// Removes least recently used workspaces while there are more than
    /// the policy allows or free space is under the watermark (`all`:
    /// every unused one). `dry_run` removes nothing and counts as if.
    pub fn gc(&self, all: bool, dry_run: bool) -> io::Result<GcOutcome> {
        self.empty_trash();
        let entries = self.list()?;
        let (mut free, total) = space(&self.root)?;
        let min_free = self.policy.min_free.bytes(total);
        let mut left = entries.len();
        let mut removed = Vec::new();
        let mut in_use = 0;
        for entry in entries {
            let too_many = left > self.policy.max_workspaces;
            if !(all || too_many || free < min_free) {
                break;
            }
            let size_hint = if dry_run { dir_size(&entry.path) } else { 0 };
            match self.remove(&entry.path, dry_run) {
                Ok(true) => {
                    left -= 1;
                    free = if dry_run {
                        free.saturating_add(size_hint)
                    } else {
                        space(&self.root)?.0
                    };
                    removed.push(entry);
                }
                Ok(false) => in_use += 1,
                Err(e) => {
                    tracing::warn!("cannot remove workspace {}: {e}", entry.path.display());
                }
            }
        }
        let low = (free < min_free).then(|| {
            format!(
                "low disk: {} free of {} on {} (under --min-free {}) and no unused workspace is left to remove; free space on this machine",
                human_bytes(free),
                human_bytes(total),
                self.root.display(),
                self.policy.min_free
            )
        });
        Ok(GcOutcome {
            removed,
            in_use,
            report: DiskReport {
                free_bytes: free,
                total_bytes: total,
                workspaces: u32::try_from(left).unwrap_or(u32::MAX),
                low,
            },
        })
    }

    /// Removes one workspace unless a job holds it. True when it went.
    fn remove(&self, path: &Path, dry_run: bool) -> io::Result<bool> {
        let dir = File::open(path)?;
        let lock = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(false),
            Err((_, e)) => return Err(e.into()),
        };
        if dry_run {
            return Ok(true);
        }
        let trash = self.root.join(TRASH);
        std::fs::create_dir_all(&trash)?;
        let unique = format!(
            "{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let dest = trash.join(unique);
        std::fs::rename(path, &dest)?;
        drop(lock);
        remove_tree(&dest)?;
        // Empty builder and project directories go too (best effort: a
        // job may be creating a workspace in them right now).
        if let Some(builder) = path.parent() {
            if std::fs::remove_dir(builder).is_ok() {
                if let Some(project) = builder.parent() {
                    let _ = std::fs::remove_dir(project);
                }
            }
        }
        Ok(true)
    }

    /// What a removal interrupted (a crash, a kill) is finished here.
    fn empty_trash(&self) {
        let trash = self.root.join(TRASH);
        if let Ok(items) = subdirs(&trash) {
            for item in items {
                if let Err(e) = remove_tree(&item) {
                    tracing::warn!("cannot empty {}: {e}", item.display());
                }
            }
        }
    }
}

/// Keeps the disk of a running worker: a pass after every job and on a
/// timer; what it finds goes to the server (`WorkerMsg::Disk`).
pub struct DiskKeeper {
    pub workspaces: Workspaces,
    report: tokio::sync::watch::Sender<Option<DiskReport>>,
    poke: tokio::sync::Notify,
}

impl DiskKeeper {
    pub fn new(workspaces: Workspaces) -> std::sync::Arc<DiskKeeper> {
        std::sync::Arc::new(DiskKeeper {
            workspaces,
            report: tokio::sync::watch::channel(None).0,
            poke: tokio::sync::Notify::new(),
        })
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<DiskReport>> {
        self.report.subscribe()
    }

    pub fn current(&self) -> Option<DiskReport> {
        self.report.borrow().clone()
    }

    /// A job ended: look again soon.
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// One pass; the report changes (and the server hears) when the low
    /// state, the number of workspaces or the free space (by 1 %) changed.
    pub async fn pass(&self) {
        let ws = self.workspaces.clone();
        let outcome = match tokio::task::spawn_blocking(move || ws.gc(false, false)).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                tracing::warn!(
                    "cannot look after the workspaces in {}: {e}",
                    self.workspaces.root.display()
                );
                return;
            }
            Err(e) => {
                tracing::warn!("the workspace pass failed: {e}");
                return;
            }
        };
        for e in &outcome.removed {
            tracing::info!(
                "removed workspace {} (last used {}s ago) to keep --max-workspaces {} and --min-free {}",
                e.path.display(),
                e.last_used.elapsed().map(|d| d.as_secs()).unwrap_or(0),
                self.workspaces.policy.max_workspaces,
                self.workspaces.policy.min_free
            );
        }
        let new = outcome.report;
        self.report.send_if_modified(|old| {
            let changed = match old {
                None => true,
                Some(o) => {
                    o.low != new.low
                        || o.workspaces != new.workspaces
                        || o.free_bytes.abs_diff(new.free_bytes) > new.total_bytes / 100
                }
            };
            if changed {
                match (&old.as_ref().and_then(|o| o.low.clone()), &new.low) {
                    (None, Some(why)) => tracing::warn!("taking no new jobs: {why}"),
                    (Some(_), None) => tracing::info!(
                        "disk space is back ({} free): taking jobs again",
                        human_bytes(new.free_bytes)
                    ),
                    _ => {}
                }
                *old = Some(new.clone());
            }
            changed
        });
    }

    /// Passes every `every`, and soon after each job, until dropped.
    pub async fn run(self: std::sync::Arc<Self>, every: std::time::Duration) {
        loop {
            self.pass().await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.poke.notified() => {}
            }
        }
    }
}

/// Removes a tree, making read-only directories writable first (Go's
/// module cache and some test suites leave them).
fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_writable(path);
            std::fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

fn make_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![path.to_path_buf()];
    // Bounded by the tree itself; symlinks are not followed.
    while let Some(dir) = stack.pop() {
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(items) = std::fs::read_dir(&dir) {
            for item in items.flatten() {
                if item.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(item.path());
                }
            }
        }
    }
}

/// Bytes in a tree (for `--dry-run`'s estimate); symlinks not followed.
fn dir_size(path: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(items) = std::fs::read_dir(&dir) else {
            continue;
        };
        for item in items.flatten() {
            match item.metadata() {
                Ok(m) if m.is_dir() => stack.push(item.path()),
                Ok(m) => total = total.saturating_add(m.blocks() * 512),
                Err(_) => {}
            }
        }
    }
    total
}

fn touch(dir: &Flock<File>) {
    use nix::sys::stat::futimens;
    use nix::sys::time::TimeSpec;
    let _ = futimens(&**dir, &TimeSpec::UTIME_OMIT, &TimeSpec::UTIME_NOW);
}

fn subdirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let items = match std::fs::read_dir(dir) {
        Ok(i) => i,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(items
        .flatten()
        .filter(|i| i.file_type().is_ok_and(|t| t.is_dir()))
        .map(|i| i.path())
        .collect())
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keeper(dir: &Path, max: usize, min_free: MinFree) -> Workspaces {
        Workspaces::new(
            dir.to_path_buf(),
            DiskPolicy {
                min_free,
                max_workspaces: max,
            },
        )
    }

    fn age(path: &Path, secs_ago: u64) {
        let f = File::open(path).unwrap();
        let t = SystemTime::now() - std::time::Duration::from_secs(secs_ago);
        f.set_modified(t).unwrap();
    }

    #[test]
    fn taking_without_waiting_gives_way_to_the_keeper_and_takes_when_it_is_done() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = keeper(tmp.path(), 10, MinFree::Bytes(0));
        let first = ws.try_take(&["p", "b", "j"]).unwrap().unwrap();
        let path = first.path.clone();
        drop(first);
        // The keeper's lock while it removes a workspace.
        let removing = Flock::lock(File::open(&path).unwrap(), FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .unwrap();
        assert!(ws.try_take(&["p", "b", "j"]).unwrap().is_none());
        drop(removing);
        let again = ws.try_take(&["p", "b", "j"]).unwrap().unwrap();
        assert_eq!(again.path, path);
        // Shared: a second attempt of the same job takes it too.
        assert!(ws.try_take(&["p", "b", "j"]).unwrap().is_some());
    }

    #[test]
    fn min_free_parses() {
        assert_eq!(MinFree::parse("10%"), Ok(MinFree::Percent(10.0)));
        assert_eq!(MinFree::parse("5GB"), Ok(MinFree::Bytes(5_000_000_000)));
        assert!(MinFree::parse("150%").unwrap_err().contains("0% to 100%"));
        assert!(MinFree::parse("lots").unwrap_err().contains("e.g. 500MB"));
    }

    #[test]
    fn least_recently_used_go_first_and_one_in_use_never() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = keeper(tmp.path(), 2, MinFree::Bytes(0));
        let mut paths = Vec::new();
        for (i, job) in ["a", "b", "c", "d"].iter().enumerate() {
            let g = ws.take(&["p", "build", job]).unwrap();
            std::fs::write(g.path.join("file"), "x").unwrap();
            paths.push(g.path.clone());
            drop(g);
            age(&paths[i], 100 - i as u64 * 10);
        }
        // `a` is the oldest but a job holds it.
        let held = ws.take(&["p", "build", "a"]).unwrap();
        age(&paths[0], 1000);
        let out = ws.gc(false, false).unwrap();
        let gone: Vec<_> = out.removed.iter().map(|e| name_of(&e.path)).collect();
        assert_eq!(gone, ["b", "c"]);
        assert_eq!(out.in_use, 1);
        assert_eq!(out.report.workspaces, 2);
        assert!(out.report.low.is_none());
        assert!(paths[0].join("file").exists() && paths[3].exists());
        assert!(!paths[1].exists() && !paths[2].exists());
        drop(held);
        // `all`: every unused one, and the trash is empty after.
        let out = ws.gc(true, false).unwrap();
        assert_eq!(out.removed.len(), 2);
        assert!(ws.list().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(tmp.path().join(TRASH)).unwrap().count(),
            0
        );
        // Empty builder and project directories went with them.
        assert!(!tmp.path().join("p").exists());
    }

    #[test]
    fn a_watermark_that_cannot_be_met_removes_all_unused_and_says_low() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = keeper(tmp.path(), 50, MinFree::Percent(100.0));
        let held = ws.take(&["p", "b", "busy"]).unwrap();
        drop(ws.take(&["p", "b", "idle"]).unwrap());
        let dry = ws.gc(false, true).unwrap();
        assert_eq!(dry.removed.len(), 1);
        assert!(
            tmp.path().join("p/b/idle").exists(),
            "a dry run removes nothing"
        );
        let out = ws.gc(false, false).unwrap();
        assert_eq!(out.removed.len(), 1);
        assert_eq!(out.in_use, 1);
        let low = out.report.low.unwrap();
        assert!(low.contains("under --min-free 100%"), "{low}");
        assert!(held.path.exists());
    }

    #[test]
    fn a_job_taking_a_workspace_being_removed_gets_a_fresh_one() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = keeper(tmp.path(), 0, MinFree::Bytes(0));
        let g = ws.take(&["p", "b", "j"]).unwrap();
        std::fs::write(g.path.join("old"), "x").unwrap();
        drop(g);
        let out = ws.gc(false, false).unwrap();
        assert_eq!(out.removed.len(), 1);
        let g = ws.take(&["p", "b", "j"]).unwrap();
        assert!(!g.path.join("old").exists());
        // Held now: max 0 cannot take it.
        assert_eq!(ws.gc(false, false).unwrap().in_use, 1);
    }

    #[test]
    fn read_only_trees_are_removed() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let ws = keeper(tmp.path(), 0, MinFree::Bytes(0));
        let g = ws.take(&["p", "b", "j"]).unwrap();
        let sealed = g.path.join("pkg/mod");
        std::fs::create_dir_all(&sealed).unwrap();
        std::fs::write(sealed.join("f"), "x").unwrap();
        std::fs::set_permissions(&sealed, std::fs::Permissions::from_mode(0o500)).unwrap();
        std::fs::set_permissions(g.path.join("pkg"), std::fs::Permissions::from_mode(0o500))
            .unwrap();
        drop(g);
        let out = ws.gc(false, false).unwrap();
        assert_eq!(out.removed.len(), 1);
        assert!(!tmp.path().join("p/b/j").exists());
    }
}
