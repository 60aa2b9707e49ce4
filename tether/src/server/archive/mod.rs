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
use tokio::sync::{mpsc, oneshot};

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
        let _ = done_tx.send(archive::unpack_staged(Reader::new(feed_rx), &dest, &opts));
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
    };
    if send_frame(&wr, &reply).await.is_err() {
        return;
    }
    let mut feed = Some(feed_tx);
    if !rest.is_empty() {
        feed_data(&mut feed, rest).await;
    }
    let done = loop {
        tokio::select! {
            done = &mut done_rx => break done,
            msg = rd.wait() => match msg {
                Some(ChannelMsg::Data { data }) => feed_data(&mut feed, data).await,
                Some(ChannelMsg::Eof) => {
                    if let Some(tx) = feed.take() {
                        let _ = tx.send(Feed::End).await;
                    }
                }
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

/// Passes data on to the unpacking thread while it still reads.
async fn feed_data(feed: &mut Option<mpsc::Sender<Feed>>, data: Bytes) {
    if let Some(tx) = feed
        && tx.send(Feed::Data(data)).await.is_err()
    {
        // Unpacking ended (its result is on the way): drop the rest.
        *feed = None;
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
