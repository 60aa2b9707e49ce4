//! The newc ("070701") cpio writer used for initrd.img.
//!
//! Owns the archive format only: entry headers, 4-byte padding, the
//! `TRAILER!!!` record and the reproducibility rules (entries sorted by path,
//! mtime 0, uid/gid 0, inode numbers assigned in order). It never reads the
//! host filesystem: callers hand it bytes, so no host metadata can leak in.

use std::collections::BTreeMap;
use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";
/// Length of a newc header: the magic plus 13 eight-digit hex fields.
const HEADER_LEN: usize = 6 + 13 * 8;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;
const PERM_MASK: u32 = 0o7777;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Invalid archive path {path:?}")]
    InvalidPath { path: String },
    #[error("Archive path {path} added twice")]
    Duplicate { path: String },
    #[error("Archive path {path} has no parent directory entry")]
    MissingParent { path: String },
    #[error("Archive entry {path} is too large for newc ({size} bytes)")]
    TooLarge { path: String, size: usize },
    #[error("Writing the cpio archive")]
    Write(#[source] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
}

#[derive(Debug, Clone)]
struct Entry {
    perm: u32,
    kind: Kind,
}

/// An in-memory newc archive. Entries are kept sorted by path, so the
/// output does not depend on the order in which they were added.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a directory; `path` may start with `/` (stored without it).
    pub fn add_dir(&mut self, path: &str, perm: u32) -> Result<(), Error> {
        self.insert(path, perm, Kind::Dir)
    }

    /// Adds a regular file with the given contents.
    pub fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) -> Result<(), Error> {
        self.insert(path, perm, Kind::File(data))
    }

    /// Adds a character device node.
    pub fn add_char_device(
        &mut self,
        path: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), Error> {
        self.insert(path, perm, Kind::CharDevice { major, minor })
    }

    /// Number of entries, not counting the trailer.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, path: &str, perm: u32, kind: Kind) -> Result<(), Error> {
        let path = normalize(path)?;
        if self.entries.contains_key(&path) {
            return Err(Error::Duplicate { path });
        }
        let perm = perm & PERM_MASK;
        self.entries.insert(path, Entry { perm, kind });
        Ok(())
    }

    /// Serialises the archive into a byte vector.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.write_to(&mut out)?;
        Ok(out)
    }

    /// Writes the archive, trailer included; returns the number of bytes.
    pub fn write_to<W: Write>(&self, mut w: W) -> Result<u64, Error> {
        self.check_parents()?;
        let mut written = 0u64;
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let (mode, nlink, data, rdev) = match &entry.kind {
                Kind::Dir => (S_IFDIR | entry.perm, 2, &[][..], (0, 0)),
                Kind::File(data) => (S_IFREG | entry.perm, 1, &data[..], (0, 0)),
                Kind::CharDevice { major, minor } => {
                    (S_IFCHR | entry.perm, 1, &[][..], (*major, *minor))
                }
            };
            let header = Header {
                ino,
                mode,
                nlink,
                rdev,
            };
            written += write_entry(&mut w, path, &header, data)?;
        }
        let trailer = Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            rdev: (0, 0),
        };
        written += write_entry(&mut w, TRAILER, &trailer, &[])?;
        w.flush().map_err(Error::Write)?;
        Ok(written)
    }

    /// The kernel's unpacker does not create parent directories, so every
    /// nested entry needs its parent directory earlier in the archive.
    fn check_parents(&self) -> Result<(), Error> {
        for path in self.entries.keys() {
            if let Some((parent, _)) = path.rsplit_once('/') {
                match self.entries.get(parent) {
                    Some(Entry {
                        kind: Kind::Dir, ..
                    }) => {}
                    _ => return Err(Error::MissingParent { path: path.clone() }),
                }
            }
        }
        Ok(())
    }
}

/// The per-entry header fields that vary; everything else is zero
/// (uid, gid, mtime, the archive's own device numbers, checksum).
struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
}

