//! The event log: append-only, ids strictly increasing in commit order, so a
//! reader that remembers the last id it saw (`events_after`) misses nothing,
//! even across processes.
//!
//! Owns the `events` table. Must not filter by the port layer's filter
//! language (that belongs to the component that streams events) nor delete
//! events.

use std::collections::BTreeMap;

use rusqlite::{Row, Transaction, params};

use super::{Store, StoreError, sql_limit};

#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    /// Assigned by the store; ignored by `append_event`.
    pub id: i64,
    /// Unix ms.
    pub time: i64,
    /// The port layer component: "execution", "storage", …
    pub component: String,
    /// What happened: "create", "start", "die", …
    pub kind: String,
    /// The element's id.
    pub element: String,
    pub labels: BTreeMap<String, String>,
    pub detail: serde_json::Value,
}

const COLUMNS: &str = "id, time, component, kind, element, labels, detail";

struct Raw {
    id: i64,
    time: i64,
    component: String,
    kind: String,
    element: String,
    labels: String,
    detail: String,
}

impl Raw {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Raw> {
        Ok(Raw {
            id: row.get(0)?,
            time: row.get(1)?,
            component: row.get(2)?,
            kind: row.get(3)?,
            element: row.get(4)?,
            labels: row.get(5)?,
            detail: row.get(6)?,
        })
    }

    fn decode(self) -> Result<EventRecord, StoreError> {
        Ok(EventRecord {
            id: self.id,
            time: self.time,
            component: self.component,
            kind: self.kind,
            element: self.element,
            labels: serde_json::from_str(&self.labels)?,
            detail: serde_json::from_str(&self.detail)?,
        })
    }
}

fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<EventRecord>, StoreError> {
    let mut stmt = tx.prepare(sql)?;
    let raws = stmt
        .query_map(params, Raw::from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    raws.into_iter().map(Raw::decode).collect()
}

impl Store {
    /// Appends an event and returns its id.
    pub fn append_event(&self, ev: &EventRecord) -> Result<i64, StoreError> {
        let labels = serde_json::to_string(&ev.labels)?;
        let detail = serde_json::to_string(&ev.detail)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO events (time, component, kind, element, labels, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![ev.time, ev.component, ev.kind, ev.element, labels, detail],
            )?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Up to `limit` events (0: all) with an id greater than `after_id`,
    /// oldest first. Start from 0, or from `last_event_id` for "from now".
    pub fn events_after(
        &self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.read(|tx| {
            query(
                tx,
                &format!("SELECT {COLUMNS} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"),
                params![after_id, sql_limit(limit)],
            )
        })
    }

    /// Events whose time is in `since_ms ..= until_ms` (both inclusive, as
    /// Docker's `since`/`until`), in log order.
    pub fn events_between(
        &self,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<EventRecord>, StoreError> {
        self.read(|tx| {
            query(
                tx,
                &format!(
                    "SELECT {COLUMNS} FROM events WHERE time >= ?1 AND time <= ?2 ORDER BY id"
                ),
                params![since_ms, until_ms],
            )
        })
    }

    /// The id of the newest event, 0 if there is none.
    pub fn last_event_id(&self) -> Result<i64, StoreError> {
        self.read(|tx| {
            Ok(tx.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::DB_FILE;
    use super::*;
    use serde_json::json;

    fn ev(time: i64, kind: &str, element: &str) -> EventRecord {
        EventRecord {
            id: 0,
            time,
            component: "execution".into(),
            kind: kind.into(),
            element: element.into(),
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            detail: json!({"exit_code": 0}),
        }
    }

    #[test]
    fn events_are_ordered_and_paged() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.last_event_id().unwrap(), 0);
        let ids: Vec<i64> = (0..5)
            .map(|i| {
                store
                    .append_event(&ev(100 + i, &format!("k{i}"), "c1"))
                    .unwrap()
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(store.last_event_id().unwrap(), ids[4]);

        let all = store.events_after(0, 0).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].id, ids[0]);
        assert_eq!(all[0].kind, "k0");
        assert_eq!(all[0].labels["app"], "web");
        assert_eq!(all[0].detail, json!({"exit_code": 0}));

        let page = store.events_after(ids[1], 2).unwrap();
        let kinds: Vec<_> = page.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["k2", "k3"]);
        assert!(store.events_after(ids[4], 10).unwrap().is_empty());
    }

    #[test]
    fn events_between_is_inclusive() {
        let store = Store::open_in_memory().unwrap();
        for t in [100, 200, 300, 400] {
            store.append_event(&ev(t, &format!("at{t}"), "c1")).unwrap();
        }
        let got: Vec<_> = store
            .events_between(200, 300)
            .unwrap()
            .into_iter()
            .map(|e| e.time)
            .collect();
        assert_eq!(got, [200, 300]);
        assert!(store.events_between(401, 500).unwrap().is_empty());
    }

    #[test]
    fn events_from_two_stores_share_one_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let a = Store::open(&path).unwrap();
        let b = Store::open(&path).unwrap();
        let first = a.append_event(&ev(1, "from-a", "c1")).unwrap();
        let second = b.append_event(&ev(1, "from-b", "c1")).unwrap();
        assert!(second > first);
        let seen: Vec<_> = a
            .events_after(0, 0)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(seen, ["from-a", "from-b"]);
    }
}
