//! QMP, QEMU's JSON control protocol, on a VM's control socket.
//!
//! Owns the capabilities handshake and the few commands the local backend
//! needs: pause (`stop`), resume (`cont`) and `query-status`. Asynchronous
//! events on the socket are skipped. Must not decide when to pause: that is
//! the execution component's call.

use std::path::Path;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("Connecting to QMP socket {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("QMP I/O")]
    Io(#[from] std::io::Error),
    #[error("QMP sent invalid JSON")]
    Json(#[from] serde_json::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP greeting missing: got {0}")]
    Greeting(String),
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// The run state QEMU reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    /// e.g. "running", "paused", "shutdown".
    pub status: String,
}

pub struct Qmp {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
}

impl Qmp {
    /// Connects and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Self, QmpError> {
        let s = UnixStream::connect(path)
            .await
            .map_err(|e| QmpError::Connect(path.display().to_string(), e))?;
        let (rd, wr) = s.into_split();
        let mut q = Self {
            rd: BufReader::new(rd),
            wr,
        };
        let greeting = q.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(QmpError::Greeting(greeting.to_string()));
        }
        q.execute("qmp_capabilities", None).await?;
        Ok(q)
    }

    async fn read_message(&mut self) -> Result<Value, QmpError> {
        let mut line = String::new();
        if self.rd.read_line(&mut line).await? == 0 {
            return Err(QmpError::Closed);
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut text = msg.to_string();
        text.push('\n');
        self.wr.write_all(text.as_bytes()).await?;
        loop {
            let reply = self.read_message().await?;
            if reply.get("event").is_some() {
                continue;
            }
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: s("class"),
                    desc: s("desc"),
                });
            }
        }
    }

    /// Pauses the VM's CPUs.
    pub async fn pause(&mut self) -> Result<(), QmpError> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resumes the VM's CPUs.
    pub async fn resume(&mut self) -> Result<(), QmpError> {
        self.execute("cont", None).await.map(drop)
    }

    pub async fn status(&mut self) -> Result<Status, QmpError> {
        let r = self.execute("query-status", None).await?;
        Ok(Status {
            running: r.get("running").and_then(Value::as_bool).unwrap_or(false),
            status: r
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A scripted QMP server: greets, then answers each line with the next
    /// reply, sending an event first to check that events are skipped.
    async fn serve(listener: UnixListener, replies: Vec<&'static str>) -> Vec<String> {
        let (s, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        for r in replies {
            let mut line = String::new();
            rd.read_line(&mut line).await.unwrap();
            got.push(line.trim().to_string());
            wr.write_all(b"{\"event\": \"RESUME\", \"timestamp\": {}}\n")
                .await
                .unwrap();
            wr.write_all(r.as_bytes()).await.unwrap();
            wr.write_all(b"\n").await.unwrap();
        }
        got
    }

    #[tokio::test]
    async fn handshake_commands_events_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve(
            listener,
            vec![
                r#"{"return": {}}"#,
                r#"{"return": {}}"#,
                r#"{"return": {"running": false, "status": "paused"}}"#,
                r#"{"error": {"class": "GenericError", "desc": "nope"}}"#,
            ],
        ));
        let mut q = Qmp::connect(&path).await.unwrap();
        q.pause().await.unwrap();
        assert_eq!(
            q.status().await.unwrap(),
            Status {
                running: false,
                status: "paused".into()
            }
        );
        let err = q.resume().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "QMP command cont failed: GenericError: nope"
        );
        let sent = server.await.unwrap();
        assert_eq!(
            sent,
            [
                r#"{"execute":"qmp_capabilities"}"#,
                r#"{"execute":"stop"}"#,
                r#"{"execute":"query-status"}"#,
                r#"{"execute":"cont"}"#
            ]
        );
    }
}
