//! The execution component: containers and their tasks, handles, and
//! Commit.
//!
//! A handle is "this container plus pending changes", sealed with the
//! appliance's key (see `crate::handle`): every mutating call takes one and
//! returns a new one, and nothing changes until `commit`. Commit checks the
//! handle's base version against the store (a stale one is a conflict
//! naming the current version), writes the new container state with a
//! compare-and-swap (so of two racing commits exactly one wins), and then
//! applies the side effects through the backend, reporting per element
//! SUCCESS, ERROR or NOOP.
//!
//! Idempotency: state changes to the state a container is already in are
//! NOOP, as is committing the same creation twice. Exceptions: a handle
//! whose base version is stale is refused (409) even if its changes were
//! already applied by an earlier commit of the same handle: a caller that
//! loses track of whether its commit went through re-reads and decides.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::events::Events;
use super::filter::{Filter, Filterable};
use super::model::*;
use super::policy::{self, Policy, Scope, Target};
use crate::backend::{Backend, BackendError, BackendEvent};
use crate::handle::{self, HandleData, HandleKey};
use crate::store::{ContainerRecord, Store, StoreError, now_ms};

/// Fields a container filter may name.
pub const CONTAINER_FIELDS: &[&str] = &["id", "name", "state", "image", "exit_code"];

