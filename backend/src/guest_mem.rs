// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Guest-physical to host address translation for the data path.
//!
//! A [`MemMap`] is built from a memory snapshot: a handful of `(guest base, length,
//! host pointer)` triples. Every buffer the guest names is translated here, and a
//! translation succeeds only when the whole range lies inside one region, so
//! nothing outside the guest's memory is ever touched.
//!
//! # Why the views carry no lifetime, and where the promise is made
//!
//! A [`HostBuf`] is a raw view: a pointer and a length, `Copy`, no lifetime. Its
//! methods are safe because every `HostBuf` stands for bytes that stay mapped for as
//! long as it is used; the bounds are checked on each access, the *lifetime* is not.
//! That promise is made once, by whoever creates the first view into some memory,
//! through one of the `unsafe` constructors: [`MemMap::new`] (guest memory),
//! [`HostBuf::from_slice`] / [`HostBuf::from_bytes`] (host bytes). Everything else
//! ([`MemMap::translate`], [`HostBuf::advance`], [`crate::split_ring::SplitRing::new`]
//! which restates the promise for the ring it caches) derives views from one of those.
//!
//! Tying the views to a lifetime instead (`HostBuf<'a>`, as `uplink`'s UMEM frames
//! are) was the other choice, and it is what the views would be in a fresh design.
//! It is not taken here because the data path keeps views across bursts next to
//! what keeps them alive: [`crate::virtqueue::QueueCache`] caches the `MemMap` and
//! each queue's `SplitRing` beside the `Arc<GuestMemoryMmap>` snapshot they point
//! into (a self-referential struct for the borrow checker), and the polling
//! threads keep their `SegList`s in per-thread scratch space that outlives every
//! burst. A lifetime would have to thread through all of them (and through pmd's
//! scratch and batch types) or be erased again with `unsafe` at the cache. `unsafe`
//! constructors with a precise contract cost nothing on the hot path and keep the
//! change to the few places views are born; the contract is stated at each of them
//! and every caller says why it holds.
//!
//! What the contract asks of the data path, concretely: a snapshot stays mapped
//! while the `QueueCache` holding it exists, and a `SegList` filled during a burst
//! is read or written only during that burst (every walk clears it first).
#![allow(unsafe_code)]

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// vhost-user allows at most this many memory regions (CONFIGURE_MEM_SLOTS advertises it).
pub const MAX_REGIONS: usize = 32;

#[derive(Clone, Copy, Debug, Default)]
struct Region {
    gpa: u64,
    len: u64,
    host: usize,
}

/// A host view of one contiguous guest (or host) buffer.
///
/// Invariant: `ptr` is valid for reads (and, unless made by
/// [`HostBuf::from_bytes`], writes) of `len` bytes for as long as the buffer, or a
/// copy of it, is used. The `unsafe` constructors are where callers promise it;
/// see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct HostBuf {
    ptr: *mut u8,
    len: u32,
}

impl HostBuf {
    /// An empty buffer.
    pub const EMPTY: HostBuf = HostBuf {
        // Not null: a null pointer is invalid even for a zero-length copy, an
        // aligned dangling one is valid for zero bytes.
        ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
        len: 0,
    };

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Whether the buffer has no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part of this buffer from `off` on. `off` must not exceed the length.
    #[inline]
    pub fn advance(self, off: u32) -> HostBuf {
        debug_assert!(off <= self.len);
        let off = off.min(self.len);
        HostBuf {
            // wrapping_add: no dereference happens here; the result stays inside the buffer.
            ptr: self.ptr.wrapping_add(off as usize),
            len: self.len - off,
        }
    }

    /// Host address, for prefetching and tests.
    #[inline]
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Copies `n` bytes from `src[src_off..]` to `self[dst_off..]`.
    ///
    /// Offsets and length are clamped to both buffers, so a bad caller cannot step
    /// outside either buffer; the bytes actually copied are returned.
    #[inline]
    pub fn copy_from(&self, dst_off: u32, src: &HostBuf, src_off: u32, n: u32) -> u32 {
        let n = n
            .min(self.len.saturating_sub(dst_off))
            .min(src.len.saturating_sub(src_off));
        if n == 0 {
            return 0;
        }
        // SAFETY: both ranges were checked above to lie inside their buffers, and by
        // the type's invariant both buffers are mapped while they are used (`self`
        // for writes: a `from_bytes` view must never be a destination, its contract
        // says). The guest may write these bytes concurrently:
        // like every vhost backend we copy them as plain bytes and never interpret
        // them while copying. `copy` tolerates overlap.
        unsafe {
            std::ptr::copy(
                src.ptr.add(src_off as usize),
                self.ptr.add(dst_off as usize),
                n as usize,
            );
        }
        n
    }

