//! The janitor: removes what `keep:` lets go (whole builds, or only their
//! logs or artifacts), the artifact files no row names any more, and old
//! bookkeeping; then has SQLite give the space back.
//!
//! It works in small transactions (a batch of builds each) with a pause
//! between them, so that builds keep flowing while it runs. Of several
//! servers sharing a database, the one holding the `janitor` lease works;
//! the others skip their turn.

use crate::store::{JanitorRun, Removed, StoreError};
use crate::App;
use herd_api::ops::{GcProject, GcReport};
use herd_core::retention::{sweep, KeepPolicy};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Builds per transaction.
const BATCH: usize = 50;
/// The pause between two batches (writers of live builds go between).
const PAUSE: Duration = Duration::from_millis(5);
/// How long a lease lasts unless renewed (a janitor that dies frees it).
const LEASE: Duration = Duration::from_secs(600);
const LEASE_NAME: &str = "janitor";
/// Webhook deliveries, schedule firings and changes that built nothing
/// stay this long.
const BOOKKEEPING: Duration = Duration::from_secs(30 * 24 * 3600);
/// An artifact file younger than this stays even when no row names it:
/// its upload may be between writing the file and recording the row.
pub const BLOB_GRACE: Duration = Duration::from_secs(3600);
/// How often the janitor walks every artifact file.
const FILE_WALK: Duration = Duration::from_secs(24 * 3600);
/// SQLite pages given back per step (4 MiB at the default page size).
const VACUUM_STEP: i64 = 1024;

/// Starts the loop: a pass a minute after the start, then every `every`.
pub fn spawn(app: &Arc<App>, every: Duration) -> tokio::task::JoinHandle<()> {
    let app = Arc::clone(app);
    tokio::spawn(async move {
        tokio::time::sleep(every.min(Duration::from_secs(60))).await;
        let mut last_file_sweep: Option<Instant> = None;
        loop {
            // A file whose row went while it was young is found by a walk
            // over all files, once a day.
            let walk = last_file_sweep.is_none_or(|t| t.elapsed() >= FILE_WALK);
            match pass(&app, false, walk).await {
                Ok(r) if r.busy => tracing::debug!("janitor: another server holds the lease"),
                Ok(r) => {
                    if walk {
                        last_file_sweep = Some(Instant::now());
                    }
                    log_pass(&r)
                }
                Err(e) => tracing::warn!("janitor: {e}; it tries again in {every:?}"),
            }
            tokio::time::sleep(every).await;
        }
    })
}

fn log_pass(r: &GcReport) {
    let builds: usize = r.projects.iter().map(|p| p.builds.len()).sum();
    let logs: usize = r.projects.iter().map(|p| p.logs.len()).sum();
    let artifacts: usize = r.projects.iter().map(|p| p.artifacts.len()).sum();
    if builds + logs + artifacts > 0 || r.files_removed > 0 {
        tracing::info!(
            "janitor: removed {builds} builds, the logs of {logs} and the artifacts of {artifacts} more, \
             {} artifact files ({} bytes) in {} ms",
            r.files_removed,
            r.file_bytes,
            r.took_ms
        );
    }
}

/// The policy `project` is kept by.
pub fn policy(app: &App, project: &str) -> KeepPolicy {
    let live = app.live();
    live.projects
        .get(project)
        .map(|p| p.keep)
        .unwrap_or_default()
        .resolve(&live.keep)
}

/// Shows `policy` as `days=90 builds=1000 logs_days=- artifacts_days=-`.
pub fn describe(policy: &KeepPolicy) -> String {
    let f = |v: Option<u32>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
    format!(
        "days={} builds={} logs_days={} artifacts_days={}",
        f(policy.days),
        f(policy.builds),
        f(policy.logs_days),
        f(policy.artifacts_days)
    )
}

/// One pass (or, with `dry_run`, what one would remove); `walk_files`:
/// also look at every artifact file, not only those whose rows went now.
pub async fn pass(app: &App, dry_run: bool, walk_files: bool) -> Result<GcReport, StoreError> {
    let store = &app.hub.store;
    let started = Instant::now();
    let started_at = crate::store::now_ms();
    let holder = app.hub.server_id.clone();
    let lease_until = || crate::store::now_ms() + LEASE.as_millis() as i64;
    let mut report = GcReport {
        dry_run,
        ..GcReport::default()
    };
    if !dry_run
        && !store
            .claim_lease(LEASE_NAME, &holder, started_at, lease_until())
            .await?
    {
        report.busy = true;
        return Ok(report);
    }
    let outcome = sweep_all(app, dry_run, walk_files, &mut report, &|| async {
        if !dry_run {
            store
                .claim_lease(LEASE_NAME, &holder, crate::store::now_ms(), lease_until())
                .await?;
        }
        tokio::time::sleep(PAUSE).await;
        Ok(())
    })
    .await;
    report.took_ms = started.elapsed().as_millis() as u64;
    if !dry_run {
        let total =
            |f: fn(&GcProject) -> usize| report.projects.iter().map(f).sum::<usize>() as i64;
        let run = JanitorRun {
            server: holder.clone(),
            started_at,
            finished_at: crate::store::now_ms(),
            builds: total(|p| p.builds.len()),
            logs: total(|p| p.logs.len()),
            artifacts: total(|p| p.artifacts.len()),
            log_bytes: report.projects.iter().map(|p| p.log_bytes).sum::<u64>() as i64,
            blob_bytes: report.file_bytes as i64,
        };
        crate::metrics::global().janitor_pass(
            [run.builds, run.logs, run.artifacts],
            [run.log_bytes, run.blob_bytes],
            started.elapsed(),
        );
        let recorded = store.record_janitor_run(&run).await;
        let released = store.release_lease(LEASE_NAME, &holder).await;
        outcome?;
        recorded?;
        released?;
    } else {
        outcome?;
    }
    Ok(report)
}

