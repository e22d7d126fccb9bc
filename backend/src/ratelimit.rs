// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Rate limiting for log lines a guest can trigger.
//!
//! A hostile or broken guest can make the same error happen millions of times a
//! second; vpmd counts every occurrence but logs at most a few per interval, and
//! says how many it held back.

use std::time::{Duration, Instant};

/// Allows `burst` log lines per `interval`.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl Default for LogLimiter {
    /// [`LogLimiter::guest_errors`].
    fn default() -> Self {
        Self::guest_errors()
    }
}

impl LogLimiter {
    /// A limiter of `burst` lines per `interval`.
    pub const fn new(interval: Duration, burst: u32) -> Self {
        LogLimiter {
            interval,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// The default for guest-triggered errors: 5 lines per 10 seconds.
    pub const fn guest_errors() -> Self {
        Self::new(Duration::from_secs(10), 5)
    }

    /// Whether a line may be logged now; `Some(n)` with the number of lines held
    /// back since the last one logged, `None` if this one must be held back.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        let fresh = match self.window_start {
            None => true,
            Some(start) => now.duration_since(start) >= self.interval,
        };
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_past_the_burst_and_reports_it() {
        let mut l = LogLimiter::new(Duration::from_secs(10), 2);
        let t = Instant::now();
        assert_eq!(l.allow_at(t), Some(0));
        assert_eq!(l.allow_at(t), Some(0));
        assert_eq!(l.allow_at(t), None);
        assert_eq!(l.allow_at(t + Duration::from_secs(1)), None);
        assert_eq!(l.allow_at(t + Duration::from_secs(11)), Some(2));
    }
}
