//! Printing a task's host log (`/interaction/…/logs`) without losing or
//! repeating a byte: stdout and stderr are two requests (`stdout=false`,
//! `stderr=false`; one body carries no stream identity), each printed to
//! its own output, as `docker logs` does; a task with a terminal has one
//! stream (its terminal merged them in the guest). For a started task
//! (`attach::run_task`), the exit code comes from `wait`, and a followed log
//! that does not end after the task did is caught up by an unfollowed read.
//! Used by `logs` and `attach::run_task`.
//!
//! When the appliance goes away (killed, restarted: the VMs and their logs
//! outlive it), each request reconnects (`reconnect`) and resumes. The logs
//! API takes no byte offset, only `since` (arrival time) and `tail`
//! (lines), so:
//!
//! - without `tail`, a request returns the same bytes from the start every
//!   time (a log only grows): the resumed request skips the bytes already
//!   printed. Exact: the output is whole, in order, without repeats.
//! - with `tail`, the start was a line the client cannot name again: the
//!   resumed request asks for what arrived `since` the last chunk came.
//!   Nothing repeats, but output stored in the instant before the appliance
//!   died and not yet sent is missed.
//!
//! Owns the log requests' paths and the bookkeeping of what was printed;
//! the transport is `client`, the retry policy `reconnect`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::attach::wait;
use super::client::{BodyStream, Client, ClientError, encode, with_query};
use super::output::{Target, write_to};
use super::reconnect::{Backoff, Reconnect, gave_up, is_lost};

/// How long a followed log may take to end by itself once its task has
/// exited, before the rest is fetched in one go (the server ends it a few
/// polls after the exit).
pub const FOLLOW_GRACE: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 5 });

/// What to read of a task's log: the flags of `logs` (`run` sets none).
#[derive(Clone, Debug, Default)]
pub struct LogQuery {
    pub container: String,
    /// The task (default: the primary one).
    pub task: Option<String>,
    /// Only the last N lines (`None` or `all`: everything).
    pub tail: Option<String>,
    /// Only output since this time, as the server takes it (unix seconds
    /// or RFC 3339).
    pub since: Option<String>,
    pub timestamps: bool,
}

impl LogQuery {
    fn has_tail(&self) -> bool {
        self.tail
            .as_deref()
            .map(str::trim)
            .is_some_and(|t| !t.is_empty() && t != "all")
    }
}

/// Now, in unix nanoseconds (the log's time).
fn now_ns() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Unix nanoseconds as the server's `since` takes them.
fn since_ns(t: i64) -> String {
    format!(
        "{}.{:09}",
        t.div_euclid(1_000_000_000),
        t.rem_euclid(1_000_000_000)
    )
}

/// One stream of a task's log (or both, merged), printed to one output.
struct LogStream {
    query: LogQuery,
    /// `None`: both streams, in one request, to stdout.
    which: Option<Target>,
    /// Bytes printed so far: where a resumed request without `tail` starts.
    printed: u64,
    /// When the last chunk (or the response) came, in unix ns: where a
    /// resumed `tail` request starts.
    heard: i64,
    /// Whether the first request was made: any later one resumes.
    started: bool,
}

impl LogStream {
    fn new(query: &LogQuery, which: Option<Target>) -> Self {
        Self {
            query: query.clone(),
            which,
            printed: 0,
            heard: 0,
            started: false,
        }
    }

    fn target(&self) -> Target {
        self.which.unwrap_or(Target::Stdout)
    }

    /// The next request's path, and how many bytes of its body were printed
    /// already.
    fn request(&self, follow: bool) -> (String, u64) {
        let q = &self.query;
        let (tail, since, skip) = if !self.started {
            (q.tail.clone(), q.since.clone(), 0)
        } else if q.has_tail() {
            let given = q
                .since
                .as_deref()
                .and_then(|s| appliance::api::time::parse_time(s).ok());
            let from = given.map_or(self.heard, |g| g.max(self.heard));
            (None, Some(since_ns(from)), 0)
        } else {
            (None, q.since.clone(), self.printed)
        };
        let flag = |t: Target| match self.which {
            Some(w) if w != t => "false".to_string(),
            _ => String::new(),
        };
        let yes = |b: bool| if b { "true".to_string() } else { String::new() };
        let path = with_query(
            &format!("/interaction/containers/{}/logs", encode(&q.container)),
            &[
                ("task", q.task.clone().unwrap_or_default()),
                ("stdout", flag(Target::Stdout)),
                ("stderr", flag(Target::Stderr)),
                ("follow", yes(follow)),
                ("tail", tail.unwrap_or_default()),
                ("since", since.unwrap_or_default()),
                ("timestamps", yes(q.timestamps)),
            ],
        );
        (path, skip)
    }

