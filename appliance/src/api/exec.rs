//! The `exec` component over REST: containers and their tasks, handles,
//! composition on a handle (task join/bind/unbind/leave, state, rename) and
//! Commit.
//!
//! Owns the routes under `/exec` and their request and response types (the
//! API's schemas, converted to and from `portlayer::model`). Must not
//! decide anything itself: every rule lives in `portlayer::exec`.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{JsonBody, PathArgs, QueryArgs};
use crate::portlayer::exec::{CreateSpec as EngineSpec, PortError};
use crate::portlayer::filter::Filter;
use crate::portlayer::model;
use crate::portlayer::policy::{self, Constraint};
use crate::store::{ErrorRecord, now_ms};

/// A process in a container: the primary process or an exec session.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Task {
    /// Unique within the container (letters, digits, `_`, `.`, `-`); the
    /// primary task's id is the container's id (set by the port layer).
    #[schema(pattern = "^([a-zA-Z0-9][a-zA-Z0-9_.-]*)?$", max_length = 128)]
    pub id: String,
    /// argv; `args[0]` is looked up in PATH.
    pub args: Vec<String>,
    /// `KEY=VALUE` pairs.
    pub env: Vec<String>,
    pub working_dir: String,
    /// `name`, `uid`, `name:group` or `uid:gid`.
    pub user: String,
    pub tty: bool,
    /// The terminal's size when the task starts (only with `tty`; absent:
    /// 24x80): set in the guest before the process runs, so its first
    /// output sees it. Later sizes come as attach resizes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tty_size: Option<model::TtySize>,
    pub open_stdin: bool,
}

impl From<Task> for model::Task {
    fn from(t: Task) -> Self {
        model::Task {
            id: t.id,
            args: t.args,
            env: t.env,
            working_dir: t.working_dir,
            user: t.user,
            tty: t.tty,
            tty_size: t.tty_size,
            open_stdin: t.open_stdin,
        }
    }
}

impl From<model::Task> for Task {
    fn from(t: model::Task) -> Self {
        Task {
            id: t.id,
            args: t.args,
            env: t.env,
            working_dir: t.working_dir,
            user: t.user,
            tty: t.tty,
            tty_size: t.tty_size,
            open_stdin: t.open_stdin,
        }
    }
}

/// A filterspec paired with a constraint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The elements the constraint is about, in the filter language
    /// (e.g. `label.tier=db`); empty: all.
    #[serde(default)]
    pub filter: String,
    /// `read-only`, `allowed`, `denied`, `affinity` or `anti-affinity`. An
    /// unknown constraint, or one that cannot be satisfied where it is
    /// given, is refused (400), never ignored.
    #[schema(example = "anti-affinity")]
    pub constraint: String,
}

impl Policy {
    fn parse(&self) -> Result<policy::Policy, policy::PolicyError> {
        let constraint: Constraint = self.constraint.parse()?;
        Ok(policy::Policy::new(
            constraint,
            Filter::parse(&self.filter)?,
        ))
    }
}

impl From<model::Container> for Container {
    fn from(c: model::Container) -> Self {
        Container {
            id: c.id,
            name: c.name,
            image: c.image,
            image_id: c.image_id,
            mounts: c.mounts,
            endpoints: c.endpoints,
            hostname: c.hostname,
            memory_mib: c.memory_mib,
            cpus: c.cpus,
            stop_signal: c.stop_signal,
            stop_timeout_seconds: c.stop_timeout_seconds,
            labels: c.labels,
            policies: c
                .policies
                .iter()
                .map(|p| Policy {
                    filter: p.filter.to_string(),
                    constraint: p.constraint.as_str().into(),
                })
                .collect(),
            tasks: c
                .tasks
                .into_iter()
                .map(|(k, t)| {
                    (
                        k,
                        TaskState {
                            task: t.task.into(),
                            primary: t.primary,
                            bound: t.bound,
                            state: t.state,
                            exit_code: t.exit_code,
                        },
                    )
                })
                .collect(),
            state: c.state.into(),
            exit_code: c.exit_code,
            error: c.error,
            created_at: c.created_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            version: c.version,
        }
    }
}

/// What creating a container takes. Zero values get defaults: a name and
/// hostname from the id, 256 MiB, 1 CPU, stop signal 15, 10 s grace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct CreateSpec {
    /// Letters, digits, `_`, `.` and `-`, starting with a letter or digit
    /// (docker's rule); empty: the first 12 digits of the id.
    #[schema(pattern = "^([a-zA-Z0-9][a-zA-Z0-9_.-]*)?$", max_length = 128)]
    pub name: String,
    /// Required: an image's id, id prefix or reference.
    #[schema(example = "busybox")]
    pub image: String,
    /// An RFC 1123 host name; empty: the first 12 digits of the id.
    #[schema(
        pattern = "^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*)?$",
        max_length = 253
    )]
    pub hostname: String,
    /// MiB: 64 to 1 TiB; 0: 256.
    #[schema(maximum = 1048576)]
    pub memory_mib: u32,
    /// 1 to 128; 0: 1.
    #[schema(maximum = 128)]
    pub cpus: u32,
    /// 1 to 64; 0: 15 (SIGTERM).
    #[schema(minimum = 0, maximum = 64)]
    pub stop_signal: i32,
    pub stop_timeout_seconds: u32,
    pub labels: BTreeMap<String, String>,
    /// Creation-time policies.
    pub policies: Vec<Policy>,
    /// The primary task (its id is set to the container id). Empty `args`
    /// run the image's entrypoint and command; otherwise `args` replace the
    /// image's command and follow its entrypoint. The image's env, working
    /// dir and user apply where the task gives none.
    pub task: Task,
    /// Replaces the image's entrypoint (`[]`: none).
    pub entrypoint: Option<Vec<String>>,
    /// Volumes to join at creation.
    pub mounts: Vec<model::VolumeMount>,
}

