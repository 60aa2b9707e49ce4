//! Directory handles beneath an unpack target that never follow a symlink. Owns the cache of
//! open directory descriptors for the current unpack (the chain of directories of the last
//! entry, so that consecutive entries of one directory cost no walk) and the removal of
//! trees. Everything that creates, replaces or removes a name in the target does it with
//! `*at` calls relative to a descriptor from here; it must never resolve a path of the target
//! from the root by name, since a symlink anywhere on the way could lead outside.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{FileStat, Mode, SFlag, fchmod, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Flags for directories kept only to resolve names under them.
pub(crate) const PATH_DIR: OFlag = OFlag::O_PATH
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);
/// Flags for directories whose entries are listed or whose metadata is changed.
pub(crate) const READ_DIR: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Why a directory could not be reached; `depth` is the index of the component at fault.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// The component is a symlink.
    Symlink {
        depth: usize,
    },
    /// The component does not exist (and was not to be created).
    Missing,
    /// The component exists but is not a directory.
    NotDir {
        depth: usize,
    },
    Io(io::Error),
}

pub(crate) struct Beneath {
    root: OwnedFd,
    /// The directories of the last resolved path, each opened relative to the one before.
    chain: Vec<(Vec<u8>, OwnedFd)>,
}

impl Beneath {
    /// Opens the target itself; symlinks in `target` are the caller's choice and are followed.
    pub(crate) fn open(target: &Path) -> io::Result<Self> {
        let root = nix::fcntl::open(
            target,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root,
            chain: Vec::new(),
        })
    }

    /// Resolves names beneath an already opened directory.
    pub(crate) fn from_fd(root: OwnedFd) -> Self {
        Self {
            root,
            chain: Vec::new(),
        }
    }

    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Returns the directory at `components` below the root, opening each component with
    /// `O_NOFOLLOW`. Missing directories are created (mode 0755, owned by the caller) when
    /// `create` is set.
    pub(crate) fn dir(
        &mut self,
        components: &[&[u8]],
        create: bool,
    ) -> Result<BorrowedFd<'_>, WalkError> {
        let common = self
            .chain
            .iter()
            .zip(components)
            .take_while(|((cached, _), wanted)| cached.as_slice() == **wanted)
            .count();
        self.chain.truncate(common);
        for (depth, name) in components.iter().enumerate().skip(common) {
            let parent = match self.chain.last() {
                Some((_, fd)) => fd.as_fd(),
                None => self.root.as_fd(),
            };
            let fd = open_child_dir(parent, name, create, depth)?;
            self.chain.push((name.to_vec(), fd));
        }
        Ok(match self.chain.last() {
            Some((_, fd)) => fd.as_fd(),
            None => self.root.as_fd(),
        })
    }

    /// Drops the cached directories, after a directory was removed or replaced.
    pub(crate) fn forget(&mut self) {
        self.chain.clear();
    }
}

fn open_child_dir(
    parent: BorrowedFd<'_>,
    name: &[u8],
    create: bool,
    depth: usize,
) -> Result<OwnedFd, WalkError> {
    match openat(parent, name, PATH_DIR, Mode::empty()) {
        Ok(fd) => Ok(fd),
        // With O_NOFOLLOW a symlink gives ELOOP, or ENOTDIR together with O_PATH|O_DIRECTORY.
        Err(Errno::ELOOP | Errno::ENOTDIR) => Err(classify(parent, name, depth)),
        Err(Errno::ENOENT) if create => {
            match mkdirat(parent, name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(error) => {
                    return Err(WalkError::Io(error.into()));
                }
            }
            // Open it readable once to give it 0755 whatever the umask.
            match openat(parent, name, READ_DIR, Mode::empty()) {
                Ok(fd) => {
                    fchmod(&fd, Mode::from_bits_truncate(0o755))
                        .map_err(|error| WalkError::Io(error.into()))?;
                    Ok(fd)
                }
                Err(Errno::ELOOP | Errno::ENOTDIR) => Err(classify(parent, name, depth)),
                Err(error) => Err(WalkError::Io(error.into())),
            }
        }
        Err(Errno::ENOENT) => Err(WalkError::Missing),
        Err(error) => Err(WalkError::Io(error.into())),
    }
}

