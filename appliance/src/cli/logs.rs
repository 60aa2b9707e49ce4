//! `appliance logs`: a task's output as the host stored it, optionally
//! followed, printed as it arrives.
//!
//! Owns the flags and turning a relative `--since` (`10m`) into a time the
//! server takes (unix seconds); the server does the rest, and `follow`
//! prints it, stdout and stderr apart (as `docker logs` does).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

use super::client::Client;
use super::follow::{LogFollow, LogQuery};
use super::reconnect::Reconnect;

#[derive(Args)]
pub struct LogsArgs {
    /// Keep printing new output until the task has exited (riding out a
    /// restart of the appliance: see `follow`).
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines (or `all`).
    #[arg(short = 'n', long)]
    tail: Option<String>,
    /// Only output since a time: unix seconds, RFC 3339, or a duration ago
    /// (`90s`, `10m`, `1h30m`).
    #[arg(long)]
    since: Option<String>,
    /// Prefix each line with its arrival time.
    #[arg(short, long)]
    timestamps: bool,
    /// The task (default: the primary one).
    #[arg(long)]
    task: Option<String>,
    /// Container id, id prefix or name.
    container: String,
}

/// A Go-style duration (`1h30m`, `90s`, `250ms`), as `docker logs --since`
/// takes.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let n = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..u] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[u..];
        total += Duration::try_from_secs_f64(value * unit).ok()?;
    }
    Some(total)
}

/// `--since` as the server takes it: durations become unix seconds that
/// long ago; anything else goes as given (the server checks it).
pub fn since_param(s: &str, now: SystemTime) -> String {
    match parse_duration(s) {
        Some(d) => {
            let t = now
                .checked_sub(d)
                .unwrap_or(UNIX_EPOCH)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            format!("{}.{:03}", t.as_secs(), t.subsec_millis())
        }
        None => s.to_string(),
    }
}

/// What to read, as the flags say (a relative `--since` made absolute).
pub fn log_query(args: &LogsArgs, now: SystemTime) -> LogQuery {
    LogQuery {
        container: args.container.clone(),
        task: args.task.clone(),
        tail: args.tail.clone(),
        since: args.since.as_deref().map(|s| since_param(s, now)),
        timestamps: args.timestamps,
    }
}

/// Prints the log: the task's stdout on ours, its stderr on ours (a task
/// with a terminal has only stdout). `--tail` counts the lines of each
/// stream apart. With `-f`, a restart of the appliance is ridden out
/// (`follow`, `reconnect`).
pub async fn logs(client: &Client, args: LogsArgs) -> anyhow::Result<u8> {
    let query = log_query(&args, SystemTime::now());
    let mut log = LogFollow::open(client, &query, true, args.follow).await?;
    log.print_all(client, &Reconnect::default()).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        for bad in ["", "10", "1700000000", "2023-11-14T22:13:20Z", "5d", "m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn since_is_made_absolute() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(since_param("10m", now), "1699999400.000");
        assert_eq!(since_param("1700000000", now), "1700000000");
        assert_eq!(
            since_param("2023-11-14T22:13:20Z", now),
            "2023-11-14T22:13:20Z"
        );
    }

    #[test]
    fn query_carries_the_flags() {
        let args = LogsArgs {
            follow: true,
            tail: Some("5".into()),
            since: Some("1m".into()),
            timestamps: true,
            task: None,
            container: "web".into(),
        };
        let now = UNIX_EPOCH + Duration::from_secs(120);
        let q = log_query(&args, now);
        assert_eq!(q.container, "web");
        assert_eq!(q.tail.as_deref(), Some("5"));
        assert_eq!(q.since.as_deref(), Some("60.000"));
        assert!(q.timestamps && q.task.is_none());
    }
}
