//! Host side of the local backend's networking: it realises the network
//! component's view (scopes and bound endpoints) on this host as bridges
//! and taps ([`links`]), firewall and NAT rules ([`firewall`]) and a name
//! server per scope ([`dns`]).
//!
//! A scope is realised while it has at least one bound endpoint: its
//! bridge, rules and name server exist from the first member's bind to the
//! last one's leave, and an appliance with no container on a network
//! changes nothing on its host. Every apply computes the whole wanted
//! state from the view and makes the host agree with it, so it is
//! idempotent, and a restart (or a crash half-way) converges on the next.

pub mod dns;
pub mod firewall;
pub mod links;

use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::sync::Mutex;

use super::nics::tap_name;
use crate::portlayer::model::{OutgoingRule, PublishedPort, ScopeKind};
use crate::portlayer::network::NetworkView;
use links::{Links, RtLinks, WantBridge, WantTap};

/// A scope as the host realises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostScope {
    pub name: String,
    pub kind: ScopeKind,
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub mtu: u32,
    pub outgoing: bool,
    /// The scope made out of the box: its members do not resolve each
    /// other by name.
    pub default: bool,
}

/// A bound endpoint as the host realises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEndpoint {
    pub container: String,
    /// The container's name (resolved by its scope's members).
    pub name: String,
    pub scope: String,
    pub tap: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub aliases: Vec<String>,
    pub published: Vec<PublishedPort>,
    pub outgoing: Vec<OutgoingRule>,
}

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("Scope {scope}: {field} {value:?} is not an IPv4 {what}")]
    Address {
        scope: String,
        field: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{0}")]
    Links(#[from] links::LinkError),
    #[error("{0}")]
    Firewall(#[from] firewall::FirewallError),
    #[error("Setting {path}: {message}")]
    Sysctl { path: String, message: String },
    #[error("Scope {scope}: its name server: {message}")]
    Dns { scope: String, message: String },
}

/// What the host must have for `view`.
pub fn realised(view: &NetworkView) -> Result<(Vec<HostScope>, Vec<HostEndpoint>), HostNetError> {
    let mut endpoints = Vec::new();
    for m in &view.members {
        let e = &m.endpoint;
        if !e.bound || e.address.is_empty() {
            continue;
        }
        let address = e
            .address
            .split('/')
            .next()
            .unwrap_or_default()
            .parse::<Ipv4Addr>()
            .map_err(|_| HostNetError::Address {
                scope: e.scope.clone(),
                field: "address",
                value: e.address.clone(),
                what: "address",
            })?;
        endpoints.push(HostEndpoint {
            container: m.container.clone(),
            name: m.name.clone(),
            scope: e.scope.clone(),
            tap: tap_name(&m.container, &e.scope),
            mac: e.mac.clone(),
            address,
            aliases: e.aliases.clone(),
            published: e.published.clone(),
            outgoing: e.outgoing.clone(),
        });
    }
    let mut scopes = Vec::new();
    for s in &view.scopes {
        if !endpoints.iter().any(|e| e.scope == s.name) {
            continue;
        }
        let subnet = s
            .subnet
            .parse::<Ipv4Net>()
            .map_err(|_| HostNetError::Address {
                scope: s.name.clone(),
                field: "subnet",
                value: s.subnet.clone(),
                what: "CIDR",
            })?
            .trunc();
        let gateway = if s.gateway.is_empty() {
            None
        } else {
            Some(
                s.gateway
                    .parse::<Ipv4Addr>()
                    .map_err(|_| HostNetError::Address {
                        scope: s.name.clone(),
                        field: "gateway",
                        value: s.gateway.clone(),
                        what: "address",
                    })?,
            )
        };
        scopes.push(HostScope {
            name: s.name.clone(),
            kind: s.kind,
            bridge: s.bridge.clone(),
            subnet,
            gateway,
            mtu: s.mtu,
            outgoing: s.outgoing && s.kind != ScopeKind::Closed,
            default: s.default,
        });
    }
    // Endpoints of scopes the view does not have are left out with them.
    endpoints.retain(|e| scopes.iter().any(|s| s.name == e.scope));
    Ok((scopes, endpoints))
}

/// The links `scopes` and `endpoints` need.
pub fn wanted_links(
    scopes: &[HostScope],
    endpoints: &[HostEndpoint],
) -> (Vec<WantBridge>, Vec<WantTap>) {
    let bridges = scopes
        .iter()
        .map(|s| WantBridge {
            scope: s.name.clone(),
            name: s.bridge.clone(),
            mtu: s.mtu,
            address: s
                .gateway
                .filter(|_| s.kind != ScopeKind::External)
                .and_then(|gw| Ipv4Net::new(gw, s.subnet.prefix_len()).ok()),
            owned: s.kind != ScopeKind::External,
        })
        .collect();
    let taps = endpoints
        .iter()
        .filter_map(|e| {
            let s = scopes.iter().find(|s| s.name == e.scope)?;
            Some(WantTap {
                name: e.tap.clone(),
                bridge: s.bridge.clone(),
                mtu: s.mtu,
            })
        })
        .collect();
    (bridges, taps)
}

/// The name servers the realised scopes need, keyed by scope: open
/// scopes' servers forward what they do not know to the host's resolvers,
/// closed scopes' servers answer their members' names only (a name looked
/// up outside would be a way out). Members of the default scope do not
/// resolve each other (as docker's `bridge`): its server only forwards.
pub fn wanted_dns(
    scopes: &[HostScope],
    endpoints: &[HostEndpoint],
) -> (
    std::collections::BTreeMap<String, dns::ScopeDns>,
    std::collections::BTreeMap<String, dns::ScopeDns>,
) {
    let mut open = std::collections::BTreeMap::new();
    let mut closed = std::collections::BTreeMap::new();
    for sc in scopes.iter().filter(|s| s.kind != ScopeKind::External) {
        let Some(listen) = sc.gateway else { continue };
        let mut names = dns::Names::new();
        if !sc.default {
            for e in endpoints.iter().filter(|e| e.scope == sc.name) {
                for n in std::iter::once(&e.name).chain(&e.aliases) {
                    if !n.is_empty() {
                        names.entry(n.to_lowercase()).or_default().push(e.address);
                    }
                }
            }
        }
        let d = dns::ScopeDns { listen, names };
        if sc.outgoing {
            open.insert(sc.name.clone(), d);
        } else {
            closed.insert(sc.name.clone(), d);
        }
    }
    (open, closed)
}

/// What earlier applies left, for the next.
#[derive(Debug, Default)]
struct Applied {
    /// Whether our nftables tables may exist.
    tables: Option<bool>,
    /// Name servers of open scopes (forwarding) and of closed ones.
    dns: Option<(dns::Dns, dns::Dns)>,
}

/// The host's network, as the local backend realises it. Applies are
/// serialised.
pub struct HostNetwork {
    links: Mutex<Option<Arc<dyn Links>>>,
    state: Mutex<Applied>,
}

impl Default for HostNetwork {
    fn default() -> Self {
        Self::new()
    }
}

impl HostNetwork {
    pub fn new() -> Self {
        Self {
            links: Mutex::new(None),
            state: Mutex::new(Applied::default()),
        }
    }

    /// With these links instead of the host's (tests).
    pub fn with_links(links: Arc<dyn Links>) -> Self {
        Self {
            links: Mutex::new(Some(links)),
            state: Mutex::new(Applied::default()),
        }
    }

    async fn links(&self) -> Result<Arc<dyn Links>, HostNetError> {
        let mut l = self.links.lock().await;
        if let Some(l) = &*l {
            return Ok(l.clone());
        }
        let made: Arc<dyn Links> = Arc::new(RtLinks::new().map_err(|e| {
            HostNetError::Links(links::LinkError::List(format!(
                "opening a netlink connection: {e}"
            )))
        })?);
        *l = Some(made.clone());
        Ok(made)
    }

    /// Makes the host agree with `view`.
    pub async fn apply(&self, view: &NetworkView) -> Result<(), HostNetError> {
        let mut state = self.state.lock().await;
        let (scopes, endpoints) = realised(view)?;
        let (bridges, taps) = wanted_links(&scopes, &endpoints);
        let links = self.links().await?;
        let ops = links::reconcile(&*links, &bridges, &taps).await?;
        if !ops.is_empty() {
            tracing::info!("network: {} link changes: {ops:?}", ops.len());
        }

        if !scopes.is_empty() {
            let owned: Vec<String> = scopes
                .iter()
                .filter(|s| s.kind != ScopeKind::External)
                .map(|s| s.bridge.clone())
                .collect();
            tokio::task::spawn_blocking(move || sysctls(&owned))
                .await
                .map_err(|e| HostNetError::Sysctl {
                    path: "net.ipv4".into(),
                    message: e.to_string(),
                })??;
        }

        let rules = if scopes.is_empty() {
            // Nothing realised: remove our tables, if there may be any
            // (never run nft on a host we have no rules on).
            let present = match state.tables {
                Some(p) => p,
                None => tokio::task::spawn_blocking(tables_present)
                    .await
                    .unwrap_or(true),
            };
            present.then(firewall::removal)
        } else {
            Some(firewall::ruleset(&scopes, &endpoints)?)
        };
        if let Some(rules) = rules {
            tokio::task::spawn_blocking(move || firewall::apply(&rules))
                .await
                .map_err(|e| firewall::FirewallError::Nft(e.to_string()))??;
        }
        state.tables = Some(!scopes.is_empty());

        let (open, closed) = wanted_dns(&scopes, &endpoints);
        if state.dns.is_none() {
            if open.is_empty() && closed.is_empty() {
                return Ok(());
            }
            let conf = tokio::fs::read_to_string("/etc/resolv.conf")
                .await
                .unwrap_or_default();
            let upstream = dns::upstream_from_resolv_conf(&conf);
            state.dns = Some((dns::Dns::new(upstream), dns::Dns::new(vec![])));
        }
        let Some((open_dns, closed_dns)) = state.dns.as_mut() else {
            return Ok(());
        };
        let mut failed = open_dns.apply(open).await;
        failed.extend(closed_dns.apply(closed).await);
        if let Some((scope, e)) = failed.into_iter().next() {
            let mut message = e.to_string();
            if let Some(src) = std::error::Error::source(&e) {
                message = format!("{message}: {src}");
            }
            return Err(HostNetError::Dns { scope, message });
        }
        Ok(())
    }
}

/// Whether either of our tables exists (`nft list tables` only reads).
fn tables_present() -> bool {
    match std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim().ends_with(&format!(" {}", firewall::TABLE))),
        Err(_) => false,
    }
}

