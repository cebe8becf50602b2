//! The outbox: every event and log chunk of the attempts this worker runs,
//! numbered per attempt and kept until the server acknowledges it.
//!
//! The connection sends what is new; after a reconnect it resends from what
//! the server says it has. Memory is bounded per attempt: when the server is
//! out of reach for long, producers wait, so the step's output pipe fills and
//! the step itself pauses instead of the worker growing without limit.

use herd_proto::{AttemptId, JobEvent, LogFrame, RunningAttempt, WorkerMsg};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

/// Unacknowledged bytes an attempt may hold before its producer waits.
pub const ATTEMPT_BUFFER_LIMIT: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone)]
pub enum Payload {
    Event(JobEvent),
    Log {
        step: u32,
        offset: u64,
        data: Vec<u8>,
    },
}

/// A frame ready to go out.
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

struct Entry {
    seq: u64,
    payload: Payload,
}

struct AttemptBox {
    next_seq: u64,
    entries: VecDeque<Entry>,
    /// Highest seq handed to the current connection.
    sent: u64,
    bytes: usize,
    /// The attempt's last event (Finished) has been queued.
    finished: bool,
    /// Set to stop the attempt's process group (cancel or abandon).
    stop: watch::Sender<Option<StopKind>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopKind {
    /// Stop and report `cancelled`.
    Cancel,
    /// Stop silently: the attempt belongs to nobody here any more.
    Abandon,
}

#[derive(Default)]
struct Inner {
    attempts: HashMap<AttemptId, AttemptBox>,
}

#[derive(Clone, Default)]
pub struct Outbox {
    inner: Arc<Mutex<Inner>>,
    /// Wakes the connection: there is something to send.
    pub ready: Arc<Notify>,
    /// Wakes producers: acknowledgements freed space.
    space: Arc<Notify>,
    /// Wakes whoever waits for the outbox to empty (drain, shutdown).
    pub emptied: Arc<Notify>,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new attempt; the receiver tells its executor to stop.
    pub fn open(&self, attempt: AttemptId) -> watch::Receiver<Option<StopKind>> {
        let (tx, rx) = watch::channel(None);
        self.lock().attempts.insert(
            attempt,
            AttemptBox {
                next_seq: 1,
                entries: VecDeque::new(),
                sent: 0,
                bytes: 0,
                finished: false,
                stop: tx,
            },
        );
        rx
    }

    /// Queues a payload, waiting while the attempt's buffer is full. Returns
    /// false when the attempt was abandoned (the producer should stop).
    pub async fn push(&self, attempt: AttemptId, payload: Payload) -> bool {
        let size = match &payload {
            Payload::Log { data, .. } => data.len(),
            Payload::Event(_) => 64,
        };
        loop {
            let space = self.space.notified();
            {
                let mut inner = self.lock();
                let Some(b) = inner.attempts.get_mut(&attempt) else {
                    return false;
                };
                if b.bytes + size <= ATTEMPT_BUFFER_LIMIT || b.entries.is_empty() {
                    if matches!(payload, Payload::Event(JobEvent::Finished { .. })) {
                        b.finished = true;
                    }
                    let seq = b.next_seq;
                    b.next_seq += 1;
                    b.bytes += size;
                    b.entries.push_back(Entry { seq, payload });
                    drop(inner);
                    self.ready.notify_one();
                    return true;
                }
            }
            space.await;
        }
    }

    /// Frames not yet handed to the current connection, at most `max`.
    pub fn take_unsent(&self, max: usize) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut inner = self.lock();
        for (&attempt, b) in inner.attempts.iter_mut() {
            let sent = b.sent;
            for e in b.entries.iter().filter(|e| e.seq > sent) {
                if out.len() >= max {
                    break;
                }
                out.push(encode(attempt, e));
                b.sent = e.seq;
            }
        }
        out
    }

    /// The server stored everything up to `seq`.
    pub fn ack(&self, attempt: AttemptId, seq: u64) {
        let mut inner = self.lock();
        let mut done = false;
        if let Some(b) = inner.attempts.get_mut(&attempt) {
            while b.entries.front().is_some_and(|e| e.seq <= seq) {
                if let Some(e) = b.entries.pop_front() {
                    b.bytes -= match &e.payload {
                        Payload::Log { data, .. } => data.len(),
                        Payload::Event(_) => 64,
                    };
                }
            }
            done = b.finished && b.entries.is_empty();
        }
        if done {
            inner.attempts.remove(&attempt);
        }
        let empty = inner.attempts.is_empty();
        drop(inner);
        self.space.notify_waiters();
        if empty {
            self.emptied.notify_waiters();
        }
    }

