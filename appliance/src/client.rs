//! The HTTP/1.1 client for the port layer's REST server, over the unix
//! socket `<state>/appliance.sock`: JSON requests, streamed GETs (logs,
//! events) and the WebSocket attach. Shared by the CLI (`cli`) and the
//! Docker personality (`docker`), which reach the port layer through it
//! only.
//!
//! Owns the transport and the mapping of the server's error JSON
//! (`{"code","message","element"}`) to [`ClientError`]. It knows nothing
//! about containers: its callers build paths and bodies.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

/// The socket file inside the state directory.
pub const SOCKET: &str = "appliance.sock";

/// An attach session's WebSocket.
pub type AttachSocket = WebSocketStream<UnixStream>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No server: the socket is missing or refuses connections (anything
    /// else, such as a permission problem, is said as it is).
    #[error("Cannot reach the appliance at {}: {}", path.display(), unreachable_hint(error))]
    Unreachable {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The server answered with an error status.
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("HTTP exchange with the appliance failed")]
    Http(#[from] hyper::Error),
    #[error("WebSocket handshake with the appliance failed")]
    WebSocket(#[from] tungstenite::Error),
    #[error("Unexpected answer from the appliance to {path}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Invalid request {path}")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("Writing output")]
    Output(#[source] std::io::Error),
}

#[cfg(test)]
impl ClientError {
    /// The server's error, if that is what this is.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            ClientError::Api(e) => Some(e),
            _ => None,
        }
    }
}

fn unreachable_hint(e: &std::io::Error) -> String {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match e.kind() {
        NotFound | ConnectionRefused => "is `appliance serve` running?".into(),
        _ => e.to_string(),
    }
}

/// An error response from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub element: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Error response from appliance: {}", self.message)?;
        match (self.element.is_empty(), self.code.is_empty()) {
            (false, false) => write!(f, " (element {}, code {})", self.element, self.code),
            (false, true) => write!(f, " (element {})", self.element),
            (true, false) => write!(f, " (code {})", self.code),
            (true, true) => Ok(()),
        }
    }
}

