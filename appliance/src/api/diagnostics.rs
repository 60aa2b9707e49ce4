//! The `diagnostics` component over REST: operations in progress (and
//! requests to cancel them), errors queryable by time range, kind and
//! element, and statistics.
//!
//! Owns the routes under `/diagnostics`. Must not run or cancel operations
//! itself: cancelling only sets the flag the owning appliance polls.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiState;
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::{PathArgs, QueryArgs};
use super::time::parse_time;
use crate::store::{self, ErrorQuery, ErrorRecord};

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/diagnostics/operations", get(operations))
        .route(
            "/diagnostics/operations/{id}",
            get(operation).delete(cancel_operation),
        )
        .route("/diagnostics/errors", get(errors))
        .route("/diagnostics/stats", get(stats))
        .route("/diagnostics/logs", get(logs))
}

/// Which part of the appliance's own log to return.
#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// The last N lines (default 200).
    pub tail: Option<usize>,
    /// Only lines containing this text (e.g. an element id or an operation id).
    pub grep: Option<String>,
}

/// The appliance's own log (what `appliance serve` records with tracing),
/// as plain text.
#[utoipa::path(
    get, path = "/diagnostics/logs", tag = "diagnostics", operation_id = "diagnostics_logs",
    params(LogsQuery),
    responses(
        (status = 200, description = "Log lines", body = String, content_type = "text/plain"),
        (status = 404, description = "This appliance keeps no log file", body = ErrorBody)
    )
)]
pub async fn logs(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<LogsQuery>,
) -> Result<String, ApiError> {
    let Some(path) = &s.log_file else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "logs",
            "This appliance keeps no log file",
        ));
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| q.grep.as_deref().is_none_or(|g| l.contains(g)))
        .collect();
    let n = q.tail.unwrap_or(200);
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    Ok(out)
}

/// A long-running operation (a pull, a commit, …).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct Operation {
    pub id: String,
    /// `pull`, `commit`, `start`, …
    pub kind: String,
    /// The element it works on.
    pub element: String,
    /// Unix ms.
    pub started_at: i64,
    /// Unix ms; null while running.
    pub finished_at: Option<i64>,
    /// The appliance instance running it.
    pub owner: String,
    /// `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    pub detail: String,
    /// Cancellation was asked for; the owner stops at its next check.
    pub cancel_requested: bool,
}

impl From<store::Operation> for Operation {
    fn from(o: store::Operation) -> Self {
        Operation {
            id: o.id,
            kind: o.kind,
            element: o.element,
            started_at: o.started_at,
            finished_at: o.finished_at,
            owner: o.owner,
            state: o.state.as_str().into(),
            detail: o.detail,
            cancel_requested: o.cancel_requested,
        }
    }
}

/// An error the port layer recorded, mapped to the element it concerns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ErrorEntry {
    pub id: i64,
    /// Unix ms.
    pub time: i64,
    /// `commit`, `backend`, `vm-crash`, …
    pub kind: String,
    pub element: String,
    pub code: String,
    pub message: String,
}

impl From<ErrorRecord> for ErrorEntry {
    fn from(e: ErrorRecord) -> Self {
        ErrorEntry {
            id: e.id,
            time: e.time,
            kind: e.kind,
            element: e.element,
            code: e.code,
            message: e.message,
        }
    }
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OperationsQuery {
    /// Only operations still running.
    pub running: bool,
}

#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ErrorsQuery {
    /// From this time on (inclusive): unix seconds (fractions allowed) or
    /// RFC 3339.
    pub since: Option<String>,
    /// Up to this time (inclusive), in the same forms.
    pub until: Option<String>,
    /// Only errors of this kind (`commit`, `backend`, `vm-crash`, …).
    pub kind: Option<String>,
    /// Only errors about this element id.
    pub element: Option<String>,
    /// At most this many, newest first; 0 or absent: all.
    pub limit: usize,
}

/// Counts and uptime.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct Stats {
    /// Containers by state (`created`, `running`, `paused`, `exited`),
    /// hidden ones included.
    pub containers: BTreeMap<String, u64>,
    pub containers_total: u64,
    /// Events recorded since the state database was made.
    pub events_total: u64,
    /// Operations running now.
    pub operations_running: u64,
    /// Seconds since this API server started.
    pub uptime_seconds: f64,
}

