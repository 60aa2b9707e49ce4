//! Importing images from archives into the blob store: `docker save`
//! archives (legacy ones with `manifest.json` and layer tars, and newer ones
//! that are OCI layouts inside) and OCI image layouts, as a tar (optionally
//! gzipped) or as a directory.
//!
//! A tar is read once, as a stream: blobs are spooled into the blob store as
//! they come (so an HTTP upload need not be kept whole), small members are
//! kept in memory. Every blob is hashed on the way in; blobs named by digest
//! must match it. Member paths that escape the archive are refused. Blobs
//! this import added but no returned image uses are removed again (all of
//! them, if the import fails).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use serde::{Deserialize, Serialize};

use super::blobs::is_valid_digest;
use super::format::{self, Descriptor, JSON_LIMIT, LayerRef, Manifest, media_type};
use super::{BlobStore, FetchedImage, OciError, normalize_reference};

/// Members at most this large (other than layers and blobs) are kept in
/// memory while a tar is read; larger ones go to the blob store.
const SMALL_MEMBER: u64 = 1024 * 1024;
/// At most this much of a tar is kept in memory; past it, every member
/// goes to the blob store.
const SMALL_MEMBERS_TOTAL: u64 = 64 * 1024 * 1024;
/// How many symlinks are followed to find a member.
const MAX_LINKS: usize = 16;
/// The platform imports choose from a multi-platform layout.
const OS: &str = "linux";
const ARCH: &str = "amd64";

const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Imports every image of the archive or layout at `path`: a tar (plain or
/// gzipped) or a directory.
///
/// Each image is returned once per tag it has (from the
/// `io.containerd.image.name` or `org.opencontainers.image.ref.name`
/// annotations, or `RepoTags`), with `reference: None` if it has none. An
/// `org.opencontainers.image.ref.name` that is only a tag (`v1`) names no
/// repository and so gives no reference.
pub fn import(path: &Path, blobs: &BlobStore) -> Result<Vec<FetchedImage>, OciError> {
    let meta = std::fs::metadata(path).map_err(|e| OciError::Open(path.to_path_buf(), e))?;
    if meta.is_dir() {
        let root = path
            .canonicalize()
            .map_err(|e| OciError::Open(path.to_path_buf(), e))?;
        let mut tracker = Tracker::new(blobs);
        let result = images(&mut DirMembers { root }, &mut tracker);
        tracker.finish(result)
    } else {
        let file = File::open(path).map_err(|e| OciError::Open(path.to_path_buf(), e))?;
        import_reader(file, blobs)
    }
}

/// Imports every image of a tar (plain or gzipped) read from `r`, e.g. the
/// body of an HTTP upload; see [`import`].
pub fn import_reader(r: impl Read, blobs: &BlobStore) -> Result<Vec<FetchedImage>, OciError> {
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let gzipped = r
        .fill_buf()
        .map_err(OciError::Archive)?
        .starts_with(&[0x1f, 0x8b]);
    let mut tracker = Tracker::new(blobs);
    let result = if gzipped {
        TarMembers::spool(GzDecoder::new(r), &mut tracker)
    } else {
        TarMembers::spool(r, &mut tracker)
    }
    .and_then(|mut members| images(&mut members, &mut tracker));
    tracker.finish(result)
}

/// Writes to the blob store, remembering which blobs are new.
struct Tracker<'a> {
    blobs: &'a BlobStore,
    added: HashSet<String>,
}

impl<'a> Tracker<'a> {
    fn new(blobs: &'a BlobStore) -> Self {
        Self {
            blobs,
            added: HashSet::new(),
        }
    }

    fn note(&mut self, digest: &str, existed: bool) {
        if !existed {
            self.added.insert(digest.to_string());
        }
    }

