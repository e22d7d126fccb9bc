// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The offload code against frames built and checked by an independent
//! implementation (etherparse): IPv4 (with and without options) and IPv6, TCP
//! (with options) and UDP, with and without a VLAN tag, odd lengths; and the lies
//! a guest can tell in its header.

use etherparse::{
    IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv6Extensions, Ipv6FlowLabel, Ipv6Header,
    NetHeaders, PacketBuilder, PacketHeaders, TcpHeader, TransportHeader, VlanId,
};
use proptest::prelude::*;

use super::csum::{self, Checksum};
use super::headers::{Headers, MAX_HEADERS};
use super::segment::{checksum_field, Segmenter, MAX_SEGMENTS};
use super::vnet_hdr::{self, GsoKind, Request, VnetHdr};
use super::OffloadError;

#[derive(Debug, Clone, Copy)]
struct Shape {
    ipv6: bool,
    udp: bool,
    vlan: bool,
    /// IPv4 options / TCP options, in 4-byte words.
    ip_opts: u8,
    tcp_opts: u8,
}

const SHAPES: [Shape; 8] = [
    Shape {
        ipv6: false,
        udp: false,
        vlan: false,
        ip_opts: 0,
        tcp_opts: 0,
    },
    Shape {
        ipv6: false,
        udp: false,
        vlan: true,
        ip_opts: 2,
        tcp_opts: 3,
    },
    Shape {
        ipv6: true,
        udp: false,
        vlan: false,
        ip_opts: 0,
        tcp_opts: 3,
    },
    Shape {
        ipv6: true,
        udp: false,
        vlan: true,
        ip_opts: 0,
        tcp_opts: 0,
    },
    Shape {
        ipv6: false,
        udp: true,
        vlan: false,
        ip_opts: 0,
        tcp_opts: 0,
    },
    Shape {
        ipv6: false,
        udp: true,
        vlan: true,
        ip_opts: 1,
        tcp_opts: 0,
    },
    Shape {
        ipv6: true,
        udp: true,
        vlan: false,
        ip_opts: 0,
        tcp_opts: 0,
    },
    Shape {
        ipv6: true,
        udp: true,
        vlan: true,
        ip_opts: 0,
        tcp_opts: 0,
    },
];

/// A frame as a guest hands it over with TSO/USO: complete headers, the L4
/// checksum field holding the pseudo-header sum (what Linux leaves for
/// CHECKSUM_PARTIAL), and the header asking for segments of `mss`.
fn guest_frame(s: Shape, payload: &[u8], mss: u16) -> (Vec<u8>, VnetHdr) {
    let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let proto = if s.udp { IpNumber::UDP } else { IpNumber::TCP };
    let ip = if s.ipv6 {
        IpHeaders::Ipv6(
            Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: 0,
                next_header: proto,
                hop_limit: 64,
                source: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                destination: [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            },
            Ipv6Extensions::default(),
        )
    } else {
        let mut h = Ipv4Header::new(0, 64, proto, [198, 18, 0, 1], [198, 18, 0, 2]).unwrap();
        h.identification = 0xfff0;
        let opts = vec![1u8; usize::from(s.ip_opts) * 4]; // NOPs
        h.options = opts.as_slice().try_into().unwrap();
        IpHeaders::Ipv4(h, Ipv4Extensions::default())
    };
    let mut frame = Vec::new();
    let step = if s.vlan {
        eth.single_vlan(VlanId::try_new(7).unwrap()).ip(ip)
    } else {
        eth.ip(ip)
    };
    if s.udp {
        step.udp(4000, 5001).write(&mut frame, payload).unwrap();
    } else {
        let mut tcp = TcpHeader::new(4000, 5001, 0xffff_ff00, 1000);
        tcp.ack = true;
        tcp.psh = true;
        tcp.fin = true;
        tcp.cwr = true;
        tcp.acknowledgment_number = 77;
        let opts = vec![1u8; usize::from(s.tcp_opts) * 4];
        tcp.set_options_raw(&opts).unwrap();
        step.tcp_header(tcp).write(&mut frame, payload).unwrap();
    }
    let l3 = if s.vlan { 18 } else { 14 };
    let l4 = l3
        + if s.ipv6 {
            40
        } else {
            20 + usize::from(s.ip_opts) * 4
        };
    let csum_offset = if s.udp { 6 } else { 16 };
    // The pseudo-header sum, as the guest's stack leaves it in the field.
    let l4_len = frame.len() - l4;
    let mut pseudo = Checksum::new();
    if s.ipv6 {
        pseudo.add(&frame[l3 + 8..l3 + 40]);
        pseudo.add_u32(l4_len as u32);
    } else {
        pseudo.add(&frame[l3 + 12..l3 + 20]);
        pseudo.add_u16(l4_len as u16);
    }
    pseudo.add_u16(if s.udp { 17 } else { 6 });
    frame[l4 + csum_offset..l4 + csum_offset + 2].copy_from_slice(&pseudo.fold().to_be_bytes());
    let gso_type = match (s.udp, s.ipv6) {
        (true, _) => vnet_hdr::GSO_UDP_L4,
        (false, false) => vnet_hdr::GSO_TCPV4,
        (false, true) => vnet_hdr::GSO_TCPV6,
    };
    let hdr = VnetHdr {
        flags: vnet_hdr::F_NEEDS_CSUM,
        gso_type,
        hdr_len: 0,
        gso_size: mss,
        csum_start: l4 as u16,
        csum_offset: csum_offset as u16,
    };
    (frame, hdr)
}

