// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Offload headers through a veth pair (h -> p) while pair 1 carries its checked
//! transfer: large TCP frames and frames with their checksum left to do, sent by a
//! driver on `h` that negotiated CSUM and TSO, into a driver on `p` that negotiated
//! all, some or none of the GUEST offloads; and headers that lie.
//!
//! What arrives is checked with etherparse (an implementation of its own): every
//! segment a well-formed IPv4/IPv6 TCP frame with right checksums, lengths and
//! sequence numbers, the payload complete and in order; a frame passed through
//! arrives byte for byte with its header. A lying header gets its frame dropped and
//! counted as `bad_offload`, and nothing of it reaches `p`.

use std::time::{Duration, Instant};

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use virtio_bindings::virtio_net as n;
use vpmd_hostile::ring::{Desc, WRITE};
use vpmd_hostile::scenario::Scenario;
use vpmd_hostile::vm::{HostileVm, BUF_BASE, F_MRG_RXBUF, F_VERSION_1, HDR_LEN, QUEUE_SIZE};
use vpmd_hostile::vpmd::{counter, mac, Vpmd};

const F_CSUM: u64 = 1 << n::VIRTIO_NET_F_CSUM;
const F_GUEST_CSUM: u64 = 1 << n::VIRTIO_NET_F_GUEST_CSUM;
const F_GUEST_TSO: u64 = (1 << n::VIRTIO_NET_F_GUEST_TSO4) | (1 << n::VIRTIO_NET_F_GUEST_TSO6);
const F_GUEST_ECN: u64 = 1 << n::VIRTIO_NET_F_GUEST_ECN;
const F_HOST_TSO: u64 = (1 << n::VIRTIO_NET_F_HOST_TSO4) | (1 << n::VIRTIO_NET_F_HOST_TSO6);
const F_HOST_ECN: u64 = 1 << n::VIRTIO_NET_F_HOST_ECN;

const NEEDS_CSUM: u8 = 1;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

/// Where h's TX frames are written (its RX buffers lie below).
const TX_AREA: u64 = 0x20_0000;
/// RX buffer size on p.
const RX_BUF: u32 = 2048;

/// The sender: a driver on h with CSUM, HOST_TSO4/6 and HOST_ECN.
fn sender(vpmd: &Vpmd) -> HostileVm {
    let vm = HostileVm::connect(&vpmd.socket("h")).expect("connect h");
    let vm = HostileVm::start_negotiating(
        vm,
        F_VERSION_1 | F_MRG_RXBUF | F_CSUM | F_HOST_TSO | F_HOST_ECN,
        HostileVm::set_mem_table,
    )
    .expect("h setup");
    vpmd.wait_up(&["h"]);
    vm
}

/// The receiver on p, with every RX buffer posted.
struct Receiver {
    vm: HostileVm,
    seen: u16,
    /// Bytes from one RX buffer to the next (buffer `i` at `BUF_BASE + i * stride`).
    stride: u64,
}

impl Receiver {
    /// With MRG_RXBUF and 2 KiB buffers, as Linux and DPDK post them.
    fn connect(vpmd: &Vpmd, guest: u64) -> Receiver {
        Self::connect_with(vpmd, F_MRG_RXBUF | guest, RX_BUF, QUEUE_SIZE)
    }

    /// Negotiating `features` (and VERSION_1), with `count` buffers of `size` bytes.
    fn connect_with(vpmd: &Vpmd, features: u64, size: u32, count: u16) -> Receiver {
        let vm = HostileVm::connect(&vpmd.socket("p")).expect("connect p");
        let vm = HostileVm::start_negotiating(vm, F_VERSION_1 | features, HostileVm::set_mem_table)
            .expect("p setup");
        let stride = u64::from(size);
        let rx = vm.rx_ring();
        let heads: Vec<u16> = (0..count).collect();
        for &i in &heads {
            rx.set_desc(
                i,
                Desc::new(BUF_BASE + u64::from(i) * stride, size, WRITE, 0),
            );
        }
        rx.offer(&heads);
        vpmd.wait_up(&["p"]);
        Receiver {
            vm,
            seen: 0,
            stride,
        }
    }

