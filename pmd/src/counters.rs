// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Per-port and per-thread counters, shared between polling threads and `vpmd stats`.
//!
//! Polling threads add up a burst's figures in a plain [`PortTally`] and flush it once
//! per burst into their own [`CounterBlock`] for that port: a plain store per counter
//! that moved, no locked instruction, nothing per frame. Readers take a [`PortStats`]
//! snapshot whenever they like, summing a port's blocks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vpmd_backend::port::MAX_QUEUE_PAIRS;

use serde::{Deserialize, Serialize};

/// A struct of named `u64` counters, declared once: the field names are the names
/// stats print, the JSON field names (serde) and [`NAMES`](DropCounts::NAMES).
macro_rules! named_counters {
    ($(#[$meta:meta])* pub struct $ty:ident { $( $(#[doc = $doc:literal])+ $name:ident, )+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {
            $( $(#[doc = $doc])+ pub $name: u64, )+
        }

        impl $ty {
            /// The counters' names, in the order stats print them.
            pub const NAMES: [&'static str; [$(stringify!($name)),+].len()] =
                [$(stringify!($name)),+];

            /// From counts in [`Self::NAMES`] order.
            pub fn from_array(counts: [u64; Self::NAMES.len()]) -> Self {
                let [$($name),+] = counts;
                $ty { $($name),+ }
            }

            /// `(name, count)` pairs, in [`Self::NAMES`] order.
            pub fn pairs(&self) -> [(&'static str, u64); Self::NAMES.len()] {
                [$((stringify!($name), self.$name)),+]
            }

            /// What each counter added since `before`; a counter that went
            /// backwards (a restarted vpmd) counts from zero.
            pub fn since(&self, before: &Self) -> Self {
                $ty { $($name: self.$name.checked_sub(before.$name).unwrap_or(self.$name)),+ }
            }
        }
    };
}

/// Declares the drop reasons once: the enum, [`DropReason::ALL`] and the names (stats
/// text, the JSON field names of [`DropCounts`], the docs, which a test checks) all
/// come from this one list.
macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])+ $variant:ident => $name:ident, )+) => {
        /// Why a frame taken from a port was not delivered.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum DropReason {
            $( $(#[doc = $doc])+ $variant, )+
        }

        impl DropReason {
            /// Every reason, in the order stats print them.
            pub const ALL: [DropReason; NUM_DROPS] = [$(DropReason::$variant),+];

            /// The name used in stats, JSON and docs.
            pub const fn name(self) -> &'static str {
                DropCounts::NAMES[self as usize]
            }
        }

        named_counters! {
            /// Frames dropped, by reason: one field per [`DropReason`], named as
            /// [`DropReason::name`].
            pub struct DropCounts {
                $( $(#[doc = $doc])+ $name, )+
            }
        }
    };
}

drop_reasons! {
    /// The destination port has no running guest driver (a veth peer that is down).
    PeerDown => peer_down,
    /// The destination guest has no free RX buffers.
    NoRxBuffer => no_rx_buffer,
    /// The destination guest's RX descriptors or ring are malformed.
    BadRxDesc => bad_rx_desc,
    /// The sending guest's TX descriptor chain is malformed.
    BadTxDesc => bad_tx_desc,
    /// The frame is longer than the destination's MTU allows.
    TooBig => too_big,
    /// The frame is shorter than an Ethernet header.
    Runt => runt,
    /// A macvlan port sent with a source MAC other than its own.
    Spoofed => spoofed,
    /// The uplink had no free transmit slot or buffer.
    UplinkBusy => uplink_busy,
    /// No port has the destination MAC (or the only one is the sender).
    NoDestination => no_destination,
    /// The frame's virtio-net header asks for an offload that does not fit the frame
    /// or was not negotiated (a bad `gso_type`, `gso_size`, `csum_start`...).
    BadOffload => bad_offload,
}

/// Declares the offload counters once, like the drop reasons.
macro_rules! offload_events {
    ($( $(#[doc = $doc:literal])+ $variant:ident => $name:ident, )+) => {
        /// Offload work done for a frame taken from a port.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum OffloadEvent {
            $( $(#[doc = $doc])+ $variant, )+
        }

        named_counters! {
            /// Frames by the offload work vpmd did for them, one field per
            /// [`OffloadEvent`], counted on the port that sent them.
            pub struct OffloadCounts {
                $( $(#[doc = $doc])+ $name, )+
            }
        }
    };
}

offload_events! {
    /// Large (TSO) frames passed whole to a receiver that negotiated it.
    TsoPassed => tso_passed,
    /// Frames whose checksum was left to a receiver that negotiated GUEST_CSUM.
    CsumPassed => csum_passed,
    /// Frames whose checksum vpmd filled in (the receiver could not).
    SwChecksummed => sw_checksummed,
    /// Large frames vpmd cut into segments (the receiver took no TSO) of which at
    /// least one was delivered (one that got nowhere counts as one drop).
    SwSegmented => sw_segmented,
    /// The segments those frames became (the receiver's `rx_packets` counts those
    /// it got, its `rx_dropped` those it could not take).
    SwSegments => sw_segments,
    /// Frames from the uplink whose TCP/UDP checksum was partial (a veth peer's
    /// stack leaves it to the receiver) and that vpmd completed or left to the guest.
    PartialChecksum => partial_checksum,
    /// Frames from the uplink with a TCP/UDP checksum that is neither right nor
    /// partial: delivered as they are (the guest drops them).
    BadChecksum => bad_checksum,
}

const NUM_OFFLOADS: usize = OffloadCounts::NAMES.len();

const NUM_DROPS: usize = DropCounts::NAMES.len();

/// A burst's figures for one port, added up without atomics.
#[derive(Debug, Default, Clone, Copy)]
pub struct PortTally {
    /// Frames delivered into the port's RX queue.
    pub rx_packets: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Frames taken from the port's TX queue.
    pub tx_packets: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames taken from the port that reached at least one destination.
    pub forwarded: u64,
    /// Copies of flooded frames meant for this port that its RX queue could not take.
    pub rx_dropped: u64,
    /// Frames taken from this port and dropped, by reason.
    pub drops: [u64; NUM_DROPS],
    /// Times one of the port's rings could not be used (bad placement, index jump).
    pub ring_errors: u64,
    /// Offload work, by [`OffloadEvent`].
    pub offloads: [u64; NUM_OFFLOADS],
    /// Per queue pair of a multi-queue port (counted per burst, not per frame):
    /// frames taken from TX queue `n`, those of them dropped, frames delivered into
    /// RX queue `n`.
    pub queues: QueueTally,
}

/// A port's figures per queue pair (index: pair).
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueTally {
    /// Frames taken from the pair's TX queue.
    pub tx_packets: [u64; MAX_QUEUE_PAIRS],
    /// Of those, frames dropped.
    pub tx_dropped: [u64; MAX_QUEUE_PAIRS],
    /// Frames delivered into the pair's RX queue.
    pub rx_packets: [u64; MAX_QUEUE_PAIRS],
}

impl PortTally {
    /// Counts one dropped frame.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Counts `n` of an offload event.
    #[inline]
    pub fn offload(&mut self, event: OffloadEvent, n: u64) {
        self.offloads[event as usize] += n;
    }

    /// Moves `other`'s offload counts into this tally.
    #[inline]
    pub fn take_offloads(&mut self, other: &mut PortTally) {
        for (a, b) in self.offloads.iter_mut().zip(other.offloads.iter_mut()) {
            *a += std::mem::take(b);
        }
    }
}

/// The counters one stream keeps for one port. Only that stream's polling thread
/// writes them, so a flush is a plain load and store per counter (no locked
/// instruction, no cache line shared with another writer); stats read them any time.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct CounterBlock {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    forwarded: AtomicU64,
    rx_dropped: AtomicU64,
    drops: [AtomicU64; NUM_DROPS],
    ring_errors: AtomicU64,
    offloads: [AtomicU64; NUM_OFFLOADS],
    queue_tx_packets: [AtomicU64; MAX_QUEUE_PAIRS],
    queue_tx_dropped: [AtomicU64; MAX_QUEUE_PAIRS],
    queue_rx_packets: [AtomicU64; MAX_QUEUE_PAIRS],
}

/// Adds `n` to a counter that only the calling thread writes.
#[inline]
fn add(counter: &AtomicU64, n: u64) {
    if n != 0 {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

impl CounterBlock {
    /// Adds a burst's tally and clears it. Call only from the block's one writer.
    #[inline]
    pub fn flush(&self, t: &mut PortTally) {
        add(&self.rx_packets, t.rx_packets);
        add(&self.rx_bytes, t.rx_bytes);
        add(&self.tx_packets, t.tx_packets);
        add(&self.tx_bytes, t.tx_bytes);
        add(&self.forwarded, t.forwarded);
        add(&self.rx_dropped, t.rx_dropped);
        for (c, &n) in self.drops.iter().zip(&t.drops) {
            add(c, n);
        }
        add(&self.ring_errors, t.ring_errors);
        for (c, &n) in self.offloads.iter().zip(&t.offloads) {
            add(c, n);
        }
        let q = &t.queues;
        for i in 0..MAX_QUEUE_PAIRS {
            add(&self.queue_tx_packets[i], q.tx_packets[i]);
            add(&self.queue_tx_dropped[i], q.tx_dropped[i]);
            add(&self.queue_rx_packets[i], q.rx_packets[i]);
        }
        *t = PortTally::default();
    }

    /// Adds this block's counts into `sum`.
    fn add_to(&self, sum: &mut PortTally) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        sum.rx_packets += load(&self.rx_packets);
        sum.rx_bytes += load(&self.rx_bytes);
        sum.tx_packets += load(&self.tx_packets);
        sum.tx_bytes += load(&self.tx_bytes);
        sum.forwarded += load(&self.forwarded);
        sum.rx_dropped += load(&self.rx_dropped);
        for (s, c) in sum.drops.iter_mut().zip(&self.drops) {
            *s += load(c);
        }
        sum.ring_errors += load(&self.ring_errors);
        for (s, c) in sum.offloads.iter_mut().zip(&self.offloads) {
            *s += load(c);
        }
        for i in 0..MAX_QUEUE_PAIRS {
            sum.queues.tx_packets[i] += load(&self.queue_tx_packets[i]);
            sum.queues.tx_dropped[i] += load(&self.queue_tx_dropped[i]);
            sum.queues.rx_packets[i] += load(&self.queue_rx_packets[i]);
        }
    }
}

/// One port's counters: a [`CounterBlock`] for every stream that counts for it.
#[derive(Debug, Default)]
pub struct PortCounters {
    blocks: Mutex<Vec<Arc<CounterBlock>>>,
}

impl PortCounters {
    /// A new block for one stream to count this port's frames in (set-up time only).
    pub fn writer(&self) -> Arc<CounterBlock> {
        let block = Arc::new(CounterBlock::default());
        self.blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(block.clone());
        block
    }

    /// A snapshot, for stats: the sum over every block; per queue for a port of
    /// `queue_pairs` > 1.
    pub fn snapshot(&self, name: &str, kind: &str, up: bool, queue_pairs: usize) -> PortStats {
        let mut t = PortTally::default();
        for b in self
            .blocks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            b.add_to(&mut t);
        }
        PortStats {
            name: name.to_string(),
            kind: kind.to_string(),
            state: if up { "up" } else { "down" }.to_string(),
            rx_packets: t.rx_packets,
            rx_bytes: t.rx_bytes,
            tx_packets: t.tx_packets,
            tx_bytes: t.tx_bytes,
            forwarded: t.forwarded,
            rx_dropped: t.rx_dropped,
            drops: DropCounts::from_array(t.drops),
            ring_errors: t.ring_errors,
            offloads: OffloadCounts::from_array(t.offloads),
            faults: None,
            uplink: None,
            features: None,
            queues: (queue_pairs > 1).then(|| {
                (0..queue_pairs.min(MAX_QUEUE_PAIRS))
                    .map(|i| QueueStats {
                        queue: i as u32,
                        core: None,
                        tx_packets: t.queues.tx_packets[i],
                        tx_dropped: t.queues.tx_dropped[i],
                        rx_packets: t.queues.rx_packets[i],
                    })
                    .collect()
            }),
        }
    }
}

/// One queue pair of a multi-queue port at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The pair's number (RX queue 2n, TX queue 2n+1).
    pub queue: u32,
    /// The core of the polling thread that polls its TX queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub core: Option<usize>,
    /// Frames taken from its TX queue.
    pub tx_packets: u64,
    /// Of those, frames dropped (the port's `drops` say why).
    pub tx_dropped: u64,
    /// Frames delivered into its RX queue (steered by flow hash).
    pub rx_packets: u64,
}

impl DropCounts {
    /// Sum over all reasons.
    pub fn total(&self) -> u64 {
        self.pairs().iter().map(|p| p.1).sum()
    }
}

/// One port's counters at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    /// Port name (the interface name for an uplink).
    pub name: String,
    /// "vhost-user" for a VM port, "uplink" for a macvlan's AF_XDP uplink.
    pub kind: String,
    /// "up" when the guest driver runs the port's queues (an uplink: while attached).
    pub state: String,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Their Ethernet bytes.
    pub rx_bytes: u64,
    /// Frames taken from the guest.
    pub tx_packets: u64,
    /// Their Ethernet bytes.
    pub tx_bytes: u64,
    /// Frames taken from the guest that reached at least one destination:
    /// `tx_packets` = `forwarded` + `drops` total.
    pub forwarded: u64,
    /// Copies of flooded frames meant for this guest that its RX queue could not take.
    pub rx_dropped: u64,
    /// Frames taken from this guest and dropped.
    pub drops: DropCounts,
    /// Bursts in which one of the port's rings was unusable (not frames).
    pub ring_errors: u64,
    /// Offload work done for frames the port sent (a segmented frame counts once in
    /// `forwarded` or `drops`; its segments in the receiver's `rx_packets`).
    #[serde(default)]
    pub offloads: OffloadCounts,
    /// What went wrong with the port's frontends (VM ports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<FaultCounts>,
    /// How an uplink is attached (uplinks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<crate::stats::UplinkInfo>,
    /// The virtio features the guest driver negotiated, by name, while a frontend
    /// has the port's rings started (VM ports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Per queue pair, for a port with more than one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<QueueStats>>,
}

named_counters! {
    /// A VM port's frontend faults: `vpmd_backend::port::PortFaults`, by the names of its
    /// `pairs` (a test checks the two lists agree).
    pub struct FaultCounts {
        /// Connections stopped because their guest memory went away under vpmd.
        mem_faults,
        /// Connections stopped because a notification to the guest blocked.
        notify_blocked,
        /// Notifications not delivered: the guest's call eventfd counter was full.
        notify_failed,
        /// Connections closed for a refused message (fd, memory kind, limits).
        refused,
        /// Messages a frontend was made to wait for (rate limit).
        throttled,
        /// Pages written during a migration that the frontend's dirty log was too
        /// small to hold.
        log_outside,
    }
}

named_counters! {
    /// The kernel's `XDP_STATISTICS` of a macvlan uplink's AF_XDP sockets, summed over
    /// its queues (`vpmd_uplink::XdpStatistics`, by the same names).
    pub struct XskKernelCounts {
        /// Frames dropped for lack of a fill-ring chunk, or too big for a chunk.
        rx_dropped,
        /// RX descriptors the kernel found invalid.
        rx_invalid_descs,
        /// TX descriptors the kernel found invalid.
        tx_invalid_descs,
        /// Frames dropped because the RX ring was full.
        rx_ring_full,
        /// Times the kernel found the fill ring empty.
        rx_fill_ring_empty_descs,
        /// Times the kernel found the TX ring empty when asked to send.
        tx_ring_empty_descs,
    }
}

impl XskKernelCounts {
    /// Adds one socket's statistics.
    pub fn add(&mut self, s: &vpmd_uplink::XdpStatistics) {
        self.rx_dropped += s.rx_dropped;
        self.rx_invalid_descs += s.rx_invalid_descs;
        self.tx_invalid_descs += s.tx_invalid_descs;
        self.rx_ring_full += s.rx_ring_full;
        self.rx_fill_ring_empty_descs += s.rx_fill_ring_empty_descs;
        self.tx_ring_empty_descs += s.tx_ring_empty_descs;
    }
}

impl FaultCounts {
    /// The port's counters now (by name, whatever order the backend keeps them in).
    pub fn of(f: &vpmd_backend::port::PortFaults) -> Self {
        let mut counts = [0; Self::NAMES.len()];
        for (name, v) in f.pairs() {
            if let Some(i) = Self::NAMES.iter().position(|n| *n == name) {
                counts[i] = v;
            }
        }
        Self::from_array(counts)
    }
}

/// Live counters of one polling thread (single writer: the thread itself).
#[derive(Debug, Default)]
pub struct ThreadCounters {
    frames: AtomicU64,
    busy_cycles: AtomicU64,
    idle_cycles: AtomicU64,
    polls: AtomicU64,
    waits: AtomicU64,
    woken_by_kick: AtomicU64,
    wait_timeouts: AtomicU64,
}

/// A polling thread's sleeps until kicked, as it counts them itself.
#[derive(Debug, Default, Clone, Copy)]
pub struct WaitCounts {
    /// Sleeps.
    pub waits: u64,
    /// Sleeps a guest's kick ended.
    pub woken_by_kick: u64,
    /// Sleeps nothing ended before the safety net.
    pub timeouts: u64,
}

impl WaitCounts {
    /// Counts one [`crate::kick_wait::KickWait::wait`] that slept.
    pub fn count(&mut self, slept: crate::kick_wait::Slept) {
        use crate::kick_wait::Slept;
        self.waits += 1;
        self.woken_by_kick += u64::from(slept == Slept::Kicked);
        self.timeouts += u64::from(slept == Slept::TimedOut);
    }
}

impl ThreadCounters {
    /// Publishes the thread's running totals (plain stores: one writer).
    #[inline]
    pub fn publish(&self, frames: u64, busy_cycles: u64, idle_cycles: u64) {
        self.frames.store(frames, Ordering::Relaxed);
        self.busy_cycles.store(busy_cycles, Ordering::Relaxed);
        self.idle_cycles.store(idle_cycles, Ordering::Relaxed);
    }

    /// Publishes how many polls (rounds over all the thread's streams) it has made.
    #[inline]
    pub fn publish_polls(&self, polls: u64) {
        self.polls.store(polls, Ordering::Relaxed);
    }

    /// Publishes its sleeps until kicked.
    #[cold]
    pub fn publish_waits(&self, w: WaitCounts) {
        self.waits.store(w.waits, Ordering::Relaxed);
        self.woken_by_kick.store(w.woken_by_kick, Ordering::Relaxed);
        self.wait_timeouts.store(w.timeouts, Ordering::Relaxed);
    }

    /// A snapshot, for stats.
    pub fn snapshot(&self, core: usize, streams: &[String], tsc_hz: u64) -> ThreadStats {
        ThreadStats {
            core,
            streams: streams.to_vec(),
            frames: self.frames.load(Ordering::Relaxed),
            busy_cycles: self.busy_cycles.load(Ordering::Relaxed),
            idle_cycles: self.idle_cycles.load(Ordering::Relaxed),
            polls: self.polls.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            woken_by_kick: self.woken_by_kick.load(Ordering::Relaxed),
            wait_timeouts: self.wait_timeouts.load(Ordering::Relaxed),
            tsc_hz,
        }
    }
}

/// One polling thread at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadStats {
    /// Core the thread is pinned to.
    pub core: usize,
    /// Streams it polls, as "source->destination".
    pub streams: Vec<String>,
    /// Frames it moved (taken from a source, delivered or dropped).
    pub frames: u64,
    /// TSC cycles spent in polls that moved at least one frame.
    pub busy_cycles: u64,
    /// TSC cycles spent in polls that moved nothing.
    pub idle_cycles: u64,
    /// Polls: rounds over all its streams, busy or idle.
    #[serde(default)]
    pub polls: u64,
    /// Times it slept until a guest kicked (adaptive polling, `pmd.sleep_after_us`).
    #[serde(default)]
    pub waits: u64,
    /// Of those, sleeps a guest's kick ended.
    #[serde(default)]
    pub woken_by_kick: u64,
    /// Of those, sleeps that lasted the whole safety net (100 ms) with no kick,
    /// socket or wake-up: an idle thread's are normal, a busy one's are not.
    #[serde(default)]
    pub wait_timeouts: u64,
    /// TSC frequency, to turn cycles into time.
    pub tsc_hz: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_adds_and_clears_the_tally() {
        let port = PortCounters::default();
        let c = port.writer();
        let other = port.writer();
        let mut t = PortTally {
            tx_packets: 3,
            tx_bytes: 180,
            ..Default::default()
        };
        t.drop(DropReason::PeerDown);
        t.drop(DropReason::Runt);
        c.flush(&mut t);
        assert_eq!(t.tx_packets, 0);
        t.drop(DropReason::PeerDown);
        c.flush(&mut t);
        t.rx_packets = 5;
        other.flush(&mut t);
        let s = port.snapshot("vm0", "vhost-user", false, 1);
        assert_eq!(s.rx_packets, 5, "blocks add up");
        assert_eq!((s.tx_packets, s.tx_bytes), (3, 180));
        assert_eq!(s.drops.peer_down, 2);
        assert_eq!(s.drops.runt, 1);
        assert_eq!(s.drops.total(), 3);
        assert_eq!(s.state, "down");
    }

    #[test]
    fn drop_names_follow_the_enum_order() {
        let d = DropCounts {
            too_big: 7,
            ..Default::default()
        };
        let names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(DropReason::ALL.len(), NUM_DROPS);
        let pairs: Vec<_> = d.pairs().iter().map(|p| p.0).collect();
        assert_eq!(names, pairs);
        assert_eq!(d.pairs()[DropReason::TooBig as usize].1, 7);
    }

    #[test]
    fn fault_names_are_the_backends() {
        let backend = vpmd_backend::port::PortFaults::new().pairs().map(|p| p.0);
        assert_eq!(FaultCounts::NAMES, backend);
        let f = vpmd_backend::port::PortFaults::new();
        f.throttled.fetch_add(2, Ordering::Relaxed);
        assert_eq!(FaultCounts::of(&f).throttled, 2);
    }

    #[test]
    fn json_field_names_are_the_names() {
        let v = serde_json::to_value(DropCounts::default()).unwrap();
        let json: Vec<&str> = v
            .as_object()
            .unwrap()
            .keys()
            .map(std::string::String::as_str)
            .collect();
        let mut names: Vec<&str> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        let mut json = json;
        json.sort();
        assert_eq!(json, names);
        let v = serde_json::to_value(FaultCounts::default()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), FaultCounts::NAMES.len());
        for n in FaultCounts::NAMES {
            assert!(v.get(n).is_some(), "{n}");
        }
    }

    /// docs/interfaces.md lists every counter name vpmd reports, so the docs cannot drift.
    #[test]
    fn the_docs_name_every_counter() {
        let doc = include_str!("../../docs/interfaces.md");
        let names = DropReason::ALL
            .iter()
            .map(|r| r.name())
            .chain(FaultCounts::NAMES)
            .chain(OffloadCounts::NAMES);
        for n in names {
            assert!(
                doc.contains(&format!("\"{n}\"")),
                "docs/interfaces.md does not mention counter {n:?}"
            );
        }
    }
}
