//! The offline `busybox` image: Debian's `busybox-static` turned into a
//! real OCI image (one gzip layer, a config, a manifest, an image layout),
//! with a root user and an unprivileged `app` user. Needs no network: it is
//! what the quick start runs, and what the tests boot.
//!
//! Owns the image's content and its reproducible encoding (fixed times and
//! owners, sorted entries: the same busybox gives the same digests). Also
//! builds a bare ext4 root disk of the same content for tests that boot a
//! VM without the storage component.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

pub const BUSYBOX: &str = "/bin/busybox";
/// The name the image is known by.
pub const IMAGE_NAME: &str = "docker.io/library/busybox:latest";
/// Fixed modification time of every entry: 2024-01-01T00:00:00Z.
const EPOCH: u64 = 1_704_067_200;

#[derive(Debug, thiserror::Error)]
pub enum BusyboxError {
    #[error("{0} not found; install Debian's busybox-static")]
    NoBusybox(PathBuf),
    #[error("{0} is not statically linked; install Debian's busybox-static")]
    NotStatic(PathBuf),
    #[error("Writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Running {0} --list")]
    List(PathBuf, #[source] std::io::Error),
    #[error("Building the root disk")]
    Disk(#[source] super::rootfs::RootfsError),
}

/// An extra file to put in the image.
#[derive(Debug, Clone)]
pub struct ExtraFile {
    /// Path inside the image, absolute.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> BusyboxError + '_ {
    move |source| BusyboxError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether an ELF64 file names a program interpreter (PT_INTERP), i.e. is
/// dynamically linked. Non-ELF input counts as dynamic.
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return true;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..usize::from(phnum))
        .any(|i| u32_at(phoff as usize + i * usize::from(phentsize)) == Some(PT_INTERP))
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
app:x:1000:1000:Application user:/home/app:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nusers:x:100:app\nnogroup:x:65534:\n";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Reads busybox and checks it is the static build.
fn busybox() -> Result<Vec<u8>, BusyboxError> {
    let busybox = Path::new(BUSYBOX);
    let bytes = std::fs::read(busybox).map_err(|_| BusyboxError::NoBusybox(busybox.into()))?;
    if has_interpreter(&bytes) {
        return Err(BusyboxError::NotStatic(busybox.into()));
    }
    Ok(bytes)
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(size);
    h.set_mtime(EPOCH);
    h
}

/// The image's one layer, an uncompressed tar, with `extra` files added.
pub fn layer_tar(extra: &[ExtraFile]) -> Result<Vec<u8>, BusyboxError> {
    let bytes = busybox()?;
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .map_err(|e| BusyboxError::List(BUSYBOX.into(), e))?;
    let mut applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    applets.sort();
    applets.dedup();

    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, h: &mut tar::Header, path: &str, data: &[u8]| {
        b.append_data(h, path, data)
            .map_err(write_err(Path::new(path)))
    };
    for (dir, mode, owner) in [
        ("bin", 0o755, 0),
        ("dev", 0o755, 0),
        ("etc", 0o755, 0),
        ("home", 0o755, 0),
        ("home/app", 0o750, 1000),
        ("proc", 0o555, 0),
        ("root", 0o700, 0),
        ("run", 0o755, 0),
        ("sbin", 0o755, 0),
        ("sys", 0o555, 0),
        ("tmp", 0o1777, 0),
        ("usr", 0o755, 0),
        ("usr/bin", 0o755, 0),
        ("usr/sbin", 0o755, 0),
        ("var", 0o755, 0),
        ("var/tmp", 0o1777, 0),
    ] {
        add(
            &mut b,
            &mut header(tar::EntryType::Directory, mode, owner, 0),
            dir,
            &[],
        )?;
    }
    add(
        &mut b,
        &mut header(tar::EntryType::Regular, 0o755, 0, bytes.len() as u64),
        "bin/busybox",
        &bytes,
    )?;
    for applet in &applets {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .map_err(write_err(Path::new(applet)))?;
    }
    for (path, text) in [
        ("etc/group", GROUP),
        ("etc/hostname", "busybox\n"),
        ("etc/passwd", PASSWD),
    ] {
        add(
            &mut b,
            &mut header(tar::EntryType::Regular, 0o644, 0, text.len() as u64),
            path,
            text.as_bytes(),
        )?;
    }
    for f in extra {
        add(
            &mut b,
            &mut header(tar::EntryType::Regular, f.mode, 0, f.contents.len() as u64),
            f.path.trim_start_matches('/'),
            &f.contents,
        )?;
    }
    b.into_inner().map_err(write_err(Path::new("layer")))
}

fn sha256(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Writes the image as an OCI image layout in `dir` (made if missing):
/// `oci-layout`, `index.json` naming it `busybox:latest`, and its blobs.
/// Returns the manifest's digest.
pub fn write_layout(dir: &Path) -> Result<String, BusyboxError> {
    let tar = layer_tar(&[])?;
    let diff_id = sha256(&tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).map_err(write_err(dir))?;
    let layer = gz.finish().map_err(write_err(dir))?;
    let layer_digest = sha256(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": { "Env": [PATH_ENV], "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{ "created": "2024-01-01T00:00:00Z", "created_by": "appliance: busybox-static" }],
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer.len(),
        }],
    })
    .to_string()
    .into_bytes();
    let manifest_digest = sha256(&manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
            "annotations": {
                "io.containerd.image.name": IMAGE_NAME,
                "org.opencontainers.image.ref.name": "latest",
            },
        }],
    })
    .to_string()
    .into_bytes();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(write_err(&blobs))?;
    for (digest, bytes) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let p = blobs.join(digest.trim_start_matches("sha256:"));
        std::fs::write(&p, bytes).map_err(write_err(&p))?;
    }
    for (name, bytes) in [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", index),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(write_err(&p))?;
    }
    Ok(manifest_digest)
}

