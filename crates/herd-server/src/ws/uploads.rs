//! Test lists too large for one frame: they arrive in parts
//! (`WorkerMsg::SplitList`) just before the split request that names how
//! many (`list_parts`). The parts live on the connection; a request whose
//! parts are not all here (a reconnect in between) finds none, and the
//! server asks for the list again.
//!
//! Bounded: one connection holds at most [`MAX_LIST_BYTES`] of parts, and
//! all connections together at most [`MAX_PENDING_BYTES`]; past the first
//! the request is refused with a message, past the second the parts are
//! dropped (the worker is asked again and sends them again later).

use herd_proto::AttemptId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most bytes of test ids one connection holds in parts.
pub const MAX_LIST_BYTES: usize = 32 * 1024 * 1024;
/// Most bytes of parts all connections hold together.
pub const MAX_PENDING_BYTES: usize = 256 * 1024 * 1024;
/// What a `String` costs beside its bytes.
const PER_ID: usize = std::mem::size_of::<String>();

static PENDING: AtomicUsize = AtomicUsize::new(0);

struct Upload {
    ids: Vec<String>,
    parts: u32,
    /// Why this list will not be taken.
    refused: Option<String>,
}

#[derive(Default)]
pub(super) struct Uploads {
    lists: HashMap<(AttemptId, u32), Upload>,
    bytes: usize,
}

impl Uploads {
    /// One part of the list of `attempt`'s step `step`.
    pub fn part(&mut self, attempt: AttemptId, step: u32, ids: Vec<String>) {
        let size: usize = ids.iter().map(|i| i.len() + PER_ID).sum();
        let upload = self.lists.entry((attempt, step)).or_insert(Upload {
            ids: Vec::new(),
            parts: 0,
            refused: None,
        });
        upload.parts += 1;
        if upload.refused.is_some() {
            return;
        }
        if self.bytes + size > MAX_LIST_BYTES {
            upload.refused = Some(format!(
                "the test list is larger than the server takes ({} MiB of ids); split the suite into several jobs, or list shorter ids",
                MAX_LIST_BYTES / (1024 * 1024)
            ));
            let held: usize = upload.ids.iter().map(|i| i.len() + PER_ID).sum();
            upload.ids = Vec::new();
            self.release(held);
            return;
        }
        if PENDING.fetch_add(size, Ordering::SeqCst) + size > MAX_PENDING_BYTES {
            PENDING.fetch_sub(size, Ordering::SeqCst);
            // Busy: forget this list; the request will ask for it again.
            if let Some(dropped) = self.lists.remove(&(attempt, step)) {
                let held: usize = dropped.ids.iter().map(|i| i.len() + PER_ID).sum();
                self.release(held);
            }
            tracing::warn!(
                "test list parts of attempt {attempt} dropped: {} MiB of lists are being received already",
                MAX_PENDING_BYTES / (1024 * 1024)
            );
            return;
        }
        self.bytes += size;
        upload.ids.extend(ids);
    }

    /// The list of `attempt`'s step `step` when all its `parts` came;
    /// Ok(None) when they did not (it is asked for again); Err when it is
    /// refused.
    pub fn take(
        &mut self,
        attempt: AttemptId,
        step: u32,
        parts: u32,
    ) -> Result<Option<Vec<String>>, String> {
        let Some(upload) = self.lists.remove(&(attempt, step)) else {
            return Ok(None);
        };
        let held: usize = upload.ids.iter().map(|i| i.len() + PER_ID).sum();
        self.release(held);
        if let Some(why) = upload.refused {
            return Err(why);
        }
        Ok((upload.parts == parts).then_some(upload.ids))
    }

    fn release(&mut self, bytes: usize) {
        self.bytes = self.bytes.saturating_sub(bytes);
        let _ = PENDING.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
            Some(p.saturating_sub(bytes))
        });
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        let held = self.bytes;
        self.release(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_make_one_list_only_when_all_came() {
        let mut u = Uploads::default();
        u.part(1, 0, vec!["a".into(), "b".into()]);
        u.part(1, 0, vec!["c".into()]);
        assert_eq!(
            u.take(1, 0, 2),
            Ok(Some(vec!["a".into(), "b".into(), "c".into()]))
        );
        assert_eq!(u.bytes, 0);
        // A part lost on the way (a reconnect): the list is asked for again.
        u.part(1, 0, vec!["a".into()]);
        assert_eq!(u.take(1, 0, 2), Ok(None));
        assert_eq!(u.take(7, 0, 1), Ok(None));
    }

    #[test]
    fn a_list_over_the_limit_is_refused_with_a_reason_and_frees_its_memory() {
        let mut u = Uploads::default();
        let big = "x".repeat(1024 * 1024);
        for _ in 0..40 {
            u.part(3, 1, vec![big.clone()]);
        }
        assert!(u.bytes <= MAX_LIST_BYTES);
        let err = u.take(3, 1, 40).unwrap_err();
        assert!(err.contains("larger than the server takes"), "{err}");
        assert_eq!(u.bytes, 0);
    }
}
