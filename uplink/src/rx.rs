// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The receive half of an AF_XDP socket: RX ring + fill ring.
//!
//! A burst ([`XskReceiver::receive_burst`]) hands the caller up to N frames
//! as byte slices of UMEM chunks — the frames are not copied. Dropping the
//! burst releases them all at once: one release store on the RX ring's
//! consumer index, then the same chunks go back on the fill ring with one
//! release store of its producer index. The receiver owns a fixed set of
//! chunks that only circulate fill ring → kernel → RX ring → caller → fill
//! ring, so there is always room to put them back.
//!
//! Multi-buffer (`XDP_USE_SG`): a frame larger than a chunk arrives as several
//! descriptors in a row, all but the last flagged `XDP_PKT_CONTD`. A burst counts
//! frames, not descriptors, and never ends inside one: [`RxFrame`] is one frame
//! as its parts in order. The kernel publishes a frame's descriptors together;
//! a trailing incomplete one (which it never leaves) would wait for the next
//! burst.
//!
//! Need-wakeup: in copy mode (veth, any driver without zero-copy) the
//! kernel copies frames in the sender's softirq and never asks for a
//! wakeup on the fill ring, so receiving makes no system call at all. A
//! zero-copy driver that ran out of fill entries sets
//! `XDP_RING_NEED_WAKEUP`; then, and only then, the burst calls `recvfrom`
//! to kick its NAPI.
#![allow(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::ring::{ConsumerRing, ProducerRing, XdpDesc};
use crate::stats::RxCounters;
use crate::umem::UmemArea;

/// The receive half of a socket. `Send`, not `Sync`: one thread owns it
/// and calls [`Self::receive_burst`] through `&mut self`.
#[derive(Debug)]
pub struct XskReceiver {
    rx: ConsumerRing<XdpDesc>,
    fill: ProducerRing<u64>,
    /// Chunks that found no room on the fill ring (normally empty; its
    /// capacity covers every receive chunk, so pushing never allocates).
    spare: Vec<u64>,
    umem: Arc<UmemArea>,
    fd: Arc<OwnedFd>,
    queue_id: u32,
    /// The first descriptor of each frame of the current burst, and one past
    /// the last frame's end (capacity: RX ring size + 1, so filling it never
    /// allocates).
    starts: Vec<u32>,
    counters: RxCounters,
}

/// `XDP_PKT_CONTD`: more descriptors of this frame follow.
const PKT_CONTD: u32 = libc::XDP_PKT_CONTD;

impl XskReceiver {
    /// Takes over `rx` and `fill`, and stocks the fill ring with `chunks`
    /// (chunk start addresses, at most the fill ring's size).
    pub(crate) fn new(
        rx: ConsumerRing<XdpDesc>,
        mut fill: ProducerRing<u64>,
        chunks: Vec<u64>,
        umem: Arc<UmemArea>,
        fd: Arc<OwnedFd>,
        queue_id: u32,
    ) -> Self {
        let count = chunks.len() as u32;
        assert!(
            count <= fill.free(count),
            "receive chunks exceed the fill ring"
        );
        for (i, chunk) in chunks.into_iter().enumerate() {
            fill.write(i as u32, chunk);
        }
        fill.submit(count);
        let starts = Vec::with_capacity(rx.size() as usize + 1);
        Self {
            rx,
            fill,
            spare: Vec::with_capacity(count as usize),
            umem,
            fd,
            queue_id,
            starts,
            counters: RxCounters::default(),
        }
    }

    /// Up to `max` received frames (fewer if fewer are waiting; possibly
    /// none). They stay valid until the returned burst is dropped.
    pub fn receive_burst(&mut self, max: usize) -> RxBurst<'_> {
        let wanted = max.min(self.rx.size() as usize) as u32;
        let available = self.rx.available(self.rx.size());
        self.starts.clear();
        let mut descs = 0;
        let mut start = 0;
        while descs < available && (self.starts.len() as u32) < wanted {
            let options = self.rx.read(descs).options;
            descs += 1;
            if options & PKT_CONTD == 0 {
                self.starts.push(start);
                start = descs;
            }
        }
        // One past the last whole frame: the end of the burst.
        self.starts.push(start);
        let frames = self.starts.len() as u32 - 1;
        if frames == 0 && (!self.spare.is_empty() || self.fill.needs_wakeup()) {
            self.recycle(0);
        }
        RxBurst {
            receiver: self,
            frames,
            release: frames,
        }
    }

    /// RX queue this socket is bound to.
    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    pub fn counters(&self) -> RxCounters {
        self.counters
    }

    /// Gives back the first `n` frames of the RX ring and refills the fill
    /// ring with their chunks (plus any spares) in one batch.
    fn recycle(&mut self, n: u32) {
        // `n` frames are their descriptors up to the next frame's start.
        let frames = n;
        let n = self.starts.get(n as usize).copied().unwrap_or(0);
        let waiting = n + self.spare.len() as u32;
        let room = self.fill.free(waiting);
        let mut written = 0;
        while written < room {
            let Some(chunk) = self.spare.pop() else { break };
            self.fill.write(written, chunk);
            written += 1;
        }
        let mut bytes = 0u64;
        for i in 0..n {
            let desc = self.rx.read(i);
            bytes += u64::from(desc.len);
            let chunk = self.umem.chunk_of(desc.addr);
            if written < room {
                self.fill.write(written, chunk);
                written += 1;
            } else {
                self.spare.push(chunk);
                self.counters.fill_ring_full += 1;
            }
        }
        self.rx.release(n);
        self.fill.submit(written);
        self.counters.frames += u64::from(frames);
        self.counters.parts_after_first += u64::from(n - frames);
        self.counters.bytes += bytes;
        if self.fill.needs_wakeup() {
            self.wake_kernel();
        }
    }

    /// Kicks a zero-copy driver that asked for a wakeup on the fill ring.
    fn wake_kernel(&mut self) {
        self.counters.wakeups += 1;
        // SAFETY: recvfrom with a null buffer of length 0 reads nothing; it
        // only makes the kernel run the driver's wakeup.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
    }
}

