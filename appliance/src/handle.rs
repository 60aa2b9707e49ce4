//! Handles: opaque, unforgeable tokens for "this container plus pending
//! changes" (seed 002: like `realloc` or Go's `append`, every mutating call
//! returns a new handle, and nothing changes until Commit).
//!
//! There is no server-side table: the token carries the container id, the
//! base change version and the pending change set, authenticated with
//! HMAC-SHA256 under the appliance's key. So a handle survives restarts and
//! is accepted by any replica that shares the key file. Owns the token format
//! and the key file; must not interpret the changes (that is the port
//! layer's) nor touch the store.
//!
//! Token: `h1.` + base64url(JSON) + `.` + base64url(HMAC-SHA256(key, "h1." +
//! payload)), base64 without padding.

use std::io::{ErrorKind, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// The prefix naming the token format's version.
const PREFIX: &str = "h1.";

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 1 << 20;

const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("Reading handle key {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Writing handle key {path}")]
    WriteKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Handle key {path} has {len} bytes, expected {KEY_LEN}")]
    KeyLength { path: PathBuf, len: usize },
    #[error("Reading system randomness for the handle key")]
    Random(#[source] getrandom::Error),
    #[error("Handle is malformed: {0}")]
    Malformed(String),
    #[error(
        "Handle signature does not verify: it was altered or issued by an appliance with another key"
    )]
    Forged,
    #[error("Handle is {len} bytes long, more than the {max} accepted")]
    TooLarge { len: usize, max: usize },
}

/// The secret that authenticates handles. Every replica sharing a state
/// directory loads the same one.
#[derive(Clone)]
pub struct HandleKey([u8; KEY_LEN]);

impl std::fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandleKey(..)")
    }
}

impl HandleKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        HandleKey(bytes)
    }

    /// Reads the key at `path`, or creates it (32 random bytes, mode 0600).
    /// Creation is atomic: the key is written to a temporary file in the same
    /// directory and linked into place only if no key is there yet, so two
    /// processes starting at once end up with the same key and nobody ever
    /// reads a partial file.
    pub fn load_or_create(path: &Path) -> Result<HandleKey, HandleError> {
        match read_key(path) {
            Err(HandleError::ReadKey { source, .. }) if source.kind() == ErrorKind::NotFound => {}
            other => return other,
        }
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(HandleError::Random)?;
        let write_err = |source| HandleError::WriteKey {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) => dir,
            None => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".handle-key.")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(write_err)?;
        tmp.write_all(&bytes).map_err(write_err)?;
        tmp.as_file().sync_all().map_err(write_err)?;
        match tmp.persist_noclobber(path) {
            Ok(_) => {
                // Make the new name durable; the key must not vanish on a crash.
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok(HandleKey(bytes))
            }
            // Another process won the race: use its key.
            Err(e) if e.error.kind() == ErrorKind::AlreadyExists => read_key(path),
            Err(e) => Err(write_err(e.error)),
        }
    }
}

fn read_key(path: &Path) -> Result<HandleKey, HandleError> {
    let bytes = std::fs::read(path).map_err(|source| HandleError::ReadKey {
        path: path.to_path_buf(),
        source,
    })?;
    let key: [u8; KEY_LEN] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| HandleError::KeyLength {
            path: path.to_path_buf(),
            len: bytes.len(),
        })?;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
            "Handle key is readable by other users; it should be mode 0600"
        );
    }
    Ok(HandleKey(key))
}

/// What a handle carries.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HandleData {
    pub container: String,
    /// The container's change version the pending changes apply to.
    pub base_version: u64,
    /// Pending changes, in order; their meaning is the port layer's.
    pub changes: Vec<serde_json::Value>,
    /// Unix ms.
    pub issued_at: i64,
}

fn mac(key: &HandleKey, signed: &str) -> Hmac<Sha256> {
    #[allow(clippy::expect_used)]
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&key.0).expect("HMAC accepts keys of any length");
    mac.update(signed.as_bytes());
    mac
}

/// Serialises and authenticates `data` into an opaque token.
pub fn seal(key: &HandleKey, data: &HandleData) -> String {
    #[allow(clippy::expect_used)]
    let json = serde_json::to_vec(data).expect("HandleData has only string map keys");
    let mut token = String::with_capacity(PREFIX.len() + json.len() * 4 / 3 + 48);
    token.push_str(PREFIX);
    URL_SAFE_NO_PAD.encode_string(&json, &mut token);
    let tag = mac(key, &token).finalize().into_bytes();
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(tag, &mut token);
    token
}

