// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The group tap's receive ring: an AF_PACKET `PACKET_RX_RING` in
//! `TPACKET_V2` format (kernel `Documentation/networking/packet_mmap.rst`),
//! mapped once and then read with no system call per frame and none while
//! idle.
//!
//! The ring is `frame_nr` slots of `frame_size` bytes, laid out in blocks
//! (a slot never crosses a block). Each slot starts with a
//! `struct tpacket2_hdr` whose first word, `tp_status`, is the only
//! synchronisation: the kernel fills the slot at its head, then sets
//! `TP_STATUS_USER` (after a write barrier) and moves on to the next slot;
//! we read the status (acquire), use the frame in place, and hand the slot
//! back by storing `TP_STATUS_KERNEL` (release). Both sides go round the
//! slots in the same order, so our only index is our own head. A slot the
//! kernel finds still ours means the ring is full: the frame is dropped,
//! counted in the socket's `tp_drops`, and the next frame delivered carries
//! `TP_STATUS_LOSING`.
//!
//! ```text
//! slot:  0    tpacket2_hdr (32 bytes; tp_status first)
//!        32   sockaddr_ll (20 bytes)
//!        52   padding, then PACKET_RESERVE (4 bytes: room to put a VLAN
//!             tag back in front of the frame, in place)
//!        70   tp_mac: the Ethernet frame, tp_snaplen bytes of tp_len
//! ```
//!
//! # Why `TPACKET_V2`, not `V3`
//!
//! V3 fills variable-sized frames into blocks and hands a block to user
//! space only when it is full or when its retire timer fires (milliseconds):
//! at the low rates of broadcast and multicast, every ARP request would wait
//! for the timer, and the timer keeps firing while the link is idle. V2
//! publishes each frame the moment it is copied, its per-frame status word
//! is all a polling thread needs to look at, and releasing frame by frame
//! fits the burst shape of [`crate::rx`]. V3's advantage, memory density at
//! high rates of small frames, matters for capture, not for group traffic.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU32, Ordering};

use libc::{tpacket2_hdr, TP_STATUS_CSUMNOTREADY, TP_STATUS_LOSING, TP_STATUS_USER};

/// `TP_STATUS_VLAN_VALID`: `tp_vlan_tci` holds a tag the kernel took out of
/// the frame (VLAN offload).
const VLAN_VALID: u32 = 1 << 4;
/// `TP_STATUS_VLAN_TPID_VALID`: `tp_vlan_tpid` holds that tag's TPID.
const VLAN_TPID_VALID: u32 = 1 << 6;
/// `TP_STATUS_KERNEL`: the slot is the kernel's to fill.
const STATUS_KERNEL: u32 = 0;
const ETH_P_8021Q: u16 = 0x8100;
const VLAN_HLEN: usize = 4;
const ETH_HLEN: usize = 14;
/// Both MAC addresses: what moves to make room for a VLAN tag.
const ETH_ALEN_2: usize = 12;
const ALIGNMENT: usize = 16;

const fn align(x: usize) -> usize {
    (x + ALIGNMENT - 1) & !(ALIGNMENT - 1)
}

/// `TPACKET2_HDRLEN`: the header and the `sockaddr_ll` after it.
pub(crate) const HDR_LEN: usize = align(size_of::<tpacket2_hdr>()) + size_of::<libc::sockaddr_ll>();
/// `PACKET_RESERVE`: headroom the kernel leaves before each frame.
pub(crate) const RESERVE: usize = VLAN_HLEN;
/// Where the kernel puts an Ethernet frame's first byte in a slot
/// (`tpacket_rcv`: `TPACKET_ALIGN(hdrlen + 16) + reserve - 14`).
pub(crate) const MAC_OFFSET: usize = align(HDR_LEN + 16) + RESERVE - ETH_HLEN;

/// Sizes of the ring, as `struct tpacket_req` asks for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub frame_size: u32,
    pub block_size: u32,
    pub block_nr: u32,
    pub frames_per_block: u32,
}