    /// Sends the next request; its body and how much of it to skip.
    async fn open(
        &mut self,
        client: &Client,
        follow: bool,
    ) -> Result<(BodyStream, u64), ClientError> {
        let (path, skip) = self.request(follow);
        let body = client.open_stream(&path).await?;
        self.started = true;
        self.heard = now_ns();
        Ok((body, skip))
    }

    /// Prints a body to its end, leaving out its first `skip` bytes.
    async fn pump(&mut self, mut body: BodyStream, mut skip: u64) -> Result<(), ClientError> {
        while let Some(chunk) = body.chunk().await? {
            self.heard = now_ns();
            let len = chunk.len() as u64;
            let skipped = skip.min(len);
            skip -= skipped;
            let rest = &chunk[usize::try_from(skipped).unwrap_or(chunk.len())..];
            if !rest.is_empty() {
                write_to(self.target(), rest).map_err(ClientError::Output)?;
                self.printed += rest.len() as u64;
            }
        }
        if skip > 0 {
            tracing::warn!("the log is {skip} bytes shorter than what was printed of it");
        }
        Ok(())
    }

    /// Prints the log (from `first`, an opened response, if given) to the
    /// end of a response, reconnecting and resuming when the appliance
    /// goes away.
    async fn print(
        &mut self,
        client: &Client,
        reconnect: &Reconnect,
        first: Option<(BodyStream, u64)>,
        follow: bool,
    ) -> anyhow::Result<()> {
        let mut next = first;
        let mut outage: Option<Backoff> = None;
        loop {
            let (body, skip) = match next.take() {
                Some(b) => b,
                None => match self.open(client, follow).await {
                    Ok(b) => {
                        if outage.take().is_some() {
                            reconnect.recovered();
                        }
                        b
                    }
                    Err(e) if is_lost(&e) && self.started => {
                        let b = outage.get_or_insert_with(|| reconnect.outage());
                        if !b.pause().await {
                            return Err(gave_up(e));
                        }
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            match self.pump(body, skip).await {
                Ok(()) => return Ok(()),
                Err(e) if is_lost(&e) => {
                    tracing::debug!("log stream broke off: {e}");
                    let b = outage.get_or_insert_with(|| reconnect.outage());
                    if !b.pause().await {
                        return Err(gave_up(e));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A task's log, its streams with their open responses.
pub struct LogFollow {
    streams: Vec<LogStream>,
    bodies: Vec<(BodyStream, u64)>,
    follow: bool,
}

impl LogFollow {
    /// Sends the log requests (followed with `follow`): a server that keeps
    /// no log for the task, or has no such task, answers here, before
    /// anything is printed. With `split`, stdout and stderr go to ours
    /// apart; without (a task with a terminal), all goes to stdout.
    pub async fn open(
        client: &Client,
        query: &LogQuery,
        split: bool,
        follow: bool,
    ) -> Result<Self, ClientError> {
        let mut streams = if split {
            vec![
                LogStream::new(query, Some(Target::Stdout)),
                LogStream::new(query, Some(Target::Stderr)),
            ]
        } else {
            vec![LogStream::new(query, None)]
        };
        let mut bodies = Vec::new();
        for s in &mut streams {
            bodies.push(s.open(client, follow).await?);
        }
        Ok(Self {
            streams,
            bodies,
            follow,
        })
    }

    /// Prints every stream to the end of its response (a followed one ends
    /// once the task has exited and its log is quiet).
    pub async fn print_all(
        &mut self,
        client: &Client,
        reconnect: &Reconnect,
    ) -> anyhow::Result<()> {
        let follow = self.follow;
        futures::future::try_join_all(
            self.streams
                .iter_mut()
                .zip(std::mem::take(&mut self.bodies))
                .map(|(s, body)| Box::pin(s.print(client, reconnect, Some(body), follow))),
        )
        .await
        .map(drop)
    }

    /// Prints the (followed) log as it grows until the task has exited and
    /// all of its output is out; the exit code.
    pub async fn print_until_exit(
        &mut self,
        client: &Client,
        reconnect: &Reconnect,
        container: &str,
        task: Option<&str>,
    ) -> anyhow::Result<i32> {
        let (code, ended) = {
            let follow = self.print_all(client, reconnect);
            let mut follow = std::pin::pin!(follow);
            let mut exit = std::pin::pin!(reconnect.retry(|| wait(client, container, task)));
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
                s.print(client, reconnect, None, false).await?;
            }
        }
        Ok(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::canned::{response, setup};

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
        let query = LogQuery {
            container: "c1".into(),
            ..LogQuery::default()
        };
        let mut logs = LogFollow::open(&client, &query, true, true)
            .await
            .expect("open");
        let code = logs
            .print_until_exit(&client, &Reconnect::default(), "c1", None)
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
        let query = LogQuery {
            container: "c1".into(),
            task: Some("t1".into()),
            ..LogQuery::default()
        };
        let mut logs = LogFollow::open(&client, &query, false, true)
            .await
            .expect("open");
        let code = logs
            .print_until_exit(&client, &Reconnect::default(), "c1", Some("t1"))
            .await
            .expect("code");
        assert_eq!((code, logs.streams[0].printed), (0, 3));
    }

    /// The appliance dies in the middle of a followed log (the response
    /// breaks off) and comes back: the same request again, and the bytes
    /// already printed are left out.
    #[tokio::test]
    async fn a_broken_follow_resumes_after_what_was_printed() {
        // Broken off: no last chunk, and the connection closes.
        let broken = chunked(&["out1\n"]);
        let mut whole = chunked(&["out1\nou", "t2\n"]);
        whole.push(b"0\r\n\r\n".to_vec());
        let (_dir, client, mut reqs) = setup(vec![broken, whole]);
        let query = LogQuery {
            container: "c1".into(),
            ..LogQuery::default()
        };
        let mut logs = LogFollow::open(&client, &query, false, true)
            .await
            .expect("open");
        logs.print_all(&client, &Reconnect::default())
            .await
            .expect("resumed");
        assert_eq!(logs.streams[0].printed, 10);
        let mut lines = Vec::new();
        while let Ok(r) = reqs.try_recv() {
            lines.push(r.lines().next().unwrap_or_default().to_string());
        }
        assert_eq!(
            lines,
            ["GET /interaction/containers/c1/logs?follow=true HTTP/1.1"; 2]
        );
    }

    /// A tail cannot be asked for again: a resumed one asks for what came
    /// since the last chunk; the user's own `since` still holds if later.
    #[test]
    fn a_resumed_tail_asks_by_time() {
        let query = LogQuery {
            container: "web".into(),
            tail: Some("5".into()),
            since: Some("100".into()),
            timestamps: true,
            ..LogQuery::default()
        };
        let mut s = LogStream::new(&query, Some(Target::Stderr));
        assert_eq!(
            s.request(true),
            (
                "/interaction/containers/web/logs?stdout=false&follow=true&tail=5&since=100&timestamps=true"
                    .to_string(),
                0
            )
        );
        s.started = true;
        s.printed = 42;
        s.heard = 1_700_000_000_000_000_123;
        assert_eq!(
            s.request(true).0,
            "/interaction/containers/web/logs?stdout=false&follow=true&since=1700000000.000000123&timestamps=true"
        );
        s.query.since = Some("1800000000".into());
        assert!(s.request(true).0.contains("since=1800000000.000000000"));
        // Without a tail: the same request, skipping what was printed.
        s.query.tail = None;
        s.query.since = None;
        assert_eq!(
            s.request(false),
            (
                "/interaction/containers/web/logs?stdout=false&timestamps=true".to_string(),
                42
            )
        );
    }
}
