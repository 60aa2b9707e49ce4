//! The appliance's firewall and NAT: two nftables tables it owns, rebuilt
//! whole from the realised network each time and replaced in one `nft`
//! transaction, so a crash leaves either the old or the new rules and a
//! restart converges. Nothing outside these tables is ever touched; their
//! base chains accept what they have no rule for, so the host's other
//! traffic goes on as before.
//!
//! `inet appliance`:
//! - `prerouting` / `output` (NAT): published ports, DNAT from the host's
//!   addresses (its own loopback included) to the container;
//! - `postrouting` (NAT): masquerade of what leaves an open bridge scope,
//!   of loopback-published connections (their source would be 127.0.0.1)
//!   and of hairpin connections (a member reaching a peer through a
//!   published port);
//! - `forward`: per-endpoint outgoing policy, then: traffic between
//!   members of one scope passes (hosts with `br_netfilter` send bridged
//!   frames through here too), published-port connections into a scope
//!   pass, anything else new into a scope is
//!   refused (scopes are isolated from each other and from outside), and a
//!   scope without outgoing traffic (closed) sends nothing out;
//! - `input`: the scope's name server on its gateway, then the same
//!   policies, and nothing else from scopes without outgoing traffic.
//!
//! Refusals are rejects (a TCP reset, else ICMP administratively
//! prohibited), so clients fail at once instead of timing out.
//!
//! `bridge appliance`: frames between ports of a bridge never reach the
//! `inet` hooks, so the anti-spoofing of each tap (its MAC and address,
//! in Ethernet, IPv4 and ARP) and the policies between members of one
//! scope live here. The bridge family cannot reject on the kernels we run
//! on, so a policy refusal between two members of one scope is a drop.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use nftables::expr::{
    CT, Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression, Payload, PayloadField,
    Prefix,
};
use nftables::schema::{Chain, NfCmd, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{JumpTarget, Match, NAT, NATFamily, Operator, Reject, RejectType, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};

use super::{HostEndpoint, HostScope};
use crate::portlayer::model::{PublishedPort, ScopeKind};

/// The name of both tables.
pub const TABLE: &str = "appliance";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("Endpoint {endpoint}: outgoing rule {target:?}: {message}")]
    Target {
        endpoint: String,
        target: String,
        message: String,
    },
    #[error("Published port {port}: host address {host_ip:?} is not an IPv4 address")]
    HostIp { port: u16, host_ip: String },
    #[error("Applying the firewall rules with nft: {0}")]
    Nft(String),
}

/// An outgoing-rule target, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Ip {
        net: Ipv4Net,
        proto: Option<&'static str>,
        port: Option<u16>,
    },
    Ether(String),
}

fn parse_target(text: &str) -> Result<Target, String> {
    let (kind, rest) = text
        .split_once(':')
        .ok_or("has no kind: expected tcp:, udp:, ip: or ether:")?;
    let net = |s: &str| -> Result<Ipv4Net, String> {
        let parsed = if s.contains('/') {
            s.parse::<Ipv4Net>().ok().map(|n| n.trunc())
        } else {
            s.parse::<Ipv4Addr>().ok().map(Ipv4Net::from)
        };
        parsed.ok_or_else(|| format!("{s:?} is not an IPv4 address or CIDR"))
    };
    match kind {
        "tcp" | "udp" => {
            let proto = Some(if kind == "tcp" { "tcp" } else { "udp" });
            match rest.rsplit_once(':') {
                Some((addr, port)) => Ok(Target::Ip {
                    net: net(addr)?,
                    proto,
                    port: Some(
                        port.parse::<u16>()
                            .ok()
                            .filter(|p| *p > 0)
                            .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?,
                    ),
                }),
                None => Ok(Target::Ip {
                    net: net(rest)?,
                    proto,
                    port: None,
                }),
            }
        }
        "ip" => Ok(Target::Ip {
            net: net(rest)?,
            proto: None,
            port: None,
        }),
        "ether" => {
            let parts: Vec<_> = rest.split(':').collect();
            if parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
            {
                Ok(Target::Ether(rest.to_ascii_lowercase()))
            } else {
                Err(format!("{rest:?} is not a MAC address"))
            }
        }
        other => Err(format!(
            "unknown kind {other:?}: expected tcp, udp, ip or ether"
        )),
    }
}

