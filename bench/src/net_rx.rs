// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Receive: pool buffers posted to the RX ring, frames taken back from the used ring.
//!
//! Every RX chain is one pool buffer. Two ways to receive:
//! - [`RxQueue::recv_raw`], zero-copy: frames that arrived in one buffer are handed over as
//!   `(buffer, length)`; the caller owns the buffer (to forward it, say) and returns it to
//!   the pool. Frames spread over several buffers (MRG_RXBUF) are dropped and counted.
//! - [`RxQueue::recv_frames`]: each frame is lent to a callback as a byte slice, straight
//!   from guest memory when it sits in one buffer, else reassembled in one reusable scratch
//!   buffer; buffers go back to the pool and the ring is refilled, published once.
//!
//! Nothing is allocated per frame; the used ring is read once per burst.

use std::time::Duration;

use crate::pool::BufPool;
use crate::split_queue::{SplitQueue, Used};
use crate::virtio_net::NetLayout;

/// Most used entries taken per step.
pub const MAX_BURST: usize = 64;

/// Receive counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Frames delivered to the caller.
    pub packets: u64,
    /// Their Ethernet bytes (no virtio-net header).
    pub bytes: u64,
    /// Frames that arrived in more than one buffer (MRG_RXBUF).
    pub merged: u64,
    /// Used entries that made no sense (length beyond the buffer, shorter than the header,
    /// `num_buffers` of 0); the frame they belonged to is dropped.
    pub malformed: u64,
    /// Multi-buffer frames dropped by the zero-copy path.
    pub merged_dropped: u64,
}

/// A frame received into one buffer, owned by the caller until returned to the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxFrame {
    /// Pool buffer: virtio-net header, then the frame.
    pub buf: u32,
    /// Ethernet bytes of the frame.
    pub len: u32,
}

/// The RX queue of one device.
pub struct RxQueue {
    q: SplitQueue,
    layout: NetLayout,
    /// Bytes offered to the device per buffer.
    post_len: u32,
    /// Reassembly of a multi-buffer frame.
    scratch: Vec<u8>,
    /// Buffers still due for the frame in `scratch` (copying path), or still to be
    /// discarded (zero-copy path); 0 between frames.
    pending: u16,
    used: [Used; MAX_BURST],
    stats: RxStats,
}

impl RxQueue {
    /// Wraps a laid-out queue; each posted buffer offers `post_len` bytes to the device.
    pub fn new(q: SplitQueue, layout: NetLayout, post_len: u32) -> Self {
        RxQueue {
            q,
            layout,
            post_len,
            scratch: Vec::with_capacity(layout.hdr_len + 9018),
            pending: 0,
            used: [Used::default(); MAX_BURST],
            stats: RxStats::default(),
        }
    }

    /// The underlying ring.
    pub fn queue(&self) -> &SplitQueue {
        &self.q
    }

    /// Mutable access to the ring (setup, event index).
    pub fn queue_mut(&mut self) -> &mut SplitQueue {
        &mut self.q
    }

    /// Counters so far.
    pub fn stats(&self) -> RxStats {
        self.stats
    }

    /// Bytes offered to the device per buffer.
    pub fn post_len(&self) -> u32 {
        self.post_len
    }

    /// Posts free pool buffers until the ring is full or the pool empty, and publishes
    /// them (kicking if the device asked). Returns how many were posted.
    #[inline]
    pub fn refill(&mut self, pool: &mut BufPool) -> usize {
        let mut n = 0;
        while self.q.num_free() > 0 {
            let Some(buf) = pool.get() else {
                break;
            };
            self.q.push(pool.addr(buf), self.post_len, true, buf);
            n += 1;
        }
        if n > 0 {
            self.q.publish();
        }
        n
    }

