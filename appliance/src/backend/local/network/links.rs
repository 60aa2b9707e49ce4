//! Host links of the local backend's networking: each realised scope's
//! bridge with its gateway address, and one persistent tap per bound
//! endpoint, enslaved to its scope's bridge (QEMU opens the tap by name).
//!
//! [`plan`] compares what is wanted with what the host has and lists the
//! operations that make them agree; [`Links`] performs them, over rtnetlink
//! and the `/dev/net/tun` ioctls for real ([`RtLinks`]), in memory in
//! tests ([`FakeLinks`]). Only links that are ours by name (bridges
//! `apb-…`, taps `apt…`) are ever deleted or changed; an external scope's
//! bridge is only checked and given taps.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use crate::backend::local::nics::TAP_PREFIX;

/// The prefix of the bridges the appliance makes for its scopes.
pub const BRIDGE_PREFIX: &str = "apb-";

/// Whether a link of this name is one the appliance made.
pub fn is_ours(name: &str) -> bool {
    name.starts_with(BRIDGE_PREFIX) || name.starts_with(TAP_PREFIX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bridge,
    Tun,
    Other,
}

/// A link of the host, as far as reconciling needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub kind: Kind,
    /// The bridge it is a port of.
    pub controller: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
}

/// A bridge a realised scope needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantBridge {
    pub scope: String,
    pub name: String,
    pub mtu: u32,
    /// The gateway address on it (none for a scope without a gateway).
    pub address: Option<Ipv4Net>,
    /// False for an external scope: the host's bridge, used as it is.
    pub owned: bool,
}

/// A tap a bound endpoint needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantTap {
    pub name: String,
    pub bridge: String,
    pub mtu: u32,
}

/// One change to the host's links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Delete { name: String },
    AddBridge { name: String },
    AddTap { name: String },
    SetMtu { name: String, mtu: u32 },
    AddAddress { name: String, net: Ipv4Net },
    DelAddress { name: String, net: Ipv4Net },
    SetController { name: String, bridge: String },
    Up { name: String },
}

impl Op {
    pub fn link(&self) -> &str {
        match self {
            Op::Delete { name }
            | Op::AddBridge { name }
            | Op::AddTap { name }
            | Op::SetMtu { name, .. }
            | Op::AddAddress { name, .. }
            | Op::DelAddress { name, .. }
            | Op::SetController { name, .. }
            | Op::Up { name } => name,
        }
    }

    fn action(&self) -> String {
        match self {
            Op::Delete { .. } => "deleting it".into(),
            Op::AddBridge { .. } => "making the bridge".into(),
            Op::AddTap { .. } => "making the tap".into(),
            Op::SetMtu { mtu, .. } => format!("setting its MTU to {mtu}"),
            Op::AddAddress { net, .. } => format!("adding address {net}"),
            Op::DelAddress { net, .. } => format!("removing address {net}"),
            Op::SetController { bridge, .. } => format!("adding it to bridge {bridge}"),
            Op::Up { .. } => "bringing it up".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "Scope {scope}: host bridge {bridge} does not exist (an external scope joins an existing bridge)"
    )]
    NoExternalBridge { scope: String, bridge: String },
    #[error("Scope {scope}: host link {bridge} is not a bridge")]
    NotABridge { scope: String, bridge: String },
    #[error("Host link {link}: {action}: {message}")]
    Op {
        link: String,
        action: String,
        message: String,
    },
    #[error("Listing the host's links: {0}")]
    List(String),
}

impl LinkError {
    fn op(op: &Op, message: impl std::fmt::Display) -> Self {
        LinkError::Op {
            link: op.link().into(),
            action: op.action(),
            message: message.to_string(),
        }
    }
}

