//! Request multiplexing on the RPC channel: each call gets an id and waits
//! for the response with that id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use proto::framing::{read_message, write_message};
use proto::v1::{Request, Response, request::Body as Req, response::Body as Resp};
use russh::Channel;
use russh::client::Msg;
use tokio::sync::{mpsc, oneshot};

use super::ClientError;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// A cheap-to-clone handle for making calls.
#[derive(Clone)]
pub struct Rpc {
    next: Arc<AtomicU64>,
    pending: Pending,
    tx: mpsc::Sender<Request>,
}

impl Rpc {
    pub(super) async fn start(channel: Channel<Msg>) -> Result<Self, ClientError> {
        let (mut rd, mut wr) = tokio::io::split(channel.into_stream());
        let pending: Pending = Arc::default();
        let (tx, mut rx) = mpsc::channel::<Request>(64);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                if write_message(&mut wr, &req).await.is_err() {
                    break;
                }
            }
        });
        let p = pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = read_message::<Response, _>(&mut rd).await {
                let waiter = p.lock().unwrap_or_else(|e| e.into_inner()).remove(&resp.id);
                if let Some(w) = waiter {
                    let _ = w.send(resp);
                }
            }
            // Dropping every sender fails the outstanding calls.
            p.lock().unwrap_or_else(|e| e.into_inner()).clear();
        });
        Ok(Self {
            next: Arc::new(AtomicU64::new(1)),
            pending,
            tx,
        })
    }

    /// Sends one request and waits for its response; an error response
    /// becomes `ClientError::Remote`.
    pub async fn call(&self, body: Req) -> Result<Resp, ClientError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        self.tx
            .send(Request {
                id,
                body: Some(body),
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        let resp = rx.await.map_err(|_| ClientError::Closed)?;
        match resp.body {
            Some(Resp::Error(e)) => Err(ClientError::Remote {
                code: e.code,
                message: e.message,
                element: e.element,
            }),
            Some(b) => Ok(b),
            None => Err(ClientError::Unexpected("empty response")),
        }
    }
}
