//! `appliance events`: the port layer's event stream, one line per event
//! (`time kind element`, then the detail), until interrupted.
//!
//! Owns splitting the server's newline-delimited JSON into events (chunks
//! need not end on a line) and the line format.

use clap::Args;
use serde::Deserialize;

use super::client::{Client, with_query};
use super::output::{outln, printable};

#[derive(Args)]
pub struct EventsArgs {
    /// Filter, e.g. `kind=create` or `label.app=web` (repeatable: all
    /// must match).
    #[arg(short, long)]
    filter: Vec<String>,
    /// Replay the stored events after this event id first (0: all).
    #[arg(long)]
    since: Option<i64>,
    /// Print each event as the server's JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Deserialize, Debug, PartialEq)]
pub struct Event {
    #[serde(default)]
    pub id: i64,
    /// Unix ms.
    pub time: i64,
    #[serde(default)]
    pub component: String,
    pub kind: String,
    pub element: String,
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// `2024-05-01T12:00:00.123Z kind element (key=value, …)`.
pub fn format_event(e: &Event) -> String {
    let mut line = format!(
        "{} {} {}",
        format_ms(e.time),
        printable(&e.kind),
        printable(&e.element)
    );
    if let Some(map) = e.detail.as_object().filter(|m| !m.is_empty()) {
        let parts: Vec<String> = map
            .iter()
            .map(|(k, v)| match v {
                serde_json::Value::String(s) => format!("{}={}", printable(k), printable(s)),
                other => format!("{k}={other}"),
            })
            .collect();
        line.push_str(&format!(" ({})", parts.join(", ")));
    }
    line
}

/// RFC 3339 (UTC, milliseconds) for unix milliseconds.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = appliance::api::time::civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms.rem_euclid(1000)
    )
}

/// Cuts a byte stream into lines, whatever the chunking.
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// The complete lines `chunk` finishes (without their newline).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let text = String::from_utf8_lossy(&line[..i]).trim_end().to_string();
            if !text.is_empty() {
                out.push(text);
            }
        }
        out
    }
}

pub async fn events(client: &Client, args: EventsArgs) -> anyhow::Result<u8> {
    let path = with_query(
        "/events",
        &[
            ("filter", args.filter.join(",")),
            ("format", "json".into()),
            (
                "since",
                args.since.map(|s| s.to_string()).unwrap_or_default(),
            ),
        ],
    );
    let mut lines = Lines::default();
    client
        .get_stream(&path, |chunk| {
            for line in lines.push(chunk) {
                if args.json {
                    outln!("{line}")?;
                    continue;
                }
                match serde_json::from_str::<Event>(&line) {
                    Ok(e) => outln!("{}", format_event(&e))?,
                    Err(_) => outln!("{line}")?,
                }
            }
            Ok(())
        })
        .await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_survive_any_chunking() {
        let mut l = Lines::default();
        assert!(l.push(b"{\"a\":").is_empty());
        assert_eq!(l.push(b"1}\n{\"b\":2}\n{\"c\""), ["{\"a\":1}", "{\"b\":2}"]);
        assert_eq!(l.push(b":3}\r\n\n"), ["{\"c\":3}"]);
    }

    #[test]
    fn event_lines() {
        let e: Event = serde_json::from_str(
            r#"{"id":7,"time":1700000000123,"component":"exec","kind":"exit","element":"abc","labels":{},"detail":{"exit_code":3,"name":"web"}}"#,
        )
        .expect("event");
        assert_eq!(
            format_event(&e),
            "2023-11-14T22:13:20.123Z exit abc (exit_code=3, name=web)"
        );
        let e = Event {
            detail: serde_json::json!({}),
            ..e
        };
        assert_eq!(format_event(&e), "2023-11-14T22:13:20.123Z exit abc");
    }
}