/// The operations that turn `current` into what is wanted, in an order
/// that works: stale taps and bridges go first (a tap before its bridge),
/// then bridges are made and configured, then taps.
pub fn plan(
    bridges: &[WantBridge],
    taps: &[WantTap],
    current: &[Link],
) -> Result<Vec<Op>, LinkError> {
    let have: BTreeMap<&str, &Link> = current.iter().map(|l| (l.name.as_str(), l)).collect();
    let wanted_bridges: BTreeMap<&str, &WantBridge> =
        bridges.iter().map(|b| (b.name.as_str(), b)).collect();
    let wanted_taps: BTreeMap<&str, &WantTap> = taps.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut ops = Vec::new();

    for l in current {
        let stale = match l.kind {
            Kind::Tun => l.name.starts_with(TAP_PREFIX) && !wanted_taps.contains_key(&*l.name),
            _ => false,
        };
        if stale {
            ops.push(Op::Delete {
                name: l.name.clone(),
            });
        }
    }
    for l in current {
        if l.kind == Kind::Bridge
            && l.name.starts_with(BRIDGE_PREFIX)
            && !wanted_bridges.contains_key(&*l.name)
        {
            ops.push(Op::Delete {
                name: l.name.clone(),
            });
        }
    }

    for b in bridges {
        let name = b.name.clone();
        match have.get(&*b.name) {
            None if !b.owned => {
                return Err(LinkError::NoExternalBridge {
                    scope: b.scope.clone(),
                    bridge: b.name.clone(),
                });
            }
            Some(l) if l.kind != Kind::Bridge => {
                return Err(LinkError::NotABridge {
                    scope: b.scope.clone(),
                    bridge: b.name.clone(),
                });
            }
            Some(_) if !b.owned => {}
            None => {
                ops.push(Op::AddBridge { name: name.clone() });
                ops.push(Op::SetMtu {
                    name: name.clone(),
                    mtu: b.mtu,
                });
                if let Some(net) = b.address {
                    ops.push(Op::AddAddress {
                        name: name.clone(),
                        net,
                    });
                }
                ops.push(Op::Up { name });
            }
            Some(l) => {
                if l.mtu != b.mtu {
                    ops.push(Op::SetMtu {
                        name: name.clone(),
                        mtu: b.mtu,
                    });
                }
                for net in &l.addresses {
                    if Some(*net) != b.address {
                        ops.push(Op::DelAddress {
                            name: name.clone(),
                            net: *net,
                        });
                    }
                }
                if let Some(net) = b.address
                    && !l.addresses.contains(&net)
                {
                    ops.push(Op::AddAddress {
                        name: name.clone(),
                        net,
                    });
                }
                if !l.up {
                    ops.push(Op::Up { name });
                }
            }
        }
    }

    for t in taps {
        let name = t.name.clone();
        let existing = have.get(&*t.name).filter(|l| l.kind == Kind::Tun);
        if let Some(l) = have.get(&*t.name)
            && l.kind != Kind::Tun
        {
            // Ours by name but not a tap: make it again.
            ops.push(Op::Delete { name: name.clone() });
        }
        match existing {
            None => {
                ops.push(Op::AddTap { name: name.clone() });
                ops.push(Op::SetMtu {
                    name: name.clone(),
                    mtu: t.mtu,
                });
                ops.push(Op::SetController {
                    name: name.clone(),
                    bridge: t.bridge.clone(),
                });
                ops.push(Op::Up { name });
            }
            Some(l) => {
                if l.mtu != t.mtu {
                    ops.push(Op::SetMtu {
                        name: name.clone(),
                        mtu: t.mtu,
                    });
                }
                if l.controller.as_deref() != Some(t.bridge.as_str()) {
                    ops.push(Op::SetController {
                        name: name.clone(),
                        bridge: t.bridge.clone(),
                    });
                }
                if !l.up {
                    ops.push(Op::Up { name });
                }
            }
        }
    }
    Ok(ops)
}

/// Lists and changes the host's links.
#[async_trait::async_trait]
pub trait Links: Send + Sync {
    async fn list(&self) -> Result<Vec<Link>, LinkError>;
    async fn apply(&self, op: &Op) -> Result<(), LinkError>;
}

/// Makes the host's links agree with what is wanted; returns what it did.
pub async fn reconcile(
    links: &dyn Links,
    bridges: &[WantBridge],
    taps: &[WantTap],
) -> Result<Vec<Op>, LinkError> {
    let current = links.list().await?;
    let ops = plan(bridges, taps, &current)?;
    for op in &ops {
        links.apply(op).await?;
    }
    Ok(ops)
}

/// The host's links over rtnetlink; taps through `/dev/net/tun`.
pub struct RtLinks {
    handle: Handle,
}

