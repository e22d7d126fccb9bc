// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `rxonly`: a checking sink on one port (testpmd's rxonly engine, plus checks).
//!
//! Every frame is checked in place in guest memory ([`SeqTracker`]): sequence numbers,
//! length, IPv4 header and payload checksums; loss, reordering, duplicates and
//! corruption are reported. When the ring is empty it sleeps on its call eventfd (the
//! backend signals it) instead of spinning: on a two-core machine a third busy thread is
//! starved. `--spin` busy-polls instead.
//!
//! With `--dst-mac` only frames for that MAC are checked; frames for other MACs are
//! counted by destination (`other_dst`): what a switch should not have sent this port.
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
    /// Check only frames for this destination MAC; count frames for any other
    /// destination in `other_dst` (frames a switch should not have sent this port).
    #[arg(long, value_name = "MAC", value_parser = modes::parse_mac)]
    pub dst_mac: Option<[u8; 6]>,
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
    /// Frames for another destination MAC than `--dst-mac` (not checked further).
    pub other_dst: u64,
    /// The same frames by destination MAC (the first [`OTHER_MACS`] MACs seen).
    pub other_dst_by_mac: Vec<MacCount>,
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
             seq {}..{}, other destination {}",
            s.intact,
            s.corrupted,
            s.lost,
            s.reordered,
            s.duplicates,
            s.foreign,
            s.first_seq,
            s.last_seq.map_or("-".into(), |l| (l + 1).to_string()),
            self.other_dst
        )
    }
}

/// Distinct destination MACs counted one by one in [`OtherDestinations`].
pub const OTHER_MACS: usize = 16;

/// Frames received for one destination MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MacCount {
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Frames.
    pub frames: u64,
}

/// Frames that were not for `--dst-mac`, by destination MAC (a switch that delivers
/// frames for other MACs, or an io forwarder that delivers everything, shows here).
#[derive(Default)]
struct OtherDestinations {
    total: u64,
    macs: Vec<([u8; 6], u64)>,
}

impl OtherDestinations {
    fn count(&mut self, frame: &[u8]) {
        self.total += 1;
        let Some(mac) = frame.get(..6).and_then(|m| <[u8; 6]>::try_from(m).ok()) else {
            return;
        };
        if let Some((_, n)) = self.macs.iter_mut().find(|(m, _)| *m == mac) {
            *n += 1;
        } else if self.macs.len() < OTHER_MACS {
            self.macs.push((mac, 1));
        }
    }

    fn by_mac(&self) -> Vec<MacCount> {
        self.macs
            .iter()
            .map(|(mac, frames)| MacCount {
                mac: vpmd_uplink::MacAddr(*mac).to_string(),
                frames: *frames,
            })
            .collect()
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
    let mut other = OtherDestinations::default();
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
        let n = port
            .rx
            .recv_frames(&mut pool, max, &mut |f: &[u8]| match args.dst_mac {
                Some(mac) if f.len() < 6 || f[..6] != mac => other.count(f),
                _ => {
                    let _ = tracker.observe(f);
                }
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
            let mut nap = timeout
                .checked_sub(waited)
                .unwrap()
                .min(Duration::from_millis(100));
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
        other_dst: other.total,
        other_dst_by_mac: other.by_mac(),
        malformed: rx.malformed,
        merged: rx.merged,
        stopped_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_destinations_are_counted_by_mac() {
        let mut o = OtherDestinations::default();
        let a = [2, 0, 0, 0, 0, 1, 9, 9];
        let b = [2, 0, 0, 0, 0, 2, 9, 9];
        o.count(&a);
        o.count(&b);
        o.count(&a);
        o.count(&[1, 2, 3]); // runt: counted, no MAC
        assert_eq!(o.total, 4);
        let by = o.by_mac();
        assert_eq!(by.len(), 2);
        assert_eq!((by[0].mac.as_str(), by[0].frames), ("02:00:00:00:00:01", 2));
        assert_eq!(by[1].frames, 1);
        for i in 0..2 * OTHER_MACS as u8 {
            o.count(&[4, 0, 0, 0, 0, i]);
        }
        assert_eq!(o.by_mac().len(), OTHER_MACS);
        assert_eq!(o.total, 4 + 2 * OTHER_MACS as u64);
    }
}