impl AsFd for XskReceiver {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Frames received by one [`XskReceiver::receive_burst`]. Dropping it
/// releases them (all, or those before [`Self::keep_for_next_burst`]) and
/// refills the fill ring, in one batch each.
#[derive(Debug)]
pub struct RxBurst<'r> {
    receiver: &'r mut XskReceiver,
    /// Frames in the burst (`receiver.starts` has one more entry).
    frames: u32,
    /// Frames to release on drop: `frames` unless the caller keeps some.
    release: u32,
}

impl RxBurst<'_> {
    /// Number of frames in the burst.
    pub fn len(&self) -> usize {
        self.frames as usize
    }

    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Frame `i` (`i < len()`), in place in its UMEM chunk(s).
    pub fn frame(&self, i: usize) -> RxFrame<'_> {
        assert!(i < self.len(), "frame {i} of a burst of {}", self.frames);
        let r = &*self.receiver;
        let (first, end) = (r.starts[i], r.starts[i + 1]);
        let desc = r.rx.read(first);
        // SAFETY: the chunk left the kernel on the RX ring and goes back on
        // the fill ring only when this burst is dropped; the slice borrows
        // the burst, so it cannot outlive that.
        let head = unsafe { r.umem.bytes(desc.addr, desc.len as usize) };
        RxFrame {
            receiver: r,
            head,
            first,
            end,
        }
    }

    /// The frames in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RxFrame<'_>> + '_ {
        (0..self.len()).map(move |i| self.frame(i))
    }

    /// Releases only frames `..from` when the burst is dropped: frames
    /// `from..` stay on the RX ring and start the next burst (for a caller
    /// that ran out of room downstream and would rather push back than
    /// drop). Call with `from = 0` to keep them all.
    pub fn keep_for_next_burst(&mut self, from: usize) {
        self.release = self.release.min(from as u32);
    }
}

impl Drop for RxBurst<'_> {
    fn drop(&mut self) {
        if self.release > 0 {
            self.receiver.recycle(self.release);
        }
    }
}

/// One received frame: its first part, and the rest when it came in several
/// chunks (multi-buffer). Borrows its burst.
#[derive(Clone, Copy, Debug)]
pub struct RxFrame<'b> {
    receiver: &'b XskReceiver,
    head: &'b [u8],
    /// Its descriptors on the RX ring, from the burst's first: `first..end`.
    first: u32,
    end: u32,
}

impl<'b> RxFrame<'b> {
    /// The first part: the whole frame unless [`Self::is_multi_buffer`]. It
    /// holds as much of the frame as a chunk does, so the headers.
    pub fn head(&self) -> &'b [u8] {
        self.head
    }

    /// Whether the frame came in more than one chunk.
    pub fn is_multi_buffer(&self) -> bool {
        self.end - self.first > 1
    }

    /// Number of parts (chunks).
    pub fn part_count(&self) -> usize {
        (self.end - self.first) as usize
    }

    /// The parts in order; their concatenation is the frame.
    pub fn parts(&self) -> impl Iterator<Item = &'b [u8]> + 'b {
        let r = self.receiver;
        (self.first..self.end).map(move |i| {
            let desc = r.rx.read(i);
            // SAFETY: as in `RxBurst::frame`: the chunk is ours until the
            // burst this frame borrows is dropped.
            unsafe { r.umem.bytes(desc.addr, desc.len as usize) }
        })
    }

    /// Bytes in all parts.
    pub fn len(&self) -> usize {
        if self.is_multi_buffer() {
            self.parts().map(<[u8]>::len).sum()
        } else {
            self.head.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame in one piece (a copy: for tests and diagnostics).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts().flatten().copied().collect()
    }
}
