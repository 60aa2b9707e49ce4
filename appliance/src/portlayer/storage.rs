//! The storage component: image stores and images, volume stores and
//! volumes ("logic - storage.Join" of the seeds).
//!
//! Owns turning fetched images into images a container can use (a base disk
//! per image, built once), their names, and volumes (a disk each). An image
//! or volume is recorded only once its disk is complete, so a failed pull or
//! import leaves nothing listed (the blobs a failed pull did fetch stay a
//! day, for a retry to reuse, then a sweep at start-up or after an `rmi`
//! removes them); deleting one that a container uses is
//! refused, naming the container (the check runs in the store's transaction,
//! see `store::storage`). Must not start VMs or know about QEMU: the
//! execution component joins volumes to containers and the backend attaches
//! the disks this component names.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::events::Events;
use super::filter::{Filter, Filterable};
use super::validate::{self, Invalid};
use crate::storage::model::{Image, ImageConfig, Layer, StoreUsage, Volume};
use crate::storage::oci::{self, BlobStore, FetchedImage};
use crate::storage::rootfs::{self, LayerFile, RootfsError};
use crate::store::{
    ImageRecord, Store, StoreDir, StoreError, StoreKind, Use, VolumeRecord, now_ms,
};

/// The store every appliance has, in its state directory.
pub const DEFAULT_STORE: &str = "default";

/// Fields an image filter may name.
pub const IMAGE_FIELDS: &[&str] = &["id", "name", "store", "created_at"];
/// Fields a volume filter may name.
pub const VOLUME_FIELDS: &[&str] = &["name", "store", "fstype", "size_mib"];

/// How long a blob that no image needs is kept (a failed pull's layers,
/// for a retry to reuse) before it is removed.
const ORPHAN_AGE: Duration = Duration::from_secs(24 * 3600);

