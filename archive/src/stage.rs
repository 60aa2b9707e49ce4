//! All-or-nothing unpacking, for `docker cp` in both directions. The archive is applied to a
//! staging directory made inside the target (so on the same file system as what it replaces),
//! checked against what the target already holds, and only then moved into place name by
//! name. An archive refused while it is read (an escaping entry, a malformed stream, a path
//! that would go through a symlink of the target) removes the stage and leaves the target as
//! it was, its listing and times included.
//!
//! Owns the stage, the check against the target and the move; applying entries is `unpack`'s
//! job. Nothing here follows a symlink: the target itself is opened with `O_NOFOLLOW` (a
//! target that is a symlink is refused), and every name under it is reached with `*at` calls
//! from directory descriptors, as in `beneath`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, open, openat, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, futimens, major, minor, mkdirat};
use nix::sys::time::TimeSpec;

use crate::beneath::{Beneath, PATH_DIR, READ_DIR, is_type, list, lstat_at, remove_tree};
use crate::create::{self, Fail, Meta};
use crate::entry_path::lossy;
use crate::error::{ArchiveError, EscapeReason};
use crate::unpack::{self, Staged, UnpackOptions, UnpackReport, entry_error};

/// Stage names start so; the rest is unique to the process and the call.
pub const STAGE_PREFIX: &str = ".archive-stage-";

/// Read size when a staged file has to be copied to another file system.
const BUFFER: usize = 1 << 20;

/// Applies the tar stream `archive` to the existing directory `target`, all or nothing.
///
/// The entries follow the rules of [`crate::unpack`] (no absolute paths, no `..`, nothing
/// through a symlink, existing names replaced and never written through), and in addition a
/// path that goes through a symlink *already in the target* is refused before anything is
/// written (as would be an archive directory meeting a non-directory there, unless the archive
/// names that directory itself, which then replaces it). `target` itself must not be a
/// symlink (`ArchiveError::TargetSymlink`); symlinks in its parents are the caller's choice.
/// Whiteouts are not supported here.
///
/// What can still fail once the archive was accepted are system calls while moving into
/// place: then what was moved stays. Entries bound for another file system than the stage's
/// (a mount below the target) are copied there rather than renamed, so a full file system
/// there can leave part of them (hardlinks among those become copies). A stage left behind by
/// a process that died half way is a directory named [`STAGE_PREFIX`]`…` in the target.
pub fn unpack_staged<R: Read>(
    archive: R,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, ArchiveError> {
    let target_error = |error: io::Error| ArchiveError::Target {
        stream: opts.source.clone(),
        target: target.display().to_string(),
        error,
    };
    if opts.whiteouts {
        return Err(target_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "whiteouts cannot be applied through a stage",
        )));
    }
    let root = open_target(target, opts)?;
    let listing =
        openat(&root, ".", READ_DIR, Mode::empty()).map_err(|e| target_error(e.into()))?;
    let times = fstat(&listing).ok();
    let stage = Stage::make(root.as_fd()).map_err(target_error)?;

    let staged = match stage_and_check(archive, &root, &stage, opts) {
        Ok(staged) => staged,
        Err(error) => {
            // Refused: the target gets back its listing and its times.
            let _ = stage.remove(root.as_fd());
            if let Some(st) = times {
                let _ = futimens(
                    &listing,
                    &TimeSpec::new(st.st_atime, st.st_atime_nsec),
                    &TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
                );
            }
            return Err(error);
        }
    };
    let mut mover = Mover {
        opts,
        buffer: Vec::new(),
    };
    let moved = mover.dir(stage.fd.as_fd(), root.as_fd(), &[]);
    let removed = stage.remove(root.as_fd());
    moved?;
    removed.map_err(|error| ArchiveError::Io {
        stream: opts.source.clone(),
        entry: lossy(&stage.name),
        action: "remove the staging directory",
        error,
    })?;
    let mut tree = Beneath::from_fd(root);
    unpack::apply_dir_meta(&mut tree, staged.dirs, &opts.source)?;
    Ok(staged.report)
}

/// Opens `target` without following it if it is a symlink, with or without
/// trailing slashes (which would make the kernel follow it).
fn open_target(target: &Path, opts: &UnpackOptions) -> Result<OwnedFd, ArchiveError> {
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let bytes = target.as_os_str().as_bytes();
    let mut end = bytes.len();
    while end > 1 && bytes[end - 1] == b'/' {
        end -= 1;
    }
    let target = Path::new(std::ffi::OsStr::from_bytes(&bytes[..end]));
    match open(target, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(errno) => {
            let symlink = matches!(errno, Errno::ELOOP | Errno::ENOTDIR)
                && std::fs::symlink_metadata(target).is_ok_and(|m| m.file_type().is_symlink());
            Err(if symlink {
                ArchiveError::TargetSymlink {
                    stream: opts.source.clone(),
                    target: target.display().to_string(),
                }
            } else {
                ArchiveError::Target {
                    stream: opts.source.clone(),
                    target: target.display().to_string(),
                    error: errno.into(),
                }
            })
        }
    }
}

