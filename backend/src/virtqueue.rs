// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One burst on one virtqueue, DPDK-style.
//!
//! A polling thread keeps a [`QueueCache`] per connection it polls, inside that
//! port's [`crate::port::RingCache`]: the guest memory snapshot with its translation
//! table, and each queue's mapped ring areas. The port's one setup generation tells
//! the `RingCache` when to map them again (a new connection, memory table or ring
//! reset), so a burst starts with one compare instead of translating everything.
//!
//! [`QueueCache::open`] takes the vring's lock for the burst, checks the cache and
//! reads `avail.idx` once (acquire). The caller pops heads, walks their chains and
//! records used entries in the ring's used area; nothing is visible to the driver
//! until the burst ends. Dropping the [`VirtQueue`] publishes all used entries with
//! one release store of `used.idx`, then sends at most one interrupt, honouring
//! EVENT_IDX. The control plane (GET_VRING_BASE, ring enable, memory-table updates)
//! takes the same lock, so it always sees a ring between bursts: the base it reads
//! is exact and no descriptor is lost or used twice. A replaced memory table is used
//! from the next burst on; the cache holds the old snapshot (so it stays mapped)
//! until then.

use std::sync::atomic::{fence, Ordering};
use std::sync::RwLockWriteGuard;

use std::sync::Arc;
use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;

use vm_memory::{GuestAddressSpace, GuestMemoryMmap};

use crate::chain::{self, ChainError};
use crate::dirty_log::{self, LogRegion, Unlogged};
use crate::guest_mem::MemMap;
use crate::port::{close_reason, Notifier};
use crate::seglist::SegList;
use crate::split_ring::{RingError, SplitRing};
use crate::stall_guard;
use crate::{GuestMemoryAtomicMmap, Vring};
use std::os::fd::AsRawFd;

/// Why a queue could not be used for a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The ring areas are invalid.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// `avail.idx` ran ahead of the device by more than the queue size.
    #[error("avail.idx {avail} is more than the queue size ahead of {next}")]
    AvailIndex {
        /// `avail.idx` read from the ring.
        avail: u16,
        /// The device's next available position.
        next: u16,
    },
    /// The queue failed before (one of the errors above) and the driver has not
    /// reset or moved it since: it stays stopped, like a virtio device that has set
    /// DEVICE_NEEDS_RESET, instead of being retried (and counted) every burst.
    #[error("stopped after an earlier error, until the driver resets the queue")]
    Stopped,
}

/// Queues a [`QueueCache`] keeps mapped rings for: every queue of a port with the
/// most queue pairs.
const CACHED_QUEUES: usize = 2 * crate::port::MAX_QUEUE_PAIRS;

/// What a queue's ring areas are mapped from, in the current snapshot: (size, desc,
/// avail, used).
type RingKey = (u16, u64, u64, u64);

/// A queue's ring areas as last mapped, and what they were mapped from.
#[derive(Clone, Copy, Default)]
struct RingSlot {
    /// (size, desc, avail, used); meaningful only while `ring` is set.
    key: RingKey,
    ring: Option<SplitRing>,
    /// Set when the queue failed: the key and next available index it failed at.
    /// Any change of either (new memory table, ring moved or resized, new base,
    /// GET_VRING_BASE) lets the queue be tried again.
    stopped: Option<(RingKey, u16)>,
}

/// What a polling thread keeps mapped between bursts for one connection's queues:
/// the guest memory snapshot with its translation table, and each queue's ring
/// areas. It checks no generation of its own: its owner (the port's
/// [`crate::port::RingCache`]) calls [`QueueCache::map`] whenever the port's setup
/// generation moves, and nothing else ever invalidates it.
pub struct QueueCache {
    /// The snapshot `map` and the slots point into; holding it keeps it mapped.
    mem: Option<Arc<GuestMemoryMmap>>,
    map: MemMap,
    slots: [RingSlot; CACHED_QUEUES],
}

