// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One attack scenario: a vpmd of its own, the well-behaved transfer on pair 1 while
//! the attack runs, and the checks every scenario ends with.
//!
//! [`Scenario::finish`] asserts that vpmd is alive, that pair 1's transfer arrived
//! complete, in order and intact, that vpmd's counters for pair 1 show exactly that
//! transfer and nothing else (no frame crossed from pair 2, none dropped), that
//! pair 2's frames went only to pair 2, and that vpmd exits 0 on SIGTERM.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpmd_bench::frame::{self, Endpoints};
use vpmd_bench::{FrontendOptions, NetFrontend};

use crate::good::{GoodReport, GoodTraffic};
use crate::ring::Desc;
use crate::vm::HostileVm;
use crate::vpmd::{counter, drops, mac, Vpmd};

/// Slowest the well-behaved pair may get during an attack (frames per second). The
/// polling thread normally moves hundreds of thousands; an attack that stalls it
/// for milliseconds per burst brings this pair down to a few thousand.
pub const MIN_GOOD_RATE: f64 = 5000.0;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running scenario.
pub struct Scenario {
    /// The vpmd under attack.
    pub vpmd: Vpmd,
    good: Option<GoodTraffic>,
    started: Instant,
    _serial: MutexGuard<'static, ()>,
}

impl Scenario {
    /// Starts vpmd and the well-behaved transfer.
    pub fn start(name: &str) -> Scenario {
        let serial = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let vpmd = crate::vpmd::start(name);
        let good = GoodTraffic::start(&vpmd);
        Scenario {
            vpmd,
            good: Some(good),
            started: Instant::now(),
            _serial: serial,
        }
    }

    /// Starts the scenario, connects the well-behaved [`Sender`] on `p` and a hostile
    /// frontend on `h`, and waits for `h` to be up: the opening of most attacks.
    pub fn start_with_h(name: &str) -> (Scenario, Sender, HostileVm) {
        let sc = Scenario::start(name);
        let p = Sender::connect(&sc.vpmd);
        let vm = HostileVm::start(&sc.vpmd.socket("h")).expect("hostile setup");
        sc.vpmd.wait_up(&["h"]);
        (sc, p, vm)
    }

    /// Seconds since the attack started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stats now.
    pub fn stats(&self) -> Value {
        self.vpmd.stats()
    }

    /// Lines of vpmd's log containing every one of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> usize {
        self.vpmd
            .log()
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits up to `timeout` for a log line containing every one of `needles`.
    pub fn wait_logged(&self, needles: &[&str], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.log_lines(needles) == 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Asserts vpmd logged about `needles` at least once and within its rate limit
    /// (5 lines per 10 s per stream and queue) although it happened `events` times.
    pub fn assert_logged_rate_limited(&self, needles: &[&str], events: u64) {
        let lines = self.log_lines(needles) as u64;
        let windows = self.elapsed().as_secs() / 10 + 1;
        assert!(
            lines >= 1,
            "no log line with {needles:?}; log:\n{}",
            self.vpmd.log()
        );
        assert!(
            lines <= 5 * windows * 2,
            "{lines} log lines with {needles:?} for {events} events: not rate-limited"
        );
    }

    /// Ends the scenario: stops the good transfer, runs `check` on the final stats,
    /// checks pair 1 and cross-pair isolation, stops vpmd and checks it exits 0.
    pub fn finish(mut self, check: impl FnOnce(&Value)) -> GoodReport {
        let report = self.good.take().expect("finished twice").finish();
        assert!(
            self.vpmd.alive(),
            "vpmd died during the attack; log:\n{}",
            self.vpmd.log()
        );
        eprintln!(
            "good pair: {} frames in {} rounds, {:.0} frames/s",
            report.frames,
            report.rounds,
            report.rate()
        );
        let s = self.vpmd.wait_stats(Duration::from_secs(3), |s| {
            counter(s, "g2", "rx_packets") >= report.frames
        });
        let c = |p: &str, f: &str| counter(&s, p, f);
        assert_eq!(c("g1", "tx_packets"), report.frames, "g1 sent: {s}");
        assert_eq!(c("g1", "forwarded"), report.frames, "g1 forwarded: {s}");
        assert_eq!(drops(&s, "g1"), 0, "g1 drops: {s}");
        assert_eq!(c("g2", "rx_packets"), report.frames, "g2 received: {s}");
        assert_eq!(c("g2", "rx_bytes"), report.bytes, "g2 bytes: {s}");
        for p in ["g1", "g2"] {
            assert_eq!(c(p, "ring_errors"), 0, "{p}: {s}");
        }
        assert_eq!(c("g1", "rx_packets"), 0, "frames reached g1: {s}");
        assert_eq!(c("g2", "tx_packets"), 0, "g2 sent: {s}");
        // Pair 2's frames went to pair 2 only (a frame vpmd segmented arrived as its
        // segments, less those the receiver could not take).
        let arrived = |from: &str, to: &str| {
            c(from, "forwarded") + c(from, "offloads.sw_segments")
                - c(from, "offloads.sw_segmented")
                - c(to, "rx_dropped")
        };
        assert_eq!(arrived("h", "p"), c("p", "rx_packets"), "h -> p: {s}");
        assert_eq!(arrived("p", "h"), c("h", "rx_packets"), "p -> h: {s}");
        for p in ["h", "p"] {
            assert_eq!(
                c(p, "tx_packets"),
                c(p, "forwarded") + drops(&s, p),
                "{p}: tx = forwarded + drops: {s}"
            );
        }
        check(&s);
        assert!(
            report.rate() >= MIN_GOOD_RATE,
            "the attack slowed the other pair to {:.0} frames/s",
            report.rate()
        );
        let status = self.vpmd.stop();
        assert!(status.success(), "vpmd exited with {status}");
        report
    }
}

/// A well-behaved frontend on port `p` that sends frames to the hostile port `h`.
pub struct Sender {
    /// The frontend.
    pub fe: NetFrontend,
    seq: u64,
    buf: Vec<u8>,
}

impl Sender {
    /// Connects to `p` and waits until vpmd has it up.
    pub fn connect(vpmd: &Vpmd) -> Sender {
        let fe = NetFrontend::connect(&FrontendOptions::new(vpmd.socket("p")))
            .unwrap_or_else(|e| panic!("p: {:#}", anyhow::Error::from(e)));
        vpmd.wait_up(&["p"]);
        Sender {
            fe,
            seq: 0,
            buf: Vec::new(),
        }
    }

