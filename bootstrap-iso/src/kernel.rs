//! Finding the kernel to boot and its modules directory.
//!
//! Owns: picking the newest `/boot/vmlinuz-*-cloud-amd64` (Debian's
//! `linux-image-cloud-amd64`), comparing kernel versions, and deriving
//! `/lib/modules/<version>`. It only looks at names and existence; the
//! kernel image itself is copied by the caller.

use std::cmp::Ordering;
use std::io;
use std::path::{Path, PathBuf};

const PREFIX: &str = "vmlinuz-";
const FLAVOUR: &str = "-cloud-amd64";
const PACKAGE_HINT: &str = "apt-get install linux-image-cloud-amd64";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("No {dir}/vmlinuz-*{FLAVOUR} kernel found: {PACKAGE_HINT}")]
    NoDefault { dir: String },
    #[error("Reading {dir}: {PACKAGE_HINT}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Kernel {path} not found")]
    Missing { path: PathBuf },
    #[error(
        "Cannot tell the kernel version of {path} (not named vmlinuz-<version>): pass --modules-dir"
    )]
    UnknownVersion { path: PathBuf },
    #[error("Modules directory {path} not found: {PACKAGE_HINT}")]
    ModulesDirMissing { path: PathBuf },
}

/// A kernel image and, when its name says so, its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub path: PathBuf,
    /// The part of the file name after `vmlinuz-`, e.g. `6.1.0-56-cloud-amd64`.
    pub version: Option<String>,
}

impl Kernel {
    /// A kernel at an explicit path; it must exist.
    pub fn at(path: &Path) -> Result<Self, Error> {
        if !path.is_file() {
            return Err(Error::Missing {
                path: path.to_owned(),
            });
        }
        let version = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(PREFIX))
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        Ok(Self {
            path: path.to_owned(),
            version,
        })
    }

    /// The newest `vmlinuz-*-cloud-amd64` in `boot_dir` (normally `/boot`).
    pub fn find_default(boot_dir: &Path) -> Result<Self, Error> {
        let entries = std::fs::read_dir(boot_dir).map_err(|source| Error::ReadDir {
            dir: boot_dir.to_owned(),
            source,
        })?;
        let newest = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| {
                let version = name.strip_prefix(PREFIX)?;
                version.ends_with(FLAVOUR).then(|| version.to_owned())
            })
            .filter(|v| boot_dir.join(format!("{PREFIX}{v}")).is_file())
            .max_by(|a, b| compare_versions(a, b).then_with(|| a.cmp(b)));
        match newest {
            Some(version) => Ok(Self {
                path: boot_dir.join(format!("{PREFIX}{version}")),
                version: Some(version),
            }),
            None => Err(Error::NoDefault {
                dir: boot_dir.display().to_string(),
            }),
        }
    }

    /// `/lib/modules/<version>`; it must exist.
    pub fn default_modules_dir(&self) -> Result<PathBuf, Error> {
        let version = self.version.as_ref().ok_or_else(|| Error::UnknownVersion {
            path: self.path.clone(),
        })?;
        let dir = Path::new("/lib/modules").join(version);
        if !dir.is_dir() {
            return Err(Error::ModulesDirMissing { path: dir });
        }
        Ok(dir)
    }
}

/// Compares kernel versions the way people read them: runs of digits
/// compare as numbers (`6.1.0-9` < `6.1.0-56`, `6.9` < `6.10`), other runs
/// as text, and a run of digits sorts before text.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(&cb) {
        let ord = match (x, y) {
            (Chunk::Num(x), Chunk::Num(y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            (Chunk::Num(_), Chunk::Text(_)) => Ordering::Less,
            (Chunk::Text(_), Chunk::Num(_)) => Ordering::Greater,
            (Chunk::Text(x), Chunk::Text(y)) => x.cmp(y),
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

enum Chunk<'a> {
    Num(&'a str),
    Text(&'a str),
}

fn chunks(s: &str) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = s.as_bytes();
    while start < bytes.len() {
        let digit = bytes[start].is_ascii_digit();
        let len = bytes[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit() == digit)
            .count();
        let run = &s[start..start + len];
        out.push(if digit {
            Chunk::Num(run)
        } else {
            Chunk::Text(run)
        });
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        use Ordering::*;
        let cases = [
            ("6.1.0-9-cloud-amd64", "6.1.0-56-cloud-amd64", Less),
            ("6.10.0-1-cloud-amd64", "6.9.0-1-cloud-amd64", Greater),
            ("6.1.0-56-cloud-amd64", "6.1.0-56-cloud-amd64", Equal),
            ("6.1.0-056-cloud-amd64", "6.1.0-56-cloud-amd64", Equal),
            ("6.1.0-56-cloud-amd64", "6.1.0-56-rt-cloud-amd64", Less),
            ("5.10.0-30-cloud-amd64", "6.1.0-1-cloud-amd64", Less),
            (
                "99999999999999999999999.0-cloud-amd64",
                "100000000000000000000000.0-cloud-amd64",
                Less,
            ),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn finds_the_newest_cloud_kernel() {
        let boot = tempfile::tempdir().unwrap();
        for name in [
            "vmlinuz-6.1.0-9-cloud-amd64",
            "vmlinuz-6.1.0-56-cloud-amd64",
            "vmlinuz-6.1.0-10-cloud-amd64",
            "vmlinuz-7.0.0-1-amd64", // not the cloud flavour
            "config-9.0.0-1-cloud-amd64",
            "initrd.img-9.0.0-1-cloud-amd64",
        ] {
            std::fs::write(boot.path().join(name), b"k").unwrap();
        }
        let k = Kernel::find_default(boot.path()).unwrap();
        assert_eq!(k.version.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert_eq!(k.path, boot.path().join("vmlinuz-6.1.0-56-cloud-amd64"));
    }

    #[test]
    fn no_kernel_error_says_what_to_install() {
        let boot = tempfile::tempdir().unwrap();
        std::fs::write(boot.path().join("vmlinuz-6.1.0-1-amd64"), b"k").unwrap();
        let err = Kernel::find_default(boot.path()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("apt-get install linux-image-cloud-amd64"),
            "{msg}"
        );
        assert!(msg.contains(&boot.path().display().to_string()), "{msg}");
    }

    #[test]
    fn explicit_kernel_version_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("vmlinuz-1.2.3-test");
        std::fs::write(&named, b"k").unwrap();
        let k = Kernel::at(&named).unwrap();
        assert_eq!(k.version.as_deref(), Some("1.2.3-test"));
        let err = k.default_modules_dir().unwrap_err();
        assert!(err.to_string().contains("/lib/modules/1.2.3-test"), "{err}");

        let bare = dir.path().join("bzImage");
        std::fs::write(&bare, b"k").unwrap();
        let k = Kernel::at(&bare).unwrap();
        assert_eq!(k.version, None);
        assert!(matches!(
            k.default_modules_dir(),
            Err(Error::UnknownVersion { .. })
        ));

        let missing = dir.path().join("nope");
        let err = Kernel::at(&missing).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