    /// The frames received within `wait` (header bytes, frame bytes), joining
    /// MRG_RXBUF buffers; each buffer is posted again once read.
    fn take(&mut self, frames: usize, wait: Duration) -> Vec<([u8; HDR_LEN], Vec<u8>)> {
        let rx = self.vm.rx_ring();
        let mut out = Vec::new();
        let deadline = Instant::now() + wait;
        // The frame being joined: its header, bytes so far, buffers still to come.
        let mut current: Option<([u8; HDR_LEN], Vec<u8>, u16)> = None;
        while out.len() < frames && Instant::now() < deadline {
            if rx.used_idx() == self.seen {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let (id, len) = rx.used_elem(self.seen);
            self.seen = self.seen.wrapping_add(1);
            let bytes = self
                .vm
                .mem
                .read(BUF_BASE + u64::from(id) * self.stride, len as usize);
            rx.offer(&[id as u16]);
            let (hdr, frame, left) = match current.take() {
                Some((hdr, mut frame, left)) => {
                    frame.extend_from_slice(&bytes);
                    (hdr, frame, left)
                }
                None => {
                    let mut hdr = [0u8; HDR_LEN];
                    hdr.copy_from_slice(&bytes[..HDR_LEN]);
                    let buffers = u16::from_le_bytes([hdr[10], hdr[11]]);
                    (hdr, bytes[HDR_LEN..].to_vec(), buffers)
                }
            };
            if left <= 1 {
                out.push((hdr, frame));
            } else {
                current = Some((hdr, frame, left - 1));
            }
        }
        out
    }
}

/// Frame shapes: IPv4 or IPv6, with or without a VLAN tag.
#[derive(Clone, Copy, Debug)]
struct Shape {
    ipv6: bool,
    vlan: bool,
}

const SHAPES: [Shape; 3] = [
    Shape {
        ipv6: false,
        vlan: false,
    },
    Shape {
        ipv6: true,
        vlan: false,
    },
    Shape {
        ipv6: false,
        vlan: true,
    },
];

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A TCP frame h -> p as a TSO-capable guest hands it over: headers complete but
/// for the IP lengths of the whole, the TCP checksum field holding the
/// pseudo-header sum. Returns the frame and the L4 offset.
fn tcp_frame(s: Shape, payload: &[u8], seq: u32, cwr: bool) -> (Vec<u8>, usize) {
    let mut f = Vec::new();
    f.extend_from_slice(&mac("p"));
    f.extend_from_slice(&mac("h"));
    if s.vlan {
        f.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    }
    let l3 = f.len();
    let tcp_len = 20 + payload.len();
    if s.ipv6 {
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(tcp_len as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        f.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    } else {
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + tcp_len).min(65535) as u16).to_be_bytes());
        f.extend_from_slice(&[
            0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2,
        ]);
        let c = !fold(sum16(&f[l3 + 2..l3 + 22]));
        f[l3 + 12..l3 + 14].copy_from_slice(&c.to_be_bytes());
    }
    let ip = l3 + 2;
    let l4 = f.len();
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&5001u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&77u32.to_be_bytes());
    let flags = 0x18 | if cwr { 0x80 } else { 0 }; // ACK PSH (CWR)
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    let pseudo = if s.ipv6 {
        sum16(&f[ip + 8..ip + 40]) + tcp_len as u32 + 6
    } else {
        sum16(&f[ip + 12..ip + 20]) + tcp_len as u32 + 6
    };
    f[l4 + 16..l4 + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    (f, l4)
}

/// A virtio-net header (12 bytes, num_buffers 0 as a driver sends it).
fn vnet(flags: u8, gso_type: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> Vec<u8> {
    let mut h = vec![flags, gso_type];
    for v in [0u16, gso_size, csum_start, csum_offset, 0] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    h
}

/// h sends `frame` behind `header`, in descriptors cut at `cuts` (offsets into
/// header + frame), and waits for vpmd to take it.
fn send(h: &HostileVm, header: &[u8], frame: &[u8], cuts: &[usize]) {
    let mut bytes = header.to_vec();
    bytes.extend_from_slice(frame);
    h.mem.write(TX_AREA, &bytes);
    let tx = h.tx_ring();
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < bytes.len()));
    bounds.push(bytes.len());
    let parts = bounds.len() - 1;
    for i in 0..parts {
        let (a, b) = (bounds[i], bounds[i + 1]);
        let next = if i + 1 < parts { 1 } else { 0 };
        tx.set_desc(
            i as u16,
            Desc::new(TX_AREA + a as u64, (b - a) as u32, next, (i + 1) as u16),
        );
    }
    let want = tx.avail_idx().wrapping_add(1);
    tx.offer(&[0]);
    assert!(
        tx.wait_used(want, Duration::from_secs(5)),
        "vpmd did not take h's frame"
    );
}