impl RtLinks {
    /// Opens a netlink connection, served by a task of the current tokio
    /// runtime.
    pub fn new() -> std::io::Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    async fn index(&self, name: &str) -> Result<u32, String> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(m)) => Ok(m.header.index),
            Ok(None) => Err(format!("no link named {name}")),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn perform(&self, op: &Op) -> Result<(), String> {
        let err = |e: rtnetlink::Error| e.to_string();
        match op {
            Op::Delete { name } => {
                let i = self.index(name).await?;
                self.handle.link().del(i).execute().await.map_err(err)
            }
            Op::AddBridge { name } => self
                .handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .map_err(err),
            Op::AddTap { name } => {
                let name = name.clone();
                tokio::task::spawn_blocking(move || make_tap(&name))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            Op::SetMtu { name, mtu } => {
                let i = self.index(name).await?;
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(i).mtu(*mtu).build())
                    .execute()
                    .await
                    .map_err(err)
            }
            Op::AddAddress { name, net } => {
                let i = self.index(name).await?;
                self.handle
                    .address()
                    .add(i, IpAddr::V4(net.addr()), net.prefix_len())
                    .replace()
                    .execute()
                    .await
                    .map_err(err)
            }
            Op::DelAddress { name, net } => {
                let i = self.index(name).await?;
                let mut all = self
                    .handle
                    .address()
                    .get()
                    .set_link_index_filter(i)
                    .execute();
                while let Some(m) = all.try_next().await.map_err(err)? {
                    if m.header.prefix_len == net.prefix_len()
                        && address_of(&m.attributes) == Some(net.addr())
                    {
                        self.handle.address().del(m).execute().await.map_err(err)?;
                    }
                }
                Ok(())
            }
            Op::SetController { name, bridge } => {
                let i = self.index(name).await?;
                let b = self.index(bridge).await?;
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(i).controller(b).build())
                    .execute()
                    .await
                    .map_err(err)
            }
            Op::Up { name } => {
                let i = self.index(name).await?;
                self.handle
                    .link()
                    .set(LinkUnspec::new_with_index(i).up().build())
                    .execute()
                    .await
                    .map_err(err)
            }
        }
    }
}

fn address_of(attributes: &[AddressAttribute]) -> Option<Ipv4Addr> {
    attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
            Some(*ip)
        }
        _ => None,
    })
}

fn name_of(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

#[async_trait::async_trait]
impl Links for RtLinks {
    async fn list(&self) -> Result<Vec<Link>, LinkError> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| LinkError::List(e.to_string()))?;
        let names: BTreeMap<u32, String> = msgs
            .iter()
            .filter_map(|m| Some((m.header.index, name_of(m)?)))
            .collect();
        let addrs: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| LinkError::List(e.to_string()))?;
        let mut links = Vec::new();
        for m in &msgs {
            let Some(name) = name_of(m) else { continue };
            let mut kind = Kind::Other;
            let mut controller = None;
            let mut mtu = 0;
            for a in &m.attributes {
                match a {
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            match i {
                                LinkInfo::Kind(InfoKind::Bridge) => kind = Kind::Bridge,
                                LinkInfo::Kind(InfoKind::Tun) => kind = Kind::Tun,
                                _ => {}
                            }
                        }
                    }
                    LinkAttribute::Controller(i) => controller = names.get(i).cloned(),
                    LinkAttribute::Mtu(m) => mtu = *m,
                    _ => {}
                }
            }
            let addresses = addrs
                .iter()
                .filter(|a| a.header.index == m.header.index)
                .filter_map(|a| {
                    let ip = address_of(&a.attributes)?;
                    Ipv4Net::new(ip, a.header.prefix_len).ok()
                })
                .collect();
            links.push(Link {
                name,
                kind,
                controller,
                mtu,
                up: m.header.flags.contains(LinkFlags::Up),
                addresses,
            });
        }
        Ok(links)
    }

    async fn apply(&self, op: &Op) -> Result<(), LinkError> {
        self.perform(op).await.map_err(|e| LinkError::op(op, e))
    }
}

