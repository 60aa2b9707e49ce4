//! Where the container spec comes from and whether it is usable.
//!
//! Owns the kernel command line keys (`tether.spec=`, `tether.probe`),
//! reading the encoded `ContainerSpec` from QEMU fw_cfg, hiding fw_cfg from
//! the container afterwards, and validating the required fields. Must not act
//! on the spec: later steps do.

use std::path::{Path, PathBuf};

use prost::Message;
use proto::v1::ContainerSpec;

use super::{BootError, DEVICE_WAIT, poll};
use crate::sys::Syscall;

const CMDLINE: &str = "/proc/cmdline";
/// Kernel command line key naming the spec source.
const SPEC_KEY: &str = "tether.spec";
/// Kernel command line flag: the host only probes that the VM boots.
const PROBE_KEY: &str = "tether.probe";
const FW_CFG_BY_NAME: &str = "/sys/firmware/qemu_fw_cfg/by_name";
const FW_CFG_MODULE: &str = "qemu_fw_cfg";

/// `key=value` and bare `key` words of a kernel command line, with the
/// double quotes the kernel allows around values removed.
fn cmdline_words(cmdline: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    cmdline
        .split_whitespace()
        .map(|word| match word.split_once('=') {
            Some((key, value)) => (key, Some(value.trim_matches('"'))),
            None => (word, None),
        })
}

/// The last value given for `key` (the kernel lets later words win).
fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline_words(cmdline)
        .filter(|(k, _)| *k == key)
        .filter_map(|(_, v)| v)
        .last()
}

fn cmdline_flag(cmdline: &str, key: &str) -> bool {
    cmdline_words(cmdline).any(|(k, v)| k == key && !matches!(v, Some("0" | "no" | "false")))
}

fn read_cmdline(sys: &dyn Syscall) -> Result<String, BootError> {
    sys.read_file(Path::new(CMDLINE))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|source| BootError::Read {
            path: CMDLINE.into(),
            source,
        })
}

pub(super) fn probe_requested_with(sys: &dyn Syscall) -> bool {
    match sys.read_file(Path::new(CMDLINE)) {
        Ok(bytes) => cmdline_flag(&String::from_utf8_lossy(&bytes), PROBE_KEY),
        Err(e) => {
            crate::error!("reading {CMDLINE} to look for {PROBE_KEY}: {e}");
            false
        }
    }
}

/// Where the spec is, and how the tether learnt it (for error messages).
#[derive(Debug, PartialEq, Eq)]
struct SpecSource {
    fw_cfg_name: String,
    origin: String,
}

fn spec_source(cmdline: &str) -> Result<SpecSource, BootError> {
    let Some(value) = cmdline_value(cmdline, SPEC_KEY) else {
        return Ok(SpecSource {
            fw_cfg_name: proto::FW_CFG_NAME.to_owned(),
            origin: format!(
                "the default; set {SPEC_KEY}=fw_cfg:NAME on the kernel command line to change it"
            ),
        });
    };
    let name = value.strip_prefix("fw_cfg:").unwrap_or_default();
    let valid = !name.is_empty()
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if !valid {
        return Err(BootError::SpecSource {
            key: SPEC_KEY,
            value: value.to_owned(),
        });
    }
    Ok(SpecSource {
        fw_cfg_name: name.to_owned(),
        origin: format!("named by {SPEC_KEY}={value} on the kernel command line"),
    })
}

fn fw_cfg_path(name: &str) -> PathBuf {
    Path::new(FW_CFG_BY_NAME).join(name).join("raw")
}

