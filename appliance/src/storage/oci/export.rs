//! Exporting images from the blob store as one tar: an OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/...`) with `docker save`'s
//! `manifest.json` beside it, which `docker load` and [`super::import`]
//! both read.
//!
//! Owns the archive's layout only: which images go in, and whether their
//! blobs are all there, is the caller's to settle before the first byte is
//! written (see [`ExportImage`]). The tar is written as it goes, blob by
//! blob, never held whole.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Write;

use serde::Serialize;

use super::format::{Descriptor, JSON_LIMIT};
use super::{BlobStore, OciError};

const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image to export: its blobs and the names it goes by in the archive
/// (normalised references; none for an image exported by id).
#[derive(Debug, Clone)]
pub struct ExportImage {
    pub blobs: BlobStore,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<String>,
    pub names: Vec<String>,
}

impl ExportImage {
    /// The digests of its blobs: manifest, config, layers.
    pub fn digests(&self) -> impl Iterator<Item = &String> {
        [&self.manifest_digest, &self.config_digest]
            .into_iter()
            .chain(&self.layers)
    }

    /// The first of its blobs the store does not have, if any.
    pub fn missing_blob(&self) -> Option<&String> {
        self.digests().find(|d| !self.blobs.has(d))
    }
}

/// `docker save`'s manifest.json entry.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    repo_tags: Vec<String>,
    layers: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Index {
    schema_version: u32,
    media_type: &'static str,
    manifests: Vec<Descriptor>,
}

/// The archive path of blob `digest`.
fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// A name as docker writes it in `RepoTags`: `docker.io/library/busybox:latest`
/// is `busybox:latest`.
fn familiar(name: &str) -> String {
    let n = name.strip_prefix("docker.io/").unwrap_or(name);
    n.strip_prefix("library/").unwrap_or(n).to_string()
}

/// The tag of a reference (`v1` of `host:5000/a:v1`), if it has one.
fn tag_of(name: &str) -> Option<&str> {
    let (repo, tag) = name.rsplit_once(':')?;
    (!tag.contains('/') && !repo.contains('@')).then_some(tag)
}

fn header(path: &str, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    // Paths here are short (`blobs/sha256/<64 hex>`): ustar holds them.
    let _ = h.set_path(path);
    h.set_cksum();
    h
}

fn archive_error(source: std::io::Error) -> OciError {
    OciError::Archive(source)
}

/// Writes `images` as one archive to `w`. Blobs shared by several images
/// are written once.
pub fn export(images: &[ExportImage], w: impl Write) -> Result<(), OciError> {
    let mut tar = tar::Builder::new(w);
    let mut written: HashSet<String> = HashSet::new();
    let mut index = Vec::new();
    let mut save = Vec::new();
    for img in images {
        let manifest = img.blobs.read(&img.manifest_digest, JSON_LIMIT)?;
        let media_type = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|v| v.get("mediaType")?.as_str().map(str::to_string))
            .unwrap_or_else(|| super::media_type::OCI_MANIFEST.to_string());
        let descriptor = |annotations: BTreeMap<String, String>| Descriptor {
            media_type: media_type.clone(),
            digest: img.manifest_digest.clone(),
            size: manifest.len() as u64,
            annotations,
            ..Default::default()
        };
        if img.names.is_empty() {
            index.push(descriptor(BTreeMap::new()));
        }
        for name in &img.names {
            let mut a = BTreeMap::from([(ANNOTATION_CONTAINERD_NAME.to_string(), name.clone())]);
            if let Some(tag) = tag_of(name) {
                a.insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
            }
            index.push(descriptor(a));
        }
        save.push(SaveEntry {
            config: blob_path(&img.config_digest),
            repo_tags: img.names.iter().map(|n| familiar(n)).collect(),
            layers: img.layers.iter().map(|l| blob_path(l)).collect(),
        });
        for digest in img.digests() {
            if !written.insert(digest.clone()) {
                continue;
            }
            let path = img.blobs.path(digest);
            let read_err = |source| OciError::BlobRead {
                digest: digest.clone(),
                source,
            };
            let f = File::open(&path).map_err(read_err)?;
            let size = f.metadata().map_err(read_err)?.len();
            tar.append(&header(&blob_path(digest), size), f)
                .map_err(archive_error)?;
        }
    }
    let index = to_json(
        "index.json",
        &Index {
            schema_version: 2,
            media_type: super::media_type::OCI_INDEX,
            manifests: index,
        },
    )?;
    let save = to_json("manifest.json", &save)?;
    for (name, bytes) in [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", index),
        ("manifest.json", save),
    ] {
        tar.append(&header(name, bytes.len() as u64), &bytes[..])
            .map_err(archive_error)?;
    }
    tar.into_inner()
        .map_err(archive_error)?
        .flush()
        .map_err(archive_error)
}

