//! The local execution environment as a port-layer [`Backend`]: one QEMU
//! microVM per container, supervised from this process.
//!
//! Owns each container's directory (`<state>/containers/<id[..12]>/`: spec,
//! sockets, console, copy-on-write disk, `logs/<task>.log` and
//! `logs/<task>.exit`), booting and connecting, following every task's
//! output into its host log (acknowledged only once on disk, the exit
//! status too), and noticing exits and crashes. QEMU runs detached: it
//! outlives an appliance restart, after which `recover` reconnects and
//! resumes the logs where they end. A finished container's VM waits (up to
//! the linger bound) for that: an appliance away for a while loses nothing.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use proto::v1::{SessionSpec, WindowSize};
use russh::keys::PrivateKey;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::accel::Accel;
use super::artifacts::BootArtifacts;
use super::qemu::{Vm, read_lossy};
use super::qmp::Qmp;
use super::vm::{self, VmOptions, VolumeDisk};
use crate::backend::{
    ArchiveRead, ArchiveSummary, AttachInput, AttachOutput, AttachStream, Backend, BackendError,
    BackendEvent, Disks, Events,
};
use crate::interaction::logs::{self, LogWriter};
use crate::interaction::persist;
use crate::portlayer::model::{Container, Task};
use crate::tether::{AttachEvent, Client};

/// How long a VM may take to boot and answer.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long at most a finished container's VM keeps its output and exit
/// status for a host to take (`serve --linger`).
pub const DEFAULT_LINGER: Duration = Duration::from_secs(24 * 60 * 60);
/// How long the tether may take to answer a control call (signal, exec,
/// status, ...), whatever it is doing: past it, the call fails saying so.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// A stop's grace period when none is given (the tether's default).
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
/// How long past a stop's grace period the tether may take to report the
/// stop before the VM is killed from here.
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// How long a copy into or out of a stopped container waits for another
/// copy's VM to be done with its disks.
const COPY_WAIT: Duration = Duration::from_secs(60);

/// A stop's grace period: the one given, else the tether's default.
fn stop_grace(timeout: Duration) -> Duration {
    if timeout.is_zero() {
        DEFAULT_STOP_GRACE
    } else {
        timeout
    }
}

/// Runs a call to the tether with a bound on its time.
async fn bounded<T>(
    id: &str,
    what: &str,
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, crate::tether::ClientError>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r.map_err(|e| BackendError::failed(id, e)),
        Err(_) => Err(BackendError::failed(
            id,
            format!(
                "The tether did not answer {what} within {} s",
                limit.as_secs()
            ),
        )),
    }
}

struct Running {
    client: Client,
    dir: PathBuf,
    pid: u32,
}

pub struct LocalBackend {
    state: PathBuf,
    artifacts: BootArtifacts,
    accel: Accel,
    key: PrivateKey,
    /// Image and volume disks, from the storage component.
    disks: Arc<dyn Disks>,
    /// The upper bound a finished container's VM waits for a host to take
    /// its output and exit status (spec `linger_seconds`).
    linger: Duration,
    running: Mutex<HashMap<String, Arc<Running>>>,
    /// Containers whose disks are booted for a copy right now.
    maintenance: Mutex<HashSet<String>>,
    /// Running containers of a previous appliance not yet re-adopted (or
    /// found gone); `recovered` wakes those waiting for one.
    recovering: Mutex<HashSet<String>>,
    recovered: tokio::sync::Notify,
    events: Mutex<Option<Events>>,
    /// Bridges, taps, rules and name servers of the network component.
    network: super::network::HostNetwork,
    me: Weak<LocalBackend>,
}

fn task_spec(t: &Task) -> SessionSpec {
    SessionSpec {
        id: t.id.clone(),
        args: t.args.clone(),
        env: t.env.clone(),
        working_dir: t.working_dir.clone(),
        user: t.user.clone(),
        tty: t.tty,
        open_stdin: t.open_stdin,
        // The guest opens the terminal at this size, before the process
        // runs (absent: 24x80).
        window: t.tty_size.map(|s| WindowSize {
            rows: s.rows,
            cols: s.cols,
        }),
        ..Default::default()
    }
}

