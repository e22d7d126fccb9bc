// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ring-loop`: a benchmark of the backend alone. The frontend's own cost per frame is
//! close to nothing, so the backend's polling core is the bottleneck and the frames per
//! second it moves are its capacity.
//!
//! Over two ports of a backend that cross-connects them (a vpmd veth pair, testpmd io
//! forwarding between two net_vhost ports):
//! - each port's TX ring is filled once, descriptor `i` in avail slot `i` pointing at a
//!   prebuilt frame (virtio-net header + `--size` bytes, sequence number `i`, the sending
//!   port's MAC as source); each RX ring is filled once with buffers, likewise in order;
//! - per poll, on each port: one load of TX `used.idx`; whatever the backend has taken is
//!   republished by moving TX `avail.idx` on by as much (the avail slots already name the
//!   right descriptors, and the frames never change); one load of RX `used.idx`; whatever
//!   arrived is counted and its buffers given back by moving RX `avail.idx` on. No copy,
//!   no descriptor or avail entry written per frame;
//! - about one frame in `--check-every` received is sampled (the last of the burst that
//!   reaches N frames since the last sample: used entry id and length, header, test frame
//!   intact, sent by the other port), and as many TX completions are checked to come back
//!   in order (what republishing in place relies on);
//! - no notifications either way: interrupts stay suppressed (NO_INTERRUPT, or EVENT_IDX
//!   `used_event` kept half the index space ahead) and the frontend never kicks, except
//!   once a millisecond while nothing moves at all (a backend that waits for kicks still
//!   runs, slowly; the report counts them).
//!
//! The TX side is an open loop: the backend takes frames as fast as it can whatever
//! arrives; what it cannot place in the peer's RX ring it drops. After the run the
//! frontend stops republishing and drains, so `taken - received` per direction is what
//! the backend dropped.

#![allow(unsafe_code)] // ring indexes, used elements and descriptors read in place in our guest memory.

use std::fmt;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use vmm_sys_util::eventfd::EventFd;
use vpmd_uplink::tsc;

use crate::frame::{self, Endpoints, FrameError, FrameTemplate};
use crate::modes::{self, DeviceArgs, Global, ModeError};
use crate::net_tx::{TxQueue, ZERO_HDR};
use crate::pacing::thread_cpu_time;
use crate::pool::BufPool;
use crate::port::Port;
use crate::split_queue::SplitQueue;
use crate::virtio_net::NetLayout;

/// Polls between clock checks.
const POLLS_PER_CHECK: u32 = 64;
/// With nothing moving for this long, kick every queue once (and again after as long).
const IDLE_KICK: Duration = Duration::from_millis(1);
/// The drain ends once nothing moved for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// The drain ends after this long in any case.
const DRAIN_MAX: Duration = Duration::from_secs(2);
/// A poll longer than this (TSC cycles, ~20 us) was descheduled or interrupted: its
/// time counts as stalled, not busy (the poll after a preemption always sees movement).
const STALL_CYCLES: u64 = 50_000;
/// Source MACs of the frames sent by port A and by port B.
const MACS: [[u8; 6]; 2] = [[0x02, 0, 0, 0, 0, 0x01], [0x02, 0, 0, 0, 0, 0x02]];

/// Options of `vpmd-bench ring-loop`.
#[derive(clap::Args, Clone, Debug)]
pub struct RingLoopArgs {
    /// Ports, frame size and the run's phases.
    #[command(flatten)]
    pub run: modes::LoopArgs,
    /// Check about one received frame in N (the last of the burst that reaches N since the
    /// last check) and as many TX completions; 0: none.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub check_every: u64,
    /// Device options.
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// One direction's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct Direction {
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
    /// `taken - received`: frames the backend took and did not deliver (negative: it
    /// delivered frames it did not take from us).
    pub backend_drops: i64,
}

