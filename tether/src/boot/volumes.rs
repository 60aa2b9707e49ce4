//! The container's additional mounts (`spec.mounts`), applied in order
//! inside the container root once it is `/`.
//!
//! Owns resolving each mount's source (block device, pseudo file system or
//! bind path), its flags and data, and keeping the mount point's ownership
//! and mode on a fresh file system. Must not touch the root file system
//! itself or the pseudo file systems `rootfs` moved in.

use std::path::Path;

use proto::v1::{ContainerSpec, Mount};

use super::BootError;
use super::rootfs::{find_block_device, is_block_source};
use crate::sys::{MsFlags, Stat, Syscall};

/// Mount flags and the data string left for the file system.
#[derive(Debug, PartialEq, Eq)]
struct Options {
    flags: MsFlags,
    data: Option<String>,
}

/// Splits `options` like mount(8) does: the generic words become flags,
/// everything else is file system data ("size=64m").
fn parse_options(options: &str, read_only: bool) -> Options {
    let mut flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let mut data = Vec::new();
    for word in options.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let (set, clear) = match word {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            other => {
                data.push(other);
                continue;
            }
        };
        flags = (flags | set) - clear;
    }
    Options {
        flags,
        data: (!data.is_empty()).then(|| data.join(",")),
    }
}

/// A freshly made file system's root: root-owned 0755, holding at most
/// `lost+found`.
fn is_fresh(sys: &dyn Syscall, root: &Path, stat: Stat) -> bool {
    let pristine = Stat {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };
    stat == pristine
        && sys
            .list_dir(root)
            .is_ok_and(|entries| entries.iter().all(|e| e == "lost+found"))
}

fn mount_one(sys: &dyn Syscall, index: usize, m: &Mount) -> Result<(), BootError> {
    let target = Path::new(&m.target);
    let options = parse_options(&m.options, m.read_only);
    let bind = options.flags.contains(MsFlags::MS_BIND);
    let block = !bind && is_block_source(&m.source);
    let (device, fstype) = if block {
        let field = format!("spec.mounts[{index}].source");
        let device = find_block_device(sys, &m.source, &field).map_err(|e| BootError::Volume {
            target: m.target.clone(),
            source: Box::new(e),
        })?;
        let fstype = if m.fstype.is_empty() {
            "ext4"
        } else {
            &m.fstype
        };
        (device.to_string_lossy().into_owned(), fstype.to_owned())
    } else if bind {
        (m.source.clone(), String::new())
    } else {
        let fstype = if m.fstype.is_empty() {
            &m.source
        } else {
            &m.fstype
        };
        if fstype.is_empty() {
            return Err(BootError::InvalidSpec {
                field: format!("spec.mounts[{index}].fstype"),
                problem: format!("is empty and the source of {} names no device", m.target),
            });
        }
        let device = if m.source.is_empty() {
            fstype
        } else {
            &m.source
        };
        (device.clone(), fstype.clone())
    };

    sys.mkdir_all(target, 0o755)
        .map_err(|source| BootError::CreateDir {
            path: target.to_path_buf(),
            source,
        })?;
    let before = if block { sys.stat(target).ok() } else { None };

    let mount_err = |source| BootError::Mount {
        device: device.clone(),
        fstype: if bind {
            "bind".to_owned()
        } else {
            fstype.clone()
        },
        target: target.to_path_buf(),
        source,
    };
    let fs = (!bind).then_some(fstype.as_str());
    let mounted = sys.mount(
        Some(&device),
        target,
        fs,
        options.flags,
        options.data.as_deref(),
    );
    match mounted {
        // A read-only ext4 disk whose journal still holds a crashed
        // writer's transactions cannot be replayed: mount it as it is.
        Err(e)
            if e.raw_os_error() == Some(libc::EROFS)
                && block
                && fstype.starts_with("ext")
                && options.flags.contains(MsFlags::MS_RDONLY) =>
        {
            crate::info!(
                "{device}: journal not clean and the disk is read-only; mounting without it"
            );
            let data = match options.data.as_deref() {
                Some(d) if !d.is_empty() => format!("{d},noload"),
                _ => "noload".to_owned(),
            };
            sys.mount(Some(&device), target, fs, options.flags, Some(&data))
                .map_err(mount_err)?;
        }
        other => other.map_err(mount_err)?,
    }
    if bind && options.flags.contains(MsFlags::MS_RDONLY) {
        // A bind mount takes its flags only on remount.
        let flags = (options.flags - MsFlags::MS_REC) | MsFlags::MS_REMOUNT;
        sys.mount(None, target, None, flags, None)
            .map_err(mount_err)?;
    }

    if let Some(before) = before.filter(|_| !options.flags.contains(MsFlags::MS_RDONLY)) {
        keep_mount_point_owner(sys, target, before)?;
    }
    crate::info!("mounted {device} on {}", m.target);
    Ok(())
}

