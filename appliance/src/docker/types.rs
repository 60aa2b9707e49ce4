//! The Docker Engine API's wire types, as the docker CLI and SDKs send
//! and read them (PascalCase JSON), and their mapping from the port
//! layer's REST types. Only the fields this personality serves are here;
//! an unknown field in a request is ignored, as dockerd does.

use std::collections::BTreeMap;

use appliance::api::time::format_rfc3339_nanos;
use appliance::portlayer::model::{Container, PowerState};
use appliance::storage::model::Image;
use serde::{Deserialize, Serialize};

/// Labels the personality keeps its own settings in: left out of what
/// docker clients see.
pub const LABEL_PREFIX: &str = "io.appliance.docker.";
/// `HostConfig.AutoRemove` (`--rm`): removed once it has exited.
pub const AUTO_REMOVE: &str = "io.appliance.docker.auto-remove";

/// `POST /containers/create`: `Config` with `HostConfig` inside.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateRequest {
    pub hostname: String,
    pub user: String,
    pub env: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub image: String,
    pub working_dir: String,
    pub labels: Option<BTreeMap<String, String>>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<u32>,
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    pub host_config: HostConfig,
    pub networking_config: Option<NetworkingConfig>,
}

/// `NetworkingConfig`: the endpoint settings of each network joined.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkingConfig {
    pub endpoints_config: Option<BTreeMap<String, super::networks::EndpointSettings>>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    pub auto_remove: bool,
    pub binds: Option<Vec<String>>,
    pub mounts: Option<Vec<serde_json::Value>>,
    /// `--tmpfs PATH[:opts]`.
    pub tmpfs: Option<BTreeMap<String, String>>,
    pub port_bindings: Option<BTreeMap<String, serde_json::Value>>,
    pub publish_all_ports: bool,
    pub network_mode: String,
    /// Bytes.
    pub memory: i64,
    pub nano_cpus: i64,
    /// The client's terminal, `[rows, cols]`, for a task with one.
    pub console_size: Option<[u32; 2]>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct CreateResponse {
    pub id: String,
    pub warnings: Vec<String>,
}

/// `POST /containers/{id}/wait`'s body.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct WaitResponse {
    pub status_code: i64,
    pub error: Option<WaitError>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct WaitError {
    pub message: String,
}

/// The `{"message": ...}` of every error.
#[derive(Serialize, Debug)]
pub struct ErrorResponse {
    pub message: String,
}

