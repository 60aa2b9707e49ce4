//! The container verbs: create, start, stop, kill, wait, remove, list and
//! inspect, each as port layer REST calls (create → commit, get handle →
//! state → commit, wait, signal, delete, list, inspect).
//!
//! Owns `--rm` (`AutoRemove`): the port layer has no such setting, so the
//! personality marks the container with a label and removes it once it has
//! exited and its attach sessions have ended (so that they see all of its
//! output).

use std::sync::Arc;
use std::time::Duration;

use appliance::portlayer::exec::CreateSpec;
use appliance::portlayer::model::{CommitResult, Container, PowerState, TargetState, Task};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;

use super::types::{
    AUTO_REMOVE, ContainerInspect, ContainerSummary, CreateRequest, CreateResponse, WaitError,
    WaitResponse,
};
use super::{Docker, DockerError, Query, Reply, empty, json};
use crate::client::{BodyStream, ClientError, encode, with_query};

/// How often a short-lived refusal is retried (the port layer's attach of
/// a task that is being started).
pub const POLL: Duration = Duration::from_millis(100);
/// A container's state is read again on each of its events, and at least
/// this often (should an event be missed, or the stream fail).
const WATCH_FALLBACK: Duration = Duration::from_secs(1);
/// How long `--rm` waits for attach sessions to deliver the output before
/// removing the container regardless.
const DRAIN_WAIT: Duration = Duration::from_secs(30);
/// How long a container whose task has exited may take to power off
/// before a wait answers regardless.
const SETTLE_WAIT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
struct Created {
    id: String,
    handle: String,
}

#[derive(Deserialize)]
struct HandleBody {
    handle: String,
}

fn container_path(id: &str) -> String {
    format!("/exec/containers/{}", encode(id))
}

/// The container, or Docker's "No such container".
pub async fn get(d: &Docker, id: &str) -> Result<Container, DockerError> {
    d.client
        .get(&container_path(id))
        .await
        .map_err(|e| DockerError::on_container(e, id))
}

/// Commits a handle; an ERROR element fails the call with its detail.
pub async fn commit(d: &Docker, handle: String) -> Result<CommitResult, DockerError> {
    let r: CommitResult = d
        .client
        .post("/exec/commit", &json!({ "handle": handle }))
        .await?;
    let errors: Vec<String> = r
        .results
        .iter()
        .filter(|(_, e)| e.status == appliance::portlayer::model::Status::Error)
        .map(|(element, e)| format!("{element}: {}", e.detail))
        .collect();
    if errors.is_empty() {
        Ok(r)
    } else {
        Err(DockerError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: errors.join("; "),
        })
    }
}

/// Get handle → state → commit.
async fn change_state(d: &Docker, id: &str, target: TargetState) -> Result<(), DockerError> {
    change_state_with(d, id, json!({ "target": target })).await
}

/// Get handle → state (`request`: the state request without its handle) →
/// commit.
async fn change_state_with(
    d: &Docker,
    id: &str,
    mut request: serde_json::Value,
) -> Result<(), DockerError> {
    let h: HandleBody = d
        .client
        .get(&format!("{}/handle", container_path(id)))
        .await
        .map_err(|e| DockerError::on_container(e, id))?;
    request["handle"] = h.handle.into();
    let h: HandleBody = d.client.post("/exec/handles/state", &request).await?;
    commit(d, h.handle).await.map(drop)
}

