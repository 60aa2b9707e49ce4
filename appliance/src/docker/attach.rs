//! Output and input: `logs`, the hijacked `attach` stream and `resize`.
//!
//! Docker's attach is an HTTP upgrade (`101`, `Upgrade: tcp`) after which
//! the connection carries the task's output (8-byte framed per stream
//! without a terminal, raw with one) and, with `stdin=1`, its input; the
//! client half-closes at the end of its stdin. The docker CLI attaches
//! *before* it starts the container, which the port layer's attach refuses
//! (it attaches live from now), so the output comes from the port layer's
//! host log, followed from the start (every byte, even of a task that ends
//! at once), and stdin, resizes and the end of stdin go through a port
//! layer attach opened once the container runs, whose own output is
//! drained and dropped.
//!
//! Owns the registry of live sessions (`Attachments`): `--rm` waits for a
//! container's sessions to end before it removes it, and resizes go to the
//! sessions' port layer attaches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use appliance::portlayer::model::{Container, PowerState};
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;

use super::containers::{self, POLL, Watch};
use super::{Docker, DockerError, Query, Reply};
use crate::client::{BodyStream, ClientError, encode, with_query};

const RAW: &str = "application/vnd.docker.raw-stream";
const MULTIPLEXED: &str = "application/vnd.docker.multiplexed-stream";
/// How long the port layer's attach may refuse a container that runs
/// (its task is still being started) before stdin is given up.
const ATTACH_RETRY: Duration = Duration::from_secs(10);

/// The live attach sessions, by container id.
#[derive(Default)]
pub struct Attachments {
    live: Mutex<Live>,
    changed: Notify,
}

type Control = (Option<String>, mpsc::UnboundedSender<Message>);

#[derive(Default)]
struct Live {
    next: u64,
    /// Per container, per session: its task (`None`: the primary one) and
    /// where its control frames go, once its port layer attach is open.
    sessions: HashMap<String, HashMap<u64, Option<Control>>>,
}

/// A session's place in the registry, given up on drop.
struct Hold {
    docker: Arc<Docker>,
    id: String,
    n: u64,
}

impl Drop for Hold {
    fn drop(&mut self) {
        let a = &self.docker.attachments;
        {
            let mut live = a.live.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(s) = live.sessions.get_mut(&self.id) {
                s.remove(&self.n);
                if s.is_empty() {
                    live.sessions.remove(&self.id);
                }
            }
        }
        a.changed.notify_waiters();
    }
}

impl Attachments {
    fn hold(docker: &Arc<Docker>, id: &str) -> Hold {
        let mut live = docker
            .attachments
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        live.next += 1;
        let n = live.next;
        live.sessions
            .entry(id.to_string())
            .or_default()
            .insert(n, None);
        Hold {
            docker: docker.clone(),
            id: id.to_string(),
            n,
        }
    }

    fn set_control(&self, hold: &Hold, task: Option<String>, tx: mpsc::UnboundedSender<Message>) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = live
            .sessions
            .get_mut(&hold.id)
            .and_then(|s| s.get_mut(&hold.n))
        {
            *slot = Some((task, tx));
        }
    }

    /// Sends a control frame to every session of task `task` (`None`: the
    /// primary) of container `id` that can take one; how many took it.
    pub fn control(&self, id: &str, task: Option<&str>, frame: &Message) -> usize {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.sessions
            .get(id)
            .into_iter()
            .flat_map(HashMap::values)
            .flatten()
            .filter(|(t, tx)| t.as_deref() == task && tx.send(frame.clone()).is_ok())
            .count()
    }

    fn count(&self, id: &str) -> usize {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.sessions.get(id).map_or(0, HashMap::len)
    }

    /// Returns once `id` has no session left, or after `bound`.
    pub async fn drained(&self, id: &str, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        loop {
            let changed = self.changed.notified();
            if self.count(id) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!("docker: attach sessions of {id} still open after {bound:?}");
                return;
            }
        }
    }
}

/// What to read of a task's host log.
#[derive(Clone, Debug, Default)]
struct LogOpts {
    /// The task (default: the primary one).
    task: Option<String>,
    follow: bool,
    tail: Option<String>,
    since: Option<String>,
    timestamps: bool,
    stdout: bool,
    stderr: bool,
}