// SAFETY: the raw pointers in `map` and `slots` point into the mappings of `mem`,
// which this struct owns (an `Arc` to the snapshot): they stay valid wherever the
// struct moves, and nothing in it is tied to the thread that built it. Access to
// the guest bytes behind them goes through `VirtQueue`, which borrows the cache
// (and holds the vring lock) for the burst.
#[allow(unsafe_code)]
unsafe impl Send for QueueCache {}

impl Default for QueueCache {
    fn default() -> Self {
        QueueCache {
            mem: None,
            map: MemMap::empty(),
            slots: [RingSlot::default(); CACHED_QUEUES],
        }
    }
}

impl QueueCache {
    /// Takes `mem`'s current snapshot and its translation table; rings mapped
    /// through the old one, and queues stopped under it, are mapped (and tried)
    /// afresh at their next [`QueueCache::open`].
    pub fn map(&mut self, mem: &GuestMemoryAtomicMmap) {
        let snapshot = mem.memory();
        // SAFETY: `snapshot` goes into `self.mem` on the next line and stays there
        // until the map is replaced or the cache is dropped or cleared; the rings
        // mapped through it live in `self.slots` and the bursts that borrow this
        // cache, so nothing derived from `self.map` is used once it is gone.
        #[allow(unsafe_code)]
        let map = unsafe { MemMap::new(&snapshot) };
        self.map = map;
        self.mem = Some(snapshot.into_inner());
        self.slots = [RingSlot::default(); CACHED_QUEUES];
    }

    /// Locks queue `index` (whose vring is `vring`, in the memory last given to
    /// [`QueueCache::map`]) for a burst. `Ok(None)` when nothing is mapped, or the
    /// ring is not started or not enabled (the driver is not ready, or the ring is
    /// being stopped). Notifications that cannot be delivered are reported to
    /// `notifier`.
    #[inline]
    pub fn open<'a>(
        &'a mut self,
        vring: &'a Vring,
        index: usize,
        notifier: Notifier<'a>,
    ) -> Result<Option<VirtQueue<'a>>, QueueError> {
        if self.mem.is_none() {
            return Ok(None);
        }
        let state = vring.get_mut();
        if !state.get_queue().ready() || !state.is_enabled() {
            return Ok(None);
        }
        let q = state.get_queue();
        let key = (q.size(), q.desc_table(), q.avail_ring(), q.used_ring());
        let next_avail = q.next_avail();
        let Some(slot) = self.slots.get_mut(index) else {
            // Not a cached queue: map it for this burst only.
            // SAFETY: the ring lives only in the VirtQueue returned, which borrows
            // this cache, and so `self.mem`, the snapshot `self.map` points into.
            #[allow(unsafe_code)]
            let ring = unsafe { SplitRing::new(&self.map, key.0, key.1, key.2, key.3) }?;
            return VirtQueue::start(state, &self.map, ring, notifier);
        };
        if slot.stopped == Some((key, next_avail)) {
            return Err(QueueError::Stopped);
        }
        slot.stopped = None;
        let ring = match slot.ring {
            Some(ring) if slot.key == key => ring,
            // SAFETY: the ring is kept in `self.slots` beside `self.mem`, the snapshot
            // `self.map` points into, and every slot is cleared whenever `self.mem`
            // is replaced.
            #[allow(unsafe_code)]
            _ => match unsafe { SplitRing::new(&self.map, key.0, key.1, key.2, key.3) } {
                Ok(ring) => {
                    *slot = RingSlot {
                        key,
                        ring: Some(ring),
                        stopped: None,
                    };
                    ring
                }
                Err(e) => {
                    slot.stopped = Some((key, next_avail));
                    return Err(e.into());
                }
            },
        };
        let started = VirtQueue::start(state, &self.map, ring, notifier);
        if started.is_err() {
            slot.stopped = Some((key, next_avail));
        }
        started
    }

    /// Lets go of the snapshot and every mapped ring.
    pub fn clear(&mut self) {
        *self = QueueCache::default();
    }
}

