// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A large TCP or UDP frame cut into segments, as the kernel's GSO does: each
//! segment is the frame's headers, rebuilt for it, followed by the next `size`
//! bytes of payload. [`Segmenter`] says where each segment's payload lies in the
//! frame and writes its headers once the caller has summed that payload, so the
//! payload itself is copied once, straight from the sender's buffers to the
//! receiver's.
//!
//! Per segment, as Linux's `tcp_gso_segment` / `udp4_ufo_fragment` (USO path):
//! IPv4 total length, identification (+1 per segment) and header checksum; IPv6
//! payload length; TCP sequence number (+`size` per segment), FIN and PSH only on
//! the last segment, CWR only on the first; UDP length; the L4 checksum over the
//! pseudo-header, the L4 header and the segment's payload.

use super::csum::Checksum;
use super::headers::{Headers, Ip, MAX_HEADERS};
use super::vnet_hdr::{GsoKind, Request};
use super::OffloadError;

/// Most segments vpmd cuts one frame into: a 64 KiB frame with an MSS of 64 bytes.
/// A guest asking for more (a tiny `gso_size`) gets its frame dropped rather than
/// a thousand-fold amplification.
pub const MAX_SEGMENTS: usize = 1024;

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// One segment: where its payload is in the original frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the payload in the frame.
    pub payload_at: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

/// The segments of one frame.
#[derive(Debug, Clone)]
pub struct Segmenter {
    /// The frame's headers, copied once.
    head: [u8; MAX_HEADERS],
    hdrs: Headers,
    size: usize,
    payload: usize,
    count: usize,
}

impl Segmenter {
    /// Plans the segmentation `request` asks for of a frame of `frame_len` bytes
    /// whose first bytes are `head` (at least the headers; more is ignored).
    /// Anything that does not add up is an error: the frame must be dropped.
    pub fn new(request: Request, head: &[u8], frame_len: usize) -> Result<Self, OffloadError> {
        let Request::Segment {
            kind,
            ipv6,
            size,
            start,
            offset,
        } = request
        else {
            return Err(OffloadError::UnknownGsoType(0));
        };
        if size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let hdrs = Headers::parse(head, kind)?;
        if kind == GsoKind::Tcp && ipv6 != matches!(hdrs.ip, Ip::V6) {
            return Err(OffloadError::Ip("gso_type names the other IP version"));
        }
        if !hdrs.names_l4_checksum(start, offset) {
            return Err(OffloadError::ChecksumMismatch { start, offset });
        }
        if frame_len < hdrs.len {
            return Err(OffloadError::Headers(MAX_HEADERS));
        }
        let size = usize::from(size);
        // Each segment must fit in one IP packet.
        if hdrs.len - hdrs.l3 + size > usize::from(u16::MAX) {
            return Err(OffloadError::L4("segment larger than an IP packet"));
        }
        let payload = frame_len - hdrs.len;
        let count = payload.div_ceil(size).max(1);
        if count > MAX_SEGMENTS {
            return Err(OffloadError::TooManySegments(count));
        }
        let mut copy = [0u8; MAX_HEADERS];
        copy[..hdrs.len].copy_from_slice(&head[..hdrs.len]);
        Ok(Segmenter {
            head: copy,
            hdrs,
            size,
            payload,
            count,
        })
    }

    /// How many segments.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Length of each segment's headers (the payload follows them).
    pub fn header_len(&self) -> usize {
        self.hdrs.len
    }

    /// Segment `i` (below [`Segmenter::count`]).
    pub fn segment(&self, i: usize) -> Segment {
        let at = i * self.size;
        Segment {
            payload_at: self.hdrs.len + at,
            payload_len: self.size.min(self.payload.saturating_sub(at)),
        }
    }

    /// Writes segment `i`'s headers into `out` (at least [`Segmenter::header_len`]
    /// bytes), complete with lengths and checksums; `payload` is the sum of the
    /// segment's payload bytes.
    pub fn write_headers(&self, i: usize, payload: Checksum, out: &mut [u8]) {
        self.fill(i, Some(payload), out);
    }

    /// Writes segment `i`'s headers as [`Segmenter::write_headers`] does, but with
    /// the L4 checksum left to the receiver (it negotiated GUEST_CSUM): the field
    /// holds the pseudo-header sum. Returns the `(csum_start, csum_offset)` to put
    /// in the segment's virtio-net header.
    pub fn write_headers_partial(&self, i: usize, out: &mut [u8]) -> (u16, u16) {
        self.fill(i, None, out);
        let h = self.hdrs;
        let offset = match h.kind {
            GsoKind::Tcp => 16,
            GsoKind::Udp => 6,
        };
        (h.l4 as u16, offset)
    }

    fn fill(&self, i: usize, payload: Option<Checksum>, out: &mut [u8]) {
        let h = self.hdrs;
        let out = &mut out[..h.len];
        out.copy_from_slice(&self.head[..h.len]);
        let seg = self.segment(i);
        let l4_len = h.len - h.l4 + seg.payload_len;
        let mut pseudo = Checksum::new();
        match h.ip {
            Ip::V4 { len } => {
                let total = (len + l4_len) as u16;
                put16(out, h.l3 + 2, total);
                let id = get16(out, h.l3 + 4).wrapping_add(i as u16);
                put16(out, h.l3 + 4, id);
                put16(out, h.l3 + 10, 0);
                let mut c = Checksum::new();
                c.add(&out[h.l3..h.l3 + len]);
                put16(out, h.l3 + 10, c.finish());
                pseudo.add(&out[h.l3 + 12..h.l3 + 20]);
                pseudo.add_u16(u16::from(out[h.l3 + 9]));
                pseudo.add_u16(l4_len as u16);
            }
            Ip::V6 => {
                put16(out, h.l3 + 4, l4_len as u16);
                pseudo.add(&out[h.l3 + 8..h.l3 + 40]);
                pseudo.add_u32(l4_len as u32);
                pseudo.add_u16(u16::from(out[h.l3 + 6]));
            }
        }
        let csum_at = match h.kind {
            GsoKind::Tcp => {
                let seq = get32(out, h.l4 + 4).wrapping_add((i * self.size) as u32);
                put32(out, h.l4 + 4, seq);
                let flags = &mut out[h.l4 + 13];
                if i + 1 < self.count {
                    *flags &= !(TCP_FIN | TCP_PSH);
                }
                if i > 0 {
                    *flags &= !TCP_CWR;
                }
                h.l4 + 16
            }
            GsoKind::Udp => {
                put16(out, h.l4 + 4, l4_len as u16);
                h.l4 + 6
            }
        };
        let Some(payload) = payload else {
            // CHECKSUM_PARTIAL, as Linux leaves it: the folded pseudo-header sum,
            // which the receiver's sum over the L4 header and payload completes.
            put16(out, csum_at, pseudo.fold());
            return;
        };
        put16(out, csum_at, 0);
        let mut c = pseudo;
        c.add(&out[h.l4..]);
        // The L4 header has an even length: the payload's sum continues it.
        c.add_sum(payload);
        let value = c.finish();
        // UDP sends 0 as "no checksum": a computed 0 goes as 0xffff (RFC 768),
        // as Linux does for every checksum it fills in.
        put16(out, csum_at, if value == 0 { 0xffff } else { value });
    }
}

/// The value for a checksum field whose bytes (from `csum_start` to the end, the
/// field holding the pseudo-header sum) add up to `sum`, as `skb_checksum_help`
/// fills it in.
pub fn checksum_field(sum: Checksum) -> u16 {
    match sum.finish() {
        0 => 0xffff,
        v => v,
    }
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
