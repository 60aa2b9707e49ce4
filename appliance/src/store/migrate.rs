//! The state database's schema and its forward-only migrations.
//!
//! Owns `MIGRATIONS` and the `schema_version` table (one row per applied
//! migration). A migration, once released, is never edited: a change is a
//! new entry appended at the end. Must not touch rows of the other tables
//! except to reshape them inside a migration.

use rusqlite::{Connection, TransactionBehavior, params};

use super::{StoreError, now_ms};

/// Migration N (1-based) is `MIGRATIONS[N - 1]`.
const MIGRATIONS: &[&str] = &[
    // 1: containers, events, kv, errors, operations.
    r#"
    CREATE TABLE containers (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,
        version     INTEGER NOT NULL CHECK (version > 0),
        state       TEXT NOT NULL,
        labels      TEXT NOT NULL,      -- JSON object of strings
        body        TEXT NOT NULL,      -- JSON: the port layer's typed config
        created_at  INTEGER NOT NULL,   -- unix ms
        updated_at  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE events (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        time        INTEGER NOT NULL,
        component   TEXT NOT NULL,
        kind        TEXT NOT NULL,
        element     TEXT NOT NULL,
        labels      TEXT NOT NULL,
        detail      TEXT NOT NULL
    ) STRICT;
    CREATE INDEX events_time ON events (time);

    -- Global revision counters (e.g. 'kv'): never reused, even after deletes.
    CREATE TABLE counters (
        name        TEXT PRIMARY KEY,
        value       INTEGER NOT NULL
    ) STRICT;
    INSERT INTO counters (name, value) VALUES ('kv', 0);

    CREATE TABLE kv (
        key         TEXT PRIMARY KEY,
        value       TEXT NOT NULL,
        version     INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE errors (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        time        INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        element     TEXT NOT NULL,
        code        TEXT NOT NULL,
        message     TEXT NOT NULL
    ) STRICT;
    CREATE INDEX errors_time ON errors (time);
    CREATE INDEX errors_kind ON errors (kind, time);
    CREATE INDEX errors_element ON errors (element, time);

    CREATE TABLE operations (
        id                TEXT PRIMARY KEY,
        kind              TEXT NOT NULL,
        element           TEXT NOT NULL,
        started_at        INTEGER NOT NULL,
        finished_at       INTEGER,
        owner             TEXT NOT NULL,
        state             TEXT NOT NULL
                          CHECK (state IN ('running', 'done', 'failed', 'cancelled')),
        detail            TEXT NOT NULL,
        cancel_requested  INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX operations_state ON operations (state);
    "#,
    // 2: storage: image stores and images (with their names), volume stores
    // and volumes, and what each container uses.
    r#"
    CREATE TABLE image_stores (
        name        TEXT PRIMARY KEY,
        path        TEXT NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE images (
        id          TEXT PRIMARY KEY,   -- "sha256:<config digest>"
        store       TEXT NOT NULL REFERENCES image_stores (name),
        body        TEXT NOT NULL,      -- JSON: the storage component's record
        created_at  INTEGER NOT NULL
    ) STRICT;

    -- Normalised references ("docker.io/library/busybox:latest").
    CREATE TABLE image_names (
        name        TEXT PRIMARY KEY,
        image       TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE
    ) STRICT;
    CREATE INDEX image_names_image ON image_names (image);

    CREATE TABLE volume_stores (
        name        TEXT PRIMARY KEY,
        path        TEXT NOT NULL UNIQUE,
        created_at  INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE volumes (
        name        TEXT PRIMARY KEY,
        store       TEXT NOT NULL REFERENCES volume_stores (name),
        body        TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    ) STRICT;

    -- Kept by container inserts and updates: deleting an image or a volume
    -- checks it in the same transaction, so neither can go while in use.
    CREATE TABLE container_uses (
        container   TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
        kind        TEXT NOT NULL CHECK (kind IN ('image', 'volume')),
        element     TEXT NOT NULL,
        PRIMARY KEY (container, kind, element)
    ) STRICT;
    CREATE INDEX container_uses_element ON container_uses (kind, element);
    "#,
    // 3: network: scopes, address leases and host ports; containers use
    // scopes.
    r#"
    CREATE TABLE scopes (
        name        TEXT PRIMARY KEY,
        first       INTEGER NOT NULL,   -- the subnet, as IPv4 numbers
        last        INTEGER NOT NULL,
        body        TEXT NOT NULL,      -- JSON: the network component's record
        created_at  INTEGER NOT NULL
    ) STRICT;

    -- One address per container and scope, never two containers on one.
    CREATE TABLE leases (
        scope       TEXT NOT NULL REFERENCES scopes (name),
        address     INTEGER NOT NULL,
        container   TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
        PRIMARY KEY (scope, address),
        UNIQUE (scope, container)
    ) STRICT;

    -- Published host ports; address 0 means every host address.
    CREATE TABLE host_ports (
        proto       TEXT NOT NULL CHECK (proto IN ('tcp', 'udp')),
        port        INTEGER NOT NULL,
        address     INTEGER NOT NULL,
        container   TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
        PRIMARY KEY (proto, port, address)
    ) STRICT;

    CREATE TABLE container_uses_3 (
        container   TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
        kind        TEXT NOT NULL CHECK (kind IN ('image', 'volume', 'scope')),
        element     TEXT NOT NULL,
        PRIMARY KEY (container, kind, element)
    ) STRICT;
    INSERT INTO container_uses_3 SELECT container, kind, element FROM container_uses;
    DROP TABLE container_uses;
    ALTER TABLE container_uses_3 RENAME TO container_uses;
    CREATE INDEX container_uses_element ON container_uses (kind, element);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Applies the migrations the database has not seen yet, all in one
/// `BEGIN IMMEDIATE` transaction: a second process migrating at the same
/// time waits, then finds nothing left to do.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version     INTEGER PRIMARY KEY,
            applied_at  INTEGER NOT NULL
        ) STRICT;",
    )?;
    let current: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(current).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![version, now_ms()],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{DB_FILE, Store};
    use super::*;

    fn versions(path: &std::path::Path) -> Vec<i64> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT version FROM schema_version ORDER BY version")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let expected: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        {
            let store = Store::open(&path).unwrap();
            store.kv_put("survives", "yes", None).unwrap();
        }
        assert_eq!(versions(&path), expected);
        let store = Store::open(&path).unwrap();
        assert_eq!(versions(&path), expected);
        assert_eq!(store.kv_get("survives").unwrap().unwrap().0, "yes");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, 0)",
            [SCHEMA_VERSION + 1],
        )
        .unwrap();
        drop(conn);
        match Store::open(&path) {
            Err(StoreError::SchemaTooNew { found, supported }) => {
                assert_eq!(found, SCHEMA_VERSION + 1);
                assert_eq!(supported, SCHEMA_VERSION);
            }
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }
}
