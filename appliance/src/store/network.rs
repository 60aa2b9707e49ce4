//! Network records: scopes (with their subnet as a range of IPv4 numbers,
//! so overlaps are refused inside the write), address leases and published
//! host ports.
//!
//! Owns the `scopes`, `leases` and `host_ports` tables. Leases and host
//! ports are written with their container (see `containers`), in the same
//! transaction as its record, so an address or a port is never handed out
//! twice, even by two appliances sharing the state. Must not interpret a
//! scope's body: its meaning belongs to the network component.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Transaction, params};

use super::containers::{Use, users_of};
use super::{Store, StoreError};

const KIND: &str = "scope";

#[derive(Debug, Clone, PartialEq)]
pub struct ScopeRecord {
    pub name: String,
    /// The subnet, as the numbers of its first and last IPv4 addresses.
    pub first: u32,
    pub last: u32,
    pub body: serde_json::Value,
    pub created_at: i64,
}

/// An address a container wants in a scope: the one it has if any, else
/// `requested`, else the lowest free one of `first..=last` that is not
/// `reserved`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseWant {
    pub scope: String,
    pub requested: Option<u32>,
    pub first: u32,
    pub last: u32,
    pub reserved: Vec<u32>,
}

/// A host port a container publishes on; `address` 0 is every address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostPort {
    pub proto: String,
    pub port: u16,
    pub address: u32,
}

impl HostPort {
    fn text(&self) -> String {
        let ip = if self.address == 0 {
            "0.0.0.0".to_string()
        } else {
            std::net::Ipv4Addr::from(self.address).to_string()
        };
        format!("{ip}:{}/{}", self.port, self.proto)
    }
}

fn scope_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64, i64, String, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn decode(row: (String, i64, i64, String, i64)) -> Result<ScopeRecord, StoreError> {
    let (name, first, last, body, created_at) = row;
    Ok(ScopeRecord {
        name,
        first: u32::try_from(first).unwrap_or(0),
        last: u32::try_from(last).unwrap_or(0),
        body: serde_json::from_str(&body)?,
        created_at,
    })
}

/// Replaces the container's leases with `wants`, keeping the addresses it
/// already has. Returns scope → address.
pub(super) fn write_leases(
    tx: &Transaction<'_>,
    container: &str,
    wants: &[LeaseWant],
) -> Result<BTreeMap<String, u32>, StoreError> {
    let mut keep = Vec::new();
    let mut out = BTreeMap::new();
    for w in wants {
        if tx
            .query_row("SELECT 1 FROM scopes WHERE name = ?1", [&w.scope], |_| {
                Ok(())
            })
            .optional()?
            .is_none()
        {
            return Err(StoreError::NotFound {
                kind: KIND,
                id: w.scope.clone(),
            });
        }
        let held: Option<i64> = tx
            .query_row(
                "SELECT address FROM leases WHERE scope = ?1 AND container = ?2",
                params![w.scope, container],
                |r| r.get(0),
            )
            .optional()?;
        let held = held.and_then(|a| u32::try_from(a).ok());
        let address = match (held, w.requested) {
            (Some(a), None) => a,
            (Some(a), Some(r)) if a == r => a,
            (held, requested) => {
                if held.is_some() {
                    tx.execute(
                        "DELETE FROM leases WHERE scope = ?1 AND container = ?2",
                        params![w.scope, container],
                    )?;
                }
                let a = match requested {
                    Some(r) => take_requested(tx, w, r)?,
                    None => lowest_free(tx, w)?,
                };
                tx.execute(
                    "INSERT INTO leases (scope, address, container) VALUES (?1, ?2, ?3)",
                    params![w.scope, i64::from(a), container],
                )?;
                a
            }
        };
        keep.push(w.scope.clone());
        out.insert(w.scope.clone(), address);
    }
    // Leases of scopes it no longer wants are released.
    let mut stmt = tx.prepare("SELECT scope FROM leases WHERE container = ?1")?;
    let had = stmt
        .query_map([container], |r| r.get::<_, String>(0))?
        .collect::<Result<Vec<_>, _>>()?;
    for scope in had.into_iter().filter(|s| !keep.contains(s)) {
        tx.execute(
            "DELETE FROM leases WHERE scope = ?1 AND container = ?2",
            params![scope, container],
        )?;
    }
    Ok(out)
}

