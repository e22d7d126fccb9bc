// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What `ring-loop` reports, and the steal time it reads from `/proc/stat`.

#![allow(unsafe_code)] // sysconf(3) for the clock tick.

use std::fmt;

use serde::Serialize;

use super::tso::RxOffloads;
use crate::modes::loop_report::{self, CoreCost, Rate};

/// One direction's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Direction {
    /// Frames received and their rate.
    #[serde(flatten)]
    pub rate: Rate,
    /// TX descriptors the backend took from `from` while measuring.
    pub taken: u64,
    /// Millions of TX descriptors taken per second.
    pub taken_mpps: f64,
    /// Average advance of `to`'s RX `used.idx` per poll that saw it move.
    pub rx_per_burst: f64,
    /// Average advance of `from`'s TX `used.idx` per poll that saw it move.
    pub tx_per_burst: f64,
}

/// Whole-run totals of one direction, after the final drain.
#[derive(Clone, Debug, Serialize)]
pub struct DirectionTotals {
    /// Sending port.
    pub from: &'static str,
    /// Receiving port.
    pub to: &'static str,
    /// TX descriptors the backend took from `from` (warm-up, run and drain).
    pub taken: u64,
    /// Frames `to` received.
    pub received: u64,
    /// `taken` per TX queue pair of `from`.
    pub taken_per_queue: Vec<u64>,
    /// `received` per RX queue pair of `to`.
    pub received_per_queue: Vec<u64>,
    /// `taken - received`: frames the backend took and did not deliver (negative: it
    /// delivered frames it did not take from us).
    pub backend_drops: i64,
}

/// This frontend's own cost.
#[derive(Clone, Debug, Serialize)]
pub struct FrontendCost {
    /// Cycles per frame (busy: in polls that moved something), TSC, CPU share.
    #[serde(flatten)]
    pub core: CoreCost,
    /// Busy cycles / all cycles of the run: how much of its core the frontend needed.
    /// Well below 1: the backend, not the frontend, set the rate.
    pub busy_share: f64,
    /// Share of the run lost in polls longer than ~20 us (the thread was descheduled or
    /// interrupted), counted neither busy nor idle.
    pub stalled_share: f64,
    /// Polls (of all four queues) per microsecond.
    pub polls_per_us: f64,
}

/// Steal time over the measured run, from `/proc/stat`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Steal {
    /// Seconds stolen from all CPUs together.
    pub seconds: f64,
    /// Per CPU (cpu0, cpu1, ...): stolen share of the run.
    pub per_cpu: Vec<f64>,
}

/// What the samples found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Checks {
    /// Received frames sampled.
    pub rx_sampled: u64,
    /// Of those, wrong (used id, length, header, frame or sender).
    pub rx_bad: u64,
    /// With `--tso`, of the frames sampled: passed whole but with the checksum filled in
    /// and no GSO request left in the header (valid, but the receiver cannot tell it
    /// from one huge frame; DPDK's net_vhost io forwarding does this).
    pub rx_offload_completed: u64,
    /// TX completions sampled.
    pub tx_sampled: u64,
    /// Of those, not in ring order.
    pub tx_out_of_order: u64,
    /// The first problem found, if any.
    pub first_problem: Option<String>,
}

/// With `--tso`: A to B in TSO frames and in TCP payload.
#[derive(Clone, Debug, Serialize)]
pub struct TsoReport {
    /// `gso_size` of the frames sent.
    pub mss: u16,
    /// Most TX frames left with the backend at once.
    pub tx_window: u16,
    /// What port B negotiated.
    pub rx_offloads: RxOffloads,
    /// Whether the backend had to segment (B without GUEST_TSO4): received counts
    /// are then segments.
    pub segmented: bool,
    /// Segments one frame is cut into.
    pub segments_per_frame: u64,
    /// Bytes of each of B's RX buffers.
    pub rx_buf: u32,
    /// RX used entries per frame: its segments, or the merged buffers it fills.
    pub rx_entries_per_frame: u64,
    /// TCP payload bytes per frame.
    pub payload_per_frame: usize,
    /// Frames delivered per second, millions (segments / segments per frame when
    /// segmented).
    pub frames_mpps: f64,
    /// Segments delivered per second (whole or cut), millions: frames x segments per frame.
    pub segments_mpps: f64,
    /// Gigabits per second of TCP payload delivered.
    pub payload_gbps: f64,
}

/// What `ring-loop` measured.
#[derive(Clone, Debug, Serialize)]
pub struct RingLoopReport {
    /// Always "ring-loop".
    pub mode: &'static str,
    /// Frame size.
    pub size: usize,
    /// Descriptors per ring.
    pub queue_size: u16,
    /// Queue pairs per port (above 1: VIRTIO_NET_F_MQ).
    pub queue_pairs: u16,
    /// Of those, enabled (the first ones); only they send.
    pub enabled_pairs: u16,
    /// Flows per TX queue (UDP source ports).
    pub flows_per_queue: u16,
    /// Measured seconds.
    pub seconds: f64,
    /// A to B, then B to A, while measuring.
    pub directions: [Direction; 2],
    /// Both directions: frames received per second, millions.
    pub total_mpps: f64,
    /// Both directions.
    pub total_gbps: f64,
    /// With `--tso`: the rates in frames, segments and payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tso: Option<TsoReport>,
    /// Whole run, after the drain: where frames went.
    pub totals: [DirectionTotals; 2],
    /// Sum of both directions' `backend_drops`.
    pub backend_drops: i64,
    /// Whether the drain ended quiet (else totals may still have frames in flight).
    pub drained: bool,
    /// Cost on the frontend's core.
    pub frontend: FrontendCost,
    /// The machine's steal time while measuring.
    pub steal: Steal,
    /// Sampled checks.
    pub checks: Checks,
    /// Kicks sent (setup, and while nothing moved), whole run.
    pub kicks: u64,
    /// Of those, while measuring.
    pub kicks_measured: u64,
    /// Whether a signal cut the run short.
    pub interrupted: bool,
}

