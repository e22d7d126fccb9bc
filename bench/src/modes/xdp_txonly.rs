// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `xdp-txonly`: a packet generator on a kernel interface, through an AF_XDP socket
//! (pktgen's job, which this kernel lacks; testpmd txonly on `net_af_xdp` does the same).
//!
//! Run it inside a network namespace on the far end of a veth pair whose near end is a
//! macvlan uplink (`ip netns exec NS vpmd-bench xdp-txonly --iface out0 ...`): every frame
//! it sends arrives on the uplink, where the uplink's XDP program hands it to the switch
//! or to the kernel. The socket is a lone one (no XDP program on `--iface`: see
//! `vpmd_uplink::lone`), bound in zero-copy mode where the driver can, copy mode
//! otherwise (veth: the kernel sends during the `sendto` kick, 32 frames per call).
//!
//! Frames are the test frames `txonly` sends (Ethernet/IPv4/UDP, sequence number, length,
//! checksum), addressed in turn to the `--dst-mac` list. A destination may carry a weight
//! (`MAC*W`: W frames in each round, spread evenly). Each distinct destination MAC has its
//! own sequence numbers from `--first-seq` up, so a receiver behind each MAC
//! (`vpmd-bench rxonly --dst-mac MAC`) checks its own stream for loss and order.
//!
//! Reports frames sent per destination, Mpps, and the CPU time of the sending thread (user
//! and system: in copy mode the system part is the kernel's transmit, the veth, the
//! receiver's XDP program and its copy, all run inside the `sendto` kick).
#![allow(unsafe_code)] // getrusage(2) for the generator thread's own CPU time.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use vpmd_uplink::{BindMode, RingSizes, UmemConfig, UplinkConfig, XskSocket};

use crate::frame::{self, FrameTemplate};
use crate::modes::{self, ModeError};
use crate::pacing::Pacer;

/// Transmit chunks in the UMEM (frames in flight at most).
const CHUNKS: u32 = 4096;
/// Fill ring (and receive chunks): the socket receives nothing.
const FILL: u32 = 64;

/// A destination MAC with its share of the frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightedMac {
    /// Destination MAC.
    pub mac: [u8; 6],
    /// Frames per round.
    pub weight: u32,
}

/// Parses `aa:bb:cc:dd:ee:ff` or `aa:bb:cc:dd:ee:ff*W` (W in 1..=1000).
pub fn parse_weighted_mac(s: &str) -> Result<WeightedMac, String> {
    let (mac, weight) = match s.split_once('*') {
        Some((m, w)) => {
            let w: u32 = w
                .parse()
                .map_err(|_| format!("'{s}': weight '{w}' is not a number"))?;
            if !(1..=1000).contains(&w) {
                return Err(format!("'{s}': weight {w} is outside 1..=1000"));
            }
            (m, w)
        }
        None => (s, 1),
    };
    Ok(WeightedMac {
        mac: modes::parse_mac(mac)?,
        weight,
    })
}

/// Options of `vpmd-bench xdp-txonly`.
#[derive(clap::Args, Clone, Debug)]
pub struct XdpTxOnlyArgs {
    /// Kernel interface to send on (in the caller's network namespace).
    #[arg(long, value_name = "IFNAME")]
    pub iface: String,
    /// Its TX queue (the AF_XDP socket's queue).
    #[arg(long, default_value_t = 0)]
    pub queue: u32,
    /// Destination MACs, in turn: `MAC` or `MAC*W` (W frames per round), comma-separated
    /// or repeated. Each distinct MAC gets its own sequence numbers.
    #[arg(long, required = true, value_delimiter = ',', value_parser = parse_weighted_mac)]
    pub dst_mac: Vec<WeightedMac>,
    /// Ethernet frame size in bytes (no FCS), 60 to 4096.
    #[arg(long, default_value = "64", value_parser = modes::parse_frame_size)]
    pub size: usize,
    /// Frames, addresses and how long.
    #[command(flatten)]
    pub traffic: modes::TrafficArgs,
    /// Frames per burst (one publish, one kick per 32 frames in copy mode).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub burst: u64,
    /// Sequence number of every destination's first frame.
    #[arg(long, default_value_t = 0)]
    pub first_seq: u64,
    /// Seconds to wait at the end for the kernel to finish sending.
    #[arg(long, default_value = "2", value_parser = modes::parse_seconds)]
    pub drain_timeout: Duration,
    /// Pin this process to CPU core N.
    #[arg(long, value_name = "N")]
    pub core: Option<usize>,
}

/// Frames sent to one destination MAC.
#[derive(Clone, Debug, Serialize)]
pub struct DestinationReport {
    /// The MAC, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Its frames per round.
    pub weight: u32,
    /// Frames sent to it: sequence numbers `first_seq .. first_seq + frames`.
    pub frames: u64,
}

/// The sending thread's CPU time over the run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuTime {
    /// User time, seconds.
    pub user_s: f64,
    /// System time, seconds.
    pub system_s: f64,
    /// (user + system) / wall time: 1.0 is a whole core.
    pub share: f64,
    /// (user + system) per frame sent, nanoseconds.
    pub ns_per_frame: f64,
}

