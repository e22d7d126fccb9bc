// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Interrupts: at most one per burst, only when the burst used something, and only
//! when the driver asked (used_event with EVENT_IDX, avail.flags without).
#![allow(unsafe_code)] // HostBuf views of test-owned frames.

use super::harness::*;
use crate::net::{deliver_rx_frame, take_tx_frame, RxScratch};
use crate::seglist::SegList;

/// Offers `n` small TX frames, then takes them all in one burst and marks them used.
fn tx_burst(ring: &mut Ring, n: usize) {
    for i in 0..n {
        ring.add_tx_frame(12, &pattern(60, i as u8), &[]);
    }
    let before = ring.used_idx();
    {
        let mut q = ring.burst();
        let mut seg = SegList::default();
        while let Some(head) = q.pop() {
            take_tx_frame(&q, head, v1(true), &mut seg).unwrap();
            q.push_used(head, 0);
        }
    }
    assert_eq!(ring.used_idx(), before.wrapping_add(n as u16));
}

#[test]
fn event_idx_signals_only_when_used_event_is_crossed() {
    let g = Guest::new();
    let mut ring = g.ring(RING_A, 16);
    ring.set_event_idx(true);
    let call = ring.attach_call();
    // (used.idx before the burst, used entries in it, used_event, interrupt wanted)
    for (old, n, event, want) in [
        (10u16, 4usize, 10u16, true), // the first entry of the burst
        (10, 4, 13, true),            // the last one
        (10, 4, 14, false),           // one past the burst
        (10, 4, 9, false),            // already behind
        (10, 4, 200, false),
        (10, 1, 10, true),
        (65534, 4, 65535, true), // across the 16-bit wrap
        (65534, 4, 1, true),
        (65534, 4, 2, false),
        (65534, 4, 65533, false),
    ] {
        ring.start_at(old);
        ring.set_used_event(event);
        tx_burst(&mut ring, n);
        let got = interrupts(&call);
        assert_eq!(got, u64::from(want), "old {old} +{n}, used_event {event}");
    }
}

#[test]
fn event_idx_interrupt_comes_in_the_burst_that_crosses() {
    let g = Guest::new();
    let mut ring = g.ring(RING_A, 16);
    ring.set_event_idx(true);
    let call = ring.attach_call();
    ring.start_at(100);
    ring.set_used_event(105);
    tx_burst(&mut ring, 4); // 100..104
    assert_eq!(interrupts(&call), 0);
    tx_burst(&mut ring, 4); // 104..108 covers 105
    assert_eq!(interrupts(&call), 1);
    tx_burst(&mut ring, 4); // the driver did not move used_event
    assert_eq!(interrupts(&call), 0);
}

#[test]
fn no_interrupt_flag_without_event_idx() {
    let g = Guest::new();
    let mut ring = g.ring(RING_A, 16);
    let call = ring.attach_call();
    tx_burst(&mut ring, 3);
    assert_eq!(interrupts(&call), 1);
    ring.set_avail_flags(NO_INTERRUPT);
    tx_burst(&mut ring, 3);
    assert_eq!(interrupts(&call), 0);
    // used_event means nothing without EVENT_IDX
    ring.set_avail_flags(0);
    ring.set_used_event(0x7fff);
    tx_burst(&mut ring, 3);
    assert_eq!(interrupts(&call), 1);
}

#[test]
fn one_interrupt_per_burst_however_many_frames() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 64);
    let mut rx = g.ring(RING_B, 64);
    let tx_call = tx.attach_call();
    let rx_call = rx.attach_call();
    rx.set_event_idx(true); // used_event 0 = the first entry: wants one
    tx_burst(&mut tx, 32);
    assert_eq!(interrupts(&tx_call), 1);

    // Forwarding 32 frames over two bursts, one on each ring.
    for i in 0..32 {
        tx.add_tx_frame(12, &pattern(1500, i), &[]);
    }
    rx.add_rx_buffers(64, 1024);
    {
        let mut tq = tx.burst();
        let mut rq = rx.burst();
        let mut seg = SegList::default();
        let mut s = RxScratch::new();
        while let Some(head) = tq.pop() {
            let len = take_tx_frame(&tq, head, v1(true), &mut seg).unwrap();
            deliver_rx_frame(&mut rq, v1(true), &seg, len, &mut s).unwrap();
            tq.push_used(head, 0);
        }
        assert_eq!(interrupts(&rx_call), 0, "nothing before the burst ends");
    }
    assert_eq!(rx.used_idx(), 64);
    assert_eq!(interrupts(&tx_call), 1);
    assert_eq!(interrupts(&rx_call), 1);
}

#[test]
fn bursts_that_use_nothing_stay_silent() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    let call = rx.attach_call();
    drop(rx.burst()); // nothing available
    assert_eq!(interrupts(&call), 0);
    // buffers taken and given back (too small for the frame, no MRG_RXBUF)
    rx.add_rx_buffers(2, 100);
    {
        let mut q = rx.burst();
        let mut f = pattern(500, 1);
        let mut seg = SegList::default();
        // SAFETY: `seg` is used only in this block, while `f` lives untouched.
        assert!(seg.push(unsafe { crate::guest_mem::HostBuf::from_slice(&mut f) }));
        assert!(deliver_rx_frame(&mut q, v1(false), &seg, 500, &mut RxScratch::new()).is_err());
    }
    assert_eq!(interrupts(&call), 0);
    assert_eq!((rx.used_idx(), rx.device_next_avail()), (0, 0));
}
