//! The initramfs layout: what goes into initrd.img and where.
//!
//! Owns: `/init` (the tether), the fixed directory skeleton, `/dev/console`,
//! the flat `/lib/modules/*.ko` files and `/lib/modules/load-order`. It
//! reads the tether and module files; the byte format belongs to `cpio`.

use std::io;
use std::path::{Path, PathBuf};

use crate::cpio::{self, Archive};
use crate::modules::Module;

/// Directories every container VM needs before the tether mounts anything.
pub const DIRS: &[&str] = &[
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/tmp",
    "/newroot",
    "/lib",
    "/lib/modules",
];

/// Where the modules and their load order live inside the initrd.
pub const MODULES_DIR: &str = "/lib/modules";
pub const LOAD_ORDER: &str = "/lib/modules/load-order";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Tether binary {path} not found: run `make tether` first")]
    TetherMissing { path: PathBuf },
    #[error("Reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Cpio(#[from] cpio::Error),
}

/// Fails early, with the fix, when the tether has not been built.
pub fn check_tether(path: &Path) -> Result<(), Error> {
    if path.is_file() {
        Ok(())
    } else {
        Err(Error::TetherMissing {
            path: path.to_owned(),
        })
    }
}

/// Assembles the archive: `/init` from `tether`, the skeleton, the console
/// node and `modules` in the given (load) order.
pub fn archive(tether: &Path, modules: &[Module]) -> Result<Archive, Error> {
    check_tether(tether)?;
    let mut a = Archive::new();
    for dir in DIRS {
        a.add_dir(dir, 0o755)?;
    }
    // The kernel opens /dev/console for PID 1 before anything is mounted.
    a.add_char_device("/dev/console", 0o600, 5, 1)?;
    a.add_file("/init", 0o755, read(tether)?)?;

    let mut load_order = String::new();
    for m in modules {
        a.add_file(
            &format!("{MODULES_DIR}/{}", m.file_name),
            0o644,
            read(&m.path)?,
        )?;
        load_order.push_str(&m.file_name);
        load_order.push('\n');
    }
    a.add_file(LOAD_ORDER, 0o644, load_order.into_bytes())?;
    Ok(a)
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::tests::parse;

    #[test]
    fn layout_has_init_console_skeleton_and_modules() {
        let dir = tempfile::tempdir().unwrap();
        let tether = dir.path().join("tether");
        std::fs::write(&tether, b"\x7fELF tether").unwrap();
        let ko = |name: &str, body: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).unwrap();
            Module {
                name: name.trim_end_matches(".ko").replace('-', "_"),
                path,
                file_name: name.to_owned(),
            }
        };
        // Load order deliberately not alphabetical.
        let modules = [ko("virtio_ring.ko", b"ring"), ko("virtio-rng.ko", b"rng")];
        let bytes = archive(&tether, &modules).unwrap().to_bytes().unwrap();
        let entries = parse(&bytes);
        let get = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };

        let init = get("init");
        assert_eq!(init.mode(), 0o100755);
        assert_eq!(init.data, b"\x7fELF tether");
        let console = get("dev/console");
        assert_eq!((console.mode(), console.rdev()), (0o020600, (5, 1)));
        for d in DIRS {
            assert_eq!(get(&d[1..]).mode(), 0o040755, "{d}");
        }
        assert_eq!(get("lib/modules/virtio-rng.ko").data, b"rng");
        assert_eq!(get("lib/modules/virtio_ring.ko").mode(), 0o100644);
        assert_eq!(
            get("lib/modules/load-order").data,
            b"virtio_ring.ko\nvirtio-rng.ko\n"
        );
        // Skeleton (8) + console + init + 2 modules + load-order + trailer.
        assert_eq!(entries.len(), 14);
    }

    #[test]
    fn missing_tether_says_to_build_it() {
        let err = archive(Path::new("/nonexistent/tether"), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/tether"), "{msg}");
        assert!(msg.contains("make tether"), "{msg}");
    }
}
