//! Guest-physical to host address translation for the data path.
//!
//! A [`MemMap`] is built once per burst from the port's current memory snapshot: a
//! handful of `(guest base, length, host pointer)` triples. Every buffer the guest
//! names is translated here, and a translation succeeds only when the whole range
//! lies inside one region, so nothing outside the guest's memory is ever touched.
//! The pointers stay valid for as long as the snapshot (`GuestMemoryLoadGuard`) the
//! map was built from is alive; [`crate::virtqueue::VirtQueue`] keeps the two together.
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

/// A host view of one contiguous guest buffer.
#[derive(Clone, Copy, Debug)]
pub struct HostBuf {
    ptr: *mut u8,
    len: u32,
}

impl HostBuf {
    /// An empty buffer.
    pub const EMPTY: HostBuf = HostBuf {
        ptr: std::ptr::null_mut(),
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
        // SAFETY: both ranges were checked above to lie inside their buffers, and every
        // HostBuf comes from `MemMap::translate` (or `from_slice`), which only hands out
        // ranges inside a live mapping. The guest may write these bytes concurrently:
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
        // SAFETY: the destination range is inside this buffer (checked above) and the
        // source is a Rust slice of at least `n` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off as usize), n as usize)
        };
        n
    }

    /// Reads up to `out.len()` bytes from `off`. Returns the bytes read.
    #[inline]
    pub fn read_at(&self, off: u32, out: &mut [u8]) -> u32 {
        let n = (out.len() as u32).min(self.len.saturating_sub(off));
        // SAFETY: the source range is inside this buffer (checked above) and the
        // destination is a Rust slice of at least `n` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(off as usize), out.as_mut_ptr(), n as usize)
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
        // SAFETY: the destination range is inside this buffer (checked above) and the
        // source is an array of `N` bytes.
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
        // SAFETY: the source range is inside this buffer (checked above) and the
        // destination is an array of `N` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off as usize), out.as_mut_ptr(), N) };
        Some(out)
    }

    /// A read-only view of host bytes, to copy *from* (a frame in an AF_XDP UMEM
    /// chunk going into a guest). Never pass it where bytes are written: it does not
    /// own its memory and must not outlive `s`.
    pub fn from_bytes(s: &[u8]) -> HostBuf {
        HostBuf {
            ptr: s.as_ptr().cast_mut(),
            len: s.len() as u32,
        }
    }

    /// A view of a host slice, for unit tests and locally built headers.
    pub fn from_slice(s: &mut [u8]) -> HostBuf {
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
    pub fn new(mem: &GuestMemoryMmap) -> MemMap {
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
        let map = MemMap::new(&mem);
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
        let b = HostBuf::from_slice(&mut a);
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
        let src = HostBuf::from_slice(&mut a);
        let dst = HostBuf::from_slice(&mut b);
        assert_eq!(dst.copy_from(2, &src, 0, 100), 2);
        assert_eq!(b, [0, 0, 1, 1]);
    }
}
