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
//!
//! A container started again appends its new run to the same log, as
//! `docker logs` shows every run. The tether counts each run's output from
//! zero, so `<task>.base` holds the log's ends when the current run began
//! (`start_run`): the offsets acknowledged and resumed from are the run's,
//! the log's own minus the base.
//!
//! Beside the log, `<task>.exit` holds the session's exit code (decimal)
//! once the host has it on disk: only then is the exit status acknowledged
//! to the tether, and an appliance restarted after the VM is gone still
//! knows how the task ended.

use std::collections::VecDeque;
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
    /// The log's ends when the current run began (`start_run`).
    base: Ends,
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
        let base = std::fs::read_to_string(base_path(path))
            .ok()
            .and_then(|s| {
                let (o, e) = s.trim().split_once(' ')?;
                Some(Ends {
                    stdout: o.parse().ok()?,
                    stderr: e.parse().ok()?,
                })
            })
            .unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            file,
            ends,
            base,
        })
    }

    /// The current run's ends: what the tether has had stored.
    pub fn ends(&self) -> Ends {
        Ends {
            stdout: self.ends.stdout.saturating_sub(self.base.stdout),
            stderr: self.ends.stderr.saturating_sub(self.base.stderr),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
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
            ends: self.ends(),
        })
    }
}

/// The file beside the log `log` that holds where its current run began.
pub fn base_path(log: &Path) -> PathBuf {
    log.with_extension("base")
}

/// Begins a new run of the log's session: what follows is counted from
/// zero, after what the log holds. Blocks on the disk.
pub fn start_run(log: &Path) -> Result<(), LogError> {
    let total = {
        let w = LogWriter::open(log)?;
        w.ends
    };
    let path = base_path(log);
    write_durably(
        &path,
        format!("{} {}\n", total.stdout, total.stderr).as_bytes(),
    )?;
    let _ = std::fs::remove_file(exit_path(log));
    Ok(())
}

/// Writes `path` whole or not at all: a temporary file, synced, renamed
/// into place, the directory synced.
fn write_durably(path: &Path, data: &[u8]) -> Result<(), LogError> {
    let err = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(data).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}

/// The file beside the log `log` that holds its session's exit code.
pub fn exit_path(log: &Path) -> PathBuf {
    log.with_extension("exit")
}

/// Stores the exit code of the log's session durably: written to a
/// temporary file, synced, renamed into place, the directory synced.
/// Blocks on the disk.
pub fn store_exit(log: &Path, code: i32) -> Result<(), LogError> {
    write_durably(&exit_path(log), format!("{code}\n").as_bytes())
}

/// The exit code stored for the log's session, if any.
pub fn stored_exit(log: &Path) -> Option<i32> {
    std::fs::read_to_string(exit_path(log))
        .ok()
        .and_then(|s| s.trim().parse().ok())
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
/// that `tail` counts lines, as `docker logs --tail` does. With `tail`,
/// only the end of the log is read (see `read_tail`).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Vec<Record>, LogError> {
    if let Some(n) = opts.tail {
        let filter = Filter {
            since: opts.since,
            ..Filter::default()
        };
        return Ok(read_tail(path, &filter, n)?.lines);
    }
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
    let mut lines = Lines::new(None);
    while let Ok(Some(rec)) = read_record(&mut r) {
        if opts.since.is_some_and(|s| rec.time < s) {
            continue;
        }
        lines.push(&rec);
    }
    Ok(lines.into_vec())
}

/// Which records count towards a tail.
#[derive(Debug, Clone, Copy)]
pub struct Filter {
    /// Only records at or after this time (unix ns).
    pub since: Option<i64>,
    pub stdout: bool,
    pub stderr: bool,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            since: None,
            stdout: true,
            stderr: true,
        }
    }
}

impl Filter {
    fn wants(&self, stream: Stream, time: i64) -> bool {
        let s = match stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        s && self.since.is_none_or(|since| time >= since)
    }
}

