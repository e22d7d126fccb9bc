//! The driver side of one split virtqueue (virtio 1.x, 2.7): rings, free list, notifications.
//!
//! Every descriptor owns a fixed buffer slot (`buf_size` bytes at `bufs + id * buf_size`),
//! so adding a chain never allocates and a used entry names its buffers by id. The
//! descriptor links (free list and chains) are shadowed host-side: what the backend writes
//! to guest memory is never trusted for our own bookkeeping. Used ids are checked against
//! what is in flight and anything else is counted in [`SplitQueue::bad_used`].
//!
//! Ring layout (all little-endian, x86 host): descriptor table (16 B per entry), avail ring
//! `flags, idx, ring[size], used_event`, used ring `flags, idx, ring[size] {id: u32, len: u32},
//! avail_event`. Each area starts on its own page.

use std::io;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use vhost::VringConfigData;
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY,
};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::guest_mem::{GuestMem, MemError};

/// Largest split queue (virtio 1.x).
pub const MAX_QUEUE_SIZE: u16 = 32768;
/// Default number of descriptors per queue.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;

const DESC_LEN: u64 = 16;
const USED_ELEM_LEN: u64 = 8;
const PAGE: u64 = 4096;

/// Failures while laying out a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Queue size is zero, not a power of two or too large.
    #[error("queue size {0} must be a power of two in 1..=32768")]
    BadSize(u16),
    /// Buffer slots must hold at least one byte and fit a descriptor's u32 length.
    #[error("buffer size {0} is invalid")]
    BadBufSize(u32),
    /// Not enough guest memory for the rings and buffers.
    #[error("allocating the queue: {0}")]
    Alloc(#[source] MemError),
    /// A ring address has no host mapping (cannot happen for memory we allocated).
    #[error("ring address {0:#x} is outside guest memory")]
    Unmapped(u64),
    /// Creating the kick or call eventfd failed.
    #[error("creating an eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// Initialising the rings failed.
    #[error("writing the rings: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// One entry taken from the used ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor id of the chain.
    pub head: u16,
    /// Bytes the device wrote into the chain.
    pub len: u32,
    /// Descriptors in the chain (they are free again once this is returned).
    pub descs: u16,
}

/// The `vring_need_event` test (virtio 1.x, 2.7.10): has the index moved past `event`
/// in the step from `old` to `new`?
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// Driver state of one split virtqueue.
pub struct SplitQueue {
    mem: GuestMemoryMmap,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    bufs: GuestAddress,
    buf_size: u32,
    config: VringConfigData,
    /// Host shadow of each descriptor's `next` (free list and chains).
    next: Vec<u16>,
    /// Per head id: descriptors in its chain while in flight, 0 otherwise.
    in_flight: Vec<u16>,
    free_head: u16,
    num_free: u16,
    /// Our copy of avail.idx (entries added, maybe not yet published).
    avail_idx: u16,
    /// avail.idx at the last notification decision.
    notified_idx: u16,
    last_used: u16,
    /// used.idx as last loaded, so a burst loads it once.
    used_idx_seen: u16,
    event_idx: bool,
    kick: EventFd,
    call: EventFd,
    kicks: u64,
    bad_used: u64,
}

