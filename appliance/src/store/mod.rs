//! The appliance's state: one SQLite database, `state.db`, in the state
//! directory, shared by every appliance process that uses that directory
//! (replicas, restarts).
//!
//! Owns the connection, its settings (WAL, busy timeout, foreign keys), the
//! error type and the read/write transaction helpers. The tables belong to
//! the job modules: `containers`, `events`, `kv`, `diagnostics`, `storage`;
//! their shape to `migrate`. This module is schema-agnostic about what a container is:
//! the port layer stores its typed config as JSON. It must not know about
//! handles, backends or REST.
//!
//! Correctness across processes comes from SQLite itself: every write runs in
//! a `BEGIN IMMEDIATE` transaction (so read-check-write sequences such as
//! optimistic version checks are serialised between processes), reads run in
//! a deferred transaction (one consistent snapshot).

mod containers;
mod diagnostics;
mod events;
mod kv;
mod migrate;
mod network;
mod storage;
mod worker;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, Transaction, TransactionBehavior};

pub use containers::{ContainerRecord, MIN_PREFIX, Use};
pub use diagnostics::{ErrorQuery, ErrorRecord, OpState, Operation};
pub use events::EventRecord;
pub use migrate::SCHEMA_VERSION;
pub use network::{HostPort, LeaseWant, ScopeRecord};
pub use storage::{ImageRecord, StoreDir, StoreKind, VolumeRecord};
pub use worker::mark_async_worker;

/// The database's file name inside the state directory.
pub const DB_FILE: &str = "state.db";