/// The last lines of a log (see `read_tail`).
#[derive(Debug)]
pub struct Tail {
    /// The last N lines of the records the filter wants: the records split
    /// into lines, a line split across consecutive wanted records of one
    /// stream joined, exactly as `read` does over the whole log.
    pub lines: Vec<Record>,
    /// Where the complete records end: where to follow the log from.
    pub end: u64,
    /// Why reading stopped before the end of the file, if it hit a
    /// corrupt record (at `end`); a torn last record is not corruption.
    pub corrupt: Option<io::Error>,
    /// Bytes read from the file (headers and data).
    pub bytes_read: u64,
}

/// Splits records into lines, joining a line split across consecutive
/// records of one stream; keeps only the last `keep` lines if given.
struct Lines {
    lines: VecDeque<Record>,
    keep: Option<usize>,
}

impl Lines {
    fn new(keep: Option<usize>) -> Self {
        Lines {
            lines: VecDeque::new(),
            keep,
        }
    }

    fn push(&mut self, rec: &Record) {
        for piece in rec.data.split_inclusive(|b| *b == b'\n') {
            match self.lines.back_mut() {
                Some(last) if last.stream == rec.stream && !last.data.ends_with(b"\n") => {
                    last.data.extend_from_slice(piece)
                }
                _ => {
                    // The last line may still grow: keep it even for
                    // `keep == 0` (cut in `into_vec`).
                    if let Some(k) = self.keep {
                        while self.lines.len() >= k.max(1) {
                            self.lines.pop_front();
                        }
                    }
                    self.lines.push_back(Record {
                        time: rec.time,
                        stream: rec.stream,
                        data: piece.to_vec(),
                    })
                }
            }
        }
    }

    fn into_vec(self) -> Vec<Record> {
        let mut v = Vec::from(self.lines);
        if let Some(k) = self.keep {
            v.drain(..v.len().saturating_sub(k));
        }
        v
    }
}

/// Records per checkpoint of the header scan: the backward pass re-scans
/// one block's headers at a time, so only every BLOCK-th offset is kept.
const BLOCK: usize = 1024;
/// The backward pass reads a block of records at most this large in one
/// go, headers and data.
const BLOCK_READ: u64 = 1 << 20;
/// How much the header scan reads at once while records are small.
const SCAN_CHUNK: usize = 64 << 10;
/// Records at least this large are seeked over (only their headers read);
/// smaller ones are read through, `SCAN_CHUNK` at a time.
const SKIP: usize = 4 << 10;

#[derive(Debug, Clone, Copy)]
struct Header {
    time: i64,
    stream: Stream,
    len: u32,
}

/// Positioned reads of a file, counted.
struct Src<R> {
    r: R,
    pos: u64,
    bytes_read: u64,
}

impl<R: Read + Seek> Src<R> {
    /// Reads into `buf` at `off` until it is full or the file ends.
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos != off {
            self.r.seek(SeekFrom::Start(off))?;
            self.pos = off;
        }
        let mut n = 0;
        while n < buf.len() {
            match self.r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += n as u64;
        self.bytes_read += n as u64;
        Ok(n)
    }
}

/// Walks record headers from an offset, seeking over large records' data.
struct Scanner<'a, R> {
    src: &'a mut Src<R>,
    /// The file's length when reading started: later appends are ignored.
    size: u64,
    buf: Vec<u8>,
    buf_at: u64,
    /// How much to read when the next header is not buffered.
    want: usize,
}

enum Next {
    Record(Header),
    /// No complete record here: the end of the file, or a torn record.
    End,
    Corrupt(io::Error),
}

impl<'a, R: Read + Seek> Scanner<'a, R> {
    fn new(src: &'a mut Src<R>, size: u64) -> Self {
        Scanner {
            src,
            size,
            buf: Vec::new(),
            buf_at: 0,
            want: HEADER,
        }
    }

