//! The TSC frequency a TCG guest sees, so that its kernel need not measure
//! it.
//!
//! Under TCG the guest's TSC runs at the host's TSC rate, but the guest
//! kernel calibrates it against an emulated PIT. When the host is busy that
//! calibration fails, the kernel marks the TSC unstable and can hang before
//! its timer ticks. Measuring the rate on the host and passing
//! `tsc_early_khz=` skips the calibration. Under KVM the guest kernel gets
//! the frequency from kvmclock and this is not used.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::accel::Accel;

/// The value for `tsc_early_khz=`, or `None` where not needed or unknown.
pub fn guest_tsc_khz(accel: Accel) -> Option<u64> {
    match accel {
        Accel::Kvm => None,
        Accel::Tcg => host_tsc_khz(),
    }
}

/// The host's TSC frequency, measured once against the monotonic clock.
pub fn host_tsc_khz() -> Option<u64> {
    static KHZ: OnceLock<Option<u64>> = OnceLock::new();
    *KHZ.get_or_init(measure)
}

#[cfg(target_arch = "x86_64")]
fn measure() -> Option<u64> {
    // Best of a few short windows: a preempted window only reads low or high
    // by the preemption, and the median discards it.
    let mut samples: Vec<u64> = (0..5)
        .filter_map(|_| {
            let t0 = Instant::now();
            // SAFETY: RDTSC has no memory effects and exists on every x86-64.
            let c0 = unsafe { core::arch::x86_64::_rdtsc() };
            std::thread::sleep(Duration::from_millis(10));
            // SAFETY: as above.
            let c1 = unsafe { core::arch::x86_64::_rdtsc() };
            let ns = t0.elapsed().as_nanos() as u64;
            (ns > 0 && c1 > c0).then(|| (c1 - c0) * 1_000_000 / ns)
        })
        .collect();
    samples.sort_unstable();
    samples
        .get(samples.len() / 2)
        .copied()
        .filter(|k| *k > 100_000)
}

#[cfg(not(target_arch = "x86_64"))]
fn measure() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_needs_no_hint_and_tcg_gets_a_plausible_one() {
        assert_eq!(guest_tsc_khz(Accel::Kvm), None);
        if cfg!(target_arch = "x86_64") {
            let khz = guest_tsc_khz(Accel::Tcg).expect("x86-64 hosts have a TSC");
            // Between 100 MHz and 10 GHz.
            assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
        }
    }
}