/// The spec's `linger_seconds` for a bound: whole seconds, at least one.
fn linger_seconds(linger: Duration) -> u32 {
    u32::try_from(linger.as_secs()).unwrap_or(u32::MAX).max(1)
}

/// Ends a VM's QEMU by its PID (0 means none).
fn kill_pid(pid: u32) {
    if pid > 0 {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Kills a VM's QEMU when dropped while still armed.
struct KillOnDrop(Option<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill_pid(pid);
        }
    }
}

fn pid_alive(pid: u32, dir: &Path) -> bool {
    // The pid must still be our QEMU (its command line names the dir), not
    // a reused pid.
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
        .unwrap_or(false)
}

/// A container directory no store record owns is left only this long: a
/// creation in flight (here or in another appliance sharing the state)
/// makes its directory a moment before it stores the container.
pub const ORPHAN_DIR_AGE: Duration = Duration::from_secs(120);

/// Removes the directories under `containers` that belong to no container in
/// `known` (ids), are older than `min_age`, and run no VM: what a creation
/// that failed half-way, or an appliance killed during one, left behind.
/// Returns what it removed. Blocking.
pub fn sweep_orphan_dirs(
    containers: &Path,
    known: &HashSet<String>,
    min_age: Duration,
) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(containers) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let (name, dir) = (e.file_name().to_string_lossy().into_owned(), e.path());
        if known.iter().any(|id| id.starts_with(&name)) || !dir.is_dir() {
            continue;
        }
        let young = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < min_age);
        let vm = std::fs::read_to_string(dir.join("qemu.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(|pid| pid_alive(pid, &dir));
        if young || vm {
            continue;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(err) => tracing::warn!("removing orphaned {}: {err}", dir.display()),
        }
    }
    removed
}

impl LocalBackend {
    /// `sweep_orphan_dirs` of this backend's state.
    pub fn sweep_orphans(&self, known: &HashSet<String>) -> Vec<PathBuf> {
        sweep_orphan_dirs(&self.state.join("containers"), known, ORPHAN_DIR_AGE)
    }

