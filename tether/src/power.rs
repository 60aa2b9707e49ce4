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

pub async fn off() -> ! {
    crate::info!("powering off");
    signal_all(Signal::SIGTERM, Duration::from_secs(2)).await;
    signal_all(Signal::SIGKILL, Duration::from_secs(1)).await;
    sync();
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
