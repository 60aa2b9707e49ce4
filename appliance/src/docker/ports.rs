//! Docker's ports over the port layer's endpoints: `create`'s
//! `PortBindings`, `PublishAllPorts` and `ExposedPorts` as an endpoint's
//! exposed and published ports, and back as `inspect`'s `Ports` and
//! `PortBindings` and `ps`'s `Ports`.
//!
//! Owns the checks of port specs (Docker-shaped 400s naming the spec) and
//! the choice of ephemeral host ports (`-p 80`, `-P`), from Docker's range,
//! among those no container publishes.

use std::collections::{BTreeMap, BTreeSet};

use appliance::portlayer::model::{Container, PublishedPort};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::types::CreateRequest;
use super::{Docker, DockerError};

/// Where ephemeral host ports (`-p 80`, `-P`) come from, as Docker's.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

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
pub fn ports(r: &CreateRequest) -> Result<(Vec<String>, Vec<PublishedPort>), DockerError> {
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
pub async fn pick_host_ports(
    d: &Docker,
    published: &mut [PublishedPort],
) -> Result<(), DockerError> {
    if published.iter().all(|p| p.host_port != 0) {
        return Ok(());
    }
    let mut taken: BTreeSet<(u16, String)> = super::networks::containers(d)
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
pub fn port_maps(c: &Container) -> (BTreeMap<String, Value>, BTreeMap<String, Value>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use appliance::portlayer::model::Endpoint;

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
