//! The port layer's data model: containers, their tasks, the changes a
//! handle carries, and commit results. Serde types, shared by the engine,
//! the store (as JSON) and the REST API (as its schemas).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::policy::Policy;

/// A process in a container: the primary process or an exec session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Task {
    /// Unique within the container; the primary task's id is the
    /// container's id.
    pub id: String,
    /// argv; args[0] is looked up in PATH.
    pub args: Vec<String>,
    /// "KEY=VALUE" pairs.
    pub env: Vec<String>,
    pub working_dir: String,
    /// "name", "uid", "name:group" or "uid:gid".
    pub user: String,
    pub tty: bool,
    /// The terminal's size when the task starts (tty tasks only; absent:
    /// 24x80). The guest sets it before the process runs, so its first
    /// output already sees it; later sizes come as resizes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<TtySize>,
    pub open_stdin: bool,
}

/// A terminal's size in character cells.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TtySize {
    /// 1 to 10000.
    #[schema(minimum = 1, maximum = 10000)]
    pub rows: u32,
    /// 1 to 10000.
    #[schema(minimum = 1, maximum = 10000)]
    pub cols: u32,
}

/// Where a task stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(default)]
pub struct TaskState {
    pub task: Task,
    pub primary: bool,
    /// Bound tasks run; unbound ones are defined but inactive.
    pub bound: bool,
    /// "created", "running", "exited".
    pub state: String,
    pub exit_code: Option<i32>,
}

/// The lifecycle states of a container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    #[default]
    Created,
    Running,
    Paused,
    /// The primary process ended (or the VM was stopped).
    Exited,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Created => "created",
            PowerState::Running => "running",
            PowerState::Paused => "paused",
            PowerState::Exited => "exited",
        }
    }
}

/// Target states a caller can ask for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Running,
    /// Stop signal, grace period, then kill.
    Stopped,
    /// Back to a fresh, never-started container.
    Created,
    Paused,
}

/// One stop's own signal and grace period (`docker stop -s SIG -t N`);
/// what is not given comes from the container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StopOptions {
    pub signal: Option<i32>,
    pub timeout_seconds: Option<u32>,
}

/// A volume joined to a container, mounted at `path` in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeMount {
    /// The volume's name.
    pub volume: String,
    /// Absolute path in the container.
    pub path: String,
    /// Mounted read-only in the guest (from a `read-only` policy on the
    /// join, or this flag).
    pub read_only: bool,
}

/// Everything the port layer keeps about one container (stored as JSON).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// The image as the caller named it.
    pub image: String,
    /// The image it was made from ("sha256:..."); empty for containers made
    /// without a storage component (tests of the engine alone).
    pub image_id: String,
    /// Volumes joined to it.
    pub mounts: Vec<VolumeMount>,
    pub hostname: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub stop_signal: i32,
    pub stop_timeout_seconds: u32,
    pub labels: BTreeMap<String, String>,
    pub policies: Vec<Policy>,
    pub tasks: BTreeMap<String, TaskState>,
    pub state: PowerState,
    pub exit_code: Option<i32>,
    /// Why the container is in its state, when something went wrong.
    pub error: String,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    /// Change version (for optimistic concurrency), from the store.
    pub version: u64,
    /// Digest of the changes of the handle that created it: the same
    /// creation handle committed again is recognised by it, and answered
    /// NOOP.
    pub created_by: String,
    /// Its network endpoints, by scope name.
    pub endpoints: BTreeMap<String, Endpoint>,
}

impl Container {
    /// The images, volumes and scopes it holds on to.
    pub fn uses(&self) -> Vec<crate::store::Use> {
        use crate::store::Use;
        let image = (!self.image_id.is_empty()).then(|| Use::Image(self.image_id.clone()));
        image
            .into_iter()
            .chain(self.mounts.iter().map(|m| Use::Volume(m.volume.clone())))
            .chain(self.endpoints.keys().map(|s| Use::Scope(s.clone())))
            .collect()
    }
}

/// The kind of a network scope.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    /// A bridge of the appliance's host with its own subnet; NAT for
    /// outgoing traffic when `outgoing` is on.
    #[default]
    Bridge,
    /// An existing bridge of the host, joined as it is: addresses from the
    /// scope's range, no NAT.
    External,
    /// A bridge whose members talk to each other only.
    Closed,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Bridge => "bridge",
            ScopeKind::External => "external",
            ScopeKind::Closed => "closed",
        }
    }
}

