// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Counters: the socket's own ([`RxCounters`], [`TxCounters`]), kept in
//! plain integers by the one thread that owns each half of a socket, and the
//! kernel's ([`XdpStatistics`], read with a system call on request).
//!
//! To show them from another thread (`vpmd stats`), the polling thread
//! copies them out (they are `Copy`) into whatever it publishes.

/// Receive-side counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// Frames handed to the caller and released.
    pub frames: u64,
    /// Their bytes (Ethernet frame bytes).
    pub bytes: u64,
    /// Chunks beyond the first of the frames that came in several
    /// (multi-buffer: jumbo frames).
    pub parts_after_first: u64,
    /// `recvfrom` calls made because the kernel set `XDP_RING_NEED_WAKEUP`
    /// on the fill ring (zero-copy drivers that ran out of fill entries).
    /// Copy mode never asks for one.
    pub wakeups: u64,
    /// Chunks that did not fit back on the fill ring at once and waited in
    /// the spare list (should stay 0: the fill ring has room for them all).
    pub fill_ring_full: u64,
}

/// Transmit-side counters. `ring_full`, `no_chunk` count frames refused
/// before the caller wrote them (the caller decides whether they are
/// dropped or retried); `too_big` and `abandoned` count slots the caller
/// gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxCounters {
    /// Frames published on the TX ring.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Chunks the kernel reported sent (completion ring): one per frame,
    /// one per part of a multi-buffer frame.
    pub completed: u64,
    /// Chunks beyond the first of the frames sent in several (multi-buffer).
    pub parts_after_first: u64,
    /// Frames sent with their checksum left to the kernel or NIC (transmit
    /// metadata).
    pub checksum_requests: u64,
    /// Frames asked for that got no slot: the TX ring was full.
    pub ring_full: u64,
    /// Frames asked for that got no slot: no free chunk (all in flight).
    pub no_chunk: u64,
    /// Frames longer than a chunk's capacity (or, multi-buffer, than
    /// [`crate::tx::MAX_TX_PARTS`] chunks): dropped.
    pub too_big: u64,
    /// Slots the caller gave back with length 0.
    pub abandoned: u64,
    /// `sendto` kicks made (the kernel asked for them with
    /// `XDP_RING_NEED_WAKEUP`; in copy mode the kernel sends during the kick).
    pub kicks: u64,
    /// Kicks answered `EAGAIN`: the kernel sent its budget (32 frames per
    /// call in copy mode) and left the rest for the next kick.
    pub kick_again: u64,
    /// Kicks answered `EBUSY`/`ENOBUFS`/`ENETDOWN`: the device or qdisc
    /// refused for now; the frames stay on the ring.
    pub kick_busy: u64,
    /// Kicks that failed otherwise.
    pub kick_errors: u64,
}

/// The kernel's view of a socket (`XDP_STATISTICS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Frames dropped for lack of a fill-ring chunk, or too big for a chunk.
    pub rx_dropped: u64,
    /// RX descriptors the kernel found invalid.
    pub rx_invalid_descs: u64,
    /// TX descriptors the kernel found invalid (bad address or length).
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty when asked to send.
    pub tx_ring_empty_descs: u64,
}

impl From<libc::xdp_statistics> for XdpStatistics {
    fn from(s: libc::xdp_statistics) -> Self {
        Self {
            rx_dropped: s.rx_dropped,
            rx_invalid_descs: s.rx_invalid_descs,
            tx_invalid_descs: s.tx_invalid_descs,
            rx_ring_full: s.rx_ring_full,
            rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: s.tx_ring_empty_descs,
        }
    }
}

/// Counters of the group tap ([`crate::PacketTap`]), kept by the thread
/// that owns it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapCounters {
    /// Frames handed to the caller and released.
    pub frames: u64,
    /// Their bytes (Ethernet frame bytes, VLAN tags included).
    pub bytes: u64,
    /// Frames longer than a ring slot holds: the kernel stored only their
    /// beginning; dropped here, never handed out truncated. Raise
    /// `PacketTapConfig::max_frame_len` if this grows.
    pub too_big: u64,
    /// Frames whose VLAN tag the kernel had moved out of the frame (VLAN
    /// offload) and that were handed out with the tag back in place.
    pub vlan_restored: u64,
    /// Frames handed out with `TP_STATUS_CSUMNOTREADY`: sent by a local
    /// sender (e.g. a veth peer) whose transport checksum was left for
    /// offload and is not filled in. Never seen on frames from a real wire.
    pub checksum_partial: u64,
    /// Frames the kernel dropped because the ring was full (the socket's
    /// `PACKET_STATISTICS` `tp_drops`, summed over reads).
    pub kernel_drops: u64,
    /// `PACKET_STATISTICS` reads made: after the kernel flagged losses
    /// (`TP_STATUS_LOSING`), or on request.
    pub statistics_reads: u64,
}
