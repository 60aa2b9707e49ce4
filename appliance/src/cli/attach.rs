//! `appliance attach` and `appliance exec`, and the terminal plumbing every
//! foreground task shares (`run`, `start -a`, `exec`): the attach
//! WebSocket session (output to stdout/stderr, stdin, raw terminal, resize
//! on SIGWINCH, signal forwarding) and [`run_task`], which starts a task
//! without losing any of its output.
//!
//! Owns the local terminal and the attach wire format from the client's
//! side; the REST transport is `client`, the handle calls are `handles`,
//! following the log of a task started before it could be attached is
//! `follow`.
//!
//! A foreground task followed through its log (`run`, `exec`, `start -a`
//! on the local backend) survives a restart of the appliance: the log
//! resumes after what was printed, the exit code is waited for again, and
//! the input attach (stdin, signals, resizes) is opened again, forwarding
//! stdin from where this client had read it. Stdin bytes sent in the
//! moment the appliance died may be lost; if stdin had already ended, the
//! end is sent again. A live attach (`appliance attach`) has no offset to
//! resume from and ends with the connection.

use std::future::Future;

use anyhow::{Context, bail};
use appliance::portlayer::model::{Container, Task, TtySize};
use appliance::portlayer::validate::TTY_CELLS_MAX;
use bytes::Bytes;
use clap::Args;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::client::{AttachSocket, Client, ClientError, encode, with_query};
use super::follow::{FOLLOW_GRACE, LogFollow, LogQuery};
use super::handles::Handle;
use super::output::{Target, outln, write_to};
use super::reconnect::Reconnect;
use super::run::env_vars;

/// Signals forwarded to a task attached without a terminal (with one, the
/// terminal turns keys into signals inside the guest).
const FORWARDED: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// How a foreground task uses the local terminal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    /// Forward stdin.
    pub stdin: bool,
    /// The task has a terminal: put ours in raw mode and follow its size.
    pub tty: bool,
}

#[derive(Args)]
pub struct AttachArgs {
    /// Do not forward stdin.
    #[arg(long)]
    no_stdin: bool,
    /// Attach to this task instead of the primary one.
    #[arg(long)]
    task: Option<String>,
    /// Container id, id prefix or name.
    container: String,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Keep stdin open and forward it to the command.
    #[arg(short, long)]
    interactive: bool,
    /// Allocate a terminal for the command.
    #[arg(short, long)]
    tty: bool,
    /// Start the command and return, printing its task id.
    #[arg(short, long)]
    detach: bool,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short, long, default_value = "")]
    user: String,
    /// Working directory inside the container.
    #[arg(short, long, default_value = "")]
    workdir: String,
    /// Environment variables: KEY=VALUE, or KEY to pass this one's value.
    #[arg(short, long)]
    env: Vec<String>,
    /// Container id, id prefix or name.
    container: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// `appliance attach`: the primary task's live output (what it wrote
/// earlier is in `appliance logs`); exits with the task's code.
pub async fn attach(client: &Client, args: AttachArgs) -> anyhow::Result<u8> {
    let c: Container = client
        .get(&format!("/exec/containers/{}", encode(&args.container)))
        .await?;
    let task = args.task.unwrap_or_else(|| c.id.clone());
    let t = c
        .tasks
        .get(&task)
        .with_context(|| format!("Container {} has no task {task}", c.name))?;
    let io = Io {
        stdin: t.task.open_stdin && !args.no_stdin,
        tty: t.task.tty,
    };
    let ws = client
        .websocket(&attach_path(&c.id, Some(&task), io.stdin))
        .await?;
    let _raw = RawTerminal::for_io(io);
    let code = live(client, ws, &c.id, Some(&task), io).await?;
    Ok(exit_status(code))
}

/// `appliance exec`: joins a task to a running container and binds it in
/// one handle, commits, and follows it to its end.
pub async fn exec(client: &Client, args: ExecArgs) -> anyhow::Result<u8> {
    let task = Task {
        id: new_task_id()?,
        args: args.command,
        env: env_vars(&args.env, |k| std::env::var(k).ok()),
        working_dir: args.workdir,
        user: args.user,
        tty: args.tty,
        tty_size: terminal_tty_size().filter(|_| args.tty),
        open_stdin: args.interactive,
    };
    let start = async {
        let mut h = Handle::of(client, &args.container).await?;
        h.task_join(&task).await?;
        h.task_bind(&task.id).await?;
        h.commit().await.map(drop)
    };
    let io = Io {
        stdin: args.interactive,
        tty: args.tty,
    };
    if args.detach {
        start.await.map_err(super::runtime_failure)?;
        outln!("{}", task.id)?;
        return Ok(0);
    }
    let code = run_task(client, &args.container, Some(&task.id), io, start)
        .await
        .map_err(super::runtime_failure)?;
    Ok(exit_status(code))
}

