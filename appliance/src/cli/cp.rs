//! `appliance cp`: copies files between this host and a container's
//! filesystem (running or stopped), as tar streams through the REST server.
//!
//! Owns the local side: packing a host path for copying in, and unpacking
//! what comes out with the same protections the guest applies (nothing is
//! written outside the destination; device nodes are not made), all or
//! nothing: a refused archive leaves the destination as it was. A
//! destination that is itself a symlink is refused, not followed. Symlinks
//! in the container's tar, absolute ones included (`rootlink -> /`), are
//! recreated as symlinks, pointing where they point; the copy never
//! follows them (nor any other symlink under the destination).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use appliance::backend::ArchiveSummary;
use clap::Args;

use super::client::{Client, encode, with_query};
use super::output;

#[derive(Args)]
pub struct CpArgs {
    /// CONTAINER:PATH, a host path, or - (a tar stream on stdin).
    pub src: String,
    /// CONTAINER:PATH (an existing directory), a host path, or - (the tar
    /// stream on stdout).
    pub dst: String,
}

/// One side of a copy.
#[derive(Debug, PartialEq, Eq)]
enum Side {
    Container { id: String, path: String },
    Host(PathBuf),
    Stdio,
}

/// `name:/path` is a container's path; a host path that itself contains a
/// colon can be given as `./a:b`.
fn side(s: &str) -> Side {
    if s == "-" {
        return Side::Stdio;
    }
    if !s.starts_with('/')
        && !s.starts_with('.')
        && let Some((id, path)) = s.split_once(':')
        && !id.is_empty()
    {
        return Side::Container {
            id: id.to_string(),
            path: path.to_string(),
        };
    }
    Side::Host(PathBuf::from(s))
}

