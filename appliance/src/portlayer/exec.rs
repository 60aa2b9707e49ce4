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
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;

use super::events::Events;
use super::filter::{Filter, Filterable};
use super::model::*;
use super::policy::{self, Constraint, Policy, Scope, Target};
use super::storage::{Storage, StorageError, VOLUME_FIELDS};
use super::validate::{self, Invalid};
use crate::backend::{Backend, BackendError, BackendEvent};
use crate::handle::{self, HandleData, HandleKey};
use crate::store::{ContainerRecord, ErrorRecord, Store, StoreError, now_ms};

/// Fields a container filter may name.
pub const CONTAINER_FIELDS: &[&str] = &[
    "id",
    "name",
    "state",
    "image",
    "image_id",
    "volume",
    "exit_code",
];

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
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Network(#[from] super::network::NetworkError),
}

impl From<Invalid> for PortError {
    fn from(e: Invalid) -> Self {
        PortError::Invalid {
            element: e.field,
            message: e.message,
        }
    }
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
            PortError::Storage(e) => e.element(),
            PortError::Network(e) => e.element(),
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
    /// The primary task (its id is set to the container id). Empty `args`
    /// run the image's entrypoint and command; otherwise `args` replace the
    /// image's command and follow its entrypoint. The image's env comes
    /// first (the task's entries win), its working dir and user apply when
    /// the task gives none.
    pub task: Task,
    /// Replaces the image's entrypoint (`[]`: none).
    pub entrypoint: Option<Vec<String>>,
    /// Volumes to join at creation.
    pub mounts: Vec<VolumeMount>,
}

impl Filterable for Container {
    fn field(&self, name: &str) -> Option<String> {
        match name {
            "id" => Some(self.id.clone()),
            "name" => Some(self.name.clone()),
            "state" => Some(self.state.as_str().into()),
            "image" => Some(self.image.clone()),
            "image_id" => Some(self.image_id.clone()),
            "exit_code" => self.exit_code.map(|c| c.to_string()),
            _ => None,
        }
    }

    fn values(&self, name: &str) -> Vec<String> {
        match name {
            "volume" => self.mounts.iter().map(|m| m.volume.clone()).collect(),
            _ => self.field(name).into_iter().collect(),
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

pub struct PortLayer {
    pub store: Arc<Store>,
    pub events: Arc<Events>,
    /// The network component (scopes; endpoints are planned through it).
    pub network: Arc<super::network::Network>,
    /// The storage component; without it, images are taken as given and
    /// volumes cannot be joined (tests of the engine alone).
    pub storage: Option<Arc<Storage>>,
    key: HandleKey,
    backend: Arc<dyn Backend>,
    /// Bookkeeping writes that failed after the fact (see `lost`).
    dropped: AtomicU64,
    /// Operations in progress in this process, woken at once when one is
    /// cancelled here (other replicas' requests arrive through the store).
    cancels: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// This port layer itself, for work handed to the blocking pool.
    me: std::sync::Weak<PortLayer>,
    /// Creations being committed in this process, by container id: copies
    /// of one creation handle committed at once wait for the first.
    creating: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How often an operation in progress looks in the store for a
/// cancellation requested by another replica.
const CANCEL_POLL: Duration = Duration::from_secs(1);

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
    super::network::fill_addresses(&mut c, &rec.addresses);
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
        uses: c.uses(),
        ..Default::default()
    })
}

/// What identifies a creation handle: the digest of its changes.
fn changes_digest(changes: &[Change]) -> Result<String, PortError> {
    use sha2::Digest;
    let json = serde_json::to_vec(changes).map_err(StoreError::from)?;
    Ok(format!("sha256:{:x}", sha2::Sha256::digest(json)))
}

/// What a task asks of the guest: arguments, environment, user, working
/// directory and terminal size it can pass on (see `validate`).
fn check_task(field: &str, t: &Task) -> Result<(), Invalid> {
    validate::args(&format!("{field}.args"), &t.args)?;
    validate::env(&format!("{field}.env"), &t.env)?;
    validate::text(&format!("{field}.user"), &t.user)?;
    validate::text(&format!("{field}.working_dir"), &t.working_dir)?;
    validate::tty_size(&format!("{field}.tty_size"), t.tty_size.as_ref(), t.tty)
}

/// Every field of a creation the caller gave, by the rules of `validate`;
/// zero values take defaults and are not checked.
fn check_spec(spec: &CreateSpec) -> Result<(), Invalid> {
    if !spec.name.is_empty() {
        validate::container_name("name", &spec.name)?;
    }
    if !spec.hostname.is_empty() {
        validate::hostname("hostname", &spec.hostname)?;
    }
    validate::memory_mib("memory_mib", spec.memory_mib)?;
    validate::cpus("cpus", spec.cpus)?;
    if spec.stop_signal != 0 {
        validate::signal("stop_signal", spec.stop_signal)?;
    }
    validate::labels("labels", &spec.labels)?;
    for (i, p) in spec.policies.iter().enumerate() {
        validate::filter_keys(&format!("policies[{i}]"), &p.filter, CONTAINER_FIELDS)?;
    }
    check_task("task", &spec.task)?;
    if let Some(ep) = &spec.entrypoint {
        validate::args("entrypoint", ep)?;
    }
    Ok(())
}

fn task_element(c: &str, t: &str) -> String {
    format!("{c}/task/{t}")
}

/// A failed copy, said once: "Copy to/from <container>:<path>: <why>".
fn copy_error(id: &str, path: &str, e: BackendError) -> PortError {
    let why = match e {
        BackendError::Failed { message, .. } => message,
        other => other.to_string(),
    };
    PortError::invalid(
        id,
        format!("Copy at {}:{path}: {why}", &id[..id.len().min(12)]),
    )
}

/// Fills a creation from the image's config, as `docker run` does.
fn apply_image_config(spec: &mut CreateSpec, img: &crate::storage::model::ImageConfig) {
    let entrypoint = spec
        .entrypoint
        .take()
        .unwrap_or_else(|| img.entrypoint.clone());
    let cmd = if spec.task.args.is_empty() {
        img.cmd.clone()
    } else {
        std::mem::take(&mut spec.task.args)
    };
    spec.task.args = entrypoint.into_iter().chain(cmd).collect();
    let key = |e: &str| e.split('=').next().unwrap_or_default().to_string();
    let mut env: Vec<String> = img
        .env
        .iter()
        .filter(|e| !spec.task.env.iter().any(|t| key(t) == key(e)))
        .cloned()
        .collect();
    env.append(&mut spec.task.env);
    spec.task.env = env;
    if spec.task.working_dir.is_empty() {
        spec.task.working_dir.clone_from(&img.working_dir);
    }
    if spec.task.user.is_empty() {
        spec.task.user.clone_from(&img.user);
    }
    if spec.stop_signal == 0 && !img.stop_signal.is_empty() {
        let name = img.stop_signal.to_ascii_uppercase();
        let name = if name.starts_with("SIG") {
            name
        } else {
            format!("SIG{name}")
        };
        spec.stop_signal = img
            .stop_signal
            .parse::<i32>()
            .ok()
            .or_else(|| {
                name.parse::<nix::sys::signal::Signal>()
                    .ok()
                    .map(|s| s as i32)
            })
            .unwrap_or(0);
    }
}

/// A side effect a commit performs after its new state is stored.
enum Action {
    Start,
    Stop(StopOptions),
    Pause,
    Resume,
    Exec(Task),
    StopTask(String),
    /// Realise the network (devices, rules) after a change of endpoints.
    Network,
}

/// What the blocking half of a commit leaves to the async half.
enum Prepared {
    /// Nothing to do (the same creation committed again).
    Done(CommitResult),
    /// A new container, planned, not stored yet: the backend makes it first.
    Create {
        c: Container,
        results: BTreeMap<String, ElementResult>,
        actions: Vec<Action>,
    },
    /// An existing container, stored at `version`.
    Update {
        c: Container,
        version: u64,
        results: BTreeMap<String, ElementResult>,
        actions: Vec<Action>,
    },
}

impl PortLayer {
    pub fn new(store: Arc<Store>, key: HandleKey, backend: Arc<dyn Backend>) -> Arc<Self> {
        let events = Arc::new(Events::new(store.clone()));
        Self::with_storage(store, events, None, key, backend)
    }

