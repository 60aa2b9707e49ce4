//! One output stream of a session (stdout or stderr), kept with offsets until
//! the host acknowledges it.
//!
//! Owns the bytes a process wrote and the offsets that name them: offset 0
//! is the first byte the process ever wrote on that stream. Bytes below the
//! acknowledged offset are dropped; everything above it is kept, so a host
//! that disconnects or restarts can resume from the offset it last stored.
//! When more than [`UNACKED_LIMIT`] bytes are unacknowledged, the producer
//! waits: the process blocks on its pipe rather than the tether dropping
//! output. Must not know about processes or channels.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::watch;

/// Unacknowledged bytes kept per stream before the writer is held back.
pub const UNACKED_LIMIT: u64 = 16 << 20;

/// Where a stream stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// Total bytes ever written (the offset one past the last byte).
    pub end: u64,
    /// Bytes acknowledged by the host.
    pub acked: u64,
    /// No more bytes will come.
    pub closed: bool,
}

/// Errors reading a stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    #[error("Offset {offset} was acknowledged and dropped; output resumes at {acked}")]
    Gone { offset: u64, acked: u64 },
    #[error("Offset {offset} is beyond the end of the stream ({end})")]
    Beyond { offset: u64, end: u64 },
}

#[derive(Debug)]
pub struct Output {
    data: Mutex<VecDeque<u8>>,
    marks: watch::Sender<Marks>,
}

impl Default for Output {
    fn default() -> Self {
        Self::new()
    }
}

impl Output {
    pub fn new() -> Self {
        Self {
            data: Mutex::new(VecDeque::new()),
            marks: watch::Sender::new(Marks::default()),
        }
    }

    pub fn marks(&self) -> Marks {
        *self.marks.borrow()
    }

    /// A receiver that wakes whenever bytes arrive, are acknowledged, or the
    /// stream closes.
    pub fn subscribe(&self) -> watch::Receiver<Marks> {
        self.marks.subscribe()
    }

    /// Appends bytes, first waiting while too much is unacknowledged.
    pub async fn push(&self, bytes: &[u8]) {
        let mut rx = self.marks.subscribe();
        // Wait for room; a closed stream never blocks.
        let _ = rx
            .wait_for(|m| m.closed || m.end - m.acked < UNACKED_LIMIT)
            .await;
        self.push_now(bytes);
    }

    /// Appends bytes without waiting for room.
    pub fn push_now(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut data = lock(&self.data);
        if self.marks.borrow().closed {
            return;
        }
        data.extend(bytes);
        self.marks.send_modify(|m| m.end += bytes.len() as u64);
    }

    pub fn close(&self) {
        self.marks
            .send_if_modified(|m| !std::mem::replace(&mut m.closed, true));
    }

    /// Records that the host holds everything below `offset`, and drops it.
    /// Offsets past the end are clamped; going backwards is ignored.
    pub fn ack(&self, offset: u64) {
        let mut data = lock(&self.data);
        self.marks.send_if_modified(|m| {
            let offset = offset.min(m.end);
            if offset <= m.acked {
                return false;
            }
            let drop = ((offset - m.acked) as usize).min(data.len());
            data.drain(..drop);
            m.acked = offset;
            true
        });
    }

    /// Copies up to `max` bytes starting at `offset`. An empty result means
    /// the caller is at the end (check `closed` to know if more can come).
    pub fn read(&self, offset: u64, max: usize) -> Result<Vec<u8>, OutputError> {
        let data = lock(&self.data);
        let m = *self.marks.borrow();
        if offset < m.acked {
            return Err(OutputError::Gone {
                offset,
                acked: m.acked,
            });
        }
        if offset > m.end {
            return Err(OutputError::Beyond { offset, end: m.end });
        }
        let start = (offset - m.acked) as usize;
        let len = max.min(data.len() - start);
        // Whole slices, not byte by byte: this is the output path's copy.
        let mut out = Vec::with_capacity(len);
        let (a, b) = data.as_slices();
        let end = start + len;
        if start < a.len() {
            out.extend_from_slice(&a[start..end.min(a.len())]);
        }
        if end > a.len() {
            out.extend_from_slice(&b[start.saturating_sub(a.len())..end - a.len()]);
        }
        Ok(out)
    }

    /// Waits until there are bytes at or after `offset`, or the stream is
    /// closed. Returns the marks seen.
    pub async fn wait_past(&self, offset: u64) -> Marks {
        let mut rx = self.marks.subscribe();
        match rx.wait_for(|m| m.end > offset || m.closed).await {
            Ok(m) => *m,
            Err(_) => self.marks(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_survive_acks() {
        let o = Output::new();
        o.push_now(b"hello ");
        o.push_now(b"world");
        assert_eq!(o.read(0, 100).unwrap(), b"hello world");
        o.ack(6);
        assert_eq!(o.read(6, 100).unwrap(), b"world");
        assert_eq!(o.read(8, 2).unwrap(), b"rl");
        assert_eq!(
            o.read(3, 1),
            Err(OutputError::Gone {
                offset: 3,
                acked: 6
            })
        );
        assert_eq!(
            o.read(12, 1),
            Err(OutputError::Beyond {
                offset: 12,
                end: 11
            })
        );
        // Acks never go backwards and clamp at the end.
        o.ack(2);
        o.ack(100);
        let m = o.marks();
        assert_eq!((m.end, m.acked), (11, 11));
        assert_eq!(o.read(11, 10).unwrap(), b"");
    }

    #[test]
    fn reads_match_the_stream_across_the_ring_s_wrap() {
        // Pushes and acks that move the ring's head around, checked against
        // the stream itself at every offset kept.
        let o = Output::new();
        let byte = |i: u64| (i * 7 % 251) as u8;
        let (mut end, mut acked) = (0u64, 0u64);
        for round in 0..200u64 {
            let n = (round * 37 % 97) + 1;
            let chunk: Vec<u8> = (end..end + n).map(byte).collect();
            o.push_now(&chunk);
            end += n;
            acked = (acked + round * 13 % 89).min(end);
            o.ack(acked);
            for off in acked..=end {
                let want: Vec<u8> = (off..end.min(off + 50)).map(byte).collect();
                assert_eq!(o.read(off, 50).unwrap(), want, "round {round} offset {off}");
            }
        }
    }

    #[tokio::test]
    async fn writer_waits_for_acks_past_the_limit() {
        let o = std::sync::Arc::new(Output::new());
        o.push_now(&vec![0u8; UNACKED_LIMIT as usize]);
        let w = {
            let o = o.clone();
            tokio::spawn(async move { o.push(b"more").await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !w.is_finished(),
            "push must wait while the limit is reached"
        );
        o.ack(1);
        w.await.unwrap();
        assert_eq!(o.marks().end, UNACKED_LIMIT + 4);
    }

    #[tokio::test]
    async fn wait_past_wakes_on_close() {
        let o = std::sync::Arc::new(Output::new());
        let w = {
            let o = o.clone();
            tokio::spawn(async move { o.wait_past(0).await })
        };
        o.close();
        assert!(w.await.unwrap().closed);
    }
}
