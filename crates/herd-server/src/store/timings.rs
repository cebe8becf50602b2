//! Test timings remembered between builds, per project, builder and split
//! step: what the next split of the same suite balances its batches by.

use super::locks::Tx;
use super::Result;
use herd_core::split::SplitState;

/// Timings written per statement.
const REMEMBER_ROWS: usize = 500;
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
    list: &[String],
) -> Result<HashMap<String, f64>> {
    let mut timings = of_suite(tx, project, builder, step).await?;
    if list.iter().all(|t| timings.contains_key(t)) {
        return Ok(timings);
    }
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
    let mut fresh = state.passing_timings();
    if let Some(s) = state.measured_startup_secs() {
        fresh.push((String::new(), s));
    }
    remember_timings(tx, &project, builder, step, fresh, now).await
}

/// Each test's new time joins its moving average: new = old + (x - old) / 3.
async fn remember_timings(
    tx: &mut Tx<'_>,
    project: &str,
    builder: &str,
    step: &str,
    mut fresh: Vec<(String, f64)>,
    now: i64,
) -> Result<()> {
    fresh.retain(|(_, secs)| secs.is_finite());
    // Many rows per statement (a suite has up to 100,000 tests), the
    // moving average taken in SQL.
    for rows in fresh.chunks(REMEMBER_ROWS) {
        let values: Vec<String> = (0..rows.len())
            .map(|i| format!("($1, $2, $3, ${}, ${}, 1, $4)", 5 + 2 * i, 6 + 2 * i))
            .collect();
        let sql = format!(
            "INSERT INTO test_timings (project, builder, step, test, secs, runs, updated_at) \
             VALUES {} ON CONFLICT (project, builder, step, test) DO UPDATE SET \
             secs = test_timings.secs + (excluded.secs - test_timings.secs) / 3.0, \
             runs = test_timings.runs + 1, updated_at = excluded.updated_at",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(project)
            .bind(builder)
            .bind(step)
            .bind(now);
        for (test, secs) in rows {
            q = q.bind(test).bind(*secs);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_join_their_moving_average_many_rows_at_a_time() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = super::super::Store::open_sqlite(&dir.path().join("t.db"))
                .await
                .expect("store");
            // More rows than one statement takes.
            let n = REMEMBER_ROWS * 2 + 7;
            let first: Vec<(String, f64)> = (0..n).map(|i| (format!("t{i}"), 3.0)).collect();
            let mut second: Vec<(String, f64)> = (0..n).map(|i| (format!("t{i}"), 6.0)).collect();
            second.push(("new".into(), 1.5));
            second.push(("nan".into(), f64::NAN));
            for fresh in [first, second] {
                let mut tx = store.write.begin().await.expect("tx");
                remember_timings(&mut tx, "p", "b", "tests", fresh, 1)
                    .await
                    .expect("remember");
                tx.commit().await.expect("commit");
            }
            let mut tx = store.write.begin().await.expect("tx");
            let t = of_suite(&mut tx, "p", "b", "tests").await.expect("read");
            assert_eq!(t.len(), n + 1, "every test once, the NaN not at all");
            // 3 then 6: a third of the way, 4.
            assert!((t["t0"] - 4.0).abs() < 1e-9, "{}", t["t0"]);
            assert!((t[&format!("t{}", n - 1)] - 4.0).abs() < 1e-9);
            assert_eq!(t["new"], 1.5);
            let runs: i64 = sqlx::query("SELECT runs FROM test_timings WHERE test = 't5'")
                .fetch_one(&mut *tx)
                .await
                .expect("runs")
                .try_get("runs")
                .expect("runs");
            assert_eq!(runs, 2);
        });
    }
}