impl SplitQueue {
    /// Lays out a queue of `size` descriptors, each with a `buf_size`-byte buffer, in `mem`.
    /// Device notifications start suppressed (we poll); see [`SplitQueue::wait_used`].
    pub fn new(mem: &mut GuestMem, size: u16, buf_size: u32) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(QueueError::BadSize(size));
        }
        if buf_size == 0 {
            return Err(QueueError::BadBufSize(buf_size));
        }
        let n = u64::from(size);
        let desc = mem.alloc(DESC_LEN * n, PAGE).map_err(QueueError::Alloc)?;
        let avail = mem.alloc(6 + 2 * n, PAGE).map_err(QueueError::Alloc)?;
        let used = mem
            .alloc(6 + USED_ELEM_LEN * n, PAGE)
            .map_err(QueueError::Alloc)?;
        let bufs = mem
            .alloc(u64::from(buf_size) * n, 64)
            .map_err(QueueError::Alloc)?;
        let host = |a: GuestAddress| mem.host_address(a).ok_or(QueueError::Unmapped(a.0));
        let config = VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: host(desc)?,
            used_ring_addr: host(used)?,
            avail_ring_addr: host(avail)?,
            log_addr: None,
        };
        let eventfd = || EventFd::new(EFD_NONBLOCK).map_err(QueueError::EventFd);
        let q = SplitQueue {
            mem: mem.memory().clone(),
            size,
            desc,
            avail,
            used,
            bufs,
            buf_size,
            config,
            next: (1..=size).collect(),
            in_flight: vec![0; size as usize],
            free_head: 0,
            num_free: size,
            avail_idx: 0,
            notified_idx: 0,
            last_used: 0,
            used_idx_seen: 0,
            event_idx: false,
            kick: eventfd()?,
            call: eventfd()?,
            kicks: 0,
            bad_used: 0,
        };
        q.suppress_interrupts().map_err(QueueError::Write)?;
        Ok(q)
    }

    /// Switches to VIRTIO_RING_F_EVENT_IDX semantics (call before the queue starts).
    pub fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
        // Either way the rings' suppression fields must say "don't interrupt".
        let _ = self.suppress_interrupts();
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
        self.num_free
    }

    /// Bytes in every descriptor's buffer slot.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Guest address of descriptor `id`'s buffer slot.
    pub fn buf_addr(&self, id: u16) -> GuestAddress {
        self.bufs
            .unchecked_add(u64::from(id) * u64::from(self.buf_size))
    }

    /// Guest addresses of the descriptor table, avail ring and used ring.
    pub fn ring_addrs(&self) -> (GuestAddress, GuestAddress, GuestAddress) {
        (self.desc, self.avail, self.used)
    }

    /// The guest memory the rings live in.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Kicks written to the kick eventfd so far.
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Used entries that named no in-flight chain (a backend bug).
    pub fn bad_used(&self) -> u64 {
        self.bad_used
    }

    /// Takes `n` free descriptors, lets `fill(i, memory, buffer)` write the i-th one's buffer and
    /// return its length, chains them and appends the chain to the avail ring. The entry is
    /// invisible to the device until [`SplitQueue::publish`]. `None` if fewer than `n` are free.
    pub fn push_chain(
        &mut self,
        n: u16,
        device_writes: bool,
        mut fill: impl FnMut(u16, &GuestMemoryMmap, GuestAddress) -> u32,
    ) -> Option<u16> {
        if n == 0 || n > self.num_free {
            return None;
        }
        let head = self.free_head;
        let mut id = head;
        let write_flag = if device_writes {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        for i in 0..n {
            let len = fill(i, &self.mem, self.buf_addr(id)).min(self.buf_size);
            let last = i + 1 == n;
            let next = self.next[id as usize];
            let flags = write_flag | if last { 0 } else { VRING_DESC_F_NEXT as u16 };
            self.write_desc(
                id,
                self.buf_addr(id).0,
                len,
                flags,
                if last { 0 } else { next },
            );
            if !last {
                id = next;
            }
        }
        self.free_head = self.next[id as usize];
        self.num_free -= n;
        self.in_flight[head as usize] = n;
        let slot = self.avail_ring_slot(self.avail_idx);
        self.mem
            .write_obj(head.to_le(), slot)
            .expect("avail ring lies in guest memory");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Some(head)
    }

    /// Makes added chains visible (one release store of avail.idx) and kicks the device if it
    /// asked to be (EVENT_IDX `avail_event`, else the NO_NOTIFY flag). Returns whether it kicked.
    pub fn publish(&mut self) -> bool {
        if self.avail_idx == self.notified_idx {
            return false;
        }
        self.mem
            .store(
                self.avail_idx.to_le(),
                self.avail.unchecked_add(2),
                Ordering::Release,
            )
            .expect("avail ring lies in guest memory");
        // The index store must be visible before we read the device's suppression field,
        // or both sides can decide the other one will act (2.7.10).
        fence(Ordering::SeqCst);
        let old = self.notified_idx;
        let new = self.avail_idx;
        self.notified_idx = new;
        let kick = if self.event_idx {
            let avail_event: u16 = self.load_u16(self.avail_event_field());
            need_event(avail_event, new, old)
        } else {
            self.load_u16(self.used) & VRING_USED_F_NO_NOTIFY as u16 == 0
        };
        if kick {
            // Writing 1 to an eventfd only fails on counter overflow, which a reader prevents.
            let _ = self.kick.write(1);
            self.kicks += 1;
        }
        kick
    }

    /// Takes the next used entry, frees its chain's descriptors and returns it. Loads used.idx
    /// (acquire) only when the entries seen so far are consumed.
    pub fn pop_used(&mut self) -> Option<Used> {
        loop {
            if self.last_used == self.used_idx_seen {
                self.used_idx_seen = self.load_used_idx();
                if self.last_used == self.used_idx_seen {
                    return None;
                }
            }
            let elem = self.used_ring_slot(self.last_used);
            let mut raw = [0u8; USED_ELEM_LEN as usize];
            self.mem
                .read_slice(&mut raw, elem)
                .expect("used ring lies in guest memory");
            self.last_used = self.last_used.wrapping_add(1);
            let id = u32::from_le_bytes(raw[0..4].try_into().unwrap());
            let len = u32::from_le_bytes(raw[4..8].try_into().unwrap());
            let descs = match self.in_flight.get(id as usize) {
                Some(&n) if n > 0 => n,
                _ => {
                    self.bad_used += 1;
                    continue;
                }
            };
            let head = id as u16;
            self.free_chain(head, descs);
            return Some(Used { head, len, descs });
        }
    }

    /// Whether the device has published used entries we have not taken.
    pub fn has_used(&mut self) -> bool {
        if self.last_used != self.used_idx_seen {
            return true;
        }
        self.used_idx_seen = self.load_used_idx();
        self.last_used != self.used_idx_seen
    }

    /// The `i`-th descriptor id of the chain starting at `head` (valid until the ids are
    /// reused by the next [`SplitQueue::push_chain`]).
    pub fn chain_desc(&self, head: u16, i: u16) -> u16 {
        let mut id = head;
        for _ in 0..i {
            id = self.next[id as usize];
        }
        id
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
        let deadline = std::time::Instant::now() + timeout;
        let ready = loop {
            let _ = self.request_interrupt();
            // Our request must be visible before we look at used.idx again (2.7.10).
            fence(Ordering::SeqCst);
            if self.has_used() {
                break true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break false;
            }
            // Short sleeps: a device that never signals still gets polled every millisecond.
            let ms = left.as_millis().min(1) as i32;
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&self.call),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is a valid pollfd for the duration of the call; count is 1.
            unsafe { libc::poll(&mut pfd, 1, ms) };
            let _ = self.call.read();
        };
        let _ = self.suppress_interrupts();
        ready
    }

    fn free_chain(&mut self, head: u16, descs: u16) {
        let tail = self.chain_desc(head, descs - 1);
        self.next[tail as usize] = self.free_head;
        self.free_head = head;
        self.num_free += descs;
        self.in_flight[head as usize] = 0;
    }

    fn write_desc(&self, id: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; DESC_LEN as usize];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let at = self.desc.unchecked_add(u64::from(id) * DESC_LEN);
        self.mem
            .write_slice(&d, at)
            .expect("descriptor table lies in guest memory");
    }

    fn load_used_idx(&self) -> u16 {
        // Acquire: the entries below idx must be read after idx itself.
        u16::from_le(
            self.mem
                .load(self.used.unchecked_add(2), Ordering::Acquire)
                .expect("used ring lies in guest memory"),
        )
    }

    fn load_u16(&self, at: GuestAddress) -> u16 {
        u16::from_le(
            self.mem
                .load(at, Ordering::Acquire)
                .expect("ring field lies in guest memory"),
        )
    }

    fn avail_ring_slot(&self, idx: u16) -> GuestAddress {
        self.avail
            .unchecked_add(4 + 2 * u64::from(idx & (self.size - 1)))
    }

    fn used_ring_slot(&self, idx: u16) -> GuestAddress {
        self.used
            .unchecked_add(4 + USED_ELEM_LEN * u64::from(idx & (self.size - 1)))
    }

    /// `used_event`, the last avail ring field: where the driver wants an interrupt.
    fn used_event_field(&self) -> GuestAddress {
        self.avail.unchecked_add(4 + 2 * u64::from(self.size))
    }

    /// `avail_event`, the last used ring field: where the device wants a kick.
    fn avail_event_field(&self) -> GuestAddress {
        self.used
            .unchecked_add(4 + USED_ELEM_LEN * u64::from(self.size))
    }

    /// Asks for an interrupt at the next used entry.
    fn request_interrupt(&self) -> vm_memory::guest_memory::Result<()> {
        if self.event_idx {
            self.mem.store(
                self.last_used.to_le(),
                self.used_event_field(),
                Ordering::Release,
            )
        } else {
            self.mem.store(0u16, self.avail, Ordering::Release)
        }
    }

    /// Asks the device not to interrupt: we poll. With EVENT_IDX the event index is put
    /// half a ring-index space away, so at most one spurious call per 32768 entries.
    fn suppress_interrupts(&self) -> vm_memory::guest_memory::Result<()> {
        if self.event_idx {
            self.mem.store(0u16, self.avail, Ordering::Release)?;
            self.mem.store(
                self.last_used.wrapping_add(0x7fff).to_le(),
                self.used_event_field(),
                Ordering::Release,
            )
        } else {
            self.mem.store(
                (VRING_AVAIL_F_NO_INTERRUPT as u16).to_le(),
                self.avail,
                Ordering::Release,
            )
        }
    }
}

#[cfg(test)]
mod tests;
