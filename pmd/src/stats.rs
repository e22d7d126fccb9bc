// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What `vpmd stats` shows: a [`Snapshot`] of every port and polling thread, as JSON
//! (the contract in docs/interfaces.md) or as a table for people.

use std::fmt::Write as _;
use std::sync::{Arc, PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use vpmd_backend::port::VirtioNetPort;

use crate::counters::{
    FaultCounts, PortCounters, PortStats, ThreadCounters, ThreadStats, XskKernelCounts,
};

/// Every counter of a running vpmd at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Ports, in configuration order.
    pub ports: Vec<PortStats>,
    /// Polling threads.
    pub threads: Vec<ThreadStats>,
}

/// A port as the stats see it.
pub struct PortEntry {
    /// Its name.
    pub name: String,
    /// What it is, and where its state comes from.
    pub kind: PortKind,
    /// Its counters.
    pub counters: Arc<PortCounters>,
}

/// The kinds of port.
pub enum PortKind {
    /// A VM's vhost-user port: up while its driver runs the queues.
    Vhost(Arc<VirtioNetPort>),
    /// A macvlan's AF_XDP uplink: up while vpmd runs (it is attached at start-up).
    Uplink(UplinkInfo),
}

/// How an uplink is attached, shown with its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkInfo {
    /// "native" (driver) or "generic" (skb) XDP.
    pub xdp: String,
    /// "zerocopy" or "copy" AF_XDP sockets.
    pub socket_mode: String,
    /// AF_XDP sockets, one per RX queue.
    pub queues: u32,
    /// macvlan mode.
    pub macvlan_mode: String,
    /// What is done with TCP/UDP checksums of frames from the uplink: "trust",
    /// "fix" or "verify".
    #[serde(default)]
    pub checksums: String,
    /// Largest frame sent out of it: its MTU + 18, at most what its sockets carry
    /// (a UMEM chunk, or 16 of them with multi-buffer).
    #[serde(default)]
    pub max_frame: u32,
    /// Frames larger than a UMEM chunk come and go in several (AF_XDP
    /// multi-buffer, `XDP_USE_SG`): what jumbo MTUs need.
    #[serde(default)]
    pub multi_buffer: bool,
    /// Frames leave with their TCP/UDP checksums for the kernel or NIC to fill in
    /// (AF_XDP transmit metadata); else vpmd fills them in.
    #[serde(default)]
    pub tx_checksum_offload: bool,
    /// The macvlan's VM ports, in the order the shards deal out their queues (in
    /// snapshots).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Where those are read from: kept current by the control plane when ports move
    /// onto or off the macvlan (not part of snapshots).
    #[serde(skip)]
    pub port_list: SharedNames,
    /// The kernel's `XDP_STATISTICS` of the AF_XDP sockets, summed (in snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xsk_kernel: Option<XskKernelCounts>,
    /// Where those are read from (not part of snapshots).
    #[serde(skip)]
    pub sockets: XskStatsSource,
}

/// A list of names shared between the control plane (which changes it) and the
/// stats (which read it). Always equal to another: it is a handle, not a value.
#[derive(Debug, Clone, Default)]
pub struct SharedNames(Arc<RwLock<Vec<String>>>);

impl PartialEq for SharedNames {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SharedNames {}

impl SharedNames {
    /// A handle holding `names`.
    pub fn new(names: Vec<String>) -> Self {
        SharedNames(Arc::new(RwLock::new(names)))
    }

    /// The names now.
    pub fn get(&self) -> Vec<String> {
        read(&self.0).clone()
    }

    /// Replaces the names.
    pub fn set(&self, names: Vec<String>) {
        *write(&self.0) = names;
    }
}

/// Duplicates of an uplink's AF_XDP socket descriptors, only for reading their
/// `XDP_STATISTICS` (a `getsockopt` that never touches the rings the polling
/// threads use). Always equal to another: it is a handle, not a value.
#[derive(Debug, Clone, Default)]
pub struct XskStatsSource(Arc<Vec<std::os::fd::OwnedFd>>);

impl PartialEq for XskStatsSource {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for XskStatsSource {}

impl XskStatsSource {
    /// Reads through these descriptors (duplicates of the sockets).
    pub fn new(fds: Vec<std::os::fd::OwnedFd>) -> Self {
        XskStatsSource(Arc::new(fds))
    }

