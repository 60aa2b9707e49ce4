//! The network component: scopes (networks), endpoints joined to containers
//! on handles, address management (leases in the store) and the rules of
//! published ports and outgoing policy.
//!
//! Owns scope creation and removal (subnets picked from a pool when not
//! given, overlaps refused), the planning of the `Network*` changes of a
//! handle, and what a container's endpoints ask of the store (leases, host
//! ports). Must not touch devices, firewalls or DNS servers: the backend
//! realises a [`NetworkView`] as it can.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::Events;
use super::filter::{Filter, Filterable};
use super::model::{
    Container, ElementResult, Endpoint, OutgoingRule, PowerState, PublishedPort, Scope, ScopeKind,
    Status,
};
use super::validate::{self, Invalid};
use crate::store::{HostPort, LeaseWant, ScopeRecord, Store, StoreError, now_ms};

/// The scope every `run` joins unless told otherwise, as docker's.
pub const DEFAULT_SCOPE: &str = "bridge";
/// Where subnets of scopes that do not name one come from, a /24 each; the
/// default scope has the first.
pub const SUBNET_POOL: &str = "10.88.0.0/16";
const DEFAULT_MTU: u32 = 1500;

/// Fields a scope filter may name.
pub const SCOPE_FIELDS: &[&str] = &["name", "kind", "subnet", "bridge", "default"];

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{element}: {message}")]
    Invalid { element: String, message: String },
    #[error("Invalid filter")]
    Filter(#[from] super::filter::FilterError),
}

impl From<Invalid> for NetworkError {
    fn from(e: Invalid) -> Self {
        NetworkError::Invalid {
            element: e.field,
            message: e.message,
        }
    }
}

impl NetworkError {
    fn invalid(element: &str, message: impl Into<String>) -> Self {
        NetworkError::Invalid {
            element: element.into(),
            message: message.into(),
        }
    }

    pub fn element(&self) -> String {
        match self {
            NetworkError::Invalid { element, .. } => element.clone(),
            NetworkError::Store(
                StoreError::NotFound { id, .. }
                | StoreError::AlreadyExists { id, .. }
                | StoreError::InUse { id, .. },
            ) => id.clone(),
            NetworkError::Store(StoreError::Overlap { with, .. }) => with.clone(),
            NetworkError::Store(StoreError::Exhausted { scope, .. }) => scope.clone(),
            _ => String::new(),
        }
    }
}

/// What a caller asks for when creating a scope; empty fields take
/// defaults.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ScopeSpec {
    /// Letters, digits, `_`, `.` and `-`, starting with a letter or digit.
    #[schema(pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", max_length = 64)]
    pub name: String,
    pub kind: ScopeKind,
    /// CIDR; default: the next free /24 of 10.88.0.0/16.
    pub subnet: String,
    /// Default: the subnet's first address (none for `external`).
    pub gateway: String,
    /// CIDR inside the subnet; default: the whole subnet.
    pub ip_range: String,
    /// Default 1500.
    pub mtu: u32,
    /// Default: true for `bridge` and `external`; a `closed` scope refuses
    /// true.
    pub outgoing: Option<bool>,
    /// `external` only: the existing host bridge to join.
    pub bridge: String,
    pub labels: BTreeMap<String, String>,
}