fn write_entry<W: Write>(w: &mut W, name: &str, h: &Header, data: &[u8]) -> Result<u64, Error> {
    let too_large = |size| Error::TooLarge {
        path: name.to_owned(),
        size,
    };
    let filesize = u32::try_from(data.len()).map_err(|_| too_large(data.len()))?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_large(name.len()))?;
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize, check
    let fields = [
        h.ino, h.mode, 0, 0, h.nlink, 0, filesize, 0, 0, h.rdev.0, h.rdev.1, namesize, 0,
    ];
    let mut buf = Vec::with_capacity(HEADER_LEN + name.len() + 4);
    buf.extend_from_slice(MAGIC.as_bytes());
    for field in fields {
        buf.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    buf.extend_from_slice(name.as_bytes());
    buf.push(0);
    buf.resize(buf.len() + pad4(buf.len()), 0);
    w.write_all(&buf).map_err(Error::Write)?;
    w.write_all(data).map_err(Error::Write)?;
    let data_pad = pad4(data.len());
    w.write_all(&[0u8; 3][..data_pad]).map_err(Error::Write)?;
    Ok((buf.len() + data.len() + data_pad) as u64)
}

fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Strips a leading `/` and rejects paths the kernel would not unpack as
/// meant: empty, `.`/`..` components, empty components, NUL bytes.
fn normalize(path: &str) -> Result<String, Error> {
    let invalid = || Error::InvalidPath {
        path: path.to_owned(),
    };
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    if trimmed.is_empty() || trimmed == TRAILER || trimmed.contains('\0') {
        return Err(invalid());
    }
    if trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid());
    }
    Ok(trimmed.to_owned())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One parsed newc record.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct Parsed {
        pub offset: usize,
        pub name: String,
        pub fields: [u32; 13],
        pub data: Vec<u8>,
    }

    impl Parsed {
        pub fn ino(&self) -> u32 {
            self.fields[0]
        }
        pub fn mode(&self) -> u32 {
            self.fields[1]
        }
        pub fn nlink(&self) -> u32 {
            self.fields[4]
        }
        pub fn mtime(&self) -> u32 {
            self.fields[5]
        }
        pub fn rdev(&self) -> (u32, u32) {
            (self.fields[9], self.fields[10])
        }
    }

    /// An independent newc reader: checks magic, alignment and the trailer,
    /// and that nothing follows the trailer. Panics on malformed input.
    pub(crate) fn parse(bytes: &[u8]) -> Vec<Parsed> {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(pos % 4, 0, "header at {pos} is not 4-byte aligned");
            assert!(bytes.len() >= pos + HEADER_LEN, "truncated header at {pos}");
            assert_eq!(&bytes[pos..pos + 6], b"070701", "bad magic at {pos}");
            let mut fields = [0u32; 13];
            for (i, f) in fields.iter_mut().enumerate() {
                let start = pos + 6 + i * 8;
                let hex = std::str::from_utf8(&bytes[start..start + 8]).unwrap();
                *f = u32::from_str_radix(hex, 16).unwrap();
            }
            let namesize = fields[11] as usize;
            let name_start = pos + HEADER_LEN;
            let name_bytes = &bytes[name_start..name_start + namesize];
            assert_eq!(name_bytes.last(), Some(&0), "name not NUL-terminated");
            let name = std::str::from_utf8(&name_bytes[..namesize - 1])
                .unwrap()
                .to_owned();
            let mut data_start = name_start + namesize;
            while !data_start.is_multiple_of(4) {
                assert_eq!(bytes[data_start], 0, "non-zero name padding");
                data_start += 1;
            }
            let size = fields[6] as usize;
            let data = bytes[data_start..data_start + size].to_vec();
            let mut next = data_start + size;
            while !next.is_multiple_of(4) {
                assert_eq!(bytes[next], 0, "non-zero data padding");
                next += 1;
            }
            let trailer = name == TRAILER;
            out.push(Parsed {
                offset: pos,
                name,
                fields,
                data,
            });
            pos = next;
            if trailer {
                assert_eq!(pos, bytes.len(), "bytes after the trailer");
                return out;
            }
        }
    }

    fn sample() -> Archive {
        let mut a = Archive::new();
        // Added out of order on purpose: output must be sorted by path.
        a.add_file("/init", 0o755, b"#!tether".to_vec()).unwrap();
        a.add_char_device("/dev/console", 0o600, 5, 1).unwrap();
        a.add_dir("/dev", 0o755).unwrap();
        a.add_dir("/lib", 0o755).unwrap();
        a.add_file("/lib/abc", 0o644, b"12345".to_vec()).unwrap();
        a
    }

    #[test]
    fn writes_sorted_aligned_newc_with_device_node() {
        let bytes = sample().to_bytes().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "lib", "lib/abc", "TRAILER!!!"]
        );

        let by_name = |n: &str| entries.iter().find(|e| e.name == n).unwrap().clone();
        let console = by_name("dev/console");
        assert_eq!(console.mode(), 0o020600);
        assert_eq!(console.rdev(), (5, 1));
        assert!(console.data.is_empty());

        let init = by_name("init");
        assert_eq!(init.mode(), 0o100755);
        assert_eq!(init.data, b"#!tether");
        assert_eq!(init.nlink(), 1);

        let dev = by_name("dev");
        assert_eq!(dev.mode(), 0o040755);
        assert_eq!(dev.nlink(), 2);

        // "lib/abc" has 5 data bytes: the next header must still be aligned,
        // which parse() asserts; check the data did not swallow padding.
        assert_eq!(by_name("lib/abc").data, b"12345");

        for e in &entries[..entries.len() - 1] {
            assert_eq!(e.mtime(), 0, "{}", e.name);
            assert_eq!(e.fields[2], 0, "uid of {}", e.name);
            assert_eq!(e.fields[3], 0, "gid of {}", e.name);
        }
        let inos: Vec<_> = entries.iter().map(Parsed::ino).collect();
        assert_eq!(inos, [1, 2, 3, 4, 5, 0]);
        let trailer = entries.last().unwrap();
        assert_eq!(trailer.mode(), 0);
        assert!(trailer.data.is_empty());
    }

    #[test]
    fn header_layout_matches_the_newc_spec() {
        let mut a = Archive::new();
        a.add_file("a", 0o644, vec![0xAB]).unwrap();
        let bytes = a.to_bytes().unwrap();
        let header = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        assert_eq!(
            header,
            concat!(
                "070701", "00000001", "000081A4", "00000000", "00000000", "00000001", "00000000",
                "00000001", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000",
            )
        );
        // 110 header + "a\0" = 112 (aligned), 1 data byte + 3 padding.
        assert_eq!(&bytes[HEADER_LEN..HEADER_LEN + 2], b"a\0");
        assert_eq!(&bytes[112..116], &[0xAB, 0, 0, 0]);
        assert_eq!(&bytes[116..122], b"070701");
    }

    #[test]
    fn same_entries_in_any_order_give_identical_bytes() {
        let mut b = Archive::new();
        b.add_dir("lib", 0o755).unwrap();
        b.add_file("lib/abc", 0o644, b"12345".to_vec()).unwrap();
        b.add_dir("dev", 0o755).unwrap();
        b.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        b.add_file("init", 0o755, b"#!tether".to_vec()).unwrap();
        assert_eq!(sample().to_bytes().unwrap(), b.to_bytes().unwrap());
    }

    #[test]
    fn rejects_bad_paths_duplicates_and_orphans() {
        let mut a = Archive::new();
        for bad in ["", "/", "a//b", "../x", "a/./b", "TRAILER!!!"] {
            assert!(
                matches!(a.add_dir(bad, 0o755), Err(Error::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
        a.add_dir("/dev", 0o755).unwrap();
        assert!(matches!(
            a.add_dir("dev", 0o755),
            Err(Error::Duplicate { .. })
        ));
        a.add_file("/lib/x", 0o644, vec![]).unwrap();
        let err = a.to_bytes().unwrap_err();
        assert!(
            matches!(&err, Error::MissingParent { path } if path == "lib/x"),
            "{err}"
        );
    }

    /// Cross-check with GNU cpio when it is installed: it must list exactly
    /// our entries.
    #[test]
    fn gnu_cpio_reads_the_archive() {
        use std::process::{Command, Stdio};
        let child = Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("skipping: GNU cpio is not installed");
            return;
        };
        let bytes = sample().to_bytes().unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let listed = String::from_utf8(out.stdout).unwrap();
        let listed: Vec<_> = listed.lines().collect();
        assert_eq!(listed, ["dev", "dev/console", "init", "lib", "lib/abc"]);
    }
}
