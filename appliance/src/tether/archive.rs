//! Archive transfers with the tether (`docker cp`): a tar of a container
//! path out (`Client::archive_get`), a tar into a container directory
//! (`Client::archive_put`), what a path is (`Client::archive_stat`). The
//! protocol is `proto/tether/v1/archive.proto`, one SSH channel per
//! transfer.
//!
//! Owns the host's half of that protocol, and that a transfer which ends
//! early is an error, never a short archive taken for a whole one. Must not
//! know where the tar comes from or goes to (files, HTTP bodies): callers
//! hand in an `AsyncRead`, or read the `ArchiveDownload`.
//!
//! Flow control (`proto::flow`): the SSH library reopens a channel's window
//! as soon as bytes arrive, so a side that stops taking a channel's bytes
//! would hold up the connection's other channels (RPC, attach). A download
//! is drained into its reader's queue at once and credited as the reader
//! takes it; an upload keeps within `flow::UPLOAD_WINDOW` of the credit the
//! tether grants as its unpacking takes the tar (a tether too old to grant
//! any gets the bytes as fast as the channel takes them).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use prost::Message;
use proto::framing::decode_frame;
use proto::v1::{
    ArchiveReply, ArchiveRequest, ArchiveResult as WireResult, Error as WireError, PathStat,
    archive_request::Direction,
};
use russh::client::{Handle, Msg};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use proto::flow;
use tokio::sync::{Notify, mpsc, watch};

use super::{ClientError, Verifier};

/// Extended data type carrying the tether's final `ArchiveResult`.
const RESULT_EXT: u32 = 1;
/// Read size for the tar handed to `archive_put`.
const PUT_CHUNK: usize = 64 * 1024;

/// A transfer that completed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveResult {
    /// Entries written (GET) or applied (PUT).
    pub entries: u64,
    /// Bytes of file contents.
    pub bytes: u64,
    /// PUT: entries left out, each with the reason.
    pub skipped: Vec<String>,
}

/// Turns the tether's final result into ours; its error into
/// `ClientError::Remote` naming the path or the tar entry.
fn from_wire(r: WireResult) -> Result<ArchiveResult, ClientError> {
    match r.error {
        Some(e) => Err(remote(e)),
        None => Ok(ArchiveResult {
            entries: r.entries,
            bytes: r.bytes,
            skipped: r.skipped,
        }),
    }
}

fn remote(e: WireError) -> ClientError {
    ClientError::Remote {
        code: e.code,
        message: e.message,
        element: e.element,
    }
}

fn incomplete(path: &str, why: &'static str) -> ClientError {
    ClientError::Incomplete {
        path: path.to_owned(),
        why,
    }
}

/// Collects extended data until the result frame is whole.
#[derive(Default)]
struct ResultFrame(Vec<u8>);

impl ResultFrame {
    fn push(&mut self, data: &[u8]) -> Result<Option<WireResult>, ClientError> {
        self.0.extend_from_slice(data);
        Ok(decode_frame::<WireResult>(&self.0)?.map(|(r, _)| r))
    }
}

/// Opens a transfer channel, sends the request and reads the reply. Returns
/// the channel halves, the reply (without error) and any data after it.
async fn open(
    handle: &Handle<Verifier>,
    direction: Direction,
    path: &str,
) -> Result<(ChannelReadHalf, ChannelWriteHalf<Msg>, ArchiveReply, Bytes), ClientError> {
    let mut channel = handle.channel_open_session().await?;
    channel
        .request_subsystem(true, proto::ARCHIVE_SUBSYSTEM)
        .await?;
    loop {
        match channel.wait().await {
            Some(ChannelMsg::Success) => break,
            Some(ChannelMsg::Failure) | None => {
                return Err(ClientError::ChannelRefused("archive"));
            }
            Some(_) => {}
        }
    }
    let (mut rd, wr) = channel.split();
    let req = ArchiveRequest {
        direction: direction as i32,
        path: path.to_owned(),
    };
    wr.data_bytes(req.encode_length_delimited_to_vec()).await?;
    let mut buf = Vec::new();
    loop {
        match rd.wait().await {
            Some(ChannelMsg::Data { data }) => buf.extend_from_slice(&data),
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                return Err(incomplete(
                    path,
                    "the tether closed the channel without answering",
                ));
            }
            Some(_) => continue,
        }
        if let Some((reply, used)) = decode_frame::<ArchiveReply>(&buf)? {
            if let Some(e) = reply.error {
                return Err(remote(e));
            }
            let rest = Bytes::copy_from_slice(&buf[used..]);
            return Ok((rd, wr, reply, rest));
        }
    }
}

