// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The AF_XDP rings: single-producer / single-consumer queues in memory
//! shared with the kernel. Each socket has four:
//!
//! | ring | we are the | entries | carries |
//! |---|---|---|---|
//! | fill | producer | `u64` chunk address | empty chunks for the kernel to receive into |
//! | RX | consumer | [`XdpDesc`] | received frames |
//! | TX | producer | [`XdpDesc`] | frames to send |
//! | completion | consumer | `u64` frame address | chunks the kernel has finished sending |
//!
//! Each ring has a producer index, a consumer index (free-running `u32`s;
//! slot = index & mask) and a flags word (`XDP_RING_NEED_WAKEUP`). The
//! protocol is the usual one for SPSC rings: the producer writes entries,
//! then publishes its index with a release store; the consumer reads the
//! producer index with an acquire load before reading entries, and
//! publishes its own index with a release store once it is done with them.
//!
//! Both sides keep cached copies of both indices and touch the shared
//! cache line only when the cached view cannot satisfy a request: a burst
//! costs one acquire load (at most) and one release store.
#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// `struct xdp_desc`: one frame on the RX or TX ring.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct XdpDesc {
    /// UMEM offset of the frame's first byte.
    pub addr: u64,
    pub len: u32,
    /// `XDP_PKT_CONTD` (more parts of this frame follow), `XDP_TX_METADATA`.
    pub options: u32,
}

/// An mmap'd ring region, unmapped on drop.
#[derive(Debug)]
struct RingMemory {
    ptr: NonNull<u8>,
    len: usize,
}

impl RingMemory {
    /// Maps the ring at page offset `pgoff` of the AF_XDP socket `fd`.
    fn map_socket(fd: BorrowedFd<'_>, pgoff: i64, len: usize) -> io::Result<Self> {
        // SAFETY: a new shared mapping of the socket's ring; the kernel
        // checks `pgoff` and `len` against the ring it created.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).expect("mmap returned a non-null address"),
            len,
        })
    }
}

impl Drop for RingMemory {
    fn drop(&mut self) {
        // SAFETY: ptr..ptr+len is a mapping this struct owns; the ring views
        // pointing into it are dropped with it.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Pointers into one ring's shared memory.
#[derive(Debug)]
struct RingView<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<T>,
    size: u32,
    mask: u32,
    _memory: RingMemory,
}

impl<T: Copy> RingView<T> {
    /// Maps ring `pgoff` of `fd`, laid out as `offsets` says, with `size`
    /// entries (a power of two, as set with setsockopt).
    fn map(
        fd: BorrowedFd<'_>,
        pgoff: i64,
        offsets: &libc::xdp_ring_offset,
        size: u32,
    ) -> io::Result<Self> {
        assert!(size.is_power_of_two(), "ring sizes are powers of two");
        let len = offsets.desc as usize + size as usize * size_of::<T>();
        let memory = RingMemory::map_socket(fd, pgoff, len)?;
        Self::new(memory, offsets, size)
    }