/// A network scope (a network): its members share a subnet and reach each
/// other.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct Scope {
    pub name: String,
    pub kind: ScopeKind,
    /// "10.88.1.0/24".
    pub subnet: String,
    /// The gateway address, inside the subnet (the host's address on the
    /// bridge; the scope's DNS server listens on it). Empty for `external`
    /// scopes without a router.
    pub gateway: String,
    /// Where container addresses come from: a CIDR inside the subnet (by
    /// default the whole subnet, less the gateway).
    pub ip_range: String,
    pub mtu: u32,
    /// Whether members may reach beyond the scope (always false for a
    /// closed scope).
    pub outgoing: bool,
    /// The host bridge device.
    pub bridge: String,
    /// The scope made out of the box (docker's `bridge`): its members do
    /// not resolve each other by name.
    pub default: bool,
    pub labels: BTreeMap<String, String>,
    pub created_at: i64,
}

/// A port of a container, as exposed or published: "80/tcp".
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PublishedPort {
    /// Host address it is published on; empty for every address.
    pub host_ip: String,
    pub host_port: u16,
    /// The container's port.
    pub port: u16,
    /// "tcp" (default) or "udp".
    pub proto: String,
}

/// An outgoing-traffic rule of an endpoint: a target (`tcp:ADDR[/PREFIX][:PORT]`,
/// `udp:…`, `ip:ADDR[/PREFIX]`, `ether:MAC`) allowed or denied. Rules are
/// evaluated in order, the first match wins; with any `allowed` rule,
/// what none matches is denied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct OutgoingRule {
    /// "allowed" or "denied".
    pub constraint: String,
    pub target: String,
}

/// A container's membership of a scope.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, utoipa::ToSchema)]
#[serde(default)]
pub struct Endpoint {
    pub scope: String,
    /// Names other members resolve to it, besides the container's name.
    pub aliases: Vec<String>,
    /// A static address asked for; empty: any free one of the range.
    pub requested_ip: String,
    /// Ports reachable by the members of its scope ("80/tcp"), as
    /// documentation and for publishing all.
    pub exposed: Vec<String>,
    pub published: Vec<PublishedPort>,
    pub outgoing: Vec<OutgoingRule>,
    /// Active: an address is leased and the interface is up.
    pub bound: bool,
    /// The interface's MAC address, stable for the container and scope.
    pub mac: String,
    /// The leased address in CIDR form ("10.88.1.2/24"), read from the
    /// store; empty while unbound.
    pub address: String,
    /// Copied from the scope at join (a scope's subnet never changes): its
    /// gateway (may be empty), prefix length and MTU.
    pub gateway: String,
    pub prefix_len: u8,
    pub mtu: u32,
    /// Whether the scope lets traffic out (its gateway is then a default
    /// route candidate), and whether it resolves names on its gateway.
    pub routed: bool,
    pub dns: bool,
    /// Join order: the first joined scope that lets traffic out gives the
    /// default route.
    pub order: u32,
}

/// One pending change in a handle.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Change {
    /// Create the container (only in a handle from `create`).
    Create {
        container: Box<Container>,
    },
    TaskJoin {
        task: Task,
    },
    TaskBind {
        task: String,
    },
    TaskUnbind {
        task: String,
    },
    TaskLeave {
        task: String,
    },
    State {
        target: TargetState,
        /// For `stopped`: this stop's signal and grace period instead of
        /// the container's own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop: Option<StopOptions>,
    },
    Rename {
        name: String,
    },
    Labels {
        set: BTreeMap<String, String>,
        remove: Vec<String>,
    },
    VolumeJoin {
        mount: VolumeMount,
    },
    VolumeLeave {
        path: String,
    },
    NetworkJoin {
        endpoint: Endpoint,
    },
    NetworkBind {
        scope: String,
    },
    NetworkUnbind {
        scope: String,
    },
    NetworkLeave {
        scope: String,
    },
}

/// Outcome of a commit for one element.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Success,
    Error,
    Noop,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ElementResult {
    pub status: Status,
    pub detail: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CommitResult {
    /// The container's version after the commit.
    pub version: u64,
    /// A fresh handle on the committed container.
    pub handle: String,
    /// Per element id (the container id, or `<container>/task/<task>`).
    pub results: BTreeMap<String, ElementResult>,
}

impl CommitResult {
    pub fn is_error(&self) -> bool {
        self.results.values().any(|r| r.status == Status::Error)
    }
}