    /// Zero-copy receive of up to `out.len()` frames: each is one buffer the caller now
    /// owns. Does not refill the ring (the caller decides when, with which buffers).
    #[inline]
    pub fn recv_raw(&mut self, pool: &mut BufPool, out: &mut [RxFrame]) -> usize {
        let want = out.len().min(MAX_BURST);
        let got = self.q.pop_used_burst(&mut self.used[..want]);
        let hdr_len = self.layout.hdr_len;
        let mut n = 0;
        for i in 0..got {
            let Used { cookie: buf, len } = self.used[i];
            if self.pending > 0 {
                // The rest of a multi-buffer frame we are discarding.
                self.pending -= 1;
                pool.put(buf);
                continue;
            }
            if (len as usize) < hdr_len || len > self.post_len {
                self.stats.malformed += 1;
                pool.put(buf);
                continue;
            }
            if self.layout.mrg_rxbuf {
                let parts = self.layout.num_buffers(pool.bytes(buf, hdr_len));
                if parts != 1 {
                    if parts == 0 {
                        self.stats.malformed += 1;
                    } else {
                        self.stats.merged_dropped += 1;
                        self.pending = parts - 1;
                    }
                    pool.put(buf);
                    continue;
                }
            }
            let frame_len = len - hdr_len as u32;
            self.stats.packets += 1;
            self.stats.bytes += u64::from(frame_len);
            out[n] = RxFrame {
                buf,
                len: frame_len,
            };
            n += 1;
        }
        n
    }

    /// Lends up to `max` received frames to `f` (Ethernet bytes, header stripped), returns
    /// their buffers to `pool`, then refills the ring. Returns the number of frames.
    pub fn recv_frames(
        &mut self,
        pool: &mut BufPool,
        max: usize,
        f: &mut dyn FnMut(&[u8]),
    ) -> usize {
        let hdr_len = self.layout.hdr_len;
        let mut got = 0;
        while got < max {
            let want = (max - got).min(MAX_BURST);
            let n = self.q.pop_used_burst(&mut self.used[..want]);
            if n == 0 {
                break;
            }
            for i in 0..n {
                let Used { cookie: buf, len } = self.used[i];
                if len > self.post_len {
                    self.drop_frame();
                } else if self.pending > 0 {
                    // A continuation buffer: frame bytes only, no header.
                    self.scratch
                        .extend_from_slice(pool.bytes(buf, len as usize));
                    self.pending -= 1;
                    if self.pending == 0 {
                        self.stats.merged += 1;
                        self.deliver_scratch(f);
                        got += 1;
                    }
                } else if (len as usize) < hdr_len {
                    self.drop_frame();
                } else {
                    let bytes = pool.bytes(buf, len as usize);
                    match self.layout.num_buffers(&bytes[..hdr_len]) {
                        0 => self.drop_frame(),
                        1 => {
                            let frame = &bytes[hdr_len..];
                            self.stats.packets += 1;
                            self.stats.bytes += frame.len() as u64;
                            f(frame);
                            got += 1;
                        }
                        parts => {
                            self.scratch.clear();
                            self.scratch.extend_from_slice(&bytes[hdr_len..]);
                            self.pending = parts - 1;
                        }
                    }
                }
                pool.put(buf);
            }
        }
        self.refill(pool);
        got
    }

    /// Waits up to `timeout` for a used entry (sleeping on the call eventfd).
    pub fn wait(&mut self, timeout: Duration) -> bool {
        self.q.wait_used(timeout)
    }

    /// Whether used entries are waiting.
    pub fn has_used(&mut self) -> bool {
        self.q.has_used()
    }

    fn deliver_scratch(&mut self, f: &mut dyn FnMut(&[u8])) {
        self.stats.packets += 1;
        self.stats.bytes += self.scratch.len() as u64;
        f(&self.scratch);
        self.scratch.clear();
    }

    fn drop_frame(&mut self) {
        self.stats.malformed += 1;
        self.scratch.clear();
        self.pending = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::GuestMem;
    use crate::test_device::FakeDevice;

    fn rx(size: u16, post_len: u32, mrg: bool) -> (GuestMem, BufPool, RxQueue) {
        let mut mem = GuestMem::new(0, 4 << 20).unwrap();
        let q = SplitQueue::new(&mut mem, size).unwrap();
        let mut pool = BufPool::new(&mut mem, 2 * u32::from(size), post_len).unwrap();
        let layout = NetLayout {
            hdr_len: 12,
            mrg_rxbuf: mrg,
        };
        let mut r = RxQueue::new(q, layout, post_len);
        assert_eq!(r.refill(&mut pool), usize::from(size));
        (mem, pool, r)
    }

    fn hdr(num_buffers: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        h
    }

    fn collect(r: &mut RxQueue, pool: &mut BufPool) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        r.recv_frames(pool, 64, &mut |f: &[u8]| out.push(f.to_vec()));
        out
    }