/// A `Read` over the chunks another task sends.
struct ChunkReader {
    rx: std::sync::mpsc::Receiver<bytes::Bytes>,
    cur: bytes::Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.recv() {
                Ok(b) => self.cur = b,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

pub async fn cp(client: &Client, args: CpArgs) -> anyhow::Result<u8> {
    match (side(&args.src), side(&args.dst)) {
        (Side::Container { id, path }, dst @ (Side::Host(_) | Side::Stdio)) => {
            copy_out(client, &id, &path, dst).await
        }
        (src @ (Side::Host(_) | Side::Stdio), Side::Container { id, path }) => {
            copy_in(client, src, &id, &path).await
        }
        (Side::Container { .. }, Side::Container { .. }) => {
            bail!("Copying between two containers is not supported: copy through the host")
        }
        _ => bail!("One of the two must be CONTAINER:PATH (e.g. web:/etc/hosts)"),
    }
}

async fn copy_out(client: &Client, id: &str, path: &str, dst: Side) -> anyhow::Result<u8> {
    let url = with_query(
        &format!("/storage/archive/{}", encode(id)),
        &[("path", path.to_string())],
    );
    let mut body = client.open_stream(&url).await?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<bytes::Bytes>(8);
    let sink = match dst {
        Side::Stdio => tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            for chunk in rx {
                output::out(&chunk)?;
            }
            Ok(())
        }),
        Side::Host(dst) => tokio::task::spawn_blocking(move || unpack_to(rx, &dst)),
        Side::Container { .. } => unreachable!("checked by the caller"),
    };
    let mut failed = None;
    loop {
        match body.chunk().await {
            Ok(Some(chunk)) => {
                if tx.send(chunk).is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = sink.await?;
    if let Some(e) = failed {
        return Err(anyhow::Error::new(e).context(format!(
            "Copying {id}:{path} broke off; what was written is incomplete"
        )));
    }
    written?;
    Ok(0)
}

/// Unpacks into `dst`: into it if it is a directory, else as `dst` itself
/// (the top entry takes its name, as `docker cp` does). Either way the
/// archive is staged first and moved into place only once it was accepted
/// whole; a `dst` that is a symlink is refused.
fn unpack_to(rx: std::sync::mpsc::Receiver<bytes::Bytes>, dst: &Path) -> anyhow::Result<()> {
    let reader = ChunkReader {
        rx,
        cur: bytes::Bytes::new(),
    };
    let opts = archive::UnpackOptions {
        source: "archive".into(),
        whiteouts: false,
        same_owner: nix::unistd::geteuid().is_root(),
        devices: archive::DevicePolicy::Skip,
    };
    // Judged on the name itself (a trailing "/" would make the kernel
    // follow a symlink).
    let named = without_trailing_slash(dst);
    let named = named.as_path();
    match std::fs::symlink_metadata(named) {
        Ok(m) if m.file_type().is_symlink() => bail!(
            "{} is a symlink, which cp does not follow: give the directory itself",
            dst.display()
        ),
        Ok(m) if m.is_dir() => {
            archive::unpack_staged(reader, named, &opts).map_err(|e| anyhow::anyhow!(chain(&e)))?;
            return Ok(());
        }
        _ => {}
    }
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = dst
        .file_name()
        .with_context(|| format!("{} names no file", dst.display()))?;
    if !parent.is_dir() {
        bail!("{} is not a directory", parent.display());
    }
    let stage = tempfile::Builder::new()
        .prefix(".cp-")
        .tempdir_in(parent)
        .with_context(|| format!("Creating a directory in {}", parent.display()))?;
    archive::unpack(reader, stage.path(), &opts).map_err(|e| anyhow::anyhow!(chain(&e)))?;
    let mut tops = std::fs::read_dir(stage.path())?;
    let top = match (tops.next(), tops.next()) {
        (Some(t), None) => t?.path(),
        _ => bail!("The archive does not hold exactly one top-level entry"),
    };
    std::fs::rename(&top, parent.join(name))
        .with_context(|| format!("Moving the copy to {}", dst.display()))?;
    Ok(())
}

/// `path` without trailing slashes ("/" stays "/").
fn without_trailing_slash(path: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let mut n = bytes.len();
    while n > 1 && bytes[n - 1] == b'/' {
        n -= 1;
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[..n]))
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    appliance::api::error::error_chain(e)
}

async fn copy_in(client: &Client, src: Side, id: &str, path: &str) -> anyhow::Result<u8> {
    let url = with_query(
        &format!("/storage/archive/{}", encode(id)),
        &[("path", path.to_string())],
    );
    let (reader, mut writer) = std::io::pipe()?;
    let packer = match src {
        Side::Stdio => tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            std::io::copy(&mut std::io::stdin().lock(), &mut writer)?;
            Ok(())
        }),
        Side::Host(p) => {
            let abs =
                std::path::absolute(&p).with_context(|| format!("Resolving {}", p.display()))?;
            let parent = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
            let name = abs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("{} names no file", p.display()))?;
            if std::fs::symlink_metadata(&abs).is_err() {
                bail!("{} does not exist", p.display());
            }
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                archive::pack(&parent, &format!("/{name}"), &mut writer)
                    .map_err(|e| anyhow::anyhow!(chain(&e)))?;
                Ok(())
            })
        }
        Side::Container { .. } => unreachable!("checked by the caller"),
    };
    let file = tokio::fs::File::from_std(std::fs::File::from(std::os::fd::OwnedFd::from(reader)));
    let sent = client
        .upload::<ArchiveSummary>(hyper::Method::PUT, &url, "application/x-tar", file)
        .await;
    let packed = packer.await?;
    // The server's verdict first: it names the entry it refused.
    sent?;
    packed?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_parse_as_docker_cp_does() {
        assert_eq!(
            side("web:/etc/hosts"),
            Side::Container {
                id: "web".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(side("-"), Side::Stdio);
        assert_eq!(side("/tmp/a:b"), Side::Host("/tmp/a:b".into()));
        assert_eq!(side("./a:b"), Side::Host("./a:b".into()));
        assert_eq!(side("plain"), Side::Host("plain".into()));
    }

    #[test]
    fn destinations_are_judged_without_their_trailing_slash() {
        assert_eq!(without_trailing_slash(Path::new("out//")), Path::new("out"));
        assert_eq!(without_trailing_slash(Path::new("/")), Path::new("/"));
        assert_eq!(without_trailing_slash(Path::new("a/b")), Path::new("a/b"));
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = header(tar::EntryType::Regular, data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }

    fn refusing_tar() -> Vec<u8> {
        // Good entries, a planted link to "/", then an entry through it.
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "good", b"ok");
        let mut h = header(tar::EntryType::Symlink, 0);
        b.append_link(&mut h, "rootlink", "/").unwrap();
        file(&mut b, "rootlink/tmp/planted", b"x");
        b.into_inner().unwrap()
    }

    fn feed(tar: Vec<u8>) -> std::sync::mpsc::Receiver<bytes::Bytes> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        tx.send(bytes::Bytes::from(tar)).unwrap();
        rx
    }

    #[test]
    fn a_refused_copy_out_changes_nothing_on_the_host() {
        let t = tempfile::tempdir().unwrap();
        let into = t.path().join("into");
        std::fs::create_dir(&into).unwrap();
        std::fs::write(into.join("mine"), "mine").unwrap();
        let err = unpack_to(feed(refusing_tar()), &into)
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"rootlink/tmp/planted\""), "{err}");
        let names: Vec<_> = std::fs::read_dir(&into)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["mine"], "the destination changed");

        // A new name: nothing appears.
        let fresh = t.path().join("fresh");
        assert!(unpack_to(feed(refusing_tar()), &fresh).is_err());
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["into"], "something was left");
    }

    #[test]
    fn a_destination_that_is_a_symlink_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "good", b"ok");
        let tar = b.into_inner().unwrap();
        // Through the link's target itself, the copy is taken.
        unpack_to(feed(tar.clone()), &real).unwrap();
        std::fs::remove_file(real.join("good")).unwrap();
        for dst in [link.clone(), PathBuf::from(format!("{}/", link.display()))] {
            let err = unpack_to(feed(tar.clone()), &dst).unwrap_err().to_string();
            assert!(err.contains("is a symlink"), "{err}");
        }
        assert_eq!(std::fs::read_dir(&real).unwrap().count(), 0);
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }
}
