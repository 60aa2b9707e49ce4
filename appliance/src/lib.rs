//! The appliance: the port layer that turns container operations into VMs.
//!
//! Modules by job: `backend` (execution environments: local QEMU), `tether`
//! (the host side of the guest protocol), `storage` (images and disks),
//! `keys` (SSH keys for the channel).

pub mod backend;
pub mod keys;
pub mod storage;
pub mod tether;