    fn new(memory: RingMemory, offsets: &libc::xdp_ring_offset, size: u32) -> io::Result<Self> {
        let invalid =
            || io::Error::new(io::ErrorKind::InvalidData, "ring offsets outside the ring");
        let end = offsets.desc as usize + size as usize * size_of::<T>();
        let words = [offsets.producer, offsets.consumer, offsets.flags];
        if end > memory.len
            || words
                .iter()
                .any(|&w| w as usize + 4 > memory.len || !w.is_multiple_of(4))
            || !(offsets.desc as usize).is_multiple_of(align_of::<T>())
        {
            return Err(invalid());
        }
        let at = |offset: u64| {
            // SAFETY: offset is inside the mapping (checked above).
            NonNull::new(unsafe { memory.ptr.as_ptr().add(offset as usize) })
                .expect("inside mapping")
        };
        Ok(Self {
            producer: at(offsets.producer).cast(),
            consumer: at(offsets.consumer).cast(),
            flags: at(offsets.flags).cast(),
            entries: at(offsets.desc).cast(),
            size,
            mask: size - 1,
            _memory: memory,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: an aligned u32 inside the live mapping; the kernel accesses
        // it only atomically (READ_ONCE/WRITE_ONCE, smp_load_acquire...).
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for producer().
        unsafe { self.consumer.as_ref() }
    }

    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for producer().
        unsafe { self.flags.as_ref() }
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: index & mask < size, and the entry array holds size
        // entries inside the mapping.
        unsafe { self.entries.as_ptr().add((index & self.mask) as usize) }
    }
}

/// Role marker of a ring we produce into (fill, TX): see [`ProducerRing`].
#[derive(Debug)]
pub(crate) enum Produce {}
/// Role marker of a ring we consume from (RX, completion): see [`ConsumerRing`].
#[derive(Debug)]
pub(crate) enum Consume {}

/// One mapped ring and our cached view of its two indices; what we may do
/// with it depends on our `Role` on it ([`Produce`] or [`Consume`]).
#[derive(Debug)]
pub(crate) struct Ring<T, Role> {
    view: RingView<T>,
    /// Producer index: ours on a producer ring (published by
    /// [`ProducerRing::submit`]), else the last one read from the kernel.
    cached_prod: u32,
    /// Consumer index: ours on a consumer ring (published by
    /// [`ConsumerRing::release`]), else the last one read from the kernel
    /// (never ahead of the real one).
    cached_cons: u32,
    _role: PhantomData<Role>,
}

/// A ring we produce into (fill, TX).
pub(crate) type ProducerRing<T> = Ring<T, Produce>;
/// A ring we consume from (RX, completion).
pub(crate) type ConsumerRing<T> = Ring<T, Consume>;

impl<T: Copy, Role> Ring<T, Role> {
    pub(crate) fn map(
        fd: BorrowedFd<'_>,
        pgoff: i64,
        offsets: &libc::xdp_ring_offset,
        size: u32,
    ) -> io::Result<Self> {
        Ok(Self::from_view(RingView::map(fd, pgoff, offsets, size)?))
    }

    /// Both indices as they stand (acquire: the side that is not ours may
    /// have published entries already).
    fn from_view(view: RingView<T>) -> Self {
        let cached_prod = view.producer().load(Ordering::Acquire);
        let cached_cons = view.consumer().load(Ordering::Acquire);
        Self {
            view,
            cached_prod,
            cached_cons,
            _role: PhantomData,
        }
    }

