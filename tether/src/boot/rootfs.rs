//! The container root file system: finding its block device and making it
//! `/`.
//!
//! Owns block device lookup (`serial:`, `label:`, `/dev/` sources, also used
//! by `volumes`) and the switch from the initramfs into the new root: the
//! pseudo file systems move along, the initramfs (tether binary, modules)
//! stays behind, out of the container's sight. Must not write inside the new
//! root beyond creating missing mount points.

use std::path::{Path, PathBuf};

use proto::v1::ContainerSpec;

use super::{BootError, DEVICE_WAIT, poll};
use crate::sys::{MsFlags, Syscall};

/// Where the container root is mounted before it becomes `/`.
const NEWROOT: &str = "/newroot";
/// Pseudo file systems moved into the new root (`/dev/pts` and `/dev/shm`
/// move with `/dev`).
const MOVED_MOUNTS: [&str; 4] = ["/dev", "/proc", "/sys", "/run"];
const CGROUP_DIR: &str = "/sys/fs/cgroup";
/// virtio-blk serials are cut to this many bytes (VIRTIO_BLK_ID_BYTES).
const VIRTIO_SERIAL_MAX: usize = 20;
/// ext2/3/4 superblock: offset on disk, and where magic and label sit in it.
const EXT_SUPERBLOCK: u64 = 1024;
const EXT_MAGIC_AT: usize = 56;
const EXT_MAGIC: u16 = 0xEF53;
const EXT_LABEL_AT: usize = 120;
const EXT_LABEL_LEN: usize = 16;

/// A parsed block device source.
#[derive(Debug, PartialEq, Eq)]
enum DeviceSource<'a> {
    Serial(&'a str),
    Label(&'a str),
    Path(&'a str),
}

fn parse_device_source<'a>(value: &'a str, field: &str) -> Result<DeviceSource<'a>, BootError> {
    let parsed = if let Some(serial) = value.strip_prefix("serial:") {
        DeviceSource::Serial(serial)
    } else if let Some(label) = value.strip_prefix("label:") {
        DeviceSource::Label(label)
    } else if value.starts_with("/dev/") {
        DeviceSource::Path(value)
    } else {
        return Err(BootError::DeviceSource {
            field: field.to_owned(),
            value: value.to_owned(),
        });
    };
    match parsed {
        DeviceSource::Serial("") | DeviceSource::Label("") => Err(BootError::DeviceSource {
            field: field.to_owned(),
            value: value.to_owned(),
        }),
        ok => Ok(ok),
    }
}

/// Whether `value` names a block device (rather than a pseudo file system
/// or a path to bind).
pub(super) fn is_block_source(value: &str) -> bool {
    ["serial:", "label:", "/dev/"]
        .iter()
        .any(|p| value.starts_with(p))
}

/// Finds the block device `value` (from spec field `field`) names, waiting
/// for it to appear.
pub(super) fn find_block_device(
    sys: &dyn Syscall,
    value: &str,
    field: &str,
) -> Result<PathBuf, BootError> {
    let source = parse_device_source(value, field)?;
    let found = poll(sys, DEVICE_WAIT, || match source {
        DeviceSource::Serial(serial) => find_by_serial(sys, serial),
        DeviceSource::Label(label) => find_by_label(sys, label),
        DeviceSource::Path(path) => {
            let path = Path::new(path);
            sys.exists(path).then(|| path.to_path_buf())
        }
    });
    found.ok_or_else(|| BootError::DeviceNotFound {
        field: field.to_owned(),
        wanted: match source {
            DeviceSource::Serial(s) => format!("with virtio-blk serial '{s}'"),
            DeviceSource::Label(l) => format!("with file system label '{l}'"),
            DeviceSource::Path(p) => p.to_owned(),
        },
    })
}

fn serial_matches(found: &str, wanted: &str) -> bool {
    found == wanted
        || (wanted.len() > VIRTIO_SERIAL_MAX
            && wanted.as_bytes().get(..VIRTIO_SERIAL_MAX) == Some(found.as_bytes()))
}

