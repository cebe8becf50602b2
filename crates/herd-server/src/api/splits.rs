//! Results of split test suites: per test, per batch (the timeline of each
//! worker), and one merged JUnit report.

use super::{ApiError, ApiPath, AppState};
use crate::access::TokenRefusals;
use crate::store::{SplitHead, SplitRow};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use herd_api::tests::{
    BatchView, BuildTests, SplitDetail, SplitSummary, TestCounts, TestOutcome, TestResult,
    WorkerLane,
};
use herd_api::ErrorBody;
use herd_core::split::{BatchState, Outcome};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::collections::BTreeMap;
use std::time::Duration;

/// One line per split of a build, for the build's own answer.
pub(super) fn summary(s: &SplitHead) -> SplitSummary {
    let c = s.counts;
    SplitSummary {
        id: s.id,
        builder: s.builder.clone(),
        job: s.job.clone(),
        step: s.step_name.clone(),
        state: if s.state == "done" {
            herd_api::tests::SplitState::Done
        } else {
            herd_api::tests::SplitState::Running
        },
        failed: s.failed,
        summary: s.summary.clone(),
        counts: TestCounts {
            total: c.total as u64,
            passed: c.passed as u64,
            failed: c.failed as u64,
            flaky: c.flaky as u64,
            skipped: c.skipped as u64,
            lost: c.lost as u64,
            not_run: c.not_run as u64,
            pending: c.pending as u64,
        },
        created_ms: s.created_at,
        finished_ms: s.finished_at,
        junit: format!("/api/v1/splits/{}/junit.xml", s.id),
    }
}

/// Every split step of the build with its tests (failed, flaky, lost and
/// not run first) and each worker's batches in time order.
#[utoipa::path(
    get,
    path = "/api/v1/builds/{id}/tests",
    tag = "tests",
    params(("id" = i64, Path, description = "The build's id")),
    responses(
        (status = 200, body = BuildTests),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such build", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn build_tests(
    State(app): AppState,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<BuildTests>, ApiError> {
    if app.hub.store.build(id).await?.is_none() {
        return Err(ApiError::not_found(format!("no build {id}")));
    }
    let splits = app.hub.store.splits_of_build(id).await?;
    Ok(Json(BuildTests {
        build: id,
        splits: splits.iter().map(detail).collect(),
    }))
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

fn outcome_view(o: Option<Outcome>) -> TestOutcome {
    match o {
        None => TestOutcome::Pending,
        Some(Outcome::Passed) => TestOutcome::Passed,
        Some(Outcome::Failed) => TestOutcome::Failed,
        Some(Outcome::Flaky) => TestOutcome::Flaky,
        Some(Outcome::Skipped) => TestOutcome::Skipped,
        Some(Outcome::Lost) => TestOutcome::Lost,
        Some(Outcome::NotRun) => TestOutcome::NotRun,
    }
}

fn detail(s: &SplitRow) -> SplitDetail {
    let mut tests: Vec<(&String, &herd_core::split::TestRecord)> = s.data.tests.iter().collect();
    tests.sort_by_key(|(id, t)| (rank(t.outcome), id.as_str()));
    let tests = tests
        .into_iter()
        .map(|(id, t)| TestResult {
            id: id.clone(),
            outcome: outcome_view(t.outcome),
            secs: t.secs,
            runs: t.runs,
            worker: t.worker.clone(),
            message: t.message.clone(),
        })
        .collect();
    let mut lanes: BTreeMap<&str, Vec<BatchView>> = BTreeMap::new();
    for b in &s.data.batches {
        lanes.entry(b.worker.as_str()).or_default().push(BatchView {
            batch: b.batch.id,
            job: b.job,
            attempt: b.attempt,
            state: match b.state {
                BatchState::Running => herd_api::tests::BatchState::Running,
                BatchState::Done => herd_api::tests::BatchState::Done,
                BatchState::Lost => herd_api::tests::BatchState::Lost,
            },
            tests: b.batch.tests.len() as u64,
            ids: b.batch.tests.clone(),
            started_ms: b.started_ms,
            finished_ms: b.finished_ms,
            exit_code: b.exit_code,
        });
    }
    let workers = lanes
        .into_iter()
        .map(|(w, mut batches)| {
            batches.sort_by_key(|b| b.started_ms);
            WorkerLane {
                worker: w.to_string(),
                batches,
            }
        })
        .collect();
    SplitDetail {
        summary: summary(&s.head()),
        workers,
        tests,
    }
}

/// All batches of a split merged into one JUnit report.
#[utoipa::path(
    get,
    path = "/api/v1/splits/{id}/junit.xml",
    tag = "tests",
    params(("id" = i64, Path, description = "The split's id (`splits[].id` of a build)")),
    responses(
        (status = 200, description = "A JUnit XML report", content_type = "application/xml", body = String),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such split", body = ErrorBody),
        TokenRefusals,
    ),
    security((), ("token" = [])),
)]
pub async fn junit(State(app): AppState, ApiPath(id): ApiPath<i64>) -> Result<Response, ApiError> {
    let Some(split) = app.hub.store.split(id).await? else {
        return Err(ApiError::not_found(format!("no split {id}")));
    };
    let xml = merged_junit(&split)
        .map_err(|e| ApiError::internal("could not write the JUnit report", e))?;
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
