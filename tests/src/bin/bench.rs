//! `make bench`: boot-to-`tether ready` of a container VM against a bare
//! boot of the same kernel whose `/init` is busybox echoing a line and
//! powering off, both measured in this run, medians of several runs.
//!
//! Also reported: boot to the first answered RPC (SSH handshake included),
//! which is what a client of the tether actually waits for; `run --rm
//! busybox echo` to its output through `appliance serve`, measured in the
//! same rounds as the bare boots (interleaved, so that a noisy moment hits
//! both); and stdout throughput through an attach and through the whole
//! run path, against the raw virtio-serial link of the same VM.
//!
//! Then the storage benchmarks (`bench_storage`; `bench storage` runs them
//! alone) and the network benchmarks (`bench_network`; `bench network`):
//! TCP between containers against bare VMs on a bare bridge, connections
//! to a published port against the container's address, and start-up with
//! an endpoint against none.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use appliance::backend::local::qemu::{Boot, Machine, Vm, VmConfig};
use appliance::backend::local::{AccelChoice, accel, vm};
use bootstrap_iso::cpio::Archive;
use tests::{BOOT_TIMEOUT, artifacts, launch, options, rootfs, session};

const RUNS: usize = 5;
/// Rounds of the throughput measurements (256 MiB each way per round).
const THROUGHPUT_ROUNDS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Waits until `path` contains `marker`, polling.
async fn until_console(path: &Path, marker: &str, timeout: Duration) -> anyhow::Result<()> {
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
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// An initramfs whose /init is busybox: echo, then power off.
fn bare_initrd(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut a = Archive::new();
    for d in ["/bin", "/dev", "/proc"] {
        a.add_dir(d, 0o755)?;
    }
    a.add_char_device("/dev/console", 0o600, 5, 1)?;
    a.add_file("/bin/busybox", 0o755, std::fs::read("/bin/busybox")?)?;
    a.add_file(
        "/init",
        0o755,
        b"#!/bin/busybox sh\n/bin/busybox echo bare ready\n/bin/busybox poweroff -f\n".to_vec(),
    )?;
    let path = dir.join("bare.img");
    std::fs::write(&path, a.to_bytes()?)?;
    Ok(path)
}

/// Commits per second through the port layer (create + two task joins +
/// commit, against the in-memory backend) against the store alone doing
/// the same writes (insert + update), on the same kind of database file.
async fn commits() -> anyhow::Result<()> {
    use appliance::backend::fake::FakeBackend;
    use appliance::handle::HandleKey;
    use appliance::portlayer::exec::{CreateSpec, PortLayer};
    use appliance::portlayer::model::Task;
    use appliance::store::{ContainerRecord, Store};
    use std::sync::Arc;
    const N: usize = 300;
    let dir = tempfile::tempdir()?;

    let store = Store::open(&dir.path().join("baseline.db"))?;
    let t0 = Instant::now();
    for i in 0..N {
        let mut rec = ContainerRecord {
            id: format!("{i:064x}"),
            name: format!("b{i}"),
            version: 0,
            state: "created".into(),
            labels: Default::default(),
            body: serde_json::json!({ "image": "busybox", "tasks": {} }),
            created_at: 0,
            updated_at: 0,
            uses: vec![],
            ..Default::default()
        };
        let v = store.insert_container(&rec)?;
        rec.body["tasks"] = serde_json::json!({ "a": {}, "b": {} });
        store.update_container(&rec, v)?;
    }
    let base = N as f64 / t0.elapsed().as_secs_f64();

    let pl = PortLayer::new(
        Arc::new(Store::open(&dir.path().join("state.db"))?),
        HandleKey::from_bytes([1; 32]),
        Arc::new(FakeBackend::default()),
    );
    let t0 = Instant::now();
    for i in 0..N {
        let (_, h) = pl.create(CreateSpec {
            name: format!("c{i}"),
            image: "busybox".into(),
            task: Task {
                args: vec!["true".into()],
                ..Default::default()
            },
            ..Default::default()
        })?;
        let h = pl.commit(&h).await?.handle;
        let mut h = h;
        for t in ["a", "b"] {
            h = pl.task_join(
                &h,
                Task {
                    id: t.into(),
                    args: vec!["true".into()],
                    ..Default::default()
                },
            )?;
        }
        pl.commit(&h).await?;
    }
    let ours = N as f64 / t0.elapsed().as_secs_f64();
    println!(
        "port layer create+joins+commit:    {ours:>7.0} /s   store-only baseline {base:.0} /s   ratio {:.2}x",
        ours / base
    );
    Ok(())
}

/// Container stdout streamed to a client through the tether (SSH channel
/// over virtio-serial, with acknowledgements), against raw virtio-serial
/// throughput from the same VM (the guest writes to a second port that the
/// host reads directly). Both are written by `dd bs=1M`: large writes, so
/// that the baseline is the link and not the writer. Medians of
/// [`THROUGHPUT_ROUNDS`] rounds, each raw then attach.
async fn throughput(accel: appliance::backend::local::Accel) -> anyhow::Result<f64> {
    use appliance::tether::AttachEvent;
    use tokio::io::AsyncReadExt;
    const N: u64 = 256 << 20;
    let dir = tempfile::tempdir()?;
    let mut opts = options(&dir, session("main", &["sleep", "100000"]));
    opts.accel = accel;
    let raw_sock = dir.path().join("raw.sock");
    opts.extra_ports = vec![("org.tether.bench".into(), raw_sock.clone())];
    let (mut launched, key) = launch(&opts);
    let client = launched.connect(&key, BOOT_TIMEOUT).await?;

    // Raw then attach, round by round, so a noisy moment hits both.
    let mut raw = tokio::net::UnixStream::connect(&raw_sock).await?;
    let (mut raw_t, mut att_t) = (Vec::new(), Vec::new());
    for round in 0..THROUGHPUT_ROUNDS {
        // Raw: the guest writes N bytes to the bench port; the host counts.
        let script = format!(
            "for p in /sys/class/virtio-ports/*; do [ \"$(cat $p/name)\" = org.tether.bench ] && d=/dev/${{p##*/}}; done; dd if=/dev/zero bs=1M count={} of=$d 2>/dev/null",
            N >> 20
        );
        let t0 = Instant::now();
        client
            .exec(session(&format!("raw{round}"), &["sh", "-c", &script]))
            .await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0u64;
        while got < N {
            let n = raw.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "raw port closed after {got} bytes");
            got += n as u64;
        }
        raw_t.push(t0.elapsed());

        // Through the tether: an exec's stdout over its attach channel.
        // BENCH_PROFILE=DIR: a sampling profile of the guest during the
        // first stream (scripts/guest-profile reports it).
        let profile = match std::env::var_os("BENCH_PROFILE") {
            Some(d) if round == 0 => {
                Some(start_profile(&client, Path::new(&d), &dir.path().join("qmp.sock")).await?)
            }
            _ => None,
        };
        let id = format!("out{round}");
        let t0 = Instant::now();
        client
            .exec(session(
                &id,
                &["dd", "if=/dev/zero", "bs=1M", &format!("count={}", N >> 20)],
            ))
            .await?;
        let mut a = client.attach(&id, (0, 0), false).await?;
        let mut got = 0u64;
        while let Some(ev) = a.next().await? {
            if let AttachEvent::Stdout(b) = ev {
                got += b.len() as u64;
            }
        }
        anyhow::ensure!(got == N, "attach delivered {got} of {N} bytes");
        att_t.push(t0.elapsed());
        if let Some(mut p) = profile {
            p.wait()?;
        }
    }
    let mbs = |t: Duration| N as f64 / 1048576.0 / t.as_secs_f64();
    let (raw_t, att_t) = (median(raw_t), median(att_t));
    println!(
        "attach stdout, 256 MiB:            {:>7.1} MiB/s   raw virtio-serial {:.1} MiB/s   ratio {:.2}x",
        mbs(att_t),
        mbs(raw_t),
        mbs(att_t) / mbs(raw_t)
    );
    launched.vm.kill().await?;
    Ok(mbs(raw_t))
}

