//! Creation of one node (file, directory, symlink, hardlink, device, FIFO) by name in an
//! already validated parent directory, and setting its metadata. Owns the rule that an
//! existing name is replaced (unlinked, or removed as a tree), never written through, and that
//! nothing here follows a symlink. Which parent is safe, and the order of entries, are
//! `unpack`'s business.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, futimens, mkdirat, mknodat,
    utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat, linkat, mkfifoat, symlinkat};

use crate::beneath::{is_type, lstat_at, remove_tree};

/// What a failed step was doing; `unpack` adds the stream and the entry.
#[derive(Debug)]
pub(crate) enum Fail {
    Escape(crate::error::EscapeReason),
    Io(&'static str, io::Error),
    /// The archive's data for the entry could not be read.
    Read(io::Error),
    Invalid(&'static str),
    Unsupported(String),
}

fn io_fail(action: &'static str) -> impl FnOnce(Errno) -> Fail {
    move |errno| Fail::Io(action, errno.into())
}

/// The metadata of an entry as it will be applied.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    /// `Some` when ownership is restored.
    pub owner: Option<(u32, u32)>,
    pub mtime: TimeSpec,
}

impl Meta {
    fn mode(&self) -> Mode {
        Mode::from_bits_truncate(self.mode & 0o7777)
    }

    /// chown first: it clears setuid and setgid, which chmod then sets.
    pub(crate) fn apply_to_fd(&self, fd: &OwnedFd) -> Result<(), Fail> {
        if let Some((uid, gid)) = self.owner {
            fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(io_fail("set owner"))?;
        }
        fchmod(fd, self.mode()).map_err(io_fail("set mode"))?;
        futimens(fd, &self.mtime, &self.mtime).map_err(io_fail("set times"))
    }

    /// For names that cannot be opened safely (symlinks, devices, FIFOs).
    fn apply_by_name(&self, parent: BorrowedFd<'_>, name: &[u8], chmod: bool) -> Result<(), Fail> {
        if let Some((uid, gid)) = self.owner {
            fchownat(
                parent,
                name,
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_fail("set owner"))?;
        }
        if chmod {
            chmod_nofollow(parent, name, self.mode()).map_err(|e| Fail::Io("set mode", e))?;
        }
        utimensat(
            parent,
            name,
            &self.mtime,
            &self.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(io_fail("set times"))
    }
}

/// chmod of a name that must not be a symlink. glibc implements `AT_SYMLINK_NOFOLLOW` with
/// fchmodat2 or through /proc; without either it says EOPNOTSUPP, and then the name is checked
/// to be no symlink before a plain fchmodat (the node was created a moment ago by us).
fn chmod_nofollow(parent: BorrowedFd<'_>, name: &[u8], mode: Mode) -> io::Result<()> {
    match fchmodat(parent, name, mode, FchmodatFlags::NoFollowSymlink) {
        Ok(()) => Ok(()),
        Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => match lstat_at(parent, name)? {
            Some(stat) if !is_type(&stat, SFlag::S_IFLNK) => {
                Ok(fchmodat(parent, name, mode, FchmodatFlags::FollowSymlink)?)
            }
            _ => Err(Errno::ELOOP.into()),
        },
        Err(error) => Err(error.into()),
    }
}

/// Runs `create`; if the name exists, removes it (a whole tree for a directory) and runs it
/// again. Returns the result and whether a directory was removed.
fn replacing<T>(
    parent: BorrowedFd<'_>,
    name: &[u8],
    action: &'static str,
    mut create: impl FnMut() -> nix::Result<T>,
) -> Result<(T, bool), Fail> {
    match create() {
        Ok(value) => Ok((value, false)),
        Err(Errno::EEXIST) => {
            let removed =
                remove_tree(parent, name).map_err(|e| Fail::Io("remove the existing path", e))?;
            let value = create().map_err(io_fail(action))?;
            Ok((value, removed))
        }
        Err(errno) => Err(Fail::Io(action, errno.into())),
    }
}

/// Writes a regular file from `data`, which must yield exactly `size` bytes. Returns whether
/// a directory was removed to make room.
pub(crate) fn file(
    parent: BorrowedFd<'_>,
    name: &[u8],
    data: &mut dyn Read,
    size: u64,
    meta: &Meta,
    buffer: &mut [u8],
) -> Result<bool, Fail> {
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let (fd, removed) = replacing(parent, name, "create file", || {
        openat(parent, name, flags, Mode::from_bits_truncate(0o600))
    })?;
    let mut file = File::from(fd);
    let mut written = 0u64;
    loop {
        let n = match data.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Fail::Read(e)),
        };
        file.write_all(&buffer[..n])
            .map_err(|e| Fail::Io("write file", e))?;
        written += n as u64;
    }
    if written != size {
        return Err(Fail::Read(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("Entry data ends after {written} of {size} bytes"),
        )));
    }
    meta.apply_to_fd(&OwnedFd::from(file))?;
    Ok(removed)
}