impl Filterable for Scope {
    fn field(&self, name: &str) -> Option<String> {
        match name {
            "name" => Some(self.name.clone()),
            "kind" => Some(self.kind.as_str().into()),
            "subnet" => Some(self.subnet.clone()),
            "bridge" => Some(self.bridge.clone()),
            "default" => Some(self.default.to_string()),
            _ => None,
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// A member of a scope, as the backend realises it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub container: String,
    pub name: String,
    pub state: PowerState,
    pub endpoint: Endpoint,
}

/// Everything the backend needs to realise the network: every scope and
/// every bound endpoint (of running and stopped containers alike).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetworkView {
    pub scopes: Vec<Scope>,
    pub members: Vec<Member>,
}

fn net_of(text: &str, element: &str, field: &str) -> Result<Ipv4Net, NetworkError> {
    text.parse::<Ipv4Net>().map_err(|_| {
        NetworkError::invalid(
            element,
            format!("{field} {text:?} is not an IPv4 CIDR such as 10.88.5.0/24"),
        )
    })
}

fn range_of(net: Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

/// The addresses a scope hands out: its range, less the network and
/// broadcast addresses of the subnet.
fn lease_bounds(scope: &Scope) -> Result<(u32, u32, Vec<u32>), NetworkError> {
    let subnet = net_of(&scope.subnet, &scope.name, "subnet")?;
    let range = if scope.ip_range.is_empty() {
        subnet
    } else {
        net_of(&scope.ip_range, &scope.name, "ip_range")?
    };
    let (mut first, mut last) = range_of(range);
    let (net, bcast) = range_of(subnet);
    if subnet.prefix_len() < 31 {
        first = first.max(net + 1);
        last = last.min(bcast - 1);
    }
    let reserved = scope
        .gateway
        .parse::<Ipv4Addr>()
        .map(|g| vec![u32::from(g)])
        .unwrap_or_default();
    Ok((first, last, reserved))
}

/// A stable, locally administered MAC for a container's endpoint.
pub fn mac_for(container: &str, scope: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(format!("{container}/{scope}"));
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        d[0], d[1], d[2], d[3], d[4]
    )
}

/// Checks an outgoing target (`tcp:ADDR[/PREFIX][:PORT]`, `udp:…`,
/// `ip:ADDR[/PREFIX]`, `ether:MAC`).
pub fn check_target(target: &str) -> Result<(), String> {
    let (kind, rest) = target
        .split_once(':')
        .ok_or_else(|| format!("{target:?} has no kind: expected tcp:, udp:, ip: or ether:"))?;
    let net = |s: &str| -> Result<(), String> {
        let ok = if s.contains('/') {
            s.parse::<Ipv4Net>().is_ok()
        } else {
            s.parse::<Ipv4Addr>().is_ok()
        };
        ok.then_some(())
            .ok_or_else(|| format!("{s:?} in {target:?} is not an IPv4 address or CIDR"))
    };
    match kind {
        "tcp" | "udp" => match rest.rsplit_once(':') {
            Some((addr, port)) => {
                net(addr)?;
                match port.parse::<u16>() {
                    Ok(p) if p > 0 => Ok(()),
                    _ => Err(format!("{port:?} in {target:?} is not a port (1-65535)")),
                }
            }
            None => net(rest),
        },
        "ip" => net(rest),
        "ether" => {
            let parts: Vec<_> = rest.split(':').collect();
            let ok = parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
            ok.then_some(())
                .ok_or_else(|| format!("{rest:?} in {target:?} is not a MAC address"))
        }
        other => Err(format!(
            "Unknown target kind {other:?} in {target:?}: expected tcp, udp, ip or ether"
        )),
    }
}

/// `[HOSTIP:]HOSTPORT:PORT[/PROTO]`, as docker's `-p`.
pub fn parse_publish(text: &str) -> Result<PublishedPort, String> {
    let (ports, proto) = match text.rsplit_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (text, "tcp".to_string()),
    };
    let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
    let port = |s: &str| match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} in {text:?} is not a port (1-65535)")),
    };
    let (host_ip, host_port, cport) = match parts.as_slice() {
        [c, h] => (String::new(), port(h)?, port(c)?),
        [c, h, ip] => (ip.to_string(), port(h)?, port(c)?),
        _ => {
            return Err(format!(
                "{text:?} is not [HOSTIP:]HOSTPORT:PORT[/tcp|/udp], e.g. 8080:80"
            ));
        }
    };
    let p = PublishedPort {
        host_ip,
        host_port,
        port: cport,
        proto,
    };
    check_published(&p)?;
    Ok(p)
}

fn check_published(p: &PublishedPort) -> Result<(), String> {
    if !matches!(p.proto.as_str(), "tcp" | "udp") {
        return Err(format!("Protocol {:?} is neither tcp nor udp", p.proto));
    }
    if p.port == 0 || p.host_port == 0 {
        return Err("Ports are 1 to 65535".into());
    }
    if !p.host_ip.is_empty() && p.host_ip.parse::<Ipv4Addr>().is_err() {
        return Err(format!(
            "Host address {:?} is not an IPv4 address",
            p.host_ip
        ));
    }
    Ok(())
}