/// The port layer's log path for one stream (1 stdout, 2 stderr) or both.
fn log_path(id: &str, o: &LogOpts, only: Option<u8>) -> String {
    let off = |skip: bool| if skip { "false".into() } else { String::new() };
    let yes = |b: bool| if b { "true".into() } else { String::new() };
    with_query(
        &format!("/interaction/containers/{}/logs", encode(id)),
        &[
            ("task", o.task.clone().unwrap_or_default()),
            ("stdout", off(only == Some(2))),
            ("stderr", off(only == Some(1))),
            ("follow", yes(o.follow)),
            ("tail", o.tail.clone().unwrap_or_default()),
            ("since", o.since.clone().unwrap_or_default()),
            ("timestamps", yes(o.timestamps)),
        ],
    )
}

/// Docker's stream frame: the stream's number, three zeros, the length
/// (big-endian u32), the bytes. `None`: raw (a terminal's one stream).
fn frame(stream: Option<u8>, data: &[u8]) -> Bytes {
    let Some(s) = stream else {
        return Bytes::copy_from_slice(data);
    };
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut v = Vec::with_capacity(8 + data.len());
    v.extend_from_slice(&[s, 0, 0, 0]);
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(data);
    Bytes::from(v)
}

/// A log body as Docker frames, ending at the first error.
fn framed(
    body: BodyStream,
    stream: Option<u8>,
) -> impl futures::Stream<Item = Result<Bytes, ClientError>> + Send + 'static {
    futures::stream::unfold(Some(body), move |state| async move {
        let mut body = state?;
        match body.chunk().await {
            Ok(Some(c)) => Some((Ok(frame(stream, &c)), Some(body))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// The primary task's output from its host log: one raw stream with a
/// terminal, else stdout and stderr as they come, each framed.
async fn output(
    d: &Docker,
    id: &str,
    tty: bool,
    o: &LogOpts,
) -> Result<BoxStream<'static, Result<Bytes, ClientError>>, DockerError> {
    let open = |only: Option<u8>| {
        let path = log_path(id, o, only);
        async move {
            d.client
                .open_stream(&path)
                .await
                .map_err(|e| DockerError::on_container(e, id))
        }
    };
    if tty {
        return Ok(framed(open(None).await?, None).boxed());
    }
    let mut streams = Vec::new();
    for (n, wanted) in [(1u8, o.stdout), (2, o.stderr)] {
        if wanted {
            streams.push(framed(open(Some(n)).await?, Some(n)).boxed());
        }
    }
    Ok(futures::stream::select_all(streams).boxed())
}

fn primary_tty(c: &Container) -> (bool, bool) {
    c.tasks
        .get(&c.id)
        .map_or((false, false), |t| (t.task.tty, t.task.open_stdin))
}

/// `GET /containers/{id}/logs`.
pub async fn logs(d: &Docker, id: &str, q: &Query) -> Reply {
    if q.get("until").is_some() {
        return Err(DockerError::bad_request(
            "logs --until is not supported by this appliance yet",
        ));
    }
    let c = containers::get(d, id).await?;
    let (tty, _) = primary_tty(&c);
    let o = LogOpts {
        task: None,
        follow: q.flag("follow"),
        tail: q.get("tail").map(str::to_string),
        since: q.get("since").map(str::to_string),
        timestamps: q.flag("timestamps"),
        stdout: q.flag("stdout"),
        stderr: q.flag("stderr"),
    };
    if !o.stdout && !o.stderr {
        return Err(DockerError::bad_request(
            "You must choose at least one stream",
        ));
    }
    let out = output(d, &c.id, tty, &o).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, if tty { RAW } else { MULTIPLEXED })],
        Body::from_stream(out),
    )
        .into_response())
}

/// Now as the port layer's `since` takes it (unix seconds, nanoseconds).
fn now_since() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// What one attach session does.
pub struct Plan {
    /// The container.
    id: String,
    /// The task (default: the primary one).
    task: Option<String>,
    tty: bool,
    stdin: bool,
    output: LogOpts,
}