/// This frontend's own cost.
#[derive(Clone, Debug, Serialize)]
pub struct FrontendCost {
    /// TSC cycles per frame received (both directions) in polls that moved something:
    /// the frontend's own work per frame, whose inverse is the most it could handle.
    pub busy_cycles_per_frame: f64,
    /// TSC cycles per frame received, busy or not (it always polls).
    pub cycles_per_frame: f64,
    /// Busy cycles / all cycles of the run: how much of its core the frontend needed.
    /// Well below 1: the backend, not the frontend, set the rate.
    pub busy_share: f64,
    /// Share of the run lost in polls longer than ~20 us (the thread was descheduled or
    /// interrupted), counted neither busy nor idle.
    pub stalled_share: f64,
    /// Polls (of all four queues) per microsecond.
    pub polls_per_us: f64,
    /// TSC frequency measured over the run, GHz.
    pub tsc_ghz: f64,
    /// CPU time the frontend thread got / wall time (below 1: the machine took its core).
    pub cpu_share: f64,
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
    /// TX completions sampled.
    pub tx_sampled: u64,
    /// Of those, not in ring order.
    pub tx_out_of_order: u64,
    /// The first problem found, if any.
    pub first_problem: Option<String>,
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
    /// Measured seconds.
    pub seconds: f64,
    /// A to B, then B to A, while measuring.
    pub directions: [Direction; 2],
    /// Both directions: frames received per second, millions.
    pub total_mpps: f64,
    /// Both directions.
    pub total_gbps: f64,
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
                "  {} -> {}: {:>12} frames  {:8.3} Mpps  {:8.3} Gbit/s  (taken {:.3} Mpps; \
                 per burst rx {:.1}, tx {:.1})",
                d.from,
                d.to,
                d.frames,
                d.mpps,
                d.gbps,
                d.taken_mpps,
                d.rx_per_burst,
                d.tx_per_burst
            )?;
        }
        writeln!(
            f,
            "  total : {:8.3} Mpps  {:8.3} Gbit/s",
            self.total_mpps, self.total_gbps
        )?;
        for t in &self.totals {
            writeln!(
                f,
                "  whole run {} -> {}: taken {}, received {}, dropped in the backend {}",
                t.from, t.to, t.taken, t.received, t.backend_drops
            )?;
        }
        writeln!(
            f,
            "  frontend: {:.1} busy cycles/frame ({:.1} with idle polls), busy {:.1} % of \
             its core, stalled {:.1} %, {:.1} polls/us, {:.2} GHz TSC, got {:.0} % of its core",
            self.frontend.busy_cycles_per_frame,
            self.frontend.cycles_per_frame,
            self.frontend.busy_share * 100.0,
            self.frontend.stalled_share * 100.0,
            self.frontend.polls_per_us,
            self.frontend.tsc_ghz,
            self.frontend.cpu_share * 100.0
        )?;
        let per_cpu: Vec<String> = self
            .steal
            .per_cpu
            .iter()
            .map(|s| format!("{:.1} %", s * 100.0))
            .collect();
        writeln!(
            f,
            "  steal: {:.3} s ({}); checks: {} rx sampled, {} bad; {} tx sampled, {} out of \
             order{}",
            self.steal.seconds,
            per_cpu.join(", "),
            self.checks.rx_sampled,
            self.checks.rx_bad,
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
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )
    }
}

/// One ring as this mode drives it: indexes only.
struct Ring<'a> {
    /// `avail.idx`.
    avail_idx: &'a AtomicU16,
    /// `used.idx`.
    used_idx: &'a AtomicU16,
    /// First used element (`{id: u32, len: u32}` each).
    used_elems: *const u32,
    /// `used_event` when EVENT_IDX is on.
    used_event: Option<&'a AtomicU16>,
    kick: &'a EventFd,
    mask: u16,
    /// Our `avail.idx`, as published.
    avail: u16,
    /// `used.idx` as last seen.
    used: u16,
    /// `used_event` as last set.
    event: u16,
}