    /// The statistics summed over the sockets; `None` without sockets, or if the
    /// kernel refuses one.
    pub fn read(&self) -> Option<XskKernelCounts> {
        use std::os::fd::AsFd;
        if self.0.is_empty() {
            return None;
        }
        let mut sum = XskKernelCounts::default();
        for fd in self.0.iter() {
            sum.add(&vpmd_uplink::kernel_statistics(fd.as_fd()).ok()?);
        }
        Some(sum)
    }
}

/// A polling thread as the stats see it.
pub struct ThreadEntry {
    /// Core it is pinned to.
    pub core: usize,
    /// Names of its streams.
    pub streams: Vec<String>,
    /// Its counters.
    pub counters: Arc<ThreadCounters>,
}

/// Where snapshots are taken from; shared with the control socket's thread. Ports
/// come and go at runtime (`vpmd port add`/`del`), and threads' streams with them:
/// the control plane changes the lists under their locks, which no polling thread
/// ever takes.
pub struct Registry {
    /// Ports, in the order they were added.
    pub ports: RwLock<Vec<PortEntry>>,
    /// Threads.
    pub threads: RwLock<Vec<ThreadEntry>>,
    /// TSC rate, reported with the thread cycles.
    pub tsc_hz: u64,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    /// A registry of these ports and threads.
    pub fn new(ports: Vec<PortEntry>, threads: Vec<ThreadEntry>, tsc_hz: u64) -> Self {
        Registry {
            ports: RwLock::new(ports),
            threads: RwLock::new(threads),
            tsc_hz,
        }
    }

    /// Adds a port (at the end).
    pub fn add_port(&self, entry: PortEntry) {
        write(&self.ports).push(entry);
    }

    /// Removes the port named `name`.
    pub fn remove_port(&self, name: &str) {
        write(&self.ports).retain(|p| p.name != name);
    }

    /// The stream names of thread `index` are now `streams`.
    pub fn set_streams(&self, index: usize, streams: Vec<String>) {
        if let Some(t) = write(&self.threads).get_mut(index) {
            t.streams = streams;
        }
    }

    /// Reads every counter now.
    pub fn snapshot(&self) -> Snapshot {
        let threads = read(&self.threads);
        let ports = read(&self.ports);
        let core_of_stream = |name: &str| {
            threads
                .iter()
                .find(|t| t.streams.iter().any(|s| s == name))
                .map(|t| t.core)
        };
        // The core polling each (port, TX queue pair): a veth stream's, from its name;
        // on a macvlan, the shard's that was dealt the queue (macvlan::ports).
        let pairs_of = |name: &str| {
            ports.iter().find_map(|p| match &p.kind {
                PortKind::Vhost(port) if p.name == name => Some(port.queue_pairs()),
                _ => None,
            })
        };
        let core_of = |port: &str, pair: usize| {
            let veth = threads.iter().find_map(|t| {
                t.streams
                    .iter()
                    .any(|s| crate::fwd::veth::stream_source(s) == Some((port, pair)))
                    .then_some(t.core)
            });
            veth.or_else(|| {
                ports.iter().find_map(|u| {
                    let PortKind::Uplink(info) = &u.kind else {
                        return None;
                    };
                    let names = info.port_list.get();
                    let i = names.iter().position(|n| n == port)?;
                    let pairs: Vec<usize> =
                        names.iter().map(|n| pairs_of(n).unwrap_or(1)).collect();
                    let queues = info.queues as usize;
                    let shard = (0..queues).find(|&s| {
                        crate::fwd::macvlan::ports::owned_queues(&pairs, queues, s)
                            .contains(&(i, pair))
                    })?;
                    core_of_stream(&format!("{}/q{shard}", u.name))
                })
            })
        };
        Snapshot {
            ports: ports
                .iter()
                .map(|p| match &p.kind {
                    PortKind::Vhost(port) => {
                        let pairs = port.queue_pairs();
                        let mut s = p
                            .counters
                            .snapshot(&p.name, "vhost-user", port.is_up(), pairs);
                        for q in s.queues.iter_mut().flatten() {
                            q.core = core_of(&p.name, q.queue as usize);
                        }
                        s.faults = Some(FaultCounts::of(port.faults()));
                        s.features = port.active().map(|a| {
                            vpmd_backend::features::names(a.acked_features())
                                .into_iter()
                                .map(String::from)
                                .collect()
                        });
                        s
                    }
                    PortKind::Uplink(info) => {
                        let mut s = p.counters.snapshot(&p.name, "uplink", true, 1);
                        let mut info = info.clone();
                        info.xsk_kernel = info.sockets.read();
                        info.ports = info.port_list.get();
                        s.uplink = Some(info);
                        s
                    }
                })
                .collect(),
            threads: threads
                .iter()
                .map(|t| t.counters.snapshot(t.core, &t.streams, self.tsc_hz))
                .collect(),
        }
    }
}

impl Snapshot {
    /// Width of the port-name column of the tables: the longest name, at least 4.
    pub fn name_width(&self) -> usize {
        self.ports
            .iter()
            .map(|p| p.name.len())
            .max()
            .unwrap_or(4)
            .max(4)
    }

