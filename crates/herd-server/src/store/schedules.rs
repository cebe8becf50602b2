//! What the clock starts: firings of projects' `schedule:` (claimed once
//! per firing by several servers, with what each built) and the notices
//! to owners of workers that went away.

use super::{get, Result, Store};

impl Store {
    /// Claims the firing of `schedule` at `fire_at` for `server`: false when
    /// another server (or this one, before a restart) claimed it.
    pub async fn claim_schedule_run(
        &self,
        project: &str,
        schedule: &str,
        fire_at: i64,
        server: &str,
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO schedule_runs (project, schedule, fire_at, server) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (project, schedule, fire_at) DO NOTHING",
        )
        .bind(project)
        .bind(schedule)
        .bind(fire_at)
        .bind(server)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// What a firing became: its build and revision, or why none.
    pub async fn settle_schedule_run(
        &self,
        project: &str,
        schedule: &str,
        fire_at: i64,
        built: std::result::Result<(i64, &str), &str>,
    ) -> Result<()> {
        let (build_id, revision, skipped) = match built {
            Ok((id, rev)) => (Some(id), Some(rev), None),
            Err(why) => (None, None, Some(why)),
        };
        sqlx::query(
            "UPDATE schedule_runs SET build_id = $4, revision = $5, skipped = $6 \
             WHERE project = $1 AND schedule = $2 AND fire_at = $3",
        )
        .bind(project)
        .bind(schedule)
        .bind(fire_at)
        .bind(build_id)
        .bind(revision)
        .bind(skipped)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The latest firing of a schedule, when it ever fired.
    pub async fn last_schedule_fire(&self, project: &str, schedule: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(fire_at) AS at FROM schedule_runs WHERE project = $1 AND schedule = $2",
        )
        .bind(project)
        .bind(schedule)
        .fetch_one(&self.read)
        .await?;
        get(&row, "at")
    }

    /// The revision the schedule last built (`only_if_changed` compares).
    pub async fn last_schedule_revision(
        &self,
        project: &str,
        schedule: &str,
    ) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT revision FROM schedule_runs WHERE project = $1 AND schedule = $2 \
             AND revision IS NOT NULL ORDER BY fire_at DESC LIMIT 1",
        )
        .bind(project)
        .bind(schedule)
        .fetch_optional(&self.read)
        .await?;
        Ok(match row {
            Some(r) => get(&r, "revision")?,
            None => None,
        })
    }

    /// Records that a worker's owner was told it is away (Some) or that it
    /// is back (None).
    pub async fn note_away_notice(&self, worker: &str, at: Option<i64>) -> Result<()> {
        sqlx::query("UPDATE workers SET away_notified_at = $2 WHERE name = $1")
            .bind(worker)
            .bind(at)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
