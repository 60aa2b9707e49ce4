//! Test helpers for the API: a router over a port layer with the in-memory
//! store and `FakeBackend` (optionally keeping host logs), and calls through
//! it with `tower::ServiceExt::oneshot` or over a real unix socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use crate::backend::fake::FakeBackend;
use crate::backend::{AttachStream, Backend, BackendError, Events};
use crate::handle::HandleKey;
use crate::portlayer::events::Events as PortEvents;
use crate::portlayer::exec::PortLayer;
use crate::portlayer::model::{Container, Task};
use crate::portlayer::storage::Storage;
use crate::store::Store;

pub struct Harness {
    pub pl: Arc<PortLayer>,
    pub fake: Arc<FakeBackend>,
    pub router: Router,
}

impl Harness {
    pub fn new() -> Self {
        let fake = Arc::new(FakeBackend::default());
        Harness::over(fake.clone(), fake)
    }

    /// A harness whose backend keeps host logs under `dir`.
    pub fn with_logs(dir: &Path) -> Self {
        let fake = Arc::new(FakeBackend::default());
        let backend = Arc::new(LoggingFake {
            inner: fake.clone(),
            dir: dir.to_path_buf(),
        });
        Harness::over(backend, fake)
    }

    /// A harness with the storage component, its stores under `dir` (and
    /// no images in them).
    pub fn with_storage(dir: &Path) -> Self {
        let fake = Arc::new(FakeBackend::default());
        let store = Arc::new(Store::open_in_memory().unwrap());
        let events = Arc::new(PortEvents::new(store.clone()));
        let storage = Storage::open(store.clone(), events.clone(), dir).unwrap();
        let pl = PortLayer::with_storage(
            store,
            events,
            Some(storage),
            HandleKey::from_bytes([7; 32]),
            fake.clone(),
        );
        let router = super::router(pl.clone());
        Harness { pl, fake, router }
    }

    fn over(backend: Arc<dyn Backend>, fake: Arc<FakeBackend>) -> Self {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let pl = PortLayer::new(store, HandleKey::from_bytes([7; 32]), backend);
        let router = super::router(pl.clone());
        Harness { pl, fake, router }
    }

    pub async fn send(&self, req: Request<Body>) -> Response<Body> {
        self.router.clone().oneshot(req).await.unwrap()
    }

    /// Calls the API with an optional JSON body; the response body as
    /// JSON (`Null` if empty, a string if not JSON).
    pub async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let resp = self.send(req.body(body).unwrap()).await;
        let status = resp.status();
        (status, body_json(resp).await)
    }

    /// Creates and commits a container running `sh`; returns its id.
    pub async fn create(&self, name: &str) -> String {
        let (status, created) = self
            .call(
                "POST",
                "/exec/containers",
                Some(json!({"name": name, "image": "busybox", "task": {"args": ["sh"]}})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let (status, result) = self
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": created["handle"]})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{result}");
        created["id"].as_str().unwrap().to_string()
    }

    /// Asks for `target` on container `id` and commits; the commit result.
    pub async fn set_state(&self, id: &str, target: &str) -> (StatusCode, Value) {
        let (_, h) = self
            .call("GET", &format!("/exec/containers/{id}/handle"), None)
            .await;
        let (status, h) = self
            .call(
                "POST",
                "/exec/handles/state",
                Some(json!({"handle": h["handle"], "target": target})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{h}");
        self.call("POST", "/exec/commit", Some(json!({"handle": h["handle"]})))
            .await
    }
}

pub async fn body_bytes(resp: Response<Body>) -> Vec<u8> {
    axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec()
}

pub async fn body_json(resp: Response<Body>) -> Value {
    let bytes = body_bytes(resp).await;
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
}

/// A `GET` over a unix socket with plain HTTP/1.1: status and body.
pub async fn unix_get(path: &Path, uri: &str) -> (u16, String) {
    let mut s = tokio::net::UnixStream::connect(path).await.unwrap();
    let req = format!("GET {uri} HTTP/1.1\r\nHost: appliance\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// `FakeBackend`, plus a host log per task at `dir/<container>.<task>.log`.
pub struct LoggingFake {
    pub inner: Arc<FakeBackend>,
    pub dir: PathBuf,
}

impl LoggingFake {
    pub fn path(dir: &Path, id: &str, task: &str) -> PathBuf {
        dir.join(format!("{id}.{task}.log"))
    }
}

#[async_trait::async_trait]
impl Backend for LoggingFake {
    async fn create(&self, c: &Container) -> Result<(), BackendError> {
        self.inner.create(c).await
    }
    async fn start(&self, c: &Container) -> Result<(), BackendError> {
        self.inner.start(c).await
    }
    async fn stop(&self, id: &str, signal: i32, timeout: Duration) -> Result<(), BackendError> {
        self.inner.stop(id, signal, timeout).await
    }
    async fn pause(&self, id: &str) -> Result<(), BackendError> {
        self.inner.pause(id).await
    }
    async fn resume(&self, id: &str) -> Result<(), BackendError> {
        self.inner.resume(id).await
    }
    async fn exec(&self, id: &str, task: &Task) -> Result<(), BackendError> {
        self.inner.exec(id, task).await
    }
    async fn stop_task(&self, id: &str, task: &str, timeout: Duration) -> Result<(), BackendError> {
        self.inner.stop_task(id, task, timeout).await
    }
    async fn signal(&self, id: &str, task: &str, signal: i32) -> Result<(), BackendError> {
        self.inner.signal(id, task, signal).await
    }
    async fn remove(&self, id: &str) -> Result<(), BackendError> {
        self.inner.remove(id).await
    }
    async fn attach(
        &self,
        id: &str,
        task: &str,
        stdin: bool,
        output: bool,
    ) -> Result<AttachStream, BackendError> {
        self.inner.attach(id, task, stdin, output).await
    }
    async fn archive_get(
        &self,
        c: &Container,
        path: &str,
    ) -> Result<crate::backend::ArchiveRead, BackendError> {
        self.inner.archive_get(c, path).await
    }
    async fn archive_put(
        &self,
        c: &Container,
        path: &str,
        tar: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    ) -> Result<crate::backend::ArchiveSummary, BackendError> {
        self.inner.archive_put(c, path, tar).await
    }
    fn log_path(&self, id: &str, task: &str) -> Option<PathBuf> {
        Some(LoggingFake::path(&self.dir, id, task))
    }
    fn subscribe(&self, events: Events) {
        self.inner.subscribe(events)
    }
}
