//! OCI whiteouts while applying an image layer: which names are whiteouts, the set of paths
//! this layer provides, and the pruning of an opaque directory. `.wh.NAME` deletes NAME from
//! the lower layers; `.wh..wh..opq` in D removes from D what the lower layers put there and
//! keeps what this layer adds, whichever comes first in the stream. Whiteout files are never
//! written. Finding the directory safely is `beneath`'s job; this module only removes below a
//! descriptor it is given, without following symlinks.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::openat;
use nix::sys::stat::Mode;

use crate::beneath::{READ_DIR, list, remove_tree};

pub(crate) const PREFIX: &[u8] = b".wh.";
pub(crate) const OPAQUE: &[u8] = b".wh..wh..opq";
/// `.wh..wh.plnk`, `.wh..wh.aufs` and the like: aufs bookkeeping, dropped.
const META_PREFIX: &[u8] = b".wh..wh.";

/// What a whiteout entry asks for, from the last component of its path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whiteout<'a> {
    /// Not a whiteout: an ordinary entry.
    None,
    Opaque,
    /// aufs metadata, dropped.
    Meta,
    /// Remove this name (which may be empty, `.` or `..`: the caller refuses those).
    Remove(&'a [u8]),
}

pub(crate) fn classify(name: &[u8]) -> Whiteout<'_> {
    if name == OPAQUE {
        Whiteout::Opaque
    } else if name.starts_with(META_PREFIX) {
        Whiteout::Meta
    } else if let Some(victim) = name.strip_prefix(PREFIX) {
        Whiteout::Remove(victim)
    } else {
        Whiteout::None
    }
}

/// The paths this layer provides: its entries and their parent directories, as
/// "a/b/c" without a leading "./".
#[derive(Debug, Default)]
pub(crate) struct LayerPaths(HashSet<Vec<u8>>);

impl LayerPaths {
    pub(crate) fn record(&mut self, path: &[u8]) {
        let mut path = path.to_vec();
        while !path.is_empty() && self.0.insert(path.clone()) {
            match path.iter().rposition(|&b| b == b'/') {
                Some(slash) => path.truncate(slash),
                None => break,
            }
        }
    }

    pub(crate) fn contains(&self, path: &[u8]) -> bool {
        self.0.contains(path)
    }
}

/// Removes everything under the opaque directory `dir` (at `prefix` in the archive's terms)
/// that this layer does not provide, descending into the directories it does provide.
pub(crate) fn prune(dir: OwnedFd, prefix: &[u8], layer: &LayerPaths) -> io::Result<()> {
    let mut listing = Dir::from_fd(dir)?;
    for (name, kind) in list(&mut listing)? {
        let mut path = Vec::with_capacity(prefix.len() + 1 + name.len());
        if !prefix.is_empty() {
            path.extend_from_slice(prefix);
            path.push(b'/');
        }
        path.extend_from_slice(&name);
        if !layer.contains(&path) {
            remove_tree(listing.as_fd(), &name)?;
            continue;
        }
        if matches!(kind, Some(Type::Directory) | None) {
            match openat(listing.as_fd(), name.as_slice(), READ_DIR, Mode::empty()) {
                Ok(child) => prune(child, &path, layer)?,
                // Not a directory (or a symlink): kept as this layer wrote it.
                Err(Errno::ENOTDIR | Errno::ELOOP) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_names() {
        assert_eq!(classify(b".wh..wh..opq"), Whiteout::Opaque);
        assert_eq!(classify(b".wh..wh.plnk"), Whiteout::Meta);
        assert_eq!(classify(b".wh.foo"), Whiteout::Remove(b"foo"));
        assert_eq!(classify(b".wh..."), Whiteout::Remove(b".."));
        assert_eq!(classify(b"foo.wh."), Whiteout::None);
    }

    #[test]
    fn layer_paths_include_parents() {
        let mut layer = LayerPaths::default();
        layer.record(b"a/b/c");
        layer.record(b"a/d");
        for path in [&b"a"[..], b"a/b", b"a/b/c", b"a/d"] {
            assert!(layer.contains(path));
        }
        assert!(!layer.contains(b"a/b/x"));
    }
}