/// Lists operations, oldest first.
#[utoipa::path(
    get, path = "/diagnostics/operations", tag = "diagnostics", operation_id = "diagnostics_operations",
    params(OperationsQuery),
    responses((status = 200, description = "The operations", body = Vec<Operation>))
)]
pub async fn operations(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<OperationsQuery>,
) -> Result<axum::Json<Vec<Operation>>, ApiError> {
    let ops = s.pl.store.call(move |st| st.ops(q.running)).await?;
    Ok(axum::Json(ops.into_iter().map(Operation::from).collect()))
}

/// One operation.
#[utoipa::path(
    get, path = "/diagnostics/operations/{id}", tag = "diagnostics", operation_id = "diagnostics_operation",
    params(("id" = String, Path, description = "Operation id")),
    responses(
        (status = 200, description = "The operation", body = Operation),
        (status = 404, description = "No such operation (NOT_FOUND)", body = ErrorBody),
    )
)]
pub async fn operation(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
) -> Result<axum::Json<Operation>, ApiError> {
    Ok(axum::Json(
        s.pl.store.call(move |st| st.op(&id)).await?.into(),
    ))
}

/// Asks for an operation to be cancelled. Idempotent; a no-op on a
/// finished operation. The operation's owner stops it at its next check:
/// poll the operation to see it end as `cancelled`.
#[utoipa::path(
    delete, path = "/diagnostics/operations/{id}", tag = "diagnostics", operation_id = "diagnostics_cancel_operation",
    params(("id" = String, Path, description = "Operation id")),
    responses(
        (status = 202, description = "Cancellation requested; the operation as it is now", body = Operation),
        (status = 404, description = "No such operation (NOT_FOUND)", body = ErrorBody),
        (status = 409, description = "The operation has already finished (CONFLICT)", body = ErrorBody),
    )
)]
pub async fn cancel_operation(
    State(s): State<ApiState>,
    PathArgs(id): PathArgs<String>,
) -> Result<(StatusCode, axum::Json<Operation>), ApiError> {
    let op = s.pl.off(move |pl| pl.cancel_operation(&id)).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(op.into())))
}

fn time_ms(element: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| parse_time(v).map(|ns| ns.div_euclid(1_000_000)))
        .transpose()
        .map_err(|m| ApiError::invalid(element, m))
}

/// Queries recorded errors, newest first.
#[utoipa::path(
    get, path = "/diagnostics/errors", tag = "diagnostics", operation_id = "diagnostics_errors",
    params(ErrorsQuery),
    responses(
        (status = 200, description = "The matching errors", body = Vec<ErrorEntry>),
        (status = 400, description = "Bad time (INVALID_ARGUMENT)", body = ErrorBody),
    )
)]
pub async fn errors(
    State(s): State<ApiState>,
    QueryArgs(q): QueryArgs<ErrorsQuery>,
) -> Result<axum::Json<Vec<ErrorEntry>>, ApiError> {
    let query = ErrorQuery {
        since: time_ms("since", q.since.as_deref())?,
        until: time_ms("until", q.until.as_deref())?,
        kind: q.kind.filter(|k| !k.is_empty()),
        element: q.element.filter(|e| !e.is_empty()),
        limit: q.limit,
    };
    let errors = s.pl.store.call(move |st| st.errors(&query)).await?;
    Ok(axum::Json(
        errors.into_iter().map(ErrorEntry::from).collect(),
    ))
}