async fn sweep_all<F, Fut>(
    app: &App,
    dry_run: bool,
    walk_files: bool,
    report: &mut GcReport,
    between: &F,
) -> Result<(), StoreError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let store = &app.hub.store;
    let now = crate::store::now_ms();
    let mut blobs = Vec::new();
    for project in store.projects_with_builds().await? {
        let keep = policy(app, &project);
        if !keep.removes_anything() {
            continue;
        }
        let builds = store.builds_for_retention(&project).await?;
        let protected = store.protected_builds(&project).await?;
        let plan = sweep(&keep, now, &builds, &protected);
        if plan.is_empty() {
            continue;
        }
        let mut out = GcProject {
            project: project.clone(),
            keep: describe(&keep),
            ..GcProject::default()
        };
        if dry_run {
            out.log_bytes =
                store.log_bytes_of(&plan.builds).await? + store.log_bytes_of(&plan.logs).await?;
            out.artifact_bytes = store.artifact_bytes_of(&plan.builds).await?
                + store.artifact_bytes_of(&plan.artifacts).await?;
            (out.builds, out.logs, out.artifacts) = (plan.builds, plan.logs, plan.artifacts);
            report.projects.push(out);
            continue;
        }
        let mut removed = Removed::default();
        for chunk in plan.builds.chunks(BATCH) {
            out.artifact_bytes += store.artifact_bytes_of(chunk).await?;
            let r = store.remove_builds(chunk).await?;
            if r.builds > 0 {
                out.builds.extend_from_slice(chunk);
            }
            removed.add(r);
            between().await?;
        }
        for chunk in plan.logs.chunks(BATCH) {
            removed.add(store.expire_logs(chunk, now).await?);
            out.logs.extend_from_slice(chunk);
            between().await?;
        }
        for chunk in plan.artifacts.chunks(BATCH) {
            out.artifact_bytes += store.artifact_bytes_of(chunk).await?;
            removed.add(store.expire_artifacts(chunk, now).await?);
            out.artifacts.extend_from_slice(chunk);
            between().await?;
        }
        out.log_bytes = removed.log_bytes;
        blobs.extend(removed.blobs);
        report.projects.push(out);
    }
    if dry_run {
        return Ok(());
    }
    if walk_files {
        let app_dir = app.artifacts.dir().to_path_buf();
        let all = tokio::task::spawn_blocking(move || all_blobs(&app_dir))
            .await
            .unwrap_or_default();
        blobs.extend(all);
    }
    blobs.sort_unstable();
    blobs.dedup();
    let (files, bytes) = remove_unnamed_blobs(app, blobs).await?;
    report.files_removed = files;
    report.file_bytes = bytes;
    report.bookkeeping = store
        .prune_bookkeeping(now - BOOKKEEPING.as_millis() as i64)
        .await?;
    // Freed pages back to the file system, a few megabytes at a time.
    for _ in 0..100_000 {
        if store.free_pages().await? == 0 {
            break;
        }
        store.give_space_back(VACUUM_STEP).await?;
        between().await?;
    }
    Ok(())
}

/// Removes each file of `candidates` that no row names and that is older
/// than [`BLOB_GRACE`]; the count and bytes removed.
async fn remove_unnamed_blobs(
    app: &App,
    candidates: Vec<String>,
) -> Result<(u64, u64), StoreError> {
    let (mut files, mut bytes) = (0, 0);
    for sha in candidates {
        let Some(path) = app.artifacts.blob_path(&sha) else {
            continue;
        };
        let Ok(meta) = tokio::fs::metadata(&path).await else {
            continue;
        };
        let young = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < BLOB_GRACE);
        if young || app.hub.store.blob_referenced(&sha).await? {
            continue;
        }
        if tokio::fs::remove_file(&path).await.is_ok() {
            files += 1;
            bytes += meta.len();
        }
    }
    Ok((files, bytes))
}

/// Every content file of the artifact store, by SHA-256 (for a sweep of
/// files whose rows went while a younger file had to stay).
fn all_blobs(artifacts: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(dirs) = std::fs::read_dir(artifacts.join("blobs")) else {
        return out;
    };
    for d in dirs.flatten() {
        if let Ok(files) = std::fs::read_dir(d.path()) {
            out.extend(
                files
                    .flatten()
                    .filter_map(|f| f.file_name().to_str().map(str::to_string)),
            );
        }
    }
    out
}