    /// Writes `bytes` at `off` (clamped to the buffer). Returns the bytes written.
    #[inline]
    pub fn write_at(&self, off: u32, bytes: &[u8]) -> u32 {
        let n = (bytes.len() as u32).min(self.len.saturating_sub(off));
        if n == 0 {
            // `off` may lie past the end: no pointer arithmetic with it then.
            return 0;
        }
        // SAFETY: the destination range is inside this buffer (checked above), which
        // is mapped writable by the type's invariant, and the source is a Rust slice
        // of at least `n` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off as usize), n as usize);
        };
        n
    }

    /// Reads up to `out.len()` bytes from `off`. Returns the bytes read.
    #[inline]
    pub fn read_at(&self, off: u32, out: &mut [u8]) -> u32 {
        let n = (out.len() as u32).min(self.len.saturating_sub(off));
        if n == 0 {
            // `off` may lie past the end: no pointer arithmetic with it then.
            return 0;
        }
        // SAFETY: the source range is inside this buffer (checked above), which is
        // mapped by the type's invariant, and the destination is a Rust slice of at
        // least `n` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(off as usize), out.as_mut_ptr(), n as usize);
        };
        n
    }

    /// Writes all `N` bytes at `off`, or nothing (`false`) when they do not fit.
    /// The length is a constant, so this is a few stores rather than a `memcpy`
    /// call: for ring entries and headers.
    #[inline]
    pub fn write_array<const N: usize>(&self, off: u32, bytes: &[u8; N]) -> bool {
        if u64::from(off) + N as u64 > u64::from(self.len) {
            return false;
        }
        // SAFETY: the destination range is inside this buffer (checked above), which
        // is mapped writable by the type's invariant; the source is `N` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off as usize), N) };
        true
    }

    /// Reads `N` bytes at `off`; `None` when they are not all inside the buffer.
    #[inline]
    pub fn read_array<const N: usize>(&self, off: u32) -> Option<[u8; N]> {
        if u64::from(off) + N as u64 > u64::from(self.len) {
            return None;
        }
        let mut out = [0u8; N];
        // SAFETY: the source range is inside this buffer (checked above), which is
        // mapped by the type's invariant; the destination is `N` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off as usize), out.as_mut_ptr(), N) };
        Some(out)
    }

    /// A read-only view of host bytes, to copy *from* (a frame in an AF_XDP UMEM
    /// chunk going into a guest).
    ///
    /// # Safety
    ///
    /// The view (every copy of it, and every view [`HostBuf::advance`] makes from
    /// it) must not be used after `s`'s borrow ends: the bytes may be freed or
    /// reused then. And it must never be written through: not as the destination
    /// of [`HostBuf::copy_from`], nor with [`HostBuf::write_at`] or
    /// [`HostBuf::write_array`], nor in a [`crate::seglist::SegList`] that is
    /// written to (an RX chain's list); `s` is shared, so a write is undefined
    /// behaviour even while the borrow lasts.
    #[inline]
    pub unsafe fn from_bytes(s: &[u8]) -> HostBuf {
        HostBuf {
            ptr: s.as_ptr().cast_mut(),
            len: s.len() as u32,
        }
    }

    /// A view of a host slice, for locally built frames and headers, tests and
    /// benchmarks.
    ///
    /// # Safety
    ///
    /// The view (every copy of it, and every view [`HostBuf::advance`] makes from
    /// it) must not be used after `s`'s borrow ends, and `s` must not be accessed
    /// through any other path while the view is used (the view writes through a
    /// pointer the borrow checker does not see).
    #[inline]
    pub unsafe fn from_slice(s: &mut [u8]) -> HostBuf {
        HostBuf {
            ptr: s.as_mut_ptr(),
            len: s.len() as u32,
        }
    }
}

/// Translation table of one memory snapshot.
#[derive(Clone, Debug)]
pub struct MemMap {
    regions: [Region; MAX_REGIONS],
    count: usize,
}

impl MemMap {
    /// A table with no regions: every translation fails.
    pub fn empty() -> MemMap {
        MemMap {
            regions: [Region::default(); MAX_REGIONS],
            count: 0,
        }
    }

