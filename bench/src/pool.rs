// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`BufPool`]: fixed-size frame buffers in guest memory, like a DPDK mempool.
//!
//! Buffers are named by index; a free stack (LIFO, so recently used and cache-warm buffers
//! go out first) hands them to RX rings and frame builders, and takes them back from TX
//! completions. Several devices sharing one [`GuestMem`] can share one pool, which is what
//! lets a buffer received on one port be transmitted on another without a copy.
//!
//! Each buffer holds a virtio-net header followed by a frame: what the device writes into
//! an RX buffer is exactly what a TX descriptor must point at. Layout, like an mbuf's:
//! - a buffer starts [`HEADROOM`] bytes into its slot, so the frame after a 12-byte header
//!   starts on a cache line (copies in the backend run aligned);
//! - slots are an odd number of cache lines apart, so the same offset of successive
//!   buffers falls in different cache sets (with a power-of-two stride, the first line
//!   of every buffer would compete for the same one or two sets of L1 and L2).
#![allow(unsafe_code)] // raw stores into the buffers of the frontend's guest memory.

use std::ptr::NonNull;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::guest_mem::{GuestMem, MemError};

/// Slots are aligned (and sized) to cache lines.
pub const BUF_ALIGN: u32 = 64;
/// Bytes in front of each buffer in its slot: a 12-byte virtio-net header then ends on a
/// cache line.
pub const HEADROOM: u32 = BUF_ALIGN - 12;

/// Failures while creating a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Zero buffers or zero-sized buffers were asked for.
    #[error("a pool needs at least one buffer of at least one byte ({count} x {size})")]
    Empty {
        /// Buffers asked for.
        count: u32,
        /// Bytes per buffer asked for.
        size: u32,
    },
    /// Not enough guest memory.
    #[error("allocating {count} buffers of {size} bytes")]
    Alloc {
        /// Buffers asked for.
        count: u32,
        /// Bytes per buffer (rounded).
        size: u32,
        /// Cause.
        #[source]
        source: MemError,
    },
    /// The area has no host mapping (cannot happen for memory we allocated).
    #[error("pool area at {0:#x} is outside guest memory")]
    Unmapped(u64),
}

/// Fixed-size buffers in guest memory.
pub struct BufPool {
    /// Keeps the mapping `base` points into alive.
    _mem: GuestMemoryMmap,
    /// First buffer (slot 0 + headroom).
    base: NonNull<u8>,
    base_gpa: u64,
    buf_size: u32,
    /// Distance between buffers.
    stride: u32,
    count: u32,
    free: Vec<u32>,
}

// SAFETY: `base` points into the guest memory mapping `_mem` keeps alive, not tied to any
// thread; all other fields are Send.
unsafe impl Send for BufPool {}

impl BufPool {
    /// Carves `count` buffers of `size` bytes (rounded up so that a buffer ends on a cache
    /// line) out of `mem`; all start free.
    pub fn new(mem: &mut GuestMem, count: u32, size: u32) -> Result<Self, PoolError> {
        if count == 0 || size == 0 {
            return Err(PoolError::Empty { count, size });
        }
        let mut stride = (HEADROOM + size).next_multiple_of(BUF_ALIGN);
        if (stride / BUF_ALIGN).is_multiple_of(2) {
            stride += BUF_ALIGN;
        }
        let size = stride - HEADROOM;
        let total = u64::from(count) * u64::from(stride);
        let gpa = mem
            .alloc(total, u64::from(BUF_ALIGN))
            .map_err(|source| PoolError::Alloc {
                count,
                size,
                source,
            })?;
        let base = mem.host_ptr(gpa, total).ok_or(PoolError::Unmapped(gpa.0))?;
        // SAFETY: HEADROOM < stride <= total: still inside the area just mapped.
        let base = unsafe { base.add(HEADROOM as usize) };
        Ok(BufPool {
            _mem: mem.memory().clone(),
            base,
            base_gpa: gpa.0 + u64::from(HEADROOM),
            buf_size: size,
            stride,
            count,
            // Popped from the end: buffer 0 goes out first.
            free: (0..count).rev().collect(),
        })
    }

