// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ring-loop` against a fake backend.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use super::ring::{Counters, Rings};
use super::*;
use crate::guest_mem::GuestMem;
use crate::net_rx::RxQueue;
use crate::split_queue::SplitQueue;
use crate::test_device::{Desc, FakeDevice};
use crate::virtio_net::NetLayout;

/// Against a fake backend in a thread that cross-connects two ports and drops one
/// frame in 7: the counts are exactly the backend's, every frame is checked intact,
/// and the drain leaves nothing in flight.
#[test]
fn counts_checks_and_drops_against_a_fake_backend() {
    against_a_fake_backend(None);
}

/// The same with a TX window of 5: after the first burst (the ring starts full) the
/// backend never finds more than 5 frames of a port waiting.
#[test]
fn a_tx_window_bounds_what_the_backend_finds() {
    let most = against_a_fake_backend(Some(5));
    assert!(
        most.iter().all(|&m| m <= 5),
        "most frames found at once: {most:?}"
    );
}

/// Runs the rings against the fake backend; returns per port the most TX frames the
/// backend found at once after its first look.
fn against_a_fake_backend(window: Option<u16>) -> [usize; 2] {
    let (q, size) = (64u16, 128usize);
    let mut mem = GuestMem::new(0, 8 << 20).unwrap();
    let layout = NetLayout::new(1 << VIRTIO_F_VERSION_1);
    let mut pool = BufPool::new(&mut mem, 4 * u32::from(q), 2048).unwrap();
    let mut tx: Vec<TxQueue> = (0..2)
        .map(|_| TxQueue::new(SplitQueue::new(&mut mem, q).unwrap(), layout))
        .collect();
    let mut rx: Vec<RxQueue> = (0..2)
        .map(|_| RxQueue::new(SplitQueue::new(&mut mem, q).unwrap(), layout, 2048))
        .collect();
    for r in &mut rx {
        r.refill(&mut pool);
    }
    for (p, t) in tx.iter_mut().enumerate() {
        fill_tx(t, &mut pool, &template(p, size).unwrap(), q);
    }

    let mut tx_dev: Vec<FakeDevice> = tx.iter().map(|t| FakeDevice::new(t.queue())).collect();
    let mut rx_dev: Vec<FakeDevice> = rx.iter().map(|r| FakeDevice::new(r.queue())).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let backend = std::thread::spawn(move || {
        let (mut taken, mut delivered, mut n) = ([0u64; 2], [0u64; 2], 0u64);
        let (mut most, mut looked) = ([0usize; 2], [false; 2]);
        let mut free: [VecDeque<Desc>; 2] = Default::default();
        while !stop2.load(Ordering::Relaxed) {
            for p in 0..2 {
                let to = 1 - p;
                free[to].extend(rx_dev[to].pop_all());
                let (mut tx_used, mut rx_used) = (Vec::new(), Vec::new());
                let found = tx_dev[p].pop_all();
                if looked[p] {
                    most[p] = most[p].max(found.len());
                }
                looked[p] |= !found.is_empty();
                for d in found {
                    n += 1;
                    taken[p] += 1;
                    tx_used.push((d.id, 0));
                    if n % 7 == 0 {
                        continue;
                    }
                    let Some(r) = free[to].pop_front() else {
                        continue;
                    };
                    let bytes = tx_dev[p].read(d.addr, d.len as usize);
                    rx_dev[to].write(r.addr, &bytes);
                    rx_used.push((r.id, d.len));
                    delivered[p] += 1;
                }
                if !tx_used.is_empty() {
                    rx_dev[to].push_used_batch(&rx_used);
                    tx_dev[p].push_used_batch(&tx_used);
                }
            }
        }
        (taken, delivered, most)
    });

    let mut chk = Checker::new(
        &pool,
        [rx[0].queue(), rx[1].queue()],
        [layout; 2],
        size,
        q,
        1,
    );
    let mut rings = Rings::new(
        [tx[0].queue(), tx[1].queue()],
        [rx[0].queue(), rx[1].queue()],
        [false; 2],
        [true; 2],
    );
    if let Some(w) = window {
        rings.set_tx_window(w);
    }
    let mut c = Counters::default();
    let until = Instant::now() + Duration::from_millis(200);
    assert!(rings.spin(&mut c, &mut chk, until, true, None).0);
    let until = Instant::now() + DRAIN_MAX;
    let (_, quiet) = rings.spin(&mut c, &mut chk, until, false, Some(DRAIN_QUIET));
    stop.store(true, Ordering::Relaxed);
    let (taken, delivered, most) = backend.join().unwrap();

    assert!(quiet, "the drain went quiet");
    assert_eq!(c.taken, taken);
    assert_eq!(c.received, delivered);
    for p in 0..2 {
        assert!(
            delivered[p] > u64::from(q),
            "frames went round: {delivered:?}"
        );
        assert!(taken[p] > delivered[p], "the fake backend dropped some");
    }
    // With --check-every 1, the last frame of every burst is checked.
    assert_eq!(chk.out.rx_sampled, c.rx_polls[0] + c.rx_polls[1]);
    assert_eq!(chk.out.tx_sampled, c.tx_polls[0] + c.tx_polls[1]);
    assert_eq!(
        (chk.out.rx_bad, chk.out.tx_out_of_order),
        (0, 0),
        "{:?}",
        chk.out.first_problem
    );
    most
}
