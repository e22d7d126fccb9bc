// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The virtio and vhost-user features vpmd offers, and the device config space.
//!
//! Offered: VERSION_1, MAC, MTU, MRG_RXBUF, EVENT_IDX, INDIRECT_DESC, IN_ORDER, the
//! port's offloads ([`OFFLOADS`]: checksum, TSO and ECN, each way; all on unless the
//! port's config switches them off) and the vhost-user protocol-features bit;
//! protocol features REPLY_ACK, CONFIG, MQ and CONFIGURE_MEM_SLOTS, all of which
//! vhost-user-backend handles, and for live migration LOG_SHMFD with VHOST_F_LOG_ALL
//! (dirty logging, [`crate::dirty_log`]), RARP and GUEST_ANNOUNCE, which the relay
//! handles ([`crate::migration`]).
//!
//! Not offered: UFO (IPv4 fragmentation of UDP, which Linux guests no longer send
//! and vpmd does not do) and USO (QEMU 7.2 and DPDK 22.11, the frontends here,
//! cannot negotiate it; the segmenter handles UDP already), CTRL_VQ and
//! CTRL_GUEST_OFFLOADS (no control queue).

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::net::{NetLayout, Offloads};

/// Virtio feature bits offered to the driver.
///
/// IN_ORDER (virtio 1.1, 2.7.9 for split rings) promises that buffers are used in
/// the order they were made available. vpmd keeps that by construction: a frame
/// is copied and its buffers completed in the burst that takes them, each queue's
/// heads are popped and pushed to the used ring in the same order (a bad chain is
/// returned empty in its place, a frame that found too few RX buffers puts them
/// back unused), and nothing completes later or elsewhere. Drivers that know the
/// bit use cheaper paths for it (DPDK's virtio PMD: the in-order RX and TX
/// functions, as against DPDK's own vhost, which offers it too); drivers that do
/// not (Linux 6.1) leave it unacknowledged, which changes nothing.
///
/// `offloads` is the port's choice of [`OFFLOADS`], already closed under their
/// dependencies ([`offload_closure`]).
pub fn device_features(offloads: u64, queue_pairs: usize) -> u64 {
    let mq = if queue_pairs > 1 {
        1 << VIRTIO_NET_F_MQ
    } else {
        0
    };
    mq | (offloads & OFFLOADS)
        | (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_NET_F_MAC)
        | (1 << VIRTIO_NET_F_MTU)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_F_IN_ORDER)
        | (1 << VIRTIO_NET_F_GUEST_ANNOUNCE)
        | (1 << VHOST_F_LOG_ALL)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// `VHOST_F_LOG_ALL`: the frontend may ask for every page vpmd writes to be logged
/// (live migration, see [`crate::dirty_log`]). Never a driver's feature: QEMU adds it
/// on its own while a migration runs.
pub const VHOST_F_LOG_ALL: u32 = 26;

/// vhost-user protocol features offered to the frontend.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::RARP
}

/// Every offload vpmd can offer (5.1.3): the guest may send frames whose checksum
/// is left to do (CSUM) or that are up to 64 KiB of TCP to be segmented (HOST_TSO4/6,
/// HOST_ECN with CWR), and may receive such frames (GUEST_CSUM, GUEST_TSO4/6,
/// GUEST_ECN). The names say which way: HOST_* the device takes, GUEST_* the
/// driver takes.
pub const OFFLOADS: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_ECN);

/// The offloads of `wanted` whose prerequisites are in it too (5.1.3.1: TSO and
/// ECN need the checksum offload of their direction, ECN needs a TSO): a port
/// whose config switches `csum` off offers no HOST_TSO either.
pub fn offload_closure(wanted: u64) -> u64 {
    let has = |bit: u32| wanted & (1 << bit) != 0;
    let mut out = wanted & OFFLOADS;
    if !has(VIRTIO_NET_F_CSUM) {
        out &= !((1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6));
    }
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        out &= !((1 << VIRTIO_NET_F_GUEST_TSO4) | (1 << VIRTIO_NET_F_GUEST_TSO6));
    }
    if out & ((1 << VIRTIO_NET_F_HOST_TSO4) | (1 << VIRTIO_NET_F_HOST_TSO6)) == 0 {
        out &= !(1 << VIRTIO_NET_F_HOST_ECN);
    }
    if out & ((1 << VIRTIO_NET_F_GUEST_TSO4) | (1 << VIRTIO_NET_F_GUEST_TSO6)) == 0 {
        out &= !(1 << VIRTIO_NET_F_GUEST_ECN);
    }
    out
}

