//! The `interaction` component over REST: a task's host log as a chunked
//! stream (optionally followed), and attach as a WebSocket.
//!
//! Owns the routes under `/interaction`, the log record reader that follows
//! a growing log file from an offset, and the WebSocket framing of attach.
//! Must not write logs (`interaction::logs` and `persist` do) nor reach the
//! guest itself (the backend's `AttachStream` does).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::header::{CONTENT_TYPE, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode, error_chain};
use super::extract::{PathArgs, QueryArgs};
use super::time::{format_rfc3339_nanos, parse_time};
use crate::backend::{AttachInput, AttachOutput, AttachStream};
use crate::interaction::logs::{self, Filter, LogError, Record, Stream};
use crate::portlayer::exec::{PortError, PortLayer};
use crate::portlayer::model::PowerState;

/// How often a followed log is polled for new records.
const POLL: Duration = Duration::from_millis(100);
/// A followed log ends once its task has exited and this many polls in a
/// row found nothing new (the host may still be storing the last output).
const QUIET_POLLS_AFTER_EXIT: u32 = 3;
/// Record header: `u64 time | u8 stream | u32 len`, as `interaction::logs`.
const HEADER: usize = 8 + 1 + 4;
/// Larger records are corruption (as `interaction::logs`).
const MAX_RECORD: usize = 16 << 20;
/// How much of a log is read at once (more if one record is larger).
const CHUNK: usize = 1 << 20;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/interaction/containers/{id}/logs", get(logs))
        .route("/interaction/containers/{id}/attach", get(attach))
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The task id; the primary task if absent.
    pub task: Option<String>,
    /// Keep streaming new output until the task has exited and its log
    /// has stopped growing.
    pub follow: bool,
    /// Only the last N lines (of the selected streams), or `all`.
    pub tail: Option<String>,
    /// Only output written at or after this time: unix seconds (fractions
    /// allowed) or RFC 3339.
    pub since: Option<String>,
    /// Prefix each line with its RFC 3339 arrival time (nanoseconds, UTC)
    /// and a space.
    pub timestamps: bool,
    /// Include stdout (default true).
    pub stdout: Option<bool>,
    /// Include stderr (default true).
    pub stderr: Option<bool>,
}

/// The complete log records of a growing file, from an offset on.
struct LogFollower {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    offset: u64,
}

impl LogFollower {
    fn new(path: PathBuf) -> Self {
        LogFollower {
            path,
            file: None,
            offset: 0,
        }
    }

    /// The next records completed since the last call, about `CHUNK`
    /// bytes of them (at least one whole record if there is one): call
    /// again until none come. A record still being written is left for
    /// the next call.
    async fn read_new(&mut self) -> io::Result<Vec<Record>> {
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(f) => self.file = Some(f),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(e),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        file.seek(io::SeekFrom::Start(self.offset)).await?;
        let mut buf = Vec::new();
        (&mut *file)
            .take(CHUNK as u64)
            .read_to_end(&mut buf)
            .await?;
        if buf.len() >= HEADER {
            // A first record larger than the chunk: the rest of it.
            let len = u32::from_le_bytes([buf[9], buf[10], buf[11], buf[12]]) as usize;
            if len <= MAX_RECORD && HEADER + len > buf.len() {
                let more = HEADER + len - buf.len();
                (&mut *file).take(more as u64).read_to_end(&mut buf).await?;
            }
        }
        let (records, used) = decode_records(&buf)?;
        self.offset += used as u64;
        Ok(records)
    }
}

/// Decodes the complete records at the start of `buf`; returns them and
/// the bytes they took.
fn decode_records(buf: &[u8]) -> io::Result<(Vec<Record>, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() - at >= HEADER {
        let h = &buf[at..at + HEADER];
        let mut time = [0u8; 8];
        time.copy_from_slice(&h[..8]);
        let stream = match h[8] {
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            b => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad stream byte {b} at offset {at}"),
                ));
            }
        };
        let len = u32::from_le_bytes([h[9], h[10], h[11], h[12]]) as usize;
        if len > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record of {len} bytes at offset {at}"),
            ));
        }
        if buf.len() - at - HEADER < len {
            break;
        }
        out.push(Record {
            time: i64::from_le_bytes(time),
            stream,
            data: buf[at + HEADER..at + HEADER + len].to_vec(),
        });
        at += HEADER + len;
    }
    Ok((out, at))
}