    /// What to tell the server in the hello: attempts held and from where.
    pub fn running(&self) -> Vec<RunningAttempt> {
        let inner = self.lock();
        let mut v: Vec<_> = inner
            .attempts
            .iter()
            .map(|(&attempt, b)| RunningAttempt {
                attempt,
                first_unacked_seq: b.entries.front().map(|e| e.seq).unwrap_or(b.next_seq),
            })
            .collect();
        v.sort_by_key(|r| r.attempt);
        v
    }

    /// A new connection: the server has everything up to `acked_seq`;
    /// resend what follows.
    pub fn resume(&self, attempt: AttemptId, acked_seq: u64) {
        self.ack(attempt, acked_seq);
        if let Some(b) = self.lock().attempts.get_mut(&attempt) {
            b.sent = acked_seq;
        }
        self.ready.notify_one();
    }

    /// Stops an attempt's process group; abandoning also drops its events.
    pub fn stop(&self, attempt: AttemptId, kind: StopKind) {
        let mut inner = self.lock();
        if let Some(b) = inner.attempts.get(&attempt) {
            let _ = b.stop.send(Some(kind));
        }
        if kind == StopKind::Abandon {
            inner.attempts.remove(&attempt);
            let empty = inner.attempts.is_empty();
            drop(inner);
            self.space.notify_waiters();
            if empty {
                self.emptied.notify_waiters();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().attempts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn encode(attempt: AttemptId, e: &Entry) -> Frame {
    match &e.payload {
        Payload::Event(ev) => Frame::Text(
            WorkerMsg::Event {
                attempt,
                seq: e.seq,
                event: ev.clone(),
            }
            .encode(),
        ),
        Payload::Log { step, offset, data } => Frame::Binary(
            LogFrame {
                attempt,
                seq: e.seq,
                step: *step,
                offset: *offset,
                data: data.clone(),
            }
            .encode(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_proto::JobEvent;

    fn log(n: usize) -> Payload {
        Payload::Log {
            step: 0,
            offset: 0,
            data: vec![b'x'; n],
        }
    }

    #[tokio::test]
    async fn resend_after_reconnect_starts_after_the_acked_seq() {
        let ob = Outbox::default();
        let _stop = ob.open(7);
        for _ in 0..5 {
            assert!(ob.push(7, log(10)).await);
        }
        assert_eq!(ob.take_unsent(100).len(), 5);
        assert!(ob.take_unsent(100).is_empty());
        ob.ack(7, 2);
        assert_eq!(ob.running()[0].first_unacked_seq, 3);
        // New connection: the server had stored up to 3.
        ob.resume(7, 3);
        assert_eq!(ob.take_unsent(100).len(), 2);
    }

    #[tokio::test]
    async fn finished_and_acked_attempts_leave() {
        let ob = Outbox::default();
        let _stop = ob.open(1);
        ob.push(
            1,
            Payload::Event(JobEvent::Finished {
                result: herd_proto::JobResult::Success,
                error: None,
            }),
        )
        .await;
        assert_eq!(ob.len(), 1);
        ob.ack(1, 1);
        assert!(ob.is_empty());
    }

    #[tokio::test]
    async fn producers_wait_when_the_buffer_is_full() {
        let ob = Outbox::default();
        let _stop = ob.open(1);
        assert!(ob.push(1, log(ATTEMPT_BUFFER_LIMIT)).await);
        let ob2 = ob.clone();
        let blocked = tokio::spawn(async move { ob2.push(1, log(1)).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!blocked.is_finished());
        ob.ack(1, 1);
        assert!(blocked.await.unwrap());
    }

    #[tokio::test]
    async fn abandon_drops_events_and_wakes_producers() {
        let ob = Outbox::default();
        let mut stop = ob.open(1);
        ob.push(1, log(ATTEMPT_BUFFER_LIMIT)).await;
        let ob2 = ob.clone();
        let blocked = tokio::spawn(async move { ob2.push(1, log(1)).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ob.stop(1, StopKind::Abandon);
        assert!(!blocked.await.unwrap());
        assert_eq!(*stop.borrow_and_update(), Some(StopKind::Abandon));
        assert!(ob.is_empty());
    }
}
