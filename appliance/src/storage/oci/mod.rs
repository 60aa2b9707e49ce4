//! OCI images in: pulling from registries and importing archives, into a
//! content-addressed blob store; and out again, as an archive (`export`).
//!
//! Owns the blob store (`<root>/sha256/<hex>`), the wire formats (manifests,
//! indexes, image configs, `docker save` archives, OCI image layouts), image
//! references, and the rule for when a registry may be spoken to over plain
//! HTTP. Every blob that enters the store is hashed while it is written and
//! kept only if it matches its digest.
//!
//! It must not unpack layers or build disks: the image store does that from
//! the [`FetchedImage`]s returned here.

mod blobs;
mod export;
mod format;
mod import;
mod pull;
mod reference;

use std::path::PathBuf;

pub use blobs::{AsyncBlobWriter, BlobStore, BlobWriter, is_valid_digest};
pub use export::{ExportImage, export};
pub use format::{FetchedImage, ImageConfig, LayerRef, media_type};
pub use import::{import, import_reader};
pub use pull::{Progress, PullOptions, pull};
pub use reference::{normalize_reference, plain_http};

/// Everything that can go wrong pulling, importing or storing an image.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("Invalid image reference {reference:?}")]
    InvalidReference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("Invalid digest {0:?}; expected sha256:<64 lowercase hex digits>")]
    InvalidDigest(String),
    #[error("Blob {expected} failed verification: expected {expected}, got {actual}")]
    Verification { expected: String, actual: String },
    #[error("Blob {digest} is larger than the {size} bytes its descriptor declares")]
    TooLarge { digest: String, size: u64 },
    #[error("Writing blob {what}")]
    BlobWrite {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Reading blob {digest}")]
    BlobRead {
        digest: String,
        #[source]
        source: std::io::Error,
    },

    // Registries.
    #[error("Setting up the registry client")]
    Client(#[source] oci_client::errors::OciDistributionError),
    #[error(
        "Registry {registry} refused HTTPS; if it serves plain HTTP, add it to insecure registries"
    )]
    HttpsRefused {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("Registry {registry} presented a TLS certificate this host does not trust")]
    Certificate {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("Cannot reach registry {registry}")]
    Unreachable {
        registry: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("Registry {registry} needs credentials for {reference}; give a username and password")]
    AuthRequired { registry: String, reference: String },
    #[error(
        "Registry {registry} refused the credentials for {reference}; check the username and password"
    )]
    AuthFailed {
        registry: String,
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("Manifest unknown: {reference} is not in the registry; check the name and tag")]
    ManifestUnknown { reference: String },
    #[error("Blob {digest} of {reference} is missing from the registry")]
    BlobUnknown { reference: String, digest: String },
    #[error("Registry error pulling {reference}")]
    Registry {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("Downloading blob {digest}")]
    Download {
        digest: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Image {reference} has no {wanted} variant (has: {available})")]
    NoPlatform {
        reference: String,
        wanted: String,
        available: String,
    },

    // Formats.
    #[error("Manifest {what} has unsupported media type {media_type:?}")]
    UnsupportedManifest { what: String, media_type: String },
    #[error("Layer {digest} of {what} has unsupported media type {media_type:?}")]
    UnsupportedLayer {
        what: String,
        digest: String,
        media_type: String,
    },
    #[error("Parsing {what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("Image {what} has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCount {
        what: String,
        layers: usize,
        diff_ids: usize,
    },
    #[error("Layer {layer} of {what} does not match its diff_id {diff_id}")]
    DiffId {
        what: String,
        layer: String,
        diff_id: String,
    },
    #[error("{what} is {size} bytes, more than the {limit} allowed")]
    TooBig { what: String, size: u64, limit: u64 },

    // Archives.
    #[error("Opening {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("Reading the archive")]
    Archive(#[source] std::io::Error),
    #[error("Archive member {member:?} escapes the archive; refusing it")]
    UnsafeMember { member: String },
    #[error("Archive member {member:?} links to {target:?}, outside the archive; refusing it")]
    UnsafeLink { member: String, target: String },
    #[error("{what} names {path:?}, which is outside the archive")]
    PathOutside { what: String, path: String },
    #[error("{what} names {path:?}, which the archive does not have")]
    MissingMember { what: String, path: String },
    #[error("Not an image archive: {0}")]
    NotAnArchive(String),
}

impl OciError {
    /// Whether the error is about the image's content or form (a bad
    /// reference, digest, manifest, archive entry), as opposed to a
    /// registry that failed or the blob store's own I/O. For an import,
    /// such content is the client's.
    pub fn is_content(&self) -> bool {
        use OciError::*;
        match self {
            InvalidReference { .. }
            | InvalidDigest(_)
            | Verification { .. }
            | TooLarge { .. }
            | NoPlatform { .. }
            | UnsupportedManifest { .. }
            | UnsupportedLayer { .. }
            | Json { .. }
            | LayerCount { .. }
            | DiffId { .. }
            | TooBig { .. }
            | Archive(_)
            | UnsafeMember { .. }
            | UnsafeLink { .. }
            | PathOutside { .. }
            | MissingMember { .. }
            | NotAnArchive(_) => true,
            BlobWrite { .. }
            | BlobRead { .. }
            | Client(_)
            | HttpsRefused { .. }
            | Certificate { .. }
            | Unreachable { .. }
            | AuthRequired { .. }
            | AuthFailed { .. }
            | ManifestUnknown { .. }
            | BlobUnknown { .. }
            | Registry { .. }
            | Download { .. }
            | Open(..) => false,
        }
    }
}
