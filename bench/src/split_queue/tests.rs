//! Unit tests of the split-ring driver against the fake device.

use super::*;
use crate::test_device::FakeDevice;

fn queue(size: u16) -> (GuestMem, SplitQueue) {
    let mut mem = GuestMem::new(0, 4 << 20).unwrap();
    let q = SplitQueue::new(&mut mem, size, 256).unwrap();
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
        SplitQueue::new(&mut mem, 3, 64),
        Err(QueueError::BadSize(3))
    ));
    assert!(matches!(
        SplitQueue::new(&mut mem, 8, 0),
        Err(QueueError::BadBufSize(0))
    ));
}

#[test]
fn chains_round_trip_through_a_device() {
    let (_mem, mut q) = queue(8);
    let mut dev = FakeDevice::new(&q);
    let h1 = q.push_chain(3, false, |i, _, _| 10 + u32::from(i)).unwrap();
    let h2 = q.push_chain(5, true, |_, _, _| 256).unwrap();
    assert_eq!(q.num_free(), 0);
    assert!(q.push_chain(1, false, |_, _, _| 1).is_none());
    assert!(q.publish());
    let chains = dev.pop_all();
    assert_eq!(chains.len(), 2);
    assert_eq!(
        chains[0].iter().map(|d| d.len).collect::<Vec<_>>(),
        [10, 11, 12]
    );
    assert!(chains[1].iter().all(|d| d.write && d.len == 256));
    dev.push_used(h2, 300);
    dev.push_used(h1, 0);
    assert_eq!(
        q.pop_used(),
        Some(Used {
            head: h2,
            len: 300,
            descs: 5
        })
    );
    assert_eq!(
        q.pop_used(),
        Some(Used {
            head: h1,
            len: 0,
            descs: 3
        })
    );
    assert_eq!(q.pop_used(), None);
    assert_eq!(q.num_free(), 8);
    // The free list still covers every descriptor exactly once.
    for _ in 0..8 {
        q.push_chain(1, true, |_, _, _| 1).unwrap();
    }
    assert!(q.publish());
    assert_eq!(dev.pop_all().len(), 8);
}

#[test]
fn wraps_indices_and_rejects_unknown_ids() {
    let (_mem, mut q) = queue(4);
    let mut dev = FakeDevice::new(&q);
    for round in 0..70_000u32 {
        let h = q.push_chain(1, false, |_, _, _| round % 7 + 1).unwrap();
        q.publish();
        assert_eq!(dev.pop_all().len(), 1);
        dev.push_used(h, round);
        assert_eq!(q.pop_used().map(|u| u.len), Some(round));
    }
    dev.push_used(3, 0); // not in flight
    assert_eq!(q.pop_used(), None);
    assert_eq!(q.bad_used(), 1);
}

#[test]
fn kicks_follow_event_idx() {
    let (_mem, mut q) = queue(8);
    q.set_event_idx(true);
    let dev = FakeDevice::new(&q);
    dev.set_avail_event(0);
    q.push_chain(1, false, |_, _, _| 1);
    assert!(q.publish(), "avail_event 0 is crossed by 0 -> 1");
    q.push_chain(1, false, |_, _, _| 1);
    assert!(
        !q.publish(),
        "device asked for no kick before index 0 again"
    );
    dev.set_avail_event(3);
    q.push_chain(1, false, |_, _, _| 1);
    q.push_chain(1, false, |_, _, _| 1);
    assert!(q.publish(), "2 -> 4 crosses 3");
    assert_eq!(q.kicks(), 2);
    assert_eq!(q.kick_fd().read().unwrap(), 2);
}

#[test]
fn kicks_follow_no_notify_without_event_idx() {
    let (_mem, mut q) = queue(8);
    let dev = FakeDevice::new(&q);
    dev.set_used_flags(VRING_USED_F_NO_NOTIFY as u16);
    q.push_chain(1, false, |_, _, _| 1);
    assert!(!q.publish());
    dev.set_used_flags(0);
    q.push_chain(1, false, |_, _, _| 1);
    assert!(q.publish());
}

#[test]
fn wait_returns_on_used_entries_and_times_out_otherwise() {
    let (_mem, mut q) = queue(8);
    let mut dev = FakeDevice::new(&q);
    assert!(!q.wait_used(Duration::from_millis(5)));
    let h = q.push_chain(1, true, |_, _, _| 8).unwrap();
    q.publish();
    dev.pop_all();
    dev.push_used(h, 8);
    assert!(q.wait_used(Duration::from_millis(5)));
}
