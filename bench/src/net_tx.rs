//! Transmit: frames into TX descriptor chains, one publish (and at most one kick) per burst.
//!
//! Each frame is a virtio-net header (all zero: no offloads) followed by the frame bytes,
//! split over as many descriptor buffers as it needs. Chains are reclaimed from the used
//! ring at the start of every burst; nothing is allocated per frame.

use std::time::{Duration, Instant};

use vm_memory::{Address, Bytes};

use crate::split_queue::SplitQueue;
use crate::virtio_net::NetLayout;

/// An all-zero header: no checksum or segmentation offload, `num_buffers` unused on TX.
const ZERO_HDR: [u8; 12] = [0; 12];

/// Transmit counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxStats {
    /// Frames placed in the ring.
    pub packets: u64,
    /// Their Ethernet bytes (no virtio-net header).
    pub bytes: u64,
    /// Bursts cut short because the ring had too few free descriptors.
    pub ring_full: u64,
    /// Chains the device has returned.
    pub completed: u64,
}

/// The TX queue of one device.
pub struct TxQueue {
    q: SplitQueue,
    layout: NetLayout,
    stats: TxStats,
}

impl TxQueue {
    /// Wraps a laid-out queue.
    pub fn new(q: SplitQueue, layout: NetLayout) -> Self {
        TxQueue {
            q,
            layout,
            stats: TxStats::default(),
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
    pub fn stats(&self) -> TxStats {
        self.stats
    }

    /// Chains handed to the device and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.q.size() - self.q.num_free()
    }

    /// Takes back every chain the device is done with; returns how many.
    pub fn reclaim(&mut self) -> usize {
        let mut n = 0;
        while self.q.pop_used().is_some() {
            n += 1;
        }
        self.stats.completed += n as u64;
        n
    }

    /// Queues as many of `frames` as fit, in order, publishes them once and kicks if the
    /// device wants it. Returns how many were queued.
    pub fn send_burst(&mut self, frames: &[&[u8]]) -> usize {
        self.reclaim();
        let hdr = &ZERO_HDR[..self.layout.hdr_len];
        let buf_size = self.q.buf_size() as usize;
        let mut sent = 0;
        for frame in frames {
            let total = hdr.len() + frame.len();
            let descs = total.div_ceil(buf_size);
            let Ok(descs) = u16::try_from(descs) else {
                break;
            };
            let pushed = self.q.push_chain(descs, false, |i, mem, addr| {
                // This buffer holds bytes [start, end) of header ++ frame.
                let start = i as usize * buf_size;
                let end = (start + buf_size).min(total);
                let mut at = addr;
                if start < hdr.len() {
                    let h = &hdr[start..hdr.len().min(end)];
                    mem.write_slice(h, at)
                        .expect("TX buffer lies in guest memory");
                    at = at.unchecked_add(h.len() as u64);
                }
                let f_start = start.max(hdr.len()) - hdr.len();
                let f_end = end - hdr.len();
                mem.write_slice(&frame[f_start..f_end], at)
                    .expect("TX buffer lies in guest memory");
                (end - start) as u32
            });
            if pushed.is_none() {
                self.stats.ring_full += 1;
                break;
            }
            self.stats.packets += 1;
            self.stats.bytes += frame.len() as u64;
            sent += 1;
        }
        self.q.publish();
        sent
    }

    /// Waits until the device has returned every chain; false on timeout.
    pub fn wait_done(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            self.reclaim();
            if self.in_flight() == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.q.wait_used(left.min(Duration::from_millis(10)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_mem::GuestMem;
    use crate::test_device::FakeDevice;

    fn tx(buf_size: u32, hdr_len: usize) -> (GuestMem, TxQueue) {
        let mut mem = GuestMem::new(0, 4 << 20).unwrap();
        let q = SplitQueue::new(&mut mem, 8, buf_size).unwrap();
        let layout = NetLayout {
            hdr_len,
            mrg_rxbuf: hdr_len == 12,
        };
        (mem, TxQueue::new(q, layout))
    }

    fn gather(dev: &FakeDevice, chain: &[crate::test_device::Desc]) -> Vec<u8> {
        chain
            .iter()
            .flat_map(|d| dev.read(d.addr, d.len as usize))
            .collect()
    }

    #[test]
    fn frame_follows_a_zero_header() {
        let (_m, mut t) = tx(2048, 12);
        let mut dev = FakeDevice::new(t.queue());
        let frame: Vec<u8> = (0..60u8).collect();
        assert_eq!(t.send_burst(&[&frame]), 1);
        let chains = dev.pop_all();
        assert_eq!(chains.len(), 1);
        assert!(!chains[0][0].write);
        let bytes = gather(&dev, &chains[0]);
        assert_eq!(&bytes[..12], &[0; 12]);
        assert_eq!(&bytes[12..], &frame[..]);
    }

    #[test]
    fn large_frames_span_descriptors_and_ring_fills() {
        let (_m, mut t) = tx(100, 10);
        let mut dev = FakeDevice::new(t.queue());
        let big: Vec<u8> = (0..500u32).map(|i| i as u8).collect();
        // 510 bytes over 100-byte buffers: 6 descriptors; a second one no longer fits.
        assert_eq!(t.send_burst(&[&big, &big]), 1);
        assert_eq!(t.stats().ring_full, 1);
        let chains = dev.pop_all();
        assert_eq!(chains[0].len(), 6);
        let bytes = gather(&dev, &chains[0]);
        assert_eq!(bytes.len(), 510);
        assert_eq!(&bytes[10..], &big[..]);
        dev.push_used(chains[0][0].id, 0);
        assert!(t.wait_done(Duration::from_millis(100)));
        assert_eq!(t.send_burst(&[&big]), 1);
    }
}
