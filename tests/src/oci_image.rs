//! Building OCI images for tests: layers from lists of entries (directories,
//! files, links, whiteouts), a config, written as an OCI image layout
//! directory (for skopeo to push, or to import) or as a legacy
//! `docker save` archive.
//!
//! ```ignore
//! let built = ImageBuilder::new()
//!     .layer(vec![Entry::dir("/etc"), Entry::file("/etc/hello", "hi\n")])
//!     .layer(vec![Entry::whiteout("/etc/hello")])
//!     .config(Config { cmd: vec!["/bin/sh".into()], ..Default::default() })
//!     .write_layout(dir, "v1");
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde_json::json;
use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in hash {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One entry of a layer. Paths are absolute in the image (`/etc/hosts`).
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        contents: Vec<u8>,
        mode: u32,
        uid: u64,
        gid: u64,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A hard link to `target`, an earlier entry of the same layer.
    Hardlink {
        path: String,
        target: String,
    },
    /// Deletes `path` of lower layers (`.wh.<name>`).
    Whiteout(String),
    /// Hides everything lower layers have in this directory
    /// (`.wh..wh..opq`).
    Opaque(String),
}

impl Entry {
    pub fn dir(path: &str) -> Self {
        Entry::Dir {
            path: path.into(),
            mode: 0o755,
        }
    }
    pub fn file(path: &str, contents: impl Into<Vec<u8>>) -> Self {
        Self::file_with(path, contents, 0o644, 0, 0)
    }
    pub fn file_with(
        path: &str,
        contents: impl Into<Vec<u8>>,
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> Self {
        Entry::File {
            path: path.into(),
            contents: contents.into(),
            mode,
            uid,
            gid,
        }
    }
    pub fn symlink(path: &str, target: &str) -> Self {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }
    pub fn hardlink(path: &str, target: &str) -> Self {
        Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        }
    }
    pub fn whiteout(path: &str) -> Self {
        Entry::Whiteout(path.into())
    }
    pub fn opaque(dir: &str) -> Self {
        Entry::Opaque(dir.into())
    }
}

/// A path as it is written in a layer tar: relative, no leading `/`.
fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

/// `dir/.wh.name` for `dir/name`.
fn whiteout_path(path: &str) -> String {
    let p = rel(path);
    match p.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.wh.{name}"),
        None => format!(".wh.{p}"),
    }
}

/// The uncompressed tar of a layer.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let header = |kind: tar::EntryType, mode: u32, uid: u64, gid: u64, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(size);
        h.set_mtime(0);
        h
    };
    for e in entries {
        match e {
            Entry::Dir { path, mode } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, 0, 0);
                b.append_data(&mut h, format!("{}/", rel(path)), &[][..])
            }
            Entry::File {
                path,
                contents,
                mode,
                uid,
                gid,
            } => {
                let mut h = header(
                    tar::EntryType::Regular,
                    *mode,
                    *uid,
                    *gid,
                    contents.len() as u64,
                );
                b.append_data(&mut h, rel(path), &contents[..])
            }
            Entry::Symlink { path, target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, 0);
                b.append_link(&mut h, rel(path), target)
            }
            Entry::Hardlink { path, target } => {
                let mut h = header(tar::EntryType::Link, 0o644, 0, 0, 0);
                b.append_link(&mut h, rel(path), rel(target))
            }
            Entry::Whiteout(path) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, 0);
                b.append_data(&mut h, whiteout_path(path), &[][..])
            }
            Entry::Opaque(dir) => {
                let mut h = header(tar::EntryType::Regular, 0o644, 0, 0, 0);
                b.append_data(&mut h, format!("{}/.wh..wh..opq", rel(dir)), &[][..])
            }
        }
        .expect("writing a layer tar");
    }
    b.into_inner().expect("finishing a layer tar")
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// The runtime part of an image config (OCI spelling: `Env`, `Cmd`, …).
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
}

