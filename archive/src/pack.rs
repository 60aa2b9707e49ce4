//! Creating a tar stream of one path inside a root, with `docker cp` semantics for copying out
//! of a container. Owns the chroot-like resolution of the path (symlinks followed but clamped
//! to the root) and the walk of the tree (symlinks inside archived as links, never followed).
//! It only reads the tree: nothing here may create, change or remove a file.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat};
use tar::{EntryType, Header};

use crate::beneath::{READ_DIR, is_type, list, lstat_at};
use crate::error::ArchiveError;

const BUFFER: usize = 1 << 20;
/// As the kernel's limit on symlinks followed in one lookup.
const MAX_SYMLINKS: usize = 40;
/// Longest name that fits a header's own name and link fields.
const HEADER_NAME: usize = 100;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PackReport {
    /// Entries written (directories, files, links, special files).
    pub entries: u64,
    /// Bytes of regular file contents written.
    pub bytes: u64,
}

/// Writes a tar stream of `path` resolved inside `root` to `out`, `docker cp` style.
///
/// `path` is resolved as if `root` were `/`: symlinks on the way are followed but cannot leave
/// the root (`..` stops at it, absolute targets start from it). A final symlink is archived as
/// the link itself unless `path` ends with "/" or "/.". The archive's top entry is named after
/// the last component of `path` as written (for "dir/." it is ".", so the entries are the
/// directory's contents; for the root, or a path ending in "..", it is the name the path
/// resolves to, "." for the root). Directories are archived with everything under them,
/// without following the symlinks inside. Sockets are left out; extended attributes are not
/// recorded.
pub fn pack<W: Write>(root: &Path, path: &str, out: W) -> Result<PackReport, ArchiveError> {
    let resolved = resolve(root, path).map_err(|error| ArchiveError::Resolve {
        path: path.to_owned(),
        error,
    })?;
    let top = top_name(path, &resolved);
    let mut packer = Packer {
        builder: tar::Builder::new(BufWriter::with_capacity(BUFFER, out)),
        links: HashMap::new(),
        report: PackReport::default(),
    };
    match resolved {
        Resolved::Named { parent, name } => packer.add(parent.as_fd(), &name, top)?,
        Resolved::Dir { fd, .. } => {
            let stat = fstat(&fd).map_err(|e| read_error(&top, e.into()))?;
            let fd = openat(&fd, ".", READ_DIR, Mode::empty())
                .map_err(|e| read_error(&top, e.into()))?;
            packer.add_dir(fd, &stat, top)?;
        }
    }
    let end = |error| ArchiveError::Write {
        path: "the end".to_owned(),
        error,
    };
    let buffered = packer.builder.into_inner().map_err(end)?;
    buffered.into_inner().map_err(|e| end(e.into_error()))?;
    Ok(packer.report)
}

/// What `path` names inside the root.
enum Resolved {
    /// A name in a directory; a symlink if it was not to be followed.
    Named { parent: OwnedFd, name: Vec<u8> },
    /// A directory reached by its own descriptor (the root, or a path ending in "." or "..");
    /// `name` is its last name, `None` for the root.
    Dir { fd: OwnedFd, name: Option<Vec<u8>> },
}

