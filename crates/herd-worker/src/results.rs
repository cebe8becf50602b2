//! A `run:` step's own per-test results (`results:` in herd.yml): once
//! the command has ended, its report (JUnit, TAP, subunit) or a pattern
//! over its output is read, and the results go to the server as the one
//! shard of a split of their own, so that they show beside split suites'
//! (the build page, `/api/v1/builds/{id}/tests`, the merged JUnit) and
//! their timings are remembered. The exit code still decides the step.

use crate::outbox::StopKind;
use crate::process::StepRunner;
use crate::split::SplitLink;
use herd_proto::{BatchReport, SplitReply, SplitRequest, StepResults, TestRun};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// The script that runs `run` and keeps its output in `out` too (for a
/// pattern), exiting with the command's own code.
pub(crate) fn teed(run: &str, out: &Path) -> String {
    let q = |p: &Path| {
        shlex::try_quote(&p.to_string_lossy())
            .map(|q| q.into_owned())
            .unwrap_or_default()
    };
    let rc = out.with_extension("rc");
    format!(
        "( ( {run}\n); echo $? > {rc} ) 2>&1 | tee {out}; exit \"$(cat {rc} 2>/dev/null || echo 1)\"",
        rc = q(&rc),
        out = q(out),
    )
}

/// Where a pattern step's output is kept while it runs.
pub(crate) fn output_file(workdir: &Path, attempt: i64, step: u32) -> PathBuf {
    workdir
        .join(".split")
        .join(format!("{attempt}-{step}-results.out"))
}

/// Reads the step's results and sends them; returns the log offset after
/// what it wrote, None when the attempt was abandoned.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn report(
    spec: &StepResults,
    cmd: &StepRunner<'_>,
    link: &SplitLink,
    output: Option<&Path>,
    exit_code: Option<i32>,
    wall_secs: f64,
    mut offset: u64,
    stop: &mut watch::Receiver<Option<StopKind>>,
) -> Option<u64> {
    let read = read(spec, cmd.workspace, output);
    if let Some(out) = output {
        let _ = std::fs::remove_file(out);
        let _ = std::fs::remove_file(out.with_extension("rc"));
    }
    let mut runs = match read {
        Ok(r) => r,
        Err(e) => {
            let ok = cmd
                .note(
                    &mut offset,
                    &format!("[herd] cannot read the results: {e}\n"),
                )
                .await;
            return ok.then_some(offset);
        }
    };
    // Ids and messages leave the worker: masked like the output.
    let masker = cmd.output.mask.as_deref();
    for r in &mut runs {
        r.id = crate::mask::mask_opt(masker, &r.id);
        r.message = r.message.take().map(|m| crate::mask::mask_opt(masker, &m));
    }
    let mut by_id: HashMap<String, TestRun> = HashMap::new();
    let mut ids = Vec::new();
    for r in runs {
        if !by_id.contains_key(&r.id) {
            ids.push(r.id.clone());
        }
        // A test reported twice: a failure wins.
        match by_id.get(&r.id) {
            Some(prev) if prev.outcome == herd_proto::RunOutcome::Failed => {}
            _ => {
                by_id.insert(r.id.clone(), r);
            }
        }
    }
    if ids.is_empty() {
        let ok = cmd
            .note(&mut offset, "[herd] the results name no tests\n")
            .await;
        return ok.then_some(offset);
    }
    let mut req = SplitRequest {
        attempt: cmd.attempt,
        step: cmd.step,
        req: 0,
        list_digest: Some(herd_core::split::list_digest(&ids)),
        list: Some(ids),
        list_secs: None,
        list_parts: None,
        done: None,
    };
    let mut first = true;
    // Bounded: each answer hands out tests of the list, or ends it.
    for _ in 0..100_000 {
        let reply = match link.request(req.clone(), stop, None).await {
            Ok(r) => r,
            Err(crate::split::Interrupted::Stop(StopKind::Abandon)) => return None,
            Err(_) => {
                let ok = cmd
                    .note(&mut offset, "[herd] the results could not be sent\n")
                    .await;
                return ok.then_some(offset);
            }
        };
        // Until the server has the list, each request names it.
        if !matches!(reply, SplitReply::Wait { .. }) {
            req.list = None;
            req.list_digest = None;
        }
        req.done = None;
        match reply {
            SplitReply::Batch { id, tests } => {
                req.done = Some(BatchReport {
                    batch: id,
                    exit_code,
                    wall_secs: if first { wall_secs } else { 0.0 },
                    tests: Some(tests.iter().filter_map(|t| by_id.get(t).cloned()).collect()),
                });
                first = false;
            }
            SplitReply::Wait { ms } => {
                tokio::time::sleep(Duration::from_millis(ms.clamp(10, 1_000))).await;
            }
            SplitReply::Done { summary, .. } => {
                let ok = cmd.note(&mut offset, &format!("[herd] {summary}\n")).await;
                return ok.then_some(offset);
            }
            SplitReply::Fail { message } => {
                let ok = cmd
                    .note(
                        &mut offset,
                        &format!("[herd] results not kept: {message}\n"),
                    )
                    .await;
                return ok.then_some(offset);
            }
            // `request` sends the list itself when asked.
            SplitReply::SendList => {
                let ok = cmd
                    .note(
                        &mut offset,
                        "[herd] results not kept: the server asked for the list again\n",
                    )
                    .await;
                return ok.then_some(offset);
            }
        }
    }
    Some(offset)
}

fn read(
    spec: &StepResults,
    workspace: &Path,
    output: Option<&Path>,
) -> Result<Vec<TestRun>, String> {
    use std::io::Read as _;
    let limit = herd_core::results::MAX_REPORT_BYTES as u64;
    if let Some(pattern) = &spec.pattern {
        let mut text = Vec::new();
        if let Some(out) = output {
            if let Ok(f) = std::fs::File::open(out) {
                let _ = f.take(limit).read_to_end(&mut text);
            }
        }
        return herd_core::results::pattern_all(pattern, &String::from_utf8_lossy(&text));
    }
    let Some(path) = &spec.path else {
        return Ok(Vec::new());
    };
    let file = workspace.join(path);
    let mut bytes = Vec::new();
    std::fs::File::open(&file)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("no {} report at {path} ({e})", spec.format.key()))?;
    herd_core::results::read_all(spec.format, &bytes)
}
