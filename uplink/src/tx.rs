// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The transmit half of an AF_XDP socket: TX ring + completion ring.
//!
//! A burst ([`XskTransmitter::transmit_burst`]) first takes back, in one
//! batch, every chunk the kernel has finished sending (completion ring →
//! free list), then grants up to N slots — as many as the TX ring and the
//! free list allow. For each slot the caller writes a frame straight into
//! a free UMEM chunk ([`TxBurst::buffer`]) and reports its length
//! ([`TxBurst::commit`]). Dropping the burst publishes all committed frames
//! with one release store of the TX producer index and kicks the kernel
//! once, only if it asked for it.
//!
//! Need-wakeup: a zero-copy driver clears `XDP_RING_NEED_WAKEUP` on the TX
//! ring while its NAPI polls the ring by itself, and the burst then makes no
//! system call. In copy mode the flag is always set and the kick (`sendto`)
//! is where the kernel actually sends: it copies up to 32 frames per call
//! and answers `EAGAIN` if more remain, so the burst kicks again while the
//! kernel makes progress — one call per 32 frames; bursts of at most 32
//! frames make exactly one. Frames the kernel could not take now stay on
//! the ring and go with the next burst's kick, or [`XskTransmitter::flush`].
//!
//! Multi-buffer (`XDP_USE_SG`): a frame larger than a chunk goes out as a
//! [`TxChain`] of up to [`MAX_TX_PARTS`] chunks, one slot each, all but the
//! last descriptor flagged `XDP_PKT_CONTD`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::ring::{ConsumerRing, ProducerRing, XdpDesc};
use crate::stats::TxCounters;
use crate::umem::{UmemArea, TX_METADATA_LEN, TX_METADATA_ROOM};

/// Most chunks one multi-buffer frame takes: the kernel builds at most
/// `MAX_SKB_FRAGS` (17 by default) fragments per frame in copy mode; 16
/// chunks of 4096 bytes carry a 64 KiB frame.
pub const MAX_TX_PARTS: usize = 16;

/// What a transmitter is set up with.
pub(crate) struct TxSetup {
    pub queue_id: u32,
    /// Frames may span several chunks (`XDP_USE_SG`).
    pub multi_buffer: bool,
    /// The UMEM has room for transmit metadata in front of each frame.
    pub tx_metadata: bool,
}

/// `XDP_TX_METADATA`: the descriptor's frame has metadata in front of it.
const DESC_TX_METADATA: u32 = libc::XDP_TX_METADATA;

/// The transmit half of a socket. `Send`, not `Sync`: one thread owns it
/// and calls [`Self::transmit_burst`] through `&mut self`.
#[derive(Debug)]
pub struct XskTransmitter {
    tx: ProducerRing<XdpDesc>,
    completion: ConsumerRing<u64>,
    /// Chunks not on any ring (start addresses). Its capacity covers every
    /// transmit chunk, so pushing never allocates.
    free: Vec<u64>,
    umem: Arc<UmemArea>,
    fd: Arc<OwnedFd>,
    /// Frames start this far into their chunk: the UMEM's headroom, plus
    /// [`crate::umem::TX_METADATA_ROOM`] with transmit metadata.
    headroom: u32,
    /// Largest frame a chunk holds.
    capacity: u32,
    /// The last kick left frames on the ring.
    kick_pending: bool,
    queue_id: u32,
    /// Frames may span several chunks (`XDP_USE_SG`).
    multi_buffer: bool,
    /// Frames may leave with a checksum for the kernel to fill in.
    tx_metadata: bool,
    counters: TxCounters,
}

impl XskTransmitter {
    /// Takes over `tx` and `completion`, with `chunks` as the free list.
    pub(crate) fn new(
        tx: ProducerRing<XdpDesc>,
        completion: ConsumerRing<u64>,
        chunks: Vec<u64>,
        umem: Arc<UmemArea>,
        fd: Arc<OwnedFd>,
        setup: TxSetup,
    ) -> Self {
        let TxSetup {
            queue_id,
            multi_buffer,
            tx_metadata,
        } = setup;
        let meta_room = if tx_metadata { TX_METADATA_ROOM } else { 0 };
        let headroom = umem.headroom() + meta_room;
        let capacity = umem.chunk_size() - headroom;
        // Chunks are conserved: the list never outgrows its initial length,
        // so pushing reclaimed chunks back never reallocates.
        let free = chunks;
        Self {
            tx,
            completion,
            free,
            umem,
            fd,
            headroom,
            capacity,
            kick_pending: false,
            queue_id,
            multi_buffer,
            tx_metadata,
            counters: TxCounters::default(),
        }
    }

