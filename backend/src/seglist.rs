// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A frame's buffers as a fixed-size list of host segments, and the one copy routine.
//!
//! A [`SegList`] holds the translated buffers of one descriptor chain. It lives in
//! per-thread scratch space, so building one allocates nothing. [`copy`] moves bytes
//! from one list to another, segment by segment: this is the single copy a frame
//! makes on its way from one guest to another.

use crate::guest_mem::HostBuf;

/// Most buffers one chain may have. Linux sends at most MAX_SKB_FRAGS + 2 (19).
pub const MAX_SEGS: usize = 64;

/// Buffers of one chain, in order.
#[derive(Clone, Debug)]
pub struct SegList {
    segs: [HostBuf; MAX_SEGS],
    count: usize,
    total: u32,
}

impl Default for SegList {
    fn default() -> Self {
        SegList {
            segs: [HostBuf::EMPTY; MAX_SEGS],
            count: 0,
            total: 0,
        }
    }
}

/// A position inside a [`SegList`]: segment index and offset in that segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    seg: usize,
    off: u32,
}

impl SegList {
    /// Empties the list.
    #[inline]
    pub fn clear(&mut self) {
        self.count = 0;
        self.total = 0;
    }

    /// Appends a buffer; `false` when the list is full or the total would overflow.
    #[inline]
    pub fn push(&mut self, buf: HostBuf) -> bool {
        if self.count == MAX_SEGS {
            return false;
        }
        let Some(total) = self.total.checked_add(buf.len()) else {
            return false;
        };
        self.segs[self.count] = buf;
        self.count += 1;
        self.total = total;
        true
    }

    /// Total bytes.
    #[inline]
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The segments.
    #[inline]
    pub fn segs(&self) -> &[HostBuf] {
        &self.segs[..self.count]
    }