/// Gives a fresh file system's root the owner and mode the mount point had,
/// so that a volume on e.g. `/var/lib/postgresql` stays usable by its user.
fn keep_mount_point_owner(sys: &dyn Syscall, target: &Path, before: Stat) -> Result<(), BootError> {
    let Ok(after) = sys.stat(target) else {
        return Ok(());
    };
    if after == before || !is_fresh(sys, target, after) {
        return Ok(());
    }
    let err = |source| BootError::Chown {
        path: target.to_path_buf(),
        source,
    };
    sys.chown(target, before.uid, before.gid).map_err(err)?;
    sys.chmod(target, before.mode).map_err(err)
}

pub(super) fn mount_volumes_with(sys: &dyn Syscall, spec: &ContainerSpec) -> Result<(), BootError> {
    for (index, m) in spec.mounts.iter().enumerate() {
        mount_one(sys, index, m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, Node, RecordingSyscall};

    fn spec(mounts: Vec<Mount>) -> ContainerSpec {
        ContainerSpec {
            mounts,
            ..Default::default()
        }
    }

    fn mounts(sys: &RecordingSyscall) -> Vec<Call> {
        sys.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Mount { .. }))
            .collect()
    }

    const POSTGRES: Stat = Stat {
        uid: 999,
        gid: 999,
        mode: 0o700,
    };
    const FRESH: Stat = Stat {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };

    #[test]
    fn options_split_into_flags_and_data() {
        assert_eq!(
            parse_options("size=64m, nosuid,nodev,mode=1777", false),
            Options {
                flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                data: Some("size=64m,mode=1777".into()),
            }
        );
        assert_eq!(parse_options("rw", true).flags, MsFlags::empty());
        assert_eq!(
            parse_options("rbind,ro", false).flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert_eq!(
            parse_options("", false),
            Options {
                flags: MsFlags::empty(),
                data: None
            }
        );
    }

    #[test]
    fn a_read_only_disk_with_a_dirty_journal_mounts_without_it() {
        let sys = RecordingSyscall::new();
        sys.add_file("/sys/block/vdb/serial", "vol-1");
        // The kernel refuses the first try: the journal needs a replay it
        // cannot write.
        sys.fail_when(|c| matches!(c, Call::Mount { data: None, .. }), libc::EROFS);
        let m = Mount {
            source: "serial:vol-1".into(),
            target: "/data".into(),
            read_only: true,
            ..Default::default()
        };
        mount_volumes_with(&sys, &spec(vec![m])).unwrap();
        let data: Vec<_> = mounts(&sys)
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        assert_eq!(data, [None, Some("noload".to_string())]);
        // A writable mount gets no such second try.
        let sys = RecordingSyscall::new();
        sys.add_file("/sys/block/vdb/serial", "vol-1");
        sys.fail_when(|c| matches!(c, Call::Mount { .. }), libc::EROFS);
        let m = Mount {
            source: "serial:vol-1".into(),
            target: "/data".into(),
            ..Default::default()
        };
        assert!(mount_volumes_with(&sys, &spec(vec![m])).is_err());
    }

    #[test]
    fn a_fresh_volume_takes_the_mount_point_owner() {
        let sys = RecordingSyscall::new();
        sys.add_file("/sys/block/vdb/serial", "pgdata");
        sys.add_dir_owned("/var/lib/postgresql/data", POSTGRES);
        sys.on_mount(
            "/var/lib/postgresql/data",
            FRESH,
            &[("lost+found", Node::Dir)],
        );
        let m = Mount {
            source: "serial:pgdata".into(),
            target: "/var/lib/postgresql/data".into(),
            ..Default::default()
        };
        mount_volumes_with(&sys, &spec(vec![m])).unwrap();
        assert_eq!(
            mounts(&sys),
            [Call::Mount {
                source: Some("/dev/vdb".into()),
                target: "/var/lib/postgresql/data".into(),
                fstype: Some("ext4".into()),
                flags: MsFlags::empty(),
                data: None,
            }]
        );
        assert_eq!(sys.stat_of("/var/lib/postgresql/data"), Some(POSTGRES));
    }

    #[test]
    fn a_used_or_read_only_volume_keeps_its_owner() {
        for (children, read_only) in [
            (&[("PG_VERSION", Node::File(vec![]))][..], false),
            (&[][..], true),
        ] {
            let sys = RecordingSyscall::new();
            sys.add_file("/dev/vdb", "");
            sys.add_dir_owned("/data", POSTGRES);
            sys.on_mount("/data", FRESH, children);
            let m = Mount {
                source: "/dev/vdb".into(),
                target: "/data".into(),
                fstype: "xfs".into(),
                read_only,
                ..Default::default()
            };
            mount_volumes_with(&sys, &spec(vec![m])).unwrap();
            assert_eq!(sys.stat_of("/data"), Some(FRESH));
            assert!(!sys.calls().iter().any(|c| matches!(c, Call::Chown { .. })));
        }
    }

    #[test]
    fn pseudo_file_systems_pass_through_and_targets_are_created() {
        let sys = RecordingSyscall::new();
        let tmp = Mount {
            source: "tmpfs".into(),
            target: "/run/app".into(),
            options: "size=64m,noexec".into(),
            ..Default::default()
        };
        let cache = Mount {
            source: String::new(),
            target: "/cache".into(),
            fstype: "tmpfs".into(),
            read_only: true,
            ..Default::default()
        };
        mount_volumes_with(&sys, &spec(vec![tmp, cache])).unwrap();
        assert_eq!(
            mounts(&sys),
            [
                Call::Mount {
                    source: Some("tmpfs".into()),
                    target: "/run/app".into(),
                    fstype: Some("tmpfs".into()),
                    flags: MsFlags::MS_NOEXEC,
                    data: Some("size=64m".into()),
                },
                Call::Mount {
                    source: Some("tmpfs".into()),
                    target: "/cache".into(),
                    fstype: Some("tmpfs".into()),
                    flags: MsFlags::MS_RDONLY,
                    data: None,
                },
            ]
        );
        assert_eq!(sys.node("/run/app"), Some(Node::Dir));
    }

    #[test]
    fn read_only_binds_are_remounted() {
        let sys = RecordingSyscall::new();
        let m = Mount {
            source: "/srv/config".into(),
            target: "/etc/app".into(),
            options: "bind,ro".into(),
            ..Default::default()
        };
        mount_volumes_with(&sys, &spec(vec![m])).unwrap();
        let got = mounts(&sys);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Call::Mount {
                source: None,
                target: "/etc/app".into(),
                fstype: None,
                flags: MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_REMOUNT,
                data: None,
            }
        );
    }

    #[test]
    fn errors_name_the_target() {
        let sys = RecordingSyscall::new();
        sys.add_dir("/sys/block");
        let m = Mount {
            source: "serial:missing".into(),
            target: "/data".into(),
            ..Default::default()
        };
        let err = mount_volumes_with(&sys, &spec(vec![m])).unwrap_err();
        assert_eq!(err.to_string(), "Mounting volume on /data");

        let sys = RecordingSyscall::new();
        sys.fail_when(|c| matches!(c, Call::Mount { .. }), libc::EINVAL);
        let m = Mount {
            source: "tmpfs".into(),
            target: "/scratch".into(),
            ..Default::default()
        };
        let err = mount_volumes_with(&sys, &spec(vec![m])).unwrap_err();
        assert_eq!(err.to_string(), "Mounting tmpfs (tmpfs) on /scratch");

        let m = Mount {
            target: "/x".into(),
            ..Default::default()
        };
        let err = mount_volumes_with(&RecordingSyscall::new(), &spec(vec![m])).unwrap_err();
        assert!(err.to_string().contains("spec.mounts[0].fstype"), "{err}");
    }
}
