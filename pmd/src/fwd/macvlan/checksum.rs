// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! TCP and UDP checksums of frames arriving on the uplink.
//!
//! A frame from a real NIC carries a complete checksum. A frame that a network
//! namespace's own stack sends over a veth does not: veth offloads transmit
//! checksums, so the stack leaves the TCP/UDP field holding only the pseudo-header
//! sum (CHECKSUM_PARTIAL) for a receiver that would not check it; native XDP and
//! AF_XDP hand the bytes on as they are, and a guest given them drops every such
//! frame (guest-to-namespace TCP hangs at the SYN-ACK while ping works).
//!
//! vpmd tells the two apart cheaply: a partial frame's field equals the folded
//! pseudo-header sum, which it computes from the IP header alone; only then does it
//! sum the whole segment, and a frame that does not add up is treated as partial:
//! passed to a guest with GUEST_CSUM as `NEEDS_CSUM`, completed in software for
//! the others. A frame whose field is anything else is taken as complete, unread,
//! unless the uplink verifies every checksum ([`UplinkChecksums::Verify`]), which
//! counts frames that are neither right nor partial (`bad_checksum`).

use serde::Deserialize;
use vpmd_backend::offload::csum::Checksum;
use vpmd_backend::offload::headers::{Headers, Ip, TCP_CSUM_OFFSET, UDP_CSUM_OFFSET};
use vpmd_backend::offload::vnet_hdr::GsoKind;
use vpmd_backend::offload::OffloadError;
use vpmd_backend::seglist::{self, SegList};

/// What vpmd does with the TCP/UDP checksums of frames from an uplink
/// (`[[macvlan]] uplink_checksums`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UplinkChecksums {
    /// `fix` on a virtual interface (veth and the like: no `device` in sysfs),
    /// `trust` on a NIC.
    #[default]
    Auto,
    /// Frames arrive complete: nothing is looked at.
    Trust,
    /// Partial checksums are completed (or left to a guest that takes them).
    Fix,
    /// As `fix`, and every other checksum is verified: wrong ones are counted.
    Verify,
}

impl UplinkChecksums {
    /// `Auto` decided for the interface `ifname`.
    pub fn resolve(self, ifname: &str) -> UplinkChecksums {
        match self {
            UplinkChecksums::Auto => {
                let nic = std::path::Path::new("/sys/class/net")
                    .join(ifname)
                    .join("device")
                    .exists();
                if nic {
                    UplinkChecksums::Trust
                } else {
                    UplinkChecksums::Fix
                }
            }
            other => other,
        }
    }

    /// The name in the config file and logs.
    pub fn name(self) -> &'static str {
        match self {
            UplinkChecksums::Auto => "auto",
            UplinkChecksums::Trust => "trust",
            UplinkChecksums::Fix => "fix",
            UplinkChecksums::Verify => "verify",
        }
    }
}

/// What a frame's L4 checksum turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Complete (or not looked at), or no TCP/UDP checksum to speak of.
    Complete,
    /// Only the pseudo-header sum: the sum from `start` on goes at `start + offset`.
    Partial {
        /// The L4 header's offset.
        start: u16,
        /// The checksum field's offset in it.
        offset: u16,
    },
    /// Neither right nor partial (only found when verifying).
    Bad,
}

