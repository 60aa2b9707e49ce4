//! A real registry for tests: distribution's `docker-registry` (Debian's
//! docker-registry package) on a free loopback port, storing in a temporary
//! directory, optionally behind htpasswd basic auth; and pushing OCI
//! layouts to it with skopeo (Debian's skopeo package).
//!
//! It owns its child process only: dropping a [`Registry`] kills that
//! child by its PID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// How long the registry may take to answer `GET /v2/`.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Registry {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
    credentials: Option<(String, String)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Registry {
    /// Starts an open registry.
    pub fn start() -> Registry {
        Self::start_inner(None)
    }

    /// Starts a registry that wants basic auth as `user`/`password`
    /// (htpasswd with a bcrypt hash, over plain HTTP on loopback).
    pub fn start_with_htpasswd(user: &str, password: &str) -> Registry {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} missing: install Debian's docker-registry"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).expect("storage dir");
        let mut auth = String::new();
        if let Some((user, password)) = &credentials {
            // Cost 4, the least bcrypt allows: tests need no strength.
            let hash = bcrypt::hash(password, 4).expect("bcrypt");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: test-registry\n    path: {}\n",
                htpasswd.display()
            );
        }
        // A port can be taken between finding it free and the registry
        // binding it: try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n  secret: tests-only\n\
                     {auth}",
                    storage.display()
                ),
            )
            .expect("config.yml");
            let log_path = dir.path().join("registry.log");
            let log = std::fs::File::create(&log_path).expect("registry log");
            let mut child = Command::new(REGISTRY_BIN)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {REGISTRY_BIN}: {e}"));
            if wait_ready(&mut child, addr) {
                return Registry {
                    child,
                    dir,
                    addr,
                    credentials,
                };
            }
            last_log = std::fs::read_to_string(&log_path).unwrap_or_default();
            // Child::kill signals this child's PID only.
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the registry did not start:\n{last_log}");
    }

    fn kill(&mut self) {
        // Child::kill signals this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:<port>/<name_tag>`.
    pub fn reference(&self, name_tag: &str) -> String {
        format!("{}/{name_tag}", self.addr)
    }

    /// The registry's filesystem storage (`rootdirectory`).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps the bytes of blob `digest`.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes the image tagged `tag` in the OCI layout `layout` as
    /// `<registry>/<name_tag>`, keeping its manifest and blobs as they are
    /// (uncompressed layers stay uncompressed).
    pub fn push_oci_layout(&self, layout: &Path, tag: &str, name_tag: &str) {
        self.skopeo_copy(layout, tag, name_tag, &["--preserve-digests"]);
    }

    /// Like [`Registry::push_oci_layout`] for an index: pushes every image
    /// of it (`skopeo copy --all`).
    pub fn push_oci_layout_all(&self, layout: &Path, tag: &str, name_tag: &str) {
        self.skopeo_copy(layout, tag, name_tag, &["--all", "--preserve-digests"]);
    }

    /// Like [`Registry::push_oci_layout`], converting the manifest to
    /// Docker v2 schema 2 (`skopeo copy --format v2s2`).
    pub fn push_docker_v2s2(&self, layout: &Path, tag: &str, name_tag: &str) {
        self.skopeo_copy(layout, tag, name_tag, &["--format", "v2s2"]);
    }

    fn skopeo_copy(&self, layout: &Path, tag: &str, name_tag: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .args(extra);
        if let Some((user, password)) = &self.credentials {
            cmd.arg("--dest-creds").arg(format!("{user}:{password}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}", self.reference(name_tag)));
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("running skopeo (install Debian's skopeo): {e}"));
        assert!(
            out.status.success(),
            "skopeo copy to {name_tag} failed: {}\nregistry log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `GET /v2/` answers (200, or 401 behind auth); false if the
/// registry exited or did not answer in time.
fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Some(status) = get_status(addr, "/v2/")
            && (status == 200 || status == 401)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The HTTP status of `GET path` (HTTP/1.0, no keep-alive), None if there
/// is no answer.
fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    // "HTTP/1.1 200"
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
