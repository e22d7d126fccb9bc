//! Receive: keep the RX ring full of buffers, turn used entries back into frames.
//!
//! With MRG_RXBUF every RX chain is one buffer and a frame may span `num_buffers` used
//! entries; without it every chain holds enough buffers for the largest frame. A frame is
//! copied into one reusable scratch buffer (the one copy; no allocation per frame) and
//! handed to the caller; the buffers go straight back to the ring, published once per burst.

use std::time::Duration;

use vm_memory::Bytes;

use crate::split_queue::SplitQueue;
use crate::virtio_net::NetLayout;

/// Receive counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    /// Frames delivered to the caller.
    pub packets: u64,
    /// Their Ethernet bytes (no virtio-net header).
    pub bytes: u64,
    /// Frames that arrived in more than one buffer (MRG_RXBUF).
    pub merged: u64,
    /// Used entries that made no sense (length beyond the chain, shorter than the header,
    /// `num_buffers` of 0); the frame they belonged to is dropped.
    pub malformed: u64,
}

/// The RX queue of one device.
pub struct RxQueue {
    q: SplitQueue,
    layout: NetLayout,
    chain_descs: u16,
    scratch: Vec<u8>,
    /// Used entries still due for the frame in `scratch` (MRG_RXBUF), 0 between frames.
    pending: u16,
    parts: u16,
    stats: RxStats,
}