    fn write_reader(
        &mut self,
        expected: Option<&str>,
        r: impl Read,
    ) -> Result<(String, u64), OciError> {
        let mut w = self.blobs.writer(expected)?;
        w.copy_from(r)?;
        // Blobs that were there before the import are not its to remove.
        let existed = self.blobs.has(&w.digest());
        let (digest, size) = w.finish()?;
        self.note(&digest, existed);
        Ok((digest, size))
    }

    fn write_bytes(&mut self, expected: Option<&str>, bytes: &[u8]) -> Result<String, OciError> {
        Ok(self.write_reader(expected, bytes)?.0)
    }

    /// Keeps the new blobs the images use; removes the rest (all of them
    /// on failure).
    fn finish(
        self,
        result: Result<Vec<FetchedImage>, OciError>,
    ) -> Result<Vec<FetchedImage>, OciError> {
        let mut keep = HashSet::new();
        if let Ok(images) = &result {
            for i in images {
                keep.insert(i.manifest_digest.as_str());
                keep.insert(i.config_digest.as_str());
                keep.extend(i.layers.iter().map(|l| l.digest.as_str()));
            }
        }
        for d in self.added.iter().filter(|d| !keep.contains(d.as_str())) {
            if let Err(e) = self.blobs.remove(d) {
                tracing::warn!("Removing unused blob {d} after an import: {e}");
            }
        }
        result
    }
}

/// Where an archive's members come from.
trait Members {
    /// A member's bytes (at most [`JSON_LIMIT`]), None if there is no such
    /// member.
    fn read(&mut self, path: &str, tracker: &mut Tracker) -> Result<Option<Vec<u8>>, OciError>;
    /// Puts a member into the blob store, verified against `expected` if
    /// given; returns its digest and size, None if there is no such member.
    fn store(
        &mut self,
        path: &str,
        expected: Option<&str>,
        tracker: &mut Tracker,
    ) -> Result<Option<(String, u64)>, OciError>;
}