pub(super) async fn stat(handle: &Handle<Verifier>, path: &str) -> Result<PathStat, ClientError> {
    let (_, wr, reply, _) = open(handle, Direction::Stat, path).await?;
    let _ = wr.close().await;
    Ok(reply.stat.unwrap_or_default())
}

pub(super) async fn get(
    handle: &Handle<Verifier>,
    path: &str,
) -> Result<ArchiveDownload, ClientError> {
    let (rd, wr, reply, rest) = open(handle, Direction::Get, path).await?;
    let stat = reply.stat.unwrap_or_default();
    // Unbounded, but the tether sends no more than a window beyond the
    // credit the reader grants as it takes pieces (`proto::flow`): the
    // channel is always drained, so a slow reader never holds up the
    // connection it shares with the container's logs and RPCs.
    let (tx, rx) = mpsc::unbounded_channel();
    let consumed = Arc::new(Consumed::default());
    tokio::spawn(receive(rd, wr, rest, tx, path.to_owned(), consumed.clone()));
    Ok(ArchiveDownload {
        path: path.to_owned(),
        stat,
        rx,
        consumed,
        current: Bytes::new(),
        state: State::Streaming,
    })
}

enum Piece {
    Data(Bytes),
    Done(Result<ArchiveResult, ClientError>),
}

/// Tar bytes the reader has taken, for the credit `receive` grants.
#[derive(Default)]
struct Consumed {
    bytes: AtomicU64,
    more: Notify,
}

/// Moves a download's channel messages to its reader until the result,
/// granting the tether credit as the reader takes them.
async fn receive(
    mut rd: ChannelReadHalf,
    wr: ChannelWriteHalf<Msg>,
    rest: Bytes,
    tx: mpsc::UnboundedSender<Piece>,
    path: String,
    consumed: Arc<Consumed>,
) {
    if !rest.is_empty() && tx.send(Piece::Data(rest)).is_err() {
        let _ = wr.close().await;
        return;
    }
    let mut frame = ResultFrame::default();
    let mut credited = 0u64;
    loop {
        let msg = tokio::select! {
            msg = rd.wait() => msg,
            // The download was dropped: stop the tether's work.
            () = tx.closed() => {
                let _ = wr.close().await;
                return;
            }
            () = consumed.more.notified() => {
                let c = consumed.bytes.load(Ordering::SeqCst);
                if c - credited >= flow::CREDIT_EVERY {
                    credited = c;
                    let credit = Bytes::copy_from_slice(&flow::encode_credit(c));
                    if wr.extended_data_bytes(flow::EXT_CREDIT, credit).await.is_err() {
                        return;
                    }
                }
                continue;
            }
        };
        let done = match msg {
            Some(ChannelMsg::Data { data }) => {
                if tx.send(Piece::Data(data)).is_err() {
                    let _ = wr.close().await;
                    return;
                }
                continue;
            }
            Some(ChannelMsg::ExtendedData { data, ext }) if ext == RESULT_EXT => {
                match frame.push(&data) {
                    Ok(Some(result)) => from_wire(result),
                    Ok(None) => continue,
                    Err(e) => Err(e),
                }
            }
            Some(ChannelMsg::Close) | None => Err(incomplete(
                &path,
                "the channel ended without the tether's result",
            )),
            Some(_) => continue,
        };
        let _ = tx.send(Piece::Done(done));
        let _ = wr.close().await;
        return;
    }
}

enum State {
    Streaming,
    /// The tether's result arrived: the archive is whole.
    Complete(ArchiveResult),
    /// The failure was reported once already.
    Failed,
}

