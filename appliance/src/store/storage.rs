//! Storage records: image stores, images and their names, volume stores and
//! volumes.
//!
//! Owns the `image_stores`, `images`, `image_names`, `volume_stores` and
//! `volumes` tables. Deletes check `container_uses` in the same
//! transaction, so an image or volume cannot disappear from under a
//! container that is being created at the same moment (from any process).
//! Must not interpret `body`: it is the storage component's JSON.

use std::path::PathBuf;

use rusqlite::{OptionalExtension, Transaction, params};

use super::containers::{Use, users_of};
use super::{Store, StoreError, now_ms};

/// An image store or a volume store: a named directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDir {
    pub name: String,
    pub path: PathBuf,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    /// "sha256:<config digest>".
    pub id: String,
    pub store: String,
    /// Its names (normalised references), sorted.
    pub names: Vec<String>,
    pub body: serde_json::Value,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRecord {
    pub name: String,
    pub store: String,
    pub body: serde_json::Value,
    pub created_at: i64,
}

/// Which kind of store a call is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Image,
    Volume,
}

impl StoreKind {
    fn table(self) -> &'static str {
        match self {
            StoreKind::Image => "image_stores",
            StoreKind::Volume => "volume_stores",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            StoreKind::Image => "image store",
            StoreKind::Volume => "volume store",
        }
    }
}

