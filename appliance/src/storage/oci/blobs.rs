//! The blob store: content-addressed files at `<root>/sha256/<hex>`.
//!
//! A write goes to a temporary file in `<root>/tmp`, hashed as it is written,
//! and is renamed into place only if the sha256 matches; otherwise (or on any
//! I/O error, ENOSPC included) the temporary file is removed and nothing is
//! left behind.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use super::OciError;

const ALGORITHM: &str = "sha256";

/// Whether `digest` is `sha256:` followed by 64 lowercase hex digits, the
/// only form this store accepts.
pub fn is_valid_digest(digest: &str) -> bool {
    match digest.split_once(':') {
        Some((ALGORITHM, hex)) => {
            hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        _ => false,
    }
}

pub(super) fn check_digest(digest: &str) -> Result<(), OciError> {
    if is_valid_digest(digest) {
        Ok(())
    } else {
        Err(OciError::InvalidDigest(digest.to_string()))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `sha256:<hex>` of `bytes`.
pub(super) fn digest_of(bytes: &[u8]) -> String {
    format!("{ALGORITHM}:{}", hex(&Sha256::digest(bytes)))
}

/// Content-addressed blobs: `<root>/sha256/<hex>`.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root.join(ALGORITHM))?;
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `digest` lives (or would). A malformed digest maps to a
    /// path that never exists.
    pub fn path(&self, digest: &str) -> PathBuf {
        match digest.split_once(':') {
            Some((ALGORITHM, hex)) if is_valid_digest(digest) => {
                self.root.join(ALGORITHM).join(hex)
            }
            _ => self.root.join(ALGORITHM).join("invalid-digest"),
        }
    }

    pub fn has(&self, digest: &str) -> bool {
        is_valid_digest(digest) && self.path(digest).is_file()
    }

    /// Whether the blob is here, marking it as just used if so (its mtime):
    /// a sweep for blobs no image references leaves it alone while the
    /// operation that reuses it runs.
    pub fn reuse(&self, digest: &str) -> bool {
        self.has(digest)
            && File::open(self.path(digest))
                .and_then(|f| f.set_modified(SystemTime::now()))
                .is_ok()
    }

    /// Removes the blobs not in `keep` and the temporary files that nothing
    /// has written or reused for `age`; returns how many it removed. A blob
    /// that an operation under way has just written or reused is younger
    /// than any sensible `age`, so it stays.
    pub fn sweep(&self, keep: &HashSet<String>, age: Duration) -> io::Result<usize> {
        let Some(cutoff) = SystemTime::now().checked_sub(age) else {
            return Ok(0);
        };
        let mut removed = 0;
        for (dir, is_blob) in [(ALGORITHM, true), ("tmp", false)] {
            for entry in std::fs::read_dir(self.root.join(dir))? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_blob && keep.contains(&format!("{ALGORITHM}:{name}")) {
                    continue;
                }
                let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                    continue;
                };
                if modified < cutoff {
                    match std::fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(removed)
    }

    /// Removes a blob; removing one that is not there is not an error.
    pub fn remove(&self, digest: &str) -> io::Result<()> {
        if !is_valid_digest(digest) {
            return Ok(());
        }
        match std::fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// The size of a stored blob.
    pub fn size(&self, digest: &str) -> io::Result<u64> {
        Ok(std::fs::metadata(self.path(digest))?.len())
    }

    /// Reads a whole blob, refusing one larger than `limit` bytes.
    pub fn read(&self, digest: &str, limit: u64) -> Result<Vec<u8>, OciError> {
        let err = |source| OciError::BlobRead {
            digest: digest.to_string(),
            source,
        };
        let file = File::open(self.path(digest)).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        if size > limit {
            return Err(OciError::TooBig {
                what: format!("Blob {digest}"),
                size,
                limit,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        file.take(limit + 1).read_to_end(&mut out).map_err(err)?;
        Ok(out)
    }

    fn temp(&self, what: &str) -> Result<(File, TempPath), OciError> {
        tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.root.join("tmp"))
            .map(|t| t.into_parts())
            .map_err(|source| OciError::BlobWrite {
                what: what.to_string(),
                source,
            })
    }

    /// A writer for a new blob. With `expected`, [`BlobWriter::finish`]
    /// keeps it only if it hashes to that digest; without, it is stored
    /// under whatever digest it hashes to.
    pub fn writer(&self, expected: Option<&str>) -> Result<BlobWriter, OciError> {
        if let Some(d) = expected {
            check_digest(d)?;
        }
        let what = expected.unwrap_or("(new blob)");
        let (file, temp) = self.temp(what)?;
        Ok(BlobWriter {
            store: self.clone(),
            expected: expected.map(str::to_string),
            file,
            temp,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Stores `bytes`, verified against `expected` if given; returns the digest.
    pub fn write_bytes(&self, expected: Option<&str>, bytes: &[u8]) -> Result<String, OciError> {
        let mut w = self.writer(expected)?;
        w.write_all(bytes).map_err(|e| w.error(e))?;
        Ok(w.finish()?.0)
    }

    /// Copies `r` into the store, verified against `expected` if given;
    /// returns the digest and size.
    pub fn write_reader(
        &self,
        expected: Option<&str>,
        r: impl Read,
    ) -> Result<(String, u64), OciError> {
        let mut w = self.writer(expected)?;
        w.copy_from(r)?;
        w.finish()
    }

    /// An async writer for a new blob that must hash to `expected` and be
    /// at most `max_size` bytes (if given).
    pub async fn async_writer(
        &self,
        expected: &str,
        max_size: Option<u64>,
    ) -> Result<AsyncBlobWriter, OciError> {
        check_digest(expected)?;
        let (file, temp) = self.temp(expected)?;
        Ok(AsyncBlobWriter {
            store: self.clone(),
            expected: expected.to_string(),
            max_size,
            file: tokio::fs::File::from_std(file),
            temp,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    fn place(
        &self,
        temp: TempPath,
        expected: Option<&str>,
        hasher: Sha256,
    ) -> Result<String, OciError> {
        let actual = format!("{ALGORITHM}:{}", hex(&hasher.finalize()));
        if let Some(expected) = expected
            && expected != actual
        {
            // Dropping `temp` removes the file.
            return Err(OciError::Verification {
                expected: expected.to_string(),
                actual,
            });
        }
        temp.persist(self.path(&actual))
            .map_err(|e| OciError::BlobWrite {
                what: actual.clone(),
                source: e.error,
            })?;
        Ok(actual)
    }
}

/// A blob being written (sync). Dropping it unfinished removes the
/// temporary file.
pub struct BlobWriter {
    store: BlobStore,
    expected: Option<String>,
    file: File,
    temp: TempPath,
    hasher: Sha256,
    size: u64,
}

impl BlobWriter {
    /// Wraps an I/O error from writing this blob.
    pub fn error(&self, source: io::Error) -> OciError {
        OciError::BlobWrite {
            what: self.expected.clone().unwrap_or_else(|| "(new blob)".into()),
            source,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies all of `r` in; a read error is the archive's
    /// ([`OciError::Archive`]), a write error the blob's.
    pub fn copy_from(&mut self, mut r: impl Read) -> Result<u64, OciError> {
        let mut buf = vec![0u8; 256 * 1024];
        let mut n_total = 0;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => return Ok(n_total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(OciError::Archive(e)),
            };
            self.write_all(&buf[..n]).map_err(|e| self.error(e))?;
            n_total += n as u64;
        }
    }

    /// The digest of what has been written so far.
    pub fn digest(&self) -> String {
        format!("{ALGORITHM}:{}", hex(&self.hasher.clone().finalize()))
    }

    /// Flushes, verifies and renames the blob into place; returns its
    /// digest and size.
    pub fn finish(mut self) -> Result<(String, u64), OciError> {
        if let Err(e) = self.file.flush().and_then(|()| self.file.sync_all()) {
            return Err(self.error(e));
        }
        let size = self.size;
        let digest = self
            .store
            .place(self.temp, self.expected.as_deref(), self.hasher)?;
        Ok((digest, size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A blob being written (async). Dropping it unfinished removes the
/// temporary file.
pub struct AsyncBlobWriter {
    store: BlobStore,
    expected: String,
    max_size: Option<u64>,
    file: tokio::fs::File,
    temp: TempPath,
    hasher: Sha256,
    size: u64,
}

impl AsyncBlobWriter {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), OciError> {
        let size = self.size + chunk.len() as u64;
        if let Some(max) = self.max_size
            && size > max
        {
            return Err(OciError::TooLarge {
                digest: self.expected.clone(),
                size: max,
            });
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(|source| OciError::BlobWrite {
                what: self.expected.clone(),
                source,
            })?;
        self.hasher.update(chunk);
        self.size = size;
        Ok(())
    }

    /// Flushes, verifies and renames the blob into place; returns its size.
    pub async fn finish(mut self) -> Result<u64, OciError> {
        let r = match self.file.flush().await {
            Ok(()) => self.file.sync_all().await,
            Err(e) => Err(e),
        };
        r.map_err(|source| OciError::BlobWrite {
            what: self.expected.clone(),
            source,
        })?;
        self.store
            .place(self.temp, Some(&self.expected), self.hasher)?;
        Ok(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_only_matching_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let good = digest_of(b"hello");
        assert_eq!(store.write_bytes(Some(&good), b"hello").unwrap(), good);
        assert!(store.has(&good));
        assert_eq!(std::fs::read(store.path(&good)).unwrap(), b"hello");

        let wanted = digest_of(b"other");
        let e = store.write_bytes(Some(&wanted), b"hello").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&wanted) && msg.contains(&good), "{msg}");
        assert!(!store.has(&wanted));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );

        store.remove(&good).unwrap();
        store.remove(&good).unwrap();
        assert!(!store.has(&good));
    }

    #[test]
    fn sweep_takes_old_unreferenced_blobs_and_temporaries_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let day = Duration::from_secs(24 * 3600);
        let age = |path: &Path, by: Duration| {
            let f = File::open(path).unwrap();
            f.set_modified(SystemTime::now() - by).unwrap();
        };
        let [kept, orphan, fresh, reused] = ["kept", "orphan", "fresh", "reuse"]
            .map(|b| store.write_bytes(None, b.as_bytes()).unwrap());
        for d in [&kept, &orphan, &reused] {
            age(&store.path(d), 2 * day);
        }
        let old_tmp = dir.path().join("tmp/.tmpold");
        std::fs::write(&old_tmp, b"half a blob").unwrap();
        age(&old_tmp, 2 * day);
        let new_tmp = dir.path().join("tmp/.tmpnew");
        std::fs::write(&new_tmp, b"being written").unwrap();
        // A pull finds it cached: it is in use again.
        assert!(store.reuse(&reused));
        assert!(!store.reuse(&digest_of(b"absent")));

        let keep = HashSet::from([kept.clone()]);
        assert_eq!(store.sweep(&keep, day).unwrap(), 2);
        assert!(store.has(&kept) && store.has(&fresh) && store.has(&reused));
        assert!(!store.has(&orphan));
        assert!(!old_tmp.exists() && new_tmp.exists());
        assert_eq!(store.sweep(&keep, day).unwrap(), 0);
    }

    #[test]
    fn unknown_digest_is_computed() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let (d, n) = store.write_reader(None, &b"abc"[..]).unwrap();
        assert_eq!(d, digest_of(b"abc"));
        assert_eq!(n, 3);
        assert_eq!(store.read(&d, 3).unwrap(), b"abc");
        assert!(matches!(store.read(&d, 2), Err(OciError::TooBig { .. })));
    }

    #[test]
    fn digests_are_checked() {
        assert!(is_valid_digest(&digest_of(b"")));
        assert!(!is_valid_digest("sha256:ABC"));
        assert!(!is_valid_digest("sha512:00"));
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        assert!(!store.has("sha256:../../etc/passwd"));
        assert!(store.path("sha256:../../x").starts_with(dir.path()));
        assert!(matches!(
            store.writer(Some("sha256:../x")),
            Err(OciError::InvalidDigest(_))
        ));
    }

    #[tokio::test]
    async fn async_writer_verifies_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let d = digest_of(b"0123456789");
        let mut w = store.async_writer(&d, Some(10)).await.unwrap();
        w.write(b"01234").await.unwrap();
        w.write(b"56789").await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 10);
        assert!(store.has(&d));

        let d = digest_of(b"short");
        let mut w = store.async_writer(&d, Some(3)).await.unwrap();
        assert!(matches!(
            w.write(b"short").await,
            Err(OciError::TooLarge { .. })
        ));
        drop(w);
        let mut w = store.async_writer(&d, None).await.unwrap();
        w.write(b"shorT").await.unwrap();
        assert!(matches!(
            w.finish().await,
            Err(OciError::Verification { .. })
        ));
        assert!(!store.has(&d));
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    /// ENOSPC surfaces with the OS's words and leaves no temporary file.
    /// Needs root (it mounts a 64 KiB tmpfs); skipped otherwise.
    #[test]
    fn full_disk_is_reported_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs (not root?)");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());

        let store = BlobStore::open(dir.path()).unwrap();
        let big = vec![7u8; 1024 * 1024];
        let e = store.write_bytes(Some(&digest_of(&big)), &big).unwrap_err();
        let mut chain = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            chain.push_str(&format!(": {s}"));
            source = s.source();
        }
        let left = std::fs::read_dir(dir.path().join("tmp")).unwrap().count();
        assert!(chain.contains("No space left on device"), "{chain}");
        assert_eq!(left, 0);
    }
}
