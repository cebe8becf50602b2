//! Results of split test suites: per test, per batch (the timeline of each
//! worker), and one merged JUnit report.

use super::ApiError;
use crate::store::SplitRow;
use crate::App;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_core::split::{BatchState, Outcome};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One line per split of a build, for the build's own answer.
pub fn split_summaries(splits: &[SplitRow]) -> Vec<Value> {
    splits.iter().map(summary_json).collect()
}

fn summary_json(s: &SplitRow) -> Value {
    json!({
        "id": s.id,
        "builder": s.builder,
        "job": s.job,
        "step": s.step_name,
        "state": s.state,
        "failed": s.failed,
        "summary": s.summary,
        "counts": s.data.summary(),
        "created_ms": s.created_at,
        "finished_ms": s.finished_at,
        "junit": format!("/api/v1/splits/{}/junit.xml", s.id),
    })
}

/// `GET /api/v1/builds/{id}/tests`: every split step of the build with its
/// tests (failed, flaky, lost and not run first) and each worker's batches
/// in time order.
pub async fn build_tests(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    if app.hub.store.build(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no build {id}")));
    }
    let splits = app.hub.store.splits_of_build(id).await?;
    let out: Vec<Value> = splits.iter().map(split_json).collect();
    Ok(Json(json!({ "build": id, "splits": out })))
}

fn rank(o: Option<Outcome>) -> u8 {
    match o {
        Some(Outcome::Failed) | Some(Outcome::Lost) | Some(Outcome::NotRun) => 0,
        Some(Outcome::Flaky) => 1,
        None => 2,
        Some(Outcome::Skipped) => 3,
        Some(Outcome::Passed) => 4,
    }
}

fn split_json(s: &SplitRow) -> Value {
    let mut tests: Vec<(&String, &herd_core::split::TestRecord)> = s.data.tests.iter().collect();
    tests.sort_by_key(|(id, t)| (rank(t.outcome), id.as_str()));
    let tests: Vec<Value> = tests
        .into_iter()
        .map(|(id, t)| {
            json!({
                "id": id,
                "outcome": t.outcome.map(Outcome::as_str).unwrap_or("pending"),
                "secs": t.secs,
                "runs": t.runs,
                "worker": t.worker,
                "message": t.message,
            })
        })
        .collect();
    let mut lanes: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for b in &s.data.batches {
        lanes.entry(b.worker.as_str()).or_default().push(json!({
            "batch": b.batch.id,
            "job": b.job,
            "attempt": b.attempt,
            "state": match b.state {
                BatchState::Running => "running",
                BatchState::Done => "done",
                BatchState::Lost => "lost",
            },
            "tests": b.batch.tests.len(),
            "ids": b.batch.tests,
            "started_ms": b.started_ms,
            "finished_ms": b.finished_ms,
            "exit_code": b.exit_code,
        }));
    }
    for batches in lanes.values_mut() {
        batches.sort_by_key(|b| b["started_ms"].as_i64().unwrap_or(0));
    }
    let workers: Vec<Value> = lanes
        .into_iter()
        .map(|(w, batches)| json!({ "worker": w, "batches": batches }))
        .collect();
    let mut out = summary_json(s);
    out["workers"] = Value::Array(workers);
    out["tests"] = Value::Array(tests);
    out
}

/// `GET /api/v1/splits/{id}/junit.xml`: all batches merged into one report.
pub async fn junit(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let Some(split) = app.hub.store.split(id).await? else {
        return Err(ApiError::not_found(format!("no split {id}")));
    };
    let xml = merged_junit(&split)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e))?;
    Ok((
        [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
        xml,
    )
        .into_response())
}

pub fn merged_junit(split: &SplitRow) -> Result<String, String> {
    let name = format!("{}/{}/{}", split.builder, split.job, split.step_name);
    let mut report = Report::new(format!("herd build {}", split.build_id));
    let mut suite = TestSuite::new(name);
    for (id, t) in &split.data.tests {
        let status = match t.outcome {
            Some(Outcome::Passed) | Some(Outcome::Flaky) => TestCaseStatus::success(),
            Some(Outcome::Skipped) => TestCaseStatus::skipped(),
            Some(Outcome::Failed) => TestCaseStatus::non_success(NonSuccessKind::Failure),
            Some(Outcome::Lost) | Some(Outcome::NotRun) | None => {
                TestCaseStatus::non_success(NonSuccessKind::Error)
            }
        };
        let mut case = TestCase::new(id.as_str(), status);
        if let Some(secs) = t.secs.filter(|s| s.is_finite() && *s >= 0.0) {
            case.set_time(Duration::from_secs_f64(secs));
        }
        if let Some(w) = &t.worker {
            case.add_property(("herd.worker", w.as_str()));
        }
        case.add_property((
            "herd.outcome",
            t.outcome.map(Outcome::as_str).unwrap_or("pending"),
        ));
        case.add_property(("herd.runs", t.runs.to_string().as_str()));
        if let (TestCaseStatus::NonSuccess { .. }, Some(m)) = (&case.status, &t.message) {
            case.status.set_message(m.as_str());
        }
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    report.to_string().map_err(|e| e.to_string())
}