/// Which records go out, and how.
struct LogFormat {
    since: Option<i64>,
    stdout: bool,
    stderr: bool,
    timestamps: bool,
    /// Per stream (stdout, stderr): whether the next byte starts a line.
    at_line_start: [bool; 2],
}

impl LogFormat {
    fn filter(&self) -> Filter {
        Filter {
            since: self.since,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }

    fn wants(&self, r: &Record) -> bool {
        let stream = match r.stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        };
        stream && self.since.is_none_or(|s| r.time >= s)
    }

    fn encode(&mut self, r: &Record, out: &mut Vec<u8>) {
        if !self.timestamps {
            out.extend_from_slice(&r.data);
            return;
        }
        let i = usize::from(r.stream == Stream::Stderr);
        for piece in r.data.split_inclusive(|b| *b == b'\n') {
            if self.at_line_start[i] {
                out.extend_from_slice(format_rfc3339_nanos(r.time).as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(piece);
            self.at_line_start[i] = piece.ends_with(b"\n");
        }
    }
}

/// Whether the task is done: exited, or its container gone.
async fn task_done(pl: &PortLayer, container: &str, task: &str) -> bool {
    match pl.inspect_off(container).await {
        Ok(c) => match c.tasks.get(task) {
            Some(t) => t.state == "exited" || (t.primary && c.state == PowerState::Exited),
            None => true,
        },
        Err(PortError::Store(crate::store::StoreError::NotFound { .. })) => true,
        Err(_) => false,
    }
}

/// One log response: what to read and how to send it.
struct LogRequest {
    pl: Arc<PortLayer>,
    container: String,
    task: String,
    tail: Option<usize>,
    follow: bool,
}

/// Sends the wanted records the follower has not read yet, a chunk at a
/// time. Whether there were any; `Err` once the response is over.
async fn send_new(
    follower: &mut LogFollower,
    format: &mut LogFormat,
    tx: &mpsc::Sender<io::Result<Bytes>>,
    fail: &impl Fn(io::Error) -> io::Error,
) -> Result<bool, ()> {
    let mut any = false;
    loop {
        let new = match follower.read_new().await {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(fail(e))).await;
                return Err(());
            }
        };
        if new.is_empty() {
            return Ok(any);
        }
        any = true;
        let mut out = Vec::new();
        for r in &new {
            if format.wants(r) {
                format.encode(r, &mut out);
            }
        }
        if !out.is_empty() && tx.send(Ok(out.into())).await.is_err() {
            return Err(());
        }
    }
}

async fn stream_log(
    req: LogRequest,
    mut follower: LogFollower,
    mut format: LogFormat,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let LogRequest {
        pl,
        container,
        task,
        tail,
        follow,
    } = req;
    let fail =
        |e: io::Error| io::Error::new(e.kind(), format!("Log of {container}/task/{task}: {e}"));
    // What is there now. A tail counts lines: read from the end of the
    // log, on a blocking thread, only as much as the tail needs.
    if let Some(n) = tail {
        let path = follower.path.clone();
        let filter = format.filter();
        let read = tokio::task::spawn_blocking(move || logs::read_tail(&path, &filter, n))
            .await
            .map_err(io::Error::other)
            .and_then(|r| {
                r.map_err(|e| match e {
                    LogError::Io { source, .. } => source,
                })
            })
            .and_then(|t| match t.corrupt {
                Some(e) => Err(e),
                None => Ok(t),
            });
        let tail = match read {
            Ok(t) => t,
            Err(e) => {
                let _ = tx.send(Err(fail(e))).await;
                return;
            }
        };
        follower.offset = tail.end;
        let mut out = Vec::new();
        for r in &tail.lines {
            format.encode(r, &mut out);
        }
        drop(tail);
        if !out.is_empty() && tx.send(Ok(out.into())).await.is_err() {
            return;
        }
    } else if send_new(&mut follower, &mut format, &tx, &fail)
        .await
        .is_err()
    {
        return;
    }
    if !follow {
        return;
    }
    let mut quiet_after_exit: Option<u32> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = tx.closed() => return,
        }
        let Ok(any) = send_new(&mut follower, &mut format, &tx, &fail).await else {
            return;
        };
        if !any {
            if let Some(n) = quiet_after_exit.as_mut() {
                *n += 1;
                if *n >= QUIET_POLLS_AFTER_EXIT {
                    return;
                }
            }
        } else if let Some(n) = quiet_after_exit.as_mut() {
            *n = 0;
        }
        if quiet_after_exit.is_none() && task_done(&pl, &container, &task).await {
            quiet_after_exit = Some(0);
        }
    }
}

