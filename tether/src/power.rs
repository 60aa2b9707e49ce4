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
    let all = Pid::from_raw(-1);
    if kill(all, sig).is_err() {
        return;
    }
    let deadline = Instant::now() + wait;
    // kill(-1, 0) fails with ESRCH once no other process is left; the
    // reaper collects the exits meanwhile.
    while kill(all, None).is_ok() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    fn volumes_are_unmounted_innermost_first_and_root_is_left() {
        let table = "/dev/vda / ext4 rw 0 0\n\
proc /proc proc rw 0 0\n\
/dev/vdb /data ext4 rw 0 0\n\
/dev/vdc /data/my\\040dir ext4 ro 0 0\n\
tmpfs /run tmpfs rw 0 0\n";
        assert_eq!(disk_mounts(table), ["/data/my dir", "/data"]);
    }
}