/// A random 12-hex-digit task id.
fn new_task_id() -> anyhow::Result<String> {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).context("Reading system randomness")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A process exit code as this program's exit status (as a shell sees it).
pub fn exit_status(code: i32) -> u8 {
    u8::try_from(code.rem_euclid(256)).unwrap_or(u8::MAX)
}

pub fn attach_path(container: &str, task: Option<&str>, stdin: bool) -> String {
    with_query(
        &format!("/interaction/containers/{}/attach", encode(container)),
        &[
            ("task", task.unwrap_or_default().to_string()),
            ("stdin", if stdin { "true".into() } else { String::new() }),
        ],
    )
}

/// The attach for stdin, resizes and signals beside a followed log: it
/// asks for no output, so the guest sends each byte once (to the log).
fn input_attach_path(container: &str, task: Option<&str>, stdin: bool) -> String {
    let path = attach_path(container, task, stdin);
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}output=false")
}

/// Waits for a task (the primary by default) to end; its exit code.
pub async fn wait(client: &Client, container: &str, task: Option<&str>) -> anyhow::Result<i32> {
    #[derive(serde::Deserialize)]
    struct WaitResult {
        exit_code: Option<i32>,
    }
    let path = with_query(
        &format!("/exec/containers/{}/wait", encode(container)),
        &[("task", task.unwrap_or_default().to_string())],
    );
    let r: WaitResult = client.post(&path, &json!({})).await?;
    match r.exit_code {
        Some(code) => Ok(code),
        None => bail!("{container}: the task ended without an exit code (its VM died)"),
    }
}

