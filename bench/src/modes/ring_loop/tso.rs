// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ring-loop --tso`: the large TCP frames port A sends, as Linux hands them to a
//! virtio-net device with TSO, and the checks of what arrives on port B, whole or cut
//! into segments.
//!
//! Frame `i` (TX descriptor `i`) is one TCP/IPv4 frame of `--size` bytes:
//!
//! ```text
//! virtio-net  flags NEEDS_CSUM, gso_type TCPV4, hdr_len 54, gso_size MSS,
//!             csum_start 34, csum_offset 16 (the TCP checksum), num_buffers 0
//! Ethernet    to B's MAC from A's, type IPv4
//! IPv4        20 bytes, DF, TTL 64, id i, valid header checksum, 198.18.0.1 -> 198.19.0.1
//! TCP         20 bytes, 1024 -> 5201, seq SEQ_BASE + i * P, ACK|PSH, window 512,
//!             checksum field = the pseudo-header sum (CHECKSUM_PARTIAL, as Linux sends)
//! payload     P = size - 54 bytes, byte o = pattern(i, o)
//! ```
//!
//! So the frames of one ring are one TCP stream, descriptor after descriptor; a
//! segment names its frame and its place in it by its sequence number alone, and its
//! payload can be checked against the pattern without the sender's buffers. The TCP
//! header has no options (a Linux sender adds 12 bytes of timestamps), so an MTU of
//! 1500 takes an MSS of 1460.
//!
//! What arrives is checked as Linux's `tcp_gso_segment` would have cut it
//! ([`TsoFrames::check_segment`]): IPv4 total length, id (+1 per segment) and header
//! checksum, sequence number, PSH on the last segment only, payload, and the TCP
//! checksum complete (or, for a receiver with `GUEST_CSUM`, left partial with
//! `NEEDS_CSUM` naming it); or, passed whole, the frame and header exactly as sent
//! ([`TsoFrames::check_whole`]). The MACs are not checked: a forwarding engine that
//! segments (testpmd's csum engine with GSO) rewrites them.

use serde::Serialize;

/// Ethernet + IPv4 + TCP header bytes, none with options.
pub const HEADERS: usize = 54;
/// The largest TSO frame: an IPv4 packet of 65535 bytes behind its Ethernet header.
pub const MAX_FRAME: usize = 14 + 65535;
/// Most segments a frame may be cut into (vpmd's limit; Linux's is 64 KiB / MSS).
pub const MAX_SEGMENTS: usize = 1024;
/// Sequence number of the first payload byte of frame 0.
pub const SEQ_BASE: u32 = 0x1000_0000;

const IP: usize = 14;
const TCP: usize = 34;
const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
const SRC_IP: [u8; 4] = [198, 18, 0, 1];
const DST_IP: [u8; 4] = [198, 19, 0, 1];

/// The offloads the receiving port (B) negotiates.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RxOffloads {
    /// GUEST_CSUM and GUEST_TSO4: frames may pass whole.
    Tso,
    /// GUEST_CSUM only: the backend segments, and may leave checksums partial.
    Csum,
    /// Neither: the backend segments and fills every checksum in.
    None,
}

impl RxOffloads {
    /// Whether a backend must cut frames into segments for this receiver.
    pub fn segmented(self) -> bool {
        self != RxOffloads::Tso
    }
}

/// Why a TSO frame shape is impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TsoError {
    /// The frame is not longer than its headers and one MSS, or longer than an IPv4
    /// packet can be.
    #[error("TSO frame size {size} is outside {min}..={MAX_FRAME} for an MSS of {mss}")]
    Size {
        /// Frame size asked for.
        size: usize,
        /// MSS asked for.
        mss: u16,
        /// Smallest size that is still more than one segment.
        min: usize,
    },
    /// Zero, or so small that the frame would be more than [`MAX_SEGMENTS`] segments.
    #[error("MSS {mss} cuts a {size}-byte frame into more than {MAX_SEGMENTS} segments")]
    Mss {
        /// MSS asked for.
        mss: u16,
        /// Frame size.
        size: usize,
    },
}

/// The shape of the TSO frames: size and MSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TsoFrames {
    size: usize,
    mss: u16,
}

