//! The wire formats: manifests, indexes (manifest lists) and image configs,
//! in their OCI and Docker v2 schema 2 spellings, and what is kept of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::OciError;

/// Media types this module reads or writes.
pub mod media_type {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
    pub const DOCKER_SCHEMA1_SIGNED: &str =
        "application/vnd.docker.distribution.manifest.v1+prettyjws";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    pub const OCI_NONDISTRIBUTABLE_LAYER: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar";
    pub const OCI_NONDISTRIBUTABLE_LAYER_GZIP: &str =
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";

    /// What a registry is asked for.
    pub const ACCEPTED_MANIFESTS: &[&str] = &[
        OCI_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST,
        DOCKER_MANIFEST_LIST,
    ];

    /// Layer media types the image store can be handed (tar, gzip or zstd).
    pub const LAYERS: &[&str] = &[
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        DOCKER_LAYER,
        DOCKER_LAYER_GZIP,
        DOCKER_FOREIGN_LAYER_GZIP,
        OCI_NONDISTRIBUTABLE_LAYER,
        OCI_NONDISTRIBUTABLE_LAYER_GZIP,
    ];
}

/// The largest manifest, index or config read into memory.
pub(super) const JSON_LIMIT: u64 = 16 * 1024 * 1024;

/// A layer of an image, as stored in the blob store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    pub digest: String,
    pub media_type: String,
    /// The size of the stored blob (measured, not taken from a manifest).
    pub size: u64,
}

/// The parts of the image config a runtime needs (from config.json's
/// "config" object), plus the platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
    pub architecture: String,
    pub os: String,
}

/// An image whose config and layers are all in the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedImage {
    /// Normalized, e.g. `127.0.0.1:5000/test/whiteouts:v1` or
    /// `docker.io/library/busybox:latest`; None for an untagged import.
    pub reference: Option<String>,
    /// The digest of the image manifest (for a `docker save` archive, of a
    /// Docker v2 manifest made for it and stored in the blob store).
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: ImageConfig,
    pub config_raw: Vec<u8>,
    /// Bottom layer first.
    pub layers: Vec<LayerRef>,
    /// The sha256 of each layer's uncompressed tar, from the config.
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub(super) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest or an index, told apart by their fields (the media type is
/// optional in OCI).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnyManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

#[derive(Debug)]
pub(super) enum Manifest {
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    Index(Vec<Descriptor>),
}

/// Parses a manifest or an index; `what` names it in errors.
pub(super) fn parse_manifest(bytes: &[u8], what: &str) -> Result<Manifest, OciError> {
    let m: AnyManifest = serde_json::from_slice(bytes).map_err(|source| OciError::Json {
        what: format!("manifest {what}"),
        source,
    })?;
    let unsupported = |media_type: String| OciError::UnsupportedManifest {
        what: what.to_string(),
        media_type,
    };
    let media_type = m.media_type.unwrap_or_default();
    if m.schema_version == Some(1)
        || media_type == media_type::DOCKER_SCHEMA1
        || media_type == media_type::DOCKER_SCHEMA1_SIGNED
    {
        return Err(unsupported(format!("{media_type} (schema 1)")));
    }
    match (m.manifests, m.config, m.layers) {
        (Some(manifests), None, _)
            if media_type.is_empty()
                || media_type == media_type::OCI_INDEX
                || media_type == media_type::DOCKER_MANIFEST_LIST =>
        {
            Ok(Manifest::Index(manifests))
        }
        (None, Some(config), layers)
            if media_type.is_empty()
                || media_type == media_type::OCI_MANIFEST
                || media_type == media_type::DOCKER_MANIFEST =>
        {
            Ok(Manifest::Image {
                config,
                layers: layers.unwrap_or_default(),
            })
        }
        _ => Err(unsupported(media_type)),
    }
}

/// Checks a manifest's layers are of types the image store can unpack.
pub(super) fn check_layers(layers: &[Descriptor], what: &str) -> Result<(), OciError> {
    for l in layers {
        super::blobs::check_digest(&l.digest)?;
        if !media_type::LAYERS.contains(&l.media_type.as_str()) {
            return Err(OciError::UnsupportedLayer {
                what: what.to_string(),
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
            });
        }
    }
    Ok(())
}

/// Picks the entry of an index for `os`/`arch`, or says which platforms
/// there are. Entries for attestations (`unknown/unknown`) are not counted.
pub(super) fn choose_platform<'a>(
    entries: &'a [Descriptor],
    os: &str,
    arch: &str,
    what: &str,
) -> Result<&'a Descriptor, OciError> {
    let found = entries.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.os == os && p.architecture == arch)
    });
    found.ok_or_else(|| OciError::NoPlatform {
        reference: what.to_string(),
        wanted: format!("{os}/{arch}"),
        available: available_platforms(entries),
    })
}

