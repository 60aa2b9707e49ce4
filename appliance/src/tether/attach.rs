//! One attach stream to a session: stdout, stderr, exit status in; stdin,
//! EOF, resize and signals out.
//!
//! The attach keeps the offsets of what it has received and acknowledges
//! them to the tether (every `ACK_EVERY` bytes and at the end), which lets
//! the tether drop that output. A caller that persists output elsewhere
//! acknowledges only after persisting: see `Attach::manual_ack`.

use bytes::Bytes;
use prost::Message;
use proto::v1::AttachRequest;
use russh::client::{Handle, Msg};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};

use super::{ClientError, Rpc, Verifier};

const ACK_EVERY: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The session exited with this code; the stream ends after it.
    Exit(i32),
}

/// Everything an attach delivered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: Option<i32>,
}

pub struct Attach {
    session: String,
    rpc: Rpc,
    rd: ChannelReadHalf,
    wr: ChannelWriteHalf<Msg>,
    stdout: u64,
    stderr: u64,
    acked: u64,
    auto_ack: bool,
}

impl Attach {
    pub(super) async fn open(
        handle: &Handle<Verifier>,
        rpc: Rpc,
        session: &str,
        from: (u64, u64),
        stdin: bool,
    ) -> Result<Self, ClientError> {
        let mut channel = handle.channel_open_session().await?;
        let req = AttachRequest {
            session: session.to_string(),
            stdout_offset: from.0,
            stderr_offset: from.1,
            stdin,
        };
        channel.exec(true, req.encode_to_vec()).await?;
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => break,
                Some(ChannelMsg::Failure) | None => {
                    return Err(ClientError::ChannelRefused("attach"));
                }
                Some(_) => {}
            }
        }
        let (rd, wr) = channel.split();
        Ok(Self {
            session: session.to_string(),
            rpc,
            rd,
            wr,
            stdout: from.0,
            stderr: from.1,
            acked: from.0 + from.1,
            auto_ack: true,
        })
    }

    /// The caller acknowledges output itself (`Client::ack`) once stored.
    pub fn manual_ack(mut self) -> Self {
        self.auto_ack = false;
        self
    }

    /// Offsets received so far (stdout, stderr).
    pub fn offsets(&self) -> (u64, u64) {
        (self.stdout, self.stderr)
    }

    async fn ack(&mut self) -> Result<(), ClientError> {
        self.acked = self.stdout + self.stderr;
        super::Client::ack_via(&self.rpc, &self.session, self.stdout, self.stderr).await
    }

    /// The next event, or `None` once the stream has ended.
    pub async fn next(&mut self) -> Result<Option<AttachEvent>, ClientError> {
        loop {
            let ev = match self.rd.wait().await {
                None | Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) => {
                    if self.auto_ack && self.acked != self.stdout + self.stderr {
                        self.ack().await?;
                    }
                    return Ok(None);
                }
                Some(ChannelMsg::Data { data }) => {
                    self.stdout += data.len() as u64;
                    AttachEvent::Stdout(data)
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    self.stderr += data.len() as u64;
                    AttachEvent::Stderr(data)
                }
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    if self.auto_ack {
                        self.ack().await?;
                    }
                    AttachEvent::Exit(exit_status as i32)
                }
                Some(_) => continue,
            };
            if self.auto_ack && self.stdout + self.stderr - self.acked >= ACK_EVERY {
                self.ack().await?;
            }
            return Ok(Some(ev));
        }
    }

    /// Reads until the stream ends.
    pub async fn collect(mut self) -> Result<Output, ClientError> {
        let mut out = Output::default();
        while let Some(ev) = self.next().await? {
            match ev {
                AttachEvent::Stdout(b) => out.stdout.extend_from_slice(&b),
                AttachEvent::Stderr(b) => out.stderr.extend_from_slice(&b),
                AttachEvent::Exit(c) => out.exit_code = Some(c),
            }
        }
        Ok(out)
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        Ok(self.wr.data_bytes(Bytes::copy_from_slice(data)).await?)
    }

    /// Sends EOF: the process sees end of input.
    pub async fn close_stdin(&self) -> Result<(), ClientError> {
        Ok(self.wr.eof().await?)
    }

    pub async fn resize(&self, rows: u32, cols: u32) -> Result<(), ClientError> {
        Ok(self.wr.window_change(cols, rows, 0, 0).await?)
    }

    pub async fn signal(&self, sig: Sig) -> Result<(), ClientError> {
        Ok(self.wr.signal(sig).await?)
    }
}
