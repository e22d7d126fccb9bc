// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Ring indices and placement: 16-bit wrap-around, avail.idx sanity, bad ring
//! areas, rings that are not running, and kick suppression.
#![allow(unsafe_code)] // Views of test-owned memory: HostBuf, MemMap and SplitRing constructors.

use vhost_user_backend::VringT;
use vm_memory::GuestMemoryMmap;

use super::harness::*;
use crate::guest_mem::MemMap;
use crate::net::{deliver_rx_frame, take_tx_frame, RxScratch};
use crate::port::Notifier;
use crate::seglist::SegList;
use crate::split_ring::{RingError, SplitRing};
use crate::virtqueue::{QueueCache, QueueError};
use crate::GuestMemoryAtomicMmap;

#[test]
fn tx_avail_and_used_indices_wrap_past_65535() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 8);
    tx.start_at(65532);
    let layout = v1(true);
    let mut seg = SegList::default();
    // Two bursts of 8: the first crosses 65535 -> 0 on both indices, the second runs past it.
    for round in 0..2u16 {
        let start = tx.avail_idx();
        let frames: Vec<Vec<u8>> = (0..8)
            .map(|i| pattern(60 + i, (round * 8) as u8 + i as u8))
            .collect();
        let heads: Vec<u16> = frames.iter().map(|f| tx.add_tx_frame(12, f, &[])).collect();
        assert_eq!(tx.avail_idx(), start.wrapping_add(8));
        {
            let mut q = tx.burst();
            assert_eq!(q.pending(), 8);
            for (f, &h) in frames.iter().zip(&heads) {
                let head = q.pop().unwrap();
                assert_eq!(head, h, "heads are taken in ring order");
                assert_eq!(
                    take_tx_frame(&q, head, layout, &mut seg).unwrap(),
                    f.len() as u32
                );
                assert_eq!(&bytes_of(&seg), f);
                q.push_used(head, 0);
            }
            assert_eq!(q.pop(), None);
            assert_eq!(
                tx.used_idx(),
                start,
                "nothing is published before the burst ends"
            );
        }
        assert_eq!(tx.used_idx(), start.wrapping_add(8));
        assert_eq!(tx.device_next_avail(), start.wrapping_add(8));
        for (i, &h) in heads.iter().enumerate() {
            assert_eq!(
                tx.used_elem(start.wrapping_add(i as u16)),
                (u32::from(h), 0)
            );
        }
    }
    assert_eq!(tx.used_idx(), 12);
}

#[test]
fn rx_used_entries_wrap_past_65535_with_merged_buffers() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 8);
    rx.start_at(65534);
    let bufs = rx.add_rx_buffers(6, 1024);
    let layout = v1(true);
    let mut s = RxScratch::new();
    let frames: Vec<Vec<u8>> = (0..3).map(|i| pattern(2000, i)).collect();
    {
        let mut q = rx.burst();
        let mut frame = SegList::default();
        for f in &frames {
            let mut f = f.clone();
            frame.clear();
            // SAFETY: `frame` is used only in this iteration, while `f` lives and
            // is not touched otherwise.
            assert!(frame.push(unsafe { crate::guest_mem::HostBuf::from_slice(&mut f) }));
            deliver_rx_frame(&mut q, layout, &frame, 2000, &mut s).unwrap();
        }
    }
    assert_eq!(rx.used_idx(), 4);
    for (i, &(head, gpa)) in bufs.iter().enumerate() {
        let pos = 65534u16.wrapping_add(i as u16);
        let len = if i % 2 == 0 { 1024 } else { 2012 - 1024 };
        assert_eq!(
            rx.used_elem(pos),
            (u32::from(head), len),
            "used entry {pos}"
        );
        let got = g.read(gpa, len as usize);
        let f = &frames[i / 2];
        if i % 2 == 0 {
            assert_eq!(u16::from_le_bytes([got[10], got[11]]), 2, "num_buffers");
            assert_eq!(&got[12..], &f[..1012]);
        } else {
            assert_eq!(&got[..], &f[1012..]);
        }
    }
}

#[test]
fn avail_idx_more_than_a_ring_ahead_is_refused() {
    let g = Guest::new();
    let ring = g.ring(RING_A, 8);
    for (next, avail, ok) in [
        (100u16, 108u16, true),
        (100, 109, false),
        (100, 99, false), // behind the device: 65535 ahead
        (65530, 2, true), // exactly 8 ahead across the wrap
        (65530, 3, false),
    ] {
        ring.start_at(next);
        ring.set_avail_idx(avail);
        match ring.open() {
            Ok(Some(q)) => {
                assert!(ok, "next {next} avail {avail} accepted");
                assert_eq!(q.pending(), avail.wrapping_sub(next));
            }
            Err(e) => {
                assert!(!ok, "next {next} avail {avail}: {e}");
                assert_eq!(e, QueueError::AvailIndex { avail, next });
            }
            Ok(None) => panic!("ring not running"),
        }
    }
}

