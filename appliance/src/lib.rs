//! The appliance: the port layer that turns container operations into VMs.
//!
//! Modules by job: `backend` (execution environments: local QEMU), `tether`
//! (the host side of the guest protocol), `storage` (images and disks),
//! `keys` (SSH keys for the channel).

pub mod api;
pub mod backend;
pub mod handle;
pub mod interaction;
pub mod keys;
pub mod portlayer;
pub mod storage;
pub mod store;
pub mod tether;
