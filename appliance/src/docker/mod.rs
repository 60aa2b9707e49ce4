//! The Docker Engine API personality: the docker CLI and SDKs drive
//! container VMs through it (`appliance serve --docker-socket PATH`).
//!
//! Owns the Docker routes (with and without the `/vX.YY` prefix), the
//! mapping of each Docker call to port layer REST calls, and Docker's error
//! shape (`{"message": ...}`). It talks to the port layer only through its
//! REST API (`client`), never to the port layer's internals, so that it
//! could run as a process of its own: whatever Docker needs that the port
//! layer lacks belongs in the port layer's API. Its own settings
//! (`--rm`) live in container labels under `types::LABEL_PREFIX`, so it
//! keeps no state.
//!
//! Files: `types` (the wire types), `containers` (the container verbs),
//! `attach` (the hijacked attach stream and the output streams it shares
//! with `logs`), `exec`, `images`, `volumes` (volumes, `-v`/`--mount`),
//! `archive` (`docker cp`), `networks` (networks, and the network options
//! of create and inspect), `ports` (published and exposed ports), and here
//! the server, the routing and `system`.

mod archive;
mod attach;
mod containers;
mod exec;
mod images;
mod networks;
mod ports;
mod types;
mod volumes;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::client::{Client, ClientError};
use types::ErrorResponse;

/// The API version served (declared in `/_ping` and `/version`); clients
/// negotiate down to it.
pub const API_VERSION: &str = "1.45";
/// The oldest version a client may speak.
pub const MIN_API_VERSION: &str = "1.24";

/// What every request shares: the port layer client and the live attach
/// sessions.
pub struct Docker {
    client: Client,
    attachments: attach::Attachments,
    /// The network of a container created without `--network`: `bridge`
    /// (the port layer's default scope, as Docker's) or `none`.
    default_network: String,
}

/// Serves the personality on a unix socket at `socket` (mode 0600), as a
/// client of the port layer at `portlayer` (its REST socket), until `stop`
/// completes.
pub async fn serve_until(
    socket: &Path,
    portlayer: PathBuf,
    default_network: String,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let docker = Arc::new(Docker {
        client: Client::new(portlayer),
        attachments: attach::Attachments::default(),
        default_network,
    });
    // `--rm` containers started before this process came up.
    tokio::spawn(containers::resume_auto_removes(docker.clone()));
    let router = Router::new().fallback(dispatch).with_state(docker);
    appliance::api::serve_unix_until(router, socket, stop).await
}

/// A failed Docker call, as the docker CLI expects it: a status and a
/// message (`Error response from daemon: <message>`).
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("No such image: {0}")]
    NoSuchImage(String),
    #[error("{message}")]
    Status { status: StatusCode, message: String },
    /// The port layer refused or failed: its status and message.
    #[error("{0}")]
    PortLayer(#[from] ClientError),
}