    /// Grants up to `max` TX slots (fewer if the TX ring or the free list
    /// runs short: counted in [`TxCounters::ring_full`] /
    /// [`TxCounters::no_chunk`]). Dropping the burst sends what was
    /// committed.
    pub fn transmit_burst(&mut self, max: usize) -> TxBurst<'_> {
        self.reclaim_completions();
        let wanted = max.min(self.tx.size() as usize) as u32;
        let ring_free = self.tx.free(wanted);
        let chunks = self.free.len().min(u32::MAX as usize) as u32;
        let granted = wanted.min(ring_free).min(chunks);
        if granted < wanted {
            let short = u64::from(wanted - granted);
            if ring_free <= chunks {
                self.counters.ring_full += short;
            } else {
                self.counters.no_chunk += short;
            }
        }
        TxBurst {
            transmitter: self,
            granted,
            offered: 0,
            queued: 0,
            frames: 0,
        }
    }

    /// Moves every chunk the kernel has finished sending back to the free
    /// list, in one batch; returns how many.
    pub fn reclaim_completions(&mut self) -> usize {
        let done = self.completion.available(self.completion.size());
        for i in 0..done {
            let addr = self.completion.read(i);
            self.free.push(self.umem.chunk_of(addr));
        }
        self.completion.release(done);
        self.counters.completed += u64::from(done);
        done as usize
    }

    /// Reclaims completions and kicks the kernel if frames wait on the TX
    /// ring (left by a kick that hit the kernel's per-call budget or a busy
    /// device). Call it when a poll found nothing to transmit.
    pub fn flush(&mut self) {
        self.reclaim_completions();
        if self.kick_pending || self.tx.unconsumed() > 0 {
            self.kick();
        }
    }

    /// Largest frame one slot holds (chunk size minus headroom).
    pub fn frame_capacity(&self) -> usize {
        self.capacity as usize
    }

    /// Largest frame this socket sends: [`Self::frame_capacity`], or
    /// [`MAX_TX_PARTS`] times it with multi-buffer.
    pub fn max_frame(&self) -> usize {
        if self.multi_buffer {
            self.capacity as usize * MAX_TX_PARTS
        } else {
            self.capacity as usize
        }
    }

    /// Whether a frame may leave with its TCP/UDP checksum left for the
    /// kernel or NIC to fill in ([`TxBurst::commit_partial`]): the UMEM has
    /// transmit metadata (Linux 6.11+ in copy mode). A NIC that checksums
    /// does it; otherwise the kernel does before the driver sees the frame;
    /// on a veth the frame reaches the peer as the peer's own stack would
    /// send it, checksum partial and trusted (`CHECKSUM_PARTIAL`).
    pub fn checksum_offload(&self) -> bool {
        self.tx_metadata
    }

    /// Slots (chunks) a frame of `len` bytes takes.
    #[inline]
    pub fn slots_for(&self, len: usize) -> usize {
        len.div_ceil(self.capacity as usize).max(1)
    }

    /// Chunks available for new frames now.
    pub fn free_chunks(&self) -> usize {
        self.free.len()
    }

    /// RX/TX queue this socket is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    pub fn counters(&self) -> TxCounters {
        self.counters
    }

    /// Writes a checksum request into the metadata in front of the frame at
    /// `addr` (a free chunk's, `tx_metadata` on); returns the descriptor
    /// option that makes the kernel read it.
    fn write_checksum_request(&mut self, addr: u64, (start, offset): (u16, u16)) -> u32 {
        let mut meta = [0u8; TX_METADATA_LEN as usize];
        meta[..8].copy_from_slice(&u64::from(libc::XDP_TXMD_FLAGS_CHECKSUM).to_ne_bytes());
        meta[8..10].copy_from_slice(&start.to_ne_bytes());
        meta[10..12].copy_from_slice(&offset.to_ne_bytes());
        let at = addr - u64::from(TX_METADATA_LEN);
        // SAFETY: the metadata area lies inside the frame's chunk, in front of
        // the frame (headroom includes TX_METADATA_ROOM); the chunk is free,
        // so on no ring and in no other view.
        unsafe { self.umem.bytes_mut(at, meta.len()) }.copy_from_slice(&meta);
        self.counters.checksum_requests += 1;
        DESC_TX_METADATA
    }

    /// Makes the kernel look at the TX ring, if it asked to be told.
    fn kick(&mut self) {
        if !self.tx.needs_wakeup() {
            // The driver polls the ring by itself.
            self.kick_pending = false;
            return;
        }
        loop {
            let before = self.tx.unconsumed();
            if before == 0 {
                self.kick_pending = false;
                return;
            }
            self.counters.kicks += 1;
            // SAFETY: sendto with a null buffer of length 0 and no address
            // sends nothing itself; it only makes the kernel process the ring.
            let ret = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if ret >= 0 {
                self.kick_pending = false;
                return;
            }
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) => {
                    self.counters.kick_again += 1;
                    if self.tx.unconsumed() < before {
                        continue; // progress: the kernel will take more
                    }
                }
                Some(libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => self.counters.kick_busy += 1,
                _ => self.counters.kick_errors += 1,
            }
            self.kick_pending = true;
            return;
        }
    }
}

