//! The file system as archive transfers see it: the container root with
//! its volumes and tmpfs mounts, without the kernel file systems.
//!
//! Owns entering that view (a private mount namespace for the calling
//! thread, in which `/proc`, `/sys` and `/dev` are detached, so that a tar
//! can neither read nor write through them, e.g. `proc/sysrq-trigger`), and
//! the checks on requested paths: what they are (`stat`) and whether they
//! can take a PUT (`destination`). Must not read or write file contents:
//! that is the `archive` crate's job.
//!
//! The tether's own files need no such care: they stay in the initramfs,
//! underneath the container root (`boot::rootfs`), where no path reaches.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use proto::v1::PathStat;

use crate::sys::{MsFlags, Syscall};

/// Kernel file systems left out of the view, with what they hold mounted
/// under them (`/dev/pts`, `/dev/shm`, `/sys/fs/cgroup`).
pub const HIDDEN: [&str; 3] = ["/proc", "/sys", "/dev"];

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("The path is empty")]
    Empty,
    #[error("{path:?} is inside {hidden}, a kernel file system that copies do not reach")]
    Hidden { path: String, hidden: &'static str },
    #[error("{path:?} does not exist in the container")]
    Missing { path: String },
    #[error("{path:?} is not a directory")]
    NotDirectory { path: String },
    #[error(
        "{path:?} is a symlink (to {target:?}), which a copy does not follow: give the directory itself"
    )]
    Symlink { path: String, target: String },
    #[error("Cannot look up {path:?}")]
    Lookup {
        path: String,
        #[source]
        error: io::Error,
    },
    #[error("Cannot hide the kernel file systems from the copy: {step}")]
    Enter {
        step: String,
        #[source]
        error: io::Error,
    },
}

/// The container root as a transfer sees it.
#[derive(Debug)]
pub struct View {
    root: PathBuf,
}

impl View {
    /// Moves the calling thread into a mount namespace of its own without
    /// the kernel file systems, and returns the view of `/` there. The
    /// namespace lives as long as the thread: call this on a thread that
    /// ends with the transfer, never on a pooled one.
    pub fn enter(sys: &dyn Syscall) -> Result<Self, ViewError> {
        let fail = |step: String| move |error| ViewError::Enter { step, error };
        sys.unshare_mount_namespace()
            .map_err(fail("unsharing the mount namespace".into()))?;
        // Nothing done here may reach the container's own mounts.
        sys.mount(
            None,
            Path::new("/"),
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        )
        .map_err(fail("making the mounts private".into()))?;
        for hidden in HIDDEN {
            match sys.detach_mount(Path::new(hidden)) {
                // Not a mount point (EINVAL) or absent: nothing to hide.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                r => r.map_err(fail(format!("detaching {hidden}")))?,
            }
        }
        Ok(Self::at("/"))
    }

