//! The byte stream to the host: a virtio-serial port (QEMU: a unix socket
//! chardev on the host side).
//!
//! Owns finding the port by name, waiting for the host to connect, and
//! adapting the character device to tokio's `AsyncRead`/`AsyncWrite`. Must
//! not know what runs over it (SSH).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker, ready};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(
        "No virtio-serial port named {0:?} appeared in /sys/class/virtio-ports; start QEMU with -device virtserialport,name={0}"
    )]
    NoPort(String),
    #[error("Opening {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Finds `/dev/vportNpM` whose sysfs name is `name`, waiting up to `wait`.
pub fn find_port(name: &str, wait: Duration) -> Result<PathBuf, TransportError> {
    find_port_in(
        Path::new("/sys/class/virtio-ports"),
        Path::new("/dev"),
        name,
        wait,
    )
}

fn find_port_in(
    sys: &Path,
    dev: &Path,
    name: &str,
    wait: Duration,
) -> Result<PathBuf, TransportError> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(entries) = std::fs::read_dir(sys) {
            for e in entries.flatten() {
                let n = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
                if n.trim() == name {
                    let path = dev.join(e.file_name());
                    if path.exists() {
                        return Ok(path);
                    }
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(TransportError::NoPort(name.to_string()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One open virtio-serial port.
pub struct Port {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// Set when this connection is abandoned: reads and writes then fail at
    /// once, so that an SSH session still holding the port ends.
    cut: Arc<Cut>,
    /// Bytes read ahead during the handshake, returned before the port's.
    pending: Vec<u8>,
}

#[derive(Default)]
struct Cut {
    done: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Cut {
    fn check(&self, cx: &Context<'_>) -> io::Result<()> {
        if self.done.load(Ordering::SeqCst) {
            return Err(io::ErrorKind::ConnectionAborted.into());
        }
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Ok(())
    }
}

/// Ends the connection of the `Port` it came from.
#[derive(Clone)]
pub struct Cutter(Arc<Cut>);

impl Cutter {
    pub fn cut(&self) {
        self.0.done.store(true, Ordering::SeqCst);
        for w in self
            .0
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            w.wake();
        }
    }
}

/// Watches whether a host is connected to a port.
#[derive(Clone)]
pub struct HostWatch(Arc<AsyncFd<OwnedFd>>);

impl HostWatch {
    /// Whether a host is connected: the port reports POLLHUP while not.
    pub fn connected(&self) -> bool {
        let mut fds = [PollFd::new(self.0.get_ref().as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => !fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLHUP)),
            Err(_) => false,
        }
    }

    /// Waits until a host is connected.
    pub async fn until_connected(&self) {
        while !self.connected() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the host goes away.
    pub async fn until_gone(&self) {
        while self.connected() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Port {
    pub fn open(path: &Path) -> Result<Self, TransportError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| TransportError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let fd =
            crate::fdio::register(OwnedFd::from(file)).map_err(|source| TransportError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self {
            fd: Arc::new(fd),
            cut: Arc::default(),
            pending: Vec::new(),
        })
    }

    pub fn watch(&self) -> HostWatch {
        HostWatch(self.fd.clone())
    }

    pub fn cutter(&self) -> Cutter {
        Cutter(self.cut.clone())
    }

    /// The tether's half of the connection handshake (see `answer_hello`);
    /// the host's SSH version line is kept for the SSH server to read.
    pub async fn handshake(&mut self) -> io::Result<String> {
        let (nonce, ssh_line) = answer_hello(self).await?;
        self.pending = ssh_line;
        Ok(nonce)
    }
}

/// The tether's half of the connection handshake (`proto::handshake`):
/// waits for the host's hello, answers it, and skips repeated hellos up to
/// the host's SSH version line, which is returned (with its line end) with
/// the nonce answered. A hello with another nonce is a newer host
/// connection (the one answered may have been a stale hello of a
/// connection that gave up): it is answered too, and its nonce is the one
/// returned.
async fn answer_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
) -> io::Result<(String, Vec<u8>)> {
    use proto::handshake::{HELLO, nonce_in, ok_line, read_line, wait_for};
    use tokio::io::AsyncWriteExt;
    let mut nonce = wait_for(s, HELLO)
        .await?
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    s.write_all(ok_line(&nonce).as_bytes()).await?;
    loop {
        let line = read_line(s).await?.ok_or(io::ErrorKind::UnexpectedEof)?;
        if line.starts_with(b"SSH-") {
            let mut keep = line;
            keep.extend_from_slice(b"\r\n");
            return Ok((nonce, keep));
        }
        if let Some(other) = nonce_in(&line, HELLO).filter(|n| *n != nonce) {
            s.write_all(ok_line(&other).as_bytes()).await?;
            nonce = other;
        }
    }
}

impl AsyncRead for Port {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.cut.check(cx)?;
        if !self.pending.is_empty() {
            let n = self.pending.len().min(buf.remaining());
            buf.put_slice(&self.pending[..n]);
            self.pending.drain(..n);
            return Poll::Ready(Ok(()));
        }
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|inner| {
                nix::unistd::read(inner.get_ref(), unfilled).map_err(io::Error::from)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Port {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.cut.check(cx)?;
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard
                .try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_port_by_sysfs_name() {
        let t = tempfile::tempdir().unwrap();
        let (sys, dev) = (t.path().join("sys"), t.path().join("dev"));
        for (port, name) in [("vport0p1", "other"), ("vport0p2", "org.tether.0")] {
            std::fs::create_dir_all(sys.join(port)).unwrap();
            std::fs::write(sys.join(port).join("name"), format!("{name}\n")).unwrap();
        }
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vport0p2"), b"").unwrap();
        let p = find_port_in(&sys, &dev, "org.tether.0", Duration::ZERO).unwrap();
        assert_eq!(p, dev.join("vport0p2"));
        let e = find_port_in(&sys, &dev, "absent", Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("name=absent"));
    }

    #[tokio::test]
    async fn a_newer_hello_is_answered_and_wins() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut host, mut tether) = tokio::io::duplex(4096);
        // A stale hello of a connection that gave up, then the live one's
        // hellos, then its SSH version line and the first SSH bytes.
        host.write_all(b"\r\nTETHER-HELLO old1\r\n\r\nTETHER-HELLO new2\r\n\r\nTETHER-HELLO new2\r\nSSH-2.0-host\r\nKEX")
            .await
            .unwrap();
        let (nonce, line) = answer_hello(&mut tether).await.unwrap();
        assert_eq!(nonce, "new2");
        assert_eq!(line, b"SSH-2.0-host\r\n");
        drop(tether);
        let mut answers = String::new();
        host.read_to_string(&mut answers).await.unwrap();
        assert_eq!(answers, "\r\nTETHER-OK old1\r\n\r\nTETHER-OK new2\r\n");
    }
}