    /// The port layer with its storage component (sharing `events`).
    pub fn with_storage(
        store: Arc<Store>,
        events: Arc<Events>,
        storage: Option<Arc<Storage>>,
        key: HandleKey,
        backend: Arc<dyn Backend>,
    ) -> Arc<Self> {
        let network = Arc::new(super::network::Network::new(store.clone(), events.clone()));
        let pl = Arc::new_cyclic(|me| Self {
            store,
            events,
            network,
            storage,
            key,
            backend: backend.clone(),
            dropped: AtomicU64::new(0),
            cancels: Default::default(),
            me: me.clone(),
            creating: Default::default(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        backend.subscribe(tx);
        tokio::spawn(pl.clone().follow_backend(rx));
        pl
    }

    /// Runs blocking port-layer work (the store, which fsyncs, and file I/O)
    /// on the blocking pool, so that a slow disk stalls only the request
    /// that needs it. The synchronous methods are for such threads; async
    /// code reaches them through here.
    pub async fn off<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PortLayer) -> Result<T, PortError> + Send + 'static,
    ) -> Result<T, PortError> {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| PortError::invalid("", "The port layer is shutting down"))?;
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(|e| PortError::invalid("", format!("Port layer work failed: {e}")))?
    }

    /// `off` for bookkeeping whose failure is already reported inside.
    async fn off_quiet(&self, f: impl FnOnce(&PortLayer) + Send + 'static) {
        let _ = self
            .off(move |pl| {
                f(pl);
                Ok(())
            })
            .await;
    }

    /// How many bookkeeping writes (events, operation ends, state fixes,
    /// error records) failed since this port layer started, for
    /// diagnostics: each is also logged, and recorded as a `bookkeeping`
    /// error when the store takes it.
    pub fn dropped_writes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A bookkeeping write that failed where the caller's request has
    /// already taken effect, so failing it would misreport: logged,
    /// counted, and recorded as an error if the store still can.
    fn lost(&self, element: &str, what: &str, e: impl std::fmt::Display) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let message = format!("{what}: {e}");
        tracing::warn!(element, "{message}");
        let rec = ErrorRecord {
            id: 0,
            time: now_ms(),
            kind: "bookkeeping".into(),
            element: element.into(),
            code: "BOOKKEEPING".into(),
            message,
        };
        if let Err(e) = self.store.record_error(&rec) {
            tracing::warn!(element, "recording that error: {e}");
        }
    }

