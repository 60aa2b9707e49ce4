//! The clients' key/value store, with compare-and-set on versions.
//!
//! Owns the `kv` table and the `kv` revision counter. A key's version is a
//! store-wide revision taken at each write: it increases with every write and
//! is never reused, even after the key is deleted and created again, so a
//! stale `expected` version can never match a newer incarnation of the key.
//! Versions of one key are increasing but not consecutive. Must not give
//! keys any meaning.

use rusqlite::{OptionalExtension, Transaction, params};

use super::{Store, StoreError, version_from_db, version_to_db};

const KIND: &str = "key";

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::Invalid {
            what: "key",
            reason: "it is empty".into(),
        });
    }
    Ok(())
}

/// The key's version, 0 if it does not exist.
fn version_of(tx: &Transaction<'_>, key: &str) -> Result<u64, StoreError> {
    Ok(tx
        .query_row("SELECT version FROM kv WHERE key = ?1", [key], |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .map_or(0, version_from_db))
}

fn check_expected(key: &str, expected: Option<u64>, current: u64) -> Result<(), StoreError> {
    match expected {
        Some(base) if base != current => Err(StoreError::Conflict {
            kind: KIND,
            id: key.to_string(),
            base,
            current,
        }),
        _ => Ok(()),
    }
}

impl Store {
    /// The value and version of `key`, if it exists.
    pub fn kv_get(&self, key: &str) -> Result<Option<(String, u64)>, StoreError> {
        self.read(|tx| {
            Ok(tx
                .query_row("SELECT value, version FROM kv WHERE key = ?1", [key], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()?
                .map(|(v, ver)| (v, version_from_db(ver))))
        })
    }

    /// Writes `key`. With `expected`, only if its version is that one
    /// (`Some(0)`: only if it does not exist); otherwise `Conflict`.
    /// Returns the new version.
    pub fn kv_put(&self, key: &str, value: &str, expected: Option<u64>) -> Result<u64, StoreError> {
        check_key(key)?;
        self.write(|tx| {
            check_expected(key, expected, version_of(tx, key)?)?;
            let revision: i64 = tx.query_row(
                "UPDATE counters SET value = value + 1 WHERE name = 'kv' RETURNING value",
                [],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO kv (key, value, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version",
                params![key, value, revision],
            )?;
            Ok(version_from_db(revision))
        })
    }

    /// Deletes `key`; with `expected`, only if its version is that one.
    /// A missing key is `NotFound` without `expected`, and `Conflict`
    /// (current 0) with it.
    pub fn kv_delete(&self, key: &str, expected: Option<u64>) -> Result<(), StoreError> {
        self.write(|tx| {
            let current = version_of(tx, key)?;
            check_expected(key, expected, current)?;
            if current == 0 {
                return Err(StoreError::NotFound {
                    kind: KIND,
                    id: key.to_string(),
                });
            }
            tx.execute(
                "DELETE FROM kv WHERE key = ?1 AND version = ?2",
                params![key, version_to_db(current)],
            )?;
            Ok(())
        })
    }

    /// `(key, value, version)` of every key starting with `prefix`, by key.
    pub fn kv_list(&self, prefix: &str) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT key, value, version FROM kv
                 WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )?;
            let rows = stmt
                .query_map([prefix], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        version_from_db(r.get::<_, i64>(2)?),
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_compare_and_set() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.kv_get("a").unwrap(), None);

        let v1 = store.kv_put("a", "one", Some(0)).unwrap();
        assert!(v1 > 0);
        assert_eq!(store.kv_get("a").unwrap(), Some(("one".into(), v1)));

        // Must-not-exist fails once it exists.
        match store.kv_put("a", "again", Some(0)) {
            Err(StoreError::Conflict {
                kind,
                id,
                base,
                current,
            }) => {
                assert_eq!((kind, id.as_str(), base, current), ("key", "a", 0, v1));
            }
            other => panic!("expected Conflict, got {other:?}"),
        }

        let v2 = store.kv_put("a", "two", Some(v1)).unwrap();
        assert!(v2 > v1);
        // A stale version fails and writes nothing.
        assert!(matches!(
            store.kv_put("a", "stale", Some(v1)),
            Err(StoreError::Conflict { current, .. }) if current == v2
        ));
        assert_eq!(store.kv_get("a").unwrap(), Some(("two".into(), v2)));

        // Without expectation: unconditional.
        let v3 = store.kv_put("a", "three", None).unwrap();
        assert!(v3 > v2);
        // Expecting a version of a key that does not exist.
        assert!(matches!(
            store.kv_put("b", "x", Some(5)),
            Err(StoreError::Conflict { current: 0, .. })
        ));
        assert!(matches!(
            store.kv_put("", "x", None),
            Err(StoreError::Invalid { .. })
        ));
    }

    #[test]
    fn delete_and_versions_never_reused() {
        let store = Store::open_in_memory().unwrap();
        let v1 = store.kv_put("k", "one", None).unwrap();
        assert!(matches!(
            store.kv_delete("k", Some(v1 + 100)),
            Err(StoreError::Conflict { .. })
        ));
        store.kv_delete("k", Some(v1)).unwrap();
        assert_eq!(store.kv_get("k").unwrap(), None);
        assert!(matches!(
            store.kv_delete("k", None),
            Err(StoreError::NotFound { kind: "key", .. })
        ));
        assert!(matches!(
            store.kv_delete("k", Some(v1)),
            Err(StoreError::Conflict { current: 0, .. })
        ));
        // Re-created: a holder of the old version cannot overwrite it.
        let v2 = store.kv_put("k", "new", Some(0)).unwrap();
        assert_ne!(v2, v1);
        assert!(matches!(
            store.kv_put("k", "old writer", Some(v1)),
            Err(StoreError::Conflict { .. })
        ));
    }

    #[test]
    fn list_by_prefix() {
        let store = Store::open_in_memory().unwrap();
        store.kv_put("app/b", "2", None).unwrap();
        store.kv_put("app/a", "1", None).unwrap();
        store.kv_put("apple", "x", None).unwrap();
        store.kv_put("other/a", "y", None).unwrap();
        store.kv_put("app%", "pct", None).unwrap();
        let keys: Vec<_> = store
            .kv_list("app/")
            .unwrap()
            .into_iter()
            .map(|(k, v, _)| (k, v))
            .collect();
        assert_eq!(
            keys,
            [
                ("app/a".to_string(), "1".to_string()),
                ("app/b".to_string(), "2".to_string())
            ]
        );
        assert_eq!(store.kv_list("").unwrap().len(), 5);
        assert_eq!(store.kv_list("app%").unwrap().len(), 1);
        assert!(store.kv_list("zzz").unwrap().is_empty());
    }
}