/// Checks one received TCP segment; returns (sequence, payload, FIN/PSH, CWR).
fn check_segment(bytes: &[u8], s: Shape) -> (u32, Vec<u8>, bool, bool) {
    let p = PacketHeaders::from_ethernet_slice(bytes).expect("etherparse parses the segment");
    assert_eq!(p.link_exts.len(), usize::from(s.vlan), "VLAN tag kept");
    let payload = p.payload.slice().to_vec();
    let (tcp, ok) = match (p.net.expect("IP"), p.transport.expect("TCP")) {
        (NetHeaders::Ipv4(ip, _), TransportHeader::Tcp(tcp)) => {
            assert_eq!(
                ip.header_checksum,
                ip.calc_header_checksum(),
                "IPv4 checksum"
            );
            let ok = tcp.checksum == tcp.calc_checksum_ipv4(&ip, &payload).unwrap();
            (tcp, ok)
        }
        (NetHeaders::Ipv6(ip, _), TransportHeader::Tcp(tcp)) => {
            let ok = tcp.checksum == tcp.calc_checksum_ipv6(&ip, &payload).unwrap();
            (tcp, ok)
        }
        other => panic!("not TCP: {other:?}"),
    };
    assert!(ok, "TCP checksum of a segment");
    (tcp.sequence_number, payload, tcp.psh, tcp.cwr)
}

/// What a receiver with GUEST_CSUM does with NEEDS_CSUM: sums from csum_start on
/// and stores the result at csum_start + csum_offset.
fn complete(hdr: &[u8; HDR_LEN], frame: &mut [u8]) {
    assert_eq!(hdr[0] & NEEDS_CSUM, NEEDS_CSUM, "NEEDS_CSUM set");
    let start = usize::from(u16::from_le_bytes([hdr[6], hdr[7]]));
    let at = start + usize::from(u16::from_le_bytes([hdr[8], hdr[9]]));
    let c = !fold(sum16(&frame[start..]));
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fn pattern(len: usize, k: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 + k + i / 253) as u8).collect()
}