fn find_by_serial(sys: &dyn Syscall, wanted: &str) -> Option<PathBuf> {
    let disks = sys.list_dir(Path::new("/sys/block")).ok()?;
    disks.into_iter().find_map(|disk| {
        let dir = Path::new("/sys/block").join(&disk);
        let serial = sys
            .read_file(&dir.join("serial"))
            .or_else(|_| sys.read_file(&dir.join("device/serial")))
            .ok()?;
        let serial = String::from_utf8_lossy(&serial);
        let serial = serial.trim_end_matches(['\0', '\n', ' ']);
        serial_matches(serial, wanted).then(|| Path::new("/dev").join(&disk))
    })
}

/// The label of an ext2/3/4 superblock (read from `EXT_SUPERBLOCK`), or
/// `None` when it is not one.
fn ext_label(superblock: &[u8]) -> Option<String> {
    let magic = superblock.get(EXT_MAGIC_AT..EXT_MAGIC_AT + 2)?;
    if u16::from_le_bytes([magic[0], magic[1]]) != EXT_MAGIC {
        return None;
    }
    let label = superblock.get(EXT_LABEL_AT..EXT_LABEL_AT + EXT_LABEL_LEN)?;
    let end = label.iter().position(|&b| b == 0).unwrap_or(label.len());
    Some(String::from_utf8_lossy(&label[..end]).into_owned())
}

fn find_by_label(sys: &dyn Syscall, wanted: &str) -> Option<PathBuf> {
    let names = sys.list_dir(Path::new("/dev")).ok()?;
    names
        .into_iter()
        .filter(|n| n.starts_with("vd") || n.starts_with("sd"))
        .map(|n| Path::new("/dev").join(n))
        .find(|dev| {
            sys.read_at(dev, EXT_SUPERBLOCK, EXT_LABEL_AT + EXT_LABEL_LEN)
                .ok()
                .and_then(|sb| ext_label(&sb))
                .is_some_and(|label| label == wanted)
        })
}

pub(super) fn enter_rootfs_with(sys: &dyn Syscall, spec: &ContainerSpec) -> Result<(), BootError> {
    let rootfs = spec.rootfs.clone().unwrap_or_default();
    let device = find_block_device(sys, &rootfs.source, "spec.rootfs.source")?;
    let fstype = if rootfs.fstype.is_empty() {
        "ext4"
    } else {
        rootfs.fstype.as_str()
    };
    let newroot = Path::new(NEWROOT);
    sys.mkdir_all(newroot, 0o755)
        .map_err(|source| BootError::CreateDir {
            path: newroot.to_path_buf(),
            source,
        })?;
    let flags = if rootfs.read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let device_str = device.to_string_lossy();
    sys.mount(Some(&device_str), newroot, Some(fstype), flags, None)
        .map_err(|source| BootError::Mount {
            device: device_str.clone().into_owned(),
            fstype: fstype.to_owned(),
            target: newroot.to_path_buf(),
            source,
        })?;
    crate::info!("root file system {device_str} ({fstype}) mounted");

    for from in MOVED_MOUNTS {
        let to = newroot.join(from.trim_start_matches('/'));
        if !sys.exists(&to) {
            if rootfs.read_only {
                return Err(BootError::MissingMountPoint { path: from.into() });
            }
            sys.mkdir_all(&to, 0o755)
                .map_err(|source| BootError::CreateDir {
                    path: to.clone(),
                    source,
                })?;
        }
        sys.mount(Some(from), &to, None, MsFlags::MS_MOVE, None)
            .map_err(|source| BootError::MoveMount {
                from: from.into(),
                to: to.clone(),
                source,
            })?;
    }

    switch_root(sys, newroot)?;

    let cgroup = Path::new(CGROUP_DIR);
    if sys.exists(cgroup) {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if let Err(e) = sys.mount(Some("cgroup2"), cgroup, Some("cgroup2"), flags, None) {
            crate::info!("no cgroup2 at {CGROUP_DIR}: {e}");
        }
    }
    Ok(())
}