    /// Writes `bytes` at byte offset `off` of the list, across segments.
    /// Returns the bytes written (fewer when the list is too short).
    pub fn write_at(&self, off: u32, bytes: &[u8]) -> u32 {
        let mut skip = off;
        let mut done = 0u32;
        for seg in self.segs() {
            if done as usize == bytes.len() {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            done += seg.write_at(skip, &bytes[done as usize..]);
            skip = 0;
        }
        done
    }

    /// [`SegList::write_at`] for a fixed-size value: a few stores, no `memcpy`
    /// call, when the first segment holds the whole range (the usual case for
    /// headers).
    #[inline]
    pub fn write_array_at<const N: usize>(&self, off: u32, bytes: &[u8; N]) -> u32 {
        match self.segs().first() {
            Some(seg) if seg.write_array(off, bytes) => N as u32,
            _ => self.write_at(off, bytes),
        }
    }

    /// Reads bytes from offset `off` into `out`; returns the bytes read.
    pub fn read_at(&self, off: u32, out: &mut [u8]) -> u32 {
        let mut skip = off;
        let mut done = 0u32;
        for seg in self.segs() {
            if done as usize == out.len() {
                break;
            }
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            done += seg.read_at(skip, &mut out[done as usize..]);
            skip = 0;
        }
        done
    }
}

/// Copies up to `n` bytes from `src` at `src_pos` into `dst` at `dst_pos`,
/// advancing both cursors. Returns the bytes copied (fewer when either list ends).
#[inline]
pub fn copy(
    dst: &SegList,
    dst_pos: &mut Cursor,
    src: &SegList,
    src_pos: &mut Cursor,
    n: u32,
) -> u32 {
    let mut left = n;
    while left > 0 && dst_pos.seg < dst.count && src_pos.seg < src.count {
        let d = &dst.segs[dst_pos.seg];
        let s = &src.segs[src_pos.seg];
        let chunk = left.min(d.len() - dst_pos.off).min(s.len() - src_pos.off);
        d.copy_from(dst_pos.off, s, src_pos.off, chunk);
        left -= chunk;
        dst_pos.off += chunk;
        src_pos.off += chunk;
        if dst_pos.off == d.len() {
            dst_pos.seg += 1;
            dst_pos.off = 0;
        }
        if src_pos.off == s.len() {
            src_pos.seg += 1;
            src_pos.off = 0;
        }
    }
    n - left
}

/// Writes `bytes` into `dst` at `pos`, advancing it; returns the bytes written
/// (fewer when the list ends).
pub fn write(dst: &SegList, pos: &mut Cursor, bytes: &[u8]) -> u32 {
    let mut done = 0usize;
    while done < bytes.len() && pos.seg < dst.count {
        let d = &dst.segs[pos.seg];
        let n = d.write_at(pos.off, &bytes[done..]);
        done += n as usize;
        pos.off += n;
        if pos.off == d.len() {
            pos.seg += 1;
            pos.off = 0;
        }
    }
    done as u32
}

/// Adds the `len` bytes of `src` from `at` on to `sum`, reading them through a
/// small buffer of ours (the guest may change them meanwhile: the sum is then
/// wrong for its own frame only). Returns the bytes summed.
pub fn sum(src: &SegList, at: u32, len: u32, sum: &mut crate::offload::csum::Checksum) -> u32 {
    let mut chunk = [0u8; 512];
    let mut skip = at;
    let mut left = len;
    for seg in src.segs() {
        if left == 0 {
            break;
        }
        if skip >= seg.len() {
            skip -= seg.len();
            continue;
        }
        let mut off = skip;
        skip = 0;
        while off < seg.len() && left > 0 {
            let want = left.min(seg.len() - off).min(chunk.len() as u32) as usize;
            let n = seg.read_at(off, &mut chunk[..want]);
            sum.add(&chunk[..n as usize]);
            off += n;
            left -= n;
        }
    }
    len - left
}

/// Moves a cursor forward by `n` bytes without copying; returns the bytes skipped.
pub fn skip(list: &SegList, pos: &mut Cursor, n: u32) -> u32 {
    let mut left = n;
    while left > 0 && pos.seg < list.count {
        let room = list.segs[pos.seg].len() - pos.off;
        let step = left.min(room);
        left -= step;
        pos.off += step;
        if pos.off == list.segs[pos.seg].len() {
            pos.seg += 1;
            pos.off = 0;
        }
    }
    n - left
}

#[cfg(test)]
#[allow(unsafe_code)] // HostBuf views of test-owned buffers.
mod tests {
    use super::*;

    fn list(bufs: &mut [Vec<u8>]) -> SegList {
        let mut l = SegList::default();
        for b in bufs.iter_mut() {
            // SAFETY: each test uses the list only while `bufs` lives and is not
            // accessed otherwise: it reads them only after the list's last use.
            assert!(l.push(unsafe { HostBuf::from_slice(b) }));
        }
        l
    }

    #[test]
    fn copy_spans_uneven_segments() {
        let mut src_bufs = vec![vec![1u8, 2, 3], vec![4, 5], vec![6, 7, 8, 9]];
        let mut dst_bufs = vec![vec![0u8; 4], vec![0; 1], vec![0; 10]];
        let src = list(&mut src_bufs);
        let dst = list(&mut dst_bufs);
        let (mut dp, mut sp) = (Cursor::default(), Cursor::default());
        assert_eq!(copy(&dst, &mut dp, &src, &mut sp, 100), 9);
        let mut out = [0u8; 9];
        assert_eq!(dst.read_at(0, &mut out), 9);
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn write_at_crosses_segments() {
        let mut bufs = vec![vec![0u8; 11], vec![0u8; 4]];
        let l = list(&mut bufs);
        assert_eq!(l.write_at(10, &[0xaa, 0xbb]), 2);
        assert_eq!(bufs[0][10], 0xaa);
        assert_eq!(bufs[1][0], 0xbb);
    }
}
