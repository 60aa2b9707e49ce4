//! `appliance network create|ls|inspect|rm|connect|disconnect`: the
//! network component's scopes through the REST server, and endpoints
//! joined on handles (`connect` = get a handle, join, bind, commit).

use std::collections::BTreeMap;

use appliance::portlayer::model::{OutgoingRule, Scope, ScopeKind};
use appliance::portlayer::network::{ScopeSpec, parse_publish};
use clap::{Args, Subcommand};
use serde_json::json;

use super::client::{Client, encode, with_query};
use super::handles::Handle;
use super::output::{errln, outln, printable};

#[derive(Subcommand)]
pub enum NetworkCommand {
    /// Create a scope (a network); prints its name.
    Create(CreateArgs),
    /// List scopes.
    Ls(LsArgs),
    /// Show scopes as JSON.
    Inspect(NamesArgs),
    /// Remove scopes (refused while containers are members).
    Rm(NamesArgs),
    /// Join a stopped container to a scope.
    Connect(ConnectArgs),
    /// Take a stopped container off a scope.
    Disconnect(DisconnectArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    pub name: String,
    /// bridge (NAT out), external (an existing host bridge) or closed
    /// (members only).
    #[arg(long, default_value = "bridge")]
    pub kind: String,
    /// CIDR (default: the next free /24 of 10.88.0.0/16).
    #[arg(long, default_value = "")]
    pub subnet: String,
    #[arg(long, default_value = "")]
    pub gateway: String,
    /// CIDR inside the subnet that container addresses come from.
    #[arg(long, default_value = "")]
    pub ip_range: String,
    #[arg(long, default_value_t = 0)]
    pub mtu: u32,
    /// External scopes: the existing host bridge to join.
    #[arg(long, default_value = "")]
    pub bridge: String,
    /// No traffic beyond the scope (members still reach each other).
    #[arg(long)]
    pub no_outgoing: bool,
    /// Labels: key=value, or key for an empty value.
    #[arg(short, long)]
    pub label: Vec<String>,
}

#[derive(Args)]
pub struct LsArgs {
    /// Filterspec over name, kind, subnet, bridge, default and label.<key>.
    #[arg(long, default_value = "")]
    pub filter: String,
    /// Only the names.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// How a container joins one scope (`run --network` and `connect`).
#[derive(Args, Clone, Debug, Default)]
pub struct JoinFlags {
    /// Names the other members resolve to it, besides its name.
    #[arg(long = "alias", visible_alias = "network-alias")]
    pub aliases: Vec<String>,
    /// A static address in the scope's range.
    #[arg(long, default_value = "")]
    pub ip: String,
    /// Publish a port: [HOSTIP:]HOSTPORT:PORT[/udp].
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Expose a port to the scope's members: PORT[/udp].
    #[arg(long)]
    pub expose: Vec<String>,
    /// Outgoing policy, in order (first match wins): allowed:TARGET or
    /// denied:TARGET, TARGET one of tcp:ADDR[/PREFIX][:PORT], udp:...,
    /// ip:ADDR[/PREFIX], ether:MAC. Any `allowed` denies the rest.
    #[arg(long)]
    pub outgoing: Vec<String>,
}

impl JoinFlags {
    /// Whether no endpoint flag was given.
    pub fn is_empty(&self) -> bool {
        self.aliases.is_empty()
            && self.ip.is_empty()
            && self.publish.is_empty()
            && self.expose.is_empty()
            && self.outgoing.is_empty()
    }

