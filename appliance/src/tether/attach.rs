//! One attach stream to a session: stdout, stderr, exit status in; stdin,
//! EOF, resize and signals out.
//!
//! A task takes everything off the channel as it arrives (the connection is
//! shared, and must never wait on this attach's consumer); the consumer
//! grants the tether credit as it takes events, and stdin waits for the
//! tether's credit (`proto::flow`).
//!
//! The attach keeps the offsets of what it has received and acknowledges
//! them to the tether (every `ACK_EVERY` bytes and at the end, with the exit
//! status once it is taken), which lets the tether drop that output and,
//! for the primary session, power off. A caller that persists output
//! elsewhere acknowledges only after persisting: see `Attach::manual_ack`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use prost::Message;
use proto::flow;
use proto::v1::AttachRequest;
use russh::client::{Handle, Msg};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::sync::{Notify, watch};

use super::{ClientError, Rpc, Verifier};

const ACK_EVERY: u64 = 1 << 20;
/// Stdin goes out in pieces no larger than this.
const STDIN_PIECE: usize = 32 << 10;

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
    queue: Arc<Queue>,
    drain: tokio::task::JoinHandle<()>,
    wr: ChannelWriteHalf<Msg>,
    stdout: u64,
    stderr: u64,
    acked: u64,
    auto_ack: bool,
    /// Output consumed, and the credit last granted for it.
    consumed: u64,
    credited: u64,
    /// Stdin sent, and the tether's credit for it.
    stdin_sent: AtomicU64,
    stdin_credit: watch::Receiver<u64>,
}

impl Drop for Attach {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// What the drain task took off the channel and the consumer has not yet.
/// Consecutive data of one stream is coalesced; its size is bounded by the
/// output window (`proto::flow`), since the tether sends no more than that
/// beyond the credit `next` grants.
#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Item>>,
    more: Notify,
}

enum Item {
    Stdout(BytesMut),
    Stderr(BytesMut),
    Exit(i32),
    End,
}

impl Queue {
    fn push(&self, item: Item) {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        match (q.back_mut(), item) {
            (Some(Item::Stdout(b)), Item::Stdout(d)) | (Some(Item::Stderr(b)), Item::Stderr(d)) => {
                b.extend_from_slice(&d)
            }
            (_, item) => q.push_back(item),
        }
        drop(q);
        self.more.notify_one();
    }

    /// Waits for an item and says what the first is, leaving it queued.
    async fn front(&self) -> Front {
        loop {
            let notified = self.more.notified();
            let front = match self.items.lock().unwrap_or_else(|e| e.into_inner()).front() {
                Some(Item::Stdout(_) | Item::Stderr(_)) => Some(Front::Data),
                Some(Item::Exit(_)) => Some(Front::Exit),
                Some(Item::End) => Some(Front::End),
                None => None,
            };
            if let Some(f) = front {
                return f;
            }
            notified.await;
        }
    }

    /// Takes the first item; `End` stays, so that every later call ends too.
    fn pop(&self) -> Option<Item> {
        let mut q = self.items.lock().unwrap_or_else(|e| e.into_inner());
        match q.front() {
            Some(Item::End) => Some(Item::End),
            _ => q.pop_front(),
        }
    }
}

enum Front {
    Data,
    /// The exit status: output is complete before it.
    Exit,
    /// The end of the stream.
    End,
}

/// Moves everything off the channel at once, so that the connection (shared
/// with the RPC channel and every other attach) never waits on this
/// attach's consumer.
async fn drain(mut rd: ChannelReadHalf, queue: Arc<Queue>, stdin_credit: watch::Sender<u64>) {
    loop {
        let item = match rd.wait().await {
            None | Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) => Item::End,
            Some(ChannelMsg::Data { data }) => Item::Stdout(BytesMut::from(&data[..])),
            Some(ChannelMsg::ExtendedData { data, ext }) if ext == flow::EXT_STDERR => {
                Item::Stderr(BytesMut::from(&data[..]))
            }
            Some(ChannelMsg::ExtendedData { data, ext }) if ext == flow::EXT_CREDIT => {
                if let Some(total) = flow::decode_credit(&data) {
                    stdin_credit.send_if_modified(|c| {
                        let more = total > *c;
                        *c = (*c).max(total);
                        more
                    });
                }
                continue;
            }
            Some(ChannelMsg::ExitStatus { exit_status }) => Item::Exit(exit_status as i32),
            Some(_) => continue,
        };
        let end = matches!(item, Item::End);
        queue.push(item);
        if end {
            return;
        }
    }
}

