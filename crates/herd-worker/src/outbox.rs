//! The outbox: every event and log chunk of the attempts this worker runs,
//! numbered per attempt and kept until the server acknowledges it.
//!
//! The connection sends what is new; after a reconnect it resends from what
//! the server says it has. While the server is out of reach the steps keep
//! running: an attempt's first few MiB wait in memory, the rest in a spill
//! file on disk (`WORKDIR/.outbox/ATTEMPT.spill`). Only past the disk limit
//! do producers wait, so that the step's output pipe fills and the step
//! pauses instead of the worker growing without bound.

use herd_proto::{AttemptId, JobEvent, LogFrame, RunningAttempt, WorkerMsg};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{watch, Notify};

/// How much an attempt may hold unacknowledged.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// In memory; past this, entries go to the spill file.
    pub memory: usize,
    /// On disk; past this, producers wait.
    pub disk: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 8 * 1024 * 1024,
            disk: 2 * 1024 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub enum Payload {
    Event(JobEvent),
    Log {
        step: u32,
        offset: u64,
        data: Vec<u8>,
    },
}

impl Payload {
    /// Bytes it stands for in the limits.
    fn size(&self) -> usize {
        match self {
            Payload::Log { data, .. } => data.len(),
            Payload::Event(_) => 64,
        }
    }
}

/// A frame ready to go out.
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

enum Stored {
    Memory(Payload),
    /// The encoded frame, at `offset` in the attempt's spill file.
    Disk {
        offset: u64,
        len: usize,
        binary: bool,
    },
}

struct Entry {
    seq: u64,
    stored: Stored,
    size: usize,
}

struct Spill {
    file: File,
    path: PathBuf,
    end: u64,
}

struct AttemptBox {
    next_seq: u64,
    entries: VecDeque<Entry>,
    /// Highest seq handed to the current connection.
    sent: u64,
    memory_bytes: usize,
    disk_bytes: u64,
    spill: Option<Spill>,
    /// The attempt's last event (Finished) has been queued.
    finished: bool,
    /// Set to stop the attempt's process group (cancel or abandon).
    stop: watch::Sender<Option<StopKind>>,
}

impl Drop for AttemptBox {
    fn drop(&mut self) {
        if let Some(s) = &self.spill {
            let _ = std::fs::remove_file(&s.path);
        }
    }
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
    /// Where spill files go; None keeps everything in memory.
    spill_dir: Option<Arc<PathBuf>>,
    limits: Limits,
}

impl Outbox {
    /// An outbox that spills to `dir` (emptied first: spill files of an
    /// earlier process belong to attempts that died with it).
    pub fn with_spill_dir(dir: PathBuf, limits: Limits) -> std::io::Result<Outbox> {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Outbox {
            spill_dir: Some(Arc::new(dir)),
            limits,
            ..Outbox::default()
        })
    }

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
                memory_bytes: 0,
                disk_bytes: 0,
                spill: None,
                finished: false,
                stop: tx,
            },
        );
        rx
    }

    /// Queues a payload, waiting while the attempt's buffers are full.
    /// Returns false when the attempt was abandoned (the producer should stop).
    pub async fn push(&self, attempt: AttemptId, payload: Payload) -> bool {
        let size = payload.size();
        let finishing = matches!(payload, Payload::Event(JobEvent::Finished { .. }));
        let limits = self.limits.memory;
        let mut payload = Some(payload);
        loop {
            let space = self.space.notified();
            {
                let mut inner = self.lock();
                let Some(b) = inner.attempts.get_mut(&attempt) else {
                    return false;
                };
                let seq = b.next_seq;
                let stored = if b.memory_bytes + size <= limits || b.entries.is_empty() {
                    payload.take().map(Stored::Memory)
                } else {
                    match (&self.spill_dir, &payload) {
                        (Some(dir), Some(p)) if b.disk_bytes + size as u64 <= self.limits.disk => {
                            match spill(b, dir, attempt, seq, p) {
                                Ok(stored) => {
                                    payload = None;
                                    Some(stored)
                                }
                                Err(e) => {
                                    tracing::warn!("cannot spill output of attempt {attempt} to disk: {e}; waiting for the server");
                                    None
                                }
                            }
                        }
                        _ => None,
                    }
                };
                if let Some(stored) = stored {
                    match &stored {
                        Stored::Memory(_) => b.memory_bytes += size,
                        Stored::Disk { .. } => b.disk_bytes += size as u64,
                    }
                    b.next_seq += 1;
                    b.finished |= finishing;
                    b.entries.push_back(Entry { seq, stored, size });
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
                let frame = match &e.stored {
                    Stored::Memory(p) => encode(attempt, e.seq, p),
                    Stored::Disk {
                        offset,
                        len,
                        binary,
                    } => {
                        let Some(spill) = &b.spill else { break };
                        let mut buf = vec![0u8; *len];
                        if let Err(err) = spill.file.read_exact_at(&mut buf, *offset) {
                            tracing::error!(
                                "cannot read the spill file of attempt {attempt}: {err}"
                            );
                            break;
                        }
                        if *binary {
                            Frame::Binary(buf)
                        } else {
                            Frame::Text(String::from_utf8_lossy(&buf).into_owned())
                        }
                    }
                };
                out.push(frame);
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
                    match e.stored {
                        Stored::Memory(_) => b.memory_bytes -= e.size,
                        Stored::Disk { .. } => b.disk_bytes -= e.size as u64,
                    }
                }
            }
            // Nothing left on disk: start the spill file over.
            if b.disk_bytes == 0 {
                if let Some(s) = &mut b.spill {
                    if s.end > 0 && s.file.set_len(0).is_ok() {
                        s.end = 0;
                    }
                }
            }
            done = b.finished && b.entries.is_empty();
        }
        if done {
            inner.attempts.remove(&attempt);
        }
        self.freed(inner);
    }

    /// After acknowledgements or a removal: wake producers waiting for
    /// space, and whoever waits for the outbox to empty.
    fn freed(&self, inner: MutexGuard<'_, Inner>) {
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
            self.freed(inner);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().attempts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held on disk, over all attempts.
    pub fn spilled_bytes(&self) -> u64 {
        self.lock().attempts.values().map(|b| b.disk_bytes).sum()
    }
}