/// The image as a tar stream of its OCI layout, as `import` takes it.
pub fn layout_tar() -> Result<Vec<u8>, BusyboxError> {
    let dir = tempfile::tempdir().map_err(write_err(Path::new("tmp")))?;
    write_layout(dir.path())?;
    let mut b = tar::Builder::new(Vec::new());
    b.append_dir_all(".", dir.path())
        .map_err(write_err(dir.path()))?;
    b.into_inner().map_err(write_err(dir.path()))
}

/// Builds a bare ext4 root disk of the image at `out` (replacing it), for
/// booting a VM without the storage component.
pub fn build(out: &Path, extra: &[ExtraFile]) -> Result<(), BusyboxError> {
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    let work = tempfile::Builder::new()
        .prefix(".busybox-")
        .tempdir_in(parent)
        .map_err(write_err(parent))?;
    let layer = work.path().join("layer.tar");
    std::fs::write(&layer, layer_tar(extra)?).map_err(write_err(&layer))?;
    super::rootfs::build(
        &[super::rootfs::LayerFile {
            path: layer,
            name: "busybox layer".into(),
        }],
        work.path(),
        out,
    )
    .map_err(BusyboxError::Disk)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_reproducible() {
        if !Path::new(BUSYBOX).exists() {
            return;
        }
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let da = write_layout(a.path()).unwrap();
        assert_eq!(da, write_layout(b.path()).unwrap());
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(a.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["digest"], da.as_str());
        // Every blob is named by its digest.
        for e in std::fs::read_dir(a.path().join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap();
            assert_eq!(
                sha256(&bytes),
                format!("sha256:{}", e.file_name().to_string_lossy())
            );
        }
    }

    #[test]
    fn tells_static_from_dynamic_elf() {
        // The test binary itself is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_interpreter(&me));
        assert!(has_interpreter(b"not an elf"));
        if let Ok(bb) = std::fs::read(BUSYBOX) {
            assert!(
                !has_interpreter(&bb),
                "busybox-static must not need an interpreter"
            );
        }
    }
}