/// Cuts `frame` as the data path would: headers written by the segmenter,
/// payload summed and copied from the frame.
fn segments(frame: &[u8], hdr: VnetHdr) -> Result<Vec<Vec<u8>>, OffloadError> {
    let request = hdr.request(frame.len())?;
    let seg = Segmenter::new(request, &frame[..frame.len().min(MAX_HEADERS)], frame.len())?;
    Ok((0..seg.count())
        .map(|i| {
            let s = seg.segment(i);
            let payload = &frame[s.payload_at..s.payload_at + s.payload_len];
            let mut sum = Checksum::new();
            // Summed in uneven pieces, as guest buffers would split it.
            for piece in payload.chunks(333) {
                sum.add(piece);
            }
            let mut out = vec![0u8; seg.header_len()];
            seg.write_headers(i, sum, &mut out);
            out.extend_from_slice(payload);
            out
        })
        .collect())
}

/// A TCP checksum field, 0xffff read as 0: a sum that comes to zero is sent as
/// 0xffff by vpmd, as Linux's `skb_checksum_help` does (CSUM_MANGLED_0), and etherparse
/// computes it as 0; both are the same ones' complement value and every receiver
/// accepts either (RFC 1624). (UDP's fields are compared exactly: there 0 means none.)
fn tcp_field(v: u16) -> u16 {
    if v == 0xffff {
        0
    } else {
        v
    }
}

/// Checks one segment with etherparse; returns its payload and TCP sequence.
fn check_segment(bytes: &[u8], s: Shape) -> (Vec<u8>, Option<(u32, TcpHeader)>) {
    let p = PacketHeaders::from_ethernet_slice(bytes).expect("etherparse parses the segment");
    assert_eq!(p.link_exts.len(), usize::from(s.vlan));
    let payload = p.payload.slice().to_vec();
    match (
        p.net.expect("an IP header"),
        p.transport.expect("an L4 header"),
    ) {
        (NetHeaders::Ipv4(ip, _), TransportHeader::Tcp(tcp)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 header checksum"
            );
            assert_eq!(
                usize::from(ip.total_len),
                bytes.len() - if s.vlan { 18 } else { 14 }
            );
            assert_eq!(
                tcp_field(tcp.checksum),
                tcp_field(tcp.calc_checksum_ipv4(&ip, &payload).unwrap()),
                "TCP/IPv4 checksum"
            );
            (payload, Some((tcp.sequence_number, tcp)))
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Tcp(tcp)) => {
            assert_eq!(
                usize::from(ip.payload_length),
                bytes.len() - 40 - if s.vlan { 18 } else { 14 }
            );
            assert_eq!(
                tcp_field(tcp.checksum),
                tcp_field(tcp.calc_checksum_ipv6(&ip, &payload).unwrap()),
                "TCP/IPv6 checksum"
            );
            (payload, Some((tcp.sequence_number, tcp)))
        }
        (NetHeaders::Ipv4(ip, _), TransportHeader::Udp(udp)) => {
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            assert_eq!(usize::from(udp.length), 8 + payload.len());
            assert_eq!(
                udp.checksum,
                udp.calc_checksum_ipv4(&ip, &payload).unwrap(),
                "UDP/IPv4 checksum"
            );
            (payload, None)
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Udp(udp)) => {
            assert_eq!(usize::from(udp.length), 8 + payload.len());
            assert_eq!(
                udp.checksum,
                udp.calc_checksum_ipv6(&ip, &payload).unwrap(),
                "UDP/IPv6 checksum"
            );
            (payload, None)
        }
        other => panic!("unexpected headers {other:?}"),
    }
}