fn holder_of(
    tx: &Transaction<'_>,
    scope: &str,
    address: u32,
) -> Result<Option<String>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT c.name FROM leases l JOIN containers c ON c.id = l.container
             WHERE l.scope = ?1 AND l.address = ?2",
            params![scope, i64::from(address)],
            |r| r.get(0),
        )
        .optional()?)
}

fn take_requested(tx: &Transaction<'_>, w: &LeaseWant, a: u32) -> Result<u32, StoreError> {
    let ip = std::net::Ipv4Addr::from(a);
    if !(w.first..=w.last).contains(&a) || w.reserved.contains(&a) {
        return Err(StoreError::Invalid {
            what: "address",
            reason: format!(
                "{ip} is not an address scope {} can hand out ({} to {}, not its gateway)",
                w.scope,
                std::net::Ipv4Addr::from(w.first),
                std::net::Ipv4Addr::from(w.last)
            ),
        });
    }
    if let Some(by) = holder_of(tx, &w.scope, a)? {
        return Err(StoreError::InUse {
            kind: "address",
            id: format!("{ip} in scope {}", w.scope),
            by: vec![by],
        });
    }
    Ok(a)
}

fn lowest_free(tx: &Transaction<'_>, w: &LeaseWant) -> Result<u32, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT address FROM leases WHERE scope = ?1 AND address BETWEEN ?2 AND ?3 ORDER BY address",
    )?;
    let taken = stmt
        .query_map(
            params![w.scope, i64::from(w.first), i64::from(w.last)],
            |r| r.get::<_, i64>(0),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    let mut taken = taken
        .into_iter()
        .filter_map(|a| u32::try_from(a).ok())
        .peekable();
    let mut a = w.first;
    loop {
        while taken.peek().is_some_and(|t| *t < a) {
            taken.next();
        }
        if taken.peek() != Some(&a) && !w.reserved.contains(&a) {
            return Ok(a);
        }
        if a >= w.last {
            return Err(StoreError::Exhausted {
                scope: w.scope.clone(),
                first: std::net::Ipv4Addr::from(w.first).to_string(),
                last: std::net::Ipv4Addr::from(w.last).to_string(),
            });
        }
        a += 1;
    }
}

/// Replaces the container's published host ports, refusing one another
/// container holds (on that address or on all of them).
pub(super) fn write_host_ports(
    tx: &Transaction<'_>,
    container: &str,
    ports: &[HostPort],
) -> Result<(), StoreError> {
    tx.execute("DELETE FROM host_ports WHERE container = ?1", [container])?;
    for p in ports {
        let holder: Option<String> = tx
            .query_row(
                "SELECT c.name FROM host_ports h JOIN containers c ON c.id = h.container
                 WHERE h.proto = ?1 AND h.port = ?2 AND (h.address = ?3 OR h.address = 0 OR ?3 = 0)
                 LIMIT 1",
                params![p.proto, p.port, i64::from(p.address)],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(by) = holder {
            return Err(StoreError::InUse {
                kind: "host port",
                id: p.text(),
                by: vec![by],
            });
        }
        tx.execute(
            "INSERT INTO host_ports (proto, port, address, container) VALUES (?1, ?2, ?3, ?4)",
            params![p.proto, p.port, i64::from(p.address), container],
        )?;
    }
    Ok(())
}

/// scope → address of the container's leases.
pub(super) fn leases_of(
    tx: &Transaction<'_>,
    container: &str,
) -> Result<BTreeMap<String, u32>, StoreError> {
    let mut stmt = tx.prepare("SELECT scope, address FROM leases WHERE container = ?1")?;
    let rows = stmt
        .query_map([container], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, a)| u32::try_from(a).ok().map(|a| (s, a)))
        .collect())
}