/// What `xdp-txonly` did.
#[derive(Clone, Debug, Serialize)]
pub struct XdpTxOnlyReport {
    /// Always "xdp-txonly".
    pub mode: &'static str,
    /// Interface and queue.
    pub iface: String,
    /// Its queue.
    pub queue: u32,
    /// "copy" or "zero-copy".
    pub bind_mode: String,
    /// Frame size.
    pub size: usize,
    /// Frames put on the TX ring.
    pub frames: u64,
    /// Frames the kernel reported done (completion ring); in copy mode a frame the
    /// device dropped is done too.
    pub completed: u64,
    /// Bytes of the frames sent.
    pub bytes: u64,
    /// From the first frame queued to the last.
    pub seconds: f64,
    /// Millions of frames per second.
    pub mpps: f64,
    /// Gigabits per second of frame bytes.
    pub gbps: f64,
    /// Per destination, in the order of `--dst-mac`.
    pub destinations: Vec<DestinationReport>,
    /// First sequence number of every destination.
    pub first_seq: u64,
    /// `sendto` kicks.
    pub kicks: u64,
    /// Kicks answered EAGAIN (the kernel's per-call budget).
    pub kick_again: u64,
    /// Kicks answered EBUSY/ENOBUFS (device busy).
    pub kick_busy: u64,
    /// Frames that found no TX slot or chunk (all in flight).
    pub tx_full: u64,
    /// The kernel's invalid TX descriptors (XDP_STATISTICS; should stay 0).
    pub tx_invalid_descs: u64,
    /// Sending thread's CPU time.
    pub cpu: CpuTime,
    /// Whether a signal cut the run short.
    pub interrupted: bool,
}

impl fmt::Display for XdpTxOnlyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "xdp-txonly on {} queue {} ({}): {} frames of {} B in {:.3} s: {:.3} Mpps, {:.3} Gbit/s",
            self.iface,
            self.queue,
            self.bind_mode,
            self.frames,
            self.size,
            self.seconds,
            self.mpps,
            self.gbps
        )?;
        for d in &self.destinations {
            writeln!(
                f,
                "  to {} (weight {}): {} frames, seq {}..{}",
                d.mac,
                d.weight,
                d.frames,
                self.first_seq,
                self.first_seq + d.frames
            )?;
        }
        write!(
            f,
            "  completed {}, kicks {} (EAGAIN {}, busy {}), TX full {}, CPU {:.2} s user + {:.2} s \
             system ({:.0} % of a core, {:.0} ns/frame)",
            self.completed,
            self.kicks,
            self.kick_again,
            self.kick_busy,
            self.tx_full,
            self.cpu.user_s,
            self.cpu.system_s,
            self.cpu.share * 100.0,
            self.cpu.ns_per_frame
        )
    }
}

/// The order frames go to destinations in one round: smooth weighted round robin, so a
/// destination of weight W gets W evenly spread slots (indices into `dsts`).
pub fn schedule(dsts: &[WeightedMac]) -> Vec<usize> {
    let total: i64 = dsts.iter().map(|d| i64::from(d.weight)).sum();
    let mut current = vec![0i64; dsts.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, d) in current.iter_mut().zip(dsts) {
            *c += i64::from(d.weight);
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
            .expect("at least one destination");
        current[best] -= total;
        order.push(best);
    }
    order
}

