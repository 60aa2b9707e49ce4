//! Attach streams: one SSH channel per attached client of a session.
//!
//! stdout goes out as channel data and stderr as extended data (type 1),
//! from the offsets the client asked for, within the host's credit
//! (`proto::flow`); channel data coming in is queued for stdin (and credit
//! goes back as the process takes it), EOF closes stdin after it,
//! window-change resizes and signal signals. When
//! the session has finished and everything was sent, the channel gets
//! exit-status, EOF and close. An attach asking for no output gets only
//! that end (its client reads the output elsewhere).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proto::flow;
use proto::v1::AttachRequest;
use russh::server::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::sync::{mpsc, watch};

use crate::session::output::{Output, OutputError};
use crate::session::{Session, SessionError, Sessions};

const CHUNK: usize = 32 * 1024;

/// Checks an attach request before the channel is accepted.
pub fn check(sessions: &Sessions, req: &AttachRequest) -> Result<Arc<Session>, SessionError> {
    let s = sessions.get(&req.session)?;
    if req.without_output {
        return Ok(s);
    }
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
    // The host's credit: output bytes it has consumed on this attach.
    let (credit_tx, credit) = watch::channel(0u64);
    // Stdin offsets this attach queued, and the local total each ends.
    let (queued_tx, mut queued_rx) = mpsc::unbounded_channel::<(u64, u64)>();
    // The input side never waits on the process: it only queues (stdin is
    // bounded by the host's window), so the connection always moves.
    let input = {
        let session = session.clone();
        let stdin = req.stdin;
        tokio::spawn(async move {
            let mut sent = 0u64;
            while let Some(msg) = rd.wait().await {
                let r = match msg {
                    ChannelMsg::Data { data } if stdin => {
                        sent += data.len() as u64;
                        session.write_stdin(data).map(|end| {
                            let _ = queued_tx.send((end, sent));
                        })
                    }
                    ChannelMsg::Eof if stdin => {
                        session.close_stdin();
                        Ok(())
                    }
                    ChannelMsg::ExtendedData { data, ext } if ext == flow::EXT_CREDIT => {
                        if let Some(total) = flow::decode_credit(&data) {
                            credit_tx.send_if_modified(|c| {
                                let more = total > *c;
                                *c = (*c).max(total);
                                more
                            });
                        }
                        Ok(())
                    }
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
    // Tells the host how much of what it sent the process has taken.
    let stdin_credit = {
        let mut taken = session.stdin_taken();
        let wr = wr.make_writer_ext(Some(flow::EXT_CREDIT));
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut wr = wr;
            while let Some((end, local)) = queued_rx.recv().await {
                if taken.wait_for(|t| *t >= end).await.is_err() {
                    return;
                }
                if wr.write_all(&flow::encode_credit(local)).await.is_err() {
                    return;
                }
                let _ = wr.flush().await;
            }
        })
    };

    let sent = AtomicU64::new(0);
    let output = !req.without_output;
    let out = pump(
        &session.stdout,
        req.stdout_offset,
        &sent,
        credit.clone(),
        |b| wr.data_bytes(b),
    );
    let err = pump(&session.stderr, req.stderr_offset, &sent, credit, |b| {
        wr.extended_data_bytes(flow::EXT_STDERR, b)
    });
    // Without output, only the exit status goes out.
    let (a, b) = if output {
        tokio::join!(out, err)
    } else {
        (Ok(()), Ok(()))
    };
    if a.is_ok() && b.is_ok() {
        // Delivered only once the host acknowledges it as stored (`Ack`).
        let status = session.wait().await;
        let _ = wr.exit_status(status.exit_code as u32).await;
        let _ = wr.eof().await;
        let _ = wr.close().await;
    }
    input.abort();
    stdin_credit.abort();
}

/// Sends one stream from `offset` until it is closed and fully sent, never
/// more than `flow::OUTPUT_WINDOW` beyond the host's credit (`sent` counts
/// both streams of the attach).
async fn pump<F, Fut>(
    out: &Output,
    mut offset: u64,
    sent: &AtomicU64,
    mut credit: watch::Receiver<u64>,
    send: F,
) -> Result<(), ()>
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(), russh::Error>>,
{
    loop {
        let marks = out.wait_past(offset).await;
        let room = {
            let c = credit
                .wait_for(|c| sent.load(Ordering::SeqCst) < c + flow::OUTPUT_WINDOW)
                .await
                .map_err(drop)?;
            (*c + flow::OUTPUT_WINDOW).saturating_sub(sent.load(Ordering::SeqCst))
        };
        let chunk = match out.read(offset, CHUNK.min(room as usize).max(1)) {
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
        sent.fetch_add(chunk.len() as u64, Ordering::SeqCst);
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
