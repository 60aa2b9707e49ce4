//! Kernel modules shipped in the initramfs (virtio, vsock, ext4, fw_cfg, …).
//!
//! Owns reading `/lib/modules/load-order` and loading each module it lists,
//! in that order. Must not decide which modules exist: the image build writes
//! the list in dependency order.

use std::io;
use std::path::Path;

use super::BootError;
use crate::sys::Syscall;

const MODULE_DIR: &str = "/lib/modules";
const LOAD_ORDER: &str = "/lib/modules/load-order";

/// The module file names of a load-order file: one per line, blank lines and
/// `#` comments skipped.
fn parse_load_order(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The parameters the kernel command line gives module `module` (the
/// `module.param=value` words), as finit_module wants them. The kernel
/// applies these only to built-in code; for a loaded module the loader must
/// pass them (modprobe does the same). `-` and `_` are the same in names.
fn cmdline_params(cmdline: &str, module: &str) -> String {
    let norm = |s: &str| s.replace('-', "_");
    let module = norm(module);
    cmdline
        .split_whitespace()
        .filter_map(|w| {
            let (name, param) = w.split_once('.')?;
            (norm(name) == module && !param.is_empty()).then_some(param)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn load_modules_with(sys: &dyn Syscall) -> Result<Vec<String>, BootError> {
    let cmdline = sys
        .read_file(Path::new("/proc/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let list = match sys.read_file(Path::new(LOAD_ORDER)) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            crate::info!("no {LOAD_ORDER}: loading no kernel modules");
            return Ok(Vec::new());
        }
        Err(source) => {
            return Err(BootError::Read {
                path: LOAD_ORDER.into(),
                source,
            });
        }
    };
    let mut loaded = Vec::new();
    for name in parse_load_order(&list) {
        if name.contains('/') || name == ".." {
            crate::error!("{LOAD_ORDER}: '{name}' is not a file name; skipped");
            continue;
        }
        let path = Path::new(MODULE_DIR).join(name);
        let params = cmdline_params(&cmdline, name.trim_end_matches(".ko"));
        match sys.finit_module(&path, &params) {
            Ok(()) => loaded.push(name.to_owned()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => loaded.push(name.to_owned()),
            Err(e) => crate::error!("loading kernel module {}: {e}", path.display()),
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};
    use std::path::PathBuf;

    #[test]
    fn loads_in_order_and_continues_past_failures() {
        let sys = RecordingSyscall::new();
        sys.add_file(
            LOAD_ORDER,
            "virtio_ring.ko\n# comment\n\n virtio_blk.ko \nvmw_vsock_vmci_transport.ko\nqemu_fw_cfg.ko\n../evil.ko\n",
        );
        sys.fail_when(
            |c| matches!(c, Call::FinitModule { path, .. } if path.ends_with("vmw_vsock_vmci_transport.ko")),
            libc::ENODEV,
        );
        sys.fail_when(
            |c| matches!(c, Call::FinitModule { path, .. } if path.ends_with("qemu_fw_cfg.ko")),
            libc::EEXIST,
        );
        let loaded = load_modules_with(&sys).unwrap();
        assert_eq!(
            loaded,
            ["virtio_ring.ko", "virtio_blk.ko", "qemu_fw_cfg.ko"]
        );
        let tried: Vec<PathBuf> = sys
            .calls()
            .into_iter()
            .map(|c| match c {
                Call::FinitModule { path, .. } => path,
                other => panic!("unexpected call {other:?}"),
            })
            .collect();
        assert_eq!(
            tried,
            [
                "/lib/modules/virtio_ring.ko",
                "/lib/modules/virtio_blk.ko",
                "/lib/modules/vmw_vsock_vmci_transport.ko",
                "/lib/modules/qemu_fw_cfg.ko",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn command_line_parameters_reach_their_module() {
        let cmdline = "console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 quiet \
                       virtio-mmio.device=512@0xfeb00c00:11 virtio_blk.queue_depth=64 virtio_mmio";
        assert_eq!(
            cmdline_params(cmdline, "virtio_mmio"),
            "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
        );
        assert_eq!(cmdline_params(cmdline, "virtio_blk"), "queue_depth=64");
        assert_eq!(cmdline_params(cmdline, "virtio"), "");

        let sys = RecordingSyscall::new();
        sys.add_file("/proc/cmdline", cmdline);
        sys.add_file(LOAD_ORDER, "virtio.ko\nvirtio_mmio.ko\n");
        load_modules_with(&sys).unwrap();
        let params: Vec<String> = sys
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::FinitModule { params, .. } => Some(params),
                _ => None,
            })
            .collect();
        assert_eq!(
            params,
            ["", "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"]
        );
    }

    #[test]
    fn no_load_order_file_loads_nothing() {
        let sys = RecordingSyscall::new();
        assert!(load_modules_with(&sys).unwrap().is_empty());
        assert!(sys.calls().is_empty());
    }
}
