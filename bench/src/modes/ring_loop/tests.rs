// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ring-loop` against a fake backend.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use super::ring::{Counters, Rings, MAX_QUEUES};
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
    against_a_fake_backend(None, 1);
}

/// The same with a TX window of 5: after the first burst (the ring starts full) the
/// backend never finds more than 5 frames of a port waiting.
#[test]
fn a_tx_window_bounds_what_the_backend_finds() {
    let most = against_a_fake_backend(Some(5), 1);
    assert!(
        most.iter().all(|&m| m <= 5),
        "most frames found at once: {most:?}"
    );
}

/// With 3 queue pairs and a fake backend that steers each frame to RX queue
/// (UDP source port mod 3): every queue of every port is driven, the counts per queue
/// are exactly the backend's, and every frame sampled is intact.
#[test]
fn several_queue_pairs_are_all_driven_and_counted_per_queue() {
    against_a_fake_backend(None, 3);
}

/// Each TX queue's flows are its own, and descriptors take them in turn.
#[test]
fn flows_per_queue_are_disjoint_and_in_turn() {
    assert_eq!(flow_of(0, 0, 1), 0);
    assert_eq!(flow_of(0, 255, 1), 0);
    assert_eq!(flow_of(0, 65, 64), 1);
    assert_eq!(flow_of(1, 0, 64), 64);
    assert_eq!(flow_of(1, 130, 64), 66);
    let a: Vec<u16> = (0..256).map(|i| flow_of(0, i, 64)).collect();
    let b: Vec<u16> = (0..256).map(|i| flow_of(1, i, 64)).collect();
    assert!(a.iter().all(|f| !b.contains(f)));
    assert_eq!(*a.iter().max().unwrap(), 63);
}

/// Where the fake backend's frame of a UDP source port goes among `pairs` RX queues.
fn steer(frame: &[u8], hdr_len: usize, pairs: usize) -> usize {
    let at = hdr_len + 34;
    usize::from(u16::from_be_bytes([frame[at], frame[at + 1]])) % pairs
}

/// What the fake backend counted: taken and delivered per sending port, delivered per
/// sending port and RX queue, most TX frames found at once per port.
type FakeCounts = ([u64; 2], [u64; 2], [[u64; MAX_QUEUES]; 2], [usize; 2]);

/// A fake backend cross-connecting ports of `pairs` queue pairs each, which drops one
/// frame in 7 and steers by [`steer`], until `stop`.
fn fake_backend(
    mut tx_dev: Vec<Vec<FakeDevice>>,
    mut rx_dev: Vec<Vec<FakeDevice>>,
    hdr_len: usize,
    stop: &AtomicBool,
) -> FakeCounts {
    let pairs = tx_dev[0].len();
    let (mut taken, mut delivered, mut n) = ([0u64; 2], [0u64; 2], 0u64);
    let mut per_queue = [[0u64; MAX_QUEUES]; 2];
    let (mut most, mut looked) = ([0usize; 2], [false; 2]);
    let mut free: [Vec<VecDeque<Desc>>; 2] = Default::default();
    free.iter_mut()
        .for_each(|f| f.resize(pairs, VecDeque::new()));
    while !stop.load(Ordering::Relaxed) {
        for p in 0..2 {
            let to = 1 - p;
            for (r, dev) in rx_dev[to].iter_mut().enumerate() {
                free[to][r].extend(dev.pop_all());
            }
            for txq in &mut tx_dev[p] {
                let mut tx_used = Vec::new();
                let mut rx_used = vec![Vec::new(); pairs];
                let found = txq.pop_all();
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
                    let bytes = txq.read(d.addr, d.len as usize);
                    let r = steer(&bytes, hdr_len, pairs);
                    let Some(b) = free[to][r].pop_front() else {
                        continue;
                    };
                    rx_dev[to][r].write(b.addr, &bytes);
                    rx_used[r].push((b.id, d.len));
                    delivered[p] += 1;
                    per_queue[p][r] += 1;
                }
                if !tx_used.is_empty() {
                    for (r, used) in rx_used.iter().enumerate() {
                        rx_dev[to][r].push_used_batch(used);
                    }
                    txq.push_used_batch(&tx_used);
                }
            }
        }
    }
    (taken, delivered, per_queue, most)
}