/// The verdict on a frame's TCP/UDP checksum; `verify`: check complete ones too.
/// `frame` is the whole frame in one piece, or its first part when it came in
/// several (`whole`: all of them; the headers must be in the first, else the frame
/// is not looked at).
pub fn classify(frame: &[u8], whole: Option<&SegList>, verify: bool) -> Verdict {
    let total = whole.map_or(frame.len(), |w| w.total() as usize);
    let hdrs = match Headers::parse(frame, GsoKind::Tcp) {
        Ok(h) => h,
        Err(OffloadError::Protocol(17)) => match Headers::parse(frame, GsoKind::Udp) {
            Ok(h) => h,
            Err(_) => return Verdict::Complete,
        },
        Err(_) => return Verdict::Complete,
    };
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    // The L4 length from the IP header: a short frame may carry Ethernet padding.
    let (l4_len, mut pseudo) = match hdrs.ip {
        Ip::V4 { len } => {
            let total = usize::from(be16(hdrs.l3 + 2));
            let mut p = Checksum::new();
            p.add(&frame[hdrs.l3 + 12..hdrs.l3 + 20]);
            (total.saturating_sub(len), p)
        }
        Ip::V6 => {
            let mut p = Checksum::new();
            p.add(&frame[hdrs.l3 + 8..hdrs.l3 + 40]);
            (usize::from(be16(hdrs.l3 + 4)), p)
        }
    };
    let end = hdrs.l4 + l4_len;
    if end > total || l4_len < hdrs.len - hdrs.l4 {
        return Verdict::Complete;
    }
    let (proto, offset) = match hdrs.kind {
        GsoKind::Tcp => (6u16, TCP_CSUM_OFFSET),
        GsoKind::Udp => (17, UDP_CSUM_OFFSET),
    };
    match hdrs.ip {
        Ip::V4 { .. } => pseudo.add_u16(l4_len as u16),
        Ip::V6 => pseudo.add_u32(l4_len as u32),
    }
    pseudo.add_u16(proto);
    let field = be16(hdrs.l4 + usize::from(offset));
    if hdrs.kind == GsoKind::Udp && field == 0 && matches!(hdrs.ip, Ip::V4 { .. }) {
        return Verdict::Complete; // IPv4 UDP without a checksum.
    }
    let looks_partial = field == pseudo.fold();
    if !looks_partial && !verify {
        return Verdict::Complete;
    }
    let mut sum = pseudo;
    match whole {
        None => sum.add(&frame[hdrs.l4..end]),
        Some(w) => {
            seglist::sum(w, hdrs.l4 as u32, l4_len as u32, &mut sum);
        }
    }
    if sum.fold() == 0xffff {
        Verdict::Complete
    } else if looks_partial {
        Verdict::Partial {
            start: hdrs.l4 as u16,
            offset,
        }
    } else {
        Verdict::Bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 TCP frame (or UDP) with a complete checksum, and its L4 offset.
    fn frame(udp: bool, payload: &[u8]) -> (Vec<u8>, usize) {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let l4_len = if udp { 8 } else { 20 } + payload.len();
        f.extend_from_slice(&[0x45, 0]);
        f.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        let proto = if udp { 17 } else { 6 };
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2]);
        let l4 = f.len();
        if udp {
            f.extend_from_slice(&[0x0f, 0xa0, 0x13, 0x89]);
            f.extend_from_slice(&(l4_len as u16).to_be_bytes());
            f.extend_from_slice(&[0, 0]);
        } else {
            f.extend_from_slice(&[0x0f, 0xa0, 0x13, 0x89, 0, 0, 0, 1, 0, 0, 0, 0]);
            f.extend_from_slice(&[0x50, 0x12, 0xff, 0xff, 0, 0, 0, 0]);
        }
        f.extend_from_slice(payload);
        let mut p = Checksum::new();
        p.add(&f[26..34]);
        p.add_u16(l4_len as u16);
        p.add_u16(u16::from(proto));
        let at = l4 + if udp { 6 } else { 16 };
        let mut c = p;
        c.add(&f[l4..]);
        f[at..at + 2]
            .copy_from_slice(&vpmd_backend::offload::segment::checksum_field(c).to_be_bytes());
        (f, l4)
    }

    /// The same frame as a veth peer's stack sends it: the pseudo-header sum only.
    fn partial(f: &mut [u8], l4: usize, udp: bool) {
        let l4_len = f.len() - l4;
        let mut p = Checksum::new();
        p.add(&f[26..34]);
        p.add_u16(l4_len as u16);
        p.add_u16(if udp { 17 } else { 6 });
        let at = l4 + if udp { 6 } else { 16 };
        f[at..at + 2].copy_from_slice(&p.fold().to_be_bytes());
    }

    #[test]
    fn complete_partial_and_bad_checksums_are_told_apart() {
        for udp in [false, true] {
            let (mut f, l4) = frame(udp, b"hello, odd length");
            assert_eq!(classify(&f, None, false), Verdict::Complete);
            assert_eq!(classify(&f, None, true), Verdict::Complete);
            let offset = if udp { 6 } else { 16 };
            partial(&mut f, l4, udp);
            let want = Verdict::Partial {
                start: l4 as u16,
                offset,
            };
            assert_eq!(classify(&f, None, false), want, "udp={udp}");
            assert_eq!(classify(&f, None, true), want);
            let at = l4 + usize::from(offset);
            f[at] ^= 0x40;
            assert_eq!(
                classify(&f, None, false),
                Verdict::Complete,
                "not looked at"
            );
            assert_eq!(classify(&f, None, true), Verdict::Bad);
        }
    }

    #[test]
    fn padding_and_non_l4_frames_are_left_alone() {
        let (mut f, l4) = frame(false, b"");
        partial(&mut f, l4, false);
        f.extend_from_slice(&[0; 6]); // Ethernet padding to 60 bytes
        assert!(matches!(classify(&f, None, false), Verdict::Partial { .. }));
        let arp = [0xffu8; 42];
        assert_eq!(classify(&arp, None, true), Verdict::Complete);
        assert_eq!(
            classify(&f[..30], None, true),
            Verdict::Complete,
            "cut short"
        );
    }

    #[test]
    fn a_frame_in_parts_is_summed_across_them() {
        let payload: Vec<u8> = (0..9000u32).map(|i| (i * 7) as u8).collect();
        for udp in [false, true] {
            let (complete, l4) = frame(udp, &payload);
            let mut part = complete.clone();
            partial(&mut part, l4, udp);
            let mut corrupt = complete.clone();
            *corrupt.last_mut().unwrap() ^= 1;
            let want_partial = Verdict::Partial {
                start: l4 as u16,
                offset: if udp { 6 } else { 16 },
            };
            for (f, verify, want) in [
                // Complete only if every part is summed, at its parity.
                (&complete, true, Verdict::Complete),
                (&part, false, want_partial),
                (&corrupt, true, Verdict::Bad),
                (&corrupt, false, Verdict::Complete),
            ] {
                // Parts of odd and even lengths, the headers in the first.
                let cuts = [0, 3841, 7680, 7681, f.len()];
                let mut whole = SegList::default();
                for w in cuts.windows(2) {
                    // SAFETY: `f` outlives `whole`, which is only read.
                    #[allow(unsafe_code)]
                    let buf =
                        unsafe { vpmd_backend::guest_mem::HostBuf::from_bytes(&f[w[0]..w[1]]) };
                    assert!(whole.push(buf));
                }
                assert_eq!(
                    classify(&f[..3841], Some(&whole), verify),
                    want,
                    "udp={udp}"
                );
                assert_eq!(classify(f, None, verify), want);
            }
        }
    }
}