pub(super) fn available_platforms(entries: &[Descriptor]) -> String {
    let mut have: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .filter(|p| p.os != "unknown" && p.architecture != "unknown")
        .map(|p| p.to_string())
        .collect();
    have.dedup();
    if have.is_empty() {
        "no platforms listed".into()
    } else {
        have.join(", ")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawRuntimeConfig {
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    user: Option<String>,
    labels: Option<BTreeMap<String, Option<String>>>,
    stop_signal: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRootFs {
    #[serde(default)]
    diff_ids: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architecture: Option<String>,
    #[serde(default)]
    os: Option<String>,
    #[serde(default)]
    config: Option<RawRuntimeConfig>,
    #[serde(default)]
    rootfs: Option<RawRootFs>,
}

/// Parses an image config; returns it and its diff_ids.
pub(super) fn parse_config(raw: &[u8], what: &str) -> Result<(ImageConfig, Vec<String>), OciError> {
    let c: RawConfig = serde_json::from_slice(raw).map_err(|source| OciError::Json {
        what: format!("the image config of {what}"),
        source,
    })?;
    let rc = c.config.unwrap_or_default();
    let config = ImageConfig {
        env: rc.env.unwrap_or_default(),
        entrypoint: rc.entrypoint.unwrap_or_default(),
        cmd: rc.cmd.unwrap_or_default(),
        working_dir: rc.working_dir.unwrap_or_default(),
        user: rc.user.unwrap_or_default(),
        labels: rc
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        stop_signal: rc.stop_signal.unwrap_or_default(),
        architecture: c.architecture.unwrap_or_default(),
        os: c.os.unwrap_or_default(),
    };
    let diff_ids = c.rootfs.unwrap_or_default().diff_ids.unwrap_or_default();
    Ok((config, diff_ids))
}

/// Checks the config's platform and that it lists one diff_id per layer.
pub(super) fn check_config(
    config: &ImageConfig,
    diff_ids: &[String],
    layers: usize,
    os: &str,
    arch: &str,
    what: &str,
) -> Result<(), OciError> {
    // Configs without a platform (hand-made ones) are taken as they are.
    let mismatch = |have: &str, want: &str| !have.is_empty() && have != want;
    if mismatch(&config.os, os) || mismatch(&config.architecture, arch) {
        return Err(OciError::NoPlatform {
            reference: what.to_string(),
            wanted: format!("{os}/{arch}"),
            available: format!("{}/{}", config.os, config.architecture),
        });
    }
    if diff_ids.len() != layers {
        return Err(OciError::LayerCount {
            what: what.to_string(),
            layers,
            diff_ids: diff_ids.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_manifests_from_indexes() {
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:a","size":1},"layers":[]}"#;
        assert!(matches!(
            parse_manifest(m, "m").unwrap(),
            Manifest::Image { .. }
        ));
        let i = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#;
        assert!(matches!(
            parse_manifest(i, "i").unwrap(),
            Manifest::Index(_)
        ));
        let s1 = br#"{"schemaVersion":1,"name":"x","fsLayers":[]}"#;
        let e = parse_manifest(s1, "old").unwrap_err().to_string();
        assert!(e.contains("schema 1"), "{e}");
    }

    #[test]
    fn platform_errors_list_what_there_is() {
        let e = |os: &str, arch: &str| Descriptor {
            digest: format!("sha256:{arch}"),
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            ..Default::default()
        };
        let entries = [
            e("linux", "arm64"),
            e("unknown", "unknown"),
            e("linux", "s390x"),
        ];
        let err = choose_platform(&entries, "linux", "amd64", "img:1")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "Image img:1 has no linux/amd64 variant (has: linux/arm64, linux/s390x)"
        );
        let entries = [e("linux", "arm64"), e("linux", "amd64")];
        let d = choose_platform(&entries, "linux", "amd64", "img:1").unwrap();
        assert_eq!(d.digest, "sha256:amd64");
    }

    #[test]
    fn config_fields_and_nulls() {
        let raw = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"Entrypoint":null,"Cmd":["sh"],"WorkingDir":"/w","User":"1000:1000","Labels":{"a":"b"},"StopSignal":"SIGINT"},"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}"#;
        let (c, d) = parse_config(raw, "t").unwrap();
        assert_eq!(c.env, ["A=1"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(c.cmd, ["sh"]);
        assert_eq!(c.working_dir, "/w");
        assert_eq!(c.user, "1000:1000");
        assert_eq!(c.labels.get("a").map(String::as_str), Some("b"));
        assert_eq!(c.stop_signal, "SIGINT");
        assert_eq!(d, ["sha256:x"]);
        assert!(check_config(&c, &d, 1, "linux", "amd64", "t").is_ok());
        assert!(check_config(&c, &d, 2, "linux", "amd64", "t").is_err());
        assert!(check_config(&c, &d, 1, "linux", "arm64", "t").is_err());
        let (c, d) = parse_config(b"{}", "t").unwrap();
        assert_eq!(c, ImageConfig::default());
        assert!(d.is_empty());
    }
}