/// The staging directory inside the target.
struct Stage {
    name: Vec<u8>,
    fd: OwnedFd,
}

impl Stage {
    fn make(root: BorrowedFd<'_>) -> io::Result<Stage> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        loop {
            let name = format!(
                "{STAGE_PREFIX}{}-{nanos:x}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            )
            .into_bytes();
            match mkdirat(root, name.as_slice(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => continue,
                Err(errno) => return Err(errno.into()),
            }
            let fd = openat(root, name.as_slice(), READ_DIR, Mode::empty())?;
            return Ok(Stage { name, fd });
        }
    }

    fn remove(&self, root: BorrowedFd<'_>) -> io::Result<()> {
        remove_tree(root, &self.name).map(drop)
    }
}

/// Unpacks into the stage, then checks the stage against the target.
fn stage_and_check<R: Read>(
    archive: R,
    root: &OwnedFd,
    stage: &Stage,
    opts: &UnpackOptions,
) -> Result<Staged, ArchiveError> {
    let clone = |fd: &OwnedFd| {
        fd.try_clone().map_err(|error| ArchiveError::Io {
            stream: opts.source.clone(),
            entry: lossy(&stage.name),
            action: "open the staging directory",
            error,
        })
    };
    let staged = unpack::unpack_to_stage(
        archive,
        Beneath::from_fd(clone(&stage.fd)?),
        Beneath::from_fd(clone(root)?),
        opts,
    )?;
    let checker = Checker {
        staged: &staged,
        explicit: staged.dirs.iter().map(|d| d.path.as_slice()).collect(),
        stage_name: &stage.name,
        stream: &opts.source,
    };
    checker.dir(stage.fd.as_fd(), root.as_fd(), &[])?;
    Ok(staged)
}

/// `path/name`, or `name` at the top.
fn child(path: &[u8], name: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        return name.to_vec();
    }
    let mut out = Vec::with_capacity(path.len() + 1 + name.len());
    out.extend_from_slice(path);
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

/// Names in a directory, each with whether it is a directory.
type Entries = Vec<(Vec<u8>, bool)>;

/// The entries of a staged directory, and the directory open for `*at` calls on them.
fn staged_entries(dir: BorrowedFd<'_>) -> io::Result<(Dir, Entries)> {
    let mut listing = Dir::from_fd(openat(dir, ".", READ_DIR, Mode::empty())?)?;
    let mut out = Vec::new();
    for (name, kind) in list(&mut listing)? {
        let is_dir = match kind {
            Some(kind) => kind == Type::Directory,
            None => lstat_at(listing.as_fd(), &name)?.is_some_and(|st| is_dir(&st)),
        };
        out.push((name, is_dir));
    }
    Ok((listing, out))
}

fn is_dir(st: &FileStat) -> bool {
    is_type(st, SFlag::S_IFDIR)
}

/// Checks the staged tree against the target, changing nothing.
struct Checker<'a> {
    staged: &'a Staged,
    /// Directories the archive names itself (the others are only parents of entries).
    explicit: HashSet<&'a [u8]>,
    stage_name: &'a [u8],
    stream: &'a str,
}

impl Checker<'_> {
    fn io(&self, path: &[u8], error: io::Error) -> ArchiveError {
        ArchiveError::Io {
            stream: self.stream.to_owned(),
            entry: lossy(path),
            action: "check the target",
            error,
        }
    }

    /// The entry an error about the directory `path` names: the first one under it.
    fn entry(&self, path: &[u8]) -> String {
        self.staged
            .first_entry
            .get(path)
            .cloned()
            .unwrap_or_else(|| lossy(path))
    }

    fn dir(
        &self,
        stage: BorrowedFd<'_>,
        target: BorrowedFd<'_>,
        path: &[u8],
    ) -> Result<(), ArchiveError> {
        let (listing, entries) = staged_entries(stage).map_err(|e| self.io(path, e))?;
        for (name, staged_dir) in entries {
            let path = child(path, &name);
            if path == self.stage_name {
                return Err(ArchiveError::Invalid {
                    stream: self.stream.to_owned(),
                    entry: self.entry(&path),
                    problem: "entry has the name of the staging directory",
                });
            }
            if !staged_dir {
                // A non-directory replaces whatever is there.
                continue;
            }
            let Some(existing) = lstat_at(target, &name).map_err(|e| self.io(&path, e))? else {
                continue;
            };
            if is_dir(&existing) {
                let inner = openat(listing.as_fd(), name.as_slice(), READ_DIR, Mode::empty())
                    .map_err(|e| self.io(&path, e.into()))?;
                let real = match openat(target, name.as_slice(), PATH_DIR, Mode::empty()) {
                    Ok(fd) => fd,
                    // Swapped for a symlink since the lstat.
                    Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(self.through_symlink(&path)),
                    Err(errno) => return Err(self.io(&path, errno.into())),
                };
                self.dir(inner.as_fd(), real.as_fd(), &path)?;
            } else if self.explicit.contains(path.as_slice()) {
                // The archive's own directory replaces it.
            } else if is_type(&existing, SFlag::S_IFLNK) {
                return Err(self.through_symlink(&path));
            } else {
                return Err(ArchiveError::Io {
                    stream: self.stream.to_owned(),
                    entry: self.entry(&path),
                    action: "create parent directories",
                    error: io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{:?} is not a directory", lossy(&path)),
                    ),
                });
            }
        }
        Ok(())
    }

    fn through_symlink(&self, path: &[u8]) -> ArchiveError {
        ArchiveError::Escape {
            stream: self.stream.to_owned(),
            entry: self.entry(path),
            reason: EscapeReason::Symlink(lossy(path)),
        }
    }
}

