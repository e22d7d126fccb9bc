// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Descriptor chain walking (virtio 1.x 2.7.5 and 2.7.5.3), hardened against hostile guests.
//!
//! [`walk`] follows a chain from its head, through at most one indirect table, and
//! translates each buffer into a [`SegList`]. Every rule a guest can break is an
//! error here rather than a truncated chain, so the caller can count it: a head or
//! `next` out of range, a loop (more descriptors than the table holds), a nested
//! indirect table, INDIRECT together with NEXT, a table of bad length or outside
//! memory, a buffer outside memory or straddling regions, the wrong direction, too
//! many buffers, or a total length past 4 GiB.

use crate::guest_mem::{HostBuf, MemMap};
use crate::seglist::{SegList, MAX_SEGS};
use crate::split_ring::{read_desc, SplitRing, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

/// Why a chain was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head index is not below the queue size.
    #[error("head index {0} out of range")]
    HeadOutOfRange(u16),
    /// A `next` index is not below the table size.
    #[error("next index {0} out of range")]
    NextOutOfRange(u16),
    /// The chain has more descriptors than its table: a loop.
    #[error("descriptor chain loops or is longer than its table")]
    Loop,
    /// An indirect table's length is zero or not a multiple of 16.
    #[error("indirect table of bad length {0}")]
    IndirectLength(u32),
    /// An indirect descriptor inside an indirect table.
    #[error("nested indirect table")]
    IndirectNested,
    /// INDIRECT and NEXT both set.
    #[error("indirect descriptor with NEXT set")]
    IndirectWithNext,
    /// An indirect table not inside guest memory.
    #[error("indirect table outside guest memory")]
    IndirectOutsideMemory,
    /// A buffer not inside one region of guest memory.
    #[error("buffer outside guest memory")]
    BufferOutsideMemory,
    /// A device-writable buffer where a readable one is needed, or the reverse.
    #[error("buffer of the wrong direction")]
    WrongDirection,
    /// More descriptors than a frame may have (`MAX_SEGS`, empty ones included),
    /// or more than 4 GiB in all.
    #[error("too many descriptors in one chain")]
    TooManyBuffers,
}

/// Walks the chain at `head`, appending its buffers to `out` (cleared first), minus
/// its first `skip` bytes (a TX chain's virtio-net header: dropped while walking
/// rather than shifted out afterwards). `writable` selects the direction every
/// buffer must have. Skipped bytes are bounds-checked like the rest. Returns the
/// chain's length including the skipped bytes.
///
/// `HEADER`: also copy the first `header.len()` skipped bytes into `header` (a TX
/// chain's offload fields; compiled out of the walks that do not, which pass `&mut []`).
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn walk<const HEADER: bool>(
    ring: &SplitRing,
    map: &MemMap,
    head: u16,
    writable: bool,
    skip: u32,
    out: &mut SegList,
    header: &mut [u8],
) -> Result<u32, ChainError> {
    out.clear();
    let mut skip_left = skip;
    let mut total = 0u32;
    // Descriptors in the chain (empty and skipped ones included): the limit is on
    // the chain, so that walking one costs at most MAX_SEGS descriptor reads.
    let mut buffers = 0usize;
    let size = u32::from(ring.size());
    if u32::from(head) >= size {
        return Err(ChainError::HeadOutOfRange(head));
    }
    let mut table: HostBuf = *ring.desc_table();
    let mut count = size;
    let mut index = u32::from(head);
    let mut budget = size;
    let mut indirect = false;
    loop {
        let d = read_desc(&table, count, index).ok_or(ChainError::NextOutOfRange(index as u16))?;
        if d.flags & DESC_F_INDIRECT != 0 {
            if indirect {
                return Err(ChainError::IndirectNested);
            }
            if d.flags & DESC_F_NEXT != 0 {
                return Err(ChainError::IndirectWithNext);
            }
            if d.len == 0 || !d.len.is_multiple_of(16) || d.len / 16 > 65536 {
                return Err(ChainError::IndirectLength(d.len));
            }
            table = map
                .translate(d.addr, d.len)
                .ok_or(ChainError::IndirectOutsideMemory)?;
            count = d.len / 16;
            budget = count;
            index = 0;
            indirect = true;
            continue;
        }
        if budget == 0 {
            return Err(ChainError::Loop);
        }
        budget -= 1;
        // Every descriptor counts, empty ones too. Counting only non-empty buffers
        // let a chain of zero-length descriptors (32768 in the ring, then 65536 in
        // an indirect table) cost ~100k reads, and a burst of such chains stalled
        // the polling thread, and every other port it serves, for ~13 ms
        // (hostile/tests/tx_chains.rs, long_chains_of_empty_descriptors_...).
        buffers += 1;
        if buffers > MAX_SEGS {
            return Err(ChainError::TooManyBuffers);
        }
        if (d.flags & DESC_F_WRITE != 0) != writable {
            return Err(ChainError::WrongDirection);
        }
        if d.len > 0 {
            let buf = map
                .translate(d.addr, d.len)
                .ok_or(ChainError::BufferOutsideMemory)?;
            total = total.checked_add(d.len).ok_or(ChainError::TooManyBuffers)?;
            let at = (skip - skip_left) as usize;
            if HEADER && skip_left > 0 && at < header.len() {
                let n = (skip_left as usize).min(header.len() - at);
                buf.read_at(0, &mut header[at..at + n]);
            }
            if skip_left >= d.len {
                skip_left -= d.len;
            } else {
                let kept = buf.advance(skip_left);
                skip_left = 0;
                if !out.push(kept) {
                    return Err(ChainError::TooManyBuffers);
                }
            }
        }
        if d.flags & DESC_F_NEXT == 0 {
            return Ok(total);
        }
        index = u32::from(d.next);
    }
}

/// Calls `mark(gpa, len)` for each guest-physical range holding the first `written`
/// bytes of the device-writable chain at `head`: the pages a used entry of that
/// length says the device wrote, for the dirty log. Follows the chain exactly as
/// [`walk`] does (the same table and loop limits) and stops quietly where `walk`
/// would have refused the chain: a chain it refused was never written.
pub fn for_each_written(
    ring: &SplitRing,
    map: &MemMap,
    head: u16,
    written: u32,
    mut mark: impl FnMut(u64, u64),
) {
    let size = u32::from(ring.size());
    if u32::from(head) >= size {
        return;
    }
    let mut left = written;
    let mut table: HostBuf = *ring.desc_table();
    let mut count = size;
    let mut index = u32::from(head);
    let mut budget = size;
    let mut indirect = false;
    let mut buffers = 0usize;
    while left > 0 {
        let Some(d) = read_desc(&table, count, index) else {
            return;
        };
        if d.flags & DESC_F_INDIRECT != 0 {
            if indirect || d.len == 0 || !d.len.is_multiple_of(16) {
                return;
            }
            let Some(t) = map.translate(d.addr, d.len) else {
                return;
            };
            table = t;
            count = d.len / 16;
            budget = count;
            index = 0;
            indirect = true;
            continue;
        }
        if budget == 0 || buffers == MAX_SEGS {
            return;
        }
        budget -= 1;
        buffers += 1;
        let n = d.len.min(left);
        if n > 0 && d.flags & DESC_F_WRITE != 0 {
            mark(d.addr, u64::from(n));
            left -= n;
        }
        if d.flags & DESC_F_NEXT == 0 {
            return;
        }
        index = u32::from(d.next);
    }
}