    /// Records an error for diagnostics; a failure to is logged and counted.
    fn record_error(&self, kind: &str, element: &str, code: &str, message: &str) {
        let rec = ErrorRecord {
            id: 0,
            time: now_ms(),
            kind: kind.into(),
            element: element.into(),
            code: code.into(),
            message: message.into(),
        };
        if let Err(e) = self.store.record_error(&rec) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(element, "recording error {code} ({message}): {e}");
        }
    }

    /// Emits an event for a change already made; a failure is `lost`.
    fn emit(
        &self,
        component: &str,
        kind: &str,
        element: &str,
        labels: &BTreeMap<String, String>,
        detail: serde_json::Value,
    ) {
        if let Err(e) = self.events.emit(component, kind, element, labels, detail) {
            self.lost(element, &format!("Storing the {component} {kind} event"), e);
        }
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
    pub fn create(&self, mut spec: CreateSpec) -> Result<(String, String), PortError> {
        let id = new_id();
        if spec.image.is_empty() {
            return Err(PortError::invalid("image", "An image is required"));
        }
        check_spec(&spec)?;
        let mut image_id = String::new();
        if let Some(storage) = &self.storage {
            let img = storage.image(&spec.image)?;
            image_id.clone_from(&img.id);
            apply_image_config(&mut spec, &img.config);
        } else if let Some(ep) = spec.entrypoint.take() {
            spec.task.args = ep.into_iter().chain(spec.task.args).collect();
        }
        if spec.task.args.is_empty() {
            return Err(PortError::invalid(
                "task.args",
                "The primary task needs a command (the image has none)",
            ));
        }
        let mut mounts: Vec<VolumeMount> = Vec::new();
        for m in std::mem::take(&mut spec.mounts) {
            let m = self.check_mount(m, &[])?;
            if mounts.iter().any(|o| o.path == m.path) {
                return Err(PortError::invalid(
                    &m.path,
                    "Two volumes are mounted at this path",
                ));
            }
            mounts.push(m);
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
            image_id,
            mounts,
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

    /// Checks a volume mount: the volume exists, the path is a clean
    /// absolute path, and the policies apply to a volume at join (a
    /// `read-only` one makes the mount read-only).
    fn check_mount(
        &self,
        mut m: VolumeMount,
        policies: &[Policy],
    ) -> Result<VolumeMount, PortError> {
        let Some(storage) = &self.storage else {
            return Err(PortError::invalid(
                &m.volume,
                "This port layer has no storage component",
            ));
        };
        storage.volume(&m.volume)?;
        let clean = m.path.starts_with('/')
            && m.path != "/"
            && m.path
                .split('/')
                .skip(1)
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !clean {
            return Err(PortError::invalid(
                &m.path,
                "A volume's mount path must be absolute, not /, with no empty, . or .. parts",
            ));
        }
        for (i, p) in policies.iter().enumerate() {
            validate::filter_keys(&format!("policies[{i}]"), &p.filter, VOLUME_FIELDS)?;
            p.validate(Scope::Join, Target::Volume)
                .map_err(|source| PortError::Policy {
                    element: m.volume.clone(),
                    source,
                })?;
            if p.constraint == Constraint::ReadOnly {
                m.read_only = true;
            }
        }
        Ok(m)
    }

    /// Joins a volume to the container, mounted at `mount.path`.
    pub fn volume_join(
        &self,
        h: &str,
        mount: VolumeMount,
        policies: &[Policy],
    ) -> Result<String, PortError> {
        let mount = self.check_mount(mount, policies)?;
        self.push(h, Change::VolumeJoin { mount })
    }

    /// Removes the volume mounted at `path` from the container.
    pub fn volume_leave(&self, h: &str, path: &str) -> Result<String, PortError> {
        self.push(h, Change::VolumeLeave { path: path.into() })
    }

    pub fn task_join(&self, h: &str, task: Task) -> Result<String, PortError> {
        if task.id.is_empty() || task.args.is_empty() {
            return Err(PortError::invalid(
                "task",
                "A task needs an id and a command",
            ));
        }
        validate::task_id("task.id", &task.id)?;
        check_task("task", &task)?;
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
        self.change_state_with(h, target, None)
    }

    /// As [`Self::change_state`], with a stop's own signal and grace period
    /// (only for `stopped`).
    pub fn change_state_with(
        &self,
        h: &str,
        target: TargetState,
        stop: Option<StopOptions>,
    ) -> Result<String, PortError> {
        if let Some(o) = &stop {
            if target != TargetState::Stopped {
                return Err(PortError::invalid(
                    "stop_signal",
                    format!(
                        "A stop signal or timeout goes only with the target stopped, not {target:?}"
                    ),
                ));
            }
            if let Some(sig) = o.signal {
                validate::signal("stop_signal", sig)?;
            }
            if let Some(t) = o.timeout_seconds
                && t > validate::MAX_STOP_TIMEOUT_SECONDS
            {
                return Err(PortError::invalid(
                    "stop_timeout_seconds",
                    format!(
                        "The stop timeout is {t} s; at most {} s",
                        validate::MAX_STOP_TIMEOUT_SECONDS
                    ),
                ));
            }
        }
        self.push(h, Change::State { target, stop })
    }

    pub fn rename(&self, h: &str, name: &str) -> Result<String, PortError> {
        validate::container_name("name", name)?;
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

    /// Every container, hidden ones included.
    pub fn list_all(&self) -> Result<Vec<Container>, PortError> {
        self.store.containers()?.iter().map(to_container).collect()
    }

    /// Applies a handle's changes. Errors are for the commit as a whole
    /// (bad handle, conflict, invalid change); per-element outcomes of the
    /// side effects are in the result.
    pub async fn commit(&self, token: &str) -> Result<CommitResult, PortError> {
        let (data, _) = self.unseal(token)?;
        if data.base_version != 0 {
            return self.commit_unlocked(token).await;
        }
        // A creation: copies of the handle committed at once (a client's
        // retry racing its first try) queue here, and each later one finds
        // the container made and answers NOOP.
        let slot = self
            .creation_slots()
            .entry(data.container.clone())
            .or_default()
            .clone();
        let r = {
            let _turn = slot.lock().await;
            self.commit_unlocked(token).await
        };
        let mut slots = self.creation_slots();
        // Only ours and the map's: nobody else waits on it.
        if Arc::strong_count(&slot) == 2 {
            slots.remove(&data.container);
        }
        r
    }

    fn creation_slots(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.creating.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn commit_unlocked(&self, token: &str) -> Result<CommitResult, PortError> {
        let token = token.to_string();
        let again = token.clone();
        let (c, version, mut results, actions) = match self
            .off(move |pl| pl.prepare(&token))
            .await?
        {
            Prepared::Done(result) => return Ok(result),
            Prepared::Update {
                c,
                version,
                results,
                actions,
            } => (c, version, results, actions),
            Prepared::Create {
                mut c,
                mut results,
                actions,
            } => {
                let id = c.id.clone();
                let created = match self.backend.create(&c).await {
                    Ok(()) => {
                        let c = c.clone();
                        self.off(move |pl| {
                            Ok(pl.store.insert_container(&pl.record_with_network(&c)?)?)
                        })
                        .await
                    }
                    Err(e) => Err(PortError::invalid(&id, e.to_string())),
                };
                let v = match created {
                    Ok(v) => v,
                    Err(PortError::Store(StoreError::AlreadyExists { .. })) => {
                        // Another appliance sharing the store committed the
                        // same creation first: its files are the ones in
                        // use, so nothing is freed. Answered as a repeat.
                        return match self.off(move |pl| pl.prepare(&again)).await? {
                            Prepared::Done(result) => Ok(result),
                            _ => Err(PortError::invalid(
                                &id,
                                "The container was created meanwhile by another handle",
                            )),
                        };
                    }
                    Err(e) => {
                        // A taken name, or a half-made creation: free what the
                        // backend holds for it.
                        if let Err(re) = self.backend.remove(&id).await {
                            let re = re.to_string();
                            self.off_quiet(move |pl| pl.lost(&id, "Freeing a failed creation", re))
                                .await;
                        }
                        return Err(e);
                    }
                };
                c.version = v;
                results.insert(
                    id.clone(),
                    ElementResult {
                        status: Status::Success,
                        detail: "Created".into(),
                    },
                );
                let (labels, detail) = (
                    c.labels.clone(),
                    json!({ "name": c.name, "image": c.image }),
                );
                self.off_quiet(move |pl| pl.emit("exec", "create", &id, &labels, detail))
                    .await;
                (c, v, results, actions)
            }
        };
        let id = c.id.clone();
        for a in actions {
            self.apply(&id, a, &mut results).await;
        }
        for (el, r) in &results {
            tracing::info!(element = %el, status = ?r.status, "commit: {}", r.detail);
        }
        self.off(move |pl| {
            let c = pl.inspect(&id)?;
            Ok(CommitResult {
                version: c.version,
                handle: pl.seal(&id, c.version.max(version), &[])?,
                results,
            })
        })
        .await
    }

    /// The blocking first half of a commit: checks the handle against the
    /// store, plans every change and, for an existing container, stores the
    /// result (of racing commits exactly one gets past that write).
    fn prepare(&self, token: &str) -> Result<Prepared, PortError> {
        let (data, changes) = self.unseal(token)?;
        let id = data.container.clone();
        let mut results = BTreeMap::new();
        let mut actions = Vec::new();

        if data.base_version == 0 {
            let Some(Change::Create { container }) = changes.first() else {
                return Err(PortError::invalid(
                    &id,
                    "A handle at version 0 must start with a creation",
                ));
            };
            let digest = changes_digest(&changes)?;
            match self.store.container(&id) {
                Ok(rec) if to_container(&rec)?.created_by == digest => {
                    // The same creation handle committed again: every
                    // element it names is as it made them.
                    results.insert(
                        id.clone(),
                        ElementResult {
                            status: Status::Noop,
                            detail: "Already created by this handle".into(),
                        },
                    );
                    for ch in &changes[1..] {
                        if let Change::TaskJoin { task } = ch {
                            results.insert(
                                task_element(&id, &task.id),
                                ElementResult {
                                    status: Status::Noop,
                                    detail: "Already committed by this handle".into(),
                                },
                            );
                        }
                    }
                    return Ok(Prepared::Done(CommitResult {
                        version: rec.version,
                        handle: self.seal(&id, rec.version, &[])?,
                        results,
                    }));
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
            c.created_by = digest;
            // The rest of the handle is planned before anything exists, so
            // a refused change (a placement policy, say) creates nothing.
            // The container is stored once, with all the changes.
            for ch in &changes[1..] {
                self.plan(&mut c, ch, &mut results, &mut actions)?;
            }
            return Ok(Prepared::Create {
                c,
                results,
                actions,
            });
        }
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
        let mut c = to_container(&rec)?;
        for ch in &changes {
            self.plan(&mut c, ch, &mut results, &mut actions)?;
        }
        let version = if actions.is_empty() && changes.is_empty() {
            rec.version
        } else {
            self.store
                .update_container(&self.record_with_network(&c)?, rec.version)?
        };
        Ok(Prepared::Update {
            c,
            version,
            results,
            actions,
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
            Change::VolumeJoin { mount } => {
                let el = format!("{id}/volume/{}", mount.volume);
                if let Some(m) = c.mounts.iter().find(|m| m.path == mount.path) {
                    if m == mount {
                        results.insert(el, noop("Volume already joined"));
                        return Ok(());
                    }
                    return Err(PortError::invalid(
                        &el,
                        format!("Volume {} is already mounted at {}", m.volume, m.path),
                    ));
                }
                if matches!(c.state, PowerState::Running | PowerState::Paused) {
                    return Err(PortError::invalid(
                        &el,
                        "Volumes join stopped containers only: stop the container first",
                    ));
                }
                c.mounts.push(mount.clone());
                results.insert(el, ok("Joined"));
            }
            Change::NetworkJoin { .. }
            | Change::NetworkBind { .. }
            | Change::NetworkUnbind { .. }
            | Change::NetworkLeave { .. } => {
                if self.network.plan(c, ch, results)?
                    && !actions.iter().any(|a| matches!(a, Action::Network))
                {
                    // Before a start the same handle carries.
                    actions.insert(0, Action::Network);
                }
            }
            Change::VolumeLeave { path } => {
                let Some(i) = c.mounts.iter().position(|m| m.path == *path) else {
                    results.insert(format!("{id}/volume"), noop("No volume at this path"));
                    return Ok(());
                };
                let el = format!("{id}/volume/{}", c.mounts[i].volume);
                if matches!(c.state, PowerState::Running | PowerState::Paused) {
                    return Err(PortError::invalid(
                        &el,
                        "Volumes leave stopped containers only: stop the container first",
                    ));
                }
                c.mounts.remove(i);
                results.insert(el, ok("Left"));
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
            Change::State { target, stop } => {
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
                        // Placement: affinity and anti-affinity against the
                        // containers running on this host.
                        let peers: Vec<Container> = self
                            .list_all()?
                            .into_iter()
                            .filter(|p| p.id != c.id && matches!(p.state, P::Running | P::Paused))
                            .collect();
                        let refs: Vec<&dyn Filterable> =
                            peers.iter().map(|p| p as &dyn Filterable).collect();
                        policy::check_placement(&c.policies, &refs).map_err(|source| {
                            PortError::Policy {
                                element: el.clone(),
                                source,
                            }
                        })?;
                        // A volume's disk is one filesystem: one writer, or
                        // only readers, at a time.
                        for m in &c.mounts {
                            for p in &peers {
                                if let Some(o) = p.mounts.iter().find(|o| o.volume == m.volume)
                                    && !(m.read_only && o.read_only)
                                {
                                    return Err(PortError::invalid(
                                        &format!("{}/volume/{}", c.id, m.volume),
                                        format!(
                                            "Volume {} is in use by running container {} ({}); \
                                             it can be shared only read-only by all",
                                            m.volume,
                                            p.name,
                                            &p.id[..12.min(p.id.len())]
                                        ),
                                    ));
                                }
                            }
                        }
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
                        if c.endpoints.values().any(|e| e.bound)
                            && !actions.iter().any(|a| matches!(a, Action::Network))
                        {
                            // Its devices are made before its VM starts.
                            actions.push(Action::Network);
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
                        actions.push(Action::Stop(stop.unwrap_or_default()));
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
        if matches!(a, Action::Network) {
            if let Err(e) = self.apply_network().await {
                let el = super::network::endpoint_element(id, "*");
                let msg = e.to_string();
                self.off_quiet(move |pl| pl.record_error("backend", &el, "BACKEND", &msg))
                    .await;
                results.insert(
                    super::network::endpoint_element(id, "*"),
                    ElementResult {
                        status: Status::Error,
                        detail: format!("Realising the network: {e}"),
                    },
                );
            }
            return;
        }
        let inspected = {
            let id = id.to_string();
            self.off(move |pl| pl.inspect(&id)).await
        };
        let c = match inspected {
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
        let (kind, el) = match &a {
            Action::Start => ("start", id.to_string()),
            Action::Stop(_) => ("stop", id.to_string()),
            Action::Pause => ("pause", id.to_string()),
            Action::Resume => ("resume", id.to_string()),
            Action::Exec(t) => ("exec", task_element(id, &t.id)),
            Action::StopTask(t) => ("stop-task", task_element(id, t)),
            Action::Network => ("network", id.to_string()),
        };
        let timeout = Duration::from_secs(u64::from(c.stop_timeout_seconds));
        let work = async {
            match a {
                Action::Start => self.backend.start(&c).await,
                Action::Stop(o) => {
                    let timeout = o
                        .timeout_seconds
                        .map_or(timeout, |t| Duration::from_secs(u64::from(t)));
                    let signal = o.signal.unwrap_or(c.stop_signal);
                    self.backend.stop(id, signal, timeout).await
                }
                Action::Pause => self.backend.pause(id).await,
                Action::Resume => self.backend.resume(id).await,
                Action::Exec(t) => self.backend.exec(id, &t).await,
                Action::StopTask(t) => self.backend.stop_task(id, &t, timeout).await,
                Action::Network => Ok(()),
            }
        };
        let r = self.tracked(kind, &el, work).await;
        let labels = c.labels.clone();
        match r {
            Ok(()) => {
                let el = el.clone();
                self.off_quiet(move |pl| pl.emit("exec", kind, &el, &labels, json!({})))
                    .await;
            }
            Err(e) => {
                let msg = e.to_string();
                let (id, el2, msg2) = (id.to_string(), el.clone(), msg.clone());
                let detail = self
                    .off(move |pl| Ok(pl.record_backend_failure(&id, &el2, &labels, &msg2)))
                    .await
                    .unwrap_or_else(|e| format!("{msg} ({e})"));
                results.insert(
                    el.clone(),
                    ElementResult {
                        status: Status::Error,
                        detail,
                    },
                );
            }
        }
    }

    /// Bookkeeping of a failed backend operation: the error, its event, and
    /// (for the container itself) a start that failed is not running.
    /// Returns the detail for the commit result.
    fn record_backend_failure(
        &self,
        id: &str,
        el: &str,
        labels: &BTreeMap<String, String>,
        msg: &str,
    ) -> String {
        self.record_error("backend", el, "BACKEND", msg);
        self.emit("exec", "error", el, labels, json!({ "error": msg }));
        if el != id {
            return msg.to_string();
        }
        let fixed = self.update(id, |c| {
            if c.state == PowerState::Running && c.started_at > 0 && c.exit_code.is_none() {
                c.state = PowerState::Exited;
                c.error = msg.to_string();
                c.finished_at = now_ms();
            }
        });
        match fixed {
            Ok(_) => msg.to_string(),
            Err(e) => {
                let what = "Marking the container exited after its backend failed";
                let detail = format!("{msg} ({what}: {e})");
                self.lost(id, what, e);
                detail
            }
        }
    }

    /// Runs one backend operation as an operation in progress: listed in
    /// diagnostics while it runs, and cancellable by id (from any replica
    /// sharing the store). A cancelled operation's future is dropped; the
    /// backend cleans up what it had started.
    async fn tracked<F>(&self, kind: &str, element: &str, work: F) -> Result<(), BackendError>
    where
        F: std::future::Future<Output = Result<(), BackendError>>,
    {
        use crate::store::{OpState, Operation};
        let op = Operation {
            id: new_id()[..16].to_string(),
            kind: kind.into(),
            element: element.into(),
            started_at: now_ms(),
            finished_at: None,
            owner: format!("pid {}", std::process::id()),
            state: OpState::Running,
            detail: String::new(),
            cancel_requested: false,
        };
        {
            let (op, element) = (op.clone(), element.to_string());
            self.off_quiet(move |pl| {
                if let Err(e) = pl.store.op_start(&op) {
                    let what = format!("Recording operation {} ({})", op.id, op.kind);
                    pl.lost(&element, &what, e);
                }
            })
            .await;
        }
        let here = Arc::new(tokio::sync::Notify::new());
        self.cancel_slots().insert(op.id.clone(), here.clone());
        let cancelled = async {
            let from_store = async {
                loop {
                    tokio::time::sleep(CANCEL_POLL).await;
                    let (store, id) = (self.store.clone(), op.id.clone());
                    let asked = tokio::task::spawn_blocking(move || store.op_cancel_requested(&id))
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or(false);
                    if asked {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = here.notified() => {}
                _ = from_store => {}
            }
        };
        let (r, state) = tokio::select! {
            r = work => {
                let state = if r.is_ok() { OpState::Done } else { OpState::Failed };
                (r, state)
            }
            _ = cancelled => (
                Err(BackendError::Failed {
                    id: element.into(),
                    message: format!("Operation {} ({kind}) was cancelled", op.id),
                }),
                OpState::Cancelled,
            ),
        };
        self.cancel_slots().remove(&op.id);
        let detail = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        {
            let (id, kind, element) = (op.id.clone(), op.kind.clone(), element.to_string());
            self.off_quiet(move |pl| {
                if let Err(e) = pl.store.op_finish(&id, state, &detail) {
                    let what = format!("Finishing operation {id} ({kind}) as {state}");
                    pl.lost(&element, &what, e);
                }
            })
            .await;
        }
        r
    }

    fn cancel_slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Notify>>> {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for an operation in progress to be cancelled: at once if it
    /// runs in this process, within `CANCEL_POLL` if it runs in another
    /// replica sharing the store. Blocks on the store: call it from a
    /// blocking thread.
    pub fn cancel_operation(&self, id: &str) -> Result<crate::store::Operation, PortError> {
        self.store.op_request_cancel(id)?;
        if let Some(n) = self.cancel_slots().get(id) {
            n.notify_one();
        }
        Ok(self.store.op(id)?)
    }

    /// At start-up: operations the store says are running but whose
    /// appliance process is gone (killed, crashed) end as failed, saying
    /// so, instead of showing "running" forever. An operation of another
    /// live `appliance serve` sharing the store is left alone. Returns how
    /// many were ended.
    pub fn fail_orphaned_operations(&self) -> Result<usize, PortError> {
        use crate::store::OpState;
        let me = std::process::id();
        let mut n = 0;
        for op in self.store.ops(true)? {
            let Some(pid) = op
                .owner
                .strip_prefix("pid ")
                .and_then(|p| p.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let alive = pid != me
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"serve"));
            if alive {
                continue;
            }
            let detail = format!("The appliance that ran it (pid {pid}) stopped before it ended");
            match self.store.op_finish(&op.id, OpState::Failed, &detail) {
                Ok(()) => n += 1,
                // Its owner finished it meanwhile.
                Err(StoreError::AlreadyFinished { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
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
            // In order, one at a time: a task's exit is stored before the
            // container's.
            self.off_quiet(move |pl| pl.record_backend_event(ev)).await;
        }
    }

    /// Stores what the backend reported (blocking).
    fn record_backend_event(&self, ev: BackendEvent) {
        {
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
                        // Its tasks died with it, with no exit code.
                        for t in c.tasks.values_mut() {
                            if t.state == "running" {
                                t.state = "exited".into();
                                if !t.primary {
                                    t.bound = false;
                                }
                            }
                        }
                    })
                    .and_then(|c| {
                        self.record_error("vm-crash", container, "VM_CRASH", error);
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
                if let PortError::Store(StoreError::NotFound { .. }) = e {
                    // Removed meanwhile: nothing left to record it on.
                    tracing::debug!("backend event {ev:?} for a removed container");
                    return;
                }
                let element = match &ev {
                    BackendEvent::TaskExited {
                        container, task, ..
                    } => task_element(container, task),
                    BackendEvent::Exited { container, .. }
                    | BackendEvent::Crashed { container, .. } => container.clone(),
                };
                self.lost(&element, &format!("Recording backend event {ev:?}"), e);
            }
        }
    }

    /// Waits until the task (the primary task by default) has exited;
    /// returns its exit code.
    pub async fn wait(&self, id: &str, task: Option<&str>) -> Result<Option<i32>, PortError> {
        let mut rx = self.events.subscribe();
        let c = self.inspect_off(id).await?;
        let task = task.unwrap_or(&c.id).to_string();
        loop {
            let c = self.inspect_off(&c.id).await?;
            let t = c
                .tasks
                .get(&task)
                .ok_or_else(|| PortError::invalid(&task_element(&c.id, &task), "No such task"))?;
            // Every task of an exited container is over, whatever it said
            // last (a VM that died took its tasks with it).
            if t.state == "exited"
                || (c.state == PowerState::Exited && (t.primary || t.state != "created"))
            {
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
        let mut c = self.inspect_off(id).await?;
        // A container whose primary task has exited is powering off: its
        // VM is flushing and unmounting its disks. Killing it now could
        // lose what was just written to a volume, so give it time.
        let primary_done = c.tasks.get(&c.id).is_some_and(|t| t.state == "exited");
        if c.state == PowerState::Running && primary_done {
            let mut rx = self.events.subscribe();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while c.state == PowerState::Running && tokio::time::Instant::now() < deadline {
                let _ = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
                c = self.inspect_off(&c.id).await?;
            }
        }
        if matches!(c.state, PowerState::Running | PowerState::Paused) {
            if !force {
                return Err(PortError::invalid(
                    &c.id,
                    "The container is running: stop it first, or force",
                ));
            }
            // SIGKILL in the guest (the tether then syncs the disks), with
            // a short grace: the backend kills the VM past it.
            if let Err(e) = self.backend.stop(&c.id, 9, Duration::from_secs(1)).await {
                tracing::warn!("container {}: {e}; removing it all the same", c.id);
            }
        }
        self.backend
            .remove(&c.id)
            .await
            .map_err(|e| PortError::invalid(&c.id, e.to_string()))?;
        let networked = c.endpoints.values().any(|e| e.bound);
        let id = c.id.clone();
        self.off(move |pl| {
            pl.store.delete_container(&c.id, None)?;
            pl.events
                .emit("exec", "remove", &c.id, &c.labels, json!({}))?;
            Ok(())
        })
        .await?;
        if networked {
            // Its taps, rules and names go with it; the container is gone
            // whatever happens here, and the next apply converges.
            if let Err(e) = self.apply_network().await {
                tracing::warn!("container {id}: removing its network devices: {e}");
                let msg = e.to_string();
                self.off_quiet(move |pl| pl.record_error("backend", &id, "BACKEND", &msg))
                    .await;
            }
        }
        Ok(())
    }

    /// Has the backend realise every scope and bound endpoint as the store
    /// has them (after a change, and at start-up).
    pub async fn apply_network(&self) -> Result<(), PortError> {
        let view = self.off(|pl| Ok(pl.network.view(&pl.list_all()?)?)).await?;
        self.backend
            .apply_network(&view)
            .await
            .map_err(|e| PortError::invalid("network", e.to_string()))
    }

    /// The record of `c` with the leases and host ports its endpoints ask
    /// for: a commit writes them with the container, in one transaction.
    fn record_with_network(&self, c: &Container) -> Result<ContainerRecord, PortError> {
        let mut rec = to_record(c)?;
        let (leases, ports) = self.network.wants(c)?;
        rec.leases = Some(leases);
        rec.host_ports = Some(ports);
        Ok(rec)
    }

    pub fn network_join(&self, h: &str, endpoint: Endpoint) -> Result<String, PortError> {
        if endpoint.scope.is_empty() {
            return Err(PortError::invalid("scope", "A scope to join is required"));
        }
        self.push(h, Change::NetworkJoin { endpoint })
    }

    pub fn network_bind(&self, h: &str, scope: &str) -> Result<String, PortError> {
        self.push(
            h,
            Change::NetworkBind {
                scope: scope.into(),
            },
        )
    }

    pub fn network_unbind(&self, h: &str, scope: &str) -> Result<String, PortError> {
        self.push(
            h,
            Change::NetworkUnbind {
                scope: scope.into(),
            },
        )
    }

    pub fn network_leave(&self, h: &str, scope: &str) -> Result<String, PortError> {
        self.push(
            h,
            Change::NetworkLeave {
                scope: scope.into(),
            },
        )
    }

    /// `inspect` from async code.
    pub async fn inspect_off(&self, id: &str) -> Result<Container, PortError> {
        let id = id.to_string();
        self.off(move |pl| pl.inspect(&id)).await
    }

    async fn archive_target_off(&self, id: &str, path: &str) -> Result<Container, PortError> {
        let (id, path) = (id.to_string(), path.to_string());
        self.off(move |pl| pl.archive_target(&id, &path)).await
    }

    /// Checks an archive path and the container's state for a copy.
    fn archive_target(&self, id: &str, path: &str) -> Result<Container, PortError> {
        let c = self.inspect(id)?;
        if !path.starts_with('/') || path.split('/').any(|p| p == "..") {
            return Err(PortError::invalid(
                "path",
                format!("An archive path must be absolute, with no .. parts: {path:?}"),
            ));
        }
        if c.state == PowerState::Paused {
            return Err(PortError::invalid(
                &c.id,
                "The container is paused: unpause it to copy files",
            ));
        }
        Ok(c)
    }

    /// A tar stream of `path` in the container (running or not).
    pub async fn archive_get(
        &self,
        id: &str,
        path: &str,
    ) -> Result<crate::backend::ArchiveRead, PortError> {
        let c = self.archive_target_off(id, path).await?;
        let mut out = None;
        let work = async {
            out = Some(self.backend.archive_get(&c, path).await?);
            Ok(())
        };
        self.tracked("archive-get", &c.id, work)
            .await
            .map_err(|e| copy_error(&c.id, path, e))?;
        out.ok_or_else(|| PortError::invalid(&c.id, "The copy was cancelled"))
    }

    /// Unpacks a tar stream into the directory `path` of the container.
    pub async fn archive_put(
        &self,
        id: &str,
        path: &str,
        tar: mpsc::Receiver<bytes::Bytes>,
    ) -> Result<crate::backend::ArchiveSummary, PortError> {
        let c = self.archive_target_off(id, path).await?;
        let mut out = None;
        let work = async {
            out = Some(self.backend.archive_put(&c, path, tar).await?);
            Ok(())
        };
        self.tracked("archive-put", &c.id, work)
            .await
            .map_err(|e| copy_error(&c.id, path, e))?;
        let summary = out.ok_or_else(|| PortError::invalid(&c.id, "The copy was cancelled"))?;
        let detail = json!({ "path": path, "entries": summary.entries });
        self.off_quiet(move |pl| pl.emit("storage", "archive-put", &c.id, &c.labels, detail))
            .await;
        Ok(summary)
    }

    /// Attaches to a task's live streams (the primary by default).
    pub async fn attach(
        &self,
        id: &str,
        task: Option<&str>,
        stdin: bool,
        output: bool,
    ) -> Result<crate::backend::AttachStream, PortError> {
        let c = self.inspect_off(id).await?;
        let task = task.unwrap_or(&c.id).to_string();
        self.backend
            .attach(&c.id, &task, stdin, output)
            .await
            .map_err(|e| PortError::invalid(&task_element(&c.id, &task), e.to_string()))
    }

    /// The host log of a task (the primary by default), if the backend
    /// keeps one.
    pub fn log_path(
        &self,
        id: &str,
        task: Option<&str>,
    ) -> Result<Option<std::path::PathBuf>, PortError> {
        let c = self.inspect(id)?;
        let task = task.unwrap_or(&c.id);
        Ok(self.backend.log_path(&c.id, task))
    }

    /// Signals a task (the primary by default).
    pub async fn signal(&self, id: &str, task: Option<&str>, signal: i32) -> Result<(), PortError> {
        validate::signal("signal", signal)?;
        let c = self.inspect_off(id).await?;
        let task = task.unwrap_or(&c.id).to_string();
        self.backend
            .signal(&c.id, &task, signal)
            .await
            .map_err(|e| PortError::invalid(&task_element(&c.id, &task), e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeBackend;

    #[tokio::test]
    async fn operations_of_a_gone_appliance_end_as_failed_at_start_up() {
        use crate::store::{OpState, Operation};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
        let op = |id: &str, owner: &str| Operation {
            id: id.into(),
            kind: "start".into(),
            element: "c".into(),
            started_at: 1,
            finished_at: None,
            owner: owner.into(),
            state: OpState::Running,
            detail: String::new(),
            cancel_requested: false,
        };
        // A pid no process has, this very process (an earlier run's pid
        // reused), and an owner that is not a pid.
        store.op_start(&op("gone", "pid 4000000000")).unwrap();
        store
            .op_start(&op("reused", &format!("pid {}", std::process::id())))
            .unwrap();
        store.op_start(&op("other", "replica-b")).unwrap();
        let pl = layer(store.clone(), Arc::new(FakeBackend::default()));
        assert_eq!(pl.fail_orphaned_operations().unwrap(), 2);
        for id in ["gone", "reused"] {
            let o = store.op(id).unwrap();
            assert_eq!(o.state, OpState::Failed, "{id}");
            assert!(o.detail.contains("stopped before it ended"), "{}", o.detail);
        }
        assert_eq!(store.op("other").unwrap().state, OpState::Running);
        assert_eq!(pl.fail_orphaned_operations().unwrap(), 0);
    }

    fn layer(store: Arc<Store>, backend: Arc<FakeBackend>) -> Arc<PortLayer> {
        PortLayer::new(store, HandleKey::from_bytes([7; 32]), backend)
    }

    fn spec(name: &str) -> CreateSpec {
        CreateSpec {
            name: name.into(),
            image: "busybox".into(),
            task: Task {
                args: vec!["sleep".into(), "1000".into()],
                ..Default::default()
            },
            ..Default::default()
        }
    }

    async fn running(pl: &PortLayer, name: &str) -> String {
        let (id, h) = pl.create(spec(name)).unwrap();
        let h = pl.commit(&h).await.unwrap().handle;
        let h = pl.change_state(&h, TargetState::Running).unwrap();
        let r = pl.commit(&h).await.unwrap();
        assert_eq!(r.results[&id].status, Status::Success);
        id
    }

    #[tokio::test]
    async fn a_stop_may_carry_its_own_signal_and_grace_period() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(store, fake.clone());
        let calls = |fake: &FakeBackend| fake.calls.lock().unwrap().clone();
        // The container's own: SIGTERM within 10 s.
        let id = running(&pl, "a").await;
        pl.commit(
            &pl.change_state(&pl.get_handle(&id).unwrap(), TargetState::Stopped)
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(calls(&fake).contains(&format!("stop {id} signal 15 within 10s")));
        // This stop's: SIGINT, at once.
        let id = running(&pl, "b").await;
        let stop = StopOptions {
            signal: Some(2),
            timeout_seconds: Some(0),
        };
        let h = pl
            .change_state_with(
                &pl.get_handle(&id).unwrap(),
                TargetState::Stopped,
                Some(stop),
            )
            .unwrap();
        pl.commit(&h).await.unwrap();
        assert!(calls(&fake).contains(&format!("stop {id} signal 2 within 0s")));
        assert_eq!(pl.wait(&id, None).await.unwrap(), Some(128 + 2));
        // Only with `stopped`, a real signal, a bounded wait; each names its field.
        let id = running(&pl, "c").await;
        let h = pl.get_handle(&id).unwrap();
        for (target, o, field) in [
            (
                TargetState::Paused,
                StopOptions {
                    signal: Some(2),
                    timeout_seconds: None,
                },
                "stop_signal",
            ),
            (
                TargetState::Stopped,
                StopOptions {
                    signal: Some(65),
                    timeout_seconds: None,
                },
                "stop_signal",
            ),
            (
                TargetState::Stopped,
                StopOptions {
                    signal: None,
                    timeout_seconds: Some(validate::MAX_STOP_TIMEOUT_SECONDS + 1),
                },
                "stop_timeout_seconds",
            ),
        ] {
            let e = pl.change_state_with(&h, target, Some(o)).unwrap_err();
            assert_eq!(e.element(), field, "{e}");
        }
        assert_eq!(pl.inspect(&id).unwrap().state, PowerState::Running);
    }

    #[tokio::test]
    async fn nothing_changes_until_commit_and_a_second_commit_is_a_noop() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(store.clone(), fake.clone());
        let (id, h) = pl.create(spec("web")).unwrap();
        assert!(pl.inspect(&id).is_err(), "created before commit");
        let r = pl.commit(&h).await.unwrap();
        assert_eq!(r.results[&id].status, Status::Success);
        assert_eq!(pl.inspect("web").unwrap().state, PowerState::Created);
        let again = pl.commit(&h).await.unwrap();
        assert_eq!(again.results[&id].status, Status::Noop);

        let h = pl.change_state(&r.handle, TargetState::Running).unwrap();
        assert_eq!(
            pl.inspect(&id).unwrap().state,
            PowerState::Created,
            "state changed before commit"
        );
        let r = pl.commit(&h).await.unwrap();
        assert_eq!(r.results[&id].status, Status::Success);
        assert!(fake.is_running(&id));
        // Starting a running container is a NOOP, with a fresh handle.
        let h = pl.change_state(&r.handle, TargetState::Running).unwrap();
        let r = pl.commit(&h).await.unwrap();
        assert_eq!(r.results[&id].status, Status::Noop);
        assert_eq!(
            fake.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.starts_with("start"))
                .count(),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn copies_of_one_creation_handle_committed_at_once_all_succeed_or_noop() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(store.clone(), fake.clone());
        let (id, h0) = pl.create(spec("once")).unwrap();
        let h = pl.change_state(&h0, TargetState::Running).unwrap();
        let commits = (0..20).map(|_| {
            let (pl, h) = (pl.clone(), h.clone());
            tokio::spawn(async move { pl.commit(&h).await })
        });
        let mut statuses = Vec::new();
        for c in commits {
            let r = c
                .await
                .unwrap()
                .expect("every copy is answered with a result");
            statuses.push(r.results[&id].status);
        }
        let wins = statuses.iter().filter(|s| **s == Status::Success).count();
        let noops = statuses.iter().filter(|s| **s == Status::Noop).count();
        assert_eq!((wins, noops), (1, 19), "{statuses:?}");
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("create")).count(),
            1,
            "{calls:?}"
        );
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("start")).count(),
            1,
            "{calls:?}"
        );
        assert!(fake.is_running(&id));
        // Another creation handle of the same container (without the
        // start) is not a copy: a conflict.
        let e = pl.commit(&h0).await.unwrap_err();
        assert!(
            matches!(e, PortError::Store(StoreError::Conflict { .. })),
            "{e}"
        );
        assert!(
            pl.creation_slots().is_empty(),
            "the creation slots were not freed"
        );
    }

    #[tokio::test]
    async fn waiting_on_an_exec_ends_when_the_vm_dies_under_it() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(store, fake.clone());
        let id = running(&pl, "dies").await;
        let h = pl.get_handle(&id).unwrap();
        let task = Task {
            id: "t1".into(),
            args: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        };
        let h = pl.task_join(&h, task).unwrap();
        let h = pl.task_bind(&h, "t1").unwrap();
        pl.commit(&h).await.unwrap();
        let waiter = {
            let (pl, id) = (pl.clone(), id.clone());
            tokio::spawn(async move { pl.wait(&id, Some("t1")).await })
        };
        fake.crash(&id);
        let code = tokio::time::timeout(Duration::from_secs(30), waiter)
            .await
            .expect("wait did not end when the VM died")
            .unwrap()
            .unwrap();
        assert_eq!(code, None);
        let c = pl.inspect(&id).unwrap();
        assert_eq!(c.tasks["t1"].state, "exited");
        assert_eq!(c.state, PowerState::Exited);
    }

    #[tokio::test]
    async fn endpoints_join_bind_lease_and_leave_through_handles() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(store.clone(), fake.clone());
        pl.network.ensure_default().unwrap();
        let net = pl
            .network
            .create_scope(&super::super::network::ScopeSpec {
                name: "gibson".into(),
                subnet: "10.99.0.0/29".into(),
                ..Default::default()
            })
            .unwrap();
        let join = |h: &str, name: &str| {
            pl.network_join(
                h,
                Endpoint {
                    scope: name.into(),
                    aliases: vec!["cookie".into()],
                    ..Default::default()
                },
            )
            .unwrap()
        };
        // The seed's AddContainerToNetwork: get a handle, join, bind, commit.
        let (a, h) = pl.create(spec("cookie_monster")).unwrap();
        pl.commit(&h).await.unwrap();
        let h = pl.get_handle("cookie_monster").unwrap();
        let h = join(&h, "gibson");
        let h = pl.network_bind(&h, "gibson").unwrap();
        assert!(
            pl.inspect(&a).unwrap().endpoints.is_empty(),
            "joined before commit"
        );
        let r = pl.commit(&h).await.unwrap();
        let el = format!("{a}/network/gibson");
        assert_eq!(r.results[&el].status, Status::Success, "{:?}", r.results);
        let c = pl.inspect(&a).unwrap();
        let e = &c.endpoints["gibson"];
        assert_eq!(e.address, "10.99.0.2/29");
        assert_eq!(e.gateway, net.gateway);
        assert!(e.mac.starts_with("02:"));
        // A started container's devices are realised first.
        let r = pl
            .commit(&pl.change_state(&r.handle, TargetState::Running).unwrap())
            .await
            .unwrap();
        assert_eq!(r.results[&a].status, Status::Success);
        let calls = fake.calls.lock().unwrap().clone();
        let net_call = calls.iter().position(|c| c.starts_with("apply_network"));
        let start_call = calls.iter().position(|c| c.starts_with("start"));
        assert!(net_call.is_some() && net_call < start_call, "{calls:?}");
        // A running container's NICs cannot change: an ERROR for it.
        let h = pl.network_leave(&r.handle, "gibson").unwrap();
        let r = pl.commit(&h).await.unwrap();
        assert_eq!(r.results[&el].status, Status::Error);
        assert!(r.results[&el].detail.contains("stop the container first"));
        assert!(pl.inspect(&a).unwrap().endpoints.contains_key("gibson"));
        // Five addresses: .2 to .6 (.1 is the gateway); the fifth is the
        // last, the sixth exhausts the range, naming the scope.
        for i in 0..4 {
            let (_, h) = pl.create(spec(&format!("m{i}"))).unwrap();
            let h = pl.network_bind(&join(&h, "gibson"), "gibson").unwrap();
            pl.commit(&h).await.unwrap();
        }
        let (_, h) = pl.create(spec("one-too-many")).unwrap();
        let h = pl.network_bind(&join(&h, "gibson"), "gibson").unwrap();
        let e = pl.commit(&h).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "Scope gibson has no free address in its range 10.99.0.1 to 10.99.0.6"
        );
        assert!(pl.inspect("one-too-many").is_err());
        // The scope is in use.
        let e = pl.network.remove_scope("gibson").unwrap_err();
        assert!(
            e.to_string().contains("in use by container cookie_monster"),
            "{e}"
        );
        // Removal releases the lease.
        pl.remove("m0", true).await.unwrap();
        let (_, h) = pl.create(spec("one-more")).unwrap();
        let h = pl.network_bind(&join(&h, "gibson"), "gibson").unwrap();
        pl.commit(&h).await.unwrap();
        assert_eq!(
            pl.inspect("one-more").unwrap().endpoints["gibson"].address,
            "10.99.0.3/29"
        );
    }

    #[tokio::test]
    async fn racing_commits_one_wins_the_rest_conflict_naming_the_version() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let pl = layer(store, Arc::new(FakeBackend::default()));
        let (id, h) = pl.create(spec("c")).unwrap();
        let base = pl.commit(&h).await.unwrap().handle;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let h = pl.rename(&base, &format!("name{i}")).unwrap();
            let pl = pl.clone();
            tasks.push(tokio::spawn(async move { pl.commit(&h).await }));
        }
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => wins += 1,
                Err(PortError::Store(StoreError::Conflict {
                    current,
                    base,
                    id: cid,
                    ..
                })) => {
                    assert_eq!((base, current, cid.as_str()), (1, 2, id.as_str()));
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(wins, 1);
        assert_eq!(pl.inspect(&id).unwrap().version, 2);
    }

    #[tokio::test]
    async fn handles_survive_a_restart_and_forgeries_fail() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let h = {
            let pl = layer(
                Arc::new(Store::open(&db).unwrap()),
                Arc::new(FakeBackend::default()),
            );
            let (_, h) = pl.create(spec("keep")).unwrap();
            let h = pl.commit(&h).await.unwrap().handle;
            pl.rename(&h, "renamed").unwrap()
        };
        // Another process (same state, same key) commits it.
        let pl = layer(
            Arc::new(Store::open(&db).unwrap()),
            Arc::new(FakeBackend::default()),
        );
        pl.commit(&h).await.unwrap();
        assert_eq!(pl.inspect("renamed").unwrap().name, "renamed");
        let mut forged = h.clone();
        forged.replace_range(10..11, if &h[10..11] == "A" { "B" } else { "A" });
        assert!(matches!(
            pl.commit(&forged).await,
            Err(PortError::Handle(_))
        ));
        let other = PortLayer::new(
            Arc::new(Store::open(&db).unwrap()),
            HandleKey::from_bytes([8; 32]),
            Arc::new(FakeBackend::default()),
        );
        assert!(matches!(other.commit(&h).await, Err(PortError::Handle(_))));
    }

    #[tokio::test]
    async fn exec_tasks_join_bind_unbind_leave() {
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(Arc::new(Store::open_in_memory().unwrap()), fake.clone());
        let id = running(&pl, "box").await;
        let task = Task {
            id: "ex1".into(),
            args: vec!["ls".into()],
            ..Default::default()
        };
        let h = pl.get_handle(&id).unwrap();
        let h = pl.task_join(&h, task).unwrap();
        let h = pl.task_bind(&h, "ex1").unwrap();
        let r = pl.commit(&h).await.unwrap();
        let el = format!("{id}/task/ex1");
        assert_eq!(r.results[&el].status, Status::Success, "{r:?}");
        assert!(
            fake.calls
                .lock()
                .unwrap()
                .contains(&format!("exec {id} ex1"))
        );
        // The backend reports the exit; the task shows it.
        fake.exit_task(&id, "ex1", 3);
        assert_eq!(pl.wait(&id, Some("ex1")).await.unwrap(), Some(3));
        let h = pl.task_leave(&pl.get_handle(&id).unwrap(), "ex1").unwrap();
        pl.commit(&h).await.unwrap();
        assert!(!pl.inspect(&id).unwrap().tasks.contains_key("ex1"));
        // Binding in a stopped container is refused when given, naming the task.
        let h = pl.get_handle(&id).unwrap();
        let h = pl.change_state(&h, TargetState::Stopped).unwrap();
        pl.commit(&h).await.unwrap();
        assert_eq!(pl.wait(&id, None).await.unwrap(), Some(128 + 15));
        // The exit is stored with the container's state a moment later.
        for _ in 0..100 {
            if pl.inspect_off(&id).await.unwrap().state == PowerState::Exited {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let h = pl
            .task_join(
                &pl.get_handle(&id).unwrap(),
                Task {
                    id: "ex2".into(),
                    args: vec!["ls".into()],
                    ..Default::default()
                },
            )
            .unwrap();
        let h = pl.task_bind(&h, "ex2").unwrap();
        let err = pl.commit(&h).await.unwrap_err();
        assert_eq!(err.element(), format!("{id}/task/ex2"));
    }

    #[tokio::test]
    async fn list_filters_and_hides_system_hidden() {
        let pl = layer(
            Arc::new(Store::open_in_memory().unwrap()),
            Arc::new(FakeBackend::default()),
        );
        let a = running(&pl, "a").await;
        let mut s = spec("infra");
        s.labels.insert("system.hidden".into(), "true".into());
        let (_, h) = pl.create(s).unwrap();
        pl.commit(&h).await.unwrap();
        let names = |f: &str| {
            pl.list(f)
                .unwrap()
                .into_iter()
                .map(|c| c.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(""), ["a"]);
        assert_eq!(names("state=running"), ["a"]);
        assert_eq!(names("system.hidden"), ["infra"]);
        assert!(names("state=created").is_empty());
        assert!(pl.list("colour=red").is_err());
        assert_eq!(pl.inspect(&a[..8]).unwrap().id, a);
    }

    #[tokio::test]
    async fn anti_affinity_is_checked_at_start_naming_the_peer() {
        let pl = layer(
            Arc::new(Store::open_in_memory().unwrap()),
            Arc::new(FakeBackend::default()),
        );
        let mut db = spec("db1");
        db.labels.insert("tier".into(), "db".into());
        let (db_id, h) = pl.create(db).unwrap();
        let h = pl.commit(&h).await.unwrap().handle;
        pl.commit(&pl.change_state(&h, TargetState::Running).unwrap())
            .await
            .unwrap();

        let mut s = spec("db2");
        s.policies
            .push("anti-affinity:label.tier=db".parse().unwrap());
        let (_, h) = pl.create(s).unwrap();
        let h = pl.commit(&h).await.unwrap().handle;
        let err = pl
            .commit(&pl.change_state(&h, TargetState::Running).unwrap())
            .await
            .unwrap_err();
        let text = format!(
            "{err}: {}",
            std::error::Error::source(&err)
                .map(|s| s.to_string())
                .unwrap_or_default()
        );
        assert!(text.contains(&db_id), "{text}");
        assert_eq!(pl.inspect("db2").unwrap().state, PowerState::Created);
        // Unknown constraints never get that far.
        assert!("sideways:label.x".parse::<Policy>().is_err());
    }

    /// Makes the store refuse some writes, through a trigger.
    fn refuse(store: &Store, trigger: &str) {
        store
            .write(|tx| {
                tx.execute_batch(&format!(
                    "CREATE TRIGGER {trigger} BEGIN SELECT RAISE(ABORT, 'injected'); END;"
                ))?;
                Ok(())
            })
            .unwrap();
    }

    /// The bookkeeping failures recorded about an element.
    fn bookkeeping_errors(store: &Store, element: &str) -> usize {
        store
            .errors(&crate::store::ErrorQuery {
                kind: Some("bookkeeping".into()),
                element: Some(element.into()),
                ..Default::default()
            })
            .unwrap()
            .len()
    }

    #[tokio::test]
    async fn a_create_and_start_refused_by_policy_leaves_nothing() {
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(Arc::new(Store::open_in_memory().unwrap()), fake.clone());
        let mut db = spec("db1");
        db.labels.insert("tier".into(), "db".into());
        let (db_id, h) = pl.create(db).unwrap();
        let h = pl.commit(&h).await.unwrap().handle;
        pl.commit(&pl.change_state(&h, TargetState::Running).unwrap())
            .await
            .unwrap();

        let mut s = spec("db2");
        s.policies
            .push("anti-affinity:label.tier=db".parse().unwrap());
        let (id, h) = pl.create(s).unwrap();
        let h = pl.change_state(&h, TargetState::Running).unwrap();
        let err = pl.commit(&h).await.unwrap_err();
        assert!(matches!(err, PortError::Policy { .. }), "{err}");
        assert!(pl.inspect("db2").is_err(), "a refused commit created db2");
        assert!(pl.inspect(&id).is_err());
        assert!(!fake.holds(&id), "the backend kept db2's files");
        assert!(fake.holds(&db_id));
        // Nothing is left in the way: the same name can be used again.
        let (_, h) = pl.create(spec("db2")).unwrap();
        pl.commit(&h).await.unwrap();
    }

    #[tokio::test]
    async fn a_taken_name_leaves_nothing_in_the_backend() {
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(Arc::new(Store::open_in_memory().unwrap()), fake.clone());
        let (first, h) = pl.create(spec("web")).unwrap();
        pl.commit(&h).await.unwrap();
        let (second, h) = pl.create(spec("web")).unwrap();
        let err = pl.commit(&h).await.unwrap_err();
        assert!(
            matches!(err, PortError::Store(StoreError::NameTaken { .. })),
            "{err}"
        );
        assert!(pl.inspect(&second).is_err());
        assert!(!fake.holds(&second), "the backend kept the loser's files");
        assert!(fake.holds(&first));
        assert_eq!(pl.inspect("web").unwrap().id, first);
    }

    #[tokio::test]
    async fn a_failed_backend_create_is_cleaned_up() {
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(Arc::new(Store::open_in_memory().unwrap()), fake.clone());
        fake.fail("create");
        let (id, h) = pl.create(spec("web")).unwrap();
        assert!(pl.commit(&h).await.is_err());
        assert!(pl.inspect(&id).is_err());
        // What a failed create had made (half a directory) goes too.
        assert!(
            fake.calls.lock().unwrap().contains(&format!("remove {id}")),
            "{:?}",
            fake.calls.lock().unwrap()
        );
    }

    #[tokio::test]
    async fn a_failed_boot_that_cannot_be_stored_is_not_silent() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let fake = Arc::new(FakeBackend::default());
        let pl = layer(store.clone(), fake.clone());
        let (id, h) = pl.create(spec("vm")).unwrap();
        let h = pl.commit(&h).await.unwrap().handle;
        fake.fail("start");
        refuse(
            &store,
            "no_exit BEFORE UPDATE ON containers WHEN NEW.state = 'exited'",
        );
        let r = pl
            .commit(&pl.change_state(&h, TargetState::Running).unwrap())
            .await
            .unwrap();
        assert_eq!(r.results[&id].status, Status::Error);
        // The store still says running: that is said and counted.
        assert_eq!(pl.inspect(&id).unwrap().state, PowerState::Running);
        assert_eq!(bookkeeping_errors(&store, &id), 1);
        assert_eq!(pl.dropped_writes(), 1);
        assert!(
            r.results[&id].detail.contains("injected"),
            "{:?}",
            r.results[&id]
        );
    }

    #[tokio::test]
    async fn an_operation_that_cannot_be_finished_is_not_silent() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let pl = layer(store.clone(), Arc::new(FakeBackend::default()));
        let (id, h) = pl.create(spec("vm")).unwrap();
        let h = pl.commit(&h).await.unwrap().handle;
        refuse(&store, "no_finish BEFORE UPDATE ON operations");
        let r = pl
            .commit(&pl.change_state(&h, TargetState::Running).unwrap())
            .await
            .unwrap();
        assert_eq!(r.results[&id].status, Status::Success);
        assert_eq!(store.ops(true).unwrap().len(), 1);
        assert_eq!(bookkeeping_errors(&store, &id), 1);
        assert_eq!(pl.dropped_writes(), 1);
    }

    #[tokio::test]
    async fn an_event_that_cannot_be_stored_is_not_silent() {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let pl = layer(store.clone(), Arc::new(FakeBackend::default()));
        let (id, h) = pl.create(spec("vm")).unwrap();
        let h = pl.commit(&h).await.unwrap().handle;
        refuse(&store, "no_events BEFORE INSERT ON events");
        let r = pl
            .commit(&pl.change_state(&h, TargetState::Running).unwrap())
            .await
            .unwrap();
        assert_eq!(r.results[&id].status, Status::Success);
        assert_eq!(bookkeeping_errors(&store, &id), 1);
        assert_eq!(pl.dropped_writes(), 1);
    }
}
