//! Applying a tar stream to a directory: an OCI image layer into the appliance's staging
//! directory, or a `docker cp` archive inside the guest. Owns the order of the work (entry by
//! entry, then directory metadata at the end), the checks of entry paths and hardlink targets,
//! whiteouts and the report. It must not write outside the target: every name is reached
//! through `beneath` (no symlink followed) and created through `create` (no existing name
//! written through).

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::HashMap;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::openat;
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::beneath::{Beneath, READ_DIR, WalkError, lstat_at, remove_tree};
use crate::create::{self, Fail, Meta};
use crate::entry_path::{components, join, lossy};
use crate::error::{ArchiveError, EscapeReason};
use crate::whiteout::{self, LayerPaths, Whiteout};

/// Read size for the archive and for file contents.
const BUFFER: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Names the stream in errors, e.g. "layer sha256:0123abcd…" or "archive".
    pub source: String,
    /// Apply OCI whiteouts (`.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` makes
    /// the directory opaque: removes what lower layers put there but keeps what this same
    /// layer adds, whatever the entry order) instead of extracting them as files.
    pub whiteouts: bool,
    /// Restore uid/gid from the archive (lchown). Otherwise files belong to the caller.
    pub same_owner: bool,
    pub devices: DevicePolicy,
}

/// What to do with character and block devices. FIFOs are always created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Do not create them; each one is listed in `UnpackReport::skipped`.
    Skip,
    /// mknod them (needs CAP_MKNOD; the tether in the guest).
    Create,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    /// Entries read from the archive (whiteouts and skipped ones included; PAX global
    /// headers not).
    pub entries: u64,
    /// Bytes of regular file contents written.
    pub bytes: u64,
    /// One line per entry that was not applied, with the reason.
    pub skipped: Vec<String>,
}

/// Applies the tar stream `archive` to the directory `target`, which must exist.
///
/// Paths are relative to `target`; absolute paths, `..` components and paths through a
/// symlink are refused with an error. Existing names are replaced, never written through.
/// Directory metadata is set after all entries, so that their mtimes stick. Extended
/// attributes (PAX `SCHILY.xattr.*`) are not applied.
pub fn unpack<R: Read>(
    archive: R,
    target: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackReport, ArchiveError> {
    let tree = Beneath::open(target).map_err(|error| ArchiveError::Target {
        stream: opts.source.clone(),
        target: target.display().to_string(),
        error,
    })?;
    let mut unpacker = Unpacker::new(opts, tree);
    unpacker.read(archive)?;
    unpacker.finish()
}

/// What [`unpack_to_stage`] leaves for `stage` to move into place.
pub(crate) struct Staged {
    pub(crate) report: UnpackReport,
    /// Metadata of the directories the archive names (the target itself as the empty path),
    /// not yet applied: it goes onto the directories where they end up.
    pub(crate) dirs: Vec<DirMeta>,
    /// For each directory path the archive reaches, the first entry that reached it: the
    /// entry an error about that directory names.
    pub(crate) first_entry: HashMap<Vec<u8>, String>,
}

/// Applies `archive` to the empty directory `stage` as [`unpack`] would, except that directory
/// metadata is returned instead of applied, and that a hardlink whose target the archive did
/// not bring is linked to that path in `target` (reached without following symlinks, never
/// changed).
pub(crate) fn unpack_to_stage<R: Read>(
    archive: R,
    stage: Beneath,
    target: Beneath,
    opts: &UnpackOptions,
) -> Result<Staged, ArchiveError> {
    let mut unpacker = Unpacker::new(opts, stage);
    unpacker.fallback = Some(target);
    unpacker.first_entry = Some(HashMap::new());
    unpacker.read(archive)?;
    Ok(Staged {
        report: unpacker.report,
        dirs: unpacker.dirs,
        first_entry: unpacker.first_entry.unwrap_or_default(),
    })
}

/// Applies directory metadata in `tree`, deepest first, after all entries.
pub(crate) fn apply_dir_meta(
    tree: &mut Beneath,
    mut dirs: Vec<DirMeta>,
    stream: &str,
) -> Result<(), ArchiveError> {
    dirs.sort_by_key(|dir| Reverse(dir.path.iter().filter(|&&b| b == b'/').count()));
    for dir in dirs {
        set_dir_meta(tree, &dir).map_err(|fail| entry_error(stream, fail, &lossy(&dir.path)))?;
    }
    Ok(())
}

/// How an entry is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Directory,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

fn kind_of(entry_type: EntryType, raw_path: &[u8]) -> Result<Option<Kind>, Fail> {
    Ok(Some(match entry_type {
        // Pre-POSIX archives mark directories by a trailing slash on a regular entry.
        EntryType::Regular if raw_path.ends_with(b"/") => Kind::Directory,
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
        EntryType::Directory => Kind::Directory,
        EntryType::Symlink => Kind::Symlink,
        EntryType::Link => Kind::Hardlink,
        EntryType::Char => Kind::Char,
        EntryType::Block => Kind::Block,
        EntryType::Fifo => Kind::Fifo,
        // Global PAX headers carry nothing this crate uses.
        EntryType::XGlobalHeader => return Ok(None),
        other => {
            return Err(Fail::Unsupported(format!(
                "{:?}",
                char::from(other.as_byte())
            )));
        }
    }))
}

/// Directory metadata, applied at the end.
#[derive(Debug)]
pub(crate) struct DirMeta {
    /// Components joined with "/"; empty for the target itself.
    pub(crate) path: Vec<u8>,
    meta: Meta,
}

struct Unpacker<'o> {
    opts: &'o UnpackOptions,
    tree: Beneath,
    /// `Some` when applying whiteouts.
    layer: Option<LayerPaths>,
    dirs: Vec<DirMeta>,
    report: UnpackReport,
    buffer: Vec<u8>,
    /// Staging: where hardlink targets the archive did not bring are looked up.
    fallback: Option<Beneath>,
    /// Staging: the first entry under each directory path (see `Staged::first_entry`).
    first_entry: Option<HashMap<Vec<u8>, String>>,
}