/// How long a statement waits for another process's write lock.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{} {id} not found", capitalised(.kind))]
    NotFound { kind: &'static str, id: String },
    #[error("{} {id} already exists", capitalised(.kind))]
    AlreadyExists { kind: &'static str, id: String },
    /// A store directory can be one store only.
    #[error("{} {by} already has the directory {path}", capitalised(.kind))]
    PathTaken {
        kind: &'static str,
        path: String,
        by: String,
    },
    #[error("Name {name} is already in use by container {by}")]
    NameTaken { name: String, by: String },
    #[error("Prefix {prefix} matches {} containers: {}", .matches.len(), .matches.join(", "))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
    /// Optimistic concurrency: the caller's base version is stale. A
    /// `current` of 0 means the element does not exist (any more).
    #[error("{} {id} changed: version {base} is stale, {}", capitalised(.kind), current_text(*.current))]
    Conflict {
        kind: &'static str,
        id: String,
        base: u64,
        current: u64,
    },
    /// Deleting something a container still uses.
    #[error("{} {id} is in use by container {}", capitalised(.kind), .by.join(", "))]
    InUse {
        kind: &'static str,
        id: String,
        by: Vec<String>,
    },
    #[error("Scope {id}'s subnet overlaps scope {with}'s")]
    Overlap { id: String, with: String },
    #[error("Scope {scope} has no free address in its range {first} to {last}")]
    Exhausted {
        scope: String,
        first: String,
        last: String,
    },
    #[error("Operation {id} already finished as {state}")]
    AlreadyFinished { id: String, state: OpState },
    #[error("Invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
    #[error(
        "State database schema version {found} is newer than this appliance supports ({supported})"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("Creating state directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Starting the state database's thread")]
    Thread(#[source] std::io::Error),
    #[error("The state database's thread stopped before answering")]
    WorkerGone,
    #[error("State database")]
    Sqlite(#[from] rusqlite::Error),
    #[error("Stored JSON")]
    Json(#[from] serde_json::Error),
}

fn capitalised(kind: &str) -> String {
    let mut chars = kind.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn current_text(current: u64) -> String {
    if current == 0 {
        "it does not exist".to_string()
    } else {
        format!("current is {current}")
    }
}

/// The state database. `Send + Sync`; open one per process and share it.
///
/// Its methods block (SQLite, and an fsync per write transaction): call them
/// from threads that may block. Async code goes through [`Store::call`],
/// which runs the work on the store's own thread; in debug builds a call
/// from an async worker thread panics, naming where it came from.
pub struct Store {
    conn: Mutex<Connection>,
    worker: worker::Worker,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its
    /// schema up to date. Safe to call from several processes at once.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let conn = Connection::open(path)?;
        Store::setup(conn)
    }

    /// Opens `state_dir/state.db`.
    pub fn open_dir(state_dir: &Path) -> Result<Store, StoreError> {
        Store::open(&state_dir.join(DB_FILE))
    }

    /// A private database in memory, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::setup(Connection::open_in_memory()?)
    }

    fn setup(mut conn: Connection) -> Result<Store, StoreError> {
        // The busy timeout first: switching to WAL and migrating take locks
        // that another process opening at the same time may hold.
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // Returns the resulting mode ("memory" for in-memory databases).
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate::migrate(&mut conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
            worker: worker::Worker::start()?,
        })
    }

    /// Runs `f` with the store on the store's thread, off the async
    /// runtime. Calls run one at a time, in the order they were made; the
    /// work still happens if the caller stops waiting.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = Arc::clone(self);
        self.worker.run(move || f(&store)).await
    }

    /// Queues `f` on the store's thread without waiting for it: later calls
    /// (through [`Store::call`] or `submit`) see its effect.
    pub fn submit(self: &Arc<Self>, f: impl FnOnce(&Store) + Send + 'static) {
        let store = Arc::clone(self);
        self.worker.submit(move || f(&store));
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        worker::check_not_async();
        // A panic while holding the lock dropped (and so rolled back) any
        // open transaction: the connection is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` in a read transaction: one consistent snapshot.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction, committed if `f`
    /// succeeds and rolled back otherwise. Holding the write lock from the
    /// start means checks made inside `f` still hold when it writes, across
    /// processes.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Milliseconds since the Unix epoch, the unit of every time in the store.
pub fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `limit` 0 means no limit; SQLite's is -1.
pub(crate) fn sql_limit(limit: usize) -> i64 {
    if limit == 0 {
        -1
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

/// Versions are `u64` in the API and SQLite integers (i64) on disk.
pub(crate) fn version_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn version_from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
    }

    #[test]
    fn file_database_uses_wal_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_dir(&dir.path().join("nested")).unwrap();
        assert!(dir.path().join("nested").join(DB_FILE).exists());
        let conn = store.lock();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        let timeout: i64 = conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, 5000);
    }

    #[test]
    fn error_messages_name_the_element() {
        let e = StoreError::NotFound {
            kind: "container",
            id: "3f2a".into(),
        };
        assert_eq!(e.to_string(), "Container 3f2a not found");
        let e = StoreError::Conflict {
            kind: "container",
            id: "3f2a".into(),
            base: 7,
            current: 9,
        };
        assert_eq!(
            e.to_string(),
            "Container 3f2a changed: version 7 is stale, current is 9"
        );
        let e = StoreError::Conflict {
            kind: "key",
            id: "a/b".into(),
            base: 3,
            current: 0,
        };
        assert_eq!(
            e.to_string(),
            "Key a/b changed: version 3 is stale, it does not exist"
        );
        let e = StoreError::Ambiguous {
            prefix: "abcd".into(),
            matches: vec!["abcd1".into(), "abcd2".into()],
        };
        assert_eq!(
            e.to_string(),
            "Prefix abcd matches 2 containers: abcd1, abcd2"
        );
    }

    #[test]
    fn concurrent_opens_of_a_new_file_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || Store::open(&path).map(|_| ()))
            })
            .collect();
        for t in threads {
            t.join().unwrap().unwrap();
        }
        let store = Store::open(&path).unwrap();
        let rows: i64 = store
            .lock()
            .query_row("SELECT count(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, SCHEMA_VERSION);
    }
}
