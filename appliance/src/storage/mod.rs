//! Storage on the host: what images and volumes are made of.
//!
//! `oci` fetches images (registries, archives) into content-addressed
//! blobs; `rootfs` applies an image's layers into its read-only base disk;
//! `disk` makes the copy-on-write overlay each container gets over it;
//! `busybox` builds the offline busybox image; `model` holds the records
//! the storage component keeps. The component's logic (stores, names, in-use
//! checks) is `portlayer::storage`.

pub mod busybox;
pub mod disk;
pub mod model;
pub mod oci;
pub mod rootfs;