/// An entry's failure as the crate's error, naming `stream` and `entry`.
pub(crate) fn entry_error(stream: &str, fail: Fail, entry: &str) -> ArchiveError {
    let stream = stream.to_owned();
    let entry = entry.to_owned();
    match fail {
        Fail::Escape(reason) => ArchiveError::Escape {
            stream,
            entry,
            reason,
        },
        Fail::Io(action, error) => ArchiveError::Io {
            stream,
            entry,
            action,
            error,
        },
        Fail::Read(error) => ArchiveError::Malformed {
            stream,
            position: format!("at entry {entry:?}"),
            error,
        },
        Fail::Invalid(problem) => ArchiveError::Invalid {
            stream,
            entry,
            problem,
        },
        Fail::Unsupported(kind) => ArchiveError::Unsupported {
            stream,
            entry,
            kind,
        },
    }
}

impl<'o> Unpacker<'o> {
    fn new(opts: &'o UnpackOptions, tree: Beneath) -> Self {
        Self {
            opts,
            tree,
            layer: opts.whiteouts.then(LayerPaths::default),
            dirs: Vec::new(),
            report: UnpackReport::default(),
            buffer: vec![0; BUFFER],
            fallback: None,
            first_entry: None,
        }
    }

    fn error(&self, fail: Fail, entry: &str) -> ArchiveError {
        entry_error(&self.opts.source, fail, entry)
    }

