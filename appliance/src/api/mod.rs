//! The port layer's REST API: one module per component, named as the
//! component is everywhere else (`exec`, `storage`, `interaction`,
//! `events`, `diagnostics`, `kv`), each owning its routes under `/<component>` and the
//! OpenAPI tag of that name; `openapi` generates the document from them.
//! `error` gives every failure one JSON shape, `extract` parses requests so
//! that their rejections take it too, `malformed` gives it to the requests
//! hyper refuses before routing, `time` reads and prints times.
//!
//! This module owns the router, its shared state and the listeners. It must
//! not hold any port layer logic: handlers translate HTTP to `PortLayer`
//! calls and back.
//!
//! Listeners: `serve_unix` (the default; the socket is made mode 0600, so
//! only its owner can reach it) and `serve_tcp`. The TCP listener serves
//! HTTPS and admits only clients whose certificate is signed by the
//! configured CA (`tls`); without TLS settings it is plain HTTP with no
//! authentication, which is refused on any address but loopback.
//! Cross-origin browser requests are refused (JSON bodies must say
//! `Content-Type: application/json`, which needs a CORS preflight that is
//! never granted; attach refuses WebSocket upgrades that carry an `Origin`).

pub mod diagnostics;
pub mod error;
pub mod events;
pub mod exec;
pub mod extract;
pub mod interaction;
pub mod kv;
pub mod malformed;
pub mod network;
pub mod openapi;
pub mod storage;
pub mod time;
pub mod tls;

#[cfg(test)]
mod testutil;

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::http::{Method, Uri};
use tokio::net::{TcpListener, UnixListener};

pub use error::{ApiError, ErrorBody, ErrorCode};
pub use openapi::openapi_json;
pub use tls::{TlsError, TlsSettings};

use crate::portlayer::exec::PortLayer;

/// What every handler gets.
#[derive(Clone)]
pub struct ApiState {
    pub pl: Arc<PortLayer>,
    /// The appliance's own log file, served by `/diagnostics/logs`.
    pub log_file: Option<std::path::PathBuf>,
    /// When this API was made, for `uptime_seconds`.
    pub started: Instant,
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        uri.path().to_string(),
        format!("No route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        uri.path().to_string(),
        format!("{} does not accept {method}", uri.path()),
    )
}

/// The whole API over one port layer.
pub fn router(pl: Arc<PortLayer>) -> Router {
    router_with_log(pl, None)
}

/// The router, serving `log_file` (the appliance's own log) under
/// `/diagnostics/logs`.
pub fn router_with_log(pl: Arc<PortLayer>, log_file: Option<std::path::PathBuf>) -> Router {
    let state = ApiState {
        pl,
        log_file,
        started: Instant::now(),
    };
    Router::new()
        .merge(exec::routes())
        .merge(interaction::routes())
        .merge(events::routes())
        .merge(diagnostics::routes())
        .merge(kv::routes())
        .merge(storage::routes())
        .merge(network::routes())
        .merge(openapi::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn at(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Binds a unix socket at `path`, mode 0600. A socket file left by a server
/// that is gone is removed first; one a live server answers on is
/// `AddrInUse`, and anything else at `path` is refused.
pub fn bind_unix(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("Socket {} is in use by a running server", path.display()),
                ));
            }
            std::fs::remove_file(path).map_err(|e| at(path, "Removing stale socket", e))?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(at(path, "Checking socket", e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| at(path, "Binding socket", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| at(path, "Restricting socket", e))?;
    Ok(listener)
}

/// Serves `router` on a unix socket at `path` (see `bind_unix`) until an
/// error.
pub async fn serve_unix(router: Router, path: &Path) -> io::Result<()> {
    serve_unix_until(router, path, std::future::pending()).await
}

/// `serve_unix` until `stop` completes: then no new connection is taken,
/// idle ones close, and it returns once the requests in flight have been
/// answered (streams such as `logs -f` keep it waiting: bound it outside).
/// The socket file is removed on the way out.
pub async fn serve_unix_until(
    router: Router,
    path: &Path,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = malformed::Listener(bind_unix(path)?);
    let r = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await;
    if let Err(e) = std::fs::remove_file(path) {
        tracing::warn!("removing socket {}: {e}", path.display());
    }
    r
}

/// Serves `router` on TCP `addr` (see `bind_tcp` and `serve_tcp_listener`)
/// until an error.
pub async fn serve_tcp(
    router: Router,
    addr: SocketAddr,
    tls: Option<TlsSettings>,
) -> io::Result<()> {
    serve_tcp_until(router, addr, tls, std::future::pending()).await
}

/// `serve_tcp` until `stop` completes (see `serve_unix_until`).
pub async fn serve_tcp_until(
    router: Router,
    addr: SocketAddr,
    tls: Option<TlsSettings>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if tls.is_none() {
        plain_tcp_allowed(addr)?;
    }
    let listener = bind_tcp(addr).await?;
    tokio::select! {
        r = serve_tcp_listener(router, listener, tls) => r,
        () = stop => Ok(()),
    }
}

/// Binds a TCP listener on `addr` (port 0 picks a free one).
pub async fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("Binding {addr}: {e}")))
}