    /// A view of the tree at `root` as it is (tests).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the container path `path` is: inside the root, relative paths
    /// from it. A trailing "/" is kept (it makes a final symlink followed).
    fn locate(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// Checks a requested path before anything is looked up: not empty,
    /// not inside a hidden kernel file system (judged on the path as written,
    /// `..` applied).
    pub fn check(&self, path: &str) -> Result<(), ViewError> {
        if path.is_empty() {
            return Err(ViewError::Empty);
        }
        let normal = normalize(path);
        match hidden_prefix(&normal) {
            Some(hidden) => Err(ViewError::Hidden {
                path: path.to_owned(),
                hidden,
            }),
            None => Ok(()),
        }
    }

    /// What `path` is (not following a final symlink unless the path ends
    /// in "/"), for GET and STAT.
    pub fn stat(&self, path: &str) -> Result<PathStat, ViewError> {
        self.check(path)?;
        let at = self.locate(path);
        let meta = std::fs::symlink_metadata(&at).map_err(|e| lookup(path, e))?;
        let link_target = if meta.file_type().is_symlink() {
            std::fs::read_link(&at)
                .map_err(|e| lookup(path, e))?
                .to_string_lossy()
                .into_owned()
        } else {
            String::new()
        };
        Ok(PathStat {
            name: base_name(path),
            size: meta.size() as i64,
            mode: meta.mode(),
            mtime_unix_nanos: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            link_target,
        })
    }

    /// Checks the destination of a PUT: an existing directory that is not
    /// itself a symlink (with or without a trailing "/"), not inside a
    /// hidden kernel file system. Symlinks on the way to it are resolved
    /// inside the container (its root is the view's root). Returns where to
    /// unpack, with those resolved, and what the directory is.
    pub fn destination(&self, path: &str) -> Result<(PathBuf, PathStat), ViewError> {
        self.check(path)?;
        let at = self.locate(path.trim_end_matches('/'));
        if let Ok(target) = std::fs::read_link(&at) {
            return Err(ViewError::Symlink {
                path: path.to_owned(),
                target: target.to_string_lossy().into_owned(),
            });
        }
        let meta = std::fs::metadata(&at).map_err(|e| lookup(path, e))?;
        if !meta.is_dir() {
            return Err(ViewError::NotDirectory {
                path: path.to_owned(),
            });
        }
        let real = std::fs::canonicalize(&at).map_err(|e| lookup(path, e))?;
        let root = std::fs::canonicalize(&self.root).map_err(|e| lookup("/", e))?;
        // A symlink may lead into a hidden file system: judge where it ends.
        if let Ok(inside) = real.strip_prefix(&root) {
            let inside = Path::new("/").join(inside);
            if let Some(hidden) = hidden_prefix(&inside) {
                return Err(ViewError::Hidden {
                    path: path.to_owned(),
                    hidden,
                });
            }
        }
        let stat = PathStat {
            name: base_name(path),
            size: meta.size() as i64,
            mode: meta.mode(),
            mtime_unix_nanos: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            link_target: String::new(),
        };
        Ok((real, stat))
    }
}

fn lookup(path: &str, error: io::Error) -> ViewError {
    match error.raw_os_error() {
        Some(libc::ENOENT) => ViewError::Missing {
            path: path.to_owned(),
        },
        // A component on the way is a file.
        Some(libc::ENOTDIR) => ViewError::NotDirectory {
            path: path.to_owned(),
        },
        _ => ViewError::Lookup {
            path: path.to_owned(),
            error,
        },
    }
}

/// `path` made absolute with "." and ".." applied, symlinks not followed.
fn normalize(path: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn hidden_prefix(path: &Path) -> Option<&'static str> {
    HIDDEN.into_iter().find(|h| path.starts_with(h))
}

/// The last component of `path` as requested, as docker names it: "/" for
/// the root.
fn base_name(path: &str) -> String {
    match path.trim_end_matches('/').rsplit('/').next() {
        Some("") | None => "/".to_owned(),
        Some(name) => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};

    #[test]
    fn entering_detaches_the_kernel_file_systems_privately() {
        let sys = RecordingSyscall::new();
        // /dev is not a mount point here: that is no error.
        sys.fail_when(
            |c| matches!(c, Call::DetachMount { path } if path == Path::new("/dev")),
            libc::EINVAL,
        );
        let view = View::enter(&sys).unwrap();
        assert_eq!(view.root(), Path::new("/"));
        let detach = |p: &str| Call::DetachMount { path: p.into() };
        assert_eq!(
            sys.calls(),
            [
                Call::UnshareMountNamespace,
                Call::Mount {
                    source: None,
                    target: "/".into(),
                    fstype: None,
                    flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    data: None,
                },
                detach("/proc"),
                detach("/sys"),
                detach("/dev"),
            ]
        );
    }

    #[test]
    fn a_view_that_cannot_hide_them_is_refused() {
        let sys = RecordingSyscall::new();
        sys.fail_when(|c| matches!(c, Call::DetachMount { .. }), libc::EBUSY);
        let err = View::enter(&sys).unwrap_err();
        assert!(
            err.to_string().contains("detaching /proc"),
            "{err}: the copy must not go ahead"
        );
        let sys = RecordingSyscall::new();
        sys.fail_when(|c| matches!(c, Call::UnshareMountNamespace), libc::EPERM);
        assert!(matches!(View::enter(&sys), Err(ViewError::Enter { .. })));
    }

    #[test]
    fn paths_in_hidden_file_systems_are_refused_as_written() {
        let view = View::at("/nonexistent");
        for bad in [
            "/proc",
            "/proc/sysrq-trigger",
            "sys/kernel",
            "/tmp/../dev/shm",
        ] {
            let err = view.check(bad).unwrap_err();
            assert!(matches!(err, ViewError::Hidden { .. }), "{bad}: {err}");
        }
        let err = view.check("/proc/1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"/proc/1\" is inside /proc, a kernel file system that copies do not reach"
        );
        for good in ["/", "/tmp", "/device", "/procs/x", "/proc/.."] {
            assert!(view.check(good).is_ok(), "{good}");
        }
        assert!(matches!(view.check(""), Err(ViewError::Empty)));
    }

    #[test]
    fn stat_tells_what_a_path_is() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/passwd"), b"root:x:0:0\n").unwrap();
        std::os::unix::fs::symlink("etc/passwd", t.path().join("link")).unwrap();
        let view = View::at(t.path());
        let st = view.stat("/etc/passwd").unwrap();
        assert_eq!((st.name.as_str(), st.size), ("passwd", 11));
        assert_eq!(st.mode & libc::S_IFMT, libc::S_IFREG);
        let st = view.stat("etc/").unwrap();
        assert_eq!(st.name, "etc");
        assert_eq!(st.mode & libc::S_IFMT, libc::S_IFDIR);
        let st = view.stat("/link").unwrap();
        assert_eq!(st.mode & libc::S_IFMT, libc::S_IFLNK);
        assert_eq!(st.link_target, "etc/passwd");
        assert_eq!(view.stat("/").unwrap().name, "/");
        let err = view.stat("/etc/nope").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"/etc/nope\" does not exist in the container"
        );
    }

    #[test]
    fn a_put_needs_an_existing_directory_outside_hidden_ones() {
        let t = tempfile::tempdir().unwrap();
        for d in ["tmp/sub", "proc/sys"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(t.path().join("tmp/file"), b"x").unwrap();
        std::os::unix::fs::symlink("tmp/sub", t.path().join("to-sub")).unwrap();
        std::os::unix::fs::symlink("proc", t.path().join("to-proc")).unwrap();
        std::os::unix::fs::symlink("tmp", t.path().join("to-tmp")).unwrap();
        let view = View::at(t.path());

        let (real, st) = view.destination("/tmp/sub").unwrap();
        assert_eq!(real, t.path().canonicalize().unwrap().join("tmp/sub"));
        assert_eq!(
            (st.name.as_str(), st.mode & libc::S_IFMT),
            ("sub", libc::S_IFDIR)
        );
        // Symlinks on the way are resolved in the container...
        let (real, _) = view.destination("/to-tmp/sub").unwrap();
        assert_eq!(real, t.path().canonicalize().unwrap().join("tmp/sub"));

        let msg = |p: &str| view.destination(p).unwrap_err().to_string();
        // ...but the destination itself is never a symlink that is followed.
        for link in ["/to-sub", "/to-sub/", "to-sub//"] {
            assert!(
                matches!(view.destination(link), Err(ViewError::Symlink { .. })),
                "{link}"
            );
        }
        assert_eq!(
            msg("/to-sub"),
            "\"/to-sub\" is a symlink (to \"tmp/sub\"), which a copy does not follow: \
             give the directory itself"
        );
        assert_eq!(msg("/tmp/file"), "\"/tmp/file\" is not a directory");
        assert_eq!(msg("/tmp/file/x"), "\"/tmp/file/x\" is not a directory");
        assert_eq!(msg("/nope"), "\"/nope\" does not exist in the container");
        assert!(
            msg("/to-proc/sys").contains("inside /proc"),
            "{}",
            msg("/to-proc/sys")
        );
    }

    #[test]
    fn names_are_the_last_component_as_requested() {
        assert_eq!(base_name("/etc/passwd"), "passwd");
        assert_eq!(base_name("/etc/"), "etc");
        assert_eq!(base_name("/etc/."), ".");
        assert_eq!(base_name("//"), "/");
        assert_eq!(normalize("a/./b/../../../c"), Path::new("/c"));
    }
}