/// Saves the tether's memory map and the guest kernel's symbols into `dir`
/// and starts sampling the guest's registers for 8 s over QMP.
async fn start_profile(
    client: &appliance::tether::Client,
    dir: &Path,
    qmp: &Path,
) -> anyhow::Result<std::process::Child> {
    use appliance::tether::AttachEvent;
    std::fs::create_dir_all(dir)?;
    for (id, cmd) in [
        ("maps", "cat /proc/1/maps"),
        ("kallsyms", "cat /proc/kallsyms"),
    ] {
        client.exec(session(id, &["sh", "-c", cmd])).await?;
        let mut a = client.attach(id, (0, 0), false).await?;
        let mut v = Vec::new();
        while let Some(ev) = a.next().await? {
            if let AttachEvent::Stdout(b) = ev {
                v.extend_from_slice(&b);
            }
        }
        std::fs::write(dir.join(id), v)?;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/guest-profile");
    Ok(std::process::Command::new("python3")
        .arg(script)
        .arg("sample")
        .arg(qmp)
        .arg(dir.join("samples"))
        .arg("8")
        .spawn()?)
}

/// A release `appliance serve` on a fresh state directory, for the run-path
/// measurements.
struct Serve {
    bin: PathBuf,
    state: tempfile::TempDir,
    child: tokio::process::Child,
}

impl Serve {
    async fn start() -> anyhow::Result<Self> {
        use std::process::Stdio;
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/appliance");
        anyhow::ensure!(
            bin.exists(),
            "{} missing: make bench builds it",
            bin.display()
        );
        let state = tempfile::tempdir()?;
        let child = tokio::process::Command::new(&bin)
            .arg("--state")
            .arg(state.path())
            .arg("serve")
            .env(
                "APPLIANCE_ACCEL",
                std::env::var("APPLIANCE_ACCEL").unwrap_or_else(|_| "tcg".into()),
            )
            .env(
                "APPLIANCE_BOOT_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../build"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let sock = state.path().join("appliance.sock");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sock.exists() {
            anyhow::ensure!(Instant::now() < deadline, "appliance serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(Self { bin, state, child })
    }

    /// `appliance run --rm busybox -- ARGS`: the time from the client's
    /// start to its first byte of output, the time from that byte to the
    /// end, and the bytes it printed.
    async fn run(&self, args: &[&str]) -> anyhow::Result<(Duration, Duration, u64)> {
        use std::process::Stdio;
        use tokio::io::AsyncReadExt;
        let t0 = Instant::now();
        let mut c = tokio::process::Command::new(&self.bin)
            .arg("--state")
            .arg(self.state.path())
            .args(["run", "--rm", "busybox", "--"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut out = c
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut n = out.read(&mut buf).await? as u64;
        anyhow::ensure!(n > 0, "no output");
        let first = t0.elapsed();
        let t1 = Instant::now();
        loop {
            let k = out.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        let rest = t1.elapsed();
        anyhow::ensure!(c.wait().await?.success(), "run failed");
        Ok((first, rest, n))
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        // The containers were removed with --rm: no VM is left.
    }
}

/// Container stdout through the whole run path: `run --rm busybox -- dd`
/// through `appliance serve` (tether, host log, REST) to the client's
/// stdout, against the raw link measured in this run.
async fn run_throughput(serve: &Serve, raw_mbs: f64) -> anyhow::Result<()> {
    const MIB: u64 = 256;
    let count = format!("count={MIB}");
    let (_, rest, n) = serve.run(&["dd", "if=/dev/zero", "bs=1M", &count]).await?;
    anyhow::ensure!(n == MIB << 20, "run printed {n} of {} bytes", MIB << 20);
    let mbs = n as f64 / 1048576.0 / rest.as_secs_f64();
    println!(
        "run --rm busybox dd, 256 MiB:      {mbs:>7.1} MiB/s   raw virtio-serial {raw_mbs:.1} MiB/s   ratio {:.2}x",
        mbs / raw_mbs
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `bench storage` runs only the storage benchmarks.
    if std::env::args().nth(1).as_deref() == Some("storage") {
        return tokio::task::spawn_blocking(|| -> anyhow::Result<()> {
            tests::bench_storage::pull_vs_skopeo()?;
            tests::bench_storage::create_small_vs_big()
        })
        .await?;
    }
    // `bench network` runs only the network benchmarks.
    if std::env::args().nth(1).as_deref() == Some("network") {
        let accel = resolve_accel().await?;
        return tokio::task::spawn_blocking(move || tests::bench_network::run(accel)).await?;
    }
    // `bench throughput` runs only the attach throughput against the link.
    if std::env::args().nth(1).as_deref() == Some("throughput") {
        return throughput(resolve_accel().await?).await.map(drop);
    }
    commits().await?;
    let art = artifacts();
    let qemu = Path::new("qemu-system-x86_64");
    let accel = resolve_accel().await?;
    let scratch = tempfile::tempdir()?;
    let bare = bare_initrd(scratch.path())?;
    let _ = rootfs();

    let serve = Serve::start().await?;
    let (mut bare_t, mut ready_t, mut rpc_t, mut run_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..RUNS {
        // Bare boot of the same kernel, same machine and command line.
        let dir = tempfile::tempdir()?;
        let config = VmConfig {
            name: format!("bare{run}"),
            qemu: qemu.into(),
            machine: Machine::Microvm,
            accel,
            memory_mib: 256,
            cpus: 1,
            boot: Boot::Direct {
                kernel: art.kernel.clone(),
                initrd: bare.clone(),
                cmdline: vm::cmdline(accel),
            },
            spec_file: dir.path().join("none"),
            channel_socket: dir.path().join("s.sock"),
            console_log: dir.path().join("console.log"),
            disks: vec![],
            qmp_socket: None,
            extra_ports: vec![],
            nics: vec![],
        };
        std::fs::write(&config.spec_file, b"")?;
        let t0 = Instant::now();
        let mut bare_vm = Vm::spawn(config, false)?;
        until_console(&dir.path().join("console.log"), "bare ready", BOOT_TIMEOUT).await?;
        bare_t.push(t0.elapsed());
        let _ = tokio::time::timeout(Duration::from_secs(10), bare_vm.wait()).await;

        // The container VM: tether boots, mounts the root disk, serves.
        let dir = tempfile::tempdir()?;
        let mut opts = options(&dir, session("main", &["sleep", "1000"]));
        opts.accel = accel;
        let t0 = Instant::now();
        let (mut launched, key) = launch(&opts);
        until_console(
            &dir.path().join("console.log"),
            "tether ready",
            BOOT_TIMEOUT,
        )
        .await?;
        ready_t.push(t0.elapsed());
        let client = launched.connect(&key, BOOT_TIMEOUT).await?;
        client.ping(vec![]).await?;
        rpc_t.push(t0.elapsed());
        drop(client);
        launched.vm.kill().await?;

        // The whole run path, in the same round: client start to output.
        run_t.push(serve.run(&["echo", "hi"]).await?.0);
    }
    let (b, r, p, o) = (
        median(bare_t),
        median(ready_t),
        median(rpc_t),
        median(run_t),
    );
    let size =
        std::fs::metadata(Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/tether"))?.len();
    println!("accelerator: {}, runs: {RUNS}, medians", accel.qemu_name());
    println!(
        "bare busybox boot to its echo:     {:>7.3} s (baseline)",
        b.as_secs_f64()
    );
    println!(
        "container VM boot to tether ready: {:>7.3} s  ratio {:.2}x",
        r.as_secs_f64(),
        r.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "container VM boot to first RPC:    {:>7.3} s  ratio {:.2}x",
        p.as_secs_f64(),
        p.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "tether binary (static, stripped):  {size} bytes ({:.2} MB)",
        size as f64 / 1e6
    );
    println!(
        "run --rm busybox echo, to output:  {:>7.3} s  ratio {:.2}x",
        o.as_secs_f64(),
        o.as_secs_f64() / b.as_secs_f64()
    );
    let raw = throughput(accel).await?;
    run_throughput(&serve, raw).await?;
    serve.stop().await;
    tokio::task::spawn_blocking(|| -> anyhow::Result<()> {
        tests::bench_storage::pull_vs_skopeo()?;
        tests::bench_storage::create_small_vs_big()
    })
    .await??;
    tokio::task::spawn_blocking(move || tests::bench_network::run(accel)).await??;
    Ok(())
}

/// The accelerator `APPLIANCE_ACCEL` asks for (TCG by default), resolved
/// as `appliance serve` resolves it.
async fn resolve_accel() -> anyhow::Result<appliance::backend::local::Accel> {
    let art = artifacts();
    let choice: AccelChoice = std::env::var("APPLIANCE_ACCEL")
        .unwrap_or_else(|_| "tcg".into())
        .parse()?;
    let qemu = Path::new("qemu-system-x86_64");
    Ok(accel::resolve(choice, qemu, &art.kernel, &art.initrd, None).await)
}
