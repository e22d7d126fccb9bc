//! One burst on one virtqueue, DPDK-style.
//!
//! [`VirtQueue::open`] takes the vring's lock for the burst, loads the memory snapshot
//! once, maps the ring and reads `avail.idx` once (acquire). The caller pops heads,
//! walks their chains and records used entries in the ring's used area; nothing is
//! visible to the driver until the burst ends. Dropping the `VirtQueue` publishes all
//! used entries with one release store of `used.idx`, then sends at most one
//! interrupt, honouring EVENT_IDX. The control plane (GET_VRING_BASE, ring enable,
//! memory-table updates) takes the same lock, so it always sees a ring between
//! bursts: the base it reads is exact and no descriptor is lost or used twice, and a
//! replaced memory table is only used from the next burst on while the old one stays
//! mapped until this burst's snapshot is dropped.

use std::sync::atomic::{fence, Ordering};
use std::sync::RwLockWriteGuard;

use vhost_user_backend::{VringState, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryLoadGuard, GuestMemoryMmap};

use crate::chain::{self, ChainError};
use crate::guest_mem::MemMap;
use crate::seglist::SegList;
use crate::split_ring::{RingError, SplitRing};
use crate::{GuestMemoryAtomicMmap, Vring};

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
}

/// A virtqueue locked and mapped for one burst.
pub struct VirtQueue<'a> {
    state: RwLockWriteGuard<'a, VringState<GuestMemoryAtomicMmap>>,
    // Keeps the memory mapped for as long as `map` and `ring` point into it.
    _mem: GuestMemoryLoadGuard<GuestMemoryMmap>,
    map: MemMap,
    ring: SplitRing,
    event_idx: bool,
    avail_idx: u16,
    next_avail: u16,
    used_start: u16,
    next_used: u16,
}

impl<'a> VirtQueue<'a> {
    /// Locks and maps `vring` for a burst. `Ok(None)` when the ring is not started
    /// or not enabled (the driver is not ready, or the ring is being stopped).
    pub fn open(vring: &'a Vring, mem: &GuestMemoryAtomicMmap) -> Result<Option<Self>, QueueError> {
        let state = vring.get_mut();
        if !state.get_queue().ready() || !state.is_enabled() {
            return Ok(None);
        }
        let snapshot = mem.memory();
        let map = MemMap::new(&snapshot);
        let q = state.get_queue();
        let ring = SplitRing::new(
            &map,
            q.size(),
            q.desc_table(),
            q.avail_ring(),
            q.used_ring(),
        )?;
        let event_idx = q.event_idx_enabled();
        let next_avail = q.next_avail();
        let next_used = q.next_used();
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
            _mem: snapshot,
            map,
            ring,
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
        chain::walk(&self.ring, &self.map, head, writable, out)
    }

    /// Records that the chain at `head` is done, `len` bytes written into it.
    #[inline]
    pub fn push_used(&mut self, head: u16, len: u32) {
        self.ring.write_used(self.next_used, head, len);
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Publishes the burst: one release store of `used.idx`, at most one interrupt.
    fn complete(&mut self) {
        let q = self.state.get_queue_mut();
        q.set_next_avail(self.next_avail);
        if self.next_used == self.used_start {
            return;
        }
        self.ring.publish_used(self.next_used);
        q.set_next_used(self.next_used);
        // The driver's used_event / flags must be read after our index store is visible.
        fence(Ordering::SeqCst);
        if self
            .ring
            .needs_interrupt(self.event_idx, self.used_start, self.next_used)
        {
            // An eventfd write fails only if the counter would overflow; the driver
            // then has an interrupt pending anyway.
            let _ = self.state.signal_used_queue();
        }
        self.used_start = self.next_used;
    }
}

impl Drop for VirtQueue<'_> {
    fn drop(&mut self) {
        self.complete();
    }
}
