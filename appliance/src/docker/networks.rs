//! Docker networks over the port layer's `network` component: a Docker
//! network is a scope (`/network/scopes`), a container's attachment an
//! endpoint joined and bound on a handle (`/network/handles/*`), committed
//! with `/exec/commit`.
//!
//! Owns the `/networks` verbs, the translation of `docker create`'s
//! network options (`NetworkMode`, `EndpointsConfig`) into joins (their
//! ports come from `ports`), and the network parts of `inspect`. It must
//! not touch the port layer's internals: only its REST API.

use std::collections::{BTreeMap, BTreeSet};

use appliance::api::network::JoinRequest;
use appliance::portlayer::model::{Container, Endpoint, PowerState, Scope, ScopeKind};
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

pub async fn containers(d: &Docker) -> Result<Vec<Container>, DockerError> {
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

/// What `docker create`'s network options ask for, checked against the
/// port layer (networks exist, ports are well formed) before anything is
/// made. `default_network` is where a container without `--network` goes
/// (the personality's setting: `bridge`, or `none`).
pub async fn plan(d: &Docker, r: &CreateRequest) -> Result<Plan, DockerError> {
    let mode = r.host_config.network_mode.as_str();
    let (exposed, mut published) = super::ports::ports(r)?;
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
            mode: "none".into(),
            joins: vec![],
        });
    };
    super::ports::pick_host_ports(d, &mut published).await?;
    let settings_of = |name: &str| -> EndpointSettings {
        endpoints
            .iter()
            .find(|(k, _)| k.as_str() == name || k.as_str() == mode)
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

/// The label that keeps the network mode, for create.
pub fn mode_label(plan: &Plan) -> (String, String) {
    (NETWORK_MODE.to_string(), plan.mode.clone())
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
    let (ports, bindings) = super::ports::port_maps(c);
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
}
