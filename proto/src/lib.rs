//! The tether wire protocol, package `tether.v1`.
//!
//! Owns the message types exchanged between the host (appliance) and the
//! guest (tether), plus the framing helpers both sides use. It must not grow
//! behaviour: no I/O beyond framing, no policy.

#[allow(clippy::all, missing_docs, clippy::unwrap_used)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/tether.v1.rs"));
}

/// The protocol name, as reported by `Version`.
pub const PROTOCOL: &str = "tether.v1";
/// SSH subsystem carrying the RPC channel.
pub const RPC_SUBSYSTEM: &str = "tether-rpc-v1";
/// SSH subsystem carrying one archive transfer (`tether/v1/archive.proto`).
pub const ARCHIVE_SUBSYSTEM: &str = "tether-archive-v1";
/// Default virtio-serial port name.
pub const DEFAULT_PORT_NAME: &str = "org.tether.0";
/// fw_cfg file holding the encoded `ContainerSpec`.
pub const FW_CFG_NAME: &str = "opt/org.tether/spec";
/// Kernel command-line entry telling the tether where its spec is.
pub const SPEC_CMDLINE: &str = "tether.spec=fw_cfg:opt/org.tether/spec";
/// Kernel command-line flag asking the tether only to prove the VM boots.
pub const PROBE_CMDLINE: &str = "tether.probe";
/// Console line the tether prints once it serves the host.
pub const READY_LINE: &str = "tether ready";
/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 << 20;

pub mod flow;
pub mod framing;
pub mod handshake;
