//! Docker networks over the port layer's `network` component: a Docker
//! network is a scope (`/network/scopes`), a container's attachment an
//! endpoint joined and bound on a handle (`/network/handles/*`), committed
//! with `/exec/commit`.
//!
//! Owns the `/networks` verbs, the translation of `docker create`'s
//! network and port options (`NetworkMode`, `EndpointsConfig`,
//! `PortBindings`, `PublishAllPorts`, `ExposedPorts`) into joins, and the
//! network parts of `inspect` and `ps`. It must not touch the port layer's
//! internals: only its REST API.

use std::collections::{BTreeMap, BTreeSet};

use appliance::api::network::JoinRequest;
use appliance::portlayer::model::{
    Container, Endpoint, PowerState, PublishedPort, Scope, ScopeKind,
};
use appliance::portlayer::network::{DEFAULT_SCOPE, ScopeSpec};
use axum::body::Bytes;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::types::CreateRequest;
use super::{Docker, DockerError, Query, Reply, empty, json};
use crate::client::{ClientError, encode};

/// The Docker network mode a container was created with (`HostConfig.NetworkMode`).
pub const NETWORK_MODE: &str = "io.appliance.docker.network-mode";
/// Where ephemeral host ports (`-p 80`, `-P`) come from, as Docker's.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

fn forbidden(message: impl Into<String>) -> DockerError {
    DockerError::Status {
        status: StatusCode::FORBIDDEN,
        message: message.into(),
    }
}

fn not_found(name: &str) -> DockerError {
    DockerError::Status {
        status: StatusCode::NOT_FOUND,
        message: format!("network {name} not found"),
    }
}