/// Makes a persistent tap (no packet information header, one queue, as
/// QEMU's `-netdev tap,ifname=` opens it).
fn make_tap(name: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    nix::ioctl_write_ptr_bad!(
        tun_set_iff,
        nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
        libc::ifreq
    );
    nix::ioctl_write_int_bad!(
        tun_set_persist,
        nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
    );
    if name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "tap name {name:?} is longer than {} bytes",
                libc::IFNAMSIZ - 1
            ),
        ));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: the descriptor is open on /dev/net/tun and `req` outlives
    // both calls, which read it only.
    unsafe {
        tun_set_iff(tun.as_raw_fd(), &req).map_err(std::io::Error::from)?;
        tun_set_persist(tun.as_raw_fd(), 1).map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// An in-memory host for tests: applies operations to its list of links
/// and records them.
#[derive(Default)]
pub struct FakeLinks {
    pub links: Mutex<Vec<Link>>,
    pub applied: Mutex<Vec<Op>>,
    /// An operation on this link fails.
    pub fail_on: Mutex<Option<String>>,
}

#[async_trait::async_trait]
impl Links for FakeLinks {
    async fn list(&self) -> Result<Vec<Link>, LinkError> {
        Ok(self.links.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    async fn apply(&self, op: &Op) -> Result<(), LinkError> {
        if self
            .fail_on
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            == Some(op.link())
        {
            return Err(LinkError::op(op, "Operation not permitted"));
        }
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(op.clone());
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let find = |links: &mut Vec<Link>, name: &str| links.iter().position(|l| l.name == name);
        let missing = || LinkError::op(op, "No such device");
        match op {
            Op::Delete { name } => {
                let i = find(&mut links, name).ok_or_else(missing)?;
                links.remove(i);
                for l in links.iter_mut() {
                    if l.controller.as_deref() == Some(name) {
                        l.controller = None;
                    }
                }
            }
            Op::AddBridge { name } | Op::AddTap { name } => {
                if find(&mut links, name).is_some() {
                    return Err(LinkError::op(op, "File exists"));
                }
                links.push(Link {
                    name: name.clone(),
                    kind: if matches!(op, Op::AddBridge { .. }) {
                        Kind::Bridge
                    } else {
                        Kind::Tun
                    },
                    controller: None,
                    mtu: 1500,
                    up: false,
                    addresses: vec![],
                });
            }
            Op::SetMtu { name, mtu } => {
                let i = find(&mut links, name).ok_or_else(missing)?;
                links[i].mtu = *mtu;
            }
            Op::AddAddress { name, net } => {
                let i = find(&mut links, name).ok_or_else(missing)?;
                links[i].addresses.push(*net);
            }
            Op::DelAddress { name, net } => {
                let i = find(&mut links, name).ok_or_else(missing)?;
                links[i].addresses.retain(|a| a != net);
            }
            Op::SetController { name, bridge } => {
                find(&mut links, bridge).ok_or_else(missing)?;
                let i = find(&mut links, name).ok_or_else(missing)?;
                links[i].controller = Some(bridge.clone());
            }
            Op::Up { name } => {
                let i = find(&mut links, name).ok_or_else(missing)?;
                links[i].up = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(name: &str, gw: &str) -> WantBridge {
        WantBridge {
            scope: format!("s-{name}"),
            name: name.into(),
            mtu: 1500,
            address: Some(gw.parse().unwrap()),
            owned: true,
        }
    }

    fn tap(name: &str, bridge: &str) -> WantTap {
        WantTap {
            name: name.into(),
            bridge: bridge.into(),
            mtu: 1500,
        }
    }

    fn host_link(name: &str, kind: Kind) -> Link {
        Link {
            name: name.into(),
            kind,
            controller: None,
            mtu: 1500,
            up: true,
            addresses: vec![],
        }
    }

    #[tokio::test]
    async fn makes_bridges_then_taps_and_a_second_pass_does_nothing() {
        let host = FakeLinks::default();
        host.links
            .lock()
            .unwrap()
            .push(host_link("eth0", Kind::Other));
        let bridges = [bridge("apb-1", "10.88.1.1/24")];
        let taps = [tap("apt00000001aaaa", "apb-1")];
        let ops = reconcile(&host, &bridges, &taps).await.unwrap();
        assert_eq!(
            ops,
            [
                Op::AddBridge {
                    name: "apb-1".into()
                },
                Op::SetMtu {
                    name: "apb-1".into(),
                    mtu: 1500
                },
                Op::AddAddress {
                    name: "apb-1".into(),
                    net: "10.88.1.1/24".parse().unwrap()
                },
                Op::Up {
                    name: "apb-1".into()
                },
                Op::AddTap {
                    name: "apt00000001aaaa".into()
                },
                Op::SetMtu {
                    name: "apt00000001aaaa".into(),
                    mtu: 1500
                },
                Op::SetController {
                    name: "apt00000001aaaa".into(),
                    bridge: "apb-1".into()
                },
                Op::Up {
                    name: "apt00000001aaaa".into()
                },
            ]
        );
        let again = reconcile(&host, &bridges, &taps).await.unwrap();
        assert_eq!(again, [], "converged");
    }

    #[tokio::test]
    async fn deletes_only_our_links_no_longer_wanted_taps_first() {
        let host = FakeLinks::default();
        {
            let mut l = host.links.lock().unwrap();
            l.push(host_link("apb-old", Kind::Bridge));
            let mut t = host_link("aptdeadbeef0000", Kind::Tun);
            t.controller = Some("apb-old".into());
            l.push(t);
            l.push(host_link("docker0", Kind::Bridge));
            l.push(host_link("tap0", Kind::Tun));
            l.push(host_link("eth0", Kind::Other));
        }
        let ops = reconcile(&host, &[], &[]).await.unwrap();
        assert_eq!(
            ops,
            [
                Op::Delete {
                    name: "aptdeadbeef0000".into()
                },
                Op::Delete {
                    name: "apb-old".into()
                },
            ]
        );
        let left: Vec<String> = host
            .links
            .lock()
            .unwrap()
            .iter()
            .map(|l| l.name.clone())
            .collect();
        assert_eq!(left, ["docker0", "tap0", "eth0"]);
    }

    #[tokio::test]
    async fn repairs_drift_of_our_bridge_and_tap() {
        let host = FakeLinks::default();
        {
            let mut l = host.links.lock().unwrap();
            let mut b = host_link("apb-1", Kind::Bridge);
            b.up = false;
            b.mtu = 9000;
            b.addresses = vec!["192.168.7.1/24".parse().unwrap()];
            l.push(b);
            l.push(host_link("apb-2", Kind::Bridge));
            let mut t = host_link("apt00000001aaaa", Kind::Tun);
            t.controller = Some("apb-2".into());
            l.push(t);
        }
        let bridges = [
            bridge("apb-1", "10.88.1.1/24"),
            bridge("apb-2", "10.88.2.1/24"),
        ];
        let taps = [tap("apt00000001aaaa", "apb-1")];
        reconcile(&host, &bridges, &taps).await.unwrap();
        let l = host.links.lock().unwrap();
        assert_eq!(l[0].addresses, ["10.88.1.1/24".parse::<Ipv4Net>().unwrap()]);
        assert!(l[0].up);
        assert_eq!(l[0].mtu, 1500);
        assert_eq!(l[2].controller.as_deref(), Some("apb-1"));
    }

    #[tokio::test]
    async fn an_external_scope_needs_an_existing_bridge_and_is_left_as_it_is() {
        let host = FakeLinks::default();
        let ext = WantBridge {
            scope: "lan".into(),
            name: "br-lan".into(),
            mtu: 1500,
            address: None,
            owned: false,
        };
        let e = reconcile(&host, std::slice::from_ref(&ext), &[])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Scope lan: host bridge br-lan does not exist (an external scope joins an existing bridge)"
        );
        host.links
            .lock()
            .unwrap()
            .push(host_link("br-lan", Kind::Other));
        let e = reconcile(&host, std::slice::from_ref(&ext), &[])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("is not a bridge"), "{e}");
        {
            let mut l = host.links.lock().unwrap();
            l.clear();
            let mut b = host_link("br-lan", Kind::Bridge);
            b.addresses = vec!["192.168.1.10/24".parse().unwrap()];
            b.mtu = 9000;
            l.push(b);
        }
        let ops = reconcile(&host, &[ext], &[tap("apt00000001bbbb", "br-lan")])
            .await
            .unwrap();
        assert!(
            ops.iter().all(|o| o.link() != "br-lan"),
            "the host's bridge is not changed: {ops:?}"
        );
        assert_eq!(
            host.links.lock().unwrap()[1].controller.as_deref(),
            Some("br-lan")
        );
    }

    #[tokio::test]
    async fn a_failing_operation_names_the_link_and_what_was_done() {
        let host = FakeLinks::default();
        *host.fail_on.lock().unwrap() = Some("apb-1".into());
        let e = reconcile(&host, &[bridge("apb-1", "10.88.1.1/24")], &[])
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Host link apb-1: making the bridge: Operation not permitted"
        );
    }
}