/// Streams a task's log as stored on the host.
///
/// Without `timestamps` the body is the raw bytes the task wrote, stdout
/// and stderr interleaved in the order they arrived (select them with
/// `stdout` and `stderr`); with `timestamps`, each line is prefixed with its
/// arrival time in RFC 3339 with nanoseconds and a space. With `follow` the
/// response stays open, polling the log, until the task has exited and the
/// log has stopped growing.
#[utoipa::path(
    get, path = "/interaction/containers/{id}/logs", tag = "interaction", operation_id = "interaction_logs",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), LogsQuery),
    responses(
        (status = 200, description = "The log, chunked", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Bad `since` or `tail` (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such container or task, or no log kept for it (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn logs(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<LogsQuery>,
) -> Result<Response, ApiError> {
    let since = q
        .since
        .as_deref()
        .map(parse_time)
        .transpose()
        .map_err(|m| ApiError::invalid("since", m))?;
    let tail = match q.tail.as_deref().map(str::trim) {
        None | Some("" | "all") => None,
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::invalid(
                "tail",
                format!("{n:?} is neither a number of lines nor \"all\""),
            )
        })?),
    };
    let c = s.pl.inspect_off(&id).await?;
    let task = q.task.unwrap_or_else(|| c.id.clone());
    let element = format!("{}/task/{task}", c.id);
    if !c.tasks.contains_key(&task) {
        return Err(ApiError::new(ErrorCode::NotFound, element, "No such task"));
    }
    let path = {
        let (id, task) = (c.id.clone(), task.clone());
        s.pl.off(move |pl| pl.log_path(&id, Some(&task))).await?
    };
    let path = path.ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            element.clone(),
            format!("The execution environment keeps no log for {element}"),
        )
    })?;
    let format = LogFormat {
        since,
        stdout: q.stdout.unwrap_or(true),
        stderr: q.stderr.unwrap_or(true),
        timestamps: q.timestamps,
        at_line_start: [true, true],
    };
    let (tx, rx) = mpsc::channel(16);
    let req = LogRequest {
        pl: s.pl.clone(),
        container: c.id,
        task,
        tail,
        follow: q.follow,
    };
    tokio::spawn(stream_log(req, LogFollower::new(path), format, tx));
    Ok((
        [(CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttachQuery {
    /// The task id; the primary task if absent.
    pub task: Option<String>,
    /// Forward binary frames to the task's stdin.
    pub stdin: bool,
    /// Send the task's output (default true). `false`: only the exit code,
    /// for a client that reads the output from the task's log and attaches
    /// for input and control.
    pub output: Option<bool>,
}

/// A terminal size.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Size {
    pub rows: u32,
    pub cols: u32,
}

/// A control message: a text frame from the client. Give one field per
/// message; if several are given, they apply in the order resize, signal,
/// close_stdin.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AttachControl {
    /// Close the task's stdin (end of input).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub close_stdin: Option<bool>,
    /// Resize the task's terminal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize: Option<Size>,
    /// Send the task a signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
}

impl AttachControl {
    fn inputs(self) -> Vec<AttachInput> {
        let mut v = Vec::new();
        if let Some(s) = self.resize {
            v.push(AttachInput::Resize {
                rows: s.rows,
                cols: s.cols,
            });
        }
        if let Some(n) = self.signal {
            v.push(AttachInput::Signal(n));
        }
        if self.close_stdin == Some(true) {
            v.push(AttachInput::CloseStdin);
        }
        v
    }
}

/// The last text frame of an attach, before the server closes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
pub struct AttachExit {
    pub exit_code: i32,
}

fn framed(stream: u8, data: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(1 + data.len());
    v.push(stream);
    v.extend_from_slice(data);
    v.into()
}

/// Moves bytes between the WebSocket and the attach until the task exits
/// (the server closes) or the client goes away (which detaches).
async fn pump(socket: WebSocket, stream: AttachStream, stdin: bool) {
    let AttachStream { mut output, input } = stream;
    let (mut sink, mut source) = socket.split();
    // Complaints about the client's control frames, sent back as text.
    let (complain, mut complaints) = mpsc::channel::<ErrorBody>(4);
    let outbound = async {
        loop {
            let msg = tokio::select! {
                out = output.recv() => match out {
                    Some(AttachOutput::Stdout(b)) => Message::Binary(framed(1, &b)),
                    Some(AttachOutput::Stderr(b)) => Message::Binary(framed(2, &b)),
                    Some(AttachOutput::Exit(exit_code)) => {
                        let text = serde_json::to_string(&AttachExit { exit_code })
                            .unwrap_or_default();
                        let _ = sink.send(Message::Text(text.into())).await;
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: close_code::NORMAL,
                                reason: "".into(),
                            })))
                            .await;
                        return;
                    }
                    None => {
                        let _ = sink
                            .send(Message::Close(Some(CloseFrame {
                                code: close_code::ERROR,
                                reason: "The attach ended without an exit code".into(),
                            })))
                            .await;
                        return;
                    }
                },
                Some(body) = complaints.recv() => {
                    Message::Text(serde_json::to_string(&body).unwrap_or_default().into())
                }
            };
            if sink.send(msg).await.is_err() {
                return;
            }
        }
    };
    let inbound = async {
        while let Some(Ok(msg)) = source.next().await {
            let inputs = match msg {
                Message::Binary(b) if stdin => vec![AttachInput::Stdin(b)],
                Message::Binary(_) => {
                    let _ = complain
                        .send(ErrorBody {
                            code: ErrorCode::InvalidArgument,
                            message: "Stdin data on an attach without stdin=true".into(),
                            element: "stdin".into(),
                            current_version: None,
                        })
                        .await;
                    continue;
                }
                Message::Text(t) => match super::extract::parse_json::<AttachControl>(t.as_bytes())
                {
                    Ok(c) => c.inputs(),
                    Err(e) => {
                        let _ = complain.send(e.body).await;
                        continue;
                    }
                },
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            for i in inputs {
                // A task that closed its stdin may still write: keep reading
                // (for control frames and the close) until the socket ends.
                let _ = input.send(i).await;
            }
        }
    };
    tokio::select! {
        _ = outbound => {}
        _ = inbound => {}
    }
    let _ = sink.close().await;
}

