//! Step output, stored as zstd-compressed chunks and read back by byte range
//! without ever loading a whole log.

use super::{Result, Store, StoreError};
use sqlx::Row;

/// Compression level for log chunks: fast enough to keep up with a step that
/// prints at disk speed, and still several times smaller for text.
pub const LOG_ZSTD_LEVEL: i32 = 1;

impl Store {
    /// Bytes `[start, start + limit)` of one step's output (fewer at the end).
    pub async fn read_log(
        &self,
        attempt: i64,
        step: i64,
        start: u64,
        limit: u64,
    ) -> Result<Vec<u8>> {
        let end = start.saturating_add(limit);
        let rows = sqlx::query(
            "SELECT byte_offset, len, data FROM log_chunks \
             WHERE attempt_id = $1 AND step = $2 AND byte_offset < $4 AND byte_offset + len > $3 \
             ORDER BY byte_offset",
        )
        .bind(attempt)
        .bind(step)
        .bind(start as i64)
        .bind(end.min(i64::MAX as u64) as i64)
        .fetch_all(&self.read)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let offset: i64 = r.try_get("byte_offset")?;
            let len: i64 = r.try_get("len")?;
            let data: Vec<u8> = r.try_get("data")?;
            let plain = zstd::bulk::decompress(&data, len as usize)
                .map_err(|e| StoreError::Corrupt(format!("log chunk at {offset}: {e}")))?;
            let offset = offset as u64;
            let from = start.saturating_sub(offset) as usize;
            let to = (end.saturating_sub(offset) as usize).min(plain.len());
            if from < to {
                out.extend_from_slice(&plain[from..to]);
            }
        }
        Ok(out)
    }
}
