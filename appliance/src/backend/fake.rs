//! An in-memory execution environment: containers "run" instantly and
//! tasks exit when told to. For testing and benchmarking the port layer
//! without VMs. A container's filesystem, for archives, is a temporary
//! directory with `/etc` and `/tmp`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    ArchiveRead, ArchiveSummary, AttachInput, AttachOutput, AttachStream, Backend, BackendError,
    BackendEvent, Events,
};
use crate::portlayer::model::{Container, Task};

#[derive(Default)]
pub struct FakeBackend {
    running: Mutex<HashMap<String, HashSet<String>>>,
    paused: Mutex<HashSet<String>>,
    events: Mutex<Option<Events>>,
    /// Every call, for assertions: "start c1", "exec c1 t1", ...
    pub calls: Mutex<Vec<String>>,
    roots: Mutex<HashMap<String, tempfile::TempDir>>,
    /// Containers created and not removed since.
    held: Mutex<HashSet<String>>,
    /// Kinds of call ("create", "start", ...) made to fail.
    failing: Mutex<HashSet<String>>,
}

impl FakeBackend {
    fn record(&self, call: String) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(call);
    }

    /// Makes every later call of this kind ("create", "start", ...) fail.
    pub fn fail(&self, call: &str) {
        self.failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call.into());
    }

    fn injected(&self, call: &str, id: &str) -> Result<(), BackendError> {
        if self
            .failing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(call)
        {
            return Err(BackendError::failed(id, format!("injected {call} failure")));
        }
        Ok(())
    }

    /// Whether the backend holds something for the container: created and
    /// not removed since.
    pub fn holds(&self, id: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    fn emit(&self, ev: BackendEvent) {
        if let Some(tx) = &*self.events.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(ev);
        }
    }

    /// Makes a task exit with `code`, as if its process ended.
    pub fn exit_task(&self, id: &str, task: &str, code: i32) {
        let primary = id == task;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tasks) = running.get_mut(id) {
            tasks.remove(task);
        }
        if primary {
            running.remove(id);
        }
        drop(running);
        self.emit(BackendEvent::TaskExited {
            container: id.into(),
            task: task.into(),
            code,
        });
        if primary {
            self.emit(BackendEvent::Exited {
                container: id.into(),
                code,
            });
        }
    }

    /// Makes the container's VM die, as if QEMU crashed.
    pub fn crash(&self, id: &str) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        self.emit(BackendEvent::Crashed {
            container: id.into(),
            error: "injected crash".into(),
        });
    }

    pub fn is_running(&self, id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    pub fn is_paused(&self, id: &str) -> bool {
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// The directory standing for a container's filesystem.
    pub fn root(&self, id: &str) -> Result<std::path::PathBuf, BackendError> {
        let mut roots = self.roots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = roots.get(id) {
            return Ok(d.path().to_path_buf());
        }
        let d = tempfile::tempdir().map_err(|e| BackendError::failed(id, e))?;
        for sub in ["etc", "tmp"] {
            std::fs::create_dir(d.path().join(sub)).map_err(|e| BackendError::failed(id, e))?;
        }
        std::fs::write(d.path().join("etc/hostname"), format!("{id}\n"))
            .map_err(|e| BackendError::failed(id, e))?;
        let path = d.path().to_path_buf();
        roots.insert(id.to_string(), d);
        Ok(path)
    }

    fn require_running(&self, id: &str) -> Result<(), BackendError> {
        if self.is_running(id) {
            Ok(())
        } else {
            Err(BackendError::NotRunning(id.into()))
        }
    }
}

#[async_trait::async_trait]
impl Backend for FakeBackend {
    async fn create(&self, c: &Container) -> Result<(), BackendError> {
        self.record(format!("create {}", c.id));
        self.injected("create", &c.id)?;
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(c.id.clone());
        Ok(())
    }

    async fn start(&self, c: &Container) -> Result<(), BackendError> {
        self.record(format!("start {}", c.id));
        self.injected("start", &c.id)?;
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.insert(c.id.clone(), HashSet::from([c.id.clone()]));
        Ok(())
    }

    async fn stop(&self, id: &str, signal: i32, timeout: Duration) -> Result<(), BackendError> {
        self.record(format!("stop {id}"));
        self.record(format!(
            "stop {id} signal {signal} within {}s",
            timeout.as_secs()
        ));
        self.require_running(id)?;
        self.exit_task(id, id, 128 + signal);
        Ok(())
    }

    async fn pause(&self, id: &str) -> Result<(), BackendError> {
        self.record(format!("pause {id}"));
        self.require_running(id)?;
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.into());
        Ok(())
    }

    async fn resume(&self, id: &str) -> Result<(), BackendError> {
        self.record(format!("resume {id}"));
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    async fn exec(&self, id: &str, task: &Task) -> Result<(), BackendError> {
        self.record(format!("exec {id} {}", task.id));
        self.require_running(id)?;
        if let Some(t) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            t.insert(task.id.clone());
        }
        Ok(())
    }

    async fn stop_task(
        &self,
        id: &str,
        task: &str,
        _timeout: Duration,
    ) -> Result<(), BackendError> {
        self.record(format!("stop-task {id} {task}"));
        self.require_running(id)?;
        self.exit_task(id, task, 143);
        Ok(())
    }

    async fn signal(&self, id: &str, task: &str, signal: i32) -> Result<(), BackendError> {
        self.record(format!("signal {id} {task} {signal}"));
        self.require_running(id)
    }

    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        self.record(format!("remove {id}"));
        if self.is_running(id) {
            return Err(BackendError::failed(id, "still running"));
        }
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        Ok(())
    }

    async fn attach(
        &self,
        id: &str,
        task: &str,
        _stdin: bool,
        _output: bool,
    ) -> Result<AttachStream, BackendError> {
        self.record(format!("attach {id} {task}"));
        self.require_running(id)?;
        // Echoes stdin to stdout until stdin closes, then exits 0.
        let (out_tx, output) = tokio::sync::mpsc::channel(16);
        let (input, mut in_rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(i) = in_rx.recv().await {
                match i {
                    AttachInput::Stdin(b) => {
                        let _ = out_tx.send(AttachOutput::Stdout(b)).await;
                    }
                    AttachInput::CloseStdin => break,
                    _ => {}
                }
            }
            let _ = out_tx.send(AttachOutput::Exit(0)).await;
        });
        Ok(AttachStream { output, input })
    }

    async fn archive_get(&self, c: &Container, path: &str) -> Result<ArchiveRead, BackendError> {
        self.record(format!("archive-get {} {path}", c.id));
        let root = self.root(&c.id)?;
        let mut tar = Vec::new();
        archive::pack(&root, path, &mut tar).map_err(|e| BackendError::failed(&c.id, e))?;
        let (tx, rx) = mpsc::channel(2);
        let _ = tx.try_send(Ok(tar.into()));
        Ok(ArchiveRead { data: rx })
    }

    async fn archive_put(
        &self,
        c: &Container,
        path: &str,
        mut tar: mpsc::Receiver<bytes::Bytes>,
    ) -> Result<ArchiveSummary, BackendError> {
        self.record(format!("archive-put {} {path}", c.id));
        let root = self.root(&c.id)?;
        let mut bytes = Vec::new();
        while let Some(chunk) = tar.recv().await {
            bytes.extend_from_slice(&chunk);
        }
        let dest = root.join(path.trim_start_matches('/'));
        if !dest.is_dir() {
            return Err(BackendError::failed(
                &c.id,
                format!("{path} is not a directory in the container"),
            ));
        }
        let opts = archive::UnpackOptions {
            source: "archive".into(),
            whiteouts: false,
            same_owner: false,
            devices: archive::DevicePolicy::Skip,
        };
        let r = archive::unpack(&bytes[..], &dest, &opts)
            .map_err(|e| BackendError::failed(&c.id, crate::api::error::error_chain(&e)))?;
        Ok(ArchiveSummary {
            entries: r.entries,
            bytes: r.bytes,
        })
    }

    fn log_path(&self, _id: &str, _task: &str) -> Option<std::path::PathBuf> {
        None
    }

    async fn apply_network(
        &self,
        view: &crate::portlayer::network::NetworkView,
    ) -> Result<(), BackendError> {
        self.record(format!(
            "apply_network {} scopes {} members",
            view.scopes.len(),
            view.members.len()
        ));
        self.injected("apply_network", "network")
    }

    fn subscribe(&self, events: Events) {
        *self.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(events);
    }
}
