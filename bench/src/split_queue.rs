// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver side of one split virtqueue (virtio 1.x, 2.7): rings, free list, notifications.
//!
//! Every chain is one descriptor naming one buffer of a [`crate::pool::BufPool`]; the
//! caller's `cookie` (the buffer's index) comes back with its used entry, so a used entry
//! names its buffer without any lookup in guest memory. Descriptor ids are handed out from
//! a host-side free stack: what the backend writes is never trusted for our bookkeeping,
//! and used ids are checked against what is in flight ([`SplitQueue::bad_used`]).
//!
//! The rings are reached through raw pointers into our own mapping, translated once at
//! setup: a burst reads `used.idx` once (acquire), reads each used element with one 8-byte
//! load, writes each descriptor with one 16-byte store, and publishes `avail.idx` once
//! (one store; kicks only when the device asked, honouring EVENT_IDX).
//!
//! Ring layout (little-endian, x86 host): descriptor table (16 B per entry), avail ring
//! `flags, idx, ring[size], used_event`, used ring `flags, idx, ring[size] {id: u32, len:
//! u32}, avail_event`. Each area starts on its own page.
#![allow(unsafe_code)] // the driver side of a split ring in shared guest memory.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use vhost::VringConfigData;
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest_mem::{GuestMem, MemError};

/// Largest split queue (virtio 1.x).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Default number of descriptors per queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

const DESC_LEN: u64 = 16;
const USED_ELEM_LEN: u64 = 8;
const PAGE: u64 = 4096;
/// Cookie of a descriptor that is not in flight.
const FREE: u32 = u32::MAX;

/// Failures while laying out a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Queue size is zero, not a power of two or too large.
    #[error("queue size {0} must be a power of two in 1..=32768")]
    BadSize(u16),
    /// Not enough guest memory for the rings.
    #[error("allocating the rings")]
    Alloc(#[source] MemError),
    /// A ring address has no host mapping (cannot happen for memory we allocated).
    #[error("ring address {0:#x} is outside guest memory")]
    Unmapped(u64),
    /// Creating the kick or call eventfd failed.
    #[error("creating an eventfd")]
    EventFd(#[source] io::Error),
}

/// One entry taken from the used ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    /// The cookie given to [`SplitQueue::push`] (a buffer index).
    pub cookie: u32,
    /// Bytes the device wrote into the buffer.
    pub len: u32,
}

/// The `vring_need_event` test (virtio 1.x, 2.7.10): has the index moved past `event`
/// in the step from `old` to `new`?
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A descriptor as laid out in the table.
#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Driver state of one split virtqueue.
pub struct SplitQueue {
    /// Keeps the mapping the pointers below point into alive.
    mem: GuestMemoryMmap,
    size: u16,
    desc: NonNull<Desc>,
    /// `flags, idx, ring[size], used_event`, as u16s.
    avail: NonNull<u16>,
    /// Start of the used ring: `flags, idx` (u16), then elements, then `avail_event`.
    used: NonNull<u8>,
    addrs: (GuestAddress, GuestAddress, GuestAddress),
    config: VringConfigData,
    /// Free descriptor ids (a stack: recently used, cache-warm entries first).
    free: Vec<u16>,
    /// Per descriptor id: the cookie while in flight, [`FREE`] otherwise.
    cookies: Vec<u32>,
    /// Our copy of avail.idx (entries added, maybe not yet published).
    avail_idx: u16,
    /// avail.idx as last published.
    published_idx: u16,
    last_used: u16,
    /// used.idx as last loaded, so a burst loads it once.
    used_idx_seen: u16,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
    kicks: u64,
    bad_used: u64,
}

// SAFETY: the raw pointers point into the guest memory mapping that `mem` keeps alive,
// which is not tied to any thread; all other fields are Send.
unsafe impl Send for SplitQueue {}

