//! The tether's side effects on the VM: mounts, files, kernel modules,
//! hostname, root switching, mount namespaces.
//!
//! Owns the `Syscall` trait, its real implementation (`LinuxSyscall`, via
//! `nix` and `std`) and, for tests, a recording fake (`RecordingSyscall`) that
//! keeps an in-memory file tree and records every call that changes state.
//! Boot logic takes `&dyn Syscall` so that it can be tested without root.
//! This module holds no policy: no paths, no retries, no logging. It must not
//! touch the network (that is `boot::network`, over netlink).

use std::ffi::CString;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

pub use nix::mount::MsFlags;

/// Ownership and permission bits of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid/setgid/sticky (`mode & 0o7777`).
    pub mode: u32,
}

/// The side effects the tether performs on the VM. Reads (`read_file`,
/// `read_at`, `list_dir`, `stat`, `exists`) observe; everything else changes
/// state and is what the fake records.
pub trait Syscall {
    /// mount(2). `source`, `fstype` and `data` may be absent (e.g. `MS_MOVE`).
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// `mkdir -p` with `mode` for the directories it creates.
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Creates `link` pointing at `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Whole contents of a (small) file.
    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `len` bytes at `offset` (a superblock on a block device).
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Creates or truncates `path` (not following a symlink there), writes
    /// `contents` and syncs it.
    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()>;
    /// rename(2): replaces `to` itself, even when it is a symlink.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Whether `path` exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// Entry names of a directory, sorted.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    /// Ownership and mode of `path` (following symlinks).
    fn stat(&self, path: &Path) -> io::Result<Stat>;
    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;
    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Loads the kernel module file at `path` with no parameters.
    /// Loads a module with parameters ("key=value key=value").
    fn finit_module(&self, path: &Path, params: &str) -> io::Result<()>;
    /// Unloads a module without waiting for its users (`O_NONBLOCK`).
    fn delete_module(&self, name: &str) -> io::Result<()>;
    fn sethostname(&self, name: &str) -> io::Result<()>;
    fn chroot(&self, path: &Path) -> io::Result<()>;
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// unshare(CLONE_NEWNS): the calling thread gets a copy of the mount
    /// table of its own (and stops sharing root and working directory).
    fn unshare_mount_namespace(&self) -> io::Result<()>;
    /// umount2(MNT_DETACH): detaches the mount at `path` and everything
    /// mounted under it.
    fn detach_mount(&self, path: &Path) -> io::Result<()>;
    /// Waits; the fake only counts.
    fn sleep(&self, duration: Duration);
    /// Reads a QEMU fw_cfg file straight from the device. `Ok(None)`: no
    /// such file; `Unsupported`: no direct access on this machine.
    fn fw_cfg_file(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
}

/// The real thing.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data)?;
        Ok(())
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        DirBuilder::new().recursive(true).mode(mode).create(path)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = File::open(path)?;
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        file.write_all(contents)?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(path)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn stat(&self, path: &Path) -> io::Result<Stat> {
        let meta = fs::metadata(path)?;
        Ok(Stat {
            uid: meta.uid(),
            gid: meta.gid(),
            mode: meta.mode() & 0o7777,
        })
    }

    fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
    }

    fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::set_permissions(path, Permissions::from_mode(mode))
    }

    fn finit_module(&self, path: &Path, params: &str) -> io::Result<()> {
        let file = File::open(path)?;
        let params = cstring(params)?;
        nix::kmod::finit_module(&file, &params, nix::kmod::ModuleInitFlags::empty())?;
        Ok(())
    }

    fn delete_module(&self, name: &str) -> io::Result<()> {
        let name = cstring(name)?;
        nix::kmod::delete_module(&name, nix::kmod::DeleteModuleFlags::O_NONBLOCK)?;
        Ok(())
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name)?;
        Ok(())
    }

    fn chroot(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chroot(path)?;
        Ok(())
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path)?;
        Ok(())
    }

    fn unshare_mount_namespace(&self) -> io::Result<()> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
        Ok(())
    }

    fn detach_mount(&self, path: &Path) -> io::Result<()> {
        nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH)?;
        Ok(())
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    #[cfg(target_arch = "x86_64")]
    fn fw_cfg_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let mut ports = crate::boot::fw_cfg::IoPorts::open()?;
        crate::boot::fw_cfg::read_file(&mut ports, name)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn fw_cfg_file(&self, _name: &str) -> io::Result<Option<Vec<u8>>> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

#[cfg(test)]
pub use fake::{Call, Node, RecordingSyscall};

#[cfg(test)]
mod fake {
    use super::{MsFlags, Stat, Syscall};
    use std::cell::{Cell, RefCell};
    use std::collections::BTreeMap;
    use std::io;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// One state-changing call, as the fake records it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Mount {
            source: Option<String>,
            target: PathBuf,
            fstype: Option<String>,
            flags: MsFlags,
            data: Option<String>,
        },
        MkdirAll {
            path: PathBuf,
            mode: u32,
        },
        Symlink {
            target: PathBuf,
            link: PathBuf,
        },
        WriteFile {
            path: PathBuf,
            contents: Vec<u8>,
            mode: u32,
        },
        Rename {
            from: PathBuf,
            to: PathBuf,
        },
        Chown {
            path: PathBuf,
            uid: u32,
            gid: u32,
        },
        Chmod {
            path: PathBuf,
            mode: u32,
        },
        FinitModule {
            path: PathBuf,
            params: String,
        },
        DeleteModule {
            name: String,
        },
        Sethostname {
            name: String,
        },
        Chroot {
            path: PathBuf,
        },
        Chdir {
            path: PathBuf,
        },
        UnshareMountNamespace,
        DetachMount {
            path: PathBuf,
        },
    }

    /// A node of the fake file tree.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Node {
        File(Vec<u8>),
        Dir,
        Symlink(PathBuf),
    }

    #[derive(Debug, Clone)]
    struct Entry {
        node: Node,
        stat: Stat,
    }

    type Matcher = Box<dyn Fn(&Call) -> bool>;
    /// Paths (relative to the mount point) and nodes a mount reveals.
    type MountedTree = Vec<(PathBuf, Node, Stat)>;

    /// In-memory `Syscall`: a file tree keyed by absolute path, the list of
    /// state-changing calls, injectable failures, files that appear after a
    /// number of sleeps, and file systems that appear when mounted.
    #[derive(Default)]
    pub struct RecordingSyscall {
        tree: RefCell<BTreeMap<PathBuf, Entry>>,
        calls: RefCell<Vec<Call>>,
        failures: RefCell<Vec<(Matcher, i32)>>,
        delayed: RefCell<Vec<(u32, PathBuf, Node)>>,
        on_mount: RefCell<BTreeMap<PathBuf, MountedTree>>,
        slept: Cell<Duration>,
        fw_cfg: RefCell<Option<BTreeMap<String, Vec<u8>>>>,
    }

    fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    const ROOT_DIR: Stat = Stat {
        uid: 0,
        gid: 0,
        mode: 0o755,
    };

    impl RecordingSyscall {
        /// An empty tree holding only `/`.
        pub fn new() -> Self {
            let fake = Self::default();
            fake.tree.borrow_mut().insert(
                PathBuf::from("/"),
                Entry {
                    node: Node::Dir,
                    stat: ROOT_DIR,
                },
            );
            fake
        }

        fn insert(&self, path: &Path, node: Node, stat: Stat) {
            if let Some(parent) = path.parent() {
                self.ensure_dirs(parent);
            }
            self.tree
                .borrow_mut()
                .insert(path.to_path_buf(), Entry { node, stat });
        }

        fn ensure_dirs(&self, path: &Path) {
            let mut tree = self.tree.borrow_mut();
            for dir in path.ancestors() {
                tree.entry(dir.to_path_buf()).or_insert(Entry {
                    node: Node::Dir,
                    stat: ROOT_DIR,
                });
            }
        }

        /// Adds a file (and its parent directories).
        pub fn add_file(&self, path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> &Self {
            let stat = Stat {
                mode: 0o644,
                ..ROOT_DIR
            };
            self.insert(path.as_ref(), Node::File(contents.as_ref().to_vec()), stat);
            self
        }

        /// Adds a directory (and its parents).
        pub fn add_dir(&self, path: impl AsRef<Path>) -> &Self {
            self.ensure_dirs(path.as_ref());
            self
        }

        /// Adds a directory with the given ownership and mode.
        pub fn add_dir_owned(&self, path: impl AsRef<Path>, stat: Stat) -> &Self {
            self.insert(path.as_ref(), Node::Dir, stat);
            self
        }

        /// Adds a symlink.
        pub fn add_symlink(&self, link: impl AsRef<Path>, target: impl AsRef<Path>) -> &Self {
            let node = Node::Symlink(target.as_ref().to_path_buf());
            self.insert(link.as_ref(), node, ROOT_DIR);
            self
        }

        /// Makes every call matching `when` fail with `code` (an errno).
        pub fn fail_when(&self, when: impl Fn(&Call) -> bool + 'static, code: i32) -> &Self {
            self.failures.borrow_mut().push((Box::new(when), code));
            self
        }

        /// Makes a file appear after `sleeps` calls to `sleep`.
        pub fn add_file_after_sleeps(
            &self,
            sleeps: u32,
            path: impl AsRef<Path>,
            contents: impl AsRef<[u8]>,
        ) -> &Self {
            let node = Node::File(contents.as_ref().to_vec());
            self.delayed
                .borrow_mut()
                .push((sleeps, path.as_ref().to_path_buf(), node));
            self
        }

        /// When something is mounted on `target`, its old contents are hidden
        /// and replaced by `root` (the mounted root's ownership) and `children`
        /// (paths relative to `target`).
        pub fn on_mount(
            &self,
            target: impl AsRef<Path>,
            root: Stat,
            children: &[(&str, Node)],
        ) -> &Self {
            let mut nodes = vec![(PathBuf::new(), Node::Dir, root)];
            for (rel, node) in children {
                nodes.push((PathBuf::from(rel), node.clone(), ROOT_DIR));
            }
            self.on_mount
                .borrow_mut()
                .insert(target.as_ref().to_path_buf(), nodes);
            self
        }

        /// The state-changing calls so far.
        /// Gives the fake a fw_cfg device holding `name`.
        pub fn add_fw_cfg_file(&self, name: &str, contents: impl AsRef<[u8]>) -> &Self {
            self.fw_cfg
                .borrow_mut()
                .get_or_insert_with(BTreeMap::new)
                .insert(name.to_string(), contents.as_ref().to_vec());
            self
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.borrow().clone()
        }

        /// The node at `path`.
        pub fn node(&self, path: impl AsRef<Path>) -> Option<Node> {
            self.tree
                .borrow()
                .get(path.as_ref())
                .map(|e| e.node.clone())
        }

        /// The ownership and mode recorded for `path`.
        pub fn stat_of(&self, path: impl AsRef<Path>) -> Option<Stat> {
            self.tree.borrow().get(path.as_ref()).map(|e| e.stat)
        }

        /// Contents of the file at `path`, as text.
        pub fn text(&self, path: impl AsRef<Path>) -> Option<String> {
            match self.node(path)? {
                Node::File(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                _ => None,
            }
        }

        /// Total time the code under test asked to sleep.
        pub fn slept(&self) -> Duration {
            self.slept.get()
        }

        /// Records `call`; fails it if a failure was injected for it.
        fn record(&self, call: Call) -> io::Result<()> {
            let code = self
                .failures
                .borrow()
                .iter()
                .find(|(when, _)| when(&call))
                .map(|(_, code)| *code);
            self.calls.borrow_mut().push(call);
            match code {
                Some(code) => Err(errno(code)),
                None => Ok(()),
            }
        }

        fn entry(&self, path: &Path) -> io::Result<Entry> {
            self.tree
                .borrow()
                .get(path)
                .cloned()
                .ok_or_else(|| errno(libc::ENOENT))
        }

        fn require_parent_dir(&self, path: &Path) -> io::Result<()> {
            let parent = path.parent().ok_or_else(|| errno(libc::EINVAL))?;
            match self.entry(parent)?.node {
                Node::Dir => Ok(()),
                _ => Err(errno(libc::ENOTDIR)),
            }
        }
    }

    impl Syscall for RecordingSyscall {
        fn mount(
            &self,
            source: Option<&str>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> io::Result<()> {
            self.record(Call::Mount {
                source: source.map(str::to_owned),
                target: target.to_path_buf(),
                fstype: fstype.map(str::to_owned),
                flags,
                data: data.map(str::to_owned),
            })?;
            if flags.contains(MsFlags::MS_MOVE) || flags.contains(MsFlags::MS_REMOUNT) {
                return Ok(());
            }
            let Some(nodes) = self.on_mount.borrow_mut().remove(target) else {
                return Ok(());
            };
            let mut tree = self.tree.borrow_mut();
            tree.retain(|p, _| p == target || !p.starts_with(target));
            for (rel, node, stat) in nodes {
                tree.insert(target.join(rel), Entry { node, stat });
            }
            Ok(())
        }

        fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.record(Call::MkdirAll {
                path: path.to_path_buf(),
                mode,
            })?;
            let mut tree = self.tree.borrow_mut();
            let mut missing = Vec::new();
            for dir in path.ancestors() {
                match tree.get(dir) {
                    Some(Entry {
                        node: Node::Dir, ..
                    }) => break,
                    Some(_) => return Err(errno(libc::EEXIST)),
                    None => missing.push(dir.to_path_buf()),
                }
            }
            for dir in missing {
                let stat = Stat { mode, ..ROOT_DIR };
                tree.insert(
                    dir,
                    Entry {
                        node: Node::Dir,
                        stat,
                    },
                );
            }
            Ok(())
        }

        fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
            self.record(Call::Symlink {
                target: target.to_path_buf(),
                link: link.to_path_buf(),
            })?;
            self.require_parent_dir(link)?;
            if self.tree.borrow().contains_key(link) {
                return Err(errno(libc::EEXIST));
            }
            self.insert(link, Node::Symlink(target.to_path_buf()), ROOT_DIR);
            Ok(())
        }

        fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
            match self.entry(path)?.node {
                Node::File(bytes) => Ok(bytes),
                Node::Dir => Err(errno(libc::EISDIR)),
                Node::Symlink(_) => Err(errno(libc::ELOOP)),
            }
        }

        fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
            let bytes = self.read_file(path)?;
            let start = usize::try_from(offset).map_err(|_| errno(libc::EINVAL))?;
            bytes
                .get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
        }

        fn write_file(&self, path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
            self.record(Call::WriteFile {
                path: path.to_path_buf(),
                contents: contents.to_vec(),
                mode,
            })?;
            self.require_parent_dir(path)?;
            match self.tree.borrow().get(path).map(|e| &e.node) {
                Some(Node::Dir) => return Err(errno(libc::EISDIR)),
                Some(Node::Symlink(_)) => return Err(errno(libc::ELOOP)),
                _ => {}
            }
            let stat = Stat { mode, ..ROOT_DIR };
            self.insert(path, Node::File(contents.to_vec()), stat);
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.record(Call::Rename {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
            })?;
            self.require_parent_dir(to)?;
            let entry = self
                .tree
                .borrow_mut()
                .remove(from)
                .ok_or_else(|| errno(libc::ENOENT))?;
            self.tree.borrow_mut().insert(to.to_path_buf(), entry);
            Ok(())
        }

        fn exists(&self, path: &Path) -> bool {
            self.tree.borrow().contains_key(path)
        }

        fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
            if self.entry(path)?.node != Node::Dir {
                return Err(errno(libc::ENOTDIR));
            }
            Ok(self
                .tree
                .borrow()
                .keys()
                .filter(|p| p.parent() == Some(path))
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect())
        }

        fn stat(&self, path: &Path) -> io::Result<Stat> {
            Ok(self.entry(path)?.stat)
        }

        fn chown(&self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
            self.record(Call::Chown {
                path: path.to_path_buf(),
                uid,
                gid,
            })?;
            let mut tree = self.tree.borrow_mut();
            let entry = tree.get_mut(path).ok_or_else(|| errno(libc::ENOENT))?;
            entry.stat.uid = uid;
            entry.stat.gid = gid;
            Ok(())
        }

        fn chmod(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.record(Call::Chmod {
                path: path.to_path_buf(),
                mode,
            })?;
            let mut tree = self.tree.borrow_mut();
            let entry = tree.get_mut(path).ok_or_else(|| errno(libc::ENOENT))?;
            entry.stat.mode = mode;
            Ok(())
        }

        fn finit_module(&self, path: &Path, params: &str) -> io::Result<()> {
            self.record(Call::FinitModule {
                path: path.to_path_buf(),
                params: params.to_string(),
            })
        }

        fn delete_module(&self, name: &str) -> io::Result<()> {
            self.record(Call::DeleteModule {
                name: name.to_owned(),
            })
        }

        fn sethostname(&self, name: &str) -> io::Result<()> {
            self.record(Call::Sethostname {
                name: name.to_owned(),
            })
        }

        fn chroot(&self, path: &Path) -> io::Result<()> {
            self.record(Call::Chroot {
                path: path.to_path_buf(),
            })
        }

        fn chdir(&self, path: &Path) -> io::Result<()> {
            self.record(Call::Chdir {
                path: path.to_path_buf(),
            })
        }

        fn unshare_mount_namespace(&self) -> io::Result<()> {
            self.record(Call::UnshareMountNamespace)
        }

        fn detach_mount(&self, path: &Path) -> io::Result<()> {
            self.record(Call::DetachMount {
                path: path.to_path_buf(),
            })
        }

        fn fw_cfg_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
            match &*self.fw_cfg.borrow() {
                None => Err(io::ErrorKind::Unsupported.into()),
                Some(files) => Ok(files.get(name).cloned()),
            }
        }

        fn sleep(&self, duration: Duration) {
            self.slept.set(self.slept.get() + duration);
            let mut ready = Vec::new();
            self.delayed.borrow_mut().retain_mut(|(left, path, node)| {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    ready.push((path.clone(), node.clone()));
                    false
                } else {
                    true
                }
            });
            for (path, node) in ready {
                let stat = Stat {
                    mode: 0o644,
                    ..ROOT_DIR
                };
                self.insert(&path, node, stat);
            }
        }
    }

    mod tests {
        use super::*;

        #[test]
        fn mkdir_all_creates_missing_parents_only() {
            let fake = RecordingSyscall::new();
            fake.add_dir("/a");
            fake.mkdir_all(Path::new("/a/b/c"), 0o700).unwrap();
            assert_eq!(fake.node("/a/b"), Some(Node::Dir));
            assert_eq!(fake.stat_of("/a/b/c").unwrap().mode, 0o700);
            assert_eq!(fake.stat_of("/a").unwrap().mode, 0o755);
            fake.add_file("/f", "x");
            assert_eq!(
                fake.mkdir_all(Path::new("/f/g"), 0o755)
                    .unwrap_err()
                    .raw_os_error(),
                Some(libc::EEXIST)
            );
        }

        #[test]
        fn rename_replaces_a_symlink_and_failures_are_injected() {
            let fake = RecordingSyscall::new();
            fake.add_symlink("/etc/hosts", "/run/hosts");
            fake.write_file(Path::new("/etc/.tmp"), b"new", 0o644)
                .unwrap();
            fake.rename(Path::new("/etc/.tmp"), Path::new("/etc/hosts"))
                .unwrap();
            assert_eq!(fake.text("/etc/hosts").unwrap(), "new");
            assert_eq!(fake.node("/etc/.tmp"), None);

            fake.fail_when(|c| matches!(c, Call::Sethostname { .. }), libc::EPERM);
            let err = fake.sethostname("x").unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EPERM));
            assert_eq!(fake.calls().len(), 3);
        }
    }
}