/// Creates a directory, or keeps an existing one (its metadata is set later, after its
/// contents). A non-directory in the way is removed.
pub(crate) fn directory(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Fail> {
    let mode = Mode::from_bits_truncate(0o755);
    match mkdirat(parent, name, mode) {
        Ok(()) => Ok(()),
        Err(Errno::EEXIST) => match lstat_at(parent, name) {
            Ok(Some(stat)) if is_type(&stat, SFlag::S_IFDIR) => Ok(()),
            Ok(_) => {
                remove_tree(parent, name).map_err(|e| Fail::Io("remove the existing path", e))?;
                mkdirat(parent, name, mode).map_err(io_fail("create directory"))
            }
            Err(e) => Err(Fail::Io("create directory", e)),
        },
        Err(errno) => Err(Fail::Io("create directory", errno.into())),
    }
}

/// Creates a symlink with the target verbatim (it may point anywhere: it is never followed).
pub(crate) fn symlink(
    parent: BorrowedFd<'_>,
    name: &[u8],
    target: &[u8],
    meta: &Meta,
) -> Result<bool, Fail> {
    let ((), removed) = replacing(parent, name, "create symlink", || {
        symlinkat(target, parent, name)
    })?;
    meta.apply_by_name(parent, name, false)?;
    Ok(removed)
}

/// Links `name` to the existing non-directory `target_name` of `target_parent`, without
/// following it if it is a symlink.
pub(crate) fn hardlink(
    target_parent: BorrowedFd<'_>,
    target_name: &[u8],
    parent: BorrowedFd<'_>,
    name: &[u8],
) -> Result<bool, Fail> {
    let target = match lstat_at(target_parent, target_name) {
        Ok(Some(stat)) if is_type(&stat, SFlag::S_IFDIR) => {
            return Err(Fail::Invalid("hardlink target is a directory"));
        }
        Ok(Some(stat)) => stat,
        Ok(None) => return Err(Fail::Invalid("hardlink target does not exist")),
        Err(e) => return Err(Fail::Io("inspect hardlink target", e)),
    };
    let link = || linkat(target_parent, target_name, parent, name, AtFlags::empty());
    match link() {
        Ok(()) => Ok(false),
        Err(Errno::EEXIST) => {
            if let Ok(Some(existing)) = lstat_at(parent, name)
                && existing.st_dev == target.st_dev
                && existing.st_ino == target.st_ino
            {
                return Ok(false);
            }
            let removed =
                remove_tree(parent, name).map_err(|e| Fail::Io("remove the existing path", e))?;
            link().map_err(io_fail("create hardlink"))?;
            Ok(removed)
        }
        Err(errno) => Err(Fail::Io("create hardlink", errno.into())),
    }
}

/// A character or block device or a FIFO.
pub(crate) fn special(
    parent: BorrowedFd<'_>,
    name: &[u8],
    kind: SFlag,
    device: (u32, u32),
    meta: &Meta,
) -> Result<bool, Fail> {
    let mode = meta.mode();
    let ((), removed) = if kind == SFlag::S_IFIFO {
        replacing(parent, name, "create FIFO", || mkfifoat(parent, name, mode))?
    } else {
        let dev = nix::sys::stat::makedev(u64::from(device.0), u64::from(device.1));
        replacing(parent, name, "create device node", || {
            mknodat(parent, name, kind, mode, dev)
        })?
    };
    // The umask may have cleared bits at creation.
    meta.apply_by_name(parent, name, true)?;
    Ok(removed)
}
