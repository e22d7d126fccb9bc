// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The rings as `ring-loop` drives them, indexes only ([`Ring`]), and the polling loop
//! over both directions' rings ([`Rings::spin`]) with its [`Counters`]. With several
//! queue pairs a direction has a TX ring per pair of the sender and an RX ring per pair
//! of the receiver, all polled in turn.

#![allow(unsafe_code)] // ring indexes and used elements read in place in our guest memory.

use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;
use vpmd_uplink::tsc;

use super::check::Checker;
use crate::modes;
use crate::port::MAX_QUEUE_PAIRS;
use crate::split_queue::SplitQueue;

/// Size of the per-queue counter arrays.
pub(super) const MAX_QUEUES: usize = MAX_QUEUE_PAIRS as usize;

/// Polls between clock checks.
const POLLS_PER_CHECK: u32 = 64;
/// With nothing moving for this long, kick every queue once (and again after as long).
const IDLE_KICK: Duration = Duration::from_millis(1);
/// A poll longer than this (TSC cycles, ~20 us) was descheduled or interrupted: its
/// time counts as stalled, not busy (the poll after a preemption always sees movement).
const STALL_CYCLES: u64 = 50_000;

/// One ring as this mode drives it: indexes only.
pub(super) struct Ring<'a> {
    /// `avail.idx`.
    avail_idx: &'a AtomicU16,
    /// `used.idx`.
    used_idx: &'a AtomicU16,
    /// First used element (`{id: u32, len: u32}` each).
    used_elems: *const u32,
    /// `used_event` when EVENT_IDX is on.
    used_event: Option<&'a AtomicU16>,
    kick: &'a EventFd,
    mask: u16,
    /// Our `avail.idx`, as published.
    avail: u16,
    /// `used.idx` as last seen.
    used: u16,
    /// `used_event` as last set.
    event: u16,
    /// Most descriptors left with the device at once (TX; the ring size: no limit).
    window: u16,
    /// Descriptors taken back and not republished yet (held back by `window`).
    owed: u16,
}

