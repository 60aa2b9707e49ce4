//! Storage: image stores, images, volume stores and volumes.
//!
//! For now it holds the one built-in image, a busybox root filesystem, and
//! the copy-on-write container disks made over it.

pub mod busybox;
pub mod disk;