    pub(crate) fn size(&self) -> u32 {
        self.view.size
    }
}

impl<T: Copy> ProducerRing<T> {
    /// Free slots by the cached view.
    fn cached_free(&self) -> u32 {
        self.view.size - self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Number of free slots; reads the kernel's consumer index (acquire)
    /// only if the cached view shows fewer than `wanted`.
    pub(crate) fn free(&mut self, wanted: u32) -> u32 {
        let free = self.cached_free();
        if free >= wanted {
            return free;
        }
        self.cached_cons = self.view.consumer().load(Ordering::Acquire);
        self.cached_free()
    }

    /// Writes entry `i` of the batch being produced. Panics unless slot `i`
    /// is known to be free (`i < free(..)`).
    pub(crate) fn write(&mut self, i: u32, value: T) {
        assert!(i < self.cached_free(), "ring slot {i} is not free");
        // SAFETY: the slot is free: the kernel consumed it (acquire load of
        // its consumer index) and will not read it before we publish it.
        unsafe {
            self.view
                .slot(self.cached_prod.wrapping_add(i))
                .write(value);
        }
    }

    /// Publishes the first `n` written entries with one release store.
    pub(crate) fn submit(&mut self, n: u32) {
        assert!(n <= self.cached_free(), "submitting more than was free");
        self.cached_prod = self.cached_prod.wrapping_add(n);
        self.view
            .producer()
            .store(self.cached_prod, Ordering::Release);
    }

    /// Entries published but not yet consumed by the kernel (reads the
    /// kernel's consumer index).
    pub(crate) fn unconsumed(&mut self) -> u32 {
        self.cached_cons = self.view.consumer().load(Ordering::Acquire);
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// The kernel asks for a system call to notice new entries.
    pub(crate) fn needs_wakeup(&self) -> bool {
        self.view.flags().load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }
}

impl<T: Copy> ConsumerRing<T> {
    fn cached_available(&self) -> u32 {
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Up to `wanted` entries ready to read; reads the kernel's producer
    /// index (acquire) only if the cached view shows fewer than `wanted`.
    pub(crate) fn available(&mut self, wanted: u32) -> u32 {
        if self.cached_available() < wanted {
            self.cached_prod = self.view.producer().load(Ordering::Acquire);
        }
        self.cached_available().min(wanted)
    }

    /// Reads entry `i` of the available batch. Panics unless `i` is below
    /// the count [`Self::available`] returned.
    pub(crate) fn read(&self, i: u32) -> T {
        assert!(
            i < self.cached_available(),
            "ring entry {i} is not available"
        );
        // SAFETY: the kernel published this entry before the producer index
        // we loaded with acquire, and will not rewrite it until we release.
        unsafe { self.view.slot(self.cached_cons.wrapping_add(i)).read() }
    }

    /// Hands the first `n` entries back to the kernel with one release store.
    pub(crate) fn release(&mut self, n: u32) {
        assert!(n <= self.cached_available(), "releasing more than was read");
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.view
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }
}

// SAFETY: the rings point into mappings they own; the memory is shared with
// the kernel only, through the atomic protocol above. Moving a ring to
// another thread moves the only user-space handle on it.
unsafe impl<T: Send, Role> Send for Ring<T, Role> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of `size` u64 entries in anonymous shared memory, viewed once
    /// as producer and once (through a second mapping of the same pages) as
    /// consumer: we play both user space and the kernel.
    fn ring_pair(size: u32) -> (ProducerRing<u64>, ConsumerRing<u64>) {
        let offsets = libc::xdp_ring_offset {
            producer: 0,
            consumer: 64,
            flags: 128,
            desc: 192,
        };
        let len = 192 + size as usize * 8;
        // SAFETY: a new anonymous shared mapping.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        // SAFETY: a second mapping of the same pages at a new address.
        let alias = unsafe { libc::mremap(ptr, 0, len, libc::MREMAP_MAYMOVE) };
        assert_ne!(alias, libc::MAP_FAILED);
        let memory = |p: *mut libc::c_void| RingMemory {
            ptr: NonNull::new(p.cast()).unwrap(),
            len,
        };
        let producer = ProducerRing::from_view(RingView::new(memory(ptr), &offsets, size).unwrap());
        let consumer =
            ConsumerRing::from_view(RingView::new(memory(alias), &offsets, size).unwrap());
        (producer, consumer)
    }

    #[test]
    fn batches_cross_the_ring_and_wrap() {
        let (mut prod, mut cons) = ring_pair(8);
        let mut next = 0u64;
        let mut expect = 0u64;
        for round in 0..20u32 {
            let batch = 1 + round % 5;
            let free = prod.free(batch);
            let n = batch.min(free);
            for i in 0..n {
                prod.write(i, next);
                next += 1;
            }
            prod.submit(n);
            let got = cons.available(8);
            for i in 0..got {
                assert_eq!(cons.read(i), expect);
                expect += 1;
            }
            cons.release(got);
        }
        assert_eq!(next, expect);
        assert!(next > 8, "wrapped around the ring");
        assert_eq!(prod.unconsumed(), 0);
    }

    #[test]
    fn producer_sees_a_full_ring() {
        let (mut prod, mut cons) = ring_pair(4);
        assert_eq!(prod.free(4), 4);
        for i in 0..4 {
            prod.write(i, u64::from(i));
        }
        prod.submit(4);
        assert_eq!(prod.free(1), 0);
        assert_eq!(cons.available(2), 2);
        cons.release(2);
        assert_eq!(prod.free(1), 2, "refreshed from the consumer index");
        assert!(!prod.needs_wakeup());
    }

    #[test]
    #[should_panic(expected = "not free")]
    fn writing_past_the_free_space_panics() {
        let (mut prod, _cons) = ring_pair(2);
        prod.write(2, 0);
    }
}
