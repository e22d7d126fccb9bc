// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Self-checking test frames: Ethernet / IPv4 / UDP, carrying a sequence number, the frame
//! length, a send timestamp and a checksum in the UDP payload.
//!
//! ```text
//! Ethernet  dst[6] src[6] type=0x0800
//! IPv4      20 bytes, DF, TTL 64, protocol UDP, valid header checksum, id 0
//! UDP       src port (base + flow), dst port, length, checksum 0 (none, allowed on IPv4)
//! payload   sum:u32 magic:u16=0x5642 seq:u48 len:u16 stamp:u32 | pattern bytes...
//! ```
//! Payload integers are little-endian. `sum` covers every payload byte after itself
//! ([`payload_sum`]), so corruption anywhere after the UDP header is caught; `len` is the
//! whole frame as sent, so truncation is caught; `seq` orders frames; `stamp` is the
//! sender's clock (ns, low 32 bits) for latency. A 60-byte frame has exactly these 18
//! payload bytes. [`FrameTemplate`] prepares everything that does not change per frame,
//! so writing one is a copy plus a few stores and the checksum.

use std::net::Ipv4Addr;

/// Ethernet + IPv4 + UDP header bytes: where the UDP payload starts.
pub const PAYLOAD_OFFSET: usize = 42;
/// Test header bytes at the start of the UDP payload.
pub const TEST_HDR_LEN: usize = 18;
/// Smallest test frame (the smallest Ethernet frame without FCS).
pub const MIN_LEN: usize = PAYLOAD_OFFSET + TEST_HDR_LEN;
/// Largest test frame: a 9000-byte MTU plus Ethernet and VLAN headers.
pub const MAX_LEN: usize = 9018;
/// Marks a test frame.
pub const MAGIC: u16 = 0x5642;
/// Sequence numbers are 48 bits.
pub const SEQ_MASK: u64 = (1 << 48) - 1;

const ETHERTYPE_IPV4: u16 = 0x0800;
const IPPROTO_UDP: u8 = 17;
const IP: usize = 14;
const UDP: usize = 34;
const SUM: usize = PAYLOAD_OFFSET;
const MAGIC_AT: usize = SUM + 4;
const SEQ: usize = MAGIC_AT + 2;
const LEN: usize = SEQ + 6;
const STAMP: usize = LEN + 2;

/// Addresses and ports written into test frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Ethernet source.
    pub src_mac: [u8; 6],
    /// Ethernet destination.
    pub dst_mac: [u8; 6],
    /// IPv4 source.
    pub src_ip: Ipv4Addr,
    /// IPv4 destination.
    pub dst_ip: Ipv4Addr,
    /// UDP source port of flow 0; flow `i` uses `src_port + i`.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
}

impl Default for Endpoints {
    /// Locally administered MACs and addresses from 198.18.0.0/15 (RFC 2544 benchmarking).
    fn default() -> Self {
        Endpoints {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            src_ip: Ipv4Addr::new(198, 18, 0, 1),
            dst_ip: Ipv4Addr::new(198, 19, 0, 1),
            src_port: 1024,
            dst_port: 1024,
        }
    }
}

/// What an intact test frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Sequence number.
    pub seq: u64,
    /// Frame length written by the sender.
    pub len: usize,
    /// Sender's timestamp (ns, low 32 bits; 0 if unused).
    pub stamp: u32,
}

/// Why a frame is not an intact test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame length outside [`MIN_LEN`]..=[`MAX_LEN`] was asked for.
    #[error("frame size {0} is outside {MIN_LEN}..={MAX_LEN}")]
    Size(usize),
    /// Shorter than [`MIN_LEN`]: cannot even be told apart.
    #[error("frame of {0} bytes is too short for a test frame")]
    TooShort(usize),
    /// Not IPv4/UDP or no magic: some other frame.
    #[error("not a test frame")]
    NotProbe,
    /// The IPv4 header checksum is wrong.
    #[error("bad IPv4 header checksum in frame seq {0}")]
    IpChecksum(u64),
    /// Length field and actual length differ.
    #[error("frame seq {seq} is {actual} bytes, sender wrote {sent}")]
    Length {
        /// Sequence number.
        seq: u64,
        /// Bytes received.
        actual: usize,
        /// Bytes sent.
        sent: usize,
    },
    /// Payload checksum mismatch.
    #[error("checksum mismatch in frame seq {0}")]
    Checksum(u64),
}

impl FrameError {
    /// The sequence number of a damaged test frame (its test header is intact enough).
    pub fn seq(&self) -> Option<u64> {
        match *self {
            FrameError::IpChecksum(seq)
            | FrameError::Length { seq, .. }
            | FrameError::Checksum(seq) => Some(seq),
            _ => None,
        }
    }
}

/// A prepared test frame of one length: per frame only the flow's port, seq, stamp and
/// checksum change.
#[derive(Clone, Debug)]
pub struct FrameTemplate {
    bytes: Vec<u8>,
    src_port: u16,
}

