// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `loopback`: testpmd's `start tx_first N` then io forwarding, over two ports.
//!
//! A burst of frames is injected on each port's TX ring; from then on whatever arrives on
//! one port's RX ring is transmitted on the other port's TX ring, without a copy: both
//! ports live in one guest memory with one buffer pool, so a received buffer (virtio-net
//! header in front of the frame) is posted as is as a TX descriptor, and goes back to the
//! pool, and from there to an RX ring, when its TX completes. Behind a backend that
//! cross-connects the two ports (a veth pair), each direction has its own population of
//! frames circling: B's RX -> A's TX -> backend -> B's RX, and the reverse.
//!
//! The rate of a direction is what arrives on its receiving port, measured after a
//! warm-up. A direction that carried nothing for 100 ms during the warm-up (its frames
//! dropped while the backend was still bringing the ports up) gets a fresh injection.
//! Also reported: this frontend's own cost (TSC cycles per frame on its core, and the
//! share of its core it actually got: below 1, the machine is loaded).

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use vpmd_uplink::tsc;

use crate::frame::{Endpoints, FrameTemplate};
use crate::modes::loop_report::{self, CoreCost, Rate, Stopwatch};
use crate::modes::{self, DeviceArgs, Global, ModeError};
use crate::net_rx::{RxFrame, RxQueue, MAX_BURST};
use crate::net_tx::{TxQueue, ZERO_HDR};
use crate::pool::BufPool;
use crate::port::Port;

/// RX rings are refilled once this many descriptors are free.
const REFILL_THRESHOLD: u16 = 32;
/// How often the warm-up checks that both directions move.
const STALL_CHECK: Duration = Duration::from_millis(100);

/// Options of `vpmd-bench loopback`.
#[derive(clap::Args, Clone, Debug)]
pub struct LoopbackArgs {
    /// Ports, frame size and the run's phases.
    #[command(flatten)]
    pub run: modes::LoopArgs,
    /// Most frames received (and forwarded) per burst.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub burst: u64,
    /// Bursts injected per port at the start, as testpmd's `start tx_first N` (what does
    /// not fit the TX ring is not sent).
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub tx_first: u32,
    /// PAUSE instructions after a round that found nothing on either port: polling a
    /// used index the backend is writing takes its cache line away from the backend.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub idle_pause: u32,
    /// Device options.
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// One direction's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Direction {
    /// Frames received and their rate.
    #[serde(flatten)]
    pub rate: Rate,
    /// Bytes of those frames.
    pub bytes: u64,
    /// Frames received by `to` that its peer's full TX ring refused (freed, as testpmd's
    /// io forwarding does).
    pub tx_dropped: u64,
}

/// What `loopback` measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoopbackReport {
    /// Always "loopback".
    pub mode: &'static str,
    /// Frame size.
    pub size: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// A to B, then B to A.
    pub directions: [Direction; 2],
    /// Both directions.
    pub total_mpps: f64,
    /// Both directions.
    pub total_gbps: f64,
    /// Frames injected (both ports, warm-up re-injections included).
    pub injected: u64,
    /// Kicks sent on all four queues.
    pub kicks: u64,
    /// Multi-buffer or malformed frames dropped on receive.
    pub rx_errors: u64,
    /// Cost on the frontend's core: TSC cycles per frame received (both directions),
    /// busy (in forwarding steps that moved frames) or not, and the share of it it got.
    pub frontend: CoreCost,
    /// Whether a signal cut the run short.
    pub interrupted: bool,
}

impl fmt::Display for LoopbackReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "loopback: {} B frames, {:.3} s measured, {} injected",
            self.size, self.seconds, self.injected
        )?;
        for d in &self.directions {
            writeln!(f, "{}  (tx dropped {})", d.rate, d.tx_dropped)?;
        }
        loop_report::write_total(f, self.total_mpps, self.total_gbps)?;
        write!(
            f,
            "  frontend: {:.1} busy cycles/frame ({:.1} with idle polls) at {:.2} GHz TSC, \
             {:.0} % of its core; kicks {}, rx errors {}{}",
            self.frontend.busy_cycles_per_frame,
            self.frontend.cycles_per_frame,
            self.frontend.tsc_ghz,
            self.frontend.cpu_share * 100.0,
            self.kicks,
            self.rx_errors,
            loop_report::interrupted_note(self.interrupted)
        )
    }
}