impl<'a> Ring<'a> {
    /// Takes over `q`, whose avail ring must hold descriptor `i` in slot `i` (as the
    /// queue's free list hands them out on a fresh ring) with all of them published.
    fn new(q: &'a SplitQueue, event_idx: bool) -> Ring<'a> {
        let c = q.config_data();
        let size = usize::from(q.size());
        let avail = c.avail_ring_addr as *const u16;
        let used = c.used_ring_addr as *const u8;
        // SAFETY: the three areas were laid out by `SplitQueue::new` in guest memory that
        // `q` keeps mapped for `'a` (its `mem`): the avail ring is `flags, idx,
        // ring[size], used_event` as u16s (2-byte aligned, page-aligned start), the used
        // ring `flags, idx` then the 8-byte elements. The device accesses the indexes
        // concurrently, hence atomics; the elements are only read (volatile).
        let (avail_idx, used_idx, used_elems, used_event) = unsafe {
            (
                AtomicU16::from_ptr(avail.add(1).cast_mut()),
                AtomicU16::from_ptr(used.cast::<u16>().add(1).cast_mut()),
                used.add(4).cast::<u32>(),
                AtomicU16::from_ptr(avail.add(2 + size).cast_mut()),
            )
        };
        for slot in 0..size {
            // SAFETY: `2 + slot < 2 + size`: an avail ring entry; we wrote it at setup and
            // the device only reads it.
            let id = u16::from_le(unsafe { avail.add(2 + slot).read_volatile() });
            assert_eq!(
                usize::from(id),
                slot,
                "ring-loop needs descriptor i in avail slot i"
            );
        }
        let avail_now = u16::from_le(avail_idx.load(Ordering::Relaxed));
        assert_eq!(usize::from(avail_now), size, "ring-loop needs a full ring");
        Ring {
            avail_idx,
            used_idx,
            used_elems,
            used_event: event_idx.then_some(used_event),
            kick: q.kick_fd(),
            mask: q.size() - 1,
            avail: avail_now,
            used: 0,
            event: u16::from_le(used_event.load(Ordering::Relaxed)),
            window: q.size(),
            owed: 0,
        }
    }

    /// How far `used.idx` moved since last time (and remembers it).
    #[inline(always)]
    fn poll(&mut self) -> u16 {
        let u = u16::from_le(self.used_idx.load(Ordering::Acquire));
        let d = u.wrapping_sub(self.used);
        self.used = u;
        d
    }

    /// Hands `n` more descriptors (the ones just used, in order) back to the device.
    #[inline(always)]
    fn republish(&mut self, n: u16) {
        self.avail = self.avail.wrapping_add(n);
        self.avail_idx.store(self.avail.to_le(), Ordering::Release);
    }

    /// Hands `n` more descriptors back as [`republish`](Self::republish) does, but
    /// leaves at most `window` with the device: the rest are owed and go out as it
    /// gives descriptors back.
    #[inline(always)]
    fn republish_within(&mut self, n: u16) {
        if self.window > self.mask {
            return self.republish(n);
        }
        self.owed += n;
        let out = self.avail.wrapping_sub(self.used);
        let k = self.owed.min(self.window.saturating_sub(out));
        if k != 0 {
            self.owed -= k;
            self.republish(k);
        }
    }

    /// The used element for `used.idx - 1` (the last one seen): id and length.
    pub(super) fn last_used(&self) -> (u32, u32) {
        self.used_before(0)
    }

    /// The used element for `used.idx - 1 - back` (`back` below the ring size): id and
    /// length.
    pub(super) fn used_before(&self, back: u16) -> (u32, u32) {
        let slot = usize::from(self.used.wrapping_sub(1).wrapping_sub(back) & self.mask);
        // SAFETY: `slot <= mask < size`: an element of the used ring laid out by
        // `SplitQueue::new`; the device wrote it before the `used.idx` we loaded
        // (acquire) and does not write it again before we republish its descriptor.
        unsafe {
            let e = self.used_elems.add(2 * slot);
            (
                u32::from_le(e.read_volatile()),
                u32::from_le(e.add(1).read_volatile()),
            )
        }
    }

    /// The slot (= descriptor id, in order) of the last used element seen.
    pub(super) fn last_slot(&self) -> u32 {
        self.slot_before(0)
    }

    /// The slot of the used element `back` before the last one seen.
    pub(super) fn slot_before(&self, back: u16) -> u32 {
        u32::from(self.used.wrapping_sub(1).wrapping_sub(back) & self.mask)
    }

    /// Keeps EVENT_IDX `used_event` half the index space ahead of `used.idx`, so the
    /// device never gets to it (a store only every 16384 entries).
    fn keep_quiet(&mut self) {
        if let Some(ev) = self.used_event {
            if self.used.wrapping_sub(self.event.wrapping_sub(0x7fff)) >= 0x4000 {
                self.event = self.used.wrapping_add(0x7fff);
                ev.store(self.event.to_le(), Ordering::Release);
            }
        }
    }

    fn kick(&self) {
        // Writing 1 to an eventfd only fails on counter overflow, which a reader prevents.
        let _ = self.kick.write(1);
    }
}

/// Counters, cumulative from setup.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counters {
    /// Per sending port: TX descriptors taken by the backend.
    pub(super) taken: [u64; 2],
    /// Per sending port: polls that saw its TX `used.idx` move.
    pub(super) tx_polls: [u64; 2],
    /// Per sending port: frames the other port received.
    pub(super) received: [u64; 2],
    /// Per sending port: polls that saw the other port's RX `used.idx` move.
    pub(super) rx_polls: [u64; 2],
    /// Per sending port and TX queue pair: descriptors taken.
    pub(super) taken_per_queue: [[u64; MAX_QUEUES]; 2],
    /// Per sending port and RX queue pair of the other port: frames received there.
    pub(super) received_per_queue: [[u64; MAX_QUEUES]; 2],
    /// TSC cycles of polls that moved something.
    pub(super) busy_cycles: u64,
    /// TSC cycles of polls longer than [`STALL_CYCLES`].
    pub(super) stalled_cycles: u64,
    /// Polls of all four rings.
    pub(super) polls: u64,
    pub(super) kicks: u64,
}