impl ApiError {
    /// Reads an error body: the server's JSON, or failing that the text.
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct Body {
            code: String,
            message: String,
            element: String,
        }
        match serde_json::from_slice::<Body>(body) {
            Ok(b) if !b.message.is_empty() || !b.code.is_empty() => ApiError {
                status,
                code: b.code,
                message: b.message,
                element: b.element,
            },
            _ => {
                let text = String::from_utf8_lossy(body).trim().to_string();
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Unknown status");
                ApiError {
                    status,
                    code: status.to_string(),
                    message: if text.is_empty() {
                        reason.to_string()
                    } else {
                        text
                    },
                    element: String::new(),
                }
            }
        }
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
pub fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path?k=v&…`, leaving out empty values.
pub fn with_query(path: &str, params: &[(&str, String)]) -> String {
    let q: Vec<String> = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect();
    if q.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", q.join("&"))
    }
}

/// The body of a streamed response.
pub struct BodyStream(Incoming);

impl BodyStream {
    /// The next chunk; `None` once the server has ended the response.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        while let Some(frame) = self.0.frame().await {
            if let Ok(data) = frame?.into_data() {
                return Ok(Some(data));
            }
        }
        Ok(None)
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// The client for the appliance whose state directory is `state`.
    pub fn for_state(state: &Path) -> Self {
        Self::new(state.join(SOCKET))
    }

    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    async fn connect(&self) -> Result<UnixStream, ClientError> {
        UnixStream::connect(&self.socket)
            .await
            .map_err(|error| ClientError::Unreachable {
                path: self.socket.clone(),
                error,
            })
    }

    /// Sends one request on a fresh connection; an error status becomes
    /// [`ClientError::Api`].
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response<Incoming>, ClientError> {
        let json = body.is_some().then_some("application/json");
        let body = Full::new(Bytes::from(body.unwrap_or_default()));
        self.send_body(method, path, json, body).await
    }

    /// Sends one request with any body (a file streamed from disk, say).
    async fn send_body<B>(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: B,
    ) -> Result<Response<Incoming>, ClientError>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = self.connect().await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection to the appliance: {e}");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "appliance");
        if let Some(ct) = content_type {
            req = req.header(CONTENT_TYPE, ct);
        }
        let req = req.body(body).map_err(|source| ClientError::Request {
            path: path.into(),
            source,
        })?;
        let resp = sender.send_request(req).await?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Err(ApiError::from_body(status, &body).into())
    }

    /// Sends a file (or anything read like one) as the body (POST or PUT),
    /// streamed; the JSON answer.
    pub async fn upload<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        file: impl tokio::io::AsyncRead + Send + 'static,
    ) -> Result<T, ClientError> {
        use futures::TryStreamExt;
        let frames = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20)
            .map_ok(hyper::body::Frame::data);
        let body = http_body_util::StreamBody::new(frames);
        let resp = self
            .send_body(method, path, Some(content_type), body)
            .await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        serde_json::from_slice(&bytes).map_err(|source| ClientError::Decode {
            path: path.into(),
            source,
        })
    }

    /// POSTs JSON and returns the answer's body as a stream (a pull's
    /// progress lines).
    pub async fn post_stream(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<BodyStream, ClientError> {
        let body = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            path: path.into(),
            source,
        })?;
        Ok(BodyStream(
            self.send(Method::POST, path, Some(body)).await?.into_body(),
        ))
    }

    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let resp = self.send(method, path, body).await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"null"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map_err(|source| ClientError::Decode {
            path: path.into(),
            source,
        })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|source| ClientError::Decode {
            path: path.into(),
            source,
        })?;
        self.json(Method::POST, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::DELETE, path, None).await
    }

    /// Starts a GET whose body is a stream (logs, events): the server's
    /// answer is known when this returns, the body comes chunk by chunk.
    pub async fn open_stream(&self, path: &str) -> Result<BodyStream, ClientError> {
        Ok(BodyStream(
            self.send(Method::GET, path, None).await?.into_body(),
        ))
    }

    /// A GET whose body is a stream: hands each chunk to `on_chunk` as it
    /// arrives, until the server ends the response (or `on_chunk` fails).
    pub async fn get_stream(
        &self,
        path: &str,
        mut on_chunk: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let mut body = self.open_stream(path).await?;
        while let Some(chunk) = body.chunk().await? {
            on_chunk(&chunk).map_err(ClientError::Output)?;
        }
        Ok(())
    }

    /// Opens a WebSocket at `path` (e.g. the attach route). A refusal
    /// carrying the server's error JSON is a [`ClientError::Api`].
    pub async fn websocket(&self, path: &str) -> Result<AttachSocket, ClientError> {
        let stream = self.connect().await?;
        let url = format!("ws://appliance{path}");
        match tokio_tungstenite::client_async(url.as_str(), stream).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().unwrap_or_default();
                Err(ApiError::from_body(status, body).into())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// A hand-rolled HTTP server on a unix socket in a temporary directory,
/// answering with canned bytes: for the client's tests and its users'.
#[cfg(test)]
pub mod canned {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    /// Serves one canned response per connection, in order, recording each
    /// request. A response is written in parts, a little apart; an empty
    /// part leaves the connection open (until the server's end).
    async fn serve(
        listener: UnixListener,
        responses: Vec<Vec<Vec<u8>>>,
        requests: tokio::sync::mpsc::UnboundedSender<String>,
    ) {
        let mut held = Vec::new();
        for parts in responses {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then Content-Length bytes of body.
            loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&req).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if req.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            let _ = requests.send(String::from_utf8_lossy(&req).to_string());
            for p in parts {
                if p.is_empty() {
                    held.push(s);
                    break;
                }
                let _ = s.write_all(&p).await;
                let _ = s.flush().await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }

    pub fn response(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    pub fn setup(
        responses: Vec<Vec<Vec<u8>>>,
    ) -> (
        tempfile::TempDir,
        Client,
        tokio::sync::mpsc::UnboundedReceiver<String>,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = UnixListener::bind(dir.path().join(SOCKET)).expect("bind");
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(serve(listener, responses, tx));
        let client = Client::for_state(dir.path());
        (dir, client, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::canned::{response, setup};
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio::net::UnixListener;

    #[test]
    fn api_error_message_names_element_and_code() {
        let e = ApiError::from_body(
            404,
            br#"{"code":"NOT_FOUND","message":"No such container","element":"abc"}"#,
        );
        assert_eq!(
            e.to_string(),
            "Error response from appliance: No such container (element abc, code NOT_FOUND)"
        );
        let e = ApiError::from_body(502, b"bad gateway text");
        assert_eq!(e.message, "bad gateway text");
        assert_eq!(e.code, "502");
        let e = ApiError::from_body(500, b"");
        assert_eq!(
            e.to_string(),
            "Error response from appliance: Internal Server Error (code 500)"
        );
    }

    #[test]
    fn queries_are_encoded_and_empty_values_dropped() {
        assert_eq!(
            with_query(
                "/exec/containers",
                &[
                    ("filter", "state=running,label.a=b c".into()),
                    ("x", String::new())
                ]
            ),
            "/exec/containers?filter=state%3Drunning%2Clabel.a%3Db%20c"
        );
        assert_eq!(with_query("/events", &[]), "/events");
    }

    #[tokio::test]
    async fn missing_socket_says_how_to_fix_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = Client::for_state(dir.path());
        let e = c
            .get::<serde_json::Value>("/exec/containers")
            .await
            .expect_err("no server");
        assert_eq!(
            e.to_string(),
            format!(
                "Cannot reach the appliance at {}: is `appliance serve` running?",
                dir.path().join(SOCKET).display()
            )
        );
    }

    #[tokio::test]
    async fn a_dead_socket_is_unreachable_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A socket file nobody listens on any more.
        drop(std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET)).expect("bind"));
        let e = Client::for_state(dir.path())
            .get::<serde_json::Value>("/exec/containers")
            .await
            .expect_err("refused");
        assert!(
            e.to_string().ends_with(": is `appliance serve` running?"),
            "{e}"
        );
    }

    #[test]
    fn server_errors_print_once_in_a_chain() {
        let e: anyhow::Error = ClientError::from(ApiError::from_body(
            404,
            br#"{"code":"NOT_FOUND","message":"Container x not found","element":"x"}"#,
        ))
        .into();
        assert_eq!(
            format!("{e:#}"),
            "Error response from appliance: Container x not found (element x, code NOT_FOUND)"
        );
    }

    #[tokio::test]
    async fn json_requests_and_error_responses() {
        let (_dir, c, mut reqs) = setup(vec![
            vec![response("201 Created", r#"{"id":"abc","handle":"h1"}"#)],
            vec![response(
                "409 Conflict",
                r#"{"code":"CONFLICT","message":"Stale handle: current version 3","element":"abc"}"#,
            )],
            vec![response("204 No Content", "")],
        ]);
        #[derive(serde::Deserialize)]
        struct Created {
            id: String,
            handle: String,
        }
        let created: Created = c
            .post("/exec/containers", &serde_json::json!({"image": "busybox"}))
            .await
            .expect("created");
        assert_eq!(
            (created.id.as_str(), created.handle.as_str()),
            ("abc", "h1")
        );
        let req = reqs.recv().await.expect("request");
        assert!(
            req.starts_with("POST /exec/containers HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(
            req.to_ascii_lowercase()
                .contains("content-type: application/json")
        );
        assert!(req.ends_with(r#"{"image":"busybox"}"#), "{req}");

        let e = c
            .post::<serde_json::Value>("/exec/commit", &serde_json::json!({"handle": "h1"}))
            .await
            .expect_err("conflict");
        let api = e.api().expect("api error");
        assert_eq!(api.status, 409);
        assert_eq!(
            e.to_string(),
            "Error response from appliance: Stale handle: current version 3 (element abc, code CONFLICT)"
        );
        let _ = reqs.recv().await;

        let () = c
            .delete("/exec/containers/abc?force=true")
            .await
            .expect("deleted");
        let req = reqs.recv().await.expect("request");
        assert!(req.starts_with("DELETE /exec/containers/abc?force=true HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn streamed_get_hands_over_chunks_as_they_arrive() {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let (_dir, c, _reqs) = setup(vec![vec![
            head,
            b"6\r\nhello \r\n".to_vec(),
            b"6\r\nworld\n\r\n".to_vec(),
            b"0\r\n\r\n".to_vec(),
        ]]);
        let mut chunks = Vec::new();
        c.get_stream("/interaction/containers/abc/logs?follow=true", |b| {
            chunks.push(b.to_vec());
            Ok(())
        })
        .await
        .expect("stream");
        assert_eq!(chunks.concat(), b"hello world\n");
        assert!(chunks.len() >= 2, "chunks arrive separately: {chunks:?}");
    }

    #[tokio::test]
    async fn streamed_get_error_is_the_server_error() {
        let (_dir, c, _reqs) = setup(vec![vec![response(
            "404 Not Found",
            r#"{"code":"NOT_FOUND","message":"No such container","element":"zzz"}"#,
        )]]);
        let e = c
            .get_stream("/interaction/containers/zzz/logs", |_| Ok(()))
            .await
            .expect_err("404");
        assert_eq!(e.api().map(|a| a.status), Some(404));
    }

    #[tokio::test]
    async fn websocket_refusal_is_the_server_error() {
        let (_dir, c, _reqs) = setup(vec![vec![response(
            "409 Conflict",
            r#"{"code":"NOT_RUNNING","message":"The container is not running","element":"abc"}"#,
        )]]);
        let e = c
            .websocket("/interaction/containers/abc/attach?stdin=true")
            .await
            .expect_err("refused");
        let api = e.api().expect("api error");
        assert_eq!((api.status, api.code.as_str()), (409, "NOT_RUNNING"));
    }

    #[tokio::test]
    async fn websocket_carries_frames_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = UnixListener::bind(dir.path().join(SOCKET)).expect("bind");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(s).await.expect("accept ws");
            ws.send(tungstenite::Message::Binary(Bytes::from_static(b"\x01hi")))
                .await
                .expect("send");
            let got = ws.next().await.expect("frame").expect("frame");
            ws.send(tungstenite::Message::Text(r#"{"exit_code":3}"#.into()))
                .await
                .expect("send");
            let _ = ws.close(None).await;
            got
        });
        let c = Client::for_state(dir.path());
        let mut ws = c
            .websocket("/interaction/containers/abc/attach?stdin=true")
            .await
            .expect("ws");
        let first = ws.next().await.expect("frame").expect("frame");
        assert_eq!(first.into_data().as_ref(), b"\x01hi");
        ws.send(tungstenite::Message::Binary(Bytes::from_static(b"in")))
            .await
            .expect("send");
        let exit = ws.next().await.expect("frame").expect("frame");
        assert_eq!(
            exit.into_text().expect("text").as_str(),
            r#"{"exit_code":3}"#
        );
        let got = server.await.expect("server");
        assert_eq!(got.into_data().as_ref(), b"in");
    }
}
