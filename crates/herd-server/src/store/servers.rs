//! Servers sharing the database: heartbeat rows, taking over a dead one,
//! and notifications between them (PostgreSQL NOTIFY; nothing on SQLite,
//! where one server owns the file).

use super::{get, now_ms, Result, Store};

/// The channel servers notify each other on.
pub const NOTIFY_CHANNEL: &str = "herd";

impl Store {
    /// This server is alive (inserts its row the first time).
    pub async fn server_heartbeat(&self, id: &str, url: &str) -> Result<()> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO servers (id, url, started_at, last_seen) VALUES ($1, $2, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET last_seen = $3, url = $2",
        )
        .bind(id)
        .bind(url)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// This server stops: the others take over its workers at their next
    /// heartbeat instead of after DEAD_AFTER.
    pub async fn server_leaving(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE servers SET last_seen = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Servers not heard of since `before`.
    pub async fn stale_servers(&self, before: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM servers WHERE last_seen < $1")
            .bind(before)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| get(r, "id")).collect()
    }

    /// Claims a dead server's leftovers: true for exactly one claimant.
    /// Its workers are offline from now on; their names are returned.
    pub async fn take_over_server(&self, id: &str, before: i64) -> Result<Option<Vec<String>>> {
        let mut tx = self.write.begin().await?;
        let gone = sqlx::query("DELETE FROM servers WHERE id = $1 AND last_seen < $2")
            .bind(id)
            .bind(before)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(None);
        }
        let rows = sqlx::query(
            "UPDATE workers SET online = 0, last_change = $2 WHERE online = 1 AND server = $1 RETURNING name",
        )
        .bind(id)
        .bind(now_ms())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| get(r, "name"))
            .collect::<Result<_>>()
            .map(Some)
    }

    /// At the start of a server sharing the database: workers recorded as
    /// online on no live server are offline.
    pub async fn workers_offline_without_live_server(&self, alive_since: i64) -> Result<()> {
        sqlx::query(
            "UPDATE workers SET online = 0 WHERE online = 1 AND (server IS NULL OR server NOT IN \
             (SELECT id FROM servers WHERE last_seen >= $1))",
        )
        .bind(alive_since)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The live server that does the work only one should do (sending
    /// commit statuses): the one with the smallest id.
    pub async fn first_live_server(&self, alive_since: i64) -> Result<Option<String>> {
        let row = sqlx::query("SELECT id FROM servers WHERE last_seen >= $1 ORDER BY id LIMIT 1")
            .bind(alive_since)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| get(&r, "id")).transpose()
    }

    /// Whether `worker` is connected to a live server other than `me`.
    pub async fn worker_online_elsewhere(
        &self,
        worker: &str,
        me: &str,
        alive_since: i64,
    ) -> Result<bool> {
        let row = sqlx::query(
            "SELECT w.name FROM workers w JOIN servers s ON s.id = w.server \
             WHERE w.name = $1 AND w.online = 1 AND w.server <> $2 AND s.last_seen >= $3",
        )
        .bind(worker)
        .bind(me)
        .bind(alive_since)
        .fetch_optional(&self.read)
        .await?;
        Ok(row.is_some())
    }

    /// Tells the other servers something (PostgreSQL only).
    pub async fn notify(&self, message: &str) -> Result<()> {
        if self.postgres.is_some() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(NOTIFY_CHANNEL)
                .bind(message)
                .execute(&self.write)
                .await?;
        }
        Ok(())
    }
}