/// One direction: the TX rings of the sending port and the RX rings of the other, one
/// per queue pair (at most [`MAX_QUEUES`] each). Pair 0's are held inline and polled
/// on their own, so one queue pair costs about what it did before multi-queue (measured
/// with pair 0 in the `Vec`s too: 20-25 polls/us instead of 26-36 on a loaded machine;
/// like this, 72-80 instead of 81-83, and about 1 busy cycle per frame more).
struct Dir<'a> {
    tx: Ring<'a>,
    rx: Ring<'a>,
    /// Pairs 1.. of the sender.
    tx_more: Vec<Ring<'a>>,
    /// Pairs 1.. of the receiver.
    rx_more: Vec<Ring<'a>>,
}

impl<'a> Dir<'a> {
    fn new(tx: &[&'a SplitQueue], rx: &[&'a SplitQueue], event_idx: [bool; 2]) -> Self {
        let ring = |q: &&'a SplitQueue, e| Ring::new(q, e);
        Dir {
            tx: ring(&tx[0], event_idx[0]),
            rx: ring(&rx[0], event_idx[1]),
            tx_more: tx[1..].iter().map(|q| ring(q, event_idx[0])).collect(),
            rx_more: rx[1..].iter().map(|q| ring(q, event_idx[1])).collect(),
        }
    }

    fn txs(&self) -> impl Iterator<Item = &Ring<'a>> {
        std::iter::once(&self.tx).chain(&self.tx_more)
    }

    fn txs_mut(&mut self) -> impl Iterator<Item = &mut Ring<'a>> {
        std::iter::once(&mut self.tx).chain(&mut self.tx_more)
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Ring<'a>> {
        [&mut self.tx, &mut self.rx]
            .into_iter()
            .chain(&mut self.tx_more)
            .chain(&mut self.rx_more)
    }

    fn all(&self) -> impl Iterator<Item = &Ring<'a>> {
        [&self.tx, &self.rx]
            .into_iter()
            .chain(&self.tx_more)
            .chain(&self.rx_more)
    }
}

/// Polls TX ring `tx` (queue pair `q` of sending port `p`): counts what the backend
/// took, republishes it when `transmit`, samples a completion now and then. Whether
/// it moved.
#[inline(always)]
fn poll_tx(
    tx: &mut Ring,
    (p, q): (usize, usize),
    transmit: bool,
    c: &mut Counters,
    chk: &mut Checker,
) -> bool {
    let n = tx.poll();
    if n == 0 {
        return false;
    }
    if transmit {
        tx.republish_within(n);
    }
    c.taken[p] += u64::from(n);
    c.taken_per_queue[p][q] += u64::from(n);
    c.tx_polls[p] += 1;
    if c.taken[p] >= chk.next_tx[p] && chk.every > 0 {
        chk.next_tx[p] = c.taken[p] + chk.every;
        chk.check_tx(tx);
    }
    true
}

/// Polls RX ring `rx` (queue pair `q` of the port receiving what port `p` sends):
/// counts what arrived, samples a frame now and then, gives the buffers back. Whether
/// it moved.
#[inline(always)]
fn poll_rx(rx: &mut Ring, (p, q): (usize, usize), c: &mut Counters, chk: &mut Checker) -> bool {
    let n = rx.poll();
    if n == 0 {
        return false;
    }
    c.received[p] += u64::from(n);
    c.received_per_queue[p][q] += u64::from(n);
    c.rx_polls[p] += 1;
    if c.received[p] >= chk.next_rx[p] && chk.every > 0 {
        chk.next_rx[p] = c.received[p] + chk.every;
        chk.check_rx(rx, p, 1 - p, q);
    }
    rx.republish(n);
    true
}

/// The rings of both ports, by direction: `dirs[p]` carries what port p sends
/// (`None`: p sends nothing, its TX ring and the other port's RX ring are not driven).
pub(super) struct Rings<'a> {
    dirs: [Option<Dir<'a>>; 2],
}

