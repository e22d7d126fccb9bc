// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Checksum and segmentation offload, done in software where a receiver cannot.
//!
//! A guest that negotiated `CSUM` / `HOST_TSO*` hands vpmd frames with a virtio-net
//! header that asks for work: a checksum left to fill in, or a large TCP/UDP frame
//! to cut into MTU-sized segments. When the receiver negotiated the same offloads
//! the frame passes through unchanged; when it did not, vpmd does what the kernel's
//! `skb_checksum_help` and GSO would have done, straight into the receiver's
//! buffers. This module is that work, on bytes, with no guest memory of its own:
//!
//! - [`vnet_hdr`]: the offload fields of the virtio-net header, read once and
//!   checked into a [`vnet_hdr::Request`].
//! - [`csum`]: the Internet checksum (RFC 1071), summed piece by piece.
//! - [`headers`]: the Ethernet (one VLAN tag at most), IPv4/IPv6 and TCP/UDP headers
//!   of a frame, parsed from a local copy and checked against the request.
//! - [`segment`]: a large frame's segments: where each one's payload is in the
//!   frame, and its rebuilt headers (lengths, IPv4 id, TCP sequence and flags,
//!   checksums).
//!
//! Everything a guest wrote is untrusted: each function checks what it reads and
//! reports a lie as an [`OffloadError`], which the data path counts as a drop
//! (`bad_offload`); nothing here reads past the bytes it is given or loops more
//! than [`segment::MAX_SEGMENTS`] times.

pub mod csum;
pub mod headers;
pub mod segment;
pub mod vnet_hdr;

#[cfg(test)]
mod tests;

/// Why a frame's offload request cannot be carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// `gso_type` is none of the kinds virtio-net defines.
    #[error("unknown gso_type {0:#x}")]
    UnknownGsoType(u8),
    /// A kind vpmd does not segment (UFO: IPv4 fragmentation of UDP).
    #[error("gso_type {0:#x} is not supported")]
    UnsupportedGso(u8),
    /// Segmentation asked for with a zero segment size.
    #[error("gso_size is 0")]
    ZeroGsoSize,
    /// Segmentation asked for without `NEEDS_CSUM` (the spec requires both).
    #[error("segmentation without NEEDS_CSUM")]
    GsoWithoutChecksum,
    /// `csum_start` / `csum_offset` point outside the frame.
    #[error("checksum at {start}+{offset} is outside the {len}-byte frame")]
    ChecksumOutside {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
        /// Frame length.
        len: usize,
    },
    /// The frame's headers are cut short, or longer than vpmd parses.
    #[error("headers truncated or longer than {0} bytes")]
    Headers(usize),
    /// Not IPv4 or IPv6 (after at most one VLAN tag).
    #[error("ethertype {0:#06x} cannot be segmented")]
    EtherType(u16),
    /// A malformed or unsupported IP header (bad version or length, a fragment,
    /// IPv6 extension headers).
    #[error("IP header unusable: {0}")]
    Ip(&'static str),
    /// The L4 protocol is not the one the request names.
    #[error("L4 protocol {0} does not match the request")]
    Protocol(u8),
    /// A malformed TCP or UDP header.
    #[error("L4 header unusable: {0}")]
    L4(&'static str),
    /// The checksum fields do not name the L4 header's checksum.
    #[error("csum_start/csum_offset {start}/{offset} do not name the L4 checksum")]
    ChecksumMismatch {
        /// `csum_start`.
        start: u16,
        /// `csum_offset`.
        offset: u16,
    },
    /// More segments than vpmd cuts one frame into.
    #[error("{0} segments: more than {max}", max = segment::MAX_SEGMENTS)]
    TooManySegments(usize),
    /// The header asks for an offload the driver did not negotiate.
    #[error("{0} asked for but not negotiated")]
    NotNegotiated(&'static str),
    /// The checksum field lies further into the frame than vpmd rebuilds headers.
    #[error("checksum field at byte {0}: beyond the first {max} bytes", max = headers::MAX_HEADERS)]
    ChecksumTooDeep(usize),
}

/// What the TX header `vnet` of a `len`-byte frame asks for, checked against the
/// frame and against what the `sender`'s driver negotiated: a driver without CSUM
/// asks for nothing (its header is not read), one that sets a bit it did not
/// negotiate lies.
pub fn tx_request(
    vnet: &[u8; vnet_hdr::LEN],
    sender: crate::net::Offloads,
    len: usize,
) -> Result<vnet_hdr::Request, OffloadError> {
    if !sender.host_csum() {
        return Ok(vnet_hdr::Request::None);
    }
    let hdr = vnet_hdr::VnetHdr::from_bytes(vnet);
    let request = hdr.request(len)?;
    if let vnet_hdr::Request::Segment { kind, ipv6, .. } = request {
        match kind {
            vnet_hdr::GsoKind::Tcp if !sender.host_tso(ipv6) => {
                return Err(OffloadError::NotNegotiated(if ipv6 {
                    "HOST_TSO6"
                } else {
                    "HOST_TSO4"
                }))
            }
            vnet_hdr::GsoKind::Udp => return Err(OffloadError::NotNegotiated("HOST_USO")),
            vnet_hdr::GsoKind::Tcp => {}
        }
        if hdr.gso_type & vnet_hdr::GSO_ECN != 0 && !sender.host_ecn() {
            return Err(OffloadError::NotNegotiated("HOST_ECN"));
        }
    }
    Ok(request)
}