impl<'a> Ring<'a> {
    /// Takes over `q`, whose avail ring must hold descriptor `i` in slot `i` (as the
    /// queue's free list hands them out on a fresh ring) with all of them published.
    fn new(q: &'a SplitQueue, event_idx: bool) -> Ring<'a> {
        let c = q.config_data();
        let size = usize::from(q.size());
        let avail = c.avail_ring_addr as *const u16;
        let used = c.used_ring_addr as *const u8;
        // SAFETY: the three areas were laid out by `SplitQueue::new` in guest memory that
        // `q` keeps mapped for `'a` (its `mem`): the avail ring is `flags, idx,
        // ring[size], used_event` as u16s (2-byte aligned, page-aligned start), the used
        // ring `flags, idx` then the 8-byte elements. The device accesses the indexes
        // concurrently, hence atomics; the elements are only read (volatile).
        let (avail_idx, used_idx, used_elems, used_event) = unsafe {
            (
                AtomicU16::from_ptr(avail.add(1).cast_mut()),
                AtomicU16::from_ptr(used.cast::<u16>().add(1).cast_mut()),
                used.add(4).cast::<u32>(),
                AtomicU16::from_ptr(avail.add(2 + size).cast_mut()),
            )
        };
        for slot in 0..size {
            // SAFETY: `2 + slot < 2 + size`: an avail ring entry; we wrote it at setup and
            // the device only reads it.
            let id = u16::from_le(unsafe { avail.add(2 + slot).read_volatile() });
            assert_eq!(
                usize::from(id),
                slot,
                "ring-loop needs descriptor i in avail slot i"
            );
        }
        let avail_now = u16::from_le(avail_idx.load(Ordering::Relaxed));
        assert_eq!(usize::from(avail_now), size, "ring-loop needs a full ring");
        Ring {
            avail_idx,
            used_idx,
            used_elems,
            used_event: event_idx.then_some(used_event),
            kick: q.kick_fd(),
            mask: q.size() - 1,
            avail: avail_now,
            used: 0,
            event: u16::from_le(used_event.load(Ordering::Relaxed)),
        }
    }

    /// How far `used.idx` moved since last time (and remembers it).
    #[inline(always)]
    fn poll(&mut self) -> u16 {
        let u = u16::from_le(self.used_idx.load(Ordering::Acquire));
        let d = u.wrapping_sub(self.used);
        self.used = u;
        d
    }

    /// Hands `n` more descriptors (the ones just used, in order) back to the device.
    #[inline(always)]
    fn republish(&mut self, n: u16) {
        self.avail = self.avail.wrapping_add(n);
        self.avail_idx.store(self.avail.to_le(), Ordering::Release);
    }

    /// The used element for `used.idx - 1` (the last one seen): id and length.
    fn last_used(&self) -> (u32, u32) {
        let slot = usize::from(self.used.wrapping_sub(1) & self.mask);
        // SAFETY: `slot <= mask < size`: an element of the used ring laid out by
        // `SplitQueue::new`; the device wrote it before the `used.idx` we loaded
        // (acquire) and does not write it again before we republish its descriptor.
        unsafe {
            let e = self.used_elems.add(2 * slot);
            (
                u32::from_le(e.read_volatile()),
                u32::from_le(e.add(1).read_volatile()),
            )
        }
    }

    /// The slot (= descriptor id, in order) of the last used element seen.
    fn last_slot(&self) -> u32 {
        u32::from(self.used.wrapping_sub(1) & self.mask)
    }

    /// Keeps EVENT_IDX `used_event` half the index space ahead of `used.idx`, so the
    /// device never gets to it (a store only every 16384 entries).
    fn keep_quiet(&mut self) {
        if let Some(ev) = self.used_event {
            if self.used.wrapping_sub(self.event.wrapping_sub(0x7fff)) >= 0x4000 {
                self.event = self.used.wrapping_add(0x7fff);
                ev.store(self.event.to_le(), Ordering::Release);
            }
        }
    }

    fn kick(&self) {
        // Writing 1 to an eventfd only fails on counter overflow, which a reader prevents.
        let _ = self.kick.write(1);
    }
}

/// Counters, cumulative from setup.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    /// Per sending port: TX descriptors taken by the backend.
    taken: [u64; 2],
    /// Per sending port: polls that saw its TX `used.idx` move.
    tx_polls: [u64; 2],
    /// Per sending port: frames the other port received.
    received: [u64; 2],
    /// Per sending port: polls that saw the other port's RX `used.idx` move.
    rx_polls: [u64; 2],
    /// TSC cycles of polls that moved something.
    busy_cycles: u64,
    /// TSC cycles of polls longer than [`STALL_CYCLES`].
    stalled_cycles: u64,
    /// Polls of all four rings.
    polls: u64,
    kicks: u64,
}

/// What the sampled checks compare against.
struct Checker<'p> {
    pool: &'p BufPool,
    /// Pool buffer of each RX descriptor, per receiving port.
    rx_bufs: [Vec<u32>; 2],
    layout: [NetLayout; 2],
    size: usize,
    queue_size: u16,
    every: u64,
    /// Per sending port: check when `received` reaches this.
    next_rx: [u64; 2],
    next_tx: [u64; 2],
    out: Checks,
}

