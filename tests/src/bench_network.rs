//! Network benchmarks for `make bench` (`bench network` runs them alone),
//! each a ratio against a baseline measured in the same run, interleaved
//! run by run (the machine is noisy), medians of [`RUNS`]:
//! - TCP throughput between two containers on a user-defined scope (its
//!   bridge, taps and the appliance's nftables rules), against two bare VMs
//!   of the same kernel and QEMU command line on a bare Linux bridge with
//!   taps made here and no rules at all;
//! - connections per second to a published port from the loopback of the
//!   appliance's namespace (DNAT), against connections to the container's
//!   own address from the same client;
//! - `run --rm busybox echo` to its output with one endpoint, against none.
//!
//! Both ends of every transfer run `assets/net_bench.c`, the same static
//! program in the containers and in the bare VMs, timed from the host.
//!
//! Owns the namespaces it creates (one for `appliance serve`, one for the
//! bare pair) and everything in them; must not touch the machine's own
//! interfaces, routes or firewall, and no traffic leaves the namespaces.
//! Every VM and process it starts is ended by its PID, every namespace
//! deleted by its name, when done or failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use appliance::backend::local::Accel;
use appliance::backend::local::qemu::{Boot, Machine, VmConfig};
use appliance::backend::local::vm;
use bootstrap_iso::cpio::Archive;

use crate::netns::Netns;
use crate::server::{Server, appliance_bin};

const RUNS: usize = 5;
/// MiB per throughput run: long enough (seconds under TCG) that the link,
/// not the set-up of a connection, the control round trip or a moment of
/// noise, decides the time (at 64 MiB the ratio moved by 10-20% from one
/// bench to the next).
const MIB: u64 = 256;
/// Sequential connections per connection-rate run.
const CONNECTS: usize = 100;

/// The scope of the containers, and their addresses on it.
const SUBNET: &str = "10.77.50.0/24";
const SINK_IP: &str = "10.77.50.10";
const SENDER_IP: &str = "10.77.50.11";
/// The bare pair's link: addresses and MACs of its two VMs.
const BARE: [(&str, &str); 2] = [
    ("10.77.60.10", "02:00:00:77:60:10"),
    ("10.77.60.11", "02:00:00:77:60:11"),
];
/// The sink's port, and the port "hello" answers on in the container
/// (published on the appliance's host as `PUBLISHED`).
const SINK_PORT: u16 = 5001;
const HELLO_PORT: u16 = 80;
const PUBLISHED: u16 = 8080;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the network benchmarks and prints their lines.
pub fn run(accel: Accel) -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let helper = build_helper(scratch.path())?;
    // Declared before the server and the VMs: dropped after them.
    let ns = Netns::new("bench");
    let bare_ns = Netns::new("bare");
    let state = tempfile::tempdir()?;
    let serve = Server::start_in(state.path(), &ns);
    let mut containers = Containers::start(&serve, &helper)?;
    let pair = BarePair::start(&bare_ns, accel, &helper, scratch.path())?;
    println!(
        "network, accelerator: {}, runs: {RUNS}, medians",
        accel.qemu_name()
    );
    throughput(pair, &mut containers)?;
    connects(&ns)?;
    start_to_output(&serve)?;
    containers.remove(&serve)
}

/// `assets/net_bench.c`, built static into `dir`.
fn build_helper(dir: &Path) -> anyhow::Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/net_bench.c");
    let bin = dir.join("net_bench");
    let o = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .map_err(|e| anyhow::anyhow!("cc (gcc) builds {}: {e}", src.display()))?;
    anyhow::ensure!(
        o.status.success(),
        "cc {}: {}",
        src.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(bin)
}