impl AsFd for XskTransmitter {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Slots granted by one [`XskTransmitter::transmit_burst`]. For each slot:
/// [`Self::buffer`], write the frame, [`Self::commit`] its length. Dropping
/// the burst submits the committed frames.
#[derive(Debug)]
pub struct TxBurst<'t> {
    transmitter: &'t mut XskTransmitter,
    /// Slots granted.
    granted: u32,
    /// Slots used up by `commit`, sent or not.
    offered: u32,
    /// Descriptors written to the TX ring, not yet published.
    queued: u32,
    /// The frames they make (fewer with multi-buffer frames).
    frames: u32,
}

impl<'t> TxBurst<'t> {
    /// Slots granted by the burst.
    pub fn granted(&self) -> usize {
        self.granted as usize
    }

    /// Slots not yet committed.
    pub fn remaining(&self) -> usize {
        (self.granted - self.offered) as usize
    }

    /// Frames committed so far.
    pub fn queued(&self) -> usize {
        self.frames as usize
    }

    /// The current slot's buffer: a free UMEM chunk of
    /// [`XskTransmitter::frame_capacity`] bytes to write the frame into,
    /// from its first byte. `None` once every granted slot is committed.
    /// Calling it again before `commit` returns the same chunk.
    pub fn buffer(&mut self) -> Option<&mut [u8]> {
        if self.offered >= self.granted {
            return None;
        }
        let t = &mut *self.transmitter;
        // Never empty here: every slot granted had a free chunk, and only a
        // committed frame takes one.
        let chunk = *t.free.last()?;
        // SAFETY: the chunk is on the free list, so on no ring and in no
        // other view; the slice borrows the burst mutably, so no second
        // view of it can exist until it is gone.
        Some(unsafe {
            t.umem
                .bytes_mut(chunk + u64::from(t.headroom), t.capacity as usize)
        })
    }

    /// Ends the current slot: `len` bytes written by [`Self::buffer`] are a
    /// frame to send. `len == 0` abandons the slot; `len` above the buffer's
    /// size means the frame did not fit, and it is counted as too big.
    /// Returns whether the frame was queued.
    pub fn commit(&mut self, len: usize) -> bool {
        self.commit_with(len, None)
    }

    /// As [`Self::commit`], for a frame whose checksum is left to the kernel:
    /// the sum from byte `csum_start` to the end goes at `csum_start +
    /// csum_offset`, where the pseudo-header sum already is (as a virtio-net
    /// `NEEDS_CSUM` frame has it). Only where
    /// [`XskTransmitter::checksum_offload`]; otherwise the slot is abandoned.
    pub fn commit_partial(&mut self, len: usize, csum_start: u16, csum_offset: u16) -> bool {
        self.commit_with(len, Some((csum_start, csum_offset)))
    }

    fn commit_with(&mut self, len: usize, checksum: Option<(u16, u16)>) -> bool {
        if self.offered >= self.granted {
            return false;
        }
        self.offered += 1;
        let t = &mut *self.transmitter;
        if len == 0 {
            t.counters.abandoned += 1;
            return false;
        }
        if len > t.capacity as usize {
            t.counters.too_big += 1;
            return false;
        }
        if checksum.is_some() && !t.tx_metadata {
            t.counters.abandoned += 1;
            return false;
        }
        let chunk = t.free.pop().expect("a granted slot has a free chunk");
        let addr = chunk + u64::from(t.headroom);
        let options = match checksum {
            Some(request) => t.write_checksum_request(addr, request),
            None => 0,
        };
        let desc = XdpDesc {
            addr,
            len: len as u32,
            options,
        };
        t.tx.write(self.queued, desc);
        self.queued += 1;
        self.frames += 1;
        t.counters.bytes += len as u64;
        true
    }

