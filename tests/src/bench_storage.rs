//! Storage benchmarks for `make bench`, each a ratio measured in the same
//! run:
//! - pull + unpack of a ~100 MB image from a registry on loopback, against
//!   `skopeo copy` + `tar -x` of the same image;
//! - container create for a small image against a ~1 GB image (copy-on-write
//!   overlays: the target is about 1x).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::oci_image::{Entry, ImageBuilder};
use crate::registry::Registry;

const RUNS: usize = 3;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Bytes that compress about 2:1, like binaries and text do.
fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // 16 letters: 4 bits of entropy per byte.
        out.push(b'a' + (x & 15) as u8);
    }
    out
}

/// `layers` layers of `files` files of `size` bytes each.
fn image(layers: usize, files: usize, size: usize, gzip: bool) -> ImageBuilder {
    let mut b = ImageBuilder::new();
    for l in 0..layers {
        let mut entries = vec![Entry::dir(&format!("/data{l}"))];
        for f in 0..files {
            entries.push(Entry::file(
                &format!("/data{l}/f{f}"),
                filler(size, (l * 1000 + f) as u64 + 7),
            ));
        }
        b = if gzip {
            b.layer(entries)
        } else {
            b.layer_uncompressed(entries)
        };
    }
    b
}

/// `appliance serve` (the release build) on a fresh state directory,
/// killed when dropped.
pub struct Serve {
    child: std::process::Child,
    pub state: tempfile::TempDir,
    bin: PathBuf,
}

impl Serve {
    pub fn start() -> anyhow::Result<Serve> {
        let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/appliance");
        anyhow::ensure!(
            bin.exists(),
            "{} missing: make bench builds it",
            bin.display()
        );
        let state = tempfile::tempdir()?;
        let child = Command::new(&bin)
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
            .spawn()?;
        let sock = state.path().join("appliance.sock");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !sock.exists() {
            anyhow::ensure!(Instant::now() < deadline, "appliance serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Serve { child, state, bin })
    }

    /// Runs the CLI; its stdout, or an error with its stderr.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = Command::new(&self.bin)
            .arg("--state")
            .arg(self.state.path())
            .args(args)
            .output()?;
        anyhow::ensure!(
            o.status.success(),
            "appliance {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let o = cmd.output()?;
    anyhow::ensure!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// `skopeo copy` to an OCI layout, then `tar -x` of each layer in order.
fn skopeo_and_tar(reference: &str, scratch: &Path) -> anyhow::Result<Duration> {
    let layout = scratch.join("layout");
    let root = scratch.join("root");
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let t0 = Instant::now();
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{reference}"),
        &format!("oci:{}:bench", layout.display()),
    ]))?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json"))?)?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no manifest in the layout"))?;
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(blob(digest))?)?;
    for l in manifest["layers"].as_array().into_iter().flatten() {
        let d = l["digest"].as_str().unwrap_or_default();
        run(Command::new("tar")
            .arg("-xzf")
            .arg(blob(d))
            .arg("-C")
            .arg(&root))?;
    }
    Ok(t0.elapsed())
}

/// Pull + unpack against skopeo + tar; prints the line.
pub fn pull_vs_skopeo() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let registry = Registry::start();
    // 4 layers of 25 files of 1 MB: 100 MB unpacked, ~50 MB on the wire.
    let layout = scratch.path().join("src");
    let built = image(4, 25, 1 << 20, true).write_layout(&layout, "v1");
    let wire: u64 = built.layers.iter().map(|b| b.bytes.len() as u64).sum();
    registry.push_oci_layout(&layout, "v1", "bench/big:v1");
    let reference = registry.reference("bench/big:v1");

    let serve = Serve::start()?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        theirs.push(skopeo_and_tar(&reference, scratch.path())?);
        let t0 = Instant::now();
        serve.cli(&["pull", "-q", &reference])?;
        ours.push(t0.elapsed());
        // Removed again, blobs and all: the next pull starts from nothing.
        serve.cli(&["rmi", &reference])?;
    }
    let (o, t) = (median(ours), median(theirs));
    println!(
        "pull + unpack, 100 MB in 4 layers ({:.0} MB gzip), ext4 disk built: {:>7.3} s  \
         ratio {:.2}x (against skopeo copy + tar -x: {:.3} s)",
        wire as f64 / 1e6,
        o.as_secs_f64(),
        o.as_secs_f64() / t.as_secs_f64(),
        t.as_secs_f64()
    );
    Ok(())
}

/// Container create for busybox against a ~1 GB image; prints the line.
pub fn create_small_vs_big() -> anyhow::Result<()> {
    let scratch = tempfile::tempdir()?;
    let layout = scratch.path().join("big");
    // 4 layers of 16 files of 16 MiB, uncompressed: 1 GiB.
    image(4, 16, 16 << 20, false).write_layout(&layout, "v1");
    let tar = scratch.path().join("big.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&layout)
        .arg("."))?;
    std::fs::remove_dir_all(&layout)?;
    let serve = Serve::start()?;
    serve.cli(&["import", "-t", "bench/gig:v1", &tar.to_string_lossy()])?;
    std::fs::remove_file(&tar)?;
    let (mut small, mut big) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        for (image, times) in [("busybox", &mut small), ("bench/gig:v1", &mut big)] {
            let t0 = Instant::now();
            serve.cli(&["create", image, "true"])?;
            times.push(t0.elapsed());
        }
    }
    let (s, b) = (median(small), median(big));
    println!(
        "create, 1 GiB image: {:>7.3} s  ratio {:.2}x (against busybox, 3 MB: {:.3} s)",
        b.as_secs_f64(),
        b.as_secs_f64() / s.as_secs_f64(),
        s.as_secs_f64()
    );
    Ok(())
}