fn check_segmentation(s: Shape, payload: &[u8], mss: u16) {
    let (frame, hdr) = guest_frame(s, payload, mss);
    let segs = segments(&frame, hdr).unwrap();
    assert_eq!(segs.len(), payload.len().div_ceil(usize::from(mss)).max(1));
    let mut joined = Vec::new();
    let mut ids = Vec::new();
    for (i, bytes) in segs.iter().enumerate() {
        let (p, tcp) = check_segment(bytes, s);
        assert!(p.len() <= usize::from(mss));
        if let Some((seq, h)) = tcp {
            assert_eq!(
                seq,
                0xffff_ff00u32.wrapping_add((i * usize::from(mss)) as u32),
                "sequence"
            );
            let last = i + 1 == segs.len();
            assert_eq!(h.fin, last, "FIN only on the last segment");
            assert_eq!(h.psh, last, "PSH only on the last segment");
            assert_eq!(h.cwr, i == 0, "CWR only on the first segment");
            assert!(h.ack);
            assert_eq!(h.acknowledgment_number, 77);
        }
        if !s.ipv6 {
            let l3 = if s.vlan { 18 } else { 14 };
            ids.push(u16::from_be_bytes([bytes[l3 + 4], bytes[l3 + 5]]));
        }
        joined.extend_from_slice(&p);
    }
    assert_eq!(joined, payload, "the payload, in order, once");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            *id,
            0xfff0u16.wrapping_add(i as u16),
            "IPv4 id +1 per segment"
        );
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn segments_every_shape_into_frames_etherparse_accepts() {
    for s in SHAPES {
        for (len, mss) in [
            (64_000, 1448),
            (10_001, 1400),
            (1448, 1448),
            (1, 536),
            (2897, 1448),
            (0, 1448),
        ] {
            check_segmentation(s, &pattern(len), mss);
        }
    }
}

proptest! {
    #[test]
    fn segmentation_holds_for_any_length_and_mss(
        shape in 0usize..SHAPES.len(), len in 0usize..20_000, mss in 64u16..9000,
    ) {
        check_segmentation(SHAPES[shape], &pattern(len), mss);
    }

    #[test]
    fn checksum_in_pieces_equals_checksum_at_once(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(0usize..3000, 0..8),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
        cuts.sort_unstable();
        let mut sum = Checksum::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([data.len()]) {
            sum.add(&data[at..c]);
            at = c;
        }
        prop_assert_eq!(sum.finish(), csum::of(&data));
    }
}

#[test]
fn checksum_request_completes_what_the_guest_left() {
    for s in SHAPES.iter().filter(|s| !s.udp || !s.vlan) {
        for len in [0usize, 1, 17, 1400] {
            let (mut frame, mut hdr) = guest_frame(*s, &pattern(len), 1448);
            hdr.gso_type = vnet_hdr::GSO_NONE;
            let Request::Checksum { start, offset } = hdr.request(frame.len()).unwrap() else {
                panic!("a checksum request");
            };
            let mut sum = Checksum::new();
            sum.add(&frame[usize::from(start)..]);
            let at = usize::from(start + offset);
            frame[at..at + 2].copy_from_slice(&checksum_field(sum).to_be_bytes());
            // Now complete: etherparse agrees with every checksum in it.
            check_segment(&frame, *s);
        }
    }
}

#[test]
fn a_complete_frame_asks_for_nothing() {
    assert_eq!(VnetHdr::default().request(60), Ok(Request::None));
    let h = VnetHdr {
        flags: vnet_hdr::F_DATA_VALID,
        ..VnetHdr::default()
    };
    assert_eq!(h.request(60), Ok(Request::None));
    let bytes = VnetHdr {
        flags: 1,
        gso_type: 4,
        hdr_len: 54,
        gso_size: 1440,
        csum_start: 54,
        csum_offset: 16,
    }
    .to_bytes();
    assert_eq!(VnetHdr::from_bytes(&bytes).to_bytes(), bytes);
}