/// Runs the rings of two ports of `pairs` queue pairs (64 flows per TX queue when
/// more than one) against the fake backend; returns per port the most TX frames the
/// backend found at once after its first look.
fn against_a_fake_backend(window: Option<u16>, pairs: u16) -> [usize; 2] {
    let (q, size) = (64u16, 128usize);
    let n = usize::from(pairs);
    let flows = if pairs > 1 { 64 } else { 1 };
    let mut mem = GuestMem::new(0, 16 << 20).unwrap();
    let layout = NetLayout::new(1 << VIRTIO_F_VERSION_1);
    let mut pool = BufPool::new(&mut mem, 4 * u32::from(pairs * q), 2048).unwrap();
    // Per port, per queue pair.
    let mut tx: Vec<Vec<TxQueue>> = (0..2)
        .map(|_| {
            (0..n)
                .map(|_| TxQueue::new(SplitQueue::new(&mut mem, q).unwrap(), layout))
                .collect()
        })
        .collect();
    let mut rx: Vec<Vec<RxQueue>> = (0..2)
        .map(|_| {
            (0..n)
                .map(|_| RxQueue::new(SplitQueue::new(&mut mem, q).unwrap(), layout, 2048))
                .collect()
        })
        .collect();
    for r in rx.iter_mut().flatten() {
        r.refill(&mut pool);
    }
    for (p, port) in tx.iter_mut().enumerate() {
        for (qi, t) in port.iter_mut().enumerate() {
            let tmpl = template(p, size).unwrap();
            fill_tx(t, &mut pool, &tmpl, q, (qi as u16, flows));
        }
    }

    let devs = |qs: Vec<Vec<&SplitQueue>>| -> Vec<Vec<FakeDevice>> {
        qs.into_iter()
            .map(|port| port.into_iter().map(FakeDevice::new).collect())
            .collect()
    };
    let tx_q: Vec<Vec<&SplitQueue>> = tx
        .iter()
        .map(|p| p.iter().map(TxQueue::queue).collect())
        .collect();
    let rx_q: Vec<Vec<&SplitQueue>> = rx
        .iter()
        .map(|p| p.iter().map(RxQueue::queue).collect())
        .collect();
    let (tx_dev, rx_dev) = (devs(tx_q.clone()), devs(rx_q.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let hdr_len = layout.hdr_len;
    let backend = std::thread::spawn(move || fake_backend(tx_dev, rx_dev, hdr_len, &stop2));

    let mut chk = Checker::new(&pool, [&rx_q[0], &rx_q[1]], [layout; 2], size, q, 1);
    let mut rings = Rings::new(
        [&tx_q[0], &tx_q[1]],
        [&rx_q[0], &rx_q[1]],
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
    let (taken, delivered, per_queue, most) = backend.join().unwrap();

    assert!(quiet, "the drain went quiet");
    assert_eq!(c.taken, taken);
    assert_eq!(c.received, delivered);
    assert_eq!(c.received_per_queue, per_queue);
    for (p, &taken) in taken.iter().enumerate() {
        assert_eq!(c.taken_per_queue[p].iter().sum::<u64>(), taken);
        assert!(
            c.taken_per_queue[p][..n].iter().all(|&t| t > 0),
            "every TX queue carried frames: {:?}",
            c.taken_per_queue
        );
        assert!(
            c.received_per_queue[p][..n].iter().all(|&r| r > 0),
            "every RX queue received frames: {:?}",
            c.received_per_queue
        );
        assert!(c.taken_per_queue[p][n..].iter().all(|&t| t == 0));
    }
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