fn check_exposed(e: &str) -> Result<(), String> {
    let (port, proto) = e.split_once('/').unwrap_or((e, "tcp"));
    match (port.parse::<u16>(), proto) {
        (Ok(p), "tcp" | "udp") if p > 0 => Ok(()),
        _ => Err(format!("{e:?} is not PORT[/tcp|/udp]")),
    }
}

/// The network component's scope registry.
pub struct Network {
    store: Arc<Store>,
    events: Arc<Events>,
}

fn to_scope(rec: &ScopeRecord) -> Result<Scope, NetworkError> {
    Ok(serde_json::from_value(rec.body.clone()).map_err(StoreError::from)?)
}

impl Network {
    pub fn new(store: Arc<Store>, events: Arc<Events>) -> Self {
        Self { store, events }
    }

    /// Creates a scope. Blocking.
    pub fn create_scope(&self, spec: &ScopeSpec) -> Result<Scope, NetworkError> {
        let name = spec.name.as_str();
        validate::scope_name("name", name)?;
        validate::labels("labels", &spec.labels)?;
        if !spec.bridge.is_empty() {
            validate::interface_name("bridge", &spec.bridge)?;
        }
        let subnet = if spec.subnet.is_empty() {
            self.free_subnet(name)?
        } else {
            let n = net_of(&spec.subnet, name, "subnet")?;
            if n.prefix_len() > 30 {
                return Err(NetworkError::invalid(
                    name,
                    format!("Subnet {n} is too small: /30 at most"),
                ));
            }
            n.trunc()
        };
        let gateway = match (spec.kind, spec.gateway.as_str()) {
            (ScopeKind::External, "") => String::new(),
            (_, "") => subnet
                .hosts()
                .next()
                .map(|g| g.to_string())
                .unwrap_or_default(),
            (_, g) => {
                let g: Ipv4Addr = g.parse().map_err(|_| {
                    NetworkError::invalid(name, format!("Gateway {g:?} is not an IPv4 address"))
                })?;
                if !subnet.contains(&g) || g == subnet.network() || g == subnet.broadcast() {
                    return Err(NetworkError::invalid(
                        name,
                        format!("Gateway {g} is not a host address of subnet {subnet}"),
                    ));
                }
                g.to_string()
            }
        };
        if !spec.ip_range.is_empty() {
            let r = net_of(&spec.ip_range, name, "ip_range")?;
            if !subnet.contains(&r) {
                return Err(NetworkError::invalid(
                    name,
                    format!("Range {r} is not inside subnet {subnet}"),
                ));
            }
        }
        let outgoing = match (spec.kind, spec.outgoing) {
            (ScopeKind::Closed, Some(true)) => {
                return Err(NetworkError::invalid(
                    name,
                    "A closed scope has no outgoing traffic: use a bridge scope to allow it",
                ));
            }
            (ScopeKind::Closed, _) => false,
            (_, o) => o.unwrap_or(true),
        };
        let bridge = match spec.kind {
            ScopeKind::External => {
                if spec.bridge.is_empty() {
                    return Err(NetworkError::invalid(
                        name,
                        "An external scope needs the name of an existing host bridge",
                    ));
                }
                spec.bridge.clone()
            }
            _ => {
                if !spec.bridge.is_empty() {
                    return Err(NetworkError::invalid(
                        name,
                        "Only external scopes name a host bridge: the appliance makes the others'",
                    ));
                }
                bridge_name()
            }
        };
        let mtu = match spec.mtu {
            0 => DEFAULT_MTU,
            m if (576..=9000).contains(&m) => m,
            m => {
                return Err(NetworkError::invalid(
                    name,
                    format!("MTU {m} is not between 576 and 9000"),
                ));
            }
        };
        let scope = Scope {
            name: name.to_string(),
            kind: spec.kind,
            subnet: subnet.to_string(),
            gateway,
            ip_range: spec.ip_range.clone(),
            mtu,
            outgoing,
            bridge,
            default: false,
            labels: spec.labels.clone(),
            created_at: now_ms(),
        };
        self.insert(&scope)?;
        Ok(scope)
    }