/// Counters of one direction, kept by the receiving side.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    frames: u64,
    bytes: u64,
    dropped: u64,
    /// TSC cycles of the forwarding steps that moved frames.
    busy_cycles: u64,
}

/// Runs the loopback.
pub fn run(args: &LoopbackArgs, g: &Global) -> Result<LoopbackReport, ModeError> {
    modes::pin(args.dev.core)?;
    let q = u32::from(args.dev.queue_size);
    let burst = args.burst as usize;
    // Every ring full (2 ports x RX + TX), plus bursts in hand.
    let (mut mem, mut pool) = modes::memory(
        &args.dev,
        2,
        4 * q + 4 * burst as u32,
        modes::buf_size_for(args.run.size),
    )?;
    let sockets = [args.run.a.as_path(), args.run.b.as_path()];
    let mut ports = modes::connect_all(&sockets, &args.dev, g, &mut mem, &mut pool)?;
    let (pa, pb) = ports.split_at_mut(1);
    let (a, b) = (&mut pa[0], &mut pb[0]);
    let template = FrameTemplate::new(&Endpoints::default(), args.run.size)?;
    let fwd = Tuning {
        burst,
        // Reclaim TX buffers once half the ring is in use: fewer passes over the used ring.
        reclaim_below: (args.dev.queue_size / 2).max(burst as u16),
        idle_pause: args.idle_pause,
    };

    std::thread::sleep(args.run.settle);
    let mut inj = Injector {
        template,
        seq: 0,
        bursts: args.tx_first,
        burst,
    };
    let mut injected = inj.inject(a, &mut pool) + inj.inject(b, &mut pool);

    // Warm-up: forward; re-inject into a direction that does not move.
    let mut c = [Counters::default(); 2];
    let warm_end = Instant::now() + args.run.warmup;
    let mut seen = [0u64; 2];
    let mut interrupted = false;
    loop {
        let check = (Instant::now() + STALL_CHECK).min(warm_end);
        if !spin(a, b, &mut pool, &fwd, check, &mut c) {
            interrupted = true;
            break;
        }
        if Instant::now() >= warm_end {
            break;
        }
        if c[0].frames == seen[0] {
            injected += inj.inject(a, &mut pool);
        }
        if c[1].frames == seen[1] {
            injected += inj.inject(b, &mut pool);
        }
        seen = [c[0].frames, c[1].frames];
    }

    let before = c;
    let clock = Stopwatch::start();
    if !interrupted {
        interrupted = !spin(
            a,
            b,
            &mut pool,
            &fwd,
            clock.deadline(args.run.duration),
            &mut c,
        );
    }
    let elapsed = clock.read();
    let secs = elapsed.secs;

    let dir = |i: usize| {
        let (frames, bytes) = (c[i].frames - before[i].frames, c[i].bytes - before[i].bytes);
        Direction {
            rate: Rate::new(i, frames, bytes, secs),
            bytes,
            tx_dropped: c[i].dropped - before[i].dropped,
        }
    };
    let directions = [dir(0), dir(1)];
    let frames: u64 = directions.iter().map(|d| d.rate.frames).sum();
    let bytes: u64 = directions.iter().map(|d| d.bytes).sum();
    let busy: u64 = (0..2)
        .map(|i| c[i].busy_cycles - before[i].busy_cycles)
        .sum();
    let rx_errors = [&*a, &*b]
        .iter()
        .map(|p| p.rx.stats().malformed + p.rx.stats().merged_dropped)
        .sum();
    let report = LoopbackReport {
        mode: "loopback",
        size: args.run.size,
        seconds: secs,
        total_mpps: modes::mpps(frames, secs),
        total_gbps: modes::gbps(bytes, secs),
        directions,
        injected,
        kicks: a.kicks() + b.kicks(),
        rx_errors,
        frontend: CoreCost::new(&elapsed, frames, busy),
        interrupted,
    };
    for p in ports {
        let _ = p.disconnect();
    }
    Ok(report)
}

