//! Riding out a restart of the appliance (`appliance serve` killed and
//! started again; the container VMs outlive it and are re-adopted). A
//! client that streams a task (`run`, `exec`, `start -a`, `logs -f`) and
//! loses its connection keeps trying for [`RECONNECT_FOR`], pausing a
//! little longer each time (up to [`MAX_PAUSE`]), says so once on stderr,
//! and resumes where it stopped (`follow` knows where that is).
//!
//! Owns which errors mean "the appliance is gone" as opposed to an answer
//! from it, the pauses and the overall limit. A first connection that
//! fails is not retried: there is no server to wait for.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use super::client::ClientError;
use super::output::errln;

/// How long a client keeps trying to reach an appliance it lost.
pub const RECONNECT_FOR: Duration = Duration::from_secs(if cfg!(test) { 1 } else { 5 * 60 });
/// The first pause between two tries; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(100);
pub const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Whether the error is the appliance going away (a broken or refused
/// connection), which is worth another try, rather than an answer.
pub fn is_lost(e: &ClientError) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match e {
        ClientError::Unreachable { error, .. } => {
            matches!(error.kind(), NotFound | ConnectionRefused)
        }
        ClientError::Http(_) => true,
        ClientError::WebSocket(w) => matches!(
            w,
            tungstenite::Error::Io(_)
                | tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(_)
        ),
        // A server still starting up, or a proxy in front of one.
        ClientError::Api(a) => matches!(a.status, 502..=504),
        ClientError::Decode { .. } | ClientError::Request { .. } | ClientError::Output(_) => false,
    }
}

/// [`is_lost`] for an error anywhere in a chain.
pub fn is_lost_any(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<ClientError>().is_some_and(is_lost))
}

/// One client's reconnections: the line on stderr is printed once per
/// outage, however many of its requests (two log streams, a wait, the
/// input attach) notice it.
#[derive(Debug, Default)]
pub struct Reconnect {
    announced: AtomicBool,
}

impl Reconnect {
    /// The pauses of one outage, which has just begun for this caller.
    pub fn outage(&self) -> Backoff {
        if !self.announced.swap(true, Ordering::SeqCst) {
            errln!(
                "appliance: lost the connection to the appliance; reconnecting (for up to {} s)",
                RECONNECT_FOR.as_secs()
            );
        }
        Backoff {
            until: Instant::now() + RECONNECT_FOR,
            pause: FIRST_PAUSE,
        }
    }

    /// The appliance answered again.
    pub fn recovered(&self) {
        self.announced.store(false, Ordering::SeqCst);
    }

    /// Runs `op` until it succeeds, fails with an answer, or the appliance
    /// has been gone for [`RECONNECT_FOR`].
    pub async fn retry<T, F, Fut>(&self, mut op: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<T>>,
    {
        let mut backoff: Option<Backoff> = None;
        loop {
            match op().await {
                Ok(v) => {
                    if backoff.is_some() {
                        self.recovered();
                    }
                    return Ok(v);
                }
                Err(e) if is_lost_any(&e) => {
                    let b = backoff.get_or_insert_with(|| self.outage());
                    if !b.pause().await {
                        return Err(gave_up(e));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The error of a client that stopped trying.
pub fn gave_up(e: impl Into<anyhow::Error>) -> anyhow::Error {
    e.into().context(format!(
        "The appliance could not be reached again within {} s",
        RECONNECT_FOR.as_secs()
    ))
}

/// The pauses between tries during one outage.
#[derive(Debug)]
pub struct Backoff {
    until: Instant,
    pause: Duration,
}

impl Backoff {
    /// Waits before the next try; `false` once the time is up.
    pub async fn pause(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.until {
            return false;
        }
        tokio::time::sleep(self.pause.min(self.until - now)).await;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ApiError;

    fn unreachable(kind: std::io::ErrorKind) -> ClientError {
        ClientError::Unreachable {
            path: "/x".into(),
            error: kind.into(),
        }
    }

    #[test]
    fn lost_is_a_missing_server_not_an_answer() {
        assert!(is_lost(&unreachable(std::io::ErrorKind::ConnectionRefused)));
        assert!(is_lost(&unreachable(std::io::ErrorKind::NotFound)));
        assert!(!is_lost(&unreachable(std::io::ErrorKind::PermissionDenied)));
        let api = |status| ClientError::Api(ApiError::from_body(status, b""));
        assert!(is_lost(&api(503)));
        assert!(!is_lost(&api(404)));
        assert!(!is_lost(&ClientError::Output(
            std::io::ErrorKind::BrokenPipe.into()
        )));
        let e = anyhow::Error::from(unreachable(std::io::ErrorKind::ConnectionRefused))
            .context("Waiting");
        assert!(is_lost_any(&e));
    }

    #[tokio::test]
    async fn retries_until_it_works_or_the_time_is_up() {
        let r = Reconnect::default();
        let mut tries = 0;
        let v = r
            .retry(|| {
                tries += 1;
                let n = tries;
                async move {
                    if n < 4 {
                        Err(unreachable(std::io::ErrorKind::ConnectionRefused).into())
                    } else {
                        Ok(n)
                    }
                }
            })
            .await
            .expect("reached again");
        assert_eq!(v, 4);
        assert!(!r.announced.load(Ordering::SeqCst));

        let start = Instant::now();
        let e = r
            .retry(|| async {
                Err::<(), _>(unreachable(std::io::ErrorKind::ConnectionRefused).into())
            })
            .await
            .expect_err("gave up");
        assert!(Instant::now() - start >= RECONNECT_FOR);
        assert!(e.to_string().contains("could not be reached again"), "{e}");

        // An answer is not retried.
        let mut tries = 0;
        let e = r
            .retry(|| {
                tries += 1;
                async { Err::<(), _>(ClientError::Api(ApiError::from_body(404, b"")).into()) }
            })
            .await
            .expect_err("404");
        assert_eq!(tries, 1);
        assert!(!is_lost_any(&e));
    }
}