fn resolve(root: &Path, path: &str) -> io::Result<Resolved> {
    let root = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let follow_last = path.ends_with('/') || path.ends_with("/.");
    let mut todo: VecDeque<Vec<u8>> = split(path.as_bytes()).collect();
    let mut stack: Vec<(Vec<u8>, OwnedFd)> = Vec::new();
    let mut symlinks = 0;
    while let Some(component) = todo.pop_front() {
        match component.as_slice() {
            b"." => continue,
            b".." => {
                stack.pop();
                continue;
            }
            _ => {}
        }
        let parent = stack.last().map_or(root.as_fd(), |(_, fd)| fd.as_fd());
        let last = todo.is_empty();
        let stat = lstat_at(parent, &component)?.ok_or(Errno::ENOENT)?;
        if is_type(&stat, SFlag::S_IFLNK) && (!last || follow_last) {
            symlinks += 1;
            if symlinks > MAX_SYMLINKS {
                return Err(Errno::ELOOP.into());
            }
            let target = readlinkat(parent, component.as_slice())?.into_vec();
            if target.first() == Some(&b'/') {
                stack.clear();
            }
            for part in split(&target).rev() {
                todo.push_front(part);
            }
            continue;
        }
        if last {
            return Ok(Resolved::Named {
                parent: parent.try_clone_to_owned()?,
                name: component,
            });
        }
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(parent, component.as_slice(), flags, Mode::empty())?;
        stack.push((component, fd));
    }
    Ok(match stack.pop() {
        Some((name, fd)) => Resolved::Dir {
            fd,
            name: Some(name),
        },
        None => Resolved::Dir {
            fd: root,
            name: None,
        },
    })
}

/// The components of a path, `.` and `..` kept, empty ones dropped.
fn split(path: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/')
        .filter(|part| !part.is_empty())
        .map(<[u8]>::to_vec)
}

fn top_name(path: &str, resolved: &Resolved) -> Vec<u8> {
    let last = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    match (last, resolved) {
        (".", _) => b".".to_vec(),
        (
            "" | "..",
            Resolved::Dir {
                name: Some(name), ..
            },
        ) => name.clone(),
        ("" | "..", _) => b".".to_vec(),
        (name, _) => name.as_bytes().to_vec(),
    }
}

fn read_error(path: &[u8], error: io::Error) -> ArchiveError {
    ArchiveError::Read {
        path: String::from_utf8_lossy(path).into_owned(),
        error,
    }
}

struct Packer<W: Write> {
    builder: tar::Builder<BufWriter<W>>,
    /// Files with several links: the archive path of the first one seen.
    links: HashMap<(u64, u64), Vec<u8>>,
    report: PackReport,
}

