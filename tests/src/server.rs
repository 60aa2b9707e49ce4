//! Running `appliance serve` as a separate process for end-to-end tests,
//! and talking to it the way users do: the CLI, and raw HTTP with curl on
//! the unix socket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `appliance` binary of the same build as the running executable
/// (`make test` and `cargo test --workspace` build it; `make bench` builds
/// the release one).
pub fn appliance_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> → target/debug/appliance;
    // target/release/bench → target/release/appliance.
    let dir = exe.parent().expect("target dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target dir")
    } else {
        dir
    };
    let bin = dir.join("appliance");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p appliance` (`--release` for the bench)",
        bin.display()
    );
    bin
}

/// The longest any one CLI command of a test may take (`timeout`'s form).
const CLI_TIMEOUT: &str = "600";

/// `appliance serve` on `state` with `extra` arguments, its output
/// appended to `serve.log`.
fn spawn_serve(state: &Path, netns: Option<&str>, extra: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(state.join("serve.log"))
        .expect("serve log");
    // `ip netns exec` execs the server: the child's PID is the server's.
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(appliance_bin());
            c
        }
        None => Command::new(appliance_bin()),
    };
    cmd.arg("--state")
        .arg(state)
        .arg("serve")
        .args(extra)
        .env(
            "APPLIANCE_ACCEL",
            std::env::var("APPLIANCE_ACCEL").unwrap_or_else(|_| "tcg".into()),
        )
        .env(
            "APPLIANCE_BOOT_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../build"),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn appliance serve")
}

pub struct Server {
    pub state: PathBuf,
    child: Option<Child>,
    /// The network namespace it runs in, if not the test's own.
    netns: Option<String>,
    /// Arguments to `serve` beyond the state directory.
    extra: Vec<String>,
}

impl Server {
    /// Starts a server on `state` and waits until its socket answers.
    pub fn start(state: &Path) -> Server {
        Server::start_full(state, None, &[])
    }

    /// Starts a server inside the network namespace `netns` (so that the
    /// bridges, taps and rules it makes live there).
    pub fn start_in(state: &Path, netns: &crate::netns::Netns) -> Server {
        Server::start_full(state, Some(netns), &[])
    }

    /// Starts a server (in `netns`, if given) that also serves plain HTTP
    /// on the loopback address `addr` (`serve --tcp`).
    pub fn start_tcp(
        state: &Path,
        netns: Option<&crate::netns::Netns>,
        addr: std::net::SocketAddr,
    ) -> Server {
        Server::start_full(state, netns, &["--tcp".into(), addr.to_string()])
    }

    /// Starts a server on `state` with options after `serve` (e.g.
    /// `["--linger", "3s"]`).
    pub fn start_with(state: &Path, args: &[&str]) -> Server {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Server::start_full(state, None, &args)
    }

    /// Starts a server in `netns` (if given) with options after `serve`.
    pub fn start_in_with(
        state: &Path,
        netns: Option<&crate::netns::Netns>,
        args: &[&str],
    ) -> Server {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Server::start_full(state, netns, &args)
    }

    fn start_full(state: &Path, netns: Option<&crate::netns::Netns>, extra: &[String]) -> Server {
        let netns = netns.map(|n| n.name.clone());
        let s = Server {
            state: state.to_path_buf(),
            child: Some(spawn_serve(state, netns.as_deref(), extra)),
            netns,
            extra: extra.to_vec(),
        };
        s.wait_up();
        s
    }

    /// Starts the server again on the same state directory (after
    /// [`Server::kill9`]): it re-adopts the running VMs.
    pub fn restart(&mut self) {
        self.kill9();
        self.child = Some(spawn_serve(&self.state, self.netns.as_deref(), &self.extra));
        self.wait_up();
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, _) = self.http("GET", "/diagnostics/stats", None);
            if code == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "appliance serve did not come up; log:\n{}",
                std::fs::read_to_string(self.state.join("serve.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the server is running")
    }

    pub fn socket(&self) -> PathBuf {
        self.state.join("appliance.sock")
    }

    /// Ends the server abruptly (SIGKILL, by its PID), as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            // The debug build panics (and says so in its log) when the state
            // database is used on an async worker: a test that got there
            // fails.
            let log = std::fs::read_to_string(self.state.join("serve.log")).unwrap_or_default();
            if log.contains("used on an async worker thread") && !std::thread::panicking() {
                panic!("appliance serve blocked an async worker on the store; its log:\n{log}");
            }
        }
    }

    /// Sends SIGTERM and waits (at most `bound`) for the server to exit;
    /// `None` if it did not.
    pub fn terminate(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let c = self.child.as_mut()?;
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Runs the CLI against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    /// Starts the CLI against this server without waiting for it, its
    /// stdout and stderr piped (bounded by the same time-out as [`Server::cli`]).
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        Command::new("timeout")
            .arg(CLI_TIMEOUT)
            .arg(appliance_bin())
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn appliance")
    }

    pub fn cli_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        // A CLI that hangs fails the test (exit 124) instead of the run.
        let mut c = Command::new("timeout")
            .arg(CLI_TIMEOUT)
            .arg(appliance_bin())
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn appliance");
        if let (Some(data), Some(mut s)) = (stdin, c.stdin.take()) {
            s.write_all(data).expect("stdin");
        }
        c.wait_with_output().expect("appliance output")
    }

    /// One HTTP request with curl on the unix socket: (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "-m",
            "300",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            method,
        ])
        .arg("--unix-socket")
        .arg(self.socket())
        .arg(format!("http://appliance{path}"));
        if let Some(b) = body {
            c.args(["-H", "content-type: application/json", "--data-binary", b]);
        }
        let out = c.output().expect("curl (install Debian's curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Server {
    /// Ends the VMs this server's containers run in (they outlive the
    /// server by design), by the PIDs recorded in the state directory.
    pub fn kill_vms(&self) {
        let Ok(dirs) = std::fs::read_dir(self.state.join("containers")) else {
            return;
        };
        for d in dirs.flatten() {
            let Some(pid) = std::fs::read_to_string(d.path().join("qemu.pid"))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&*d.path().to_string_lossy()))
                .unwrap_or(false);
            if ours {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        self.kill_vms();
    }
}

/// stdout of a finished command as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
