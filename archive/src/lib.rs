//! Escape-safe application and creation of tar streams.
//!
//! The appliance uses [`unpack`] to apply OCI image layers into a staging directory (with
//! whiteouts, and [`decompressed`] under the `compression` feature); `docker cp` uses
//! [`unpack_staged`] (all or nothing: a refused archive changes nothing) in the guest for
//! copies in and on the host for copies out, and [`pack`] on the other side. The default build
//! is pure Rust with no C dependency, so that it links statically into the tether.
//!
//! Modules: `unpack` (the order of work and the rules for entries), `stage` (unpacking inside
//! the target, checking against it, then moving into place), `beneath` (directories reached
//! without following symlinks), `create` (one node replaced or created by name), `whiteout`
//! (OCI whiteouts and opaque directories), `entry_path` (lexical checks of archive paths),
//! `pack` (copy-out), `compression` (gzip and zstd sniffing), `error`.

mod beneath;
#[cfg(feature = "compression")]
mod compression;
mod create;
mod entry_path;
mod error;
mod pack;
mod stage;
#[cfg(test)]
mod testutil;
mod unpack;
mod whiteout;

#[cfg(feature = "compression")]
pub use compression::decompressed;
pub use error::{ArchiveError, EscapeReason};
pub use pack::{PackReport, pack};
pub use stage::{STAGE_PREFIX, unpack_staged};
pub use unpack::{DevicePolicy, UnpackOptions, UnpackReport, unpack};
