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
//!
//! With `--queues N` each port negotiates VIRTIO_NET_F_MQ and sets up N queue pairs, all
//! enabled; every TX and RX ring is filled once as above and the loop moves the indexes
//! of all of them. The frames of TX queue `q` are of `--flows F` flows (descriptor `i`
//! has UDP source port 1024 + q x F + i mod F), so that a backend that steers by a flow
//! hash spreads them over the receiver's RX queues; frames are counted per RX queue
//! and per TX queue (`totals[].received_per_queue`, `taken_per_queue`).
//!
//! With `--tso MSS` the run is one-directional, A to B: port A negotiates CSUM and
//! HOST_TSO4 and its TX ring holds TCP/IPv4 frames of `--size` bytes (up to 64 KiB) with
//! a virtio-net header asking for segmentation at MSS and the checksum left partial, as
//! Linux sends them ([`tso`]); port B negotiates what `--rx-offloads` says: GUEST_TSO4
//! and GUEST_CSUM (the backend may pass each frame whole), GUEST_CSUM only or nothing
//! (the backend must cut it into segments, and fill checksums in for `none`). B's RX
//! buffers are each big enough for a whole frame (one descriptor each, one buffer per
//! frame or per segment, as Linux's "big packets" without MRG_RXBUF). B sends nothing:
//! bulk TCP is one-directional, and the ACKs going back are small frames a backend
//! forwards at its small-frame rate, which the plain mode measures already; sending
//! them here would only mix the two costs in one figure. Received counts are RX used
//! entries, i.e. segments when the backend segments: a backend's drops are then
//! `taken x segments per frame - received`.
//!
//! Here: the options, the setup (frames prebuilt, rings filled once) and the run's phases
//! (warm-up, measured run, drain); `ring`: the rings driven by their indexes and the
//! polling loop with its counters; `check`: the sampled checks; `report`: what the mode
//! reports, and the steal time it reads; `tso`: the TSO frames and their checks.

mod check;
mod report;
mod ring;
#[cfg(test)]
mod tests;
pub mod tso;
#[cfg(test)]
mod tso_tests;

use std::time::{Duration, Instant};

use self::check::Checker;
use self::report::{read_steal, steal_over};
pub use self::report::{
    Checks, Direction, DirectionTotals, FrontendCost, RingLoopReport, Steal, TsoReport,
};
use self::ring::{Counters, Rings};
use self::tso::{RxOffloads, TsoFrames};
use crate::frame::{Endpoints, FrameError, FrameTemplate};
use crate::modes::loop_report::{ratio, CoreCost, Rate, Stopwatch, PORT_NAMES};
use crate::modes::{self, DeviceArgs, Global, ModeError};
use crate::net_tx::{TxQueue, ZERO_HDR};
use crate::pool::BufPool;
use crate::port::{Port, MAX_QUEUE_PAIRS};
use crate::split_queue::SplitQueue;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
};