pub(super) fn read_spec_with(sys: &dyn Syscall) -> Result<ContainerSpec, BootError> {
    let cmdline = read_cmdline(sys)?;
    let source = spec_source(&cmdline)?;
    let path = fw_cfg_path(&source.fw_cfg_name);
    let missing = |path: PathBuf| BootError::SpecMissing {
        name: source.fw_cfg_name.clone(),
        path,
        origin: source.origin.clone(),
    };
    // The device's own ports first (no module or ACPI needed, nothing left
    // in /sys); the sysfs view where direct access is not possible.
    let read = match sys.fw_cfg_file(&source.fw_cfg_name) {
        Ok(Some(bytes)) => Ok(bytes),
        Ok(None) => Err(missing(PathBuf::from("fw_cfg I/O port 0x510"))),
        Err(_) => {
            let found = poll(sys, DEVICE_WAIT, || sys.exists(&path).then_some(()));
            match found {
                Some(()) => sys.read_file(&path).map_err(|e| BootError::Read {
                    path: path.clone(),
                    source: e,
                }),
                None => Err(missing(path.clone())),
            }
        }
    };
    hide_fw_cfg(sys);
    let bytes = read?;
    let spec = ContainerSpec::decode(bytes.as_slice()).map_err(|e| BootError::SpecDecode {
        name: source.fw_cfg_name,
        source: e,
    })?;
    validate(&spec)?;
    Ok(spec)
}