impl Attach {
    pub(super) async fn open(
        handle: &Handle<Verifier>,
        rpc: Rpc,
        session: &str,
        from: (u64, u64),
        stdin: bool,
        output: bool,
    ) -> Result<Self, ClientError> {
        let mut channel = handle.channel_open_session().await?;
        let req = AttachRequest {
            session: session.to_string(),
            stdout_offset: from.0,
            stderr_offset: from.1,
            stdin,
            without_output: !output,
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
        let queue = Arc::new(Queue::default());
        let (credit_tx, stdin_credit) = watch::channel(0);
        let drain = tokio::spawn(drain(rd, queue.clone(), credit_tx));
        Ok(Self {
            session: session.to_string(),
            rpc,
            queue,
            drain,
            wr,
            stdout: from.0,
            stderr: from.1,
            acked: from.0 + from.1,
            auto_ack: true,
            consumed: 0,
            credited: 0,
            stdin_sent: AtomicU64::new(0),
            stdin_credit,
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

    async fn ack(&mut self, exit_status: bool) -> Result<(), ClientError> {
        self.acked = self.stdout + self.stderr;
        super::Client::ack_via(
            &self.rpc,
            &self.session,
            self.stdout,
            self.stderr,
            exit_status,
        )
        .await
    }

    /// The next event, or `None` once the stream has ended.
    ///
    /// Cancel-safe: every await comes before the event is taken, so a call
    /// dropped half way (a time-out around it) loses nothing.
    pub async fn next(&mut self) -> Result<Option<AttachEvent>, ClientError> {
        if self.consumed - self.credited >= flow::CREDIT_EVERY {
            self.wr
                .extended_data_bytes(
                    flow::EXT_CREDIT,
                    Bytes::copy_from_slice(&flow::encode_credit(self.consumed)),
                )
                .await?;
            self.credited = self.consumed;
        }
        if self.auto_ack && self.stdout + self.stderr - self.acked >= ACK_EVERY {
            self.ack(false).await?;
        }
        let front = self.queue.front().await;
        if self.auto_ack {
            match front {
                // Taken by the caller below: the exit status with all output.
                Front::Exit => self.ack(true).await?,
                Front::End if self.acked != self.stdout + self.stderr => self.ack(false).await?,
                Front::Data | Front::End => {}
            }
        }
        Ok(match self.queue.pop() {
            Some(Item::Stdout(data)) => {
                self.stdout += data.len() as u64;
                self.consumed += data.len() as u64;
                Some(AttachEvent::Stdout(data.freeze()))
            }
            Some(Item::Stderr(data)) => {
                self.stderr += data.len() as u64;
                self.consumed += data.len() as u64;
                Some(AttachEvent::Stderr(data.freeze()))
            }
            Some(Item::Exit(code)) => Some(AttachEvent::Exit(code)),
            Some(Item::End) | None => None,
        })
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

    /// Sends stdin, waiting while the tether holds a window's worth that
    /// the process has not taken yet.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), ClientError> {
        let mut credit = self.stdin_credit.clone();
        for piece in data.chunks(STDIN_PIECE) {
            let n = piece.len() as u64;
            credit
                .wait_for(|c| self.stdin_sent.load(Ordering::SeqCst) + n <= c + flow::STDIN_WINDOW)
                .await
                .map_err(|_| ClientError::Closed)?;
            self.stdin_sent.fetch_add(n, Ordering::SeqCst);
            self.wr.data_bytes(Bytes::copy_from_slice(piece)).await?;
        }
        Ok(())
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