/// A tar stream coming out of the container.
///
/// Read it with `next_chunk`, as a `futures::Stream` of `Bytes`, or as an
/// `AsyncRead`. It ends cleanly only once the tether has said the archive
/// is complete; a failure half way (a file that cannot be read, the VM or
/// the connection going away) is an error at that point, so a truncated tar
/// is never taken for a whole one. Dropping it cancels the transfer.
pub struct ArchiveDownload {
    path: String,
    stat: PathStat,
    rx: mpsc::UnboundedReceiver<Piece>,
    consumed: Arc<Consumed>,
    current: Bytes,
    state: State,
}

impl std::fmt::Debug for ArchiveDownload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveDownload")
            .field("path", &self.path)
            .field("stat", &self.stat)
            .finish_non_exhaustive()
    }
}

impl ArchiveDownload {
    /// What the archived path is (docker's X-Docker-Container-Path-Stat).
    pub fn stat(&self) -> &PathStat {
        &self.stat
    }

    /// The tether's count of what it sent, once the stream has ended
    /// cleanly.
    pub fn result(&self) -> Option<&ArchiveResult> {
        match &self.state {
            State::Complete(r) => Some(r),
            _ => None,
        }
    }

    /// The next piece of the tar, `None` once the archive is complete.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// Reads the whole archive into memory (named so as not to hide
    /// `StreamExt::collect`).
    pub async fn read_all(mut self) -> Result<(Vec<u8>, ArchiveResult), ClientError> {
        let mut tar = Vec::new();
        while let Some(b) = self.next_chunk().await? {
            tar.extend_from_slice(&b);
        }
        let result = self.result().cloned().unwrap_or_default();
        Ok((tar, result))
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, ClientError>> {
        if !self.current.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.current))));
        }
        match self.state {
            State::Complete(_) => return Poll::Ready(Ok(None)),
            State::Failed => {
                return Poll::Ready(Err(incomplete(&self.path, "the transfer failed")));
            }
            State::Streaming => {}
        }
        let piece = ready!(self.rx.poll_recv(cx));
        Poll::Ready(match piece {
            Some(Piece::Data(b)) => {
                self.consumed
                    .bytes
                    .fetch_add(b.len() as u64, Ordering::SeqCst);
                self.consumed.more.notify_one();
                Ok(Some(b))
            }
            Some(Piece::Done(Ok(r))) => {
                self.state = State::Complete(r);
                Ok(None)
            }
            Some(Piece::Done(Err(e))) => {
                self.state = State::Failed;
                Err(e)
            }
            None => {
                self.state = State::Failed;
                Err(incomplete(&self.path, "the transfer task ended"))
            }
        })
    }
}

impl futures::Stream for ArchiveDownload {
    type Item = Result<Bytes, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if matches!(this.state, State::Failed) && this.current.is_empty() {
            // The error was yielded once; the stream is over.
            return Poll::Ready(None);
        }
        this.poll_chunk(cx).map(Result::transpose)
    }
}