/// The largest volume: 16 TiB.
const MAX_VOLUME_MIB: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{element}: {message}")]
    Invalid { element: String, message: String },
    #[error("Fetching {reference}")]
    Fetch {
        reference: String,
        #[source]
        source: Box<oci::OciError>,
    },
    #[error("Image {image}: building its disk")]
    Build {
        image: String,
        #[source]
        source: Box<RootfsError>,
    },
    #[error("Store {store} is out of space (at {path}); free some or use another store")]
    NoSpace {
        store: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "Volume store {store} has {free_mib} MiB free: a volume of {asked_mib} MiB does not fit; ask for less or use another store"
    )]
    TooBig {
        store: String,
        asked_mib: u64,
        free_mib: u64,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Invalid filter")]
    Filter(#[from] super::filter::FilterError),
    /// What a client sent as an image archive is not one, or not a good
    /// one: not a tar, no manifest, an entry that would escape, a blob that
    /// does not match its digest.
    #[error("The archive is not an image archive that can be imported")]
    BadArchive {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<Invalid> for StorageError {
    fn from(e: Invalid) -> Self {
        StorageError::Invalid {
            element: e.field,
            message: e.message,
        }
    }
}

impl StorageError {
    fn invalid(element: &str, message: impl Into<String>) -> Self {
        StorageError::Invalid {
            element: element.into(),
            message: message.into(),
        }
    }

    /// The id of the element at fault, for error responses.
    pub fn element(&self) -> String {
        match self {
            StorageError::Store(
                StoreError::NotFound { id, .. }
                | StoreError::AlreadyExists { id, .. }
                | StoreError::InUse { id, .. },
            ) => id.clone(),
            StorageError::Store(StoreError::Ambiguous { prefix, .. }) => prefix.clone(),
            StorageError::Store(StoreError::PathTaken { by, .. }) => by.clone(),
            StorageError::Invalid { element, .. } => element.clone(),
            StorageError::Fetch { reference, .. } => reference.clone(),
            StorageError::Build { image, .. } => image.clone(),
            StorageError::NoSpace { store, .. } | StorageError::TooBig { store, .. } => {
                store.clone()
            }
            StorageError::BadArchive { .. } => "archive".into(),
            _ => String::new(),
        }
    }
}

/// Whether an error chain says the disk is full.
fn chain_says_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        {
            return true;
        }
        if e.to_string().contains("No space left on device") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// A failed disk build: out of space in the store, or a bad build of
/// `element` (an image or a volume).
fn build_error(dir: &StoreDir, element: &str, source: RootfsError) -> StorageError {
    if chain_says_no_space(&source) {
        StorageError::NoSpace {
            store: dir.name.clone(),
            path: dir.path.clone(),
            source: Box::new(source),
        }
    } else {
        StorageError::Build {
            image: element.to_string(),
            source: Box::new(source),
        }
    }
}

/// What a pull reports as it goes.
#[derive(serde::Serialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum PullEvent {
    /// The manifest is known: these layers will be fetched.
    Resolved {
        reference: String,
        manifest_digest: String,
        layers: Vec<Layer>,
    },
    /// Bytes of one layer so far.
    Layer {
        digest: String,
        done: u64,
        total: u64,
    },
    /// One layer is in the store (`cached`: it already was).
    LayerDone { digest: String, cached: bool },
    /// Applying the layers into the image's disk.
    Building { image: String },
}

/// How to pull.
#[derive(serde::Deserialize, serde::Serialize, Clone, Debug, Default, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PullSpec {
    /// "busybox", "registry:5000/team/app:v1", "...@sha256:...".
    pub reference: String,
    /// The image store to put it in; "default" if empty.
    pub store: String,
    /// Allow plain HTTP to this registry even though it is not on a
    /// loopback address.
    pub insecure: bool,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// What a new volume is.
#[derive(serde::Deserialize, serde::Serialize, Clone, Debug, Default, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct VolumeSpec {
    /// Unique: letters, digits, `_`, `.` and `-`, starting with a letter or
    /// digit; a random one if empty.
    #[schema(pattern = "^([a-zA-Z0-9][a-zA-Z0-9_.-]*)?$", max_length = 128)]
    pub name: String,
    /// The volume store to put it in; "default" if empty.
    pub store: String,
    /// Size of its filesystem, MiB; 1024 if 0.
    pub size_mib: u64,
    pub labels: BTreeMap<String, String>,
}

impl Filterable for Image {
    fn field(&self, name: &str) -> Option<String> {
        match name {
            "id" => Some(self.id.clone()),
            "name" => self.names.first().cloned(),
            "store" => Some(self.store.clone()),
            "created_at" => Some(self.created_at.to_string()),
            _ => None,
        }
    }

    fn values(&self, name: &str) -> Vec<String> {
        match name {
            "name" => self.names.clone(),
            _ => self.field(name).into_iter().collect(),
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.config.labels.get(key).map(String::as_str)
    }
}

impl Filterable for Volume {
    fn field(&self, name: &str) -> Option<String> {
        match name {
            "name" => Some(self.name.clone()),
            "store" => Some(self.store.clone()),
            "fstype" => Some(self.fstype.clone()),
            "size_mib" => Some(self.size_mib.to_string()),
            _ => None,
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, h)| h)
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// Bytes allocated under `dir`, not following symlinks.
fn tree_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            total += allocated(&p);
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    total
}

fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

fn config_of(c: &oci::ImageConfig) -> ImageConfig {
    ImageConfig {
        env: c.env.clone(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        working_dir: c.working_dir.clone(),
        user: c.user.clone(),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone(),
        architecture: c.architecture.clone(),
        os: c.os.clone(),
    }
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n.div_ceil(2)];
    if getrandom::fill(&mut b).is_err() {
        let t = now_ms().to_le_bytes();
        for (i, x) in b.iter_mut().enumerate() {
            *x = t[i % 8] ^ (i as u8);
        }
    }
    let s: String = b.iter().map(|x| format!("{x:02x}")).collect();
    s[..n].to_string()
}

pub struct Storage {
    store: Arc<Store>,
    events: Arc<Events>,
}

impl Storage {
    /// The storage component over `store`, with the default image and
    /// volume stores under `state_dir` (made if missing).
    pub fn open(
        store: Arc<Store>,
        events: Arc<Events>,
        state_dir: &Path,
    ) -> Result<Arc<Self>, StorageError> {
        let s = Arc::new(Self { store, events });
        s.add_store(StoreKind::Image, DEFAULT_STORE, &state_dir.join("images"))?;
        s.add_store(StoreKind::Volume, DEFAULT_STORE, &state_dir.join("volumes"))?;
        Ok(s)
    }

    /// Adds an image or volume store: a directory, made if missing. A path
    /// that is there and is not a directory (or runs through a file) is the
    /// caller's mistake, refused naming `path`.
    pub fn add_store(&self, kind: StoreKind, name: &str, path: &Path) -> Result<(), StorageError> {
        validate::store_name("name", name)?;
        validate::store_path("path", &path.to_string_lossy())?;
        let not_a_dir = |why: &str| {
            StorageError::invalid(
                "path",
                format!(
                    "{} is not a directory{why}",
                    validate::shown(&path.to_string_lossy())
                ),
            )
        };
        if std::fs::metadata(path).is_ok_and(|m| !m.is_dir()) {
            return Err(not_a_dir(""));
        }
        std::fs::create_dir_all(path).map_err(|source| {
            if matches!(source.raw_os_error(), Some(libc::ENOTDIR | libc::EEXIST)) {
                not_a_dir(": a part of it is a file")
            } else {
                StorageError::Io {
                    what: "Creating store directory",
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.store
            .add_store_dir(kind, name, &path.to_string_lossy())?;
        Ok(())
    }

    fn store_dir(&self, kind: StoreKind, name: &str) -> Result<StoreDir, StorageError> {
        let name = if name.is_empty() { DEFAULT_STORE } else { name };
        self.store
            .store_dirs(kind)?
            .into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| {
                StoreError::NotFound {
                    kind: match kind {
                        StoreKind::Image => "image store",
                        StoreKind::Volume => "volume store",
                    },
                    id: name.to_string(),
                }
                .into()
            })
    }

    /// The stores of one kind, with what they hold.
    pub fn stores(&self, kind: StoreKind) -> Result<Vec<StoreUsage>, StorageError> {
        let items: Vec<String> = match kind {
            StoreKind::Image => self.store.images()?.into_iter().map(|r| r.store).collect(),
            StoreKind::Volume => self.store.volumes()?.into_iter().map(|r| r.store).collect(),
        };
        Ok(self
            .store
            .store_dirs(kind)?
            .into_iter()
            .map(|d| StoreUsage {
                items: items.iter().filter(|s| **s == d.name).count() as u64,
                used_bytes: tree_size(&d.path),
                free_bytes: free_bytes(&d.path),
                path: d.path.to_string_lossy().into_owned(),
                name: d.name,
            })
            .collect())
    }

    // ---- images ----

    fn to_image(&self, rec: ImageRecord) -> Result<Image, StorageError> {
        let mut img: Image = serde_json::from_value(rec.body).map_err(StoreError::from)?;
        img.id = rec.id.clone();
        img.store = rec.store;
        img.names = rec.names;
        img.created_at = rec.created_at;
        img.used_by = self.store.container_users(&Use::Image(rec.id))?;
        Ok(img)
    }

    /// The image a caller names: by id, id prefix or reference.
    pub fn image(&self, query: &str) -> Result<Image, StorageError> {
        let name = oci::normalize_reference(query).unwrap_or_else(|_| query.to_string());
        let rec = self.store.resolve_image(query, &name)?;
        self.to_image(rec)
    }

    pub fn images(&self, filter: &str) -> Result<Vec<Image>, StorageError> {
        let filter = Filter::parse(filter)?.with_default_visibility();
        filter.check_fields(IMAGE_FIELDS)?;
        let mut out = Vec::new();
        for rec in self.store.images()? {
            let img = self.to_image(rec)?;
            if filter.matches(&img) {
                out.push(img);
            }
        }
        Ok(out)
    }

    /// The base disk of image `id`, for the backend.
    pub fn image_disk(&self, id: &str) -> Result<PathBuf, StorageError> {
        let rec = self.store.image(id)?;
        let img: Image = serde_json::from_value(rec.body).map_err(StoreError::from)?;
        let dir = self.store_dir(StoreKind::Image, &rec.store)?;
        Ok(dir.path.join(img.disk))
    }

    /// Checks what a pull asks for, before anything is fetched: the
    /// normalized reference.
    pub fn check_pull(&self, spec: &PullSpec) -> Result<String, StorageError> {
        let reference = validate::image_reference("reference", &spec.reference)?;
        if !spec.store.is_empty() {
            validate::store_name("store", &spec.store)?;
        }
        Ok(reference)
    }

    /// Pulls an image from its registry into a store.
    pub async fn pull(
        self: &Arc<Self>,
        spec: &PullSpec,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<Image, StorageError> {
        let reference = self.check_pull(spec)?;
        let (dir, blobs) = {
            let (me, name) = (self.clone(), spec.store.clone());
            tokio::task::spawn_blocking(move || {
                let dir = me.store_dir(StoreKind::Image, &name)?;
                let blobs = me.blobs(&dir)?;
                Ok::<_, StorageError>((dir, blobs))
            })
            .await
            .map_err(|e| {
                StorageError::invalid(&spec.reference, format!("Pull task failed: {e}"))
            })??
        };
        let host = reference.split('/').next().unwrap_or_default().to_string();
        let opts = oci::PullOptions {
            insecure_registries: if spec.insecure { vec![host] } else { vec![] },
            username: spec.username.clone(),
            password: spec.password.clone(),
            platform_os: "linux".into(),
            platform_arch: "amd64".into(),
        };
        let report: &(dyn Fn(oci::Progress) + Send + Sync) = &|p: oci::Progress| {
            progress(match p {
                oci::Progress::Resolved {
                    reference,
                    manifest_digest,
                    layers,
                } => PullEvent::Resolved {
                    reference,
                    manifest_digest,
                    layers: layers
                        .into_iter()
                        .map(|l| Layer {
                            digest: l.digest,
                            media_type: l.media_type,
                            size: l.size,
                        })
                        .collect(),
                },
                oci::Progress::Layer {
                    digest,
                    done,
                    total,
                } => PullEvent::Layer {
                    digest,
                    done,
                    total,
                },
                oci::Progress::LayerDone { digest, cached } => {
                    PullEvent::LayerDone { digest, cached }
                }
            })
        };
        let fetched = oci::pull(&reference, &opts, &blobs, report)
            .await
            .map_err(|source| self.fetch_error(&dir, &reference, source))?;
        progress(PullEvent::Building {
            image: fetched.config_digest.clone(),
        });
        let names = vec![reference.clone()];
        let repo = reference
            .rsplit_once(':')
            .filter(|(r, _)| !r.contains('@') && !r.ends_with('/'))
            .map_or(reference.as_str(), |(r, _)| r);
        let repo = repo.split('@').next().unwrap_or(repo);
        let repo_digest = format!("{repo}@{}", fetched.manifest_digest);
        let store = self.store.clone();
        let events = self.events.clone();
        tokio::task::spawn_blocking(move || {
            ingest(
                &store,
                &events,
                &dir,
                &blobs,
                fetched,
                &names,
                vec![repo_digest],
            )
        })
        .await
        .map_err(|e| StorageError::invalid(&spec.reference, format!("Pull task failed: {e}")))?
    }

    /// Imports `docker save` archives and OCI image layouts (a tar stream).
    /// `tag`, if given, names the image (the archive must hold exactly one).
    pub fn import(
        &self,
        archive: impl Read,
        store: &str,
        tag: Option<&str>,
    ) -> Result<Vec<Image>, StorageError> {
        let tag = tag
            .map(|t| validate::image_reference("tag", t))
            .transpose()?;
        let dir = self.store_dir(StoreKind::Image, store)?;
        let blobs = self.blobs(&dir)?;
        let fetched = oci::import_reader(archive, &blobs).map_err(|source| {
            match self.fetch_error(&dir, "archive", source) {
                // What the client sent, not a registry: a 4xx.
                StorageError::Fetch { source, .. } if source.is_content() => {
                    StorageError::BadArchive { source }
                }
                other => other,
            }
        })?;
        if fetched.is_empty() {
            return Err(StorageError::invalid(
                "archive",
                "The archive holds no image (no index.json or manifest.json)",
            ));
        }
        if tag.is_some() && fetched.len() > 1 {
            return Err(StorageError::invalid(
                "archive",
                format!(
                    "The archive holds {} images; a tag names only one",
                    fetched.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for f in fetched {
            let names: Vec<String> = tag.iter().cloned().chain(f.reference.clone()).collect();
            let img = ingest(&self.store, &self.events, &dir, &blobs, f, &names, vec![]).map_err(
                |e| match e {
                    // A layer of the client's archive that cannot be applied
                    // (an entry that would escape) is the client's too.
                    StorageError::Build { source, .. }
                        if matches!(*source, RootfsError::Layer { .. }) =>
                    {
                        StorageError::BadArchive { source }
                    }
                    other => other,
                },
            )?;
            out.push(img);
        }
        Ok(out)
    }

    fn blobs(&self, dir: &StoreDir) -> Result<BlobStore, StorageError> {
        let root = dir.path.join("blobs");
        BlobStore::open(&root).map_err(|source| StorageError::Io {
            what: "Opening blob store",
            path: root,
            source,
        })
    }

    fn fetch_error(&self, dir: &StoreDir, reference: &str, source: oci::OciError) -> StorageError {
        if chain_says_no_space(&source) {
            StorageError::NoSpace {
                store: dir.name.clone(),
                path: dir.path.clone(),
                source: Box::new(source),
            }
        } else {
            StorageError::Fetch {
                reference: reference.to_string(),
                source: Box::new(source),
            }
        }
    }

    /// Gives an image another name.
    pub fn tag(&self, query: &str, name: &str) -> Result<Image, StorageError> {
        let name = validate::image_reference("name", name)?;
        let img = self.image(query)?;
        if name.contains('@') {
            return Err(StorageError::invalid(&name, "A tag cannot be a digest"));
        }
        self.store.tag_image(&img.id, &name)?;
        let _ = self.events.emit(
            "storage",
            "tag",
            &img.id,
            &img.config.labels,
            json!({ "name": name }),
        );
        self.image(&img.id)
    }

    /// What exporting the images `queries` name would write, checked before
    /// a byte is: each must exist and have all its blobs (an image with
    /// none, e.g. one made locally, cannot be exported). An image named by
    /// one of its names goes under that name, one named by id under none;
    /// an image named twice goes once, with both names.
    pub fn export_plan(&self, queries: &[String]) -> Result<Vec<oci::ExportImage>, StorageError> {
        if queries.is_empty() {
            return Err(StorageError::invalid("images", "Name at least one image"));
        }
        let mut out: Vec<oci::ExportImage> = Vec::new();
        for q in queries {
            let img = self.image(q)?;
            let name = oci::normalize_reference(q)
                .ok()
                .filter(|n| img.names.contains(n));
            if let Some(e) = out.iter_mut().find(|e| e.config_digest == img.id) {
                if let Some(n) = name
                    && !e.names.contains(&n)
                {
                    e.names.push(n);
                }
                continue;
            }
            let dir = self.store_dir(StoreKind::Image, &img.store)?;
            let e = oci::ExportImage {
                blobs: self.blobs(&dir)?,
                manifest_digest: img.manifest_digest.clone(),
                config_digest: img.id.clone(),
                layers: img.layers.iter().map(|l| l.digest.clone()).collect(),
                names: name.into_iter().collect(),
            };
            if img.manifest_digest.is_empty() {
                return Err(StorageError::invalid(
                    q,
                    "The image has no manifest (it was not pulled or imported), so it cannot be exported",
                ));
            }
            if let Some(d) = e.missing_blob() {
                return Err(StorageError::invalid(
                    q,
                    format!(
                        "The image's blob {d} is not in store {}, so it cannot be exported",
                        img.store
                    ),
                ));
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Writes the images of `plan` (see [`Storage::export_plan`]) as one
    /// archive: an OCI image layout with `docker save`'s manifest.json.
    pub fn export(
        &self,
        plan: &[oci::ExportImage],
        w: impl std::io::Write,
    ) -> Result<(), StorageError> {
        oci::export(plan, w).map_err(|source| StorageError::Fetch {
            reference: "export".into(),
            source: Box::new(source),
        })
    }

    /// Removes what `query` names, as `rmi` does: a name of an image that
    /// has others is only untagged; otherwise the image goes (refused while
    /// a container uses it), with its disk and the blobs no other image in
    /// its store needs. Returns what was removed: names and image ids.
    pub fn remove_image(&self, query: &str) -> Result<Vec<String>, StorageError> {
        let img = self.image(query)?;
        let name = oci::normalize_reference(query).unwrap_or_default();
        if img.names.len() > 1 && img.names.contains(&name) {
            self.store.untag_image(&name)?;
            let _ = self.events.emit(
                "storage",
                "untag",
                &img.id,
                &img.config.labels,
                json!({ "name": name }),
            );
            return Ok(vec![name]);
        }
        let rec = self.store.delete_image(&img.id)?;
        let dir = self.store_dir(StoreKind::Image, &rec.store)?;
        let mut removed = img.names.clone();
        removed.push(img.id.clone());
        let disk = dir.path.join(&img.disk);
        if let Err(e) = std::fs::remove_file(&disk)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("removing {}: {e}", disk.display());
        }
        // Blobs still needed by the store's other images stay.
        let keep = self.referenced_blobs(&rec.store)?;
        if let Ok(blobs) = self.blobs(&dir) {
            for d in img
                .layers
                .iter()
                .map(|l| l.digest.clone())
                .chain([img.id.clone(), img.manifest_digest.clone()])
            {
                if !d.is_empty()
                    && !keep.contains(&d)
                    && let Err(e) = blobs.remove(&d)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!("removing blob {d}: {e}");
                }
            }
            sweep(&dir, &blobs, &keep);
        }
        let _ = self.events.emit(
            "storage",
            "delete",
            &img.id,
            &img.config.labels,
            json!({ "names": img.names }),
        );
        Ok(removed)
    }

    /// The digests the images of the image store `store` need: manifests,
    /// configs and layers.
    fn referenced_blobs(&self, store: &str) -> Result<HashSet<String>, StorageError> {
        let mut keep = HashSet::new();
        for rec in self.store.images()? {
            if rec.store != store {
                continue;
            }
            if let Ok(img) = serde_json::from_value::<Image>(rec.body) {
                keep.insert(rec.id);
                keep.insert(img.manifest_digest);
                keep.extend(img.layers.into_iter().map(|l| l.digest));
            }
        }
        Ok(keep)
    }

    /// [`sweep`] over every image store (at start-up).
    pub fn sweep_all_blobs(&self) {
        let dirs = match self.store.store_dirs(StoreKind::Image) {
            Ok(dirs) => dirs,
            Err(e) => return tracing::warn!("sweeping unused blobs: {e}"),
        };
        for dir in dirs {
            match self
                .referenced_blobs(&dir.name)
                .and_then(|keep| Ok((keep, self.blobs(&dir)?)))
            {
                Ok((keep, blobs)) => sweep(&dir, &blobs, &keep),
                Err(e) => tracing::warn!(store = %dir.name, "sweeping unused blobs: {e}"),
            }
        }
    }

    // ---- volumes ----

    fn to_volume(&self, rec: VolumeRecord) -> Result<Volume, StorageError> {
        let mut v: Volume = serde_json::from_value(rec.body).map_err(StoreError::from)?;
        v.name = rec.name.clone();
        v.store = rec.store.clone();
        v.created_at = rec.created_at;
        if let Ok(dir) = self.store_dir(StoreKind::Volume, &rec.store) {
            v.disk_size = allocated(&dir.path.join(&v.disk));
        }
        v.used_by = self.store.container_users(&Use::Volume(rec.name))?;
        Ok(v)
    }

    /// Creates a volume: an empty ext4 disk of its own.
    pub fn create_volume(&self, spec: &VolumeSpec) -> Result<Volume, StorageError> {
        let name = if spec.name.is_empty() {
            random_hex(32)
        } else {
            spec.name.clone()
        };
        validate::volume_name("name", &name)?;
        validate::labels("labels", &spec.labels)?;
        let size_mib = if spec.size_mib == 0 {
            1024
        } else {
            spec.size_mib
        };
        if !(16..=MAX_VOLUME_MIB).contains(&size_mib) {
            return Err(StorageError::invalid(
                "size_mib",
                format!("A volume's size is 16 MiB to 16 TiB, not {size_mib} MiB"),
            ));
        }
        if self.store.volume(&name).is_ok() {
            return Err(StoreError::AlreadyExists {
                kind: "volume",
                id: name,
            }
            .into());
        }
        let dir = self.store_dir(StoreKind::Volume, &spec.store)?;
        // Volume disks are sparse, so a volume takes real space as it fills;
        // it may still not promise more than the store has.
        let free_mib = free_bytes(&dir.path) >> 20;
        if size_mib > free_mib {
            return Err(StorageError::TooBig {
                store: dir.name.clone(),
                asked_mib: size_mib,
                free_mib,
            });
        }
        let id = random_hex(16);
        let file = format!("{id}.ext4");
        let path = dir.path.join(&file);
        // virtio-blk serials are at most 20 bytes.
        let serial = format!("vol-{id}");
        let tmp = tempfile::Builder::new()
            .prefix(".new-")
            .tempfile_in(&dir.path)
            .map_err(|source| StorageError::Io {
                what: "Creating volume disk in",
                path: dir.path.clone(),
                source,
            })?;
        rootfs::mkfs(None, tmp.path(), size_mib, &serial)
            .map_err(|source| build_error(&dir, &name, source))?;
        tmp.persist(&path).map_err(|e| StorageError::Io {
            what: "Creating volume disk",
            path: path.clone(),
            source: e.error,
        })?;
        let v = Volume {
            name: name.clone(),
            store: dir.name.clone(),
            size_mib,
            fstype: "ext4".into(),
            labels: spec.labels.clone(),
            serial,
            disk: file,
            created_at: now_ms(),
            ..Default::default()
        };
        let rec = VolumeRecord {
            name: name.clone(),
            store: dir.name.clone(),
            body: serde_json::to_value(&v).map_err(StoreError::from)?,
            created_at: v.created_at,
        };
        if let Err(e) = self.store.insert_volume(&rec) {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        let _ = self.events.emit(
            "storage",
            "volume-create",
            &name,
            &v.labels,
            json!({ "size_mib": size_mib }),
        );
        self.volume(&name)
    }

    pub fn volume(&self, name: &str) -> Result<Volume, StorageError> {
        self.to_volume(self.store.volume(name)?)
    }

    pub fn volumes(&self, filter: &str) -> Result<Vec<Volume>, StorageError> {
        let filter = Filter::parse(filter)?.with_default_visibility();
        filter.check_fields(VOLUME_FIELDS)?;
        let mut out = Vec::new();
        for rec in self.store.volumes()? {
            let v = self.to_volume(rec)?;
            if filter.matches(&v) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// The disk and serial of a volume, for the backend.
    pub fn volume_disk(&self, name: &str) -> Result<(PathBuf, String), StorageError> {
        let v = self.volume(name)?;
        let dir = self.store_dir(StoreKind::Volume, &v.store)?;
        Ok((dir.path.join(&v.disk), v.serial))
    }

    /// Removes a volume and its data; refused while a container uses it.
    pub fn remove_volume(&self, name: &str) -> Result<(), StorageError> {
        let rec = self.store.delete_volume(name)?;
        let v: Volume = serde_json::from_value(rec.body).map_err(StoreError::from)?;
        if let Ok(dir) = self.store_dir(StoreKind::Volume, &rec.store) {
            let disk = dir.path.join(&v.disk);
            if let Err(e) = std::fs::remove_file(&disk)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("removing {}: {e}", disk.display());
            }
        }
        let _ = self
            .events
            .emit("storage", "volume-remove", name, &v.labels, json!({}));
        Ok(())
    }
}

/// Removes the blobs of the image store `dir` that are not in `keep` (what
/// its images need) and that nothing has used for [`ORPHAN_AGE`] (those of
/// a failed pull, say), and temporary files as old. Failures are logged:
/// nothing depends on it.
fn sweep(dir: &StoreDir, blobs: &BlobStore, keep: &HashSet<String>) {
    match blobs.sweep(keep, ORPHAN_AGE) {
        Ok(0) => {}
        Ok(n) => tracing::info!(store = %dir.name, "removed {n} unused blobs"),
        Err(e) => tracing::warn!(store = %dir.name, "sweeping unused blobs: {e}"),
    }
}

/// Builds the base disk of a fetched image (unless the store already has
/// it) and records the image under `names`.
fn ingest(
    store: &Store,
    events: &Events,
    dir: &StoreDir,
    blobs: &BlobStore,
    f: FetchedImage,
    names: &[String],
    repo_digests: Vec<String>,
) -> Result<Image, StorageError> {
    let id = f.config_digest.clone();
    if let Ok(existing) = store.image(&id) {
        // Already here: it only gains names (and stays in its store).
        store.put_image(&existing, names)?;
        let _ = events.emit(
            "storage",
            "tag",
            &id,
            &BTreeMap::new(),
            json!({ "names": names }),
        );
        let rec = store.image(&id)?;
        let mut img: Image = serde_json::from_value(rec.body).map_err(StoreError::from)?;
        img.id = rec.id;
        img.store = rec.store;
        img.names = rec.names;
        return Ok(img);
    }
    let disk = format!("disks/{}.ext4", hex_of(&id));
    let layers: Vec<LayerFile> = f
        .layers
        .iter()
        .map(|l| LayerFile {
            path: blobs.path(&l.digest),
            name: format!("layer {}", l.digest),
        })
        .collect();
    let out = dir.path.join(&disk);
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|source| StorageError::Io {
            what: "Creating",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let element = names.first().cloned().unwrap_or_else(|| id.clone());
    let built = rootfs::build(&layers, &dir.path.join("tmp"), &out)
        .map_err(|source| build_error(dir, &element, source))?;
    let img = Image {
        id: id.clone(),
        store: dir.name.clone(),
        names: vec![],
        manifest_digest: f.manifest_digest.clone(),
        repo_digests,
        config: config_of(&f.config),
        layers: f
            .layers
            .iter()
            .map(|l| Layer {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
            })
            .collect(),
        content_size: built.content_size,
        disk_size: built.disk_size,
        disk,
        skipped: built.skipped,
        created_at: now_ms(),
        used_by: vec![],
    };
    let rec = ImageRecord {
        id: id.clone(),
        store: dir.name.clone(),
        names: vec![],
        body: serde_json::to_value(&img).map_err(StoreError::from)?,
        created_at: img.created_at,
    };
    if let Err(e) = store.put_image(&rec, names) {
        let _ = std::fs::remove_file(&out);
        return Err(e.into());
    }
    let _ = events.emit(
        "storage",
        "image-create",
        &id,
        &img.config.labels,
        json!({ "names": names, "content_size": img.content_size }),
    );
    let rec = store.image(&id)?;
    Ok(Image {
        names: rec.names,
        ..img
    })
}

impl crate::backend::Disks for Storage {
    fn image_disk(&self, image_id: &str) -> Result<PathBuf, String> {
        if image_id.is_empty() {
            return Err("The container has no image".into());
        }
        Storage::image_disk(self, image_id).map_err(|e| e.to_string())
    }

    fn volume_disk(&self, volume: &str) -> Result<(PathBuf, String), String> {
        Storage::volume_disk(self, volume).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[test]
    fn the_sweep_keeps_every_blob_an_image_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open_in_memory().expect("store"));
        let events = Arc::new(Events::new(store.clone()));
        let storage = Storage::open(store.clone(), events, dir.path()).expect("storage");
        let sdir = storage
            .store_dir(StoreKind::Image, DEFAULT_STORE)
            .expect("default store");
        let blobs = storage.blobs(&sdir).expect("blobs");
        let [manifest, config, layer, orphan] = ["manifest", "config", "layer", "orphan"]
            .map(|b| blobs.write_bytes(None, b.as_bytes()).expect("blob"));
        let img = Image {
            id: config.clone(),
            store: DEFAULT_STORE.into(),
            manifest_digest: manifest.clone(),
            layers: vec![Layer {
                digest: layer.clone(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let rec = ImageRecord {
            id: config.clone(),
            store: DEFAULT_STORE.into(),
            names: vec![],
            body: serde_json::to_value(&img).expect("json"),
            created_at: 0,
        };
        store.put_image(&rec, &[]).expect("image");
        // All of them older than the age an unused blob is kept.
        let old = SystemTime::now() - ORPHAN_AGE - Duration::from_secs(60);
        for d in [&manifest, &config, &layer, &orphan] {
            let f = std::fs::File::open(blobs.path(d)).expect("open");
            f.set_modified(old).expect("mtime");
        }
        storage.sweep_all_blobs();
        assert!(blobs.has(&manifest) && blobs.has(&config) && blobs.has(&layer));
        assert!(!blobs.has(&orphan));
    }

    fn storage_in(dir: &Path) -> Arc<Storage> {
        let store = Arc::new(Store::open_in_memory().expect("store"));
        let events = Arc::new(Events::new(store.clone()));
        Storage::open(store, events, dir).expect("storage")
    }

    fn volume_spec(name: &str, size_mib: u64) -> VolumeSpec {
        VolumeSpec {
            name: name.into(),
            size_mib,
            ..Default::default()
        }
    }

    #[test]
    fn a_big_volume_takes_only_the_disk_its_metadata_needs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = storage_in(dir.path());
        let free_mib = free_bytes(dir.path()) >> 20;
        // As big as the disk allows, up to 1 TiB.
        let size = (free_mib / 2).min(1 << 20);
        assert!(size >= 512, "only {free_mib} MiB free here");
        let v = storage
            .create_volume(&volume_spec("big", size))
            .expect("volume");
        let (path, _) = storage.volume_disk(&v.name).expect("disk");
        let meta = std::fs::metadata(&path).expect("disk file");
        assert_eq!(meta.len(), size << 20);
        let used_mib = (std::os::unix::fs::MetadataExt::blocks(&meta) * 512) >> 20;
        // The journal (16 MiB) and the block group descriptors, not the
        // inode tables of the whole size.
        assert!(used_mib <= 64, "a {size} MiB volume uses {used_mib} MiB");
    }

    #[test]
    fn a_volume_bigger_than_the_free_space_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = storage_in(dir.path());
        let free_mib = free_bytes(dir.path()) >> 20;
        let asked = free_mib + 1024;
        assert!(
            asked <= MAX_VOLUME_MIB,
            "{free_mib} MiB free: more than a volume may be"
        );
        let e = storage
            .create_volume(&volume_spec("huge", asked))
            .expect_err("refused");
        assert!(matches!(e, StorageError::TooBig { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("Volume store default has") && msg.contains("does not fit"),
            "{msg}"
        );
        assert!(storage.volume("huge").is_err());
        let sdir = storage
            .store_dir(StoreKind::Volume, DEFAULT_STORE)
            .expect("dir");
        let left: Vec<_> = std::fs::read_dir(&sdir.path)
            .expect("read")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