/// A virtqueue locked and mapped for one burst.
pub struct VirtQueue<'a> {
    state: RwLockWriteGuard<'a, VringState<GuestMemoryAtomicMmap>>,
    map: &'a MemMap,
    ring: SplitRing,
    notifier: Notifier<'a>,
    /// The connection's dirty log while it migrates (loaded once, under the lock).
    log: Option<&'a LogRegion>,
    /// Guest-physical address of the used ring (for the log).
    used_gpa: u64,
    event_idx: bool,
    avail_idx: u16,
    next_avail: u16,
    used_start: u16,
    next_used: u16,
}

impl<'a> VirtQueue<'a> {
    fn start(
        state: RwLockWriteGuard<'a, VringState<GuestMemoryAtomicMmap>>,
        map: &'a MemMap,
        ring: SplitRing,
        notifier: Notifier<'a>,
    ) -> Result<Option<Self>, QueueError> {
        let q = state.get_queue();
        let event_idx = q.event_idx_enabled();
        let next_avail = q.next_avail();
        let next_used = q.next_used();
        let used_gpa = q.used_ring();
        // Under the vring lock, which `DirtyLog::quiesce` waits for.
        let log = notifier.log.current();
        let avail_idx = ring.avail_idx();
        if avail_idx.wrapping_sub(next_avail) > ring.size() {
            return Err(QueueError::AvailIndex {
                avail: avail_idx,
                next: next_avail,
            });
        }
        ring.suppress_kicks(event_idx);
        Ok(Some(VirtQueue {
            state,
            map,
            ring,
            notifier,
            log,
            used_gpa,
            event_idx,
            avail_idx,
            next_avail,
            used_start: next_used,
            next_used,
        }))
    }