impl RxQueue {
    /// Wraps a laid-out queue; `max_frame` sizes the chains when frames cannot be merged.
    pub fn new(q: SplitQueue, layout: NetLayout, max_frame: usize) -> Self {
        let chain_descs = if layout.mrg_rxbuf {
            1
        } else {
            let descs = (layout.hdr_len + max_frame).div_ceil(q.buf_size() as usize);
            descs.clamp(1, q.size() as usize) as u16
        };
        RxQueue {
            q,
            layout,
            chain_descs,
            scratch: Vec::with_capacity(layout.hdr_len + max_frame.max(9018)),
            pending: 0,
            parts: 0,
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

    /// Buffers per RX chain.
    pub fn chain_descs(&self) -> u16 {
        self.chain_descs
    }

    /// Posts every free descriptor as an RX buffer and publishes them.
    pub fn refill(&mut self) {
        let len = self.q.buf_size();
        while self.q.num_free() >= self.chain_descs {
            self.q.push_chain(self.chain_descs, true, |_, _, _| len);
        }
        self.q.publish();
    }

    /// Hands up to `max` received frames to `f` (Ethernet bytes, header stripped), then
    /// reposts the buffers. Returns the number of frames.
    pub fn recv_burst(&mut self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let hdr_len = self.layout.hdr_len;
        let mut got = 0;
        while got < max {
            let Some(used) = self.q.pop_used() else {
                break;
            };
            if !self.append(used.head, used.descs, used.len) {
                self.drop_frame();
                continue;
            }
            if self.pending == 0 {
                // First buffer of a frame: its header says how many buffers follow.
                if self.scratch.len() < hdr_len {
                    self.drop_frame();
                    continue;
                }
                let n = self.layout.num_buffers(&self.scratch[..hdr_len]);
                if n == 0 {
                    self.drop_frame();
                    continue;
                }
                self.pending = n;
            }
            self.pending -= 1;
            self.parts += 1;
            if self.pending > 0 {
                continue;
            }
            let frame = &self.scratch[hdr_len..];
            self.stats.packets += 1;
            self.stats.bytes += frame.len() as u64;
            if self.parts > 1 {
                self.stats.merged += 1;
            }
            f(frame);
            got += 1;
            self.scratch.clear();
            self.parts = 0;
        }
        self.refill();
        got
    }

    /// Waits up to `timeout` for a used entry.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        self.q.wait_used(timeout)
    }

    /// Appends the `len` bytes the device wrote into the chain at `head` to the scratch
    /// buffer; false when `len` exceeds the chain.
    fn append(&mut self, head: u16, descs: u16, len: u32) -> bool {
        let buf_size = self.q.buf_size();
        if u64::from(len) > u64::from(buf_size) * u64::from(descs) {
            return false;
        }
        let mut left = len;
        for i in 0..descs {
            if left == 0 {
                break;
            }
            let take = left.min(buf_size);
            let id = self.q.chain_desc(head, i);
            let start = self.scratch.len();
            self.scratch.resize(start + take as usize, 0);
            self.q
                .memory()
                .read_slice(&mut self.scratch[start..], self.q.buf_addr(id))
                .expect("RX buffer lies in guest memory");
            left -= take;
        }
        true
    }

    fn drop_frame(&mut self) {
        self.stats.malformed += 1;
        self.scratch.clear();
        self.pending = 0;
        self.parts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::GuestMem;
    use crate::test_device::FakeDevice;

    fn rx(size: u16, buf_size: u32, mrg: bool) -> (GuestMem, RxQueue) {
        let mut mem = GuestMem::new(0, 4 << 20).unwrap();
        let q = SplitQueue::new(&mut mem, size, buf_size).unwrap();
        let layout = NetLayout {
            hdr_len: 12,
            mrg_rxbuf: mrg,
        };
        let mut r = RxQueue::new(q, layout, 1514);
        r.refill();
        (mem, r)
    }

    fn hdr(num_buffers: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        h
    }

    fn collect(r: &mut RxQueue) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        r.recv_burst(64, &mut |f: &[u8]| out.push(f.to_vec()));
        out
    }

    #[test]
    fn merged_frame_is_reassembled_across_bursts() {
        let (_m, mut r) = rx(8, 512, true);
        let mut dev = FakeDevice::new(r.queue());
        let bufs = dev.pop_all();
        assert_eq!(bufs.len(), 8);
        let frame: Vec<u8> = (0..1600u32).map(|i| (i * 7) as u8).collect();
        let mut wire = hdr(4).to_vec();
        wire.extend_from_slice(&frame);
        let pieces: Vec<&[u8]> = wire.chunks(512).collect();
        assert_eq!(pieces.len(), 4);
        for (p, chain) in pieces.iter().zip(&bufs) {
            dev.write(chain[0].addr, p);
        }
        // The device shows the first two buffers before the rest: nothing is delivered yet.
        dev.push_used_batch(&[(bufs[0][0].id, 512), (bufs[1][0].id, 512)]);
        assert!(collect(&mut r).is_empty());
        dev.push_used_batch(&[
            (bufs[2][0].id, 512),
            (bufs[3][0].id, wire.len() as u32 - 1536),
        ]);
        assert_eq!(collect(&mut r), vec![frame]);
        assert_eq!(r.stats().merged, 1);
        // All four buffers went back to the ring.
        assert_eq!(dev.pop_all().len(), 4);
    }

    #[test]
    fn without_mrg_chains_hold_a_whole_frame() {
        let (_m, mut r) = rx(16, 512, false);
        assert_eq!(r.chain_descs(), 3); // 12 + 1514 over 512-byte buffers
        let mut dev = FakeDevice::new(r.queue());
        let chains = dev.pop_all();
        assert_eq!(chains.len(), 5);
        let frame = vec![0xabu8; 1000];
        let mut wire = hdr(0).to_vec(); // num_buffers is ignored without MRG_RXBUF
        wire.extend_from_slice(&frame);
        for (piece, d) in wire.chunks(512).zip(&chains[0]) {
            dev.write(d.addr, piece);
        }
        dev.push_used(chains[0][0].id, wire.len() as u32);
        assert_eq!(collect(&mut r), vec![frame]);
    }

    #[test]
    fn malformed_entries_are_counted_not_delivered() {
        let (_m, mut r) = rx(8, 512, true);
        let mut dev = FakeDevice::new(r.queue());
        let bufs = dev.pop_all();
        dev.push_used(bufs[0][0].id, 4000); // longer than the buffer
        dev.push_used(bufs[1][0].id, 5); // shorter than the header
        dev.write(bufs[2][0].addr, &hdr(0));
        dev.push_used(bufs[2][0].id, 60); // num_buffers 0
        dev.write(bufs[3][0].addr, &hdr(1));
        dev.push_used(bufs[3][0].id, 72);
        assert_eq!(collect(&mut r).len(), 1);
        assert_eq!(r.stats().malformed, 3);
    }
}