#[derive(Debug, Clone)]
struct LayerSpec {
    entries: Vec<Entry>,
    gzip: bool,
}

/// An image: layers (bottom first), a config, a platform.
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    layers: Vec<LayerSpec>,
    config: Config,
    os: String,
    arch: String,
}

impl Default for ImageBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A blob as written.
#[derive(Debug, Clone)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    fn new(media_type: &str, bytes: Vec<u8>) -> Self {
        Self {
            digest: sha256(&bytes),
            media_type: media_type.into(),
            bytes,
        }
    }
    fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// What [`ImageBuilder::build`] made.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// sha256 of each uncompressed layer tar.
    pub diff_ids: Vec<String>,
    /// The uncompressed tar of each layer.
    pub tars: Vec<Vec<u8>>,
    pub os: String,
    pub arch: String,
}

impl BuiltImage {
    fn blobs(&self) -> impl Iterator<Item = &Blob> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(self.layers.iter())
    }

    /// The manifest's descriptor, with its platform.
    fn descriptor(&self) -> serde_json::Value {
        let mut d = self.manifest.descriptor();
        d["platform"] = json!({"os": self.os, "architecture": self.arch});
        d
    }
}

fn write_blobs<'a>(dir: &Path, blobs: impl Iterator<Item = &'a Blob>) {
    let sha = dir.join("blobs/sha256");
    std::fs::create_dir_all(&sha).expect("blobs dir");
    for b in blobs {
        std::fs::write(sha.join(&b.digest["sha256:".len()..]), &b.bytes).expect("writing blob");
    }
}

fn write_index(dir: &Path, entry: serde_json::Value, tag: &str) {
    let mut entry = entry;
    entry["annotations"] = json!({ REF_NAME: tag });
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]});
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("oci-layout");
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("index"),
    )
    .expect("index.json");
}

