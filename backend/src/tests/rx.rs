// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! RX delivery: one frame over several RX chains (MRG_RXBUF) or one chain of
//! several buffers (without), the header by features, and the error paths: not
//! enough buffers (nothing consumed), a first buffer too small for the header, a
//! malformed chain in the middle of a frame.
#![allow(unsafe_code)] // HostBuf views of test-owned frames.

use super::harness::*;
use crate::chain::ChainError;
use crate::guest_mem::HostBuf;
use crate::net::{deliver_rx_frame, NetLayout, RxError, RxScratch};
use crate::seglist::SegList;

/// Delivers `frame` (held in host memory) into `rx` in one burst.
fn deliver(rx: &Ring, layout: NetLayout, frame: &[u8]) -> Result<(), RxError> {
    let mut bytes = frame.to_vec();
    let mut seg = SegList::default();
    // SAFETY: `seg` is used only in this function, while `bytes` lives untouched.
    assert!(seg.push(unsafe { HostBuf::from_slice(&mut bytes) }));
    let mut q = rx.burst();
    deliver_rx_frame(
        &mut q,
        layout,
        &seg,
        frame.len() as u32,
        &mut RxScratch::new(),
    )
}

/// Reads back what the used entries `from..from + n` of `rx` describe: the bytes
/// written into each single-buffer chain, in order. `bufs` maps head to address.
fn received(g: &Guest, rx: &Ring, bufs: &[(u16, u64)], from: u16, n: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for pos in from..from + n {
        let (id, len) = rx.used_elem(pos);
        let &(_, gpa) = bufs.iter().find(|(h, _)| u32::from(*h) == id).unwrap();
        out.extend(g.read(gpa, len as usize));
    }
    out
}

fn num_buffers(hdr: &[u8]) -> u16 {
    u16::from_le_bytes([hdr[10], hdr[11]])
}

#[test]
fn mrg_rxbuf_spreads_a_jumbo_frame_over_rx_chains() {
    for (buf_len, chains) in [(1536u32, 6u16), (4096, 3)] {
        let g = Guest::new();
        let mut rx = g.ring(RING_A, 16);
        let bufs = rx.add_rx_buffers(8, buf_len);
        let frame = pattern(9000, 7);
        deliver(&rx, v1(true), &frame).unwrap();
        assert_eq!(rx.used_idx(), chains, "{buf_len}-byte buffers");
        let lens: Vec<u32> = (0..chains).map(|i| rx.used_elem(i).1).collect();
        let mut want = vec![buf_len; usize::from(chains) - 1];
        want.push(9012 - buf_len * (u32::from(chains) - 1));
        assert_eq!(lens, want);
        let got = received(&g, &rx, &bufs, 0, chains);
        assert_eq!(
            &got[..10],
            &[0u8; 10],
            "no offloads: flags, gso, csum all zero"
        );
        assert_eq!(num_buffers(&got), chains);
        assert_eq!(&got[12..], &frame[..]);
        // The chains not needed are still available, in order.
        assert_eq!(rx.device_next_avail(), chains);
    }
}

#[test]
fn mrg_rxbuf_frame_that_fits_uses_one_chain() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    let bufs = rx.add_rx_buffers(4, 2048);
    for (i, len) in [64usize, 1518, 2036].into_iter().enumerate() {
        let frame = pattern(len, i as u8);
        deliver(&rx, v1(true), &frame).unwrap();
        let got = received(&g, &rx, &bufs, i as u16, 1);
        assert_eq!(got.len(), len + 12);
        assert_eq!(num_buffers(&got), 1);
        assert_eq!(&got[12..], &frame[..]);
    }
}

#[test]
fn without_mrg_rxbuf_one_chain_of_several_buffers() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    // Linux "big packets": the header alone, then page-sized buffers.
    let parts = [
        (g.alloc(12), 12u32),
        (g.alloc(4096), 4096),
        (g.alloc(4096), 4096),
        (g.alloc(4096), 4096),
    ];
    let head = rx.add_chain(&parts.map(|(a, l)| (a, l, W)));
    let frame = pattern(9000, 8);
    deliver(&rx, v1(false), &frame).unwrap();
    assert_eq!(rx.used_idx(), 1);
    assert_eq!(rx.used_elem(0), (u32::from(head), 9012));
    let mut got = Vec::new();
    for (a, l) in parts {
        got.extend(g.read(a, l as usize));
    }
    assert_eq!(&got[..10], &[0u8; 10]);
    assert_eq!(
        num_buffers(&got),
        1,
        "VERSION_1 without MRG_RXBUF: num_buffers must be 1"
    );
    assert_eq!(&got[12..9012], &frame[..]);
    assert_eq!(got[9012], 0xee, "nothing written past the frame");
}

#[test]
fn legacy_header_is_ten_bytes() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    let bufs = rx.add_rx_buffers(1, 2048);
    let frame = pattern(1000, 9);
    deliver(&rx, legacy(), &frame).unwrap();
    assert_eq!(rx.used_elem(0), (u32::from(bufs[0].0), 1010));
    let got = g.read(bufs[0].1, 1010);
    assert_eq!(&got[..10], &[0u8; 10]);
    assert_eq!(&got[10..], &frame[..]);
}