/// Serves `router` on `listener` until an error: over TLS with client
/// certificates verified if `tls` is given, else as plain HTTP with no
/// authentication, which only a loopback listener may do.
pub async fn serve_tcp_listener(
    router: Router,
    listener: TcpListener,
    tls: Option<TlsSettings>,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    match tls {
        Some(tls) => tls::serve(router, listener, tls).await,
        None => {
            plain_tcp_allowed(addr)?;
            tracing::warn!(
                "serving the port layer API on {addr} as plain HTTP without authentication: any local user can use it"
            );
            axum::serve(malformed::Listener(listener), router).await
        }
    }
}

/// Plain HTTP with no authentication is for loopback only.
fn plain_tcp_allowed(addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("Refusing plain HTTP on {addr}, which is not loopback: TLS settings are needed"),
    ))
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn unknown_routes_and_methods_are_json_errors() {
        let h = Harness::new();
        let (status, body) = h.call("GET", "/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["code"], "NOT_FOUND");
        assert_eq!(body["element"], "/nope");
        let (status, body) = h.call("PATCH", "/exec/commit", None).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
    }

    /// A request line hyper cannot parse (here an unencoded `>` in the
    /// query, as a shell or a hand-written client sends it) never reaches
    /// the router; it still gets the API's JSON error body, on every
    /// listener.
    #[tokio::test]
    async fn requests_hyper_refuses_get_the_json_error_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let h = Harness::new();
        let unix = {
            let (router, path) = (h.router.clone(), path.clone());
            tokio::spawn(async move { serve_unix(router, &path).await })
        };
        let tcp = bind_tcp("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let tcp = tokio::spawn(serve_tcp_listener(h.router.clone(), tcp, None));
        for _ in 0..100 {
            if path.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let raw = "GET /exec/containers?filter=a>b HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n";
        let over_tcp = async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(raw.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            String::from_utf8_lossy(&out).into_owned()
        };
        let tcp_text = over_tcp.await;
        let (head, tcp_body) = tcp_text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 "), "{tcp_text}");
        let (status, unix_body) = unix_get(&path, "/exec/containers?filter=a>b").await;
        assert_eq!(status, 400);
        for body in [tcp_body, unix_body.as_str()] {
            let e: serde_json::Value = serde_json::from_str(body)
                .unwrap_or_else(|err| panic!("not JSON ({err}): {body:?}"));
            assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
            assert_eq!(e["element"], "request", "{e}");
            let msg = e["message"].as_str().unwrap();
            assert!(msg.contains("percent-encode"), "{msg}");
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{head}"
        );
        // A well-formed request on a fresh connection is served as ever.
        let (status, _) = unix_get(&path, "/exec/containers?filter=name%3Da").await;
        assert_eq!(status, 200);
        unix.abort();
        tcp.abort();
    }

    #[tokio::test]
    async fn unix_socket_is_private_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A stale socket: bound, then its listener dropped.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let h = Harness::new();
        let listener = bind_unix(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let server = tokio::spawn(axum::serve(listener, h.router.clone()).into_future());
        // A live one is not taken over.
        let e = bind_unix(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let (status, body) = unix_get(&path, "/kv").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "[]");
        server.abort();

        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        let e = bind_unix(&dir.path().join("plain")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
    }
}