/// `POST /containers/create?name=`.
pub async fn create(d: &Docker, q: &Query, body: &Bytes) -> Reply {
    let r: CreateRequest = serde_json::from_slice(body)
        .map_err(|e| DockerError::bad_request(format!("Invalid container config: {e}")))?;
    if r.image.is_empty() {
        return Err(DockerError::bad_request(
            "No image given: a container is made from an image",
        ));
    }
    let name = q.get("name").unwrap_or_default().trim_start_matches('/');
    let stop_signal = match &r.stop_signal {
        Some(s) if !s.is_empty() => {
            crate::cli::signals::parse(s).map_err(|e| DockerError::bad_request(e.to_string()))?
        }
        _ => 0,
    };
    let network = super::networks::plan(d, &r).await?;
    let mut labels = r.labels.clone().unwrap_or_default();
    labels.extend([super::networks::mode_label(&network)]);
    if r.host_config.auto_remove {
        labels.insert(AUTO_REMOVE.into(), "true".into());
    }
    let (mounts, anonymous) = super::volumes::mounts_for_create(d, &r, &mut labels).await?;
    let spec = CreateSpec {
        name: name.to_string(),
        image: r.image.clone(),
        hostname: r.hostname.clone(),
        memory_mib: u32::try_from(r.host_config.memory.max(0) >> 20).unwrap_or(u32::MAX),
        cpus: u32::try_from((r.host_config.nano_cpus.max(0) + 999_999_999) / 1_000_000_000)
            .unwrap_or(u32::MAX),
        stop_signal,
        stop_timeout_seconds: r.stop_timeout.unwrap_or(0),
        labels,
        policies: vec![],
        task: Task {
            id: String::new(),
            args: r.cmd.clone().unwrap_or_default(),
            env: r.env.clone().unwrap_or_default(),
            working_dir: r.working_dir.clone(),
            user: r.user.clone(),
            tty: r.tty,
            tty_size: match r.host_config.console_size {
                Some([rows, cols]) if r.tty && rows > 0 && cols > 0 => {
                    Some(appliance::portlayer::model::TtySize { rows, cols })
                }
                _ => None,
            },
            open_stdin: r.open_stdin,
        },
        entrypoint: r.entrypoint.clone(),
        mounts,
    };
    let created = create_and_commit(d, &spec, network, &r.image, name).await;
    if created.is_err() {
        super::volumes::remove_volumes(d, &anonymous).await;
    }
    json(StatusCode::CREATED, &created?)
}

/// Creates the container and commits it; Docker's words for a missing
/// image and a name that is taken.
async fn create_and_commit(
    d: &Docker,
    spec: &CreateSpec,
    network: super::networks::Plan,
    image: &str,
    name: &str,
) -> Result<CreateResponse, DockerError> {
    let r_image = image;
    let created: Created = match d.client.post("/exec/containers", spec).await {
        Ok(c) => c,
        Err(ClientError::Api(a)) if a.status == 404 => {
            return Err(DockerError::NoSuchImage(r_image.to_string()));
        }
        Err(ClientError::Api(a)) if a.status == 409 => return Err(name_conflict(d, name).await),
        Err(e) => return Err(e.into()),
    };
    let handle = super::networks::apply(d, created.handle, network).await?;
    match commit(d, handle).await {
        Ok(_) => {}
        Err(DockerError::PortLayer(ClientError::Api(a))) if a.status == 409 => {
            return Err(match super::ports::port_taken(&a) {
                Some(e) => e,
                None => name_conflict(d, name).await,
            });
        }
        Err(e) => return Err(e),
    }
    Ok(CreateResponse {
        id: created.id,
        warnings: vec![],
    })
}

/// Docker's words for a name that is taken.
async fn name_conflict(d: &Docker, name: &str) -> DockerError {
    let holder = get(d, name).await.map(|c| c.id).unwrap_or_default();
    DockerError::conflict(format!(
        "Conflict. The container name \"/{name}\" is already in use by container \"{holder}\". \
         You have to remove (or rename) that container to be able to reuse that name."
    ))
}

/// `POST /containers/{id}/start`: 304 if it runs already.
pub async fn start(d: &Arc<Docker>, id: &str) -> Reply {
    let c = get(d, id).await?;
    if matches!(c.state, PowerState::Running | PowerState::Paused) {
        return empty(StatusCode::NOT_MODIFIED);
    }
    change_state(d, &c.id, TargetState::Running).await?;
    if c.labels.contains_key(AUTO_REMOVE) {
        tokio::spawn(auto_remove(d.clone(), c.id.clone()));
    }
    empty(StatusCode::NO_CONTENT)
}

