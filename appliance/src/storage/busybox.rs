//! The built-in `busybox` image: an ext4 root filesystem made from Debian's
//! `busybox-static`, with a root user and an unprivileged `app` user.
//!
//! Owns building that image from a staging directory with `mke2fs -d`. It
//! must be run as root (file ownership in the image comes from the staging
//! tree).

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const BUSYBOX: &str = "/bin/busybox";
/// The image name users give.
pub const IMAGE_NAME: &str = "busybox";

#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("{0} not found; install Debian's busybox-static")]
    NoBusybox(PathBuf),
    #[error("{0} is not statically linked; install Debian's busybox-static")]
    NotStatic(PathBuf),
    #[error("Staging {path}")]
    Stage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Running {tool}; install Debian's e2fsprogs")]
    Tool {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed: {stderr}")]
    ToolFailed { tool: &'static str, stderr: String },
}

/// An extra file to put in the image.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Path inside the image, absolute.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:Application user:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nusers:x:100:app\nnogroup:x:65534:\n";

fn stage_err(path: &Path) -> impl FnOnce(std::io::Error) -> BusyboxError + '_ {
    move |source| BusyboxError::Stage {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether an ELF64 file names a program interpreter (PT_INTERP), i.e. is
/// dynamically linked. Non-ELF input counts as dynamic.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..usize::from(phnum))
        .any(|i| u32_at(phoff as usize + i * usize::from(phentsize)) == Some(PT_INTERP))
}

/// Builds the image at `out` (ext4, `size_mib` large), replacing it.
pub fn build(out: &Path, size_mib: u32, extra: &[ExtraFile]) -> Result<(), BusyboxError> {
    let busybox = Path::new(BUSYBOX);
    let bytes = std::fs::read(busybox).map_err(|_| BusyboxError::NoBusybox(busybox.into()))?;
    if has_interpreter(&bytes) {
        return Err(BusyboxError::NotStatic(busybox.into()));
    }
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(stage_err(parent))?;
    let stage = tempfile::Builder::new()
        .prefix(".busybox-stage")
        .tempdir_in(parent)
        .map_err(stage_err(parent))?;
    let root = stage.path();
    for (dir, mode) in [
        ("bin", 0o755),
        ("sbin", 0o755),
        ("usr/bin", 0o755),
        ("usr/sbin", 0o755),
        ("etc", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("root", 0o700),
        ("home", 0o755),
        ("home/app", 0o750),
        ("var/tmp", 0o1777),
    ] {
        let p = root.join(dir);
        std::fs::create_dir_all(&p).map_err(stage_err(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(stage_err(&p))?;
    }
    let home = root.join("home/app");
    std::os::unix::fs::chown(&home, Some(1000), Some(1000)).map_err(stage_err(&home))?;
    let bb = root.join("bin/busybox");
    std::fs::write(&bb, &bytes).map_err(stage_err(&bb))?;
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755))
        .map_err(stage_err(&bb))?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|source| BusyboxError::Stage {
            path: busybox.into(),
            source,
        })?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = root.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", &link).map_err(stage_err(&link))?;
        }
    }
    for (path, text) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/hostname", "busybox\n"),
    ] {
        let p = root.join(path);
        std::fs::write(&p, text).map_err(stage_err(&p))?;
    }
    for f in extra {
        let p = root.join(f.path.trim_start_matches('/'));
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(stage_err(d))?;
        }
        std::fs::write(&p, &f.contents).map_err(stage_err(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))
            .map_err(stage_err(&p))?;
    }

    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let r = Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            "rootfs",
            "-E",
            "root_owner=0:0",
        ])
        .arg("-d")
        .arg(root)
        .arg(&tmp)
        .arg(format!("{size_mib}M"))
        .env("E2FSPROGS_FAKE_TIME", "1")
        .output()
        .map_err(|source| BusyboxError::Tool {
            tool: "mke2fs",
            source,
        })?;
    if !r.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(BusyboxError::ToolFailed {
            tool: "mke2fs",
            stderr: String::from_utf8_lossy(&r.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&tmp, out).map_err(stage_err(out))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_elf() {
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
        assert!(has_interpreter(b"not an elf"));
        if let Ok(bb) = std::fs::read(BUSYBOX) {
            assert!(
                !has_interpreter(&bb),
                "busybox-static must not need an interpreter"
            );
        }
    }
}
