//! The `events` component over REST: the stored event log replayed from an
//! id, then live events, filtered with the shared filter language, as
//! Server-Sent Events or newline-delimited JSON.
//!
//! Owns `/events` and the ordering guarantee of a stream: ids strictly
//! increasing, none skipped that the store has. Must not record events
//! (`portlayer::events` does).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody};
use super::extract::QueryArgs;
use crate::portlayer::events::{EVENT_FIELDS, EventView};
use crate::portlayer::exec::PortError;
use crate::portlayer::filter::Filter;
use crate::store::{EventRecord, Store};

/// How often a stream also reads the store: events other appliance
/// processes sharing it recorded are not broadcast here.
const STORE_POLL: Duration = Duration::from_secs(1);
/// Stored events are read this many at a time.
const REPLAY_PAGE: usize = 500;

pub fn routes() -> Router<ApiState> {
    Router::new().route("/events", get(events))
}

/// Something the port layer did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct Event {
    /// Strictly increasing in commit order: resume with `since=<id>`.
    pub id: i64,
    /// Unix ms.
    pub time: i64,
    /// The component: `exec`, `storage`, …
    pub component: String,
    /// What happened: `create`, `started`, `exit`, `task-exit`, `remove`, …
    pub kind: String,
    /// The element's id.
    pub element: String,
    pub labels: BTreeMap<String, String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<EventRecord> for Event {
    fn from(e: EventRecord) -> Self {
        Event {
            id: e.id,
            time: e.time,
            component: e.component,
            kind: e.kind,
            element: e.element,
            labels: e.labels,
            detail: e.detail,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    /// Server-Sent Events (`text/event-stream`).
    #[default]
    Sse,
    /// One JSON `Event` per line (`application/x-ndjson`).
    Json,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Filterspec over `id`, `component`, `kind`, `element`, `time` and
    /// `label.<key>`, e.g. `kind=create,label.app=web`. Events of elements
    /// labelled `system.hidden` are left out unless the filter mentions
    /// that label.
    pub filter: String,
    /// Replay stored events with an id greater than this one first (0: the
    /// whole log). Without it (nor a `Last-Event-ID` header), only events
    /// from now on.
    pub since: Option<i64>,
    pub format: EventFormat,
}

/// Feeds `tx` the events after `last` that match, in id order: stored
/// ones first, then live ones. A live event that does not directly follow
/// the last one sent (a lagging receiver, or events broadcast out of
/// order) makes it catch up from the store instead.
async fn produce(
    store: std::sync::Arc<Store>,
    mut live: broadcast::Receiver<EventRecord>,
    filter: Filter,
    mut last: i64,
    tx: mpsc::Sender<EventRecord>,
) {
    let mut catch_up = true;
    loop {
        if catch_up {
            catch_up = false;
            loop {
                let stored = match store
                    .call(move |st| st.events_after(last, REPLAY_PAGE))
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("event stream: reading the store: {e}");
                        return;
                    }
                };
                let full = stored.len() == REPLAY_PAGE;
                for ev in stored {
                    last = ev.id;
                    if filter.matches(&EventView(&ev)) && tx.send(ev).await.is_err() {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
        }
        tokio::select! {
            r = live.recv() => match r {
                Ok(ev) if ev.id <= last => {}
                Ok(ev) if ev.id == last + 1 => {
                    last = ev.id;
                    if filter.matches(&EventView(&ev)) && tx.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => catch_up = true,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tokio::time::sleep(STORE_POLL) => catch_up = true,
            _ = tx.closed() => return,
        }
    }
}

/// Streams events: stored ones after `since`, then live ones, matching the
/// filter.
///
/// As Server-Sent Events by default: each event's `id:` is the event id and
/// its `data:` the `Event` as JSON; a reconnecting client's `Last-Event-ID`
/// header resumes after that id. With `format=json`, one `Event` per line.
/// An invalid filter is refused (400) before the stream starts.
#[utoipa::path(
    get, path = "/events", tag = "events", operation_id = "events_stream",
    params(EventsQuery, ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id (when `since` is absent)")),
    responses(
        (status = 200, description = "The event stream", content(
            (String = "text/event-stream"),
            (Event = "application/x-ndjson"),
        )),
        (status = 400, description = "Invalid filter (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn events(
    State(s): State<ApiState>,
    headers: HeaderMap,
    QueryArgs(q): QueryArgs<EventsQuery>,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(&q.filter)
        .and_then(|f| {
            f.check_fields(EVENT_FIELDS)?;
            Ok(f)
        })
        .map_err(PortError::from)?
        .with_default_visibility();
    let since = match q.since {
        Some(id) => Some(id),
        None => headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    ApiError::invalid("Last-Event-ID", format!("{v:?} is not an event id"))
                })
            })
            .transpose()?,
    };
    // Subscribe before reading where "now" is, so nothing falls between.
    let live = s.pl.events.subscribe();
    let last = match since {
        Some(id) => id.max(0),
        None => s.pl.store.call(|st| st.last_event_id()).await?,
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(produce(s.pl.store.clone(), live, filter, last, tx));
    let records = ReceiverStream::new(rx).map(Event::from);
    Ok(match q.format {
        EventFormat::Sse => Sse::new(records.map(|ev| {
            let data = serde_json::to_string(&ev).unwrap_or_default();
            Ok::<_, Infallible>(SseEvent::default().id(ev.id.to_string()).data(data))
        }))
        .keep_alive(KeepAlive::default())
        .into_response(),
        EventFormat::Json => {
            let lines = records.map(|ev| {
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                Ok::<_, Infallible>(Bytes::from(line))
            });
            (
                [(CONTENT_TYPE, "application/x-ndjson")],
                Body::from_stream(lines),
            )
                .into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, BodyDataStream};
    use axum::http::{Request, StatusCode};
    use futures::StreamExt;
    use serde_json::Value;

    use super::super::testutil::*;

    /// The next SSE event with data: its id and data as JSON.
    async fn next_sse(body: &mut BodyDataStream, buf: &mut String) -> (i64, Value) {
        loop {
            if let Some(pos) = buf.find("\n\n") {
                let block: String = buf.drain(..pos + 2).collect();
                let mut id = None;
                let mut data = None;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str(v.trim()).unwrap());
                    }
                }
                if let (Some(id), Some(data)) = (id, data) {
                    return (id, data);
                }
                continue;
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("an event within 5 s")
                .expect("the stream goes on")
                .unwrap();
            buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn next_line(body: &mut BodyDataStream, buf: &mut Vec<u8>) -> Value {
        loop {
            if let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
                .await
                .expect("a line within 5 s")
                .expect("the stream goes on")
                .unwrap();
            buf.extend_from_slice(&chunk);
        }
    }

    #[tokio::test]
    async fn sse_delivers_live_events_matching_the_filter() {
        let h = Harness::new();
        let a = h.create("a").await;
        let resp = h
            .send(
                Request::get("/events?filter=kind%3Dcreate")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body().into_data_stream();
        // Not a create: filtered out. Then a create: delivered.
        h.set_state(&a, "running").await;
        let b = h.create("b").await;
        let mut buf = String::new();
        let (id, ev) = next_sse(&mut body, &mut buf).await;
        assert_eq!(ev["kind"], "create");
        assert_eq!(ev["component"], "exec");
        assert_eq!(ev["element"], b.as_str());
        assert_eq!(ev["detail"]["name"], "b");
        assert_eq!(ev["id"], id);
        // Nothing before the subscription was replayed.
        assert!(id > 1);
    }

    #[tokio::test]
    async fn replays_from_an_id_then_goes_live_as_json_lines() {
        let h = Harness::new();
        let a = h.create("a").await;
        h.set_state(&a, "running").await;
        let resp = h
            .send(
                Request::get("/events?format=json&since=0")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let mut body = resp.into_body().into_data_stream();
        let mut buf = Vec::new();
        let first = next_line(&mut body, &mut buf).await;
        assert_eq!(
            (first["id"].as_i64(), first["kind"].as_str()),
            (Some(1), Some("create"))
        );
        let second = next_line(&mut body, &mut buf).await;
        assert_eq!(second["id"], 2);
        assert_eq!(second["element"], a.as_str());
        let b = h.create("b").await;
        let third = next_line(&mut body, &mut buf).await;
        assert_eq!(
            (third["id"].as_i64(), third["element"].as_str()),
            (Some(3), Some(b.as_str()))
        );

        // An SSE client resuming with Last-Event-ID gets what follows it.
        let resp = h
            .send(
                Request::get("/events")
                    .header("last-event-id", "2")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        let mut body = resp.into_body().into_data_stream();
        let (id, _) = next_sse(&mut body, &mut String::new()).await;
        assert_eq!(id, 3);
    }

    #[tokio::test]
    async fn long_replays_are_complete_and_in_order() {
        let h = Harness::new();
        let labels = std::collections::BTreeMap::new();
        for i in 0..1100 {
            let kind = if i % 2 == 0 { "bulk" } else { "other" };
            h.pl.events
                .emit("exec", kind, "e", &labels, serde_json::json!({}))
                .unwrap();
        }
        let resp = h
            .send(
                Request::get("/events?format=json&since=0&filter=kind%3Dbulk")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        let mut body = resp.into_body().into_data_stream();
        let mut buf = Vec::new();
        for i in 0..550 {
            let ev = next_line(&mut body, &mut buf).await;
            assert_eq!(ev["id"], 1 + 2 * i);
            assert_eq!(ev["kind"], "bulk");
        }
    }

    #[tokio::test]
    async fn invalid_filter_is_refused_before_streaming() {
        let h = Harness::new();
        let (status, e) = h.call("GET", "/events?filter=colour%3Dred", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert_eq!(e["code"], "INVALID_ARGUMENT");
        assert_eq!(e["element"], "filter");
        let msg = e["message"].as_str().unwrap();
        assert!(msg.contains("colour") && msg.contains("component"), "{msg}");
        let (status, e) = h.call("GET", "/events?filter=kind%3D%22x", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        assert!(e["message"].as_str().unwrap().contains("quote"), "{e}");
    }
}
