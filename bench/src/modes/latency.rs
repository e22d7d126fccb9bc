// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `latency`: timestamped frames from port A to port B at a fixed rate; a histogram of
//! the one-way time through the backend.
//!
//! One thread does both ends, so sender and receiver read the same clock: each frame
//! carries its send time (ns since the start, low 32 bits) and the receiver subtracts it
//! from its own clock when the frame comes out of B's RX ring. The thread busy-polls B
//! between sends (sleeping would add the scheduler's wake-up time to every sample); on a
//! two-core machine that is the frontend's core, the backend polls on the other.
//! Frames sent during `--warmup` are not recorded.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::frame::{self, Endpoints, FrameTemplate};
use crate::histogram::{Histogram, Row};
use crate::modes::{self, DeviceArgs, Global, ModeError};
use crate::net_tx::ZERO_HDR;
use crate::pacing::{Clock, Pacer, RunLimit};

/// Samples above this are not latencies but wrapped stamps (the stamp is 32 bits of ns).
const MAX_SAMPLE_NS: u64 = 1 << 31;

/// Options of `vpmd-bench latency`.
#[derive(clap::Args, Clone, Debug)]
pub struct LatencyArgs {
    /// vhost-user socket of the sending port.
    pub a: PathBuf,
    /// vhost-user socket of the receiving port.
    pub b: PathBuf,
    /// Ethernet frame size in bytes (no FCS), 60 to 9000.
    #[arg(long, default_value = "64", value_parser = modes::parse_frame_size)]
    pub size: usize,
    /// Frames per second.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub rate: u64,
    /// Stop after this many measured frames.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Seconds to measure (default 5 when no --count is given).
    #[arg(long, value_name = "SECONDS", value_parser = modes::parse_seconds)]
    pub duration: Option<Duration>,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value = "0.5", value_name = "SECONDS", value_parser = modes::parse_seconds)]
    pub warmup: Duration,
    /// Seconds to wait for the last frames after sending stops.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = modes::parse_seconds)]
    pub drain: Duration,
    /// Device options.
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// What `latency` measured, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    /// Always "latency".
    pub mode: &'static str,
    /// Frame size.
    pub size: usize,
    /// Target rate.
    pub rate_pps: u64,
    /// Measured frames sent.
    pub sent: u64,
    /// Measured frames received intact.
    pub received: u64,
    /// Measured frames never received.
    pub lost: u64,
    /// Frames that failed their checks.
    pub corrupted: u64,
    /// Minimum.
    pub min_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
    /// Counts per power-of-two range of nanoseconds.
    pub histogram: Vec<Row>,
}

impl fmt::Display for LatencyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "latency: {} B frames at {} pps: {} sent, {} received, {} lost, {} corrupted",
            self.size, self.rate_pps, self.sent, self.received, self.lost, self.corrupted
        )?;
        writeln!(
            f,
            "  min {:.2} us  mean {:.2} us  p50 {:.2} us  p99 {:.2} us  p99.9 {:.2} us  \
             max {:.2} us",
            self.min_us, self.mean_us, self.p50_us, self.p99_us, self.p999_us, self.max_us
        )?;
        let most = self.histogram.iter().map(|r| r.count).max().unwrap_or(1);
        for r in &self.histogram {
            let bar = "#".repeat(((r.count * 50).div_ceil(most)) as usize);
            writeln!(
                f,
                "  {:>10.2} .. {:>10.2} us {:>10}  {bar}",
                r.from_ns as f64 / 1e3,
                r.to_ns as f64 / 1e3,
                r.count
            )?;
        }
        Ok(())
    }
}

/// Runs the measurement.
pub fn run(args: &LatencyArgs, g: &Global) -> Result<LatencyReport, ModeError> {
    modes::pin(args.dev.core)?;
    let q = u32::from(args.dev.queue_size);
    let (mut mem, mut pool) =
        modes::memory(&args.dev, 2, 4 * q + 64, modes::buf_size_for(args.size))?;
    let template = FrameTemplate::new(&Endpoints::default(), args.size)?;
    let sockets = [args.a.as_path(), args.b.as_path()];
    let mut ports = modes::connect_all(&sockets, &args.dev, g, &mut mem, &mut pool)?;
    let (pa, pb) = ports.split_at_mut(1);
    let (a, b) = (&mut pa[0], &mut pb[0]);
    let hdr_len = a.hdr_len();

    let limit = RunLimit {
        count: args.count,
        duration: args
            .duration
            .or(args.count.is_none().then_some(Duration::from_secs(5))),
    };
    let clock = Clock::new();
    let mut pacer = Pacer::new(Some(args.rate));
    let mut hist = Histogram::new();
    let start = Instant::now();
    let measure_from = start + args.warmup;
    // Frames with seq >= first_measured are recorded.
    let mut first_measured: Option<u64> = None;
    let (mut seq, mut measured_sent, mut corrupted, mut any) = (0u64, 0u64, 0u64, false);
    let mut drain_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if drain_until.is_none() {
            if now >= measure_from && first_measured.is_none() {
                first_measured = Some(seq);
            }
            let measuring = first_measured.is_some();
            let done = measuring && limit.done(measured_sent, now - measure_from);
            if done || modes::stop_requested() {
                drain_until = Some(now + args.drain);
            } else if pacer.allowed(seq, 1) == 1 {
                a.tx.reclaim_for(&mut pool, 1);
                if let Some(buf) = pool.get() {
                    let bytes = pool.bytes_mut(buf);
                    bytes[..hdr_len].copy_from_slice(&ZERO_HDR[..hdr_len]);
                    let len = template.write(&mut bytes[hdr_len..], seq, 0, clock.ns() as u32);
                    if a.tx.post(&pool, buf, len as u32) {
                        a.tx.flush();
                        seq += 1;
                        measured_sent += u64::from(measuring);
                    } else {
                        pool.put(buf);
                    }
                }
            }
        } else if drain_until.is_some_and(|d| now >= d)
            || first_measured.is_some_and(|f| hist.count() + corrupted >= seq - f)
        {
            break;
        }
        b.rx.recv_frames(&mut pool, 64, &mut |f: &[u8]| {
            let t = clock.ns() as u32;
            any = true;
            match frame::check(f) {
                Ok(p) if first_measured.is_some_and(|m| p.seq >= m) => {
                    let ns = u64::from(t.wrapping_sub(p.stamp));
                    if ns < MAX_SAMPLE_NS {
                        hist.record(ns);
                    }
                }
                Ok(_) | Err(frame::FrameError::NotProbe) => {}
                Err(_) => corrupted += 1,
            }
        });
        if !any && now - start > args.warmup + Duration::from_secs(10) {
            return Err(ModeError::NoTraffic(now - start));
        }
    }
    let us = |ns: u64| ns as f64 / 1e3;
    let report = LatencyReport {
        mode: "latency",
        size: args.size,
        rate_pps: args.rate,
        sent: measured_sent,
        received: hist.count(),
        lost: measured_sent.saturating_sub(hist.count() + corrupted),
        corrupted,
        min_us: us(hist.min()),
        mean_us: hist.mean() / 1e3,
        p50_us: us(hist.quantile(0.5)),
        p99_us: us(hist.quantile(0.99)),
        p999_us: us(hist.quantile(0.999)),
        max_us: us(hist.max()),
        histogram: hist.octaves(),
    };
    for p in ports {
        let _ = p.disconnect();
    }
    Ok(report)
}
