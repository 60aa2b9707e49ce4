//! bootstrap.iso: ISO 9660 with El Torito BIOS boot through isolinux.
//!
//! Owns: locating xorriso and the isolinux/syslinux files, the isolinux.cfg
//! text, staging the ISO tree with fixed timestamps and running
//! `xorriso -as mkisofs` so that the same inputs give the same bytes. It
//! writes only inside the staging directory and the output path it is given.

use std::ffi::OsStr;
use std::fs::{File, FileTimes};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::UNIX_EPOCH;

/// Debian `isolinux` and `syslinux-common` locations.
pub const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
pub const ISOHDPFX_BIN: &str = "/usr/lib/ISOLINUX/isohdpfx.bin";
pub const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";

/// Volume label of bootstrap.iso.
pub const VOLUME_ID: &str = "TETHER_BOOT";
/// Volume timestamps (YYYYMMDDhhmmsscc, GMT): the epoch.
const FIXED_DATE: &str = "1970010100000000";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} not found: apt-get install {package}")]
    ToolMissing { what: String, package: &'static str },
    #[error("Staging {path}")]
    Stage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Running {xorriso}")]
    Spawn {
        xorriso: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("xorriso failed ({status}): {stderr}")]
    Xorriso { status: ExitStatus, stderr: String },
}

/// The host files the ISO build needs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub xorriso: PathBuf,
    pub isolinux_bin: PathBuf,
    pub isohdpfx_bin: PathBuf,
    pub ldlinux_c32: PathBuf,
}

impl Tools {
    /// Finds xorriso on `PATH` and the Debian isolinux/syslinux files.
    pub fn system() -> Result<Self, Error> {
        let path_var = std::env::var_os("PATH");
        Self::locate(
            path_var.as_deref(),
            Path::new(ISOLINUX_BIN),
            Path::new(ISOHDPFX_BIN),
            Path::new(LDLINUX_C32),
        )
    }

    fn locate(
        path_var: Option<&OsStr>,
        isolinux_bin: &Path,
        isohdpfx_bin: &Path,
        ldlinux_c32: &Path,
    ) -> Result<Self, Error> {
        let xorriso = path_var
            .into_iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("xorriso"))
            .find(|p| p.is_file())
            .ok_or(Error::ToolMissing {
                what: "xorriso".into(),
                package: "xorriso",
            })?;
        Ok(Self {
            xorriso,
            isolinux_bin: require(isolinux_bin, "isolinux")?,
            isohdpfx_bin: require(isohdpfx_bin, "isolinux")?,
            ldlinux_c32: require(ldlinux_c32, "syslinux-common")?,
        })
    }
}

fn require(path: &Path, package: &'static str) -> Result<PathBuf, Error> {
    if path.is_file() {
        Ok(path.to_owned())
    } else {
        Err(Error::ToolMissing {
            what: path.display().to_string(),
            package,
        })
    }
}

/// The isolinux configuration: boot the kernel at once with `cmdline`.
pub fn isolinux_cfg(cmdline: &str) -> String {
    format!(
        "DEFAULT tether\n\
         PROMPT 0\n\
         TIMEOUT 0\n\
         LABEL tether\n\
         \x20 KERNEL /vmlinuz\n\
         \x20 APPEND initrd=/initrd.img {cmdline}\n"
    )
}

/// Builds the ISO at `out` from `kernel` and `initrd`. `staging` must be an
/// empty scratch directory; the tree is laid out in `staging/root`.
pub fn build(
    tools: &Tools,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    staging: &Path,
    out: &Path,
) -> Result<(), Error> {
    let root = staging.join("root");
    let boot = root.join("isolinux");
    mkdir(&root)?;
    mkdir(&boot)?;
    copy(&tools.isolinux_bin, &boot.join("isolinux.bin"))?;
    copy(&tools.ldlinux_c32, &boot.join("ldlinux.c32"))?;
    let cfg = boot.join("isolinux.cfg");
    std::fs::write(&cfg, isolinux_cfg(cmdline)).map_err(|source| Error::Stage {
        path: cfg.clone(),
        source,
    })?;
    copy(kernel, &root.join("vmlinuz"))?;
    copy(initrd, &root.join("initrd.img"))?;
    // Every file and directory time in the image comes from these mtimes.
    for path in [
        boot.join("isolinux.bin"),
        boot.join("ldlinux.c32"),
        cfg,
        root.join("vmlinuz"),
        root.join("initrd.img"),
        boot,
        root.clone(),
    ] {
        set_epoch(&path)?;
    }

    let output = Command::new(&tools.xorriso)
        // Must come first: ignore startup files, they could change the image.
        .arg("-no_rc")
        .args(["-as", "mkisofs"])
        .arg("-o")
        .arg(out)
        // Rock Ridge with uid/gid 0 and normalised modes: no host metadata.
        .arg("-r")
        .args(["-V", VOLUME_ID])
        .arg(format!("--modification-date={FIXED_DATE}"))
        // File atime/ctime from the staged mtime (the epoch, set above).
        // An explicit epoch timestring would not do: xorriso 1.5.4 takes
        // time 0 as "unset" and records the real ctime.
        .args(["--set_all_file_dates", "set_to_mtime"])
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .arg("-isohybrid-mbr")
        .arg(&tools.isohdpfx_bin)
        .arg(&root)
        .env("SOURCE_DATE_EPOCH", "0")
        .env("TZ", "UTC")
        .output()
        .map_err(|source| Error::Spawn {
            xorriso: tools.xorriso.clone(),
            source,
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<_> = stderr.lines().rev().take(5).collect();
        let tail: Vec<_> = tail.into_iter().rev().collect();
        return Err(Error::Xorriso {
            status: output.status,
            stderr: tail.join("\n"),
        });
    }
    Ok(())
}

fn mkdir(path: &Path) -> Result<(), Error> {
    std::fs::create_dir(path).map_err(|source| Error::Stage {
        path: path.to_owned(),
        source,
    })
}

fn copy(from: &Path, to: &Path) -> Result<(), Error> {
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|source| Error::Stage {
            path: from.to_owned(),
            source,
        })
}