impl Checker<'_> {
    fn problem(&mut self, p: String) {
        self.out.first_problem.get_or_insert(p);
    }

    /// Checks the last frame `rx` (port `to`) received, sent by port `from`.
    #[cold]
    fn check_rx(&mut self, rx: &Ring, from: usize, to: usize) {
        self.out.rx_sampled += 1;
        let (id, len) = rx.last_used();
        let hdr_len = self.layout[to].hdr_len;
        let bad = if id != rx.last_slot() {
            Some(format!("RX used id {id} in slot {}", rx.last_slot()))
        } else if len as usize != hdr_len + self.size {
            Some(format!(
                "RX used length {len}, expected {}",
                hdr_len + self.size
            ))
        } else {
            let bytes = self.pool.bytes(self.rx_bufs[to][id as usize], len as usize);
            let (hdr, frame) = bytes.split_at(hdr_len);
            if self.layout[to].num_buffers(hdr) != 1 {
                Some(format!(
                    "num_buffers {} in a one-buffer frame",
                    self.layout[to].num_buffers(hdr)
                ))
            } else if frame[6..12] != MACS[from] {
                Some(format!("frame on port {to} not from port {from}"))
            } else {
                match frame::check(frame) {
                    Ok(p) if p.len == self.size && p.seq < u64::from(self.queue_size) => None,
                    Ok(p) => Some(format!("test frame seq {} of {} bytes", p.seq, p.len)),
                    Err(e) => Some(e.to_string()),
                }
            }
        };
        if let Some(p) = bad {
            self.out.rx_bad += 1;
            self.problem(p);
        }
    }

    /// Checks that the last TX completion seen is in ring order.
    #[cold]
    fn check_tx(&mut self, tx: &Ring) {
        self.out.tx_sampled += 1;
        let (id, _) = tx.last_used();
        if id != tx.last_slot() {
            self.out.tx_out_of_order += 1;
            self.problem(format!("TX used id {id} in slot {}", tx.last_slot()));
        }
    }
}

/// The rings of both ports: `tx[p]`, `rx[p]` for port p.
struct Rings<'a> {
    tx: [Ring<'a>; 2],
    rx: [Ring<'a>; 2],
}

impl Rings<'_> {
    /// Polls until `until` (republishing TX only if `transmit`); with `quiet`, returns
    /// early once nothing moved for that long. Returns (not interrupted, ended quiet).
    #[inline(never)]
    fn spin(
        &mut self,
        c: &mut Counters,
        chk: &mut Checker,
        until: Instant,
        transmit: bool,
        quiet: Option<Duration>,
    ) -> (bool, bool) {
        let mut t = tsc::now();
        let mut last_move = Instant::now();
        let mut last_kick = last_move;
        let mut moved_since_check = false;
        loop {
            for _ in 0..POLLS_PER_CHECK {
                let mut moved = false;
                for p in 0..2 {
                    let n = self.tx[p].poll();
                    if n != 0 {
                        moved = true;
                        if transmit {
                            self.tx[p].republish(n);
                        }
                        c.taken[p] += u64::from(n);
                        c.tx_polls[p] += 1;
                        if c.taken[p] >= chk.next_tx[p] && chk.every > 0 {
                            chk.next_tx[p] = c.taken[p] + chk.every;
                            chk.check_tx(&self.tx[p]);
                        }
                    }
                    // Frames sent by p arrive on the other port.
                    let to = 1 - p;
                    let n = self.rx[to].poll();
                    if n != 0 {
                        moved = true;
                        c.received[p] += u64::from(n);
                        c.rx_polls[p] += 1;
                        if c.received[p] >= chk.next_rx[p] && chk.every > 0 {
                            chk.next_rx[p] = c.received[p] + chk.every;
                            chk.check_rx(&self.rx[to], p, to);
                        }
                        self.rx[to].republish(n);
                    }
                }
                c.polls += 1;
                let now = tsc::now();
                let dt = now.wrapping_sub(t);
                if dt > STALL_CYCLES {
                    c.stalled_cycles += dt;
                } else if moved {
                    c.busy_cycles += dt;
                }
                moved_since_check |= moved;
                t = now;
            }
            let now = Instant::now();
            if moved_since_check {
                last_move = now;
                moved_since_check = false;
                for r in self.tx.iter_mut().chain(self.rx.iter_mut()) {
                    r.keep_quiet();
                }
            } else {
                if quiet.is_some_and(|q| now.duration_since(last_move) >= q) {
                    return (true, true);
                }
                if now.duration_since(last_move) >= IDLE_KICK
                    && now.duration_since(last_kick) >= IDLE_KICK
                {
                    for r in self.tx.iter().chain(self.rx.iter()) {
                        r.kick();
                        c.kicks += 1;
                    }
                    last_kick = now;
                }
            }
            if now >= until {
                return (true, quiet.is_none());
            }
            if modes::stop_requested() {
                return (false, false);
            }
            t = tsc::now();
        }
    }
}

