//! Builds the boot artifacts of a container VM, reproducibly: the kernel
//! (`vmlinuz`), the initramfs (`initrd.img`: the tether as `/init` plus the
//! kernel modules it loads) and `bootstrap.iso` (isolinux, for vSphere).
//!
//! This file owns the build sequence and progress reporting only; each step
//! lives in its own module. Nothing here touches the host outside the
//! output directory.

pub mod cpio;
pub mod initrd;
pub mod iso;
pub mod kernel;
pub mod modules;
pub mod output;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use kernel::Kernel;

/// The modules every container VM needs; built-in ones are skipped.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "virtio_rng",
    "qemu_fw_cfg",
    "vsock",
    "vmw_vsock_virtio_transport",
    "ext4",
    "crc32c_generic",
];

/// Kernel command line of the ISO boot entry.
pub const ISO_CMDLINE: &str = "console=ttyS0 panic=-1 quiet tether.spec=fw_cfg:opt/org.tether/spec";

/// Where the default kernel is looked for.
pub const BOOT_DIR: &str = "/boot";
/// Default path of the static tether binary (`make tether`).
pub const DEFAULT_TETHER: &str = "build/tether";

/// Artifact file names in the output directory.
pub const KERNEL_NAME: &str = "vmlinuz";
pub const INITRD_NAME: &str = "initrd.img";
pub const ISO_NAME: &str = "bootstrap.iso";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Modules(#[from] modules::Error),
    #[error(transparent)]
    Initrd(#[from] initrd::Error),
    #[error(transparent)]
    Iso(#[from] iso::Error),
    #[error(transparent)]
    Output(#[from] output::Error),
}

/// What to build and from what.
#[derive(Debug, Clone)]
pub struct Options {
    /// Output directory; created if missing.
    pub out: PathBuf,
    /// The static tether binary, packed as `/init`.
    pub tether: PathBuf,
    /// Kernel image; `None` = newest `/boot/vmlinuz-*-cloud-amd64`.
    pub kernel: Option<PathBuf>,
    /// Modules directory; `None` = `/lib/modules/<kernel version>`.
    pub modules_dir: Option<PathBuf>,
    /// Also build `bootstrap.iso`.
    pub iso: bool,
    /// Modules to include; empty = [`DEFAULT_MODULES`].
    pub modules: Vec<String>,
}

impl Options {
    /// Defaults for everything but the output directory.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            tether: PathBuf::from(DEFAULT_TETHER),
            kernel: None,
            modules_dir: None,
            iso: true,
            modules: Vec::new(),
        }
    }
}

/// Paths of the artifacts written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifacts {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub iso: Option<PathBuf>,
}

/// Builds the artifacts into `opts.out`, calling `progress` with one line
/// per step and a final summary. All inputs are checked before anything
/// is written.
pub fn build(opts: &Options, progress: &mut dyn FnMut(&str)) -> Result<Artifacts, Error> {
    let started = Instant::now();
    initrd::check_tether(&opts.tether)?;
    let kernel = match &opts.kernel {
        Some(path) => Kernel::at(path)?,
        None => Kernel::find_default(Path::new(BOOT_DIR))?,
    };
    let modules_dir = match &opts.modules_dir {
        Some(dir) => dir.clone(),
        None => kernel.default_modules_dir()?,
    };
    let tools = opts.iso.then(iso::Tools::system).transpose()?;
    let requested: Vec<&str> = if opts.modules.is_empty() {
        DEFAULT_MODULES.to_vec()
    } else {
        opts.modules.iter().map(String::as_str).collect()
    };
    let steps = if opts.iso { 4 } else { 3 };
    output::create_dir(&opts.out)?;

    progress(&format!(
        "[1/{steps}] resolving {} modules from {}",
        requested.len(),
        modules_dir.display()
    ));
    let resolution = modules::Index::load(&modules_dir)?.resolve(&requested)?;

    progress(&format!(
        "[2/{steps}] copying kernel {}",
        kernel.path.display()
    ));
    let kernel_out = output::write_atomic(&opts.out, KERNEL_NAME, |f| {
        io::copy(&mut File::open(&kernel.path)?, f).map(drop)
    })?;

    progress(&format!(
        "[3/{steps}] writing {INITRD_NAME}: /init from {} + {} modules ({} built in: {})",
        opts.tether.display(),
        resolution.modules.len(),
        resolution.builtin.len(),
        resolution.builtin.join(", ")
    ));
    let archive = initrd::archive(&opts.tether, &resolution.modules)?;
    let bytes = archive.to_bytes().map_err(initrd::Error::from)?;
    let initrd_out = output::write_atomic(&opts.out, INITRD_NAME, |f| f.write_all(&bytes))?;

    let iso_out = match tools {
        Some(tools) => {
            progress(&format!(
                "[4/{steps}] building {ISO_NAME} with {}",
                tools.xorriso.display()
            ));
            let scratch = output::scratch_dir(&opts.out, ISO_NAME)?;
            let tmp = scratch.path().join(ISO_NAME);
            iso::build(
                &tools,
                &kernel_out,
                &initrd_out,
                ISO_CMDLINE,
                scratch.path(),
                &tmp,
            )?;
            Some(output::install(&tmp, &opts.out, ISO_NAME)?)
        }
        None => None,
    };

    let mut summary = format!(
        "built {} in {:.1}s: {KERNEL_NAME} {}, {INITRD_NAME} {}",
        opts.out.display(),
        started.elapsed().as_secs_f64(),
        size_of(&kernel_out),
        size_of(&initrd_out),
    );
    if let Some(iso) = &iso_out {
        summary.push_str(&format!(", {ISO_NAME} {}", size_of(iso)));
    }
    progress(&summary);
    Ok(Artifacts {
        kernel: kernel_out,
        initrd: initrd_out,
        iso: iso_out,
    })
}

