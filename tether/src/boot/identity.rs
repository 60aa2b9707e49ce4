//! Who the container is on the network: hostname, `/etc/hostname`,
//! `/etc/hosts`, `/etc/resolv.conf`.
//!
//! Owns the contents of those files and writing them atomically inside the
//! container root (a symlink in their place is replaced, never followed).
//! Must not touch interfaces (`network`) or any other file of the image.

use std::io;
use std::path::{Path, PathBuf};

use proto::v1::ContainerSpec;

use super::BootError;
use crate::sys::Syscall;

const ETC: &str = "/etc";
/// Length of a hostname derived from the container id, as Docker does.
const ID_HOSTNAME_LEN: usize = 12;

/// The hostname: `spec.hostname`, else the start of `spec.id`, else
/// `localhost`.
fn hostname(spec: &ContainerSpec) -> String {
    if !spec.hostname.is_empty() {
        return spec.hostname.clone();
    }
    let from_id: String = spec.id.chars().take(ID_HOSTNAME_LEN).collect();
    if from_id.is_empty() {
        "localhost".to_owned()
    } else {
        from_id
    }
}

/// The container's own address for `/etc/hosts`: the first address of the
/// first network that has one, without its prefix length.
fn own_address(spec: &ContainerSpec) -> Option<&str> {
    spec.networks
        .iter()
        .flat_map(|n| n.addresses.iter())
        .map(|a| a.split_once('/').map_or(a.as_str(), |(ip, _)| ip))
        .find(|a| !a.is_empty())
}

fn hosts_file(spec: &ContainerSpec, hostname: &str) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let names = match hostname.split_once('.') {
        Some((short, _)) if !short.is_empty() => format!("{hostname} {short}"),
        _ => hostname.to_owned(),
    };
    let address = own_address(spec).unwrap_or("127.0.1.1");
    out.push_str(&format!("{address}\t{names}\n"));
    for entry in &spec.hosts {
        if entry.address.is_empty() || entry.names.is_empty() {
            continue;
        }
        out.push_str(&format!("{}\t{}\n", entry.address, entry.names.join(" ")));
    }
    out
}

/// `resolv.conf` contents, or `None` when the spec names no server (the
/// image's own file is then left alone).
fn resolv_conf(spec: &ContainerSpec) -> Option<String> {
    let dns = spec.dns.as_ref().filter(|d| !d.nameservers.is_empty())?;
    let mut out = String::new();
    for server in &dns.nameservers {
        out.push_str(&format!("nameserver {server}\n"));
    }
    if !dns.search.is_empty() {
        out.push_str(&format!("search {}\n", dns.search.join(" ")));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    Some(out)
}

/// Writes `path` through a temporary file in the same directory and a
/// rename, so that readers never see half a file and a symlink at `path` is
/// replaced rather than followed.
fn write_atomic(sys: &dyn Syscall, path: &Path, contents: &str) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tether-tmp");
    let tmp: PathBuf = path.with_file_name(tmp_name);
    sys.write_file(&tmp, contents.as_bytes(), 0o644)?;
    sys.rename(&tmp, path)
}