impl Geometry {
    /// Slots for frames of up to `max_frame_len` bytes, at least `frames`
    /// of them (rounded up to whole blocks). Blocks are a power of two of at
    /// least 8 slots, and at least a page. `None` if that overflows.
    pub(crate) fn new(max_frame_len: u32, frames: u32, page_size: u32) -> Option<Self> {
        let frame_size = u32::try_from(align(MAC_OFFSET + max_frame_len as usize)).ok()?;
        let block_size = frame_size
            .checked_mul(8)?
            .checked_next_power_of_two()?
            .max(page_size);
        let frames_per_block = block_size / frame_size;
        let block_nr = frames.max(1).div_ceil(frames_per_block);
        // The kernel wants the frame count and the ring's bytes in 32 bits.
        block_nr.checked_mul(frames_per_block)?;
        block_nr.checked_mul(block_size)?;
        Some(Self {
            frame_size,
            block_size,
            block_nr,
            frames_per_block,
        })
    }

    pub(crate) fn frame_nr(&self) -> u32 {
        self.block_nr * self.frames_per_block
    }

    /// Bytes of the mapping.
    pub(crate) fn map_len(&self) -> usize {
        self.block_size as usize * self.block_nr as usize
    }

    /// Frames a slot holds whole (beyond this the kernel truncates).
    pub(crate) fn max_frame_len(&self) -> u32 {
        self.frame_size - MAC_OFFSET as u32
    }

    /// Byte offset of slot `k` in the mapping.
    fn slot_offset(&self, k: u32) -> usize {
        (k / self.frames_per_block) as usize * self.block_size as usize
            + (k % self.frames_per_block) as usize * self.frame_size as usize
    }

    pub(crate) fn request(&self) -> libc::tpacket_req {
        libc::tpacket_req {
            tp_block_size: self.block_size,
            tp_block_nr: self.block_nr,
            tp_frame_size: self.frame_size,
            tp_frame_nr: self.frame_nr(),
        }
    }
}

/// Per-ring counters, folded into [`crate::TapCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RingCounters {
    pub frames: u64,
    pub bytes: u64,
    pub too_big: u64,
    pub vlan_restored: u64,
    pub checksum_partial: u64,
}

/// The mapped ring. Unmapped on drop.
#[derive(Debug)]
pub(crate) struct TapRing {
    base: NonNull<u8>,
    geometry: Geometry,
    /// Slot the next burst starts at.
    head: u32,
    /// A frame carried `TP_STATUS_LOSING`: the kernel dropped frames since
    /// its statistics were last read.
    losing: bool,
    counters: RingCounters,
}

// SAFETY: the ring points into a mapping it owns; the memory is shared with
// the kernel only, through the status-word protocol above. Moving the ring
// moves the only user-space handle on it.
unsafe impl Send for TapRing {}