    /// Applies every entry of `archive`, stopping at the first refusal.
    fn read<R: Read>(&mut self, archive: R) -> Result<(), ArchiveError> {
        let opts = self.opts;
        let malformed = |position: String, error: io::Error| ArchiveError::Malformed {
            stream: opts.source.clone(),
            position,
            error,
        };
        let mut archive = tar::Archive::new(BufReader::with_capacity(BUFFER, archive));
        let entries = archive
            .entries()
            .map_err(|e| malformed("before the first entry".into(), e))?;
        let mut previous: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                let position = match &previous {
                    Some(path) => format!("after entry {path:?}"),
                    None => "before the first entry".to_owned(),
                };
                malformed(position, e)
            })?;
            let raw_path = entry.path_bytes().into_owned();
            let name = lossy(&raw_path);
            self.apply(&mut entry, &raw_path, &name)
                .map_err(|fail| self.error(fail, &name))?;
            previous = Some(name);
        }
        Ok(())
    }

    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw_path: &[u8],
        name: &str,
    ) -> Result<(), Fail> {
        let Some(kind) = kind_of(entry.header().entry_type(), raw_path)? else {
            return Ok(());
        };
        self.report.entries += 1;
        let path = components(raw_path).map_err(Fail::Escape)?;

        if self.layer.is_some()
            && let Some((last, dirs)) = path.split_last()
        {
            match whiteout::classify(last) {
                Whiteout::None => {}
                Whiteout::Meta => return Ok(()),
                Whiteout::Opaque => return self.opaque(dirs),
                Whiteout::Remove(victim) => return self.whiteout(dirs, victim),
            }
        }

        let Some((file_name, dirs)) = path.split_last() else {
            if kind != Kind::Directory {
                return Err(Fail::Invalid("entry would replace the target directory"));
            }
            // The target itself: its metadata, unless this is a layer.
            if self.layer.is_none() {
                let meta = self.meta(entry)?;
                self.dirs.push(DirMeta {
                    path: Vec::new(),
                    meta,
                });
            }
            return Ok(());
        };

        if matches!(kind, Kind::Char | Kind::Block) && self.opts.devices == DevicePolicy::Skip {
            let (major, minor) = device_numbers(entry)?;
            let what = if kind == Kind::Char {
                "character"
            } else {
                "block"
            };
            self.report.skipped.push(format!(
                "entry {name:?}: {what} device {major}:{minor} not created (devices are skipped)"
            ));
            return Ok(());
        }

        if let Some(layer) = &mut self.layer {
            layer.record(&join(&path));
        }
        if let Some(first) = &mut self.first_entry {
            for depth in 1..path.len() {
                let dir = join(&path[..depth]);
                first.entry(dir).or_insert_with(|| name.to_owned());
            }
        }

        // The target of a hardlink is found before the link's own directory is.
        let link_target = match kind {
            Kind::Hardlink => self.hardlink_target(entry, &path)?,
            _ => None,
        };
        let meta = self.meta(entry)?;
        let parent = self
            .tree
            .dir(dirs, true)
            .map_err(|e| walk_fail(e, dirs, "create parent directories"))?;
        let removed_dir = match kind {
            Kind::File => {
                let size = entry.size();
                let removed =
                    create::file(parent, file_name, entry, size, &meta, &mut self.buffer)?;
                self.report.bytes += size;
                removed
            }
            Kind::Directory => {
                create::directory(parent, file_name)?;
                self.dirs.push(DirMeta {
                    path: join(&path),
                    meta,
                });
                false
            }
            Kind::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or(Fail::Invalid("symlink has no target"))?;
                create::symlink(parent, file_name, &target, &meta)?
            }
            Kind::Char | Kind::Block | Kind::Fifo => {
                let node = match kind {
                    Kind::Char => SFlag::S_IFCHR,
                    Kind::Block => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let device = match kind {
                    Kind::Fifo => (0, 0),
                    _ => device_numbers(entry)?,
                };
                create::special(parent, file_name, node, device, &meta)?
            }
            Kind::Hardlink => match &link_target {
                Some((target_parent, target_name)) => {
                    create::hardlink(target_parent.as_fd(), target_name, parent, file_name)?
                }
                // A link to itself.
                None => false,
            },
        };
        if removed_dir {
            self.tree.forget();
        }
        Ok(())
    }

    /// Checks a hardlink's target (an archive path, under the same rules as entry paths) and
    /// returns its directory and name; `None` for a link to itself.
    fn hardlink_target<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        path: &[&[u8]],
    ) -> Result<Option<(OwnedFd, Vec<u8>)>, Fail> {
        let target_raw: Cow<'_, [u8]> = entry
            .link_name_bytes()
            .ok_or(Fail::Invalid("hardlink has no target"))?;
        let refuse = |reason: EscapeReason| {
            Fail::Escape(EscapeReason::LinkTarget {
                target: lossy(&target_raw),
                reason: Box::new(reason),
            })
        };
        let target = components(&target_raw).map_err(refuse)?;
        let Some((target_name, target_dirs)) = target.split_last() else {
            return Err(Fail::Invalid("hardlink target is the target directory"));
        };
        if target == path {
            return Ok(None);
        }
        let found = self.tree.dir(target_dirs, false);
        // Staging: what the archive did not bring is linked to from the real target.
        let in_stage = match &found {
            Ok(fd) => lstat_at(*fd, target_name)
                .map_err(|e| Fail::Io("inspect hardlink target", e))?
                .is_some(),
            Err(WalkError::Missing) => false,
            Err(_) => true,
        };
        let found = match (&mut self.fallback, in_stage) {
            (Some(real), false) => real.dir(target_dirs, false),
            _ => self.tree.dir(target_dirs, false),
        };
        match found {
            Ok(fd) => {
                let fd = fd
                    .try_clone_to_owned()
                    .map_err(|e| Fail::Io("open the hardlink target's directory", e))?;
                Ok(Some((fd, target_name.to_vec())))
            }
            Err(WalkError::Symlink { depth }) => Err(refuse(EscapeReason::Symlink(lossy(&join(
                &target_dirs[..=depth],
            ))))),
            Err(WalkError::Missing | WalkError::NotDir { .. }) => {
                Err(Fail::Invalid("hardlink target does not exist"))
            }
            Err(WalkError::Io(error)) => {
                Err(Fail::Io("open the hardlink target's directory", error))
            }
        }
    }

    /// `.wh.NAME` in `dirs`: remove NAME as the lower layers left it.
    fn whiteout(&mut self, dirs: &[&[u8]], victim: &[u8]) -> Result<(), Fail> {
        if victim.is_empty() || victim == b"." || victim == b".." {
            return Err(Fail::Escape(EscapeReason::Whiteout(lossy(victim))));
        }
        let mut path = dirs.to_vec();
        path.push(victim);
        // This layer's own files are not hidden by its own whiteouts.
        if self
            .layer
            .as_ref()
            .is_some_and(|layer| layer.contains(&join(&path)))
        {
            return Ok(());
        }
        let parent = match self.tree.dir(dirs, false) {
            Ok(fd) => fd,
            Err(WalkError::Missing | WalkError::NotDir { .. }) => return Ok(()),
            Err(e) => return Err(walk_fail(e, dirs, "open the whiteout's directory")),
        };
        let removed =
            remove_tree(parent, victim).map_err(|e| Fail::Io("remove the whited-out path", e))?;
        if removed {
            self.tree.forget();
        }
        Ok(())
    }

    /// `.wh..wh..opq` in `dirs`.
    fn opaque(&mut self, dirs: &[&[u8]]) -> Result<(), Fail> {
        let Some(layer) = &self.layer else {
            return Ok(());
        };
        let dir = match self.tree.dir(dirs, false) {
            Ok(fd) => fd,
            Err(WalkError::Missing | WalkError::NotDir { .. }) => return Ok(()),
            Err(e) => return Err(walk_fail(e, dirs, "open the opaque directory")),
        };
        let dir = openat(dir, ".", READ_DIR, Mode::empty())
            .map_err(|e| Fail::Io("open the opaque directory", e.into()))?;
        let result = whiteout::prune(dir, &join(dirs), layer);
        self.tree.forget();
        result.map_err(|e| Fail::Io("empty the opaque directory", e))
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> Result<Meta, Fail> {
        let header = entry.header();
        let mode = header.mode().map_err(Fail::Read)?;
        let owner = if self.opts.same_owner {
            let id = |value: io::Result<u64>| -> Result<u32, Fail> {
                u32::try_from(value.map_err(Fail::Read)?)
                    .map_err(|_| Fail::Invalid("owner id is out of range"))
            };
            Some((id(header.uid())?, id(header.gid())?))
        } else {
            None
        };
        let seconds = header.mtime().map_err(Fail::Read)?;
        let mut mtime = TimeSpec::new(i64::try_from(seconds).unwrap_or(i64::MAX), 0);
        // PAX mtime has sub-second precision (and may be negative).
        if let Ok(Some(extensions)) = entry.pax_extensions() {
            for extension in extensions.flatten() {
                // Extended attributes (SCHILY.xattr.*) are deliberately not applied: file
                // capabilities and SELinux labels are not restored by this crate.
                if extension.key_bytes() == b"mtime"
                    && let Some(precise) = parse_pax_time(extension.value_bytes())
                {
                    mtime = precise;
                }
            }
        }
        Ok(Meta { mode, owner, mtime })
    }

    /// Applies directory metadata, deepest first, after all entries.
    fn finish(mut self) -> Result<UnpackReport, ArchiveError> {
        let dirs = std::mem::take(&mut self.dirs);
        apply_dir_meta(&mut self.tree, dirs, &self.opts.source)?;
        Ok(self.report)
    }
}

