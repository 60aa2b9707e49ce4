//! Base disks: an image's layers applied, in order, into a staging
//! directory, which `mke2fs -d` then turns into a raw ext4 disk. The disk is
//! built once per image and shared read-only by every container made from
//! it (each gets a qcow2 overlay, see `disk`).
//!
//! Owns the staging directory and the sizing of the filesystem. Layer
//! content is untrusted: it is applied by the `archive` crate, which refuses
//! anything that would write outside the staging directory. Must not touch
//! the image records: on any failure it leaves nothing behind, and the
//! caller records nothing.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Free space a container gets in its root filesystem beyond the image's
/// own files (the raw file is sparse: unused space costs nothing).
pub const HEADROOM_MIB: u64 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("Opening {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Applying {layer}")]
    Layer {
        layer: String,
        #[source]
        source: archive::ArchiveError,
    },
    #[error("Staging in {path}")]
    Stage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Running mke2fs or debugfs; install Debian's e2fsprogs")]
    Spawn(#[source] std::io::Error),
    #[error("mke2fs {path} failed: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
    #[error("Removing lost+found from {path} (debugfs): {stderr}")]
    LostFound { path: PathBuf, stderr: String },
}

/// One layer to apply: its blob on disk and a name for errors.
#[derive(Debug, Clone)]
pub struct LayerFile {
    pub path: PathBuf,
    /// "layer sha256:…" in errors.
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Built {
    /// Bytes of the files applied.
    pub content_size: u64,
    /// Bytes the disk file takes on the host.
    pub disk_size: u64,
    /// What the layers held that was not applied.
    pub skipped: Vec<String>,
}

/// Applies `layers` (gzip, zstd or plain tar) in order and writes the
/// ext4 disk `out` (replacing it). `work` is a directory on the same
/// filesystem as `out` for the staging tree and the half-made disk; both
/// are gone when this returns, whatever happens.
pub fn build(layers: &[LayerFile], work: &Path, out: &Path) -> Result<Built, RootfsError> {
    std::fs::create_dir_all(work).map_err(|source| RootfsError::Stage {
        path: work.to_path_buf(),
        source,
    })?;
    let stage = tempfile::Builder::new()
        .prefix("stage-")
        .tempdir_in(work)
        .map_err(|source| RootfsError::Stage {
            path: work.to_path_buf(),
            source,
        })?;
    let root = stage.path();
    // The tree's root is the container's "/": world-readable, whatever
    // the temporary directory's own mode.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).map_err(|source| {
        RootfsError::Stage {
            path: root.to_path_buf(),
            source,
        }
    })?;
    let mut skipped = Vec::new();
    for l in layers {
        let file = std::fs::File::open(&l.path).map_err(|source| RootfsError::Open {
            what: "layer",
            path: l.path.clone(),
            source,
        })?;
        let reader = archive::decompressed(std::io::BufReader::with_capacity(1 << 20, file))
            .map_err(|source| RootfsError::Open {
                what: "layer",
                path: l.path.clone(),
                source,
            })?;
        let opts = archive::UnpackOptions {
            source: l.name.clone(),
            whiteouts: true,
            same_owner: true,
            devices: archive::DevicePolicy::Skip,
        };
        let report = archive::unpack(reader, root, &opts).map_err(|source| RootfsError::Layer {
            layer: l.name.clone(),
            source,
        })?;
        skipped.extend(report.skipped);
    }
    let (content, inodes) = measure(root).map_err(|source| RootfsError::Stage {
        path: root.to_path_buf(),
        source,
    })?;
    let size_mib = fs_size_mib(content, inodes);
    let tmp = tempfile::Builder::new()
        .prefix("disk-")
        .tempfile_in(work)
        .map_err(|source| RootfsError::Stage {
            path: work.to_path_buf(),
            source,
        })?;
    mkfs(Some(root), tmp.path(), size_mib, "rootfs")?;
    let disk = tmp.persist(out).map_err(|e| RootfsError::Stage {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    // Base disks are never written: containers write to their overlays.
    let _ = disk.set_permissions(std::fs::Permissions::from_mode(0o444));
    let disk_size = std::fs::metadata(out)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0);
    Ok(Built {
        content_size: content,
        disk_size,
        skipped,
    })
}

/// Bytes of file content (rounded up to 4 KiB blocks) and inode count of
/// the tree at `root`, not following symlinks.
fn measure(root: &Path) -> std::io::Result<(u64, u64)> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let md = entry.metadata()?;
            inodes += 1;
            bytes += md.len().div_ceil(4096) * 4096;
            if md.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Room for the content with a tenth to spare, the inode tables and the
/// journal, plus the containers' headroom.
fn fs_size_mib(content: u64, inodes: u64) -> u64 {
    let mib = 1 << 20;
    let content_mib = (content + content / 10 + inodes * 256).div_ceil(mib);
    content_mib + 64 + HEADROOM_MIB
}