    /// The chunks for one frame of `len` bytes that is larger than a slot's
    /// buffer (multi-buffer sockets only), to be written part by part and
    /// committed with [`TxChain::commit`]. `None` if the frame takes more
    /// than [`MAX_TX_PARTS`] chunks, the socket is not multi-buffer (both
    /// counted as too big), or fewer slots remain than it needs.
    pub fn chain(&mut self, len: usize) -> Option<TxChain<'_, 't>> {
        let t = &*self.transmitter;
        let parts = t.slots_for(len);
        if parts > MAX_TX_PARTS || (parts > 1 && !t.multi_buffer) {
            self.transmitter.counters.too_big += 1;
            return None;
        }
        if parts > self.remaining() {
            return None;
        }
        Some(TxChain {
            burst: self,
            len,
            parts,
        })
    }

    /// Copies `frame` into the current slot and commits it: for callers
    /// that already hold the frame in one piece.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        let Some(buffer) = self.buffer() else {
            return false;
        };
        if frame.len() > buffer.len() {
            return self.commit(frame.len()); // counted as too big
        }
        buffer[..frame.len()].copy_from_slice(frame);
        self.commit(frame.len())
    }
}

/// One frame being written into several chunks of a [`TxBurst`]: part `i` is
/// bytes `i * capacity..` of the frame. The chunks are the burst's next free
/// ones; [`Self::commit`] puts them on the TX ring in order. Dropped without
/// a commit, it gives its slots back unused (counted as abandoned).
#[derive(Debug)]
pub struct TxChain<'b, 't> {
    burst: &'b mut TxBurst<'t>,
    len: usize,
    parts: usize,
}

impl TxChain<'_, '_> {
    /// Number of parts.
    pub fn parts(&self) -> usize {
        self.parts
    }

    /// The frame's length.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Part `i`'s buffer (`i < parts()`): exactly its share of the frame's
    /// bytes, from the frame's byte `i * frame_capacity()`.
    pub fn part(&mut self, i: usize) -> &mut [u8] {
        assert!(i < self.parts, "part {i} of {}", self.parts);
        let t = &mut *self.burst.transmitter;
        let cap = t.capacity as usize;
        let len = (self.len - i * cap).min(cap);
        // The chain's chunks are the last `parts` of the free list, part 0 last.
        let chunk = t.free[t.free.len() - 1 - i];
        // SAFETY: the chunk is on the free list, so on no ring and in no other
        // view; the slice borrows the chain mutably, so no second view of it
        // (or of any other part) exists until it is gone.
        unsafe { t.umem.bytes_mut(chunk + u64::from(t.headroom), len) }
    }

    /// Puts every part on the TX ring, all but the last flagged
    /// `XDP_PKT_CONTD`; the burst's drop publishes them with its other frames.
    pub fn commit(self) {
        self.commit_with(None);
    }

    /// As [`Self::commit`], with the checksum left to the kernel as in
    /// [`TxBurst::commit_partial`] (the field must be in the first part).
    /// Only where [`XskTransmitter::checksum_offload`]; otherwise abandoned.
    pub fn commit_partial(self, csum_start: u16, csum_offset: u16) {
        if !self.burst.transmitter.tx_metadata {
            return; // dropped: abandoned
        }
        self.commit_with(Some((csum_start, csum_offset)));
    }

    fn commit_with(self, checksum: Option<(u16, u16)>) {
        let b = &mut *self.burst;
        let t = &mut *b.transmitter;
        let cap = t.capacity as usize;
        for i in 0..self.parts {
            let chunk = t.free.pop().expect("a chain's chunks are free");
            let len = (self.len - i * cap).min(cap);
            let addr = chunk + u64::from(t.headroom);
            let mut options = if i + 1 < self.parts {
                libc::XDP_PKT_CONTD
            } else {
                0
            };
            if let (0, Some(request)) = (i, checksum) {
                options |= t.write_checksum_request(addr, request);
            }
            let desc = XdpDesc {
                addr,
                len: len as u32,
                options,
            };
            t.tx.write(b.queued + i as u32, desc);
        }
        b.queued += self.parts as u32;
        b.offered += self.parts as u32;
        b.frames += 1;
        t.counters.bytes += self.len as u64;
        t.counters.parts_after_first += self.parts as u64 - 1;
        std::mem::forget(self);
    }
}

impl Drop for TxChain<'_, '_> {
    fn drop(&mut self) {
        self.burst.offered += self.parts as u32;
        self.burst.transmitter.counters.abandoned += 1;
    }
}

impl Drop for TxBurst<'_> {
    fn drop(&mut self) {
        let t = &mut *self.transmitter;
        if self.queued > 0 {
            t.tx.submit(self.queued);
            t.counters.frames += u64::from(self.frames);
        }
        if self.queued > 0 || t.kick_pending {
            t.kick();
        }
    }
}
