//! Diagnostics: errors queryable by time range, kind and element, and the
//! operations in progress (with a cancel flag that any replica can set and
//! the owning one polls).
//!
//! Owns the `errors` and `operations` tables. Must not run, time out or
//! cancel operations itself: it only records what their owners report.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, Transaction, params, params_from_iter};

use super::{Store, StoreError, now_ms, sql_limit};

#[derive(Debug, Clone, PartialEq)]
pub struct ErrorRecord {
    /// Assigned by the store; ignored by `record_error`.
    pub id: i64,
    /// Unix ms.
    pub time: i64,
    /// "commit", "backend", "vm-crash", …
    pub kind: String,
    /// The element id the error maps back to.
    pub element: String,
    pub code: String,
    pub message: String,
}

/// Which errors to return; `Default` is all of them. Bounds are inclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ErrorQuery {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub kind: Option<String>,
    pub element: Option<String>,
    /// At most this many, newest first; 0: no limit.
    pub limit: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpState {
    Running,
    Done,
    Failed,
    Cancelled,
}

impl OpState {
    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Running => "running",
            OpState::Done => "done",
            OpState::Failed => "failed",
            OpState::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OpState {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<OpState, StoreError> {
        Ok(match s {
            "running" => OpState::Running,
            "done" => OpState::Done,
            "failed" => OpState::Failed,
            "cancelled" => OpState::Cancelled,
            other => {
                return Err(StoreError::Invalid {
                    what: "operation state",
                    reason: format!("{other:?} is not running, done, failed or cancelled"),
                });
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub id: String,
    /// "pull", "commit", "start", …
    pub kind: String,
    pub element: String,
    /// Unix ms.
    pub started_at: i64,
    /// Set by `op_finish`; ignored by `op_start`.
    pub finished_at: Option<i64>,
    /// The appliance instance running it.
    pub owner: String,
    /// `op_start` always records `Running`.
    pub state: OpState,
    pub detail: String,
    /// Set by `op_request_cancel`; ignored by `op_start`.
    pub cancel_requested: bool,
}

const OP_COLUMNS: &str =
    "id, kind, element, started_at, finished_at, owner, state, detail, cancel_requested";

fn op_from_row(row: &Row<'_>) -> rusqlite::Result<(Operation, String)> {
    let state: String = row.get(6)?;
    Ok((
        Operation {
            id: row.get(0)?,
            kind: row.get(1)?,
            element: row.get(2)?,
            started_at: row.get(3)?,
            finished_at: row.get(4)?,
            owner: row.get(5)?,
            state: OpState::Running,
            detail: row.get(7)?,
            cancel_requested: row.get(8)?,
        },
        state,
    ))
}

fn decode_op((mut op, state): (Operation, String)) -> Result<Operation, StoreError> {
    op.state = state.parse()?;
    Ok(op)
}

fn get_op(tx: &Transaction<'_>, id: &str) -> Result<Operation, StoreError> {
    tx.query_row(
        &format!("SELECT {OP_COLUMNS} FROM operations WHERE id = ?1"),
        [id],
        op_from_row,
    )
    .optional()?
    .map(decode_op)
    .transpose()?
    .ok_or_else(|| StoreError::NotFound {
        kind: "operation",
        id: id.to_string(),
    })
}

impl Store {
    /// Records an error and returns its id.
    pub fn record_error(&self, e: &ErrorRecord) -> Result<i64, StoreError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO errors (time, kind, element, code, message)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.time, e.kind, e.element, e.code, e.message],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// The errors matching every given criterion, newest first.
    pub fn errors(&self, q: &ErrorQuery) -> Result<Vec<ErrorRecord>, StoreError> {
        let mut sql =
            String::from("SELECT id, time, kind, element, code, message FROM errors WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        if let Some(since) = q.since {
            sql.push_str(" AND time >= ?");
            args.push(Value::Integer(since));
        }
        if let Some(until) = q.until {
            sql.push_str(" AND time <= ?");
            args.push(Value::Integer(until));
        }
        if let Some(kind) = &q.kind {
            sql.push_str(" AND kind = ?");
            args.push(Value::Text(kind.clone()));
        }
        if let Some(element) = &q.element {
            sql.push_str(" AND element = ?");
            args.push(Value::Text(element.clone()));
        }
        sql.push_str(" ORDER BY time DESC, id DESC LIMIT ?");
        args.push(Value::Integer(sql_limit(q.limit)));
        self.read(|tx| {
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt
                .query_map(params_from_iter(args), |r| {
                    Ok(ErrorRecord {
                        id: r.get(0)?,
                        time: r.get(1)?,
                        kind: r.get(2)?,
                        element: r.get(3)?,
                        code: r.get(4)?,
                        message: r.get(5)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Records a new running operation. `AlreadyExists` if the id is taken.
    pub fn op_start(&self, op: &Operation) -> Result<(), StoreError> {
        if op.id.is_empty() {
            return Err(StoreError::Invalid {
                what: "operation id",
                reason: "it is empty".into(),
            });
        }
        self.write(|tx| {
            let exists: Option<i64> = tx
                .query_row("SELECT 1 FROM operations WHERE id = ?1", [&op.id], |r| {
                    r.get(0)
                })
                .optional()?;
            if exists.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: "operation",
                    id: op.id.clone(),
                });
            }
            tx.execute(
                &format!(
                    "INSERT INTO operations ({OP_COLUMNS})
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5, 'running', ?6, 0)"
                ),
                params![
                    op.id,
                    op.kind,
                    op.element,
                    op.started_at,
                    op.owner,
                    op.detail
                ],
            )?;
            Ok(())
        })
    }

    /// Ends a running operation as `Done`, `Failed` or `Cancelled`.
    /// Finishing it again with the same state is a no-op; with another,
    /// `AlreadyFinished`.
    pub fn op_finish(&self, id: &str, state: OpState, detail: &str) -> Result<(), StoreError> {
        if state == OpState::Running {
            return Err(StoreError::Invalid {
                what: "operation state",
                reason: format!("operation {id} cannot finish as running"),
            });
        }
        self.write(|tx| {
            let op = get_op(tx, id)?;
            match op.state {
                OpState::Running => {}
                s if s == state => return Ok(()),
                s => {
                    return Err(StoreError::AlreadyFinished {
                        id: id.to_string(),
                        state: s,
                    });
                }
            }
            tx.execute(
                "UPDATE operations SET state = ?2, detail = ?3, finished_at = ?4 WHERE id = ?1",
                params![id, state.as_str(), detail, now_ms()],
            )?;
            Ok(())
        })
    }

    /// Operations, oldest first; only the running ones if `only_running`.
    pub fn ops(&self, only_running: bool) -> Result<Vec<Operation>, StoreError> {
        let filter = if only_running {
            "WHERE state = 'running'"
        } else {
            ""
        };
        self.read(|tx| {
            let mut stmt = tx.prepare(&format!(
                "SELECT {OP_COLUMNS} FROM operations {filter} ORDER BY started_at, id"
            ))?;
            let rows = stmt
                .query_map([], op_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(decode_op).collect()
        })
    }

    pub fn op(&self, id: &str) -> Result<Operation, StoreError> {
        self.read(|tx| get_op(tx, id))
    }

    /// Asks the owner of a running operation to cancel it. A no-op on a
    /// finished operation.
    pub fn op_request_cancel(&self, id: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            let op = get_op(tx, id)?;
            if op.state == OpState::Running {
                tx.execute(
                    "UPDATE operations SET cancel_requested = 1 WHERE id = ?1",
                    [id],
                )?;
            }
            Ok(())
        })
    }

    /// Whether cancellation of the operation was requested.
    pub fn op_cancel_requested(&self, id: &str) -> Result<bool, StoreError> {
        self.read(|tx| Ok(get_op(tx, id)?.cancel_requested))
    }
}

#[cfg(test)]
mod tests {
    use super::super::DB_FILE;
    use super::*;

    fn err(time: i64, kind: &str, element: &str) -> ErrorRecord {
        ErrorRecord {
            id: 0,
            time,
            kind: kind.into(),
            element: element.into(),
            code: "E1".into(),
            message: format!("{kind} failed on {element}"),
        }
    }

    fn op(id: &str, started_at: i64) -> Operation {
        Operation {
            id: id.into(),
            kind: "pull".into(),
            element: "busybox".into(),
            started_at,
            finished_at: Some(99),
            owner: "appliance-1".into(),
            state: OpState::Done,
            detail: "starting".into(),
            cancel_requested: true,
        }
    }

    #[test]
    fn errors_by_time_kind_and_element() {
        let store = Store::open_in_memory().unwrap();
        store.record_error(&err(100, "commit", "c1")).unwrap();
        store.record_error(&err(200, "backend", "c1")).unwrap();
        store.record_error(&err(300, "commit", "c2")).unwrap();
        let id = store.record_error(&err(400, "vm-crash", "c2")).unwrap();

        let times = |q: ErrorQuery| -> Vec<i64> {
            store
                .errors(&q)
                .unwrap()
                .into_iter()
                .map(|e| e.time)
                .collect()
        };
        assert_eq!(times(ErrorQuery::default()), [400, 300, 200, 100]);
        assert_eq!(
            times(ErrorQuery {
                since: Some(200),
                until: Some(300),
                ..Default::default()
            }),
            [300, 200]
        );
        assert_eq!(
            times(ErrorQuery {
                kind: Some("commit".into()),
                ..Default::default()
            }),
            [300, 100]
        );
        assert_eq!(
            times(ErrorQuery {
                element: Some("c2".into()),
                ..Default::default()
            }),
            [400, 300]
        );
        assert_eq!(
            times(ErrorQuery {
                kind: Some("commit".into()),
                element: Some("c1".into()),
                since: Some(50),
                ..Default::default()
            }),
            [100]
        );
        assert_eq!(
            times(ErrorQuery {
                limit: 1,
                ..Default::default()
            }),
            [400]
        );
        let newest = &store.errors(&ErrorQuery::default()).unwrap()[0];
        assert_eq!(newest.id, id);
        assert_eq!(newest.message, "vm-crash failed on c2");
        assert_eq!(newest.code, "E1");
    }

    #[test]
    fn operation_lifecycle() {
        let store = Store::open_in_memory().unwrap();
        store.op_start(&op("op1", 10)).unwrap();
        store.op_start(&op("op2", 20)).unwrap();
        assert!(matches!(
            store.op_start(&op("op1", 30)),
            Err(StoreError::AlreadyExists {
                kind: "operation",
                ..
            })
        ));

        // op_start records a fresh running operation whatever it was given.
        let got = store.op("op1").unwrap();
        assert_eq!(got.state, OpState::Running);
        assert_eq!(got.finished_at, None);
        assert!(!got.cancel_requested);
        assert_eq!(got.owner, "appliance-1");
        assert_eq!(got.started_at, 10);

        store.op_finish("op1", OpState::Done, "pulled").unwrap();
        let got = store.op("op1").unwrap();
        assert_eq!(got.state, OpState::Done);
        assert_eq!(got.detail, "pulled");
        assert!(got.finished_at.is_some());
        // Same outcome again: no-op; another outcome: refused.
        store.op_finish("op1", OpState::Done, "pulled").unwrap();
        match store.op_finish("op1", OpState::Failed, "late") {
            Err(e @ StoreError::AlreadyFinished { .. }) => {
                assert_eq!(e.to_string(), "Operation op1 already finished as done");
            }
            other => panic!("expected AlreadyFinished, got {other:?}"),
        }
        assert!(matches!(
            store.op_finish("op2", OpState::Running, ""),
            Err(StoreError::Invalid { .. })
        ));
        assert!(matches!(
            store.op_finish("nope", OpState::Done, ""),
            Err(StoreError::NotFound { .. })
        ));

        let running: Vec<_> = store.ops(true).unwrap().into_iter().map(|o| o.id).collect();
        assert_eq!(running, ["op2"]);
        let all: Vec<_> = store
            .ops(false)
            .unwrap()
            .into_iter()
            .map(|o| o.id)
            .collect();
        assert_eq!(all, ["op1", "op2"]);
    }

    #[test]
    fn cancel_flag_crosses_stores() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let owner = Store::open(&path).unwrap();
        let other = Store::open(&path).unwrap();
        owner.op_start(&op("op1", 10)).unwrap();
        assert!(!owner.op_cancel_requested("op1").unwrap());
        other.op_request_cancel("op1").unwrap();
        assert!(owner.op_cancel_requested("op1").unwrap());
        owner
            .op_finish("op1", OpState::Cancelled, "cancelled on request")
            .unwrap();
        assert_eq!(other.op("op1").unwrap().state, OpState::Cancelled);

        // Requesting cancellation of a finished operation changes nothing.
        owner.op_start(&op("op2", 20)).unwrap();
        owner.op_finish("op2", OpState::Done, "").unwrap();
        other.op_request_cancel("op2").unwrap();
        assert!(!owner.op_cancel_requested("op2").unwrap());
        assert!(matches!(
            other.op_request_cancel("nope"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            other.op_cancel_requested("nope"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn op_state_parses_and_prints() {
        for s in [
            OpState::Running,
            OpState::Done,
            OpState::Failed,
            OpState::Cancelled,
        ] {
            assert_eq!(s.to_string().parse::<OpState>().unwrap(), s);
        }
        assert!("paused".parse::<OpState>().is_err());
    }
}
