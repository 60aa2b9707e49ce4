//! The local execution environment: one QEMU microVM per container on this
//! Linux host.

pub mod accel;
pub mod artifacts;
pub mod network;
pub mod nics;
pub mod qemu;
pub mod qmp;
pub mod runtime;
pub mod tsc;
pub mod vm;

pub use accel::{Accel, AccelChoice};
pub use artifacts::BootArtifacts;
pub use vm::{BootMode, Launched, VmError, VmOptions};