/// The calling thread's user and system CPU time.
fn thread_rusage() -> (Duration, Duration) {
    // SAFETY: a zeroed rusage is a valid value to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid rusage to write; RUSAGE_THREAD is this thread.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &raw mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Runs the generator.
pub fn run(args: &XdpTxOnlyArgs) -> Result<XdpTxOnlyReport, ModeError> {
    modes::pin(args.core)?;
    // One destination per distinct MAC (a MAC listed twice adds up its weights).
    let mut dsts: Vec<WeightedMac> = Vec::new();
    for d in &args.dst_mac {
        match dsts.iter_mut().find(|x| x.mac == d.mac) {
            Some(x) => x.weight += d.weight,
            None => dsts.push(*d),
        }
    }
    let templates: Vec<FrameTemplate> = dsts
        .iter()
        .map(|d| FrameTemplate::new(&args.traffic.endpoints(d.mac), args.size))
        .collect::<Result<_, _>>()?;
    let order = schedule(&dsts);

    let config = UplinkConfig {
        queues: vec![args.queue],
        umem: UmemConfig {
            chunks_per_queue: CHUNKS + FILL,
            ..UmemConfig::default()
        },
        rings: RingSizes {
            fill: FILL,
            completion: 2048,
            rx: FILL,
            tx: 2048,
        },
        ..UplinkConfig::new(args.iface.clone())
    };
    let mut socket = vpmd_uplink::open_unattached(&config).map_err(ModeError::Uplink)?;
    let capacity = socket.transmitter().frame_capacity();
    if args.size > capacity {
        return Err(ModeError::Frame(frame::FrameError::Size(args.size)));
    }

    let limit = args.traffic.limit();
    let mut per_dst = vec![0u64; dsts.len()];
    let mut pacer = Pacer::new(args.traffic.rate);
    let (user0, sys0) = thread_rusage();
    let start = Instant::now();
    let mut last = start;
    let (mut sent, mut slot, mut flow) = (0u64, 0usize, 0u16);
    while let Some(want) = modes::next_burst(&mut pacer, &limit, start, sent, args.burst) {
        let mut tx = socket.transmit_burst(want as usize);
        while let Some(buf) = tx.buffer() {
            let d = order[slot];
            slot = if slot + 1 == order.len() { 0 } else { slot + 1 };
            let len = templates[d].write(buf, args.first_seq + per_dst[d], flow, 0);
            per_dst[d] += 1;
            flow = args.traffic.next_flow(flow);
            tx.commit(len);
        }
        let n = tx.queued() as u64;
        // Dropping the burst publishes it and kicks the kernel, which sends.
        drop(tx);
        if n > 0 {
            sent += n;
            last = Instant::now();
        } else {
            // Everything in flight: take completions back, kick what waits.
            socket.flush_tx();
            std::hint::spin_loop();
        }
    }
    let interrupted = modes::stop_requested();
    let deadline = Instant::now() + args.drain_timeout;
    while socket.tx_counters().completed < sent && Instant::now() < deadline {
        socket.flush_tx();
        std::thread::sleep(Duration::from_micros(100));
    }
    let (user1, sys1) = thread_rusage();
    let wall = start.elapsed().as_secs_f64();
    Ok(report(
        args,
        &socket,
        &dsts,
        per_dst,
        (last - start).as_secs_f64(),
        (
            user1.checked_sub(user0).unwrap(),
            sys1.checked_sub(sys0).unwrap(),
            wall,
        ),
        interrupted,
    ))
}

fn report(
    args: &XdpTxOnlyArgs,
    socket: &XskSocket,
    dsts: &[WeightedMac],
    per_dst: Vec<u64>,
    secs: f64,
    (user, sys, wall): (Duration, Duration, f64),
    interrupted: bool,
) -> XdpTxOnlyReport {
    let c = socket.tx_counters();
    let frames: u64 = per_dst.iter().sum();
    let cpu_s = (user + sys).as_secs_f64();
    XdpTxOnlyReport {
        mode: "xdp-txonly",
        iface: args.iface.clone(),
        queue: args.queue,
        bind_mode: match socket.bind_mode() {
            BindMode::Copy => "copy",
            BindMode::ZeroCopy => "zero-copy",
        }
        .to_string(),
        size: args.size,
        frames,
        completed: c.completed,
        bytes: c.bytes,
        seconds: secs,
        mpps: modes::mpps(frames, secs),
        gbps: modes::gbps(c.bytes, secs),
        destinations: dsts
            .iter()
            .zip(per_dst)
            .map(|(d, frames)| DestinationReport {
                mac: vpmd_uplink::MacAddr(d.mac).to_string(),
                weight: d.weight,
                frames,
            })
            .collect(),
        first_seq: args.first_seq,
        kicks: c.kicks,
        kick_again: c.kick_again,
        kick_busy: c.kick_busy,
        tx_full: c.ring_full + c.no_chunk,
        tx_invalid_descs: socket.kernel_statistics().map_or(0, |s| s.tx_invalid_descs),
        cpu: CpuTime {
            user_s: user.as_secs_f64(),
            system_s: sys.as_secs_f64(),
            share: if wall > 0.0 { cpu_s / wall } else { 0.0 },
            ns_per_frame: if frames > 0 {
                cpu_s * 1e9 / frames as f64
            } else {
                0.0
            },
        },
        interrupted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> [u8; 6] {
        [0x52, 0x54, 0, 0, 0, last]
    }

    #[test]
    fn weighted_macs_parse() {
        assert_eq!(
            parse_weighted_mac("52:54:00:00:00:01*7"),
            Ok(WeightedMac {
                mac: mac(1),
                weight: 7
            })
        );
        assert_eq!(parse_weighted_mac("52:54:00:00:00:02").unwrap().weight, 1);
        assert!(parse_weighted_mac("52:54:00:00:00:02*0").is_err());
        assert!(parse_weighted_mac("52:54:00:00:00:02*x").is_err());
        assert!(parse_weighted_mac("52:54:00:00:02").is_err());
    }

    #[test]
    fn schedule_spreads_each_destination_by_its_weight() {
        let d = |last, weight| WeightedMac {
            mac: mac(last),
            weight,
        };
        assert_eq!(schedule(&[d(1, 1), d(2, 1)]), vec![0, 1]);
        let s = schedule(&[d(1, 3), d(2, 3), d(3, 1), d(4, 1)]);
        assert_eq!(s.len(), 8);
        for (i, w) in [3, 3, 1, 1].into_iter().enumerate() {
            assert_eq!(s.iter().filter(|&&x| x == i).count(), w);
        }
        // Evenly spread: never the same heavy destination three times in a row.
        assert!(s.windows(3).all(|w| !(w[0] == w[1] && w[1] == w[2])));
        let s = schedule(&[d(1, 7), d(2, 1)]);
        assert_eq!(s.iter().filter(|&&x| x == 1).count(), 1);
    }
}
