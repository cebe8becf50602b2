//! The wanted probe set and each worker's probe results.

use super::{now_ms, Result, Store};
use herd_proto::ProbeResult;
use sqlx::Row;
use std::collections::BTreeMap;

impl Store {
    /// name -> custom command (None for built-in kinds).
    pub async fn wanted_probes(&self) -> Result<BTreeMap<String, Option<String>>> {
        let rows = sqlx::query("SELECT name, command FROM probes ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, r.try_get("command")?)))
            .collect()
    }

    pub async fn set_wanted_probes(&self, probes: &[(String, Option<String>)]) -> Result<()> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        for (name, command) in probes {
            sqlx::query(
                "INSERT INTO probes (name, command, updated_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET command = $2, updated_at = $3",
            )
            .bind(name)
            .bind(command)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn save_probe_results(&self, worker: &str, results: &[ProbeResult]) -> Result<()> {
        let mut tx = self.write.begin().await?;
        for r in results {
            sqlx::query(
                "INSERT INTO worker_probes (worker, name, present, version, output, probed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (worker, name) DO UPDATE SET \
                 present = $3, version = $4, output = $5, probed_at = $6",
            )
            .bind(worker)
            .bind(&r.name)
            .bind(i64::from(r.present))
            .bind(&r.version)
            .bind(&r.output)
            .bind(r.probed_at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn worker_probes(&self, worker: &str) -> Result<Vec<ProbeResult>> {
        Ok(self
            .probes_by_worker(Some(worker))
            .await?
            .remove(worker)
            .unwrap_or_default())
    }

    /// Probe results per worker (of one worker, when given), in one query.
    pub async fn probes_by_worker(
        &self,
        worker: Option<&str>,
    ) -> Result<BTreeMap<String, Vec<ProbeResult>>> {
        let rows = sqlx::query(
            "SELECT worker, name, present, version, output, probed_at FROM worker_probes \
             WHERE ($1 IS NULL OR worker = $1) ORDER BY worker, name",
        )
        .bind(worker)
        .fetch_all(&self.read)
        .await?;
        let mut out: BTreeMap<String, Vec<ProbeResult>> = BTreeMap::new();
        for r in &rows {
            let worker: String = r.try_get("worker")?;
            out.entry(worker).or_default().push(ProbeResult {
                name: r.try_get("name")?,
                present: r.try_get::<i64, _>("present")? != 0,
                version: r.try_get("version")?,
                output: r.try_get("output")?,
                probed_at: r.try_get("probed_at")?,
            });
        }
        Ok(out)
    }
}
