//! Finding the boot artifacts `bootstrap-iso` made: `vmlinuz`, `initrd.img`
//! and `bootstrap.iso`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("Boot artifact {0} is missing; run `make iso` (or set APPLIANCE_BOOT_DIR)")]
pub struct MissingArtifact(pub PathBuf);

#[derive(Debug, Clone)]
pub struct BootArtifacts {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub iso: PathBuf,
}

impl BootArtifacts {
    /// The artifacts in `dir`, or else in `$APPLIANCE_BOOT_DIR`, or else in
    /// the workspace's `build/`.
    pub fn find(dir: Option<&Path>) -> Result<Self, MissingArtifact> {
        let dir = dir
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("APPLIANCE_BOOT_DIR").map(PathBuf::from))
            .unwrap_or_else(default_dir);
        let a = Self {
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
            iso: dir.join("bootstrap.iso"),
        };
        for p in [&a.kernel, &a.initrd] {
            if !p.is_file() {
                return Err(MissingArtifact(p.clone()));
            }
        }
        Ok(a)
    }
}

/// `build/` at the top of the workspace this binary was built from.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../build")
}
