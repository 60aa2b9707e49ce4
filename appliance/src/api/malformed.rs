//! Requests that never reach the router: hyper refuses a request line it
//! cannot parse (a `>`, `<`, `"`, space or control character left
//! unencoded in the target, a bad method or version), headers too large
//! and a target too long, and answers them itself with an empty 400, 431
//! or 414 before closing the connection. This module wraps each
//! connection's byte stream and gives those answers the API's JSON error
//! body (`INVALID_ARGUMENT`, element `request`), so that every failure a
//! client sees has one shape. Axum's own rejections never get here: the
//! extractors in `extract` turn them into API errors.
//!
//! Owns recognising hyper's automatic answer and rewriting it: a write that
//! is exactly a head with status 400, 414 or 431, `content-length: 0` and
//! no header but `date` and `connection: close`. Hyper writes it alone, as the last thing on the
//! connection; the API itself never answers with an empty error, so no
//! answer of the router's looks like it. Must not touch any other byte:
//! every other write goes through unchanged. (One limit: on a pipelining
//! connection, hyper's answer can share a write with the end of the
//! previous response, and is then left as it is.)

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::{ErrorBody, ErrorCode};

/// A connection's byte stream whose automatic parse-error answers carry
/// the API's JSON error body.
pub struct Io<T> {
    inner: T,
    /// The rewritten answer still to be written, and how much of it is.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> Io<T> {
    pub fn new(inner: T) -> Self {
        Io {
            inner,
            pending: None,
        }
    }
}

/// What a client sees for each status hyper answers by itself.
fn message(status: &str) -> Option<&'static str> {
    Some(match status {
        "400" => {
            "The request could not be parsed: its request line or a header is malformed \
             (percent-encode characters such as '<', '>', '\"', spaces and control \
             characters in the path and query)"
        }
        "414" => "The request's target (path and query) is longer than this server accepts",
        "431" => "The request's headers are larger than this server accepts",
        _ => return None,
    })
}

/// The JSON answer for `head` if it is hyper's automatic, empty one.
fn rewrite(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let head = text.strip_suffix("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut words = status_line.splitn(3, ' ');
    let (version, status) = (words.next()?, words.next()?);
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return None;
    }
    let message = message(status)?;
    let mut empty = false;
    let mut kept = Vec::new();
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower == "content-length: 0" {
            empty = true;
        } else if lower.starts_with("date:") {
            kept.push(line);
        } else if lower != "connection: close" {
            return None;
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::to_vec(&ErrorBody {
        code: ErrorCode::InvalidArgument,
        message: message.into(),
        element: "request".into(),
        current_version: None,
    })
    .ok()?;
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for line in kept {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend(body);
    Some(out)
}

impl<T: AsyncWrite + Unpin> Io<T> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Io { inner, pending } = self;
        while let Some((buf, done)) = pending {
            let n = ready!(Pin::new(&mut *inner).poll_write(cx, &buf[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
            if *done == buf.len() {
                *pending = None;
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written if it is hyper's automatic answer, queuing
    /// the JSON one in its place.
    fn take_refusal(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<io::Result<usize>> {
        let answer = rewrite(buf)?;
        self.pending = Some((answer, 0));
        // Started now; flushing (which hyper does next) finishes it.
        if let Poll::Ready(Err(e)) = self.poll_pending(cx) {
            return Some(Err(e));
        }
        Some(Ok(buf.len()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Io<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Io<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(r) = this.take_refusal(cx, buf) {
            return Poll::Ready(r);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(r) = this.take_refusal(cx, first)
        {
            return Poll::Ready(r);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// A listener whose connections are [`Io`]s, for `axum::serve`.
pub struct Listener<L>(pub L);

impl<L> axum::serve::Listener for Listener<L>
where
    L: axum::serve::Listener,
    L::Io: Unpin,
{
    type Io = Io<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.0.accept().await;
        (Io::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_answers_are_rewritten() {
        // As hyper 1 writes it.
        let auto = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Thu, 03 Dec 2026 05:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(rewrite(auto).expect("rewritten")).expect("text");
        let (head, body) = out.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("date: Thu, 03 Dec 2026"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let e: ErrorBody = serde_json::from_str(body).expect("JSON");
        assert_eq!(
            (e.code, e.element.as_str()),
            (ErrorCode::InvalidArgument, "request")
        );
        let long = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite(long).is_some());

        for other in [
            // The router's own answers: a body, a content type.
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nmore",
            b"\x00\x01",
        ] {
            assert_eq!(rewrite(other), None, "{:?}", String::from_utf8_lossy(other));
        }
    }
}