/// The drain ends once nothing moved for this long.
const DRAIN_QUIET: Duration = Duration::from_millis(100);
/// The drain ends after this long in any case.
const DRAIN_MAX: Duration = Duration::from_secs(2);
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
    /// Queue pairs per port, 1-8 (above 1: VIRTIO_NET_F_MQ, which the backend must
    /// offer with as many pairs); every queue is enabled, filled and driven.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUE_PAIRS)))]
    pub queues: u16,
    /// Enable only the first M queue pairs of each port (default: all); the others are
    /// set up, filled and left disabled, as after a guest's `ethtool -L combined M`.
    /// Only the enabled pairs' TX rings are driven; every RX ring is watched, and
    /// nothing may arrive on a disabled one.
    #[arg(long, value_name = "M",
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUE_PAIRS)))]
    pub enable_queues: Option<u16>,
    /// Flows per TX queue: descriptor i of TX queue q carries UDP source port
    /// 1024 + q x F + i mod F (default: 1 with one queue pair, 64 with more).
    #[arg(long, value_name = "F", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub flows: Option<u16>,
    /// TSO frames, one direction.
    #[command(flatten)]
    pub tso: TsoArgs,
    /// Device options.
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// `--tso`: port A sends TSO frames to port B, which sends nothing.
#[derive(clap::Args, Clone, Debug)]
pub struct TsoArgs {
    /// Port A sends TCP/IPv4 TSO frames of --size bytes (up to 65549) to be cut into
    /// segments of MSS payload bytes (A negotiates CSUM and HOST_TSO4); B sends nothing.
    #[arg(long, value_name = "MSS")]
    pub tso: Option<u16>,
    /// With --tso, what port B negotiates: `tso` (GUEST_CSUM and GUEST_TSO4: frames may
    /// pass whole), `csum` (GUEST_CSUM only: the backend segments, checksums may stay
    /// partial) or `none` (the backend segments and fills every checksum in).
    #[arg(long, value_enum, default_value = "tso", value_name = "WHICH")]
    pub rx_offloads: RxOffloads,
    /// With --tso, most TX frames left with the backend at once (default, or 0: the
    /// ring size, the open loop of the plain mode). A window of what B's RX ring holds
    /// (ring size / segments per frame) spares a segmenting backend its drops, but
    /// makes the run bound by the round trip between frontend and backend instead.
    #[arg(long, value_name = "FRAMES")]
    pub tx_window: Option<u16>,
    /// With --tso, the size of port B's RX buffers (default: a whole frame). Smaller
    /// ones, down to one segment, take a frame passed whole in several merged buffers
    /// (B negotiates MRG_RXBUF), as Linux's mergeable buffers of about 4 KiB do.
    #[arg(long, value_name = "BYTES")]
    pub rx_buf: Option<u32>,
}

