//! Choosing between KVM and TCG.
//!
//! `/dev/kvm` existing proves nothing (a nested guest may hang), so KVM is
//! chosen only after a real boot probe: the bootstrap kernel and initramfs
//! boot with `tether.probe` on the command line under KVM, and the tether
//! must print `tether probe ok` within the time-out. The answer is cached
//! per kernel, initramfs and QEMU binary. An explicit choice (flag or
//! `APPLIANCE_ACCEL`) skips the probe.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// QEMU's `-cpu` for this accelerator. Under TCG: `max`, whose
    /// invariant TSC the microvm kernel needs to calibrate its clock, less
    /// the "fast string" hints (ERMS, FSRM): they make the kernel's and
    /// libc's copies use `rep movsb`, which TCG emulates a byte at a time
    /// (a third of the guest's time on an attach stream, and the raw
    /// virtio-serial link ran at a third of its speed). No program needs
    /// them to run; every instruction set stays.
    pub fn qemu_cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max,-erms,-fsrm",
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, thiserror::Error)]
#[error("Unknown accelerator {0:?}: use auto, kvm or tcg")]
pub struct BadAccel(String);

impl FromStr for AccelChoice {
    type Err = BadAccel;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" | "" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            _ => Err(BadAccel(s.to_string())),
        }
    }
}

pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);

/// Resolves the choice, probing (and caching the probe in `cache_dir`) for
/// `Auto`.
pub async fn resolve(
    choice: AccelChoice,
    qemu: &Path,
    kernel: &Path,
    initrd: &Path,
    cache_dir: Option<&Path>,
) -> Accel {
    match choice {
        AccelChoice::Kvm => return Accel::Kvm,
        AccelChoice::Tcg => return Accel::Tcg,
        AccelChoice::Auto => {}
    }
    let key = cache_key(qemu, kernel, initrd);
    let cache = cache_dir.map(|d| d.join("accel-probe"));
    if let Some(c) = &cache
        && let Ok(text) = std::fs::read_to_string(c)
        && let Some((k, v)) = text.trim().split_once(' ')
        && k == key
    {
        return if v == "kvm" { Accel::Kvm } else { Accel::Tcg };
    }
    let accel = if probe_kvm(qemu, kernel, initrd, PROBE_TIMEOUT).await {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    if let Some(c) = &cache {
        let _ = std::fs::write(c, format!("{key} {}\n", accel.qemu_name()));
    }
    accel
}

fn cache_key(qemu: &Path, kernel: &Path, initrd: &Path) -> String {
    let qemu = which(qemu).unwrap_or_else(|| qemu.to_path_buf());
    [qemu.as_path(), kernel, initrd]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok();
            let mtime = m
                .as_ref()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!(
                "{}:{}:{}",
                p.display(),
                m.map(|m| m.len()).unwrap_or(0),
                mtime
            )
        })
        .collect::<Vec<_>>()
        .join(",")
        .replace(' ', "_")
}

fn which(p: &Path) -> Option<PathBuf> {
    if p.components().count() > 1 {
        return Some(p.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(p))
        .find(|c| c.exists())
}

/// Boots the bootstrap kernel under KVM and waits for the tether's probe
/// line. False on any failure or time-out.
pub async fn probe_kvm(qemu: &Path, kernel: &Path, initrd: &Path, timeout: Duration) -> bool {
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    kvm_usable && probe(qemu, Accel::Kvm, kernel, initrd, timeout).await
}

/// Boots the bootstrap kernel and initramfs with `tether.probe` under
/// `accel`; true once the tether prints its probe line within `timeout`.
pub async fn probe(
    qemu: &Path,
    accel: Accel,
    kernel: &Path,
    initrd: &Path,
    timeout: Duration,
) -> bool {
    let mut cmdline = format!("console=ttyS0 panic=-1 quiet {}", proto::PROBE_CMDLINE);
    if let Some(khz) = super::tsc::guest_tsc_khz(accel) {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let cpu = accel.qemu_cpu();
    let child = Command::new(qemu)
        .args([
            "-M",
            "microvm",
            "-accel",
            accel.qemu_name(),
            "-cpu",
            cpu,
            "-m",
            "128",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = child else { return false };
    let Some(stdout) = child.stdout.take() else {
        return false;
    };
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(timeout, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("tether probe ok") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    let _ = child.start_kill();
    let _ = child.wait().await;
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse() {
        assert_eq!("kvm".parse::<AccelChoice>().unwrap(), AccelChoice::Kvm);
        assert_eq!("tcg".parse::<AccelChoice>().unwrap(), AccelChoice::Tcg);
        assert_eq!("auto".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert!(
            "xen"
                .parse::<AccelChoice>()
                .unwrap_err()
                .to_string()
                .contains("auto, kvm or tcg")
        );
    }

    #[tokio::test]
    async fn explicit_choice_skips_the_probe_and_cache_is_used() {
        let d = tempfile::tempdir().unwrap();
        let none = Path::new("/nonexistent");
        assert_eq!(
            resolve(AccelChoice::Tcg, none, none, none, Some(d.path())).await,
            Accel::Tcg
        );
        assert_eq!(
            resolve(AccelChoice::Kvm, none, none, none, Some(d.path())).await,
            Accel::Kvm
        );
        // A cached answer for the same inputs is taken as is.
        let key = cache_key(none, none, none);
        std::fs::write(d.path().join("accel-probe"), format!("{key} kvm\n")).unwrap();
        assert_eq!(
            resolve(AccelChoice::Auto, none, none, none, Some(d.path())).await,
            Accel::Kvm
        );
    }
}
