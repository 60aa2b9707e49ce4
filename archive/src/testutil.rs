//! Tar streams and directory snapshots for the tests. Headers are written by hand, so that the
//! malicious corpus can hold names the `tar` crate's Builder refuses (`..`, absolute paths).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use tar::{EntryType, Header};

pub(crate) const MTIME: u64 = 1_600_000_000;

/// An archive under construction.
#[derive(Default)]
pub(crate) struct Tar(Vec<u8>);

impl Tar {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Any entry: `path` and `link` are written as given, with GNU long name / long link
    /// entries when they do not fit the header. `edit` may change the header before its
    /// checksum is computed.
    pub(crate) fn raw(
        mut self,
        path: &[u8],
        kind: EntryType,
        link: &[u8],
        data: &[u8],
        edit: impl FnOnce(&mut Header),
    ) -> Self {
        if path.len() > 100 {
            self.long(b'L', path);
        }
        if link.len() > 100 {
            self.long(b'K', link);
        }
        let mut header = Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().expect("a GNU header");
            let n = path.len().min(100);
            gnu.name[..n].copy_from_slice(&path[..n]);
            let n = link.len().min(100);
            gnu.linkname[..n].copy_from_slice(&link[..n]);
        }
        header.set_entry_type(kind);
        header.set_mode(match kind {
            EntryType::Directory => 0o755,
            EntryType::Symlink => 0o777,
            _ => 0o644,
        });
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(data.len() as u64);
        edit(&mut header);
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        self.data(data);
        self
    }

    fn data(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, pad));
    }

    fn long(&mut self, kind: u8, name: &[u8]) {
        let mut header = Header::new_gnu();
        header.as_gnu_mut().expect("a GNU header").name[..13].copy_from_slice(b"././@LongLink");
        header.set_entry_type(EntryType::new(kind));
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(name.len() as u64 + 1);
        header.set_cksum();
        self.0.extend_from_slice(header.as_bytes());
        let mut data = name.to_vec();
        data.push(0);
        self.data(&data);
    }

    /// A PAX extended header for the next entry.
    pub(crate) fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            // "LEN KEY=VALUE\n" where LEN counts itself.
            let body = key.len() + value.len() + 3;
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {key}=").as_bytes());
            data.extend_from_slice(value);
            data.push(b'\n');
        }
        self.raw(b"PaxHeader", EntryType::XHeader, b"", &data, |_| {})
    }

    pub(crate) fn file(self, path: &str, data: &str) -> Self {
        self.raw(
            path.as_bytes(),
            EntryType::Regular,
            b"",
            data.as_bytes(),
            |_| {},
        )
    }

    pub(crate) fn dir(self, path: &str) -> Self {
        self.raw(path.as_bytes(), EntryType::Directory, b"", b"", |_| {})
    }

    pub(crate) fn symlink(self, path: &str, target: &str) -> Self {
        self.raw(
            path.as_bytes(),
            EntryType::Symlink,
            target.as_bytes(),
            b"",
            |_| {},
        )
    }

    pub(crate) fn hardlink(self, path: &str, target: &str) -> Self {
        self.raw(
            path.as_bytes(),
            EntryType::Link,
            target.as_bytes(),
            b"",
            |_| {},
        )
    }

    pub(crate) fn device(self, path: &str, kind: EntryType, major: u32, minor: u32) -> Self {
        self.raw(path.as_bytes(), kind, b"", b"", |h| {
            h.set_device_major(major).expect("major");
            h.set_device_minor(minor).expect("minor");
        })
    }

    /// The archive with its end-of-archive blocks.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut out = self.0.clone();
        out.extend(std::iter::repeat_n(0, 1024));
        out
    }
}

/// Everything under `dir` as sorted lines "path kind details", never following symlinks.
pub(crate) fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(read) = fs::read_dir(dir) else {
        return;
    };
    for item in read {
        let path = item.expect("dir entry").path();
        let meta = fs::symlink_metadata(&path).expect("lstat");
        let rel = path
            .strip_prefix(base)
            .expect("under base")
            .display()
            .to_string();
        let kind = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let line = if kind.is_symlink() {
            format!(
                "{rel} -> {}",
                fs::read_link(&path).expect("readlink").display()
            )
        } else if kind.is_dir() {
            walk(base, &path, out);
            format!("{rel}/ {mode:o}")
        } else if kind.is_file() {
            let data = fs::read(&path).expect("read");
            format!("{rel} {mode:o} {:?}", String::from_utf8_lossy(&data))
        } else if kind.is_fifo() {
            format!("{rel} fifo {mode:o}")
        } else {
            format!("{rel} special {mode:o} {:x}", meta.rdev())
        };
        out.push(line);
    }
}

/// The full error chain, as `{:#}` of anyhow would print it.
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        text.push_str(": ");
        text.push_str(&e.to_string());
        next = e.source();
    }
    text
}