impl<'a> Rings<'a> {
    /// Takes over the TX and RX queues (one per queue pair, at most [`MAX_QUEUES`]) of
    /// ports 0 and 1 (see [`Ring::new`]), with EVENT_IDX as each port negotiated; for a
    /// port whose `sends` is false, neither its TX queues nor the other port's RX queues.
    pub(super) fn new(
        tx: [&[&'a SplitQueue]; 2],
        rx: [&[&'a SplitQueue]; 2],
        event_idx: [bool; 2],
        sends: [bool; 2],
    ) -> Self {
        assert!(
            [tx, rx]
                .iter()
                .flatten()
                .all(|q| (1..=MAX_QUEUES).contains(&q.len())),
            "1 to {MAX_QUEUES} queue pairs"
        );
        Rings {
            dirs: [0, 1].map(|p| {
                sends[p].then(|| Dir::new(tx[p], rx[1 - p], [event_idx[p], event_idx[1 - p]]))
            }),
        }
    }

    /// Leaves at most `window` TX descriptors with the backend at once, per port (the
    /// ring starts full: the limit holds once the backend has taken the first frames).
    pub(super) fn set_tx_window(&mut self, window: u16) {
        for tx in self.dirs.iter_mut().flatten().flat_map(Dir::txs_mut) {
            tx.window = window.clamp(1, tx.mask + 1);
        }
    }

    /// Polls until `until` (republishing TX only if `transmit`); with `quiet`, returns
    /// early once nothing moved for that long and the backend has given back every
    /// TX descriptor. Returns (not interrupted, ended quiet).
    #[inline(never)]
    pub(super) fn spin(
        &mut self,
        c: &mut Counters,
        chk: &mut Checker,
        until: Instant,
        transmit: bool,
        quiet: Option<Duration>,
    ) -> (bool, bool) {
        let mut t = tsc::now();
        let mut last_move = Instant::now();
        let mut last_kick = last_move;
        let mut moved_since_check = false;
        loop {
            for _ in 0..POLLS_PER_CHECK {
                let mut moved = false;
                for (p, d) in self.dirs.iter_mut().enumerate() {
                    let Some(d) = d else { continue };
                    moved |= poll_tx(&mut d.tx, (p, 0), transmit, c, chk);
                    for (q, tx) in d.tx_more.iter_mut().enumerate() {
                        moved |= poll_tx(tx, (p, q + 1), transmit, c, chk);
                    }
                    // Frames sent by p arrive on the other port.
                    moved |= poll_rx(&mut d.rx, (p, 0), c, chk);
                    for (q, rx) in d.rx_more.iter_mut().enumerate() {
                        moved |= poll_rx(rx, (p, q + 1), c, chk);
                    }
                }
                c.polls += 1;
                let now = tsc::now();
                let dt = now.wrapping_sub(t);
                if dt > STALL_CYCLES {
                    c.stalled_cycles += dt;
                } else if moved {
                    c.busy_cycles += dt;
                }
                moved_since_check |= moved;
                t = now;
            }
            let now = Instant::now();
            if moved_since_check {
                last_move = now;
                moved_since_check = false;
                for r in self.dirs.iter_mut().flatten().flat_map(Dir::all_mut) {
                    r.keep_quiet();
                }
            } else {
                // Quiet, and every TX descriptor offered has come back: nothing is
                // in flight in the backend (it publishes RX before or with the TX
                // it took the frames from). Quiet alone is not enough: a backend
                // preempted mid-burst is quiet too.
                if quiet.is_some_and(|q| now.duration_since(last_move) >= q)
                    && self
                        .dirs
                        .iter()
                        .flatten()
                        .flat_map(Dir::txs)
                        .all(|tx| tx.avail == tx.used)
                {
                    return (true, true);
                }
                if now.duration_since(last_move) >= IDLE_KICK
                    && now.duration_since(last_kick) >= IDLE_KICK
                {
                    for r in self.dirs.iter().flatten().flat_map(Dir::all) {
                        r.kick();
                        c.kicks += 1;
                    }
                    last_kick = now;
                }
            }
            if now >= until {
                return (true, quiet.is_none());
            }
            if modes::stop_requested() {
                return (false, false);
            }
            t = tsc::now();
        }
    }
}