/// Unloads the fw_cfg driver so that the container cannot read the spec
/// (and its keys) from `/sys`.
fn hide_fw_cfg(sys: &dyn Syscall) {
    match sys.delete_module(FW_CFG_MODULE) {
        Ok(()) => {}
        // Not loaded: nothing is exposed.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => crate::error!(
            "unloading kernel module {FW_CFG_MODULE} (the spec stays readable in {FW_CFG_BY_NAME}): {e}"
        ),
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> BootError {
    BootError::InvalidSpec {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Whether the spec asks for maintenance mode: `maintenance` set, or no
/// primary session at all.
pub(super) fn maintenance(spec: &ContainerSpec) -> bool {
    spec.maintenance || spec.primary.is_none()
}

/// RFC 1123: dot-separated labels of 1 to 63 letters, digits and '-', not
/// starting or ending with '-'; 253 bytes at most.
fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// A name in an `/etc/hosts` line (a container name or alias): one word of
/// letters, digits, '_', '.' and '-'.
fn is_hosts_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Checks the fields the boot cannot do without, and the names it writes
/// into the kernel and `/etc`.
fn validate(spec: &ContainerSpec) -> Result<(), BootError> {
    let rootfs = spec
        .rootfs
        .as_ref()
        .ok_or_else(|| invalid("spec.rootfs", "is missing"))?;
    if rootfs.source.is_empty() {
        return Err(invalid("spec.rootfs.source", "is empty"));
    }
    let keys = spec
        .keys
        .as_ref()
        .ok_or_else(|| invalid("spec.keys", "is missing"))?;
    if keys.host_key.is_empty() {
        return Err(invalid("spec.keys.host_key", "is empty"));
    }
    if keys.authorized_key.is_empty() {
        return Err(invalid("spec.keys.authorized_key", "is empty"));
    }
    // Without a primary session the VM comes up in maintenance mode.
    if let Some(primary) = spec.primary.as_ref().filter(|_| !spec.maintenance)
        && primary.args.is_empty()
    {
        return Err(invalid("spec.primary.args", "is empty"));
    }
    // The host checks these too; a name that is not one must not reach
    // the kernel or a line of /etc/hosts.
    if !spec.hostname.is_empty() && !is_hostname(&spec.hostname) {
        return Err(invalid(
            "spec.hostname",
            format!("{:?} is not an RFC 1123 host name", spec.hostname),
        ));
    }
    for (i, h) in spec.hosts.iter().enumerate() {
        if !h.address.is_empty() && h.address.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                format!("spec.hosts[{i}].address"),
                format!("{:?} is not an IP address", h.address),
            ));
        }
        if let Some(n) = h.names.iter().find(|n| !is_hosts_name(n)) {
            return Err(invalid(
                format!("spec.hosts[{i}].names"),
                format!("{n:?} is not a name /etc/hosts can hold"),
            ));
        }
    }
    for (i, m) in spec.mounts.iter().enumerate() {
        if !m.target.starts_with('/') {
            return Err(invalid(
                format!("spec.mounts[{i}].target"),
                format!("'{}' is not an absolute path", m.target),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, RecordingSyscall};
    use proto::v1::{HostEntry, Keys, Mount, RootFs, SessionSpec};

    fn good_spec() -> ContainerSpec {
        ContainerSpec {
            id: "0123456789abcdef".into(),
            rootfs: Some(RootFs {
                source: "serial:root".into(),
                ..Default::default()
            }),
            keys: Some(Keys {
                host_key: "-----BEGIN OPENSSH PRIVATE KEY-----".into(),
                authorized_key: "ssh-ed25519 AAAA".into(),
            }),
            primary: Some(SessionSpec {
                args: vec!["/bin/sh".into()],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const DEFAULT_PATH: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/org.tether/spec/raw";

    #[test]
    fn cmdline_values_and_flags() {
        let line = "console=ttyS0 quiet tether.spec=\"fw_cfg:a/b\" tether.probe\n";
        assert_eq!(cmdline_value(line, "tether.spec"), Some("fw_cfg:a/b"));
        assert_eq!(cmdline_value(line, "console"), Some("ttyS0"));
        assert_eq!(cmdline_value(line, "tether"), None);
        assert!(cmdline_flag(line, "tether.probe"));
        assert!(!cmdline_flag("tether.probe=0", "tether.probe"));
        assert!(!cmdline_flag("tether.prober", "tether.probe"));
        assert!(!cmdline_flag("", "tether.probe"));
    }

    #[test]
    fn probe_flag_is_read_from_proc() {
        let sys = RecordingSyscall::new();
        assert!(!probe_requested_with(&sys));
        sys.add_file(CMDLINE, "root=/dev/ram0 tether.probe");
        assert!(probe_requested_with(&sys));
    }

    #[test]
    fn spec_source_defaults_and_rejects_unknown_schemes() {
        assert_eq!(
            spec_source("quiet").unwrap().fw_cfg_name,
            proto::FW_CFG_NAME
        );
        assert_eq!(
            spec_source("tether.spec=fw_cfg:opt/x").unwrap().fw_cfg_name,
            "opt/x"
        );
        for bad in ["guestinfo:x", "fw_cfg:", "fw_cfg:../x", "fw_cfg:/abs"] {
            let err = spec_source(&format!("tether.spec={bad}")).unwrap_err();
            assert!(err.to_string().contains("tether.spec="), "{bad}: {err}");
        }
    }

    #[test]
    fn reads_decodes_and_unloads_fw_cfg() {
        let sys = RecordingSyscall::new();
        sys.add_file(CMDLINE, "console=ttyS0");
        sys.add_file_after_sleeps(3, DEFAULT_PATH, good_spec().encode_to_vec());
        let spec = read_spec_with(&sys).unwrap();
        assert_eq!(spec, good_spec());
        assert_eq!(
            sys.calls(),
            [Call::DeleteModule {
                name: "qemu_fw_cfg".into()
            }]
        );
    }

    #[test]
    fn the_device_ports_come_before_sysfs() {
        let sys = RecordingSyscall::new();
        sys.add_file(CMDLINE, "console=ttyS0");
        sys.add_fw_cfg_file(proto::FW_CFG_NAME, good_spec().encode_to_vec());
        assert_eq!(read_spec_with(&sys).unwrap(), good_spec());
        // Nothing was waited for.
        assert_eq!(sys.slept(), std::time::Duration::ZERO);

        // A device without the file is an error naming the file, at once.
        let sys = RecordingSyscall::new();
        sys.add_file(CMDLINE, "console=ttyS0");
        sys.add_fw_cfg_file("etc/other", b"x");
        let err = read_spec_with(&sys).unwrap_err().to_string();
        assert!(err.contains(proto::FW_CFG_NAME), "{err}");
        assert!(err.contains("-fw_cfg name="), "{err}");
        assert_eq!(sys.slept(), std::time::Duration::ZERO);
    }

    #[test]
    fn a_failed_unload_is_not_fatal() {
        let sys = RecordingSyscall::new();
        sys.add_file(CMDLINE, "tether.spec=fw_cfg:opt/other");
        sys.add_file(
            "/sys/firmware/qemu_fw_cfg/by_name/opt/other/raw",
            good_spec().encode_to_vec(),
        );
        sys.fail_when(|c| matches!(c, Call::DeleteModule { .. }), libc::EBUSY);
        // The spec still comes back whole, from the file the cmdline named.
        assert_eq!(read_spec_with(&sys).unwrap(), good_spec());
        // The unload was tried (once) and its failure did not stop the read.
        assert_eq!(
            sys.calls(),
            [Call::DeleteModule {
                name: "qemu_fw_cfg".into()
            }]
        );
    }

    #[test]
    fn a_missing_spec_says_how_to_provide_it() {
        let sys = RecordingSyscall::new();
        sys.add_file(CMDLINE, "console=ttyS0");
        let err = read_spec_with(&sys).unwrap_err().to_string();
        assert!(err.contains(DEFAULT_PATH), "{err}");
        assert!(err.contains("tether.spec=fw_cfg:NAME"), "{err}");
        assert!(
            err.contains("-fw_cfg name=opt/org.tether/spec,file=SPEC"),
            "{err}"
        );
        assert_eq!(sys.slept(), DEVICE_WAIT);
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let sys = RecordingSyscall::new();
        sys.add_file(CMDLINE, "");
        sys.add_file(DEFAULT_PATH, [0xff, 0xff, 0xff]);
        let err = read_spec_with(&sys).unwrap_err();
        assert!(matches!(err, BootError::SpecDecode { .. }), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        type Breaker = fn(&mut ContainerSpec);
        let cases: Vec<(Breaker, &str)> = vec![
            (|s| s.rootfs = None, "spec.rootfs is missing"),
            (
                |s| s.rootfs.as_mut().unwrap().source.clear(),
                "spec.rootfs.source is empty",
            ),
            (|s| s.keys = None, "spec.keys is missing"),
            (
                |s| s.keys.as_mut().unwrap().host_key.clear(),
                "spec.keys.host_key is empty",
            ),
            (
                |s| s.keys.as_mut().unwrap().authorized_key.clear(),
                "spec.keys.authorized_key is empty",
            ),
            (
                |s| s.primary.as_mut().unwrap().args.clear(),
                "spec.primary.args is empty",
            ),
            (
                |s| {
                    s.mounts.push(Mount {
                        target: "data".into(),
                        ..Default::default()
                    })
                },
                "spec.mounts[0].target 'data' is not an absolute path",
            ),
            (
                |s| s.hostname = "h1\n6.6.6.6 evil.example".into(),
                "spec.hostname \"h1\\n6.6.6.6 evil.example\" is not an RFC 1123 host name",
            ),
            (
                |s| s.hostname = "a_b".into(),
                "spec.hostname \"a_b\" is not an RFC 1123 host name",
            ),
            (
                |s| {
                    s.hosts.push(HostEntry {
                        address: "10.0.0.2".into(),
                        names: vec!["db".into(), "x\n6.6.6.6".into()],
                    })
                },
                "spec.hosts[0].names \"x\\n6.6.6.6\" is not a name /etc/hosts can hold",
            ),
            (
                |s| {
                    s.hosts.push(HostEntry {
                        address: "10.0.0.2 evil".into(),
                        names: vec!["db".into()],
                    })
                },
                "spec.hosts[0].address \"10.0.0.2 evil\" is not an IP address",
            ),
        ];
        assert!(validate(&good_spec()).is_ok());
        let mut named = good_spec();
        named.hostname = "web.example.com".into();
        named.hosts.push(HostEntry {
            address: "10.88.0.2".into(),
            names: vec!["web_1".into(), "db.local".into()],
        });
        assert!(validate(&named).is_ok());
        assert!(!maintenance(&good_spec()));
        // Maintenance mode needs no primary session, or ignores it.
        let mut spec = good_spec();
        spec.primary = None;
        assert!(validate(&spec).is_ok() && maintenance(&spec));
        let mut spec = good_spec();
        spec.primary.as_mut().unwrap().args.clear();
        spec.maintenance = true;
        assert!(validate(&spec).is_ok() && maintenance(&spec));
        for (break_it, want) in cases {
            let mut spec = good_spec();
            break_it(&mut spec);
            let err = validate(&spec).unwrap_err().to_string();
            assert_eq!(err, format!("Invalid container spec: {want}"));
        }
    }
}
