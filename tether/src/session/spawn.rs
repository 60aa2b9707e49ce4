//! Starting one process for a session: credentials, environment, working
//! directory, and stdio as pipes or a pseudo-terminal.
//!
//! Owns the fork/exec and the mapping of launch failures to the exit codes a
//! shell reports (127 not found, 126 not executable). Must not wait for or
//! reap the child: the reaper in `session::reaper` does that for every
//! process in the VM.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::pty::{OpenptyResult, Winsize, openpty};
use nix::unistd::{Gid, Uid, setgid, setgroups, setsid, setuid};
use proto::v1::{SessionSpec, WindowSize};

use super::user::{self, Identity};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The parent's ends of a started process's stdio.
#[derive(Debug)]
pub enum Stdio3 {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Pty {
        master: OwnedFd,
    },
}

#[derive(Debug)]
pub struct Started {
    pub pid: i32,
    pub io: Stdio3,
}

/// Why a process could not be started, with the exit code a shell would give.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct LaunchError {
    pub exit_code: i32,
    pub message: String,
}

impl LaunchError {
    fn new(exit_code: i32, message: String) -> Self {
        Self { exit_code, message }
    }
}

/// Builds the environment: the spec's variables, plus PATH, HOME, HOSTNAME
/// and (for a tty) TERM when the spec does not set them.
pub fn environment(spec: &SessionSpec, id: &Identity, hostname: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for kv in &spec.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if k.is_empty() {
            continue;
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    let mut default = |k: &str, v: &str| {
        if !env.iter().any(|(ek, _)| ek == k) {
            env.push((k.to_string(), v.to_string()));
        }
    };
    default("PATH", DEFAULT_PATH);
    default("HOME", &id.home);
    default("HOSTNAME", hostname);
    if spec.tty {
        default("TERM", "xterm");
    }
    env
}

/// Starts the process described by `spec` inside the current root.
pub fn launch(spec: &SessionSpec, hostname: &str) -> Result<Started, LaunchError> {
    let program = spec
        .args
        .first()
        .ok_or_else(|| LaunchError::new(127, "Session has no command (args is empty)".into()))?;
    let id = user::resolve_in(Path::new("/"), &spec.user)
        .map_err(|e| LaunchError::new(126, format!("Resolving user: {e}")))?;
    let dir = if spec.working_dir.is_empty() {
        "/".to_string()
    } else {
        spec.working_dir.clone()
    };
    if !Path::new(&dir).is_dir() {
        // As container runtimes do, create a missing working directory.
        std::fs::create_dir_all(&dir)
            .map_err(|e| LaunchError::new(126, format!("Creating working directory {dir}: {e}")))?;
    }

    let mut cmd = Command::new(program);
    cmd.args(&spec.args[1..])
        .env_clear()
        .envs(environment(spec, &id, hostname))
        .current_dir(&dir);

    let master = if spec.tty {
        let pty = open_terminal(spec.window.as_ref())?;
        let slave = pty.slave;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| LaunchError::new(126, format!("Duplicating the terminal: {e}")))
        };
        cmd.stdin(Stdio::from(dup(&slave)?))
            .stdout(Stdio::from(dup(&slave)?))
            .stderr(Stdio::from(slave));
        Some(pty.master)
    } else {
        cmd.stdin(if spec.open_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        None
    };

    let tty = spec.tty;
    let (uid, gid) = (Uid::from_raw(id.uid), Gid::from_raw(id.gid));
    let groups: Vec<Gid> = id.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (setsid, ioctl, setgroups,
    // setgid, setuid); `groups` was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            setsid()?;
            if tty {
                // TIOCSCTTY on fd 0, the terminal slave, with a plain
                // integer argument.
                if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            setgroups(&groups)?;
            setgid(gid)?;
            setuid(uid)?;
            Ok(())
        });
    }

    let mut child = cmd.spawn().map_err(|e| launch_error(program, &e))?;
    let pid = child.id() as i32;
    let io = match master {
        Some(master) => Stdio3::Pty { master },
        None => Stdio3::Pipes {
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: child
                .stdout
                .take()
                .map(OwnedFd::from)
                .ok_or_else(|| LaunchError::new(126, "Child has no stdout pipe".into()))?,
            stderr: child
                .stderr
                .take()
                .map(OwnedFd::from)
                .ok_or_else(|| LaunchError::new(126, "Child has no stderr pipe".into()))?,
        },
    };
    // The reaper collects the exit status; dropping `child` does not wait.
    drop(child);
    Ok(Started { pid, io })
}