/// Attaches to a task's live streams over a WebSocket.
///
/// Server to client: binary frames whose first byte is the stream (1
/// stdout, 2 stderr) followed by the data; when the task exits, a text
/// frame `{"exit_code": N}` and a normal close. Client to server: binary
/// frames are stdin data (with `stdin=true`); text frames are control
/// messages (`AttachControl`): `{"close_stdin": true}`,
/// `{"resize": {"rows": R, "cols": C}}`, `{"signal": N}`. An invalid
/// control message is answered with an `Error` text frame and otherwise
/// ignored. Closing the socket detaches; the task keeps running. Output
/// from before the attach is in the log. Requests carrying an `Origin`
/// header (browsers) are refused: this API grants no cross-origin access.
#[utoipa::path(
    get, path = "/interaction/containers/{id}/attach", tag = "interaction", operation_id = "interaction_attach",
    params(("id" = String, Path, description = "Container id, unique id prefix or name"), AttachQuery),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket upgrade, or the task is not running (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 403, description = "A browser origin (INVALID_ARGUMENT)", body = ErrorBody),
        (status = 404, description = "No such container (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn attach(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
    QueryArgs(q): QueryArgs<AttachQuery>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if headers.contains_key(ORIGIN) {
        return Err(ApiError::invalid(
            "origin",
            "Cross-origin WebSocket requests are not accepted",
        )
        .with_status(StatusCode::FORBIDDEN));
    }
    let ws = ws.map_err(|r| {
        ApiError::invalid(
            "upgrade",
            format!("Attach is a WebSocket: {}", r.body_text()),
        )
        .with_status(r.status())
    })?;
    let stream =
        s.pl.attach(&id, q.task.as_deref(), q.stdin, q.output.unwrap_or(true))
            .await?;
    let stdin = q.stdin;
    Ok(ws
        .on_failed_upgrade(|e| tracing::debug!("attach upgrade failed: {}", error_chain(&e)))
        .on_upgrade(move |socket| pump(socket, stream, stdin)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_only_complete_records() {
        let mut buf = Vec::new();
        for (t, s, d) in [(5i64, 1u8, &b"out\n"[..]), (6, 2, b"err\n")] {
            buf.extend_from_slice(&t.to_le_bytes());
            buf.push(s);
            buf.extend_from_slice(&(d.len() as u32).to_le_bytes());
            buf.extend_from_slice(d);
        }
        let whole = buf.len();
        buf.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 1, 10, 0, 0, 0, b'x']);
        let (recs, used) = decode_records(&buf).unwrap();
        assert_eq!(used, whole);
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[1].time, recs[1].stream), (6, Stream::Stderr));
        buf[whole + 8] = 9;
        assert!(decode_records(&buf).is_err());
    }

    #[test]
    fn timestamps_prefix_lines_not_fragments() {
        let mut f = LogFormat {
            since: None,
            stdout: true,
            stderr: true,
            timestamps: true,
            at_line_start: [true, true],
        };
        let mut out = Vec::new();
        for (time, data) in [(0, &b"a\nb"[..]), (1_000_000_000, b"c\n")] {
            f.encode(
                &Record {
                    time,
                    stream: Stream::Stdout,
                    data: data.to_vec(),
                },
                &mut out,
            );
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1970-01-01T00:00:00.000000000Z a\n1970-01-01T00:00:00.000000000Z bc\n"
        );
    }
}