impl<W: Write> Packer<W> {
    /// Archives `name` of `parent` (not following it) as `path`.
    fn add(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        path: Vec<u8>,
    ) -> Result<(), ArchiveError> {
        // Gone since it was listed: left out, as tar does.
        let Some(stat) = lstat_at(parent, name).map_err(|e| read_error(&path, e))? else {
            return Ok(());
        };
        let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
        match kind {
            SFlag::S_IFDIR => {
                let fd = openat(parent, name, READ_DIR, Mode::empty())
                    .map_err(|e| read_error(&path, e.into()))?;
                self.add_dir(fd, &stat, path)
            }
            SFlag::S_IFREG => self.add_file(parent, name, &stat, path),
            SFlag::S_IFLNK => {
                let target = readlinkat(parent, name)
                    .map_err(|e| read_error(&path, e.into()))?
                    .into_vec();
                let header = header(&stat, EntryType::Symlink);
                self.append_link(header, &path, &target)
            }
            SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
                let entry_type = match kind {
                    SFlag::S_IFCHR => EntryType::Char,
                    SFlag::S_IFBLK => EntryType::Block,
                    _ => EntryType::Fifo,
                };
                let mut header = header(&stat, entry_type);
                if entry_type != EntryType::Fifo {
                    let major = nix::sys::stat::major(stat.st_rdev);
                    let minor = nix::sys::stat::minor(stat.st_rdev);
                    let device = |n: u64| u32::try_from(n).map_err(io::Error::other);
                    let set = device(major)
                        .and_then(|major| header.set_device_major(major))
                        .and(device(minor).and_then(|minor| header.set_device_minor(minor)));
                    set.map_err(|e| read_error(&path, e))?;
                }
                self.append(header, &path, &mut Tracked::empty())
            }
            // Sockets (and anything else) have no tar form.
            _ => Ok(()),
        }
    }

    fn add_dir(&mut self, fd: OwnedFd, stat: &FileStat, path: Vec<u8>) -> Result<(), ArchiveError> {
        self.append(
            header(stat, EntryType::Directory),
            &path,
            &mut Tracked::empty(),
        )?;
        let mut listing = Dir::from_fd(fd).map_err(|e| read_error(&path, e.into()))?;
        let mut children = list(&mut listing).map_err(|e| read_error(&path, e))?;
        children.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, _) in children {
            let mut child = Vec::with_capacity(path.len() + 1 + name.len());
            child.extend_from_slice(&path);
            child.push(b'/');
            child.extend_from_slice(&name);
            self.add(listing.as_fd(), &name, child)?;
        }
        Ok(())
    }

    fn add_file(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        stat: &FileStat,
        path: Vec<u8>,
    ) -> Result<(), ArchiveError> {
        if stat.st_nlink > 1 {
            let key = (stat.st_dev, stat.st_ino);
            if let Some(first) = self.links.get(&key).cloned() {
                return self.append_link(header(stat, EntryType::Link), &path, &first);
            }
            self.links.insert(key, path.clone());
        }
        // O_NONBLOCK: should the name have become a FIFO, opening it must not hang.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = match openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => return Err(read_error(&path, errno.into())),
        };
        let stat = fstat(&fd).map_err(|e| read_error(&path, e.into()))?;
        if !is_type(&stat, SFlag::S_IFREG) {
            // Replaced while we looked: archive what is there now.
            return Ok(());
        }
        let mut header = header(&stat, EntryType::Regular);
        let size = u64::try_from(stat.st_size).unwrap_or(0);
        header.set_size(size);
        // A file that shrinks while read is padded with zeros, one that grows is cut, so that
        // the archive stays well formed.
        let data = File::from(fd).take(size).chain(io::repeat(0)).take(size);
        self.append(
            header,
            &path,
            &mut Tracked {
                inner: data,
                error: None,
            },
        )?;
        self.report.bytes += size;
        Ok(())
    }

    fn append(
        &mut self,
        mut header: Header,
        path: &[u8],
        data: &mut Tracked<impl Read>,
    ) -> Result<(), ArchiveError> {
        let name = Path::new(OsStr::from_bytes(path));
        match self.builder.append_data(&mut header, name, &mut *data) {
            Ok(()) => {
                self.report.entries += 1;
                Ok(())
            }
            Err(error) => Err(match data.error.take() {
                Some(read) => read_error(path, read),
                None => ArchiveError::Write {
                    path: String::from_utf8_lossy(path).into_owned(),
                    error,
                },
            }),
        }
    }

    /// A symlink or hardlink entry, its target written verbatim.
    fn append_link(
        &mut self,
        mut header: Header,
        path: &[u8],
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        if target.len() <= HEADER_NAME {
            header.as_old_mut().linkname[..target.len()].copy_from_slice(target);
            return self.append(header, path, &mut Tracked::empty());
        }
        // Too long for the header: the builder writes a GNU long link entry.
        let name = Path::new(OsStr::from_bytes(path));
        let link = Path::new(OsStr::from_bytes(target));
        self.builder
            .append_link(&mut header, name, link)
            .map_err(|error| ArchiveError::Write {
                path: String::from_utf8_lossy(path).into_owned(),
                error,
            })?;
        self.report.entries += 1;
        Ok(())
    }
}

fn header(stat: &FileStat, entry_type: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(entry_type);
    header.set_mode(stat.st_mode & 0o7777);
    header.set_uid(u64::from(stat.st_uid));
    header.set_gid(u64::from(stat.st_gid));
    header.set_mtime(u64::try_from(stat.st_mtime).unwrap_or(0));
    header.set_size(0);
    header
}

/// Keeps a read error of the data apart from write errors of the archive.
struct Tracked<R> {
    inner: R,
    error: Option<io::Error>,
}

impl Tracked<io::Empty> {
    fn empty() -> Self {
        Tracked {
            inner: io::empty(),
            error: None,
        }
    }
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|error| {
            let kind = error.kind();
            self.error = Some(error);
            io::Error::new(kind, "Cannot read the file")
        })
    }
}

#[cfg(test)]
mod tests;