/// Takes on the `--rm` of containers a previous personality started: those
/// that run are removed once they exit, those that exited meanwhile now.
/// (The port layer's socket comes up alongside: the list is retried a
/// few times.)
pub async fn resume_auto_removes(d: Arc<Docker>) {
    let path = with_query(
        "/exec/containers",
        &[("filter", format!("label.{AUTO_REMOVE}"))],
    );
    let mut listed = None;
    for _ in 0..50 {
        match d.client.get::<Vec<Container>>(&path).await {
            Ok(all) => {
                listed = Some(all);
                break;
            }
            Err(e) => {
                tracing::debug!("docker: listing --rm containers: {e}");
                tokio::time::sleep(POLL).await;
            }
        }
    }
    let Some(all) = listed else {
        tracing::warn!("docker: could not list the --rm containers to remove once they exit");
        return;
    };
    for c in all.into_iter().filter(|c| c.state != PowerState::Created) {
        tokio::spawn(auto_remove(d.clone(), c.id));
    }
}

/// `--rm`: once the container has exited and its attach sessions have
/// delivered its output, remove it.
async fn auto_remove(d: Arc<Docker>, id: String) {
    if let Err(e) = exit_code(&d, &id).await {
        tracing::debug!("docker: waiting for {id} to remove it: {e}");
    }
    d.attachments.drained(&id, DRAIN_WAIT).await;
    let path = format!("{}?force=true", container_path(&id));
    // Docker's --rm takes the anonymous volumes along.
    let before = get(&d, &id).await.ok();
    match d.client.delete::<()>(&path).await {
        Ok(()) => {
            if let Some(c) = before {
                super::volumes::remove_anonymous(&d, &c).await;
            }
        }
        Err(ClientError::Api(a)) if a.status == 404 => {}
        Err(e) => tracing::warn!("docker: removing {id} (--rm): {e}"),
    }
}

/// A stop's own grace period and signal, from `t` and `signal` (`docker
/// stop -t N -s SIG`): seconds (`-1`: wait as long as the port layer lets
/// a stop wait), and a signal name or number.
fn stop_options(q: &Query) -> Result<(Option<u32>, Option<i32>), DockerError> {
    let timeout = match q.get("t") {
        None => None,
        Some(t) => match t.parse::<i64>() {
            Ok(-1) => Some(appliance::portlayer::validate::MAX_STOP_TIMEOUT_SECONDS),
            Ok(n) if n >= 0 => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => {
                return Err(DockerError::bad_request(format!(
                    "Invalid stop timeout {t:?}: seconds, or -1 to wait without a limit"
                )));
            }
        },
    };
    let signal = match q.get("signal") {
        None => None,
        Some(s) => Some(
            crate::cli::signals::parse(s).map_err(|e| DockerError::bad_request(e.to_string()))?,
        ),
    };
    Ok((timeout, signal))
}