    fn insert(&self, scope: &Scope) -> Result<(), NetworkError> {
        let (first, last) = range_of(net_of(&scope.subnet, &scope.name, "subnet")?);
        self.store.insert_scope(&ScopeRecord {
            name: scope.name.clone(),
            first,
            last,
            body: serde_json::to_value(scope).map_err(StoreError::from)?,
            created_at: scope.created_at,
        })?;
        if let Err(e) = self.events.emit(
            "network",
            "create",
            &scope.name,
            &scope.labels,
            json!({ "kind": scope.kind.as_str(), "subnet": scope.subnet }),
        ) {
            tracing::warn!(scope = %scope.name, "storing the network create event: {e}");
        }
        Ok(())
    }

    /// The default scope, made on first use. Blocking.
    pub fn ensure_default(&self) -> Result<Scope, NetworkError> {
        if let Ok(s) = self.scope(DEFAULT_SCOPE) {
            return Ok(s);
        }
        let pool: Ipv4Net = SUBNET_POOL.parse().expect("a valid pool");
        let subnet = pool
            .subnets(24)
            .ok()
            .and_then(|mut s| s.next())
            .expect("a /24");
        let scope = Scope {
            name: DEFAULT_SCOPE.into(),
            kind: ScopeKind::Bridge,
            subnet: subnet.to_string(),
            gateway: subnet
                .hosts()
                .next()
                .map(|g| g.to_string())
                .unwrap_or_default(),
            ip_range: String::new(),
            mtu: DEFAULT_MTU,
            outgoing: true,
            bridge: "apb-default".into(),
            default: true,
            labels: BTreeMap::new(),
            created_at: now_ms(),
        };
        match self.insert(&scope) {
            Ok(()) => Ok(scope),
            // Another appliance made it meanwhile.
            Err(NetworkError::Store(StoreError::AlreadyExists { .. })) => self.scope(DEFAULT_SCOPE),
            Err(e) => Err(e),
        }
    }

    /// The first /24 of the pool no scope overlaps.
    fn free_subnet(&self, name: &str) -> Result<Ipv4Net, NetworkError> {
        let taken: Vec<(u32, u32)> = self
            .store
            .scopes()?
            .iter()
            .map(|s| (s.first, s.last))
            .collect();
        let pool: Ipv4Net = SUBNET_POOL.parse().expect("a valid pool");
        pool.subnets(24)
            .ok()
            .into_iter()
            .flatten()
            .skip(1)
            .find(|n| {
                let (f, l) = range_of(*n);
                !taken.iter().any(|(tf, tl)| *tf <= l && f <= *tl)
            })
            .ok_or_else(|| {
                NetworkError::invalid(
                    name,
                    format!("Every /24 of {SUBNET_POOL} is taken: give the scope a subnet"),
                )
            })
    }

    pub fn scope(&self, name: &str) -> Result<Scope, NetworkError> {
        to_scope(&self.store.scope(name)?)
    }