#[test]
fn large_frames_pass_through_or_are_segmented_by_what_the_receiver_took() {
    let sc = Scenario::start("offload-tso");
    let h = sender(&sc.vpmd);
    // MTU 1500: 1448 bytes of TCP payload behind IPv4, 1440 behind IPv6.
    let mss_of = |s: Shape| if s.ipv6 { 1440u16 } else { 1448 };
    // p: none of the GUEST offloads, GUEST_CSUM only, all of them.
    for (k, guest) in [0, F_GUEST_CSUM, F_GUEST_CSUM | F_GUEST_TSO | F_GUEST_ECN]
        .into_iter()
        .enumerate()
    {
        let mut p = Receiver::connect(&sc.vpmd, guest);
        for (j, s) in SHAPES.into_iter().enumerate() {
            let mss = mss_of(s);
            let payload = pattern(20_000 + 333 * j, k);
            let (frame, l4) = tcp_frame(s, &payload, 0xffff_f000, true);
            let gso = if s.ipv6 { GSO_TCPV6 } else { GSO_TCPV4 } | GSO_ECN;
            let header = vnet(NEEDS_CSUM, gso, mss, l4 as u16, 16);
            // Cut inside the virtio-net header and inside the TCP header: vpmd reads
            // both across descriptors.
            send(&h, &header, &frame, &[5, HDR_LEN + l4 + 7, 9000]);
            let segments = payload.len().div_ceil(usize::from(mss));
            let passes = guest & F_GUEST_TSO != 0;
            let want = if passes { 1 } else { segments };
            let got = p.take(want, Duration::from_secs(5));
            assert_eq!(
                got.len(),
                want,
                "receiver {k}, {s:?}: frames; stats {}; log:\n{}",
                sc.stats(),
                sc.vpmd.log()
            );
            if passes {
                let (hdr, bytes) = &got[0];
                assert_eq!(&hdr[..10], &header[..10], "the header passed on as sent");
                assert_eq!(bytes, &frame, "the frame passed on byte for byte");
                continue;
            }
            let mut joined = Vec::new();
            for (i, (hdr, bytes)) in got.into_iter().enumerate() {
                let mut bytes = bytes;
                if guest & F_GUEST_CSUM != 0 {
                    complete(&hdr, &mut bytes);
                } else {
                    assert_eq!(hdr[..10], [0; 10], "no offload fields for this receiver");
                }
                assert!(bytes.len() <= usize::from(mss) + l4 + 20);
                let (seq, data, psh, cwr) = check_segment(&bytes, s);
                assert_eq!(seq, 0xffff_f000u32.wrapping_add(i as u32 * u32::from(mss)));
                assert_eq!(psh, i + 1 == segments, "PSH on the last segment only");
                assert_eq!(cwr, i == 0, "CWR on the first segment only");
                joined.extend_from_slice(&data);
            }
            assert_eq!(
                joined, payload,
                "receiver {k}, {s:?}: the payload, in order, once"
            );
        }
        // A frame with only its checksum left to do.
        let s = SHAPES[0];
        let (frame, l4) = tcp_frame(s, &pattern(999, k), 1, false);
        send(
            &h,
            &vnet(NEEDS_CSUM, 0, 0, l4 as u16, 16),
            &frame,
            &[HDR_LEN + 30],
        );
        let got = p.take(1, Duration::from_secs(5));
        assert_eq!(got.len(), 1, "receiver {k}: the checksum frame");
        let (hdr, mut bytes) = got.into_iter().next().unwrap();
        if guest & F_GUEST_CSUM != 0 {
            assert_eq!(bytes, frame, "passed on as sent");
            complete(&hdr, &mut bytes);
        }
        check_segment(&bytes, s);
        drop(p);
        sc.vpmd.wait_state(&["p"], false);
    }
    let st = sc.stats();
    let segs: usize = SHAPES
        .iter()
        .enumerate()
        .map(|(j, &s)| (20_000 + 333 * j).div_ceil(usize::from(mss_of(s))))
        .sum();
    assert_eq!(counter(&st, "h", "offloads.sw_segmented"), 6, "{st}");
    assert_eq!(
        counter(&st, "h", "offloads.sw_segments"),
        2 * segs as u64,
        "{st}"
    );
    assert_eq!(counter(&st, "h", "offloads.tso_passed"), 3, "{st}");
    assert_eq!(counter(&st, "h", "offloads.sw_checksummed"), 1, "{st}");
    assert_eq!(counter(&st, "h", "offloads.csum_passed"), 2, "{st}");
    assert_eq!(counter(&st, "h", "drops.bad_offload"), 0, "{st}");
    sc.finish(|_| {});
}