/// Appends the encoded frame to the attempt's spill file.
fn spill(
    b: &mut AttemptBox,
    dir: &std::path::Path,
    attempt: AttemptId,
    seq: u64,
    p: &Payload,
) -> std::io::Result<Stored> {
    if b.spill.is_none() {
        let path = dir.join(format!("{attempt}.spill"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        b.spill = Some(Spill { file, path, end: 0 });
    }
    let Some(s) = b.spill.as_mut() else {
        return Err(std::io::Error::other("no spill file"));
    };
    let (bytes, binary) = match encode(attempt, seq, p) {
        Frame::Text(t) => (t.into_bytes(), false),
        Frame::Binary(b) => (b, true),
    };
    s.file.write_all_at(&bytes, s.end)?;
    let stored = Stored::Disk {
        offset: s.end,
        len: bytes.len(),
        binary,
    };
    s.end += bytes.len() as u64;
    Ok(stored)
}

fn encode(attempt: AttemptId, seq: u64, p: &Payload) -> Frame {
    match p {
        Payload::Event(ev) => Frame::Text(
            WorkerMsg::Event {
                attempt,
                seq,
                event: ev.clone(),
            }
            .encode(),
        ),
        Payload::Log { step, offset, data } => Frame::Binary(
            LogFrame {
                attempt,
                seq,
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
        assert!(ob.push(1, log(Limits::default().memory)).await);
        let ob2 = ob.clone();
        let blocked = tokio::spawn(async move { ob2.push(1, log(1)).await });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!blocked.is_finished());
        ob.ack(1, 1);
        assert!(blocked.await.unwrap());
    }

    #[tokio::test]
    async fn past_the_memory_limit_output_goes_to_disk_and_comes_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spill_dir = dir.path().join(".outbox");
        let ob = Outbox::with_spill_dir(
            spill_dir.clone(),
            Limits {
                memory: 100,
                disk: 1000,
            },
        )
        .unwrap();
        let _stop = ob.open(3);
        // 10 chunks of 60 bytes: the first two fit in memory (the first always does).
        for i in 0..10u8 {
            let p = Payload::Log {
                step: 0,
                offset: u64::from(i) * 60,
                data: vec![i; 60],
            };
            assert!(ob.push(3, p).await);
        }
        assert!(ob.spilled_bytes() >= 480);
        assert!(spill_dir.join("3.spill").exists());
        let frames = ob.take_unsent(100);
        assert_eq!(frames.len(), 10);
        for (i, f) in frames.iter().enumerate() {
            let Frame::Binary(b) = f else {
                panic!("a log frame")
            };
            let lf = LogFrame::decode(b).unwrap();
            assert_eq!((lf.seq, lf.data[0]), (i as u64 + 1, i as u8));
        }
        // The disk limit holds producers back until acknowledgements come.
        for i in 10..17u8 {
            let p = Payload::Log {
                step: 0,
                offset: u64::from(i) * 60,
                data: vec![i; 60],
            };
            assert!(ob.push(3, p).await);
        }
        let ob2 = ob.clone();
        let blocked = tokio::spawn(async move {
            ob2.push(
                3,
                Payload::Log {
                    step: 0,
                    offset: 960,
                    data: vec![9; 60],
                },
            )
            .await
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!blocked.is_finished());
        ob.ack(3, 17);
        assert!(blocked.await.unwrap());
        assert_eq!(ob.spilled_bytes(), 0, "the last entry went to memory again");
        ob.stop(3, StopKind::Abandon);
        assert!(
            !spill_dir.join("3.spill").exists(),
            "an abandoned attempt leaves no file"
        );
    }

    #[tokio::test]
    async fn abandon_drops_events_and_wakes_producers() {
        let ob = Outbox::default();
        let mut stop = ob.open(1);
        ob.push(1, log(Limits::default().memory)).await;
        let ob2 = ob.clone();
        let blocked = tokio::spawn(async move { ob2.push(1, log(1)).await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        ob.stop(1, StopKind::Abandon);
        assert!(!blocked.await.unwrap());
        assert_eq!(*stop.borrow_and_update(), Some(StopKind::Abandon));
        assert!(ob.is_empty());
    }
}