/// Makes `newroot` the root: the initramfs stays mounted underneath, where
/// nothing in the container can reach it.
fn switch_root(sys: &dyn Syscall, newroot: &Path) -> Result<(), BootError> {
    let fail = |step, path: &Path| {
        let path = path.to_path_buf();
        move |source| BootError::SwitchRoot { step, path, source }
    };
    sys.chdir(newroot)
        .map_err(fail("changing directory to", newroot))?;
    sys.mount(Some("."), Path::new("/"), None, MsFlags::MS_MOVE, None)
        .map_err(fail("moving the mount to / from", newroot))?;
    sys.chroot(Path::new("."))
        .map_err(fail("changing root to", newroot))?;
    sys.chdir(Path::new("/"))
        .map_err(fail("changing directory to", Path::new("/")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};
    use proto::v1::RootFs;

    fn ext4_image(label: &str) -> Vec<u8> {
        let mut disk = vec![0u8; 4096];
        let sb = EXT_SUPERBLOCK as usize;
        disk[sb + EXT_MAGIC_AT..sb + EXT_MAGIC_AT + 2].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        disk[sb + EXT_LABEL_AT..sb + EXT_LABEL_AT + label.len()].copy_from_slice(label.as_bytes());
        disk
    }

    fn spec(source: &str, read_only: bool) -> ContainerSpec {
        ContainerSpec {
            rootfs: Some(RootFs {
                source: source.into(),
                fstype: String::new(),
                read_only,
            }),
            ..Default::default()
        }
    }

    fn mount(source: &str, target: &str, fstype: Option<&str>, flags: MsFlags) -> Call {
        Call::Mount {
            source: Some(source.into()),
            target: target.into(),
            fstype: fstype.map(Into::into),
            flags,
            data: None,
        }
    }

    #[test]
    fn source_forms() {
        assert_eq!(
            parse_device_source("serial:root", "f").unwrap(),
            DeviceSource::Serial("root")
        );
        assert_eq!(
            parse_device_source("label:data", "f").unwrap(),
            DeviceSource::Label("data")
        );
        assert_eq!(
            parse_device_source("/dev/vdb", "f").unwrap(),
            DeviceSource::Path("/dev/vdb")
        );
        for bad in ["vda", "serial:", "uuid:1234", "/tmp/x"] {
            let err = parse_device_source(bad, "spec.rootfs.source").unwrap_err();
            assert!(err.to_string().contains("spec.rootfs.source"), "{err}");
        }
        assert!(is_block_source("label:x") && !is_block_source("tmpfs"));
    }

    #[test]
    fn finds_a_disk_by_serial_once_it_appears() {
        let sys = RecordingSyscall::new();
        sys.add_file("/sys/block/vda/serial", "other");
        sys.add_dir("/sys/block/sr0");
        sys.add_file_after_sleeps(4, "/sys/block/vdb/serial", "root\n");
        let dev = find_block_device(&sys, "serial:root", "spec.rootfs.source").unwrap();
        assert_eq!(dev, Path::new("/dev/vdb"));
        assert_eq!(sys.slept(), super::super::POLL_INTERVAL * 4);
    }

    #[test]
    fn long_serials_match_their_virtio_prefix() {
        let sys = RecordingSyscall::new();
        sys.add_file("/sys/block/vdc/serial", "0123456789abcdefghij");
        let dev = find_block_device(&sys, "serial:0123456789abcdefghijKLMN", "f").unwrap();
        assert_eq!(dev, Path::new("/dev/vdc"));
        assert!(!serial_matches("0123456789", "0123456789abcdefghijKLMN"));
    }

    #[test]
    fn finds_a_disk_by_ext_label() {
        let sys = RecordingSyscall::new();
        sys.add_file("/dev/console", "");
        sys.add_file("/dev/vda", vec![0u8; 4096]);
        sys.add_file("/dev/vdb", ext4_image("scratch"));
        sys.add_file("/dev/vdc", ext4_image("rootfs-label-16c"));
        sys.add_file("/dev/sda", [0u8; 10]);
        assert_eq!(
            find_block_device(&sys, "label:rootfs-label-16c", "f").unwrap(),
            Path::new("/dev/vdc")
        );
        assert_eq!(ext_label(&ext4_image("")[1024..]), Some(String::new()));
        assert_eq!(ext_label(&[0u8; 200]), None);
    }

    #[test]
    fn a_missing_disk_is_named() {
        let sys = RecordingSyscall::new();
        sys.add_dir("/sys/block");
        let err = find_block_device(&sys, "serial:root", "spec.rootfs.source").unwrap_err();
        assert_eq!(
            err.to_string(),
            "No block device with virtio-blk serial 'root' (from spec.rootfs.source) within 5 s"
        );
        let err = find_block_device(&sys, "/dev/vdz", "spec.mounts[1].source").unwrap_err();
        assert!(err.to_string().contains("/dev/vdz"));
    }

    #[test]
    fn mounts_moves_and_switches_root() {
        let sys = RecordingSyscall::new();
        sys.add_file("/sys/block/vda/serial", "root");
        sys.add_file("/dev/vda", "");
        // The image has /dev and /proc but no /sys nor /run.
        sys.add_dir("/newroot/dev").add_dir("/newroot/proc");
        sys.add_dir("/sys/fs/cgroup");
        enter_rootfs_with(&sys, &spec("serial:root", false)).unwrap();
        let moved = |from: &str, to: &str| Call::Mount {
            source: Some(from.into()),
            target: to.into(),
            fstype: None,
            flags: MsFlags::MS_MOVE,
            data: None,
        };
        let mkdir = |p: &str| Call::MkdirAll {
            path: p.into(),
            mode: 0o755,
        };
        assert_eq!(
            sys.calls(),
            [
                mkdir("/newroot"),
                mount("/dev/vda", "/newroot", Some("ext4"), MsFlags::empty()),
                moved("/dev", "/newroot/dev"),
                moved("/proc", "/newroot/proc"),
                mkdir("/newroot/sys"),
                moved("/sys", "/newroot/sys"),
                mkdir("/newroot/run"),
                moved("/run", "/newroot/run"),
                Call::Chdir {
                    path: "/newroot".into()
                },
                moved(".", "/"),
                Call::Chroot { path: ".".into() },
                Call::Chdir { path: "/".into() },
                mount(
                    "cgroup2",
                    "/sys/fs/cgroup",
                    Some("cgroup2"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
                ),
            ]
        );
    }

    #[test]
    fn a_read_only_root_must_have_its_mount_points() {
        let sys = RecordingSyscall::new();
        sys.add_file("/dev/vda", "");
        sys.add_dir("/newroot/dev")
            .add_dir("/newroot/proc")
            .add_dir("/newroot/sys");
        let mut s = spec("/dev/vda", true);
        s.rootfs.as_mut().unwrap().fstype = "xfs".into();
        let err = enter_rootfs_with(&sys, &s).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Mount point /run is missing and the root file system is read-only; create it in the image"
        );
        assert_eq!(
            sys.calls()[1],
            mount("/dev/vda", "/newroot", Some("xfs"), MsFlags::MS_RDONLY)
        );
    }

    #[test]
    fn cgroup_failure_is_ignored() {
        let sys = RecordingSyscall::new();
        sys.add_file("/dev/vda", "");
        sys.add_dir("/sys/fs/cgroup");
        sys.fail_when(
            |c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "cgroup2"),
            libc::ENODEV,
        );
        // The boot goes on: Ok, with the root switched before the cgroup
        // mount was tried, and that mount the last (failed) call.
        enter_rootfs_with(&sys, &spec("/dev/vda", false)).unwrap();
        let moved = |from: &str, to: &str| Call::Mount {
            source: Some(from.into()),
            target: to.into(),
            fstype: None,
            flags: MsFlags::MS_MOVE,
            data: None,
        };
        let mkdir = |p: &str| Call::MkdirAll {
            path: p.into(),
            mode: 0o755,
        };
        assert_eq!(
            sys.calls(),
            [
                mkdir("/newroot"),
                mount("/dev/vda", "/newroot", Some("ext4"), MsFlags::empty()),
                mkdir("/newroot/dev"),
                moved("/dev", "/newroot/dev"),
                mkdir("/newroot/proc"),
                moved("/proc", "/newroot/proc"),
                mkdir("/newroot/sys"),
                moved("/sys", "/newroot/sys"),
                mkdir("/newroot/run"),
                moved("/run", "/newroot/run"),
                Call::Chdir {
                    path: "/newroot".into()
                },
                moved(".", "/"),
                Call::Chroot { path: ".".into() },
                Call::Chdir { path: "/".into() },
                mount(
                    "cgroup2",
                    "/sys/fs/cgroup",
                    Some("cgroup2"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
                ),
            ]
        );
    }
}