/// Parses a request's policies; an error names `policies[i]`.
pub(crate) fn parse_policies(policies: &[Policy]) -> Result<Vec<policy::Policy>, ApiError> {
    policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            p.parse().map_err(|source| {
                ApiError::from(PortError::Policy {
                    element: format!("policies[{i}]"),
                    source,
                })
            })
        })
        .collect()
}

impl CreateSpec {
    fn into_engine(self) -> Result<EngineSpec, ApiError> {
        let policies = parse_policies(&self.policies)?;
        Ok(EngineSpec {
            name: self.name,
            image: self.image,
            hostname: self.hostname,
            memory_mib: self.memory_mib,
            cpus: self.cpus,
            stop_signal: self.stop_signal,
            stop_timeout_seconds: self.stop_timeout_seconds,
            labels: self.labels,
            policies,
            task: self.task.into(),
            entrypoint: self.entrypoint,
            mounts: self.mounts,
        })
    }
}

/// The lifecycle states of a container.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    Created,
    Running,
    Paused,
    /// The primary process ended (or the VM was stopped).
    Exited,
}

impl From<model::PowerState> for PowerState {
    fn from(s: model::PowerState) -> Self {
        match s {
            model::PowerState::Created => PowerState::Created,
            model::PowerState::Running => PowerState::Running,
            model::PowerState::Paused => PowerState::Paused,
            model::PowerState::Exited => PowerState::Exited,
        }
    }
}

/// Where a task stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct TaskState {
    pub task: Task,
    pub primary: bool,
    /// Bound tasks run; unbound ones are defined but inactive.
    pub bound: bool,
    /// `created`, `running` or `exited`.
    pub state: String,
    pub exit_code: Option<i32>,
}

/// Everything the port layer keeps about one container.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct Container {
    /// 64 hex digits; any unique prefix of 4 or more, or the name, also
    /// addresses it.
    pub id: String,
    pub name: String,
    /// The image as it was named at creation.
    pub image: String,
    /// The image's id ("sha256:...").
    pub image_id: String,
    /// Volumes joined to it.
    pub mounts: Vec<model::VolumeMount>,
    pub hostname: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub stop_signal: i32,
    pub stop_timeout_seconds: u32,
    pub labels: BTreeMap<String, String>,
    pub policies: Vec<Policy>,
    /// By task id.
    pub tasks: BTreeMap<String, TaskState>,
    pub state: PowerState,
    pub exit_code: Option<i32>,
    /// Why the container is in its state, when something went wrong.
    pub error: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; 0 if never started.
    pub started_at: i64,
    /// Unix ms; 0 if not finished.
    pub finished_at: i64,
    /// Change version, for optimistic concurrency.
    pub version: u64,
    /// Network endpoints, by scope name.
    pub endpoints: BTreeMap<String, model::Endpoint>,
}

/// A new container's id and its first handle.
#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
pub struct Created {
    pub id: String,
    /// Commit it to create the container.
    #[schema(min_length = 1)]
    pub handle: String,
}

/// An opaque handle: "this container plus pending changes".
#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HandleBody {
    #[schema(min_length = 1)]
    pub handle: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskJoinRequest {
    #[schema(min_length = 1)]
    pub handle: String,
    /// The task to add; `id` and `args` are required.
    pub task: Task,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    #[schema(min_length = 1)]
    pub handle: String,
    /// The task id.
    pub task: String,
}

/// Target states a caller can ask for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Running,
    /// Stop signal, grace period, then kill.
    Stopped,
    /// Back to a fresh, never-started container.
    Created,
    Paused,
}

