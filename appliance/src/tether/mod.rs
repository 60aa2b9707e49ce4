//! The host side of the tether protocol: an SSH client to one container VM's
//! tether, with the RPC channel, attach streams and archive transfers.
//!
//! Owns connecting and authenticating (the tether's host key is pinned from
//! the spec the appliance generated; no other server is accepted), request
//! multiplexing on the RPC channel, attach streams and archive transfers
//! (`docker cp`). Must not know how the byte stream to the VM is made (QEMU
//! socket, vsock, serial): callers hand in any `AsyncRead + AsyncWrite`.

mod archive;
mod attach;
mod rpc;

pub use archive::{ArchiveDownload, ArchiveResult};
pub use attach::{Attach, AttachEvent, Output};
pub use proto::v1::PathStat;
pub use rpc::Rpc;

use std::sync::Arc;
use std::time::Duration;

use proto::v1::{
    AckRequest, CloseStdinRequest, ExecRequest, Ping, PowerOffRequest, ResizeRequest, SessionSpec,
    SessionStatus, SignalRequest, StatusReply, StatusRequest, StopRequest, VersionReply,
    VersionRequest, WaitRequest, WindowSize, request::Body as Req, response::Body as Resp,
};
use russh::client::{self, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tokio::io::{AsyncRead, AsyncWrite};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("SSH")]
    Ssh(#[from] russh::Error),
    #[error("The tether refused the client key")]
    Refused,
    #[error("The tether presented a host key other than the one in its spec")]
    HostKeyMismatch,
    #[error("The tether refused the {0} channel")]
    ChannelRefused(&'static str),
    #[error("RPC channel closed")]
    Closed,
    #[error("RPC framing")]
    Frame(#[from] proto::framing::FrameError),
    #[error("Tether error on {element:?}: {message}")]
    Remote {
        code: i32,
        message: String,
        element: String,
    },
    #[error("Unexpected reply to {0}")]
    Unexpected(&'static str),
    #[error("Channel handshake")]
    Handshake(#[source] std::io::Error),
    /// An archive transfer ended before the tether said it was complete.
    #[error("Archive transfer of {path:?} did not complete: {why}")]
    Incomplete { path: String, why: &'static str },
    #[error("Reading the archive to copy in")]
    ArchiveSource(#[source] std::io::Error),
}

/// The host's half of the connection handshake (see `proto::handshake`):
/// sends a hello with a fresh nonce, every second until the tether answers
/// it, and discards whatever came before the answer.
pub async fn handshake<S>(stream: S) -> Result<S, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use proto::handshake::{OK, hello_line, wait_for};
    use tokio::io::AsyncWriteExt;
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| ClientError::Handshake(e.into()))?;
    let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let answered = async {
        loop {
            match wait_for(&mut rd, OK).await? {
                Some(n) if n == nonce => return Ok(()),
                Some(_) => continue,
                None => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            }
        }
    };
    let hello = async {
        loop {
            wr.write_all(hello_line(&nonce).as_bytes()).await?;
            wr.flush().await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        r = answered => r.map_err(ClientError::Handshake)?,
        r = hello => r.map_err(ClientError::Handshake)?,
    }
    Ok(rd.unsplit(wr))
}

/// Where a connection attempt is (see `Client::connect_reporting`).
#[derive(Debug)]
pub struct Phase(std::sync::Mutex<&'static str>);

impl Default for Phase {
    fn default() -> Self {
        Self(std::sync::Mutex::new("connecting"))
    }
}

impl Phase {
    fn set(&self, what: &'static str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = what;
    }

    pub fn get(&self) -> &'static str {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Verifier {
    host_key: PublicKey,
    mismatch: Arc<std::sync::atomic::AtomicBool>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = matches!(key, PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.host_key.key_data());
        if !ok {
            self.mismatch
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(ok)
    }
}

/// A connection to one tether.
///
/// Dropping it (or `close`) disconnects, even while attach streams or RPC
/// calls are outstanding; those then fail.
pub struct Client {
    /// Always `Some` until dropped or closed.
    handle: Option<Handle<Verifier>>,
    rpc: Rpc,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let (Some(h), Ok(rt)) = (self.handle.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn(async move { disconnect(&h).await });
        }
    }
}

async fn disconnect(h: &Handle<Verifier>) {
    let _ = h
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
}

impl Client {
    /// Runs the SSH handshake over `stream`, authenticates with `key` and
    /// opens the RPC channel.
    pub async fn connect<S>(
        stream: S,
        key: &PrivateKey,
        host_key: &PublicKey,
    ) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::connect_reporting(stream, key, host_key, &Phase::default()).await
    }

    /// `connect`, recording in `phase` which step it is at, so that a
    /// caller that gives up can say where the tether stopped answering.
    pub async fn connect_reporting<S>(
        stream: S,
        key: &PrivateKey,
        host_key: &PublicKey,
        phase: &Phase,
    ) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = client::Config {
            inactivity_timeout: None,
            window_size: 8 << 20,
            maximum_packet_size: 32768,
            channel_buffer_size: 256,
            ..Default::default()
        };
        phase.set("waiting for an answer to the hello (is the tether up?)");
        let stream = handshake(stream).await?;
        phase.set("in the SSH key exchange");
        let mismatch = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let verifier = Verifier {
            host_key: host_key.clone(),
            mismatch: mismatch.clone(),
        };
        let mut handle = match client::connect_stream(Arc::new(config), stream, verifier).await {
            Ok(h) => h,
            Err(_) if mismatch.load(std::sync::atomic::Ordering::SeqCst) => {
                return Err(ClientError::HostKeyMismatch);
            }
            Err(e) => return Err(e.into()),
        };
        phase.set("authenticating");
        let auth = handle
            .authenticate_publickey(
                "tether",
                PrivateKeyWithHashAlg::new(Arc::new(key.clone()), None),
            )
            .await?;
        if !auth.success() {
            return Err(ClientError::Refused);
        }
        phase.set("opening the RPC channel");
        let channel = handle.channel_open_session().await?;
        channel
            .request_subsystem(true, proto::RPC_SUBSYSTEM)
            .await?;
        let rpc = Rpc::start(channel).await?;
        Ok(Self {
            handle: Some(handle),
            rpc,
        })
    }

    /// Disconnects from the tether.
    pub async fn close(mut self) {
        if let Some(h) = self.handle.take() {
            disconnect(&h).await;
        }
    }

    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    pub async fn ping(&self, payload: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        match self.rpc.call(Req::Ping(Ping { payload })).await? {
            Resp::Pong(p) => Ok(p.payload),
            _ => Err(ClientError::Unexpected("ping")),
        }
    }

    pub async fn version(&self) -> Result<VersionReply, ClientError> {
        match self.rpc.call(Req::Version(VersionRequest {})).await? {
            Resp::Version(v) => Ok(v),
            _ => Err(ClientError::Unexpected("version")),
        }
    }

    /// Starts a further process in the running container.
    pub async fn exec(&self, session: SessionSpec) -> Result<SessionStatus, ClientError> {
        session_reply(
            self.rpc
                .call(Req::Exec(ExecRequest {
                    session: Some(session),
                }))
                .await?,
            "exec",
        )
    }

    pub async fn signal(&self, session: &str, signal: i32) -> Result<(), ClientError> {
        self.rpc
            .call(Req::Signal(SignalRequest {
                session: session.into(),
                signal,
            }))
            .await
            .map(drop)
    }

    pub async fn resize(&self, session: &str, rows: u32, cols: u32) -> Result<(), ClientError> {
        self.rpc
            .call(Req::Resize(ResizeRequest {
                session: session.into(),
                window: Some(WindowSize { rows, cols }),
            }))
            .await
            .map(drop)
    }

    pub async fn close_stdin(&self, session: &str) -> Result<(), ClientError> {
        self.rpc
            .call(Req::CloseStdin(CloseStdinRequest {
                session: session.into(),
            }))
            .await
            .map(drop)
    }

    /// Waits for the session to exit and its output to close. The caller
    /// holds the exit status once this returns, so it is acknowledged (not
    /// the output: that is for whoever reads it).
    pub async fn wait(&self, session: &str) -> Result<SessionStatus, ClientError> {
        let status = session_reply(
            self.rpc
                .call(Req::Wait(WaitRequest {
                    session: session.into(),
                }))
                .await?,
            "wait",
        )?;
        self.ack_exit(session, 0, 0).await?;
        Ok(status)
    }

    /// Stop signal, grace period, SIGKILL; zero values take the session's.
    pub async fn stop(
        &self,
        session: &str,
        signal: i32,
        timeout: Duration,
    ) -> Result<SessionStatus, ClientError> {
        session_reply(
            self.rpc
                .call(Req::Stop(StopRequest {
                    session: session.into(),
                    signal,
                    timeout_seconds: timeout.as_secs() as u32,
                }))
                .await?,
            "stop",
        )
    }

    /// Status of one session, or of all when `session` is empty.
    pub async fn status(&self, session: &str) -> Result<StatusReply, ClientError> {
        match self
            .rpc
            .call(Req::Status(StatusRequest {
                session: session.into(),
            }))
            .await?
        {
            Resp::Status(s) => Ok(s),
            _ => Err(ClientError::Unexpected("status")),
        }
    }

    /// Tells the tether that output up to these offsets is stored: it may
    /// drop it.
    pub async fn ack(&self, session: &str, stdout: u64, stderr: u64) -> Result<(), ClientError> {
        Self::ack_via(&self.rpc, session, stdout, stderr, false).await
    }

    /// Tells the tether that the session's exit status is stored (and its
    /// output up to these offsets). A finished container's VM stays up until
    /// its primary session's exit status is acknowledged so.
    pub async fn ack_exit(
        &self,
        session: &str,
        stdout: u64,
        stderr: u64,
    ) -> Result<(), ClientError> {
        Self::ack_via(&self.rpc, session, stdout, stderr, true).await
    }

    async fn ack_via(
        rpc: &Rpc,
        session: &str,
        stdout: u64,
        stderr: u64,
        exit_status: bool,
    ) -> Result<(), ClientError> {
        rpc.call(Req::Ack(AckRequest {
            session: session.into(),
            stdout_offset: stdout,
            stderr_offset: stderr,
            exit_status,
        }))
        .await
        .map(drop)
    }

    /// Powers the VM off: the tether answers, then ends every process
    /// (SIGTERM, 2 s, SIGKILL), syncs and powers off, so the VM process
    /// exits within a few seconds. Output not yet acknowledged is lost. This
    /// is how a maintenance-mode VM (spec `maintenance`, or no primary
    /// session) is ended.
    pub async fn power_off(&self) -> Result<(), ClientError> {
        self.rpc
            .call(Req::PowerOff(PowerOffRequest {}))
            .await
            .map(drop)
    }

    /// Streams a tar of `path` out of the container, `docker cp` style: the
    /// top entry is named after the last component of `path` ("dir/."
    /// gives the directory's contents), symlinks inside are archived as
    /// links. The path is resolved inside the container (volumes included;
    /// /proc, /sys and /dev refused). A path that cannot be archived fails
    /// here with `ClientError::Remote` (`code` NOT_FOUND for a missing one,
    /// `element` the path); a failure half way fails the download's reads.
    pub async fn archive_get(&self, path: &str) -> Result<ArchiveDownload, ClientError> {
        archive::get(self.handle()?, path).await
    }

    /// Unpacks the tar read from `tar` into the directory `path` of the
    /// container, which must exist (else `ClientError::Remote`, INVALID_ARGUMENT
    /// "... is not a directory", or NOT_FOUND "... does not exist"). Owners,
    /// modes and device nodes are restored as in the tar; entries that would
    /// leave `path` are refused. A failure names the tar entry in
    /// `ClientError::Remote::element`; entries before it stay applied. An
    /// error reading `tar` cancels the transfer (`ClientError::ArchiveSource`).
    pub async fn archive_put<R>(&self, path: &str, tar: R) -> Result<ArchiveResult, ClientError>
    where
        R: AsyncRead + Unpin + Send,
    {
        archive::put(self.handle()?, path, tar).await
    }

    /// What `path` in the container is (not following a final symlink), as
    /// `archive_get` would see it.
    pub async fn archive_stat(&self, path: &str) -> Result<PathStat, ClientError> {
        archive::stat(self.handle()?, path).await
    }

    fn handle(&self) -> Result<&Handle<Verifier>, ClientError> {
        self.handle.as_ref().ok_or(ClientError::Closed)
    }

    /// Attaches to a session's streams from the given offsets. With
    /// `stdin`, data written to the attach goes to the process.
    pub async fn attach(
        &self,
        session: &str,
        from: (u64, u64),
        stdin: bool,
    ) -> Result<Attach, ClientError> {
        let handle = self.handle.as_ref().ok_or(ClientError::Closed)?;
        Attach::open(handle, self.rpc.clone(), session, from, stdin, true).await
    }

    /// An attach that carries stdin, signals, resizes and the exit status,
    /// but no output (a tether older than this sends it anyway).
    pub async fn attach_without_output(
        &self,
        session: &str,
        stdin: bool,
    ) -> Result<Attach, ClientError> {
        let handle = self.handle.as_ref().ok_or(ClientError::Closed)?;
        Attach::open(handle, self.rpc.clone(), session, (0, 0), stdin, false).await
    }
}

fn session_reply(r: Resp, what: &'static str) -> Result<SessionStatus, ClientError> {
    match r {
        Resp::Session(s) => Ok(s),
        _ => Err(ClientError::Unexpected(what)),
    }
}