// Expression and statement helpers.

fn s(text: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(text.into()))
}

fn n(v: u32) -> Expression<'static> {
    Expression::Number(v)
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn field(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: key.into(),
        family: None,
        dir: None,
    }))
}

fn net(n: Ipv4Net) -> Expression<'static> {
    if n.prefix_len() == 32 {
        s(n.addr().to_string())
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(s(n.network().to_string())),
            len: u32::from(n.prefix_len()),
        }))
    }
}

fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn is_not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::NEQ,
    })
}

fn has(left: Expression<'static>, flags: &[&str]) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right: if flags.len() == 1 {
            s(flags[0])
        } else {
            Expression::List(flags.iter().map(|f| s(*f)).collect())
        },
        op: Operator::IN,
    })
}

fn iif(name: &str) -> Statement<'static> {
    is(meta(MetaKey::Iifname), s(name))
}

fn oif(name: &str) -> Statement<'static> {
    is(meta(MetaKey::Oifname), s(name))
}

fn established() -> Statement<'static> {
    has(ct("state"), &["established", "related"])
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop() -> Statement<'static> {
    Statement::Drop(None)
}

fn ret() -> Statement<'static> {
    Statement::Return(None)
}

fn jump(chain: &str) -> Statement<'static> {
    Statement::Jump(JumpTarget {
        target: chain.to_string().into(),
    })
}

fn tcp_reset() -> Statement<'static> {
    Statement::Reject(Some(Reject::new(Some(RejectType::TCPReset), None)))
}

fn prohibited() -> Statement<'static> {
    Statement::Reject(Some(Reject::new(
        Some(RejectType::ICMPX),
        Some(RejectCode::AdminProhibited),
    )))
}

/// The two rules that refuse what `matches` selects: TCP with a reset,
/// the rest with ICMP administratively prohibited.
fn refuse(matches: Vec<Statement<'static>>) -> [Vec<Statement<'static>>; 2] {
    let mut tcp = matches.clone();
    tcp.push(is(meta(MetaKey::L4proto), s("tcp")));
    tcp.push(tcp_reset());
    let mut rest = matches;
    rest.push(prohibited());
    [tcp, rest]
}

/// What a packet to `t` looks like in the IPv4 header.
fn target_matches(t: &Target) -> Vec<Statement<'static>> {
    match t {
        Target::Ip {
            net: n,
            proto,
            port,
        } => {
            let mut m = vec![is(field("ip", "daddr"), net(*n))];
            if let Some(p) = proto {
                m.push(is(meta(MetaKey::L4proto), s(*p)));
            }
            if let Some(port) = port {
                m.push(is(field("th", "dport"), n_port(*port)));
            }
            m
        }
        Target::Ether(mac) => vec![is(field("ether", "daddr"), s(mac.clone()))],
    }
}

fn n_port(p: u16) -> Expression<'static> {
    n(u32::from(p))
}

/// A chain of one table being built.
struct Chains {
    family: NfFamily,
    objects: Vec<NfObject<'static>>,
}

impl Chains {
    fn new(family: NfFamily) -> Self {
        // Gone, then made again: one transaction replaces the whole table.
        let mut objects = drop_table(family).to_vec();
        objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table(
            family,
        )))));
        Chains { family, objects }
    }

    fn base(&mut self, name: &str, ty: NfChainType, hook: NfHook, prio: i32) {
        self.objects
            .push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
                Chain {
                    family: self.family,
                    table: TABLE.into(),
                    name: name.to_string().into(),
                    _type: Some(ty),
                    hook: Some(hook),
                    prio: Some(prio),
                    policy: Some(NfChainPolicy::Accept),
                    ..Default::default()
                },
            ))));
    }

    fn regular(&mut self, name: &str) {
        self.objects
            .push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
                Chain {
                    family: self.family,
                    table: TABLE.into(),
                    name: name.to_string().into(),
                    ..Default::default()
                },
            ))));
    }

    fn rule(&mut self, chain: &str, expr: Vec<Statement<'static>>) {
        self.objects
            .push(NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(Rule {
                family: self.family,
                table: TABLE.into(),
                chain: chain.to_string().into(),
                expr: expr.into(),
                ..Default::default()
            }))));
    }
}