    /// Sends `n` test frames of `len` bytes to h (waits for TX ring room).
    pub fn send(&mut self, n: u64, len: usize) {
        let ep = Endpoints {
            src_mac: mac("p"),
            dst_mac: mac("h"),
            ..Endpoints::default()
        };
        for _ in 0..n {
            frame::build(&mut self.buf, &ep, self.seq, len);
            let deadline = Instant::now() + Duration::from_secs(5);
            while !self.fe.send(&self.buf) {
                assert!(Instant::now() < deadline, "p's TX ring stuck");
                self.fe.wait_tx_done(Duration::from_millis(5));
            }
            self.seq += 1;
        }
        assert!(
            self.fe.wait_tx_done(Duration::from_secs(5)),
            "vpmd did not take p's frames"
        );
    }

    /// Frames p received (drained), each checked to come from h.
    pub fn drain(&mut self) -> u64 {
        let mut n = 0;
        while let Some(f) = self.fe.recv() {
            assert_eq!(&f[6..12], &mac("h"), "p received a frame not from h");
            n += 1;
        }
        n
    }
}

/// A test frame from h to p with sequence number `seq` (128 bytes).
pub fn frame_to_p(seq: u64) -> Vec<u8> {
    let ep = Endpoints {
        src_mac: mac("h"),
        dst_mac: mac("p"),
        ..Endpoints::default()
    };
    let mut buf = Vec::new();
    frame::build(&mut buf, &ep, seq, 128);
    buf
}

/// A well-behaved setup on h works and a frame reaches p.
pub fn h_still_works(sc: &Scenario, p: &mut Sender, seq: u64) {
    let vm = HostileVm::start(&sc.vpmd.socket("h")).expect("well-behaved setup after the attack");
    sc.vpmd.wait_up(&["h"]);
    send_one_h_to_p(&vm, p, seq);
}

/// h (a fresh VM: its TX ring unused so far) sends one frame; it reaches p intact.
pub fn send_one_h_to_p(vm: &HostileVm, p: &mut Sender, seq: u64) {
    let f = frame_to_p(seq);
    let (addr, len) = vm.tx_frame(0, &f);
    let tx = vm.tx_ring();
    tx.set_desc(0, Desc::new(addr, len, 0, 0));
    tx.offer(&[0]);
    assert!(tx.wait_used(1, Duration::from_secs(5)), "frame not taken");
    assert!(p.fe.wait_rx(Duration::from_secs(3)), "frame did not arrive");
    assert_eq!(p.fe.recv().as_deref(), Some(&f[..]));
}
