//! Following a started task's host log (`/interaction/…/logs?follow=true`)
//! to the terminal without losing or repeating a byte: stdout and stderr
//! as two streams, the exit code from `wait`, and a catch-up read should a
//! followed log not end after the task did. Used by `attach::run_task` when
//! the server cannot attach before the start.

use std::io::Write;
use std::time::Duration;

use super::attach::wait;
use super::client::{BodyStream, Client, ClientError, encode, with_query};

/// How long a followed log may take to end by itself once its task has
/// exited, before the rest is fetched in one go (the server ends it a few
/// polls after the exit).
pub const FOLLOW_GRACE: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 5 });
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
}

pub fn write_to(target: Target, data: &[u8]) -> std::io::Result<()> {
    match target {
        Target::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(data)?;
            o.flush()
        }
        Target::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_all(data)?;
            e.flush()
        }
    }
}

/// One stream of a task's log, printed to one of our outputs.
struct LogStream {
    /// The log request, without `follow`.
    path: String,
    target: Target,
    /// Bytes printed so far.
    printed: u64,
}

impl LogStream {
    fn new(container: &str, task: Option<&str>, which: Option<Target>) -> Self {
        let flag = |t: Target| match which {
            Some(w) if w != t => "false".to_string(),
            _ => String::new(),
        };
        let path = with_query(
            &format!("/interaction/containers/{}/logs", encode(container)),
            &[
                ("task", task.unwrap_or_default().to_string()),
                ("stdout", flag(Target::Stdout)),
                ("stderr", flag(Target::Stderr)),
            ],
        );
        Self {
            path,
            target: which.unwrap_or(Target::Stdout),
            printed: 0,
        }
    }

    fn follow_path(&self) -> String {
        let sep = if self.path.contains('?') { '&' } else { '?' };
        format!("{}{sep}follow=true", self.path)
    }

    /// Prints a followed body to its end.
    async fn pump(&mut self, mut body: BodyStream) -> Result<(), ClientError> {
        while let Some(chunk) = body.chunk().await? {
            write_to(self.target, &chunk).map_err(ClientError::Output)?;
            self.printed += chunk.len() as u64;
        }
        Ok(())
    }

    /// Prints what the log holds beyond what was printed.
    async fn catch_up(&mut self, client: &Client) -> Result<(), ClientError> {
        let (target, printed) = (self.target, &mut self.printed);
        let mut seen = 0u64;
        client
            .get_stream(&self.path, |b| {
                let len = b.len() as u64;
                let skip = printed.saturating_sub(seen).min(len);
                seen += len;
                let rest = &b[usize::try_from(skip).unwrap_or(b.len())..];
                if !rest.is_empty() {
                    write_to(target, rest)?;
                    *printed += rest.len() as u64;
                }
                Ok(())
            })
            .await
    }
}

/// A started task's log, followed: its streams with their open responses.
pub struct LogFollow {
    streams: Vec<LogStream>,
    bodies: Vec<BodyStream>,
}

impl LogFollow {
    /// Opens the followed log requests: a server that keeps no log for the
    /// task answers 404 here, before anything is printed.
    pub async fn open(
        client: &Client,
        container: &str,
        task: Option<&str>,
        tty: bool,
    ) -> Result<Self, ClientError> {
        // A terminal merges the streams in the guest already.
        let streams = if tty {
            vec![LogStream::new(container, task, None)]
        } else {
            vec![
                LogStream::new(container, task, Some(Target::Stdout)),
                LogStream::new(container, task, Some(Target::Stderr)),
            ]
        };
        let mut bodies = Vec::new();
        for s in &streams {
            bodies.push(client.open_stream(&s.follow_path()).await?);
        }
        Ok(Self { streams, bodies })
    }

    /// Prints the log as it grows until the task has exited and all of its
    /// output is out; the exit code.
    pub async fn print_until_exit(
        &mut self,
        client: &Client,
        container: &str,
        task: Option<&str>,
    ) -> anyhow::Result<i32> {
        let (code, ended) = {
            let follow = futures::future::try_join_all(
                self.streams
                    .iter_mut()
                    .zip(std::mem::take(&mut self.bodies))
                    .map(|(s, body)| Box::pin(s.pump(body))),
            );
            let mut follow = std::pin::pin!(follow);
            let mut exit = std::pin::pin!(wait(client, container, task));
            tokio::select! {
                r = &mut follow => {
                    r?;
                    (exit.await?, true)
                }
                code = &mut exit => {
                    let code = code?;
                    match tokio::time::timeout(FOLLOW_GRACE, &mut follow).await {
                        Ok(r) => { r?; (code, true) }
                        Err(_) => (code, false),
                    }
                }
            }
        };
        if !ended {
            tracing::debug!("log follow did not end after the exit: catching up");
            for s in &mut self.streams {
                s.catch_up(client).await?;
            }
        }
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::client::canned::{response, setup};

    fn chunked(parts: &[&str]) -> Vec<Vec<u8>> {
        let mut v = vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()];
        for p in parts {
            v.push(format!("{:x}\r\n{p}\r\n", p.len()).into_bytes());
        }
        v
    }

    /// Stdout's follow never ends (a server that misses the exit), so the
    /// rest comes from an unfollowed read, without repeating a byte.
    #[tokio::test]
    async fn followed_logs_catch_up_after_the_exit() {
        let mut stdout_follow = chunked(&["out1\n"]);
        stdout_follow.push(Vec::new()); // held open
        let mut stderr_follow = chunked(&["err\n"]);
        stderr_follow.push(b"0\r\n\r\n".to_vec());
        let (_dir, client, mut reqs) = setup(vec![
            stdout_follow,
            stderr_follow,
            vec![response("200 OK", r#"{"exit_code":5}"#)],
            vec![response("200 OK", "out1\nout2\n")],
            vec![response("200 OK", "err\n")],
        ]);
        let mut logs = LogFollow::open(&client, "c1", None, false)
            .await
            .expect("open");
        let code = logs
            .print_until_exit(&client, "c1", None)
            .await
            .expect("code");
        assert_eq!(code, 5);
        let printed: Vec<u64> = logs.streams.iter().map(|s| s.printed).collect();
        assert_eq!(printed, [10, 4]);
        let mut lines = Vec::new();
        while let Ok(r) = reqs.try_recv() {
            lines.push(r.lines().next().unwrap_or_default().to_string());
        }
        assert_eq!(
            lines,
            [
                "GET /interaction/containers/c1/logs?stderr=false&follow=true HTTP/1.1",
                "GET /interaction/containers/c1/logs?stdout=false&follow=true HTTP/1.1",
                "POST /exec/containers/c1/wait HTTP/1.1",
                "GET /interaction/containers/c1/logs?stderr=false HTTP/1.1",
                "GET /interaction/containers/c1/logs?stdout=false HTTP/1.1",
            ]
        );
    }

    #[tokio::test]
    async fn a_log_that_ends_needs_no_catch_up() {
        let mut follow = chunked(&["a", "b\n"]);
        follow.push(b"0\r\n\r\n".to_vec());
        let (_dir, client, _reqs) =
            setup(vec![follow, vec![response("200 OK", r#"{"exit_code":0}"#)]]);
        let mut logs = LogFollow::open(&client, "c1", Some("t1"), true)
            .await
            .expect("open");
        let code = logs
            .print_until_exit(&client, "c1", Some("t1"))
            .await
            .expect("code");
        assert_eq!((code, logs.streams[0].printed), (0, 3));
    }
}
