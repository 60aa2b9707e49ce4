//! Network bring-up inside the VM over rtnetlink: `lo`, then each interface
//! of `spec.networks`, found by MAC, with MTU, addresses and default route.
//!
//! Owns the parsing of the spec's network fields (pure, tested here) and the
//! netlink requests. Must not write files: `/etc/hosts` and
//! `/etc/resolv.conf` belong to `identity`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use proto::v1::ContainerSpec;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{BootError, DEVICE_WAIT, POLL_INTERVAL};

/// One network of the spec, checked and parsed.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    name: String,
    mac: [u8; 6],
    mtu: u32,
    addresses: Vec<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
}

fn invalid(field: String, problem: String) -> BootError {
    BootError::InvalidSpec { field, problem }
}

/// "52:54:00:12:34:56" (or with dashes) into bytes.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// "10.0.0.2/24" into address and prefix length; the prefix is required.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (ip, prefix) = s.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((ip, prefix))
}

fn plan(spec: &ContainerSpec) -> Result<Vec<Plan>, BootError> {
    spec.networks
        .iter()
        .enumerate()
        .map(|(i, net)| {
            let field = |f: &str| format!("spec.networks[{i}].{f}");
            let mac = parse_mac(&net.mac).ok_or_else(|| {
                invalid(field("mac"), format!("'{}' is not a MAC address", net.mac))
            })?;
            let addresses = net
                .addresses
                .iter()
                .map(|a| {
                    parse_cidr(a).ok_or_else(|| {
                        invalid(
                            field("addresses"),
                            format!("'{a}' is not an address in CIDR form"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
            let gateway = match net.gateway.as_str() {
                "" => None,
                g => Some(g.parse().map_err(|_| {
                    invalid(field("gateway"), format!("'{g}' is not an IP address"))
                })?),
            };
            Ok(Plan {
                name: if net.name.is_empty() {
                    format!("#{i}")
                } else {
                    net.name.clone()
                },
                mac,
                mtu: net.mtu,
                addresses,
                gateway,
            })
        })
        .collect()
}

/// An interface as the netlink side lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

pub(crate) type NetlinkResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The netlink requests network bring-up makes: rtnetlink in the VM, a
/// recording fake in tests (youki's way), so the logic is tested without
/// root.
pub(crate) trait Netlink {
    fn links(&self) -> impl std::future::Future<Output = NetlinkResult<Vec<Link>>> + Send;
    fn set_up(&self, index: u32) -> impl std::future::Future<Output = NetlinkResult<()>> + Send;
    fn set_mtu(
        &self,
        index: u32,
        mtu: u32,
    ) -> impl std::future::Future<Output = NetlinkResult<()>> + Send;
    fn add_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
    ) -> impl std::future::Future<Output = NetlinkResult<()>> + Send;
    fn add_default_route(
        &self,
        index: u32,
        gateway: IpAddr,
    ) -> impl std::future::Future<Output = NetlinkResult<()>> + Send;
    /// Waits `POLL_INTERVAL` between looks for an interface still to come.
    fn pause(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// The real thing, over an rtnetlink connection.
struct RtNetlink(Handle);

impl Netlink for RtNetlink {
    async fn links(&self) -> NetlinkResult<Vec<Link>> {
        let all: Vec<LinkMessage> = self.0.link().get().execute().try_collect().await?;
        Ok(all
            .iter()
            .map(|m| Link {
                index: m.header.index,
                name: m
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::IfName(n) => Some(n.clone()),
                        _ => None,
                    })
                    .unwrap_or_else(|| "?".into()),
                mac: m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(addr) => <[u8; 6]>::try_from(addr.as_slice()).ok(),
                    _ => None,
                }),
            })
            .collect())
    }

    async fn set_up(&self, index: u32) -> NetlinkResult<()> {
        self.0
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await?;
        Ok(())
    }

    async fn set_mtu(&self, index: u32, mtu: u32) -> NetlinkResult<()> {
        self.0
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await?;
        Ok(())
    }

    async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> NetlinkResult<()> {
        self.0
            .address()
            .add(index, ip, prefix)
            .replace()
            .execute()
            .await?;
        Ok(())
    }

    async fn add_default_route(&self, index: u32, gateway: IpAddr) -> NetlinkResult<()> {
        let route = match gateway {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        self.0.route().add(route).replace().execute().await?;
        Ok(())
    }

    async fn pause(&self) {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn link_error(
    action: impl Into<String>,
    iface: &str,
) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> BootError {
    let action = action.into();
    let iface = iface.to_owned();
    move |source| BootError::Link {
        action,
        iface,
        source,
    }
}

/// Finds the interface with the plan's MAC, waiting for it to appear.
async fn find_link(nl: &impl Netlink, plan: &Plan) -> Result<(u32, String), BootError> {
    let attempts = DEVICE_WAIT.as_millis() / POLL_INTERVAL.as_millis();
    for attempt in 0..=attempts {
        let all = nl.links().await.map_err(link_error(
            "Listing interfaces",
            &format!("for network '{}'", plan.name),
        ))?;
        if let Some(link) = all.iter().find(|l| l.mac == Some(plan.mac)) {
            return Ok((link.index, link.name.clone()));
        }
        if attempt < attempts {
            nl.pause().await;
        }
    }
    Err(BootError::LinkNotFound {
        network: plan.name.clone(),
        wanted: format!("with MAC {}", format_mac(&plan.mac)),
    })
}

async fn configure_link(nl: &impl Netlink, plan: &Plan) -> Result<(), BootError> {
    let (index, iface) = find_link(nl, plan).await?;
    if plan.mtu != 0 {
        nl.set_mtu(index, plan.mtu)
            .await
            .map_err(link_error(format!("Setting MTU {}", plan.mtu), &iface))?;
    }
    for &(ip, prefix) in &plan.addresses {
        nl.add_address(index, ip, prefix)
            .await
            .map_err(link_error(format!("Adding address {ip}/{prefix}"), &iface))?;
    }
    nl.set_up(index)
        .await
        .map_err(link_error("Bringing up", &iface))?;
    if let Some(gateway) = plan.gateway {
        nl.add_default_route(index, gateway)
            .await
            .map_err(link_error(
                format!("Adding default route via {gateway}"),
                &iface,
            ))?;
    }
    let addrs: Vec<String> = plan
        .addresses
        .iter()
        .map(|(ip, p)| format!("{ip}/{p}"))
        .collect();
    crate::info!(
        "network '{}': {iface} up with {}",
        plan.name,
        if addrs.is_empty() {
            "no address".to_owned()
        } else {
            addrs.join(", ")
        }
    );
    Ok(())
}

/// Brings up `lo`, then every planned interface, through `nl`.
async fn configure(nl: &impl Netlink, plans: &[Plan]) -> Result<(), BootError> {
    let all = nl
        .links()
        .await
        .map_err(link_error("Listing interfaces", "lo"))?;
    match all.iter().find(|l| l.name == "lo") {
        Some(lo) => nl
            .set_up(lo.index)
            .await
            .map_err(link_error("Bringing up", "lo"))?,
        None => crate::error!("no loopback interface lo"),
    }
    for plan in plans {
        configure_link(nl, plan).await?;
    }
    Ok(())
}

pub(super) async fn configure_network(spec: &ContainerSpec) -> Result<(), BootError> {
    // Check the whole spec before changing anything.
    let plans = plan(spec)?;
    let (connection, handle, _) = rtnetlink::new_connection().map_err(BootError::Netlink)?;
    tokio::spawn(connection);
    configure(&RtNetlink(handle), &plans).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::Network;
    use std::sync::Mutex;

    /// Records every request; its links are what it was given, and an
    /// interface may appear only after some looks.
    struct Fake {
        links: Vec<Link>,
        appears_after: usize,
        looks: Mutex<usize>,
        calls: Mutex<Vec<String>>,
        fail: Option<&'static str>,
    }

    impl Fake {
        fn new(links: Vec<Link>) -> Fake {
            Fake {
                links,
                appears_after: 0,
                looks: Mutex::new(0),
                calls: Mutex::new(vec![]),
                fail: None,
            }
        }

        fn call(&self, c: String) -> NetlinkResult<()> {
            let failed = self.fail.is_some_and(|f| c.starts_with(f));
            self.calls.lock().unwrap().push(c);
            if failed {
                return Err(Box::new(std::io::Error::other("refused")));
            }
            Ok(())
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Netlink for Fake {
        async fn links(&self) -> NetlinkResult<Vec<Link>> {
            let mut looks = self.looks.lock().unwrap();
            *looks += 1;
            Ok(self
                .links
                .iter()
                .filter(|l| l.name == "lo" || *looks > self.appears_after)
                .cloned()
                .collect())
        }
        async fn set_up(&self, index: u32) -> NetlinkResult<()> {
            self.call(format!("up {index}"))
        }
        async fn set_mtu(&self, index: u32, mtu: u32) -> NetlinkResult<()> {
            self.call(format!("mtu {index} {mtu}"))
        }
        async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> NetlinkResult<()> {
            self.call(format!("addr {index} {ip}/{prefix}"))
        }
        async fn add_default_route(&self, index: u32, gateway: IpAddr) -> NetlinkResult<()> {
            self.call(format!("route {index} via {gateway}"))
        }
        async fn pause(&self) {}
    }

    fn link(index: u32, name: &str, mac: Option<[u8; 6]>) -> Link {
        Link {
            index,
            name: name.into(),
            mac,
        }
    }

    fn spec_of(nets: Vec<Network>) -> Vec<Plan> {
        plan(&ContainerSpec {
            networks: nets,
            ..Default::default()
        })
        .unwrap()
    }

    fn net(name: &str, mac: &str, addr: &str, gateway: &str) -> Network {
        Network {
            name: name.into(),
            mac: mac.into(),
            addresses: vec![addr.into()],
            gateway: gateway.into(),
            mtu: 1400,
        }
    }

    #[tokio::test]
    async fn interfaces_are_found_by_mac_and_configured_in_order() {
        let m1 = [2, 0, 0, 0, 0, 1];
        let m2 = [2, 0, 0, 0, 0, 2];
        // Names say nothing: the second network's NIC is eth0.
        let fake = Fake {
            appears_after: 3,
            ..Fake::new(vec![
                link(1, "lo", None),
                link(2, "eth0", Some(m2)),
                link(3, "eth1", Some(m1)),
            ])
        };
        let plans = spec_of(vec![
            net("front", "02:00:00:00:00:01", "10.0.1.2/24", "10.0.1.1"),
            net("closed", "02:00:00:00:00:02", "10.0.2.2/24", ""),
        ]);
        configure(&fake, &plans).await.unwrap();
        assert_eq!(
            fake.calls(),
            [
                "up 1",
                "mtu 3 1400",
                "addr 3 10.0.1.2/24",
                "up 3",
                "route 3 via 10.0.1.1",
                "mtu 2 1400",
                "addr 2 10.0.2.2/24",
                "up 2",
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_interface_or_a_refused_request_names_the_network() {
        let fake = Fake::new(vec![link(1, "lo", None)]);
        let plans = spec_of(vec![net("front", "02:00:00:00:00:01", "10.0.1.2/24", "")]);
        let e = configure(&fake, &plans).await.unwrap_err().to_string();
        assert!(
            e.contains("front") && e.contains("02:00:00:00:00:01"),
            "{e}"
        );

        let fake = Fake {
            fail: Some("addr"),
            ..Fake::new(vec![
                link(1, "lo", None),
                link(2, "eth0", Some([2, 0, 0, 0, 0, 1])),
            ])
        };
        let e = configure(&fake, &plans).await.unwrap_err().to_string();
        assert_eq!(e, "Adding address 10.0.1.2/24 on interface eth0");
        assert!(!fake.calls().iter().any(|c| c.starts_with("route")));
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:0f"),
            Some([0x52, 0x54, 0x00, 0xab, 0xcd, 0x0f])
        );
        assert_eq!(
            parse_mac("52-54-00-ab-cd-0f"),
            parse_mac("52:54:00:ab:cd:0f")
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert_eq!(
            format_mac(&[0x52, 0x54, 0, 0xab, 0xcd, 0x0f]),
            "52:54:00:ab:cd:0f"
        );
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            parse_cidr("10.0.0.2/24"),
            Some((IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 24))
        );
        assert_eq!(
            parse_cidr("fd00::2/64"),
            Some((IpAddr::V6("fd00::2".parse().unwrap()), 64))
        );
        for bad in [
            "10.0.0.2",
            "10.0.0.2/33",
            "fd00::2/129",
            "x/24",
            "10.0.0.2/",
        ] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
    }

    #[test]
    fn plans_name_the_bad_field() {
        let net = Network {
            name: "bridge".into(),
            mac: "52:54:00:00:00:01".into(),
            addresses: vec!["10.0.0.2/24".into()],
            gateway: "10.0.0.1".into(),
            mtu: 1400,
        };
        let mut spec = ContainerSpec {
            networks: vec![net.clone()],
            ..Default::default()
        };
        let plans = plan(&spec).unwrap();
        assert_eq!(
            plans[0].gateway,
            Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(plans[0].mtu, 1400);

        spec.networks.push(Network {
            addresses: vec!["10.0.1.2".into()],
            ..net.clone()
        });
        let err = plan(&spec).unwrap_err().to_string();
        assert_eq!(
            err,
            "Invalid container spec: spec.networks[1].addresses '10.0.1.2' is not an address in CIDR form"
        );
        spec.networks[1] = Network {
            mac: "nope".into(),
            ..net.clone()
        };
        assert!(
            plan(&spec)
                .unwrap_err()
                .to_string()
                .contains("spec.networks[1].mac 'nope'")
        );
        spec.networks[1] = Network {
            gateway: "10.0.0".into(),
            ..net
        };
        assert!(
            plan(&spec)
                .unwrap_err()
                .to_string()
                .contains("spec.networks[1].gateway")
        );
    }
}