/// `/proc/stat` steal ticks: all CPUs, then cpu0, cpu1, ...
fn read_steal() -> Vec<u64> {
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

fn steal_over(before: &[u64], after: &[u64], secs: f64) -> Steal {
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
            .map(|s| if secs > 0.0 { s / secs } else { 0.0 })
            .collect(),
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The frames port `p` sends: from its MAC to the other port's.
fn template(p: usize, size: usize) -> Result<FrameTemplate, FrameError> {
    let ep = Endpoints {
        src_mac: MACS[p],
        dst_mac: MACS[1 - p],
        ..Endpoints::default()
    };
    FrameTemplate::new(&ep, size)
}

/// Fills a TX ring with `q` frames (seq `i` in descriptor `i`) and publishes them at
/// once.
fn fill_tx(tx: &mut TxQueue, pool: &mut BufPool, template: &FrameTemplate, q: u16) {
    let hdr_len = tx.hdr_len();
    for i in 0..q {
        let buf = pool.get().expect("pool sized for every ring");
        let bytes = pool.bytes_mut(buf);
        bytes[..hdr_len].copy_from_slice(&ZERO_HDR[..hdr_len]);
        let len = template.write(&mut bytes[hdr_len..], u64::from(i), 0, 0);
        assert!(tx.post(pool, buf, len as u32), "a fresh TX ring is free");
    }
    tx.flush();
}

/// The pool buffer behind each descriptor of `q`'s table.
fn desc_bufs(q: &SplitQueue, pool: &BufPool) -> Vec<u32> {
    let desc = q.config_data().desc_table_addr as *const u64;
    let stride = pool.addr(1) - pool.addr(0);
    (0..usize::from(q.size()))
        .map(|i| {
            // SAFETY: descriptor `i < size` of the table laid out by `SplitQueue::new`
            // (16 bytes each, `addr` first, 8-byte aligned), mapped while `q` lives; we
            // wrote it and the device only reads it.
            let addr = u64::from_le(unsafe { desc.add(2 * i).read_volatile() });
            ((addr - pool.addr(0)) / stride) as u32
        })
        .collect()
}

/// Runs the ring loop.
pub fn run(args: &RingLoopArgs, g: &Global) -> Result<RingLoopReport, ModeError> {
    modes::pin(args.dev.core)?;
    let q = args.dev.queue_size;
    // Every ring full, once: 2 ports x (RX + TX).
    let (mut mem, mut pool) = modes::memory(
        &args.dev,
        2,
        4 * u32::from(q),
        modes::buf_size_for(args.run.size),
    )?;
    let sockets = [args.run.a.as_path(), args.run.b.as_path()];
    let mut ports = modes::connect_all(&sockets, &args.dev, g, &mut mem, &mut pool)?;
    std::thread::sleep(args.run.settle);
    for (p, port) in ports.iter_mut().enumerate() {
        fill_tx(&mut port.tx, &mut pool, &template(p, args.run.size)?, q);
    }
    let setup_kicks: u64 = ports.iter().map(Port::kicks).sum();

    let event_idx = |p: &Port| {
        p.info().negotiated.features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0
    };
    let mut chk = Checker {
        pool: &pool,
        rx_bufs: [
            desc_bufs(ports[0].rx.queue(), &pool),
            desc_bufs(ports[1].rx.queue(), &pool),
        ],
        layout: [ports[0].info().layout, ports[1].info().layout],
        size: args.run.size,
        queue_size: q,
        every: args.check_every,
        next_rx: [1; 2],
        next_tx: [1; 2],
        out: Checks::default(),
    };
    let mut rings = Rings {
        tx: [
            Ring::new(ports[0].tx.queue(), event_idx(&ports[0])),
            Ring::new(ports[1].tx.queue(), event_idx(&ports[1])),
        ],
        rx: [
            Ring::new(ports[0].rx.queue(), event_idx(&ports[0])),
            Ring::new(ports[1].rx.queue(), event_idx(&ports[1])),
        ],
    };

    let mut c = Counters::default();
    let (mut ok, _) = rings.spin(
        &mut c,
        &mut chk,
        Instant::now() + args.run.warmup,
        true,
        None,
    );
    let before = c;
    let (steal0, t0, tsc0, cpu0) = (read_steal(), Instant::now(), tsc::now(), thread_cpu_time());
    if ok {
        ok = rings
            .spin(&mut c, &mut chk, t0 + args.run.duration, true, None)
            .0;
    }
    let (secs, cycles, cpu, steal1) = (
        t0.elapsed().as_secs_f64(),
        tsc::now().wrapping_sub(tsc0),
        thread_cpu_time().checked_sub(cpu0).unwrap().as_secs_f64(),
        read_steal(),
    );
    let during = c;
    // Drain: no more TX; take what is still in flight.
    let (_, drained) = rings.spin(
        &mut c,
        &mut chk,
        Instant::now() + DRAIN_MAX,
        false,
        Some(DRAIN_QUIET),
    );
    if c.received == [0; 2] {
        return Err(ModeError::NoTraffic(args.run.warmup + args.run.duration));
    }

    let names = ["a", "b"];
    let directions = [0, 1].map(|p| {
        let frames = during.received[p] - before.received[p];
        let taken = during.taken[p] - before.taken[p];
        Direction {
            from: names[p],
            to: names[1 - p],
            frames,
            mpps: modes::mpps(frames, secs),
            gbps: modes::gbps(frames * args.run.size as u64, secs),
            taken,
            taken_mpps: modes::mpps(taken, secs),
            rx_per_burst: ratio(
                frames as f64,
                (during.rx_polls[p] - before.rx_polls[p]) as f64,
            ),
            tx_per_burst: ratio(
                taken as f64,
                (during.tx_polls[p] - before.tx_polls[p]) as f64,
            ),
        }
    });
    let totals = [0, 1].map(|p| DirectionTotals {
        from: names[p],
        to: names[1 - p],
        taken: c.taken[p],
        received: c.received[p],
        backend_drops: c.taken[p] as i64 - c.received[p] as i64,
    });
    let frames: u64 = directions.iter().map(|d| d.frames).sum();
    let busy = (during.busy_cycles - before.busy_cycles) as f64;
    let report = RingLoopReport {
        mode: "ring-loop",
        size: args.run.size,
        queue_size: q,
        seconds: secs,
        total_mpps: modes::mpps(frames, secs),
        total_gbps: modes::gbps(frames * args.run.size as u64, secs),
        directions,
        backend_drops: totals.iter().map(|t| t.backend_drops).sum(),
        totals,
        drained,
        frontend: FrontendCost {
            busy_cycles_per_frame: ratio(busy, frames as f64),
            cycles_per_frame: ratio(cycles as f64, frames as f64),
            busy_share: ratio(busy, cycles as f64),
            stalled_share: ratio(
                (during.stalled_cycles - before.stalled_cycles) as f64,
                cycles as f64,
            ),
            polls_per_us: ratio((during.polls - before.polls) as f64, secs * 1e6),
            tsc_ghz: ratio(cycles as f64, secs * 1e9),
            cpu_share: ratio(cpu, secs),
        },
        steal: steal_over(&steal0, &steal1, secs),
        checks: chk.out,
        kicks: setup_kicks + c.kicks,
        kicks_measured: during.kicks - before.kicks,
        interrupted: !ok,
    };
    for p in ports {
        let _ = p.disconnect();
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

    use super::*;
    use crate::guest_mem::GuestMem;
    use crate::net_rx::RxQueue;
    use crate::test_device::{Desc, FakeDevice};

    /// Against a fake backend in a thread that cross-connects two ports and drops one
    /// frame in 7: the counts are exactly the backend's, every frame is checked intact,
    /// and the drain leaves nothing in flight.
    #[test]
    fn counts_checks_and_drops_against_a_fake_backend() {
        let (q, size) = (64u16, 128usize);
        let mut mem = GuestMem::new(0, 8 << 20).unwrap();
        let layout = NetLayout::new(1 << VIRTIO_F_VERSION_1);
        let mut pool = BufPool::new(&mut mem, 4 * u32::from(q), 2048).unwrap();
        let mut tx: Vec<TxQueue> = (0..2)
            .map(|_| TxQueue::new(SplitQueue::new(&mut mem, q).unwrap(), layout))
            .collect();
        let mut rx: Vec<RxQueue> = (0..2)
            .map(|_| RxQueue::new(SplitQueue::new(&mut mem, q).unwrap(), layout, 2048))
            .collect();
        for r in &mut rx {
            r.refill(&mut pool);
        }
        for (p, t) in tx.iter_mut().enumerate() {
            fill_tx(t, &mut pool, &template(p, size).unwrap(), q);
        }

        let mut tx_dev: Vec<FakeDevice> = tx.iter().map(|t| FakeDevice::new(t.queue())).collect();
        let mut rx_dev: Vec<FakeDevice> = rx.iter().map(|r| FakeDevice::new(r.queue())).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let backend = std::thread::spawn(move || {
            let (mut taken, mut delivered, mut n) = ([0u64; 2], [0u64; 2], 0u64);
            let mut free: [VecDeque<Desc>; 2] = Default::default();
            while !stop2.load(Ordering::Relaxed) {
                for p in 0..2 {
                    let to = 1 - p;
                    free[to].extend(rx_dev[to].pop_all());
                    let (mut tx_used, mut rx_used) = (Vec::new(), Vec::new());
                    for d in tx_dev[p].pop_all() {
                        n += 1;
                        taken[p] += 1;
                        tx_used.push((d.id, 0));
                        if n % 7 == 0 {
                            continue;
                        }
                        let Some(r) = free[to].pop_front() else {
                            continue;
                        };
                        let bytes = tx_dev[p].read(d.addr, d.len as usize);
                        rx_dev[to].write(r.addr, &bytes);
                        rx_used.push((r.id, d.len));
                        delivered[p] += 1;
                    }
                    if !tx_used.is_empty() {
                        rx_dev[to].push_used_batch(&rx_used);
                        tx_dev[p].push_used_batch(&tx_used);
                    }
                }
            }
            (taken, delivered)
        });

        let mut chk = Checker {
            pool: &pool,
            rx_bufs: [
                desc_bufs(rx[0].queue(), &pool),
                desc_bufs(rx[1].queue(), &pool),
            ],
            layout: [layout; 2],
            size,
            queue_size: q,
            every: 1,
            next_rx: [1; 2],
            next_tx: [1; 2],
            out: Checks::default(),
        };
        let mut rings = Rings {
            tx: [
                Ring::new(tx[0].queue(), false),
                Ring::new(tx[1].queue(), false),
            ],
            rx: [
                Ring::new(rx[0].queue(), false),
                Ring::new(rx[1].queue(), false),
            ],
        };
        let mut c = Counters::default();
        let until = Instant::now() + Duration::from_millis(200);
        assert!(rings.spin(&mut c, &mut chk, until, true, None).0);
        let until = Instant::now() + DRAIN_MAX;
        let (_, quiet) = rings.spin(&mut c, &mut chk, until, false, Some(DRAIN_QUIET));
        stop.store(true, Ordering::Relaxed);
        let (taken, delivered) = backend.join().unwrap();

        assert!(quiet, "the drain went quiet");
        assert_eq!(c.taken, taken);
        assert_eq!(c.received, delivered);
        for p in 0..2 {
            assert!(
                delivered[p] > u64::from(q),
                "frames went round: {delivered:?}"
            );
            assert!(taken[p] > delivered[p], "the fake backend dropped some");
        }
        // With --check-every 1, the last frame of every burst is checked.
        assert_eq!(chk.out.rx_sampled, c.rx_polls[0] + c.rx_polls[1]);
        assert_eq!(chk.out.tx_sampled, c.tx_polls[0] + c.tx_polls[1]);
        assert_eq!(
            (chk.out.rx_bad, chk.out.tx_out_of_order),
            (0, 0),
            "{:?}",
            chk.out.first_problem
        );
    }
}
