// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Rate limiting, run limits and clocks for the traffic modes.
//!
//! [`Pacer`] keeps an average rate: the caller sends what is due, in bursts of at most its
//! size, and between bursts waits until a whole burst is due, sleeping (not spinning) when
//! that is far enough away, so a rate-limited sender leaves the CPU to others (on two
//! cores, a spinning sender would starve a receiver that waits on its eventfd). A sender that fell
//! behind (descheduled) catches up by at most [`MAX_BACKLOG`] frames, so a receiver's ring
//! never sees a flood. [`RunLimit`] says when a run is over (count or duration);
//! [`Clock`] gives nanoseconds since a start; the CPU's time-stamp counter is
//! [`vpmd_uplink::tsc`].
#![allow(unsafe_code)] // clock_gettime for thread CPU time.

use std::time::{Duration, Instant};

/// Most frames a late sender sends ahead of schedule to catch up.
pub const MAX_BACKLOG: u64 = 64;
/// Waits longer than this sleep; shorter ones spin.
const SLEEP_ABOVE: Duration = Duration::from_micros(100);

/// Sends `pps` frames per second (`None`: as fast as possible).
#[derive(Clone, Debug)]
pub struct Pacer {
    pps: Option<f64>,
    start: Instant,
    /// Frames forgiven because the sender fell too far behind.
    forgiven: u64,
}

impl Pacer {
    /// Starts the schedule now.
    pub fn new(pps: Option<u64>) -> Self {
        Pacer {
            pps: pps.filter(|&r| r > 0).map(|r| r as f64),
            start: Instant::now(),
            forgiven: 0,
        }
    }

    /// How many frames may go now, given `sent` so far: at most `max`.
    #[inline]
    pub fn allowed(&mut self, sent: u64, max: u64) -> u64 {
        let Some(pps) = self.pps else {
            return max;
        };
        let due = (self.start.elapsed().as_secs_f64() * pps) as u64 + 1;
        let due = due.saturating_sub(self.forgiven);
        let behind = due.saturating_sub(sent);
        if behind > MAX_BACKLOG {
            self.forgiven += behind - MAX_BACKLOG;
        }
        behind.min(MAX_BACKLOG).min(max)
    }

    /// Waits until `burst` more frames are due after `sent` (sleeping when that is far
    /// off).
    pub fn wait(&self, sent: u64, burst: u64) {
        let Some(pps) = self.pps else {
            return;
        };
        let next = sent + self.forgiven + burst.max(1) - 1;
        let at = self.start + Duration::from_secs_f64(next as f64 / pps);
        loop {
            let now = Instant::now();
            if now >= at {
                return;
            }
            let left = at - now;
            if left > SLEEP_ABOVE {
                std::thread::sleep(left.checked_sub(SLEEP_ABOVE / 2).unwrap());
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// When a run is over: after `count` frames or `duration`, whichever comes first.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunLimit {
    /// Frames.
    pub count: Option<u64>,
    /// Wall time.
    pub duration: Option<Duration>,
}

impl RunLimit {
    /// Whether `frames` done in `elapsed` end the run.
    #[inline]
    pub fn done(&self, frames: u64, elapsed: Duration) -> bool {
        self.count.is_some_and(|c| frames >= c) || self.duration.is_some_and(|d| elapsed >= d)
    }

    /// Frames still allowed (u64::MAX without a count).
    pub fn left(&self, frames: u64) -> u64 {
        self.count.map_or(u64::MAX, |c| c.saturating_sub(frames))
    }
}

/// Nanoseconds since a start.
#[derive(Clone, Copy, Debug)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// Starts now.
    pub fn new() -> Self {
        Clock(Instant::now())
    }

    /// Nanoseconds since the start.
    #[inline]
    pub fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// CPU time this thread has used.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_by_count_or_time() {
        let l = RunLimit {
            count: Some(10),
            duration: Some(Duration::from_secs(1)),
        };
        assert!(!l.done(9, Duration::from_millis(10)));
        assert!(l.done(10, Duration::ZERO));
        assert!(l.done(0, Duration::from_secs(2)));
        assert_eq!(l.left(4), 6);
        assert!(!RunLimit::default().done(u64::MAX, Duration::MAX));
    }

    #[test]
    fn pacer_holds_the_rate_and_caps_catch_up() {
        let mut p = Pacer::new(Some(10_000));
        let start = Instant::now();
        let mut sent = 0;
        while sent < 500 {
            let n = p.allowed(sent, 8);
            if n == 0 {
                p.wait(sent, 8);
            }
            sent += n;
        }
        let took = start.elapsed().as_secs_f64();
        assert!(
            (0.045..0.2).contains(&took),
            "500 frames at 10 kpps took {took} s"
        );
        std::thread::sleep(Duration::from_millis(50)); // 500 frames behind
        assert_eq!(p.allowed(sent, 1000), MAX_BACKLOG);
        assert_eq!(Pacer::new(None).allowed(0, 32), 32);
    }
}