impl DockerError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self::Status {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::Status {
            status: StatusCode::CONFLICT,
            message: message.into(),
        }
    }

    /// A port layer error on container `id`: its 404 is Docker's "No such
    /// container".
    fn on_container(e: ClientError, id: &str) -> Self {
        match &e {
            ClientError::Api(a) if a.status == 404 => Self::NoSuchContainer(id.to_string()),
            _ => Self::PortLayer(e),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::NoSuchContainer(_) | Self::NoSuchImage(_) => StatusCode::NOT_FOUND,
            Self::Status { status, .. } => *status,
            Self::PortLayer(ClientError::Api(a)) => {
                StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            Self::PortLayer(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::PortLayer(ClientError::Api(a)) => a.message.clone(),
            Self::PortLayer(e) => {
                // The whole chain: the cause is the useful part.
                let mut m = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    m.push_str(&format!(": {s}"));
                    source = s.source();
                }
                m
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!("docker: {}", self.message());
        }
        (
            status,
            axum::Json(ErrorResponse {
                message: self.message(),
            }),
        )
            .into_response()
    }
}

type Reply = Result<Response, DockerError>;

/// A JSON answer with `status`.
fn json(status: StatusCode, body: &impl Serialize) -> Reply {
    Ok((status, axum::Json(body)).into_response())
}

fn empty(status: StatusCode) -> Reply {
    Ok(status.into_response())
}

/// A request's query, as Docker's flags read it.
#[derive(Debug, Default)]
struct Query(HashMap<String, String>);

impl Query {
    fn parse(uri: &axum::http::Uri) -> Result<Self, DockerError> {
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
            .map(|q| Self(q.0))
            .map_err(|e| DockerError::bad_request(format!("Invalid query: {e}")))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// `1`, `true` (any case) are true; absent, `0`, `false` are false.
    fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    }
}

/// The path without its `/vX.YY` prefix, if it has one.
fn unversioned(path: &str) -> &str {
    let Some(rest) = path.strip_prefix("/v") else {
        return path;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let (version, tail) = rest.split_at(end);
    let is_version = version.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    if is_version { tail } else { path }
}

async fn dispatch(State(d): State<Arc<Docker>>, req: Request) -> Response {
    let path = unversioned(req.uri().path()).to_string();
    let mut r = match Query::parse(req.uri()) {
        Ok(q) => route(&d, &path, q, req).await,
        Err(e) => Err(e),
    }
    .unwrap_or_else(IntoResponse::into_response);
    let h = r.headers_mut();
    h.insert("api-version", HeaderValue::from_static(API_VERSION));
    h.insert("docker-experimental", HeaderValue::from_static("false"));
    h.insert("ostype", HeaderValue::from_static("linux"));
    h.insert(
        header::SERVER,
        HeaderValue::from_static(concat!("appliance/", env!("CARGO_PKG_VERSION"))),
    );
    r
}

/// The body of a request, whole (create bodies are small).
async fn body(req: Request) -> Result<axum::body::Bytes, DockerError> {
    axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|e| DockerError::bad_request(format!("Reading the request body: {e}")))
}

async fn route(d: &Arc<Docker>, path: &str, q: Query, req: Request) -> Reply {
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET | &Method::HEAD, ["_ping"]) => ping(&method),
        (&Method::GET, ["version"]) => json(StatusCode::OK, &version()),
        (&Method::GET, ["info"]) => info(d).await,
        (&Method::POST, ["containers", "create"]) => {
            containers::create(d, &q, &body(req).await?).await
        }
        (&Method::GET, ["containers", "json"]) => containers::list(d, &q).await,
        (&Method::GET, ["containers", id, "json"]) => containers::inspect(d, id).await,
        (&Method::POST, ["containers", id, "start"]) => containers::start(d, id).await,
        (&Method::POST, ["containers", id, "stop"]) => containers::stop(d, id, &q).await,
        (&Method::POST, ["containers", id, "restart"]) => containers::restart(d, id, &q).await,
        (&Method::POST, ["containers", id, "pause"]) => containers::pause(d, id).await,
        (&Method::POST, ["containers", id, "unpause"]) => containers::unpause(d, id).await,
        (&Method::POST, ["containers", id, "rename"]) => containers::rename(d, id, &q).await,
        (&Method::POST, ["containers", id, "kill"]) => containers::kill(d, id, &q).await,
        (&Method::POST, ["containers", id, "wait"]) => containers::wait(d, id, &q).await,
        (&Method::DELETE, ["containers", id]) => containers::remove(d, id, &q).await,
        (&Method::GET, ["containers", id, "logs"]) => attach::logs(d, id, &q).await,
        (&Method::POST, ["containers", id, "attach"]) => {
            attach::attach(d.clone(), id, &q, req).await
        }
        (&Method::POST, ["containers", id, "resize"]) => attach::resize(d, id, &q).await,
        (&Method::POST, ["containers", id, "exec"]) => exec::create(d, id, &body(req).await?).await,
        (&Method::POST, ["exec", id, "start"]) => exec::start(d.clone(), id, req).await,
        (&Method::GET, ["exec", id, "json"]) => exec::inspect(d, id).await,
        (&Method::POST, ["exec", id, "resize"]) => exec::resize(d, id, &q).await,
        (&Method::GET | &Method::HEAD, ["containers", id, "archive"]) => {
            archive::get(d, id, &q, &method).await
        }
        (&Method::PUT, ["containers", id, "archive"]) => archive::put(d, id, &q, req).await,
        (&Method::POST, ["volumes", "create"]) => volumes::create(d, &body(req).await?).await,
        (&Method::GET, ["volumes"]) => volumes::list(d, &q).await,
        (&Method::POST, ["volumes", "prune"]) => volumes::prune(d, &q).await,
        (&Method::GET, ["volumes", name]) => volumes::inspect(d, name).await,
        (&Method::DELETE, ["volumes", name]) => volumes::remove(d, name, &q).await,
        (&Method::GET, ["networks"]) => networks::list(d, &q).await,
        (&Method::POST, ["networks", "create"]) => networks::create(d, &body(req).await?).await,
        (&Method::POST, ["networks", "prune"]) => networks::prune(d, &q).await,
        (&Method::GET, ["networks", id]) => networks::inspect(d, id).await,
        (&Method::DELETE, ["networks", id]) => networks::remove(d, id).await,
        (&Method::POST, ["networks", id, "connect"]) => {
            networks::connect(d, id, &body(req).await?).await
        }
        (&Method::POST, ["networks", id, "disconnect"]) => {
            networks::disconnect(d, id, &body(req).await?).await
        }
        (&Method::GET, ["images", "json"]) => images::list(d, &q).await,
        (&Method::POST, ["images", "create"]) => images::create(d, &q).await,
        (&Method::POST, ["images", "load"]) => images::load(d, req).await,
        (&Method::GET, ["images", "get"]) => images::save(d, images::save_names(req.uri())?).await,
        (&Method::GET, ["images", name @ .., "get"]) if !name.is_empty() => {
            images::save(d, vec![name.join("/")]).await
        }
        (&Method::GET, ["images", name @ .., "history"]) if !name.is_empty() => {
            images::history(d, &name.join("/")).await
        }
        (&Method::POST, ["images", name @ .., "tag"]) if !name.is_empty() => {
            images::tag(d, &name.join("/"), &q).await
        }
        (&Method::DELETE, ["images", name @ ..]) if !name.is_empty() => {
            images::remove(d, &name.join("/"), &q).await
        }
        (&Method::GET, ["images", name @ .., "json"]) if !name.is_empty() => {
            images::inspect(d, &name.join("/")).await
        }
        _ => Err(DockerError::Status {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "{method} {path} is not supported by this appliance's Docker API (yet)"
            ),
        }),
    }
}

