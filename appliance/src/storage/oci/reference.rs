//! Image references (docker's normalization rules) and the rule for when a
//! registry may be spoken to over plain HTTP.

use std::net::IpAddr;

use oci_client::Reference;

use super::OciError;

/// Parses a reference with docker's rules.
pub(super) fn parse(reference: &str) -> Result<Reference, OciError> {
    Reference::try_from(reference.trim()).map_err(|source| OciError::InvalidReference {
        reference: reference.to_string(),
        source,
    })
}

/// Normalizes a reference the way docker does: `busybox` becomes
/// `docker.io/library/busybox:latest`, `host:5000/a/b` gets the tag
/// `latest`, and a digest (`@sha256:…`) is kept (with no tag added).
pub fn normalize_reference(r: &str) -> Result<String, OciError> {
    Ok(parse(r)?.whole())
}

/// The host part of `registry` (`host`, `host:port`, `[v6]:port`).
fn host_of(registry: &str) -> &str {
    if registry.parse::<IpAddr>().is_ok() {
        return registry;
    }
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether `ip` is in `cidr` (`10.0.0.0/8`, `fd00::/8`).
fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let Some((net, bits)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(bits)) = (net.parse::<IpAddr>(), bits.parse::<u32>()) else {
        return false;
    };
    let mask = |width: u32| -> u128 {
        if bits == 0 {
            0
        } else {
            (!0u128) << (width - bits.min(width))
        }
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let m = mask(32) as u32;
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let m = mask(128);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// Whether to speak plain HTTP to `registry` (`host[:port]`), as docker
/// decides: yes for loopback hosts (127.0.0.0/8, ::1, `localhost`) without
/// asking; for any other host only if `insecure` names it, as `host:port`,
/// as `host` (any port) or as a CIDR range holding its IP; otherwise HTTPS.
pub fn plain_http(registry: &str, insecure: &[String]) -> bool {
    let host = host_of(registry);
    if is_loopback(host) {
        return true;
    }
    let ip = host.parse::<IpAddr>().ok();
    insecure.iter().any(|entry| {
        let entry = entry.trim();
        let entry = entry
            .strip_prefix("http://")
            .or_else(|| entry.strip_prefix("https://"))
            .unwrap_or(entry)
            .trim_end_matches('/');
        if entry.eq_ignore_ascii_case(registry) {
            return true;
        }
        if entry.contains('/') {
            return ip.is_some_and(|ip| in_cidr(ip, entry));
        }
        // A bare host (no port) covers every port on it.
        let bare = entry.trim_start_matches('[').trim_end_matches(']');
        (bare.parse::<IpAddr>().is_ok() || !entry.contains(':')) && bare.eq_ignore_ascii_case(host)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_docker() {
        let n = |r: &str| normalize_reference(r).unwrap();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("user/app"), "docker.io/user/app:latest");
        assert_eq!(n("docker.io/busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("host:5000/a/b"), "host:5000/a/b:latest");
        assert_eq!(n("localhost/a"), "localhost/a:latest");
        assert_eq!(
            n("127.0.0.1:5000/test/whiteouts:v1"),
            "127.0.0.1:5000/test/whiteouts:v1"
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            n(&format!("busybox@{d}")),
            format!("docker.io/library/busybox@{d}")
        );
        assert_eq!(
            n(&format!("busybox:1@{d}")),
            format!("docker.io/library/busybox:1@{d}")
        );
        for bad in ["", "Busybox", "a b", "busybox@sha256:12", "-x"] {
            assert!(normalize_reference(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        for r in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost",
            "LOCALHOST:5000",
            "[::1]:5000",
            "::1",
        ] {
            assert!(plain_http(r, &[]), "{r}");
        }
    }

    #[test]
    fn other_registries_are_https_unless_insecure() {
        for r in [
            "docker.io",
            "10.1.2.3:5000",
            "registry.example:5000",
            "[fd00::1]:5000",
        ] {
            assert!(!plain_http(r, &[]), "{r}");
        }
        let insecure = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(plain_http("10.1.2.3:5000", &insecure(&["10.1.2.3:5000"])));
        assert!(!plain_http("10.1.2.3:5001", &insecure(&["10.1.2.3:5000"])));
        assert!(plain_http("10.1.2.3:5001", &insecure(&["10.1.2.3"])));
        assert!(plain_http("10.1.2.3:5000", &insecure(&["10.0.0.0/8"])));
        assert!(!plain_http("11.1.2.3:5000", &insecure(&["10.0.0.0/8"])));
        assert!(plain_http("[fd00::1]:5000", &insecure(&["fd00::/8"])));
        assert!(plain_http("[fd00::1]:5000", &insecure(&["[fd00::1]"])));
        assert!(plain_http(
            "reg.lan:5000",
            &insecure(&["http://reg.lan:5000/"])
        ));
        assert!(plain_http("reg.lan:5000", &insecure(&["REG.lan"])));
        assert!(!plain_http(
            "reg.lan:5000",
            &insecure(&["other.lan", "reg.lan:6000"])
        ));
        assert!(!plain_http("evil.lan", &insecure(&["0.0.0.0/0"])));
        assert!(plain_http("1.2.3.4", &insecure(&["0.0.0.0/0"])));
    }
}
