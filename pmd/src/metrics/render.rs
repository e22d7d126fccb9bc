// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Prometheus text exposition format (version 0.0.4) of one [`Snapshot`]: every
//! family with its `# HELP` and `# TYPE` once, then its samples.

use std::fmt::Write as _;

use crate::counters::{FaultCounts, PortStats, QueueStats, XskKernelCounts};
use crate::stats::Snapshot;

/// A port's counters of one group, by name.
type PortPairs = fn(&PortStats) -> Vec<(&'static str, u64)>;

/// A label value escaped as the text format wants (`\\`, `\"`, `\n`).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes metric families: a `# HELP` and `# TYPE` once per name, then its samples.
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A port counter family: name, help, and how to read it from a port.
type PortCounter = (
    &'static str,
    &'static str,
    fn(&crate::counters::PortStats) -> u64,
);

const PORT_COUNTERS: [PortCounter; 7] = [
    (
        "vpmd_port_rx_packets_total",
        "Frames vpmd delivered into the port's guest RX queue (uplink: sent out of it).",
        |p| p.rx_packets,
    ),
    (
        "vpmd_port_rx_bytes_total",
        "Ethernet bytes of rx_packets.",
        |p| p.rx_bytes,
    ),
    (
        "vpmd_port_tx_packets_total",
        "Frames vpmd took from the port's guest TX queue (uplink: brought in).",
        |p| p.tx_packets,
    ),
    (
        "vpmd_port_tx_bytes_total",
        "Ethernet bytes of tx_packets.",
        |p| p.tx_bytes,
    ),
    (
        "vpmd_port_forwarded_total",
        "Frames taken from the port that reached at least one destination.",
        |p| p.forwarded,
    ),
    (
        "vpmd_port_rx_dropped_total",
        "Copies of flooded frames for this port that its RX queue could not take.",
        |p| p.rx_dropped,
    ),
    (
        "vpmd_port_ring_errors_total",
        "Bursts in which one of the port's rings broke the virtio rules.",
        |p| p.ring_errors,
    ),
];

/// The Prometheus text of one snapshot.
pub fn render(snap: &Snapshot) -> String {
    let mut w = Writer { out: String::new() };
    w.family(
        "vpmd_build_info",
        "gauge",
        "vpmd's version, as a label; always 1.",
    );
    w.sample(
        "vpmd_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    w.family(
        "vpmd_port_up",
        "gauge",
        "1 while the port's guest driver runs its queues (uplink: while attached), else 0.",
    );
    for p in &snap.ports {
        w.sample(
            "vpmd_port_up",
            &[("port", &p.name), ("kind", &p.kind)],
            u8::from(p.state == "up"),
        );
    }
    for (name, help, get) in PORT_COUNTERS {
        w.family(name, "counter", help);
        for p in &snap.ports {
            w.sample(name, &[("port", &p.name)], get(p));
        }
    }
    // Counters by reason / kind / fault: one series per name of each group.
    let groups: [(&str, &str, &str, PortPairs); 3] = [
        (
            "vpmd_port_drops_total",
            "Frames taken from the port and delivered nowhere, by reason.",
            "reason",
            |p| p.drops.pairs().to_vec(),
        ),
        (
            "vpmd_port_offloads_total",
            "Offload work for frames the port sent (and checksums of frames from an uplink), by kind.",
            "kind",
            |p| p.offloads.pairs().to_vec(),
        ),
        (
            "vpmd_port_faults_total",
            "What the port's frontends did to the files they share with vpmd, by fault (VM ports).",
            "fault",
            |p| p.faults.iter().flat_map(FaultCounts::pairs).collect(),
        ),
    ];
    for (name, help, label, pairs) in groups {
        w.family(name, "counter", help);
        for p in &snap.ports {
            for (what, v) in pairs(p) {
                w.sample(name, &[("port", &p.name), (label, what)], v);
            }
        }
    }
    w.family(
        "vpmd_port_feature_negotiated",
        "gauge",
        "1 for each virtio feature vpmd offers that the guest driver took, else 0 (VM ports with rings started).",
    );
    for p in &snap.ports {
        if let Some(taken) = &p.features {
            for (_, feature) in vpmd_backend::features::OFFERED_NAMES {
                w.sample(
                    "vpmd_port_feature_negotiated",
                    &[("port", &p.name), ("feature", feature)],
                    u8::from(taken.iter().any(|t| t == feature)),
                );
            }
        }
    }
    // Per queue pair of multi-queue ports: TX queue taken / dropped, RX delivered.
    type QueueCounter = (&'static str, &'static str, fn(&QueueStats) -> u64);
    let queue_counters: [QueueCounter; 3] = [
        (
            "vpmd_port_queue_tx_packets_total",
            "Frames taken from a queue pair's TX queue (ports with more than one pair).",
            |q| q.tx_packets,
        ),
        (
            "vpmd_port_queue_tx_dropped_total",
            "Of the frames taken from a queue pair's TX queue, those dropped.",
            |q| q.tx_dropped,
        ),
        (
            "vpmd_port_queue_rx_packets_total",
            "Frames delivered into a queue pair's RX queue (steered by flow hash).",
            |q| q.rx_packets,
        ),
    ];
    for (name, help, read) in queue_counters {
        w.family(name, "counter", help);
        for p in &snap.ports {
            for q in p.queues.iter().flatten() {
                w.sample(
                    name,
                    &[("port", &p.name), ("queue", &q.queue.to_string())],
                    read(q),
                );
            }
        }
    }
    w.family(
        "vpmd_uplink_info",
        "gauge",
        "How a macvlan uplink is attached (XDP mode, AF_XDP socket mode, macvlan mode); always 1.",
    );
    for p in &snap.ports {
        if let Some(u) = &p.uplink {
            w.sample(
                "vpmd_uplink_info",
                &[
                    ("port", &p.name),
                    ("xdp", &u.xdp),
                    ("socket_mode", &u.socket_mode),
                    ("macvlan_mode", &u.macvlan_mode),
                ],
                1,
            );
        }
    }
    w.family(
        "vpmd_uplink_queues",
        "gauge",
        "AF_XDP sockets of a macvlan uplink, one per RX queue.",
    );
    for p in &snap.ports {
        if let Some(u) = &p.uplink {
            w.sample("vpmd_uplink_queues", &[("port", &p.name)], u.queues);
        }
    }
    for (counter, help) in XSK_KERNEL_HELP {
        let name = format!("vpmd_uplink_xsk_{counter}_total");
        w.family(&name, "counter", help);
        for p in &snap.ports {
            if let Some(k) = p.uplink.as_ref().and_then(|u| u.xsk_kernel.as_ref()) {
                let v = k
                    .pairs()
                    .iter()
                    .find(|(n, _)| *n == counter)
                    .map_or(0, |p| p.1);
                w.sample(&name, &[("port", &p.name)], v);
            }
        }
    }
    render_threads(&mut w, snap);
    w.out
}

/// The help text of each `XDP_STATISTICS` counter, in [`XskKernelCounts::NAMES`] order.
const XSK_KERNEL_HELP: [(&str, &str); XskKernelCounts::NAMES.len()] = [
    ("rx_dropped", "Kernel (XDP_STATISTICS): frames an uplink's AF_XDP sockets dropped for lack of a fill-ring chunk or room in one."),
    ("rx_invalid_descs", "Kernel (XDP_STATISTICS): RX descriptors found invalid."),
    ("tx_invalid_descs", "Kernel (XDP_STATISTICS): TX descriptors found invalid."),
    ("rx_ring_full", "Kernel (XDP_STATISTICS): frames dropped because an AF_XDP RX ring was full."),
    ("rx_fill_ring_empty_descs", "Kernel (XDP_STATISTICS): times the fill ring was found empty."),
    ("tx_ring_empty_descs", "Kernel (XDP_STATISTICS): times the TX ring was found empty when asked to send."),
];

fn render_threads(w: &mut Writer, snap: &Snapshot) {
    let cores: Vec<String> = snap.threads.iter().map(|t| t.core.to_string()).collect();
    type ThreadCounter = (
        &'static str,
        &'static str,
        fn(&crate::counters::ThreadStats) -> u64,
    );
    const THREAD_COUNTERS: [ThreadCounter; 7] = [
        (
            "vpmd_pmd_frames_total",
            "Frames the polling thread moved (delivered or dropped).",
            |t| t.frames,
        ),
        (
            "vpmd_pmd_busy_cycles_total",
            "TSC cycles the polling thread spent in polls that moved frames.",
            |t| t.busy_cycles,
        ),
        (
            "vpmd_pmd_idle_cycles_total",
            "TSC cycles the polling thread spent in polls that moved nothing.",
            |t| t.idle_cycles,
        ),
        (
            "vpmd_pmd_polls_total",
            "Polls (rounds over all its streams) the polling thread made.",
            |t| t.polls,
        ),
        (
            "vpmd_pmd_waits_total",
            "Times the polling thread slept until a guest kicked (adaptive polling).",
            |t| t.waits,
        ),
        (
            "vpmd_pmd_woken_by_kick_total",
            "Sleeps of the polling thread that a guest's kick ended.",
            |t| t.woken_by_kick,
        ),
        (
            "vpmd_pmd_wait_timeouts_total",
            "Sleeps of the polling thread that nothing ended before 100 ms.",
            |t| t.wait_timeouts,
        ),
    ];
    for (name, help, get) in THREAD_COUNTERS {
        w.family(name, "counter", help);
        for (t, core) in snap.threads.iter().zip(&cores) {
            w.sample(name, &[("core", core)], get(t));
        }
    }
    w.family(
        "vpmd_pmd_stream_info",
        "gauge",
        "The streams (source->destination) each polling thread polls; always 1.",
    );
    for (t, core) in snap.threads.iter().zip(&cores) {
        for s in &t.streams {
            w.sample("vpmd_pmd_stream_info", &[("core", core), ("stream", s)], 1);
        }
    }
    w.family(
        "vpmd_tsc_hz",
        "gauge",
        "TSC cycles per second, to turn the cycle counters into time.",
    );
    if let Some(t) = snap.threads.first() {
        w.sample("vpmd_tsc_hz", &[], t.tsc_hz);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{DropCounts, PortStats, ThreadStats};
    use crate::stats::UplinkInfo;

    fn port(name: &str) -> PortStats {
        PortStats {
            name: name.into(),
            kind: "vhost-user".into(),
            state: "up".into(),
            rx_packets: 10,
            rx_bytes: 600,
            tx_packets: 12,
            tx_bytes: 720,
            forwarded: 9,
            rx_dropped: 1,
            drops: DropCounts {
                peer_down: 2,
                too_big: 1,
                ..Default::default()
            },
            ring_errors: 0,
            offloads: Default::default(),
            faults: Some(FaultCounts {
                throttled: 4,
                ..Default::default()
            }),
            uplink: None,
            features: Some(vec!["VERSION_1".into(), "EVENT_IDX".into()]),
            queues: None,
        }
    }

    fn sample() -> Snapshot {
        let mut uplink = port("eth\"1");
        uplink.kind = "uplink".into();
        uplink.faults = None;
        uplink.features = None;
        uplink.uplink = Some(UplinkInfo {
            xdp: "driver".into(),
            socket_mode: "copy".into(),
            queues: 1,
            macvlan_mode: "bridge".into(),
            checksums: "fix".into(),
            max_frame: 1518,
            multi_buffer: true,
            tx_checksum_offload: true,
            ports: vec!["vm0".into()],
            port_list: Default::default(),
            xsk_kernel: Some(XskKernelCounts {
                rx_ring_full: 7,
                ..Default::default()
            }),
            sockets: Default::default(),
        });
        let mut down = port("vm1");
        down.state = "down".into();
        down.features = None;
        let mut mq = port("vm0");
        mq.queues = Some(
            (0..2)
                .map(|q| QueueStats {
                    queue: q,
                    core: Some(1),
                    tx_packets: 6,
                    tx_dropped: 2 - u64::from(q),
                    rx_packets: 5,
                })
                .collect(),
        );
        Snapshot {
            ports: vec![mq, down, uplink],
            threads: vec![ThreadStats {
                core: 1,
                streams: vec!["vm0->vm1".into(), "vm1->vm0".into()],
                frames: 22,
                busy_cycles: 3000,
                idle_cycles: 7000,
                polls: 99,
                waits: 0,
                woken_by_kick: 0,
                wait_timeouts: 0,
                tsc_hz: 2_000_000_000,
            }],
        }
    }

    #[test]
    fn renders_every_counter_with_labels() {
        let t = render(&sample());
        for line in [
            "vpmd_port_up{port=\"vm0\",kind=\"vhost-user\"} 1",
            "vpmd_port_up{port=\"vm1\",kind=\"vhost-user\"} 0",
            "vpmd_port_rx_packets_total{port=\"vm0\"} 10",
            "vpmd_port_rx_bytes_total{port=\"vm0\"} 600",
            "vpmd_port_tx_packets_total{port=\"vm0\"} 12",
            "vpmd_port_tx_bytes_total{port=\"vm0\"} 720",
            "vpmd_port_forwarded_total{port=\"vm0\"} 9",
            "vpmd_port_rx_dropped_total{port=\"vm0\"} 1",
            "vpmd_port_drops_total{port=\"vm0\",reason=\"peer_down\"} 2",
            "vpmd_port_drops_total{port=\"vm0\",reason=\"too_big\"} 1",
            "vpmd_port_faults_total{port=\"vm0\",fault=\"throttled\"} 4",
            "vpmd_port_feature_negotiated{port=\"vm0\",feature=\"EVENT_IDX\"} 1",
            "vpmd_port_feature_negotiated{port=\"vm0\",feature=\"MRG_RXBUF\"} 0",
            "vpmd_uplink_info{port=\"eth\\\"1\",xdp=\"driver\",socket_mode=\"copy\",macvlan_mode=\"bridge\"} 1",
            "vpmd_uplink_queues{port=\"eth\\\"1\"} 1",
            "vpmd_uplink_xsk_rx_ring_full_total{port=\"eth\\\"1\"} 7",
            "vpmd_uplink_xsk_rx_dropped_total{port=\"eth\\\"1\"} 0",
            "vpmd_pmd_frames_total{core=\"1\"} 22",
            "vpmd_pmd_busy_cycles_total{core=\"1\"} 3000",
            "vpmd_pmd_idle_cycles_total{core=\"1\"} 7000",
            "vpmd_pmd_polls_total{core=\"1\"} 99",
            "vpmd_pmd_stream_info{core=\"1\",stream=\"vm1->vm0\"} 1",
            "vpmd_tsc_hz 2000000000",
            "vpmd_port_queue_tx_packets_total{port=\"vm0\",queue=\"1\"} 6",
            "vpmd_port_queue_tx_dropped_total{port=\"vm0\",queue=\"0\"} 2",
            "vpmd_port_queue_rx_packets_total{port=\"vm0\",queue=\"1\"} 5",
        ] {
            assert!(t.lines().any(|l| l == line), "no line {line:?} in\n{t}");
        }
        // Every reason for every port, from the one list; no features for a port
        // without rings, no faults for an uplink.
        for reason in DropCounts::NAMES {
            for p in ["vm0", "vm1", "eth\\\"1"] {
                let l = format!("vpmd_port_drops_total{{port=\"{p}\",reason=\"{reason}\"}}");
                assert!(t.contains(&l), "{l}");
            }
        }
        assert!(!t.contains("feature_negotiated{port=\"vm1\""));
        assert!(!t.contains("faults_total{port=\"eth"));
    }

    #[test]
    fn every_family_has_help_and_type_once_before_its_samples() {
        let t = render(&sample());
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} declared twice");
                current = name;
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                let mut w = rest.split(' ');
                assert_eq!(w.next().unwrap(), current);
                let kind = w.next().unwrap();
                assert!(kind == "counter" || kind == "gauge");
                assert_eq!(kind == "counter", current.ends_with("_total"), "{current}");
            } else {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample {l:?} outside its family");
            }
        }
    }

    /// docs/interfaces.md names every metric family served.
    #[test]
    fn the_docs_name_every_family() {
        let doc = include_str!("../../../docs/interfaces.md");
        for l in render(&sample()).lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    doc.contains(&format!("`{name}`")) || doc.contains(&format!("`{name}{{")),
                    "docs/interfaces.md does not name metric {name}"
                );
            }
        }
    }

    #[test]
    fn xsk_help_follows_the_counter_names() {
        let names: Vec<&str> = XSK_KERNEL_HELP.iter().map(|h| h.0).collect();
        assert_eq!(names, XskKernelCounts::NAMES);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