/// The name of an endpoint's policy chain (one per tap).
fn policy_chain(e: &HostEndpoint) -> String {
    format!("policy-{}", e.tap)
}

fn dnat_rules(p: &PublishedPort, to: Ipv4Addr) -> Result<Vec<Statement<'static>>, FirewallError> {
    let mut expr = Vec::new();
    if p.host_ip.is_empty() {
        expr.push(is(
            Expression::Named(NamedExpression::Fib(Fib {
                result: FibResult::Type,
                flags: HashSet::from([FibFlag::Daddr]),
            })),
            s("local"),
        ));
    } else {
        let ip: Ipv4Addr = p.host_ip.parse().map_err(|_| FirewallError::HostIp {
            port: p.host_port,
            host_ip: p.host_ip.clone(),
        })?;
        expr.push(is(field("ip", "daddr"), s(ip.to_string())));
    }
    let proto = if p.proto == "udp" { "udp" } else { "tcp" };
    expr.push(is(meta(MetaKey::L4proto), s(proto)));
    expr.push(is(field("th", "dport"), n_port(p.host_port)));
    expr.push(Statement::DNAT(Some(NAT {
        addr: Some(s(to.to_string())),
        family: Some(NATFamily::IP),
        port: Some(n_port(p.port)),
        flags: None,
    })));
    Ok(expr)
}

