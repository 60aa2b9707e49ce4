//! Shared helpers for the end-to-end tests: real container VMs under QEMU
//! (TCG), the built-in busybox root filesystem, and the tether client; a
//! local registry (`registry`) and an OCI image builder (`oci_image`).
//!
//! The boot artifacts come from `make iso` (the test command runs it first).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use appliance::backend::local::{Accel, BootArtifacts, BootMode, Launched, VmOptions, vm};
use appliance::keys;
use appliance::storage::busybox::{self, ExtraFile};
use appliance::tether::Client;
use prost::Message;
use proto::v1::{ContainerSpec, SessionSpec};
use russh::keys::PrivateKey;
use tempfile::TempDir;

pub use appliance;
pub use proto;

/// How long a TCG boot may take on a busy machine before a test gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn artifacts() -> BootArtifacts {
    BootArtifacts::find(None).unwrap_or_else(|e| panic!("{e}"))
}

/// The busybox image, built once per test process, with test fixtures:
/// `/bin/notexec` (a script without the execute bit).
pub fn rootfs() -> PathBuf {
    static ROOTFS: OnceLock<(TempDir, PathBuf)> = OnceLock::new();
    ROOTFS
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("busybox.ext4");
            busybox::build(
                &path,
                &[ExtraFile {
                    path: "/bin/notexec".into(),
                    contents: b"#!/bin/sh\necho should not run\n".to_vec(),
                    mode: 0o644,
                }],
            )
            .unwrap_or_else(|e| panic!("building the busybox image: {e}"));
            (dir, path)
        })
        .1
        .clone()
}

/// A session running `args` as root, without stdin.
pub fn session(id: &str, args: &[&str]) -> SessionSpec {
    SessionSpec {
        id: id.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A booted container VM and a connected client.
pub struct TestVm {
    pub launched: Launched,
    pub client: Client,
    pub key: PrivateKey,
    pub dir: TempDir,
}

/// Options for a test VM with `primary` as its primary session.
pub fn options(dir: &TempDir, primary: SessionSpec) -> VmOptions {
    let mut o = VmOptions::new(
        "testvm",
        artifacts(),
        rootfs(),
        dir.path().to_path_buf(),
        primary,
    );
    o.accel = Accel::Tcg;
    o.linger_seconds = 30;
    o
}

/// Launches a VM (without connecting).
pub fn launch(opts: &VmOptions) -> (Launched, PrivateKey) {
    let key = keys::generate().expect("key");
    let l = vm::launch(opts, key.public_key()).unwrap_or_else(|e| panic!("launch: {e}"));
    (l, key)
}

pub async fn boot_with(dir: TempDir, opts: VmOptions) -> TestVm {
    let (mut launched, key) = launch(&opts);
    let client = launched
        .connect(&key, BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    TestVm {
        launched,
        client,
        key,
        dir,
    }
}

/// Boots a VM whose primary session is `primary` and connects to it.
pub async fn boot(primary: SessionSpec) -> TestVm {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir, primary);
    boot_with(dir, opts).await
}

/// Boots `bootstrap.iso` as a CD-ROM in a q35 VM.
pub async fn boot_iso(primary: SessionSpec) -> TestVm {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = options(&dir, primary);
    opts.boot = BootMode::Cdrom;
    boot_with(dir, opts).await
}

/// Boots a VM in maintenance mode (spec `maintenance`): everything mounted,
/// `primary` never started, only the host served.
pub async fn boot_maintenance(primary: SessionSpec) -> TestVm {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = options(&dir, primary);
    let (launched, key) = launch(&opts);
    restart_with(launched, key, dir, |spec| spec.maintenance = true).await
}

/// Restarts a VM on its own disks with a changed spec, and connects. QEMU
/// reads the spec file only when it starts, so a running one is killed
/// first (`VmOptions` has no field for every spec switch a test needs).
pub async fn restart_with(
    mut launched: Launched,
    key: PrivateKey,
    dir: TempDir,
    change: impl FnOnce(&mut ContainerSpec),
) -> TestVm {
    launched.vm.kill().await.expect("stopping QEMU");
    change(&mut launched.spec);
    std::fs::write(&launched.vm.config.spec_file, launched.spec.encode_to_vec())
        .expect("writing the spec");
    launched.vm = appliance::backend::local::qemu::Vm::spawn(launched.vm.config.clone(), false)
        .unwrap_or_else(|e| panic!("restarting QEMU: {e}"));
    let client = launched
        .connect(&key, BOOT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("connecting: {e}"));
    TestVm {
        launched,
        client,
        key,
        dir,
    }
}

impl TestVm {
    /// Waits for QEMU to exit, i.e. for the guest to power off.
    pub async fn powered_off(&mut self, within: Duration) -> bool {
        tokio::time::timeout(within, self.launched.vm.wait())
            .await
            .is_ok()
    }

    pub fn console(&self) -> String {
        self.launched.vm.console()
    }
}
pub mod bench_network;
pub mod bench_storage;
pub mod docker;
pub mod netns;
pub mod oci_image;
pub mod registry;
pub mod server;
