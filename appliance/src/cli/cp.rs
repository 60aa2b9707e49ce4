//! `appliance cp`: copies files between this host and a container's
//! filesystem (running or stopped), as tar streams through the REST server.
//!
//! Owns the local side: packing a host path for copying in, and unpacking
//! what comes out with the same protections the guest applies (nothing is
//! written outside the destination; device nodes are not made).

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
/// (the top entry takes its name, as `docker cp` does).
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
    if dst.is_dir() {
        archive::unpack(reader, dst, &opts).map_err(|e| anyhow::anyhow!(chain(&e)))?;
        return Ok(());
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
}