/// Starts a task with `start` and streams it to the terminal until it
/// exits; returns its exit code.
///
/// No output is lost either way:
///
/// - The attach WebSocket is opened *before* `start`: if the server accepts
///   it, every byte from the start on comes through it, stdout and stderr
///   apart, and the exit code with the last frame.
/// - The server may refuse to attach to a task that is not running yet (the
///   local backend attaches "live from now", so it does refuse). Then the
///   task is started first and its output read from its host log with
///   `follow=true`: the log holds every byte from the first one (attaching
///   after the start would miss what the task wrote meanwhile, and a
///   short-lived task would be gone before the attach). Stdout and stderr
///   are followed as two streams; the exit code comes from `wait`. Stdin,
///   resizes and signals still go through an attach opened after the start,
///   whose output is ignored. Should a followed log not end shortly after
///   the task exited, the rest is fetched unfollowed, skipping the bytes
///   already printed.
///
/// Only an execution environment that keeps no log (404) leaves the late
/// attach as the sole source of output, and then what the task wrote
/// before it is missed.
pub async fn run_task(
    client: &Client,
    container: &str,
    task: Option<&str>,
    io: Io,
    start: impl Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<i32> {
    let path = attach_path(container, task, io.stdin);
    let refused = match client.websocket(&path).await {
        Ok(mut ws) => {
            if io.tty {
                send_size(&mut ws).await;
            }
            start.await?;
            let _raw = RawTerminal::for_io(io);
            return live(client, ws, container, task, io).await;
        }
        Err(ClientError::Api(e)) if (400..500).contains(&e.status) => e,
        Err(e) => return Err(e.into()),
    };
    tracing::debug!("attach before start refused ({refused}): following the log");
    start.await?;
    let _raw = RawTerminal::for_io(io);
    // A container started again appends to its log: only this run's output
    // (everything stored since it started) is this run's.
    let started: Container = client
        .get(&format!("/exec/containers/{}", encode(container)))
        .await?;
    let query = LogQuery {
        container: container.to_string(),
        task: task.map(str::to_string),
        since: Some(format!(
            "{}.{:03}",
            started.started_at.div_euclid(1000),
            started.started_at.rem_euclid(1000)
        )),
        ..LogQuery::default()
    };
    let mut logs = match LogFollow::open(client, &query, !io.tty, true).await {
        Ok(logs) => logs,
        Err(ClientError::Api(e)) if e.status == 404 => {
            tracing::warn!("{e}: showing the live output only");
            return match client.websocket(&path).await.ok() {
                Some(ws) => live(client, ws, container, task, io).await,
                None => wait(client, container, task).await,
            };
        }
        Err(e) => return Err(e.into()),
    };
    let path = input_attach_path(container, task, io.stdin);
    let ws = client.websocket(&path).await.ok();
    let reconnect = Reconnect::default();
    let input = async {
        let Some(mut ws) = ws else {
            return std::future::pending().await;
        };
        let mut inputs = Inputs::new(io);
        loop {
            if io.tty {
                send_size(&mut ws).await;
            }
            if let Err(e) = session(ws, io, false, &mut inputs).await {
                tracing::debug!("input attach ended: {e:#}");
            }
            // The task ended (the attach is refused now), or the appliance
            // went away: then attach again once it is back.
            ws = match reconnect
                .retry(|| async { Ok(client.websocket(&path).await?) })
                .await
            {
                Ok(ws) => ws,
                Err(e) => {
                    tracing::debug!("input attach not reopened: {e:#}");
                    return std::future::pending().await;
                }
            };
        }
    };
    tokio::select! {
        code = logs.print_until_exit(client, &reconnect, container, task) => code,
        () = input => unreachable!("the input side never ends by itself"),
    }
}

/// An attach session to its end, printing the output; the exit code from
/// its last frame, or from `wait`. An attach that outlives its task (it
/// should not) gets [`FOLLOW_GRACE`] to deliver the rest.
async fn live(
    client: &Client,
    ws: AttachSocket,
    container: &str,
    task: Option<&str>,
    io: Io,
) -> anyhow::Result<i32> {
    let mut inputs = Inputs::new(io);
    let mut session = std::pin::pin!(session(ws, io, true, &mut inputs));
    let mut exit = std::pin::pin!(wait(client, container, task));
    tokio::select! {
        r = &mut session => match r? {
            Some(code) => Ok(code),
            None => exit.await,
        },
        code = &mut exit => match code {
            Ok(code) => {
                let _ = tokio::time::timeout(FOLLOW_GRACE, &mut session).await;
                Ok(code)
            }
            // E.g. a task that is not running yet: the session decides.
            Err(e) => match session.await? {
                Some(code) => Ok(code),
                None => Err(e),
            },
        }
    }
}

/// A control frame to the server.
fn control(value: serde_json::Value) -> Message {
    Message::Text(value.to_string().into())
}

async fn send_size(ws: &mut AttachSocket) {
    if let Some((rows, cols)) = terminal_size() {
        let _ = ws
            .send(control(json!({ "resize": { "rows": rows, "cols": cols } })))
            .await;
    }
}

/// What a text frame from the server says.
#[derive(Debug, PartialEq, Eq)]
enum ServerText {
    Exit(i32),
    Error(String),
    Other,
}

fn server_text(text: &str) -> ServerText {
    #[derive(serde::Deserialize)]
    struct Frame {
        exit_code: Option<i32>,
        message: Option<String>,
    }
    match serde_json::from_str::<Frame>(text) {
        Ok(Frame {
            exit_code: Some(c), ..
        }) => ServerText::Exit(c),
        Ok(Frame {
            message: Some(m), ..
        }) => ServerText::Error(m),
        _ => ServerText::Other,
    }
}

/// What a foreground client forwards to its task, kept across attach
/// sessions (an input attach opened again after a reconnection).
struct Inputs {
    /// Stdin while it lasts (`None`: not forwarded, or ended).
    stdin: Option<mpsc::Receiver<Vec<u8>>>,
    /// Whether stdin ended (and the end was sent).
    stdin_ended: bool,
    winch: Option<tokio::signal::unix::Signal>,
    signals: Option<mpsc::Receiver<i32>>,
}

impl Inputs {
    fn new(io: Io) -> Self {
        Self {
            stdin: io.stdin.then(stdin_reader),
            stdin_ended: false,
            winch: if io.tty {
                signal(SignalKind::window_change()).ok()
            } else {
                None
            },
            signals: if io.tty { None } else { forward_signals() },
        }
    }
}

/// Runs one attach session until the server closes it: prints output (when
/// `print`), forwards stdin, resizes and signals. The exit code, if the
/// server sent one.
async fn session(
    ws: AttachSocket,
    io: Io,
    print: bool,
    inputs: &mut Inputs,
) -> anyhow::Result<Option<i32>> {
    let (mut sink, mut source) = ws.split();
    if io.stdin && inputs.stdin_ended {
        // A session after a reconnection: the end may not have arrived.
        let _ = sink.send(control(json!({ "close_stdin": true }))).await;
    }
    let Inputs {
        stdin,
        stdin_ended,
        winch,
        signals,
    } = inputs;
    let mut code = None;
    loop {
        tokio::select! {
            msg = source.next() => match msg {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Err(e)) => {
                    if code.is_some() {
                        break;
                    }
                    return Err(e).context("Attach connection to the appliance");
                }
                Some(Ok(Message::Binary(b))) => {
                    if print && let Some((&stream, data)) = b.split_first() {
                        let target = if stream == 2 { Target::Stderr } else { Target::Stdout };
                        write_to(target, data).context("Writing output")?;
                    }
                }
                Some(Ok(Message::Text(t))) => match server_text(&t) {
                    ServerText::Exit(c) => code = Some(c),
                    ServerText::Error(m) => tracing::warn!("appliance: {m}"),
                    ServerText::Other => tracing::debug!("unknown attach frame {t}"),
                },
                Some(Ok(_)) => {}
            },
            data = recv(stdin) => match data {
                Some(d) => {
                    if sink.send(Message::Binary(Bytes::from(d))).await.is_err() {
                        // The connection broke: this chunk is lost, the
                        // next session forwards the rest.
                        break;
                    }
                }
                None => {
                    *stdin = None;
                    *stdin_ended = true;
                    let _ = sink.send(control(json!({ "close_stdin": true }))).await;
                }
            },
            Some(()) = recv_signal(winch) => {
                if let Some((rows, cols)) = terminal_size() {
                    let _ = sink.send(control(json!({ "resize": { "rows": rows, "cols": cols } }))).await;
                }
            }
            Some(n) = recv(signals) => {
                let _ = sink.send(control(json!({ "signal": n }))).await;
            }
        }
    }
    Ok(code)
}