fn classify(parent: BorrowedFd<'_>, name: &[u8], depth: usize) -> WalkError {
    match lstat_at(parent, name) {
        Ok(Some(stat)) if is_type(&stat, SFlag::S_IFLNK) => WalkError::Symlink { depth },
        Ok(Some(_)) => WalkError::NotDir { depth },
        Ok(None) => WalkError::Missing,
        Err(error) => WalkError::Io(error),
    }
}

/// `fstatat` without following a final symlink; `None` when the name does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(Errno::ENOENT) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

pub(crate) fn is_type(stat: &FileStat, kind: SFlag) -> bool {
    stat.st_mode & SFlag::S_IFMT.bits() == kind.bits()
}

/// Removes `name` in `dir` if present: a file, a symlink (never its target) or a whole
/// directory tree, descending with `O_NOFOLLOW`. Returns whether a directory was removed.
pub(crate) fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(false),
        Err(Errno::ENOENT) => Ok(false),
        // unlink(2) of a directory: EISDIR on Linux, EPERM by POSIX.
        Err(errno @ (Errno::EISDIR | Errno::EPERM)) => {
            match lstat_at(dir, name)? {
                Some(stat) if is_type(&stat, SFlag::S_IFDIR) => {}
                Some(_) => return Err(errno.into()),
                None => return Ok(false),
            }
            empty_dir(dir, name)?;
            match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(true),
                Err(error) => Err(error.into()),
            }
        }
        Err(error) => Err(error.into()),
    }
}

/// Removes everything inside the directory `name` of `dir`.
fn empty_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let fd = openat(dir, name, READ_DIR, Mode::empty())?;
    let mut listing = Dir::from_fd(fd)?;
    let children = list(&mut listing)?;
    for (child, kind) in children {
        if kind == Some(Type::Directory) {
            empty_dir(listing.as_fd(), &child)?;
            match unlinkat(listing.as_fd(), child.as_slice(), UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(error) => return Err(error.into()),
            }
        } else {
            remove_tree(listing.as_fd(), &child)?;
        }
    }
    Ok(())
}

/// The names in a directory (without `.` and `..`) with their type when the file system
/// reports it. Collected first: the directory is changed while they are handled.
pub(crate) fn list(listing: &mut Dir) -> io::Result<Vec<(Vec<u8>, Option<Type>)>> {
    let mut out = Vec::new();
    for item in listing.iter() {
        let item = item?;
        let name = item.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), item.file_type()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn walk_refuses_symlinks_and_creates_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        symlink("../outside", root.join("a/evil")).unwrap();
        fs::write(root.join("a/file"), "x").unwrap();

        let mut tree = Beneath::open(&root).unwrap();
        assert!(tree.dir(&[b"a", b"b"], false).is_ok());
        assert!(matches!(
            tree.dir(&[b"a", b"evil", b"x"], true),
            Err(WalkError::Symlink { depth: 1 })
        ));
        assert!(matches!(
            tree.dir(&[b"a", b"file"], true),
            Err(WalkError::NotDir { depth: 1 })
        ));
        assert!(matches!(
            tree.dir(&[b"a", b"new"], false),
            Err(WalkError::Missing)
        ));
        tree.dir(&[b"a", b"new", b"deeper"], true).unwrap();
        assert!(root.join("a/new/deeper").is_dir());
        assert!(!tmp.path().join("outside/x").exists());
    }

    #[test]
    fn remove_tree_does_not_follow_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("d/e/f")).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        fs::write(root.join("d/e/f/file"), "x").unwrap();
        symlink(&outside, root.join("d/e/link")).unwrap();

        let tree = Beneath::open(&root).unwrap();
        assert!(remove_tree(tree.root(), b"d").unwrap());
        assert!(!root.join("d").exists());
        assert!(!remove_tree(tree.root(), b"d").unwrap());
        assert_eq!(fs::read(outside.join("secret")).unwrap(), b"s");
    }
}