    /// Reads `len` bytes at `off` into the buffer.
    fn fill(&mut self, off: u64, len: usize) -> io::Result<()> {
        let n = (len as u64).min(self.size.saturating_sub(off)) as usize;
        self.buf.resize(n, 0);
        let got = self.src.read_at(off, &mut self.buf)?;
        self.buf.truncate(got);
        self.buf_at = off;
        Ok(())
    }

    /// The `len` bytes at `off`: from the buffer if there, else read.
    fn data(&mut self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        if off >= self.buf_at && off + len as u64 <= self.buf_at + self.buf.len() as u64 {
            let i = (off - self.buf_at) as usize;
            return Ok(self.buf[i..i + len].to_vec());
        }
        let mut data = vec![0u8; len];
        if self.src.read_at(off, &mut data)? < len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("log truncated while read at offset {off}"),
            ));
        }
        Ok(data)
    }

    /// The record at `off`: its header, checked, and that its data is
    /// all in the file.
    fn at(&mut self, off: u64) -> io::Result<Next> {
        if off + HEADER as u64 > self.size {
            return Ok(Next::End);
        }
        let buffered =
            off >= self.buf_at && off + HEADER as u64 <= self.buf_at + self.buf.len() as u64;
        if !buffered {
            self.fill(off, self.want)?;
            if self.buf.len() < HEADER {
                return Ok(Next::End);
            }
        }
        let i = (off - self.buf_at) as usize;
        let h = &self.buf[i..i + HEADER];
        let time = i64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        let stream = match h[8] {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            b => {
                return Ok(Next::Corrupt(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad stream byte {b} at offset {off}"),
                )));
            }
        };
        let len = u32::from_le_bytes([h[9], h[10], h[11], h[12]]);
        if len > MAX_RECORD {
            return Ok(Next::Corrupt(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record of {len} bytes at offset {off}"),
            )));
        }
        if off + (HEADER as u64) + u64::from(len) > self.size {
            return Ok(Next::End);
        }
        self.want = if len as usize >= SKIP {
            HEADER
        } else {
            SCAN_CHUNK
        };
        Ok(Next::Record(Header { time, stream, len }))
    }
}

/// The last `n` lines of the log's records that `filter` wants, the same
/// lines as splitting all of them and dropping all but the last `n`, but
/// reading from the end: a first pass reads only the record headers
/// (seeking over large records' data), keeping every `BLOCK`-th offset; a
/// second walks the records backwards, block by block, reading the data
/// of wanted ones until they hold `n + 1` line ends (or the log's start);
/// those records, split forwards, end with exactly the last `n` lines.
/// Memory is the tail's records (plus up to a block or a record more) and
/// an offset per `BLOCK` records.
///
/// Like `read`, stops at a torn or corrupt record (reported in `corrupt`).
/// Blocks on the disk: async callers run it on a blocking thread.
pub fn read_tail(path: &Path, filter: &Filter, n: usize) -> Result<Tail, LogError> {
    let err = |source| LogError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Tail {
                lines: Vec::new(),
                end: 0,
                corrupt: None,
                bytes_read: 0,
            });
        }
        Err(source) => return Err(err(source)),
    };
    let size = file.metadata().map_err(err)?.len();
    tail_of(file, size, filter, n, BLOCK_READ).map_err(err)
}