/// Opens the pseudo-terminal of a tty session at the spec's initial size
/// (24x80 where it gives none), so the process sees that size from its
/// first instruction on: nothing has to resize it after the exec.
fn open_terminal(window: Option<&WindowSize>) -> Result<OpenptyResult, LaunchError> {
    let ws = window.copied().unwrap_or_default();
    let size = Winsize {
        ws_row: clamp_u16(ws.rows, 24),
        ws_col: clamp_u16(ws.cols, 80),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    openpty(Some(&size), None)
        .map_err(|e| LaunchError::new(126, format!("Opening a pseudo-terminal: {e}")))
}

fn clamp_u16(v: u32, default: u16) -> u16 {
    if v == 0 {
        default
    } else {
        u16::try_from(v).unwrap_or(u16::MAX)
    }
}

/// Maps a spawn failure to a shell's exit code and an actionable message.
pub fn launch_error(program: &str, e: &io::Error) -> LaunchError {
    match e.raw_os_error() {
        Some(libc::ENOENT) if program.contains('/') => {
            LaunchError::new(127, format!("{program}: no such file or directory"))
        }
        Some(libc::ENOENT) => LaunchError::new(
            127,
            format!("{program}: executable file not found in $PATH"),
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => {
            LaunchError::new(126, format!("{program}: permission denied"))
        }
        Some(libc::ENOEXEC) => LaunchError::new(126, format!("{program}: exec format error")),
        Some(libc::EISDIR) => LaunchError::new(126, format!("{program}: is a directory")),
        _ => LaunchError::new(126, format!("{program}: {e}")),
    }
}

/// Sets the terminal size of a pty master.
pub fn resize(master: &OwnedFd, rows: u32, cols: u32) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: clamp_u16(rows, 24),
        ws_col: clamp_u16(cols, 80),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which is
    // valid for the duration of the call.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ as _, &ws) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident() -> Identity {
        Identity {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            home: "/home/app".into(),
            name: Some("app".into()),
        }
    }

    #[test]
    fn environment_defaults_and_overrides() {
        let spec = SessionSpec {
            env: vec!["A=1".into(), "PATH=/x".into(), "A=2".into(), "EMPTY".into()],
            tty: true,
            ..Default::default()
        };
        let env = environment(&spec, &ident(), "box");
        let get = |k: &str| env.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("2"));
        assert_eq!(get("PATH"), Some("/x"));
        assert_eq!(get("EMPTY"), Some(""));
        assert_eq!(get("HOME"), Some("/home/app"));
        assert_eq!(get("HOSTNAME"), Some("box"));
        assert_eq!(get("TERM"), Some("xterm"));
        assert_eq!(env.iter().filter(|(k, _)| k == "A").count(), 1);
    }

    /// The size the terminal's slave side (the process's stdio) reports.
    fn slave_size(pty: &OpenptyResult) -> (u16, u16) {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes one `winsize` into the valid pointer.
        let r = unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ as _, &mut ws) };
        assert_eq!(r, 0, "TIOCGWINSZ: {}", io::Error::last_os_error());
        (ws.ws_row, ws.ws_col)
    }

    #[test]
    fn a_terminal_opens_at_the_sessions_size_before_anything_runs() {
        let w = WindowSize {
            rows: 30,
            cols: 100,
        };
        let pty = open_terminal(Some(&w)).expect("openpty");
        assert_eq!(slave_size(&pty), (30, 100));
        // No size, or a zero side: the usual 24x80 for what is missing.
        assert_eq!(slave_size(&open_terminal(None).expect("openpty")), (24, 80));
        let half = WindowSize { rows: 0, cols: 132 };
        assert_eq!(
            slave_size(&open_terminal(Some(&half)).expect("openpty")),
            (24, 132)
        );
        // Later sizes come through the master.
        resize(&pty.master, 50, 200).expect("resize");
        assert_eq!(slave_size(&pty), (50, 200));
    }

    #[test]
    fn launch_errors_map_to_shell_codes() {
        let nf = io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(launch_error("nosuch", &nf).exit_code, 127);
        assert!(launch_error("nosuch", &nf).message.contains("$PATH"));
        assert_eq!(launch_error("/bin/nosuch", &nf).exit_code, 127);
        let acc = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(launch_error("/etc/passwd", &acc).exit_code, 126);
        let fmt = io::Error::from_raw_os_error(libc::ENOEXEC);
        assert_eq!(launch_error("/x", &fmt).exit_code, 126);
    }
}
