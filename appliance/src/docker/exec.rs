//! `docker exec`: exec create joins a task to the container (task-join,
//! commit), exec start binds it (task-bind, commit) and streams it as an
//! attach does, exec inspect reads the task's state. The exec id is the
//! container id followed by the task id, so the personality keeps no
//! table of execs.

use std::sync::Arc;

use appliance::portlayer::model::{CommitResult, Container, Task, TtySize};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::attach::{self, Plan};
use super::containers;
use super::{Docker, DockerError, Query, Reply, empty, json};
use crate::client::encode;

/// A container id's length: what an exec id starts with.
const CONTAINER_ID_LEN: usize = 64;

/// `POST /containers/{id}/exec`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ExecConfig {
    attach_stdin: bool,
    tty: bool,
    console_size: Option<[u32; 2]>,
    env: Option<Vec<String>>,
    cmd: Vec<String>,
    working_dir: String,
    user: String,
    privileged: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ExecCreated {
    id: String,
}

/// `POST /exec/{id}/start`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "PascalCase", default)]
struct ExecStart {
    detach: bool,
}

#[derive(Deserialize)]
struct HandleBody {
    handle: String,
}

/// A random 12-hex-digit task id.
fn new_task_id() -> Result<String, DockerError> {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).map_err(|e| DockerError::Status {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("Reading system randomness: {e}"),
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn no_such_exec(exec: &str) -> DockerError {
    DockerError::Status {
        status: StatusCode::NOT_FOUND,
        message: format!("No such exec instance: {exec}"),
    }
}

/// The container and task of an exec id.
fn split_id(exec: &str) -> Result<(&str, &str), DockerError> {
    match exec.split_at_checked(CONTAINER_ID_LEN) {
        Some((c, t)) if !t.is_empty() => Ok((c, t)),
        _ => Err(no_such_exec(exec)),
    }
}

/// Handle → `op` with `body` → commit.
async fn change(
    d: &Docker,
    container: &str,
    op: &str,
    mut body: serde_json::Value,
) -> Result<(), DockerError> {
    let h: HandleBody = d
        .client
        .get(&format!("/exec/containers/{}/handle", encode(container)))
        .await
        .map_err(|e| DockerError::on_container(e, container))?;
    body["handle"] = json!(h.handle);
    let h: HandleBody = d.client.post(&format!("/exec/handles/{op}"), &body).await?;
    let r: CommitResult = d
        .client
        .post("/exec/commit", &json!({ "handle": h.handle }))
        .await?;
    if r.is_error() {
        let detail: Vec<String> = r
            .results
            .iter()
            .filter(|(_, e)| e.status == appliance::portlayer::model::Status::Error)
            .map(|(k, e)| format!("{k}: {}", e.detail))
            .collect();
        return Err(DockerError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: detail.join("; "),
        });
    }
    Ok(())
}

/// `POST /containers/{id}/exec`: the task joins the running container,
/// unbound.
pub async fn create(d: &Docker, id: &str, body: &Bytes) -> Reply {
    let e: ExecConfig = serde_json::from_slice(body)
        .map_err(|e| DockerError::bad_request(format!("Invalid exec config: {e}")))?;
    if e.privileged {
        return Err(DockerError::bad_request(
            "exec --privileged is not supported by this appliance",
        ));
    }
    if e.cmd.is_empty() {
        return Err(DockerError::bad_request("No exec command specified"));
    }
    let c = containers::get(d, id).await?;
    if c.state != appliance::portlayer::model::PowerState::Running {
        return Err(DockerError::conflict(format!(
            "Container {} is not running",
            c.id
        )));
    }
    let task = Task {
        id: new_task_id()?,
        args: e.cmd,
        env: e.env.unwrap_or_default(),
        working_dir: e.working_dir,
        user: e.user,
        tty: e.tty,
        tty_size: match e.console_size {
            Some([rows, cols]) if e.tty && rows > 0 && cols > 0 => Some(TtySize { rows, cols }),
            _ => None,
        },
        open_stdin: e.attach_stdin,
    };
    change(d, &c.id, "task-join", json!({ "task": task })).await?;
    json(
        StatusCode::CREATED,
        &ExecCreated {
            id: format!("{}{}", c.id, task.id),
        },
    )
}

/// The container and its exec task, or Docker's "No such exec instance".
async fn find(d: &Docker, exec: &str) -> Result<(Container, Task), DockerError> {
    let (cid, tid) = split_id(exec)?;
    let c = containers::get(d, cid)
        .await
        .map_err(|_| no_such_exec(exec))?;
    let task = c
        .tasks
        .get(tid)
        .map(|t| t.task.clone())
        .ok_or_else(|| no_such_exec(exec))?;
    Ok((c, task))
}

/// `POST /exec/{id}/start`: binds the task, then streams it on the
/// upgraded connection (or returns at once, detached).
pub async fn start(d: Arc<Docker>, exec: &str, req: Request) -> Reply {
    let (c, task) = find(&d, exec).await?;
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 16)
        .await
        .map_err(|e| DockerError::bad_request(format!("Reading the request body: {e}")))?;
    let s: ExecStart = if body.iter().all(u8::is_ascii_whitespace) {
        ExecStart::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| DockerError::bad_request(format!("Invalid exec start: {e}")))?
    };
    if c.tasks.get(&task.id).is_some_and(|t| t.bound) {
        return Err(DockerError::conflict(format!(
            "Exec {exec} has already been started"
        )));
    }
    // The upgrade rides in the request's parts.
    let req = Request::from_parts(parts, Body::empty());
    if !s.detach && !attach::is_upgrade(&req) {
        return Err(DockerError::bad_request(
            "An attached exec start is an HTTP upgrade: send Connection: Upgrade and Upgrade: tcp",
        ));
    }
    change(&d, &c.id, "task-bind", json!({ "task": task.id })).await?;
    if s.detach {
        return empty(StatusCode::OK);
    }
    let plan = Plan::exec(&c.id, &task.id, task.tty, task.open_stdin);
    attach::upgrade(d, plan, req)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ExecInspect {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "ContainerID")]
    container_id: String,
    running: bool,
    exit_code: Option<i32>,
    open_stdin: bool,
    open_stdout: bool,
    open_stderr: bool,
    can_remove: bool,
    pid: u32,
    process_config: ProcessConfig,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcessConfig {
    tty: bool,
    entrypoint: String,
    arguments: Vec<String>,
    privileged: bool,
    user: String,
}