    #[test]
    fn merged_frame_is_reassembled_across_bursts() {
        let (_m, mut pool, mut r) = rx(8, 512, true);
        let mut dev = FakeDevice::new(r.queue());
        let bufs = dev.pop_all();
        assert_eq!(bufs.len(), 8);
        assert!(bufs.iter().all(|d| d.write && d.len == 512));
        let frame: Vec<u8> = (0..1600u32).map(|i| (i * 7) as u8).collect();
        let mut wire = hdr(4).to_vec();
        wire.extend_from_slice(&frame);
        let pieces: Vec<&[u8]> = wire.chunks(512).collect();
        assert_eq!(pieces.len(), 4);
        for (p, d) in pieces.iter().zip(&bufs) {
            dev.write(d.addr, p);
        }
        // The device shows the first two buffers before the rest: nothing is delivered yet.
        dev.push_used_batch(&[(bufs[0].id, 512), (bufs[1].id, 512)]);
        assert!(collect(&mut r, &mut pool).is_empty());
        dev.push_used_batch(&[(bufs[2].id, 512), (bufs[3].id, wire.len() as u32 - 1536)]);
        assert_eq!(collect(&mut r, &mut pool), vec![frame]);
        assert_eq!(r.stats().merged, 1);
        // All four buffers went back to the ring.
        assert_eq!(dev.pop_all().len(), 4);
    }

    #[test]
    fn single_buffer_frames_are_lent_in_place_and_raw() {
        let (_m, mut pool, mut r) = rx(8, 2048, true);
        let mut dev = FakeDevice::new(r.queue());
        let bufs = dev.pop_all();
        let mut wire = hdr(1).to_vec();
        wire.extend_from_slice(&[0xab; 100]);
        dev.write(bufs[0].addr, &wire);
        dev.write(bufs[1].addr, &wire);
        dev.push_used_batch(&[(bufs[0].id, 112), (bufs[1].id, 112)]);
        let mut out = [RxFrame::default(); 4];
        let before = pool.available();
        assert_eq!(r.recv_raw(&mut pool, &mut out), 2);
        assert_eq!(out[0].len, 100);
        assert_eq!(pool.bytes(out[0].buf, 112)[12..], [0xab; 100]);
        assert_eq!(pool.addr(out[1].buf), bufs[1].addr);
        assert_eq!(pool.available(), before, "raw frames belong to the caller");
        pool.put(out[0].buf);
        pool.put(out[1].buf);
        assert_eq!(r.refill(&mut pool), 2);
    }

    #[test]
    fn raw_path_drops_multi_buffer_frames_whole() {
        let (_m, mut pool, mut r) = rx(8, 512, true);
        let mut dev = FakeDevice::new(r.queue());
        let bufs = dev.pop_all();
        dev.write(bufs[0].addr, &hdr(2));
        dev.write(bufs[2].addr, &hdr(1));
        dev.push_used_batch(&[(bufs[0].id, 512), (bufs[1].id, 100), (bufs[2].id, 72)]);
        let mut out = [RxFrame::default(); 8];
        assert_eq!(r.recv_raw(&mut pool, &mut out), 1);
        assert_eq!(out[0].len, 60);
        assert_eq!(r.stats().merged_dropped, 1);
    }

    #[test]
    fn without_mrg_num_buffers_is_ignored() {
        let (_m, mut pool, mut r) = rx(16, 2048, false);
        let mut dev = FakeDevice::new(r.queue());
        let bufs = dev.pop_all();
        let frame = vec![0xabu8; 1000];
        let mut wire = hdr(0).to_vec(); // num_buffers is absent without MRG_RXBUF
        wire.extend_from_slice(&frame);
        dev.write(bufs[0].addr, &wire);
        dev.push_used(bufs[0].id, wire.len() as u32);
        assert_eq!(collect(&mut r, &mut pool), vec![frame]);
    }

    #[test]
    fn malformed_entries_are_counted_not_delivered() {
        let (_m, mut pool, mut r) = rx(8, 512, true);
        let mut dev = FakeDevice::new(r.queue());
        let bufs = dev.pop_all();
        dev.push_used(bufs[0].id, 4000); // longer than the buffer
        dev.push_used(bufs[1].id, 5); // shorter than the header
        dev.write(bufs[2].addr, &hdr(0));
        dev.push_used(bufs[2].id, 60); // num_buffers 0
        dev.write(bufs[3].addr, &hdr(1));
        dev.push_used(bufs[3].id, 72);
        assert_eq!(collect(&mut r, &mut pool).len(), 1);
        assert_eq!(r.stats().malformed, 3);
        assert_eq!(dev.pop_all().len(), 4, "every buffer went back to the ring");
    }
}
