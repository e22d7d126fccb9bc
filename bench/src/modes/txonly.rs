// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `txonly`: a packet generator on one port (testpmd's txonly engine).
//!
//! Frames are written straight into pool buffers from a [`FrameTemplate`] (copy, flow
//! port, seq, stamp, checksum), posted in bursts with one publish each, and reclaimed when
//! the ring runs low. Optional: a rate limit, several flows (UDP source ports), and a
//! frame corrupted on purpose every N (after its checksum) to test a receiver.
//! At the end it waits until the backend has taken every frame, then disconnects.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::frame::{self, FrameTemplate};
use crate::modes::{self, DeviceArgs, Global, ModeError};
use crate::net_tx::ZERO_HDR;
use crate::pacing::Pacer;
use crate::port::Port;

/// Options of `vpmd-bench txonly`.
#[derive(clap::Args, Clone, Debug)]
pub struct TxOnlyArgs {
    /// vhost-user socket of the port to send on.
    pub socket: PathBuf,
    /// Ethernet frame size in bytes (no FCS), 60 to 9000.
    #[arg(long, default_value = "64", value_parser = modes::parse_frame_size)]
    pub size: usize,
    /// Destination MAC.
    #[arg(long, default_value = "02:00:00:00:00:02", value_parser = modes::parse_mac)]
    pub dst_mac: [u8; 6],
    /// Frames, addresses and how long.
    #[command(flatten)]
    pub traffic: modes::TrafficArgs,
    /// Frames per burst (one publish, at most one kick each).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub burst: u64,
    /// Damage every Nth frame on purpose (after its checksum): frames with
    /// (seq - first_seq + 1) a multiple of N. For testing receivers.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub corrupt_every: Option<u64>,
    /// Sequence number of the first frame.
    #[arg(long, default_value_t = 0)]
    pub first_seq: u64,
    /// Seconds to wait for the backend to take the last frames.
    #[arg(long, default_value = "5", value_parser = modes::parse_seconds)]
    pub drain_timeout: Duration,
    /// Device options.
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// What `txonly` did.
#[derive(Clone, Debug, Serialize)]
pub struct TxOnlyReport {
    /// Always "txonly".
    pub mode: &'static str,
    /// Frame size.
    pub size: usize,
    /// Frames sent.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// From the first to the last frame queued.
    pub seconds: f64,
    /// Millions of frames per second.
    pub mpps: f64,
    /// Gigabits per second of frame bytes.
    pub gbps: f64,
    /// Frames damaged on purpose.
    pub corrupted: u64,
    /// First sequence number.
    pub first_seq: u64,
    /// Times the TX ring was full.
    pub ring_full: u64,
    /// Kicks sent.
    pub kicks: u64,
    /// Whether the backend took every frame before the drain timeout.
    pub drained: bool,
    /// Frames the backend had not taken at the end.
    pub in_flight: u64,
}

impl fmt::Display for TxOnlyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "txonly: {} frames of {} B, {} bytes in {:.3} s: {:.3} Mpps, {:.3} Gbit/s",
            self.frames, self.size, self.bytes, self.seconds, self.mpps, self.gbps
        )?;
        write!(
            f,
            "  seq {}..{}, corrupted on purpose {}, ring full {}, kicks {}, {}",
            self.first_seq,
            self.first_seq + self.frames,
            self.corrupted,
            self.ring_full,
            self.kicks,
            if self.drained {
                "all taken by the backend".to_string()
            } else {
                format!("{} never taken by the backend", self.in_flight)
            }
        )
    }
}

/// Runs the generator.
pub fn run(args: &TxOnlyArgs, g: &Global) -> Result<TxOnlyReport, ModeError> {
    modes::pin(args.dev.core)?;
    let ep = args.traffic.endpoints(args.dst_mac);
    let template = FrameTemplate::new(&ep, args.size)?;
    let q = u32::from(args.dev.queue_size);
    let (mut mem, mut pool) = modes::memory(
        &args.dev,
        1,
        2 * q + args.burst as u32,
        modes::buf_size_for(args.size),
    )?;
    let socket = args.socket.as_path();
    let mut port = modes::connect_all(&[socket], &args.dev, g, &mut mem, &mut pool)?
        .pop()
        .expect("one port");
    let limit = args.traffic.limit();

    let hdr_len = port.hdr_len();
    let mut pacer = Pacer::new(args.traffic.rate);
    let start = Instant::now();
    let mut last = start;
    let (mut sent, mut corrupted, mut flow) = (0u64, 0u64, 0u16);
    while let Some(want) = modes::next_burst(&mut pacer, &limit, start, sent, args.burst) {
        port.tx.reclaim_for(&mut pool, want as u16);
        let mut n = 0;
        while n < want {
            let Some(buf) = pool.get() else {
                break;
            };
            let seq = args.first_seq + sent + n;
            let b = pool.bytes_mut(buf);
            b[..hdr_len].copy_from_slice(&ZERO_HDR[..hdr_len]);
            let len = template.write(&mut b[hdr_len..], seq, flow, 0);
            if args
                .corrupt_every
                .is_some_and(|k| (seq - args.first_seq + 1).is_multiple_of(k))
            {
                frame::corrupt(&mut b[hdr_len..hdr_len + len]);
                corrupted += 1;
            }
            if !port.tx.post(&pool, buf, len as u32) {
                pool.put(buf);
                break;
            }
            flow = args.traffic.next_flow(flow);
            n += 1;
        }
        port.tx.flush();
        sent += n;
        if n > 0 {
            last = Instant::now();
        } else {
            // Ring full: let the backend catch up, sleeping when we are rate-limited.
            if args.traffic.rate.is_some() {
                port.tx.queue_mut().wait_used(Duration::from_millis(1));
            }
            port.tx.reclaim(&mut pool);
        }
    }
    let drained = port.tx.wait_done(&mut pool, args.drain_timeout);
    let in_flight = u64::from(port.tx.in_flight());
    let report = report(
        args,
        &port,
        sent,
        corrupted,
        (last - start).as_secs_f64(),
        drained,
        in_flight,
    );
    // Best effort: the frames are out; a backend that does not answer GET_VRING_BASE
    // (it is going away) does not spoil the report.
    let _ = port.disconnect();
    Ok(report)
}

fn report(
    args: &TxOnlyArgs,
    port: &Port,
    sent: u64,
    corrupted: u64,
    secs: f64,
    drained: bool,
    in_flight: u64,
) -> TxOnlyReport {
    let s = port.tx.stats();
    TxOnlyReport {
        mode: "txonly",
        size: args.size,
        frames: sent,
        bytes: s.bytes,
        seconds: secs,
        mpps: modes::mpps(sent, secs),
        gbps: modes::gbps(s.bytes, secs),
        corrupted,
        first_seq: args.first_seq,
        ring_full: s.ring_full,
        kicks: port.kicks(),
        drained,
        in_flight,
    }
}
