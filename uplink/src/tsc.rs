// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The CPU's time-stamp counter: the cheap clock of vpmd's polling threads (cycle
//! accounting) and of the traffic generators. Here because both `vpmd` and `vpmd-bench`
//! depend on this crate.
#![allow(unsafe_code)]

use std::time::{Duration, Instant};

/// Reads the time-stamp counter (cycles at the TSC's constant rate).
#[inline]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC reads a counter; it has no memory effects and every x86_64
        // CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // Elsewhere: nanoseconds since the first call, so "cycles" are nanoseconds.
        use std::sync::OnceLock;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Measures the counter's rate against the monotonic clock over `period`.
pub fn measure_hz(period: Duration) -> u64 {
    let (t0, c0) = (Instant::now(), now());
    std::thread::sleep(period);
    let (t1, c1) = (Instant::now(), now());
    let secs = (t1 - t0).as_secs_f64();
    if secs <= 0.0 {
        return 1;
    }
    ((c1.wrapping_sub(c0)) as f64 / secs) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_advances_at_a_plausible_rate() {
        let hz = measure_hz(Duration::from_millis(20));
        // Anything from 100 MHz (or the 1 GHz nanosecond fallback) up to 10 GHz.
        assert!((100_000_000..10_000_000_000).contains(&hz), "{hz}");
    }
}