#[test]
fn headers_that_lie_get_their_frame_dropped_and_counted() {
    let sc = Scenario::start("offload-lies");
    let h = sender(&sc.vpmd);
    let mut p = Receiver::connect(&sc.vpmd, 0);
    let s = SHAPES[0];
    let (frame, l4) = tcp_frame(s, &pattern(30_000, 1), 5, false);
    let l4 = l4 as u16;
    let len = frame.len() as u16;
    let (v6, _) = tcp_frame(SHAPES[1], &pattern(3000, 2), 5, false);
    let lies: Vec<(&str, Vec<u8>, &[u8])> = vec![
        ("gso_size 0", vnet(NEEDS_CSUM, GSO_TCPV4, 0, l4, 16), &frame),
        (
            "csum_start past the end",
            vnet(NEEDS_CSUM, 0, 0, len + 10, 16),
            &frame,
        ),
        (
            "csum_offset past the end",
            vnet(NEEDS_CSUM, 0, 0, l4, len),
            &frame,
        ),
        (
            "checksum field too deep",
            vnet(NEEDS_CSUM, 0, 0, 2000, 16),
            &frame,
        ),
        (
            "TSO without NEEDS_CSUM",
            vnet(0, GSO_TCPV4, 1448, l4, 16),
            &frame,
        ),
        (
            "csum not at the TCP checksum",
            vnet(NEEDS_CSUM, GSO_TCPV4, 1448, l4, 4),
            &frame,
        ),
        (
            "2500 segments",
            vnet(NEEDS_CSUM, GSO_TCPV4, 12, l4, 16),
            &frame,
        ),
        ("UFO", vnet(NEEDS_CSUM, 3, 1448, l4, 6), &frame),
        (
            "USO, not negotiated",
            vnet(NEEDS_CSUM, 5, 1448, l4, 6),
            &frame,
        ),
        (
            "unknown gso_type",
            vnet(NEEDS_CSUM, 0x42, 1448, l4, 16),
            &frame,
        ),
        (
            "TCPV6 on IPv4",
            vnet(NEEDS_CSUM, GSO_TCPV6, 1448, l4, 16),
            &frame,
        ),
        (
            "TCPV4 on IPv6",
            vnet(NEEDS_CSUM, GSO_TCPV4, 1448, 54, 16),
            &v6,
        ),
    ];
    for (what, header, f) in &lies {
        send(&h, header, f, &[]);
        assert!(
            p.take(1, Duration::from_millis(200)).is_empty(),
            "{what}: something reached p"
        );
    }
    // A frame cut short inside its TCP header asks for segments it cannot have.
    send(
        &h,
        &vnet(NEEDS_CSUM, GSO_TCPV4, 1448, l4, 16),
        &frame[..usize::from(l4) + 10],
        &[],
    );
    assert!(
        p.take(1, Duration::from_millis(200)).is_empty(),
        "a cut frame reached p"
    );
    // After all that, an honest frame still goes through.
    send(&h, &vnet(NEEDS_CSUM, GSO_TCPV4, 1448, l4, 16), &frame, &[]);
    assert_eq!(
        p.take(21, Duration::from_secs(5)).len(),
        21,
        "honest TSO after the lies"
    );
    let st = sc.stats();
    assert_eq!(
        counter(&st, "h", "drops.bad_offload"),
        lies.len() as u64 + 1,
        "every lie counted once: {st}"
    );
    assert_eq!(counter(&st, "h", "forwarded"), 1, "{st}");
    sc.assert_logged_rate_limited(&["virtio-net header does not fit"], lies.len() as u64 + 1);
    sc.finish(|_| {});
}

/// A driver without MRG_RXBUF posts big buffers for GUEST_TSO (Linux's "big
/// packets"): a TSO frame goes into one of them whole; without GUEST_TSO the
/// segments go one to a buffer.
#[test]
fn large_frames_fit_big_buffers_without_mrg_rxbuf() {
    let sc = Scenario::start("offload-big");
    let h = sender(&sc.vpmd);
    let s = SHAPES[0];
    let payload = pattern(60_000, 9);
    let (frame, l4) = tcp_frame(s, &payload, 7, false);
    let header = vnet(NEEDS_CSUM, GSO_TCPV4, 1448, l4 as u16, 16);
    for guest in [F_GUEST_CSUM | F_GUEST_TSO, 0] {
        // 48 buffers of 72 KiB: each holds a whole 64 KiB frame and its header, and
        // all 42 segments fit at once.
        let mut p = Receiver::connect_with(&sc.vpmd, guest, 72 << 10, 48);
        send(&h, &header, &frame, &[]);
        let want = if guest == 0 {
            payload.len().div_ceil(1448)
        } else {
            1
        };
        let got = p.take(want, Duration::from_secs(5));
        assert_eq!(got.len(), want, "receiver {guest:#x}: frames");
        if guest != 0 {
            assert_eq!(&got[0].0[..10], &header[..10], "the header as sent");
            assert_eq!(got[0].0[10..12], [1, 0], "num_buffers 1");
            assert_eq!(got[0].1, frame, "the frame whole");
        } else {
            let mut joined = Vec::new();
            for (_, bytes) in &got {
                joined.extend_from_slice(&check_segment(bytes, s).1);
            }
            assert_eq!(joined, payload);
        }
        drop(p);
        sc.vpmd.wait_state(&["p"], false);
    }
    sc.finish(|st| {
        assert_eq!(counter(st, "h", "offloads.tso_passed"), 1, "{st}");
        assert_eq!(counter(st, "h", "offloads.sw_segmented"), 1, "{st}");
    });
}
