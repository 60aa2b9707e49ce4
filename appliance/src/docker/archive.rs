//! `docker cp`: `GET`/`HEAD`/`PUT /containers/{id}/archive?path=` over the
//! port layer's archive API (`/storage/archive/{id}`), which copies from
//! and into running and stopped containers alike.
//!
//! Owns the Docker side: the path stat Docker sends in the
//! `X-Docker-Container-Path-Stat` header (base64 of JSON, the mode in Go's
//! `os.FileMode` bits), read from the top entry of the port layer's tar
//! itself, and Docker's "Could not find the file" for a missing path.
//! Bodies are streamed both ways; only the tar headers before the first
//! entry's data are held, to read the stat from.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use serde::Serialize;

use super::{Docker, DockerError, Query, Reply};
use crate::client::{BodyStream, ClientError, encode, with_query};

/// The header `docker cp` reads a path's stat from.
const STAT_HEADER: &str = "X-Docker-Container-Path-Stat";

/// Go's `os.FileMode` bits.
const GO_DIR: u32 = 1 << 31;
const GO_SYMLINK: u32 = 1 << 27;
const GO_SETUID: u32 = 1 << 23;
const GO_SETGID: u32 = 1 << 22;
const GO_STICKY: u32 = 1 << 20;

/// Docker's `container.PathStat`.
#[derive(Serialize, Debug, PartialEq)]
pub struct PathStat {
    name: String,
    size: i64,
    mode: u32,
    mtime: String,
    #[serde(rename = "linkTarget")]
    link_target: String,
}

fn archive_path(id: &str, path: &str) -> String {
    with_query(
        &format!("/storage/archive/{}", encode(id)),
        &[("path", path.to_string())],
    )
}

fn required_path(q: &Query) -> Result<String, DockerError> {
    q.get("path")
        .map(str::to_string)
        .ok_or_else(|| DockerError::bad_request("A path is needed (path=...)"))
}

/// A port layer copy error: a path that is not there is Docker's 404.
fn copy_error(e: ClientError, id: &str, path: &str) -> DockerError {
    match &e {
        ClientError::Api(a) if a.status == 400 && a.message.contains("does not exist") => {
            DockerError::Status {
                status: StatusCode::NOT_FOUND,
                message: format!("Could not find the file {path} in container {id}"),
            }
        }
        _ => DockerError::on_container(e, id),
    }
}

/// A tar header's mode and type as Go's `os.FileMode`.
fn go_mode(mode: u32, kind: tar::EntryType) -> u32 {
    let mut m = mode & 0o777;
    if mode & 0o4000 != 0 {
        m |= GO_SETUID;
    }
    if mode & 0o2000 != 0 {
        m |= GO_SETGID;
    }
    if mode & 0o1000 != 0 {
        m |= GO_STICKY;
    }
    if kind.is_dir() {
        m |= GO_DIR;
    }
    if kind.is_symlink() {
        m |= GO_SYMLINK;
    }
    m
}

/// What reading the front of a tar found.
enum Front {
    /// The stat of the top entry.
    Stat(PathStat),
    /// More bytes are needed.
    More,
}

/// Reads the top entry's stat from the front of a tar (skipping the PAX
/// and GNU long-name records before it); `fallback` names it if its own
/// name is empty.
fn stat_from_front(buf: &[u8], fallback: &str) -> Result<Front, String> {
    let mut off = 0;
    let mut long_name: Option<String> = None;
    loop {
        let Some(block) = buf.get(off..off + 512) else {
            return Ok(Front::More);
        };
        if block.iter().all(|b| *b == 0) {
            return Err("The archive is empty".into());
        }
        let h = tar::Header::from_byte_slice(block);
        let size = h.entry_size().map_err(|e| format!("Bad tar header: {e}"))?;
        let data = usize::try_from(size).map_err(|e| e.to_string())?;
        let kind = h.entry_type();
        if matches!(
            kind,
            tar::EntryType::XHeader
                | tar::EntryType::XGlobalHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            let Some(body) = buf.get(off + 512..off + 512 + data) else {
                return Ok(Front::More);
            };
            if kind == tar::EntryType::GNULongName {
                long_name = Some(
                    String::from_utf8_lossy(body)
                        .trim_end_matches('\0')
                        .to_string(),
                );
            }
            if kind == tar::EntryType::XHeader {
                for ext in tar::PaxExtensions::new(body).flatten() {
                    if ext.key() == Ok("path") {
                        long_name = ext.value().ok().map(str::to_string);
                    }
                }
            }
            off += 512 + data.div_ceil(512) * 512;
            continue;
        }
        let name = long_name.unwrap_or_else(|| String::from_utf8_lossy(&h.path_bytes()).into());
        let top = name
            .trim_start_matches("./")
            .split('/')
            .find(|p| !p.is_empty())
            .unwrap_or(fallback)
            .to_string();
        let mtime = h.mtime().unwrap_or(0);
        return Ok(Front::Stat(PathStat {
            name: top,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            mode: go_mode(h.mode().unwrap_or(0), kind),
            mtime: appliance::api::time::format_rfc3339_nanos(
                i64::try_from(mtime)
                    .unwrap_or(0)
                    .saturating_mul(1_000_000_000),
            ),
            link_target: h
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default(),
        }));
    }
}

