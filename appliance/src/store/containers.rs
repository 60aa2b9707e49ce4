//! Container records: id, unique name, change version, state, labels and the
//! port layer's config as an opaque JSON body.
//!
//! Owns the `containers` table and its optimistic concurrency: every update
//! names the version it was based on and fails with `Conflict` if another
//! writer (thread, process or replica) got there first. Must not interpret
//! `body` or `state`: their meaning belongs to the port layer.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Row, Transaction, params};

use super::network::{HostPort, LeaseWant, leases_of, write_host_ports, write_leases};
use super::{Store, StoreError, version_from_db, version_to_db};

/// The shortest id prefix `resolve_container` accepts.
pub const MIN_PREFIX: usize = 4;

const KIND: &str = "container";

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerRecord {
    pub id: String,
    pub name: String,
    /// The change version: 1 after insert, +1 on every update.
    pub version: u64,
    pub state: String,
    pub labels: BTreeMap<String, String>,
    pub body: serde_json::Value,
    /// Unix ms, as given by the caller.
    pub created_at: i64,
    pub updated_at: i64,
    /// The images and volumes the container uses. Written with the record
    /// (each must exist, or the write fails with `NotFound`); not read back:
    /// ask `users_of`.
    pub uses: Vec<Use>,
    /// The addresses it wants, one per scope (see `LeaseWant`), written
    /// with the record (`None`: leave them as they are); what it got is in
    /// `addresses`.
    pub leases: Option<Vec<LeaseWant>>,
    /// The host ports it publishes, written with the record (`None`: leave
    /// them); one another container holds fails the write with `InUse`.
    pub host_ports: Option<Vec<HostPort>>,
    /// Read back: scope → leased IPv4 address (as a number).
    pub addresses: BTreeMap<String, u32>,
}

/// Something a container holds on to, which must not go while it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// An image id ("sha256:...").
    Image(String),
    /// A volume name.
    Volume(String),
    /// A network scope name.
    Scope(String),
}

impl Use {
    pub fn kind(&self) -> &'static str {
        match self {
            Use::Image(_) => "image",
            Use::Volume(_) => "volume",
            Use::Scope(_) => "scope",
        }
    }

    pub fn element(&self) -> &str {
        match self {
            Use::Image(e) | Use::Volume(e) | Use::Scope(e) => e,
        }
    }
}

/// Replaces the container's uses, checking each one exists. `fresh`: the
/// container was just inserted and has none yet.
fn write_uses(tx: &Transaction<'_>, id: &str, uses: &[Use], fresh: bool) -> Result<(), StoreError> {
    if !fresh {
        tx.execute("DELETE FROM container_uses WHERE container = ?1", [id])?;
    }
    for u in uses {
        let sql = match u {
            Use::Image(_) => "SELECT 1 FROM images WHERE id = ?1",
            Use::Volume(_) => "SELECT 1 FROM volumes WHERE name = ?1",
            Use::Scope(_) => "SELECT 1 FROM scopes WHERE name = ?1",
        };
        if tx
            .query_row(sql, [u.element()], |_| Ok(()))
            .optional()?
            .is_none()
        {
            return Err(StoreError::NotFound {
                kind: u.kind(),
                id: u.element().to_string(),
            });
        }
        tx.execute(
            "INSERT OR IGNORE INTO container_uses (container, kind, element) VALUES (?1, ?2, ?3)",
            params![id, u.kind(), u.element()],
        )?;
    }
    Ok(())
}

/// The containers that use `what`, as "name (id12)", oldest first.
pub(crate) fn users_of(tx: &Transaction<'_>, what: &Use) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT c.name, c.id FROM container_uses u JOIN containers c ON c.id = u.container
         WHERE u.kind = ?1 AND u.element = ?2 ORDER BY c.created_at, c.id",
    )?;
    let users = stmt
        .query_map(params![what.kind(), what.element()], |r| {
            let name: String = r.get(0)?;
            let id: String = r.get(1)?;
            Ok(format!("{name} ({})", &id[..id.len().min(12)]))
        })?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(users)
}

const COLUMNS: &str = "id, name, version, state, labels, body, created_at, updated_at";