impl Store {
    /// Adds a scope; its subnet may not overlap another scope's.
    pub fn insert_scope(&self, rec: &ScopeRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(&rec.body)?;
        self.write(|tx| {
            if tx
                .query_row("SELECT 1 FROM scopes WHERE name = ?1", [&rec.name], |_| Ok(()))
                .optional()?
                .is_some()
            {
                return Err(StoreError::AlreadyExists {
                    kind: KIND,
                    id: rec.name.clone(),
                });
            }
            let overlapping: Option<String> = tx
                .query_row(
                    "SELECT name FROM scopes WHERE first <= ?2 AND ?1 <= last LIMIT 1",
                    params![i64::from(rec.first), i64::from(rec.last)],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(with) = overlapping {
                return Err(StoreError::Overlap {
                    id: rec.name.clone(),
                    with,
                });
            }
            tx.execute(
                "INSERT INTO scopes (name, first, last, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    rec.name,
                    i64::from(rec.first),
                    i64::from(rec.last),
                    body,
                    rec.created_at
                ],
            )?;
            Ok(())
        })
    }

    pub fn scope(&self, name: &str) -> Result<ScopeRecord, StoreError> {
        self.read(|tx| {
            tx.query_row(
                "SELECT name, first, last, body, created_at FROM scopes WHERE name = ?1",
                [name],
                scope_row,
            )
            .optional()?
            .map(decode)
            .transpose()?
            .ok_or_else(|| StoreError::NotFound {
                kind: KIND,
                id: name.to_string(),
            })
        })
    }