/// Writes numbered test frames into fresh buffers and queues them: `bursts` bursts of
/// `burst`, each published on its own, until the ring or the pool runs out.
struct Injector {
    template: FrameTemplate,
    seq: u64,
    bursts: u32,
    burst: usize,
}

impl Injector {
    fn inject(&mut self, port: &mut Port, pool: &mut BufPool) -> u64 {
        let hdr_len = port.hdr_len();
        let mut n = 0;
        'bursts: for _ in 0..self.bursts {
            for _ in 0..self.burst {
                let Some(buf) = pool.get() else {
                    break 'bursts;
                };
                let bytes = pool.bytes_mut(buf);
                bytes[..hdr_len].copy_from_slice(&ZERO_HDR[..hdr_len]);
                let len = self.template.write(&mut bytes[hdr_len..], self.seq, 0, 0);
                if !port.tx.post(pool, buf, len as u32) {
                    pool.put(buf);
                    break 'bursts;
                }
                self.seq += 1;
                n += 1;
            }
            port.tx.flush();
        }
        port.tx.flush();
        n
    }
}

/// How the forwarding loop runs.
struct Tuning {
    burst: usize,
    reclaim_below: u16,
    idle_pause: u32,
}

/// Forwards both ways until `until`; false when a stop signal arrived.
#[inline(never)]
fn spin(
    a: &mut Port,
    b: &mut Port,
    pool: &mut BufPool,
    fwd: &Tuning,
    until: Instant,
    c: &mut [Counters; 2],
) -> bool {
    let mut frames = [RxFrame::default(); MAX_BURST];
    let frames = &mut frames[..fwd.burst];
    let reclaim_below = fwd.reclaim_below;
    // One TSC read per step: a step's cycles run from the previous read to its own.
    let mut t = tsc::now();
    loop {
        for _ in 0..64 {
            // Direction a -> b arrives on b and goes out on a again, and vice versa.
            let moved = forward(&mut b.rx, &mut a.tx, pool, frames, reclaim_below, &mut c[0]);
            let now = tsc::now();
            if moved {
                c[0].busy_cycles += now.wrapping_sub(t);
            }
            t = now;
            let moved2 = forward(&mut a.rx, &mut b.tx, pool, frames, reclaim_below, &mut c[1]);
            let now = tsc::now();
            if moved2 {
                c[1].busy_cycles += now.wrapping_sub(t);
            }
            t = now;
            if fwd.idle_pause > 0 && !moved && !moved2 {
                for _ in 0..fwd.idle_pause {
                    std::hint::spin_loop();
                }
                t = tsc::now();
            }
        }
        if Instant::now() >= until {
            return true;
        }
        if modes::stop_requested() {
            return false;
        }
    }
}

/// One io-forwarding step: a burst from `rx` is posted on `tx` in place; what `tx` cannot
/// take is freed; `rx` is refilled from the pool once enough descriptors are free.
/// Returns whether it moved frames.
#[inline(always)]
fn forward(
    rx: &mut RxQueue,
    tx: &mut TxQueue,
    pool: &mut BufPool,
    frames: &mut [RxFrame],
    reclaim_below: u16,
    c: &mut Counters,
) -> bool {
    let n = rx.recv_raw(pool, frames);
    if n > 0 {
        tx.reclaim_for(pool, reclaim_below);
        let mut full = false;
        for f in &frames[..n] {
            c.bytes += u64::from(f.len);
            if full || !tx.post(pool, f.buf, f.len) {
                full = true;
                pool.put(f.buf);
                c.dropped += 1;
            }
        }
        tx.flush();
        c.frames += n as u64;
    }
    if rx.queue().num_free() >= REFILL_THRESHOLD {
        rx.refill(pool);
    }
    n > 0
}
