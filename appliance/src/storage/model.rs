//! The storage component's data model: image stores and images, volume
//! stores and volumes. Serde types, stored as JSON and served as-is by the
//! REST API (so they carry their OpenAPI schemas too).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an image says about how to run it (from its config).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, ToSchema)]
#[serde(default)]
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

/// One layer, as the manifest gives it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, ToSchema)]
#[serde(default)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    /// Compressed size, bytes.
    pub size: u64,
}

/// An image: its layers applied into one read-only base disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, ToSchema)]
#[serde(default)]
pub struct Image {
    /// "sha256:<config digest>".
    pub id: String,
    /// The image store that holds it.
    pub store: String,
    /// Its names: normalised references ("docker.io/library/busybox:latest").
    pub names: Vec<String>,
    /// Digest of the manifest it came from.
    pub manifest_digest: String,
    /// "repository@sha256:..." for images pulled from a registry.
    pub repo_digests: Vec<String>,
    pub config: ImageConfig,
    pub layers: Vec<Layer>,
    /// Bytes of the files in the image.
    pub content_size: u64,
    /// Bytes the base disk takes on the host.
    pub disk_size: u64,
    /// The base disk, relative to the store's directory.
    pub disk: String,
    /// Entries of the layers that were not applied, and why (device nodes:
    /// the guest's /dev is its own devtmpfs).
    pub skipped: Vec<String>,
    /// Unix ms.
    pub created_at: i64,
    /// Containers that use it, as "name (id)"; filled in by inspect and list.
    pub used_by: Vec<String>,
}

/// A volume: a disk of its own, mounted into containers that join it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, ToSchema)]
#[serde(default)]
pub struct Volume {
    pub name: String,
    /// The volume store that holds it.
    pub store: String,
    /// Size of its filesystem, MiB.
    pub size_mib: u64,
    pub fstype: String,
    pub labels: BTreeMap<String, String>,
    /// The block device serial the guest finds it by.
    pub serial: String,
    /// The disk, relative to the store's directory.
    pub disk: String,
    /// Bytes the disk takes on the host.
    pub disk_size: u64,
    /// Unix ms.
    pub created_at: i64,
    /// Containers that use it, as "name (id)"; filled in by inspect and list.
    pub used_by: Vec<String>,
}

/// An image store or a volume store, with what it holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, ToSchema)]
pub struct StoreUsage {
    pub name: String,
    pub path: String,
    /// Images or volumes in it.
    pub items: u64,
    /// Bytes its files take on the host.
    pub used_bytes: u64,
    /// Bytes free on the host filesystem that holds it.
    pub free_bytes: u64,
}