/// Both tables for the realised scopes and endpoints.
pub fn ruleset(
    scopes: &[HostScope],
    endpoints: &[HostEndpoint],
) -> Result<Nftables<'static>, FirewallError> {
    let mut inet = Chains::new(NfFamily::INet);
    inet.base("prerouting", NfChainType::NAT, NfHook::Prerouting, -100);
    inet.base("output", NfChainType::NAT, NfHook::Output, -100);
    inet.base("postrouting", NfChainType::NAT, NfHook::Postrouting, 100);
    inet.base("forward", NfChainType::Filter, NfHook::Forward, 0);
    inet.base("input", NfChainType::Filter, NfHook::Input, 0);
    let mut bridge = Chains::new(NfFamily::Bridge);
    bridge.base("prerouting", NfChainType::Filter, NfHook::Prerouting, -200);
    bridge.base("forward", NfChainType::Filter, NfHook::Forward, 0);

    // Published ports.
    for e in endpoints {
        for p in &e.published {
            let r = dnat_rules(p, e.address)?;
            inet.rule("prerouting", r.clone());
            inet.rule("output", r);
        }
    }

    // Masquerade.
    for sc in scopes.iter().filter(|s| s.kind != ScopeKind::External) {
        let subnet = net(sc.subnet);
        inet.rule(
            "postrouting",
            vec![
                oif(&sc.bridge),
                is(
                    field("ip", "saddr"),
                    Expression::Named(NamedExpression::Prefix(Prefix {
                        addr: Box::new(s("127.0.0.0")),
                        len: 8,
                    })),
                ),
                Statement::Masquerade(None),
            ],
        );
        inet.rule(
            "postrouting",
            vec![
                oif(&sc.bridge),
                has(ct("status"), &["dnat"]),
                is(field("ip", "saddr"), subnet.clone()),
                Statement::Masquerade(None),
            ],
        );
        if sc.kind == ScopeKind::Bridge && sc.outgoing {
            inet.rule(
                "postrouting",
                vec![
                    is(field("ip", "saddr"), subnet),
                    is_not(meta(MetaKey::Oifname), s(sc.bridge.clone())),
                    Statement::Masquerade(None),
                ],
            );
        }
    }

    // Policies: one chain per endpoint that has rules, in both tables.
    inet.rule("forward", vec![established(), accept()]);
    inet.rule("input", vec![established(), accept()]);
    for sc in scopes.iter().filter(|s| s.kind != ScopeKind::External) {
        if let Some(gw) = sc.gateway {
            for proto in ["udp", "tcp"] {
                inet.rule(
                    "input",
                    vec![
                        iif(&sc.bridge),
                        is(field("ip", "daddr"), s(gw.to_string())),
                        is(meta(MetaKey::L4proto), s(proto)),
                        is(field("th", "dport"), n_port(53)),
                        accept(),
                    ],
                );
            }
        }
    }
    for e in endpoints.iter().filter(|e| !e.outgoing.is_empty()) {
        let chain = policy_chain(e);
        inet.regular(&chain);
        bridge.regular(&chain);
        let mut any_allowed = false;
        for rule in &e.outgoing {
            let t = parse_target(&rule.target).map_err(|message| FirewallError::Target {
                endpoint: format!("{}/{}", e.container, e.scope),
                target: rule.target.clone(),
                message,
            })?;
            let allowed = rule.constraint == "allowed";
            any_allowed |= allowed;
            let m = target_matches(&t);
            // Ethernet destinations only mean something between members
            // of one bridge.
            if !matches!(t, Target::Ether(_)) {
                if allowed {
                    let mut r = m.clone();
                    r.push(ret());
                    inet.rule(&chain, r);
                } else {
                    for r in refuse(m.clone()) {
                        inet.rule(&chain, r);
                    }
                }
            }
            let mut b = m;
            b.push(if allowed { ret() } else { drop() });
            bridge.rule(&chain, b);
        }
        if any_allowed {
            for r in refuse(vec![]) {
                inet.rule(&chain, r);
            }
            bridge.rule(&chain, vec![is(meta(MetaKey::Protocol), s("ip")), drop()]);
        }
        let from = || {
            vec![
                iif(&scope_bridge(scopes, &e.scope)),
                is(field("ip", "saddr"), s(e.address.to_string())),
                jump(&chain),
            ]
        };
        inet.rule("forward", from());
        inet.rule("input", from());
        bridge.rule("forward", vec![iif(&e.tap), jump(&chain)]);
    }

    // Isolation and closed scopes.
    for sc in scopes.iter().filter(|s| s.kind != ScopeKind::External) {
        // Between members of the scope: where the host passes bridged
        // frames through these hooks too (br_netfilter), and for routed
        // hairpins.
        inet.rule("forward", vec![iif(&sc.bridge), oif(&sc.bridge), accept()]);
        inet.rule(
            "forward",
            vec![oif(&sc.bridge), has(ct("status"), &["dnat"]), accept()],
        );
        for r in refuse(vec![oif(&sc.bridge)]) {
            inet.rule("forward", r);
        }
        if !sc.outgoing {
            for r in refuse(vec![iif(&sc.bridge)]) {
                inet.rule("forward", r.clone());
                inet.rule("input", r);
            }
        }
    }

    // Anti-spoofing: a tap sends only with its own MAC and address.
    for e in endpoints {
        bridge.rule(
            "prerouting",
            vec![
                iif(&e.tap),
                is_not(field("ether", "saddr"), s(e.mac.to_ascii_lowercase())),
                drop(),
            ],
        );
        bridge.rule(
            "prerouting",
            vec![
                iif(&e.tap),
                is_not(field("ip", "saddr"), s(e.address.to_string())),
                drop(),
            ],
        );
        bridge.rule(
            "prerouting",
            vec![
                iif(&e.tap),
                is_not(field("arp", "saddr ip"), s(e.address.to_string())),
                drop(),
            ],
        );
    }

    let mut objects = inet.objects;
    objects.extend(bridge.objects);
    Ok(Nftables {
        objects: objects.into(),
    })
}

fn scope_bridge(scopes: &[HostScope], scope: &str) -> String {
    scopes
        .iter()
        .find(|s| s.name == scope)
        .map(|s| s.bridge.clone())
        .unwrap_or_default()
}

fn table(family: NfFamily) -> Table<'static> {
    Table {
        family,
        name: TABLE.into(),
        handle: None,
    }
}

/// Removes our table of `family`: made if missing, then deleted with
/// everything in it (so the transaction holds whether it existed or not).
fn drop_table(family: NfFamily) -> [NfObject<'static>; 2] {
    [
        NfObject::CmdObject(NfCmd::Add(NfListObject::Table(table(family)))),
        NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(table(family)))),
    ]
}