#[cfg(test)]
mod ws_and_log_tests {
    use std::time::Duration;

    use axum::http::Request;
    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

    use super::super::testutil::*;
    use crate::interaction::logs::{LogWriter, Stream};

    const S: i64 = 1_000_000_000;

    async fn text(h: &Harness, uri: &str) -> (axum::http::StatusCode, String) {
        let resp = h
            .send(Request::get(uri).body(axum::body::Body::empty()).unwrap())
            .await;
        let status = resp.status();
        (status, String::from_utf8(body_bytes(resp).await).unwrap())
    }

    #[tokio::test]
    async fn logs_select_streams_tail_since_and_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::with_logs(dir.path());
        let id = h.create("web").await;
        let mut w = LogWriter::open(&LoggingFake::path(dir.path(), &id, &id)).unwrap();
        w.append(Stream::Stdout, S, b"hello\n").unwrap();
        w.append(Stream::Stderr, 2 * S, b"oops\n").unwrap();
        w.append(Stream::Stdout, 3 * S, b"wor").unwrap();
        w.append(Stream::Stdout, 4 * S, b"ld\n").unwrap();
        w.sync().unwrap();
        let base = format!("/interaction/containers/{id}/logs");
        for (query, want) in [
            ("", "hello\noops\nworld\n"),
            ("?stderr=false", "hello\nworld\n"),
            ("?stdout=false", "oops\n"),
            ("?tail=1", "world\n"),
            ("?tail=2&stderr=false", "hello\nworld\n"),
            ("?tail=all", "hello\noops\nworld\n"),
            ("?since=2.5", "world\n"),
            ("?since=1970-01-01T00:00:02Z", "oops\nworld\n"),
            (
                "?timestamps=true&tail=2",
                "1970-01-01T00:00:02.000000000Z oops\n1970-01-01T00:00:03.000000000Z world\n",
            ),
        ] {
            let (status, body) = text(&h, &format!("{base}{query}")).await;
            assert_eq!(status, 200, "{query}: {body}");
            assert_eq!(body, want, "{query}");
        }
        for (query, element) in [
            ("?since=yesterday", "since"),
            ("?tail=-1", "tail"),
            ("?follow=maybe", "query"),
        ] {
            let (status, e) = h.call("GET", &format!("{base}{query}"), None).await;
            assert_eq!(status, 400, "{query}: {e}");
            assert_eq!(e["element"], element, "{query}: {e}");
        }
        let (status, e) = h.call("GET", &format!("{base}?task=nope"), None).await;
        assert_eq!(status, 404);
        assert_eq!(e["element"], format!("{id}/task/nope"));
    }

    #[tokio::test]
    async fn logs_larger_than_a_chunk_come_whole_and_tails_read_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::with_logs(dir.path());
        let id = h.create("web").await;
        let mut w = LogWriter::open(&LoggingFake::path(dir.path(), &id, &id)).unwrap();
        let mut want = Vec::new();
        // Many small records, then one larger than a read chunk.
        for i in 0..40_000 {
            let line = format!("line {i:08}\n");
            w.append(Stream::Stdout, S, line.as_bytes()).unwrap();
            want.extend_from_slice(line.as_bytes());
        }
        let big: Vec<u8> = (0..3 * super::CHUNK)
            .map(|i| if i % 100 == 99 { b'\n' } else { b'x' })
            .collect();
        w.append(Stream::Stderr, 2 * S, &big).unwrap();
        want.extend_from_slice(&big);
        w.append(Stream::Stdout, 3 * S, b"end\n").unwrap();
        want.extend_from_slice(b"end\n");
        w.sync().unwrap();
        let base = format!("/interaction/containers/{id}/logs");
        let resp = h
            .send(Request::get(&base).body(axum::body::Body::empty()).unwrap())
            .await;
        assert_eq!(resp.status(), 200);
        let got = body_bytes(resp).await;
        assert!(got == want, "{} bytes, want {}", got.len(), want.len());
        // The stderr record ends in a partial line (3 MiB % 100 = 28).
        let (status, body) = text(&h, &format!("{base}?tail=3")).await;
        assert_eq!(status, 200);
        assert_eq!(body, format!("{}\n{}end\n", "x".repeat(99), "x".repeat(28)));
        let (_, body) = text(&h, &format!("{base}?tail=2&stderr=false")).await;
        assert_eq!(body, "line 00039999\nend\n");
        let (_, body) = text(&h, &format!("{base}?tail=0")).await;
        assert_eq!(body, "");
    }

    #[tokio::test]
    async fn logs_404_when_the_backend_keeps_none() {
        let h = Harness::new();
        let id = h.create("web").await;
        let (status, e) = h
            .call("GET", &format!("/interaction/containers/{id}/logs"), None)
            .await;
        assert_eq!(status, 404, "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("keeps no log"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn follow_streams_until_the_task_exited_and_the_log_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::with_logs(dir.path());
        let id = h.create("web").await;
        h.set_state(&id, "running").await;
        let mut w = LogWriter::open(&LoggingFake::path(dir.path(), &id, &id)).unwrap();
        w.append(Stream::Stdout, S, b"before\n").unwrap();
        let resp = h
            .send(
                Request::get(format!("/interaction/containers/{id}/logs?follow=true"))
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let reader = tokio::spawn(async move {
            let mut body = resp.into_body().into_data_stream();
            let mut got = Vec::new();
            while let Some(chunk) = body.next().await {
                got.extend_from_slice(&chunk.unwrap());
            }
            String::from_utf8(got).unwrap()
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        w.append(Stream::Stderr, 2 * S, b"during\n").unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        h.fake.exit_task(&id, &id, 0);
        // Output the host stores just after the exit still makes it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        w.append(Stream::Stdout, 3 * S, b"last\n").unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("the followed log ends after the exit")
            .unwrap();
        assert_eq!(got, "before\nduring\nlast\n");
    }

    async fn serve(h: &Harness, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("api.sock");
        let listener = super::super::bind_unix(&path).unwrap();
        tokio::spawn(axum::serve(listener, h.router.clone()).into_future());
        path
    }

    async fn ws_connect(
        path: &std::path::Path,
        uri: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>, tungstenite::Error>
    {
        let stream = tokio::net::UnixStream::connect(path).await.unwrap();
        tokio_tungstenite::client_async(format!("ws://appliance{uri}"), stream)
            .await
            .map(|(ws, _)| ws)
    }

    async fn next(
        ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::UnixStream>,
    ) -> WsMessage {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .unwrap()
    }

    #[tokio::test]
    async fn attach_echoes_stdin_and_ends_with_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::new();
        let id = h.create("web").await;
        h.set_state(&id, "running").await;
        let path = serve(&h, dir.path()).await;
        let mut ws = ws_connect(
            &path,
            &format!("/interaction/containers/{id}/attach?stdin=true"),
        )
        .await
        .unwrap();

        ws.send(WsMessage::binary(&b"hello\n"[..])).await.unwrap();
        assert_eq!(next(&mut ws).await, WsMessage::binary(&b"\x01hello\n"[..]));
        ws.send(WsMessage::text(r#"{"resize": {"rows": 24, "cols": 80}}"#))
            .await
            .unwrap();
        ws.send(WsMessage::text(r#"{"resize": {"rows": "tall"}}"#))
            .await
            .unwrap();
        let WsMessage::Text(t) = next(&mut ws).await else {
            panic!("an error frame")
        };
        let e: Value = serde_json::from_str(&t).unwrap();
        assert_eq!(e["code"], "INVALID_ARGUMENT");
        assert_eq!(e["element"], "resize.rows");
        ws.send(WsMessage::binary(&b"again"[..])).await.unwrap();
        assert_eq!(next(&mut ws).await, WsMessage::binary(&b"\x01again"[..]));

        ws.send(WsMessage::text(r#"{"close_stdin": true}"#))
            .await
            .unwrap();
        let WsMessage::Text(t) = next(&mut ws).await else {
            panic!("the exit frame")
        };
        assert_eq!(
            serde_json::from_str::<Value>(&t).unwrap(),
            json!({"exit_code": 0})
        );
        let WsMessage::Close(Some(frame)) = next(&mut ws).await else {
            panic!("a close frame")
        };
        assert_eq!(u16::from(frame.code), 1000);
        assert!(
            h.fake
                .calls
                .lock()
                .unwrap()
                .contains(&format!("attach {id} {id}"))
        );
    }

    #[tokio::test]
    async fn attach_errors_are_http_errors_before_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let h = Harness::new();
        let id = h.create("web").await;
        let path = serve(&h, dir.path()).await;
        // Not running: the backend refuses, as a JSON 400.
        match ws_connect(&path, &format!("/interaction/containers/{id}/attach")).await {
            Err(tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400);
                let e: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(e["code"], "INVALID_ARGUMENT");
                assert_eq!(e["element"], format!("{id}/task/{id}"));
            }
            other => panic!("expected an HTTP error, got {:?}", other.map(|_| ())),
        }
        match ws_connect(&path, "/interaction/containers/nope/attach").await {
            Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 404),
            other => panic!("expected an HTTP error, got {:?}", other.map(|_| ())),
        }
        // Not a WebSocket request at all.
        let (status, e) = h
            .call("GET", &format!("/interaction/containers/{id}/attach"), None)
            .await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["element"], "upgrade");
        // A browser's cross-origin upgrade.
        let resp = h
            .send(
                Request::get(format!("/interaction/containers/{id}/attach"))
                    .header("origin", "http://evil.example")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), 403);
    }
}