/// `/_ping`: `OK`, and the API version in the headers (added to every
/// answer by `dispatch`).
fn ping(method: &Method) -> Reply {
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from("OK")
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")
        .header(header::PRAGMA, "no-cache")
        .body(body)
        .map_err(|e| DockerError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        })
}

/// Docker's name for this machine's architecture.
fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn kernel_version() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn version() -> serde_json::Value {
    let v = env!("CARGO_PKG_VERSION");
    serde_json::json!({
        "Platform": { "Name": "appliance (containers as VMs)" },
        "Components": [{
            "Name": "Engine",
            "Version": v,
            "Details": {
                "ApiVersion": API_VERSION,
                "MinAPIVersion": MIN_API_VERSION,
                "Os": "linux",
                "Arch": arch(),
            },
        }],
        "Version": v,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": arch(),
        "KernelVersion": kernel_version(),
        "BuildTime": "",
    })
}

/// `/info`: counts from the port layer, and what the CLI prints.
async fn info(d: &Docker) -> Reply {
    use appliance::portlayer::model::{Container, PowerState};
    let all: Vec<Container> = d.client.get("/exec/containers").await?;
    let images: Vec<serde_json::Value> = d.client.get("/storage/images").await?;
    let count = |s: PowerState| all.iter().filter(|c| c.state == s).count();
    let name = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "ID": "",
            "Containers": all.len(),
            "ContainersRunning": count(PowerState::Running),
            "ContainersPaused": count(PowerState::Paused),
            "ContainersStopped": count(PowerState::Exited) + count(PowerState::Created),
            "Images": images.len(),
            "Driver": "appliance",
            "DriverStatus": [],
            "Plugins": { "Volume": [], "Network": [], "Log": [] },
            "MemoryLimit": true,
            "SwapLimit": false,
            "OperatingSystem": "appliance (containers as VMs)",
            "OSType": "linux",
            "Architecture": std::env::consts::ARCH,
            "NCPU": std::thread::available_parallelism().map_or(1, usize::from),
            "KernelVersion": kernel_version(),
            "Name": name,
            "ServerVersion": env!("CARGO_PKG_VERSION"),
            "Labels": [],
            "SecurityOptions": [],
            "Runtimes": {},
            "Swarm": { "LocalNodeState": "inactive" },
            "Warnings": [],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prefixes_are_stripped() {
        assert_eq!(unversioned("/v1.50/containers/json"), "/containers/json");
        assert_eq!(unversioned("/v1.24/_ping"), "/_ping");
        assert_eq!(unversioned("/_ping"), "/_ping");
        assert_eq!(unversioned("/volumes"), "/volumes");
        assert_eq!(unversioned("/v1/x"), "/v1/x");
    }

    #[test]
    fn flags_read_like_dockers() {
        let q = Query::parse(&"/x?all=1&stdin=true&tty=0&f=false".parse().expect("uri"))
            .expect("query");
        assert!(q.flag("all") && q.flag("stdin"));
        assert!(!q.flag("tty") && !q.flag("f") && !q.flag("absent"));
    }

    #[test]
    fn errors_are_dockers_json() {
        let e = DockerError::NoSuchContainer("x".into());
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
        assert_eq!(e.message(), "No such container: x");
        let api = crate::client::ApiError::from_body(
            409,
            br#"{"code":"CONFLICT","message":"Name x is in use","element":"x"}"#,
        );
        let e = DockerError::PortLayer(api.into());
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.message(), "Name x is in use");
    }
}
