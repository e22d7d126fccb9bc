// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Raw access to one split virtqueue's three areas (virtio 1.x, 2.7).
//!
//! The descriptor table, available ring and used ring are translated once per burst
//! ([`SplitRing::new`] checks size, alignment and that each area lies inside guest
//! memory). Afterwards every access is an index into an already checked area:
//! entry indices are reduced modulo the queue size, so a guest cannot steer an
//! access outside them. Indices shared with the guest (`avail.idx`, `used.idx`,
//! `used_event`, `avail_event`) are accessed atomically with the orderings the
//! spec requires; available-ring entries are relaxed atomic loads, descriptors and
//! used entries are copied as bytes.
//!
//! A [`SplitRing`] holds its areas as [`HostBuf`]s, without a lifetime, because the
//! polling threads cache it across bursts beside the snapshot that keeps it mapped
//! ([`crate::virtqueue::QueueCache`]); [`SplitRing::new`] is therefore `unsafe`,
//! restating for the ring [`MemMap::new`]'s promise that the memory stays mapped
//! while the views are used (see [`crate::guest_mem`] for the reasoning).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU16, Ordering};

use crate::guest_mem::{HostBuf, MemMap};

/// Largest queue size virtio allows for split rings.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// `VRING_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const DESC_F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`.
pub const DESC_F_INDIRECT: u16 = 4;
/// `VRING_USED_F_NO_NOTIFY`.
const USED_F_NO_NOTIFY: u16 = 1;
/// `VRING_AVAIL_F_NO_INTERRUPT`.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Why a ring could not be mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The queue size is zero, above 32768 or not a power of two.
    #[error("invalid queue size {0}")]
    BadSize(u16),
    /// The descriptor table is misaligned or not inside guest memory.
    #[error("descriptor table outside guest memory or misaligned")]
    DescTable,
    /// The available ring is misaligned or not inside guest memory.
    #[error("available ring outside guest memory or misaligned")]
    AvailRing,
    /// The used ring is misaligned or not inside guest memory.
    #[error("used ring outside guest memory or misaligned")]
    UsedRing,
}

/// One descriptor as the device reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// `DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor index when `DESC_F_NEXT` is set.
    pub next: u16,
}