    /// Every scope, oldest first.
    pub fn scopes(&self) -> Result<Vec<ScopeRecord>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT name, first, last, body, created_at FROM scopes ORDER BY created_at, rowid",
            )?;
            let rows = stmt
                .query_map([], scope_row)?
                .collect::<Result<Vec<_>, _>>()?;
            rows.into_iter().map(decode).collect()
        })
    }

    /// Removes a scope no container uses.
    pub fn delete_scope(&self, name: &str) -> Result<ScopeRecord, StoreError> {
        self.write(|tx| {
            let rec = tx
                .query_row(
                    "SELECT name, first, last, body, created_at FROM scopes WHERE name = ?1",
                    [name],
                    scope_row,
                )
                .optional()?
                .map(decode)
                .transpose()?
                .ok_or_else(|| StoreError::NotFound {
                    kind: KIND,
                    id: name.to_string(),
                })?;
            let by = users_of(tx, &Use::Scope(name.to_string()))?;
            if !by.is_empty() {
                return Err(StoreError::InUse {
                    kind: KIND,
                    id: name.to_string(),
                    by,
                });
            }
            tx.execute("DELETE FROM scopes WHERE name = ?1", [name])?;
            Ok(rec)
        })
    }

    /// Every lease: (scope, address, container id).
    pub fn leases(&self) -> Result<Vec<(String, u32, String)>, StoreError> {
        self.read(|tx| {
            let mut stmt =
                tx.prepare("SELECT scope, address, container FROM leases ORDER BY scope, address")?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows
                .into_iter()
                .filter_map(|(s, a, c)| u32::try_from(a).ok().map(|a| (s, a, c)))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::ContainerRecord;
    use super::*;

    fn scope(name: &str, first: u32, last: u32) -> ScopeRecord {
        ScopeRecord {
            name: name.into(),
            first,
            last,
            body: serde_json::json!({}),
            created_at: 1,
        }
    }

    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    fn want(scope: &str, requested: Option<&str>) -> LeaseWant {
        LeaseWant {
            scope: scope.into(),
            requested: requested.map(ip),
            first: ip("10.1.0.1"),
            last: ip("10.1.0.4"),
            reserved: vec![ip("10.1.0.1")],
        }
    }

    fn container(id: &str, leases: Vec<LeaseWant>) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: format!("n{id}"),
            state: "created".into(),
            body: serde_json::json!({}),
            uses: leases.iter().map(|l| Use::Scope(l.scope.clone())).collect(),
            leases: Some(leases),
            ..Default::default()
        }
    }

    #[test]
    fn overlapping_subnets_are_refused_naming_the_other_scope() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_scope(&scope("a", ip("10.1.0.0"), ip("10.1.0.255")))
            .unwrap();
        let e = store
            .insert_scope(&scope("b", ip("10.1.0.128"), ip("10.1.1.255")))
            .unwrap_err();
        assert_eq!(e.to_string(), "Scope b's subnet overlaps scope a's");
        store
            .insert_scope(&scope("c", ip("10.1.1.0"), ip("10.1.1.255")))
            .unwrap();
    }

    #[test]
    fn leases_are_unique_kept_released_and_exhaust_naming_the_scope() {
        let store = Store::open_in_memory().unwrap();
        store
            .insert_scope(&scope("net", ip("10.1.0.0"), ip("10.1.0.7")))
            .unwrap();
        store
            .insert_container(&container("c1", vec![want("net", None)]))
            .unwrap();
        store
            .insert_container(&container("c2", vec![want("net", Some("10.1.0.4"))]))
            .unwrap();
        store
            .insert_container(&container("c3", vec![want("net", None)]))
            .unwrap();
        let addr = |id: &str| store.container(id).unwrap().addresses["net"];
        assert_eq!(addr("c1"), ip("10.1.0.2"), "the gateway is reserved");
        assert_eq!(addr("c2"), ip("10.1.0.4"));
        assert_eq!(addr("c3"), ip("10.1.0.3"));
        // An update keeps the address.
        let c1 = store.container("c1").unwrap();
        let mut c1w = container("c1", vec![want("net", None)]);
        c1w.version = c1.version;
        store.update_container(&c1w, 1).unwrap();
        assert_eq!(addr("c1"), ip("10.1.0.2"));
        // The range is full.
        let e = store
            .insert_container(&container("c4", vec![want("net", None)]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Scope net has no free address in its range 10.1.0.1 to 10.1.0.4"
        );
        assert!(
            store.container("c4").is_err(),
            "a refused insert wrote nothing"
        );
        // A taken address is refused naming its holder.
        let e = store
            .insert_container(&container("c5", vec![want("net", Some("10.1.0.4"))]))
            .unwrap_err();
        assert!(e.to_string().contains("in use by container nc2"), "{e}");
        // Removing a container releases its lease; leaving a scope too.
        store.delete_container("c2", None).unwrap();
        store
            .insert_container(&container("c4", vec![want("net", None)]))
            .unwrap();
        assert_eq!(addr("c4"), ip("10.1.0.4"));
        let mut left = container("c4", vec![]);
        left.uses.clear();
        store.update_container(&left, 1).unwrap();
        assert!(store.container("c4").unwrap().addresses.is_empty());
        assert_eq!(store.leases().unwrap().len(), 2);
        // A scope in use is not removed.
        let e = store.delete_scope("net").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("Scope net is in use by container nc1"),
            "{e}"
        );
    }

    #[test]
    fn a_host_port_is_held_by_one_container() {
        let store = Store::open_in_memory().unwrap();
        let port = |address: &str| HostPort {
            proto: "tcp".into(),
            port: 8080,
            address: if address.is_empty() { 0 } else { ip(address) },
        };
        let mut a = container("a", vec![]);
        a.host_ports = Some(vec![port("127.0.0.1")]);
        store.insert_container(&a).unwrap();
        let mut b = container("b", vec![]);
        b.host_ports = Some(vec![port("")]);
        let e = store.insert_container(&b).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Host port 0.0.0.0:8080/tcp is in use by container na"
        );
        b.host_ports = Some(vec![HostPort {
            proto: "udp".into(),
            ..port("")
        }]);
        store.insert_container(&b).unwrap();
    }
}