fn names_of(tx: &Transaction<'_>, id: &str) -> Result<Vec<String>, StoreError> {
    let mut stmt = tx.prepare("SELECT name FROM image_names WHERE image = ?1 ORDER BY name")?;
    let names = stmt
        .query_map([id], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

fn image_by_id(tx: &Transaction<'_>, id: &str) -> Result<Option<ImageRecord>, StoreError> {
    let row = tx
        .query_row(
            "SELECT store, body, created_at FROM images WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((store, body, created_at)) = row else {
        return Ok(None);
    };
    Ok(Some(ImageRecord {
        id: id.to_string(),
        store,
        names: names_of(tx, id)?,
        body: serde_json::from_str(&body)?,
        created_at,
    }))
}

fn check_store(tx: &Transaction<'_>, kind: StoreKind, name: &str) -> Result<(), StoreError> {
    let sql = format!("SELECT 1 FROM {} WHERE name = ?1", kind.table());
    match tx.query_row(&sql, [name], |_| Ok(())).optional()? {
        Some(()) => Ok(()),
        None => Err(StoreError::NotFound {
            kind: kind.kind(),
            id: name.to_string(),
        }),
    }
}

impl Store {
    /// Adds a store, or finds it unchanged if it already exists with this
    /// path. A name already used for another path is `AlreadyExists`.
    pub fn add_store_dir(&self, kind: StoreKind, name: &str, path: &str) -> Result<(), StoreError> {
        if name.is_empty() {
            return Err(StoreError::Invalid {
                what: "store name",
                reason: "it is empty".into(),
            });
        }
        self.write(|tx| {
            let existing: Option<String> = tx
                .query_row(
                    &format!("SELECT path FROM {} WHERE name = ?1", kind.table()),
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            match existing {
                Some(p) if p == path => Ok(()),
                Some(_) => Err(StoreError::AlreadyExists {
                    kind: kind.kind(),
                    id: name.to_string(),
                }),
                None => {
                    let holder: Option<String> = tx
                        .query_row(
                            &format!("SELECT name FROM {} WHERE path = ?1", kind.table()),
                            [path],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let Some(by) = holder {
                        return Err(StoreError::PathTaken {
                            kind: kind.kind(),
                            path: path.to_string(),
                            by,
                        });
                    }
                    tx.execute(
                        &format!(
                            "INSERT INTO {} (name, path, created_at) VALUES (?1, ?2, ?3)",
                            kind.table()
                        ),
                        params![name, path, now_ms()],
                    )?;
                    Ok(())
                }
            }
        })
    }

    pub fn store_dirs(&self, kind: StoreKind) -> Result<Vec<StoreDir>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(&format!(
                "SELECT name, path, created_at FROM {} ORDER BY created_at, name",
                kind.table()
            ))?;
            let dirs = stmt
                .query_map([], |r| {
                    Ok(StoreDir {
                        name: r.get(0)?,
                        path: PathBuf::from(r.get::<_, String>(1)?),
                        created_at: r.get(2)?,
                    })
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(dirs)
        })
    }

    /// Records a ready image under `names`. Names already given to another
    /// image move to this one, as a tag does. An image that already exists
    /// keeps its record and gains the names.
    pub fn put_image(&self, rec: &ImageRecord, names: &[String]) -> Result<(), StoreError> {
        let body = serde_json::to_string(&rec.body)?;
        self.write(|tx| {
            check_store(tx, StoreKind::Image, &rec.store)?;
            tx.execute(
                "INSERT OR IGNORE INTO images (id, store, body, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![rec.id, rec.store, body, rec.created_at],
            )?;
            for n in names {
                tx.execute(
                    "INSERT INTO image_names (name, image) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET image = excluded.image",
                    params![n, rec.id],
                )?;
            }
            Ok(())
        })
    }

    /// Replaces an image's body (its record is the storage component's).
    pub fn update_image_body(&self, id: &str, body: &serde_json::Value) -> Result<(), StoreError> {
        let body = serde_json::to_string(body)?;
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE images SET body = ?2 WHERE id = ?1",
                params![id, body],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "image",
                    id: id.to_string(),
                });
            }
            Ok(())
        })
    }

    pub fn image(&self, id: &str) -> Result<ImageRecord, StoreError> {
        self.read(|tx| {
            image_by_id(tx, id)?.ok_or_else(|| StoreError::NotFound {
                kind: "image",
                id: id.to_string(),
            })
        })
    }

    /// The image with this id, else this name (exact: the caller
    /// normalises references), else the one image whose id (with or
    /// without "sha256:") starts with `query` (at least 4 characters).
    pub fn resolve_image(&self, query: &str, name: &str) -> Result<ImageRecord, StoreError> {
        self.read(|tx| {
            if let Some(rec) = image_by_id(tx, query)? {
                return Ok(rec);
            }
            let by_name: Option<String> = tx
                .query_row(
                    "SELECT image FROM image_names WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            if let Some(id) = by_name
                && let Some(rec) = image_by_id(tx, &id)?
            {
                return Ok(rec);
            }
            let hex = query.strip_prefix("sha256:").unwrap_or(query);
            let not_found = || StoreError::NotFound {
                kind: "image",
                id: query.to_string(),
            };
            if hex.len() < super::MIN_PREFIX || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(not_found());
            }
            let prefix = format!("sha256:{hex}");
            let mut stmt = tx.prepare(
                "SELECT id FROM images WHERE substr(id, 1, length(?1)) = ?1 ORDER BY id",
            )?;
            let ids = stmt
                .query_map([&prefix], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            match ids.as_slice() {
                [] => Err(not_found()),
                [id] => image_by_id(tx, id)?.ok_or_else(not_found),
                _ => Err(StoreError::Ambiguous {
                    prefix: query.to_string(),
                    matches: ids,
                }),
            }
        })
    }

    /// Every image, oldest first.
    pub fn images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare("SELECT id FROM images ORDER BY created_at, id")?;
            let ids = stmt
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(rec) = image_by_id(tx, &id)? {
                    out.push(rec);
                }
            }
            Ok(out)
        })
    }

    /// Gives image `id` the name `name` (moving it from another image).
    pub fn tag_image(&self, id: &str, name: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            if image_by_id(tx, id)?.is_none() {
                return Err(StoreError::NotFound {
                    kind: "image",
                    id: id.to_string(),
                });
            }
            tx.execute(
                "INSERT INTO image_names (name, image) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET image = excluded.image",
                params![name, id],
            )?;
            Ok(())
        })
    }

    /// Removes one name; the image stays.
    pub fn untag_image(&self, name: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM image_names WHERE name = ?1", [name])?;
            if n == 0 {
                return Err(StoreError::NotFound {
                    kind: "image name",
                    id: name.to_string(),
                });
            }
            Ok(())
        })
    }

    /// Deletes the image and its names, unless a container uses it
    /// (`InUse`, naming the containers). Returns what was deleted.
    pub fn delete_image(&self, id: &str) -> Result<ImageRecord, StoreError> {
        self.write(|tx| {
            let rec = image_by_id(tx, id)?.ok_or_else(|| StoreError::NotFound {
                kind: "image",
                id: id.to_string(),
            })?;
            let by = users_of(tx, &Use::Image(id.to_string()))?;
            if !by.is_empty() {
                return Err(StoreError::InUse {
                    kind: "image",
                    id: rec.names.first().cloned().unwrap_or_else(|| id.to_string()),
                    by,
                });
            }
            tx.execute("DELETE FROM images WHERE id = ?1", [id])?;
            Ok(rec)
        })
    }

    pub fn insert_volume(&self, rec: &VolumeRecord) -> Result<(), StoreError> {
        let body = serde_json::to_string(&rec.body)?;
        self.write(|tx| {
            check_store(tx, StoreKind::Volume, &rec.store)?;
            let exists = tx
                .query_row("SELECT 1 FROM volumes WHERE name = ?1", [&rec.name], |_| {
                    Ok(())
                })
                .optional()?
                .is_some();
            if exists {
                return Err(StoreError::AlreadyExists {
                    kind: "volume",
                    id: rec.name.clone(),
                });
            }
            tx.execute(
                "INSERT INTO volumes (name, store, body, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![rec.name, rec.store, body, rec.created_at],
            )?;
            Ok(())
        })
    }

    pub fn volume(&self, name: &str) -> Result<VolumeRecord, StoreError> {
        self.read(|tx| volume_by_name(tx, name))
    }

    /// Every volume, oldest first.
    pub fn volumes(&self) -> Result<Vec<VolumeRecord>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare(
                "SELECT name, store, body, created_at FROM volumes ORDER BY created_at, name",
            )?;
            let raws = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter()
                .map(|(name, store, body, created_at)| {
                    Ok(VolumeRecord {
                        name,
                        store,
                        body: serde_json::from_str(&body)?,
                        created_at,
                    })
                })
                .collect()
        })
    }

    /// Deletes the volume's record unless a container uses it (`InUse`).
    pub fn delete_volume(&self, name: &str) -> Result<VolumeRecord, StoreError> {
        self.write(|tx| {
            let rec = volume_by_name(tx, name)?;
            let by = users_of(tx, &Use::Volume(name.to_string()))?;
            if !by.is_empty() {
                return Err(StoreError::InUse {
                    kind: "volume",
                    id: name.to_string(),
                    by,
                });
            }
            tx.execute("DELETE FROM volumes WHERE name = ?1", [name])?;
            Ok(rec)
        })
    }
}

