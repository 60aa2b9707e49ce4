//! A container VM's network interfaces on the local backend: the tap each
//! bound endpoint gets on the host, and what the guest is told about it
//! (MAC, address, gateway, MTU, name server).
//!
//! Pure: names and plans only. Making taps, bridges and rules belongs to
//! `network`; QEMU arguments to `qemu`; the guest spec to `vm`.

use crate::portlayer::model::{Container, Endpoint};

/// Our taps are named "apt" + 12 hex digits (15 characters, the kernel's
/// limit): 8 of the container id, 4 of a hash of the scope.
pub const TAP_PREFIX: &str = "apt";

/// The host tap of a container's endpoint in `scope`.
pub fn tap_name(container: &str, scope: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(scope.as_bytes());
    let id: String = container.chars().take(8).collect();
    format!("{TAP_PREFIX}{id}{:02x}{:02x}", d[0], d[1])
}

/// One NIC of a container VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub scope: String,
    pub tap: String,
    pub mac: String,
    /// CIDR, e.g. "10.88.1.2/24".
    pub address: String,
    /// Set on the one NIC that carries the default route.
    pub gateway: Option<String>,
    pub mtu: u32,
}

/// The VM's NICs (its bound endpoints with an address, in join order) and
/// its name servers: the first NIC whose scope lets traffic out gives the
/// default route; the first whose scope runs a name server (on its
/// gateway) gives `/etc/resolv.conf`.
pub fn plan(c: &Container) -> (Vec<Nic>, Vec<String>) {
    let mut endpoints: Vec<&Endpoint> = c
        .endpoints
        .values()
        .filter(|e| e.bound && !e.address.is_empty())
        .collect();
    endpoints.sort_by_key(|e| e.order);
    let route = endpoints
        .iter()
        .find(|e| e.routed && !e.gateway.is_empty())
        .map(|e| e.scope.clone());
    let dns = endpoints
        .iter()
        .find(|e| !e.gateway.is_empty() && (e.dns || e.routed))
        .map(|e| vec![e.gateway.clone()])
        .unwrap_or_default();
    let nics = endpoints
        .iter()
        .map(|e| Nic {
            scope: e.scope.clone(),
            tap: tap_name(&c.id, &e.scope),
            mac: e.mac.clone(),
            address: e.address.clone(),
            gateway: (route.as_deref() == Some(e.scope.as_str())).then(|| e.gateway.clone()),
            mtu: e.mtu,
        })
        .collect();
    (nics, dns)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(scope: &str, order: u32, routed: bool, address: &str) -> Endpoint {
        Endpoint {
            scope: scope.into(),
            bound: true,
            address: address.into(),
            gateway: "10.0.0.1".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            routed,
            dns: true,
            order,
            ..Default::default()
        }
    }

    #[test]
    fn taps_fit_the_kernel_limit_and_differ_by_scope() {
        let id = "0123456789abcdef";
        let a = tap_name(id, "a");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("apt01234567"));
        assert_ne!(a, tap_name(id, "b"));
        assert_eq!(a, tap_name(id, "a"));
    }

    #[test]
    fn the_first_routed_scope_gives_the_default_route() {
        let mut c = Container {
            id: "0123456789abcdef".into(),
            ..Default::default()
        };
        c.endpoints
            .insert("closed".into(), endpoint("closed", 0, false, "10.0.1.2/24"));
        c.endpoints
            .insert("b".into(), endpoint("b", 2, true, "10.0.2.2/24"));
        c.endpoints
            .insert("a".into(), endpoint("a", 1, true, "10.0.3.2/24"));
        c.endpoints.insert(
            "unbound".into(),
            Endpoint {
                bound: false,
                ..endpoint("unbound", 3, true, "")
            },
        );
        let (nics, dns) = plan(&c);
        let order: Vec<_> = nics.iter().map(|n| n.scope.as_str()).collect();
        assert_eq!(order, ["closed", "a", "b"]);
        let routed: Vec<_> = nics
            .iter()
            .filter(|n| n.gateway.is_some())
            .map(|n| n.scope.as_str())
            .collect();
        assert_eq!(routed, ["a"]);
        assert_eq!(dns, ["10.0.0.1"]);
    }
}