    /// Chains the driver has made available and this burst has not taken yet.
    #[inline]
    pub fn pending(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.next_avail)
    }

    /// Before its thread sleeps: asks the driver to kick when it makes the next
    /// chain available ([`SplitRing::request_kicks`], marked in the dirty log while
    /// the VM migrates), then reads `avail.idx` again after a full fence. Returns
    /// whether chains are waiting: then the thread must poll, not sleep (the driver
    /// may have added them before it saw the request, and would not kick). A chain
    /// added after that read comes with a kick.
    pub fn request_kicks(&mut self) -> bool {
        self.ring.request_kicks(self.event_idx, self.next_avail);
        if let Some(log) = self.log {
            self.log_used_ring(log);
        }
        fence(Ordering::SeqCst);
        // Only compared: what this burst may pop stays what `start` checked.
        self.ring.avail_idx() != self.next_avail
    }

    /// Starts loading the descriptors of the next `n` available heads, so that the
    /// burst's cache misses overlap instead of coming one frame at a time. The heads
    /// are only hints here; `pop` and the chain walk check everything again.
    #[inline]
    pub fn prefetch(&self, n: u16) {
        for i in 0..n.min(self.pending()) {
            let head = self.ring.avail_entry(self.next_avail.wrapping_add(i));
            self.ring.prefetch_desc(head);
        }
    }

    /// Takes the next available head.
    #[inline]
    pub fn pop(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_idx {
            return None;
        }
        let head = self.ring.avail_entry(self.next_avail);
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(head)
    }

    /// Position of the next head [`VirtQueue::pop`] returns.
    #[inline]
    pub fn avail_position(&self) -> u16 {
        self.next_avail
    }

    /// Gives back every head popped since `position` (from [`VirtQueue::avail_position`])
    /// that has not been used: the driver will see them again in a later burst.
    #[inline]
    pub fn rewind(&mut self, position: u16) {
        self.next_avail = position;
    }

    /// Walks the chain at `head` into `out`; `writable` for RX buffers.
    #[inline]
    pub fn chain(&self, head: u16, writable: bool, out: &mut SegList) -> Result<(), ChainError> {
        chain::walk::<false>(&self.ring, self.map, head, writable, 0, out, &mut []).map(|_| ())
    }

    /// Walks the TX chain at `head` into `out` without its first `skip` bytes (the
    /// virtio-net header), copying the first `header.len()` of those into `header`;
    /// returns the chain's whole length.
    #[inline]
    pub fn chain_with_header(
        &self,
        head: u16,
        skip: u32,
        out: &mut SegList,
        header: &mut [u8],
    ) -> Result<u32, ChainError> {
        chain::walk::<true>(&self.ring, self.map, head, false, skip, out, header)
    }

    /// Records that the chain at `head` is done, `len` bytes written into it.
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        self.ring.write_used(self.next_used, head, len);
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Publishes the burst: one release store of `used.idx`, at most one interrupt.
    fn complete(&mut self) {
        self.state.get_queue_mut().set_next_avail(self.next_avail);
        if self.next_used == self.used_start {
            return;
        }
        if let Some(log) = self.log {
            self.log_buffers(log);
        }
        self.ring.publish_used(self.next_used);
        self.state.get_queue_mut().set_next_used(self.next_used);
        if let Some(log) = self.log {
            self.log_used_ring(log);
        }
        // The driver's used_event / flags must be read after our index store is visible.
        fence(Ordering::SeqCst);
        if self
            .ring
            .needs_interrupt(self.event_idx, self.used_start, self.next_used)
        {
            self.notify();
        }
        self.used_start = self.next_used;
    }

    /// Marks in the dirty log the buffer bytes of every used entry of this burst: the
    /// frame bytes are written, the entries not yet published (see
    /// [`crate::dirty_log`] for why the order matters). TX entries have length 0
    /// and cost one read each.
    #[cold]
    fn log_buffers(&self, log: &LogRegion) {
        if dirty_log::unlogged() == Unlogged::RxData {
            return;
        }
        let mut outside = 0;
        let mut pos = self.used_start;
        while pos != self.next_used {
            let (id, len) = self.ring.read_used(pos);
            chain::for_each_written(&self.ring, self.map, id, len, |gpa, n| {
                outside += log.mark(gpa, n);
            });
            pos = pos.wrapping_add(1);
        }
        self.count_outside(outside);
    }

    /// Marks the used ring (entries, index, flags), after the index store.
    #[cold]
    fn log_used_ring(&self, log: &LogRegion) {
        if dirty_log::unlogged() == Unlogged::UsedRing {
            return;
        }
        let outside = log.mark(self.used_gpa, self.ring.used_area_len());
        self.count_outside(outside);
    }

    fn count_outside(&self, pages: u64) {
        if pages != 0 {
            use std::sync::atomic::Ordering::Relaxed;
            self.notifier.faults.log_outside.fetch_add(pages, Relaxed);
        }
    }

    /// One interrupt to the driver. The call eventfd is the frontend's: whatever it
    /// did to the fd, this never waits (see [`crate::stall_guard`]).
    fn notify(&self) {
        if self.notifier.health.closing() != 0 {
            return;
        }
        // Not the library's `signal_used_queue`: it writes with `write_all`, which
        // retries on EINTR and so would sleep again after the watchdog's interrupt.
        let Some(call) = self.state.get_call() else {
            return;
        };
        if let Err(e) = stall_guard::signal_eventfd(call.as_raw_fd()) {
            self.notify_failed(&e);
        }
    }

    #[cold]
    fn notify_failed(&self, e: &std::io::Error) {
        use std::sync::atomic::Ordering::Relaxed;
        let faults = self.notifier.faults;
        if e.kind() == std::io::ErrorKind::Interrupted {
            // Only a write that slept gets interrupted, and a write to an eventfd
            // sleeps only if the frontend cleared O_NONBLOCK (which vpmd set) and
            // filled the counter: stop serving this connection.
            faults.notify_blocked.fetch_add(1, Relaxed);
            self.notifier
                .health
                .request_close(close_reason::NOTIFY_BLOCKED);
        } else {
            // The counter is full: the driver has an interrupt pending anyway.
            faults.notify_failed.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for VirtQueue<'_> {
    fn drop(&mut self) {
        self.complete();
    }
}