/// The commands that remove both tables (when nothing is realised).
pub fn removal() -> Nftables<'static> {
    let objects: Vec<_> = [NfFamily::INet, NfFamily::Bridge]
        .into_iter()
        .flat_map(drop_table)
        .collect();
    Nftables {
        objects: objects.into(),
    }
}

/// Hands a ruleset to `nft` (blocking: a subprocess).
pub fn apply(rules: &Nftables<'_>) -> Result<(), FirewallError> {
    nftables::helper::apply_ruleset(rules).map_err(|e| {
        let detail = match &e {
            nftables::helper::NftablesError::NftFailed { stderr, .. } => {
                format!("{e}: {}", stderr.trim())
            }
            _ => e.to_string(),
        };
        FirewallError::Nft(detail)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portlayer::model::OutgoingRule;

    fn scope(name: &str, kind: ScopeKind, outgoing: bool) -> HostScope {
        HostScope {
            name: name.into(),
            kind,
            bridge: format!("apb-{name}"),
            subnet: "10.88.1.0/24".parse().unwrap(),
            gateway: Some("10.88.1.1".parse().unwrap()),
            mtu: 1500,
            outgoing,
            default: false,
        }
    }

    fn endpoint(scope: &str) -> HostEndpoint {
        HostEndpoint {
            container: "c1".into(),
            name: "web".into(),
            scope: scope.into(),
            tap: "aptc1000000aaaa".into(),
            mac: "02:AA:BB:CC:DD:EE".into(),
            address: "10.88.1.2".parse().unwrap(),
            aliases: vec![],
            published: vec![],
            outgoing: vec![],
        }
    }

    fn json(r: &Nftables) -> String {
        serde_json::to_string(r).unwrap()
    }

    #[test]
    fn targets_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_target("tcp:10.0.0.0/8:443").unwrap(),
            Target::Ip {
                net: "10.0.0.0/8".parse().unwrap(),
                proto: Some("tcp"),
                port: Some(443)
            }
        );
        assert_eq!(
            parse_target("ip:10.1.2.3/8").unwrap(),
            Target::Ip {
                net: "10.0.0.0/8".parse().unwrap(),
                proto: None,
                port: None
            }
        );
        assert_eq!(
            parse_target("ether:02:AA:bb:cc:dd:ee").unwrap(),
            Target::Ether("02:aa:bb:cc:dd:ee".into())
        );
        assert!(
            parse_target("udp:1.2.3.4:0")
                .unwrap_err()
                .contains("not a port")
        );
        assert!(
            parse_target("sctp:1.2.3.4")
                .unwrap_err()
                .contains("unknown kind")
        );
        assert!(parse_target("((((").unwrap_err().contains("no kind"));
    }

    #[test]
    fn the_tables_are_replaced_whole_in_one_transaction() {
        let r = ruleset(&[scope("a", ScopeKind::Bridge, true)], &[endpoint("a")]).unwrap();
        let j = json(&r);
        let inet = r#"{"add":{"table":{"family":"inet","name":"appliance"}}},{"delete":{"table":{"family":"inet","name":"appliance"}}},{"add":{"table":{"family":"inet","name":"appliance"}}}"#;
        assert!(j.starts_with(&format!(r#"{{"nftables":[{inet}"#)), "{j}");
        assert!(j.contains(r#"{"delete":{"table":{"family":"bridge","name":"appliance"}}}"#));
        // Every base chain accepts what it has no rule for.
        assert_eq!(j.matches(r#""policy":"accept""#).count(), 7, "{j}");
        assert!(!j.contains(r#""policy":"drop""#));
    }

    #[test]
    fn published_ports_dnat_from_local_addresses_and_loopback_is_masqueraded() {
        let mut e = endpoint("a");
        e.published = vec![
            PublishedPort {
                host_ip: String::new(),
                host_port: 8080,
                port: 80,
                proto: "tcp".into(),
            },
            PublishedPort {
                host_ip: "192.168.5.5".into(),
                host_port: 5353,
                port: 53,
                proto: "udp".into(),
            },
        ];
        let j = json(&ruleset(&[scope("a", ScopeKind::Bridge, true)], &[e]).unwrap());
        let local = r#"{"match":{"left":{"fib":{"result":"type","flags":["daddr"]}},"right":"local","op":"=="}},{"match":{"left":{"meta":{"key":"l4proto"}},"right":"tcp","op":"=="}},{"match":{"left":{"payload":{"protocol":"th","field":"dport"}},"right":8080,"op":"=="}},{"dnat":{"addr":"10.88.1.2","family":"ip","port":80}}"#;
        assert_eq!(j.matches(local).count(), 2, "prerouting and output: {j}");
        assert!(j.contains(r#"{"match":{"left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"192.168.5.5","op":"=="}},{"match":{"left":{"meta":{"key":"l4proto"}},"right":"udp","op":"=="}}"#), "{j}");
        assert!(
            j.contains(
                r#""right":{"prefix":{"addr":"127.0.0.0","len":8}},"op":"=="}},{"masquerade":null}"#
            ),
            "{j}"
        );
    }

    #[test]
    fn a_bad_host_address_names_the_port() {
        let mut e = endpoint("a");
        e.published = vec![PublishedPort {
            host_ip: "localhost".into(),
            host_port: 8080,
            port: 80,
            proto: "tcp".into(),
        }];
        let err = ruleset(&[scope("a", ScopeKind::Bridge, true)], &[e]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Published port 8080: host address \"localhost\" is not an IPv4 address"
        );
    }

    #[test]
    fn outgoing_masquerade_only_for_open_bridge_scopes() {
        let masq_out = r#"{"match":{"left":{"meta":{"key":"oifname"}},"right":"apb-a","op":"!="}},{"masquerade":null}"#;
        for (kind, outgoing, want) in [
            (ScopeKind::Bridge, true, true),
            (ScopeKind::Bridge, false, false),
            (ScopeKind::Closed, false, false),
        ] {
            let j = json(&ruleset(&[scope("a", kind, outgoing)], &[]).unwrap());
            assert_eq!(j.contains(masq_out), want, "{kind:?} {outgoing}");
        }
        let j = json(&ruleset(&[scope("a", ScopeKind::External, true)], &[]).unwrap());
        assert!(!j.contains("masquerade"), "no NAT for external scopes: {j}");
    }

    #[test]
    fn closed_scopes_reject_everything_out_but_their_name_server() {
        let j = json(&ruleset(&[scope("a", ScopeKind::Closed, false)], &[]).unwrap());
        let from = r#"{"match":{"left":{"meta":{"key":"iifname"}},"right":"apb-a","op":"=="}}"#;
        let reset = format!(
            r#"{from},{{"match":{{"left":{{"meta":{{"key":"l4proto"}}}},"right":"tcp","op":"=="}}}},{{"reject":{{"type":"tcp reset"}}}}"#
        );
        let icmp = format!(r#"{from},{{"reject":{{"type":"icmpx","expr":"admin-prohibited"}}}}"#);
        assert_eq!(j.matches(&reset).count(), 2, "forward and input: {j}");
        assert_eq!(j.matches(&icmp).count(), 2, "{j}");
        let dns = j.find(r#""right":53"#).unwrap();
        assert!(
            dns < j.find(&reset).unwrap(),
            "DNS comes before the refusal"
        );
    }

    #[test]
    fn policies_reject_denied_targets_and_with_an_allowed_list_everything_else() {
        let mut e = endpoint("a");
        e.outgoing = vec![
            OutgoingRule {
                constraint: "denied".into(),
                target: "tcp:10.9.0.0/16:22".into(),
            },
            OutgoingRule {
                constraint: "allowed".into(),
                target: "ip:10.9.0.0/16".into(),
            },
        ];
        let j = json(&ruleset(&[scope("a", ScopeKind::Bridge, true)], &[e.clone()]).unwrap());
        let chain = r#""chain":"policy-aptc1000000aaaa""#;
        assert!(j.contains(&format!(r#"{chain},"expr":[{{"match":{{"left":{{"payload":{{"protocol":"ip","field":"daddr"}}}},"right":{{"prefix":{{"addr":"10.9.0.0","len":16}}}},"op":"=="}}}},{{"match":{{"left":{{"meta":{{"key":"l4proto"}}}},"right":"tcp","op":"=="}}}},{{"match":{{"left":{{"payload":{{"protocol":"th","field":"dport"}}}},"right":22,"op":"=="}}}},{{"match":{{"left":{{"meta":{{"key":"l4proto"}}}},"right":"tcp","op":"=="}}}},{{"reject":{{"type":"tcp reset"}}}}"#)), "{j}");
        assert!(j.contains(&format!(r#"{chain},"expr":[{{"match":{{"left":{{"payload":{{"protocol":"ip","field":"daddr"}}}},"right":{{"prefix":{{"addr":"10.9.0.0","len":16}}}},"op":"=="}}}},{{"return":null}}]"#)), "{j}");
        // After the list, the rest is refused.
        assert!(
            j.contains(&format!(
                r#"{chain},"expr":[{{"reject":{{"type":"icmpx","expr":"admin-prohibited"}}}}]"#
            )),
            "{j}"
        );
        // The endpoint's traffic goes through its chain, routed or bridged.
        assert!(j.contains(r#"{"match":{"left":{"payload":{"protocol":"ip","field":"saddr"}},"right":"10.88.1.2","op":"=="}},{"jump":{"target":"policy-aptc1000000aaaa"}}"#));
        assert!(j.contains(r#"{"match":{"left":{"meta":{"key":"iifname"}},"right":"aptc1000000aaaa","op":"=="}},{"jump":{"target":"policy-aptc1000000aaaa"}}"#));

        e.outgoing = vec![OutgoingRule {
            constraint: "denied".into(),
            target: "tcp:1.2.3.4:99999".into(),
        }];
        let err = ruleset(&[scope("a", ScopeKind::Bridge, true)], &[e]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Endpoint c1/a: outgoing rule \"tcp:1.2.3.4:99999\": \"99999\" is not a port (1-65535)"
        );
    }

    #[test]
    fn taps_send_only_with_their_own_mac_and_address() {
        let j = json(&ruleset(&[scope("a", ScopeKind::Bridge, true)], &[endpoint("a")]).unwrap());
        for (proto, f, v) in [
            ("ether", "saddr", "02:aa:bb:cc:dd:ee"),
            ("ip", "saddr", "10.88.1.2"),
            ("arp", "saddr ip", "10.88.1.2"),
        ] {
            let rule = format!(
                r#"{{"match":{{"left":{{"meta":{{"key":"iifname"}}}},"right":"aptc1000000aaaa","op":"=="}}}},{{"match":{{"left":{{"payload":{{"protocol":"{proto}","field":"{f}"}}}},"right":"{v}","op":"!="}}}},{{"drop":null}}"#
            );
            assert!(j.contains(&rule), "{rule} in {j}");
        }
    }

    /// The rules are accepted by the real `nft` (a dry run, changing
    /// nothing), when it is there and we may talk to netfilter.
    #[test]
    fn nft_accepts_the_ruleset() {
        if !nix::unistd::Uid::effective().is_root() {
            eprintln!("skipped: needs root for nft --check");
            return;
        }
        let mut e = endpoint("a");
        e.published = vec![PublishedPort {
            host_ip: String::new(),
            host_port: 8080,
            port: 80,
            proto: "tcp".into(),
        }];
        e.outgoing = vec![
            OutgoingRule {
                constraint: "denied".into(),
                target: "ether:02:00:00:00:00:09".into(),
            },
            OutgoingRule {
                constraint: "allowed".into(),
                target: "udp:10.9.0.0/16:53".into(),
            },
        ];
        let r = ruleset(
            &[
                scope("a", ScopeKind::Bridge, true),
                scope("b", ScopeKind::Closed, false),
            ],
            &[e],
        )
        .unwrap();
        let out = std::process::Command::new("nft")
            .args(["--check", "-j", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(json(&r).as_bytes())?;
                c.wait_with_output()
            })
            .expect("nft runs (install nftables: make deps)");
        assert!(
            out.status.success(),
            "nft --check: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
