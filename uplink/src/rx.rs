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
    counters: RxCounters,
}

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
        Self {
            rx,
            fill,
            spare: Vec::with_capacity(count as usize),
            umem,
            fd,
            queue_id,
            counters: RxCounters::default(),
        }
    }

    /// Up to `max` received frames (fewer if fewer are waiting; possibly
    /// none). They stay valid until the returned burst is dropped.
    pub fn receive_burst(&mut self, max: usize) -> RxBurst<'_> {
        let wanted = max.min(self.rx.size() as usize) as u32;
        let count = self.rx.available(wanted);
        if count == 0 && (!self.spare.is_empty() || self.fill.needs_wakeup()) {
            self.recycle(0);
        }
        RxBurst {
            receiver: self,
            count,
            release: count,
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
        self.counters.frames += u64::from(n);
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
    count: u32,
    /// Frames to release on drop: `count` unless the caller keeps some.
    release: u32,
}

impl RxBurst<'_> {
    /// Number of frames in the burst.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Frame `i` (`i < len()`): the Ethernet frame's bytes, in place in
    /// its UMEM chunk.
    pub fn frame(&self, i: usize) -> &[u8] {
        assert!(
            i < self.count as usize,
            "frame {i} of a burst of {}",
            self.count
        );
        let desc = self.receiver.rx.read(i as u32);
        // SAFETY: the chunk left the kernel on the RX ring and goes back on
        // the fill ring only when this burst is dropped; the slice borrows
        // the burst, so it cannot outlive that.
        unsafe { self.receiver.umem.bytes(desc.addr, desc.len as usize) }
    }

    /// The frames in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
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