    /// `linger`: how long at most a finished container's VM keeps its
    /// output and exit status for a host that is away (`DEFAULT_LINGER`).
    pub fn new(
        state: &Path,
        artifacts: BootArtifacts,
        accel: Accel,
        key: PrivateKey,
        disks: Arc<dyn Disks>,
        linger: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            state: state.to_path_buf(),
            artifacts,
            accel,
            key,
            disks,
            linger,
            running: Mutex::new(HashMap::new()),
            maintenance: Mutex::new(HashSet::new()),
            recovering: Mutex::new(HashSet::new()),
            recovered: tokio::sync::Notify::new(),
            events: Mutex::new(None),
            network: super::network::HostNetwork::new(),
            me: me.clone(),
        })
    }

    /// The `Arc` this backend lives in (it is only ever made by `new`).
    fn self_arc(&self) -> Arc<Self> {
        #[allow(clippy::expect_used)]
        self.me
            .upgrade()
            .expect("LocalBackend is only used through its Arc")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(&id[..id.len().min(12)])
    }

    fn emit(&self, ev: BackendEvent) {
        if let Some(tx) = &*self.events.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(ev);
        }
    }

    /// The running VM of `id`, waiting (within `BOOT_TIMEOUT`) while a
    /// restarted appliance is still re-adopting it.
    async fn get_ready(&self, id: &str) -> Result<Arc<Running>, BackendError> {
        let deadline = tokio::time::Instant::now() + BOOT_TIMEOUT;
        loop {
            let settled = self.recovered.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            let waiting = self
                .recovering
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(id);
            if !waiting || tokio::time::timeout_at(deadline, settled).await.is_err() {
                return self.get(id);
            }
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Running>, BackendError> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| BackendError::NotRunning(id.into()))
    }

    /// The disks a container VM gets: its image's base and its volumes.
    /// Looked up in the store, so on the blocking pool.
    async fn disks_of(&self, c: &Container) -> Result<(PathBuf, Vec<VolumeDisk>), BackendError> {
        let (disks, c) = (self.disks.clone(), c.clone());
        let id = c.id.clone();
        tokio::task::spawn_blocking(move || {
            let base = disks
                .image_disk(&c.image_id)
                .map_err(|e| BackendError::failed(&c.id, e))?;
            let mut volumes = Vec::new();
            for m in &c.mounts {
                let (path, serial) = disks
                    .volume_disk(&m.volume)
                    .map_err(|e| BackendError::failed(&c.id, e))?;
                volumes.push(VolumeDisk {
                    path,
                    serial,
                    target: m.path.clone(),
                    read_only: m.read_only,
                });
            }
            Ok((base, volumes))
        })
        .await
        .map_err(|e| BackendError::failed(&id, e))?
    }

    /// The tether of a running container, or of its disks booted in
    /// maintenance mode (ended with `Maintenance::finish`).
    async fn tether_for_copy(&self, c: &Container) -> Result<CopyTether, BackendError> {
        if let Ok(run) = self.get_ready(&c.id).await {
            return Ok(CopyTether::Running(run));
        }
        // Another copy's VM may still be powering off (copies in a row,
        // as `docker cp` makes them: a stat, then the copy): wait for it,
        // a while.
        let deadline = tokio::time::Instant::now() + COPY_WAIT;
        loop {
            let inserted = self
                .maintenance
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(c.id.clone());
            if inserted {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(BackendError::failed(
                    &c.id,
                    "Another copy is using the container's disks; try again when it ends",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let booted = self.boot_maintenance(c).await;
        if booted.is_err() {
            self.end_maintenance(&c.id);
        }
        booted.map(|m| CopyTether::Maintenance(Box::new(m)))
    }

    fn end_maintenance(&self, id: &str) {
        self.maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    async fn boot_maintenance(&self, c: &Container) -> Result<Maintenance, BackendError> {
        let (base, volumes) = self.disks_of(c).await?;
        let dir = self.dir(&c.id);
        // Its own sockets and console, beside the container's.
        let work = dir.join("copy");
        std::fs::create_dir_all(&work).map_err(|e| BackendError::failed(&c.id, e))?;
        let mut opts = VmOptions::new(
            &c.id,
            self.artifacts.clone(),
            base,
            work,
            SessionSpec::default(),
        );
        opts.maintenance = true;
        opts.root_disk = Some(dir.join("root.qcow2"));
        opts.volumes = volumes;
        opts.hostname.clone_from(&c.hostname);
        opts.accel = self.accel;
        opts.memory_mib = c.memory_mib;
        opts.linger_seconds = 60;
        let mut launched =
            vm::launch(&opts, self.key.public_key()).map_err(|e| BackendError::failed(&c.id, e))?;
        let client = match launched.connect(&self.key, BOOT_TIMEOUT).await {
            Ok(client) => client,
            Err(e) => {
                let _ = launched.vm.kill().await;
                return Err(BackendError::failed(&c.id, e));
            }
        };
        Ok(Maintenance {
            id: c.id.clone(),
            launched,
            client,
            backend: self.self_arc(),
        })
    }

    pub fn log_file(&self, id: &str, task: &str) -> PathBuf {
        self.dir(id).join("logs").join(format!("{task}.log"))
    }

    /// Follows a task's output into its log until it ends; reports its exit.
    async fn follow_task(
        self: Arc<Self>,
        id: String,
        task: String,
        run: Arc<Running>,
    ) -> Option<i32> {
        let path = self.log_file(&id, &task);
        let code = match LogWriter::open(&path) {
            Ok(mut log) => match persist::follow(&run.client, &task, &mut log).await {
                Ok(code) => code,
                Err(e) => {
                    tracing::warn!("container {id} task {task}: {e}");
                    None
                }
            },
            Err(e) => {
                tracing::warn!("container {id} task {task}: {e}");
                None
            }
        };
        if let Some(code) = code {
            self.emit(BackendEvent::TaskExited {
                container: id.clone(),
                task: task.clone(),
                code,
            });
        }
        code
    }

    /// Watches a container until its VM is gone.
    async fn supervise(self: Arc<Self>, id: String, run: Arc<Running>, mut vm: Option<Vm>) {
        let primary = self
            .clone()
            .follow_task(id.clone(), id.clone(), run.clone());
        let gone = async {
            match vm.as_mut() {
                Some(vm) => {
                    let _ = vm.wait().await;
                }
                None => {
                    while pid_alive(run.pid, &run.dir) {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        };
        tokio::pin!(gone);
        let outcome = tokio::select! {
            code = primary => Some(code),
            _ = &mut gone => None,
        };
        match outcome {
            // The tether reported the primary task's exit.
            Some(Some(code)) => {
                // The tether powers off once its output is acknowledged.
                if tokio::time::timeout(Duration::from_secs(30), &mut gone)
                    .await
                    .is_err()
                {
                    tracing::warn!("container {id}: VM did not power off; killing it");
                    kill_pid(run.pid);
                }
                self.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                self.emit(BackendEvent::Exited {
                    container: id,
                    code,
                });
            }
            // The VM went away, or the channel broke without an exit: the
            // VM died under the container, unless the exit was stored before
            // (the tether powers off once it is acknowledged).
            Some(None) | None => {
                // (`gone` may only be awaited again if it has not finished.)
                if outcome.is_some() {
                    let _ = tokio::time::timeout(Duration::from_secs(5), &mut gone).await;
                }
                kill_pid(run.pid);
                self.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                if let Some(code) = logs::stored_exit(&self.log_file(&id, &id)) {
                    self.emit_exited(&id, code);
                    return;
                }
                let console = read_lossy(&run.dir.join("console.log"));
                self.emit(BackendEvent::Crashed {
                    container: id,
                    error: format!(
                        "The VM stopped unexpectedly; console:\n{}",
                        vm::tail(&console, 10)
                    ),
                });
            }
        }
    }

    /// After an appliance restart: reconnects, in the background, to the
    /// VMs of containers the store says are running, and resumes their
    /// logs. Those whose VM is gone are reported as crashed. Until a
    /// container is settled, calls that need its VM wait for it (see
    /// [`Self::get_ready`]) instead of finding it not running.
    pub fn recover(self: &Arc<Self>, containers: Vec<Container>) {
        self.recovering
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(containers.iter().map(|c| c.id.clone()));
        let me = self.clone();
        tokio::spawn(async move {
            for c in &containers {
                me.recover_one(c).await;
                me.recovering
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&c.id);
                me.recovered.notify_waiters();
            }
        });
    }

    async fn recover_one(self: &Arc<Self>, c: &Container) {
        let dir = self.dir(&c.id);
        let pid = std::fs::read_to_string(dir.join("qemu.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        let host_key = std::fs::read_to_string(dir.join("host_key.pub"))
            .ok()
            .and_then(|k| russh::keys::PublicKey::from_openssh(k.trim()).ok());
        let (Some(pid), Some(host_key)) = (pid, host_key) else {
            self.emit(BackendEvent::Crashed {
                container: c.id.clone(),
                error: "The VM's records are missing after an appliance restart".into(),
            });
            return;
        };
        if !pid_alive(pid, &dir) {
            // It may have ended after handing everything over.
            if let Some(code) = logs::stored_exit(&self.log_file(&c.id, &c.id)) {
                self.emit_exited(&c.id, code);
                return;
            }
            let console = read_lossy(&dir.join("console.log"));
            self.emit(BackendEvent::Crashed {
                container: c.id.clone(),
                error: format!(
                    "The VM is gone after an appliance restart; console:\n{}",
                    vm::tail(&console, 10)
                ),
            });
            return;
        }
        let (socket, console) = (dir.join("tether.sock"), dir.join("console.log"));
        let to = vm::TetherAt {
            socket: &socket,
            console: &console,
            key: &self.key,
            host_key: &host_key,
            stall: vm::STALL,
        };
        let connect = async {
            let s = UnixStream::connect(&socket)
                .await
                .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
            to.connect(s, std::time::Instant::now() + BOOT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())
        };
        match connect.await {
            Ok(client) => {
                let run = Arc::new(Running { client, dir, pid });
                self.adopt(&c.id, run.clone());
                // Resume following the other tasks still running.
                for t in c
                    .tasks
                    .values()
                    .filter(|t| !t.primary && t.state == "running")
                {
                    tokio::spawn(self.clone().follow_task(
                        c.id.clone(),
                        t.task.id.clone(),
                        run.clone(),
                    ));
                }
                tokio::spawn(self.clone().supervise(c.id.clone(), run, None));
            }
            Err(why) => self.emit(BackendEvent::Crashed {
                container: c.id.clone(),
                error: format!("Cannot reconnect to the VM after an appliance restart: {why}"),
            }),
        }
    }

    /// Pauses (`true`) or resumes a VM through QMP, within `CONTROL_TIMEOUT`.
    async fn run_state(&self, id: &str, pause: bool) -> Result<(), BackendError> {
        let run = self.get_ready(id).await?;
        let what = if pause { "pause" } else { "resume" };
        let qmp = async {
            let mut q = Qmp::connect(&run.dir.join("qmp.sock")).await?;
            if pause {
                q.pause().await
            } else {
                q.resume().await
            }
        };
        match tokio::time::timeout(CONTROL_TIMEOUT, qmp).await {
            Ok(r) => r.map_err(|e| BackendError::failed(id, e)),
            Err(_) => Err(BackendError::failed(
                id,
                format!(
                    "QEMU did not answer the {what} within {} s",
                    CONTROL_TIMEOUT.as_secs()
                ),
            )),
        }
    }

    /// The primary task's exit and the container's, with the code stored.
    fn emit_exited(&self, id: &str, code: i32) {
        self.emit(BackendEvent::TaskExited {
            container: id.to_string(),
            task: id.to_string(),
            code,
        });
        self.emit(BackendEvent::Exited {
            container: id.to_string(),
            code,
        });
    }

    fn adopt(&self, id: &str, run: Arc<Running>) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), run);
    }
}

/// Where a copy talks to: the running container's tether, or one booted
/// for the copy.
enum CopyTether {
    Running(Arc<Running>),
    Maintenance(Box<Maintenance>),
}

impl CopyTether {
    fn client(&self) -> &Client {
        match self {
            CopyTether::Running(r) => &r.client,
            CopyTether::Maintenance(m) => &m.client,
        }
    }

    async fn finish(self) {
        if let CopyTether::Maintenance(m) = self {
            m.finish().await;
        }
    }
}

/// A stopped container's disks, booted with no process for a copy.
struct Maintenance {
    id: String,
    launched: vm::Launched,
    client: Client,
    backend: Arc<LocalBackend>,
}

impl Maintenance {
    /// Powers the VM off cleanly (the tether syncs and unmounts: what was
    /// copied in is on disk), killing it if it does not go.
    async fn finish(mut self) {
        // Bounded: a tether that does not answer is killed below.
        let _ = tokio::time::timeout(CONTROL_TIMEOUT, self.client.power_off()).await;
        let gone = tokio::time::timeout(Duration::from_secs(30), self.launched.vm.wait()).await;
        if gone.is_err() {
            tracing::warn!(
                "container {}: copy VM did not power off; killing it",
                self.id
            );
            let _ = self.launched.vm.kill().await;
        }
        self.backend.end_maintenance(&self.id);
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    async fn create(&self, c: &Container) -> Result<(), BackendError> {
        let dir = self.dir(&c.id);
        // The store and qemu-img (a subprocess): off the async runtime.
        let (id, image, disks) = (c.id.clone(), c.image_id.clone(), self.disks.clone());
        tokio::task::spawn_blocking(move || {
            let base = disks
                .image_disk(&image)
                .map_err(|e| BackendError::failed(&id, e))?;
            std::fs::create_dir_all(dir.join("logs")).map_err(|e| BackendError::failed(&id, e))?;
            crate::storage::disk::overlay(&base, &dir.join("root.qcow2"))
                .map_err(|e| BackendError::failed(&id, e))
        })
        .await
        .map_err(|e| BackendError::failed(&c.id, e))?
    }

    async fn start(&self, c: &Container) -> Result<(), BackendError> {
        if self
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&c.id)
        {
            return Err(BackendError::failed(
                &c.id,
                "A copy is using the container's disks; start it when the copy ends",
            ));
        }
        let (base, volumes) = self.disks_of(c).await?;
        let primary = c
            .tasks
            .get(&c.id)
            .map(|t| task_spec(&t.task))
            .ok_or_else(|| BackendError::failed(&c.id, "No primary task"))?;
        let dir = self.dir(&c.id);
        std::fs::create_dir_all(dir.join("logs")).map_err(|e| BackendError::failed(&c.id, e))?;
        // A restarted container appends its new run to its logs (the old
        // run's exit code is in the store; this run has none yet).
        let restarted: Vec<PathBuf> = c
            .tasks
            .keys()
            .map(|t| self.log_file(&c.id, t))
            .filter(|p| p.exists())
            .collect();
        if !restarted.is_empty() {
            tokio::task::spawn_blocking(move || {
                restarted.iter().try_for_each(|p| logs::start_run(p))
            })
            .await
            .map_err(|e| BackendError::failed(&c.id, e))?
            .map_err(|e| BackendError::failed(&c.id, e))?;
        }
        let mut opts = VmOptions::new(&c.id, self.artifacts.clone(), base, dir.clone(), primary);
        opts.linger_seconds = linger_seconds(self.linger);
        opts.volumes = volumes;
        opts.hostname.clone_from(&c.hostname);
        opts.accel = self.accel;
        opts.memory_mib = c.memory_mib;
        opts.cpus = c.cpus;
        opts.detached = true;
        let (nics, nameservers) = super::nics::plan(c);
        opts.nics = nics;
        opts.nameservers = nameservers;
        opts.names = std::iter::once(c.name.clone())
            .filter(|n| *n != c.hostname)
            .collect();
        let mut launched =
            vm::launch(&opts, self.key.public_key()).map_err(|e| BackendError::failed(&c.id, e))?;
        let pid = launched.vm.pid().unwrap_or(0);
        // If this start is abandoned (cancelled, failed) before the VM is
        // adopted, the detached QEMU must not be left behind.
        let mut guard = KillOnDrop(Some(pid));
        // `recover` needs both to take the VM back after a restart: a VM it
        // could not find again would be orphaned, so failing to write them
        // fails the start (and the guard ends the VM).
        let host_key = crate::keys::public_openssh(&launched.host_key)
            .map_err(|e| BackendError::failed(&c.id, e))?;
        for (name, text) in [("qemu.pid", pid.to_string()), ("host_key.pub", host_key)] {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|e| {
                BackendError::failed(&c.id, format!("Writing {}: {e}", path.display()))
            })?;
        }
        let client = match launched.connect(&self.key, BOOT_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => {
                let _ = launched.vm.kill().await;
                return Err(BackendError::failed(&c.id, e));
            }
        };
        let run = Arc::new(Running { client, dir, pid });
        self.adopt(&c.id, run.clone());
        guard.0 = None;
        let me = self.self_arc();
        tokio::spawn(me.supervise(c.id.clone(), run, Some(launched.vm)));
        Ok(())
    }

    async fn stop(&self, id: &str, signal: i32, timeout: Duration) -> Result<(), BackendError> {
        let run = self.get_ready(id).await?;
        // Stop signal, grace period and kill happen in the guest; the
        // tether then powers off and `supervise` reports the exit. A tether
        // that fails or does not report within the grace period (and a
        // margin) gets its VM killed: a stop always ends.
        let grace = stop_grace(timeout);
        let r = bounded(
            id,
            "the stop",
            grace + STOP_MARGIN,
            run.client.stop(id, signal, timeout),
        )
        .await;
        if let Err(e) = r {
            tracing::warn!("container {id}: {e}; killing its VM");
            kill_pid(run.pid);
        }
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), BackendError> {
        self.run_state(id, true).await
    }

    async fn resume(&self, id: &str) -> Result<(), BackendError> {
        self.run_state(id, false).await
    }

    async fn exec(&self, id: &str, task: &Task) -> Result<(), BackendError> {
        let run = self.get_ready(id).await?;
        bounded(
            id,
            "the exec",
            CONTROL_TIMEOUT,
            run.client.exec(task_spec(task)),
        )
        .await?;
        tokio::spawn(self.self_arc().follow_task(id.into(), task.id.clone(), run));
        Ok(())
    }

    async fn stop_task(&self, id: &str, task: &str, timeout: Duration) -> Result<(), BackendError> {
        let run = self.get_ready(id).await?;
        let grace = stop_grace(timeout);
        bounded(
            id,
            "the stop",
            grace + STOP_MARGIN,
            run.client.stop(task, 0, timeout),
        )
        .await
        .map(drop)
    }

    async fn signal(&self, id: &str, task: &str, signal: i32) -> Result<(), BackendError> {
        let run = self.get_ready(id).await?;
        bounded(
            id,
            "the signal",
            CONTROL_TIMEOUT,
            run.client.signal(task, signal),
        )
        .await
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        if let Ok(run) = self.get_ready(id).await {
            kill_pid(run.pid);
            self.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
        let dir = self.dir(id);
        // The tasks that watched a killed VM may still be writing their
        // last bytes (log flush, exit code) into its directory: try again
        // for a while when a file appears under the removal.
        let mut tries = 0;
        loop {
            let d = dir.clone();
            let r = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&d))
                .await
                .map_err(|e| BackendError::failed(id, e))?;
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if tries < 30 && e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    return Err(BackendError::failed(
                        id,
                        format!("Removing {}: {e}", dir.display()),
                    ));
                }
            }
        }
    }

    async fn attach(
        &self,
        id: &str,
        task: &str,
        stdin: bool,
        output: bool,
    ) -> Result<AttachStream, BackendError> {
        let run = self.get_ready(id).await?;
        let st = bounded(
            id,
            "a status request",
            CONTROL_TIMEOUT,
            run.client.status(task),
        )
        .await?;
        let s = st
            .sessions
            .first()
            .ok_or_else(|| BackendError::failed(id, format!("No task {task}")))?;
        // Live from now: what came before is in the task's log.
        let attach = async {
            if output {
                run.client
                    .attach(task, (s.stdout_offset, s.stderr_offset), stdin)
                    .await
            } else {
                run.client.attach_without_output(task, stdin).await
            }
        };
        let mut a = bounded(id, "the attach", CONTROL_TIMEOUT, attach)
            .await?
            .manual_ack();
        let (out_tx, output) = tokio::sync::mpsc::channel(64);
        let (input, mut in_rx) = tokio::sync::mpsc::channel::<AttachInput>(64);
        let client_task = task.to_string();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = a.next() => {
                        let out = match ev {
                            Ok(Some(AttachEvent::Stdout(b))) => AttachOutput::Stdout(b),
                            Ok(Some(AttachEvent::Stderr(b))) => AttachOutput::Stderr(b),
                            Ok(Some(AttachEvent::Exit(c))) => AttachOutput::Exit(c),
                            Ok(None) | Err(_) => break,
                        };
                        if out_tx.send(out).await.is_err() {
                            break;
                        }
                    }
                    i = in_rx.recv() => {
                        let r = match i {
                            Some(AttachInput::Stdin(b)) => a.write_stdin(&b).await,
                            Some(AttachInput::CloseStdin) => a.close_stdin().await,
                            Some(AttachInput::Resize { rows, cols }) => a.resize(rows, cols).await,
                            Some(AttachInput::Signal(n)) => run.client.signal(&client_task, n).await,
                            None => break,
                        };
                        if r.is_err() {
                            break;
                        }
                    }
                }
            }
        });
        Ok(AttachStream { output, input })
    }

    async fn archive_get(&self, c: &Container, path: &str) -> Result<ArchiveRead, BackendError> {
        let t = self.tether_for_copy(c).await?;
        let mut dl = match bounded(
            &c.id,
            "the copy",
            CONTROL_TIMEOUT,
            t.client().archive_get(path),
        )
        .await
        {
            Ok(dl) => dl,
            Err(e) => {
                t.finish().await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            loop {
                match dl.next_chunk().await {
                    Ok(Some(b)) => {
                        if tx.send(Ok(b)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        break;
                    }
                }
            }
            drop(dl);
            t.finish().await;
        });
        Ok(ArchiveRead { data: rx })
    }

    async fn archive_put(
        &self,
        c: &Container,
        path: &str,
        tar: mpsc::Receiver<bytes::Bytes>,
    ) -> Result<ArchiveSummary, BackendError> {
        use futures::StreamExt;
        let t = self.tether_for_copy(c).await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(tar).map(Ok::<_, std::io::Error>);
        let reader = tokio_util::io::StreamReader::new(stream);
        let r = t.client().archive_put(path, reader).await;
        t.finish().await;
        let r = r.map_err(|e| BackendError::failed(&c.id, e))?;
        Ok(ArchiveSummary {
            entries: r.entries,
            bytes: r.bytes,
        })
    }

    fn log_path(&self, id: &str, task: &str) -> Option<PathBuf> {
        Some(self.log_file(id, task))
    }

    fn subscribe(&self, events: Events) {
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(events);
    }

    async fn apply_network(
        &self,
        view: &crate::portlayer::network::NetworkView,
    ) -> Result<(), BackendError> {
        self.network
            .apply(view)
            .await
            .map_err(|e| BackendError::failed("network", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portlayer::model::TtySize;

    #[test]
    fn a_tasks_terminal_size_is_the_sessions_initial_window() {
        let t = Task {
            id: "e1".into(),
            args: vec!["sh".into()],
            tty: true,
            tty_size: Some(TtySize {
                rows: 30,
                cols: 100,
            }),
            ..Default::default()
        };
        let s = task_spec(&t);
        assert!(s.tty);
        assert_eq!(
            s.window,
            Some(WindowSize {
                rows: 30,
                cols: 100
            })
        );
        let plain = task_spec(&Task {
            tty_size: None,
            ..t
        });
        assert_eq!(plain.window, None);
    }

    #[test]
    fn the_sweep_removes_only_old_orphans_without_a_vm() {
        let root = tempfile::tempdir().unwrap();
        let containers = root.path();
        let mk = |name: &str| {
            let d = containers.join(name);
            std::fs::create_dir_all(d.join("logs")).unwrap();
            std::fs::write(d.join("root.qcow2"), b"x").unwrap();
            d
        };
        let kept = mk("aaaaaaaaaaaa");
        let orphan = mk("bbbbbbbbbbbb");
        let young = mk("cccccccccccc");
        let old = std::time::SystemTime::now() - Duration::from_secs(600);
        for d in [&kept, &orphan] {
            std::fs::File::open(d).unwrap().set_modified(old).unwrap();
        }
        let known: HashSet<String> = ["aaaaaaaaaaaa0123456789".to_string()].into();
        let removed = sweep_orphan_dirs(containers, &known, Duration::from_secs(120));
        assert_eq!(removed, vec![orphan.clone()]);
        assert!(kept.exists() && young.exists() && !orphan.exists());
    }
}