    /// Bytes per buffer.
    pub fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Buffers in the pool.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Buffers currently free.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Takes a free buffer.
    #[inline]
    pub fn get(&mut self) -> Option<u32> {
        self.free.pop()
    }

    /// Returns a buffer taken with [`BufPool::get`].
    #[inline]
    pub fn put(&mut self, buf: u32) {
        debug_assert!(buf < self.count, "buffer {buf} is not from this pool");
        debug_assert!(
            self.free.len() < self.count as usize,
            "buffer {buf} returned twice"
        );
        self.free.push(buf);
    }

    /// Guest physical address of buffer `buf`.
    #[inline]
    pub fn addr(&self, buf: u32) -> u64 {
        self.base_gpa + u64::from(buf) * u64::from(self.stride)
    }

    /// Guest address of the first buffer (for tests).
    pub fn base(&self) -> GuestAddress {
        GuestAddress(self.base_gpa)
    }

    /// The first `len` bytes (at most the buffer size) of buffer `buf`.
    ///
    /// Call only for buffers the device does not own (taken from a used ring, or never
    /// posted): a backend does not touch a buffer after returning it, so the bytes are
    /// stable while we read them. A backend that broke that rule could only make us read
    /// wrong bytes; nothing here trusts the contents for memory safety.
    #[inline]
    pub fn bytes(&self, buf: u32, len: usize) -> &[u8] {
        assert!(buf < self.count, "buffer {buf} is not from this pool");
        let len = len.min(self.buf_size as usize);
        // SAFETY: `buf < count`, so the `len <= buf_size` bytes at `buf * stride` from the
        // first buffer lie in the area allocated in `new`, mapped while `_mem` lives (as
        // long as `self`). The device does not write buffers it has returned (see above).
        unsafe {
            std::slice::from_raw_parts(
                self.base.as_ptr().add(buf as usize * self.stride as usize),
                len,
            )
        }
    }

    /// The whole of buffer `buf`, to build a frame in. Same ownership rule as
    /// [`BufPool::bytes`]; `&mut self` keeps it the only view into the pool.
    #[inline]
    pub fn bytes_mut(&mut self, buf: u32) -> &mut [u8] {
        assert!(buf < self.count, "buffer {buf} is not from this pool");
        // SAFETY: as in `bytes`, for the full `buf_size` bytes; `&mut self` means no other
        // slice of the pool is alive, and the device does not own this buffer.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.as_ptr().add(buf as usize * self.stride as usize),
                self.buf_size as usize,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_distinct_and_recycled() {
        let mut mem = GuestMem::new(0x1000, 1 << 20).unwrap();
        let mut p = BufPool::new(&mut mem, 4, 100).unwrap();
        // 52 + 100 -> 3 cache lines (odd): 192 - 52.
        assert_eq!(p.buf_size(), 140);
        let a = p.get().unwrap();
        let b = p.get().unwrap();
        assert_eq!(
            (p.addr(a) + 12) % 64,
            0,
            "the frame after the header is aligned"
        );
        assert_eq!(p.addr(b) - p.addr(a), 192);
        p.bytes_mut(a)[..3].copy_from_slice(&[1, 2, 3]);
        assert_eq!(p.bytes(a, 3), &[1, 2, 3]);
        assert_eq!(p.bytes(a, 1 << 20).len(), 140);
        // A 2 KiB buffer gets an odd stride of 33 lines.
        let q = BufPool::new(&mut mem, 2, 2048).unwrap();
        assert_eq!(q.addr(1) - q.addr(0), 33 * 64);
        p.put(a);
        assert_eq!(p.get(), Some(a), "LIFO: the warm buffer comes back first");
        assert_eq!(p.available(), 2);
    }

    #[test]
    fn pool_needs_room() {
        let mut mem = GuestMem::new(0, 1 << 20).unwrap();
        assert!(matches!(
            BufPool::new(&mut mem, 0, 64),
            Err(PoolError::Empty { .. })
        ));
        assert!(matches!(
            BufPool::new(&mut mem, 1024, 2048),
            Err(PoolError::Alloc { .. })
        ));
    }
}