    /// The table `vpmd stats` prints.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let w = self.name_width();
        let _ = writeln!(
            out,
            "{:<w$}  {:<5}  {:>12} {:>14}  {:>12} {:>14}  {:>10}",
            "PORT", "STATE", "RX_PACKETS", "RX_BYTES", "TX_PACKETS", "TX_BYTES", "DROPS"
        );
        for p in &self.ports {
            let _ = writeln!(
                out,
                "{:<w$}  {:<5}  {:>12} {:>14}  {:>12} {:>14}  {:>10}",
                p.name,
                p.state,
                p.rx_packets,
                p.rx_bytes,
                p.tx_packets,
                p.tx_bytes,
                p.drops.total()
            );
        }
        let _ = writeln!(
            out,
            "\nframes taken from each port: forwarded, and dropped by reason:"
        );
        for p in &self.ports {
            let reasons = nonzero(&p.drops.pairs());
            let mut extra = String::new();
            if p.rx_dropped != 0 {
                let _ = write!(extra, "  rx_dropped={}", p.rx_dropped);
            }
            if p.ring_errors != 0 {
                let _ = write!(extra, "  ring_errors={}", p.ring_errors);
            }
            for (name, v) in p.faults.iter().flat_map(FaultCounts::pairs) {
                if v != 0 {
                    let _ = write!(extra, "  {name}={v}");
                }
            }
            if let Some(u) = &p.uplink {
                let _ = write!(
                    extra,
                    "  [{} XDP, {} sockets x{}{}, {}, checksums in {} out {}, max frame {}]",
                    u.xdp,
                    u.socket_mode,
                    u.queues,
                    if u.multi_buffer { " multi-buffer" } else { "" },
                    u.macvlan_mode,
                    u.checksums,
                    if u.tx_checksum_offload {
                        "kernel"
                    } else {
                        "vpmd"
                    },
                    u.max_frame
                );
            }
            let _ = writeln!(
                out,
                "  {:<w$}  forwarded={} {}{}",
                p.name,
                p.forwarded,
                if reasons.is_empty() {
                    "no drops".to_string()
                } else {
                    reasons.join(" ")
                },
                extra
            );
        }
        let offloads: Vec<String> = self.ports.iter().filter_map(offload_line).collect();
        if !offloads.is_empty() {
            let _ = writeln!(
                out,
                "\noffloads each guest driver took, and the work done for the frames it sent:"
            );
            for line in offloads {
                let _ = writeln!(out, "  {line:w$}");
            }
        }
        let queued: Vec<&PortStats> = self.ports.iter().filter(|p| p.queues.is_some()).collect();
        if !queued.is_empty() {
            let _ = writeln!(
                out,
                "\nqueue pairs of multi-queue ports (TX: taken, dropped; RX: delivered, by flow hash):"
            );
            for p in queued {
                for q in p.queues.iter().flatten() {
                    let core = q.core.map_or("-".to_string(), |c| c.to_string());
                    let _ = writeln!(
                        out,
                        "  {:<w$}  q{}  core {core:>2}  tx {} (dropped {})  rx {}",
                        p.name, q.queue, q.tx_packets, q.tx_dropped, q.rx_packets
                    );
                }
            }
        }
        let _ = writeln!(out, "\npolling threads:");
        for t in &self.threads {
            let per_frame = if t.frames > 0 {
                format!("{:.0}", t.busy_cycles as f64 / t.frames as f64)
            } else {
                "-".to_string()
            };
            let total = t.busy_cycles + t.idle_cycles;
            let busy_pct = if total > 0 {
                100.0 * t.busy_cycles as f64 / total as f64
            } else {
                0.0
            };
            let _ = writeln!(
                out,
                "  core {}: {} frames, {} cycles/frame, busy {:.1}%  streams: {}",
                t.core,
                t.frames,
                per_frame,
                busy_pct,
                t.streams.join(", ")
            );
        }
        out
    }
}

/// `name=count` for each counter that is not zero.
fn nonzero(pairs: &[(&str, u64)]) -> Vec<String> {
    pairs
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(n, v)| format!("{n}={v}"))
        .collect()
}

