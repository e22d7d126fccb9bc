// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A frame's Ethernet, IP and L4 headers, as segmentation needs them: where each
//! starts and how long it is, parsed from a local copy of the frame's first bytes
//! (so a guest rewriting its buffer meanwhile cannot make two reads disagree).

use super::vnet_hdr::GsoKind;
use super::OffloadError;

/// Most header bytes vpmd parses: Ethernet with one VLAN tag (18), IPv4 with
/// options (60) and TCP with options (60). IPv6 (40, no extension headers) fits.
pub const MAX_HEADERS: usize = 18 + 60 + 60;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Offset of the TCP checksum in its header.
pub const TCP_CSUM_OFFSET: u16 = 16;
/// Offset of the UDP checksum in its header.
pub const UDP_CSUM_OFFSET: u16 = 6;

/// The IP header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip {
    /// IPv4, header `len` bytes (with options).
    V4 {
        /// Header length (IHL * 4).
        len: usize,
    },
    /// IPv6 with no extension headers (40 bytes).
    V6,
}

/// Where a frame's headers are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// Offset of the IP header (14, or 18 behind a VLAN tag).
    pub l3: usize,
    /// The IP header.
    pub ip: Ip,
    /// Offset of the TCP or UDP header.
    pub l4: usize,
    /// TCP or UDP.
    pub kind: GsoKind,
    /// Offset of the payload: the length of all the headers.
    pub len: usize,
}

fn be16(b: &[u8], at: usize) -> Result<u16, OffloadError> {
    match b.get(at..at + 2) {
        Some(w) => Ok(u16::from_be_bytes([w[0], w[1]])),
        None => Err(OffloadError::Headers(MAX_HEADERS)),
    }
}

fn byte(b: &[u8], at: usize) -> Result<u8, OffloadError> {
    b.get(at).copied().ok_or(OffloadError::Headers(MAX_HEADERS))
}

impl Headers {
    /// Parses the headers from `head`, the frame's first bytes (at most
    /// [`MAX_HEADERS`] are looked at), for a segmentation of kind `kind`.
    /// Fragments, IPv6 extension headers and a protocol other than `kind` are
    /// refused: none of them can be segmented as asked.
    pub fn parse(head: &[u8], kind: GsoKind) -> Result<Headers, OffloadError> {
        let head = &head[..head.len().min(MAX_HEADERS)];
        let mut l3 = 14;
        let mut ethertype = be16(head, 12)?;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = be16(head, 16)?;
            l3 = 18;
        }
        let (ip, proto) = match ethertype {
            ETH_P_IPV4 => {
                let vihl = byte(head, l3)?;
                if vihl >> 4 != 4 {
                    return Err(OffloadError::Ip("IPv4 version is not 4"));
                }
                let len = usize::from(vihl & 0xf) * 4;
                if len < 20 {
                    return Err(OffloadError::Ip("IPv4 header shorter than 20 bytes"));
                }
                // MF set or a fragment offset: a fragment cannot be segmented.
                if be16(head, l3 + 6)? & 0x3fff != 0 {
                    return Err(OffloadError::Ip("IPv4 fragment"));
                }
                (Ip::V4 { len }, byte(head, l3 + 9)?)
            }
            ETH_P_IPV6 => {
                if byte(head, l3)? >> 4 != 6 {
                    return Err(OffloadError::Ip("IPv6 version is not 6"));
                }
                (Ip::V6, byte(head, l3 + 6)?)
            }
            other => return Err(OffloadError::EtherType(other)),
        };
        let l4 = l3
            + match ip {
                Ip::V4 { len } => len,
                Ip::V6 => 40,
            };
        let want = match kind {
            GsoKind::Tcp => IPPROTO_TCP,
            GsoKind::Udp => IPPROTO_UDP,
        };
        if proto != want {
            // For IPv6 this is also where extension headers end up.
            return Err(OffloadError::Protocol(proto));
        }
        let len = match kind {
            GsoKind::Tcp => {
                let doff = usize::from(byte(head, l4 + 12)? >> 4) * 4;
                if doff < 20 {
                    return Err(OffloadError::L4("TCP data offset below 20 bytes"));
                }
                l4 + doff
            }
            GsoKind::Udp => l4 + 8,
        };
        if len > head.len() {
            return Err(OffloadError::Headers(MAX_HEADERS));
        }
        Ok(Headers {
            l3,
            ip,
            l4,
            kind,
            len,
        })
    }

    /// Whether `start`/`offset` (the virtio-net header's) name this frame's L4
    /// checksum, as a segmentation request must.
    pub fn names_l4_checksum(&self, start: u16, offset: u16) -> bool {
        let want = match self.kind {
            GsoKind::Tcp => TCP_CSUM_OFFSET,
            GsoKind::Udp => UDP_CSUM_OFFSET,
        };
        usize::from(start) == self.l4 && offset == want
    }
}