async fn recv<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_signal(s: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Stdin in chunks; the channel closes at end of input. A plain thread, not
/// a runtime task: a read blocked on a terminal must not hold up the exit.
fn stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    rx
}

/// The signals this process receives, to pass on (`docker run`'s
/// sig-proxy). Once installed, the handlers stay for the process's life.
fn forward_signals() -> Option<mpsc::Receiver<i32>> {
    let (tx, rx) = mpsc::channel(16);
    for &n in FORWARDED {
        let Ok(mut s) = signal(SignalKind::from_raw(n)) else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(n).await.is_err() {
                    break;
                }
            }
        });
    }
    Some(rx)
}

/// The local terminal's size (rows, cols), if stdout is one.
pub fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the valid pointer.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}

/// The local terminal's size as a task's initial one (both sides within
/// the port layer's bounds), if stdout is a terminal.
pub fn terminal_tty_size() -> Option<TtySize> {
    let (rows, cols) = terminal_size()?;
    let side = |n: u16| (n > 0).then(|| u32::from(n).min(TTY_CELLS_MAX));
    Some(TtySize {
        rows: side(rows)?,
        cols: side(cols)?,
    })
}

/// The local terminal set for a task's terminal, restored on drop.
pub struct RawTerminal {
    /// Whose settings were changed: stdin's (full raw) or stdout's (output
    /// processing only).
    stdout: bool,
    saved: nix::sys::termios::Termios,
}

impl RawTerminal {
    /// With `-it`, raw mode: keys go to the task's terminal as they are.
    /// With `-t` alone, only output processing is turned off (the guest's
    /// terminal already made the line ends), and Ctrl-C still ends this
    /// client, as with docker. `None` if there is no local terminal.
    pub fn for_io(io: Io) -> Option<Self> {
        use nix::sys::termios::{OutputFlags, SetArg, cfmakeraw, tcgetattr, tcsetattr};
        if !io.tty {
            return None;
        }
        let stdout = !io.stdin;
        let saved = if stdout {
            tcgetattr(std::io::stdout()).ok()?
        } else {
            tcgetattr(std::io::stdin()).ok()?
        };
        let mut raw = saved.clone();
        if stdout {
            raw.output_flags.remove(OutputFlags::OPOST);
            tcsetattr(std::io::stdout(), SetArg::TCSANOW, &raw).ok()?;
        } else {
            cfmakeraw(&mut raw);
            tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw).ok()?;
        }
        Some(Self { stdout, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = if self.stdout {
            tcsetattr(std::io::stdout(), SetArg::TCSANOW, &self.saved)
        } else {
            tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_wrap_like_a_shell() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(3), 3);
        assert_eq!(exit_status(137), 137);
        assert_eq!(exit_status(256), 0);
        assert_eq!(exit_status(-1), 255);
    }

    #[test]
    fn attach_paths() {
        assert_eq!(
            attach_path("abc", None, false),
            "/interaction/containers/abc/attach"
        );
        assert_eq!(
            attach_path("web 1", Some("t1"), true),
            "/interaction/containers/web%201/attach?task=t1&stdin=true"
        );
        assert_eq!(
            input_attach_path("abc", None, true),
            "/interaction/containers/abc/attach?stdin=true&output=false"
        );
        assert_eq!(
            input_attach_path("abc", None, false),
            "/interaction/containers/abc/attach?output=false"
        );
    }

    #[test]
    fn server_text_frames() {
        assert_eq!(server_text(r#"{"exit_code":7}"#), ServerText::Exit(7));
        assert_eq!(
            server_text(
                r#"{"code":"INVALID_ARGUMENT","message":"Stdin data on an attach without stdin=true","element":"stdin"}"#
            ),
            ServerText::Error("Stdin data on an attach without stdin=true".into())
        );
        assert_eq!(server_text("nonsense"), ServerText::Other);
    }

    #[test]
    fn task_ids_are_12_hex_digits() {
        let id = new_task_id().expect("id");
        assert_eq!(id.len(), 12);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
