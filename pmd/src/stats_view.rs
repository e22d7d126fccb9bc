// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `vpmd stats` for people: rates between two snapshots (`--watch`) and the
//! per-thread view (`--pmd`), in the style of OVS's `dpif-netdev/pmd-stats-show`.
//!
//! Everything here is pure formatting of [`Snapshot`]s: [`delta`] turns two of them
//! into what happened in between (counters subtracted, ports matched by name and
//! threads by core, so a port that appeared meanwhile counts from zero and one whose
//! counters went backwards, vpmd having restarted, counts from its new value);
//! [`rates_text`] and [`pmd_text`] print a snapshot or a delta.

use std::fmt::Write as _;

use crate::counters::{PortStats, ThreadStats};
use crate::stats::Snapshot;

/// `a - b`, or `a` if the counter went backwards (a restarted vpmd).
fn sub(a: u64, b: u64) -> u64 {
    a.checked_sub(b).unwrap_or(a)
}

fn port_delta(cur: &PortStats, prev: Option<&PortStats>) -> PortStats {
    let Some(prev) = prev else {
        return cur.clone();
    };
    let faults = cur
        .faults
        .as_ref()
        .map(|f| f.since(&prev.faults.clone().unwrap_or_default()));
    PortStats {
        rx_packets: sub(cur.rx_packets, prev.rx_packets),
        rx_bytes: sub(cur.rx_bytes, prev.rx_bytes),
        tx_packets: sub(cur.tx_packets, prev.tx_packets),
        tx_bytes: sub(cur.tx_bytes, prev.tx_bytes),
        forwarded: sub(cur.forwarded, prev.forwarded),
        rx_dropped: sub(cur.rx_dropped, prev.rx_dropped),
        drops: cur.drops.since(&prev.drops),
        ring_errors: sub(cur.ring_errors, prev.ring_errors),
        offloads: cur.offloads.since(&prev.offloads),
        faults,
        queues: cur.queues.as_ref().map(|qs| {
            qs.iter()
                .map(|q| {
                    let before = prev.queues.iter().flatten().find(|p| p.queue == q.queue);
                    let was = |f: fn(&crate::counters::QueueStats) -> u64| before.map_or(0, f);
                    crate::counters::QueueStats {
                        tx_packets: sub(q.tx_packets, was(|p| p.tx_packets)),
                        tx_dropped: sub(q.tx_dropped, was(|p| p.tx_dropped)),
                        rx_packets: sub(q.rx_packets, was(|p| p.rx_packets)),
                        ..q.clone()
                    }
                })
                .collect()
        }),
        ..cur.clone()
    }
}

fn thread_delta(cur: &ThreadStats, prev: Option<&ThreadStats>) -> ThreadStats {
    let Some(prev) = prev else {
        return cur.clone();
    };
    ThreadStats {
        frames: sub(cur.frames, prev.frames),
        busy_cycles: sub(cur.busy_cycles, prev.busy_cycles),
        idle_cycles: sub(cur.idle_cycles, prev.idle_cycles),
        polls: sub(cur.polls, prev.polls),
        waits: sub(cur.waits, prev.waits),
        woken_by_kick: sub(cur.woken_by_kick, prev.woken_by_kick),
        wait_timeouts: sub(cur.wait_timeouts, prev.wait_timeouts),
        ..cur.clone()
    }
}

/// What happened between `prev` and `cur`: `cur`'s ports and threads, with every
/// counter minus its value in `prev`; states, names and features are `cur`'s.
pub fn delta(prev: &Snapshot, cur: &Snapshot) -> Snapshot {
    Snapshot {
        ports: cur
            .ports
            .iter()
            .map(|p| port_delta(p, prev.ports.iter().find(|q| q.name == p.name)))
            .collect(),
        threads: cur
            .threads
            .iter()
            .map(|t| thread_delta(t, prev.threads.iter().find(|u| u.core == t.core)))
            .collect(),
    }
}

/// A rate, human-sized: `12.3M`, `4.56k`, `789`.
fn human(rate: f64) -> String {
    if rate >= 1e9 {
        format!("{:.2}G", rate / 1e9)
    } else if rate >= 1e6 {
        format!("{:.2}M", rate / 1e6)
    } else if rate >= 1e4 {
        format!("{:.1}k", rate / 1e3)
    } else {
        format!("{rate:.0}")
    }
}

/// A share in percent, or 0 of nothing.
fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// `a / b` with two decimals, or `-` when `b` is 0.
fn ratio(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.2}", a as f64 / b as f64)
    }
}