/// A VM port's line of the offload table: the offloads its driver negotiated and
/// the non-zero offload counters; `None` for a port with neither.
fn offload_line(p: &PortStats) -> Option<String> {
    let offload_names = &vpmd_backend::features::OFFERED_NAMES[..8];
    let took: Vec<&str> = p
        .features
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|f| offload_names.iter().any(|(_, n)| n == f))
        .collect();
    let work = nonzero(&p.offloads.pairs());
    if took.is_empty() && work.is_empty() {
        return None;
    }
    Some(format!(
        "{}  {}  {}",
        p.name,
        if took.is_empty() {
            "none".to_string()
        } else {
            took.join(" ")
        },
        work.join(" ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{DropCounts, OffloadCounts};

    fn sample() -> Snapshot {
        Snapshot {
            ports: vec![PortStats {
                name: "vm0".into(),
                kind: "vhost-user".into(),
                state: "up".into(),
                rx_packets: 1,
                rx_bytes: 60,
                tx_packets: 2,
                tx_bytes: 120,
                forwarded: 1,
                rx_dropped: 0,
                drops: DropCounts {
                    peer_down: 1,
                    ..Default::default()
                },
                ring_errors: 0,
                offloads: OffloadCounts {
                    tso_passed: 4,
                    ..Default::default()
                },
                faults: None,
                uplink: None,
                features: Some(vec!["CSUM".into(), "VERSION_1".into(), "MRG_RXBUF".into()]),
                queues: None,
            }],
            threads: vec![ThreadStats {
                core: 1,
                streams: vec!["vm0->vm1".into()],
                frames: 3,
                busy_cycles: 300,
                idle_cycles: 700,
                polls: 40,
                waits: 0,
                woken_by_kick: 0,
                wait_timeouts: 0,
                tsc_hz: 1_000_000_000,
            }],
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["ports"][0]["name"], "vm0");
        assert_eq!(v["ports"][0]["drops"]["peer_down"], 1);
        assert_eq!(v["ports"][0]["drops"]["no_rx_buffer"], 0);
        assert_eq!(v["threads"][0]["streams"][0], "vm0->vm1");
        assert_eq!(v["threads"][0]["busy_cycles"], 300);
        let back: Snapshot = serde_json::from_value(v).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn text_shows_ports_reasons_and_threads() {
        let t = sample().to_text();
        assert!(t.contains("vm0"));
        assert!(t.contains("peer_down=1"));
        assert!(t.contains("100 cycles/frame"));
        assert!(t.contains("busy 30.0%"));
        assert!(t.contains("vm0  CSUM  tso_passed=4"), "{t}");
    }
}