/// Routing between scopes and out (IPv4 forwarding), and loopback
/// addresses allowed onto our bridges (published ports reached from the
/// host's own 127.0.0.1 are DNATed to a container).
fn sysctls(bridges: &[String]) -> Result<(), HostNetError> {
    let mut paths = vec!["/proc/sys/net/ipv4/ip_forward".to_string()];
    for b in bridges {
        paths.push(format!("/proc/sys/net/ipv4/conf/{b}/route_localnet"));
    }
    for p in paths {
        let cur = std::fs::read_to_string(&p).unwrap_or_default();
        if cur.trim() != "1" {
            std::fs::write(&p, "1").map_err(|e| HostNetError::Sysctl {
                path: p.clone(),
                message: e.to_string(),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portlayer::model::{Endpoint, PowerState, Scope};
    use crate::portlayer::network::Member;

    fn scope(name: &str, kind: ScopeKind) -> Scope {
        Scope {
            name: name.into(),
            kind,
            subnet: "10.88.3.0/24".into(),
            gateway: if kind == ScopeKind::External {
                String::new()
            } else {
                "10.88.3.1".into()
            },
            mtu: 1400,
            outgoing: true,
            bridge: if kind == ScopeKind::External {
                "br-lan".into()
            } else {
                format!("apb-{name}")
            },
            ..Default::default()
        }
    }

    fn member(container: &str, scope: &str, bound: bool, address: &str) -> Member {
        Member {
            container: container.into(),
            name: format!("n-{container}"),
            state: PowerState::Running,
            endpoint: Endpoint {
                scope: scope.into(),
                bound,
                address: address.into(),
                mac: "02:00:00:00:00:01".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn only_scopes_with_bound_members_are_realised() {
        let view = NetworkView {
            scopes: vec![
                scope("a", ScopeKind::Bridge),
                scope("b", ScopeKind::Bridge),
                scope("c", ScopeKind::Closed),
            ],
            members: vec![
                member("c1aaaaaaaaaa", "a", true, "10.88.3.2/24"),
                member("c2bbbbbbbbbb", "b", false, ""),
                member("c3cccccccccc", "c", true, "10.88.3.9/24"),
            ],
        };
        let (scopes, endpoints) = realised(&view).unwrap();
        let names: Vec<_> = scopes.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert!(!scopes[1].outgoing, "a closed scope never lets traffic out");
        assert_eq!(endpoints.len(), 2);
        assert_eq!(endpoints[0].address, Ipv4Addr::new(10, 88, 3, 2));
        assert_eq!(endpoints[0].tap, tap_name("c1aaaaaaaaaa", "a"));
        let (bridges, taps) = wanted_links(&scopes, &endpoints);
        assert_eq!(bridges[0].address, Some("10.88.3.1/24".parse().unwrap()));
        assert_eq!(bridges[0].mtu, 1400);
        assert_eq!(taps[1].bridge, "apb-c");
    }

    #[test]
    fn an_external_scope_uses_the_host_bridge_without_an_address() {
        let view = NetworkView {
            scopes: vec![scope("lan", ScopeKind::External)],
            members: vec![member("c1aaaaaaaaaa", "lan", true, "10.88.3.20/24")],
        };
        let (scopes, endpoints) = realised(&view).unwrap();
        let (bridges, taps) = wanted_links(&scopes, &endpoints);
        assert_eq!(
            bridges,
            [WantBridge {
                scope: "lan".into(),
                name: "br-lan".into(),
                mtu: 1400,
                address: None,
                owned: false
            }]
        );
        assert_eq!(taps[0].bridge, "br-lan");
    }

    #[test]
    fn a_bad_address_in_the_view_names_the_scope() {
        let view = NetworkView {
            scopes: vec![scope("a", ScopeKind::Bridge)],
            members: vec![member("c1aaaaaaaaaa", "a", true, "10.88.3/24")],
        };
        let e = realised(&view).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Scope a: address \"10.88.3/24\" is not an IPv4 address"
        );
    }

    #[test]
    fn name_servers_answer_members_and_aliases_of_their_scope_only() {
        let mut a = member("c1aaaaaaaaaa", "a", true, "10.88.3.2/24");
        a.endpoint.aliases = vec!["API".into()];
        let view = NetworkView {
            scopes: vec![
                scope("a", ScopeKind::Bridge),
                scope("c", ScopeKind::Closed),
                Scope {
                    default: true,
                    ..scope("bridge", ScopeKind::Bridge)
                },
            ],
            members: vec![
                a,
                member("c2bbbbbbbbbb", "c", true, "10.88.3.9/24"),
                member("c3cccccccccc", "bridge", true, "10.88.3.7/24"),
            ],
        };
        let (scopes, endpoints) = realised(&view).unwrap();
        let (open, closed) = wanted_dns(&scopes, &endpoints);
        let ip = |s: &str| vec![s.parse::<Ipv4Addr>().unwrap()];
        assert_eq!(
            open["a"].names,
            dns::Names::from([
                ("api".to_string(), ip("10.88.3.2")),
                ("n-c1aaaaaaaaaa".to_string(), ip("10.88.3.2")),
            ])
        );
        assert_eq!(open["a"].listen, Ipv4Addr::new(10, 88, 3, 1));
        assert!(
            open["bridge"].names.is_empty(),
            "the default scope only forwards"
        );
        assert_eq!(closed.keys().collect::<Vec<_>>(), ["c"]);
        assert_eq!(closed["c"].names.len(), 1);
    }

    #[tokio::test]
    async fn an_idle_host_gets_no_links() {
        let fake = Arc::new(links::FakeLinks::default());
        let host = HostNetwork::with_links(fake.clone());
        // Nothing is bound: no link is made (and nft is not run: the state
        // says there are no tables).
        host.state.lock().await.tables = Some(false);
        let idle = NetworkView {
            scopes: vec![scope("a", ScopeKind::Bridge)],
            members: vec![member("c1aaaaaaaaaa", "a", false, "")],
        };
        host.apply(&idle).await.unwrap();
        assert!(fake.applied.lock().unwrap().is_empty());
        assert!(fake.links.lock().unwrap().is_empty());
    }
}
