//! Archive transfers (`docker cp`) on channels that asked for the
//! `tether-archive-v1` subsystem: GET streams a tar of a container path to
//! the host, PUT unpacks the host's tar into a container directory, STAT
//! says what a path is. The wire protocol is `proto/tether/v1/archive.proto`.
//! A PUT is all or nothing (`archive::unpack_staged`): an archive refused
//! for any entry leaves the destination as it was.
//!
//! Owns the protocol on the channel and the wording of failures as `Error`s
//! naming the element at fault (the path, or the tar entry). The tar work
//! itself is the `archive` crate's; it runs on a thread of its own per
//! transfer, inside the transfer `view` (the container root without
//! `/proc`, `/sys` and `/dev`), and `bridge` carries the bytes between that
//! thread and the channel. Must not touch sessions or processes.

mod bridge;
mod view;

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::io;

use archive::{ArchiveError, DevicePolicy, PackReport, UnpackOptions, UnpackReport};
use bytes::Bytes;
use prost::Message;
use proto::framing::{FrameError, decode_frame};
use proto::v1::{
    ArchiveReply, ArchiveRequest, ArchiveResult, Error as RpcError, PathStat,
    archive_request::Direction, error::Code,
};
use russh::server::Msg;
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{mpsc, oneshot, watch};

use self::bridge::{Feed, Reader, Writer};
use self::view::{View, ViewError};
use crate::sys::LinuxSyscall;

/// Extended data type carrying the final `ArchiveResult`.
const RESULT_EXT: u32 = 1;
/// How PUT names its stream in errors ("Archive entry \"x\": ...").
const PUT_SOURCE: &str = "archive";

pub async fn serve(channel: Channel<Msg>) {
    let (mut rd, wr) = channel.split();
    let (req, rest) = match read_request(&mut rd).await {
        Ok(Some(r)) => r,
        // The host went away before asking anything.
        Ok(None) => return,
        Err(e) => {
            let message = format!("Cannot read the archive request: {}", chain(&e));
            refuse(&wr, error(Code::InvalidArgument, message, "")).await;
            return;
        }
    };
    let path = req.path.clone();
    match Direction::try_from(req.direction) {
        Ok(Direction::Get) => get(rd, wr, path).await,
        Ok(Direction::Put) => put(rd, wr, path, rest).await,
        Ok(Direction::Stat) => stat(wr, path).await,
        Ok(Direction::Unspecified) | Err(_) => {
            let message = format!("Unknown archive direction {}", req.direction);
            refuse(&wr, error(Code::InvalidArgument, message, &path)).await;
        }
    }
}

/// The request frame, and whatever channel data came after it.
async fn read_request(
    rd: &mut ChannelReadHalf,
) -> Result<Option<(ArchiveRequest, Bytes)>, FrameError> {
    let mut buf = Vec::new();
    loop {
        match rd.wait().await {
            Some(ChannelMsg::Data { data }) => buf.extend_from_slice(&data),
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return Ok(None),
            Some(_) => continue,
        }
        if let Some((req, used)) = decode_frame::<ArchiveRequest>(&buf)? {
            return Ok(Some((req, Bytes::copy_from_slice(&buf[used..]))));
        }
    }
}

/// Runs `work` on a thread of its own, inside the transfer view.
fn spawn_in_view(
    name: &str,
    work: impl FnOnce(Result<View, ViewError>) + Send + 'static,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || work(View::enter(&LinuxSyscall)))
        .map(drop)
}

enum GetEvent {
    Ready(Result<PathStat, ViewError>),
    Data(Bytes),
    Done(Result<PackReport, ArchiveError>),
}