impl AsyncRead for ArchiveDownload {
    /// Errors are `io::Error`s wrapping the `ClientError`
    /// (`io::Error::get_ref` gives it back).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.current.is_empty() {
                let n = buf.remaining().min(this.current.len());
                buf.put_slice(&this.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            match ready!(this.poll_chunk(cx)) {
                Ok(Some(b)) => this.current = b,
                Ok(None) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

/// How many tar bytes an upload may send now: what keeps it within
/// `flow::UPLOAD_WINDOW` of the tether's `credit` (`None`: a tether that
/// grants none, so no limit), in pieces of at most `PUT_CHUNK`. Zero: wait
/// for more credit.
fn upload_room(sent: u64, credit: Option<u64>) -> usize {
    let room = match credit {
        None => u64::MAX,
        Some(c) => (c.saturating_add(flow::UPLOAD_WINDOW)).saturating_sub(sent),
    };
    usize::try_from(room).map_or(PUT_CHUNK, |r| r.min(PUT_CHUNK))
}

/// Takes a credit message of the tether's into `credit` (running totals
/// only ever grow); a malformed one is ignored.
fn take_credit(credit: &watch::Sender<u64>, data: &[u8]) {
    if let Some(total) = flow::decode_credit(data) {
        credit.send_if_modified(|c| {
            let more = total > *c;
            *c = (*c).max(total);
            more
        });
    }
}

pub(super) async fn put<R>(
    handle: &Handle<Verifier>,
    path: &str,
    mut tar: R,
) -> Result<ArchiveResult, ClientError>
where
    R: AsyncRead + Unpin + Send,
{
    let (mut rd, wr, reply, _) = open(handle, Direction::Put, path).await?;
    let (credit_tx, mut credit) = watch::channel(0u64);
    // Reads the channel all along (the tether's credit and its result), so
    // that nothing of this transfer waits in the connection's queues.
    let result = async {
        let mut frame = ResultFrame::default();
        loop {
            match rd.wait().await {
                Some(ChannelMsg::ExtendedData { data, ext }) if ext == RESULT_EXT => {
                    if let Some(r) = frame.push(&data)? {
                        return from_wire(r);
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext }) if ext == flow::EXT_CREDIT => {
                    take_credit(&credit_tx, &data);
                }
                Some(ChannelMsg::Close) | None => {
                    return Err(incomplete(
                        path,
                        "the channel ended without the tether's result",
                    ));
                }
                Some(_) => {}
            }
        }
    };
    let send = async {
        let mut buf = vec![0u8; PUT_CHUNK];
        let mut sent = 0u64;
        loop {
            let room = loop {
                let c = reply.grants_credit.then(|| *credit.borrow_and_update());
                let room = upload_room(sent, c);
                if room > 0 {
                    break room;
                }
                // A window's worth not yet taken by the unpacking: wait for
                // its credit. (The result side holds the sender while it
                // runs, and its end ends this future with it.)
                if credit.changed().await.is_err() {
                    return std::future::pending().await;
                }
            };
            let n = tar
                .read(&mut buf[..room])
                .await
                .map_err(ClientError::ArchiveSource)?;
            if n == 0 {
                return wr.eof().await.map_err(ClientError::from);
            }
            wr.data_bytes(Bytes::copy_from_slice(&buf[..n])).await?;
            sent += n as u64;
        }
    };
    tokio::pin!(result, send);
    tokio::select! {
        // The tether may answer before the end of the stream: it failed
        // half way, or the tar ended before the bytes did.
        r = &mut result => return r,
        sent = &mut send => match sent {
            Ok(()) => {}
            Err(e @ ClientError::ArchiveSource(_)) => {
                // Closing without EOF makes the tether fail the transfer
                // rather than take what it got for the whole archive.
                let _ = wr.close().await;
                return Err(e);
            }
            // The channel is gone: the result (if any) says why.
            Err(_) => {}
        },
    }
    result.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn download(pieces: Vec<Piece>) -> ArchiveDownload {
        let (tx, rx) = mpsc::unbounded_channel();
        for p in pieces {
            assert!(tx.send(p).is_ok());
        }
        ArchiveDownload {
            path: "/etc".into(),
            stat: PathStat::default(),
            rx,
            consumed: Arc::default(),
            current: Bytes::new(),
            state: State::Streaming,
        }
    }

    fn data(b: &'static [u8]) -> Piece {
        Piece::Data(Bytes::from_static(b))
    }

    #[tokio::test]
    async fn a_download_ends_cleanly_only_with_the_result() {
        let done = ArchiveResult {
            entries: 2,
            bytes: 4,
            skipped: vec![],
        };
        let d = download(vec![
            data(b"ab"),
            data(b"cd"),
            Piece::Done(Ok(done.clone())),
        ]);
        let (tar, result) = d.read_all().await.unwrap();
        assert_eq!((tar.as_slice(), result), (&b"abcd"[..], done.clone()));

        // As an AsyncRead too, with the result known afterwards.
        let mut d = download(vec![data(b"abcd"), Piece::Done(Ok(done.clone()))]);
        let mut tar = Vec::new();
        d.read_to_end(&mut tar).await.unwrap();
        assert_eq!((tar.as_slice(), d.result()), (&b"abcd"[..], Some(&done)));
    }

    #[tokio::test]
    async fn a_cut_download_is_an_error_whichever_way_it_is_read() {
        // The channel ended without the tether's result.
        let cut = || {
            download(vec![
                data(b"ab"),
                Piece::Done(Err(incomplete("/etc", "the channel ended"))),
            ])
        };
        let err = cut().read_all().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "Archive transfer of \"/etc\" did not complete: the channel ended"
        );
        let mut tar = Vec::new();
        let err = cut().read_to_end(&mut tar).await.unwrap_err();
        assert_eq!(tar, b"ab");
        assert!(matches!(
            err.get_ref().and_then(|e| e.downcast_ref::<ClientError>()),
            Some(ClientError::Incomplete { .. })
        ));
        let items: Vec<_> = cut().collect().await;
        assert_eq!(items.len(), 2);
        assert!(items[1].is_err());

        // The task went away without a word, e.g. the runtime shut down.
        let mut d = download(vec![data(b"ab")]);
        assert_eq!(d.next_chunk().await.unwrap().unwrap(), &b"ab"[..]);
        assert!(d.next_chunk().await.is_err());
        assert!(d.next_chunk().await.is_err(), "a failure stays a failure");
        assert!(d.result().is_none());
    }

    #[test]
    fn an_upload_keeps_within_its_window_of_the_tethers_credit() {
        let w = flow::UPLOAD_WINDOW;
        // An older tether grants no credit: only the piece size limits.
        assert_eq!(upload_room(0, None), PUT_CHUNK);
        assert_eq!(upload_room(u64::MAX, None), PUT_CHUNK);
        // With credit: a window beyond it, in pieces.
        assert_eq!(upload_room(0, Some(0)), PUT_CHUNK);
        assert_eq!(upload_room(w - 10, Some(0)), 10);
        assert_eq!(upload_room(w, Some(0)), 0, "a full window waits");
        assert_eq!(upload_room(w + 5, Some(0)), 0, "never below zero");
        assert_eq!(upload_room(w, Some(100)), 100);
        assert_eq!(upload_room(w, Some(flow::CREDIT_EVERY)), PUT_CHUNK);
        assert_eq!(upload_room(10, Some(u64::MAX)), PUT_CHUNK);
        // Sending what the room allows, piece by piece, never goes past the
        // window, and all of it goes once the credit catches up.
        let (mut sent, total) = (0u64, 3 * w + 7);
        let mut credit = 0u64;
        while sent < total {
            let room = upload_room(sent, Some(credit)) as u64;
            if room == 0 {
                // The unpacking takes what has arrived.
                credit = sent;
                continue;
            }
            sent += room.min(total - sent);
            assert!(sent <= credit + w, "{sent} sent on credit {credit}");
        }
    }

    #[test]
    fn credit_only_grows_and_malformed_credit_is_ignored() {
        let (tx, rx) = watch::channel(0u64);
        take_credit(&tx, &flow::encode_credit(300));
        assert_eq!(*rx.borrow(), 300);
        take_credit(&tx, &flow::encode_credit(100));
        assert_eq!(*rx.borrow(), 300, "an older total changes nothing");
        take_credit(&tx, &[1, 2, 3]);
        assert_eq!(*rx.borrow(), 300);
        take_credit(&tx, &flow::encode_credit(1 << 30));
        assert_eq!(*rx.borrow(), 1 << 30);
    }

    #[test]
    fn the_tethers_failure_names_the_entry() {
        let wire = WireResult {
            error: Some(WireError {
                code: proto::v1::error::Code::InvalidArgument as i32,
                message: "Archive entry \"../x\": path leaves the target".into(),
                element: "../x".into(),
            }),
            ..Default::default()
        };
        let mut frame = ResultFrame::default();
        let bytes = wire.encode_length_delimited_to_vec();
        assert!(frame.push(&bytes[..3]).unwrap().is_none());
        let got = frame.push(&bytes[3..]).unwrap().unwrap();
        let err = from_wire(got).unwrap_err();
        assert!(
            matches!(&err, ClientError::Remote { element, .. } if element == "../x"),
            "{err}"
        );
    }
}
