//! Moving a process's output from its pipes or terminal into the session's
//! [`Output`](super::output::Output) buffers, and bytes into a terminal.
//!
//! Owns the reader tasks. A reader stops at end of file, or once the process
//! has exited and the stream has been idle for [`DRAIN_GRACE`] (a background
//! descendant may hold the pipe open forever). It never stops in the middle
//! of storing bytes it has read, so nothing read is dropped.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::unix::AsyncFd;

use super::Session;
use super::output::Output;

/// Idle time after the process exits before its streams are closed.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
const CHUNK: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

fn output(s: &Session, which: Stream) -> &Output {
    match which {
        Stream::Stdout => &s.stdout,
        Stream::Stderr => &s.stderr,
    }
}

/// Resolves once the process has exited and `DRAIN_GRACE` has passed.
async fn drained_deadline(s: &Session) {
    s.exited().await;
    tokio::time::sleep(DRAIN_GRACE).await;
}

pub fn spawn_pipe(session: Arc<Session>, fd: OwnedFd, which: Stream) {
    tokio::spawn(async move {
        let mut rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => rx,
            Err(e) => {
                crate::error!("session {}: reading output: {e}", session.id());
                output(&session, which).close();
                return;
            }
        };
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                r = rx.read(&mut buf) => match r {
                    Ok(n) => n,
                    Err(e) => {
                        crate::error!("session {}: reading output: {e}", session.id());
                        0
                    }
                },
                _ = drained_deadline(&session) => 0,
            };
            if n == 0 {
                break;
            }
            output(&session, which).push(&buf[..n]).await;
        }
        output(&session, which).close();
    });
}

/// Wraps a descriptor for async use, in non-blocking mode.
pub fn async_fd(fd: OwnedFd) -> io::Result<Arc<AsyncFd<OwnedFd>>> {
    crate::fdio::register(fd).map(Arc::new)
}

pub fn spawn_pty(session: Arc<Session>, master: Arc<AsyncFd<OwnedFd>>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                r = crate::fdio::read(&master, &mut buf) => match r {
                    Ok(n) => n,
                    // EIO: every holder of the terminal's other side is gone.
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
                    Err(e) => {
                        crate::error!("session {}: reading terminal (fd {}): {e}", session.id(), master.as_raw_fd());
                        0
                    }
                },
                _ = drained_deadline(&session) => 0,
            };
            if n == 0 {
                break;
            }
            session.stdout.push(&buf[..n]).await;
        }
        session.stdout.close();
    });
}