async fn get(rd: ChannelReadHalf, wr: ChannelWriteHalf<Msg>, path: String) {
    let (tx, mut rx) = mpsc::channel(bridge::DEPTH);
    let p = path.clone();
    let spawned = spawn_in_view("archive-get", move |view| {
        let ready = view.and_then(|v| v.stat(&p).map(|st| (v, st)));
        let view = match ready {
            Ok((v, st)) => {
                if tx.blocking_send(GetEvent::Ready(Ok(st))).is_err() {
                    return;
                }
                v
            }
            Err(e) => {
                let _ = tx.blocking_send(GetEvent::Ready(Err(e)));
                return;
            }
        };
        let report = archive::pack(view.root(), &p, Writer::new(tx.clone(), GetEvent::Data));
        let _ = tx.blocking_send(GetEvent::Done(report));
    });
    if let Err(e) = spawned {
        refuse(&wr, thread_error(&e, &path)).await;
        return;
    }
    let stat = match rx.recv().await {
        Some(GetEvent::Ready(Ok(stat))) => stat,
        Some(GetEvent::Ready(Err(e))) => return refuse(&wr, view_error(&e, &path)).await,
        _ => return refuse(&wr, lost(&path)).await,
    };
    let reply = ArchiveReply {
        error: None,
        stat: Some(stat),
        grants_credit: false,
    };
    if send_frame(&wr, &reply).await.is_err() {
        return;
    }
    // The host grants credit as its reader takes the tar (`proto::flow`):
    // a slow reader holds up this transfer only, never the connection.
    let (credit_tx, mut credit) = tokio::sync::watch::channel(0u64);
    let stream = async {
        let mut sent = 0u64;
        loop {
            match rx.recv().await {
                Some(GetEvent::Data(b)) => {
                    credit
                        .wait_for(|c| sent < c + proto::flow::OUTPUT_WINDOW)
                        .await
                        .map_err(drop)?;
                    sent += b.len() as u64;
                    wr.data_bytes(b).await.map_err(|_| ())?
                }
                Some(GetEvent::Done(r)) => return Ok(Some(r)),
                Some(GetEvent::Ready(_)) | None => return Ok(None),
            }
        }
    };
    // A host that closes the channel ends the transfer: dropping `rx` makes
    // the packing thread's next write fail.
    let outcome = tokio::select! {
        r = stream => r,
        () = host_side(rd, credit_tx) => Err(()),
    };
    let result = match outcome {
        Err(()) => {
            crate::info!("archive of {path:?}: the host went away");
            return;
        }
        Ok(Some(Ok(report))) => ArchiveResult {
            error: None,
            entries: report.entries,
            bytes: report.bytes,
            skipped: Vec::new(),
        },
        Ok(Some(Err(e))) => failed(archive_error(&e, &path)),
        Ok(None) => failed(lost(&path)),
    };
    finish(&wr, &result).await;
}