/// The labels a docker client set (the personality's own left out).
fn user_labels(c: &Container) -> BTreeMap<String, String> {
    c.labels
        .iter()
        .filter(|(k, _)| !k.starts_with(LABEL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Docker's state word for a container.
pub fn state_word(c: &Container) -> &'static str {
    c.state.as_str()
}

fn command_line(c: &Container) -> String {
    c.tasks
        .get(&c.id)
        .map(|t| t.task.args.join(" "))
        .unwrap_or_default()
}

/// An entry of `GET /containers/json`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    #[serde(rename = "ImageID")]
    pub image_id: String,
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    pub state: String,
    pub status: String,
    pub ports: Vec<serde_json::Value>,
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<serde_json::Value>,
}

impl ContainerSummary {
    pub fn new(c: &Container, now_ms: i64) -> Self {
        Self {
            id: c.id.clone(),
            names: vec![format!("/{}", c.name)],
            image: c.image.clone(),
            image_id: c.image_id.clone(),
            command: command_line(c),
            created: c.created_at / 1000,
            state: state_word(c).into(),
            status: crate::cli::containers::status(c, now_ms),
            ports: super::ports::summary_ports(c),
            labels: user_labels(c),
            mounts: vec![],
        }
    }
}

/// Unix ms as docker's time stamps; docker's zero time for 0.
pub fn time(ms: i64) -> String {
    if ms <= 0 {
        "0001-01-01T00:00:00Z".into()
    } else {
        format_rfc3339_nanos(ms.saturating_mul(1_000_000))
    }
}

/// `GET /containers/{id}/json`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerInspect {
    pub id: String,
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub state: ContainerState,
    pub image: String,
    pub name: String,
    pub restart_count: u32,
    pub driver: String,
    pub platform: String,
    pub config: ContainerConfig,
    pub host_config: HostConfigOut,
    pub mounts: Vec<serde_json::Value>,
    pub network_settings: NetworkSettings,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerState {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: u32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    pub hostname: String,
    pub user: String,
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub image: String,
    pub working_dir: String,
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub tty: bool,
    pub open_stdin: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    /// The anonymous volume paths asked for (`-v /path`).
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfigOut {
    pub auto_remove: bool,
    pub network_mode: String,
    /// Bytes.
    pub memory: i64,
    pub nano_cpus: i64,
    /// `-v NAME:/path[:ro]` as asked.
    pub binds: Option<Vec<String>>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkSettings {
    pub networks: BTreeMap<String, serde_json::Value>,
}

impl ContainerInspect {
    pub fn new(c: &Container) -> Self {
        let primary = c
            .tasks
            .get(&c.id)
            .map(|t| t.task.clone())
            .unwrap_or_default();
        let (path, args) = match primary.args.split_first() {
            Some((p, rest)) => (p.clone(), rest.to_vec()),
            None => (String::new(), vec![]),
        };
        Self {
            id: c.id.clone(),
            created: time(c.created_at),
            path,
            args,
            state: ContainerState {
                status: state_word(c).into(),
                running: matches!(c.state, PowerState::Running | PowerState::Paused),
                paused: c.state == PowerState::Paused,
                restarting: false,
                oom_killed: false,
                dead: false,
                pid: 0,
                exit_code: c.exit_code.unwrap_or(0),
                error: c.error.clone(),
                started_at: time(c.started_at),
                finished_at: time(c.finished_at),
            },
            image: c.image_id.clone(),
            name: format!("/{}", c.name),
            restart_count: 0,
            driver: "appliance".into(),
            platform: "linux".into(),
            config: ContainerConfig {
                hostname: c.hostname.clone(),
                user: primary.user.clone(),
                env: primary.env.clone(),
                cmd: primary.args.clone(),
                image: c.image.clone(),
                working_dir: primary.working_dir.clone(),
                entrypoint: None,
                labels: user_labels(c),
                tty: primary.tty,
                open_stdin: primary.open_stdin,
                attach_stdin: primary.open_stdin,
                attach_stdout: true,
                attach_stderr: true,
                volumes: None,
            },
            host_config: HostConfigOut {
                auto_remove: c.labels.contains_key(AUTO_REMOVE),
                network_mode: "none".into(),
                memory: i64::from(c.memory_mib) << 20,
                nano_cpus: i64::from(c.cpus) * 1_000_000_000,
                binds: None,
            },
            mounts: vec![],
            network_settings: NetworkSettings::default(),
        }
    }
}

/// An entry of `GET /images/json`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: String,
    pub parent_id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Unix seconds.
    pub created: i64,
    pub size: u64,
    pub shared_size: i64,
    pub labels: BTreeMap<String, String>,
    pub containers: i64,
}

/// An image name as docker shows it: `docker.io/library/busybox:latest`
/// is `busybox:latest`.
pub fn short_name(name: &str) -> String {
    let n = name.strip_prefix("docker.io/").unwrap_or(name);
    n.strip_prefix("library/").unwrap_or(n).to_string()
}

impl ImageSummary {
    pub fn new(i: &Image) -> Self {
        Self {
            id: i.id.clone(),
            parent_id: String::new(),
            repo_tags: i.names.iter().map(|n| short_name(n)).collect(),
            repo_digests: i.repo_digests.clone(),
            created: i.created_at / 1000,
            size: i.content_size,
            shared_size: -1,
            labels: i.config.labels.clone(),
            containers: i64::try_from(i.used_by.len()).unwrap_or(-1),
        }
    }
}

/// `GET /images/{name}/json`.
#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ImageInspect {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: String,
    pub size: u64,
    pub os: String,
    pub architecture: String,
    pub config: ImageConfigOut,
    #[serde(rename = "RootFS")]
    pub root_fs: RootFs,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfigOut {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    #[serde(rename = "Type")]
    pub kind: String,
    pub layers: Vec<String>,
}

impl ImageInspect {
    pub fn new(i: &Image) -> Self {
        let c = &i.config;
        Self {
            id: i.id.clone(),
            repo_tags: i.names.iter().map(|n| short_name(n)).collect(),
            repo_digests: i.repo_digests.clone(),
            created: time(i.created_at),
            size: i.content_size,
            os: if c.os.is_empty() {
                "linux".into()
            } else {
                c.os.clone()
            },
            architecture: if c.architecture.is_empty() {
                "amd64".into()
            } else {
                c.architecture.clone()
            },
            config: ImageConfigOut {
                env: c.env.clone(),
                cmd: c.cmd.clone(),
                entrypoint: c.entrypoint.clone(),
                working_dir: c.working_dir.clone(),
                user: c.user.clone(),
                labels: c.labels.clone(),
                stop_signal: c.stop_signal.clone(),
            },
            root_fs: RootFs {
                kind: "layers".into(),
                layers: i.layers.iter().map(|l| l.digest.clone()).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_create_body_parses() {
        let body = r#"{"Hostname":"h","User":"1:1","Env":["A=1"],"Cmd":["echo","hi"],
            "Image":"busybox","WorkingDir":"/tmp","Entrypoint":null,"Labels":{"a":"b"},
            "Tty":false,"OpenStdin":true,"Volumes":{},
            "HostConfig":{"AutoRemove":true,"Binds":null,"NetworkMode":"default","PortBindings":{}}}"#;
        let r: CreateRequest = serde_json::from_str(body).expect("parses");
        assert_eq!(
            r.cmd.as_deref(),
            Some(&["echo".to_string(), "hi".into()][..])
        );
        assert!(r.host_config.auto_remove && r.open_stdin);
    }

    #[test]
    fn statuses_read_like_dockers() {
        let mut c = Container {
            state: PowerState::Exited,
            exit_code: Some(3),
            finished_at: 1_000,
            ..Container::default()
        };
        assert_eq!(
            crate::cli::containers::status(&c, 6_000),
            "Exited (3) 5 seconds ago"
        );
        c.state = PowerState::Running;
        c.started_at = 0;
        assert_eq!(
            crate::cli::containers::status(&c, 90_000),
            "Up About a minute"
        );
        c.state = PowerState::Created;
        assert_eq!(crate::cli::containers::status(&c, 0), "Created");
        assert_eq!(
            short_name("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(short_name("reg:5000/a/b:1"), "reg:5000/a/b:1");
    }

    #[test]
    fn inspect_hides_the_personalitys_labels() {
        let c = Container {
            id: "abc".into(),
            name: "x".into(),
            labels: BTreeMap::from([
                (AUTO_REMOVE.to_string(), "true".to_string()),
                ("app".into(), "web".into()),
            ]),
            ..Container::default()
        };
        let i = serde_json::to_value(ContainerInspect::new(&c)).expect("json");
        assert_eq!(i["Name"], "/x");
        assert_eq!(i["HostConfig"]["AutoRemove"], true);
        assert_eq!(i["Config"]["Labels"], serde_json::json!({"app": "web"}));
        assert_eq!(i["State"]["FinishedAt"], "0001-01-01T00:00:00Z");
    }
}