    /// Builds the table from a memory snapshot. Regions beyond [`MAX_REGIONS`] are
    /// ignored (the frontend was told the limit), which only makes translation fail.
    ///
    /// # Safety
    ///
    /// The table holds `mem`'s host addresses without borrowing `mem`. Every mapping
    /// of `mem` must stay mapped for as long as the returned table (or a clone), or
    /// any [`HostBuf`] or [`crate::split_ring::SplitRing`] derived from it, is used:
    /// keep the snapshot (e.g. an `Arc<GuestMemoryMmap>`) alive beside the table and
    /// drop the views first. The mappings must be readable and writable (vm-memory
    /// maps vhost-user regions so); the guest writing them concurrently is allowed.
    pub unsafe fn new(mem: &GuestMemoryMmap) -> MemMap {
        let mut map = MemMap {
            regions: [Region::default(); MAX_REGIONS],
            count: 0,
        };
        for r in mem.iter().take(MAX_REGIONS) {
            map.regions[map.count] = Region {
                gpa: r.start_addr().0,
                len: r.len(),
                host: r.as_ptr() as usize,
            };
            map.count += 1;
        }
        map
    }

    /// Translates `[gpa, gpa + len)`; `None` unless the range lies inside one region.
    /// A zero-length range translates to an empty buffer when `gpa` is inside memory.
    #[inline]
    pub fn translate(&self, gpa: u64, len: u32) -> Option<HostBuf> {
        let end = gpa.checked_add(u64::from(len))?;
        for r in &self.regions[..self.count] {
            if gpa >= r.gpa && end <= r.gpa + r.len {
                return Some(HostBuf {
                    ptr: (r.host + (gpa - r.gpa) as usize) as *mut u8,
                    len,
                });
            }
        }
        None
    }

    /// Translates a range that must also be aligned to `align` (a power of two),
    /// as the ring structures are.
    #[inline]
    pub fn translate_aligned(&self, gpa: u64, len: u32, align: u64) -> Option<HostBuf> {
        if gpa & (align - 1) != 0 {
            return None;
        }
        self.translate(gpa, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn translate_rejects_ranges_outside_or_across_regions() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x10000), 0x1000),
        ])
        .unwrap();
        // SAFETY: `mem` outlives `map` and every translation, all inside this test.
        let map = unsafe { MemMap::new(&mem) };
        assert!(map.translate(0, 0x1000).is_some());
        assert!(
            map.translate(0x800, 0x1000).is_none(),
            "straddles two regions"
        );
        assert!(
            map.translate(0x1800, 0x900).is_none(),
            "runs past a region's end"
        );
        assert!(map.translate(0x5000, 1).is_none(), "hole");
        assert!(
            map.translate(u64::MAX - 2, 8).is_none(),
            "address + length overflow"
        );
        assert!(
            map.translate(0x10000, u32::MAX).is_none(),
            "length near 4 GiB"
        );
        assert!(map.translate_aligned(0x10002, 16, 16).is_none());
        assert!(map.translate(0x10fff, 1).is_some());
    }

    #[test]
    fn fixed_size_access_is_all_or_nothing() {
        let mut a = [0u8; 8];
        // SAFETY: `b`'s last use is before `a` is read below.
        let b = unsafe { HostBuf::from_slice(&mut a) };
        assert!(b.write_array(4, &[1, 2, 3, 4]));
        assert!(!b.write_array(5, &[9, 9, 9, 9]), "one byte past the end");
        assert!(!b.write_array(u32::MAX, &[9]));
        assert_eq!(b.read_array::<4>(4), Some([1, 2, 3, 4]));
        assert_eq!(b.read_array::<2>(7), None);
        assert_eq!(a, [0, 0, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn copy_is_clamped_to_both_buffers() {
        let mut a = [1u8; 8];
        let mut b = [0u8; 4];
        // SAFETY: both views' last use is before `b` is read below.
        let (src, dst) = unsafe { (HostBuf::from_slice(&mut a), HostBuf::from_slice(&mut b)) };
        assert_eq!(dst.copy_from(2, &src, 0, 100), 2);
        assert_eq!(b, [0, 0, 1, 1]);
    }

    #[test]
    fn offsets_past_the_end_copy_nothing() {
        let mut a = [7u8; 4];
        // SAFETY: `b`'s last use is before `a` is read below.
        let b = unsafe { HostBuf::from_slice(&mut a) };
        let mut out = [0u8; 2];
        assert_eq!(b.read_at(u32::MAX, &mut out), 0);
        assert_eq!(b.write_at(u32::MAX, &[1, 2]), 0);
        assert_eq!(HostBuf::EMPTY.read_at(0, &mut out), 0);
        assert_eq!(HostBuf::EMPTY.write_at(0, &[1]), 0);
        assert!(HostBuf::EMPTY.write_array::<0>(0, &[]));
        assert_eq!(HostBuf::EMPTY.copy_from(0, &b, 0, 4), 0);
        assert_eq!(a, [7; 4]);
    }
}
