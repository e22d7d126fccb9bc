// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! virtio-net definitions the driver needs: feature bits, the per-frame header, the
//! config space (virtio 1.x, 5.1).

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    virtio_net_config, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Queue index of the first RX queue.
pub const RX_QUEUE: usize = 0;
/// Queue index of the first TX queue.
pub const TX_QUEUE: usize = 1;

/// Features this driver asks for (each only if the device offers it), as cloud-hypervisor's
/// vhost-user-net does without offloads: VERSION_1, MAC, MTU, MRG_RXBUF, EVENT_IDX and the
/// vhost-user protocol-features bit.
pub const DRIVER_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_MTU)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// Bytes of config space read with GET_CONFIG: the whole `struct virtio_net_config`, as
/// cloud-hypervisor reads it.
pub const CONFIG_LEN: usize = size_of::<virtio_net_config>();
// NetConfig::parse needs everything up to `mtu`.
const _: () = assert!(CONFIG_LEN >= 12);

/// Offset of `num_buffers` in the header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Whether feature `bit` is in `features`.
pub fn has(features: u64, bit: u32) -> bool {
    features & (1 << bit) != 0
}

/// How frames sit in buffers under the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetLayout {
    /// `struct virtio_net_hdr` length: 12 with VERSION_1 or MRG_RXBUF, 10 otherwise.
    pub hdr_len: usize,
    /// Whether a received frame may span several RX buffers (`num_buffers`).
    pub mrg_rxbuf: bool,
}

impl NetLayout {
    /// The layout implied by `features`.
    pub fn new(features: u64) -> Self {
        let mrg_rxbuf = has(features, VIRTIO_NET_F_MRG_RXBUF);
        let hdr_len = if mrg_rxbuf || has(features, VIRTIO_F_VERSION_1) {
            12
        } else {
            10
        };
        NetLayout { hdr_len, mrg_rxbuf }
    }

    /// `num_buffers` of a received header (1 without MRG_RXBUF, where the field is absent).
    pub fn num_buffers(&self, hdr: &[u8]) -> u16 {
        if !self.mrg_rxbuf || hdr.len() < NUM_BUFFERS_OFFSET + 2 {
            return 1;
        }
        u16::from_le_bytes([hdr[NUM_BUFFERS_OFFSET], hdr[NUM_BUFFERS_OFFSET + 1]])
    }
}

/// The fields of the device config space this driver reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// `mac`.
    pub mac: [u8; 6],
    /// `status` (bit 0: link up).
    pub status: u16,
    /// `max_virtqueue_pairs`.
    pub max_virtqueue_pairs: u16,
    /// `mtu`.
    pub mtu: u16,
}

impl NetConfig {
    /// Parses the start of a config space read; `None` when shorter than the `mtu` field.
    pub fn parse(space: &[u8]) -> Option<Self> {
        let u16_at = |o: usize| Some(u16::from_le_bytes(space.get(o..o + 2)?.try_into().ok()?));
        Some(NetConfig {
            mac: space.get(0..6)?.try_into().ok()?,
            status: u16_at(6)?,
            max_virtqueue_pairs: u16_at(8)?,
            mtu: u16_at(10)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_features() {
        assert_eq!(NetLayout::new(0).hdr_len, 10);
        assert_eq!(NetLayout::new(1 << VIRTIO_F_VERSION_1).hdr_len, 12);
        let l = NetLayout::new(1 << VIRTIO_NET_F_MRG_RXBUF);
        assert_eq!((l.hdr_len, l.mrg_rxbuf), (12, true));
    }

    #[test]
    fn num_buffers_only_with_mrg_rxbuf() {
        let mut hdr = [0u8; 12];
        hdr[10] = 3;
        assert_eq!(
            NetLayout::new(1 << VIRTIO_NET_F_MRG_RXBUF).num_buffers(&hdr),
            3
        );
        assert_eq!(NetLayout::new(1 << VIRTIO_F_VERSION_1).num_buffers(&hdr), 1);
    }

    #[test]
    fn config_parses_mac_status_pairs_mtu() {
        let mut c = [0u8; CONFIG_LEN];
        c[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 2]);
        c[6] = 1;
        c[8] = 1;
        c[10..12].copy_from_slice(&9000u16.to_le_bytes());
        let cfg = NetConfig::parse(&c).unwrap();
        assert_eq!(
            vpmd_uplink::MacAddr(cfg.mac).to_string(),
            "52:54:00:00:00:02"
        );
        assert_eq!((cfg.status, cfg.max_virtqueue_pairs, cfg.mtu), (1, 1, 9000));
        assert!(NetConfig::parse(&c[..11]).is_none());
    }
}