/// The CLI against `serve`; its stdout, or an error with its stderr.
fn cli(serve: &Server, args: &[&str]) -> anyhow::Result<String> {
    let o = serve.cli(args);
    anyhow::ensure!(
        o.status.success(),
        "appliance {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A `net_bench send` loop in a guest, driven line by line: the host
/// writes a size in MiB, the guest sends that much to the sink and answers
/// with what the sink counted.
struct Sender {
    to: Box<dyn Write + Send>,
    from: Box<dyn BufRead + Send>,
}

impl Sender {
    /// One transfer of `mib` MiB, timed from the request to the sink's
    /// count: every byte has arrived.
    fn send(&mut self, mib: u64) -> anyhow::Result<Duration> {
        let t0 = Instant::now();
        writeln!(self.to, "{mib}")?;
        self.to.flush()?;
        let mut line = String::new();
        self.from.read_line(&mut line)?;
        let t = t0.elapsed();
        let want = format!("ok {}", mib << 20);
        anyhow::ensure!(
            line.trim() == want,
            "sender answered {line:?}, not {want:?}"
        );
        Ok(t)
    }

    /// A first small transfer, tried again until the sink listens.
    fn warm_up(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.send(1) {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
}

/// The two containers of the throughput and connection measurements on
/// their scope: `sink` (the sink, and "hello" published on `PUBLISHED`)
/// and `sender` (a sender loop in an `exec -i`).
struct Containers {
    exec: Child,
    sender: Sender,
}

impl Containers {
    fn start(serve: &Server, helper: &Path) -> anyhow::Result<Self> {
        let helper = helper.to_string_lossy();
        cli(serve, &["network", "create", "--subnet", SUBNET, "bench"])?;
        let published = format!("{PUBLISHED}:{HELLO_PORT}");
        for (name, ip, extra) in [
            ("sink", SINK_IP, &["-p", published.as_str()][..]),
            ("sender", SENDER_IP, &[][..]),
        ] {
            let mut args = vec![
                "run",
                "-d",
                "--name",
                name,
                "--network",
                "bench",
                "--ip",
                ip,
            ];
            args.extend_from_slice(extra);
            args.extend_from_slice(&["busybox", "--", "sleep", "1000000"]);
            cli(serve, &args)?;
            cli(serve, &["cp", &helper, &format!("{name}:/tmp")])?;
        }
        let servers = format!(
            "/tmp/net_bench sink {SINK_PORT} </dev/null >/dev/null 2>&1 & \
             /tmp/net_bench hello {HELLO_PORT} </dev/null >/dev/null 2>&1 &"
        );
        cli(serve, &["exec", "sink", "--", "sh", "-c", &servers])?;
        let script = format!("while read n; do /tmp/net_bench send {SINK_IP} {SINK_PORT} $n; done");
        let mut exec = Command::new(appliance_bin())
            .arg("--state")
            .arg(&serve.state)
            .args(["exec", "-i", "sender", "--", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting appliance exec -i sender")?;
        let (Some(to), Some(from)) = (exec.stdin.take(), exec.stdout.take()) else {
            anyhow::bail!("exec -i sender: no pipes");
        };
        // Owned before anything can fail: its drop ends the client.
        let mut c = Self {
            exec,
            sender: Sender {
                to: Box::new(to),
                from: Box::new(BufReader::new(from)),
            },
        };
        c.sender.warm_up()?;
        Ok(c)
    }

    /// Ends the sender loop and removes the containers and their scope.
    fn remove(self, serve: &Server) -> anyhow::Result<()> {
        drop(self);
        cli(serve, &["rm", "-f", "sink", "sender"])?;
        cli(serve, &["network", "rm", "bench"]).map(drop)
    }
}

impl Drop for Containers {
    /// Ends the sender loop's client (by its PID) however the bench ends;
    /// the VMs go with the server.
    fn drop(&mut self) {
        let _ = self.exec.kill();
        let _ = self.exec.wait();
    }
}

/// A bare VM: QEMU started in the bare namespace on one of its taps, the
/// same kernel and initrd modules as a container VM, busybox as `/init`.
struct BareVm {
    qemu: Child,
    console: PathBuf,
}

impl Drop for BareVm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// Two bare VMs on a bare bridge: the first sends, the second sinks.
struct BarePair {
    vms: Vec<BareVm>,
    sender: Sender,
    _dir: tempfile::TempDir,
}

impl BarePair {
    fn start(ns: &Netns, accel: Accel, helper: &Path, scratch: &Path) -> anyhow::Result<Self> {
        let art = crate::artifacts();
        ns.run_ok(&["ip", "link", "add", "nbbr0", "type", "bridge"]);
        ns.run_ok(&["ip", "link", "set", "nbbr0", "up"]);
        let dir = tempfile::tempdir_in(scratch).context("the bare VMs' directory")?;
        let mut vms = Vec::new();
        let mut control = None;
        for (i, (ip, mac)) in BARE.iter().enumerate() {
            let tap = format!("nbt{i}");
            ns.run_ok(&["ip", "tuntap", "add", "dev", &tap, "mode", "tap"]);
            ns.run_ok(&["ip", "link", "set", &tap, "master", "nbbr0"]);
            ns.run_ok(&["ip", "link", "set", &tap, "up"]);
            // The first sends to the second.
            let peer = (i == 0).then_some(BARE[1].0);
            let initrd = bare_initrd(dir.path(), i, &art.initrd, helper, ip, peer)?;
            let config = VmConfig {
                name: format!("bare{i}"),
                qemu: "qemu-system-x86_64".into(),
                machine: Machine::Microvm,
                accel,
                // As a container VM gets by default.
                memory_mib: 256,
                cpus: 1,
                boot: Boot::Direct {
                    kernel: art.kernel.clone(),
                    initrd,
                    cmdline: vm::cmdline(accel),
                },
                spec_file: dir.path().join("none"),
                channel_socket: dir.path().join(format!("ctl{i}.sock")),
                console_log: dir.path().join(format!("console{i}.log")),
                disks: vec![],
                qmp_socket: None,
                extra_ports: vec![],
                nics: vec![(tap.clone(), mac.to_string())],
            };
            std::fs::write(&config.spec_file, b"")
                .with_context(|| format!("writing {}", config.spec_file.display()))?;
            let log = dir.path().join(format!("qemu{i}.log"));
            let log = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            // `ip netns exec` execs QEMU: the child's PID is QEMU's.
            let qemu = ns
                .command(&["qemu-system-x86_64"])
                .args(config.args())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting QEMU for bare VM {i} in {}", ns.name))?;
            vms.push(BareVm {
                qemu,
                console: config.console_log.clone(),
            });
            if i == 0 {
                control = Some(config.channel_socket.clone());
            }
        }
        for v in &vms {
            until_console(&v.console, "bare ready", crate::BOOT_TIMEOUT)?;
        }
        let socket = control.ok_or_else(|| anyhow::anyhow!("no bare VM"))?;
        let stream = std::os::unix::net::UnixStream::connect(&socket)
            .with_context(|| format!("connecting to {}", socket.display()))?;
        let mut sender = Sender {
            to: Box::new(stream.try_clone()?),
            from: Box::new(BufReader::new(stream)),
        };
        if let Err(e) = sender.warm_up() {
            let consoles: Vec<String> = vms
                .iter()
                .map(|v| appliance::backend::local::qemu::read_lossy(&v.console))
                .collect();
            return Err(e.context(format!(
                "the bare VMs' first transfer; their consoles:\n{}",
                consoles.join("\n---\n")
            )));
        }
        Ok(Self {
            vms,
            sender,
            _dir: dir,
        })
    }
}

/// Waits until the file at `path` contains `marker`, polling.
fn until_console(path: &Path, marker: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read(path).is_ok_and(|b| String::from_utf8_lossy(&b).contains(marker)) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{marker:?} did not appear in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bare VM's initramfs: the container VMs' `initrd.img` (its kernel
/// modules and their load order) with a second archive appended whose
/// `/init` replaces the tether: a busybox script that loads the modules,
/// puts `ip` on eth0, starts the sink and then, given a `peer`, sends to
/// it whenever the host asks on the virtio-serial port (which reads as at
/// its end while no host is connected).
fn bare_initrd(
    dir: &Path,
    i: usize,
    base: &Path,
    helper: &Path,
    ip: &str,
    peer: Option<&str>,
) -> anyhow::Result<PathBuf> {
    let mut a = Archive::new();
    a.add_dir("/bin", 0o755)?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    a.add_file("/bin/busybox", 0o755, read(Path::new("/bin/busybox"))?)?;
    a.add_file("/bin/net_bench", 0o755, read(helper)?)?;
    // Only the sender polls its port; the sink VM sleeps, as a container
    // VM's idle tether does, and takes no CPU from the transfer.
    let control = match peer {
        Some(peer) => format!(
            "exec 3<>$d\n\
             while true; do\n\
             \x20 if read n <&3; then net_bench send {peer} {SINK_PORT} $n >&3; else usleep 20000; fi\n\
             done\n"
        ),
        None => "while true; do sleep 1000000; done\n".to_string(),
    };
    let init = format!(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m 2>/dev/null; done\n\
         ip link set lo up\n\
         ip link set eth0 up\n\
         ip addr add {ip}/24 dev eth0\n\
         net_bench sink {SINK_PORT} </dev/null >/dev/null 2>&1 &\n\
         for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = {port} ] && d=/dev/${{p##*/}}; done\n\
         echo bare ready\n\
         {control}",
        port = proto::DEFAULT_PORT_NAME,
    );
    a.add_file("/init", 0o755, init.into_bytes())?;
    let mut bytes = read(base)?;
    bytes.extend(a.to_bytes()?);
    let path = dir.join(format!("bare{i}.img"));
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// (a) Throughput sender → sink, containers against the bare pair.
fn throughput(mut pair: BarePair, c: &mut Containers) -> anyhow::Result<()> {
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        // Alternating which goes first: neither always follows the other.
        if run % 2 == 0 {
            base.push(pair.sender.send(MIB)?);
        }
        ours.push(c.sender.send(MIB)?);
        if run % 2 == 1 {
            base.push(pair.sender.send(MIB)?);
        }
    }
    drop(pair.vms);
    let mbs = |t: Duration| MIB as f64 / t.as_secs_f64();
    let (o, b) = (mbs(median(ours)), mbs(median(base)));
    println!(
        "{:<35}{o:>7.1} MiB/s   bare VMs on a bare bridge {b:.1} MiB/s   ratio {:.2}x",
        format!("TCP between containers, {MIB} MiB:"),
        o / b
    );
    Ok(())
}

/// (b) Sequential connections with a short exchange each, from the
/// appliance's namespace: to the published port on its loopback, against
/// the container's own address.
fn connects(ns: &Netns) -> anyhow::Result<()> {
    let published: SocketAddr = format!("127.0.0.1:{PUBLISHED}").parse()?;
    let direct: SocketAddr = format!("{SINK_IP}:{HELLO_PORT}").parse()?;
    let (ours, base) = in_netns(ns, || {
        // A first round of each: ARP, conntrack, the guest's caches.
        connect_n(published, 5)?;
        connect_n(direct, 5)?;
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            if run % 2 == 0 {
                base.push(connect_n(direct, CONNECTS)?);
            }
            ours.push(connect_n(published, CONNECTS)?);
            if run % 2 == 1 {
                base.push(connect_n(direct, CONNECTS)?);
            }
        }
        Ok((median(ours), median(base)))
    })?;
    let rate = |t: Duration| CONNECTS as f64 / t.as_secs_f64();
    let (o, b) = (rate(ours), rate(base));
    println!(
        "connects to a published port:      {o:>7.0} /s   direct to the container {b:.0} /s   ratio {:.2}x",
        o / b
    );
    Ok(())
}

/// `n` connections to `addr` one after another, each sending a line and
/// reading the answer to its end.
fn connect_n(addr: SocketAddr, n: usize) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    for _ in 0..n {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"ping\n")?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        anyhow::ensure!(got == b"hi\n", "{addr} answered {got:?}");
    }
    Ok(t0.elapsed())
}

/// Runs `f` on a thread that has joined `ns`'s network namespace (only
/// that thread: the rest of the process stays where it is).
fn in_netns<T: Send>(
    ns: &Netns,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let path = Path::new("/run/netns").join(&ns.name);
            let file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("joining namespace {}", ns.name))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the client in {} panicked", ns.name))?
    })
}

/// (c) `run --rm busybox -- echo` to its output, with an endpoint on the
/// benchmark's scope (already realised: its bridge and name server up for
/// the other two members) against none: tap, rules and guest interface
/// are what the endpoint adds.
fn start_to_output(serve: &Server) -> anyhow::Result<()> {
    let with = [
        "run",
        "--rm",
        "--network",
        "bench",
        "busybox",
        "--",
        "echo",
        "hi",
    ];
    let without = ["run", "--rm", "busybox", "--", "echo", "hi"];
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        if run % 2 == 0 {
            base.push(first_output(serve, &without)?);
        }
        ours.push(first_output(serve, &with)?);
        if run % 2 == 1 {
            base.push(first_output(serve, &without)?);
        }
    }
    let (o, b) = (median(ours), median(base));
    println!(
        "run --rm echo, one endpoint:       {:>7.3} s   no endpoint {:.3} s   ratio {:.2}x",
        o.as_secs_f64(),
        b.as_secs_f64(),
        o.as_secs_f64() / b.as_secs_f64()
    );
    Ok(())
}

/// The CLI with `args`: the time from its start to its first byte of
/// output (then it is waited for, and must succeed).
fn first_output(serve: &Server, args: &[&str]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut c = Command::new(appliance_bin())
        .arg("--state")
        .arg(&serve.state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting appliance {}", args.join(" ")))?;
    let mut out = c
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut buf = [0u8; 64];
    let n = out.read(&mut buf)?;
    let t = t0.elapsed();
    anyhow::ensure!(n > 0, "appliance {}: no output", args.join(" "));
    std::io::copy(&mut out, &mut std::io::sink())?;
    anyhow::ensure!(c.wait()?.success(), "appliance {} failed", args.join(" "));
    Ok(t)
}