impl SplitQueue {
    /// Lays out a queue of `size` descriptors in `mem`. Device notifications start
    /// suppressed (we poll); see [`SplitQueue::wait_used`].
    pub fn new(mem: &mut GuestMem, size: u16) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(QueueError::BadSize(size));
        }
        let n = u64::from(size);
        let desc_len = DESC_LEN * n;
        let avail_len = 6 + 2 * n;
        let used_len = 6 + USED_ELEM_LEN * n;
        let desc = mem.alloc(desc_len, PAGE).map_err(QueueError::Alloc)?;
        let avail = mem.alloc(avail_len, PAGE).map_err(QueueError::Alloc)?;
        let used = mem.alloc(used_len, PAGE).map_err(QueueError::Alloc)?;
        let ptr = |a: GuestAddress, len| mem.host_ptr(a, len).ok_or(QueueError::Unmapped(a.0));
        let (desc_p, avail_p, used_p) = (
            ptr(desc, desc_len)?,
            ptr(avail, avail_len)?,
            ptr(used, used_len)?,
        );
        let config = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: desc_p.as_ptr() as u64,
            used_ring_addr: used_p.as_ptr() as u64,
            avail_ring_addr: avail_p.as_ptr() as u64,
            log_addr: None,
        };
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(QueueError::EventFd);
        let q = SplitQueue {
            mem: mem.memory().clone(),
            size,
            desc: desc_p.cast(),
            avail: avail_p.cast(),
            used: used_p,
            addrs: (desc, avail, used),
            config,
            // Popped from the end: id 0 goes out first.
            free: (0..size).rev().collect(),
            cookies: vec![FREE; usize::from(size)],
            avail_idx: 0,
            published_idx: 0,
            last_used: 0,
            used_idx_seen: 0,
            event_idx: false,
            kick: eventfd()?,
            call: eventfd()?,
            kicks: 0,
            bad_used: 0,
        };
        q.suppress_interrupts();
        Ok(q)
    }

    /// Switches to VIRTIO_RING_F_EVENT_IDX semantics (call before the queue starts).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
        // Either way the rings' suppression fields must say "don't interrupt".
        self.suppress_interrupts();
    }

    /// Addresses for SET_VRING_ADDR (frontend virtual addresses).
    pub fn config_data(&self) -> VringConfigData {
        self.config
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The eventfd the backend waits on (SET_VRING_KICK).
    pub fn kick_fd(&self) -> &EventFd {
        &self.kick
    }

    /// The eventfd the backend signals (SET_VRING_CALL).
    pub fn call_fd(&self) -> &EventFd {
        &self.call
    }

    /// Descriptors not in flight.
    pub fn num_free(&self) -> u16 {
        self.free.len() as u16
    }

    /// Descriptors handed to the device and not yet taken back.
    pub fn in_flight(&self) -> u16 {
        self.size - self.num_free()
    }

    /// Guest addresses of the descriptor table, avail ring and used ring.
    pub fn ring_addrs(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        self.addrs
    }

    /// The guest memory the rings live in.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Kicks written to the kick eventfd so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Used entries that named no in-flight descriptor (a backend bug).
    pub fn bad_used(&self) -> u64 {
        self.bad_used
    }

    /// Appends a one-descriptor chain for the `len` bytes at guest address `addr` to the
    /// avail ring; `cookie` comes back with its used entry. Invisible to the device until
    /// [`SplitQueue::publish`]. False when no descriptor is free.
    #[inline]
    pub fn push(&mut self, addr: u64, len: u32, device_writes: bool, cookie: u32) -> bool {
        let Some(id) = self.free.pop() else {
            return false;
        };
        let flags = if device_writes {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        self.cookies[usize::from(id)] = cookie;
        let d = Desc {
            addr: addr.to_le(),
            len: len.to_le(),
            flags: flags.to_le(),
            next: 0,
        };
        let slot = usize::from(self.avail_idx & (self.size - 1));
        // SAFETY: `id < size`, so the entry lies in the descriptor table we laid out; the
        // device reads it only after the release store of avail.idx in `publish`.
        unsafe { self.desc.as_ptr().add(usize::from(id)).write_volatile(d) };
        // SAFETY: `2 + slot < 2 + size`: an entry of the avail ring (after flags and idx).
        unsafe { self.avail.as_ptr().add(2 + slot).write_volatile(id.to_le()) };
        self.avail_idx = self.avail_idx.wrapping_add(1);
        true
    }

    /// Makes added chains visible (one store of avail.idx) and kicks the device if it
    /// asked to be (EVENT_IDX `avail_event`, else the NO_NOTIFY flag). Returns whether it
    /// kicked.
    pub fn publish(&mut self) -> bool {
        if self.avail_idx == self.published_idx {
            return false;
        }
        // SeqCst: the index store is a release for the entries, and must be visible before
        // we read the device's suppression field below, or both sides can decide the other
        // one will act (2.7.10). On x86 this is one `xchg`, cheaper than a separate fence.
        self.avail_field(1)
            .store(self.avail_idx.to_le(), Ordering::SeqCst);
        let old = self.published_idx;
        let new = self.avail_idx;
        self.published_idx = new;
        let kick = if self.event_idx {
            let avail_event = u16::from_le(self.avail_event().load(Ordering::SeqCst));
            need_event(avail_event, new, old)
        } else {
            let flags = u16::from_le(self.used_field(0).load(Ordering::SeqCst));
            flags & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if kick {
            // Writing 1 to an eventfd only fails on counter overflow, which a reader prevents.
            let _ = self.kick.write(1);
            self.kicks += 1;
        }
        kick
    }

    /// Takes up to `out.len()` used entries (loading used.idx at most once) and frees
    /// their descriptors; returns how many were stored in `out`.
    #[inline]
    pub fn pop_used_burst(&mut self, out: &mut [Used]) -> usize {
        let mut ready = self.used_idx_seen.wrapping_sub(self.last_used);
        if ready == 0 {
            self.used_idx_seen = self.load_used_idx();
            ready = self.used_idx_seen.wrapping_sub(self.last_used);
            if ready > self.size {
                // The device claims more entries than the ring holds: take what a ring holds,
                // the ids are checked one by one anyway.
                self.bad_used += 1;
                self.used_idx_seen = self.last_used.wrapping_add(self.size);
                ready = self.size;
            }
        }
        let mut n = 0;
        // Bad entries are skipped without taking a place in `out`.
        while n < out.len() && ready > 0 {
            ready -= 1;
            let slot = usize::from(self.last_used & (self.size - 1));
            self.last_used = self.last_used.wrapping_add(1);
            // SAFETY: `slot < size`: an element `{id: u32, len: u32}` of the used ring we
            // laid out (after the 4 bytes of flags and idx), 4-byte aligned. Read after the
            // acquire load of used.idx that covers it.
            let (id, len) = unsafe {
                let elem = self
                    .used
                    .as_ptr()
                    .add(4 + slot * USED_ELEM_LEN as usize)
                    .cast::<u32>();
                (
                    u32::from_le(elem.read_volatile()),
                    u32::from_le(elem.add(1).read_volatile()),
                )
            };
            let cookie = match self.cookies.get(id as usize) {
                Some(&c) if c != FREE => c,
                _ => {
                    self.bad_used += 1;
                    continue;
                }
            };
            self.cookies[id as usize] = FREE;
            self.free.push(id as u16);
            out[n] = Used { cookie, len };
            n += 1;
        }
        n
    }

    /// Takes the next used entry, if any.
    pub fn pop_used(&mut self) -> Option<Used> {
        let mut one = [Used::default()];
        (self.pop_used_burst(&mut one) == 1).then_some(one[0])
    }

    /// Whether the device has published used entries we have not taken.
    pub fn has_used(&mut self) -> bool {
        if self.last_used != self.used_idx_seen {
            return true;
        }
        self.used_idx_seen = self.load_used_idx();
        self.last_used != self.used_idx_seen
    }

    /// Blocks up to `timeout` for a used entry, sleeping on the call eventfd instead of
    /// spinning (a third busy thread on a two-core machine starves). Re-arms device
    /// interrupts only for the wait. Polls again every millisecond in case the device
    /// does not signal. Returns whether entries are available.
    pub fn wait_used(&mut self, timeout: Duration) -> bool {
        if self.has_used() {
            return true;
        }
        let _ = self.call.read(); // Drop stale signals; EAGAIN when there are none.
        let deadline = Instant::now() + timeout;
        let ready = loop {
            // SeqCst store, then the SeqCst load in has_used: our request is visible before
            // we look at used.idx again (2.7.10).
            self.request_interrupt();
            if self.has_used() {
                break true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            // Short sleeps: a device that never signals still gets polled every millisecond.
            let ms = 1;
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.call),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call; count is 1.
            unsafe { libc::poll(&raw mut pfd, 1, ms) };
            let _ = self.call.read();
        };
        self.suppress_interrupts();
        ready
    }

    fn load_used_idx(&self) -> u16 {
        // SeqCst (an acquire on x86 at no extra cost): the entries below idx are read after
        // idx itself, and in `wait_used` after our interrupt request.
        u16::from_le(self.used_field(1).load(Ordering::SeqCst))
    }

    /// Field `i` (0: flags, 1: idx, 2 + size: used_event) of the avail ring.
    fn avail_field(&self, i: usize) -> &AtomicU16 {
        debug_assert!(i < 3 + usize::from(self.size));
        // SAFETY: `i` indexes a u16 of the avail ring we laid out (2-byte aligned, inside
        // the mapping `self.mem` keeps alive); the device accesses it concurrently, hence
        // atomic.
        unsafe { AtomicU16::from_ptr(self.avail.as_ptr().add(i)) }
    }

    /// Field `i` (0: flags, 1: idx) of the used ring.
    fn used_field(&self, i: usize) -> &AtomicU16 {
        debug_assert!(i < 2);
        // SAFETY: flags and idx are the first two u16s of the used ring we laid out
        // (page-aligned, inside the mapping); the device writes them concurrently.
        unsafe { AtomicU16::from_ptr(self.used.as_ptr().cast::<u16>().add(i)) }
    }

    /// `avail_event`, the last used ring field: where the device wants a kick.
    fn avail_event(&self) -> &AtomicU16 {
        let off = 4 + USED_ELEM_LEN as usize * usize::from(self.size);
        // SAFETY: the u16 right after the used elements, inside the `6 + 8 * size` bytes of
        // the used ring we laid out; 2-byte aligned. The device writes it concurrently.
        unsafe { AtomicU16::from_ptr(self.used.as_ptr().add(off).cast::<u16>()) }
    }

    /// `used_event`, the last avail ring field: where the driver wants an interrupt.
    fn used_event(&self) -> &AtomicU16 {
        self.avail_field(2 + usize::from(self.size))
    }

    /// Asks for an interrupt at the next used entry.
    fn request_interrupt(&self) {
        if self.event_idx {
            self.used_event()
                .store(self.last_used.to_le(), Ordering::SeqCst);
        } else {
            self.avail_field(0).store(0, Ordering::SeqCst);
        }
    }

    /// Asks the device not to interrupt: we poll. With EVENT_IDX the event index is put
    /// half a ring-index space away, so at most one spurious call per 32768 entries.
    fn suppress_interrupts(&self) {
        if self.event_idx {
            self.avail_field(0).store(0, Ordering::Release);
            self.used_event().store(
                self.last_used.wrapping_add(0x7fff).to_le(),
                Ordering::Release,
            );
        } else {
            self.avail_field(0).store(
                (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le(),
                Ordering::Release,
            );
        }
    }
}

#[cfg(test)]
mod tests;