/// The one's-complement sum of `b` as big-endian 16-bit words (odd tail padded).
fn sum16(b: &[u8]) -> u32 {
    let mut s: u32 = b
        .chunks_exact(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .fold(0u32, |a, w| {
            let (v, c) = a.overflowing_add(w);
            v + u32::from(c)
        });
    if let [.., last] = b {
        if b.len() % 2 == 1 {
            s += u32::from(*last) << 8;
        }
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The TCP pseudo-header sum for a TCP segment of `tcp_len` bytes.
fn pseudo(tcp_len: usize) -> u32 {
    sum16(&SRC_IP) + sum16(&DST_IP) + 6 + tcp_len as u32
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Byte `o` of frame `i`'s payload.
#[inline]
fn pattern(i: u16, o: usize) -> u8 {
    (o as u8) ^ (o >> 8) as u8 ^ (i as u8).wrapping_mul(37)
}

impl TsoFrames {
    /// Frames of `size` bytes to be cut into segments of `mss` payload bytes.
    pub fn new(size: usize, mss: u16) -> Result<Self, TsoError> {
        let min = HEADERS + usize::from(mss) + 1;
        if mss == 0
            || (size > HEADERS && (size - HEADERS).div_ceil(usize::from(mss)) > MAX_SEGMENTS)
        {
            return Err(TsoError::Mss { mss, size });
        }
        if !(min..=MAX_FRAME).contains(&size) {
            return Err(TsoError::Size { size, mss, min });
        }
        Ok(TsoFrames { size, mss })
    }

    /// Frame size.
    pub fn size(&self) -> usize {
        self.size
    }

    /// TCP payload bytes per frame.
    pub fn payload(&self) -> usize {
        self.size - HEADERS
    }

    /// Segments per frame.
    pub fn segments(&self) -> usize {
        self.payload().div_ceil(usize::from(self.mss))
    }

    /// The MSS (`gso_size`).
    pub fn mss(&self) -> u16 {
        self.mss
    }

    /// Sequence number of frame `i`'s first payload byte.
    fn seq(&self, i: u16) -> u32 {
        SEQ_BASE.wrapping_add(u32::from(i).wrapping_mul(self.payload() as u32))
    }

    /// The headers (Ethernet, IPv4, TCP) of frame `i`, as sent, from `src` to `dst`.
    fn headers(&self, i: u16, src: [u8; 6], dst: [u8; 6]) -> [u8; HEADERS] {
        let mut h = [0u8; HEADERS];
        h[0..6].copy_from_slice(&dst);
        h[6..12].copy_from_slice(&src);
        h[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut h[IP..TCP];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((self.size - IP) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&i.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&SRC_IP);
        ip[16..20].copy_from_slice(&DST_IP);
        let c = !fold(sum16(ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let tcp = &mut h[TCP..];
        tcp[0..2].copy_from_slice(&1024u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq(i).to_be_bytes());
        tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = TCP_ACK | TCP_PSH;
        tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
        let partial = fold(pseudo(self.size - TCP));
        tcp[16..18].copy_from_slice(&partial.to_be_bytes());
        h
    }

    /// The virtio-net header of every frame (its first `hdr.len()` bytes: 10 or 12).
    pub fn write_hdr(&self, hdr: &mut [u8]) {
        let mut h = [0u8; 12];
        h[0] = NEEDS_CSUM;
        h[1] = GSO_TCPV4;
        h[2..4].copy_from_slice(&(HEADERS as u16).to_le_bytes());
        h[4..6].copy_from_slice(&self.mss.to_le_bytes());
        h[6..8].copy_from_slice(&(TCP as u16).to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        let n = hdr.len().min(12);
        hdr[..n].copy_from_slice(&h[..n]);
    }

    /// Writes frame `i` from `src` to `dst` into `out` (at least [`size`](Self::size)
    /// bytes); returns its length.
    pub fn write(&self, i: u16, src: [u8; 6], dst: [u8; 6], out: &mut [u8]) -> usize {
        out[..HEADERS].copy_from_slice(&self.headers(i, src, dst));
        for (o, b) in out[HEADERS..self.size].iter_mut().enumerate() {
            *b = pattern(i, o);
        }
        self.size
    }

    /// Checks a frame received whole (`hdr` its virtio-net header, without
    /// `num_buffers`): frame `i` as sent, for some `i`, with either the header as sent
    /// (`Ok(true)`) or no offload request left and the TCP checksum filled in
    /// (`Ok(false)`: what DPDK's net_vhost with io forwarding delivers: it completes the
    /// checksum on dequeue and does not pass the GSO request on).
    pub fn check_whole(
        &self,
        hdr: &[u8],
        frame: &[u8],
        src: [u8; 6],
        dst: [u8; 6],
    ) -> Result<bool, String> {
        let mut want = [0u8; 12];
        self.write_hdr(&mut want);
        let n = hdr.len().min(10);
        if frame.len() != self.size {
            return Err(format!(
                "TSO frame of {} bytes, sent {}",
                frame.len(),
                self.size
            ));
        }
        let i = be16(frame, IP + 4);
        let sent = self.headers(i, src, dst);
        let csum = TCP + 16..TCP + 18;
        // From the EtherType on: a forwarding engine may rewrite the MACs.
        if frame[12..csum.start] != sent[12..csum.start]
            || frame[csum.end..HEADERS] != sent[csum.end..]
        {
            return Err(format!("TSO frame {i}: headers changed"));
        }
        if let Some(o) = (0..self.payload()).find(|&o| frame[HEADERS + o] != pattern(i, o)) {
            return Err(format!("TSO frame {i}: payload byte {o} changed"));
        }
        if hdr[..n] == want[..n] {
            // The pseudo-header sum with the TCP length (Linux) or without (DPDK's TSO
            // convention, which its vhost library writes): a receiving stack completes
            // either, or trusts it.
            let field = be16(frame, csum.start);
            return if field == fold(pseudo(self.size - TCP)) || field == fold(pseudo(0)) {
                Ok(true)
            } else {
                Err(format!(
                    "TSO frame {i}: partial checksum {field:#06x}, sent {:#06x}",
                    fold(pseudo(self.size - TCP))
                ))
            };
        }
        if hdr[0] & NEEDS_CSUM != 0 || hdr[1] != 0 {
            return Err(format!(
                "TSO frame passed with header {:02x?}, sent {:02x?}",
                &hdr[..n],
                &want[..n]
            ));
        }
        if fold(pseudo(self.size - TCP) + sum16(&frame[TCP..])) != 0xffff {
            return Err(format!(
                "TSO frame {i} passed without its offload request and a wrong TCP checksum"
            ));
        }
        Ok(false)
    }

    /// Checks one segment (`hdr` its virtio-net header, without `num_buffers`): a TCP
    /// segment of some frame `i`, at a multiple of the MSS, cut as Linux's GSO cuts it,
    /// its TCP checksum complete or, with `partial_ok`, possibly left partial and named
    /// by the header. Returns `(i, segment index)`.
    pub fn check_segment(
        &self,
        hdr: &[u8],
        frame: &[u8],
        partial_ok: bool,
    ) -> Result<(u16, usize), String> {
        if frame.len() < HEADERS || hdr.len() < 10 {
            return Err(format!("segment of {} bytes", frame.len()));
        }
        if hdr[1] != 0 {
            return Err(format!("segment with gso_type {}", hdr[1]));
        }
        let ip = &frame[IP..TCP];
        if ip[0] != 0x45 || ip[9] != 6 || fold(sum16(ip)) != 0xffff {
            return Err("segment: not IPv4/TCP with a valid header checksum".into());
        }
        if usize::from(be16(ip, 2)) != frame.len() - IP {
            return Err(format!(
                "segment IPv4 total length {} in a {}-byte frame",
                be16(ip, 2),
                frame.len()
            ));
        }
        let tcp = &frame[TCP..];
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let s = seq.wrapping_sub(SEQ_BASE) as usize;
        let (p, mss) = (self.payload(), usize::from(self.mss));
        let (i, at) = (s / p, s % p);
        if i > usize::from(u16::MAX) || at % mss != 0 {
            return Err(format!(
                "segment seq {seq:#x} is not at an MSS boundary of a frame"
            ));
        }
        let (i, k) = (i as u16, at / mss);
        let len = mss.min(p - at);
        if frame.len() != HEADERS + len {
            return Err(format!(
                "segment {k} of frame {i}: {} payload bytes, expected {len}",
                frame.len() - HEADERS
            ));
        }
        if be16(ip, 4) != i.wrapping_add(k as u16) {
            return Err(format!("segment {k} of frame {i}: IPv4 id {}", be16(ip, 4)));
        }
        let last = at + len == p;
        if tcp[13] != TCP_ACK | if last { TCP_PSH } else { 0 } {
            return Err(format!(
                "segment {k} of frame {i}: TCP flags {:#x}",
                tcp[13]
            ));
        }
        if let Some(o) = (0..len).find(|&o| frame[HEADERS + o] != pattern(i, at + o)) {
            return Err(format!("segment {k} of frame {i}: payload byte {o} wrong"));
        }
        let tcp_len = frame.len() - TCP;
        let field = be16(tcp, 16);
        if hdr[0] & NEEDS_CSUM != 0 {
            if !partial_ok {
                return Err(format!(
                    "segment {k} of frame {i}: NEEDS_CSUM to a receiver without GUEST_CSUM"
                ));
            }
            if (le16(hdr, 6), le16(hdr, 8)) != (TCP as u16, 16) || field != fold(pseudo(tcp_len)) {
                return Err(format!("segment {k} of frame {i}: partial checksum wrong"));
            }
        } else if fold(pseudo(tcp_len) + sum16(tcp)) != 0xffff {
            return Err(format!("segment {k} of frame {i}: TCP checksum wrong"));
        }
        Ok((i, k))
    }
}
