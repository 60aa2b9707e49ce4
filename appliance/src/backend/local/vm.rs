//! Starting one container VM on the local host and connecting to its tether.
//!
//! Owns assembling the `ContainerSpec` (with a fresh host key and the
//! appliance's client key), the VM's working directory (spec, sockets,
//! console log, copy-on-write root disk) and the QEMU configuration.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use prost::Message;
use proto::v1::{ChannelSpec, ContainerSpec, Keys, Mount, RootFs, SessionSpec, channel_spec::Kind};
use russh::keys::{PrivateKey, PublicKey};

use super::accel::Accel;
use super::artifacts::BootArtifacts;
use super::qemu::{Boot, Disk, Machine, QemuError, Vm, VmConfig, read_lossy};
use crate::keys::{self, KeyError};
use crate::storage::disk::{self, DiskError};
use crate::tether::{Client, ClientError, Phase};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Container {0}: writing {1}")]
    Write(String, PathBuf, #[source] std::io::Error),
    #[error("Container {0}: keys")]
    Keys(String, #[source] KeyError),
    #[error("Container {0}: root disk")]
    Disk(String, #[source] DiskError),
    #[error("Container {0}")]
    Qemu(String, #[source] QemuError),
    #[error(
        "Container {id}: tether did not answer within {timeout:?} ({phase}; {attempts} connection attempts); console says:\n{console}"
    )]
    BootTimeout {
        id: String,
        timeout: Duration,
        phase: &'static str,
        attempts: u32,
        console: String,
    },
    #[error("Container {id}: connecting to the tether; console says:\n{console}")]
    Connect {
        id: String,
        console: String,
        #[source]
        source: Box<ClientError>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// microvm, direct kernel boot of vmlinuz + initrd.img.
    Direct,
    /// q35 booting bootstrap.iso as a CD-ROM, as a vSphere VM does.
    Cdrom,
}

#[derive(Debug, Clone)]
pub struct VmOptions {
    pub id: String,
    pub hostname: String,
    pub artifacts: BootArtifacts,
    pub boot: BootMode,
    /// Read-only base image of the root filesystem (raw ext4).
    pub rootfs_base: PathBuf,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub primary: SessionSpec,
    pub linger_seconds: u32,
    /// Directory for this VM's files; must exist. Keep it short: it holds
    /// unix sockets (108-byte path limit).
    pub workdir: PathBuf,
    pub qemu: PathBuf,
    /// Keep QEMU running when this process exits (the appliance's VMs
    /// outlive it); otherwise QEMU is killed with its handle.
    pub detached: bool,
    /// Further virtio-serial ports: (name in the guest, host socket).
    pub extra_ports: Vec<(String, PathBuf)>,
    /// Volume disks, mounted by the tether in order.
    pub volumes: Vec<VolumeDisk>,
    /// Boot the container's disks with no process: the tether only serves
    /// the host (copies into and out of a stopped container).
    pub maintenance: bool,
    /// The container's copy-on-write root disk, if not `workdir/root.qcow2`.
    pub root_disk: Option<PathBuf>,
    /// Network interfaces (host taps, made beforehand) and name servers.
    pub nics: Vec<super::nics::Nic>,
    pub nameservers: Vec<String>,
    /// Names of its own for the guest's `/etc/hosts`, on its first address.
    pub names: Vec<String>,
}

/// A volume's disk and where the container sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDisk {
    /// Raw ext4 file.
    pub path: PathBuf,
    /// virtio-blk serial the tether finds it by (at most 20 bytes).
    pub serial: String,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

impl VmOptions {
    pub fn new(
        id: &str,
        artifacts: BootArtifacts,
        rootfs_base: PathBuf,
        workdir: PathBuf,
        primary: SessionSpec,
    ) -> Self {
        Self {
            id: id.to_string(),
            hostname: id.chars().take(12).collect(),
            artifacts,
            boot: BootMode::Direct,
            rootfs_base,
            accel: Accel::Tcg,
            memory_mib: 256,
            cpus: 1,
            primary,
            linger_seconds: 0,
            workdir,
            qemu: "qemu-system-x86_64".into(),
            detached: false,
            extra_ports: vec![],
            volumes: vec![],
            maintenance: false,
            root_disk: None,
            nics: vec![],
            nameservers: vec![],
            names: vec![],
        }
    }
}

/// Kernel command line for direct boot of a microVM.
pub fn cmdline(accel: Accel) -> String {
    let mut c = format!("console=ttyS0 panic=-1 quiet {}", proto::SPEC_CMDLINE);
    if let Some(khz) = super::tsc::guest_tsc_khz(accel) {
        c.push_str(&format!(" tsc_early_khz={khz}"));
    }
    c
}

/// A launched VM whose tether has not been connected to yet.
pub struct Launched {
    pub id: String,
    pub vm: Vm,
    pub spec: ContainerSpec,
    pub host_key: PublicKey,
}

/// Writes the spec and disk, and starts QEMU. `client_key` is the one key
/// the tether will let in.
pub fn launch(opts: &VmOptions, client_key: &PublicKey) -> Result<Launched, VmError> {
    let id = opts.id.clone();
    let host_key = keys::generate().map_err(|e| VmError::Keys(id.clone(), e))?;
    let spec = ContainerSpec {
        id: id.clone(),
        hostname: opts.hostname.clone(),
        rootfs: Some(RootFs {
            source: "serial:rootfs".into(),
            fstype: "ext4".into(),
            read_only: false,
        }),
        primary: (!opts.maintenance).then(|| opts.primary.clone()),
        maintenance: opts.maintenance,
        keys: Some(Keys {
            host_key: keys::private_openssh(&host_key).map_err(|e| VmError::Keys(id.clone(), e))?,
            authorized_key: keys::public_openssh(client_key)
                .map_err(|e| VmError::Keys(id.clone(), e))?,
        }),
        mounts: opts
            .volumes
            .iter()
            .map(|v| Mount {
                source: format!("serial:{}", v.serial),
                target: v.target.clone(),
                fstype: "ext4".into(),
                options: String::new(),
                read_only: v.read_only,
            })
            .collect(),
        networks: opts
            .nics
            .iter()
            .map(|n| proto::v1::Network {
                name: n.scope.clone(),
                mac: n.mac.clone(),
                addresses: vec![n.address.clone()],
                gateway: n.gateway.clone().unwrap_or_default(),
                mtu: n.mtu,
            })
            .collect(),
        dns: (!opts.nameservers.is_empty()).then(|| proto::v1::Dns {
            nameservers: opts.nameservers.clone(),
            ..Default::default()
        }),
        hosts: match opts.nics.first() {
            Some(n) if !opts.names.is_empty() => vec![proto::v1::HostEntry {
                address: n.address.split('/').next().unwrap_or_default().to_string(),
                names: opts.names.clone(),
            }],
            _ => vec![],
        },
        linger_seconds: opts.linger_seconds,
        channel: Some(ChannelSpec {
            kind: Kind::VirtioSerial as i32,
            address: proto::DEFAULT_PORT_NAME.into(),
        }),
    };
    let w = &opts.workdir;
    let spec_file = w.join("spec.pb");
    write_private(&spec_file, &spec.encode_to_vec())
        .map_err(|e| VmError::Write(id.clone(), spec_file.clone(), e))?;
    let root = opts
        .root_disk
        .clone()
        .unwrap_or_else(|| w.join("root.qcow2"));
    // A container keeps its disk across restarts: make it only once.
    if !root.exists() {
        disk::overlay(&opts.rootfs_base, &root).map_err(|e| VmError::Disk(id.clone(), e))?;
    }
    let (machine, boot) = match opts.boot {
        BootMode::Direct => (
            Machine::Microvm,
            Boot::Direct {
                kernel: opts.artifacts.kernel.clone(),
                initrd: opts.artifacts.initrd.clone(),
                cmdline: cmdline(opts.accel),
            },
        ),
        BootMode::Cdrom => (
            Machine::Q35,
            Boot::Cdrom {
                iso: opts.artifacts.iso.clone(),
            },
        ),
    };
    let config = VmConfig {
        name: id.clone(),
        qemu: opts.qemu.clone(),
        machine,
        accel: opts.accel,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        boot,
        spec_file,
        channel_socket: w.join("tether.sock"),
        console_log: w.join("console.log"),
        disks: std::iter::once(Disk {
            path: root,
            serial: "rootfs".into(),
            format: "qcow2".into(),
            read_only: false,
        })
        .chain(opts.volumes.iter().map(|v| Disk {
            path: v.path.clone(),
            serial: v.serial.clone(),
            format: "raw".into(),
            read_only: v.read_only,
        }))
        .collect(),
        qmp_socket: Some(w.join("qmp.sock")),
        extra_ports: opts.extra_ports.clone(),
        nics: opts
            .nics
            .iter()
            .map(|n| (n.tap.clone(), n.mac.clone()))
            .collect(),
    };
    let vm = Vm::spawn(config, opts.detached).map_err(|e| VmError::Qemu(id.clone(), e))?;
    Ok(Launched {
        id,
        vm,
        spec,
        host_key: host_key.public_key().clone(),
    })
}

/// The spec holds the tether's private host key: only the owner may read it.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

impl Launched {
    /// Connects to the tether, waiting up to `timeout` for the VM to boot.
    pub async fn connect(
        &mut self,
        key: &PrivateKey,
        timeout: Duration,
    ) -> Result<Client, VmError> {
        let id = self.id.clone();
        let deadline = Instant::now() + timeout;
        // Waits for QEMU's socket (and notices QEMU dying meanwhile).
        let first = match tokio::time::timeout(timeout, self.vm.connect_channel(timeout)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(VmError::Qemu(id, e)),
            Err(_) => {
                return Err(VmError::BootTimeout {
                    id,
                    timeout,
                    phase: "waiting for QEMU's channel socket",
                    attempts: 0,
                    console: tail(&self.vm.console(), 30),
                });
            }
        };
        let to = TetherAt {
            socket: &self.vm.config.channel_socket,
            console: &self.vm.config.console_log,
            key,
            host_key: &self.host_key,
            stall: STALL,
        };
        match to.connect(first, deadline).await {
            Ok(c) => Ok(c),
            Err(ConnectFailure::Stalled { phase, attempts }) => Err(VmError::BootTimeout {
                id,
                timeout,
                phase,
                attempts,
                console: tail(&self.vm.console(), 30),
            }),
            Err(ConnectFailure::Failed(source)) => Err(VmError::Connect {
                id,
                console: tail(&self.vm.console(), 30),
                source,
            }),
        }
    }
}

/// How long a tether that says it is ready may take to complete a
/// connection before it is abandoned for a fresh one. On a booted tether
/// the whole set-up takes well under a second, even under TCG.
pub const STALL: Duration = Duration::from_secs(15);

/// What the tether prints on its console once it serves the host.
const READY_LINE: &str = "tether ready";

/// One VM's tether, reached through QEMU's channel socket.
pub struct TetherAt<'a> {
    pub socket: &'a Path,
    pub console: &'a Path,
    pub key: &'a PrivateKey,
    pub host_key: &'a PublicKey,
    /// How long a connection may stall once the tether is ready (`STALL`).
    pub stall: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectFailure {
    /// The deadline passed; `phase` is where the last attempt was.
    #[error("the tether did not answer ({phase}; {attempts} connection attempts)")]
    Stalled { phase: &'static str, attempts: u32 },
    /// The tether answered with an error (wrong key, refused channel, ...).
    #[error("{}", crate::api::error::error_chain(.0.as_ref()))]
    Failed(Box<ClientError>),
}

impl TetherAt<'_> {
    /// Connects over `first` (a fresh connection to the socket), until
    /// `deadline`. A connection that stalls for `stall` while the console
    /// says the tether is ready is dropped and the socket connected again:
    /// the tether starts over on a new connection, and bytes lost on the
    /// way (the channel is not a reliable socket end to end) cannot hang
    /// the start.
    pub async fn connect(
        &self,
        first: UnixStream,
        deadline: Instant,
    ) -> Result<Client, ConnectFailure> {
        let mut stream = Some(first);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let phase = Phase::default();
            let stream = match stream.take() {
                Some(s) => s,
                None => match UnixStream::connect(self.socket).await {
                    Ok(s) => s,
                    Err(e) => {
                        return Err(ConnectFailure::Failed(Box::new(ClientError::Handshake(e))));
                    }
                },
            };
            let attempt = Client::connect_reporting(stream, self.key, self.host_key, &phase);
            tokio::select! {
                r = attempt => return r.map_err(|e| ConnectFailure::Failed(Box::new(e))),
                () = stalled(self.console, self.stall) => {
                    tracing::warn!(
                        socket = %self.socket.display(),
                        attempt = attempts,
                        "the tether is ready but the connection stalled {}; connecting again",
                        phase.get()
                    );
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    return Err(ConnectFailure::Stalled { phase: phase.get(), attempts });
                }
            }
        }
    }
}

/// Returns once the console has said the tether is ready and `stall` has
/// passed since then.
async fn stalled(console: &Path, stall: Duration) {
    while !read_lossy(console).contains(READY_LINE) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(stall).await;
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