/// The header value: base64 of the stat's JSON.
fn stat_header(s: &PathStat) -> String {
    base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(s).unwrap_or_default())
}

/// The last component of a path, for a tar whose top entry has no name.
fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("/")
}

/// `GET /containers/{id}/archive?path=` (the tar, with the stat header)
/// and `HEAD` (the stat header alone).
pub async fn get(d: &Docker, id: &str, q: &Query, method: &Method) -> Reply {
    let path = required_path(q)?;
    let c = super::containers::get(d, id).await?;
    let mut body = d
        .client
        .open_stream(&archive_path(&c.id, &path))
        .await
        .map_err(|e| copy_error(e, id, &path))?;
    let mut front = Vec::new();
    let stat = loop {
        match stat_from_front(&front, base_name(&path)) {
            Ok(Front::Stat(s)) => break s,
            Ok(Front::More) => {}
            Err(e) => {
                return Err(DockerError::Status {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("Copying {path} from container {id}: {e}"),
                });
            }
        }
        match body.chunk().await.map_err(|e| copy_error(e, id, &path))? {
            Some(chunk) => front.extend_from_slice(&chunk),
            None => {
                return Err(DockerError::Status {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: format!("Copying {path} from container {id}: the archive ended early"),
                });
            }
        }
    };
    let builder = Response::builder()
        .header(STAT_HEADER, stat_header(&stat))
        .header(header::CONTENT_TYPE, "application/x-tar");
    let out = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(rest_of(front, body))
    };
    builder.body(out).map_err(|e| DockerError::Status {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: e.to_string(),
    })
}

/// The bytes read so far, then the rest of the port layer's stream.
fn rest_of(
    front: Vec<u8>,
    body: BodyStream,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    let first = futures::stream::once(async move { Ok(bytes::Bytes::from(front)) });
    let rest = futures::stream::unfold(body, |mut body| async move {
        match body.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), body)),
            Ok(None) => None,
            // Ends the response without its last chunk: the client sees
            // the failure.
            Err(e) => Some((Err(std::io::Error::other(e)), body)),
        }
    });
    first.chain(rest)
}

/// `PUT /containers/{id}/archive?path=`: the body, a tar, unpacked into
/// the directory `path`. (`noOverwriteDirNonDir` and `copyUIDGID` are
/// accepted: the port layer keeps owners and modes as they are in the
/// tar.)
pub async fn put(d: &Docker, id: &str, q: &Query, req: Request) -> Reply {
    let path = required_path(q)?;
    let c = super::containers::get(d, id).await?;
    let stream = req
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(std::io::Error::other));
    let reader = tokio_util::io::StreamReader::new(stream);
    d.client
        .upload::<serde_json::Value>(
            Method::PUT,
            &archive_path(&c.id, &path),
            "application/x-tar",
            reader,
        )
        .await
        .map_err(|e| copy_error(e, id, &path))?;
    super::empty(StatusCode::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path(name).expect("name");
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(86_400);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn the_stat_is_the_top_entrys_in_go_mode_bits() {
        let tar = header("etc/", tar::EntryType::Directory, 0o755, 0);
        assert!(matches!(
            stat_from_front(&tar[..100], "etc"),
            Ok(Front::More)
        ));
        let Ok(Front::Stat(s)) = stat_from_front(&tar, "etc") else {
            panic!("no stat");
        };
        assert_eq!(
            s,
            PathStat {
                name: "etc".into(),
                size: 0,
                mode: GO_DIR | 0o755,
                mtime: "1970-01-02T00:00:00.000000000Z".into(),
                link_target: String::new(),
            }
        );
        let tar = header("hostname", tar::EntryType::Regular, 0o4644, 9);
        let Ok(Front::Stat(s)) = stat_from_front(&tar, "x") else {
            panic!("no stat");
        };
        assert_eq!(
            (s.name.as_str(), s.size, s.mode),
            ("hostname", 9, GO_SETUID | 0o644)
        );
        assert!(stat_from_front(&[0u8; 1024], "x").is_err());
        assert_eq!(base_name("/etc/hostname"), "hostname");
        assert_eq!(base_name("/etc/"), "etc");
        assert_eq!(base_name("/"), "/");
    }

    #[test]
    fn a_long_name_record_is_skipped_for_the_entry_after_it() {
        let long = "d".repeat(150);
        let mut tar = Vec::new();
        tar::Builder::new(&mut tar)
            .append_data(
                &mut {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(2);
                    h.set_mode(0o600);
                    h.set_cksum();
                    h
                },
                format!("{long}/f"),
                &b"hi"[..],
            )
            .expect("append");
        let Ok(Front::Stat(s)) = stat_from_front(&tar, "x") else {
            panic!("no stat");
        };
        assert_eq!(s.name, long);
        assert_eq!(s.mode, 0o600);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(stat_header(&s))
            .expect("base64");
        let j: serde_json::Value = serde_json::from_slice(&decoded).expect("json");
        assert_eq!(j["name"], long.as_str());
        assert!(j.get("linkTarget").is_some());
    }
}