/// Checks a token's signature (in constant time) and returns what it
/// carries. Nothing from the payload is decoded before the signature
/// verifies.
pub fn open(key: &HandleKey, token: &str) -> Result<HandleData, HandleError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(HandleError::TooLarge {
            len: token.len(),
            max: MAX_TOKEN_LEN,
        });
    }
    let Some(rest) = token.strip_prefix(PREFIX) else {
        let version = token.split_once('.').map(|(v, _)| v);
        return Err(HandleError::Malformed(match version {
            Some(v)
                if v.len() > 1
                    && v.starts_with('h')
                    && v[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                format!("format version {v} is not supported (expected h1)")
            }
            _ => "it does not start with \"h1.\"".to_string(),
        }));
    };
    let Some((payload, signature)) = rest.split_once('.') else {
        return Err(HandleError::Malformed(
            "it has no signature part".to_string(),
        ));
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| HandleError::Malformed(format!("signature is not base64url: {e}")))?;
    let signed = &token[..PREFIX.len() + payload.len()];
    mac(key, signed)
        .verify_slice(&signature)
        .map_err(|_| HandleError::Forged)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| HandleError::Malformed(format!("payload is not base64url: {e}")))?;
    serde_json::from_slice(&json)
        .map_err(|e| HandleError::Malformed(format!("payload is not handle JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::{Arc, Barrier};

    fn data() -> HandleData {
        HandleData {
            container: "3f2a9c".into(),
            base_version: 7,
            changes: vec![
                json!({"op": "join", "network": "bridge"}),
                json!({"op": "bind"}),
            ],
            issued_at: 1_700_000_000_000,
        }
    }

    fn key(b: u8) -> HandleKey {
        HandleKey::from_bytes([b; KEY_LEN])
    }

    #[test]
    fn seal_open_round_trip() {
        let token = seal(&key(1), &data());
        assert!(token.starts_with("h1."));
        assert_eq!(token.matches('.').count(), 2);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "token must be URL-safe: {token}"
        );
        assert_eq!(open(&key(1), &token).unwrap(), data());
        // Deterministic: same key and data, same token.
        assert_eq!(seal(&key(1), &data()), token);
    }

    #[test]
    fn other_key_is_forged() {
        let token = seal(&key(1), &data());
        assert!(matches!(open(&key(2), &token), Err(HandleError::Forged)));
        assert_eq!(
            open(&key(2), &token).unwrap_err().to_string(),
            "Handle signature does not verify: it was altered or issued by an appliance with another key"
        );
    }

    #[test]
    fn tampered_payload_is_forged() {
        let token = seal(&key(1), &data());
        let (head, sig) = token.rsplit_once('.').unwrap();
        // A valid payload for other data, with the old signature.
        let mut other = data();
        other.base_version = 8;
        let json = serde_json::to_vec(&other).unwrap();
        let forged = format!("h1.{}.{sig}", URL_SAFE_NO_PAD.encode(json));
        assert!(matches!(open(&key(1), &forged), Err(HandleError::Forged)));
        // One character of the payload flipped.
        let mut bytes = head.as_bytes().to_vec();
        bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{}.{sig}", String::from_utf8(bytes).unwrap());
        assert!(matches!(open(&key(1), &flipped), Err(HandleError::Forged)));
    }

    #[test]
    fn tampered_signature_is_forged() {
        let token = seal(&key(1), &data());
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut tag = URL_SAFE_NO_PAD.decode(sig).unwrap();
        tag[0] ^= 1;
        let altered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&tag));
        assert!(matches!(open(&key(1), &altered), Err(HandleError::Forged)));
        // Truncated tag.
        let short = format!("{head}.{}", URL_SAFE_NO_PAD.encode(&tag[..16]));
        assert!(matches!(open(&key(1), &short), Err(HandleError::Forged)));
        // No signature at all.
        let empty = format!("{head}.");
        assert!(matches!(open(&key(1), &empty), Err(HandleError::Forged)));
    }

    #[test]
    fn garbage_is_malformed() {
        let k = key(1);
        let malformed = |t: &str| match open(&k, t) {
            Err(HandleError::Malformed(why)) => why,
            other => panic!("{t:?}: expected Malformed, got {other:?}"),
        };
        assert!(malformed("").contains("h1."));
        assert!(malformed("not a handle").contains("h1."));
        assert!(malformed("h2.abc.def").contains("version h2"));
        assert!(malformed("h1.abc").contains("no signature"));
        assert!(malformed("h1.abc.!!!").contains("signature is not base64url"));
        // Correctly signed but not handle JSON.
        let mut token = String::from("h1.");
        URL_SAFE_NO_PAD.encode_string(b"[1,2,3]", &mut token);
        let tag = mac(&k, &token).finalize().into_bytes();
        token = format!("{token}.{}", URL_SAFE_NO_PAD.encode(tag));
        assert!(malformed(&token).contains("not handle JSON"));
        // Correctly signed but not base64.
        let token = "h1.***";
        let tag = mac(&k, token).finalize().into_bytes();
        let token = format!("{token}.{}", URL_SAFE_NO_PAD.encode(tag));
        assert!(malformed(&token).contains("payload is not base64url"));
    }

    #[test]
    fn oversized_token_is_refused() {
        let token = format!("h1.{}", "A".repeat(MAX_TOKEN_LEN));
        match open(&key(1), &token) {
            Err(e @ HandleError::TooLarge { .. }) => {
                assert!(e.to_string().contains("more than the 1048576 accepted"));
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn key_file_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("handle.key");
        let first = HandleKey::load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), KEY_LEN as u64);
        let again = HandleKey::load_or_create(&path).unwrap();
        assert_eq!(first.0, again.0);
        // A handle sealed before a "restart" opens after it.
        let token = seal(&first, &data());
        assert_eq!(open(&again, &token).unwrap(), data());
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["handle.key"]);
    }

    #[test]
    fn racing_creators_agree_on_one_key() {
        const N: usize = 8;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handle.key");
        let barrier = Arc::new(Barrier::new(N));
        let keys: Vec<[u8; KEY_LEN]> = (0..N)
            .map(|_| {
                let path = path.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    HandleKey::load_or_create(&path).unwrap().0
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(keys.iter().all(|k| *k == keys[0]));
        assert_eq!(std::fs::read(&path).unwrap(), keys[0]);
    }

    #[test]
    fn wrong_length_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handle.key");
        std::fs::write(&path, b"short").unwrap();
        match HandleKey::load_or_create(&path) {
            Err(e @ HandleError::KeyLength { len: 5, .. }) => {
                assert!(e.to_string().ends_with("has 5 bytes, expected 32"));
            }
            other => panic!("expected KeyLength, got {other:?}"),
        }
    }
}