impl FrameTemplate {
    /// Prepares `len`-byte frames between `ep`.
    pub fn new(ep: &Endpoints, len: usize) -> Result<Self, FrameError> {
        if !(MIN_LEN..=MAX_LEN).contains(&len) {
            return Err(FrameError::Size(len));
        }
        let mut bytes = vec![0; len];
        write_headers(&mut bytes, ep);
        for (i, b) in bytes[STAMP + 4..].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(151).wrapping_add(7);
        }
        Ok(FrameTemplate {
            bytes,
            src_port: ep.src_port,
        })
    }

    /// Frame length.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Never true (a template is at least [`MIN_LEN`] bytes); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Writes frame `seq` of flow `flow` with timestamp `stamp` into `out` (at least
    /// [`FrameTemplate::len`] bytes); returns its length.
    #[inline]
    pub fn write(&self, out: &mut [u8], seq: u64, flow: u16, stamp: u32) -> usize {
        let len = self.bytes.len();
        let out = &mut out[..len];
        out.copy_from_slice(&self.bytes);
        out[UDP..UDP + 2].copy_from_slice(&self.src_port.wrapping_add(flow).to_be_bytes());
        seal(out, seq, stamp);
        len
    }
}

/// Writes a complete `len`-byte test frame (clamped to [`MIN_LEN`]..=[`MAX_LEN`]) into `buf`,
/// reusing its capacity; flow 0, no timestamp.
pub fn build(buf: &mut Vec<u8>, ep: &Endpoints, seq: u64, len: usize) {
    let len = len.clamp(MIN_LEN, MAX_LEN);
    buf.clear();
    buf.resize(len, 0);
    write_headers(buf, ep);
    let mut x = (seq & SEQ_MASK).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in &mut buf[STAMP + 4..] {
        // xorshift64: a payload that differs for every seq.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    seal(buf, seq, 0);
}

/// Damages a built frame on purpose: flips a bit of its last byte (a pattern byte, or the
/// stamp of a minimum-size frame), which the checksum covers but the seq does not.
#[inline]
pub fn corrupt(frame: &mut [u8]) {
    if let Some(b) = frame.last_mut() {
        *b ^= 0x01;
    }
}

/// Checks a received frame and returns what it carries.
#[inline]
pub fn check(frame: &[u8]) -> Result<Probe, FrameError> {
    if frame.len() < MIN_LEN {
        return Err(FrameError::TooShort(frame.len()));
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let magic = u16::from_le_bytes([frame[MAGIC_AT], frame[MAGIC_AT + 1]]);
    if ethertype != ETHERTYPE_IPV4
        || frame[IP] != 0x45
        || frame[IP + 9] != IPPROTO_UDP
        || magic != MAGIC
    {
        return Err(FrameError::NotProbe);
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes[..6].copy_from_slice(&frame[SEQ..SEQ + 6]);
    let seq = u64::from_le_bytes(seq_bytes);
    if internet_checksum(&frame[IP..IP + 20]) != 0 {
        return Err(FrameError::IpChecksum(seq));
    }
    let sent = usize::from(u16::from_le_bytes([frame[LEN], frame[LEN + 1]]));
    let ip_len = usize::from(u16::from_be_bytes([frame[IP + 2], frame[IP + 3]]));
    if sent != frame.len() || ip_len + IP != frame.len() {
        return Err(FrameError::Length {
            seq,
            actual: frame.len(),
            sent,
        });
    }
    let sum = u32::from_le_bytes(frame[SUM..SUM + 4].try_into().unwrap());
    if sum != payload_sum(&frame[SUM + 4..]) {
        return Err(FrameError::Checksum(seq));
    }
    let stamp = u32::from_le_bytes(frame[STAMP..STAMP + 4].try_into().unwrap());
    Ok(Probe {
        seq,
        len: sent,
        stamp,
    })
}

/// Checksum of the UDP payload after the sum field: a Fletcher-style pair of running
/// sums over 64-bit words (about one cycle per 8 bytes), folded to 32 bits. Any single
/// changed word, and any swap of two different words, changes it.
#[inline]
pub fn payload_sum(data: &[u8]) -> u32 {
    let (mut a, mut b) = (0x9e37_79b9_7f4a_7c15u64, 0u64);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        a = a.wrapping_add(u64::from_le_bytes(w.try_into().unwrap()));
        b = b.wrapping_add(a);
    }
    let rest = words.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    a = a.wrapping_add(u64::from_le_bytes(last) ^ ((data.len() as u64) << 48));
    b = b.wrapping_add(a);
    let x = a ^ b.rotate_left(23).wrapping_mul(0x2545_f491_4f6c_dd1d);
    (x ^ (x >> 32)) as u32
}

/// The Internet checksum (RFC 1071) of `data`: 0 over a header that carries a valid one.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet, IPv4 and UDP headers and the constant test header fields for `buf.len()`.
fn write_headers(buf: &mut [u8], ep: &Endpoints) {
    let len = buf.len();
    buf[0..6].copy_from_slice(&ep.dst_mac);
    buf[6..12].copy_from_slice(&ep.src_mac);
    buf[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let ip = &mut buf[IP..IP + 20];
    ip[0] = 0x45; // version 4, 5 words
    ip[1] = 0; // DSCP/ECN
    ip[2..4].copy_from_slice(&((len - IP) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0u16.to_be_bytes()); // id
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    ip[8] = 64; // TTL
    ip[9] = IPPROTO_UDP;
    ip[10..12].fill(0);
    ip[12..16].copy_from_slice(&ep.src_ip.octets());
    ip[16..20].copy_from_slice(&ep.dst_ip.octets());
    let csum = internet_checksum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut buf[UDP..UDP + 8];
    udp[0..2].copy_from_slice(&ep.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&ep.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&((len - UDP) as u16).to_be_bytes());
    udp[6..8].fill(0); // no UDP checksum
    buf[MAGIC_AT..MAGIC_AT + 2].copy_from_slice(&MAGIC.to_le_bytes());
    buf[LEN..LEN + 2].copy_from_slice(&(len as u16).to_le_bytes());
}

/// Writes seq and stamp, then the payload checksum over everything after it.
#[inline]
fn seal(frame: &mut [u8], seq: u64, stamp: u32) {
    frame[SEQ..SEQ + 6].copy_from_slice(&(seq & SEQ_MASK).to_le_bytes()[..6]);
    frame[STAMP..STAMP + 4].copy_from_slice(&stamp.to_le_bytes());
    let sum = payload_sum(&frame[SUM + 4..]);
    frame[SUM..SUM + 4].copy_from_slice(&sum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_size() {
        let ep = Endpoints::default();
        let mut buf = Vec::new();
        for len in [60, 61, 64, 67, 1514, 1518, 9000, 9018] {
            build(&mut buf, &ep, len as u64 * 3, len);
            assert_eq!(buf.len(), len);
            assert_eq!(&buf[..6], &ep.dst_mac);
            let p = check(&buf).unwrap();
            assert_eq!((p.seq, p.len, p.stamp), (len as u64 * 3, len, 0));
            let t = FrameTemplate::new(&ep, len).unwrap();
            let mut out = vec![0u8; len + 5];
            assert_eq!(t.write(&mut out, 77, 3, 0xdead_beef), len);
            let p = check(&out[..len]).unwrap();
            assert_eq!((p.seq, p.stamp), (77, 0xdead_beef));
            assert_eq!(u16::from_be_bytes([out[34], out[35]]), ep.src_port + 3);
        }
    }

    #[test]
    fn headers_are_valid_ipv4_udp() {
        let ep = Endpoints::default();
        let t = FrameTemplate::new(&ep, 64).unwrap();
        let mut f = [0u8; 64];
        t.write(&mut f, 1, 0, 0);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(
            internet_checksum(&f[14..34]),
            0,
            "valid IPv4 header checksum"
        );
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 50, "IP total length");
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 30, "UDP length");
        assert_eq!(&f[26..30], &[198, 18, 0, 1]);
        assert_eq!(&f[30..34], &[198, 19, 0, 1]);
        // A known header: RFC 1071's example sums to 0xddf2, checksum 0x220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn detects_damage() {
        let ep = Endpoints::default();
        let mut buf = Vec::new();
        build(&mut buf, &ep, 7, 100);
        let mut bad = buf.clone();
        corrupt(&mut bad);
        assert_eq!(check(&bad), Err(FrameError::Checksum(7)));
        let t = FrameTemplate::new(&ep, 60).unwrap();
        let mut small = [0u8; 60];
        t.write(&mut small, 9, 0, 0);
        corrupt(&mut small);
        assert_eq!(check(&small), Err(FrameError::Checksum(9)));
        let e = check(&buf[..99]).unwrap_err();
        assert!(matches!(
            e,
            FrameError::Length {
                seq: 7,
                actual: 99,
                sent: 100
            }
        ));
        assert_eq!(e.seq(), Some(7));
        bad = buf.clone();
        bad[12] = 0x86;
        assert_eq!(check(&bad), Err(FrameError::NotProbe));
        bad = buf.clone();
        bad[22] ^= 0x10; // TTL
        assert_eq!(check(&bad), Err(FrameError::IpChecksum(7)));
        assert_eq!(check(&buf[..10]), Err(FrameError::TooShort(10)));
        assert!(matches!(
            FrameTemplate::new(&ep, 59),
            Err(FrameError::Size(59))
        ));
    }

    #[test]
    fn sum_sees_swapped_words_and_every_bit() {
        let data: Vec<u8> = (0..64u8).collect();
        let s = payload_sum(&data);
        let mut swapped = data.clone();
        swapped[..8].swap_with_slice(&mut data.clone()[8..16]);
        swapped[8..16].copy_from_slice(&data[..8]);
        assert_ne!(payload_sum(&swapped), s);
        for bit in 0..data.len() * 8 {
            let mut d = data.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(payload_sum(&d), s, "bit {bit}");
        }
        assert_ne!(
            payload_sum(&data[..63]),
            payload_sum(&[&data[..63], &[0]].concat())
        );
    }
}
