//! Container logs on the host: every byte a session wrote, with its stream
//! and arrival time, in one append-only file per session.
//!
//! Owns the record format, crash recovery (a torn last record is cut off on
//! open) and reading with `since` / `tail` / timestamps. The file is the
//! source of truth for what the host has stored: per stream, the sum of the
//! record lengths is the offset the host acknowledges to the tether after
//! `sync`, and the offset it resumes attaching from after a restart. So a
//! byte is never acknowledged before it is on disk, and never stored twice.
//!
//! Record: `u64 time (unix ns, LE) | u8 stream (1 stdout, 2 stderr) | u32 len (LE) | len bytes`.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 8 + 1 + 4;
/// Largest record accepted when reading; anything larger is corruption.
const MAX_RECORD: u32 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub time: i64,
    pub stream: Stream,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("Log {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Bytes stored per stream: the offsets to acknowledge and resume from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ends {
    pub stdout: u64,
    pub stderr: u64,
}

pub struct LogWriter {
    path: PathBuf,
    file: File,
    ends: Ends,
}

fn read_record<R: Read>(r: &mut R) -> io::Result<Option<Record>> {
    let mut h = [0u8; HEADER];
    match r.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let time = i64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    let stream = match h[8] {
        1 => Stream::Stdout,
        2 => Stream::Stderr,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad stream byte",
            ));
        }
    };
    let len = u32::from_le_bytes([h[9], h[10], h[11], h[12]]);
    if len > MAX_RECORD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record too large",
        ));
    }
    let mut data = vec![0u8; len as usize];
    match r.read_exact(&mut data) {
        Ok(()) => Ok(Some(Record { time, stream, data })),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

impl LogWriter {
    /// Opens (creating) the log, recovering the stream ends from its
    /// records. A torn or corrupt tail, from a crash mid-append, is cut off:
    /// those bytes were never acknowledged, so the tether still has them.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let err = |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(err)?;
        let mut ends = Ends::default();
        let mut good = 0u64;
        {
            let mut r = BufReader::new(&mut file);
            r.seek(SeekFrom::Start(0)).map_err(err)?;
            while let Ok(Some(rec)) = read_record(&mut r) {
                match rec.stream {
                    Stream::Stdout => ends.stdout += rec.data.len() as u64,
                    Stream::Stderr => ends.stderr += rec.data.len() as u64,
                }
                good += (HEADER + rec.data.len()) as u64;
            }
        }
        if file.metadata().map_err(err)?.len() != good {
            file.set_len(good).map_err(err)?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            ends,
        })
    }

    pub fn ends(&self) -> Ends {
        self.ends
    }

    /// Appends one record (not yet durable: see `sync`).
    pub fn append(&mut self, stream: Stream, time: i64, data: &[u8]) -> Result<(), LogError> {
        if data.is_empty() {
            return Ok(());
        }
        for chunk in data.chunks(MAX_RECORD as usize) {
            let mut buf = Vec::with_capacity(HEADER + chunk.len());
            buf.extend_from_slice(&time.to_le_bytes());
            buf.push(stream as u8);
            buf.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            buf.extend_from_slice(chunk);
            self.file.write_all(&buf).map_err(|source| LogError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        match stream {
            Stream::Stdout => self.ends.stdout += data.len() as u64,
            Stream::Stderr => self.ends.stderr += data.len() as u64,
        }
        Ok(())
    }

    /// Makes everything appended durable; returns the ends that may now be
    /// acknowledged. Blocks on the disk: async callers use `syncer`.
    pub fn sync(&mut self) -> Result<Ends, LogError> {
        self.syncer()?.sync()
    }

    /// What makes everything appended so far durable, to run on a blocking
    /// thread.
    pub fn syncer(&self) -> Result<Syncer, LogError> {
        let err = |source| LogError::Io {
            path: self.path.clone(),
            source,
        };
        Ok(Syncer {
            file: self.file.try_clone().map_err(err)?,
            path: self.path.clone(),
            ends: self.ends,
        })
    }
}

/// A log's bytes up to `ends`, to be made durable (see `LogWriter::syncer`).
pub struct Syncer {
    file: File,
    path: PathBuf,
    ends: Ends,
}

impl Syncer {
    /// Blocks until the bytes are on disk; returns the ends that may now be
    /// acknowledged.
    pub fn sync(self) -> Result<Ends, LogError> {
        self.file.sync_data().map_err(|source| LogError::Io {
            path: self.path,
            source,
        })?;
        Ok(self.ends)
    }
}

/// What to read back.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Only records at or after this time (unix ns).
    pub since: Option<i64>,
    /// Only the last N lines (per the whole log, both streams).
    pub tail: Option<usize>,
}

