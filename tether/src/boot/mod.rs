//! Boot sequence of the container VM, up to the point where the tether can
//! serve the host: pseudo file systems, kernel modules, the container spec,
//! the root file system, identity files, network and volumes.
//!
//! Owns the public steps `main` calls in order and `BootError`. Each step's
//! logic lives in its own submodule and performs its side effects through
//! `crate::sys::Syscall`, so that it can be tested without root; only the
//! network goes straight to netlink. Must not start processes or talk to the
//! host: that comes after boot.

pub mod fw_cfg;
mod identity;
mod modules;
mod mounts;
mod network;
mod rootfs;
mod spec;
mod volumes;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use proto::v1::ContainerSpec;

use crate::sys::{LinuxSyscall, Syscall};

/// How long the tether waits for a device or firmware file to show up.
const DEVICE_WAIT: Duration = Duration::from_secs(5);
/// Pause between two looks while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What went wrong while booting, on which element.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("Creating directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Mounting {device} ({fstype}) on {target}")]
    Mount {
        device: String,
        fstype: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Moving mount {from} to {to}")]
    MoveMount {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Linking {link} to {target}")]
    Symlink {
        link: PathBuf,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "Spec source '{value}' in {key}= on the kernel command line is not supported; expected fw_cfg:NAME"
    )]
    SpecSource { key: &'static str, value: String },
    #[error(
        "Container spec not found: no fw_cfg file {name} at {path} ({origin}); start QEMU with -fw_cfg name={name},file=SPEC"
    )]
    SpecMissing {
        name: String,
        path: PathBuf,
        origin: String,
    },
    #[error("Decoding the container spec from fw_cfg file {name}")]
    SpecDecode {
        name: String,
        #[source]
        source: prost::DecodeError,
    },
    #[error("Invalid container spec: {field} {problem}")]
    InvalidSpec { field: String, problem: String },
    #[error(
        "Device source '{value}' in {field} is not supported; expected serial:NAME, label:NAME or /dev/PATH"
    )]
    DeviceSource { field: String, value: String },
    #[error("No block device {wanted} (from {field}) within 5 s")]
    DeviceNotFound { field: String, wanted: String },
    #[error(
        "Mount point {path} is missing and the root file system is read-only; create it in the image"
    )]
    MissingMountPoint { path: PathBuf },
    #[error("Switching root: {step} {path}")]
    SwitchRoot {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Setting hostname to '{name}'")]
    Hostname {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("Opening a netlink connection")]
    Netlink(#[source] io::Error),
    #[error("No network interface {wanted} for network '{network}' within 5 s")]
    LinkNotFound { network: String, wanted: String },
    #[error("{action} on interface {iface}")]
    Link {
        action: String,
        iface: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Setting ownership of {path} to match the mount point")]
    Chown {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Mounting volume on {target}")]
    Volume {
        target: String,
        #[source]
        source: Box<BootError>,
    },
}

/// Whether the host only probes that the VM boots (`tether.probe` on the
/// kernel command line). Needs `/proc`.
pub fn probe_requested() -> bool {
    spec::probe_requested_with(&LinuxSyscall)
}

/// Mounts `/proc`, `/sys`, `/dev` (+ `pts`, `shm`) and `/run` in the
/// initramfs and adds the usual `/dev` symlinks.
pub fn early_mounts() -> Result<(), BootError> {
    mounts::early_mounts_with(&LinuxSyscall)
}

/// Loads the modules listed in `/lib/modules/load-order`; returns the names
/// that are loaded. A module that fails is logged and skipped.
pub fn load_modules() -> Result<Vec<String>, BootError> {
    modules::load_modules_with(&LinuxSyscall)
}

/// Reads, decodes and validates the container spec from where the kernel
/// command line says (default: fw_cfg), then hides the source.
pub fn read_spec() -> Result<ContainerSpec, BootError> {
    spec::read_spec_with(&LinuxSyscall)
}

/// Whether the spec asks for maintenance mode (no process, only serving
/// the host): `spec.maintenance`, or no primary session.
pub fn maintenance(spec: &ContainerSpec) -> bool {
    spec::maintenance(spec)
}

/// Mounts the container root file system, moves the pseudo file systems
/// into it and makes it `/`.
pub fn enter_rootfs(spec: &ContainerSpec) -> Result<(), BootError> {
    rootfs::enter_rootfs_with(&LinuxSyscall, spec)
}

/// Sets the hostname and writes `/etc/hostname`, `/etc/hosts` and, when the
/// spec has name servers, `/etc/resolv.conf`.
pub fn write_identity(spec: &ContainerSpec) -> Result<(), BootError> {
    identity::write_identity_with(&LinuxSyscall, spec)
}

/// Brings up `lo` and every interface of `spec.networks` with its
/// addresses, MTU and default route.
pub async fn configure_network(spec: &ContainerSpec) -> Result<(), BootError> {
    network::configure_network(spec).await
}

/// Mounts `spec.mounts` in order inside the container root.
pub fn mount_volumes(spec: &ContainerSpec) -> Result<(), BootError> {
    volumes::mount_volumes_with(&LinuxSyscall, spec)
}

/// Calls `probe` until it returns something or `timeout` has passed,
/// sleeping `POLL_INTERVAL` in between (through `sys`, so tests don't wait).
fn poll<T>(
    sys: &dyn Syscall,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let attempts = timeout.as_millis() / POLL_INTERVAL.as_millis();
    for attempt in 0..=attempts {
        if let Some(found) = probe() {
            return Some(found);
        }
        if attempt < attempts {
            sys.sleep(POLL_INTERVAL);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RecordingSyscall;

    #[test]
    fn poll_gives_up_after_the_timeout() {
        let sys = RecordingSyscall::new();
        let mut looks = 0;
        let found: Option<()> = poll(&sys, DEVICE_WAIT, || {
            looks += 1;
            None
        });
        assert!(found.is_none());
        assert_eq!(looks, 51);
        assert_eq!(sys.slept(), DEVICE_WAIT);
    }

    #[test]
    fn poll_returns_as_soon_as_found() {
        let sys = RecordingSyscall::new();
        let mut looks = 0;
        let found = poll(&sys, DEVICE_WAIT, || {
            looks += 1;
            (looks == 3).then_some(looks)
        });
        assert_eq!(found, Some(3));
        assert_eq!(sys.slept(), POLL_INTERVAL * 2);
    }

    #[test]
    fn errors_name_the_element() {
        let err = BootError::InvalidSpec {
            field: "spec.keys.authorized_key".into(),
            problem: "is empty".into(),
        };
        assert_eq!(
            err.to_string(),
            "Invalid container spec: spec.keys.authorized_key is empty"
        );
        let err = BootError::Mount {
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
            target: "/newroot".into(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(err.to_string(), "Mounting /dev/vda (ext4) on /newroot");
    }
}
