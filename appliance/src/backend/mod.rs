//! Execution environments: where container VMs actually run.
//!
//! `local` launches QEMU microVMs on this host. (vSphere comes later behind
//! the same port-layer API.)

pub mod local;