impl TapRing {
    /// Maps the ring the kernel created for `fd` with `geometry`.
    pub(crate) fn map(fd: BorrowedFd<'_>, geometry: Geometry) -> io::Result<Self> {
        // SAFETY: a new shared mapping of the socket's ring at a
        // kernel-chosen address; the kernel checks the length against the
        // ring it created.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                geometry.map_len(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            base: NonNull::new(ptr.cast()).expect("mmap returned a non-null address"),
            geometry,
            head: 0,
            losing: false,
            counters: RingCounters::default(),
        })
    }

    pub(crate) fn geometry(&self) -> Geometry {
        self.geometry
    }

    pub(crate) fn counters(&self) -> RingCounters {
        self.counters
    }

    /// Whether a frame flagged losses since the last call.
    pub(crate) fn take_losing(&mut self) -> bool {
        std::mem::take(&mut self.losing)
    }

    /// Slot `i` after the head.
    fn slot(&self, i: u32) -> u32 {
        (self.head + i) % self.geometry.frame_nr()
    }

    fn header(&self, slot: u32) -> *mut tpacket2_hdr {
        // SAFETY: slot < frame_nr, so the slot lies inside the mapping.
        unsafe { self.base.as_ptr().add(self.geometry.slot_offset(slot)) }.cast()
    }

    fn status(&self, slot: u32) -> &AtomicU32 {
        // SAFETY: tp_status is an aligned u32 (slots are 16-byte aligned in
        // a page-aligned mapping) that the kernel accesses only with
        // READ_ONCE/WRITE_ONCE and barriers.
        unsafe { AtomicU32::from_ptr(std::ptr::addr_of_mut!((*self.header(slot)).tp_status)) }
    }

    /// Up to `max` frames that the kernel has handed over, starting at the
    /// head. Frames too long for a slot are released on the spot and
    /// counted; one in the middle ends the burst (the next starts with it),
    /// so a burst's frames are consecutive slots.
    pub(crate) fn receive_burst(&mut self, max: usize) -> TapBurst<'_> {
        let frame_nr = self.geometry.frame_nr();
        let max = max.min(frame_nr as usize) as u32;
        let mut count = 0;
        let mut bytes = 0u64;
        let mut skips = frame_nr; // bound on slots released as too big
        while count < max {
            let slot = self.slot(count);
            let status = self.status(slot).load(Ordering::Acquire);
            if status & TP_STATUS_USER == 0 {
                break;
            }
            self.losing |= status & TP_STATUS_LOSING != 0;
            match self.take_frame(slot, status) {
                Some(len) => {
                    bytes += u64::from(len);
                    count += 1;
                }
                None if count == 0 && skips > 0 => {
                    skips -= 1;
                    self.counters.too_big += 1;
                    self.release(1);
                }
                None => break,
            }
        }
        TapBurst {
            ring: self,
            count,
            bytes,
        }
    }

    /// Checks the frame in `slot` (ours: its status is `TP_STATUS_USER`) and
    /// puts back a VLAN tag the kernel took out of it. Its length, or `None`
    /// if it did not fit the slot.
    fn take_frame(&mut self, slot: u32, status: u32) -> Option<u32> {
        let hdr = self.header(slot);
        // SAFETY: the slot is ours until we store TP_STATUS_KERNEL (the
        // acquire load of its status orders these reads after the kernel's
        // writes); the header lies inside the mapping.
        let (len, snaplen, mac, tci, tpid) = unsafe {
            (
                (*hdr).tp_len,
                (*hdr).tp_snaplen,
                usize::from((*hdr).tp_mac),
                (*hdr).tp_vlan_tci,
                (*hdr).tp_vlan_tpid,
            )
        };
        let frame_size = self.geometry.frame_size as usize;
        if snaplen < len || mac + snaplen as usize > frame_size || mac < HDR_LEN {
            return None;
        }
        if status & TP_STATUS_CSUMNOTREADY != 0 {
            self.counters.checksum_partial += 1;
        }
        if status & VLAN_VALID == 0 {
            return Some(snaplen);
        }
        if (snaplen as usize) < ETH_ALEN_2 || mac < HDR_LEN + VLAN_HLEN {
            return Some(snaplen); // not an Ethernet frame we could tag
        }
        let tpid = if status & VLAN_TPID_VALID != 0 {
            tpid
        } else {
            ETH_P_8021Q
        };
        let mut tag = [0u8; VLAN_HLEN];
        tag[..2].copy_from_slice(&tpid.to_be_bytes());
        tag[2..].copy_from_slice(&tci.to_be_bytes());
        // SAFETY: the slot is ours (see above). The 4 bytes before the
        // frame are padding after the sockaddr_ll (mac >= HDR_LEN + 4,
        // checked), so the shifted MACs and the tag stay inside the slot.
        unsafe {
            let frame = hdr.cast::<u8>().add(mac);
            std::ptr::copy(frame, frame.sub(VLAN_HLEN), ETH_ALEN_2);
            std::ptr::copy_nonoverlapping(
                tag.as_ptr(),
                frame.add(ETH_ALEN_2 - VLAN_HLEN),
                VLAN_HLEN,
            );
            (*hdr).tp_mac = (mac - VLAN_HLEN) as u16;
            (*hdr).tp_snaplen = snaplen + VLAN_HLEN as u32;
            (*hdr).tp_len = len + VLAN_HLEN as u32;
        }
        self.counters.vlan_restored += 1;
        Some(snaplen + VLAN_HLEN as u32)
    }

    /// Hands the first `n` slots after the head back to the kernel: one
    /// release fence, then a plain store of each status word.
    fn release(&mut self, n: u32) {
        fence(Ordering::Release);
        for i in 0..n {
            self.status(self.slot(i))
                .store(STATUS_KERNEL, Ordering::Relaxed);
        }
        self.head = self.slot(n);
    }

    /// The frame in slot `i` after the head, checked by `take_frame`.
    fn frame(&self, i: u32) -> &[u8] {
        let hdr = self.header(self.slot(i));
        // SAFETY: the slot is ours for the burst that borrows `self`, its
        // header was checked by take_frame (frame inside the slot), and
        // nothing writes to it until the burst releases it.
        unsafe {
            let mac = usize::from((*hdr).tp_mac);
            let len = (*hdr).tp_snaplen as usize;
            std::slice::from_raw_parts(hdr.cast::<u8>().add(mac), len)
        }
    }
}

