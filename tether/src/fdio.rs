//! Async I/O on raw file descriptors (pipes, terminals, character devices)
//! through tokio's reactor.

use std::io;
use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use tokio::io::unix::AsyncFd;

/// Puts `fd` in non-blocking mode and registers it with the reactor.
pub fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: an `OwnedFd` is a valid open descriptor that it owns; it stays
    // open and returns the same number for as long as the AsyncFd holds it.
    unsafe { AsyncFd::register(fd) }.map_err(io::Error::from)
}

/// Reads once, waiting for readiness.
pub async fn read(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        if let Ok(r) =
            guard.try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(io::Error::from))
        {
            return r;
        }
    }
}

/// Writes all of `data`, waiting for readiness.
pub async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        if let Ok(r) =
            guard.try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
        {
            data = &data[r?..];
        }
    }
    Ok(())
}