/// Reads the log's records, filtered. Records are split into lines so
/// that `tail` counts lines, as `docker logs --tail` does.
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Vec<Record>, LogError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(LogError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut r = BufReader::new(file);
    let mut lines: Vec<Record> = Vec::new();
    while let Ok(Some(rec)) = read_record(&mut r) {
        if opts.since.is_some_and(|s| rec.time < s) {
            continue;
        }
        for piece in rec.data.split_inclusive(|b| *b == b'\n') {
            // Join a line split across records of the same stream.
            match lines.last_mut() {
                Some(last) if last.stream == rec.stream && !last.data.ends_with(b"\n") => {
                    last.data.extend_from_slice(piece)
                }
                _ => lines.push(Record {
                    time: rec.time,
                    stream: rec.stream,
                    data: piece.to_vec(),
                }),
            }
        }
    }
    if let Some(n) = opts.tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_survive_reopen_and_a_torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.log");
        let mut w = LogWriter::open(&p).unwrap();
        w.append(Stream::Stdout, 1, b"hello\n").unwrap();
        w.append(Stream::Stderr, 2, b"oops\n").unwrap();
        w.append(Stream::Stdout, 3, b"world\n").unwrap();
        assert_eq!(
            w.sync().unwrap(),
            Ends {
                stdout: 12,
                stderr: 5
            }
        );
        drop(w);
        // A crash mid-append leaves half a record.
        let good = std::fs::metadata(&p).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(&[9, 0, 0, 0, 0, 0, 0, 0, 1, 100, 0, 0, 0, b'x'])
            .unwrap();
        drop(f);
        let mut w = LogWriter::open(&p).unwrap();
        assert_eq!(
            w.ends(),
            Ends {
                stdout: 12,
                stderr: 5
            }
        );
        assert_eq!(std::fs::metadata(&p).unwrap().len(), good);
        w.append(Stream::Stdout, 4, b"again\n").unwrap();
        assert_eq!(w.sync().unwrap().stdout, 18);
        let all: Vec<u8> = read(&p, &ReadOptions::default())
            .unwrap()
            .into_iter()
            .filter(|r| r.stream == Stream::Stdout)
            .flat_map(|r| r.data)
            .collect();
        assert_eq!(all, b"hello\nworld\nagain\n");
    }

    #[test]
    fn tail_counts_lines_and_since_filters_by_time() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.log");
        let mut w = LogWriter::open(&p).unwrap();
        w.append(Stream::Stdout, 10, b"a\nb\nc").unwrap();
        w.append(Stream::Stdout, 20, b"c-continued\nd\n").unwrap();
        w.append(Stream::Stderr, 30, b"e\n").unwrap();
        w.sync().unwrap();
        let text = |v: Vec<Record>| {
            v.iter()
                .map(|r| String::from_utf8_lossy(&r.data).into_owned())
                .collect::<Vec<_>>()
        };
        let tail = read(
            &p,
            &ReadOptions {
                since: None,
                tail: Some(3),
            },
        )
        .unwrap();
        // "c" and "c-continued" are one line split across two records.
        assert_eq!(text(tail), ["cc-continued\n", "d\n", "e\n"]);
        let since = read(
            &p,
            &ReadOptions {
                since: Some(20),
                tail: None,
            },
        )
        .unwrap();
        assert_eq!(text(since), ["c-continued\n", "d\n", "e\n"]);
        assert!(
            read(&d.path().join("none.log"), &ReadOptions::default())
                .unwrap()
                .is_empty()
        );
    }
}
