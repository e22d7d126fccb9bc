// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The offload fields of `struct virtio_net_hdr` (virtio 1.x, 5.1.6): read once from
//! the guest's bytes, then checked into a [`Request`].

use super::OffloadError;

/// Size of the fields this module reads (`num_buffers` follows with VERSION_1).
pub const LEN: usize = 10;

/// `flags`: the checksum from `csum_start` to the end is left to do.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags` (device to driver): the checksum has been validated.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type`: no segmentation.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP fragmentation offload (UFO).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: UDP segmentation (USO), IPv4 or IPv6.
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` flag: the TCP frame carries ECN's CWR (HOST_ECN).
pub const GSO_ECN: u8 = 0x80;

/// The header's offload fields, as the guest wrote them (little endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnetHdr {
    /// `F_*` bits.
    pub flags: u8,
    /// `GSO_*` kind, with `GSO_ECN`.
    pub gso_type: u8,
    /// Length of the headers (a hint; vpmd parses them itself).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed bytes start.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum goes.
    pub csum_offset: u16,
}

/// What a frame's header asks vpmd (or the receiver) to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Nothing: the frame is complete.
    None,
    /// Fill in the checksum: the ones' complement sum of the bytes from `start` to
    /// the end, stored at `start + offset` (which holds the pseudo-header sum).
    Checksum {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
    },
    /// Cut the frame into segments of `size` payload bytes, each with its
    /// checksum done.
    Segment {
        /// TCP (IPv4 or IPv6: the headers say which) or UDP.
        kind: GsoKind,
        /// The IP version the request names.
        ipv6: bool,
        /// Payload bytes per segment.
        size: u16,
        /// `csum_start` / `csum_offset`, which must name the L4 checksum.
        start: u16,
        /// See `start`.
        offset: u16,
    },
}

/// The L4 protocol of a segmentation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP segmentation (TSO).
    Tcp,
    /// UDP segmentation (USO): one UDP datagram per segment.
    Udp,
}

impl VnetHdr {
    /// The fields from the first [`LEN`] bytes of a header.
    pub fn from_bytes(b: &[u8; LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// The header's bytes.
    pub fn to_bytes(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }

    /// What the header asks for, checked against a frame of `frame_len` bytes.
    /// `DATA_VALID` and unknown flag bits are ignored on the way in, as Linux does.
    pub fn request(&self, frame_len: usize) -> Result<Request, OffloadError> {
        let needs_csum = self.flags & F_NEEDS_CSUM != 0;
        let checksum_inside = || {
            let end = usize::from(self.csum_start) + usize::from(self.csum_offset) + 2;
            if end > frame_len {
                Err(OffloadError::ChecksumOutside {
                    start: self.csum_start,
                    offset: self.csum_offset,
                    len: frame_len,
                })
            } else {
                Ok(())
            }
        };
        let (kind, ipv6) = match self.gso_type & !GSO_ECN {
            GSO_NONE => {
                if !needs_csum {
                    return Ok(Request::None);
                }
                checksum_inside()?;
                return Ok(Request::Checksum {
                    start: self.csum_start,
                    offset: self.csum_offset,
                });
            }
            GSO_TCPV4 => (GsoKind::Tcp, false),
            GSO_TCPV6 => (GsoKind::Tcp, true),
            // USO names no IP version: the headers decide (`ipv6` is checked
            // against them only for TCP).
            GSO_UDP_L4 => (GsoKind::Udp, false),
            GSO_UDP => return Err(OffloadError::UnsupportedGso(self.gso_type)),
            _ => return Err(OffloadError::UnknownGsoType(self.gso_type)),
        };
        if !needs_csum {
            return Err(OffloadError::GsoWithoutChecksum);
        }
        if self.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        checksum_inside()?;
        Ok(Request::Segment {
            kind,
            ipv6,
            size: self.gso_size,
            start: self.csum_start,
            offset: self.csum_offset,
        })
    }
}
