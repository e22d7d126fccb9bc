// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The virtio and vhost-user features vpmd offers, and the device config space.
//!
//! Offered: VERSION_1, MAC, MTU, MRG_RXBUF, EVENT_IDX, INDIRECT_DESC, IN_ORDER and
//! the vhost-user protocol-features bit; protocol features REPLY_ACK, CONFIG, MQ and
//! CONFIGURE_MEM_SLOTS, all of which vhost-user-backend handles. Offloads (CSUM,
//! GSO) and more queue pairs are later additions: they only add bits here, header
//! handling in `net.rs` and queues in `device.rs`.

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::net::NetLayout;

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
pub fn device_features() -> u64 {
    (1 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_NET_F_MAC)
        | (1 << VIRTIO_NET_F_MTU)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_F_IN_ORDER)
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
}

/// vhost-user protocol features offered to the frontend.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
}

/// The virtio features vpmd offers, by the names logs, stats and metrics use.
pub const OFFERED_NAMES: [(u32, &str); 7] = [
    (VIRTIO_F_VERSION_1, "VERSION_1"),
    (VIRTIO_NET_F_MAC, "MAC"),
    (VIRTIO_NET_F_MTU, "MTU"),
    (VIRTIO_NET_F_MRG_RXBUF, "MRG_RXBUF"),
    (VIRTIO_RING_F_EVENT_IDX, "EVENT_IDX"),
    (VIRTIO_RING_F_INDIRECT_DESC, "INDIRECT_DESC"),
    (VIRTIO_F_IN_ORDER, "IN_ORDER"),
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
    }
}

/// `VIRTIO_NET_S_LINK_UP`.
const LINK_UP: u16 = 1;

/// `struct virtio_net_config` up to and including `mtu` (5.1.4).
pub fn config_space(mac: [u8; 6], mtu: u16) -> [u8; 12] {
    let mut c = [0u8; 12];
    c[0..6].copy_from_slice(&mac);
    c[6..8].copy_from_slice(&LINK_UP.to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
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
        let c = config_space([0x52, 0x54, 0, 0, 0, 1], 9000);
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
            describe(device_features()).split(' ').count(),
            7,
            "every offered bit named"
        );
    }
}
