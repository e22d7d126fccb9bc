// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Unit tests of the split-ring driver against the fake device.

use super::*;
use crate::test_device::FakeDevice;

fn queue(size: u16) -> (GuestMem, SplitQueue) {
    let mut mem = GuestMem::new(0, 4 << 20).unwrap();
    let q = SplitQueue::new(&mut mem, size).unwrap();
    (mem, q)
}

#[test]
fn need_event_matches_the_spec_formula() {
    assert!(need_event(0, 1, 0));
    assert!(!need_event(1, 1, 0));
    assert!(need_event(5, 10, 0));
    assert!(!need_event(10, 10, 0));
    assert!(need_event(0xffff, 2, 0xfffe)); // across the wrap
}

#[test]
fn rejects_bad_sizes() {
    let mut mem = GuestMem::new(0, 1 << 20).unwrap();
    assert!(matches!(
        SplitQueue::new(&mut mem, 3),
        Err(QueueError::BadSize(3))
    ));
    assert!(matches!(
        SplitQueue::new(&mut mem, 0),
        Err(QueueError::BadSize(0))
    ));
}

#[test]
fn descriptors_round_trip_through_a_device() {
    let (_mem, mut q) = queue(4);
    let mut dev = FakeDevice::new(&q);
    assert!(q.push(0x1000, 10, false, 100));
    assert!(q.push(0x2000, 256, true, 200));
    assert!(q.push(0x3000, 1, true, 300));
    assert!(q.push(0x4000, 2, true, 400));
    assert_eq!(q.num_free(), 0);
    assert!(!q.push(0x5000, 1, false, 500));
    assert!(dev.pop_all().is_empty(), "invisible before publish");
    q.publish();
    let d = dev.pop_all();
    assert_eq!(d.len(), 4);
    assert_eq!((d[0].addr, d[0].len, d[0].write), (0x1000, 10, false));
    assert_eq!((d[1].addr, d[1].len, d[1].write), (0x2000, 256, true));
    // Completed out of order: cookies follow the ids.
    dev.push_used_batch(&[(d[1].id, 300), (d[0].id, 0)]);
    let mut out = [Used::default(); 8];
    assert_eq!(q.pop_used_burst(&mut out), 2);
    assert_eq!(
        out[0],
        Used {
            cookie: 200,
            len: 300
        }
    );
    assert_eq!(
        out[1],
        Used {
            cookie: 100,
            len: 0
        }
    );
    assert_eq!(q.pop_used(), None);
    assert_eq!(q.num_free(), 2);
    assert_eq!(q.in_flight(), 2);
}

#[test]
fn burst_is_bounded_by_the_output() {
    let (_mem, mut q) = queue(8);
    let mut dev = FakeDevice::new(&q);
    for i in 0..8 {
        q.push(u64::from(i) * 64, 64, true, i);
    }
    q.publish();
    let d = dev.pop_all();
    dev.push_used_batch(&d.iter().map(|d| (d.id, 1)).collect::<Vec<_>>());
    let mut out = [Used::default(); 3];
    assert_eq!(q.pop_used_burst(&mut out), 3);
    assert_eq!(q.pop_used_burst(&mut out), 3);
    assert_eq!(q.pop_used_burst(&mut out), 2);
    assert_eq!(q.pop_used_burst(&mut out), 0);
    assert_eq!(q.num_free(), 8);
}

#[test]
fn wraps_indices_and_rejects_unknown_ids() {
    let (_mem, mut q) = queue(4);
    let mut dev = FakeDevice::new(&q);
    for round in 0..70_000u32 {
        assert!(q.push(0x1000, round % 7 + 1, false, round));
        q.publish();
        let d = dev.pop_all();
        assert_eq!(d.len(), 1);
        dev.push_used(d[0].id, round);
        assert_eq!(
            q.pop_used(),
            Some(Used {
                cookie: round,
                len: round
            })
        );
    }
    dev.push_used(3, 0); // not in flight
    dev.push_used(9, 0); // not even a descriptor
    assert_eq!(q.pop_used(), None);
    assert_eq!(q.bad_used(), 2);
}

#[test]
fn kicks_follow_event_idx() {
    let (_mem, mut q) = queue(8);
    q.set_event_idx(true);
    let dev = FakeDevice::new(&q);
    dev.set_avail_event(0);
    q.push(0, 1, false, 0);
    assert!(q.publish(), "avail_event 0 is crossed by 0 -> 1");
    q.push(0, 1, false, 1);
    assert!(
        !q.publish(),
        "device asked for no kick before index 0 again"
    );
    dev.set_avail_event(3);
    q.push(0, 1, false, 2);
    q.push(0, 1, false, 3);
    assert!(q.publish(), "2 -> 4 crosses 3");
    assert!(!q.publish(), "nothing new: no store, no kick");
    assert_eq!(q.kicks(), 2);
    assert_eq!(q.kick_fd().read().unwrap(), 2);
}

#[test]
fn kicks_follow_no_notify_without_event_idx() {
    let (_mem, mut q) = queue(8);
    let dev = FakeDevice::new(&q);
    dev.set_used_flags(VRING_USED_F_NO_NOTIFY as u16);
    q.push(0, 1, false, 0);
    assert!(!q.publish());
    dev.set_used_flags(0);
    q.push(0, 1, false, 1);
    assert!(q.publish());
}

#[test]
fn interrupts_are_suppressed_except_while_waiting() {
    let (_mem, mut q) = queue(8);
    let dev = FakeDevice::new(&q);
    assert_eq!(dev.avail_flags(), VRING_AVAIL_F_NO_INTERRUPT as u16);
    q.set_event_idx(true);
    assert_eq!(dev.avail_flags(), 0);
    assert_eq!(dev.used_event(), 0x7fff, "half the index space away");
}

#[test]
fn wait_returns_on_used_entries_and_times_out_otherwise() {
    let (_mem, mut q) = queue(8);
    let mut dev = FakeDevice::new(&q);
    assert!(!q.wait_used(Duration::from_millis(5)));
    q.push(0x1000, 8, true, 1);
    q.publish();
    let d = dev.pop_all();
    dev.push_used(d[0].id, 8);
    assert!(q.wait_used(Duration::from_millis(5)));
}