/// The virtio features vpmd offers, by the names logs, stats, metrics and the
/// config file (lower case) use.
pub const OFFERED_NAMES: [(u32, &str); 18] = [
    (VIRTIO_NET_F_CSUM, "CSUM"),
    (VIRTIO_NET_F_GUEST_CSUM, "GUEST_CSUM"),
    (VIRTIO_NET_F_GUEST_TSO4, "GUEST_TSO4"),
    (VIRTIO_NET_F_GUEST_TSO6, "GUEST_TSO6"),
    (VIRTIO_NET_F_GUEST_ECN, "GUEST_ECN"),
    (VIRTIO_NET_F_HOST_TSO4, "HOST_TSO4"),
    (VIRTIO_NET_F_HOST_TSO6, "HOST_TSO6"),
    (VIRTIO_NET_F_HOST_ECN, "HOST_ECN"),
    (VIRTIO_F_VERSION_1, "VERSION_1"),
    (VIRTIO_NET_F_MAC, "MAC"),
    (VIRTIO_NET_F_MTU, "MTU"),
    (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
    (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
    (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
    (VIRTIO_F_IN_ORDER, "IN_ORDER"),
    (VIRTIO_NET_F_MQ, "MQ"),
    (VIRTIO_NET_F_GUEST_ANNOUNCE, "GUEST_ANNOUNCE"),
    (VHOST_F_LOG_ALL, "LOG_ALL"),
];

/// The names of the features in `acked` that vpmd offers, in [`OFFERED_NAMES`] order.
pub fn names(acked: u64) -> Vec<&'static str> {
    OFFERED_NAMES
        .iter()
        .filter(|(bit, _)| acked & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The feature names of `acked` that vpmd offers, for logs (e.g. `VERSION_1
/// MRG_RXBUF EVENT_IDX`): what a driver took shows which paths it will use.
pub fn describe(acked: u64) -> String {
    let names = names(acked);
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

/// Frame layout implied by the acknowledged features.
pub fn layout(acked: u64) -> NetLayout {
    let version_1 = acked & (1 << VIRTIO_F_VERSION_1) != 0;
    let mrg_rxbuf = acked & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    NetLayout {
        hdr_len: if version_1 || mrg_rxbuf { 12 } else { 10 },
        mrg_rxbuf,
        offloads: Offloads(acked & OFFLOADS),
    }
}

/// `VIRTIO_NET_S_LINK_UP`.
const LINK_UP: u16 = 1;

/// `struct virtio_net_config` up to and including `mtu` (5.1.4).
pub fn config_space(mac: [u8; 6], mtu: u16, queue_pairs: usize) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
    c[8..10].copy_from_slice(&(queue_pairs as u16).to_le_bytes()); // max_virtqueue_pairs
    c[10..12].copy_from_slice(&mtu.to_le_bytes());
    c
}

/// The `[offset, offset + size)` window of the config space; bytes past its end read as zero.
pub fn config_window(space: &[u8], offset: u32, size: u32) -> Vec<u8> {
    let mut out = vec![0u8; size.min(256) as usize];
    let start = (offset as usize).min(space.len());
    let n = (space.len() - start).min(out.len());
    out[..n].copy_from_slice(&space[start..start + n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_features() {
        assert_eq!(layout(0).hdr_len, 10);
        assert_eq!(layout(1 << VIRTIO_F_VERSION_1).hdr_len, 12);
        let l = layout(1 << VIRTIO_NET_F_MRG_RXBUF);
        assert_eq!((l.hdr_len, l.mrg_rxbuf), (12, true));
    }

    #[test]
    fn config_carries_mac_and_mtu() {
        let c = config_space([0x52, 0x54, 0, 0, 0, 1], 9000, 2);
        assert_eq!(
            config_window(&c, 8, 2),
            2u16.to_le_bytes(),
            "max_virtqueue_pairs"
        );
        assert_eq!(&config_window(&c, 0, 6), &[0x52, 0x54, 0, 0, 0, 1]);
        assert_eq!(config_window(&c, 10, 2), 9000u16.to_le_bytes());
        assert_eq!(config_window(&c, 300, 4), vec![0; 4]);
    }

    #[test]
    fn describe_names_the_acked_bits() {
        assert_eq!(describe(0), "none");
        let acked =
            (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_F_IN_ORDER);
        assert_eq!(describe(acked), "VERSION_1 EVENT_IDX IN_ORDER");
        assert_eq!(
            describe(device_features(OFFLOADS, 2)).split(' ').count(),
            OFFERED_NAMES.len(),
            "every offered bit named"
        );
        assert_eq!(describe(device_features(0, 1)).split(' ').count(), 9);
    }

    #[test]
    fn offloads_need_their_prerequisites() {
        let bit = |b: u32| 1u64 << b;
        assert_eq!(offload_closure(OFFLOADS), OFFLOADS);
        let no_csum = offload_closure(OFFLOADS & !bit(VIRTIO_NET_F_CSUM));
        assert_eq!(
            describe(no_csum),
            "GUEST_CSUM GUEST_TSO4 GUEST_TSO6 GUEST_ECN"
        );
        let no_guest_csum = offload_closure(OFFLOADS & !bit(VIRTIO_NET_F_GUEST_CSUM));
        assert_eq!(describe(no_guest_csum), "CSUM HOST_TSO4 HOST_TSO6 HOST_ECN");
        let ecn_only = offload_closure(bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_HOST_ECN));
        assert_eq!(describe(ecn_only), "CSUM");
        assert_eq!(offload_closure(u64::MAX), OFFLOADS, "nothing else passes");
    }
}
