//! Powering the VM off: end every process, flush filesystems, power down.
//!
//! Owns the last seconds of the VM. Called when the primary session is done
//! and its output delivered, or when boot fails.

use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, sync};

/// Signals every process but ourselves, waiting up to `wait` for them to go.
async fn signal_all(sig: Signal, wait: Duration) {
    if !user_processes_left() || kill(Pid::from_raw(-1), sig).is_err() {
        return;
    }
    let deadline = Instant::now() + wait;
    // The reaper collects the exits meanwhile. (kill(-1, 0) cannot tell:
    // it succeeds as long as kernel threads exist, which is always.)
    while user_processes_left() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether any process but PID 1 and the kernel's threads is left.
fn user_processes_left() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            return false;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        is_user_process(pid, &stat)
    })
}

/// From `/proc/<pid>/stat`: not PID 1, not kthreadd (2) nor one of its
/// children (kernel threads). A process that is gone reads as empty.
fn is_user_process(pid: u32, stat: &str) -> bool {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let ppid = rest
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u32>().ok());
    pid > 2 && ppid.is_some_and(|p| p != 2)
}

/// Mount points of block devices other than `/`, from a mount table
/// (`/proc/self/mounts`), innermost (last mounted) first.
fn disk_mounts(table: &str) -> Vec<String> {
    let mut out: Vec<String> = table
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (source, target) = (f.next()?, f.next()?);
            // The table escapes spaces and the like as \ooo octal.
            let target = unescape(target);
            (source.starts_with("/dev/") && target != "/").then_some(target)
        })
        .collect();
    out.reverse();
    out
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn off() -> ! {
    crate::info!("powering off");
    signal_all(Signal::SIGTERM, Duration::from_secs(2)).await;
    signal_all(Signal::SIGKILL, Duration::from_secs(1)).await;
    sync();
    // Volumes are unmounted, so their journals are clean for the next
    // container (which may mount them read-only, on a read-only disk).
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for target in disk_mounts(&table) {
        if let Err(e) = nix::mount::umount(target.as_str()) {
            crate::error!("unmounting {target}: {e}");
        }
    }
    let _ = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    );
    sync();
    let e = reboot(RebootMode::RB_POWER_OFF);
    crate::error!("power off failed: {e:?}");
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_threads_and_init_are_not_waited_for() {
        assert!(!is_user_process(1, "1 (tether) S 0 1 1 0"));
        assert!(!is_user_process(2, "2 (kthreadd) S 0 0 0 0"));
        assert!(!is_user_process(17, "17 (kworker/0:1-events) I 2 0 0 0"));
        assert!(is_user_process(240, "240 (sleep) S 1 240 240 0"));
        assert!(is_user_process(241, "241 (my (odd) name) Z 240 240 240 0"));
        assert!(!is_user_process(242, ""));
    }

    #[test]
    fn volumes_are_unmounted_innermost_first_and_root_is_left() {
        let table = "/dev/vda / ext4 rw 0 0\n\
proc /proc proc rw 0 0\n\
/dev/vdb /data ext4 rw 0 0\n\
/dev/vdc /data/my\\040dir ext4 ro 0 0\n\
tmpfs /run tmpfs rw 0 0\n";
        assert_eq!(disk_mounts(table), ["/data/my dir", "/data"]);
    }
}