fn set_dir_meta(tree: &mut Beneath, dir: &DirMeta) -> Result<(), Fail> {
    let path = components(&dir.path).map_err(Fail::Escape)?;
    let fd = match path.split_last() {
        None => openat(tree.root(), ".", READ_DIR, Mode::empty()),
        Some((name, parents)) => {
            let parent = match tree.dir(parents, false) {
                Ok(fd) => fd,
                // Replaced or removed by a later entry: nothing to do.
                Err(WalkError::Missing | WalkError::NotDir { .. } | WalkError::Symlink { .. }) => {
                    return Ok(());
                }
                Err(e) => return Err(walk_fail(e, parents, "open directory")),
            };
            openat(parent, *name, READ_DIR, Mode::empty())
        }
    };
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(()),
        Err(errno) => return Err(Fail::Io("open directory", errno.into())),
    };
    dir.meta.apply_to_fd(&fd)
}

pub(crate) fn walk_fail(error: WalkError, dirs: &[&[u8]], action: &'static str) -> Fail {
    match error {
        WalkError::Symlink { depth } => {
            Fail::Escape(EscapeReason::Symlink(lossy(&join(&dirs[..=depth]))))
        }
        WalkError::Missing => Fail::Io(action, Errno::ENOENT.into()),
        WalkError::NotDir { depth } => Fail::Io(
            action,
            io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{:?} is not a directory", lossy(&join(&dirs[..=depth]))),
            ),
        ),
        WalkError::Io(error) => Fail::Io(action, error),
    }
}

fn device_numbers<R: Read>(entry: &tar::Entry<'_, R>) -> Result<(u32, u32), Fail> {
    let header = entry.header();
    let major = header.device_major().map_err(Fail::Read)?.unwrap_or(0);
    let minor = header.device_minor().map_err(Fail::Read)?.unwrap_or(0);
    Ok((major, minor))
}

/// "1700000000.5", "-1.25", "12": seconds since the epoch with an optional fraction.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let text = std::str::from_utf8(value).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let negative = whole.starts_with('-');
    let seconds: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction.chars().take(9).collect();
    let nanos: i64 = if digits.is_empty() {
        0
    } else {
        digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32)
    };
    Some(if negative && nanos > 0 {
        TimeSpec::new(seconds - 1, 1_000_000_000 - nanos)
    } else {
        TimeSpec::new(seconds, nanos)
    })
}

#[cfg(test)]
mod tests;