/// The `--watch` screen: per-port rates over `secs` seconds (`d` from [`delta`]),
/// then each polling thread's load over the same time.
pub fn rates_text(d: &Snapshot, secs: f64) -> String {
    let secs = if secs > 0.0 { secs } else { 1.0 };
    let rate = |n: u64| human(n as f64 / secs);
    let bits = |n: u64| human(n as f64 * 8.0 / secs);
    let mut out = String::new();
    let w = d.name_width();
    let _ = writeln!(
        out,
        "{:<w$}  {:<5}  {:>9} {:>9}  {:>9} {:>9}  {:>9}  DROP REASONS (per s)",
        "PORT", "STATE", "RX pps", "RX bit/s", "TX pps", "TX bit/s", "DROPS/s"
    );
    for p in &d.ports {
        let reasons: Vec<String> = p
            .drops
            .pairs()
            .iter()
            .filter(|(_, v)| *v != 0)
            .map(|(n, v)| format!("{n}={}", rate(*v)))
            .collect();
        let _ = writeln!(
            out,
            "{:<w$}  {:<5}  {:>9} {:>9}  {:>9} {:>9}  {:>9}  {}",
            p.name,
            p.state,
            rate(p.rx_packets),
            bits(p.rx_bytes),
            rate(p.tx_packets),
            bits(p.tx_bytes),
            rate(p.drops.total()),
            reasons.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "\n{:<6}  {:>9}  {:>6}  {:>12}  {:>9}  STREAMS",
        "CORE", "frames/s", "busy", "cycles/frame", "polls/s"
    );
    for t in &d.threads {
        let _ = writeln!(
            out,
            "{:<6}  {:>9}  {:>5.1}%  {:>12}  {:>9}  {}",
            t.core,
            rate(t.frames),
            share(t.busy_cycles, t.busy_cycles + t.idle_cycles),
            ratio(t.busy_cycles, t.frames),
            rate(t.polls),
            t.streams.join(", ")
        );
    }
    out
}

/// The ports a thread's streams touch, in the order they first appear.
fn thread_ports(t: &ThreadStats) -> Vec<&str> {
    let mut ports: Vec<&str> = Vec::new();
    for s in &t.streams {
        let names = match crate::fwd::veth::stream_ports(s) {
            Some((src, dst, _)) => vec![src, dst],
            None => vec![s.as_str()],
        };
        for p in names {
            if !p.is_empty() && !ports.contains(&p) {
                ports.push(p);
            }
        }
    }
    ports
}

/// The queue view (`vpmd pmd`), like `ovs-appctl dpif-netdev/pmd-rxq-show`: for each
/// polling thread its busy share and the queues it polls, each with the frames
/// taken from it and dropped. A veth stream polls one TX queue of its sending port
/// (queue-id: the pair); a macvlan shard polls one RX queue of its uplink and the TX
/// queues of the VM ports it was given.
pub fn rxq_text(snap: &Snapshot) -> String {
    let mut out = String::new();
    for t in &snap.threads {
        let _ = writeln!(
            out,
            "pmd thread core {}:\n  busy: {:.1}% of {} cycles",
            t.core,
            share(t.busy_cycles, t.busy_cycles + t.idle_cycles),
            t.busy_cycles + t.idle_cycles
        );
        if t.streams.is_empty() {
            let _ = writeln!(out, "  (no queues)");
        }
        for s in &t.streams {
            let Some((src, dst, pair)) = crate::fwd::veth::stream_ports(s) else {
                macvlan_shard_lines(snap, s, &mut out);
                continue;
            };
            let (taken, dropped) = queue_figures(snap, src, pair);
            let _ = writeln!(
                out,
                "  port: {src:<12} queue-id: {pair:>2}  to: {dst:<12} frames: {taken}  dropped: {dropped}"
            );
        }
    }
    out
}

/// Frames taken from port `name`'s TX queue of pair `pair`, and of them dropped (the
/// port's totals for a port of one queue pair).
fn queue_figures(snap: &Snapshot, name: &str, pair: usize) -> (u64, u64) {
    let port = snap.ports.iter().find(|p| p.name == name);
    let queue = port.and_then(|p| p.queues.as_ref()?.iter().find(|q| q.queue as usize == pair));
    match (port, queue) {
        (_, Some(q)) => (q.tx_packets, q.tx_dropped),
        (Some(p), None) => (p.tx_packets, p.drops.total()),
        (None, None) => (0, 0),
    }
}

/// The lines of macvlan shard `shard` ("uplink/qK"): its AF_XDP queue and the VM TX
/// queues it was dealt.
fn macvlan_shard_lines(snap: &Snapshot, shard: &str, out: &mut String) {
    let (uplink, k) = match shard.rsplit_once("/q") {
        Some((u, k)) => (u, k.parse::<usize>().unwrap_or(0)),
        None => (shard, 0),
    };
    let _ = writeln!(
        out,
        "  uplink: {uplink:<10} queue-id: {k:>2}  (macvlan shard {shard})"
    );
    let Some(info) = snap
        .ports
        .iter()
        .find(|p| p.name == uplink)
        .and_then(|p| p.uplink.as_ref())
    else {
        return;
    };
    let pairs: Vec<usize> = info
        .ports
        .iter()
        .map(|n| {
            snap.ports
                .iter()
                .find(|p| p.name == *n)
                .and_then(|p| p.queues.as_ref().map(Vec::len))
                .unwrap_or(1)
        })
        .collect();
    for (i, pair) in crate::fwd::macvlan::ports::owned_queues(&pairs, info.queues as usize, k) {
        let name = &info.ports[i];
        let (taken, dropped) = queue_figures(snap, name, pair);
        let _ = writeln!(
            out,
            "  port: {name:<12} queue-id: {pair:>2}  to: {uplink:<12} frames: {taken}  dropped: {dropped}"
        );
    }
}

/// The per-thread view (`vpmd stats --pmd`), like `ovs-appctl dpif-netdev/pmd-stats-show`:
/// for each polling thread its frames, polls, idle and busy cycles with their shares,
/// cycles per frame and per poll, and the ports it serves with their counters.
/// Of a [`delta`], it shows the interval.
pub fn pmd_text(snap: &Snapshot) -> String {
    let mut out = String::new();
    for t in &snap.threads {
        let total = t.busy_cycles + t.idle_cycles;
        let _ = writeln!(out, "pmd thread core {}:", t.core);
        let _ = writeln!(out, "  frames: {}", t.frames);
        let _ = writeln!(out, "  polls: {}", t.polls);
        let _ = writeln!(
            out,
            "  sleeps until kicked: {} ({} ended by a kick, {} timed out)",
            t.waits, t.woken_by_kick, t.wait_timeouts
        );
        let _ = writeln!(out, "  avg. frames per poll: {}", ratio(t.frames, t.polls));
        let _ = writeln!(
            out,
            "  idle cycles: {} ({:.2}%)",
            t.idle_cycles,
            share(t.idle_cycles, total)
        );
        let _ = writeln!(
            out,
            "  busy cycles: {} ({:.2}%)",
            t.busy_cycles,
            share(t.busy_cycles, total)
        );
        let _ = writeln!(
            out,
            "  avg. cycles per frame: {} ({}/{})",
            ratio(total, t.frames),
            total,
            t.frames
        );
        let _ = writeln!(
            out,
            "  avg. busy cycles per frame: {} ({}/{})",
            ratio(t.busy_cycles, t.frames),
            t.busy_cycles,
            t.frames
        );
        let _ = writeln!(out, "  avg. cycles per poll: {}", ratio(total, t.polls));
        if t.tsc_hz > 0 {
            let _ = writeln!(
                out,
                "  time: {:.3} s at {:.2} GHz TSC",
                total as f64 / t.tsc_hz as f64,
                t.tsc_hz as f64 / 1e9
            );
        }
        let _ = writeln!(out, "  streams: {}", t.streams.join(", "));
        for name in thread_ports(t) {
            match snap.ports.iter().find(|p| p.name == name) {
                Some(p) => {
                    let _ = writeln!(
                        out,
                        "  port {}: {}  rx {} frames {} bytes  tx {} frames {} bytes  forwarded {}  drops {}",
                        p.name,
                        p.state,
                        p.rx_packets,
                        p.rx_bytes,
                        p.tx_packets,
                        p.tx_bytes,
                        p.forwarded,
                        p.drops.total()
                    );
                }
                None => {
                    let _ = writeln!(out, "  port {name}: (no counters)");
                }
            }
        }
    }
    if snap.threads.is_empty() {
        out.push_str("no polling threads\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{DropCounts, FaultCounts};

    fn port(name: &str, tx: u64, peer_down: u64) -> PortStats {
        PortStats {
            name: name.into(),
            kind: "vhost-user".into(),
            state: "up".into(),
            rx_packets: tx / 2,
            rx_bytes: tx * 30,
            tx_packets: tx,
            tx_bytes: tx * 60,
            forwarded: tx - peer_down,
            rx_dropped: 0,
            drops: DropCounts {
                peer_down,
                ..Default::default()
            },
            ring_errors: 0,
            offloads: Default::default(),
            faults: Some(FaultCounts::default()),
            uplink: None,
            features: None,
            queues: None,
        }
    }

    fn thread(frames: u64, busy: u64, idle: u64, polls: u64) -> ThreadStats {
        ThreadStats {
            core: 1,
            streams: vec!["vm0->vm1".into(), "vm1->vm0".into()],
            frames,
            busy_cycles: busy,
            idle_cycles: idle,
            polls,
            waits: 0,
            woken_by_kick: 0,
            wait_timeouts: 0,
            tsc_hz: 2_000_000_000,
        }
    }

    fn snap(tx: u64, peer_down: u64, t: ThreadStats) -> Snapshot {
        Snapshot {
            ports: vec![port("vm0", tx, peer_down), port("vm1", tx, 0)],
            threads: vec![t],
        }
    }

    #[test]
    fn delta_subtracts_every_counter() {
        let a = snap(1000, 10, thread(2000, 100_000, 900_000, 500));
        let b = snap(3000, 30, thread(6000, 400_000, 1_600_000, 1500));
        let d = delta(&a, &b);
        let p = &d.ports[0];
        assert_eq!((p.tx_packets, p.tx_bytes), (2000, 120_000));
        assert_eq!((p.rx_packets, p.forwarded), (1000, 1980));
        assert_eq!(p.drops.peer_down, 20);
        let t = &d.threads[0];
        assert_eq!(
            (t.frames, t.busy_cycles, t.idle_cycles, t.polls),
            (4000, 300_000, 700_000, 1000)
        );
    }

    #[test]
    fn delta_of_a_new_port_or_a_restart_counts_from_its_value() {
        let a = Snapshot {
            ports: vec![port("vm0", 5000, 0)],
            threads: vec![thread(10, 10, 10, 10)],
        };
        let b = snap(100, 0, thread(5, 1, 1, 1));
        let d = delta(&a, &b);
        assert_eq!(d.ports[0].tx_packets, 100, "went backwards: restarted");
        assert_eq!(d.ports[1].tx_packets, 100, "new port");
        assert_eq!(d.threads[0].frames, 5);
    }

    #[test]
    fn rates_are_per_second() {
        let a = snap(0, 0, thread(0, 0, 0, 0));
        let b = snap(2_000_000, 4000, thread(4_000_000, 300, 700, 20_000));
        let t = rates_text(&delta(&a, &b), 2.0);
        // vm0: 1 Mpps taken, 60 B each = 480 Mbit/s; 2000 drops/s, all peer_down.
        let vm0 = t.lines().find(|l| l.starts_with("vm0")).unwrap();
        let cols: Vec<&str> = vm0.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "vm0",
                "up",
                "500.0k",
                "240.00M",
                "1.00M",
                "480.00M",
                "2000",
                "peer_down=2000"
            ],
            "{t}"
        );
        let core = t.lines().find(|l| l.starts_with("1 ")).unwrap();
        let cols: Vec<&str> = core.split_whitespace().collect();
        assert_eq!(cols[..5], ["1", "2.00M", "30.0%", "0.00", "10.0k"], "{t}");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0.0), "0");
        assert_eq!(human(9999.0), "9999");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(7_654_321.0), "7.65M");
        assert_eq!(human(2.5e9), "2.50G");
    }

    #[test]
    fn pmd_view_in_the_style_of_ovs() {
        let t = pmd_text(&snap(1000, 0, thread(400, 30_000, 70_000, 1000)));
        for line in [
            "pmd thread core 1:",
            "  frames: 400",
            "  polls: 1000",
            "  sleeps until kicked: 0 (0 ended by a kick, 0 timed out)",
            "  avg. frames per poll: 0.40",
            "  idle cycles: 70000 (70.00%)",
            "  busy cycles: 30000 (30.00%)",
            "  avg. cycles per frame: 250.00 (100000/400)",
            "  avg. busy cycles per frame: 75.00 (30000/400)",
            "  avg. cycles per poll: 100.00",
            "  streams: vm0->vm1, vm1->vm0",
        ] {
            assert!(t.lines().any(|l| l == line), "no {line:?} in\n{t}");
        }
        assert!(t.contains("  port vm0: up  rx 500 frames"), "{t}");
        assert!(t.contains("  port vm1: up"), "{t}");
        let idle = pmd_text(&snap(0, 0, thread(0, 0, 0, 0)));
        assert!(idle.contains("avg. cycles per frame: - (0/0)"), "{idle}");
    }
}