impl Plan {
    /// An exec session: the task's whole output, followed.
    pub fn exec(id: &str, task: &str, tty: bool, stdin: bool) -> Self {
        Self {
            id: id.to_string(),
            task: Some(task.to_string()),
            tty,
            stdin,
            output: LogOpts {
                task: Some(task.to_string()),
                follow: true,
                stdout: true,
                stderr: true,
                ..LogOpts::default()
            },
        }
    }
}

/// Whether the request asks for Docker's upgrade (`Upgrade: tcp`).
pub fn is_upgrade(req: &Request) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"))
}

/// `POST /containers/{id}/attach`: upgrades the connection, then streams.
pub async fn attach(d: Arc<Docker>, id: &str, q: &Query, req: Request) -> Reply {
    let c = containers::get(&d, id).await?;
    if c.state == PowerState::Exited {
        return Err(DockerError::conflict(
            "You cannot attach to a stopped container, start it first",
        ));
    }
    if !is_upgrade(&req) {
        return Err(DockerError::bad_request(
            "Attach is an HTTP upgrade: send Connection: Upgrade and Upgrade: tcp",
        ));
    }
    let (tty, open_stdin) = primary_tty(&c);
    let plan = Plan {
        id: c.id.clone(),
        task: None,
        tty,
        stdin: q.flag("stdin") && open_stdin,
        output: LogOpts {
            follow: true,
            // Attached to a running container: what comes from now on,
            // unless the earlier output is asked for too.
            since: (c.state != PowerState::Created && !q.flag("logs")).then(now_since),
            stdout: q.flag("stdout"),
            stderr: q.flag("stderr"),
            ..LogOpts::default()
        },
    };
    upgrade(d, plan, req)
}

