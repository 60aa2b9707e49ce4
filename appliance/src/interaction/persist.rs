//! Taking a session's output from its tether into the host log, and
//! acknowledging only what is on disk.
//!
//! Owns the attach-append-sync-ack loop. Resumes from the log's own ends,
//! so a restarted appliance picks up exactly where the stored bytes end:
//! nothing the tether kept is lost, nothing stored is stored twice. The exit
//! status is acknowledged too, once it is stored beside the log
//! (`logs::store_exit`): until then the tether keeps it (and its VM).

use std::time::{Duration, Instant, SystemTime};

use super::logs::{self, LogError, LogWriter, Stream};
use crate::tether::{AttachEvent, Client, ClientError};

/// Acknowledge at least this often while output flows...
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// ...or after this many unsynced bytes.
const SYNC_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("Session {session}")]
    Tether {
        session: String,
        #[source]
        source: ClientError,
    },
    #[error("Session {session}")]
    Log {
        session: String,
        #[source]
        source: LogError,
    },
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Follows `session` until its output ends, storing it in `log`. Returns
/// the exit code the tether reported.
pub async fn follow(
    client: &Client,
    session: &str,
    log: &mut LogWriter,
) -> Result<Option<i32>, PersistError> {
    let tether = |source| PersistError::Tether {
        session: session.to_string(),
        source,
    };
    let logerr = |source| PersistError::Log {
        session: session.to_string(),
        source,
    };
    let from = log.ends();
    let mut attach = client
        .attach(session, (from.stdout, from.stderr), false)
        .await
        .map_err(tether)?
        .manual_ack();
    let mut synced = from.stdout + from.stderr;
    let mut last_sync = Instant::now();
    let mut exit = None;
    let mut exit_stored = false;
    loop {
        // Wake up at least every SYNC_INTERVAL so that output that stops
        // flowing is still made durable and acknowledged promptly.
        let ev = match tokio::time::timeout(SYNC_INTERVAL, attach.next()).await {
            Ok(r) => Some(r.map_err(tether)?),
            Err(_idle) => None,
        };
        let ended = matches!(ev, Some(None));
        match ev.flatten() {
            Some(AttachEvent::Stdout(b)) => log
                .append(Stream::Stdout, now_nanos(), &b)
                .map_err(logerr)?,
            Some(AttachEvent::Stderr(b)) => log
                .append(Stream::Stderr, now_nanos(), &b)
                .map_err(logerr)?,
            Some(AttachEvent::Exit(c)) => exit = Some(c),
            None => {}
        }
        let ends = log.ends();
        let pending = ends.stdout + ends.stderr - synced;
        let due = ended
            || exit.is_some()
            || pending >= SYNC_BYTES
            || last_sync.elapsed() >= SYNC_INTERVAL;
        if pending > 0 && due {
            // fdatasync off the async runtime: a slow disk must not stall
            // every other request.
            let syncer = log.syncer().map_err(logerr)?;
            let durable = off_runtime(move || syncer.sync()).await.map_err(logerr)?;
            client
                .ack(session, durable.stdout, durable.stderr)
                .await
                .map_err(tether)?;
            synced = durable.stdout + durable.stderr;
            last_sync = Instant::now();
        }
        if let Some(code) = exit.filter(|_| !exit_stored) {
            let path = log.path().to_path_buf();
            off_runtime(move || logs::store_exit(&path, code))
                .await
                .map_err(logerr)?;
            let ends = log.ends();
            client
                .ack_exit(session, ends.stdout, ends.stderr)
                .await
                .map_err(tether)?;
            exit_stored = true;
        }
        if ended {
            return Ok(exit);
        }
    }
}

/// Runs blocking log work (fdatasync, the exit record) off the async
/// runtime.
async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Io {
            path: Default::default(),
            source: std::io::Error::other(e),
        })?
}
