//! Sessions: the processes the tether runs for the host (the primary process
//! and execs), their state, their stdio and their output.
//!
//! Owns the session table, the VM-wide reaper (the tether is PID 1 and a
//! subreaper: every orphan in the VM ends up here), signals, stop with grace
//! period, resize and stdin. Must not know about SSH or the wire format
//! beyond producing `SessionStatus`.

pub mod output;
mod pump;
pub mod spawn;
pub mod user;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use proto::v1::{SessionSpec, SessionStatus, session_status::State};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use output::Output;

const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("Session {0:?} already exists")]
    AlreadyExists(String),
    #[error("Session {0:?} not found")]
    NotFound(String),
    #[error("Session spec is invalid: {0}")]
    Invalid(String),
    #[error("Session {0:?} is not running")]
    NotRunning(String),
    #[error("Session {0:?} has not exited")]
    NotExited(String),
    #[error("Session {0:?} has no terminal")]
    NoTty(String),
    #[error("Signal {0} is not a valid signal number")]
    BadSignal(i32),
    #[error("Session {id:?}: {source}")]
    Io {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

/// Lifecycle of one process.
#[derive(Clone, Debug, Default)]
pub struct Life {
    pub state: i32,
    pub pid: i32,
    pub exit_code: i32,
    pub error: String,
    pub started_at: i64,
    pub exited_at: i64,
}

impl Life {
    fn exited(&self) -> bool {
        self.state == State::Exited as i32 || self.state == State::Failed as i32
    }
}

/// Where a session's stdin goes.
enum Stdin {
    Pipe(tokio::net::unix::pipe::Sender),
    Pty(Arc<AsyncFd<OwnedFd>>),
}

enum StdinMsg {
    Data(bytes::Bytes),
    Close,
}

/// A session's stdin: bytes queued by attaches, written to the process by
/// one writer task, so that a process that does not read never holds up
/// whoever queued them (nor the EOF that comes after them). What is queued
/// is bounded by the attaches' credit windows (`proto::flow`).
struct StdinQueue {
    /// `None` once stdin is closed (or the session never had it).
    tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<StdinMsg>>>,
    /// Total bytes ever queued.
    queued: std::sync::atomic::AtomicU64,
    /// Total bytes the process took, or that were dropped because its stdin
    /// broke: what every attach's credit is measured against.
    taken: watch::Sender<u64>,
}

impl StdinQueue {
    fn new() -> Self {
        Self {
            tx: Mutex::new(None),
            queued: std::sync::atomic::AtomicU64::new(0),
            taken: watch::Sender::new(0),
        }
    }
}

pub struct Session {
    pub spec: SessionSpec,
    pub stdout: Output,
    pub stderr: Output,
    life: watch::Sender<Life>,
    stdin: StdinQueue,
    pty: Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
    /// A host acknowledged the exit status as stored (`Ack` with
    /// `exit_status`).
    exit_acked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.spec.id)
            .finish()
    }
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Session {
    fn new(spec: SessionSpec) -> Self {
        Self {
            spec,
            stdout: Output::new(),
            stderr: Output::new(),
            life: watch::Sender::new(Life {
                state: State::Created as i32,
                ..Default::default()
            }),
            stdin: StdinQueue::new(),
            pty: Mutex::new(None),
            exit_acked: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn life(&self) -> Life {
        self.life.borrow().clone()
    }

    pub fn status(&self) -> SessionStatus {
        let l = self.life();
        let (o, e) = (self.stdout.marks(), self.stderr.marks());
        SessionStatus {
            id: self.spec.id.clone(),
            state: l.state,
            pid: l.pid,
            exit_code: l.exit_code,
            error: l.error,
            started_at_unix_nanos: l.started_at,
            exited_at_unix_nanos: l.exited_at,
            stdout_offset: o.end,
            stderr_offset: e.end,
            stdout_acked: o.acked,
            stderr_acked: e.acked,
            output_closed: o.closed && e.closed,
        }
    }

    /// True once the process has exited and its output is closed.
    pub fn finished(&self) -> bool {
        self.life().exited() && self.stdout.marks().closed && self.stderr.marks().closed
    }

    /// Records that a host stored the exit status; refused while the
    /// process has not exited (there is no status to have stored).
    pub fn ack_exit(&self) -> Result<(), SessionError> {
        if !self.life().exited() {
            return Err(SessionError::NotExited(self.spec.id.clone()));
        }
        self.exit_acked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Whether a host acknowledged the exit status as stored.
    pub fn exit_acked(&self) -> bool {
        self.exit_acked.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What the host has not taken yet: unacknowledged bytes per stream
    /// (stdout, stderr), as a phrase for the console; `None` once drained.
    pub fn undelivered(&self) -> Option<String> {
        if self.drained() {
            return None;
        }
        let (o, e) = (self.stdout.marks(), self.stderr.marks());
        Some(format!(
            "session {}: {} bytes of stdout and {} of stderr unacknowledged{}",
            self.spec.id,
            o.end - o.acked,
            e.end - e.acked,
            if self.finished() {
                ""
            } else {
                " (still running)"
            }
        ))
    }

    /// True once finished and the host acknowledged every byte.
    pub fn drained(&self) -> bool {
        let (o, e) = (self.stdout.marks(), self.stderr.marks());
        self.finished() && o.acked == o.end && e.acked == e.end
    }

    /// Waits for the process to exit (output may still be draining).
    pub async fn exited(&self) -> Life {
        let mut rx = self.life.subscribe();
        match rx.wait_for(Life::exited).await {
            Ok(l) => l.clone(),
            Err(_) => self.life(),
        }
    }

    /// Waits until the process exited and all output is in the buffers.
    pub async fn wait(&self) -> SessionStatus {
        self.exited().await;
        let mut o = self.stdout.subscribe();
        let mut e = self.stderr.subscribe();
        let _ = o.wait_for(|m| m.closed).await;
        let _ = e.wait_for(|m| m.closed).await;
        self.status()
    }

    fn set_exited(&self, code: i32) {
        self.life.send_modify(|l| {
            if !l.exited() {
                l.state = State::Exited as i32;
                l.exit_code = code;
                l.exited_at = now_nanos();
            }
        });
    }

    fn fail(&self, code: i32, error: String) {
        // Like a shell, say why on stderr so that an attached user sees it.
        self.stderr.push_now(format!("{error}\n").as_bytes());
        let now = now_nanos();
        self.life.send_modify(|l| {
            l.state = State::Failed as i32;
            l.exit_code = code;
            l.error = error;
            l.started_at = now;
            l.exited_at = now;
        });
        self.stdout.close();
        self.stderr.close();
    }

    fn running_pid(&self) -> Result<Pid, SessionError> {
        let l = self.life();
        if l.state != State::Running as i32 {
            return Err(SessionError::NotRunning(self.spec.id.clone()));
        }
        Ok(Pid::from_raw(l.pid))
    }

    pub fn signal(&self, signo: i32) -> Result<(), SessionError> {
        let sig = Signal::try_from(signo).map_err(|_| SessionError::BadSignal(signo))?;
        let pid = self.running_pid()?;
        kill(pid, sig).map_err(|e| self.io_err(e.into()))
    }

    /// Sends the stop signal, waits the grace period, then kills the whole
    /// process group. Returns the final status.
    pub async fn stop(&self, signo: i32, timeout: Duration) -> Result<SessionStatus, SessionError> {
        if self.life().exited() {
            return Ok(self.status());
        }
        let signo = if signo != 0 {
            signo
        } else if self.spec.stop_signal != 0 {
            self.spec.stop_signal as i32
        } else {
            libc::SIGTERM
        };
        let timeout = if !timeout.is_zero() {
            timeout
        } else if self.spec.stop_timeout_seconds != 0 {
            Duration::from_secs(u64::from(self.spec.stop_timeout_seconds))
        } else {
            DEFAULT_STOP_TIMEOUT
        };
        match self.signal(signo) {
            Ok(()) | Err(SessionError::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        if tokio::time::timeout(timeout, self.exited()).await.is_err() {
            self.kill_group();
        }
        Ok(self.wait().await)
    }

    /// SIGKILL to the session's process group (each session leads one).
    pub fn kill_group(&self) {
        if let Ok(pid) = self.running_pid() {
            let _ = kill(Pid::from_raw(-pid.as_raw()), Signal::SIGKILL);
            let _ = kill(pid, Signal::SIGKILL);
        }
    }

    pub fn resize(&self, rows: u32, cols: u32) -> Result<(), SessionError> {
        let pty = self
            .pty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| SessionError::NoTty(self.spec.id.clone()))?;
        spawn::resize(pty.get_ref(), rows, cols).map_err(|e| self.io_err(e))
    }

    /// Queues bytes for the process's stdin and returns the stdin offset
    /// one past them: once [`Session::stdin_taken`] reaches it, the process
    /// has them. Data for a session without open stdin is an error.
    pub fn write_stdin(&self, data: bytes::Bytes) -> Result<u64, SessionError> {
        use std::sync::atomic::Ordering;
        let tx = lock(&self.stdin.tx);
        let Some(tx) = tx.as_ref() else {
            return Err(SessionError::Invalid(format!(
                "session {:?} has no open stdin",
                self.spec.id
            )));
        };
        let n = data.len() as u64;
        let end = self.stdin.queued.fetch_add(n, Ordering::SeqCst) + n;
        if tx.send(StdinMsg::Data(data)).is_err() {
            // The writer is gone (stdin broke): nothing will take them.
            self.stdin.taken.send_modify(|t| *t += n);
        }
        Ok(end)
    }

    /// Follows the total stdin bytes the process has taken.
    pub fn stdin_taken(&self) -> watch::Receiver<u64> {
        self.stdin.taken.subscribe()
    }

    /// Closes stdin once what is queued has been written: EOF on a pipe,
    /// the EOF character (^D) on a terminal. Returns at once.
    pub fn close_stdin(&self) {
        if let Some(tx) = lock(&self.stdin.tx).take() {
            let _ = tx.send(StdinMsg::Close);
        }
    }

    fn set_stdin(self: &Arc<Self>, stdin: Stdin) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.stdin.tx) = Some(tx);
        let session = self.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut stdin = Some(stdin);
            while let Some(msg) = rx.recv().await {
                let data = match msg {
                    StdinMsg::Data(d) => d,
                    StdinMsg::Close => {
                        if let Some(Stdin::Pty(fd)) = stdin.take() {
                            let _ = crate::fdio::write_all(&fd, b"\x04").await;
                        }
                        continue;
                    }
                };
                let n = data.len() as u64;
                let r = match stdin.as_mut() {
                    Some(Stdin::Pipe(p)) => p.write_all(&data).await,
                    Some(Stdin::Pty(fd)) => crate::fdio::write_all(fd, &data).await,
                    None => Ok(()),
                };
                if let Err(e) = r {
                    // The process closed its stdin or exited: drop what it
                    // will never read, so that no sender waits for it.
                    crate::info!("session {}: stdin: {e}", session.id());
                    stdin = None;
                }
                session.stdin.taken.send_modify(|t| *t += n);
            }
        });
    }

    fn io_err(&self, source: std::io::Error) -> SessionError {
        SessionError::Io {
            id: self.spec.id.clone(),
            source,
        }
    }
}

/// Every session in the VM, and the reaper that collects their exits.
#[derive(Debug)]
pub struct Sessions {
    hostname: String,
    by_id: Mutex<HashMap<String, Arc<Session>>>,
    /// Held while forking and while reaping, so that a child is registered
    /// before anyone can collect its exit status.
    by_pid: Mutex<HashMap<i32, Arc<Session>>>,
}

impl Sessions {
    pub fn new(hostname: String) -> Arc<Self> {
        Arc::new(Self {
            hostname,
            by_id: Mutex::new(HashMap::new()),
            by_pid: Mutex::new(HashMap::new()),
        })
    }

    pub fn get(&self, id: &str) -> Result<Arc<Session>, SessionError> {
        lock(&self.by_id)
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_string()))
    }

    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<_> = lock(&self.by_id).values().cloned().collect();
        v.sort_by_key(|s| s.life().started_at);
        v
    }

    /// Creates and starts a session. A process that cannot be started still
    /// gives a session, in state FAILED with exit code 126 or 127.
    pub fn start(&self, spec: SessionSpec) -> Result<Arc<Session>, SessionError> {
        if spec.id.is_empty() {
            return Err(SessionError::Invalid("session id is empty".into()));
        }
        if spec.args.is_empty() {
            return Err(SessionError::Invalid(format!(
                "session {:?} has no command (args is empty)",
                spec.id
            )));
        }
        let session = Arc::new(Session::new(spec));
        {
            let mut by_id = lock(&self.by_id);
            if by_id.contains_key(session.id()) {
                return Err(SessionError::AlreadyExists(session.id().to_string()));
            }
            by_id.insert(session.id().to_string(), session.clone());
        }
        let mut by_pid = lock(&self.by_pid);
        match spawn::launch(&session.spec, &self.hostname) {
            Err(e) => {
                drop(by_pid);
                crate::info!("session {} failed to start: {}", session.id(), e.message);
                session.fail(e.exit_code, e.message);
            }
            Ok(started) => {
                by_pid.insert(started.pid, session.clone());
                drop(by_pid);
                session.life.send_modify(|l| {
                    l.state = State::Running as i32;
                    l.pid = started.pid;
                    l.started_at = now_nanos();
                });
                self.attach_io(&session, started.io);
            }
        }
        Ok(session)
    }

    fn attach_io(&self, session: &Arc<Session>, io: spawn::Stdio3) {
        match io {
            spawn::Stdio3::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                if let Some(fd) = stdin {
                    match tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
                        Ok(p) => session.set_stdin(Stdin::Pipe(p)),
                        Err(e) => crate::error!("session {}: stdin: {e}", session.id()),
                    }
                }
                pump::spawn_pipe(session.clone(), stdout, pump::Stream::Stdout);
                pump::spawn_pipe(session.clone(), stderr, pump::Stream::Stderr);
            }
            spawn::Stdio3::Pty { master } => match pump::async_fd(master) {
                Ok(fd) => {
                    *lock(&session.pty) = Some(fd.clone());
                    if session.spec.open_stdin {
                        session.set_stdin(Stdin::Pty(fd.clone()));
                    }
                    session.stderr.close();
                    pump::spawn_pty(session.clone(), fd);
                }
                Err(e) => {
                    crate::error!("session {}: terminal: {e}", session.id());
                    session.stdout.close();
                    session.stderr.close();
                }
            },
        }
    }

    /// Collects every exited child in the VM, forever. Exits of session
    /// processes are recorded; orphans are just reaped.
    pub async fn reap_forever(self: Arc<Self>) {
        let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
        {
            Ok(s) => s,
            Err(e) => {
                crate::error!("cannot watch SIGCHLD, orphans will not be reaped: {e}");
                return;
            }
        };
        loop {
            self.reap_now();
            // A missed signal costs at most this long.
            let _ = tokio::time::timeout(Duration::from_secs(1), sigchld.recv()).await;
        }
    }

    fn reap_now(&self) {
        let mut by_pid = lock(&self.by_pid);
        loop {
            let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            if let Some(s) = by_pid.remove(&pid.as_raw()) {
                crate::info!("session {} exited with code {code}", s.id());
                s.set_exited(code);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> SessionSpec {
        SessionSpec {
            id: id.into(),
            args: vec!["true".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_exit_status_is_acknowledged_only_once_there_is_one() {
        let s = Session::new(spec("main"));
        s.life.send_modify(|l| l.state = State::Running as i32);
        assert!(matches!(s.ack_exit(), Err(SessionError::NotExited(_))));
        assert!(!s.exit_acked());
        s.stdout.push_now(b"bye\n");
        s.set_exited(3);
        s.stdout.close();
        s.stderr.close();
        assert_eq!(
            s.undelivered().as_deref(),
            Some("session main: 4 bytes of stdout and 0 of stderr unacknowledged")
        );
        s.stdout.ack(4);
        assert_eq!(s.undelivered(), None, "drained");
        assert!(!s.exit_acked(), "output acknowledged, the status not");
        s.ack_exit().unwrap();
        assert!(s.exit_acked());
    }

    #[test]
    fn a_running_session_is_said_to_be_running() {
        let s = Session::new(spec("exec1"));
        s.life.send_modify(|l| l.state = State::Running as i32);
        assert_eq!(
            s.undelivered().as_deref(),
            Some("session exec1: 0 bytes of stdout and 0 of stderr unacknowledged (still running)")
        );
    }
}