/// `read_tail` of `r`, `size` bytes long, reading blocks of up to
/// `block_read` bytes whole in the backward pass.
fn tail_of<R: Read + Seek>(
    r: R,
    size: u64,
    filter: &Filter,
    n: usize,
    block_read: u64,
) -> io::Result<Tail> {
    let mut src = Src {
        r,
        pos: u64::MAX,
        bytes_read: 0,
    };
    // Pass 1: headers only, to find where the complete records end.
    let mut checkpoints: Vec<u64> = Vec::new();
    let mut count = 0usize;
    let mut end = 0u64;
    let corrupt = {
        let mut scan = Scanner::new(&mut src, size);
        loop {
            match scan.at(end)? {
                Next::Record(h) => {
                    if count.is_multiple_of(BLOCK) {
                        checkpoints.push(end);
                    }
                    count += 1;
                    end += HEADER as u64 + u64::from(h.len);
                }
                Next::End => break None,
                Next::Corrupt(e) => break Some(e),
            }
        }
    };
    // Pass 2: backwards, block by block, collecting wanted records until
    // they hold n + 1 line ends. A line ends at each '\n', and where a
    // wanted record's data ends without one if the next wanted (non-empty)
    // record is of the other stream, or there is none.
    let mut picked: Vec<Record> = Vec::new();
    if n > 0 {
        let mut ends = 0usize;
        let mut next_stream: Option<Stream> = None;
        let mut block: Vec<(u64, Header)> = Vec::with_capacity(BLOCK);
        'blocks: for (b, &start) in checkpoints.iter().enumerate().rev() {
            block.clear();
            let stop = checkpoints.get(b + 1).copied().unwrap_or(end);
            let mut scan = Scanner::new(&mut src, stop);
            if stop - start <= block_read {
                // Small records: the whole block in one read.
                scan.fill(start, (stop - start) as usize)?;
            }
            let mut off = start;
            while off < stop {
                let Next::Record(h) = scan.at(off)? else {
                    return Err(io::Error::other(format!(
                        "log changed while read at offset {off}"
                    )));
                };
                block.push((off, h));
                off += HEADER as u64 + u64::from(h.len);
            }
            for &(off, h) in block.iter().rev() {
                if h.len == 0 || !filter.wants(h.stream, h.time) {
                    continue;
                }
                let data = scan.data(off + HEADER as u64, h.len as usize)?;
                ends += data.iter().filter(|b| **b == b'\n').count();
                if !data.ends_with(b"\n") && next_stream != Some(h.stream) {
                    ends += 1;
                }
                next_stream = Some(h.stream);
                picked.push(Record {
                    time: h.time,
                    stream: h.stream,
                    data,
                });
                if ends > n {
                    break 'blocks;
                }
            }
        }
    }
    let mut lines = Lines::new(Some(n));
    while let Some(rec) = picked.pop() {
        lines.push(&rec);
    }
    Ok(Tail {
        lines: lines.into_vec(),
        end,
        corrupt,
        bytes_read: src.bytes_read,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_run_appends_and_counts_its_offsets_from_zero() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.log");
        let mut w = LogWriter::open(&p).unwrap();
        w.append(Stream::Stdout, 1, b"first run\n").unwrap();
        w.append(Stream::Stderr, 2, b"err\n").unwrap();
        w.sync().unwrap();
        drop(w);
        store_exit(&p, 3).unwrap();
        start_run(&p).unwrap();
        assert_eq!(stored_exit(&p), None, "the new run has no exit yet");
        // The tether's offsets of the new run start at zero...
        let mut w = LogWriter::open(&p).unwrap();
        assert_eq!(w.ends(), Ends::default());
        w.append(Stream::Stdout, 3, b"second\n").unwrap();
        assert_eq!(
            w.sync().unwrap(),
            Ends {
                stdout: 7,
                stderr: 0
            }
        );
        drop(w);
        // ...and resume there after a restart of the appliance.
        assert_eq!(
            LogWriter::open(&p).unwrap().ends(),
            Ends {
                stdout: 7,
                stderr: 0
            }
        );
        // Readers see every run.
        let all: Vec<u8> = read(&p, &ReadOptions::default())
            .unwrap()
            .into_iter()
            .flat_map(|r| r.data)
            .collect();
        assert_eq!(all, b"first run\nerr\nsecond\n");
    }

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
    fn an_exit_code_is_stored_beside_the_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("task.log");
        assert_eq!(stored_exit(&log), None);
        store_exit(&log, 137).unwrap();
        assert_eq!(exit_path(&log), d.path().join("task.exit"));
        assert_eq!(stored_exit(&log), Some(137));
        store_exit(&log, -1).unwrap();
        assert_eq!(stored_exit(&log), Some(-1));
        // Nothing else is left beside it.
        let mut names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["task.exit"]);
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