impl ImageBuilder {
    /// No layers, an empty config, linux/amd64.
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            config: Config::default(),
            os: "linux".into(),
            arch: "amd64".into(),
        }
    }

    /// Adds a gzip-compressed layer on top.
    pub fn layer(mut self, entries: Vec<Entry>) -> Self {
        self.layers.push(LayerSpec {
            entries,
            gzip: true,
        });
        self
    }

    /// Adds an uncompressed layer on top.
    pub fn layer_uncompressed(mut self, entries: Vec<Entry>) -> Self {
        self.layers.push(LayerSpec {
            entries,
            gzip: false,
        });
        self
    }

    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    pub fn platform(mut self, os: &str, arch: &str) -> Self {
        self.os = os.into();
        self.arch = arch.into();
        self
    }

    /// A one-layer image for `arch`, e.g. the other half of a
    /// multi-platform index.
    pub fn dummy(arch: &str) -> Self {
        Self::new()
            .platform("linux", arch)
            .layer(vec![Entry::file("/arch", format!("{arch}\n"))])
    }

    /// Makes the blobs: layers, config, manifest.
    pub fn build(&self) -> BuiltImage {
        let tars: Vec<Vec<u8>> = self.layers.iter().map(|l| layer_tar(&l.entries)).collect();
        let diff_ids: Vec<String> = tars.iter().map(|t| sha256(t)).collect();
        let layers: Vec<Blob> = self
            .layers
            .iter()
            .zip(&tars)
            .map(|(l, tar)| {
                if l.gzip {
                    Blob::new(OCI_LAYER_GZIP, gzip(tar))
                } else {
                    Blob::new(OCI_LAYER, tar.clone())
                }
            })
            .collect();
        let c = &self.config;
        let mut runtime = json!({
            "Env": c.env,
            "Cmd": c.cmd,
            "WorkingDir": c.working_dir,
            "User": c.user,
            "Labels": c.labels,
        });
        if !c.entrypoint.is_empty() {
            runtime["Entrypoint"] = json!(c.entrypoint);
        }
        if !c.stop_signal.is_empty() {
            runtime["StopSignal"] = json!(c.stop_signal);
        }
        let config = json!({
            "created": "2024-01-01T00:00:00Z",
            "architecture": self.arch,
            "os": self.os,
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": self.layers.iter().map(|_| json!({"created_by": "oci_image test builder"})).collect::<Vec<_>>(),
        });
        let config = Blob::new(OCI_CONFIG, serde_json::to_vec(&config).expect("config"));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(
            OCI_MANIFEST,
            serde_json::to_vec(&manifest).expect("manifest"),
        );
        BuiltImage {
            manifest,
            config,
            layers,
            diff_ids,
            tars,
            os: self.os.clone(),
            arch: self.arch.clone(),
        }
    }

    /// Writes an OCI image layout at `dir` (created if need be) whose
    /// index.json names this image `tag` (`org.opencontainers.image.ref.name`).
    pub fn write_layout(&self, dir: &Path, tag: &str) -> BuiltImage {
        let built = self.build();
        write_blobs(dir, built.blobs());
        write_index(dir, built.manifest.descriptor(), tag);
        built
    }

    /// Writes a legacy `docker save` archive (uncompressed layer tars at
    /// `<n>/layer.tar`, the config at `<hex>.json`, manifest.json with
    /// `repo_tags`) at `path`.
    pub fn write_docker_save(&self, path: &Path, repo_tags: &[&str]) -> BuiltImage {
        let built = self.build();
        let mut b = tar::Builder::new(std::fs::File::create(path).expect("archive"));
        let mut add = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, name, bytes).expect("archive member");
        };
        let config_name = format!("{}.json", &built.config.digest["sha256:".len()..]);
        add(&config_name, &built.config.bytes);
        let mut layer_paths = Vec::new();
        for (i, tar) in built.tars.iter().enumerate() {
            let p = format!("{i}/layer.tar");
            add(&p, tar);
            layer_paths.push(p);
        }
        let manifest =
            json!([{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_paths}]);
        add(
            "manifest.json",
            &serde_json::to_vec(&manifest).expect("manifest.json"),
        );
        b.into_inner().expect("archive").flush().expect("archive");
        built
    }
}

/// A multi-platform image: an index over several images.
#[derive(Debug, Clone, Default)]
pub struct IndexBuilder {
    images: Vec<ImageBuilder>,
}

/// What [`IndexBuilder::write_layout`] made.
#[derive(Debug, Clone)]
pub struct BuiltIndex {
    pub index: Blob,
    pub images: Vec<BuiltImage>,
}

impl IndexBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn image(mut self, image: ImageBuilder) -> Self {
        self.images.push(image);
        self
    }

    /// `image` for linux/amd64 and a dummy linux/arm64 image.
    pub fn amd64_and_arm64(image: ImageBuilder) -> Self {
        Self::new()
            .image(image.platform("linux", "amd64"))
            .image(ImageBuilder::dummy("arm64"))
    }

    /// Writes an OCI image layout at `dir` whose index.json names the
    /// index `tag`.
    pub fn write_layout(&self, dir: &Path, tag: &str) -> BuiltIndex {
        let images: Vec<BuiltImage> = self.images.iter().map(ImageBuilder::build).collect();
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": images.iter().map(BuiltImage::descriptor).collect::<Vec<_>>(),
        });
        let index = Blob::new(OCI_INDEX, serde_json::to_vec(&index).expect("index"));
        write_blobs(
            dir,
            images
                .iter()
                .flat_map(BuiltImage::blobs)
                .chain(std::iter::once(&index)),
        );
        write_index(dir, index.descriptor(), tag);
        BuiltIndex { index, images }
    }
}

/// Packs a directory (an OCI layout) into a tar at `path`.
pub fn tar_dir(dir: &Path, path: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(path).expect("tar"));
    b.append_dir_all(".", dir).expect("tar");
    b.into_inner().expect("tar").flush().expect("tar");
}
