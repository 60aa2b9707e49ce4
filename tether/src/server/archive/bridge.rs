//! Byte pipes between a transfer's blocking work (`archive::pack` and
//! `archive::unpack`, on a thread of their own) and the async SSH channel.
//!
//! Owns the chunking and the end-of-stream rules. Both pipes are bounded, so
//! that the slower side holds the faster one back instead of the tether
//! buffering a whole archive. Must not know about SSH or tar.

use std::io::{self, Read, Write};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

/// Largest piece handed across at once.
pub const CHUNK: usize = 256 * 1024;
/// Pieces in flight in one pipe.
pub const DEPTH: usize = 8;

/// The writing end for blocking code: each write becomes at most `CHUNK`
/// bytes sent as `wrap(bytes)`. Fails once the receiver is gone.
pub struct Writer<T> {
    tx: mpsc::Sender<T>,
    wrap: fn(Bytes) -> T,
}

impl<T> Writer<T> {
    pub fn new(tx: mpsc::Sender<T>, wrap: fn(Bytes) -> T) -> Self {
        Self { tx, wrap }
    }
}

impl<T> Write for Writer<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK);
        if n == 0 {
            return Ok(0);
        }
        let piece = (self.wrap)(Bytes::copy_from_slice(&buf[..n]));
        self.tx
            .blocking_send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the host stopped reading"))?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the async side feeds the reading end.
#[derive(Debug)]
pub enum Feed {
    Data(Bytes),
    /// The host sent EOF: the stream is whole.
    End,
    /// The host closed the channel without EOF.
    Abort,
}

/// The reading end for blocking code. Ends cleanly only after `Feed::End`:
/// a feeder that goes away without it, or says `Abort`, makes the read fail,
/// so that a cut stream is never taken for a whole one. Counts in `taken`
/// the bytes its reads have handed out, for the feeder's credit.
pub struct Reader {
    rx: mpsc::Receiver<Feed>,
    current: Bytes,
    ended: bool,
    taken: watch::Sender<u64>,
}

impl Reader {
    /// A reader of what `rx` brings, adding what it hands out to `taken`.
    pub fn new(rx: mpsc::Receiver<Feed>, taken: watch::Sender<u64>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
            ended: false,
            taken,
        }
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Feed::Data(b)) => self.current = b,
                Some(Feed::End) => self.ended = true,
                Some(Feed::Abort) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the host closed the channel before the end of the archive",
                    ));
                }
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the archive stream was cut short",
                    ));
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.taken.send_modify(|t| *t += n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_arrive_in_bounded_chunks_and_fail_once_nobody_reads() {
        let (tx, mut rx) = mpsc::channel(DEPTH);
        let (more_tx, more_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut w = Writer::new(tx, |b| b);
            w.write_all(&vec![7u8; CHUNK * 2 + 10]).unwrap();
            // Once the reader has gone, writing fails.
            more_rx.recv().unwrap();
            w.write(b"more").unwrap_err().kind()
        });
        let mut sizes = Vec::new();
        while sizes.iter().sum::<usize>() < CHUNK * 2 + 10 {
            sizes.push(rx.blocking_recv().unwrap().len());
        }
        assert_eq!(sizes, [CHUNK, CHUNK, 10]);
        drop(rx);
        more_tx.send(()).unwrap();
        assert_eq!(writer.join().unwrap(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn the_reader_ends_only_on_end() {
        let read_all = |feed: Vec<Feed>| {
            let (tx, rx) = mpsc::channel(feed.len().max(1));
            for f in feed {
                tx.try_send(f).unwrap();
            }
            drop(tx);
            let mut out = Vec::new();
            Reader::new(rx, watch::Sender::new(0))
                .read_to_end(&mut out)
                .map(|_| out)
        };
        let whole = read_all(vec![
            Feed::Data(Bytes::from_static(b"ab")),
            Feed::Data(Bytes::new()),
            Feed::Data(Bytes::from_static(b"cd")),
            Feed::End,
        ]);
        assert_eq!(whole.unwrap(), b"abcd");
        let cut = read_all(vec![Feed::Data(Bytes::from_static(b"ab"))]).unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof);
        let aborted = read_all(vec![Feed::Data(Bytes::from_static(b"ab")), Feed::Abort]);
        assert_eq!(
            aborted.unwrap_err().kind(),
            io::ErrorKind::ConnectionAborted
        );
    }

    #[test]
    fn the_reader_counts_what_it_hands_out() {
        let (tx, rx) = mpsc::channel(4);
        let (taken_tx, taken) = watch::channel(0u64);
        let mut r = Reader::new(rx, taken_tx);
        tx.try_send(Feed::Data(Bytes::from_static(b"abcdef")))
            .unwrap();
        tx.try_send(Feed::End).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(r.read(&mut buf).unwrap(), 4);
        // Taken is what was read, not what arrived.
        assert_eq!(*taken.borrow(), 4);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"ef");
        assert_eq!(*taken.borrow(), 6);
    }
}