/// Sets atime and mtime to the epoch (files and directories alike).
fn set_epoch(path: &Path) -> Result<(), Error> {
    let times = FileTimes::new()
        .set_accessed(UNIX_EPOCH)
        .set_modified(UNIX_EPOCH);
    File::open(path)
        .and_then(|f| f.set_times(times))
        .map_err(|source| Error::Stage {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolinux_cfg_boots_tether_without_prompt() {
        assert_eq!(
            isolinux_cfg("console=ttyS0 x=y"),
            "DEFAULT tether\nPROMPT 0\nTIMEOUT 0\nLABEL tether\n  KERNEL /vmlinuz\n  \
             APPEND initrd=/initrd.img console=ttyS0 x=y\n"
        );
    }

    #[test]
    fn missing_tools_name_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present");
        std::fs::write(&present, b"x").unwrap();
        let absent = dir.path().join("absent.bin");

        let err =
            Tools::locate(Some(dir.path().as_os_str()), &present, &present, &present).unwrap_err();
        assert_eq!(
            err.to_string(),
            "xorriso not found: apt-get install xorriso"
        );

        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("xorriso"), b"").unwrap();
        let path = Some(bin.as_os_str());
        let err = Tools::locate(path, &absent, &present, &present).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("absent.bin") && msg.ends_with("install isolinux"),
            "{msg}"
        );
        let err = Tools::locate(path, &present, &present, &absent).unwrap_err();
        assert!(
            err.to_string().ends_with("install syslinux-common"),
            "{err}"
        );
        let tools = Tools::locate(path, &present, &present, &present).unwrap();
        assert_eq!(tools.xorriso, bin.join("xorriso"));
    }

    /// Builds a small ISO from fake kernel/initrd files and reads it back
    /// with xorriso: the layout, the config and the boot records.
    #[test]
    fn builds_the_isolinux_layout() {
        let tools = match Tools::system() {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipping: {e}");
                return;
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("k");
        let initrd = dir.path().join("i");
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        std::fs::write(&initrd, b"initrd bytes").unwrap();
        let staging = dir.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        let out = dir.path().join("b.iso");
        build(&tools, &kernel, &initrd, "console=ttyS0", &staging, &out).unwrap();

        let listing = Command::new(&tools.xorriso)
            .args(["-no_rc", "-indev"])
            .arg(&out)
            .args(["-find", "/", "-not", "-type", "d"])
            .output()
            .unwrap();
        assert!(listing.status.success(), "{listing:?}");
        let stdout = String::from_utf8(listing.stdout).unwrap();
        let mut files: Vec<_> = stdout.lines().map(|l| l.trim_matches('\'')).collect();
        files.sort();
        assert_eq!(
            files,
            [
                "/initrd.img",
                "/isolinux/boot.cat",
                "/isolinux/isolinux.bin",
                "/isolinux/isolinux.cfg",
                "/isolinux/ldlinux.c32",
                "/vmlinuz",
            ]
        );

        let extracted = dir.path().join("cfg");
        let status = Command::new(&tools.xorriso)
            .args(["-no_rc", "-osirrox", "on", "-indev"])
            .arg(&out)
            .args(["-extract", "/isolinux/isolinux.cfg"])
            .arg(&extracted)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        let cfg = std::fs::read_to_string(&extracted).unwrap();
        assert_eq!(cfg, isolinux_cfg("console=ttyS0"));

        let iso = std::fs::read(&out).unwrap();
        assert_eq!(&iso[0x8001..0x8006], b"CD001");
        assert_eq!(&iso[0x8028..0x8033], VOLUME_ID.as_bytes());
        assert_eq!(&iso[0x8807..0x881e], b"EL TORITO SPECIFICATION");
        assert_eq!(&iso[510..512], &[0x55, 0xAA]);
        // Volume creation date: 1970-01-01 00:00:00.00 GMT.
        assert_eq!(&iso[0x832D..0x833D], b"1970010100000000");
    }
}