/// A row as stored, before its JSON columns are decoded.
struct Raw {
    id: String,
    name: String,
    version: i64,
    state: String,
    labels: String,
    body: String,
    created_at: i64,
    updated_at: i64,
}

impl Raw {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<Raw> {
        Ok(Raw {
            id: row.get(0)?,
            name: row.get(1)?,
            version: row.get(2)?,
            state: row.get(3)?,
            labels: row.get(4)?,
            body: row.get(5)?,
            created_at: row.get(6)?,
            updated_at: row.get(7)?,
        })
    }

    fn decode(self) -> Result<ContainerRecord, StoreError> {
        Ok(ContainerRecord {
            labels: serde_json::from_str(&self.labels)?,
            body: serde_json::from_str(&self.body)?,
            id: self.id,
            name: self.name,
            version: version_from_db(self.version),
            state: self.state,
            created_at: self.created_at,
            updated_at: self.updated_at,
            ..Default::default()
        })
    }
}

fn get_where(
    tx: &Transaction<'_>,
    column: &str,
    value: &str,
) -> Result<Option<ContainerRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM containers WHERE {column} = ?1");
    tx.query_row(&sql, [value], Raw::from_row)
        .optional()?
        .map(|raw| with_addresses(tx, raw.decode()?))
        .transpose()
}

fn write_network(tx: &Transaction<'_>, rec: &ContainerRecord) -> Result<(), StoreError> {
    if let Some(leases) = &rec.leases {
        write_leases(tx, &rec.id, leases)?;
    }
    if let Some(ports) = &rec.host_ports {
        write_host_ports(tx, &rec.id, ports)?;
    }
    Ok(())
}

fn with_addresses(
    tx: &Transaction<'_>,
    mut rec: ContainerRecord,
) -> Result<ContainerRecord, StoreError> {
    rec.addresses = leases_of(tx, &rec.id)?;
    Ok(rec)
}

fn version_of(tx: &Transaction<'_>, id: &str) -> Result<Option<u64>, StoreError> {
    Ok(tx
        .query_row("SELECT version FROM containers WHERE id = ?1", [id], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .map(version_from_db))
}

/// Fails with `NameTaken` if a container other than `id` is called `name`.
fn check_name_free(tx: &Transaction<'_>, name: &str, id: &str) -> Result<(), StoreError> {
    let holder: Option<String> = tx
        .query_row(
            "SELECT id FROM containers WHERE name = ?1 AND id != ?2",
            [name, id],
            |r| r.get(0),
        )
        .optional()?;
    match holder {
        Some(by) => Err(StoreError::NameTaken {
            name: name.to_string(),
            by,
        }),
        None => Ok(()),
    }
}

fn check_record(rec: &ContainerRecord) -> Result<(), StoreError> {
    if rec.id.is_empty() {
        return Err(StoreError::Invalid {
            what: "container id",
            reason: "it is empty".into(),
        });
    }
    if rec.name.is_empty() {
        return Err(StoreError::Invalid {
            what: "container name",
            reason: format!("container {} has an empty name", rec.id),
        });
    }
    Ok(())
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: KIND,
        id: id.to_string(),
    }
}

impl Store {
    /// Inserts a new container at version 1 (`rec.version` is ignored).
    pub fn insert_container(&self, rec: &ContainerRecord) -> Result<u64, StoreError> {
        check_record(rec)?;
        let labels = serde_json::to_string(&rec.labels)?;
        let body = serde_json::to_string(&rec.body)?;
        self.write(|tx| {
            if version_of(tx, &rec.id)?.is_some() {
                return Err(StoreError::AlreadyExists {
                    kind: KIND,
                    id: rec.id.clone(),
                });
            }
            check_name_free(tx, &rec.name, &rec.id)?;
            tx.execute(
                &format!(
                    "INSERT INTO containers ({COLUMNS}) VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    rec.id,
                    rec.name,
                    rec.state,
                    labels,
                    body,
                    rec.created_at,
                    rec.updated_at
                ],
            )?;
            write_uses(tx, &rec.id, &rec.uses, true)?;
            write_network(tx, rec)?;
            Ok(1)
        })
    }

    /// The container with exactly this id.
    pub fn container(&self, id: &str) -> Result<ContainerRecord, StoreError> {
        self.read(|tx| get_where(tx, "id", id)?.ok_or_else(|| not_found(id)))
    }

