//! The real docker CLI (`/usr/local/bin/docker`, 28.2.2) against `appliance
//! serve --docker-socket`, for the Docker personality's end-to-end tests.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::server::{Server, stderr, stdout};

pub const DOCKER: &str = "/usr/local/bin/docker";

/// A server with the Docker API on `<state>/docker.sock`.
pub struct Docker {
    _dir: tempfile::TempDir,
    pub server: Server,
    pub socket: PathBuf,
    /// The CLI's own configuration directory, apart from the user's.
    pub config: PathBuf,
}

impl Docker {
    pub fn start() -> Docker {
        Docker::start_full(None, &[])
    }

    /// A server in `netns` (if given) with extra `serve` options.
    pub fn start_full(netns: Option<&crate::netns::Netns>, extra: &[&str]) -> Docker {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("docker.sock");
        let config = dir.path().join("docker-config");
        std::fs::create_dir_all(&config).expect("config dir");
        let mut args = vec!["--docker-socket", socket.to_str().expect("utf-8 path")];
        if netns.is_none() {
            // Outside a namespace of its own, a server must not make
            // bridges and taps on the machine's network.
            args.extend_from_slice(&["--docker-default-network", "none"]);
        }
        args.extend_from_slice(extra);
        let server = Server::start_in_with(dir.path(), netns, &args);
        Docker {
            _dir: dir,
            server,
            socket,
            config,
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg("300")
            .arg(DOCKER)
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", &self.config)
            .env_remove("DOCKER_API_VERSION")
            .env_remove("DOCKER_CONTEXT")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with_stdin(args, None)
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut c = self.command(args);
        c.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = c.spawn().expect("spawn docker");
        if let (Some(data), Some(mut s)) = (stdin, child.stdin.take()) {
            s.write_all(data).expect("stdin");
        }
        child.wait_with_output().expect("docker output")
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "docker {args:?}: stdout {:?}, stderr {:?}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }
}

impl Docker {
    /// `docker ARGS` (a shell line) in a terminal of its own sized `rows` x
    /// `cols` (under `script`).
    pub fn in_a_terminal(&self, rows: u16, cols: u16, args: &str) -> Output {
        let cmd = format!("stty rows {rows} cols {cols} && exec {DOCKER} {args}");
        Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", &self.config)
            .stdin(Stdio::null())
            .output()
            .expect("script (util-linux)")
    }
}
