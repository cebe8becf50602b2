//! What workers say of their disk: while a worker's `low` is set it gets no
//! new jobs (`schedule_once`), its jobs' why-not says why, and its page
//! shows it on every server (the report is stored).

use super::Hub;
use crate::store::StoreError;
/// What a worker says is its word: its reason is cut short before it is
/// kept and shown.
const MAX_REASON: usize = 500;

pub(super) fn bounded(mut d: herd_proto::DiskReport) -> herd_proto::DiskReport {
    if let Some(low) = &mut d.low {
        // Shown on pages, in the API and on terminals: no control characters.
        if low.chars().any(char::is_control) {
            *low = low
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
        }
        if low.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !low.is_char_boundary(end) {
                end -= 1;
            }
            low.truncate(end);
            low.push('…');
        }
    }
    d
}

impl Hub {
    /// The worker said how its disk is. It is kept in memory (pages and
    /// the API ask [`Hub::live_disk`] first) and stored when its low state
    /// changes and when the worker goes: a worker may say a lot, and a
    /// store write per word would let it.
    pub async fn set_disk(
        &self,
        name: &str,
        conn_id: u64,
        disk: herd_proto::DiskReport,
    ) -> Result<(), StoreError> {
        let disk = bounded(disk);
        let flipped = {
            let mut st = self.lock();
            match st.workers.get_mut(name) {
                Some(w) if w.conn_id == conn_id => {
                    let flipped =
                        w.disk.as_ref().map(|d| d.low.is_some()) != Some(disk.low.is_some());
                    w.disk = Some(disk.clone());
                    flipped
                }
                _ => return Ok(()),
            }
        };
        if flipped {
            if disk.low.is_none() {
                self.wake();
            }
            self.changed();
            self.store.set_worker_disk(name, &disk).await?;
        }
        Ok(())
    }

    /// What a worker connected here last said of its disk.
    pub fn live_disk(&self, name: &str) -> Option<herd_proto::DiskReport> {
        self.lock().workers.get(name).and_then(|w| w.disk.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_reason_is_cut_at_a_character_boundary_and_rid_of_controls() {
        let d = bounded(herd_proto::DiskReport {
            free_bytes: 0,
            total_bytes: 0,
            workspaces: 0,
            low: Some("é".repeat(400)),
        });
        let low = d.low.unwrap();
        assert!(low.len() <= MAX_REASON + '…'.len_utf8(), "{}", low.len());
        assert!(low.ends_with('…'));
        let d = bounded(herd_proto::DiskReport {
            free_bytes: 0,
            total_bytes: 0,
            workspaces: 0,
            low: Some("low\u{1b}[2J\ndisk".into()),
        });
        assert_eq!(d.low.as_deref(), Some("low [2J disk"));
    }
}