#[cfg(test)]
mod tail_tests {
    use super::*;

    /// The algorithm `read` used before `read_tail`: every wanted record
    /// split into lines, then all but the last `n` dropped.
    fn full_read_then_drop(path: &Path, filter: &Filter, n: usize) -> Vec<Record> {
        let mut r = BufReader::new(File::open(path).unwrap());
        let mut lines: Vec<Record> = Vec::new();
        while let Ok(Some(rec)) = read_record(&mut r) {
            if !filter.wants(rec.stream, rec.time) {
                continue;
            }
            for piece in rec.data.split_inclusive(|b| *b == b'\n') {
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
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
        lines
    }

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn record(out: &mut Vec<u8>, time: i64, stream: u8, data: &[u8]) {
        out.extend_from_slice(&time.to_le_bytes());
        out.push(stream);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }

    /// A random log: mixed streams, runs of one stream, partial lines,
    /// lines split over records, empty records, sometimes a torn or
    /// corrupt end. Returns the bytes and the largest time.
    fn random_log(rng: &mut Rng) -> (Vec<u8>, i64) {
        let mut out = Vec::new();
        // Some logs have records large enough to be seeked over.
        let big = rng.below(3) == 0;
        let records = match rng.below(4) {
            0 => rng.below(5),
            1 => rng.below(60),
            2 => rng.below(600),
            _ => 1100 + rng.below(2000),
        };
        // How often a byte is a newline: from never to often.
        let newline = [0, 2, 10, 50][rng.below(4) as usize];
        let mut time = 0i64;
        let mut stream = 1u8;
        for _ in 0..records {
            if rng.below(3) == 0 {
                stream = 3 - stream;
            }
            time += rng.below(3) as i64;
            let len = match rng.below(10) {
                0 => 0,
                1 if big && rng.below(4) == 0 => 4096 + rng.below(8192) as usize,
                _ => rng.below(40) as usize,
            };
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    if newline > 0 && rng.below(100) < newline {
                        b'\n'
                    } else {
                        b'a' + rng.below(26) as u8
                    }
                })
                .collect();
            record(&mut out, time, stream, &data);
        }
        match rng.below(8) {
            // A torn header, or a torn record.
            0 => out.extend_from_slice(&[1, 2, 3]),
            1 => out.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0, 1, 100, 0, 0, 0, b'x']),
            // Corruption, then records that must not be read.
            2 => {
                record(&mut out, time, 7, b"bad\n");
                record(&mut out, time, 1, b"after\n");
            }
            3 => {
                out.extend_from_slice(&time.to_le_bytes());
                out.push(1);
                out.extend_from_slice(&(MAX_RECORD + 1).to_le_bytes());
                record(&mut out, time, 1, b"after\n");
            }
            _ => {}
        }
        (out, time)
    }

    #[test]
    fn tail_matches_reading_everything_then_dropping() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.log");
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..120 {
            let (bytes, max_time) = random_log(&mut rng);
            std::fs::write(&p, &bytes).unwrap();
            let total = full_read_then_drop(&p, &Filter::default(), usize::MAX).len();
            let mut tails = vec![0, 1, 2, 3, 7, 50, total, total + 3];
            tails.push(rng.below(total as u64 + 1) as usize);
            let since = rng.below(max_time as u64 + 2) as i64;
            let filters = [
                Filter::default(),
                Filter {
                    stderr: false,
                    ..Filter::default()
                },
                Filter {
                    stdout: false,
                    ..Filter::default()
                },
                Filter {
                    since: Some(since),
                    ..Filter::default()
                },
                Filter {
                    since: Some(since),
                    stdout: false,
                    stderr: true,
                },
            ];
            for filter in &filters {
                let all = full_read_then_drop(&p, filter, usize::MAX);
                for &n in &tails {
                    let want = all[all.len().saturating_sub(n)..].to_vec();
                    let got = read_tail(&p, filter, n).unwrap();
                    assert_eq!(got.lines, want, "case {case}, {filter:?}, tail {n}");
                    // And seeking over the data of every record.
                    let f = File::open(&p).unwrap();
                    let seeking = tail_of(f, bytes.len() as u64, filter, n, 0).unwrap();
                    assert_eq!(
                        seeking.lines, want,
                        "case {case}, {filter:?}, tail {n}, seeking"
                    );
                    // At worst (the tail is everything): the headers' pass, the
                    // last pass over them, the data.
                    assert!(got.bytes_read <= 3 * bytes.len() as u64 + 64 * 1024);
                    if filter.stdout && filter.stderr {
                        let opts = ReadOptions {
                            since: filter.since,
                            tail: Some(n),
                        };
                        assert_eq!(read(&p, &opts).unwrap(), want, "case {case}, read {opts:?}");
                    }
                }
            }
            // `end` is where the complete, sound records end.
            let t = read_tail(&p, &Filter::default(), 1).unwrap();
            let mut r = BufReader::new(File::open(&p).unwrap());
            let mut good = 0u64;
            while let Ok(Some(rec)) = read_record(&mut r) {
                good += (HEADER + rec.data.len()) as u64;
            }
            assert_eq!(t.end, good, "case {case}");
            // A whole header after them that is unsound is corruption.
            let corrupt = bytes
                .get(good as usize..good as usize + HEADER)
                .is_some_and(|h| {
                    !matches!(h[8], 1 | 2)
                        || u32::from_le_bytes([h[9], h[10], h[11], h[12]]) > MAX_RECORD
                });
            assert_eq!(t.corrupt.is_some(), corrupt, "case {case}: {:?}", t.corrupt);
        }
    }

    #[test]
    fn tail_of_a_large_log_reads_only_its_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("s.log");
        let mut w = LogWriter::open(&p).unwrap();
        // 64 MiB: 1024 records of 64 KiB, 1024 lines of 64 bytes each,
        // the streams alternating.
        let mut line = 0u64;
        for i in 0..1024u32 {
            let mut data = Vec::with_capacity(64 << 10);
            for _ in 0..1024 {
                data.extend_from_slice(format!("{line:063}\n").as_bytes());
                line += 1;
            }
            let stream = if i % 2 == 0 {
                Stream::Stdout
            } else {
                Stream::Stderr
            };
            w.append(stream, i64::from(i), &data).unwrap();
        }
        w.sync().unwrap();
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size > 64 << 20);
        let t = read_tail(&p, &Filter::default(), 10).unwrap();
        let text: Vec<String> = t
            .lines
            .iter()
            .map(|r| String::from_utf8(r.data.clone()).unwrap())
            .collect();
        let want: Vec<String> = (line - 10..line).map(|l| format!("{l:063}\n")).collect();
        assert_eq!(text, want);
        assert!(
            t.lines
                .iter()
                .all(|r| r.stream == Stream::Stderr && r.time == 1023)
        );
        assert_eq!(t.end, size);
        // Headers (twice for the last block) and the last record's data.
        assert!(
            t.bytes_read < 256 << 10,
            "read {} of {size} bytes",
            t.bytes_read
        );
        // Only stdout: the last stdout record, one back.
        let t = read_tail(
            &p,
            &Filter {
                stderr: false,
                ..Filter::default()
            },
            1500,
        )
        .unwrap();
        assert_eq!(t.lines.len(), 1500);
        assert_eq!(t.lines[1499].time, 1022);
        assert_eq!(t.lines[0].time, 1020);
        assert!(t.bytes_read < 512 << 10, "read {}", t.bytes_read);
        // `read` takes the same path.
        let lines = read(
            &p,
            &ReadOptions {
                since: None,
                tail: Some(3),
            },
        )
        .unwrap();
        assert_eq!(lines.len(), 3);
    }
}