#[test]
fn lies_in_the_header_are_errors() {
    let tcp4 = Shape {
        ipv6: false,
        udp: false,
        vlan: false,
        ip_opts: 0,
        tcp_opts: 0,
    };
    let (frame, good) = guest_frame(tcp4, &pattern(5000), 1448);
    let len = frame.len();
    let try_hdr = |h: VnetHdr| segments(&frame, h).err();
    assert_eq!(
        try_hdr(VnetHdr {
            gso_size: 0,
            ..good
        }),
        Some(OffloadError::ZeroGsoSize)
    );
    assert_eq!(
        try_hdr(VnetHdr { flags: 0, ..good }),
        Some(OffloadError::GsoWithoutChecksum)
    );
    assert_eq!(
        try_hdr(VnetHdr {
            gso_type: 2,
            ..good
        }),
        Some(OffloadError::UnknownGsoType(2))
    );
    assert_eq!(
        try_hdr(VnetHdr {
            gso_type: vnet_hdr::GSO_UDP,
            ..good
        }),
        Some(OffloadError::UnsupportedGso(3))
    );
    assert_eq!(
        try_hdr(VnetHdr {
            csum_start: u16::MAX,
            ..good
        }),
        Some(OffloadError::ChecksumOutside {
            start: u16::MAX,
            offset: 16,
            len
        })
    );
    assert_eq!(
        try_hdr(VnetHdr {
            csum_start: 30,
            ..good
        }),
        Some(OffloadError::ChecksumMismatch {
            start: 30,
            offset: 16
        })
    );
    assert_eq!(
        try_hdr(VnetHdr {
            gso_type: vnet_hdr::GSO_TCPV6,
            ..good
        }),
        Some(OffloadError::Ip("gso_type names the other IP version"))
    );
    assert_eq!(
        try_hdr(VnetHdr {
            gso_type: vnet_hdr::GSO_UDP_L4,
            csum_offset: 6,
            ..good
        }),
        Some(OffloadError::Protocol(6))
    );
    // A tiny MSS: thousands of segments are refused, not produced.
    let (big, h) = guest_frame(tcp4, &pattern(60_000), 1448);
    let err = segments(&big, VnetHdr { gso_size: 8, ..h }).err();
    assert_eq!(err, Some(OffloadError::TooManySegments(7500)));
    assert!(segments(
        &big,
        VnetHdr {
            gso_size: (60_000 / MAX_SEGMENTS + 1) as u16,
            ..h
        }
    )
    .is_ok());
    // A checksum request past the end of a short frame.
    let h = VnetHdr {
        flags: vnet_hdr::F_NEEDS_CSUM,
        csum_start: 59,
        csum_offset: 0,
        ..VnetHdr::default()
    };
    assert!(matches!(
        h.request(60),
        Err(OffloadError::ChecksumOutside { .. })
    ));
}

#[test]
fn truncated_or_odd_headers_are_errors() {
    let tcp4 = Shape {
        ipv6: false,
        udp: false,
        vlan: true,
        ip_opts: 0,
        tcp_opts: 2,
    };
    let (frame, _) = guest_frame(tcp4, &pattern(100), 1448);
    let hdrs = Headers::parse(&frame, GsoKind::Tcp).unwrap();
    assert_eq!((hdrs.l3, hdrs.l4, hdrs.len), (18, 38, 66));
    for cut in 0..hdrs.len {
        assert!(
            Headers::parse(&frame[..cut], GsoKind::Tcp).is_err(),
            "cut at {cut}"
        );
    }
    let mut f = frame.clone();
    f[18] = 0x44; // IHL 4: shorter than 20 bytes
    assert!(matches!(
        Headers::parse(&f, GsoKind::Tcp),
        Err(OffloadError::Ip(_))
    ));
    let mut f = frame.clone();
    f[18 + 6] = 0x20; // MF: a fragment
    assert_eq!(
        Headers::parse(&f, GsoKind::Tcp),
        Err(OffloadError::Ip("IPv4 fragment"))
    );
    let mut f = frame.clone();
    f[38 + 12] = 0x40; // TCP data offset 16 bytes
    assert!(matches!(
        Headers::parse(&f, GsoKind::Tcp),
        Err(OffloadError::L4(_))
    ));
    let mut f = frame.clone();
    f[16..18].copy_from_slice(&0x0806u16.to_be_bytes()); // ARP behind the tag
    assert_eq!(
        Headers::parse(&f, GsoKind::Tcp),
        Err(OffloadError::EtherType(0x0806))
    );
    // An IPv6 extension header (hop-by-hop, 0) where TCP should be.
    let (mut v6, _) = guest_frame(SHAPES[2], &pattern(100), 1448);
    v6[14 + 6] = 0;
    assert_eq!(
        Headers::parse(&v6, GsoKind::Tcp),
        Err(OffloadError::Protocol(0))
    );
}

/// Segments with their L4 checksum left partial (for a GUEST_CSUM receiver) become
/// exactly the fully checksummed ones once the receiver sums from `csum_start` on.
#[test]
fn partial_segments_complete_to_the_full_ones() {
    for s in SHAPES {
        let payload = pattern(7_001);
        let (frame, hdr) = guest_frame(s, &payload, 1000);
        let full = segments(&frame, hdr).unwrap();
        let request = hdr.request(frame.len()).unwrap();
        let seg =
            Segmenter::new(request, &frame[..frame.len().min(MAX_HEADERS)], frame.len()).unwrap();
        for (i, want) in full.iter().enumerate() {
            let part = seg.segment(i);
            let mut out = vec![0u8; seg.header_len()];
            let (start, offset) = seg.write_headers_partial(i, &mut out);
            out.extend_from_slice(&frame[part.payload_at..part.payload_at + part.payload_len]);
            let (start, field) = (usize::from(start), usize::from(start) + usize::from(offset));
            let mut sum = Checksum::new();
            sum.add(&out[start..]);
            out[field..field + 2].copy_from_slice(&checksum_field(sum).to_be_bytes());
            assert_eq!(&out, want, "{s:?} segment {i}");
        }
    }
}