fn volume_by_name(tx: &Transaction<'_>, name: &str) -> Result<VolumeRecord, StoreError> {
    let row = tx
        .query_row(
            "SELECT store, body, created_at FROM volumes WHERE name = ?1",
            [name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            },
        )
        .optional()?;
    let (store, body, created_at) = row.ok_or_else(|| StoreError::NotFound {
        kind: "volume",
        id: name.to_string(),
    })?;
    Ok(VolumeRecord {
        name: name.to_string(),
        store,
        body: serde_json::from_str(&body)?,
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ContainerRecord;
    use serde_json::json;

    fn store() -> Store {
        let s = Store::open_in_memory().unwrap();
        s.add_store_dir(StoreKind::Image, "default", "/var/images")
            .unwrap();
        s.add_store_dir(StoreKind::Volume, "default", "/var/volumes")
            .unwrap();
        s
    }

    fn image(id: &str) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            store: "default".into(),
            names: vec![],
            body: json!({"size": 1}),
            created_at: 5,
        }
    }

    fn container(id: &str, name: &str, uses: Vec<Use>) -> ContainerRecord {
        ContainerRecord {
            id: id.into(),
            name: name.into(),
            version: 0,
            state: "created".into(),
            labels: Default::default(),
            body: json!({}),
            created_at: 1,
            updated_at: 1,
            uses,
            ..Default::default()
        }
    }

    #[test]
    fn stores_are_named_directories() {
        let s = store();
        // The same again is fine; another path under the name is not.
        s.add_store_dir(StoreKind::Image, "default", "/var/images")
            .unwrap();
        let e = s
            .add_store_dir(StoreKind::Image, "default", "/elsewhere")
            .unwrap_err();
        assert_eq!(e.to_string(), "Image store default already exists");
        s.add_store_dir(StoreKind::Image, "fast", "/ssd/images")
            .unwrap();
        let names: Vec<_> = s
            .store_dirs(StoreKind::Image)
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["default", "fast"]);
        // One directory is one store: another name for it is refused.
        let e = s
            .add_store_dir(StoreKind::Image, "quick", "/ssd/images")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Image store fast already has the directory /ssd/images"
        );
        assert!(matches!(e, StoreError::PathTaken { ref by, .. } if by == "fast"));
        assert_eq!(s.store_dirs(StoreKind::Volume).unwrap().len(), 1);
        let e = s
            .put_image(
                &ImageRecord {
                    store: "nope".into(),
                    ..image("sha256:aa")
                },
                &[],
            )
            .unwrap_err();
        assert_eq!(e.to_string(), "Image store nope not found");
    }

    #[test]
    fn names_move_between_images_and_resolve() {
        let s = store();
        s.put_image(&image("sha256:abcd1111"), &["r/a:1".into()])
            .unwrap();
        s.put_image(&image("sha256:abcd2222"), &["r/a:2".into()])
            .unwrap();
        assert_eq!(s.resolve_image("x", "r/a:1").unwrap().id, "sha256:abcd1111");
        assert_eq!(s.resolve_image("abcd2", "").unwrap().id, "sha256:abcd2222");
        assert!(matches!(
            s.resolve_image("abcd", ""),
            Err(StoreError::Ambiguous { .. })
        ));
        assert!(matches!(
            s.resolve_image("zz", "r/none:1"),
            Err(StoreError::NotFound { kind: "image", .. })
        ));
        s.tag_image("sha256:abcd2222", "r/a:1").unwrap();
        assert_eq!(
            s.image("sha256:abcd1111").unwrap().names,
            Vec::<String>::new()
        );
        assert_eq!(
            s.image("sha256:abcd2222").unwrap().names,
            ["r/a:1", "r/a:2"]
        );
        s.untag_image("r/a:2").unwrap();
        assert_eq!(
            s.untag_image("r/a:2").unwrap_err().to_string(),
            "Image name r/a:2 not found"
        );
    }

    #[test]
    fn an_image_in_use_cannot_be_deleted_and_users_are_named() {
        let s = store();
        s.put_image(&image("sha256:abcd1111"), &["r/a:1".into()])
            .unwrap();
        s.insert_container(&container(
            "c0ffee00c0ffee00",
            "web",
            vec![Use::Image("sha256:abcd1111".into())],
        ))
        .unwrap();
        let e = s.delete_image("sha256:abcd1111").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Image r/a:1 is in use by container web (c0ffee00c0ff)"
        );
        assert_eq!(s.image("sha256:abcd1111").unwrap().names, ["r/a:1"]);
        s.delete_container("c0ffee00c0ffee00", None).unwrap();
        s.delete_image("sha256:abcd1111").unwrap();
        assert!(s.images().unwrap().is_empty());
        assert!(s.resolve_image("x", "r/a:1").is_err());
    }

    #[test]
    fn a_container_cannot_use_what_does_not_exist() {
        let s = store();
        let e = s
            .insert_container(&container("c1", "web", vec![Use::Volume("data".into())]))
            .unwrap_err();
        assert_eq!(e.to_string(), "Volume data not found");
        assert!(s.containers().unwrap().is_empty());
    }

    #[test]
    fn volumes_in_use_stay() {
        let s = store();
        let v = VolumeRecord {
            name: "data".into(),
            store: "default".into(),
            body: json!({"size": 5}),
            created_at: 1,
        };
        s.insert_volume(&v).unwrap();
        assert_eq!(
            s.insert_volume(&v).unwrap_err().to_string(),
            "Volume data already exists"
        );
        s.insert_container(&container("c1", "db", vec![Use::Volume("data".into())]))
            .unwrap();
        assert_eq!(
            s.delete_volume("data").unwrap_err().to_string(),
            "Volume data is in use by container db (c1)"
        );
        // An update that drops the use frees it.
        let mut c = container("c1", "db", vec![]);
        c.version = 1;
        s.update_container(&c, 1).unwrap();
        assert_eq!(s.delete_volume("data").unwrap().name, "data");
        assert!(s.volumes().unwrap().is_empty());
    }
}
