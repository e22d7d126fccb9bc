// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What the two-port loop modes ([`loopback`](super::loopback),
//! [`ring_loop`](super::ring_loop)) measure alike: the clocks over the measured phase,
//! each direction's rate, and the frontend's cost on its core; and how they print them.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use vpmd_uplink::tsc;

use crate::modes;
use crate::pacing::thread_cpu_time;

/// Names of the two ports, as the reports give them.
pub const PORT_NAMES: [&str; 2] = ["a", "b"];

/// `a / b`, or 0 where `b` is not positive (nothing measured).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Wall clock, TSC and this thread's CPU time at the start of the measured phase.
pub struct Stopwatch {
    wall: Instant,
    tsc: u64,
    cpu: Duration,
}

/// What a [`Stopwatch`] measured.
#[derive(Clone, Copy, Debug)]
pub struct Elapsed {
    /// Wall seconds.
    pub secs: f64,
    /// TSC cycles.
    pub cycles: u64,
    /// Seconds of CPU time this thread got.
    pub cpu: f64,
}

impl Stopwatch {
    /// Starts all three clocks.
    pub fn start() -> Self {
        Stopwatch {
            wall: Instant::now(),
            tsc: tsc::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// When a phase of `d` from the start ends.
    pub fn deadline(&self, d: Duration) -> Instant {
        self.wall + d
    }

    /// What the clocks moved since the start.
    pub fn read(&self) -> Elapsed {
        Elapsed {
            secs: self.wall.elapsed().as_secs_f64(),
            cycles: tsc::now().wrapping_sub(self.tsc),
            cpu: thread_cpu_time()
                .checked_sub(self.cpu)
                .unwrap()
                .as_secs_f64(),
        }
    }
}

/// One direction's rate while measuring: what the receiving port got.
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    /// Sending port ("a" or "b").
    pub from: &'static str,
    /// Receiving port.
    pub to: &'static str,
    /// Frames received by `to` while measuring.
    pub frames: u64,
    /// Millions of frames per second received.
    pub mpps: f64,
    /// Gigabits per second of frame bytes received.
    pub gbps: f64,
}

impl Rate {
    /// What port `1 - p` received from port `p`: `frames` of `bytes` in all, in `secs`.
    pub fn new(p: usize, frames: u64, bytes: u64, secs: f64) -> Self {
        Rate {
            from: PORT_NAMES[p],
            to: PORT_NAMES[1 - p],
            frames,
            mpps: modes::mpps(frames, secs),
            gbps: modes::gbps(bytes, secs),
        }
    }
}

impl fmt::Display for Rate {
    /// `  a -> b:   frames  Mpps  Gbit/s`, the start of a direction's line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "  {} -> {}: {:>12} frames  {:8.3} Mpps  {:8.3} Gbit/s",
            self.from, self.to, self.frames, self.mpps, self.gbps
        )
    }
}

/// The line of both directions' totals.
pub fn write_total(f: &mut fmt::Formatter<'_>, mpps: f64, gbps: f64) -> fmt::Result {
    writeln!(f, "  total : {mpps:8.3} Mpps  {gbps:8.3} Gbit/s")
}

/// The frontend's cost on its core.
#[derive(Clone, Debug, Serialize)]
pub struct CoreCost {
    /// TSC cycles per frame received (both directions) in the steps or polls that moved
    /// frames: the frontend's own work per frame, whose inverse is the most it could
    /// handle (as testpmd's `record-core-cycles` and vpmd's busy_cycles count).
    pub busy_cycles_per_frame: f64,
    /// TSC cycles per frame received, busy or not: as it always polls, the inverse of
    /// its throughput.
    pub cycles_per_frame: f64,
    /// TSC frequency measured over the run, GHz.
    pub tsc_ghz: f64,
    /// CPU time the frontend thread got / wall time (1.0: a whole core; below 1, the
    /// machine took its core).
    pub cpu_share: f64,
}

impl CoreCost {
    /// Over `e`: `frames` received in all, `busy` of the cycles spent moving them.
    pub fn new(e: &Elapsed, frames: u64, busy: u64) -> Self {
        CoreCost {
            busy_cycles_per_frame: ratio(busy as f64, frames as f64),
            cycles_per_frame: ratio(e.cycles as f64, frames as f64),
            tsc_ghz: ratio(e.cycles as f64, e.secs * 1e9),
            cpu_share: ratio(e.cpu, e.secs),
        }
    }
}

/// `" (interrupted)"` if a signal cut the run short.
pub fn interrupted_note(interrupted: bool) -> &'static str {
    if interrupted {
        " (interrupted)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_costs() {
        let r = Rate::new(1, 2_000_000, 125_000_000, 1.0);
        assert_eq!((r.from, r.to), ("b", "a"));
        assert!((r.mpps - 2.0).abs() < 1e-9 && (r.gbps - 1.0).abs() < 1e-9);
        let e = Elapsed {
            secs: 2.0,
            cycles: 4_000_000_000,
            cpu: 1.0,
        };
        let c = CoreCost::new(&e, 1000, 1_000_000);
        assert_eq!(
            (c.busy_cycles_per_frame, c.cycles_per_frame, c.cpu_share),
            (1000.0, 4_000_000.0, 0.5)
        );
        assert!((c.tsc_ghz - 2.0).abs() < 1e-9);
        let none = CoreCost::new(&Elapsed { secs: 0.0, ..e }, 0, 0);
        assert_eq!((none.cycles_per_frame, none.tsc_ghz), (0.0, 0.0));
    }
}
