//! One QEMU process per container VM: its command line and its life.
//!
//! Owns turning a `VmConfig` into QEMU arguments (microvm with direct kernel
//! boot, or q35 booting `bootstrap.iso` as a CD-ROM), starting the process,
//! and connecting to the tether's virtio-serial socket. Must not know what
//! runs in the guest or what the spec says: it hands QEMU the spec file
//! as fw_cfg and nothing more.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;
use tokio::process::{Child, Command};

use super::accel::Accel;

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("Starting {qemu}; install Debian's qemu-system-x86")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Creating the console log {0}")]
    Console(PathBuf, #[source] std::io::Error),
    #[error(
        "VM {name} exited ({status}) before its channel socket {socket} appeared; console: {console}"
    )]
    EarlyExit {
        name: String,
        status: ExitStatus,
        socket: PathBuf,
        console: PathBuf,
    },
    #[error("VM {name}: channel socket {socket} did not appear within {timeout:?}")]
    SocketTimeout {
        name: String,
        socket: PathBuf,
        timeout: Duration,
    },
    #[error("VM {0}: waiting for QEMU")]
    Wait(String, #[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm`: virtio-mmio devices, no PCI, no firmware; direct boot.
    Microvm,
    /// `-M q35`: PCI, SeaBIOS; used to boot `bootstrap.iso`.
    Q35,
}

#[derive(Debug, Clone)]
pub enum Boot {
    Direct {
        kernel: PathBuf,
        initrd: PathBuf,
        cmdline: String,
    },
    Cdrom {
        iso: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    /// virtio-blk serial: how the tether finds the disk.
    pub serial: String,
    /// "raw" or "qcow2".
    pub format: String,
    pub read_only: bool,
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    pub name: String,
    pub qemu: PathBuf,
    pub machine: Machine,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub boot: Boot,
    /// The encoded ContainerSpec, handed to the guest as fw_cfg.
    pub spec_file: PathBuf,
    /// Host end of the tether channel (QEMU listens here).
    pub channel_socket: PathBuf,
    /// Everything the guest prints on its serial console.
    pub console_log: PathBuf,
    pub disks: Vec<Disk>,
    /// QMP control socket, if wanted.
    pub qmp_socket: Option<PathBuf>,
    /// Further virtio-serial ports: (name in the guest, host socket).
    pub extra_ports: Vec<(String, PathBuf)>,
    /// NICs: (host tap, made beforehand; MAC). No vhost: the hosts this
    /// runs on may have no /dev/vhost-net.
    pub nics: Vec<(String, String)>,
}

impl VmConfig {
    /// The QEMU command line for this VM.
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        let pci = self.machine == Machine::Q35;
        let dev = |name: &str| format!("{name}-{}", if pci { "pci" } else { "device" });
        push("-name");
        push(&format!("{},process=qemu-{}", self.name, self.name));
        match self.machine {
            Machine::Microvm => push("-M"),
            Machine::Q35 => push("-M"),
        }
        push(match self.machine {
            Machine::Microvm => "microvm",
            Machine::Q35 => "q35",
        });
        push("-accel");
        push(self.accel.qemu_name());
        push("-cpu");
        push(self.accel.qemu_cpu());
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.cpus.max(1).to_string());
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-display",
            "none",
        ] {
            push(s);
        }
        push("-chardev");
        push(&format!(
            "file,id=console,path={}",
            self.console_log.display()
        ));
        push("-serial");
        push("chardev:console");
        match &self.boot {
            Boot::Direct {
                kernel,
                initrd,
                cmdline,
            } => {
                push("-kernel");
                push(&kernel.display().to_string());
                push("-initrd");
                push(&initrd.display().to_string());
                push("-append");
                push(cmdline);
            }
            Boot::Cdrom { iso } => {
                push("-drive");
                push(&format!(
                    "file={},media=cdrom,if=none,id=cd0,readonly=on,format=raw",
                    iso.display()
                ));
                push("-device");
                push("ide-cd,drive=cd0,bootindex=0");
            }
        }
        push("-fw_cfg");
        push(&format!(
            "name={},file={}",
            proto::FW_CFG_NAME,
            self.spec_file.display()
        ));
        push("-device");
        push(&dev("virtio-rng"));
        push("-device");
        push(&dev("virtio-serial"));
        push("-chardev");
        push(&format!(
            "socket,id=tether,path={},server=on,wait=off",
            self.channel_socket.display()
        ));
        push("-device");
        push(&format!(
            "virtserialport,chardev=tether,name={}",
            proto::DEFAULT_PORT_NAME
        ));
        for (i, (name, sock)) in self.extra_ports.iter().enumerate() {
            push("-chardev");
            push(&format!(
                "socket,id=port{i},path={},server=on,wait=off",
                sock.display()
            ));
            push("-device");
            push(&format!("virtserialport,chardev=port{i},name={name}"));
        }
        for (i, d) in self.disks.iter().enumerate() {
            push("-drive");
            push(&format!(
                "id=disk{i},file={},format={},if=none,cache=unsafe,readonly={}",
                d.path.display(),
                d.format,
                if d.read_only { "on" } else { "off" }
            ));
            push("-device");
            push(&format!(
                "{},drive=disk{i},serial={}",
                dev("virtio-blk"),
                d.serial
            ));
        }
        for (i, (tap, mac)) in self.nics.iter().enumerate() {
            push("-netdev");
            push(&format!(
                "tap,id=net{i},ifname={tap},script=no,downscript=no"
            ));
            push("-device");
            push(&format!("{},netdev=net{i},mac={mac}", dev("virtio-net")));
        }
        if let Some(q) = &self.qmp_socket {
            push("-qmp");
            push(&format!("unix:{},server=on,wait=off", q.display()));
        }
        a
    }
}