/// An ext4 filesystem in the file `out`, `size_mib` large, filled from
/// `root` if given. The journal is small.
///
/// With a `root` (an image's base disk), inode tables are written now, not
/// lazily by the guest, which would fill each container's overlay with
/// zeroes. Without one (a new volume), `out` must be a new, empty file:
/// it is sparse, so its unwritten blocks read as zeroes, and nothing is
/// written but the metadata in use (a 1 TiB volume takes about 16 MiB of
/// real disk, not the gigabytes of its inode tables).
pub fn mkfs(
    root: Option<&Path>,
    out: &Path,
    size_mib: u64,
    label: &str,
) -> Result<(), RootfsError> {
    // A 16 MiB journal; small filesystems get a quarter of their size.
    let journal = format!("size={}", (size_mib / 4).clamp(1, 16));
    let mut cmd = Command::new("mke2fs");
    cmd.args(["-q", "-F", "-t", "ext4", "-L", label, "-J", &journal])
        .arg("-E")
        .arg(if root.is_some() {
            "lazy_itable_init=0,lazy_journal_init=0"
        } else {
            "lazy_itable_init=1,lazy_journal_init=1,assume_storage_prezeroed=1"
        });
    if let Some(root) = root {
        cmd.arg("-d").arg(root);
    }
    let r = cmd
        .arg(out)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(RootfsError::Spawn)?;
    if !r.status.success() {
        return Err(RootfsError::Mkfs {
            path: out.to_path_buf(),
            stderr: String::from_utf8_lossy(&r.stderr).trim().to_string(),
        });
    }
    if root.is_none_or(|r| std::fs::symlink_metadata(r.join("lost+found")).is_err()) {
        remove_lost_found(out)?;
    }
    Ok(())
}

/// mke2fs makes `/lost+found`, which neither a container's root nor a new
/// volume should show: a database's init refuses a data directory that
/// holds it. (e2fsck makes it again should it ever need it.)
fn remove_lost_found(out: &Path) -> Result<(), RootfsError> {
    let r = Command::new("debugfs")
        .args(["-w", "-R", "rmdir lost+found"])
        .arg(out)
        .output()
        .map_err(RootfsError::Spawn)?;
    // debugfs exits 0 whatever its command did; its banner aside, anything
    // on stderr is the command failing.
    let stderr = String::from_utf8_lossy(&r.stderr);
    let complaint: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !r.status.success() || !complaint.is_empty() {
        return Err(RootfsError::LostFound {
            path: out.to_path_buf(),
            stderr: complaint.join("; "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_layer(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data, mode) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_uid(1000);
            h.set_gid(1000);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// What debugfs prints for `request` on the disk `disk`.
    fn debugfs(disk: &Path, request: &str) -> String {
        let o = Command::new("debugfs")
            .args(["-R", request])
            .arg(disk)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    #[test]
    fn layers_become_one_ext4_disk() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = dir.path().join("l1.tar");
        let l2 = dir.path().join("l2.tar");
        std::fs::write(
            &l1,
            tar_layer(&[("etc/a", b"one", 0o644), ("etc/gone", b"x", 0o644)]),
        )
        .unwrap();
        std::fs::write(
            &l2,
            tar_layer(&[("etc/b", b"two", 0o4755), ("etc/.wh.gone", b"", 0o644)]),
        )
        .unwrap();
        let out = dir.path().join("disk.ext4");
        let layers = [
            LayerFile {
                path: l1,
                name: "layer 1".into(),
            },
            LayerFile {
                path: l2,
                name: "layer 2".into(),
            },
        ];
        let built = build(&layers, &dir.path().join("work"), &out).unwrap();
        assert!(built.content_size >= 8192);
        // Only the disk is left in the work directory's place.
        assert_eq!(
            std::fs::read_dir(dir.path().join("work")).unwrap().count(),
            0
        );
        let ls = debugfs(&out, "ls -l /etc");
        assert!(ls.contains(" a"), "{ls}");
        assert!(ls.contains(" b"), "{ls}");
        assert!(!ls.contains("gone"), "{ls}");
        // The root holds what the layers put there, and no lost+found.
        let root = debugfs(&out, "ls /");
        assert!(root.contains("etc"), "{root}");
        assert!(!root.contains("lost+found"), "{root}");
        // Owner and setuid survive into the filesystem.
        assert!(ls.contains("104755 (1)   1000   1000"), "{ls}");
        assert_eq!(debugfs(&out, "cat /etc/b"), "two");
        assert_eq!(
            std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o444
        );
    }

    #[test]
    fn a_bad_layer_names_itself_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l1 = dir.path().join("l1.tar");
        // A raw header for "../escape", which tar::Builder would refuse.
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(0);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend([0u8; 1024]);
        std::fs::write(&l1, bytes).unwrap();
        let out = dir.path().join("disk.ext4");
        let e = build(
            &[LayerFile {
                path: l1,
                name: "layer sha256:abc".into(),
            }],
            &dir.path().join("work"),
            &out,
        )
        .unwrap_err();
        let chain = crate::api::error::error_chain(&e);
        assert!(chain.contains("layer sha256:abc"), "{chain}");
        assert!(chain.contains("../escape"), "{chain}");
        assert!(!out.exists());
        assert!(!dir.path().join("escape").exists());
        assert_eq!(
            std::fs::read_dir(dir.path().join("work")).unwrap().count(),
            0
        );
    }
}