fn to_json(what: &str, v: &impl Serialize) -> Result<Vec<u8>, OciError> {
    serde_json::to_vec(v).map_err(|source| OciError::Json {
        what: what.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_as_docker_writes_them() {
        assert_eq!(
            familiar("docker.io/library/busybox:latest"),
            "busybox:latest"
        );
        assert_eq!(familiar("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b:v1");
        assert_eq!(tag_of("127.0.0.1:5000/a/b:v1"), Some("v1"));
        assert_eq!(tag_of("127.0.0.1:5000/a/b"), None);
    }

    #[test]
    fn an_exported_image_imports_with_its_names() {
        let src = tempfile::tempdir().expect("tempdir");
        let layout = src.path().join("layout");
        crate::storage::busybox::write_layout(&layout).expect("busybox layout");
        let from = BlobStore::open(&src.path().join("blobs")).expect("blobs");
        let fetched = super::super::import(&layout, &from).expect("import");
        let f = &fetched[0];
        let img = ExportImage {
            blobs: from.clone(),
            manifest_digest: f.manifest_digest.clone(),
            config_digest: f.config_digest.clone(),
            layers: f.layers.iter().map(|l| l.digest.clone()).collect(),
            names: vec![
                "docker.io/library/busybox:latest".into(),
                "127.0.0.1:5000/bb:v1".into(),
            ],
        };
        assert_eq!(img.missing_blob(), None);
        let mut tar = Vec::new();
        export(std::slice::from_ref(&img), &mut tar).expect("export");

        let dst = tempfile::tempdir().expect("tempdir");
        let to = BlobStore::open(dst.path()).expect("blobs");
        let back = super::super::import_reader(&tar[..], &to).expect("import the export");
        let mut names: Vec<_> = back.iter().filter_map(|i| i.reference.clone()).collect();
        names.sort();
        assert_eq!(
            names,
            ["127.0.0.1:5000/bb:v1", "docker.io/library/busybox:latest"]
        );
        assert!(back.iter().all(|i| i.config_digest == f.config_digest));
        assert!(back.iter().all(|i| i.manifest_digest == f.manifest_digest));

        // docker's manifest.json names the same blobs.
        let mut a = tar::Archive::new(&tar[..]);
        let mut manifest = None;
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            if e.path().expect("path").to_str() == Some("manifest.json") {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut e, &mut s).expect("read");
                manifest = Some(s);
            }
        }
        let m: serde_json::Value =
            serde_json::from_str(&manifest.expect("manifest.json")).expect("json");
        assert_eq!(m[0]["RepoTags"][0], "busybox:latest");
        assert_eq!(
            m[0]["Config"],
            format!("blobs/sha256/{}", &f.config_digest[7..])
        );
    }

    #[test]
    fn a_missing_blob_is_found_before_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::open(dir.path()).expect("blobs");
        let img = ExportImage {
            blobs,
            manifest_digest: format!("sha256:{}", "a".repeat(64)),
            config_digest: format!("sha256:{}", "b".repeat(64)),
            layers: vec![],
            names: vec![],
        };
        assert_eq!(img.missing_blob(), Some(&img.manifest_digest));
    }
}