/// A running QEMU process.
pub struct Vm {
    pub config: VmConfig,
    child: Child,
}

impl Vm {
    /// Starts QEMU. A `detached` VM runs in its own process group and is
    /// not killed when this handle (or this process) goes away.
    pub fn spawn(config: VmConfig, detached: bool) -> Result<Self, QemuError> {
        // The console log is created (empty) up front so that readers never
        // race its creation.
        std::fs::File::create(&config.console_log)
            .map_err(|e| QemuError::Console(config.console_log.clone(), e))?;
        let stderr_log = config.console_log.with_extension("qemu.log");
        let stderr =
            std::fs::File::create(&stderr_log).map_err(|e| QemuError::Console(stderr_log, e))?;
        let mut cmd = Command::new(&config.qemu);
        cmd.args(config.args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(!detached);
        if detached {
            cmd.process_group(0);
        }
        let child = cmd.spawn().map_err(|source| QemuError::Spawn {
            qemu: config.qemu.clone(),
            source,
        })?;
        Ok(Self { config, child })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Connects to the channel socket, waiting for QEMU to create it.
    pub async fn connect_channel(&mut self, timeout: Duration) -> Result<UnixStream, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = UnixStream::connect(&self.config.channel_socket).await {
                return Ok(s);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(QemuError::EarlyExit {
                    name: self.config.name.clone(),
                    status,
                    socket: self.config.channel_socket.clone(),
                    console: self.config.console_log.clone(),
                });
            }
            if Instant::now() >= deadline {
                return Err(QemuError::SocketTimeout {
                    name: self.config.name.clone(),
                    socket: self.config.channel_socket.clone(),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for QEMU to exit (the guest powered off, or QEMU died).
    pub async fn wait(&mut self) -> Result<ExitStatus, QemuError> {
        self.child
            .wait()
            .await
            .map_err(|e| QemuError::Wait(self.config.name.clone(), e))
    }

    /// Ends QEMU now (the VM is lost) and collects it.
    pub async fn kill(&mut self) -> Result<(), QemuError> {
        let _ = self.child.start_kill();
        self.wait().await.map(drop)
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// What the guest printed on its console so far.
    pub fn console(&self) -> String {
        read_lossy(&self.config.console_log)
    }
}

pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(machine: Machine, boot: Boot) -> VmConfig {
        VmConfig {
            name: "c1".into(),
            qemu: "qemu-system-x86_64".into(),
            machine,
            accel: Accel::Tcg,
            memory_mib: 256,
            cpus: 1,
            boot,
            spec_file: "/s/spec.pb".into(),
            channel_socket: "/s/tether.sock".into(),
            console_log: "/s/console.log".into(),
            disks: vec![Disk {
                path: "/s/root.qcow2".into(),
                serial: "rootfs".into(),
                format: "qcow2".into(),
                read_only: false,
            }],
            qmp_socket: None,
            extra_ports: vec![],
            nics: vec![],
        }
    }

    fn joined(c: &VmConfig) -> String {
        c.args()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn microvm_uses_mmio_devices_and_direct_boot() {
        let c = config(
            Machine::Microvm,
            Boot::Direct {
                kernel: "/b/vmlinuz".into(),
                initrd: "/b/initrd.img".into(),
                cmdline: "console=ttyS0".into(),
            },
        );
        let a = joined(&c);
        assert!(a.contains("-M microvm -accel tcg -cpu max,-erms,-fsrm"));
        assert!(a.contains("-kernel /b/vmlinuz -initrd /b/initrd.img -append console=ttyS0"));
        assert!(a.contains("-fw_cfg name=opt/org.tether/spec,file=/s/spec.pb"));
        assert!(a.contains("virtio-serial-device"));
        assert!(a.contains("virtserialport,chardev=tether,name=org.tether.0"));
        assert!(a.contains("virtio-blk-device,drive=disk0,serial=rootfs"));
        assert!(!a.contains("-pci"));
        assert!(!a.contains("-netdev"));
    }

    #[test]
    fn nics_are_taps_without_vhost() {
        let mut c = config(
            Machine::Microvm,
            Boot::Direct {
                kernel: "/b/vmlinuz".into(),
                initrd: "/b/initrd.img".into(),
                cmdline: "console=ttyS0".into(),
            },
        );
        c.nics = vec![("apt01234567abcd".into(), "02:01:02:03:04:05".into())];
        let a = joined(&c);
        assert!(
            a.contains("-netdev tap,id=net0,ifname=apt01234567abcd,script=no,downscript=no -device virtio-net-device,netdev=net0,mac=02:01:02:03:04:05"),
            "{a}"
        );
        assert!(!a.contains("vhost"));
    }

    #[test]
    fn q35_boots_the_iso_with_pci_devices() {
        let c = config(
            Machine::Q35,
            Boot::Cdrom {
                iso: "/b/bootstrap.iso".into(),
            },
        );
        let a = joined(&c);
        assert!(a.contains("-M q35"));
        assert!(a.contains("file=/b/bootstrap.iso,media=cdrom"));
        assert!(a.contains("virtio-blk-pci,drive=disk0,serial=rootfs"));
        assert!(a.contains("virtio-serial-pci"));
        assert!(!a.contains("-kernel"));
    }
}
