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

fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

fn link_has_mac(msg: &LinkMessage, mac: &[u8; 6]) -> bool {
    msg.attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Address(addr) if addr.as_slice() == mac))
}

/// All links.
async fn links(handle: &Handle) -> Result<Vec<LinkMessage>, rtnetlink::Error> {
    handle.link().get().execute().try_collect().await
}

/// Finds the interface with `mac`, waiting for it to appear.
async fn find_link(handle: &Handle, plan: &Plan) -> Result<(u32, String), BootError> {
    let attempts = DEVICE_WAIT.as_millis() / POLL_INTERVAL.as_millis();
    for attempt in 0..=attempts {
        let all = links(handle).await.map_err(|source| BootError::Link {
            action: "Listing interfaces".into(),
            iface: format!("for network '{}'", plan.name),
            source,
        })?;
        if let Some(link) = all.iter().find(|l| link_has_mac(l, &plan.mac)) {
            let name = link_name(link).unwrap_or("?").to_owned();
            return Ok((link.header.index, name));
        }
        if attempt < attempts {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    Err(BootError::LinkNotFound {
        network: plan.name.clone(),
        wanted: format!("with MAC {}", format_mac(&plan.mac)),
    })
}

fn link_error(
    action: impl Into<String>,
    iface: &str,
) -> impl FnOnce(rtnetlink::Error) -> BootError {
    let action = action.into();
    let iface = iface.to_owned();
    move |source| BootError::Link {
        action,
        iface,
        source,
    }
}

async fn set_up(handle: &Handle, index: u32, iface: &str) -> Result<(), BootError> {
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(link_error("Bringing up", iface))
}

async fn configure_link(handle: &Handle, plan: &Plan) -> Result<(), BootError> {
    let (index, iface) = find_link(handle, plan).await?;
    if plan.mtu != 0 {
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(plan.mtu).build())
            .execute()
            .await
            .map_err(link_error(format!("Setting MTU {}", plan.mtu), &iface))?;
    }
    for &(ip, prefix) in &plan.addresses {
        handle
            .address()
            .add(index, ip, prefix)
            .replace()
            .execute()
            .await
            .map_err(link_error(format!("Adding address {ip}/{prefix}"), &iface))?;
    }
    set_up(handle, index, &iface).await?;
    if let Some(gateway) = plan.gateway {
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
        handle
            .route()
            .add(route)
            .replace()
            .execute()
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

pub(super) async fn configure_network(spec: &ContainerSpec) -> Result<(), BootError> {
    // Check the whole spec before changing anything.
    let plans = plan(spec)?;
    let (connection, handle, _) = rtnetlink::new_connection().map_err(BootError::Netlink)?;
    tokio::spawn(connection);

    let lo = handle
        .link()
        .get()
        .match_name("lo".to_owned())
        .execute()
        .try_next()
        .await
        .map_err(link_error("Looking up", "lo"))?;
    match lo {
        Some(lo) => set_up(&handle, lo.header.index, "lo").await?,
        None => crate::error!("no loopback interface lo"),
    }
    for plan in &plans {
        configure_link(&handle, plan).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::Network;

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