    /// The join request's fields for `scope`.
    pub fn request(&self, scope: &str) -> anyhow::Result<serde_json::Value> {
        let published = self
            .publish
            .iter()
            .map(|p| parse_publish(p).map_err(|e| anyhow::anyhow!("Invalid -p {p:?}: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let outgoing = self
            .outgoing
            .iter()
            .map(|o| {
                let (constraint, target) = o.split_once(':').ok_or_else(|| {
                    anyhow::anyhow!(
                        "Invalid --outgoing {o:?}: expected allowed:TARGET or denied:TARGET"
                    )
                })?;
                Ok(OutgoingRule {
                    constraint: constraint.into(),
                    target: target.into(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(json!({
            "scope": scope,
            "aliases": self.aliases,
            "ip": self.ip,
            "exposed": self.expose,
            "published": published,
            "outgoing": outgoing,
        }))
    }
}

#[derive(Args)]
pub struct ConnectArgs {
    pub network: String,
    pub container: String,
    #[command(flatten)]
    pub join: JoinFlags,
}

#[derive(Args)]
pub struct DisconnectArgs {
    pub network: String,
    pub container: String,
}

fn kind(s: &str) -> anyhow::Result<ScopeKind> {
    Ok(match s {
        "bridge" => ScopeKind::Bridge,
        "external" => ScopeKind::External,
        "closed" | "internal" => ScopeKind::Closed,
        other => anyhow::bail!("Unknown kind {other:?}: bridge, external or closed"),
    })
}

pub async fn network(client: &Client, cmd: NetworkCommand) -> anyhow::Result<u8> {
    match cmd {
        NetworkCommand::Create(a) => {
            let spec = ScopeSpec {
                name: a.name,
                kind: kind(&a.kind)?,
                subnet: a.subnet,
                gateway: a.gateway,
                ip_range: a.ip_range,
                mtu: a.mtu,
                outgoing: a.no_outgoing.then_some(false),
                bridge: a.bridge,
                labels: super::run::labels(&a.label),
            };
            let s: Scope = client.post("/network/scopes", &spec).await?;
            outln!("{}", s.name)?;
            Ok(0)
        }
        NetworkCommand::Ls(a) => {
            let scopes: Vec<Scope> = client
                .get(&with_query("/network/scopes", &[("filter", a.filter)]))
                .await?;
            if a.quiet {
                for s in scopes {
                    outln!("{}", printable(&s.name))?;
                }
                return Ok(0);
            }
            outln!(
                "{:<20} {:<9} {:<18} {:<15} {:<15} OUTGOING",
                "NAME",
                "KIND",
                "SUBNET",
                "GATEWAY",
                "BRIDGE"
            )?;
            for s in scopes {
                outln!(
                    "{:<20} {:<9} {:<18} {:<15} {:<15} {}",
                    printable(&s.name),
                    s.kind.as_str(),
                    printable(&s.subnet),
                    printable(&s.gateway),
                    printable(&s.bridge),
                    if s.outgoing { "yes" } else { "no" }
                )?;
            }
            Ok(0)
        }
        NetworkCommand::Inspect(a) => {
            let mut out = Vec::new();
            let mut status = 0;
            for n in &a.names {
                match client
                    .get::<serde_json::Value>(&format!("/network/scopes/{}", encode(n)))
                    .await
                {
                    Ok(v) => out.push(v),
                    Err(e) => {
                        errln!("appliance: {e}");
                        status = 1;
                    }
                }
            }
            outln!("{}", serde_json::to_string_pretty(&out)?)?;
            Ok(status)
        }
        NetworkCommand::Rm(a) => {
            let mut status = 0;
            for n in &a.names {
                match client
                    .delete::<()>(&format!("/network/scopes/{}", encode(n)))
                    .await
                {
                    Ok(()) => outln!("{n}")?,
                    Err(e) => {
                        errln!("appliance: {e}");
                        status = 1;
                    }
                }
            }
            Ok(status)
        }
        NetworkCommand::Connect(a) => {
            let mut h = Handle::of(client, &a.container).await?;
            h.network_join(a.join.request(&a.network)?).await?;
            h.network_bind(&a.network).await?;
            h.commit().await?;
            Ok(0)
        }
        NetworkCommand::Disconnect(a) => {
            let mut h = Handle::of(client, &a.container).await?;
            h.network_leave(&a.network).await?;
            h.commit().await?;
            Ok(0)
        }
    }
}

/// "scope=address" of a container's bound endpoints, for `ps`.
pub fn addresses(endpoints: &BTreeMap<String, appliance::portlayer::model::Endpoint>) -> String {
    endpoints
        .values()
        .filter(|e| e.bound && !e.address.is_empty())
        .map(|e| {
            let ip = e.address.split('/').next().unwrap_or_default();
            let ports: Vec<String> = e
                .published
                .iter()
                .map(|p| {
                    let host = if p.host_ip.is_empty() {
                        "0.0.0.0"
                    } else {
                        &p.host_ip
                    };
                    format!("{host}:{}->{}/{}", p.host_port, p.port, p.proto)
                })
                .collect();
            if ports.is_empty() {
                format!("{}={ip}", e.scope)
            } else {
                format!("{}={ip} {}", e.scope, ports.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