impl TsoArgs {
    /// Feature bits ports A and B must negotiate.
    fn features(&self) -> [u64; 2] {
        if self.tso.is_none() {
            return [0; 2];
        }
        let guest = match self.rx_offloads {
            RxOffloads::Tso => (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_GUEST_TSO4),
            RxOffloads::Csum => 1 << VIRTIO_NET_F_GUEST_CSUM,
            RxOffloads::None => 0,
        };
        [
            (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4),
            guest,
        ]
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

/// The flow of descriptor `desc` of TX queue pair `queue` with `flows` flows per queue:
/// each queue's flows its own, in turn over the descriptors.
fn flow_of(queue: u16, desc: u16, flows: u16) -> u16 {
    queue.wrapping_mul(flows).wrapping_add(desc % flows.max(1))
}

/// Fills a TX ring (of queue pair `queue`) with `q` frames (seq `i` and flow
/// [`flow_of`] in descriptor `i`) and publishes them at once.
fn fill_tx(
    tx: &mut TxQueue,
    pool: &mut BufPool,
    template: &FrameTemplate,
    q: u16,
    (queue, flows): (u16, u16),
) {
    let hdr_len = tx.hdr_len();
    for i in 0..q {
        let buf = pool.get().expect("pool sized for every ring");
        let bytes = pool.bytes_mut(buf);
        bytes[..hdr_len].copy_from_slice(&ZERO_HDR[..hdr_len]);
        let flow = flow_of(queue, i, flows);
        let len = template.write(&mut bytes[hdr_len..], u64::from(i), flow, 0);
        assert!(tx.post(pool, buf, len as u32), "a fresh TX ring is free");
    }
    tx.flush();
}

/// Fills a TX ring with `q` TSO frames (frame `i` in descriptor `i`, from port A to B)
/// and publishes them at once.
fn fill_tx_tso(tx: &mut TxQueue, pool: &mut BufPool, frames: &TsoFrames, q: u16) {
    let hdr_len = tx.hdr_len();
    for i in 0..q {
        let buf = pool.get().expect("pool sized for every ring");
        let bytes = pool.bytes_mut(buf);
        frames.write_hdr(&mut bytes[..hdr_len]);
        let len = frames.write(i, MACS[0], MACS[1], &mut bytes[hdr_len..]);
        assert!(tx.post(pool, buf, len as u32), "a fresh TX ring is free");
    }
    tx.flush();
}

/// Port `p`'s RX queues (`rx`) or TX queues, one per queue pair.
fn queues(p: &Port, rx: bool) -> Vec<&SplitQueue> {
    (0..p.queue_pairs())
        .map(|n| {
            if rx {
                p.rx_queue(n).queue()
            } else {
                p.tx_queue(n).queue()
            }
        })
        .collect()
}

/// Runs the ring loop.
pub fn run(args: &RingLoopArgs, g: &Global) -> Result<RingLoopReport, ModeError> {
    modes::pin(args.dev.core)?;
    let q = args.dev.queue_size;
    let pairs = args.queues;
    if pairs > 1 && args.tso.tso.is_some() {
        return Err(ModeError::TsoQueues);
    }
    let flows = args.flows.unwrap_or(if pairs > 1 { 64 } else { 1 });
    let enabled = args.enable_queues.unwrap_or(pairs);
    if enabled > pairs {
        return Err(ModeError::EnableQueues { enabled, pairs });
    }
    // Every ring full, once: 2 ports x pairs x (RX + TX).
    let (mut mem, mut pool) = modes::memory(
        &args.dev,
        2 * u32::from(pairs),
        4 * u32::from(pairs) * u32::from(q),
        modes::buf_size_for(args.run.size),
    )?;
    let tso = args
        .tso
        .tso
        .map(|mss| TsoFrames::new(args.run.size, mss))
        .transpose()?;
    let want = args.tso.features();
    let whole = pool.buf_size();
    let rx_buf = match (tso, args.tso.rx_buf) {
        (Some(t), Some(b)) => {
            let min = (12 + tso::HEADERS + usize::from(t.mss())) as u32;
            if b < min || b > whole {
                return Err(ModeError::RxBuf {
                    rx_buf: b,
                    min,
                    max: whole,
                });
            }
            b
        }
        _ => whole,
    };
    let sockets = [args.run.a.as_path(), args.run.b.as_path()];
    let mut ports = modes::connect_all_with(
        &sockets,
        &want,
        &[whole, rx_buf],
        (pairs, enabled),
        &args.dev,
        g,
        &mut mem,
        &mut pool,
    )?;
    for (p, port) in ports.iter().enumerate() {
        let missing = want[p] & !port.info().negotiated.features;
        if missing != 0 {
            return Err(ModeError::Offloads {
                port: PORT_NAMES[p],
                missing,
            });
        }
    }
    std::thread::sleep(args.run.settle);
    match &tso {
        Some(t) => fill_tx_tso(&mut ports[0].tx, &mut pool, t, q),
        None => {
            for (p, port) in ports.iter_mut().enumerate() {
                let t = template(p, args.run.size)?;
                for pair in 0..pairs {
                    let tx = port.tx_queue_mut(usize::from(pair));
                    fill_tx(tx, &mut pool, &t, q, (pair, flows));
                }
            }
        }
    }
    let setup_kicks: u64 = ports.iter().map(Port::kicks).sum();

    let event_idx = |p: &Port| {
        p.info().negotiated.features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0
    };
    let rx_queues = [queues(&ports[0], true), queues(&ports[1], true)];
    // Only the enabled pairs send: a disabled TX ring would never come back.
    let tx_queues = [0, 1].map(|p| {
        let mut v = queues(&ports[p], false);
        v.truncate(usize::from(enabled));
        v
    });
    let mut chk = Checker::new(
        &pool,
        [&rx_queues[0], &rx_queues[1]],
        [ports[0].info().layout, ports[1].info().layout],
        args.run.size,
        q,
        args.check_every,
    );
    // RX entries per frame A sends: its segments, or the buffers a whole frame takes.
    let per_frame = match tso {
        Some(t) if args.tso.rx_offloads.segmented() => t.segments() as u64,
        Some(t) => (ports[1].hdr_len() + t.size()).div_ceil(rx_buf as usize) as u64,
        None => 1,
    };
    if per_frame > 1 && !args.tso.rx_offloads.segmented() && !ports[1].info().layout.mrg_rxbuf {
        return Err(ModeError::Offloads {
            port: PORT_NAMES[1],
            missing: 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF,
        });
    }
    if let Some(t) = tso {
        chk.expect_tso(t, args.tso.rx_offloads, rx_buf as usize);
    }
    let mut rings = Rings::new(
        [&tx_queues[0], &tx_queues[1]],
        [&rx_queues[0], &rx_queues[1]],
        [event_idx(&ports[0]), event_idx(&ports[1])],
        [true, tso.is_none()],
    );
    let tx_window = tso.map(|_| match args.tso.tx_window {
        Some(0) | None => q,
        Some(w) => w,
    });
    if let Some(w) = tx_window {
        rings.set_tx_window(w);
    }

    let mut c = Counters::default();
    let (mut ok, _) = rings.spin(
        &mut c,
        &mut chk,
        Instant::now() + args.run.warmup,
        true,
        None,
    );
    let before = c;
    let steal0 = read_steal();
    let clock = Stopwatch::start();
    if ok {
        let until = clock.deadline(args.run.duration);
        ok = rings.spin(&mut c, &mut chk, until, true, None).0;
    }
    let elapsed = clock.read();
    let (secs, cycles) = (elapsed.secs, elapsed.cycles);
    let steal1 = read_steal();
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

    // What one RX used entry is: a frame, or (segmenting) one of its segments.
    let segmented = tso.filter(|_| args.tso.rx_offloads.segmented());
    let entry_bytes = match segmented {
        Some(t) => (t.payload() + tso::HEADERS * t.segments()) as f64 / t.segments() as f64,
        None => args.run.size as f64 / per_frame as f64,
    };
    let bytes = |entries: u64| (entries as f64 * entry_bytes) as u64;
    let directions = [0, 1].map(|p| {
        let frames = during.received[p] - before.received[p];
        let taken = during.taken[p] - before.taken[p];
        Direction {
            rate: Rate::new(p, frames, bytes(frames), secs),
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
    let n = usize::from(pairs);
    let totals = [0, 1].map(|p| DirectionTotals {
        from: PORT_NAMES[p],
        to: PORT_NAMES[1 - p],
        taken: c.taken[p],
        received: c.received[p],
        taken_per_queue: c.taken_per_queue[p][..n].to_vec(),
        received_per_queue: c.received_per_queue[p][..n].to_vec(),
        backend_drops: (c.taken[p] * per_frame) as i64 - c.received[p] as i64,
    });
    let frames: u64 = directions.iter().map(|d| d.rate.frames).sum();
    let busy = during.busy_cycles - before.busy_cycles;
    let tso_report = tso.map(|t| {
        let entries = directions[0].rate.frames;
        let whole = entries as f64 / per_frame as f64;
        TsoReport {
            mss: t.mss(),
            tx_window: tx_window.unwrap_or(q).clamp(1, q),
            rx_offloads: args.tso.rx_offloads,
            segmented: segmented.is_some(),
            segments_per_frame: t.segments() as u64,
            rx_buf,
            rx_entries_per_frame: per_frame,
            payload_per_frame: t.payload(),
            frames_mpps: whole / secs.max(1e-9) / 1e6,
            segments_mpps: whole * t.segments() as f64 / secs.max(1e-9) / 1e6,
            payload_gbps: whole * t.payload() as f64 * 8.0 / secs.max(1e-9) / 1e9,
        }
    });
    let report = RingLoopReport {
        mode: "ring-loop",
        size: args.run.size,
        queue_size: q,
        queue_pairs: pairs,
        enabled_pairs: enabled,
        flows_per_queue: flows,
        seconds: secs,
        total_mpps: modes::mpps(frames, secs),
        total_gbps: modes::gbps(bytes(frames), secs),
        tso: tso_report,
        directions,
        backend_drops: totals.iter().map(|t| t.backend_drops).sum(),
        totals,
        drained,
        frontend: FrontendCost {
            core: CoreCost::new(&elapsed, frames, busy),
            busy_share: ratio(busy as f64, cycles as f64),
            stalled_share: ratio(
                (during.stalled_cycles - before.stalled_cycles) as f64,
                cycles as f64,
            ),
            polls_per_us: ratio((during.polls - before.polls) as f64, secs * 1e6),
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