/// Cleans an archive member's path (`./a//b` is `a/b`); None if it is
/// absolute or has a `..`.
fn clean(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return None,
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// `target` of a symlink at `member`, as an archive path; None if it
/// leaves the archive.
fn resolve_symlink(member: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = member.split('/').collect();
    parts.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The archive path of the blob `digest` in an OCI layout.
fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// The digest of a member at `blobs/sha256/<hex>`, if it is one.
fn digest_of_path(path: &str) -> Option<String> {
    let hex = path.strip_prefix("blobs/sha256/")?;
    let digest = format!("sha256:{hex}");
    is_valid_digest(&digest).then_some(digest)
}

enum Spooled {
    Small(Vec<u8>),
    Blob { digest: String, size: u64 },
    Link(String),
}

/// A tar read once, its members spooled into memory and the blob store.
struct TarMembers {
    members: HashMap<String, Spooled>,
}

impl TarMembers {
    fn spool(r: impl Read, tracker: &mut Tracker) -> Result<Self, OciError> {
        let mut members = HashMap::new();
        let mut in_memory = 0;
        let mut archive = tar::Archive::new(r);
        for entry in archive.entries().map_err(OciError::Archive)? {
            let mut entry = entry.map_err(OciError::Archive)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = clean(&raw).ok_or_else(|| OciError::UnsafeMember {
                member: raw.clone(),
            })?;
            let kind = entry.header().entry_type();
            let spooled = if kind.is_dir() {
                continue;
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let resolved = if kind.is_symlink() {
                    resolve_symlink(&path, &target)
                } else {
                    clean(&target)
                };
                let Some(resolved) = resolved else {
                    return Err(OciError::UnsafeLink {
                        member: raw,
                        target,
                    });
                };
                Spooled::Link(resolved)
            } else if kind.is_file() || kind == tar::EntryType::Continuous {
                if let Some(digest) = digest_of_path(&path) {
                    let (digest, size) = tracker.write_reader(Some(&digest), &mut entry)?;
                    Spooled::Blob { digest, size }
                } else if entry.size() <= SMALL_MEMBER
                    && in_memory + entry.size() <= SMALL_MEMBERS_TOTAL
                    && !path.ends_with(".tar")
                {
                    in_memory += entry.size();
                    let mut bytes = Vec::new();
                    (&mut entry)
                        .take(SMALL_MEMBER + 1)
                        .read_to_end(&mut bytes)
                        .map_err(OciError::Archive)?;
                    Spooled::Small(bytes)
                } else {
                    let (digest, size) = tracker.write_reader(None, &mut entry)?;
                    Spooled::Blob { digest, size }
                }
            } else {
                // Devices, FIFOs, pax headers: nothing an image is made of.
                continue;
            };
            members.insert(path, spooled);
        }
        Ok(Self { members })
    }

    fn find(&self, path: &str) -> Option<&Spooled> {
        let mut path = path.to_string();
        for _ in 0..MAX_LINKS {
            match self.members.get(&path)? {
                Spooled::Link(to) => path = to.clone(),
                other => return Some(other),
            }
        }
        None
    }
}

impl Members for TarMembers {
    fn read(&mut self, path: &str, tracker: &mut Tracker) -> Result<Option<Vec<u8>>, OciError> {
        match self.find(path) {
            None | Some(Spooled::Link(_)) => Ok(None),
            Some(Spooled::Small(bytes)) => Ok(Some(bytes.clone())),
            Some(Spooled::Blob { digest, .. }) => tracker.blobs.read(digest, JSON_LIMIT).map(Some),
        }
    }

    fn store(
        &mut self,
        path: &str,
        expected: Option<&str>,
        tracker: &mut Tracker,
    ) -> Result<Option<(String, u64)>, OciError> {
        match self.find(path) {
            None | Some(Spooled::Link(_)) => Ok(None),
            Some(Spooled::Small(bytes)) => {
                let size = bytes.len() as u64;
                let digest = tracker.write_bytes(expected, bytes)?;
                Ok(Some((digest, size)))
            }
            Some(Spooled::Blob { digest, size }) => match expected {
                Some(e) if e != digest => Err(OciError::Verification {
                    expected: e.to_string(),
                    actual: digest.clone(),
                }),
                _ => Ok(Some((digest.clone(), *size))),
            },
        }
    }
}

/// A directory (an OCI layout, or an unpacked `docker save`).
struct DirMembers {
    /// Canonical.
    root: PathBuf,
}

impl DirMembers {
    /// The file for a member, None if there is none; refuses one that
    /// (through symlinks) is outside the directory.
    fn file(&self, path: &str) -> Result<Option<PathBuf>, OciError> {
        let joined = self.root.join(path);
        let real = match joined.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(OciError::Open(joined, e)),
        };
        if !real.starts_with(&self.root) {
            return Err(OciError::UnsafeLink {
                member: path.to_string(),
                target: real.display().to_string(),
            });
        }
        Ok(real.is_file().then_some(real))
    }
}

impl Members for DirMembers {
    fn read(&mut self, path: &str, _: &mut Tracker) -> Result<Option<Vec<u8>>, OciError> {
        let Some(file) = self.file(path)? else {
            return Ok(None);
        };
        let f = File::open(&file).map_err(|e| OciError::Open(file.clone(), e))?;
        let size = f
            .metadata()
            .map_err(|e| OciError::Open(file.clone(), e))?
            .len();
        if size > JSON_LIMIT {
            return Err(OciError::TooBig {
                what: path.to_string(),
                size,
                limit: JSON_LIMIT,
            });
        }
        let mut bytes = Vec::new();
        f.take(JSON_LIMIT)
            .read_to_end(&mut bytes)
            .map_err(|e| OciError::Open(file, e))?;
        Ok(Some(bytes))
    }

    fn store(
        &mut self,
        path: &str,
        expected: Option<&str>,
        tracker: &mut Tracker,
    ) -> Result<Option<(String, u64)>, OciError> {
        let Some(file) = self.file(path)? else {
            return Ok(None);
        };
        let f = File::open(&file).map_err(|e| OciError::Open(file, e))?;
        tracker.write_reader(expected, f).map(Some)
    }
}

/// A path named by a manifest, cleaned; refused if it leaves the archive.
fn named_path(what: &str, path: &str) -> Result<String, OciError> {
    clean(path).ok_or_else(|| OciError::PathOutside {
        what: what.to_string(),
        path: path.to_string(),
    })
}

fn stored(found: Option<(String, u64)>, what: &str, path: &str) -> Result<(String, u64), OciError> {
    found.ok_or_else(|| OciError::MissingMember {
        what: what.to_string(),
        path: path.to_string(),
    })
}

/// Stores the blob `digest` of an OCI layout and returns its size.
fn store_blob(
    members: &mut dyn Members,
    tracker: &mut Tracker,
    digest: &str,
    what: &str,
) -> Result<u64, OciError> {
    super::blobs::check_digest(digest)?;
    let path = blob_path(digest);
    let found = members.store(&path, Some(digest), tracker)?;
    Ok(stored(found, what, &path)?.1)
}

fn read_blob(
    members: &mut dyn Members,
    tracker: &mut Tracker,
    digest: &str,
    what: &str,
) -> Result<Vec<u8>, OciError> {
    store_blob(members, tracker, digest, what)?;
    tracker.blobs.read(digest, JSON_LIMIT)
}

fn images(members: &mut dyn Members, tracker: &mut Tracker) -> Result<Vec<FetchedImage>, OciError> {
    let docker_manifest = members.read("manifest.json", tracker)?;
    if let Some(index) = members.read("index.json", tracker)? {
        oci_images(members, tracker, &index, docker_manifest.as_deref())
    } else if let Some(manifest) = docker_manifest {
        docker_images(members, tracker, &manifest)
    } else {
        Err(OciError::NotAnArchive(
            "it has neither index.json (an OCI layout) nor manifest.json (docker save)".into(),
        ))
    }
}

/// One image per reference (or one with none).
fn per_reference(image: FetchedImage, references: Vec<String>, out: &mut Vec<FetchedImage>) {
    if references.is_empty() {
        out.push(image);
    } else {
        for r in references {
            out.push(FetchedImage {
                reference: Some(r),
                ..image.clone()
            });
        }
    }
}

/// The reference an index entry's annotations give, if any.
fn annotated_reference(annotations: &BTreeMap<String, String>) -> Option<String> {
    if let Some(name) = annotations.get(ANNOTATION_CONTAINERD_NAME)
        && let Ok(r) = normalize_reference(name)
    {
        return Some(r);
    }
    let name = annotations.get(ANNOTATION_REF_NAME)?;
    // A bare tag (`v1`) names no repository.
    if name.contains(['/', ':', '@']) {
        normalize_reference(name).ok()
    } else {
        None
    }
}

/// `docker save`'s manifest.json.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

fn parse_save_manifest(bytes: &[u8]) -> Result<Vec<SaveEntry>, OciError> {
    serde_json::from_slice(bytes).map_err(|source| OciError::Json {
        what: "manifest.json".into(),
        source,
    })
}

fn oci_images(
    members: &mut dyn Members,
    tracker: &mut Tracker,
    index: &[u8],
    docker_manifest: Option<&[u8]>,
) -> Result<Vec<FetchedImage>, OciError> {
    let Manifest::Index(entries) = format::parse_manifest(index, "index.json")? else {
        return Err(OciError::NotAnArchive(
            "its index.json is not an image index".into(),
        ));
    };
    // Newer `docker save` archives also have a manifest.json, whose
    // RepoTags name images whose index entries have no annotations.
    let mut repo_tags: HashMap<String, Vec<String>> = HashMap::new();
    if let Some(bytes) = docker_manifest
        && let Ok(save) = parse_save_manifest(bytes)
    {
        for e in save {
            if let Some(d) = clean(&e.config).as_deref().and_then(digest_of_path) {
                repo_tags.insert(d, e.repo_tags.unwrap_or_default());
            }
        }
    }
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for entry in &entries {
        if let Some(p) = &entry.platform
            && (p.os != OS || p.architecture != ARCH)
            && entry.media_type != media_type::OCI_INDEX
            && entry.media_type != media_type::DOCKER_MANIFEST_LIST
        {
            skipped.push(entry.clone());
            continue;
        }
        let name = annotated_reference(&entry.annotations);
        let what = name.clone().unwrap_or_else(|| entry.digest.clone());
        let image = oci_image(members, tracker, entry, &what)?;
        let references = match name {
            Some(n) => vec![n],
            None => repo_tags
                .get(&image.config_digest)
                .map(|tags| {
                    tags.iter()
                        .filter_map(|t| normalize_reference(t).ok())
                        .collect()
                })
                .unwrap_or_default(),
        };
        per_reference(image, references, &mut out);
    }
    if out.is_empty() && !skipped.is_empty() {
        return Err(OciError::NoPlatform {
            reference: "The archive".into(),
            wanted: format!("{OS}/{ARCH}"),
            available: format::available_platforms(&skipped),
        });
    }
    if out.is_empty() {
        return Err(OciError::NotAnArchive(
            "its index.json lists no images".into(),
        ));
    }
    Ok(out)
}

/// The image an index entry names, through nested indexes if need be.
fn oci_image(
    members: &mut dyn Members,
    tracker: &mut Tracker,
    entry: &Descriptor,
    what: &str,
) -> Result<FetchedImage, OciError> {
    let mut digest = entry.digest.clone();
    for _ in 0..4 {
        let bytes = read_blob(members, tracker, &digest, what)?;
        match format::parse_manifest(&bytes, what)? {
            Manifest::Index(entries) => {
                digest = format::choose_platform(&entries, OS, ARCH, what)?
                    .digest
                    .clone();
            }
            Manifest::Image { config, layers } => {
                format::check_layers(&layers, what)?;
                let config_raw = read_blob(members, tracker, &config.digest, what)?;
                let (image_config, diff_ids) = format::parse_config(&config_raw, what)?;
                format::check_config(&image_config, &diff_ids, layers.len(), OS, ARCH, what)?;
                let mut refs = Vec::new();
                for (l, diff_id) in layers.iter().zip(&diff_ids) {
                    let size = store_blob(members, tracker, &l.digest, what)?;
                    let uncompressed = l.media_type == media_type::OCI_LAYER
                        || l.media_type == media_type::DOCKER_LAYER;
                    if uncompressed && &l.digest != diff_id {
                        return Err(OciError::DiffId {
                            what: what.to_string(),
                            layer: l.digest.clone(),
                            diff_id: diff_id.clone(),
                        });
                    }
                    refs.push(LayerRef {
                        digest: l.digest.clone(),
                        media_type: l.media_type.clone(),
                        size,
                    });
                }
                return Ok(FetchedImage {
                    reference: None,
                    manifest_digest: digest,
                    config_digest: config.digest,
                    config: image_config,
                    config_raw,
                    layers: refs,
                    diff_ids,
                });
            }
        }
    }
    Err(OciError::UnsupportedManifest {
        what: what.to_string(),
        media_type: "indexes nested too deep".into(),
    })
}

/// The Docker v2 manifest made for a `docker save` image.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MadeManifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// What a layer blob is, from its first bytes.
fn sniff_layer(blobs: &BlobStore, digest: &str) -> Result<&'static str, OciError> {
    let mut head = [0u8; 4];
    let mut f = File::open(blobs.path(digest)).map_err(|source| OciError::BlobRead {
        digest: digest.to_string(),
        source,
    })?;
    let n = f.read(&mut head).map_err(|source| OciError::BlobRead {
        digest: digest.to_string(),
        source,
    })?;
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => media_type::DOCKER_LAYER_GZIP,
        [0x28, 0xb5, 0x2f, 0xfd] => media_type::OCI_LAYER_ZSTD,
        _ => media_type::DOCKER_LAYER,
    })
}

