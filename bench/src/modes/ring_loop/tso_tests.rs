// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The TSO frames of `ring-loop --tso` and their checks, against etherparse (an
//! implementation of its own) and a reference segmentation written here the way
//! Linux's `tcp_gso_segment` cuts a frame.

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};

use super::tso::{TsoError, TsoFrames, HEADERS, MAX_FRAME, SEQ_BASE};
use super::MACS;

const A: [u8; 6] = MACS[0];
const B: [u8; 6] = MACS[1];

/// Frame `i` of `t` and its 12-byte virtio-net header.
fn frame(t: &TsoFrames, i: u16) -> ([u8; 12], Vec<u8>) {
    let mut hdr = [0u8; 12];
    t.write_hdr(&mut hdr);
    let mut f = vec![0u8; t.size()];
    assert_eq!(t.write(i, A, B, &mut f), t.size());
    (hdr, f)
}

/// Segment `k` of `frame` cut at `mss`, checksums filled in by etherparse: IPv4
/// total length, id + k, TCP sequence + k * mss, PSH only on the last.
fn segment(frame: &[u8], mss: usize, k: usize) -> Vec<u8> {
    let payload = &frame[HEADERS..];
    let at = k * mss;
    let len = mss.min(payload.len() - at);
    let p = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let (Some(NetHeaders::Ipv4(mut ip, _)), Some(TransportHeader::Tcp(mut tcp))) =
        (p.net, p.transport)
    else {
        panic!("not IPv4/TCP");
    };
    ip.set_payload_len(20 + len).unwrap();
    ip.identification = ip.identification.wrapping_add(k as u16);
    ip.header_checksum = ip.calc_header_checksum();
    tcp.sequence_number = tcp.sequence_number.wrapping_add(at as u32);
    tcp.psh = at + len == payload.len();
    let seg_payload = &payload[at..at + len];
    tcp.checksum = tcp.calc_checksum_ipv4(&ip, seg_payload).unwrap();
    let mut out = frame[..14].to_vec();
    ip.write(&mut out).unwrap();
    tcp.write(&mut out).unwrap();
    out.extend_from_slice(seg_payload);
    out
}

#[test]
fn frames_are_valid_tcp_with_the_partial_checksum_linux_leaves() {
    let t = TsoFrames::new(64294, 1460).unwrap();
    assert_eq!((t.payload(), t.segments()), (64240, 44));
    let (hdr, f) = frame(&t, 3);
    // flags NEEDS_CSUM, gso_type TCPV4, hdr_len 54, gso_size 1460, csum 34 + 16.
    assert_eq!(hdr[..10], [1, 1, 54, 0, 0xb4, 0x05, 34, 0, 16, 0]);
    let p = PacketHeaders::from_ethernet_slice(&f).unwrap();
    let (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Tcp(tcp))) = (p.net, p.transport)
    else {
        panic!("not IPv4/TCP");
    };
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!(usize::from(ip.total_len), t.size() - 14);
    assert_eq!((ip.identification, ip.dont_fragment), (3, true));
    assert_eq!(tcp.sequence_number, SEQ_BASE + 3 * 64240);
    assert_eq!(p.payload.slice().len(), 64240);
    // Completing the partial checksum (sum from csum_start, complement) gives the
    // checksum etherparse computes.
    let full = tcp.calc_checksum_ipv4(&ip, p.payload.slice()).unwrap();
    let mut s: u32 = f[34..]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    assert_eq!(!(s as u16), full);
}

#[test]
fn every_segment_of_a_reference_cut_passes_and_damage_does_not() {
    let t = TsoFrames::new(54 + 3 * 1000 + 17, 1000).unwrap();
    let (_, f) = frame(&t, 7);
    let plain = [0u8; 10];
    for k in 0..t.segments() {
        let s = segment(&f, 1000, k);
        assert_eq!(
            t.check_segment(&plain, &s, false),
            Ok((7, k)),
            "segment {k}"
        );
    }
    let good = segment(&f, 1000, 1);
    let mut bad = good.clone();
    bad[HEADERS + 5] ^= 1;
    assert!(t.check_segment(&plain, &bad, false).is_err(), "payload");
    let mut bad = good.clone();
    bad[34 + 16] ^= 1;
    assert!(
        t.check_segment(&plain, &bad, false).is_err(),
        "TCP checksum"
    );
    assert!(
        t.check_segment(&plain, &good[..good.len() - 1], false)
            .is_err(),
        "length"
    );
    let last = segment(&f, 1000, 3);
    let mut bad = last.clone();
    bad[34 + 13] &= !0x08;
    assert!(t.check_segment(&plain, &bad, false).is_err(), "PSH");
    // A partial checksum needs NEEDS_CSUM and a receiver that took GUEST_CSUM.
    let mut partial = good.clone();
    let tcp_len = (good.len() - 34) as u32;
    let mut s = 0xc612 + 0x0001 + 0xc613 + 0x0001 + 6 + tcp_len;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    partial[50..52].copy_from_slice(&(s as u16).to_be_bytes());
    let needs = [1u8, 0, 54, 0, 0, 0, 34, 0, 16, 0];
    assert_eq!(t.check_segment(&needs, &partial, true), Ok((7, 1)));
    assert!(t.check_segment(&needs, &partial, false).is_err());
    assert!(t.check_segment(&plain, &partial, true).is_err());
    // A segment still asking for GSO is no segment.
    let gso = [0u8, 1, 54, 0, 0xe8, 0x03, 0, 0, 0, 0];
    assert!(t.check_segment(&gso, &good, false).is_err());
}

#[test]
fn whole_frames_pass_as_sent_or_with_the_checksum_completed() {
    let t = TsoFrames::new(9000, 1448).unwrap();
    let (hdr, f) = frame(&t, 200);
    assert_eq!(t.check_whole(&hdr[..10], &f, A, B), Ok(true));
    // DPDK's net_vhost (io forwarding): checksum completed, header zeroed.
    let p = PacketHeaders::from_ethernet_slice(&f).unwrap();
    let (Some(NetHeaders::Ipv4(ip, _)), Some(TransportHeader::Tcp(tcp))) = (p.net, p.transport)
    else {
        panic!("not IPv4/TCP");
    };
    let mut done = f.clone();
    let c = tcp.calc_checksum_ipv4(&ip, p.payload.slice()).unwrap();
    done[50..52].copy_from_slice(&c.to_be_bytes());
    assert_eq!(t.check_whole(&[0; 10], &done, A, B), Ok(false));
    assert!(
        t.check_whole(&[0; 10], &f, A, B).is_err(),
        "partial, unsaid"
    );
    let mut bad = f.clone();
    bad[t.size() - 1] ^= 0x80;
    assert!(t.check_whole(&hdr[..10], &bad, A, B).is_err(), "payload");
    assert!(
        t.check_whole(&hdr[..10], &f[..8999], A, B).is_err(),
        "length"
    );
}

#[test]
fn impossible_shapes_are_refused() {
    assert!(TsoFrames::new(MAX_FRAME, 1460).is_ok());
    assert!(matches!(
        TsoFrames::new(MAX_FRAME + 1, 1460),
        Err(TsoError::Size { .. })
    ));
    assert!(matches!(
        TsoFrames::new(54 + 1460, 1460),
        Err(TsoError::Size { .. })
    ));
    assert!(matches!(TsoFrames::new(9000, 0), Err(TsoError::Mss { .. })));
    assert!(matches!(
        TsoFrames::new(64294, 8),
        Err(TsoError::Mss { .. })
    ));
}