impl From<TargetState> for model::TargetState {
    fn from(t: TargetState) -> Self {
        match t {
            TargetState::Running => model::TargetState::Running,
            TargetState::Stopped => model::TargetState::Stopped,
            TargetState::Created => model::TargetState::Created,
            TargetState::Paused => model::TargetState::Paused,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StateRequest {
    #[schema(min_length = 1)]
    pub handle: String,
    pub target: TargetState,
    /// With `stopped`: the signal this stop sends first, instead of the
    /// container's stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 64)]
    pub stop_signal: Option<i32>,
    /// With `stopped`: how long this stop waits after the signal before it
    /// kills, instead of the container's stop timeout (0: at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 86400)]
    pub stop_timeout_seconds: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameRequest {
    #[schema(min_length = 1)]
    pub handle: String,
    /// As a container's name at creation.
    #[schema(pattern = "^[a-zA-Z0-9][a-zA-Z0-9_.-]*$", max_length = 128)]
    pub name: String,
}

/// Outcome of a commit for one element.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// The change was applied.
    Success,
    /// The change failed; `detail` says why.
    Error,
    /// Nothing to do: the element already was as asked.
    Noop,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ElementResult {
    pub status: Status,
    pub detail: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct CommitResult {
    /// The container's version after the commit.
    pub version: u64,
    /// A fresh handle on the committed container.
    #[schema(min_length = 1)]
    pub handle: String,
    /// Per element id (the container id, or `<container>/task/<task>`).
    pub results: BTreeMap<String, ElementResult>,
}

impl From<model::CommitResult> for CommitResult {
    fn from(r: model::CommitResult) -> Self {
        CommitResult {
            version: r.version,
            handle: r.handle,
            results: r
                .results
                .into_iter()
                .map(|(k, v)| {
                    let status = match v.status {
                        model::Status::Success => Status::Success,
                        model::Status::Error => Status::Error,
                        model::Status::Noop => Status::Noop,
                    };
                    (
                        k,
                        ElementResult {
                            status,
                            detail: v.detail,
                        },
                    )
                })
                .collect(),
        }
    }
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Filterspec over `id`, `name`, `state`, `image`, `image_id`,
    /// `volume` (any volume it uses), `exit_code` and `label.<key>`, e.g.
    /// `state=running,label.app=web` or `image_id=sha256:...` (which
    /// containers use an image). Containers
    /// labelled `system.hidden` are left out unless the filter mentions
    /// that label.
    pub filter: String,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TaskQuery {
    /// The task id; the primary task if absent.
    pub task: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
pub struct WaitResult {
    /// The task's exit code; null if it ended without one (the VM died).
    pub exit_code: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// The task id; the primary task if absent.
    #[serde(default)]
    pub task: Option<String>,
    /// A signal number, 1 to 64.
    #[schema(minimum = 1, maximum = 64)]
    pub signal: i32,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// Kill a running container first instead of refusing.
    pub force: bool,
}

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/exec/containers", post(create).get(list))
        .route("/exec/containers/{id}", get(inspect).delete(remove))
        .route("/exec/containers/{id}/handle", get(get_handle))
        .route("/exec/containers/{id}/wait", post(wait))
        .route("/exec/containers/{id}/signal", post(signal))
        .route("/exec/handles/task-join", post(task_join))
        .route("/exec/handles/task-bind", post(task_bind))
        .route("/exec/handles/task-unbind", post(task_unbind))
        .route("/exec/handles/task-leave", post(task_leave))
        .route("/exec/handles/state", post(change_state))
        .route("/exec/handles/rename", post(rename))
        .route("/exec/commit", post(commit))
}

/// Creates a container: returns its id and a handle. Nothing exists until
/// the handle is committed.
#[utoipa::path(
    post, path = "/exec/containers", tag = "exec", operation_id = "exec_create",
    request_body = CreateSpec,
    responses(
        (status = 201, description = "A handle for the new container", body = Created),
        (status = 400, description = "Invalid spec or policy (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such image, or no such volume to mount (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn create(
    State(s): State<ApiState>,
    JsonBody(spec): JsonBody<CreateSpec>,
) -> Result<(StatusCode, axum::Json<Created>), ApiError> {
    let spec = spec.into_engine()?;
    let (id, handle) = s.pl.off(move |pl| pl.create(spec)).await?;
    Ok((StatusCode::CREATED, axum::Json(Created { id, handle })))
}

/// Lists containers matching a filter.
#[utoipa::path(
    get, path = "/exec/containers", tag = "exec", operation_id = "exec_list",
    params(ListQuery),
    responses(
        (status = 200, description = "The matching containers", body = Vec<Container>),
        (status = 400, description = "Invalid filter (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn list(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<ListQuery>,
) -> Result<axum::Json<Vec<Container>>, ApiError> {
    let all = s.pl.off(move |pl| pl.list(&q.filter)).await?;
    Ok(axum::Json(all.into_iter().map(Container::from).collect()))
}

/// Inspects a container (by id, unique id prefix or name).
#[utoipa::path(
    get, path = "/exec/containers/{id}", tag = "exec", operation_id = "exec_inspect",
    params(("id" = String, Path, description = "Container id, unique id prefix or name")),
    responses(
        (status = 200, description = "The container", body = Container),
        (status = 404, description = "No such container (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn inspect(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
) -> Result<axum::Json<Container>, ApiError> {
    Ok(axum::Json(s.pl.inspect_off(&id).await?.into()))
}

/// A handle on an existing container, at its current version.
#[utoipa::path(
    get, path = "/exec/containers/{id}/handle", tag = "exec", operation_id = "exec_get_handle",
    params(("id" = String, Path, description = "Container id, unique id prefix or name")),
    responses(
        (status = 200, description = "A handle with no pending changes", body = HandleBody),
        (status = 404, description = "No such container (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn get_handle(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    Ok(axum::Json(HandleBody {
        handle: s.pl.off(move |pl| pl.get_handle(&id)).await?,
    }))
}

/// Joins a task (an exec session) to the container: defined, not yet
/// running. Bind it to start it.
#[utoipa::path(
    post, path = "/exec/handles/task-join", tag = "exec", operation_id = "exec_task_join",
    request_body = TaskJoinRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE) or task (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn task_join(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<TaskJoinRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let handle = s.pl.task_join(&r.handle, r.task.into())?;
    Ok(axum::Json(HandleBody { handle }))
}

/// Binds (activates) a joined task: it starts when committed, if the
/// container is running.
#[utoipa::path(
    post, path = "/exec/handles/task-bind", tag = "exec", operation_id = "exec_task_bind",
    request_body = TaskRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE)", body = ErrorBody),
    )
)]
pub async fn task_bind(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<TaskRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let handle = s.pl.task_bind(&r.handle, &r.task)?;
    Ok(axum::Json(HandleBody { handle }))
}

/// Unbinds (deactivates) a task: a running one is stopped when committed.
#[utoipa::path(
    post, path = "/exec/handles/task-unbind", tag = "exec", operation_id = "exec_task_unbind",
    request_body = TaskRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE)", body = ErrorBody),
    )
)]
pub async fn task_unbind(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<TaskRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let handle = s.pl.task_unbind(&r.handle, &r.task)?;
    Ok(axum::Json(HandleBody { handle }))
}