/// A Docker network id for a scope: stable for its name and creation
/// time (scopes have no id of their own).
pub fn network_id(s: &Scope) -> String {
    let mut h = Sha256::new();
    h.update(s.name.as_bytes());
    h.update(s.created_at.to_le_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A stable endpoint id for a container's membership of a scope.
fn endpoint_id(container: &str, scope: &str) -> String {
    let mut h = Sha256::new();
    h.update(container.as_bytes());
    h.update(b"/");
    h.update(scope.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

async fn scopes(d: &Docker) -> Result<Vec<Scope>, DockerError> {
    Ok(d.client.get("/network/scopes").await?)
}

/// The scope a Docker name or id (or unique id prefix) designates.
pub async fn find(d: &Docker, name_or_id: &str) -> Result<Scope, DockerError> {
    let all = scopes(d).await?;
    if let Some(s) = all.iter().find(|s| s.name == name_or_id) {
        return Ok(s.clone());
    }
    let by_id: Vec<&Scope> = all
        .iter()
        .filter(|s| !name_or_id.is_empty() && network_id(s).starts_with(name_or_id))
        .collect();
    match by_id.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(not_found(name_or_id)),
        _ => Err(DockerError::bad_request(format!(
            "network {name_or_id} is ambiguous ({} matches found based on ID prefix)",
            by_id.len()
        ))),
    }
}

async fn containers(d: &Docker) -> Result<Vec<Container>, DockerError> {
    Ok(d.client.get("/exec/containers").await?)
}

fn address_of(e: &Endpoint) -> &str {
    e.address.split('/').next().unwrap_or_default()
}

/// Docker's network object for a scope; `members` are all containers (those
/// on the scope are listed).
fn network_object(s: &Scope, members: &[Container]) -> Value {
    let mut on = serde_json::Map::new();
    for c in members {
        if let Some(e) = c.endpoints.get(&s.name) {
            on.insert(
                c.id.clone(),
                json!({
                    "Name": c.name,
                    "EndpointID": endpoint_id(&c.id, &s.name),
                    "MacAddress": e.mac,
                    "IPv4Address": e.address,
                    "IPv6Address": "",
                }),
            );
        }
    }
    let mut options = serde_json::Map::new();
    if !s.bridge.is_empty() {
        options.insert("com.docker.network.bridge.name".into(), json!(s.bridge));
    }
    if s.mtu > 0 {
        options.insert(
            "com.docker.network.driver.mtu".into(),
            json!(s.mtu.to_string()),
        );
    }
    json!({
        "Name": s.name,
        "Id": network_id(s),
        "Created": super::types::time(s.created_at),
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv4": true,
        "EnableIPv6": false,
        "IPAM": {
            "Driver": "default",
            "Options": {},
            "Config": [{ "Subnet": s.subnet, "Gateway": s.gateway }],
        },
        "Internal": s.kind == ScopeKind::Closed || !s.outgoing,
        "Attachable": false,
        "Ingress": false,
        "ConfigFrom": { "Network": "" },
        "ConfigOnly": false,
        "Containers": on,
        "Options": options,
        "Labels": s.labels,
    })
}

/// Whether scope `s` passes Docker's network filters (`name` substring,
/// `id` prefix, `driver`, `label` key or key=value, `type` custom/builtin):
/// any value of a key, all keys.
fn matches(s: &Scope, filters: &[(String, Vec<String>)]) -> Result<bool, DockerError> {
    for (key, values) in filters {
        if values.is_empty() {
            continue;
        }
        let ok = match key.as_str() {
            "name" => values.iter().any(|v| s.name.contains(v.as_str())),
            "id" => values.iter().any(|v| network_id(s).starts_with(v.as_str())),
            "driver" => values.iter().any(|v| v == "bridge"),
            "scope" => values.iter().any(|v| v == "local"),
            "label" => values.iter().all(|v| match v.split_once('=') {
                Some((k, val)) => s.labels.get(k).is_some_and(|x| x == val),
                None => s.labels.contains_key(v),
            }),
            "type" => values.iter().any(|v| match v.as_str() {
                "builtin" => s.default,
                "custom" => !s.default,
                _ => false,
            }),
            other => {
                return Err(DockerError::bad_request(format!(
                    "The {other:?} filter is not supported for networks \
                     (name, id, driver, scope, label and type are)"
                )));
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `GET /networks?filters=`.
pub async fn list(d: &Docker, q: &Query) -> Reply {
    let filters = match q.get("filters") {
        Some(f) => super::containers::docker_filters(f)?,
        None => vec![],
    };
    let all = scopes(d).await?;
    let members = containers(d).await?;
    let mut out = Vec::new();
    for s in &all {
        if matches(s, &filters)? {
            out.push(network_object(s, &members));
        }
    }
    json(StatusCode::OK, &out)
}

/// `GET /networks/{id}`.
pub async fn inspect(d: &Docker, id: &str) -> Reply {
    let s = find(d, id).await?;
    let members = containers(d).await?;
    json(StatusCode::OK, &network_object(&s, &members))
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "PascalCase", default)]
struct CreateNetwork {
    name: String,
    driver: String,
    internal: bool,
    #[serde(rename = "IPAM")]
    ipam: Option<Ipam>,
    labels: Option<BTreeMap<String, String>>,
    options: Option<BTreeMap<String, String>>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "PascalCase", default)]
struct Ipam {
    config: Option<Vec<IpamConfig>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "PascalCase", default)]
struct IpamConfig {
    subnet: String,
    gateway: String,
    #[serde(rename = "IPRange")]
    ip_range: String,
}

/// The scope a Docker network create asks for.
fn scope_spec(r: &CreateNetwork) -> Result<ScopeSpec, DockerError> {
    if r.name.is_empty() {
        return Err(DockerError::bad_request("A network needs a name"));
    }
    if !matches!(r.driver.as_str(), "" | "bridge") {
        return Err(DockerError::bad_request(format!(
            "Driver {:?} is not supported by this appliance: bridge is",
            r.driver
        )));
    }
    if r.enable_ipv6 == Some(true) {
        return Err(DockerError::bad_request(
            "IPv6 networks are not supported by this appliance",
        ));
    }
    let configs = r
        .ipam
        .as_ref()
        .and_then(|i| i.config.as_deref())
        .unwrap_or_default();
    if configs.len() > 1 {
        return Err(DockerError::bad_request(
            "One IPAM config (one subnet) per network is supported by this appliance",
        ));
    }
    let ipam = configs.first();
    let mut mtu = 0;
    for (k, v) in r.options.iter().flatten() {
        match k.as_str() {
            "com.docker.network.driver.mtu" => {
                mtu = v.parse().map_err(|_| {
                    DockerError::bad_request(format!("Invalid MTU {v:?} (option {k})"))
                })?;
            }
            other => {
                return Err(DockerError::bad_request(format!(
                    "Network option {other:?} is not supported by this appliance \
                     (com.docker.network.driver.mtu is)"
                )));
            }
        }
    }
    Ok(ScopeSpec {
        name: r.name.clone(),
        kind: if r.internal {
            ScopeKind::Closed
        } else {
            ScopeKind::Bridge
        },
        subnet: ipam.map(|i| i.subnet.clone()).unwrap_or_default(),
        gateway: ipam.map(|i| i.gateway.clone()).unwrap_or_default(),
        ip_range: ipam.map(|i| i.ip_range.clone()).unwrap_or_default(),
        mtu,
        outgoing: r.internal.then_some(false),
        bridge: String::new(),
        labels: r.labels.clone().unwrap_or_default(),
    })
}

/// `POST /networks/create`.
pub async fn create(d: &Docker, body: &Bytes) -> Reply {
    let r: CreateNetwork = serde_json::from_slice(body)
        .map_err(|e| DockerError::bad_request(format!("Invalid network config: {e}")))?;
    let spec = scope_spec(&r)?;
    if find(d, &r.name).await.is_ok_and(|s| s.name == r.name) {
        return Err(DockerError::conflict(format!(
            "network with name {} already exists",
            r.name
        )));
    }
    let s: Scope = match d.client.post("/network/scopes", &spec).await {
        Ok(s) => s,
        Err(ClientError::Api(a)) if a.status == 409 && a.element == "name" => {
            return Err(DockerError::conflict(format!(
                "network with name {} already exists",
                r.name
            )));
        }
        Err(ClientError::Api(a)) if a.status == 409 => {
            return Err(forbidden(format!(
                "invalid pool request: Pool overlaps with other one on this address space ({})",
                a.message
            )));
        }
        Err(e) => return Err(e.into()),
    };
    json(
        StatusCode::CREATED,
        &json!({ "Id": network_id(&s), "Warning": "" }),
    )
}

/// `DELETE /networks/{id}`.
pub async fn remove(d: &Docker, id: &str) -> Reply {
    let s = find(d, id).await?;
    if s.default {
        return Err(forbidden(format!(
            "{} is a pre-defined network and cannot be removed",
            s.name
        )));
    }
    match d
        .client
        .delete::<()>(&format!("/network/scopes/{}", encode(&s.name)))
        .await
    {
        Ok(()) => empty(StatusCode::NO_CONTENT),
        Err(ClientError::Api(a)) if a.status == 409 => Err(forbidden(format!(
            "error while removing network: network {} id {} has active endpoints",
            s.name,
            network_id(&s)
        ))),
        Err(ClientError::Api(a)) if a.status == 404 => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

/// `POST /networks/prune?filters=`: the user networks no container is on.
pub async fn prune(d: &Docker, q: &Query) -> Reply {
    let filters = match q.get("filters") {
        Some(f) => super::containers::docker_filters(f)?,
        None => vec![],
    };
    if let Some((k, _)) = filters.iter().find(|(k, v)| !v.is_empty() && k != "label") {
        return Err(DockerError::bad_request(format!(
            "The {k:?} filter is not supported for network prune (label is)"
        )));
    }
    let members = containers(d).await?;
    let used: BTreeSet<&str> = members
        .iter()
        .flat_map(|c| c.endpoints.keys().map(String::as_str))
        .collect();
    let mut deleted = Vec::new();
    for s in scopes(d).await? {
        if s.default || used.contains(s.name.as_str()) || !matches(&s, &filters)? {
            continue;
        }
        match d
            .client
            .delete::<()>(&format!("/network/scopes/{}", encode(&s.name)))
            .await
        {
            Ok(()) => deleted.push(s.name),
            // Joined meanwhile, or gone.
            Err(ClientError::Api(a)) if a.status == 409 || a.status == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    json(StatusCode::OK, &json!({ "NetworksDeleted": deleted }))
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSettings {
    aliases: Option<Vec<String>>,
    #[serde(rename = "IPAMConfig")]
    ipam_config: Option<EndpointIpam>,
}

#[derive(Deserialize, Default, Debug, Clone)]
#[serde(default)]
struct EndpointIpam {
    #[serde(rename = "IPv4Address")]
    ipv4_address: String,
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectRequest {
    container: String,
    endpoint_config: Option<EndpointSettings>,
    force: bool,
}

#[derive(Deserialize)]
struct HandleBody {
    handle: String,
}

/// A running container's VM cannot take or drop a NIC: said plainly.
fn running_refusal(c: &Container, verb: &str, s: &Scope) -> DockerError {
    DockerError::conflict(format!(
        "Cannot {verb} container {} and network {}: the container is running, and a \
         running container's VM cannot change its network interfaces on this appliance; \
         stop it first",
        c.name, s.name
    ))
}

/// `POST /networks/{id}/connect`: get handle → join → bind → commit.
pub async fn connect(d: &Docker, id: &str, body: &Bytes) -> Reply {
    let r: ConnectRequest = serde_json::from_slice(body)
        .map_err(|e| DockerError::bad_request(format!("Invalid connect request: {e}")))?;
    let s = find(d, id).await?;
    let c = super::containers::get(d, &r.container).await?;
    if c.endpoints.contains_key(&s.name) {
        return Err(forbidden(format!(
            "endpoint with name {} already exists in network {}",
            c.name, s.name
        )));
    }
    if matches!(c.state, PowerState::Running | PowerState::Paused) {
        return Err(running_refusal(&c, "connect", &s));
    }
    let settings = r.endpoint_config.unwrap_or_default();
    let join = JoinRequest {
        scope: s.name.clone(),
        aliases: settings.aliases.unwrap_or_default(),
        ip: settings
            .ipam_config
            .map(|i| i.ipv4_address)
            .unwrap_or_default(),
        ..JoinRequest::default()
    };
    let h: HandleBody = d
        .client
        .get(&format!("/exec/containers/{}/handle", encode(&c.id)))
        .await
        .map_err(|e| DockerError::on_container(e, &r.container))?;
    let handle = join_and_bind(d, h.handle, join).await?;
    super::containers::commit(d, handle).await?;
    empty(StatusCode::OK)
}

/// `POST /networks/{id}/disconnect`: get handle → leave → commit.
pub async fn disconnect(d: &Docker, id: &str, body: &Bytes) -> Reply {
    let r: ConnectRequest = serde_json::from_slice(body)
        .map_err(|e| DockerError::bad_request(format!("Invalid disconnect request: {e}")))?;
    let s = find(d, id).await?;
    let c = super::containers::get(d, &r.container).await?;
    if !c.endpoints.contains_key(&s.name) {
        return Err(forbidden(format!(
            "container {} is not connected to network {}",
            c.id, s.name
        )));
    }
    if matches!(c.state, PowerState::Running | PowerState::Paused) {
        return Err(running_refusal(&c, "disconnect", &s));
    }
    let _ = r.force;
    let h: HandleBody = d
        .client
        .get(&format!("/exec/containers/{}/handle", encode(&c.id)))
        .await
        .map_err(|e| DockerError::on_container(e, &r.container))?;
    let h: HandleBody = d
        .client
        .post(
            "/network/handles/leave",
            &json!({ "handle": h.handle, "scope": s.name }),
        )
        .await?;
    super::containers::commit(d, h.handle).await?;
    empty(StatusCode::OK)
}

/// Join then bind on a handle; the new handle.
async fn join_and_bind(
    d: &Docker,
    handle: String,
    mut join: JoinRequest,
) -> Result<String, DockerError> {
    join.handle = handle;
    let scope = join.scope.clone();
    let h: HandleBody = d
        .client
        .post("/network/handles/join", &join)
        .await
        .map_err(|e| match e {
            ClientError::Api(a) if a.status == 404 => not_found(&scope),
            ClientError::Api(a) if a.status == 400 => DockerError::bad_request(format!(
                "Invalid endpoint settings for network {scope}: {}",
                a.message
            )),
            e => e.into(),
        })?;
    let h: HandleBody = d
        .client
        .post(
            "/network/handles/bind",
            &json!({ "handle": h.handle, "scope": scope }),
        )
        .await?;
    Ok(h.handle)
}

/// The networks a `docker create` joins, checked before anything is made.
#[derive(Debug, Default)]
pub struct Plan {
    /// `HostConfig.NetworkMode` as inspect shows it.
    pub mode: String,
    /// In join order: the first is the primary (it takes the ports).
    joins: Vec<JoinRequest>,
}

/// A parsed port key, "80/tcp": the port and protocol.
fn port_key(key: &str) -> Result<(u16, String), DockerError> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let proto = proto.to_ascii_lowercase();
    if !matches!(proto.as_str(), "tcp" | "udp") {
        return Err(DockerError::bad_request(format!(
            "invalid port specification: {key:?}: protocol {proto:?} is not supported \
             (tcp and udp are)"
        )));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, proto)),
        _ => Err(DockerError::bad_request(format!(
            "invalid port specification: {key:?}: {port:?} is not a port (1-65535)"
        ))),
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "PascalCase", default)]
struct PortBinding {
    host_ip: String,
    host_port: String,
}

/// `HostConfig.PortBindings`, `PublishAllPorts` and the exposed ports as
/// the endpoint's exposed and published ports; a host port 0 is to be
/// picked.
fn ports(r: &CreateRequest) -> Result<(Vec<String>, Vec<PublishedPort>), DockerError> {
    let mut exposed = BTreeSet::new();
    for key in r.exposed_ports.iter().flat_map(BTreeMap::keys) {
        let (p, proto) = port_key(key)?;
        exposed.insert((p, proto));
    }
    let mut published = Vec::new();
    for (key, bindings) in r.host_config.port_bindings.iter().flatten() {
        let (port, proto) = port_key(key)?;
        exposed.insert((port, proto.clone()));
        let bindings: Vec<PortBinding> = match bindings {
            Value::Null => vec![],
            v => serde_json::from_value(v.clone()).map_err(|e| {
                DockerError::bad_request(format!(
                    "invalid port specification: the bindings of {key:?}: {e}"
                ))
            })?,
        };
        let bindings = if bindings.is_empty() {
            vec![PortBinding::default()]
        } else {
            bindings
        };
        for b in bindings {
            let host_port = match b.host_port.as_str() {
                "" | "0" => 0,
                h => match h.parse::<u16>() {
                    Ok(p) if p > 0 => p,
                    _ => {
                        return Err(DockerError::bad_request(format!(
                            "invalid port specification: {h:?} (host port of {key}): \
                             a port is 1-65535 (ranges are not supported)"
                        )));
                    }
                },
            };
            let host_ip = match b.host_ip.as_str() {
                "" | "0.0.0.0" => String::new(),
                ip if ip.parse::<std::net::Ipv4Addr>().is_ok() => ip.to_string(),
                ip => {
                    return Err(DockerError::bad_request(format!(
                        "invalid IP address: {ip:?} (host address of {key}): \
                         an IPv4 address is needed"
                    )));
                }
            };
            published.push(PublishedPort {
                host_ip,
                host_port,
                port,
                proto: proto.clone(),
            });
        }
    }
    if r.host_config.publish_all_ports {
        for (port, proto) in &exposed {
            if !published
                .iter()
                .any(|p| p.port == *port && &p.proto == proto)
            {
                published.push(PublishedPort {
                    host_ip: String::new(),
                    host_port: 0,
                    port: *port,
                    proto: proto.clone(),
                });
            }
        }
    }
    let exposed = exposed
        .into_iter()
        .map(|(p, proto)| format!("{p}/{proto}"))
        .collect();
    Ok((exposed, published))
}

/// Fills the host ports to pick (`-p 80`, `-P`) with free ones of the
/// ephemeral range: not published by any container, and free here.
async fn pick_host_ports(d: &Docker, published: &mut [PublishedPort]) -> Result<(), DockerError> {
    if published.iter().all(|p| p.host_port != 0) {
        return Ok(());
    }
    let mut taken: BTreeSet<(u16, String)> = containers(d)
        .await?
        .iter()
        .flat_map(|c| c.endpoints.values())
        .flat_map(|e| e.published.iter())
        .map(|p| (p.host_port, p.proto.clone()))
        .collect();
    for p in published.iter().filter(|p| p.host_port != 0) {
        taken.insert((p.host_port, p.proto.clone()));
    }
    let mut candidates = EPHEMERAL;
    for p in published.iter_mut().filter(|p| p.host_port == 0) {
        let proto = p.proto.clone();
        let free = candidates.by_ref().find(|h| {
            !taken.contains(&(*h, proto.clone()))
                && match proto.as_str() {
                    "udp" => std::net::UdpSocket::bind(("0.0.0.0", *h)).is_ok(),
                    _ => std::net::TcpListener::bind(("0.0.0.0", *h)).is_ok(),
                }
        });
        p.host_port = free.ok_or_else(|| DockerError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("No free host port for {}/{}", p.port, p.proto),
        })?;
        taken.insert((p.host_port, proto));
    }
    Ok(())
}

/// What `docker create`'s network options ask for, checked against the
/// port layer (networks exist, ports are well formed) before anything is
/// made. `default_network` is where a container without `--network` goes
/// (the personality's setting: `bridge`, or `none`).
pub async fn plan(d: &Docker, r: &CreateRequest) -> Result<Plan, DockerError> {
    let mode = r.host_config.network_mode.as_str();
    let (exposed, mut published) = ports(r)?;
    let endpoints = r
        .networking_config
        .as_ref()
        .and_then(|n| n.endpoints_config.clone())
        .unwrap_or_default();
    let primary = match mode {
        "" | "default" => {
            if d.default_network == "none" {
                None
            } else {
                Some(DEFAULT_SCOPE.to_string())
            }
        }
        "none" => None,
        "host" => {
            return Err(DockerError::bad_request(
                "Network mode host is not supported by this appliance: each container is \
                 a VM with a network stack of its own (use -p to publish ports)",
            ));
        }
        m if m.starts_with("container:") => {
            return Err(DockerError::bad_request(format!(
                "Network mode {m} is not supported by this appliance: containers are VMs \
                 and cannot share a network stack (put both on one network instead)"
            )));
        }
        name => Some(find(d, name).await?.name),
    };
    let Some(primary) = primary else {
        // The CLI sends empty settings for the mode itself.
        let asks = !published.is_empty()
            || endpoints.iter().any(|(name, e)| {
                (name != mode && name != "default")
                    || e.aliases.as_ref().is_some_and(|a| !a.is_empty())
                    || e.ipam_config
                        .as_ref()
                        .is_some_and(|i| !i.ipv4_address.is_empty())
            });
        if mode == "none" && asks {
            return Err(DockerError::bad_request(
                "conflicting options: port publishing and the container type network mode",
            ));
        }
        if asks {
            return Err(DockerError::bad_request(
                "Publishing ports or network aliases without --network is not supported by \
                 this server: its containers have no network by default \
                 (serve --docker-default-network none); add --network bridge",
            ));
        }
        return Ok(Plan {
            mode: if mode.is_empty() {
                "none".into()
            } else {
                mode.into()
            },
            joins: vec![],
        });
    };
    pick_host_ports(d, &mut published).await?;
    let settings_of = |name: &str| -> EndpointSettings {
        endpoints
            .iter()
            .find(|(k, _)| k.as_str() == name || (mode == k.as_str()))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let join = |scope: &str, s: EndpointSettings| JoinRequest {
        scope: scope.to_string(),
        aliases: s.aliases.unwrap_or_default(),
        ip: s.ipam_config.map(|i| i.ipv4_address).unwrap_or_default(),
        ..JoinRequest::default()
    };
    let mut first = join(&primary, settings_of(&primary));
    first.exposed = exposed;
    first.published = published;
    let mut joins = vec![first];
    for (name, s) in &endpoints {
        if name == mode || *name == primary || (mode.is_empty() && name == "default") {
            continue;
        }
        let scope = find(d, name).await?.name;
        if joins.iter().any(|j| j.scope == scope) {
            continue;
        }
        joins.push(join(&scope, s.clone()));
    }
    Ok(Plan {
        mode: if matches!(mode, "" | "default") {
            "bridge".into()
        } else {
            mode.into()
        },
        joins,
    })
}

/// Joins and binds the planned networks on the creation handle; the new
/// handle. A bad join fails here, before the commit, so nothing is made.
pub async fn apply(d: &Docker, mut handle: String, plan: Plan) -> Result<String, DockerError> {
    for j in plan.joins {
        handle = join_and_bind(d, handle, j).await?;
    }
    Ok(handle)
}

/// A commit refused for a host port another container holds, in Docker's
/// words (and the port layer's, which name the holder).
pub fn port_taken(a: &crate::client::ApiError) -> Option<DockerError> {
    let rest = a.message.strip_prefix("Host port ")?;
    let (port, _) = rest.split_once(" is in use")?;
    (a.status == 409).then(|| {
        DockerError::conflict(format!(
            "Bind for {port} failed: port is already allocated ({})",
            a.message
        ))
    })
}

/// The label that keeps the network mode, for create.
pub fn mode_label(plan: &Plan) -> (String, String) {
    (NETWORK_MODE.to_string(), plan.mode.clone())
}

/// `ps`'s `Ports`: each published port, and each exposed one unpublished.
pub fn summary_ports(c: &Container) -> Vec<Value> {
    let mut out = Vec::new();
    for e in c.endpoints.values() {
        for p in &e.published {
            out.push(json!({
                "IP": if p.host_ip.is_empty() { "0.0.0.0" } else { &p.host_ip },
                "PrivatePort": p.port,
                "PublicPort": p.host_port,
                "Type": p.proto,
            }));
        }
        for x in &e.exposed {
            let (port, proto) = x.split_once('/').unwrap_or((x, "tcp"));
            let Ok(port) = port.parse::<u16>() else {
                continue;
            };
            if !e
                .published
                .iter()
                .any(|p| p.port == port && p.proto == proto)
            {
                out.push(json!({ "PrivatePort": port, "Type": proto }));
            }
        }
    }
    out
}

/// `inspect`'s `NetworkSettings.Ports` and `HostConfig.PortBindings`.
fn port_maps(c: &Container) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
    let mut ports: BTreeMap<String, Value> = BTreeMap::new();
    let mut bindings: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in c.endpoints.values() {
        for x in &e.exposed {
            ports.entry(x.clone()).or_insert(Value::Null);
        }
        for p in &e.published {
            let key = format!("{}/{}", p.port, p.proto);
            let host_ip = if p.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                &p.host_ip
            };
            let b = json!({ "HostIp": host_ip, "HostPort": p.host_port.to_string() });
            match ports.entry(key.clone()).or_insert(Value::Null) {
                Value::Array(a) => a.push(b.clone()),
                v => *v = Value::Array(vec![b.clone()]),
            }
            bindings.entry(key).or_default().push(json!({
                "HostIp": p.host_ip,
                "HostPort": p.host_port.to_string(),
            }));
        }
    }
    let bindings = bindings
        .into_iter()
        .map(|(k, v)| (k, Value::Array(v)))
        .collect();
    (ports, bindings)
}

/// The network parts of `docker inspect` (`NetworkSettings`,
/// `HostConfig.NetworkMode` and `PortBindings`), into `inspect`'s JSON.
pub async fn fill_inspect(
    d: &Docker,
    c: &Container,
    inspect: &mut Value,
) -> Result<(), DockerError> {
    let all = if c.endpoints.is_empty() {
        vec![]
    } else {
        scopes(d).await?
    };
    let mut networks = serde_json::Map::new();
    for (name, e) in &c.endpoints {
        let id = all
            .iter()
            .find(|s| &s.name == name)
            .map(network_id)
            .unwrap_or_default();
        let dns_names: Vec<&String> = std::iter::once(&c.name).chain(&e.aliases).collect();
        networks.insert(
            name.clone(),
            json!({
                "IPAMConfig": if e.requested_ip.is_empty() { Value::Null } else {
                    json!({ "IPv4Address": e.requested_ip })
                },
                "Links": null,
                "Aliases": e.aliases,
                "MacAddress": e.mac,
                "NetworkID": id,
                "EndpointID": if e.bound { endpoint_id(&c.id, name) } else { String::new() },
                "Gateway": e.gateway,
                "IPAddress": address_of(e),
                "IPPrefixLen": e.prefix_len,
                "IPv6Gateway": "",
                "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0,
                "DNSNames": dns_names,
            }),
        );
    }
    // The primary: the first joined.
    let primary = c.endpoints.values().min_by_key(|e| e.order);
    let (ports, bindings) = port_maps(c);
    let settings = json!({
        "Bridge": "",
        "SandboxID": "",
        "SandboxKey": "",
        "HairpinMode": false,
        "Ports": ports,
        "EndpointID": primary.filter(|e| e.bound).map(|e| endpoint_id(&c.id, &e.scope)).unwrap_or_default(),
        "Gateway": primary.map(|e| e.gateway.clone()).unwrap_or_default(),
        "IPAddress": primary.map(address_of).unwrap_or_default(),
        "IPPrefixLen": primary.map(|e| e.prefix_len).unwrap_or_default(),
        "MacAddress": primary.map(|e| e.mac.clone()).unwrap_or_default(),
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPv6Gateway": "",
        "Networks": networks,
    });
    inspect["NetworkSettings"] = settings;
    let mode = c.labels.get(NETWORK_MODE).cloned().unwrap_or_else(|| {
        primary
            .map(|e| e.scope.clone())
            .unwrap_or_else(|| "none".into())
    });
    inspect["HostConfig"]["NetworkMode"] = json!(mode);
    inspect["HostConfig"]["PortBindings"] = json!(bindings);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> CreateRequest {
        serde_json::from_str(body).expect("parses")
    }

    #[test]
    fn port_bindings_become_published_ports() {
        let r = request(
            r#"{"ExposedPorts":{"80/tcp":{},"53/udp":{}},
                "HostConfig":{"PortBindings":{
                    "80/tcp":[{"HostIp":"127.0.0.1","HostPort":"8080"}],
                    "81/tcp":[{"HostIp":"","HostPort":""}]}}}"#,
        );
        let (exposed, published) = ports(&r).expect("ports");
        assert_eq!(exposed, ["53/udp", "80/tcp", "81/tcp"]);
        assert_eq!(
            published,
            [
                PublishedPort {
                    host_ip: "127.0.0.1".into(),
                    host_port: 8080,
                    port: 80,
                    proto: "tcp".into()
                },
                PublishedPort {
                    host_ip: String::new(),
                    host_port: 0,
                    port: 81,
                    proto: "tcp".into()
                },
            ]
        );
    }

    #[test]
    fn publish_all_publishes_every_exposed_port_once() {
        let r = request(
            r#"{"ExposedPorts":{"80/tcp":{},"53/udp":{}},
                "HostConfig":{"PublishAllPorts":true,
                    "PortBindings":{"80/tcp":[{"HostPort":"8080"}]}}}"#,
        );
        let (_, published) = ports(&r).expect("ports");
        let got: Vec<(u16, u16, &str)> = published
            .iter()
            .map(|p| (p.host_port, p.port, p.proto.as_str()))
            .collect();
        assert_eq!(got, [(8080, 80, "tcp"), (0, 53, "udp")]);
    }

    #[test]
    fn bad_port_specs_are_400s_naming_the_spec() {
        for (body, says) in [
            (
                r#"{"HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"99999"}]}}}"#,
                "\"99999\"",
            ),
            (
                r#"{"HostConfig":{"PortBindings":{"0/tcp":[{"HostPort":"1"}]}}}"#,
                "\"0/tcp\"",
            ),
            (
                r#"{"HostConfig":{"PortBindings":{"80/sctp":[{"HostPort":"1"}]}}}"#,
                "\"sctp\"",
            ),
            (
                r#"{"HostConfig":{"PortBindings":{"80/tcp":[{"HostIp":"nope","HostPort":"1"}]}}}"#,
                "\"nope\"",
            ),
            (r#"{"ExposedPorts":{"x/tcp":{}}}"#, "\"x/tcp\""),
        ] {
            let e = ports(&request(body)).expect_err(body);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}");
            assert!(e.message().contains(says), "{body}: {}", e.message());
        }
    }

    #[test]
    fn network_creates_become_scopes_and_other_drivers_are_refused() {
        let r: CreateNetwork = serde_json::from_str(
            r#"{"Name":"n","Driver":"bridge","Internal":true,"Labels":{"a":"b"},
                "IPAM":{"Config":[{"Subnet":"10.9.0.0/24","Gateway":"10.9.0.1"}]},
                "Options":{"com.docker.network.driver.mtu":"1400"}}"#,
        )
        .expect("parses");
        let s = scope_spec(&r).expect("spec");
        assert_eq!(s.kind, ScopeKind::Closed);
        assert_eq!(s.outgoing, Some(false));
        assert_eq!(
            (s.subnet.as_str(), s.gateway.as_str()),
            ("10.9.0.0/24", "10.9.0.1")
        );
        assert_eq!(s.mtu, 1400);
        assert_eq!(s.labels["a"], "b");
        for body in [
            r#"{"Name":"n","Driver":"overlay"}"#,
            r#"{"Name":"n","Options":{"com.docker.network.bridge.enable_icc":"false"}}"#,
            r#"{"Name":"n","EnableIPv6":true}"#,
            r#"{"Name":""}"#,
        ] {
            let r: CreateNetwork = serde_json::from_str(body).expect("parses");
            let e = scope_spec(&r).expect_err(body);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}");
        }
    }

    #[test]
    fn a_taken_host_port_reads_like_dockers() {
        let a = crate::client::ApiError::from_body(
            409,
            br#"{"code":"IN_USE","message":"Host port 0.0.0.0:8080/tcp is in use by container web","element":"x"}"#,
        );
        let e = port_taken(&a).expect("a port conflict");
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert!(
            e.message()
                .starts_with("Bind for 0.0.0.0:8080/tcp failed: port is already allocated"),
            "{}",
            e.message()
        );
        let name = crate::client::ApiError::from_body(409, br#"{"message":"Name x is in use"}"#);
        assert!(port_taken(&name).is_none());
    }

    #[test]
    fn network_filters_read_like_dockers() {
        let s = Scope {
            name: "appnet".into(),
            labels: BTreeMap::from([("team".to_string(), "a".to_string())]),
            created_at: 5,
            ..Scope::default()
        };
        let f = |k: &str, v: &str| vec![(k.to_string(), vec![v.to_string()])];
        assert!(matches(&s, &f("name", "app")).expect("name"));
        assert!(!matches(&s, &f("name", "db")).expect("name"));
        assert!(matches(&s, &f("id", &network_id(&s)[..6])).expect("id"));
        assert!(matches(&s, &f("label", "team=a")).expect("label"));
        assert!(!matches(&s, &f("label", "team=b")).expect("label"));
        assert!(matches(&s, &f("driver", "bridge")).expect("driver"));
        assert!(matches(&s, &f("type", "custom")).expect("type"));
        assert!(matches(&s, &f("dangling", "true")).is_err());
        assert_eq!(network_id(&s).len(), 64);
    }

    #[test]
    fn inspect_ports_show_exposed_and_bound() {
        let c = Container {
            endpoints: BTreeMap::from([(
                "bridge".to_string(),
                Endpoint {
                    scope: "bridge".into(),
                    exposed: vec!["80/tcp".into(), "90/tcp".into()],
                    published: vec![PublishedPort {
                        host_ip: String::new(),
                        host_port: 8080,
                        port: 80,
                        proto: "tcp".into(),
                    }],
                    ..Endpoint::default()
                },
            )]),
            ..Container::default()
        };
        let (ports, bindings) = port_maps(&c);
        assert_eq!(
            json!(ports),
            json!({"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}], "90/tcp": null})
        );
        assert_eq!(
            json!(bindings),
            json!({"80/tcp": [{"HostIp": "", "HostPort": "8080"}]})
        );
        assert_eq!(summary_ports(&c).len(), 2);
    }
}