/// Moves the checked stage into the target.
struct Mover<'o> {
    opts: &'o UnpackOptions,
    buffer: Vec<u8>,
}

impl Mover<'_> {
    fn io(&self, path: &[u8], action: &'static str, error: io::Error) -> ArchiveError {
        ArchiveError::Io {
            stream: self.opts.source.clone(),
            entry: lossy(path),
            action,
            error,
        }
    }

    fn dir(
        &mut self,
        stage: BorrowedFd<'_>,
        target: BorrowedFd<'_>,
        path: &[u8],
    ) -> Result<(), ArchiveError> {
        const MOVE: &str = "move into place";
        let (listing, entries) = staged_entries(stage).map_err(|e| self.io(path, MOVE, e))?;
        for (name, staged_dir) in entries {
            let path = child(path, &name);
            let existing = lstat_at(target, &name).map_err(|e| self.io(&path, MOVE, e))?;
            let existing_dir = existing.as_ref().is_some_and(is_dir);
            if staged_dir && existing_dir {
                // Merged: the archive's entries go into the directory that is there.
                let inner = openat(listing.as_fd(), name.as_slice(), READ_DIR, Mode::empty())
                    .map_err(|e| self.io(&path, MOVE, e.into()))?;
                let real = openat(target, name.as_slice(), PATH_DIR, Mode::empty())
                    .map_err(|e| self.io(&path, MOVE, e.into()))?;
                self.dir(inner.as_fd(), real.as_fd(), &path)?;
                continue;
            }
            // rename(2) replaces a non-directory by a non-directory only.
            if existing.is_some() && (staged_dir || existing_dir) {
                remove_tree(target, &name)
                    .map_err(|e| self.io(&path, "remove the existing path", e))?;
            }
            match renameat(listing.as_fd(), name.as_slice(), target, name.as_slice()) {
                Ok(()) => {}
                Err(Errno::EXDEV) => self
                    .copy(listing.as_fd(), &name, target)
                    .map_err(|fail| entry_error(&self.opts.source, fail, &lossy(&path)))?,
                Err(errno) => return Err(self.io(&path, MOVE, errno.into())),
            }
        }
        Ok(())
    }

    /// Copies the staged node `name` (a whole tree for a directory) to another file system.
    fn copy(&mut self, from: BorrowedFd<'_>, name: &[u8], to: BorrowedFd<'_>) -> Result<(), Fail> {
        let io = |action: &'static str| move |errno: Errno| Fail::Io(action, errno.into());
        let st = lstat_at(from, name)
            .map_err(|e| Fail::Io("inspect the staged path", e))?
            .ok_or(Fail::Invalid("the staged path is gone"))?;
        let meta = Meta {
            mode: st.st_mode & 0o7777,
            owner: self.opts.same_owner.then_some((st.st_uid, st.st_gid)),
            mtime: TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        };
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        if kind == SFlag::S_IFDIR {
            // Its metadata, if the archive gave any, is applied after the move.
            create::directory(to, name)?;
            let inner = openat(from, name, READ_DIR, Mode::empty())
                .map_err(io("open the staged directory"))?;
            let real = openat(to, name, PATH_DIR, Mode::empty()).map_err(io("open directory"))?;
            let (listing, entries) = staged_entries(inner.as_fd())
                .map_err(|e| Fail::Io("list the staged directory", e))?;
            for (child, _) in entries {
                self.copy(listing.as_fd(), &child, real.as_fd())?;
            }
        } else if kind == SFlag::S_IFREG {
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let mut file = File::from(
                openat(from, name, flags, Mode::empty()).map_err(io("open the staged file"))?,
            );
            if self.buffer.is_empty() {
                self.buffer = vec![0; BUFFER];
            }
            create::file(
                to,
                name,
                &mut file,
                st.st_size as u64,
                &meta,
                &mut self.buffer,
            )?;
        } else if kind == SFlag::S_IFLNK {
            let link = readlinkat(from, name).map_err(io("read the staged symlink"))?;
            create::symlink(to, name, link.as_bytes(), &meta)?;
        } else {
            let device = (major(st.st_rdev) as u32, minor(st.st_rdev) as u32);
            create::special(to, name, kind, device, &meta)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