#[test]
fn ring_areas_outside_memory_are_refused() {
    let g = Guest::new();
    let ring = g.ring(RING_A, 8);
    let (d, a, u) = (RING_A, ring.avail_addr, ring.used_addr);
    let past = MEM_SIZE + 0x1000;
    for (desc, avail, used, want) in [
        (past, a, u, RingError::DescTable),
        (MEM_SIZE - 16 * 8 + 16, a, u, RingError::DescTable), // runs past the end
        (d, past, u, RingError::AvailRing),
        (d, MEM_SIZE - 16, u, RingError::AvailRing), // used_event past the end
        (d, a, past, RingError::UsedRing),
        (d, a, MEM_SIZE - 64, RingError::UsedRing),
    ] {
        ring.vring.set_queue_info(desc, avail, used).unwrap();
        assert_eq!(ring.open().err(), Some(QueueError::Ring(want)));
    }
    ring.vring.set_queue_info(d, a, u).unwrap();
    assert!(ring.open().unwrap().is_some());
}

#[test]
fn misaligned_rings_and_bad_sizes_are_refused() {
    let g = Guest::new();
    // SAFETY: `g` (and its memory) outlives `map` and every ring mapped below.
    let map = unsafe { MemMap::new(&g.mem) };
    // SAFETY: as above.
    let ok = unsafe { SplitRing::new(&map, 8, 0x1000, 0x1080, 0x1100) };
    assert!(ok.is_ok());
    for (size, desc, avail, used, want) in [
        (8u16, 0x1008u64, 0x1080u64, 0x1100u64, RingError::DescTable),
        (8, 0x1000, 0x1081, 0x1100, RingError::AvailRing),
        (8, 0x1000, 0x1080, 0x1102, RingError::UsedRing),
        (0, 0x1000, 0x1080, 0x1100, RingError::BadSize(0)),
        (12, 0x1000, 0x1080, 0x1100, RingError::BadSize(12)),
        (65535, 0x1000, 0x1080, 0x1100, RingError::BadSize(65535)),
    ] {
        assert_eq!(
            // SAFETY: as above; only errors are expected.
            unsafe { SplitRing::new(&map, size, desc, avail, used) }.err(),
            Some(want)
        );
    }
    // The vring refuses such addresses already; the ring checks them again anyway.
    let ring = g.ring(RING_A, 8);
    assert!(ring.vring.set_queue_info(0x1008, 0x1080, 0x1100).is_err());
}

#[test]
fn rings_not_started_enabled_or_mapped_are_skipped() {
    let g = Guest::new();
    let ring = g.ring(RING_A, 8);
    ring.vring.set_queue_ready(false);
    assert!(ring.open().unwrap().is_none());
    ring.vring.set_queue_ready(true);
    ring.vring.set_enabled(false);
    assert!(ring.open().unwrap().is_none());
    ring.vring.set_enabled(true);
    // Before SET_MEM_TABLE there is no memory: the ring cannot be mapped.
    let empty = GuestMemoryAtomicMmap::new(GuestMemoryMmap::new());
    let mut cache = QueueCache::default();
    cache.map(&empty);
    assert_eq!(
        cache.open(&ring.vring, 0, Notifier::detached()).err(),
        Some(QueueError::Ring(RingError::DescTable))
    );
}

#[test]
fn kicks_are_suppressed_by_flag_only_without_event_idx() {
    let g = Guest::new();
    let ring = g.ring(RING_A, 8);
    ring.set_event_idx(true);
    drop(ring.burst());
    assert_eq!(
        ring.used_flags(),
        0,
        "EVENT_IDX: used.flags is not ours to set"
    );
    ring.set_event_idx(false);
    drop(ring.burst());
    assert_eq!(ring.used_flags(), 1, "VRING_USED_F_NO_NOTIFY");
}

/// `avail_event`, the device's kick threshold with EVENT_IDX (after the used ring).
fn avail_event(g: &Guest, ring: &Ring) -> u16 {
    g.read_u16(ring.used_addr + 4 + 8 * u64::from(ring.size))
}

#[test]
fn kicks_requested_before_a_sleep_say_whether_chains_wait() {
    let g = Guest::new();
    let mut ring = g.ring(RING_A, 8);
    // Without EVENT_IDX: NO_NOTIFY is cleared, and the next burst sets it again.
    ring.set_event_idx(false);
    drop(ring.burst());
    assert_eq!(ring.used_flags(), 1);
    assert!(!ring.burst().request_kicks(), "nothing available");
    assert_eq!(ring.used_flags(), 0, "the driver may kick now");
    drop(ring.burst());
    assert_eq!(ring.used_flags(), 1, "polling again: no kicks");

    // With EVENT_IDX: avail_event is where the device stands, so the driver kicks
    // for the very next chain.
    ring.set_event_idx(true);
    ring.start_at(300);
    assert!(!ring.burst().request_kicks());
    assert_eq!(avail_event(&g, &ring), 300);

    // A chain the driver made available after the burst opened (it did not see
    // the request) is found by the look after the fence: no sleep.
    let bufs = ring.tx_buffers(12, &pattern(60, 1), &[]);
    let head = ring.write_chain(&bufs);
    let mut q = ring.burst();
    ring.make_available(head);
    assert!(q.request_kicks(), "a chain waits: poll, do not sleep");
    drop(q);
    // Nothing was taken by that: the next burst pops it.
    let mut q = ring.burst();
    assert_eq!(q.pending(), 1);
    assert!(q.pop().is_some());
}