    pub fn scopes(&self, filter: &str) -> Result<Vec<Scope>, NetworkError> {
        let filter = Filter::parse(filter)?.with_default_visibility();
        filter.check_fields(SCOPE_FIELDS)?;
        let mut out = Vec::new();
        for rec in self.store.scopes()? {
            let s = to_scope(&rec)?;
            if filter.matches(&s) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Removes a scope no container has joined (else `InUse` names them).
    pub fn remove_scope(&self, name: &str) -> Result<Scope, NetworkError> {
        let scope = to_scope(&self.store.delete_scope(name)?)?;
        if let Err(e) = self
            .events
            .emit("network", "remove", name, &scope.labels, json!({}))
        {
            tracing::warn!(scope = %name, "storing the network remove event: {e}");
        }
        Ok(scope)
    }

    /// Every scope and bound endpoint, for the backend. Blocking.
    pub fn view(&self, containers: &[Container]) -> Result<NetworkView, NetworkError> {
        let scopes = self
            .store
            .scopes()?
            .iter()
            .map(to_scope)
            .collect::<Result<Vec<_>, _>>()?;
        let members = containers
            .iter()
            .flat_map(|c| {
                c.endpoints.values().filter(|e| e.bound).map(|e| Member {
                    container: c.id.clone(),
                    name: c.name.clone(),
                    state: c.state,
                    endpoint: e.clone(),
                })
            })
            .collect();
        Ok(NetworkView { scopes, members })
    }

    /// Plans one network change of a handle on `c`. A change the container
    /// cannot take now (it runs: NICs cannot be hot-plugged) is an ERROR
    /// result for its endpoint, and is not applied. Returns whether `c`
    /// changed. Blocking (reads the scope).
    pub fn plan(
        &self,
        c: &mut Container,
        ch: &super::model::Change,
        results: &mut BTreeMap<String, ElementResult>,
    ) -> Result<bool, NetworkError> {
        use super::model::Change;
        let result = |status, detail: &str| ElementResult {
            status,
            detail: detail.into(),
        };
        let (scope_name, el) = match ch {
            Change::NetworkJoin { endpoint } => (endpoint.scope.clone(), String::new()),
            Change::NetworkBind { scope }
            | Change::NetworkUnbind { scope }
            | Change::NetworkLeave { scope } => (scope.clone(), String::new()),
            _ => return Ok(false),
        };
        let el = if el.is_empty() {
            endpoint_element(&c.id, &scope_name)
        } else {
            el
        };
        let live = matches!(c.state, PowerState::Running | PowerState::Paused);
        let refuse_live = |results: &mut BTreeMap<String, ElementResult>| {
            results.insert(
                el.clone(),
                result(
                    Status::Error,
                    "The container is running and its VM cannot take a NIC change: stop the container first",
                ),
            );
        };
        match ch {
            Change::NetworkJoin { endpoint } => {
                let scope = self.scope(&endpoint.scope)?;
                let mut e = self.check_endpoint(&c.id, &scope, endpoint)?;
                if let Some(old) = c.endpoints.get(&scope.name) {
                    let same = Endpoint {
                        bound: old.bound,
                        address: old.address.clone(),
                        order: old.order,
                        ..e.clone()
                    };
                    if *old == same {
                        results.insert(el, result(Status::Noop, "Already joined"));
                        return Ok(false);
                    }
                    return Err(NetworkError::invalid(
                        &el,
                        format!(
                            "The container is already a member of scope {}: leave it first",
                            scope.name
                        ),
                    ));
                }
                if live {
                    refuse_live(results);
                    return Ok(false);
                }
                e.order = c.endpoints.values().map(|e| e.order + 1).max().unwrap_or(0);
                c.endpoints.insert(scope.name.clone(), e);
                results.insert(el, result(Status::Success, "Joined"));
                Ok(true)
            }
            Change::NetworkBind { scope } | Change::NetworkUnbind { scope } => {
                let bind = matches!(ch, Change::NetworkBind { .. });
                let Some(e) = c.endpoints.get(scope) else {
                    return Err(NetworkError::invalid(
                        &el,
                        format!("The container has not joined scope {scope}: join it first"),
                    ));
                };
                if e.bound == bind {
                    let detail = if bind { "Already bound" } else { "Not bound" };
                    results.insert(el, result(Status::Noop, detail));
                    return Ok(false);
                }
                if live {
                    refuse_live(results);
                    return Ok(false);
                }
                if let Some(e) = c.endpoints.get_mut(scope) {
                    e.bound = bind;
                    if !bind {
                        e.address.clear();
                    }
                }
                let detail = if bind { "Bound" } else { "Unbound" };
                results.insert(el, result(Status::Success, detail));
                Ok(true)
            }
            Change::NetworkLeave { scope } => {
                if !c.endpoints.contains_key(scope) {
                    results.insert(el, result(Status::Noop, "Not a member"));
                    return Ok(false);
                }
                if live {
                    refuse_live(results);
                    return Ok(false);
                }
                c.endpoints.remove(scope);
                results.insert(el, result(Status::Success, "Left"));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Checks a join against its scope, as Commit will. Blocking.
    pub fn check_join(&self, e: &Endpoint) -> Result<(), NetworkError> {
        let scope = self.scope(&e.scope)?;
        self.check_endpoint("", &scope, e).map(drop)
    }

    /// Validates a join against its scope and fills in what comes from the
    /// scope.
    fn check_endpoint(
        &self,
        id: &str,
        scope: &Scope,
        e: &Endpoint,
    ) -> Result<Endpoint, NetworkError> {
        let el = endpoint_element(id, &scope.name);
        let subnet = net_of(&scope.subnet, &scope.name, "subnet")?;
        for (i, a) in e.aliases.iter().enumerate() {
            validate::alias(&format!("aliases[{i}]"), a)?;
        }
        if !e.requested_ip.is_empty() {
            let ip: Ipv4Addr = e.requested_ip.parse().map_err(|_| {
                NetworkError::invalid(&el, format!("{:?} is not an IPv4 address", e.requested_ip))
            })?;
            let (first, last, reserved) = lease_bounds(scope)?;
            let n = u32::from(ip);
            if !(first..=last).contains(&n) || reserved.contains(&n) {
                return Err(NetworkError::invalid(
                    &el,
                    format!(
                        "{ip} is not an address scope {} hands out ({} to {}, not its gateway)",
                        scope.name,
                        Ipv4Addr::from(first),
                        Ipv4Addr::from(last)
                    ),
                ));
            }
        }
        for x in &e.exposed {
            check_exposed(x).map_err(|m| NetworkError::invalid(&el, m))?;
        }
        let mut published = Vec::new();
        for p in &e.published {
            let mut p = p.clone();
            if p.proto.is_empty() {
                p.proto = "tcp".into();
            }
            check_published(&p).map_err(|m| NetworkError::invalid(&el, m))?;
            published.push(p);
        }
        if !published.is_empty() && scope.kind == ScopeKind::Closed {
            return Err(NetworkError::invalid(
                &el,
                format!(
                    "Scope {} is closed: nothing can be published from it",
                    scope.name
                ),
            ));
        }
        let mut outgoing = Vec::new();
        for r in &e.outgoing {
            let constraint = r.constraint.trim().to_ascii_lowercase();
            if !matches!(constraint.as_str(), "allowed" | "denied") {
                return Err(NetworkError::invalid(
                    &el,
                    format!(
                        "Unknown constraint {:?}: expected allowed or denied",
                        r.constraint
                    ),
                ));
            }
            check_target(&r.target).map_err(|m| NetworkError::invalid(&el, m))?;
            outgoing.push(OutgoingRule {
                constraint,
                target: r.target.clone(),
            });
        }
        if !outgoing.is_empty() && !scope.outgoing {
            return Err(NetworkError::invalid(
                &el,
                format!(
                    "Scope {} lets no traffic out: an outgoing policy cannot be satisfied on it",
                    scope.name
                ),
            ));
        }
        Ok(Endpoint {
            scope: scope.name.clone(),
            aliases: e.aliases.clone(),
            requested_ip: e.requested_ip.clone(),
            exposed: e.exposed.clone(),
            published,
            outgoing,
            bound: e.bound,
            mac: mac_for(id, &scope.name),
            address: String::new(),
            gateway: scope.gateway.clone(),
            prefix_len: subnet.prefix_len(),
            mtu: scope.mtu,
            routed: scope.outgoing,
            dns: scope.kind != ScopeKind::External && !scope.default,
            order: 0,
        })
    }

    /// What the container's bound endpoints ask of the store: a lease per
    /// scope, and the host ports they publish. Blocking (reads scopes).
    pub fn wants(&self, c: &Container) -> Result<(Vec<LeaseWant>, Vec<HostPort>), NetworkError> {
        let mut leases = Vec::new();
        let mut ports = Vec::new();
        for e in c.endpoints.values().filter(|e| e.bound) {
            let scope = self.scope(&e.scope)?;
            let (first, last, reserved) = lease_bounds(&scope)?;
            leases.push(LeaseWant {
                scope: scope.name.clone(),
                requested: e.requested_ip.parse::<Ipv4Addr>().ok().map(u32::from),
                first,
                last,
                reserved,
            });
            for p in &e.published {
                ports.push(HostPort {
                    proto: p.proto.clone(),
                    port: p.host_port,
                    address: p.host_ip.parse::<Ipv4Addr>().map(u32::from).unwrap_or(0),
                });
            }
        }
        Ok((leases, ports))
    }
}

/// A random name for a scope's bridge: "apb-" and 8 hex digits.
fn bridge_name() -> String {
    let mut b = [0u8; 4];
    if getrandom::fill(&mut b).is_err() {
        b = u32::try_from(now_ms() & 0xffff_ffff)
            .unwrap_or(0)
            .to_be_bytes();
    }
    format!("apb-{:02x}{:02x}{:02x}{:02x}", b[0], b[1], b[2], b[3])
}

/// The element id of a container's endpoint in a scope.
pub fn endpoint_element(container: &str, scope: &str) -> String {
    format!("{container}/network/{scope}")
}

/// Fills each endpoint's address from the store's leases.
pub fn fill_addresses(c: &mut Container, addresses: &BTreeMap<String, u32>) {
    for (scope, e) in &mut c.endpoints {
        e.address = match addresses.get(scope) {
            Some(a) if e.bound => format!("{}/{}", Ipv4Addr::from(*a), e.prefix_len),
            _ => String::new(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> Network {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let events = Arc::new(Events::new(store.clone()));
        Network::new(store, events)
    }

    fn spec(name: &str) -> ScopeSpec {
        ScopeSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn scopes_get_free_subnets_and_overlaps_are_refused() {
        let n = net();
        let d = n.ensure_default().unwrap();
        assert_eq!(
            (d.subnet.as_str(), d.gateway.as_str()),
            ("10.88.0.0/24", "10.88.0.1")
        );
        let a = n.create_scope(&spec("a")).unwrap();
        assert_eq!(a.subnet, "10.88.1.0/24");
        assert!(
            a.bridge.starts_with("apb-") && a.bridge.len() == 12,
            "{}",
            a.bridge
        );
        let e = n
            .create_scope(&ScopeSpec {
                subnet: "10.88.1.128/25".into(),
                ..spec("b")
            })
            .unwrap_err();
        assert_eq!(e.to_string(), "Scope b's subnet overlaps scope a's");
        assert_eq!(e.element(), "a");
        let c = n
            .create_scope(&ScopeSpec {
                kind: ScopeKind::Closed,
                ..spec("c")
            })
            .unwrap();
        assert!(!c.outgoing);
        let e = n
            .create_scope(&ScopeSpec {
                kind: ScopeKind::Closed,
                outgoing: Some(true),
                ..spec("d")
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("closed scope has no outgoing"),
            "{e}"
        );
        let e = n
            .create_scope(&ScopeSpec {
                kind: ScopeKind::External,
                subnet: "192.168.50.0/24".into(),
                ..spec("ext")
            })
            .unwrap_err();
        assert!(e.to_string().contains("existing host bridge"), "{e}");
        let names: Vec<_> = n.scopes("").unwrap().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["bridge", "a", "c"]);
        assert_eq!(n.scopes("kind=closed").unwrap().len(), 1);
        n.remove_scope("a").unwrap();
        assert!(n.scope("a").is_err());
    }

    #[test]
    fn targets_and_ports_are_checked() {
        for ok in [
            "tcp:10.0.0.1",
            "tcp:10.0.0.0/8:443",
            "udp:1.2.3.4:53",
            "ip:0.0.0.0/0",
            "ether:02:aa:bb:cc:dd:ee",
        ] {
            assert!(check_target(ok).is_ok(), "{ok}");
        }
        for bad in [
            "tcp",
            "tcp:",
            "tcp:10.0.0.1:0",
            "sctp:1.2.3.4",
            "ip:10.0.0.300",
            "ether:02:aa",
        ] {
            assert!(check_target(bad).is_err(), "{bad}");
        }
        let p = parse_publish("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(
            (p.host_ip.as_str(), p.host_port, p.port, p.proto.as_str()),
            ("127.0.0.1", 8080, 80, "udp")
        );
        let p = parse_publish("8080:80").unwrap();
        assert_eq!((p.host_ip.as_str(), p.proto.as_str()), ("", "tcp"));
        assert!(parse_publish("80").is_err());
        assert!(parse_publish("8080:80/sctp").is_err());
        assert!(parse_publish("x:8080:80").is_err());
    }

    #[test]
    fn macs_are_stable_and_local() {
        let m = mac_for("abc", "net");
        assert_eq!(m, mac_for("abc", "net"));
        assert_ne!(m, mac_for("abc", "other"));
        assert!(m.starts_with("02:") && m.len() == 17, "{m}");
    }
}
