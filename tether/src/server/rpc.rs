//! The RPC service: length-delimited `Request`s in, `Response`s out, on the
//! channel that asked for the `tether-rpc-v1` subsystem.
//!
//! Requests are served concurrently (a `Wait` must not hold up a `Ping`);
//! each response carries its request's id. `PowerOff` is answered, then
//! passed on to `main` through `Shared::power_off`: powering off is not this
//! module's job.

use std::sync::Arc;
use std::time::Duration;

use proto::framing::{read_message, write_message};
use proto::v1::{
    Empty, Error as RpcError, Pong, Request, Response, StatusReply, VersionReply, error::Code,
    request::Body as Req, response::Body as Resp,
};
use russh::Channel;
use russh::server::Msg;
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use crate::session::SessionError;

/// A response, and who wants to know once it is written.
type Outgoing = (Response, Option<oneshot::Sender<()>>);

pub async fn serve(channel: Channel<Msg>, shared: Arc<Shared>) {
    let (mut rd, mut wr) = tokio::io::split(channel.into_stream());
    let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
    let writer = tokio::spawn(async move {
        while let Some((resp, written)) = rx.recv().await {
            if write_message(&mut wr, &resp).await.is_err() {
                break;
            }
            if let Some(w) = written {
                let _ = w.send(());
            }
        }
    });
    loop {
        match read_message::<Request, _>(&mut rd).await {
            Ok(Some(req)) => {
                let (tx, shared) = (tx.clone(), shared.clone());
                tokio::spawn(async move {
                    let power_off = matches!(req.body, Some(Req::PowerOff(_)));
                    let resp = Response {
                        id: req.id,
                        body: Some(handle(&shared, req.body).await),
                    };
                    if !power_off {
                        let _ = tx.send((resp, None)).await;
                        return;
                    }
                    // Answer first: the VM is gone soon after.
                    let (done, written) = oneshot::channel();
                    let _ = tx.send((resp, Some(done))).await;
                    let _ = written.await;
                    shared.power_off.notify_one();
                });
            }
            Ok(None) => break,
            Err(e) => {
                crate::info!("rpc channel closed: {e}");
                break;
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

fn err(code: Code, message: impl Into<String>, element: &str) -> Resp {
    Resp::Error(RpcError {
        code: code as i32,
        message: message.into(),
        element: element.to_string(),
    })
}

fn session_err(e: SessionError, element: &str) -> Resp {
    let code = match &e {
        SessionError::NotFound(_) => Code::NotFound,
        SessionError::AlreadyExists(_) => Code::AlreadyExists,
        SessionError::Invalid(_) | SessionError::BadSignal(_) => Code::InvalidArgument,
        SessionError::NotRunning(_) | SessionError::NotExited(_) | SessionError::NoTty(_) => {
            Code::FailedPrecondition
        }
        SessionError::Io { .. } => Code::Internal,
    };
    err(code, e.to_string(), element)
}

pub async fn handle(shared: &Shared, body: Option<Req>) -> Resp {
    let sessions = &shared.sessions;
    let Some(body) = body else {
        return err(Code::InvalidArgument, "Request has no body", "");
    };
    match body {
        Req::Ping(p) => Resp::Pong(Pong { payload: p.payload }),
        Req::Version(_) => Resp::Version(VersionReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: proto::PROTOCOL.to_string(),
        }),
        Req::Exec(x) => {
            let Some(spec) = x.session else {
                return err(Code::InvalidArgument, "exec.session is missing", "");
            };
            let id = spec.id.clone();
            match sessions.start(spec) {
                Ok(s) => Resp::Session(s.status()),
                Err(e) => session_err(e, &id),
            }
        }
        Req::Signal(x) => match sessions.get(&x.session).and_then(|s| s.signal(x.signal)) {
            Ok(()) => Resp::Ok(Empty {}),
            Err(e) => session_err(e, &x.session),
        },
        Req::Resize(x) => {
            let w = x.window.unwrap_or_default();
            match sessions
                .get(&x.session)
                .and_then(|s| s.resize(w.rows, w.cols))
            {
                Ok(()) => Resp::Ok(Empty {}),
                Err(e) => session_err(e, &x.session),
            }
        }
        Req::CloseStdin(x) => match sessions.get(&x.session) {
            Ok(s) => {
                s.close_stdin();
                Resp::Ok(Empty {})
            }
            Err(e) => session_err(e, &x.session),
        },
        Req::Wait(x) => match sessions.get(&x.session) {
            Ok(s) => Resp::Session(s.wait().await),
            Err(e) => session_err(e, &x.session),
        },
        Req::Status(x) => {
            let list = if x.session.is_empty() {
                sessions.list()
            } else {
                match sessions.get(&x.session) {
                    Ok(s) => vec![s],
                    Err(e) => return session_err(e, &x.session),
                }
            };
            Resp::Status(StatusReply {
                sessions: list.iter().map(|s| s.status()).collect(),
                hostname: shared.hostname.clone(),
                booted_at_unix_nanos: shared.booted_at,
                maintenance: shared.maintenance,
            })
        }
        Req::Ack(x) => match sessions.get(&x.session) {
            Ok(s) => {
                s.stdout.ack(x.stdout_offset);
                s.stderr.ack(x.stderr_offset);
                match x.exit_status.then(|| s.ack_exit()) {
                    Some(Err(e)) => session_err(e, &x.session),
                    Some(Ok(())) | None => Resp::Ok(Empty {}),
                }
            }
            Err(e) => session_err(e, &x.session),
        },
        // `serve` tells `main` once this answer is written.
        Req::PowerOff(_) => Resp::Ok(Empty {}),
        Req::Stop(x) => match sessions.get(&x.session) {
            Ok(s) => match s
                .stop(x.signal, Duration::from_secs(u64::from(x.timeout_seconds)))
                .await
            {
                Ok(st) => Resp::Session(st),
                Err(e) => session_err(e, &x.session),
            },
            Err(e) => session_err(e, &x.session),
        },
    }
}