/// `GET /exec/{id}/json`.
pub async fn inspect(d: &Docker, exec: &str) -> Reply {
    let (c, task) = find(d, exec).await?;
    let state = c.tasks.get(&task.id);
    let running = state.is_some_and(|t| t.state == "running");
    let exit_code = state.and_then(|t| t.exit_code);
    let (entrypoint, arguments) = match task.args.split_first() {
        Some((e, rest)) => (e.clone(), rest.to_vec()),
        None => (String::new(), vec![]),
    };
    json(
        StatusCode::OK,
        &ExecInspect {
            id: exec.to_string(),
            container_id: c.id.clone(),
            running,
            exit_code,
            open_stdin: task.open_stdin,
            open_stdout: true,
            open_stderr: true,
            can_remove: false,
            pid: 0,
            process_config: ProcessConfig {
                tty: task.tty,
                entrypoint,
                arguments,
                privileged: false,
                user: task.user.clone(),
            },
        },
    )
}

/// `POST /exec/{id}/resize?h=&w=`: to the exec's attach sessions.
pub async fn resize(d: &Docker, exec: &str, q: &Query) -> Reply {
    let (rows, cols) = attach::terminal_size(q)?;
    let (c, task) = find(d, exec).await?;
    let n = d
        .attachments
        .control(&c.id, Some(&task.id), &attach::resize_frame(rows, cols));
    tracing::debug!("docker: resize of exec {exec} to {rows}x{cols} sent to {n} sessions");
    empty(StatusCode::OK)
}