#[test]
fn not_enough_buffers_consumes_nothing() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    let call = rx.attach_call();
    let frame = pattern(9000, 10);
    // no buffers at all
    assert_eq!(deliver(&rx, v1(true), &frame), Err(RxError::NoBuffers));
    // MRG_RXBUF, but 2 x 4096 < 9012
    let mut bufs = rx.add_rx_buffers(2, 4096);
    assert_eq!(deliver(&rx, v1(true), &frame), Err(RxError::NoBuffers));
    assert_eq!((rx.used_idx(), rx.device_next_avail()), (0, 0));
    // without MRG_RXBUF one 4096-byte chain is too small, even with more behind it
    bufs.extend(rx.add_rx_buffers(1, 4096));
    assert_eq!(deliver(&rx, v1(false), &frame), Err(RxError::NoBuffers));
    assert_eq!((rx.used_idx(), rx.device_next_avail()), (0, 0));
    assert_eq!(interrupts(&call), 0);
    // with the third buffer MRG_RXBUF fits it, in the same chains as offered
    deliver(&rx, v1(true), &frame).unwrap();
    assert_eq!(rx.used_idx(), 3);
    assert_eq!(rx.used_elem(0).0, u32::from(bufs[0].0));
    assert_eq!(&received(&g, &rx, &bufs, 0, 3)[12..], &frame[..]);
    assert_eq!(interrupts(&call), 1);
}

#[test]
fn a_frame_is_never_spread_over_more_than_64_chains() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 128);
    rx.add_rx_buffers(100, 64);
    // 64 chains of 64 bytes hold 4096 - 12 frame bytes
    assert_eq!(
        deliver(&rx, v1(true), &pattern(4085, 1)),
        Err(RxError::NoBuffers)
    );
    assert_eq!(rx.device_next_avail(), 0);
    deliver(&rx, v1(true), &pattern(4084, 1)).unwrap();
    assert_eq!(rx.used_idx(), 64);
}

#[test]
fn rx_buffer_smaller_than_the_header_is_returned_empty() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    let small = rx.add_rx_buffers(1, 11);
    let bufs = rx.add_rx_buffers(1, 2048);
    let frame = pattern(100, 11);
    assert_eq!(deliver(&rx, v1(true), &frame), Err(RxError::ShortHeader));
    assert_eq!(rx.used_idx(), 1);
    assert_eq!(rx.used_elem(0), (u32::from(small[0].0), 0));
    // the next frame goes into the next chain
    deliver(&rx, v1(true), &frame).unwrap();
    assert_eq!(rx.used_elem(1), (u32::from(bufs[0].0), 112));
    // a 10-byte buffer is enough for the legacy header
    let tiny = rx.add_rx_buffers(1, 10);
    rx.add_rx_buffers(1, 2048);
    assert_eq!(deliver(&rx, legacy(), &frame), Err(RxError::NoBuffers));
    assert_eq!(
        rx.used_idx(),
        2,
        "too small for the frame, but not malformed: kept"
    );
    assert_eq!(rx.device_next_avail(), 2);
    assert_eq!(tiny[0].0, 2);
}

#[test]
fn malformed_rx_chain_mid_frame_returns_the_frames_chains_empty() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    let first = rx.add_rx_buffers(1, 1024);
    let a = g.alloc(1024);
    let bad = rx.add_chain(&[(a, 1024, 0)]); // device-readable: not an RX buffer
    let later = rx.add_rx_buffers(2, 1024);
    let frame = pattern(1500, 12);
    assert_eq!(
        deliver(&rx, v1(true), &frame),
        Err(RxError::Chain(ChainError::WrongDirection))
    );
    assert_eq!(rx.used_idx(), 2);
    assert_eq!(rx.used_elem(0), (u32::from(first[0].0), 0));
    assert_eq!(rx.used_elem(1), (u32::from(bad), 0));
    // the next frame starts with the chains after the bad one
    deliver(&rx, v1(true), &frame).unwrap();
    assert_eq!(rx.used_idx(), 4);
    assert_eq!(rx.used_elem(2), (u32::from(later[0].0), 1024));
    assert_eq!(rx.used_elem(3), (u32::from(later[1].0), 1512 - 1024));
    assert_eq!(num_buffers(&g.read(later[0].1, 12)), 2);
}

#[test]
fn rx_header_split_over_buffers() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    // chains of a 6-byte buffer then a 2000-byte one: the header and num_buffers
    // straddle the two
    let mut parts = Vec::new();
    for _ in 0..2 {
        let p = [(g.alloc(6), 6u32), (g.alloc(2000), 2000)];
        rx.add_chain(&p.map(|(a, l)| (a, l, W)));
        parts.push(p);
    }
    let frame = pattern(3000, 14);
    deliver(&rx, v1(true), &frame).unwrap();
    assert_eq!((rx.used_elem(0).1, rx.used_elem(1).1), (2006, 1006));
    let mut got = Vec::new();
    for (p, len) in parts.iter().zip([2006usize, 1006]) {
        got.extend(g.read(p[0].0, 6.min(len)));
        got.extend(g.read(p[1].0, len - 6));
    }
    assert_eq!(&got[..10], &[0u8; 10]);
    assert_eq!(num_buffers(&got), 2);
    assert_eq!(&got[12..2006], &frame[..1994]);
    assert_eq!(&got[2006..], &frame[1994..]);
}

#[test]
fn rx_frame_through_an_indirect_table() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    let parts = [(g.alloc(100), 100u32), (g.alloc(3000), 3000)];
    let head = rx.add_indirect(&parts.map(|(a, l)| (a, l, W)));
    let frame = pattern(2000, 13);
    deliver(&rx, v1(true), &frame).unwrap();
    assert_eq!(rx.used_elem(0), (u32::from(head), 2012));
    let mut got = g.read(parts[0].0, 100);
    got.extend(g.read(parts[1].0, 1912));
    assert_eq!(num_buffers(&got), 1);
    assert_eq!(&got[12..], &frame[..]);
}