/// Removes a task that is not running.
#[utoipa::path(
    post, path = "/exec/handles/task-leave", tag = "exec", operation_id = "exec_task_leave",
    request_body = TaskRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE)", body = ErrorBody),
    )
)]
pub async fn task_leave(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<TaskRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let handle = s.pl.task_leave(&r.handle, &r.task)?;
    Ok(axum::Json(HandleBody { handle }))
}

/// Asks for a power state: `running` (start or resume), `stopped` (stop
/// signal, grace period, kill), `paused`, or `created` (reset an exited
/// container).
#[utoipa::path(
    post, path = "/exec/handles/state", tag = "exec", operation_id = "exec_change_state",
    request_body = StateRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE) or target (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn change_state(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<StateRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let stop = (r.stop_signal.is_some() || r.stop_timeout_seconds.is_some()).then_some(
        crate::portlayer::model::StopOptions {
            signal: r.stop_signal,
            timeout_seconds: r.stop_timeout_seconds,
        },
    );
    let handle = s.pl.change_state_with(&r.handle, r.target.into(), stop)?;
    Ok(axum::Json(HandleBody { handle }))
}

/// Renames the container.
#[utoipa::path(
    post, path = "/exec/handles/rename", tag = "exec", operation_id = "exec_rename",
    request_body = RenameRequest,
    responses(
        (status = 200, description = "The new handle", body = HandleBody),
        (status = 400, description = "Bad handle (BAD_HANDLE) or name (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn rename(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<RenameRequest>,
) -> Result<axum::Json<HandleBody>, ApiError> {
    let handle = s.pl.rename(&r.handle, &r.name)?;
    Ok(axum::Json(HandleBody { handle }))
}

/// Commits a handle: applies its pending changes.
///
/// The handle's base version is checked against the stored container; the
/// new state is written with a compare-and-swap, so of two racing commits on
/// one container exactly one wins and the other gets 409 `CONFLICT` naming
/// the `current_version` (re-read, get a new handle, retry). Side effects
/// then go through the execution environment, reported per element id
/// (the container id, or `<container>/task/<task>`) as `SUCCESS`, `ERROR`
/// or `NOOP` with a detail message. A commit whose side effects failed is
/// still 200: look for `ERROR` in the results.
///
/// **Idempotency**: state changes to the state a container is already in
/// are `NOOP` (e.g. starting a running container), as is committing the
/// same creation twice.
///
/// **Exceptions**: a handle whose base version is stale is refused (409)
/// even if its changes were already applied by an earlier commit of the
/// same handle: a caller that loses track of whether its commit went
/// through re-reads and decides. Likewise a creation handle committed again
/// after the container changed, or one that carried further changes (e.g.
/// create and start): only a bare creation is idempotent.
#[utoipa::path(
    post, path = "/exec/commit", tag = "exec", operation_id = "exec_commit",
    request_body = HandleBody,
    responses(
        (status = 200, description = "Per-element outcome and a fresh handle", body = CommitResult),
        (status = 400, description = "Bad handle (BAD_HANDLE) or invalid change (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "The container no longer exists (NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "Stale base version (CONFLICT, with current_version) or name in use (NAME_TAKEN)", body = ErrorBody),
    )
)]
pub async fn commit(
    State(s): State<ApiState>,
    JsonBody(r): JsonBody<HandleBody>,
) -> Result<axum::Json<CommitResult>, ApiError> {
    match s.pl.commit(&r.handle).await {
        Ok(result) => Ok(axum::Json(result.into())),
        Err(e) => {
            let e = ApiError::from(e);
            // Losing a race is the normal path of optimistic concurrency,
            // not a fault worth keeping.
            if e.body.code != ErrorCode::Conflict {
                let rec = ErrorRecord {
                    id: 0,
                    time: now_ms(),
                    kind: "commit".into(),
                    element: e.body.element.clone(),
                    code: serde_json::to_value(e.body.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    message: e.body.message.clone(),
                };
                if let Err(re) = s.pl.store.call(move |st| st.record_error(&rec)).await {
                    tracing::warn!("recording a failed commit: {re}");
                }
            }
            Err(e)
        }
    }
}

/// Waits until a task (the primary task by default) has exited.
#[utoipa::path(
    post, path = "/exec/containers/{id}/wait", tag = "exec", operation_id = "exec_wait",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), TaskQuery),
    responses(
        (status = 200, description = "The task's exit code", body = WaitResult),
        (status = 400, description = "The task is not running (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such container (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn wait(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<TaskQuery>,
) -> Result<axum::Json<WaitResult>, ApiError> {
    let exit_code = s.pl.wait(&id, q.task.as_deref()).await?;
    Ok(axum::Json(WaitResult { exit_code }))
}

/// Sends a signal to a task (the primary task by default). Not a change to
/// the container: takes no handle.
#[utoipa::path(
    post, path = "/exec/containers/{id}/signal", tag = "exec", operation_id = "exec_signal",
    params(("id" = String, Path, description = "Container id, unique id prefix or name")),
    request_body = SignalRequest,
    responses(
        (status = 204, description = "Delivered"),
        (status = 400, description = "Bad signal, or the task is not running (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such container (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn signal(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
    JsonBody(r): JsonBody<SignalRequest>,
) -> Result<StatusCode, ApiError> {
    s.pl.signal(&id, r.task.as_deref(), r.signal).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes a container. A running one is refused (400) unless `force`,
/// which kills it first. Not idempotent: removing it again is 404.
#[utoipa::path(
    delete, path = "/exec/containers/{id}", tag = "exec", operation_id = "exec_remove",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), RemoveQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Running and not forced (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such container (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn remove(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<RemoveQuery>,
) -> Result<Response, ApiError> {
    s.pl.remove(&id, q.force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request;
    use serde_json::{Value, json};

    use super::super::testutil::*;
    use super::*;

    #[tokio::test]
    async fn create_commit_inspect() {
        let h = Harness::new();
        let (status, created) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({
                    "name": "web",
                    "image": "busybox",
                    "labels": {"app": "web"},
                    "policies": [{"constraint": "read-only"}],
                    "task": {"args": ["sh", "-c", "echo hi"], "env": ["A=1"]}
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        // Nothing exists before the commit.
        let (status, _) = h.call("GET", &format!("/exec/containers/{id}"), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        let (status, result) = h
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": created["handle"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert_eq!(result["version"], 1);
        assert_eq!(result["results"][&id]["status"], "SUCCESS");

        for key in [id.as_str(), &id[..8], "web"] {
            let (status, c) = h
                .call("GET", &format!("/exec/containers/{key}"), None)
                .await;
            assert_eq!(status, StatusCode::OK, "{c}");
            assert_eq!(c["id"], id.as_str());
            assert_eq!(c["name"], "web");
            assert_eq!(c["state"], "created");
            assert_eq!(c["version"], 1);
            assert_eq!(c["memory_mib"], 256);
            assert_eq!(
                c["policies"],
                json!([{"filter": "", "constraint": "read-only"}])
            );
            assert_eq!(
                c["tasks"][&id]["task"]["args"],
                json!(["sh", "-c", "echo hi"])
            );
            assert_eq!(c["tasks"][&id]["primary"], true);
        }
        // The same creation committed again: NOOP.
        let (status, again) = h
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": created["handle"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["results"][&id]["status"], "NOOP");
    }

    #[tokio::test]
    async fn list_filters_and_hides_hidden_containers() {
        let h = Harness::new();
        let a = h.create("a").await;
        let (_, created) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({"name": "infra", "image": "x", "labels": {"system.hidden": ""}, "task": {"args": ["sh"]}})),
            )
            .await;
        h.call(
            "POST",
            "/exec/commit",
            Some(json!({"handle": created["handle"]})),
        )
        .await;
        let names = |v: &Value| -> BTreeSet<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        let (status, all) = h.call("GET", "/exec/containers", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(names(&all), BTreeSet::from(["a".to_string()]));
        let (_, hidden) = h
            .call("GET", "/exec/containers?filter=label.system.hidden", None)
            .await;
        assert_eq!(names(&hidden), BTreeSet::from(["infra".to_string()]));
        h.set_state(&a, "running").await;
        let (_, running) = h
            .call("GET", "/exec/containers?filter=state%3Drunning", None)
            .await;
        assert_eq!(names(&running), BTreeSet::from(["a".to_string()]));
    }

    #[tokio::test]
    async fn invalid_filter_is_400_with_the_cause() {
        let h = Harness::new();
        let (status, e) = h
            .call("GET", "/exec/containers?filter=colour%3Dred", None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["code"], "INVALID_ARGUMENT");
        assert_eq!(e["element"], "filter");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.starts_with("Invalid filter: "), "{msg}");
        assert!(msg.contains("unknown field \"colour\""), "{msg}");
        let (status, e) = h.call("GET", "/exec/containers?filters=x", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["element"], "query");
    }

    #[tokio::test]
    async fn start_twice_second_is_noop() {
        let h = Harness::new();
        let id = h.create("web").await;
        let (status, first) = h.set_state(&id, "running").await;
        assert_eq!(status, StatusCode::OK, "{first}");
        assert_eq!(first["results"][&id]["status"], "SUCCESS");
        assert!(h.fake.is_running(&id));
        let (status, second) = h.set_state(&id, "running").await;
        assert_eq!(status, StatusCode::OK, "{second}");
        assert_eq!(second["results"][&id]["status"], "NOOP");
        assert_eq!(second["results"][&id]["detail"], "Already running");
        let starts = h
            .fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("start "))
            .count();
        assert_eq!(starts, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_commits_of_one_handle_exactly_one_wins() {
        let h = Arc::new(Harness::new());
        let id = h.create("web").await;
        let (_, handle) = h
            .call("GET", &format!("/exec/containers/{id}/handle"), None)
            .await;
        let (_, handle) = h
            .call(
                "POST",
                "/exec/handles/state",
                Some(json!({"handle": handle["handle"], "target": "running"})),
            )
            .await;
        let commits: Vec<_> = (0..8)
            .map(|_| {
                let h = h.clone();
                let handle = handle["handle"].clone();
                tokio::spawn(async move {
                    h.call("POST", "/exec/commit", Some(json!({"handle": handle})))
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        let mut conflicts = Vec::new();
        for c in commits {
            let (status, body) = c.await.unwrap();
            match status {
                StatusCode::OK => ok += 1,
                StatusCode::CONFLICT => conflicts.push(body),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(ok, 1);
        assert_eq!(conflicts.len(), 7);
        let (_, c) = h.call("GET", &format!("/exec/containers/{id}"), None).await;
        for body in conflicts {
            assert_eq!(body["code"], "CONFLICT");
            assert_eq!(body["element"], id.as_str());
            let current = body["current_version"].as_u64().unwrap();
            assert!(
                current >= 2 && current <= c["version"].as_u64().unwrap(),
                "{body}"
            );
        }
        let starts = h
            .fake
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.starts_with("start "))
            .count();
        assert_eq!(starts, 1);
    }

    #[tokio::test]
    async fn forged_and_malformed_handles_are_bad_handle() {
        let h = Harness::new();
        let id = h.create("web").await;
        let (_, handle) = h
            .call("GET", &format!("/exec/containers/{id}/handle"), None)
            .await;
        let mut forged = handle["handle"].as_str().unwrap().to_string();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        for bad in [forged.as_str(), "not-a-handle"] {
            for (uri, body) in [
                ("/exec/commit", json!({"handle": bad})),
                (
                    "/exec/handles/state",
                    json!({"handle": bad, "target": "running"}),
                ),
                (
                    "/exec/handles/task-bind",
                    json!({"handle": bad, "task": "t"}),
                ),
            ] {
                let (status, e) = h.call("POST", uri, Some(body)).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {e}");
                assert_eq!(e["code"], "BAD_HANDLE", "{e}");
                assert_eq!(e["element"], "handle", "{e}");
                assert!(
                    e["message"]
                        .as_str()
                        .unwrap()
                        .starts_with("Invalid handle: "),
                    "{e}"
                );
            }
        }
    }

    #[tokio::test]
    async fn malformed_json_is_a_json_400() {
        let h = Harness::new();
        let send = |body: &'static str, content_type: Option<&'static str>| {
            let mut req = Request::builder().method("POST").uri("/exec/commit");
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            h.send(req.body(Body::from(body)).unwrap())
        };
        let resp = send("{\"handle\": ", Some("application/json")).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let e = body_json(resp).await;
        assert_eq!(e["code"], "INVALID_ARGUMENT");
        assert!(e["message"].as_str().unwrap().contains("line 1"), "{e}");

        let e = body_json(
            send(
                "{\"handle\": \"h\", \"hande\": 1}",
                Some("application/json"),
            )
            .await,
        )
        .await;
        assert_eq!(e["element"], "hande", "{e}");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("unknown field `hande`"),
            "{e}"
        );

        let e = body_json(send("{\"handle\": 5}", Some("application/json")).await).await;
        assert_eq!(e["element"], "handle", "{e}");

        let resp = send("{\"handle\": \"h\"}", None).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let e = body_json(resp).await;
        assert_eq!(e["element"], "content-type", "{e}");

        // Nested fields are named by their path.
        let (status, e) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({"image": "x", "task": {"args": ["sh"], "tyy": true}})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(e["element"], "task.tyy", "{e}");
    }

    #[tokio::test]
    async fn a_tasks_terminal_size_is_kept_and_bad_ones_are_400_naming_the_side() {
        let h = Harness::new();
        let (status, created) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({
                    "name": "term",
                    "image": "busybox",
                    "task": {"args": ["sh"], "tty": true, "tty_size": {"rows": 30, "cols": 100}}
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let (status, r) = h
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": created["handle"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{r}");
        let (_, c) = h.call("GET", &format!("/exec/containers/{id}"), None).await;
        assert_eq!(
            c["tasks"][&id]["task"]["tty_size"],
            json!({"rows": 30, "cols": 100}),
            "{c}"
        );

        let bad = [
            (json!({"rows": 0, "cols": 80}), true, "task.tty_size.rows"),
            (
                json!({"rows": 24, "cols": 10001}),
                true,
                "task.tty_size.cols",
            ),
            (json!({"rows": 24, "cols": 80}), false, "task.tty_size"),
            (json!({"rows": 24}), true, "task.tty_size"),
        ];
        for (size, tty, element) in &bad {
            let (status, e) = h
                .call(
                    "POST",
                    "/exec/containers",
                    Some(json!({"image": "x", "task": {"args": ["sh"], "tty": tty, "tty_size": size}})),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{size}: {e}");
            assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
            assert_eq!(e["element"], *element, "{size}: {e}");
        }
        // An exec's size is checked where it is joined.
        let (_, hd) = h
            .call("GET", &format!("/exec/containers/{id}/handle"), None)
            .await;
        let (status, e) = h
            .call(
                "POST",
                "/exec/handles/task-join",
                Some(json!({"handle": hd["handle"], "task": {
                    "id": "t1", "args": ["sh"], "tty": true, "tty_size": {"rows": 24, "cols": 0}
                }})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["element"], "task.tty_size.cols", "{e}");
        let (status, hd) = h
            .call(
                "POST",
                "/exec/handles/task-join",
                Some(json!({"handle": hd["handle"], "task": {
                    "id": "t1", "args": ["sh"], "tty": true, "tty_size": {"rows": 50, "cols": 132}
                }})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{hd}");
    }

    #[tokio::test]
    async fn unknown_container_is_404_naming_it() {
        let h = Harness::new();
        for (method, uri) in [
            ("GET", "/exec/containers/deadbeef"),
            ("GET", "/exec/containers/deadbeef/handle"),
            ("DELETE", "/exec/containers/deadbeef"),
            ("POST", "/exec/containers/deadbeef/wait"),
        ] {
            let (status, e) = h.call(method, uri, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {uri}: {e}");
            assert_eq!(e["code"], "NOT_FOUND");
            assert_eq!(e["element"], "deadbeef");
            assert!(e["message"].as_str().unwrap().contains("deadbeef"), "{e}");
        }
    }

    #[tokio::test]
    async fn unknown_policy_constraint_is_400_naming_it() {
        let h = Harness::new();
        let (status, e) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({
                    "image": "busybox",
                    "task": {"args": ["sh"]},
                    "policies": [{"constraint": "read-only"}, {"constraint": "sometimes", "filter": "label.a=b"}]
                })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["code"], "INVALID_ARGUMENT");
        assert_eq!(e["element"], "policies[1]");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("Unknown constraint \"sometimes\""), "{msg}");
        // A bad filter inside a policy: the whole chain.
        let (status, e) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({
                    "image": "busybox",
                    "task": {"args": ["sh"]},
                    "policies": [{"constraint": "denied", "filter": "a=b,,c=d"}]
                })),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        let msg = e["message"].as_str().unwrap();
        assert!(
            msg.starts_with("Policy on policies[0]: Invalid policy filter: ")
                && msg.contains("empty term"),
            "{msg}"
        );
        // An invalid spec names the field.
        let (status, e) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({"image": "busybox"})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(e["element"], "task.args");
    }

    #[tokio::test]
    async fn tasks_rename_wait_signal_remove() {
        let h = Harness::new();
        let id = h.create("web").await;
        h.set_state(&id, "running").await;
        let (_, hd) = h
            .call("GET", &format!("/exec/containers/{id}/handle"), None)
            .await;
        let (status, hd) = h
            .call(
                "POST",
                "/exec/handles/task-join",
                Some(json!({"handle": hd["handle"], "task": {"id": "t1", "args": ["top"]}})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{hd}");
        let (_, hd) = h
            .call(
                "POST",
                "/exec/handles/task-bind",
                Some(json!({"handle": hd["handle"], "task": "t1"})),
            )
            .await;
        let (_, hd) = h
            .call(
                "POST",
                "/exec/handles/rename",
                Some(json!({"handle": hd["handle"], "name": "web2"})),
            )
            .await;
        let (status, r) = h
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": hd["handle"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{r}");
        assert_eq!(r["results"][format!("{id}/task/t1")]["status"], "SUCCESS");
        assert_eq!(r["results"][&id]["detail"], "Renamed");
        let (_, c) = h.call("GET", "/exec/containers/web2", None).await;
        assert_eq!(c["tasks"]["t1"]["state"], "running");

        let (status, e) = h
            .call(
                "POST",
                &format!("/exec/containers/{id}/signal"),
                Some(json!({"signal": 99})),
            )
            .await;
        assert_eq!(
            (status, &e["element"]),
            (StatusCode::BAD_REQUEST, &json!("signal"))
        );
        let (status, _) = h
            .call(
                "POST",
                &format!("/exec/containers/{id}/signal"),
                Some(json!({"task": "t1", "signal": 1})),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(
            h.fake
                .calls
                .lock()
                .unwrap()
                .contains(&format!("signal {id} t1 1"))
        );

        // Removing a running container needs force.
        let (status, e) = h
            .call("DELETE", &format!("/exec/containers/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        // The refused delete left the container as it was: present, running.
        let (status, c) = h.call("GET", &format!("/exec/containers/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{c}");
        assert_eq!(c["id"], json!(id), "{c}");
        assert_eq!(c["state"], "running", "{c}");

        let waiter = {
            let router = h.router.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let req = Request::post(format!("/exec/containers/{id}/wait"))
                    .body(Body::empty())
                    .unwrap();
                body_json(tower::ServiceExt::oneshot(router, req).await.unwrap()).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        h.fake.exit_task(&id, &id, 3);
        let waited = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(waited, json!({"exit_code": 3}));

        let (status, _) = h
            .call("DELETE", &format!("/exec/containers/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = h
            .call("DELETE", &format!("/exec/containers/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// Every value of a creation the caller names is checked at the port
    /// layer's edge: a 400 in the API's error shape naming the field.
    #[tokio::test]
    async fn invalid_names_and_values_are_400_naming_the_field() {
        let h = Harness::new();
        let long = "a".repeat(5000);
        let base = || json!({"image": "busybox", "task": {"args": ["sh"]}});
        let with = |field: &str, v: Value| {
            let mut b = base();
            b[field] = v;
            b
        };
        let cases: Vec<(Value, &str, String)> = vec![
            (
                with("name", json!("../../etc")),
                "name",
                "name: \"../../etc\" is not a valid container name: ".into(),
            ),
            (
                with("name", json!("a/b")),
                "name",
                "name: \"a/b\" is not a valid container name".into(),
            ),
            (
                with("name", json!("..")),
                "name",
                "name: \"..\" is not a valid container name".into(),
            ),
            (
                with("name", json!(".")),
                "name",
                "name: \".\" is not a valid container name".into(),
            ),
            (with("name", json!(long)), "name", "name: \"aaaa".into()),
            (
                with("name", json!("a\nb")),
                "name",
                "name: \"a\\nb\" is not a valid container name".into(),
            ),
            (
                with("name", json!("a\u{0}b")),
                "name",
                "name: \"a\\0b\" is not a valid container name".into(),
            ),
            (
                with("name", json!("a\u{1b}[2Jb")),
                "name",
                "name: \"a\\u{1b}[2Jb\" is not a valid container name".into(),
            ),
            (
                with("hostname", json!("h1\n6.6.6.6 evil.example")),
                "hostname",
                "hostname: \"h1\\n6.6.6.6 evil.example\" is not a valid hostname (RFC 1123)".into(),
            ),
            (
                with("memory_mib", json!(2147483647)),
                "memory_mib",
                "memory_mib: 2147483647 MiB is not between".into(),
            ),
            (
                with("cpus", json!(100000)),
                "cpus",
                "cpus: 100000 CPUs is more than 128".into(),
            ),
            (
                with("stop_signal", json!(999)),
                "stop_signal",
                "stop_signal: Signal 999 is not between 1 and 64".into(),
            ),
            (
                with("stop_signal", json!(-1)),
                "stop_signal",
                "stop_signal: Signal -1 is not between 1 and 64".into(),
            ),
            (
                with(
                    "policies",
                    json!([{"constraint": "anti-affinity", "filter": "(((("}]),
                ),
                "policies[0]",
                "policies[0]: Invalid filter: ".into(),
            ),
            (
                with("labels", json!({"../../x": "1"})),
                "labels",
                "labels: \"../../x\" is not a valid label key".into(),
            ),
            (
                with("labels", json!({"a\nb": "1"})),
                "labels",
                "labels: \"a\\nb\" is not a valid label key".into(),
            ),
            (
                with("labels", json!({"": "1"})),
                "labels",
                "labels: \"\" is not a valid label key".into(),
            ),
            (
                with("task", json!({"args": ["sh"], "env": ["A=1", "=x"]})),
                "task.env[1]",
                "task.env[1]: \"=x\" is not an environment entry".into(),
            ),
            (
                with("task", json!({"args": ["sh"], "env": ["\u{0}"]})),
                "task.env[0]",
                "task.env[0]: \"\\0\" contains a NUL character".into(),
            ),
            (
                with("task", json!({"args": ["sh", "a\u{0}"]})),
                "task.args[1]",
                "task.args[1]: ".into(),
            ),
        ];
        for (body, element, starts) in cases {
            let (status, e) = h.call("POST", "/exec/containers", Some(body.clone())).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {e}");
            assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
            assert_eq!(e["element"], element, "{body}: {e}");
            let msg = e["message"].as_str().unwrap();
            assert!(msg.starts_with(&starts), "{body}: {msg}");
            assert!(!msg.contains(['\n', '\0', '\u{1b}']), "{msg}");
        }
        // Good values at the bounds are taken.
        let (status, created) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({
                    "name": "Web_1.a-b", "hostname": "web.example.com", "image": "busybox",
                    "memory_mib": 64, "cpus": 128, "stop_signal": 64,
                    "labels": {"com.example/tier": "db"},
                    "policies": [{"constraint": "anti-affinity", "filter": "name=db,label.tier=db"}],
                    "task": {"args": ["sh"], "env": ["A=", "B=c=d"]}
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");

        // Rename and task-join take the same rules.
        let id = h.create("web").await;
        let (_, hd) = h
            .call("GET", &format!("/exec/containers/{id}/handle"), None)
            .await;
        for bad in ["../../etc", "a/b", "..", ".", "a\nb", "-x", ""] {
            let (status, e) = h
                .call(
                    "POST",
                    "/exec/handles/rename",
                    Some(json!({"handle": hd["handle"], "name": bad})),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {e}");
            assert_eq!(e["element"], "name", "{e}");
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .contains("is not a valid container name"),
                "{e}"
            );
        }
        for (task, element) in [
            (json!({"id": "../x", "args": ["sh"]}), "task.id"),
            (
                json!({"id": "t1", "args": ["sh"], "env": ["=x"]}),
                "task.env[0]",
            ),
        ] {
            let (status, e) = h
                .call(
                    "POST",
                    "/exec/handles/task-join",
                    Some(json!({"handle": hd["handle"], "task": task})),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
            assert_eq!(e["element"], element, "{e}");
        }
        let (status, e) = h
            .call(
                "POST",
                &format!("/exec/containers/{id}/signal"),
                Some(json!({"signal": -1})),
            )
            .await;
        assert_eq!(
            (status, &e["element"]),
            (StatusCode::BAD_REQUEST, &json!("signal"))
        );
    }

    #[tokio::test]
    async fn name_taken_is_409() {
        let h = Harness::new();
        h.create("web").await;
        let (_, created) = h
            .call(
                "POST",
                "/exec/containers",
                Some(json!({"name": "web", "image": "x", "task": {"args": ["sh"]}})),
            )
            .await;
        let (status, e) = h
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": created["handle"]})),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{e}");
        assert_eq!(e["code"], "NAME_TAKEN");
        assert_eq!(e["element"], "web");
    }
}