impl fmt::Display for RingLoopReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "ring-loop: {} B frames, {} descriptors per ring, {:.3} s measured",
            self.size, self.queue_size, self.seconds
        )?;
        for d in &self.directions {
            writeln!(
                f,
                "{}  (taken {:.3} Mpps; per burst rx {:.1}, tx {:.1})",
                d.rate, d.taken_mpps, d.rx_per_burst, d.tx_per_burst
            )?;
        }
        loop_report::write_total(f, self.total_mpps, self.total_gbps)?;
        if let Some(t) = &self.tso {
            writeln!(
                f,
                "  TSO a -> b, MSS {}, receiver offloads {:?} ({}): {:.4} M frames/s, {:.3} M \
                 segments/s, {:.3} Gbit/s of TCP payload ({} segments of {} payload bytes per frame; {} RX \
                 buffer(s) of {} bytes per frame; TX window {} frames)",
                t.mss,
                t.rx_offloads,
                if t.segmented { "segmented by the backend" } else { "passed whole" },
                t.frames_mpps,
                t.segments_mpps,
                t.payload_gbps,
                t.segments_per_frame,
                t.payload_per_frame,
                t.rx_entries_per_frame,
                t.rx_buf,
                t.tx_window
            )?;
        }
        for t in &self.totals {
            writeln!(
                f,
                "  whole run {} -> {}: taken {}, received {}, dropped in the backend {}",
                t.from, t.to, t.taken, t.received, t.backend_drops
            )?;
            if self.queue_pairs > 1 {
                writeln!(
                    f,
                    "    {} queue pairs ({} enabled), {} flows per TX queue: taken per TX queue \
                     {:?}, received per RX queue {:?}",
                    self.queue_pairs,
                    self.enabled_pairs,
                    self.flows_per_queue,
                    t.taken_per_queue,
                    t.received_per_queue
                )?;
            }
        }
        writeln!(
            f,
            "  frontend: {:.1} busy cycles/frame ({:.1} with idle polls), busy {:.1} % of \
             its core, stalled {:.1} %, {:.1} polls/us, {:.2} GHz TSC, got {:.0} % of its core",
            self.frontend.core.busy_cycles_per_frame,
            self.frontend.core.cycles_per_frame,
            self.frontend.busy_share * 100.0,
            self.frontend.stalled_share * 100.0,
            self.frontend.polls_per_us,
            self.frontend.core.tsc_ghz,
            self.frontend.core.cpu_share * 100.0
        )?;
        let per_cpu: Vec<String> = self
            .steal
            .per_cpu
            .iter()
            .map(|s| format!("{:.1} %", s * 100.0))
            .collect();
        writeln!(
            f,
            "  steal: {:.3} s ({}); checks: {} rx sampled, {} bad{}; {} tx sampled, {} out of \
             order{}",
            self.steal.seconds,
            per_cpu.join(", "),
            self.checks.rx_sampled,
            self.checks.rx_bad,
            if self.checks.rx_offload_completed > 0 {
                format!(
                    ", {} passed whole with the checksum completed instead of the GSO request",
                    self.checks.rx_offload_completed
                )
            } else {
                String::new()
            },
            self.checks.tx_sampled,
            self.checks.tx_out_of_order,
            self.checks
                .first_problem
                .as_deref()
                .map(|p| format!(" (first: {p})"))
                .unwrap_or_default()
        )?;
        write!(
            f,
            "  kicks {} ({} while measuring){}{}",
            self.kicks,
            self.kicks_measured,
            if self.drained {
                ""
            } else {
                ", drain did not go quiet"
            },
            loop_report::interrupted_note(self.interrupted)
        )
    }
}

/// `/proc/stat` steal ticks: all CPUs, then cpu0, cpu1, ...
pub(super) fn read_steal() -> Vec<u64> {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    s.lines()
        .filter(|l| l.starts_with("cpu"))
        // cpu user nice system idle iowait irq softirq steal ...
        .map(|l| {
            l.split_whitespace()
                .nth(8)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// The steal time between two [`read_steal`]s `secs` apart.
pub(super) fn steal_over(before: &[u64], after: &[u64], secs: f64) -> Steal {
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let d: Vec<f64> = before
        .iter()
        .zip(after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / hz)
        .collect();
    Steal {
        seconds: d.first().copied().unwrap_or(0.0),
        per_cpu: d
            .iter()
            .skip(1)
            .map(|s| loop_report::ratio(*s, secs))
            .collect(),
    }
}