fn size_of(path: &Path) -> String {
    match std::fs::metadata(path) {
        Ok(m) => human_size(m.len()),
        Err(_) => "(size unknown)".to_owned(),
    }
}

/// `14186432` -> `13.5 MiB (14186432 bytes)`.
fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {} ({bytes} bytes)", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(14186432), "13.5 MiB (14186432 bytes)");
    }

    /// Inputs for a build: the host's kernel and modules when present,
    /// else a fake kernel and modules dir (and then no ISO).
    struct Inputs {
        _dir: tempfile::TempDir,
        tether: PathBuf,
        kernel: PathBuf,
        modules_dir: PathBuf,
        modules: Vec<String>,
        iso: bool,
    }

    fn inputs() -> Inputs {
        let dir = tempfile::tempdir().unwrap();
        let tether = dir.path().join("tether");
        std::fs::write(&tether, b"\x7fELF a fake tether\n").unwrap();
        let host = Kernel::find_default(Path::new(BOOT_DIR))
            .ok()
            .and_then(|k| Some((k.default_modules_dir().ok()?, k.path)));
        let Some((modules_dir, kernel)) = host else {
            eprintln!("skipping the host kernel and the ISO: no {BOOT_DIR}/vmlinuz-*-cloud-amd64");
            let modules_dir = dir.path().join("modules");
            std::fs::create_dir_all(modules_dir.join("kernel")).unwrap();
            std::fs::write(
                modules_dir.join("modules.dep"),
                "kernel/b.ko: kernel/a.ko\nkernel/a.ko:\n",
            )
            .unwrap();
            std::fs::write(modules_dir.join("kernel/a.ko"), b"a").unwrap();
            std::fs::write(modules_dir.join("kernel/b.ko"), b"b").unwrap();
            let kernel = dir.path().join("vmlinuz-0.0.0-fake");
            std::fs::write(&kernel, b"fake kernel").unwrap();
            return Inputs {
                _dir: dir,
                tether,
                kernel,
                modules_dir,
                modules: vec!["b".into()],
                iso: false,
            };
        };
        let iso = match iso::Tools::system() {
            Ok(_) => true,
            Err(e) => {
                eprintln!("skipping the ISO: {e}");
                false
            }
        };
        Inputs {
            _dir: dir,
            tether,
            kernel,
            modules_dir,
            modules: Vec::new(),
            iso,
        }
    }

    fn build_into(inputs: &Inputs, out: &Path) -> (Artifacts, Vec<String>) {
        let opts = Options {
            out: out.to_owned(),
            tether: inputs.tether.clone(),
            kernel: Some(inputs.kernel.clone()),
            modules_dir: Some(inputs.modules_dir.clone()),
            iso: inputs.iso,
            modules: inputs.modules.clone(),
        };
        let mut lines = Vec::new();
        let artifacts = build(&opts, &mut |l| lines.push(l.to_owned())).unwrap();
        (artifacts, lines)
    }

    #[test]
    fn same_inputs_give_identical_bytes() {
        let inputs = inputs();
        let outs = tempfile::tempdir().unwrap();
        let (a, lines) = build_into(&inputs, &outs.path().join("a"));

        // Change what must not matter: the inputs' timestamps, the clock,
        // the output directory.
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        File::options()
            .write(true)
            .open(&inputs.tether)
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let (b, _) = build_into(&inputs, &outs.path().join("b"));

        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(read(&a.kernel), read(&inputs.kernel));
        assert!(read(&a.kernel) == read(&b.kernel), "vmlinuz differs");
        assert!(read(&a.initrd) == read(&b.initrd), "initrd.img differs");
        assert_eq!(a.iso.is_some(), inputs.iso);
        if let (Some(ia), Some(ib)) = (&a.iso, &b.iso) {
            let (ia, ib) = (read(ia), read(ib));
            assert!(ia == ib, "bootstrap.iso differs");
            // ISO 9660 primary descriptor, El Torito boot record, MBR.
            assert_eq!(&ia[0x8001..0x8006], b"CD001");
            assert_eq!(&ia[0x8801..0x8806], b"CD001");
            assert_eq!(&ia[0x8807..0x881e], b"EL TORITO SPECIFICATION");
            assert_eq!(&ia[510..512], &[0x55, 0xAA]);
        }

        // The initrd holds what was asked for.
        let entries = crate::cpio::tests::parse(&read(&a.initrd));
        let init = entries.iter().find(|e| e.name == "init").unwrap();
        assert_eq!(init.data, read(&inputs.tether));
        let order = entries
            .iter()
            .find(|e| e.name == "lib/modules/load-order")
            .unwrap();
        let order = String::from_utf8(order.data.clone()).unwrap();
        assert!(!order.is_empty());
        for ko in order.lines() {
            let path = format!("lib/modules/{ko}");
            assert!(entries.iter().any(|e| e.name == path), "{path} missing");
        }

        // Progress: one numbered line per step, then the summary.
        let steps = if inputs.iso { 4 } else { 3 };
        assert_eq!(lines.len(), steps + 1, "{lines:?}");
        for (i, line) in lines[..steps].iter().enumerate() {
            assert!(line.starts_with(&format!("[{}/{steps}] ", i + 1)), "{line}");
        }
        assert!(lines[steps].contains("initrd.img"), "{lines:?}");
    }

    #[test]
    fn missing_tether_fails_before_writing() {
        let out = tempfile::tempdir().unwrap();
        let mut opts = Options::new(out.path().join("out"));
        opts.tether = out.path().join("no-tether");
        let err = build(&opts, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("make tether"), "{err}");
        assert!(!out.path().join("out").exists());
    }
}