fn docker_images(
    members: &mut dyn Members,
    tracker: &mut Tracker,
    manifest: &[u8],
) -> Result<Vec<FetchedImage>, OciError> {
    let save = parse_save_manifest(manifest)?;
    if save.is_empty() {
        return Err(OciError::NotAnArchive(
            "its manifest.json lists no images".into(),
        ));
    }
    let mut out = Vec::new();
    for (i, entry) in save.into_iter().enumerate() {
        let tags = entry.repo_tags.unwrap_or_default();
        let what = match tags.first() {
            Some(t) => format!("manifest.json entry {i} ({t})"),
            None => format!("manifest.json entry {i}"),
        };
        let config_path = named_path(&format!("The config of {what}"), &entry.config)?;
        let found = members.store(
            &config_path,
            digest_of_path(&config_path).as_deref(),
            tracker,
        )?;
        let (config_digest, config_size) = stored(found, &what, &config_path)?;
        let config_raw = tracker.blobs.read(&config_digest, JSON_LIMIT)?;
        let (config, diff_ids) = format::parse_config(&config_raw, &what)?;
        format::check_config(&config, &diff_ids, entry.layers.len(), OS, ARCH, &what)?;

        let mut layers = Vec::new();
        for (layer_path, diff_id) in entry.layers.iter().zip(&diff_ids) {
            let path = named_path(&format!("A layer of {what}"), layer_path)?;
            let found = members.store(&path, digest_of_path(&path).as_deref(), tracker)?;
            let (digest, size) = stored(found, &what, &path)?;
            let media_type = sniff_layer(tracker.blobs, &digest)?;
            if media_type == media_type::DOCKER_LAYER && &digest != diff_id {
                return Err(OciError::DiffId {
                    what: what.clone(),
                    layer: layer_path.clone(),
                    diff_id: diff_id.clone(),
                });
            }
            layers.push(LayerRef {
                digest,
                media_type: media_type.to_string(),
                size,
            });
        }

        let made = MadeManifest {
            schema_version: 2,
            media_type: media_type::DOCKER_MANIFEST,
            config: Descriptor {
                media_type: media_type::DOCKER_CONFIG.into(),
                digest: config_digest.clone(),
                size: config_size,
                ..Default::default()
            },
            layers: layers
                .iter()
                .map(|l| Descriptor {
                    media_type: l.media_type.clone(),
                    digest: l.digest.clone(),
                    size: l.size,
                    ..Default::default()
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&made).map_err(|source| OciError::Json {
            what: format!("the manifest made for {what}"),
            source,
        })?;
        let manifest_digest = tracker.write_bytes(None, &bytes)?;
        let references = tags
            .iter()
            .filter_map(|t| normalize_reference(t).ok())
            .collect();
        per_reference(
            FetchedImage {
                reference: None,
                manifest_digest,
                config_digest,
                config,
                config_raw,
                layers,
                diff_ids,
            },
            references,
            &mut out,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::blobs::digest_of;
    use super::*;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
    }

    /// A tar with these members, names written raw (so that `..` and
    /// absolute names can be made).
    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_old();
            let (name, data, link): (&str, &[u8], Option<&str>) = match e {
                E::File(n, d) => (n, d, None),
                E::Symlink(n, t) => (n, &[], Some(t)),
            };
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(t) = link {
                h.set_entry_type(tar::EntryType::Symlink);
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
            } else {
                h.set_entry_type(tar::EntryType::Regular);
            }
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A layer: a tar holding one file.
    fn layer(name: &str, contents: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(contents.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, contents).unwrap();
        b.into_inner().unwrap()
    }

    fn config(diff_ids: &[String]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/srv"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }))
        .unwrap()
    }

    fn store() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(&dir.path().join("blobs")).unwrap();
        (dir, blobs)
    }

    /// Nothing in the store at all (no blob, no temporary file).
    fn empty(blobs: &BlobStore) -> bool {
        ["sha256", "tmp"].iter().all(|d| {
            std::fs::read_dir(blobs.root().join(d))
                .unwrap()
                .next()
                .is_none()
        })
    }

    /// A legacy `docker save` archive: two layers, a third that is a
    /// symlink to the first, two tags.
    fn docker_save(manifest_layers: &[&str]) -> (Vec<u8>, Vec<String>) {
        let l1 = layer("hello", b"hello\n");
        let l2 = layer("world", b"world\n");
        let ids = vec![digest_of(&l1), digest_of(&l2), digest_of(&l1)];
        let cfg = config(&ids);
        let cfg_name = format!("{}.json", &digest_of(&cfg)[7..]);
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": cfg_name,
            "RepoTags": ["myimg:1", "other/img:2"],
            "Layers": manifest_layers,
        }]))
        .unwrap();
        let tar = tar_of(&[
            E::File("a/layer.tar", &l1),
            E::File("b/layer.tar", &l2),
            E::Symlink("c/layer.tar", "../a/layer.tar"),
            E::File(&cfg_name, &cfg),
            E::File("manifest.json", &manifest),
            E::File("repositories", b"{}"),
        ]);
        (tar, ids)
    }

    #[test]
    fn docker_save_archive() {
        let (tar, ids) = docker_save(&["a/layer.tar", "./b/layer.tar", "c/layer.tar"]);
        let (_dir, blobs) = store();
        let images = import_reader(&tar[..], &blobs).unwrap();
        assert_eq!(images.len(), 2);
        let refs: Vec<_> = images.iter().map(|i| i.reference.clone()).collect();
        assert_eq!(
            refs,
            [
                Some("docker.io/library/myimg:1".to_string()),
                Some("docker.io/other/img:2".to_string())
            ]
        );
        let i = &images[0];
        assert_eq!(i.diff_ids, ids);
        let digests: Vec<_> = i.layers.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(digests, ids);
        assert!(
            i.layers
                .iter()
                .all(|l| l.media_type == media_type::DOCKER_LAYER && blobs.has(&l.digest))
        );
        assert_eq!(i.config.cmd, ["/bin/sh"]);
        assert_eq!(i.config.working_dir, "/srv");
        assert_eq!(i.config_digest, digest_of(&i.config_raw));
        assert!(blobs.has(&i.config_digest) && blobs.has(&i.manifest_digest));
        let made = blobs.read(&i.manifest_digest, JSON_LIMIT).unwrap();
        assert!(matches!(
            format::parse_manifest(&made, "made").unwrap(),
            Manifest::Image { layers, .. } if layers.len() == 3
        ));
        // Nothing else was kept (the small members stayed in memory).
        let kept = std::fs::read_dir(blobs.root().join("sha256"))
            .unwrap()
            .count();
        assert_eq!(kept, 4);

        // Gzipped, the same.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let again = import_reader(&gz.finish().unwrap()[..], &blobs).unwrap();
        assert_eq!(again, images);
    }

    #[test]
    fn docker_save_directory() {
        let (tar, _) = docker_save(&["a/layer.tar", "b/layer.tar", "c/layer.tar"]);
        let (dir, blobs) = store();
        let unpacked = dir.path().join("unpacked");
        tar::Archive::new(&tar[..]).unpack(&unpacked).unwrap();
        let images = import(&unpacked, &blobs).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].layers.len(), 3);
    }

    #[test]
    fn member_escaping_the_archive_is_refused() {
        for name in ["../evil", "a/../../evil", "/etc/evil"] {
            let (_dir, blobs) = store();
            let tar = tar_of(&[E::File("ok", b"x"), E::File(name, b"x")]);
            let e = import_reader(&tar[..], &blobs).unwrap_err();
            assert!(
                matches!(&e, OciError::UnsafeMember { member } if member == name),
                "{e}"
            );
            assert!(e.to_string().contains(name));
            assert!(empty(&blobs));
        }
    }

    #[test]
    fn symlink_escaping_the_archive_is_refused() {
        let (_dir, blobs) = store();
        let tar = tar_of(&[E::Symlink("a/layer.tar", "../../etc/passwd")]);
        let e = import_reader(&tar[..], &blobs).unwrap_err();
        assert!(matches!(e, OciError::UnsafeLink { .. }), "{e}");
    }

    #[test]
    fn manifest_naming_a_path_outside_is_refused() {
        let (tar, _) = docker_save(&["a/layer.tar", "../../etc/passwd", "c/layer.tar"]);
        let (_dir, blobs) = store();
        let e = import_reader(&tar[..], &blobs).unwrap_err();
        assert!(
            matches!(&e, OciError::PathOutside { path, .. } if path == "../../etc/passwd"),
            "{e}"
        );
        assert!(e.to_string().contains("../../etc/passwd"), "{e}");
        // The layers spooled before the manifest was read are gone again.
        assert!(empty(&blobs));
    }

    #[test]
    fn missing_layer_and_wrong_diff_id_are_refused() {
        let (tar, _) = docker_save(&["a/layer.tar", "nope/layer.tar", "c/layer.tar"]);
        let (_dir, blobs) = store();
        let e = import_reader(&tar[..], &blobs).unwrap_err();
        assert!(matches!(e, OciError::MissingMember { .. }), "{e}");

        let (tar, _) = docker_save(&["b/layer.tar", "a/layer.tar", "c/layer.tar"]);
        let e = import_reader(&tar[..], &blobs).unwrap_err();
        assert!(matches!(e, OciError::DiffId { .. }), "{e}");
        assert!(empty(&blobs));
    }

    #[test]
    fn oci_blob_with_wrong_content_is_refused() {
        let (_dir, blobs) = store();
        let named = digest_of(b"the real thing");
        let path = blob_path(&named);
        let tar = tar_of(&[
            E::File("oci-layout", b"{}"),
            E::File(&path, b"something else"),
        ]);
        let e = import_reader(&tar[..], &blobs).unwrap_err();
        assert!(
            matches!(&e, OciError::Verification { expected, actual }
                if *expected == named && *actual == digest_of(b"something else")),
            "{e}"
        );
        assert!(empty(&blobs));
    }

    #[test]
    fn not_an_image_archive() {
        let (_dir, blobs) = store();
        let tar = tar_of(&[E::File("hello", b"x")]);
        let e = import_reader(&tar[..], &blobs).unwrap_err();
        assert!(matches!(e, OciError::NotAnArchive(_)), "{e}");
    }

    #[test]
    fn references_from_annotations() {
        let a = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            annotated_reference(&a(ANNOTATION_REF_NAME, "v1")),
            None,
            "a bare tag names no repository"
        );
        assert_eq!(
            annotated_reference(&a(ANNOTATION_REF_NAME, "busybox:1")).as_deref(),
            Some("docker.io/library/busybox:1")
        );
        assert_eq!(
            annotated_reference(&a(ANNOTATION_CONTAINERD_NAME, "docker.io/library/x:latest"))
                .as_deref(),
            Some("docker.io/library/x:latest")
        );
    }

    #[test]
    fn paths_are_cleaned() {
        assert_eq!(clean("./a//b/./c").as_deref(), Some("a/b/c"));
        assert_eq!(clean("a/../b"), None);
        assert_eq!(clean("/a"), None);
        assert_eq!(resolve_symlink("a/b/c", "../d").as_deref(), Some("a/d"));
        assert_eq!(resolve_symlink("a/c", "../../d"), None);
        assert_eq!(resolve_symlink("a/c", "/d"), None);
        assert_eq!(blob_path("sha256:ab"), "blobs/sha256/ab");
    }
}