    /// The container with this exact id, else this exact name, else the one
    /// container whose id starts with `query` (at least `MIN_PREFIX` chars).
    pub fn resolve_container(&self, query: &str) -> Result<ContainerRecord, StoreError> {
        self.read(|tx| {
            if let Some(rec) = get_where(tx, "id", query)? {
                return Ok(rec);
            }
            if let Some(rec) = get_where(tx, "name", query)? {
                return Ok(rec);
            }
            if query.chars().count() < MIN_PREFIX {
                return Err(not_found(query));
            }
            let mut stmt = tx.prepare(
                "SELECT id FROM containers WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id",
            )?;
            let matches = stmt
                .query_map([query], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            match matches.as_slice() {
                [] => Err(not_found(query)),
                [id] => get_where(tx, "id", id)?.ok_or_else(|| not_found(id)),
                _ => Err(StoreError::Ambiguous {
                    prefix: query.to_string(),
                    matches,
                }),
            }
        })
    }

    /// The ids of the containers that use `what`.
    pub fn container_users(&self, what: &Use) -> Result<Vec<String>, StoreError> {
        self.read(|tx| users_of(tx, what))
    }

    /// Every container, oldest first.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(&format!(
                "SELECT {COLUMNS} FROM containers ORDER BY created_at, id"
            ))?;
            let raws = stmt
                .query_map([], Raw::from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter()
                .map(|raw| with_addresses(tx, raw.decode()?))
                .collect()
        })
    }

    /// Optimistic concurrency: writes `rec`'s name, state, labels, body and
    /// `updated_at` only if the stored version is `base`; bumps the version
    /// and returns the new one. Otherwise `Conflict` names the current
    /// version, and nothing is written.
    pub fn update_container(&self, rec: &ContainerRecord, base: u64) -> Result<u64, StoreError> {
        check_record(rec)?;
        let labels = serde_json::to_string(&rec.labels)?;
        let body = serde_json::to_string(&rec.body)?;
        self.write(|tx| {
            let current = version_of(tx, &rec.id)?.ok_or_else(|| not_found(&rec.id))?;
            if current != base {
                return Err(StoreError::Conflict {
                    kind: KIND,
                    id: rec.id.clone(),
                    base,
                    current,
                });
            }
            check_name_free(tx, &rec.name, &rec.id)?;
            let next = current + 1;
            tx.execute(
                "UPDATE containers
                 SET name = ?2, state = ?3, labels = ?4, body = ?5, updated_at = ?6, version = ?7
                 WHERE id = ?1 AND version = ?8",
                params![
                    rec.id,
                    rec.name,
                    rec.state,
                    labels,
                    body,
                    rec.updated_at,
                    version_to_db(next),
                    version_to_db(current)
                ],
            )?;
            write_uses(tx, &rec.id, &rec.uses, false)?;
            write_network(tx, rec)?;
            Ok(next)
        })
    }

    /// Deletes the container; with `base`, only if it is still at that
    /// version.
    pub fn delete_container(&self, id: &str, base: Option<u64>) -> Result<(), StoreError> {
        self.write(|tx| {
            let current = version_of(tx, id)?.ok_or_else(|| not_found(id))?;
            if let Some(base) = base
                && base != current
            {
                return Err(StoreError::Conflict {
                    kind: KIND,
                    id: id.to_string(),
                    base,
                    current,
                });
            }
            tx.execute("DELETE FROM containers WHERE id = ?1", [id])?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::DB_FILE;
    use super::*;
    use serde_json::json;
    use std::sync::{Arc, Barrier};

    fn rec(id: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: name.into(),
            version: 0,
            state: "created".into(),
            labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
            body: json!({"image": "busybox", "count": 0}),
            created_at: 1_000,
            updated_at: 1_000,
            ..Default::default()
        }
    }

    #[test]
    fn insert_and_get() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.insert_container(&rec("aaaa1111", "web")).unwrap(), 1);
        let got = store.container("aaaa1111").unwrap();
        let mut want = rec("aaaa1111", "web");
        want.version = 1;
        assert_eq!(got, want);
        assert!(matches!(
            store.container("nope"),
            Err(StoreError::NotFound { kind: "container", ref id }) if id == "nope"
        ));
    }

    #[test]
    fn ids_and_names_are_unique() {
        let store = Store::open_in_memory().unwrap();
        store.insert_container(&rec("aaaa1111", "web")).unwrap();
        match store.insert_container(&rec("bbbb2222", "web")) {
            Err(StoreError::NameTaken { name, by }) => {
                assert_eq!(name, "web");
                assert_eq!(by, "aaaa1111");
            }
            other => panic!("expected NameTaken, got {other:?}"),
        }
        assert!(matches!(
            store.insert_container(&rec("aaaa1111", "other")),
            Err(StoreError::AlreadyExists {
                kind: "container",
                ..
            })
        ));
        // Renaming onto a taken name is refused too, and writes nothing.
        store.insert_container(&rec("bbbb2222", "db")).unwrap();
        let mut b = store.container("bbbb2222").unwrap();
        b.name = "web".into();
        assert!(matches!(
            store.update_container(&b, 1),
            Err(StoreError::NameTaken { .. })
        ));
        assert_eq!(store.container("bbbb2222").unwrap().version, 1);
        assert_eq!(store.containers().unwrap().len(), 2);
    }

    #[test]
    fn resolve_by_id_name_and_prefix() {
        let store = Store::open_in_memory().unwrap();
        store.insert_container(&rec("abcd1111", "web")).unwrap();
        store.insert_container(&rec("abcd2222", "db")).unwrap();
        store.insert_container(&rec("ffff0000", "abcd")).unwrap();

        assert_eq!(store.resolve_container("abcd1111").unwrap().name, "web");
        assert_eq!(store.resolve_container("db").unwrap().id, "abcd2222");
        assert_eq!(store.resolve_container("abcd2").unwrap().id, "abcd2222");
        // An exact name wins over an id prefix.
        assert_eq!(store.resolve_container("abcd").unwrap().id, "ffff0000");
        assert_eq!(store.resolve_container("abcd1").unwrap().id, "abcd1111");
        store.delete_container("ffff0000", None).unwrap();
        match store.resolve_container("abcd") {
            Err(StoreError::Ambiguous { prefix, matches }) => {
                assert_eq!(prefix, "abcd");
                assert_eq!(matches, vec!["abcd1111", "abcd2222"]);
            }
            other => panic!("expected Ambiguous, got {other:?}"),
        }
        // Too short to be a prefix.
        assert!(matches!(
            store.resolve_container("abc"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.resolve_container("zzzz"),
            Err(StoreError::NotFound { .. })
        ));
        // LIKE wildcards mean nothing here.
        assert!(matches!(
            store.resolve_container("abc%"),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn stale_update_conflicts_and_names_current_version() {
        let store = Store::open_in_memory().unwrap();
        store.insert_container(&rec("aaaa1111", "web")).unwrap();
        let mut r = store.container("aaaa1111").unwrap();
        r.state = "running".into();
        r.labels.insert("tier".into(), "front".into());
        r.body = json!({"count": 1});
        r.updated_at = 2_000;
        assert_eq!(store.update_container(&r, 1).unwrap(), 2);
        assert_eq!(store.update_container(&r, 2).unwrap(), 3);

        let got = store.container("aaaa1111").unwrap();
        assert_eq!(got.version, 3);
        assert_eq!(got.state, "running");
        assert_eq!(got.labels["tier"], "front");
        assert_eq!(got.body, json!({"count": 1}));
        assert_eq!(got.created_at, 1_000);
        assert_eq!(got.updated_at, 2_000);

        r.state = "stopped".into();
        let err = store.update_container(&r, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Container aaaa1111 changed: version 1 is stale, current is 3"
        );
        assert!(matches!(
            err,
            StoreError::Conflict {
                base: 1,
                current: 3,
                ..
            }
        ));
        assert_eq!(store.container("aaaa1111").unwrap().state, "running");
        assert!(matches!(
            store.update_container(&rec("nope0000", "x"), 1),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn delete_honours_base_version() {
        let store = Store::open_in_memory().unwrap();
        store.insert_container(&rec("aaaa1111", "web")).unwrap();
        assert!(matches!(
            store.delete_container("aaaa1111", Some(2)),
            Err(StoreError::Conflict {
                base: 2,
                current: 1,
                ..
            })
        ));
        store.delete_container("aaaa1111", Some(1)).unwrap();
        assert!(matches!(
            store.delete_container("aaaa1111", None),
            Err(StoreError::NotFound { .. })
        ));
        // The name is free again.
        store.insert_container(&rec("bbbb2222", "web")).unwrap();
    }

    #[test]
    fn racing_updates_from_one_base_exactly_one_wins() {
        const N: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Store::open(&path)
            .unwrap()
            .insert_container(&rec("aaaa1111", "web"))
            .unwrap();
        let barrier = Arc::new(Barrier::new(N));
        let threads: Vec<_> = (0..N)
            .map(|i| {
                let path = path.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    // Its own Store: as separate processes would.
                    let store = Store::open(&path).unwrap();
                    let mut r = store.container("aaaa1111").unwrap();
                    r.state = format!("writer-{i}");
                    barrier.wait();
                    store.update_container(&r, 1)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|r| r.is_ok()).collect();
        assert_eq!(winners.len(), 1, "{results:?}");
        assert_eq!(*winners[0].as_ref().unwrap(), 2);
        for r in &results {
            match r {
                Ok(_) => {}
                Err(StoreError::Conflict { base, current, .. }) => {
                    assert_eq!((*base, *current), (1, 2));
                }
                Err(e) => panic!("expected Conflict, got {e:?}"),
            }
        }
        let store = Store::open(&path).unwrap();
        let got = store.container("aaaa1111").unwrap();
        assert_eq!(got.version, 2);
        let winner = results.iter().position(|r| r.is_ok()).unwrap();
        assert_eq!(got.state, format!("writer-{winner}"));
    }

    #[test]
    fn read_modify_retry_loses_no_updates() {
        const THREADS: usize = 8;
        const INCREMENTS: u64 = 50;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Store::open(&path)
            .unwrap()
            .insert_container(&rec("aaaa1111", "web"))
            .unwrap();
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&path).unwrap();
                    increment(&store, "aaaa1111", INCREMENTS)
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let got = Store::open(&path).unwrap().container("aaaa1111").unwrap();
        let total = THREADS as u64 * INCREMENTS;
        assert_eq!(got.body["count"], json!(total));
        assert_eq!(got.version, 1 + total);
    }

    /// Read-modify-retry increments of `body.count`; returns the conflicts seen.
    fn increment(store: &Store, id: &str, times: u64) -> u64 {
        let mut conflicts = 0;
        for _ in 0..times {
            loop {
                let mut r = store.container(id).unwrap();
                let count = r.body["count"].as_u64().unwrap();
                r.body["count"] = json!(count + 1);
                match store.update_container(&r, r.version) {
                    Ok(v) => {
                        assert_eq!(v, r.version + 1);
                        break;
                    }
                    Err(StoreError::Conflict { .. }) => conflicts += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
        conflicts
    }

    const CHILD_ENV: &str = "APPLIANCE_STORE_TEST_CHILD_DB";
    const CHILD_INCREMENTS: u64 = 40;

    #[test]
    #[ignore = "run as a child process by read_modify_retry_across_processes"]
    fn child_process_increments() {
        // Run directly (`--ignored`), it has nothing to do.
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let store = Store::open(std::path::Path::new(&path)).unwrap();
        increment(&store, "aaaa1111", CHILD_INCREMENTS);
    }

    #[test]
    fn read_modify_retry_across_processes() {
        const PROCESSES: u64 = 4;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        Store::open(&path)
            .unwrap()
            .insert_container(&rec("aaaa1111", "web"))
            .unwrap();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                std::process::Command::new(&exe)
                    .args([
                        "--exact",
                        "store::containers::tests::child_process_increments",
                        "--ignored",
                        "--nocapture",
                    ])
                    .env(CHILD_ENV, &path)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        // This process races them too.
        let store = Store::open(&path).unwrap();
        increment(&store, "aaaa1111", CHILD_INCREMENTS);
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "child failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("1 passed"), "child ran no test: {stdout}");
        }
        let got = store.container("aaaa1111").unwrap();
        let total = (PROCESSES + 1) * CHILD_INCREMENTS;
        assert_eq!(got.body["count"], json!(total));
        assert_eq!(got.version, 1 + total);
    }
}