pub(super) fn write_identity_with(
    sys: &dyn Syscall,
    spec: &ContainerSpec,
) -> Result<(), BootError> {
    let hostname = hostname(spec);
    sys.sethostname(&hostname)
        .map_err(|source| BootError::Hostname {
            name: hostname.clone(),
            source,
        })?;
    let etc = Path::new(ETC);
    if !sys.exists(etc) {
        sys.mkdir_all(etc, 0o755)
            .map_err(|source| BootError::CreateDir {
                path: etc.to_path_buf(),
                source,
            })?;
    }
    let mut files = vec![
        ("hostname", format!("{hostname}\n")),
        ("hosts", hosts_file(spec, &hostname)),
    ];
    if let Some(resolv) = resolv_conf(spec) {
        files.push(("resolv.conf", resolv));
    }
    for (name, contents) in files {
        let path = etc.join(name);
        match write_atomic(sys, &path, &contents) {
            Ok(()) => {}
            // A read-only root keeps the image's files: not worth failing
            // the container for.
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {
                crate::error!(
                    "not writing {}: the root file system is read-only",
                    path.display()
                );
            }
            Err(source) => return Err(BootError::Write { path, source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{Call, Node, RecordingSyscall};
    use proto::v1::{Dns, HostEntry, Network};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            id: "0123456789abcdef0123".into(),
            ..Default::default()
        }
    }

    #[test]
    fn hostname_falls_back_to_the_id() {
        let mut s = spec();
        assert_eq!(hostname(&s), "0123456789ab");
        s.hostname = "web".into();
        assert_eq!(hostname(&s), "web");
        assert_eq!(hostname(&ContainerSpec::default()), "localhost");
    }

    #[test]
    fn writes_hostname_and_hosts_creating_etc() {
        let sys = RecordingSyscall::new();
        let mut s = spec();
        s.hosts = vec![
            HostEntry {
                address: "10.0.0.9".into(),
                names: vec!["db".into(), "db.local".into()],
            },
            HostEntry {
                address: "10.0.0.10".into(),
                names: vec![],
            },
        ];
        write_identity_with(&sys, &s).unwrap();
        assert_eq!(
            sys.calls()[0],
            Call::Sethostname {
                name: "0123456789ab".into()
            }
        );
        assert_eq!(sys.text("/etc/hostname").unwrap(), "0123456789ab\n");
        assert_eq!(
            sys.text("/etc/hosts").unwrap(),
            "127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             127.0.1.1\t0123456789ab\n\
             10.0.0.9\tdb db.local\n"
        );
        // No DNS in the spec: no resolv.conf, and no temporary leftovers.
        assert_eq!(sys.node("/etc/resolv.conf"), None);
        assert_eq!(sys.node("/etc/.hosts.tether-tmp"), None);
    }

    #[test]
    fn the_network_address_carries_the_hostname() {
        let mut s = spec();
        s.hostname = "web.example.com".into();
        s.networks = vec![
            Network {
                name: "none".into(),
                ..Default::default()
            },
            Network {
                name: "bridge".into(),
                addresses: vec!["172.17.0.2/16".into(), "fd00::2/64".into()],
                ..Default::default()
            },
        ];
        let hosts = hosts_file(&s, "web.example.com");
        assert!(
            hosts.contains("172.17.0.2\tweb.example.com web\n"),
            "{hosts}"
        );
        assert!(!hosts.contains("127.0.1.1"), "{hosts}");
    }

    #[test]
    fn resolv_conf_only_when_servers_are_given() {
        let sys = RecordingSyscall::new();
        sys.add_file("/etc/resolv.conf", "nameserver 9.9.9.9\n");
        let mut s = spec();
        s.dns = Some(Dns {
            search: vec!["example.com".into()],
            ..Default::default()
        });
        write_identity_with(&sys, &s).unwrap();
        assert_eq!(
            sys.text("/etc/resolv.conf").unwrap(),
            "nameserver 9.9.9.9\n"
        );

        s.dns = Some(Dns {
            nameservers: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            search: vec!["a.example".into(), "b.example".into()],
            options: vec!["ndots:2".into()],
        });
        write_identity_with(&sys, &s).unwrap();
        assert_eq!(
            sys.text("/etc/resolv.conf").unwrap(),
            "nameserver 10.0.0.1\nnameserver 10.0.0.2\nsearch a.example b.example\noptions ndots:2\n"
        );
    }

    #[test]
    fn a_symlinked_hosts_file_is_replaced_not_followed() {
        let sys = RecordingSyscall::new();
        sys.add_file("/run/hosts", "theirs");
        sys.add_symlink("/etc/hosts", "/run/hosts");
        write_identity_with(&sys, &spec()).unwrap();
        assert!(matches!(sys.node("/etc/hosts"), Some(Node::File(_))));
        assert_eq!(sys.text("/run/hosts").unwrap(), "theirs");
        assert!(sys.calls().contains(&Call::Rename {
            from: "/etc/.hosts.tether-tmp".into(),
            to: "/etc/hosts".into()
        }));
    }

    #[test]
    fn a_read_only_etc_is_tolerated_other_errors_are_not() {
        let sys = RecordingSyscall::new();
        sys.add_dir("/etc");
        sys.fail_when(|c| matches!(c, Call::WriteFile { .. }), libc::EROFS);
        assert!(write_identity_with(&sys, &spec()).is_ok());

        let sys = RecordingSyscall::new();
        sys.add_dir("/etc");
        sys.fail_when(
            |c| matches!(c, Call::Rename { to, .. } if to.ends_with("hosts")),
            libc::EIO,
        );
        let err = write_identity_with(&sys, &spec()).unwrap_err();
        assert_eq!(err.to_string(), "Writing /etc/hosts");
    }
}
