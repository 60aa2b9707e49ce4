//! Container disks: a copy-on-write qcow2 overlay over a read-only base
//! image, so that creating a container costs the same whatever the image.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("Running qemu-img; install Debian's qemu-utils")]
    Spawn(#[source] std::io::Error),
    #[error("qemu-img create {path} failed: {stderr}")]
    Failed { path: PathBuf, stderr: String },
}

/// Creates `overlay` (qcow2) backed by the raw image `base`.
pub fn overlay(base: &Path, overlay: &Path) -> Result<(), DiskError> {
    let base = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    let r = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(overlay)
        .output()
        .map_err(DiskError::Spawn)?;
    if !r.status.success() {
        return Err(DiskError::Failed {
            path: overlay.to_path_buf(),
            stderr: String::from_utf8_lossy(&r.stderr).trim().to_string(),
        });
    }
    Ok(())
}