/// Answers `101` and runs the session on the upgraded connection.
pub fn upgrade(d: Arc<Docker>, plan: Plan, mut req: Request) -> Reply {
    let tty = plan.tty;
    let upgrading = hyper::upgrade::on(&mut req);
    let hold = Attachments::hold(&d, &plan.id);
    tokio::spawn(async move {
        match upgrading.await {
            Ok(upgraded) => {
                if let Err(e) = session(&d, &plan, TokioIo::new(upgraded), &hold).await {
                    tracing::debug!("docker: attach to {}: {e}", plan.id);
                }
            }
            Err(e) => tracing::debug!("docker: attach to {}: upgrade failed: {e}", plan.id),
        }
        drop(hold);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .header(header::CONTENT_TYPE, if tty { RAW } else { MULTIPLEXED })
        .body(Body::empty())
        .map_err(|e| DockerError::Status {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: e.to_string(),
        })
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("Reading the container's output")]
    Output(#[from] ClientError),
    #[error("Writing to the attached client")]
    Client(#[from] std::io::Error),
}

/// One attach session on the upgraded connection, until the output ends
/// (the task exited) or the client goes away.
async fn session<T>(d: &Docker, plan: &Plan, conn: T, hold: &Hold) -> Result<(), SessionError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send,
{
    let (mut reader, mut writer) = tokio::io::split(conn);
    // The CLI attaches before it starts the container.
    let mut watch = Watch::open(d, &plan.id).await;
    loop {
        let c = containers::get(d, &plan.id).await?;
        if c.state != PowerState::Created {
            break;
        }
        watch.changed().await;
    }
    drop(watch);
    let o = &plan.output;
    let out = if o.stdout || o.stderr {
        Some(output(d, &plan.id, plan.tty, o).await?)
    } else {
        None
    };
    let output = async {
        match out {
            Some(mut out) => {
                while let Some(chunk) = out.next().await {
                    writer.write_all(&chunk?).await?;
                    writer.flush().await?;
                }
            }
            None => {
                containers::get(d, &plan.id).await?;
                wait_exit(d, &plan.id).await;
            }
        }
        writer.shutdown().await?;
        Ok::<_, SessionError>(())
    };
    let input = async {
        if plan.stdin || plan.tty {
            input(d, plan, &mut reader, hold).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        r = output => r,
        () = input => Ok(()),
    }
}

/// Until the container is no longer running (or gone).
async fn wait_exit(d: &Docker, id: &str) {
    let mut watch = Watch::open(d, id).await;
    loop {
        match containers::get(d, id).await {
            Ok(c) if matches!(c.state, PowerState::Running | PowerState::Paused) => {
                watch.changed().await;
            }
            _ => return,
        }
    }
}

/// Forwards the client's stdin (and its end), and this session's resizes,
/// through a port layer attach that carries no output; returns when that
/// attach ends.
async fn input<R>(d: &Docker, plan: &Plan, reader: &mut R, hold: &Hold)
where
    R: tokio::io::AsyncRead + Unpin,
{
    let path = with_query(
        &format!("/interaction/containers/{}/attach", encode(&plan.id)),
        &[
            ("task", plan.task.clone().unwrap_or_default()),
            (
                "stdin",
                if plan.stdin {
                    "true".into()
                } else {
                    String::new()
                },
            ),
            // The output comes from the log: the guest sends it once.
            ("output", "false".into()),
        ],
    );
    let deadline = tokio::time::Instant::now() + ATTACH_RETRY;
    let ws = loop {
        match d.client.websocket(&path).await {
            Ok(ws) => break ws,
            Err(ClientError::Api(a))
                if a.status < 500 && tokio::time::Instant::now() < deadline =>
            {
                match containers::get(d, &plan.id).await {
                    Ok(c) if c.state == PowerState::Running => tokio::time::sleep(POLL).await,
                    _ => return,
                }
            }
            Err(e) => {
                tracing::debug!("docker: input attach to {}: {e}", plan.id);
                return;
            }
        }
    };
    let (tx, mut controls) = mpsc::unbounded_channel();
    d.attachments.set_control(hold, plan.task.clone(), tx);
    let (mut sink, mut source) = ws.split();
    let mut stdin_open = plan.stdin;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            read = reader.read(&mut buf), if stdin_open => match read {
                Ok(0) | Err(_) => {
                    stdin_open = false;
                    let end = Message::Text(json!({ "close_stdin": true }).to_string().into());
                    if sink.send(end).await.is_err() {
                        return;
                    }
                }
                Ok(n) => {
                    if sink.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        return;
                    }
                }
            },
            Some(frame) = controls.recv() => {
                if sink.send(frame).await.is_err() {
                    return;
                }
            }
            // Its output comes from the log: drained, so that it never
            // holds up the task.
            msg = source.next() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `h` and `w` of a resize.
pub fn terminal_size(q: &Query) -> Result<(u32, u32), DockerError> {
    let side = |k: &str| {
        q.get(k)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| (1..=appliance::portlayer::validate::TTY_CELLS_MAX).contains(n))
            .ok_or_else(|| DockerError::bad_request(format!("Invalid {k}: 1 to 10000")))
    };
    Ok((side("h")?, side("w")?))
}

/// The port layer attach's resize frame.
pub fn resize_frame(rows: u32, cols: u32) -> Message {
    Message::Text(
        json!({ "resize": { "rows": rows, "cols": cols } })
            .to_string()
            .into(),
    )
}

/// `POST /containers/{id}/resize?h=&w=`: to the container's attach
/// sessions.
pub async fn resize(d: &Docker, id: &str, q: &Query) -> Reply {
    let (rows, cols) = terminal_size(q)?;
    let c = containers::get(d, id).await?;
    if c.state != PowerState::Running {
        return Err(DockerError::conflict(format!(
            "Container {} is not running",
            c.id
        )));
    }
    let n = d
        .attachments
        .control(&c.id, None, &resize_frame(rows, cols));
    tracing::debug!(
        "docker: resize of {} to {rows}x{cols} sent to {n} sessions",
        c.id
    );
    Ok(StatusCode::OK.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_the_stream_and_length() {
        assert_eq!(
            frame(Some(2), b"hi").as_ref(),
            &[2, 0, 0, 0, 0, 0, 0, 2, b'h', b'i']
        );
        assert_eq!(frame(None, b"hi").as_ref(), b"hi");
    }

    #[test]
    fn log_paths_select_one_stream() {
        let o = LogOpts {
            follow: true,
            tail: Some("3".into()),
            ..LogOpts::default()
        };
        assert_eq!(
            log_path("abc", &o, Some(1)),
            "/interaction/containers/abc/logs?stderr=false&follow=true&tail=3"
        );
        assert_eq!(
            log_path("abc", &LogOpts::default(), None),
            "/interaction/containers/abc/logs"
        );
    }
}
