//! Attach streams: one SSH channel per attached client of a session.
//!
//! stdout goes out as channel data and stderr as extended data (type 1),
//! from the offsets the client asked for; channel data coming in goes to
//! stdin, EOF closes stdin, window-change resizes and signal signals. When
//! the session has finished and everything was sent, the channel gets
//! exit-status, EOF and close.

use std::sync::Arc;

use proto::v1::AttachRequest;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, Sig};

use crate::session::output::{Output, OutputError};
use crate::session::{Session, SessionError, Sessions};

const CHUNK: usize = 32 * 1024;

/// Checks an attach request before the channel is accepted.
pub fn check(sessions: &Sessions, req: &AttachRequest) -> Result<Arc<Session>, SessionError> {
    let s = sessions.get(&req.session)?;
    for (o, off) in [
        (&s.stdout, req.stdout_offset),
        (&s.stderr, req.stderr_offset),
    ] {
        let m = o.marks();
        if off < m.acked || off > m.end {
            return Err(SessionError::Invalid(format!(
                "attach offset {off} outside the kept output [{}, {}]",
                m.acked, m.end
            )));
        }
    }
    Ok(s)
}

pub async fn serve(channel: Channel<Msg>, req: AttachRequest, session: Arc<Session>) {
    let (mut rd, wr) = channel.split();
    let input = {
        let session = session.clone();
        let stdin = req.stdin;
        tokio::spawn(async move {
            while let Some(msg) = rd.wait().await {
                let r = match msg {
                    ChannelMsg::Data { data } if stdin => session.write_stdin(&data).await,
                    ChannelMsg::Eof if stdin => session.close_stdin().await,
                    ChannelMsg::WindowChange {
                        col_width,
                        row_height,
                        ..
                    } => session.resize(row_height, col_width),
                    ChannelMsg::Signal { signal } => match signal_number(&signal) {
                        Some(n) => session.signal(n),
                        None => Err(SessionError::Invalid(format!("unknown signal {signal:?}"))),
                    },
                    ChannelMsg::Close => break,
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    crate::info!("attach to {}: {e}", session.id());
                }
            }
        })
    };

    let out = pump(&session.stdout, req.stdout_offset, |b| wr.data_bytes(b));
    let err = pump(&session.stderr, req.stderr_offset, |b| {
        wr.extended_data_bytes(1, b)
    });
    let (a, b) = tokio::join!(out, err);
    if a.is_ok() && b.is_ok() {
        let status = session.wait().await;
        if wr.exit_status(status.exit_code as u32).await.is_ok() {
            session.mark_exit_delivered();
        }
        let _ = wr.eof().await;
        let _ = wr.close().await;
    }
    input.abort();
}

/// Sends one stream from `offset` until it is closed and fully sent.
async fn pump<F, Fut>(out: &Output, mut offset: u64, send: F) -> Result<(), ()>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(), russh::Error>>,
{
    loop {
        let marks = out.wait_past(offset).await;
        let chunk = match out.read(offset, CHUNK) {
            Ok(c) => c,
            Err(OutputError::Gone { acked, .. }) => {
                // The host acknowledged past us through another attach.
                offset = acked;
                continue;
            }
            Err(OutputError::Beyond { .. }) => return Err(()),
        };
        if chunk.is_empty() {
            if marks.closed {
                return Ok(());
            }
            continue;
        }
        offset += chunk.len() as u64;
        send(chunk).await.map_err(|_| ())?;
    }
}

/// Maps an SSH signal name to its number.
pub fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(name) => {
            let name = name.trim_start_matches("SIG");
            return name
                .parse::<nix::sys::signal::Signal>()
                .ok()
                .or_else(|| format!("SIG{name}").parse().ok())
                .map(|s| s as i32);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_map_to_numbers() {
        assert_eq!(signal_number(&Sig::TERM), Some(libc::SIGTERM));
        assert_eq!(
            signal_number(&Sig::Custom("USR2".into())),
            Some(libc::SIGUSR2)
        );
        assert_eq!(
            signal_number(&Sig::Custom("WINCH".into())),
            Some(libc::SIGWINCH)
        );
        assert_eq!(signal_number(&Sig::Custom("NOPE".into())), None);
    }
}
