// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Adaptive polling (the default, `[pmd] sleep_after_us = 1000`): a polling thread
//! with nothing to move sleeps until a guest kicks, costs next to no CPU meanwhile,
//! and the first kick wakes it with nothing lost.
//!
//! Driven by vpmd-bench's `NetFrontend`, a virtio-net driver that kicks only when
//! the device asks (VRING_USED_F_NO_NOTIFY, or avail_event with EVENT_IDX), as
//! Linux's and DPDK's do. The QEMU and DPDK system tests run on the same default.

mod common;

use std::time::Duration;

use common::{assert_accounting, counter, drops, pair_mac, pairs_config, serial, Vpmd};
use serde_json::Value;
use vpmd_bench::transfer::{transfer, TransferSpec};
use vpmd_bench::{FrontendOptions, NetFrontend};

fn connect(socket: std::path::PathBuf) -> NetFrontend {
    NetFrontend::connect(&FrontendOptions::new(socket))
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

/// The only polling thread's (sleeps, sleeps a kick ended, sleeps that timed out).
fn waits(s: &Value) -> (u64, u64, u64) {
    let t = &s["threads"][0];
    let get = |f: &str| t[f].as_u64().unwrap_or_else(|| panic!("no {f}: {t}"));
    (get("waits"), get("woken_by_kick"), get("wait_timeouts"))
}

/// CPU time (user + system, in clock ticks) vpmd's thread named `comm` has used.
fn thread_ticks(pid: u32, comm: &str) -> u64 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("vpmd's tasks") {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).expect("task stat");
        // Fields after the command, which ends at the last ')': state is field 3,
        // utime field 14, stime field 15.
        let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        return rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    }
    panic!("vpmd has no thread named {comm}");
}

#[test]
fn an_idle_thread_sleeps_and_the_first_kick_wakes_it() {
    let _serial = serial();
    let mut vpmd = Vpmd::start("adaptive", pairs_config(1));
    let mut a = connect(vpmd.socket("p0a"));
    let mut b = connect(vpmd.socket("p0b"));
    vpmd.wait_up(&["p0a", "p0b"]);
    let core = vpmd.stats()["threads"][0]["core"].as_u64().unwrap();
    let comm = format!("pmd-core{core}");

    // Idle: the thread sleeps, and its CPU time stays a small fraction of the
    // window (busy polling would use all of it: 50 ticks in 0.5 s at 100 Hz).
    let (w0, _, _) = waits(&vpmd.stats());
    let t0 = thread_ticks(vpmd.pid(), &comm);
    std::thread::sleep(Duration::from_millis(500));
    let ticks = thread_ticks(vpmd.pid(), &comm) - t0;
    let (w1, _, _) = waits(&vpmd.stats());
    assert!(w1 > w0, "the idle thread never slept (waits {w0} -> {w1})");
    assert!(
        ticks <= 15,
        "the idle polling thread used {ticks} of ~50 clock ticks in 0.5 s"
    );

    // Traffic after idle pauses longer than sleep_after_us: each round finds the
    // thread asleep, its first frame's kick wakes it, and every frame arrives in
    // order (transfer checks each sequence number and payload).
    const ROUNDS: u64 = 40;
    const FRAMES: u64 = 32;
    let (w_before, k_before, to_before) = waits(&vpmd.stats());
    for r in 0..ROUNDS {
        std::thread::sleep(Duration::from_millis(5));
        let (tx, rx, dst, src) = if r % 2 == 0 {
            (&mut a, &mut b, pair_mac(0, 'b'), pair_mac(0, 'a'))
        } else {
            (&mut b, &mut a, pair_mac(0, 'a'), pair_mac(0, 'b'))
        };
        let spec = TransferSpec {
            count: FRAMES,
            sizes: vec![60, 1514, 300],
            dst,
            src,
            first_seq: r * FRAMES,
            window: FRAMES,
            idle_timeout: Duration::from_secs(5),
        };
        transfer(tx, rx, &spec).unwrap_or_else(|e| panic!("round {r}: {e}"));
    }
    let s = vpmd.stats();
    let (w_after, k_after, to_after) = waits(&s);
    // The pauses put it to sleep, and the frontend's kicks, not the 100 ms safety
    // net, woke it.
    assert!(
        k_after - k_before >= ROUNDS / 2,
        "{} of {} sleeps in {ROUNDS} pauses were ended by a kick",
        k_after - k_before,
        w_after - w_before
    );
    assert!(
        to_after - to_before <= 2,
        "{} of {} sleeps during the rounds ended by the 100 ms safety net, not a kick",
        to_after - to_before,
        w_after - w_before
    );
    for (p, q) in [("p0a", "p0b"), ("p0b", "p0a")] {
        assert_eq!(counter(&s, p, "tx_packets"), ROUNDS / 2 * FRAMES, "{s}");
        assert_eq!(drops(&s, p), 0, "{s}");
        assert_accounting(&s, p, q);
    }
    assert!(vpmd.stop().success());
}