impl Drop for TapRing {
    fn drop(&mut self) {
        // SAFETY: base..base+map_len is a mapping this struct owns; the only
        // views into it borrow the ring.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.geometry.map_len()) };
    }
}

/// Frames received by one [`crate::PacketTap::receive_burst`], in arrival
/// order, read in place in the ring. Dropping it hands them all back to the
/// kernel at once.
#[derive(Debug)]
pub struct TapBurst<'r> {
    ring: &'r mut TapRing,
    count: u32,
    bytes: u64,
}

impl TapBurst<'_> {
    /// Number of frames in the burst.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Frame `i` (`i < len()`): the Ethernet frame as it was on the wire
    /// (a VLAN tag the kernel had taken out is back in place).
    pub fn frame(&self, i: usize) -> &[u8] {
        assert!(
            i < self.count as usize,
            "frame {i} of a burst of {}",
            self.count
        );
        self.ring.frame(i as u32)
    }

    /// The frames in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(move |i| self.frame(i))
    }
}

impl Drop for TapBurst<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            self.ring.release(self.count);
            self.ring.counters.frames += u64::from(self.count);
            self.ring.counters.bytes += self.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_kernel() {
        assert_eq!(size_of::<tpacket2_hdr>(), 32);
        assert_eq!(HDR_LEN, libc::TPACKET2_HDRLEN);
        assert_eq!(MAC_OFFSET, 70);
    }

    #[test]
    fn geometry_fits_a_1500_byte_mtu() {
        let g = Geometry::new(1518, 512, 4096).unwrap();
        assert_eq!(g.frame_size, 1600);
        assert_eq!(g.block_size, 16384);
        assert_eq!(g.frames_per_block, 10);
        assert_eq!(g.frame_nr(), 520, "rounded up to whole blocks");
        assert!(g.max_frame_len() >= 1518);
        assert_eq!(g.slot_offset(9), 9 * 1600);
        assert_eq!(g.slot_offset(10), 16384, "slots do not cross blocks");
        let req = g.request();
        assert_eq!(
            req.tp_frame_nr,
            req.tp_block_nr * (req.tp_block_size / req.tp_frame_size)
        );
        assert_eq!(req.tp_block_size % 4096, 0);
        assert_eq!(req.tp_frame_size as usize % ALIGNMENT, 0);
    }

    #[test]
    fn geometry_of_small_and_huge_frames() {
        let small = Geometry::new(64, 1, 4096).unwrap();
        assert_eq!(small.block_size, 4096, "at least a page");
        assert_eq!(small.block_nr, 1);
        let jumbo = Geometry::new(9018, 64, 4096).unwrap();
        assert!(jumbo.max_frame_len() >= 9018);
        assert!(jumbo.frames_per_block >= 8);
        assert!(Geometry::new(u32::MAX - 8, 1, 4096).is_none());
        assert!(Geometry::new(65535, u32::MAX, 4096).is_none());
    }
}
