//! Execution environments: where container VMs actually run.
//!
//! The port layer drives them through [`Backend`]; `local` launches QEMU
//! microVMs on this host, `fake` keeps everything in memory (for tests and
//! benchmarks of the port layer itself). The trait knows nothing of QEMU.

pub mod fake;
pub mod local;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::portlayer::model::{Container, Task};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("Container {0} has no running VM")]
    NotRunning(String),
    #[error("Container {id}: {message}")]
    Failed { id: String, message: String },
}

impl BackendError {
    pub fn failed(id: &str, e: impl std::fmt::Display) -> Self {
        BackendError::Failed {
            id: id.to_string(),
            message: e.to_string(),
        }
    }
}

/// Things that happen to containers on their own, reported to the port
/// layer.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendEvent {
    /// A task's process exited.
    TaskExited {
        container: String,
        task: String,
        code: i32,
    },
    /// The container is done: its primary task exited and the VM is gone.
    Exited { container: String, code: i32 },
    /// The VM died without the tether reporting an exit.
    Crashed { container: String, error: String },
}

pub type Events = mpsc::UnboundedSender<BackendEvent>;

/// Where a backend finds the disks the storage component made: an image's
/// read-only base disk, and a volume's disk with the serial the guest finds
/// it by.
pub trait Disks: Send + Sync {
    fn image_disk(&self, image_id: &str) -> Result<PathBuf, String>;
    fn volume_disk(&self, volume: &str) -> Result<(PathBuf, String), String>;
}

/// Output of an attached task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachOutput {
    Stdout(bytes::Bytes),
    Stderr(bytes::Bytes),
    /// The task exited with this code; nothing follows.
    Exit(i32),
}

/// Input to an attached task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachInput {
    Stdin(bytes::Bytes),
    CloseStdin,
    Resize { rows: u32, cols: u32 },
    Signal(i32),
}

/// A live attach, independent of how the backend reaches the guest.
/// Dropping it detaches.
pub struct AttachStream {
    pub output: mpsc::Receiver<AttachOutput>,
    pub input: mpsc::Sender<AttachInput>,
}

/// A tar stream out of a container's filesystem.
pub struct ArchiveRead {
    /// Chunks of the stream; an `Err` item means it broke off there, and
    /// what came before is not a whole archive.
    pub data: mpsc::Receiver<Result<bytes::Bytes, String>>,
}

/// What a copy into a container wrote.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct ArchiveSummary {
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// Prepares what a new container needs (its disk).
    async fn create(&self, c: &Container) -> Result<(), BackendError>;
    /// Boots the container and starts its primary task.
    async fn start(&self, c: &Container) -> Result<(), BackendError>;
    /// Stop signal to the primary task, grace period, then kill.
    async fn stop(&self, id: &str, signal: i32, timeout: Duration) -> Result<(), BackendError>;
    async fn pause(&self, id: &str) -> Result<(), BackendError>;
    async fn resume(&self, id: &str) -> Result<(), BackendError>;
    /// Starts a further task in the running container.
    async fn exec(&self, id: &str, task: &Task) -> Result<(), BackendError>;
    /// Stops one task (stop signal, grace period, kill).
    async fn stop_task(&self, id: &str, task: &str, timeout: Duration) -> Result<(), BackendError>;
    async fn signal(&self, id: &str, task: &str, signal: i32) -> Result<(), BackendError>;
    /// Frees everything the container holds; it must not be running.
    /// Also called when a creation fails (in `create` or after it, e.g. on
    /// a taken name), so it must free a half-made creation and succeed
    /// when there is nothing to free.
    async fn remove(&self, id: &str) -> Result<(), BackendError>;
    /// Attaches to a task's live streams, from now on (earlier output is in
    /// the task's log). Without `output` the stream carries input, control
    /// and the exit code only, for a client that reads the output from the
    /// log.
    async fn attach(
        &self,
        id: &str,
        task: &str,
        stdin: bool,
        output: bool,
    ) -> Result<AttachStream, BackendError>;
    /// A tar stream of `path` in the container's filesystem (as `docker
    /// cp` gives it: the top entry is the path's last component). Works on
    /// stopped containers too.
    async fn archive_get(&self, c: &Container, path: &str) -> Result<ArchiveRead, BackendError>;
    /// Unpacks a tar stream into the directory `path` of the container's
    /// filesystem; entries that would leave it are refused, naming them.
    async fn archive_put(
        &self,
        c: &Container,
        path: &str,
        tar: mpsc::Receiver<bytes::Bytes>,
    ) -> Result<ArchiveSummary, BackendError>;
    /// Where the host keeps a task's log (see `interaction::logs`).
    fn log_path(&self, id: &str, task: &str) -> Option<PathBuf>;
    /// Starts reporting events; called once by the port layer.
    fn subscribe(&self, events: Events);
    /// Realises every scope and bound endpoint of `view` (devices, address
    /// rules, name service), removing what it made for ones no longer
    /// there. Idempotent; called after network changes and at start-up.
    async fn apply_network(
        &self,
        view: &crate::portlayer::network::NetworkView,
    ) -> Result<(), BackendError> {
        let _ = view;
        Ok(())
    }
}
