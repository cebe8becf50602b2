//! Test timings remembered between builds, per project, builder and split
//! step: what the next split of the same suite balances its batches by.

use super::locks::Tx;
use super::Result;
use herd_core::split::{moving_average, SplitState};
use sqlx::Row;
use std::collections::HashMap;

/// The timings of one suite; the empty test id holds the runner's start-up.
pub(super) async fn of_suite(
    tx: &mut Tx<'_>,
    project: &str,
    builder: &str,
    step: &str,
) -> Result<HashMap<String, f64>> {
    let rows = sqlx::query(
        "SELECT test, secs FROM test_timings WHERE project = $1 AND builder = $2 AND step = $3",
    )
    .bind(project)
    .bind(builder)
    .bind(step)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("test")?, r.try_get("secs")?)))
        .collect()
}

/// What a new split of a suite balances by: its own timings, and for the
/// tests it has none of, the same test ids' from sibling builders of the
/// project with a step of the same name (matrix cells, other platforms),
/// averaged: a first run of a new builder starts from them, not blind.
pub(super) async fn with_priors(
    tx: &mut Tx<'_>,
    project: &str,
    builder: &str,
    step: &str,
) -> Result<HashMap<String, f64>> {
    let mut timings = of_suite(tx, project, builder, step).await?;
    let siblings = sqlx::query(
        "SELECT test, AVG(secs) AS secs FROM test_timings \
         WHERE project = $1 AND step = $2 AND builder <> $3 GROUP BY test",
    )
    .bind(project)
    .bind(step)
    .bind(builder)
    .fetch_all(&mut **tx)
    .await?;
    for r in &siblings {
        let test: String = r.try_get("test")?;
        let secs: f64 = r.try_get("secs")?;
        if secs.is_finite() && secs >= 0.0 {
            timings.entry(test).or_insert(secs);
        }
    }
    Ok(timings)
}

/// A split ended: its passing tests' times join the moving averages.
pub(super) async fn remember(
    tx: &mut Tx<'_>,
    build_id: i64,
    builder: &str,
    step: &str,
    state: &SplitState,
    now: i64,
) -> Result<()> {
    let project: String = sqlx::query("SELECT project FROM builds WHERE id = $1")
        .bind(build_id)
        .fetch_one(&mut **tx)
        .await?
        .try_get("project")?;
    let old = of_suite(tx, &project, builder, step).await?;
    let mut fresh = state.passing_timings();
    if let Some(s) = state.measured_startup_secs() {
        fresh.push((String::new(), s));
    }
    for (test, secs) in fresh {
        let avg = moving_average(old.get(&test).copied(), secs);
        sqlx::query(
            "INSERT INTO test_timings (project, builder, step, test, secs, runs, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $6) \
             ON CONFLICT (project, builder, step, test) DO UPDATE SET \
             secs = excluded.secs, runs = test_timings.runs + 1, updated_at = excluded.updated_at",
        )
        .bind(&project)
        .bind(builder)
        .bind(step)
        .bind(&test)
        .bind(avg)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
