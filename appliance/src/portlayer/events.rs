//! The events component: every change the port layer makes is an event,
//! stored (so a client can catch up after a restart) and broadcast to live
//! subscribers, filtered with the shared filter language.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::filter::Filterable;
use crate::store::{EventRecord, Store, StoreError, now_ms};

pub struct Events {
    store: Arc<Store>,
    tx: broadcast::Sender<EventRecord>,
}

impl Events {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            store,
            tx: broadcast::channel(1024).0,
        }
    }

    /// Records and broadcasts one event.
    pub fn emit(
        &self,
        component: &str,
        kind: &str,
        element: &str,
        labels: &BTreeMap<String, String>,
        detail: serde_json::Value,
    ) -> Result<EventRecord, StoreError> {
        let mut ev = EventRecord {
            id: 0,
            time: now_ms(),
            component: component.into(),
            kind: kind.into(),
            element: element.into(),
            labels: labels.clone(),
            detail,
        };
        ev.id = self.store.append_event(&ev)?;
        let _ = self.tx.send(ev.clone());
        Ok(ev)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.tx.subscribe()
    }
}

/// Events are filtered on `component`, `kind`, `element`, `id` and labels.
pub struct EventView<'a>(pub &'a EventRecord);

pub const EVENT_FIELDS: &[&str] = &["id", "component", "kind", "element", "time"];

impl Filterable for EventView<'_> {
    fn field(&self, name: &str) -> Option<String> {
        let e = self.0;
        match name {
            "id" => Some(e.id.to_string()),
            "component" => Some(e.component.clone()),
            "kind" => Some(e.kind.clone()),
            "element" => Some(e.element.clone()),
            "time" => Some(e.time.to_string()),
            _ => None,
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.0.labels.get(key).map(String::as_str)
    }
}