/// Counts of containers by state, events, running operations, and uptime.
#[utoipa::path(
    get, path = "/diagnostics/stats", tag = "diagnostics", operation_id = "diagnostics_stats",
    responses((status = 200, description = "Statistics", body = Stats))
)]
pub async fn stats(State(s): State<ApiState>) -> Result<axum::Json<Stats>, ApiError> {
    let mut containers = BTreeMap::new();
    for state in ["created", "running", "paused", "exited"] {
        containers.insert(state.to_string(), 0);
    }
    let (records, last_event, running) =
        s.pl.store
            .call(|st| Ok((st.containers()?, st.last_event_id()?, st.ops(true)?.len())))
            .await?;
    for c in &records {
        *containers.entry(c.state.clone()).or_insert(0) += 1;
    }
    Ok(axum::Json(Stats {
        containers,
        containers_total: records.len() as u64,
        events_total: u64::try_from(last_event).unwrap_or(0),
        operations_running: running as u64,
        uptime_seconds: s.started.elapsed().as_secs_f64(),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testutil::*;
    use super::*;
    use crate::store::{OpState, now_ms};

    #[tokio::test]
    async fn operations_can_be_listed_and_cancelled() {
        let h = Harness::new();
        for id in ["op1", "op2"] {
            h.pl.store
                .op_start(&store::Operation {
                    id: id.into(),
                    kind: "pull".into(),
                    element: "busybox".into(),
                    started_at: now_ms(),
                    finished_at: None,
                    owner: "test".into(),
                    state: OpState::Running,
                    detail: String::new(),
                    cancel_requested: false,
                })
                .unwrap();
        }
        h.pl.store
            .op_finish("op2", OpState::Done, "pulled")
            .unwrap();
        let (_, all) = h.call("GET", "/diagnostics/operations", None).await;
        assert_eq!(all.as_array().unwrap().len(), 2);
        let (_, running) = h
            .call("GET", "/diagnostics/operations?running=true", None)
            .await;
        assert_eq!(running.as_array().unwrap().len(), 1);
        assert_eq!(running[0]["id"], "op1");
        assert_eq!(running[0]["state"], "running");

        let (status, op) = h.call("DELETE", "/diagnostics/operations/op1", None).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{op}");
        assert_eq!(op["cancel_requested"], true);
        assert!(h.pl.store.op_cancel_requested("op1").unwrap());
        let (status, op) = h.call("GET", "/diagnostics/operations/op2", None).await;
        assert_eq!((status, &op["state"]), (StatusCode::OK, &json!("done")));
        let (status, e) = h.call("DELETE", "/diagnostics/operations/nope", None).await;
        assert_eq!(
            (status, &e["element"]),
            (StatusCode::NOT_FOUND, &json!("nope"))
        );
    }

    #[tokio::test]
    async fn failed_commits_are_queryable_errors() {
        let h = Harness::new();
        let id = h.create("web").await;
        let (_, hd) = h
            .call("GET", &format!("/exec/containers/{id}/handle"), None)
            .await;
        let (_, hd) = h
            .call(
                "POST",
                "/exec/handles/task-bind",
                Some(json!({"handle": hd["handle"], "task": "ghost"})),
            )
            .await;
        let (status, e) = h
            .call(
                "POST",
                "/exec/commit",
                Some(json!({"handle": hd["handle"]})),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
        let (status, errors) = h
            .call(
                "GET",
                "/diagnostics/errors?kind=commit&since=0&limit=5",
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{errors}");
        let errors = errors.as_array().unwrap();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0]["element"], format!("{id}/task/ghost"));
        assert_eq!(errors[0]["code"], "INVALID_ARGUMENT");
        let (_, none) = h
            .call(
                "GET",
                "/diagnostics/errors?until=1970-01-01T00:00:01Z",
                None,
            )
            .await;
        assert_eq!(none, json!([]));
        let (status, e) = h.call("GET", "/diagnostics/errors?since=soon", None).await;
        assert_eq!(
            (status, &e["element"]),
            (StatusCode::BAD_REQUEST, &json!("since"))
        );
    }

    #[tokio::test]
    async fn stats_count_containers_by_state() {
        let h = Harness::new();
        let a = h.create("a").await;
        h.create("b").await;
        h.set_state(&a, "running").await;
        let (status, s) = h.call("GET", "/diagnostics/stats", None).await;
        assert_eq!(status, StatusCode::OK, "{s}");
        assert_eq!(
            s["containers"],
            json!({"created": 1, "running": 1, "paused": 0, "exited": 0})
        );
        assert_eq!(s["containers_total"], 2);
        assert_eq!(s["events_total"], h.pl.store.last_event_id().unwrap());
        assert_eq!(s["operations_running"], 0);
        assert!(s["uptime_seconds"].as_f64().unwrap() >= 0.0);
    }
}