#[derive(Debug, thiserror::Error)]
pub enum PortError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("Invalid handle")]
    Handle(#[from] handle::HandleError),
    #[error("{element}: {message}")]
    Invalid { element: String, message: String },
    #[error("Policy on {element}")]
    Policy {
        element: String,
        #[source]
        source: policy::PolicyError,
    },
    #[error("Invalid filter")]
    Filter(#[from] super::filter::FilterError),
}

impl PortError {
    fn invalid(element: &str, message: impl Into<String>) -> Self {
        PortError::Invalid {
            element: element.into(),
            message: message.into(),
        }
    }

    /// The id of the element at fault, for error responses.
    pub fn element(&self) -> String {
        match self {
            PortError::Store(StoreError::NotFound { id, .. })
            | PortError::Store(StoreError::AlreadyExists { id, .. })
            | PortError::Store(StoreError::Conflict { id, .. }) => id.clone(),
            PortError::Store(StoreError::NameTaken { name, .. }) => name.clone(),
            PortError::Store(StoreError::Ambiguous { prefix, .. }) => prefix.clone(),
            PortError::Invalid { element, .. } | PortError::Policy { element, .. } => {
                element.clone()
            }
            PortError::Handle(_) => "handle".into(),
            _ => String::new(),
        }
    }
}

/// What `create` takes.
#[derive(serde::Deserialize, serde::Serialize, Clone, Debug, Default)]
#[serde(default, deny_unknown_fields)]
pub struct CreateSpec {
    pub name: String,
    pub image: String,
    pub hostname: String,
    pub memory_mib: u32,
    pub cpus: u32,
    pub stop_signal: i32,
    pub stop_timeout_seconds: u32,
    pub labels: BTreeMap<String, String>,
    pub policies: Vec<Policy>,
    /// The primary task (its id is set to the container id).
    pub task: Task,
}

impl Filterable for Container {
    fn field(&self, name: &str) -> Option<String> {
        match name {
            "id" => Some(self.id.clone()),
            "name" => Some(self.name.clone()),
            "state" => Some(self.state.as_str().into()),
            "image" => Some(self.image.clone()),
            "exit_code" => self.exit_code.map(|c| c.to_string()),
            _ => None,
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

pub struct PortLayer {
    pub store: Arc<Store>,
    pub events: Arc<Events>,
    key: HandleKey,
    backend: Arc<dyn Backend>,
}

fn new_id() -> String {
    let mut b = [0u8; 32];
    // Falls back to time-derived bytes only if the OS has no randomness.
    if getrandom::fill(&mut b).is_err() {
        b[..16].copy_from_slice(&now_ms().to_le_bytes().repeat(2));
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn to_container(rec: &ContainerRecord) -> Result<Container, PortError> {
    let mut c: Container = serde_json::from_value(rec.body.clone()).map_err(StoreError::from)?;
    c.version = rec.version;
    Ok(c)
}

fn to_record(c: &Container) -> Result<ContainerRecord, PortError> {
    Ok(ContainerRecord {
        id: c.id.clone(),
        name: c.name.clone(),
        version: c.version,
        state: c.state.as_str().into(),
        labels: c.labels.clone(),
        body: serde_json::to_value(c).map_err(StoreError::from)?,
        created_at: c.created_at,
        updated_at: now_ms(),
    })
}

fn task_element(c: &str, t: &str) -> String {
    format!("{c}/task/{t}")
}

/// A side effect a commit performs after its new state is stored.
enum Action {
    Start,
    Stop,
    Pause,
    Resume,
    Exec(Task),
    StopTask(String),
}

impl PortLayer {
    pub fn new(store: Arc<Store>, key: HandleKey, backend: Arc<dyn Backend>) -> Arc<Self> {
        let events = Arc::new(Events::new(store.clone()));
        let pl = Arc::new(Self {
            store,
            events,
            key,
            backend: backend.clone(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        backend.subscribe(tx);
        tokio::spawn(pl.clone().follow_backend(rx));
        pl
    }

    fn seal(&self, container: &str, base: u64, changes: &[Change]) -> Result<String, PortError> {
        let changes = changes
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::from)?;
        Ok(handle::seal(
            &self.key,
            &HandleData {
                container: container.into(),
                base_version: base,
                changes,
                issued_at: now_ms(),
            },
        ))
    }

    fn unseal(&self, token: &str) -> Result<(HandleData, Vec<Change>), PortError> {
        let data = handle::open(&self.key, token)?;
        let changes = data
            .changes
            .iter()
            .map(|v| serde_json::from_value(v.clone()))
            .collect::<Result<Vec<Change>, _>>()
            .map_err(|e| PortError::invalid("handle", format!("Unknown change in handle: {e}")))?;
        Ok((data, changes))
    }

    /// Appends a change to a handle, giving the new handle.
    fn push(&self, token: &str, change: Change) -> Result<String, PortError> {
        let (data, mut changes) = self.unseal(token)?;
        changes.push(change);
        self.seal(&data.container, data.base_version, &changes)
    }

    /// A handle for a new container. Nothing exists until it is committed.
    pub fn create(&self, spec: CreateSpec) -> Result<(String, String), PortError> {
        let id = new_id();
        if spec.task.args.is_empty() {
            return Err(PortError::invalid(
                "task.args",
                "The primary task needs a command",
            ));
        }
        if spec.image.is_empty() {
            return Err(PortError::invalid("image", "An image is required"));
        }
        for p in &spec.policies {
            p.validate(Scope::Create, Target::Container)
                .map_err(|source| PortError::Policy {
                    element: id.clone(),
                    source,
                })?;
        }
        let name = if spec.name.is_empty() {
            id[..12].to_string()
        } else {
            spec.name
        };
        let mut task = spec.task;
        task.id = id.clone();
        let c = Container {
            id: id.clone(),
            name,
            image: spec.image,
            hostname: if spec.hostname.is_empty() {
                id[..12].to_string()
            } else {
                spec.hostname
            },
            memory_mib: if spec.memory_mib == 0 {
                256
            } else {
                spec.memory_mib
            },
            cpus: spec.cpus.max(1),
            stop_signal: if spec.stop_signal == 0 {
                15
            } else {
                spec.stop_signal
            },
            stop_timeout_seconds: if spec.stop_timeout_seconds == 0 {
                10
            } else {
                spec.stop_timeout_seconds
            },
            labels: spec.labels,
            policies: spec.policies,
            tasks: BTreeMap::from([(
                id.clone(),
                TaskState {
                    task,
                    primary: true,
                    bound: true,
                    state: "created".into(),
                    exit_code: None,
                },
            )]),
            state: PowerState::Created,
            created_at: now_ms(),
            ..Default::default()
        };
        let token = self.seal(
            &id,
            0,
            &[Change::Create {
                container: Box::new(c),
            }],
        )?;
        Ok((id, token))
    }

    /// A handle on an existing container (by id, name or id prefix).
    pub fn get_handle(&self, id: &str) -> Result<String, PortError> {
        let rec = self.store.resolve_container(id)?;
        self.seal(&rec.id, rec.version, &[])
    }

    pub fn task_join(&self, h: &str, task: Task) -> Result<String, PortError> {
        if task.id.is_empty() || task.args.is_empty() {
            return Err(PortError::invalid(
                "task",
                "A task needs an id and a command",
            ));
        }
        self.push(h, Change::TaskJoin { task })
    }

    pub fn task_bind(&self, h: &str, task: &str) -> Result<String, PortError> {
        self.push(h, Change::TaskBind { task: task.into() })
    }

    pub fn task_unbind(&self, h: &str, task: &str) -> Result<String, PortError> {
        self.push(h, Change::TaskUnbind { task: task.into() })
    }

    pub fn task_leave(&self, h: &str, task: &str) -> Result<String, PortError> {
        self.push(h, Change::TaskLeave { task: task.into() })
    }

    pub fn change_state(&self, h: &str, target: TargetState) -> Result<String, PortError> {
        self.push(h, Change::State { target })
    }

    pub fn rename(&self, h: &str, name: &str) -> Result<String, PortError> {
        if name.is_empty() || name.contains('/') {
            return Err(PortError::invalid("name", format!("Invalid name {name:?}")));
        }
        self.push(h, Change::Rename { name: name.into() })
    }

    pub fn inspect(&self, id: &str) -> Result<Container, PortError> {
        to_container(&self.store.resolve_container(id)?)
    }

    pub fn list(&self, filter: &str) -> Result<Vec<Container>, PortError> {
        let f = Filter::parse(filter)?.with_default_visibility();
        f.check_fields(CONTAINER_FIELDS)?;
        let mut out = Vec::new();
        for rec in self.store.containers()? {
            let c = to_container(&rec)?;
            if f.matches(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Applies a handle's changes. Errors are for the commit as a whole
    /// (bad handle, conflict, invalid change); per-element outcomes of the
    /// side effects are in the result.
    pub async fn commit(&self, token: &str) -> Result<CommitResult, PortError> {
        let (data, changes) = self.unseal(token)?;
        let id = data.container.clone();
        let mut results = BTreeMap::new();
        let mut actions = Vec::new();

        let (mut c, base) = if data.base_version == 0 {
            let Some(Change::Create { container }) = changes.first() else {
                return Err(PortError::invalid(
                    &id,
                    "A handle at version 0 must start with a creation",
                ));
            };
            match self.store.container(&id) {
                Ok(rec) if rec.version == 1 && changes.len() == 1 => {
                    // The same creation committed twice.
                    results.insert(
                        id.clone(),
                        ElementResult {
                            status: Status::Noop,
                            detail: "Already created".into(),
                        },
                    );
                    return Ok(CommitResult {
                        version: rec.version,
                        handle: self.seal(&id, rec.version, &[])?,
                        results,
                    });
                }
                Ok(rec) => {
                    return Err(StoreError::Conflict {
                        kind: "container",
                        id,
                        base: 0,
                        current: rec.version,
                    }
                    .into());
                }
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            let mut c = (**container).clone();
            c.version = 1;
            self.backend
                .create(&c)
                .await
                .map_err(|e| PortError::invalid(&id, e.to_string()))?;
            let v = self.store.insert_container(&to_record(&c)?)?;
            c.version = v;
            results.insert(
                id.clone(),
                ElementResult {
                    status: Status::Success,
                    detail: "Created".into(),
                },
            );
            self.events.emit(
                "exec",
                "create",
                &id,
                &c.labels,
                json!({ "name": c.name, "image": c.image }),
            )?;
            (c, v)
        } else {
            let rec = self.store.container(&id)?;
            if rec.version != data.base_version {
                return Err(StoreError::Conflict {
                    kind: "container",
                    id,
                    base: data.base_version,
                    current: rec.version,
                }
                .into());
            }
            (to_container(&rec)?, rec.version)
        };

        let skip = usize::from(data.base_version == 0);
        for ch in &changes[skip..] {
            self.plan(&mut c, ch, &mut results, &mut actions)?;
        }
        // Store first: of racing commits exactly one gets past this line.
        let version = if actions.is_empty() && changes.len() == skip {
            base
        } else {
            self.store.update_container(&to_record(&c)?, base)?
        };

        for a in actions {
            self.apply(&id, a, &mut results).await;
        }
        let c = self.inspect(&id)?;
        Ok(CommitResult {
            version: c.version,
            handle: self.seal(&id, c.version.max(version), &[])?,
            results,
        })
    }

    /// Updates the stored container for one change and notes the side
    /// effect to perform.
    fn plan(
        &self,
        c: &mut Container,
        ch: &Change,
        results: &mut BTreeMap<String, ElementResult>,
        actions: &mut Vec<Action>,
    ) -> Result<(), PortError> {
        let ok = |detail: &str| ElementResult {
            status: Status::Success,
            detail: detail.into(),
        };
        let noop = |detail: &str| ElementResult {
            status: Status::Noop,
            detail: detail.into(),
        };
        let id = c.id.clone();
        match ch {
            Change::Create { .. } => {
                return Err(PortError::invalid(
                    &id,
                    "Creation can only be the first change",
                ));
            }
            Change::Rename { name } => {
                if *name == c.name {
                    results.insert(id, noop("Name unchanged"));
                } else {
                    c.name.clone_from(name);
                    results.insert(id, ok("Renamed"));
                }
            }
            Change::Labels { set, remove } => {
                c.labels.extend(set.clone());
                for k in remove {
                    c.labels.remove(k);
                }
                results.insert(id, ok("Labels changed"));
            }
            Change::TaskJoin { task } => {
                let el = task_element(&id, &task.id);
                if let Some(t) = c.tasks.get(&task.id) {
                    if t.task == *task {
                        results.insert(el, noop("Task already joined"));
                        return Ok(());
                    }
                    return Err(PortError::invalid(
                        &el,
                        "A different task with this id is already joined",
                    ));
                }
                c.tasks.insert(
                    task.id.clone(),
                    TaskState {
                        task: task.clone(),
                        primary: false,
                        bound: false,
                        state: "created".into(),
                        exit_code: None,
                    },
                );
                results.insert(el, ok("Joined"));
            }
            Change::TaskBind { task } => {
                let el = task_element(&id, task);
                let running = c.state == PowerState::Running;
                let t = c
                    .tasks
                    .get_mut(task)
                    .ok_or_else(|| PortError::invalid(&el, "No such task"))?;
                if t.bound {
                    results.insert(el, noop("Task already bound"));
                } else if t.primary {
                    t.bound = true;
                    results.insert(el, ok("Bound: runs when the container starts"));
                } else {
                    if !running {
                        return Err(PortError::invalid(
                            &el,
                            "The container is not running: start it before binding a task",
                        ));
                    }
                    t.bound = true;
                    t.state = "running".into();
                    actions.push(Action::Exec(t.task.clone()));
                    results.insert(el, ok("Started"));
                }
            }
            Change::TaskUnbind { task } => {
                let el = task_element(&id, task);
                let t = c
                    .tasks
                    .get_mut(task)
                    .ok_or_else(|| PortError::invalid(&el, "No such task"))?;
                if !t.bound {
                    results.insert(el, noop("Task not bound"));
                } else if t.primary {
                    return Err(PortError::invalid(
                        &el,
                        "The primary task cannot be unbound; stop the container",
                    ));
                } else {
                    t.bound = false;
                    if t.state == "running" {
                        actions.push(Action::StopTask(task.clone()));
                    }
                    results.insert(el, ok("Unbound"));
                }
            }
            Change::TaskLeave { task } => {
                let el = task_element(&id, task);
                match c.tasks.get(task) {
                    None => {
                        results.insert(el, noop("No such task"));
                    }
                    Some(t) if t.primary => {
                        return Err(PortError::invalid(&el, "The primary task cannot leave"));
                    }
                    Some(t) if t.state == "running" => {
                        return Err(PortError::invalid(
                            &el,
                            "The task is running: unbind it first",
                        ));
                    }
                    Some(_) => {
                        c.tasks.remove(task);
                        results.insert(el, ok("Left"));
                    }
                }
            }
            Change::State { target } => {
                let el = id.clone();
                use PowerState as P;
                use TargetState as T;
                match (c.state, target) {
                    (P::Running, T::Running)
                    | (P::Paused, T::Paused)
                    | (P::Created, T::Created)
                    | (P::Exited, T::Stopped)
                    | (P::Created, T::Stopped) => {
                        results.insert(el, noop(&format!("Already {}", c.state.as_str())));
                    }
                    (P::Created | P::Exited, T::Running) => {
                        c.state = P::Running;
                        c.exit_code = None;
                        c.error.clear();
                        c.started_at = now_ms();
                        for t in c.tasks.values_mut() {
                            if t.primary {
                                t.state = "running".into();
                                t.exit_code = None;
                            }
                        }
                        actions.push(Action::Start);
                        results.insert(el, ok("Started"));
                    }
                    (P::Paused, T::Running) => {
                        c.state = P::Running;
                        actions.push(Action::Resume);
                        results.insert(el, ok("Resumed"));
                    }
                    (P::Running, T::Paused) => {
                        c.state = P::Paused;
                        actions.push(Action::Pause);
                        results.insert(el, ok("Paused"));
                    }
                    (P::Running | P::Paused, T::Stopped) => {
                        // The state becomes exited when the backend reports it.
                        if c.state == P::Paused {
                            actions.push(Action::Resume);
                        }
                        actions.push(Action::Stop);
                        results.insert(el, ok("Stopping"));
                    }
                    (P::Exited, T::Created) => {
                        c.state = P::Created;
                        c.exit_code = None;
                        results.insert(el, ok("Reset to created"));
                    }
                    (from, to) => {
                        return Err(PortError::invalid(
                            &el,
                            format!("Cannot go from {} to {to:?}", from.as_str()),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    async fn apply(&self, id: &str, a: Action, results: &mut BTreeMap<String, ElementResult>) {
        let c = match self.inspect(id) {
            Ok(c) => c,
            Err(e) => {
                results.insert(
                    id.into(),
                    ElementResult {
                        status: Status::Error,
                        detail: e.to_string(),
                    },
                );
                return;
            }
        };
        let (el, r): (String, Result<(), BackendError>) = match a {
            Action::Start => (id.into(), self.backend.start(&c).await),
            Action::Stop => (
                id.into(),
                self.backend
                    .stop(
                        id,
                        c.stop_signal,
                        Duration::from_secs(u64::from(c.stop_timeout_seconds)),
                    )
                    .await,
            ),
            Action::Pause => (id.into(), self.backend.pause(id).await),
            Action::Resume => (id.into(), self.backend.resume(id).await),
            Action::Exec(t) => (task_element(id, &t.id), self.backend.exec(id, &t).await),
            Action::StopTask(t) => (
                task_element(id, &t),
                self.backend
                    .stop_task(
                        id,
                        &t,
                        Duration::from_secs(u64::from(c.stop_timeout_seconds)),
                    )
                    .await,
            ),
        };
        let kind = results
            .get(&el)
            .map(|r| r.detail.to_lowercase())
            .unwrap_or_default();
        match r {
            Ok(()) => {
                let _ = self.events.emit("exec", &kind, &el, &c.labels, json!({}));
            }
            Err(e) => {
                let msg = e.to_string();
                results.insert(
                    el.clone(),
                    ElementResult {
                        status: Status::Error,
                        detail: msg.clone(),
                    },
                );
                let _ = self.store.record_error(&crate::store::ErrorRecord {
                    id: 0,
                    time: now_ms(),
                    kind: "backend".into(),
                    element: el.clone(),
                    code: "BACKEND".into(),
                    message: msg.clone(),
                });
                let _ = self
                    .events
                    .emit("exec", "error", &el, &c.labels, json!({ "error": msg }));
                // A container whose start failed is not running.
                if el == id {
                    let _ = self.update(id, |c| {
                        if c.state == PowerState::Running
                            && c.started_at > 0
                            && c.exit_code.is_none()
                        {
                            c.state = PowerState::Exited;
                            c.error = msg.clone();
                            c.finished_at = now_ms();
                        }
                    });
                }
            }
        }
    }

    /// Read-modify-write of the stored container, retried on conflicts:
    /// for the port layer's own bookkeeping (backend events), never for
    /// callers' handles.
    pub fn update(&self, id: &str, f: impl Fn(&mut Container)) -> Result<Container, PortError> {
        loop {
            let rec = self.store.container(id)?;
            let mut c = to_container(&rec)?;
            f(&mut c);
            match self.store.update_container(&to_record(&c)?, rec.version) {
                Ok(v) => {
                    c.version = v;
                    return Ok(c);
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn follow_backend(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<BackendEvent>) {
        while let Some(ev) = rx.recv().await {
            let r = match &ev {
                BackendEvent::TaskExited {
                    container,
                    task,
                    code,
                } => self
                    .update(container, |c| {
                        if let Some(t) = c.tasks.get_mut(task) {
                            t.state = "exited".into();
                            t.exit_code = Some(*code);
                            if !t.primary {
                                t.bound = false;
                            }
                        }
                    })
                    .and_then(|c| {
                        self.events
                            .emit(
                                "exec",
                                "task-exit",
                                &task_element(container, task),
                                &c.labels,
                                json!({ "exit_code": code }),
                            )
                            .map_err(PortError::from)
                    }),
                BackendEvent::Exited { container, code } => self
                    .update(container, |c| {
                        c.state = PowerState::Exited;
                        c.exit_code = Some(*code);
                        c.finished_at = now_ms();
                        for t in c.tasks.values_mut() {
                            if t.state == "running" {
                                t.state = "exited".into();
                            }
                        }
                    })
                    .and_then(|c| {
                        self.events
                            .emit(
                                "exec",
                                "exit",
                                container,
                                &c.labels,
                                json!({ "exit_code": code }),
                            )
                            .map_err(PortError::from)
                    }),
                BackendEvent::Crashed { container, error } => self
                    .update(container, |c| {
                        c.state = PowerState::Exited;
                        c.error.clone_from(error);
                        c.finished_at = now_ms();
                    })
                    .and_then(|c| {
                        let _ = self.store.record_error(&crate::store::ErrorRecord {
                            id: 0,
                            time: now_ms(),
                            kind: "vm-crash".into(),
                            element: container.clone(),
                            code: "VM_CRASH".into(),
                            message: error.clone(),
                        });
                        self.events
                            .emit(
                                "exec",
                                "crash",
                                container,
                                &c.labels,
                                json!({ "error": error }),
                            )
                            .map_err(PortError::from)
                    }),
            };
            if let Err(e) = r {
                tracing::warn!("recording backend event {ev:?}: {e}");
            }
        }
    }

    /// Waits until the task (the primary task by default) has exited;
    /// returns its exit code.
    pub async fn wait(&self, id: &str, task: Option<&str>) -> Result<Option<i32>, PortError> {
        let mut rx = self.events.subscribe();
        let c = self.inspect(id)?;
        let task = task.unwrap_or(&c.id).to_string();
        loop {
            let c = self.inspect(&c.id)?;
            let t = c
                .tasks
                .get(&task)
                .ok_or_else(|| PortError::invalid(&task_element(&c.id, &task), "No such task"))?;
            if t.state == "exited" || (t.primary && c.state == PowerState::Exited) {
                return Ok(t.exit_code.or(c.exit_code));
            }
            if t.state == "created" && !(t.primary && c.state == PowerState::Running) {
                return Err(PortError::invalid(
                    &task_element(&c.id, &task),
                    "The task is not running",
                ));
            }
            // Any event may be the one; re-read on each (or periodically).
            let _ = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await;
        }
    }

    /// Removes a container. A running one is refused unless `force`, which
    /// kills it first.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), PortError> {
        let c = self.inspect(id)?;
        if matches!(c.state, PowerState::Running | PowerState::Paused) {
            if !force {
                return Err(PortError::invalid(
                    &c.id,
                    "The container is running: stop it first, or force",
                ));
            }
            let _ = self.backend.stop(&c.id, 9, Duration::ZERO).await;
        }
        self.backend
            .remove(&c.id)
            .await
            .map_err(|e| PortError::invalid(&c.id, e.to_string()))?;
        self.store.delete_container(&c.id, None)?;
        self.events
            .emit("exec", "remove", &c.id, &c.labels, json!({}))?;
        Ok(())
    }

    /// Signals a task (the primary by default).
    pub async fn signal(&self, id: &str, task: Option<&str>, signal: i32) -> Result<(), PortError> {
        let c = self.inspect(id)?;
        let task = task.unwrap_or(&c.id).to_string();
        self.backend
            .signal(&c.id, &task, signal)
            .await
            .map_err(|e| PortError::invalid(&task_element(&c.id, &task), e.to_string()))
    }
}