/// Reads descriptor `index` of a table of `count` entries at `table`.
/// Returns `None` when the index is out of range.
#[inline]
pub fn read_desc(table: &HostBuf, count: u32, index: u32) -> Option<Desc> {
    if index >= count {
        return None;
    }
    let raw: [u8; 16] = table.read_array(index.checked_mul(16)?)?;
    Some(Desc {
        addr: u64::from_le_bytes(raw[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(raw[8..12].try_into().unwrap()),
        flags: u16::from_le_bytes(raw[12..14].try_into().unwrap()),
        next: u16::from_le_bytes(raw[14..16].try_into().unwrap()),
    })
}

/// The three checked areas of a split virtqueue.
#[derive(Clone, Copy, Debug)]
pub struct SplitRing {
    desc: HostBuf,
    avail: HostBuf,
    used: HostBuf,
    size: u16,
}

impl SplitRing {
    /// Maps a queue of `size` entries whose areas start at the given guest addresses.
    ///
    /// # Safety
    ///
    /// The ring keeps host pointers into the memory `map` translates into, without
    /// borrowing anything: that memory must stay mapped for as long as the ring (or
    /// a copy, or a buffer taken from it such as [`SplitRing::desc_table`]) is used,
    /// as [`MemMap::new`]'s contract already requires of `map`'s views. Keep the ring
    /// beside whatever keeps the snapshot alive, and drop it first.
    pub unsafe fn new(
        map: &MemMap,
        size: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<SplitRing, RingError> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() {
            return Err(RingError::BadSize(size));
        }
        let n = u32::from(size);
        let desc = map
            .translate_aligned(desc, 16 * n, 16)
            .ok_or(RingError::DescTable)?;
        // flags, idx, ring[n], used_event
        let avail = map
            .translate_aligned(avail, 6 + 2 * n, 2)
            .ok_or(RingError::AvailRing)?;
        // flags, idx, ring[n] of {id, len}, avail_event
        let used = map
            .translate_aligned(used, 6 + 8 * n, 4)
            .ok_or(RingError::UsedRing)?;
        Ok(SplitRing {
            desc,
            avail,
            used,
            size,
        })
    }

    /// Queue size.
    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The descriptor table.
    #[inline]
    pub fn desc_table(&self) -> &HostBuf {
        &self.desc
    }

    #[inline]
    fn atomic_u16(buf: &HostBuf, off: u32) -> &AtomicU16 {
        debug_assert!(off + 2 <= buf.len() && off.is_multiple_of(2));
        // SAFETY: every caller passes an offset of a 2-byte field inside the area
        // (checked against the area's length when the ring was built); the area's
        // base is at least 2-byte aligned (checked in `new`) and the offset is even,
        // so the pointer is aligned for an AtomicU16, and it is mapped while the ring
        // is used (`new`'s contract), which covers the borrow of `buf` returned.
        unsafe { &*buf.as_ptr().add(off as usize).cast::<AtomicU16>() }
    }

    /// `avail.idx`, with acquire ordering so that the entries it covers are visible.
    #[inline]
    pub fn avail_idx(&self) -> u16 {
        u16::from_le(Self::atomic_u16(&self.avail, 2).load(Ordering::Acquire))
    }

    /// `avail.flags`.
    #[inline]
    pub fn avail_flags(&self) -> u16 {
        u16::from_le(Self::atomic_u16(&self.avail, 0).load(Ordering::Relaxed))
    }

    /// Head index stored in available-ring slot `pos` (taken modulo the size).
    #[inline]
    pub fn avail_entry(&self, pos: u16) -> u16 {
        let off = 4 + 2 * u32::from(pos & (self.size - 1));
        u16::from_le(Self::atomic_u16(&self.avail, off).load(Ordering::Relaxed))
    }

    /// Starts loading descriptor `index` into the cache (index taken modulo the size).
    /// A hint only: it reads nothing and cannot fault.
    #[inline]
    pub fn prefetch_desc(&self, index: u16) {
        let off = 16 * usize::from(index & (self.size - 1));
        prefetch(self.desc.as_ptr().wrapping_add(off));
    }

    /// `used_event` (the driver's interrupt threshold with EVENT_IDX).
    #[inline]
    pub fn used_event(&self) -> u16 {
        let off = 4 + 2 * u32::from(self.size);
        u16::from_le(Self::atomic_u16(&self.avail, off).load(Ordering::Relaxed))
    }

    /// Writes used-ring slot `pos` (modulo the size). Not visible to the driver
    /// until [`SplitRing::publish_used`].
    #[inline]
    pub fn write_used(&self, pos: u16, id: u16, len: u32) {
        let off = 4 + 8 * u32::from(pos & (self.size - 1));
        let mut raw = [0u8; 8];
        raw[0..4].copy_from_slice(&u32::from(id).to_le_bytes());
        raw[4..8].copy_from_slice(&len.to_le_bytes());
        let written = self.used.write_array(off, &raw);
        debug_assert!(written, "the used area's length was checked in `new`");
    }

    /// Reads back used-ring slot `pos` (modulo the size): (id, len).
    #[inline]
    pub fn read_used(&self, pos: u16) -> (u16, u32) {
        let off = 4 + 8 * u32::from(pos & (self.size - 1));
        let mut raw = [0u8; 8];
        self.used.read_at(off, &mut raw);
        let id = u32::from_le_bytes(raw[0..4].try_into().unwrap());
        (id as u16, u32::from_le_bytes(raw[4..8].try_into().unwrap()))
    }

    /// Bytes of the used area: flags, idx, the entries and `avail_event`.
    #[inline]
    pub fn used_area_len(&self) -> u64 {
        6 + 8 * u64::from(self.size)
    }

    /// Publishes every used entry up to `idx` with one release store of `used.idx`.
    #[inline]
    pub fn publish_used(&self, idx: u16) {
        Self::atomic_u16(&self.used, 2).store(idx.to_le(), Ordering::Release);
    }

    /// Current `used.idx` as stored in guest memory.
    #[inline]
    pub fn used_idx(&self) -> u16 {
        u16::from_le(Self::atomic_u16(&self.used, 2).load(Ordering::Relaxed))
    }

    /// Asks the driver not to kick while we poll. Without EVENT_IDX that is the
    /// `VRING_USED_F_NO_NOTIFY` flag; with EVENT_IDX the driver kicks only when its
    /// index crosses `avail_event`, which we never advance, so at most one kick per
    /// 65536 buffers arrives. Writes only when the flag is not already set.
    #[inline]
    pub fn suppress_kicks(&self, event_idx: bool) {
        if event_idx {
            return;
        }
        let flags = Self::atomic_u16(&self.used, 0);
        if u16::from_le(flags.load(Ordering::Relaxed)) & USED_F_NO_NOTIFY == 0 {
            flags.store(USED_F_NO_NOTIFY.to_le(), Ordering::Relaxed);
        }
    }

    /// Asks the driver to kick once it makes a chain available past `next_avail`
    /// (a polling thread about to sleep): with EVENT_IDX, `avail_event` =
    /// `next_avail`; without, the `VRING_USED_F_NO_NOTIFY` flag cleared. The next
    /// burst's [`SplitRing::suppress_kicks`] turns kicks off again (with EVENT_IDX
    /// the driver has crossed `avail_event` by then, and the next crossing is 65536
    /// buffers away). The caller must fence and read `avail.idx` again after this,
    /// or a chain made available just before could wait for a kick that never comes.
    #[inline]
    pub fn request_kicks(&self, event_idx: bool, next_avail: u16) {
        if event_idx {
            let off = 4 + 8 * u32::from(self.size);
            Self::atomic_u16(&self.used, off).store(next_avail.to_le(), Ordering::Relaxed);
        } else {
            Self::atomic_u16(&self.used, 0).store(0, Ordering::Relaxed);
        }
    }

    /// Whether the driver wants an interrupt after the used index moved from `old`
    /// to `new`. Call after a full fence following [`SplitRing::publish_used`].
    #[inline]
    pub fn needs_interrupt(&self, event_idx: bool, old: u16, new: u16) -> bool {
        if event_idx {
            vring_need_event(self.used_event(), new, old)
        } else {
            self.avail_flags() & AVAIL_F_NO_INTERRUPT == 0
        }
    }
}

/// Asks the CPU to start loading the cache line at `p`.
#[inline]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults, whatever the address, and
    // changes no memory; SSE is part of the x86_64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch(p.cast::<i8>(), core::arch::x86_64::_MM_HINT_T0);
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// virtio's `vring_need_event`: true when `event` lies in `[old, new)`.
#[inline]
pub fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_follows_the_spec_across_wrap() {
        assert!(vring_need_event(0, 1, 0));
        assert!(!vring_need_event(1, 1, 0));
        assert!(vring_need_event(5, 10, 3));
        assert!(!vring_need_event(10, 10, 3));
        assert!(!vring_need_event(2, 10, 3));
        // across the 16-bit wrap
        assert!(vring_need_event(65535, 2, 65530));
        assert!(vring_need_event(0, 2, 65530));
        assert!(!vring_need_event(2, 2, 65530));
        assert!(!vring_need_event(65529, 2, 65530));
    }
}
