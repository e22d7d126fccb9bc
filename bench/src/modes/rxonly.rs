//! `rxonly`: a checking sink on one port (testpmd's rxonly engine, plus checks).
//!
//! Every frame is checked in place in guest memory ([`SeqTracker`]): sequence numbers,
//! length, IPv4 header and payload checksums; loss, reordering, duplicates and
//! corruption are reported. When the ring is empty it sleeps on its call eventfd (the
//! backend signals it) instead of spinning: on a two-core machine a third busy thread is
//! starved. `--spin` busy-polls instead.
//!
//! It stops after `--count` frames, after `--duration`, when nothing arrived for
//! `--idle-timeout` after the first frame, or when nothing arrived at all for
//! `--first-timeout`.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::modes::{self, DeviceArgs, Global, ModeError};
use crate::pacing::RunLimit;
use crate::seq_check::{SeqReport, SeqTracker};

/// Options of `vpmd-bench rxonly`.
#[derive(clap::Args, Clone, Debug)]
pub struct RxOnlyArgs {
    /// vhost-user socket of the port to receive on.
    pub socket: PathBuf,
    /// Stop after this many test frames; loss is then counted against it.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS", value_parser = modes::parse_seconds)]
    pub duration: Option<Duration>,
    /// Stop when nothing arrived for this long after the first frame.
    #[arg(long, default_value = "2", value_name = "SECONDS", value_parser = modes::parse_seconds)]
    pub idle_timeout: Duration,
    /// Stop when no frame at all arrived for this long.
    #[arg(long, default_value = "60", value_name = "SECONDS", value_parser = modes::parse_seconds)]
    pub first_timeout: Duration,
    /// Sequence number of the first frame expected.
    #[arg(long, default_value_t = 0)]
    pub first_seq: u64,
    /// Busy-poll the RX ring instead of sleeping on the call eventfd.
    #[arg(long)]
    pub spin: bool,
    /// Most frames taken per burst.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub burst: u64,
    /// Do not print "rxonly ready on SOCKET" on stderr once the port is set up (scripts
    /// wait for that line before they start a sender).
    #[arg(long)]
    pub quiet: bool,
    /// Device options.
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// What `rxonly` saw.
#[derive(Clone, Debug, Serialize)]
pub struct RxOnlyReport {
    /// Always "rxonly".
    pub mode: &'static str,
    /// From the first to the last frame received.
    pub seconds: f64,
    /// Millions of test frames per second.
    pub mpps: f64,
    /// Gigabits per second of test frame bytes.
    pub gbps: f64,
    /// Counts and checks.
    #[serde(flatten)]
    pub seq: SeqReport,
    /// Frames dropped by the driver (malformed used entries).
    pub malformed: u64,
    /// Frames that arrived in several buffers.
    pub merged: u64,
    /// Why it stopped: "count", "duration", "idle", "no-traffic" or "signal".
    pub stopped_by: &'static str,
}

impl fmt::Display for RxOnlyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.seq;
        writeln!(
            f,
            "rxonly: {} frames, {} bytes in {:.3} s: {:.3} Mpps, {:.3} Gbit/s (stopped by {})",
            s.frames, s.bytes, self.seconds, self.mpps, self.gbps, self.stopped_by
        )?;
        write!(
            f,
            "  intact {}, corrupted {}, lost {}, reordered {}, duplicates {}, foreign {}, \
             seq {}..{}",
            s.intact,
            s.corrupted,
            s.lost,
            s.reordered,
            s.duplicates,
            s.foreign,
            s.first_seq,
            s.last_seq.map_or("-".into(), |l| (l + 1).to_string())
        )
    }
}

/// Runs the sink.
pub fn run(args: &RxOnlyArgs, g: &Global) -> Result<RxOnlyReport, ModeError> {
    modes::pin(args.dev.core)?;
    let q = u32::from(args.dev.queue_size);
    // Buffers large enough for any test frame: every frame sits in one buffer.
    let (mut mem, mut pool) = modes::memory(
        &args.dev,
        1,
        q + args.burst as u32,
        modes::buf_size_for(crate::frame::MAX_LEN),
    )?;
    let socket = args.socket.as_path();
    let mut port = modes::connect_all(&[socket], &args.dev, g, &mut mem, &mut pool)?
        .pop()
        .expect("one port");
    if !args.quiet {
        eprintln!("rxonly ready on {}", args.socket.display());
    }
    let limit = RunLimit {
        count: args.count,
        duration: args.duration,
    };
    let mut tracker = SeqTracker::new(args.first_seq);
    let start = Instant::now();
    let (mut first, mut last): (Option<Instant>, Instant) = (None, start);
    let mut stopped_by = "signal";
    loop {
        if modes::stop_requested() {
            break;
        }
        let now = Instant::now();
        if limit.done(tracker.frames(), now - start) {
            stopped_by = if limit.count.is_some_and(|c| tracker.frames() >= c) {
                "count"
            } else {
                "duration"
            };
            break;
        }
        let max = args.burst.min(limit.left(tracker.frames())) as usize;
        let n = port.rx.recv_frames(&mut pool, max, &mut |f: &[u8]| {
            let _ = tracker.observe(f);
        });
        if n > 0 {
            last = Instant::now();
            first.get_or_insert(last);
            continue;
        }
        let waited = match first {
            Some(_) => now - last,
            None => now - start,
        };
        let timeout = if first.is_some() {
            args.idle_timeout
        } else {
            args.first_timeout
        };
        if waited >= timeout {
            stopped_by = if first.is_some() {
                "idle"
            } else {
                "no-traffic"
            };
            break;
        }
        if args.spin {
            std::hint::spin_loop();
        } else {
            let mut nap = (timeout - waited).min(Duration::from_millis(100));
            if let Some(d) = limit.duration {
                nap = nap.min(d.saturating_sub(now - start));
            }
            port.rx.wait(nap);
        }
    }
    let secs = first.map_or(0.0, |f| (last - f).as_secs_f64());
    let seq = tracker.report(args.count);
    let rx = port.rx.stats();
    let _ = port.disconnect();
    Ok(RxOnlyReport {
        mode: "rxonly",
        seconds: secs,
        mpps: modes::mpps(seq.frames, secs),
        gbps: modes::gbps(seq.bytes, secs),
        seq,
        malformed: rx.malformed,
        merged: rx.merged,
        stopped_by,
    })
}