/// `POST /containers/{id}/stop?t=&signal=`: 304 if it is not running.
pub async fn stop(d: &Docker, id: &str, q: &Query) -> Reply {
    let (timeout, signal) = stop_options(q)?;
    let c = get(d, id).await?;
    if !matches!(c.state, PowerState::Running | PowerState::Paused) {
        return empty(StatusCode::NOT_MODIFIED);
    }
    let mut request = json!({ "target": TargetState::Stopped });
    if let Some(t) = timeout {
        request["stop_timeout_seconds"] = t.into();
    }
    if let Some(s) = signal {
        request["stop_signal"] = s.into();
    }
    change_state_with(d, &c.id, request).await?;
    // Docker answers once it has stopped: the commit may return before.
    let grace = timeout.unwrap_or(c.stop_timeout_seconds);
    let bound = Duration::from_secs(u64::from(grace.max(10)) + 30);
    if tokio::time::timeout(bound, exit_code(d, &c.id))
        .await
        .is_err()
    {
        return Err(DockerError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("Container {} did not stop within {bound:?}", c.id),
        });
    }
    empty(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/restart`: stop (if running), then start.
pub async fn restart(d: &Arc<Docker>, id: &str, q: &Query) -> Reply {
    stop_options(q)?;
    let c = get(d, id).await?;
    if matches!(c.state, PowerState::Running | PowerState::Paused) {
        stop(d, &c.id, q).await?;
    }
    start(d, &c.id).await?;
    empty(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/pause`.
pub async fn pause(d: &Docker, id: &str) -> Reply {
    let c = get(d, id).await?;
    match c.state {
        PowerState::Running => {}
        PowerState::Paused => {
            return Err(DockerError::conflict(format!(
                "Container {} is already paused",
                c.id
            )));
        }
        _ => {
            return Err(DockerError::conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
    }
    change_state(d, &c.id, TargetState::Paused).await?;
    empty(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/unpause`.
pub async fn unpause(d: &Docker, id: &str) -> Reply {
    let c = get(d, id).await?;
    if c.state != PowerState::Paused {
        return Err(DockerError::conflict(format!(
            "Container {} is not paused",
            c.id
        )));
    }
    change_state(d, &c.id, TargetState::Running).await?;
    empty(StatusCode::NO_CONTENT)
}

/// `POST /containers/{id}/rename?name=`: get handle → rename → commit.
pub async fn rename(d: &Docker, id: &str, q: &Query) -> Reply {
    let name = q
        .get("name")
        .map(|n| n.trim_start_matches('/'))
        .filter(|n| !n.is_empty())
        .ok_or_else(|| DockerError::bad_request("A new name is needed (name=...)"))?;
    let c = get(d, id).await?;
    let h: HandleBody = d
        .client
        .get(&format!("{}/handle", container_path(&c.id)))
        .await
        .map_err(|e| DockerError::on_container(e, id))?;
    let renamed = d
        .client
        .post::<HandleBody>(
            "/exec/handles/rename",
            &json!({ "handle": h.handle, "name": name }),
        )
        .await;
    let h = match renamed {
        Ok(h) => h,
        Err(ClientError::Api(a)) if a.status == 409 => return Err(name_conflict(d, name).await),
        Err(e) => return Err(e.into()),
    };
    match commit(d, h.handle).await {
        Ok(_) => empty(StatusCode::NO_CONTENT),
        Err(DockerError::PortLayer(ClientError::Api(a))) if a.status == 409 => {
            Err(name_conflict(d, name).await)
        }
        Err(e) => Err(e),
    }
}

/// `POST /containers/{id}/kill?signal=`: KILL by default.
pub async fn kill(d: &Docker, id: &str, q: &Query) -> Reply {
    let signal = crate::cli::signals::parse(q.get("signal").unwrap_or("KILL"))
        .map_err(|e| DockerError::bad_request(e.to_string()))?;
    let c = get(d, id).await?;
    if c.state != PowerState::Running {
        return Err(DockerError::conflict(format!(
            "Cannot kill container: {id}: container {} is not running",
            c.id
        )));
    }
    d.client
        .post::<()>(
            &format!("{}/signal", container_path(&c.id)),
            &json!({ "signal": signal }),
        )
        .await
        .map_err(|e| DockerError::on_container(e, id))?;
    empty(StatusCode::NO_CONTENT)
}

/// `DELETE /containers/{id}?force=`.
pub async fn remove(d: &Docker, id: &str, q: &Query) -> Reply {
    let force = q.flag("force");
    let c = get(d, id).await?;
    if !force && matches!(c.state, PowerState::Running | PowerState::Paused) {
        return Err(DockerError::conflict(format!(
            "cannot remove container \"/{}\": container is running: \
             stop the container before removing or force remove",
            c.name
        )));
    }
    let path = with_query(
        &container_path(&c.id),
        &[("force", if force { "true".into() } else { String::new() })],
    );
    d.client
        .delete::<()>(&path)
        .await
        .map_err(|e| DockerError::on_container(e, id))?;
    if q.flag("v") {
        super::volumes::remove_anonymous(d, &c).await;
    }
    empty(StatusCode::NO_CONTENT)
}

/// Docker's `filters` (`{"label":{"a=b":true}}`, or the older
/// `{"label":["a=b"]}`): each key's values.
pub(super) fn docker_filters(json: &str) -> Result<Vec<(String, Vec<String>)>, DockerError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Values {
        Map(std::collections::BTreeMap<String, bool>),
        List(Vec<String>),
    }
    let bad = |e: String| DockerError::bad_request(format!("Invalid filters {json:?}: {e}"));
    let parsed: std::collections::BTreeMap<String, Values> =
        serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    Ok(parsed
        .into_iter()
        .map(|(k, v)| {
            let values = match v {
                Values::Map(m) => m
                    .into_iter()
                    .filter(|(_, on)| *on)
                    .map(|(v, _)| v)
                    .collect(),
                Values::List(l) => l,
            };
            (k, values)
        })
        .collect())
}

/// A filterspec value, quoted.
fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Docker's container filters as a port layer filterspec: `status` (any
/// of), `id` (prefixes, any of), `label` (`key` or `key=value`, all of).
/// Whether a status was given too (then docker lists beyond the running
/// ones without `all`).
fn container_filterspec(json: Option<&str>) -> Result<(String, bool), DockerError> {
    let Some(json) = json else {
        return Ok((String::new(), false));
    };
    let mut terms = Vec::new();
    let mut status = false;
    for (key, values) in docker_filters(json)? {
        if values.is_empty() {
            continue;
        }
        match key.as_str() {
            "status" => {
                status = true;
                let any: Vec<String> = values.iter().map(|v| quoted(v)).collect();
                terms.push(format!("state={}", any.join("|")));
            }
            "id" => {
                let any: Vec<String> = values.iter().map(|v| format!("{}*", quoted(v))).collect();
                terms.push(format!("id={}", any.join("|")));
            }
            "label" => {
                for v in &values {
                    match v.split_once('=') {
                        Some((k, val)) => terms.push(format!("label.{k}={}", quoted(val))),
                        None => terms.push(format!("label.{v}")),
                    }
                }
            }
            other => {
                return Err(DockerError::bad_request(format!(
                    "The {other:?} filter is not supported by this appliance yet \
                     (status, id and label are)"
                )));
            }
        }
    }
    Ok((terms.join(","), status))
}

/// `GET /containers/json?all=&filters=`: running ones unless `all` (or a
/// status filter), newest first. Filters become the port layer's
/// filterspec.
pub async fn list(d: &Docker, q: &Query) -> Reply {
    let (filter, status) = container_filterspec(q.get("filters"))?;
    let mut all: Vec<Container> = d
        .client
        .get(&with_query("/exec/containers", &[("filter", filter)]))
        .await?;
    if !q.flag("all") && !status {
        all.retain(|c| matches!(c.state, PowerState::Running | PowerState::Paused));
    }
    all.sort_by_key(|c| std::cmp::Reverse(c.created_at));
    let now = appliance::store::now_ms();
    let out: Vec<ContainerSummary> = all.iter().map(|c| ContainerSummary::new(c, now)).collect();
    json(StatusCode::OK, &out)
}

/// `GET /containers/{id}/json`.
pub async fn inspect(d: &Docker, id: &str) -> Reply {
    let c = get(d, id).await?;
    let mut out = ContainerInspect::new(&c);
    super::volumes::fill_inspect(d, &c, &mut out).await;
    let mut i = serde_json::to_value(out).map_err(|e| DockerError::Status {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("Inspecting {id}: {e}"),
    })?;
    super::networks::fill_inspect(d, &c, &mut i).await?;
    json(StatusCode::OK, &i)
}

/// Wakes on the port layer's events about a container (`/events`, JSON
/// lines, filtered by element): the personality waits for starts, exits
/// and removals on them instead of polling. Opened before the state is
/// read, so that no change falls in between.
pub struct Watch {
    events: Option<BodyStream>,
}

impl Watch {
    pub async fn open(d: &Docker, id: &str) -> Self {
        let path = with_query(
            "/events",
            &[
                ("filter", format!("element={id}")),
                ("format", "json".into()),
            ],
        );
        let events = match d.client.open_stream(&path).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!("docker: events of {id}: {e}; reading its state every second");
                None
            }
        };
        Self { events }
    }

    /// Returns on the next event (or after [`WATCH_FALLBACK`]).
    pub async fn changed(&mut self) {
        let Some(events) = &mut self.events else {
            tokio::time::sleep(WATCH_FALLBACK).await;
            return;
        };
        match tokio::time::timeout(WATCH_FALLBACK, events.chunk()).await {
            Ok(Ok(Some(_))) | Err(_) => {}
            // The stream ended: read the state every second from now on.
            Ok(Ok(None) | Err(_)) => self.events = None,
        }
    }
}

/// The primary task's exit code once it has exited: a created container
/// is waited for to start first.
async fn exit_code(d: &Docker, id: &str) -> Result<Option<i32>, DockerError> {
    #[derive(Deserialize)]
    struct WaitResult {
        exit_code: Option<i32>,
    }
    let mut watch = Watch::open(d, id).await;
    loop {
        let c = get(d, id).await?;
        match c.state {
            PowerState::Created => watch.changed().await,
            PowerState::Exited => return Ok(c.exit_code),
            PowerState::Running | PowerState::Paused => {
                match d
                    .client
                    .post::<WaitResult>(&format!("{}/wait", container_path(&c.id)), &json!({}))
                    .await
                {
                    Ok(r) => {
                        // Docker's exited is the port layer's once the VM
                        // has flushed and powered off.
                        let settled = async {
                            while get(d, id).await.is_ok_and(|c| {
                                matches!(c.state, PowerState::Running | PowerState::Paused)
                            }) {
                                watch.changed().await;
                            }
                        };
                        let _ = tokio::time::timeout(SETTLE_WAIT, settled).await;
                        return Ok(r.exit_code);
                    }
                    // Between states: look again.
                    Err(ClientError::Api(a)) if a.status == 400 => {
                        watch.changed().await;
                    }
                    Err(e) => return Err(DockerError::on_container(e, id)),
                }
            }
        }
    }
}

/// Waits until the container is gone (after `--rm`).
async fn removed(d: &Docker, id: &str) -> Result<(), DockerError> {
    let mut watch = Watch::open(d, id).await;
    loop {
        match get(d, id).await {
            Err(DockerError::NoSuchContainer(_)) => return Ok(()),
            Err(e) => return Err(e),
            Ok(_) => watch.changed().await,
        }
    }
}

/// What a wait answers: the exit code, or why there is none.
async fn wait_for(d: &Docker, id: &str, condition: &str) -> WaitResponse {
    let outcome = async {
        if condition == "not-running" {
            let c = get(d, id).await?;
            if c.state == PowerState::Created {
                return Ok(Some(0));
            }
        }
        let code = exit_code(d, id).await?;
        if condition == "removed" {
            removed(d, id).await?;
        }
        Ok::<_, DockerError>(code)
    };
    match outcome.await {
        Ok(Some(code)) => WaitResponse {
            status_code: i64::from(code),
            error: None,
        },
        Ok(None) => WaitResponse {
            status_code: -1,
            error: Some(WaitError {
                message: "The container ended without an exit code (its VM died)".into(),
            }),
        },
        Err(e) => WaitResponse {
            status_code: -1,
            error: Some(WaitError {
                message: e.message(),
            }),
        },
    }
}

/// `POST /containers/{id}/wait?condition=`: the status line comes at once
/// (the CLI waits for it before it starts the container), the result when
/// the condition is met.
pub async fn wait(d: &Arc<Docker>, id: &str, q: &Query) -> Reply {
    let condition = q.get("condition").unwrap_or("not-running").to_string();
    if !matches!(condition.as_str(), "not-running" | "next-exit" | "removed") {
        return Err(DockerError::bad_request(format!(
            "Invalid condition {condition:?}: not-running, next-exit or removed"
        )));
    }
    let c = get(d, id).await?;
    let d = d.clone();
    let body = futures::stream::once(async move {
        let r = wait_for(&d, &c.id, &condition).await;
        let mut line = serde_json::to_vec(&r).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    Ok((
        StatusCode::OK,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_filters_become_a_filterspec() {
        assert_eq!(
            container_filterspec(None).expect("none"),
            (String::new(), false)
        );
        let (f, status) = container_filterspec(Some(
            r#"{"status":{"exited":true,"created":true},"label":{"app=web":true,"tier":true}}"#,
        ))
        .expect("filters");
        assert!(status);
        assert_eq!(f, r#"label.app="web",label.tier,state="created"|"exited""#);
        let (f, status) =
            container_filterspec(Some(r#"{"id":["ab"],"label":["a=\"q\""]}"#)).expect("list form");
        assert!(!status);
        assert_eq!(f, r#"id="ab"*,label.a="\"q\"""#);
        let e =
            container_filterspec(Some(r#"{"ancestor":{"busybox":true}}"#)).expect_err("unknown");
        assert!(e.to_string().contains("\"ancestor\" filter"), "{e}");
        assert!(container_filterspec(Some("nope")).is_err());
    }
}
