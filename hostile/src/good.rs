// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The well-behaved pair: a checked transfer g1 -> g2 (vpmd-bench frontends) that runs
//! in rounds for as long as an attack lasts.
//!
//! Every frame carries a sequence number, its length and a checksum; vpmd-bench's
//! [`transfer`] fails on the first frame lost, reordered, damaged or of the wrong
//! size, and at most `WINDOW` frames are in flight (the receiver posts 256 RX
//! buffers), so nothing may be dropped legitimately either.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vpmd_bench::transfer::{spread_sizes, transfer, TransferSpec};
use vpmd_bench::{FrontendOptions, NetFrontend};

use crate::vpmd::{mac, port, Vpmd};

/// Frames per round.
const ROUND: u64 = 2000;
/// Frames in flight at most.
const WINDOW: u64 = 128;

/// What the well-behaved pair moved.
#[derive(Clone, Copy, Debug)]
pub struct GoodReport {
    /// Frames received intact and in order.
    pub frames: u64,
    /// Their Ethernet bytes.
    pub bytes: u64,
    /// Completed rounds.
    pub rounds: u64,
    /// Time from the first frame to the last.
    pub elapsed: Duration,
}

impl GoodReport {
    /// Frames per second.
    pub fn rate(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

/// A checked transfer running in its own thread.
pub struct GoodTraffic {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<GoodReport, String>>,
}

impl GoodTraffic {
    /// Connects g1 and g2, waits until vpmd has both up, starts the transfer and
    /// returns once the first round is under way.
    pub fn start(vpmd: &Vpmd) -> GoodTraffic {
        let (a, b) = (vpmd.socket("g1"), vpmd.socket("g2"));
        let stats = vpmd.stats_reader();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop2 = stop.clone();
        let handle = std::thread::spawn(move || {
            let connect = |s| {
                NetFrontend::connect(&FrontendOptions::new(s))
                    .map_err(|e| format!("connect: {:#}", anyhow::Error::from(e)))
            };
            let mut g1 = connect(a)?;
            let mut g2 = connect(b)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let s = stats.stats()?;
                if ["g1", "g2"].iter().all(|p| port(&s, p)["state"] == "up") {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("g1/g2 never came up: {s}"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = ready_tx.send(());
            let mut spec = TransferSpec {
                count: ROUND,
                sizes: spread_sizes(60, 1514, 37),
                dst: mac("g2"),
                src: mac("g1"),
                first_seq: 0,
                window: WINDOW,
                idle_timeout: Duration::from_secs(5),
            };
            let start = Instant::now();
            let mut report = GoodReport {
                frames: 0,
                bytes: 0,
                rounds: 0,
                elapsed: Duration::ZERO,
            };
            loop {
                let r = transfer(&mut g1, &mut g2, &spec).map_err(|e| {
                    format!(
                        "good transfer, round {}: {:#}",
                        report.rounds,
                        anyhow::Error::from(e)
                    )
                })?;
                report.frames += r.frames;
                report.bytes += r.bytes;
                report.rounds += 1;
                spec.first_seq += ROUND;
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
            }
            report.elapsed = start.elapsed();
            if !g1.wait_tx_done(Duration::from_secs(5)) {
                return Err("g1's TX chains were not all returned".into());
            }
            let (s1, s2) = (g1.stats(), g2.stats());
            if s1.bad_used + s2.bad_used + s2.rx.malformed != 0 {
                return Err(format!(
                    "bad used entries or malformed frames: {s1:?} {s2:?}"
                ));
            }
            Ok(report)
        });
        let _ = ready_rx.recv_timeout(Duration::from_secs(15));
        GoodTraffic { stop, handle }
    }

    /// Ends the transfer after the current round and returns what it moved; panics
    /// if any frame was lost, reordered or damaged.
    pub fn finish(self) -> GoodReport {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.join() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("well-behaved pair failed during the attack: {e}"),
            Err(_) => panic!("well-behaved pair's thread panicked"),
        }
    }
}
