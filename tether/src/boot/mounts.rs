//! The pseudo file systems the VM needs before anything else: `/proc`,
//! `/sys`, `/dev`, `/dev/pts`, `/dev/shm`, `/run`, and the `/dev` symlinks.
//!
//! Owns what is mounted where and with which flags in the initramfs. Must not
//! touch the container root file system (`rootfs` moves these mounts into it).

use std::path::Path;

use super::BootError;
use crate::sys::{MsFlags, Syscall};

/// One pseudo file system mount.
struct PseudoMount {
    target: &'static str,
    fstype: &'static str,
    device: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID: MsFlags = MsFlags::MS_NOSUID;
const NODEV: MsFlags = MsFlags::MS_NODEV;
const NOEXEC: MsFlags = MsFlags::MS_NOEXEC;

/// In mount order: a parent before what is mounted inside it.
fn pseudo_mounts() -> [PseudoMount; 6] {
    [
        PseudoMount {
            target: "/proc",
            fstype: "proc",
            device: "proc",
            flags: NOSUID.union(NODEV).union(NOEXEC),
            data: None,
        },
        PseudoMount {
            target: "/sys",
            fstype: "sysfs",
            device: "sysfs",
            flags: NOSUID.union(NODEV).union(NOEXEC),
            data: None,
        },
        PseudoMount {
            target: "/dev",
            fstype: "devtmpfs",
            device: "devtmpfs",
            flags: NOSUID,
            data: Some("mode=0755"),
        },
        PseudoMount {
            target: "/dev/pts",
            fstype: "devpts",
            device: "devpts",
            flags: NOSUID.union(NOEXEC),
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        },
        PseudoMount {
            target: "/dev/shm",
            fstype: "tmpfs",
            device: "shm",
            flags: NOSUID.union(NODEV).union(NOEXEC),
            data: Some("mode=1777"),
        },
        PseudoMount {
            target: "/run",
            fstype: "tmpfs",
            device: "tmpfs",
            flags: NOSUID.union(NODEV),
            data: Some("mode=0755"),
        },
    ]
}

/// `/dev` symlinks as (link, target). An existing entry is left alone
/// (devtmpfs already has a `/dev/ptmx` node, which also works).
const DEV_LINKS: [(&str, &str); 5] = [
    ("/dev/ptmx", "pts/ptmx"),
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

pub(super) fn early_mounts_with(sys: &dyn Syscall) -> Result<(), BootError> {
    for m in pseudo_mounts() {
        let target = Path::new(m.target);
        sys.mkdir_all(target, 0o755)
            .map_err(|source| BootError::CreateDir {
                path: target.to_path_buf(),
                source,
            })?;
        sys.mount(Some(m.device), target, Some(m.fstype), m.flags, m.data)
            .map_err(|source| BootError::Mount {
                device: m.device.to_owned(),
                fstype: m.fstype.to_owned(),
                target: target.to_path_buf(),
                source,
            })?;
    }
    for (link, target) in DEV_LINKS {
        match sys.symlink(Path::new(target), Path::new(link)) {
            Err(e) if e.raw_os_error() != Some(libc::EEXIST) => {
                return Err(BootError::Symlink {
                    link: link.into(),
                    target: target.into(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, Node, RecordingSyscall};
    use std::path::PathBuf;

    fn mounts(sys: &RecordingSyscall) -> Vec<(String, String, Option<String>)> {
        sys.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Mount {
                    target,
                    fstype,
                    data,
                    ..
                } => Some((
                    target.display().to_string(),
                    fstype.unwrap_or_default(),
                    data,
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn mounts_everything_in_order_and_links_dev() {
        let sys = RecordingSyscall::new();
        early_mounts_with(&sys).unwrap();
        let got = mounts(&sys);
        let targets: Vec<&str> = got.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(
            targets,
            ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run"]
        );
        assert_eq!(
            got[3],
            (
                "/dev/pts".into(),
                "devpts".into(),
                Some("newinstance,ptmxmode=0666,mode=0620,gid=5".into())
            )
        );
        assert_eq!(got[4].2.as_deref(), Some("mode=1777"));
        assert_eq!(got[5].2.as_deref(), Some("mode=0755"));
        assert_eq!(sys.node("/dev/shm"), Some(Node::Dir));
        assert_eq!(
            sys.node("/dev/fd"),
            Some(Node::Symlink(PathBuf::from("/proc/self/fd")))
        );
        assert_eq!(
            sys.node("/dev/stderr"),
            Some(Node::Symlink(PathBuf::from("/proc/self/fd/2")))
        );
    }

    #[test]
    fn existing_dev_entries_are_kept() {
        let sys = RecordingSyscall::new();
        sys.add_file("/dev/ptmx", "char device");
        early_mounts_with(&sys).unwrap();
        assert_eq!(
            sys.node("/dev/ptmx"),
            Some(Node::File(b"char device".to_vec()))
        );
        assert!(sys.node("/dev/stdin").is_some());
    }

    #[test]
    fn a_failed_mount_names_its_target() {
        let sys = RecordingSyscall::new();
        sys.fail_when(
            |c| matches!(c, Call::Mount { target, .. } if target == Path::new("/sys")),
            libc::ENODEV,
        );
        let err = early_mounts_with(&sys).unwrap_err();
        assert_eq!(err.to_string(), "Mounting sysfs (sysfs) on /sys");
    }
}