async fn put(mut rd: ChannelReadHalf, wr: ChannelWriteHalf<Msg>, path: String, rest: Bytes) {
    let (feed_tx, feed_rx) = mpsc::channel(bridge::DEPTH);
    let (ready_tx, ready_rx) = oneshot::channel();
    let (done_tx, mut done_rx) = oneshot::channel();
    let (taken_tx, mut taken) = watch::channel(0u64);
    let p = path.clone();
    let spawned = spawn_in_view("archive-put", move |view| {
        let dest = match view.and_then(|v| v.destination(&p)) {
            Ok((dest, stat)) => {
                if ready_tx.send(Ok(stat)).is_err() {
                    return;
                }
                dest
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let opts = UnpackOptions {
            source: PUT_SOURCE.into(),
            whiteouts: false,
            same_owner: true,
            devices: DevicePolicy::Create,
        };
        // All or nothing: a refused archive leaves the destination as it was.
        let tar = Reader::new(feed_rx, taken_tx);
        let _ = done_tx.send(archive::unpack_staged(tar, &dest, &opts));
    });
    if let Err(e) = spawned {
        refuse(&wr, thread_error(&e, &path)).await;
        return;
    }
    let stat = match ready_rx.await {
        Ok(Ok(stat)) => stat,
        Ok(Err(e)) => return refuse(&wr, view_error(&e, &path)).await,
        Err(_) => return refuse(&wr, lost(&path)).await,
    };
    let reply = ArchiveReply {
        error: None,
        stat: Some(stat),
        grants_credit: true,
    };
    if send_frame(&wr, &reply).await.is_err() {
        return;
    }
    // The channel is drained into `upload` as the bytes come, and the host
    // sends no more than a window beyond the credit for what the unpacking
    // took: an unpacking that cannot go on (a frozen disk) holds up this
    // transfer, never the connection (`proto::flow`).
    let mut upload = Upload::default();
    upload.push(rest);
    let mut feed = Some(feed_tx);
    let mut counting = true;
    let done = loop {
        tokio::select! {
            done = &mut done_rx => break done,
            msg = rd.wait(), if upload.accepts() => match msg {
                Some(ChannelMsg::Data { data }) => upload.push(data),
                Some(ChannelMsg::Eof) => upload.end(),
                Some(ChannelMsg::Close) | None => {
                    // Cut short: the unpacking fails rather than take what
                    // came for the whole archive.
                    if let Some(tx) = feed.take() {
                        let _ = tx.send(Feed::Abort).await;
                    }
                    let _ = done_rx.await;
                    crate::info!("copy into {path:?}: the host went away");
                    return;
                }
                Some(_) => {}
            },
            permit = reserve(feed.clone()), if upload.has_next() => match (permit, upload.next()) {
                (Some(permit), Some(next)) => {
                    let end = matches!(next, Feed::End);
                    permit.send(next);
                    if end {
                        feed = None;
                    }
                }
                // Unpacking ended (its result is on the way): drop the rest.
                _ => {
                    feed = None;
                    upload.discard();
                }
            },
            changed = taken.changed(), if counting => {
                if changed.is_err() {
                    // The unpacking is over.
                    counting = false;
                    continue;
                }
                let now = *taken.borrow_and_update();
                if let Some(total) = upload.credit(now) {
                    let credit = Bytes::copy_from_slice(&proto::flow::encode_credit(total));
                    // A channel gone shows as its close on `rd`.
                    let _ = wr.extended_data_bytes(proto::flow::EXT_CREDIT, credit).await;
                }
            }
        }
    };
    // Whatever the host still sends is dropped with `rd`.
    let result = match done {
        Ok(Ok(report)) => put_result(report),
        Ok(Err(e)) => failed(archive_error(&e, &path)),
        Err(_) => failed(lost(&path)),
    };
    finish(&wr, &result).await;
}

/// Room in the unpacking's pipe; never, once it has gone (`None`).
async fn reserve(feed: Option<mpsc::Sender<Feed>>) -> Option<mpsc::OwnedPermit<Feed>> {
    match feed {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}

/// A copy-in's tar between the channel and the unpacking: what arrived and
/// was not yet fed, whether the host has ended the stream, and the credit
/// granted for what the unpacking took.
#[derive(Debug, Default)]
struct Upload {
    queue: VecDeque<Bytes>,
    queued: u64,
    /// The host sent EOF.
    ended: bool,
    /// `Feed::End` went to the unpacking, or the unpacking is gone.
    closed: bool,
    /// The last credit sent: bytes the unpacking had taken.
    granted: u64,
}

impl Upload {
    /// Whether to read the channel now: below a window queued. A host that
    /// keeps to its window never meets the bound; one that does not (older
    /// than the credit) is held back by the connection, as it was before.
    fn accepts(&self) -> bool {
        self.queued < proto::flow::UPLOAD_WINDOW
    }

    fn push(&mut self, data: Bytes) {
        if !data.is_empty() && !self.closed {
            self.queued += data.len() as u64;
            self.queue.push_back(data);
        }
    }

    fn end(&mut self) {
        self.ended = true;
    }

    /// Whether there is something to feed the unpacking.
    fn has_next(&self) -> bool {
        !self.closed && (!self.queue.is_empty() || self.ended)
    }

    /// What to feed the unpacking next: the oldest data, then (once the
    /// host ended the stream and all of it went) the end, once.
    fn next(&mut self) -> Option<Feed> {
        if self.closed {
            return None;
        }
        if let Some(b) = self.queue.pop_front() {
            self.queued -= b.len() as u64;
            return Some(Feed::Data(b));
        }
        if self.ended {
            self.closed = true;
            return Some(Feed::End);
        }
        None
    }

    /// The unpacking is gone: what is queued or still comes is dropped.
    fn discard(&mut self) {
        self.closed = true;
        self.queue.clear();
        self.queued = 0;
    }

    /// The credit to send now that the unpacking has taken `taken` bytes:
    /// every `CREDIT_EVERY` bytes.
    fn credit(&mut self, taken: u64) -> Option<u64> {
        if taken >= self.granted + proto::flow::CREDIT_EVERY {
            self.granted = taken;
            return Some(taken);
        }
        None
    }
}

fn put_result(report: UnpackReport) -> ArchiveResult {
    ArchiveResult {
        error: None,
        entries: report.entries,
        bytes: report.bytes,
        skipped: report.skipped,
    }
}

async fn stat(wr: ChannelWriteHalf<Msg>, path: String) {
    let (tx, rx) = oneshot::channel();
    let p = path.clone();
    if let Err(e) = spawn_in_view("archive-stat", move |view| {
        let _ = tx.send(view.and_then(|v| v.stat(&p)));
    }) {
        return refuse(&wr, thread_error(&e, &path)).await;
    }
    let reply = match rx.await {
        Ok(Ok(stat)) => ArchiveReply {
            error: None,
            stat: Some(stat),
            grants_credit: false,
        },
        Ok(Err(e)) => return refuse(&wr, view_error(&e, &path)).await,
        Err(_) => return refuse(&wr, lost(&path)).await,
    };
    let _ = send_frame(&wr, &reply).await;
    let _ = wr.eof().await;
    let _ = wr.close().await;
}

/// Takes the host's credit for a download; returns once the host has closed
/// the channel (or the connection is gone).
async fn host_side(mut rd: ChannelReadHalf, credit: tokio::sync::watch::Sender<u64>) {
    while let Some(msg) = rd.wait().await {
        match msg {
            ChannelMsg::Close => return,
            ChannelMsg::ExtendedData { data, ext } if ext == proto::flow::EXT_CREDIT => {
                if let Some(total) = proto::flow::decode_credit(&data) {
                    credit.send_if_modified(|c| {
                        let more = total > *c;
                        *c = (*c).max(total);
                        more
                    });
                }
            }
            _ => {}
        }
    }
}

async fn send_frame<M: Message>(wr: &ChannelWriteHalf<Msg>, msg: &M) -> Result<(), russh::Error> {
    wr.data_bytes(msg.encode_length_delimited_to_vec()).await
}

/// Answers the request with `error`; nothing follows.
async fn refuse(wr: &ChannelWriteHalf<Msg>, error: RpcError) {
    crate::info!("archive transfer refused: {}", error.message);
    let reply = ArchiveReply {
        error: Some(error),
        stat: None,
        grants_credit: false,
    };
    let _ = send_frame(wr, &reply).await;
    let _ = wr.eof().await;
    let _ = wr.close().await;
}

/// Sends the final result and ends the channel.
async fn finish(wr: &ChannelWriteHalf<Msg>, result: &ArchiveResult) {
    if let Some(e) = &result.error {
        crate::info!("archive transfer failed: {}", e.message);
    }
    let frame = result.encode_length_delimited_to_vec();
    let _ = wr.extended_data_bytes(RESULT_EXT, frame).await;
    let _ = wr.eof().await;
    let _ = wr.close().await;
}

fn failed(error: RpcError) -> ArchiveResult {
    ArchiveResult {
        error: Some(error),
        ..Default::default()
    }
}

fn error(code: Code, message: impl Into<String>, element: &str) -> RpcError {
    RpcError {
        code: code as i32,
        message: message.into(),
        element: element.to_owned(),
    }
}

fn thread_error(e: &io::Error, path: &str) -> RpcError {
    error(
        Code::Internal,
        format!("Cannot start the transfer thread: {e}"),
        path,
    )
}

fn lost(path: &str) -> RpcError {
    error(
        Code::Internal,
        "The transfer thread ended without a result",
        path,
    )
}

/// The error and its sources, as one line.
fn chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        text.push_str(": ");
        text.push_str(&s.to_string());
        next = s.source();
    }
    text
}

fn io_code(e: &io::Error) -> Code {
    match e.raw_os_error() {
        Some(libc::ENOENT | libc::ENOTDIR) => Code::NotFound,
        Some(libc::EROFS | libc::EACCES | libc::EPERM) => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

fn view_error(e: &ViewError, path: &str) -> RpcError {
    let code = match e {
        ViewError::Missing { .. } => Code::NotFound,
        ViewError::Empty
        | ViewError::Hidden { .. }
        | ViewError::NotDirectory { .. }
        | ViewError::Symlink { .. } => Code::InvalidArgument,
        ViewError::Lookup { error, .. } => io_code(error),
        ViewError::Enter { .. } => Code::Internal,
    };
    error(code, chain(e), path)
}

/// An archive failure, naming the tar entry when there is one, else `path`.
fn archive_error(e: &ArchiveError, path: &str) -> RpcError {
    let (code, element) = match e {
        ArchiveError::Escape { entry, .. }
        | ArchiveError::Invalid { entry, .. }
        | ArchiveError::Unsupported { entry, .. } => (Code::InvalidArgument, entry.as_str()),
        ArchiveError::Io { entry, error, .. } => (io_code(error), entry.as_str()),
        ArchiveError::Malformed { .. } | ArchiveError::TargetSymlink { .. } => {
            (Code::InvalidArgument, path)
        }
        ArchiveError::Target { error, .. } | ArchiveError::Resolve { error, .. } => {
            (io_code(error), path)
        }
        ArchiveError::Read { path: name, error } => (io_code(error), name.as_str()),
        ArchiveError::Write { .. } => (Code::Internal, path),
    };
    error(code, chain(e), element)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(f: Option<Feed>) -> Option<Vec<u8>> {
        match f {
            Some(Feed::Data(b)) => Some(b.to_vec()),
            _ => None,
        }
    }

    #[test]
    fn an_upload_feeds_in_order_then_ends_once() {
        let mut u = Upload::default();
        assert!(!u.has_next());
        u.push(Bytes::from_static(b"ab"));
        u.push(Bytes::new());
        u.push(Bytes::from_static(b"cd"));
        assert_eq!(u.queued, 4);
        assert!(u.has_next());
        assert_eq!(data(u.next()), Some(b"ab".to_vec()));
        u.end();
        assert_eq!(data(u.next()), Some(b"cd".to_vec()));
        assert!(u.has_next(), "the end is still to go");
        assert!(matches!(u.next(), Some(Feed::End)));
        assert!(!u.has_next());
        assert!(u.next().is_none(), "the end goes once");
        assert_eq!(u.queued, 0);
    }

    #[test]
    fn an_upload_drains_the_channel_up_to_a_window_only() {
        let mut u = Upload::default();
        let piece = Bytes::from(vec![0u8; 64 << 10]);
        let mut n = 0u64;
        while u.accepts() {
            u.push(piece.clone());
            n += piece.len() as u64;
        }
        // A host that keeps to its window is never held back; one that
        // sends beyond it waits on the connection, with a window queued.
        assert_eq!(n, proto::flow::UPLOAD_WINDOW);
        assert!(u.next().is_some());
        assert!(u.accepts());
        // Once the unpacking is gone, nothing more is kept.
        u.discard();
        u.push(piece);
        assert_eq!((u.queued, u.has_next()), (0, false));
        assert!(u.next().is_none());
    }

    #[test]
    fn credit_goes_every_so_many_bytes_taken() {
        let every = proto::flow::CREDIT_EVERY;
        let mut u = Upload::default();
        assert_eq!(u.credit(0), None);
        assert_eq!(u.credit(every - 1), None);
        assert_eq!(u.credit(every), Some(every));
        assert_eq!(u.credit(every + 10), None);
        assert_eq!(u.credit(3 * every), Some(3 * every));
    }

    #[test]
    fn unpack_errors_name_the_entry() {
        let t = tempfile::tempdir().unwrap();
        let mut tar = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..14].copy_from_slice(b"../../etc/evil");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(&[b'x'; 512]);
        tar.extend_from_slice(&[0; 1024]);
        let opts = UnpackOptions {
            source: PUT_SOURCE.into(),
            whiteouts: false,
            same_owner: false,
            devices: DevicePolicy::Skip,
        };
        let e = archive::unpack_staged(tar.as_slice(), t.path(), &opts).unwrap_err();
        let err = archive_error(&e, "/tmp");
        assert_eq!(err.element, "../../etc/evil");
        assert_eq!(err.code, Code::InvalidArgument as i32);
        assert!(
            err.message
                .starts_with("Archive entry \"../../etc/evil\": path leaves the target: "),
            "{}",
            err.message
        );
    }

    #[test]
    fn view_errors_keep_the_path_and_a_fitting_code() {
        let missing = ViewError::Missing {
            path: "/nope".into(),
        };
        let err = view_error(&missing, "/nope");
        assert_eq!(err.code, Code::NotFound as i32);
        assert_eq!(err.element, "/nope");
        assert_eq!(err.message, "\"/nope\" does not exist in the container");
        let ro = ViewError::Lookup {
            path: "/x".into(),
            error: io::Error::from_raw_os_error(libc::EACCES),
        };
        let err = view_error(&ro, "/x");
        assert_eq!(err.code, Code::PermissionDenied as i32);
        assert!(
            err.message.starts_with("Cannot look up \"/x\": "),
            "{}",
            err.message
        );
    }

    #[test]
    fn pack_errors_name_the_path() {
        let t = tempfile::tempdir().unwrap();
        let e = archive::pack(t.path(), "/nope", Vec::new()).unwrap_err();
        let err = archive_error(&e, "/nope");
        assert_eq!(err.code, Code::NotFound as i32);
        assert_eq!(err.element, "/nope");
        assert!(err.message.contains("\"/nope\""), "{}", err.message);
    }
}
