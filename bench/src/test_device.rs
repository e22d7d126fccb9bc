// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A minimal device side of a split ring, for unit tests of the driver code.
//!
//! It reads the avail ring and descriptors the driver wrote and writes used entries,
//! over the same guest memory, so the driver's ring handling is tested without a socket.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::split_queue::SplitQueue;

/// One descriptor as the device sees it.
#[derive(Clone, Copy, Debug)]
pub struct Desc {
    pub id: u16,
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// Device-side view of one queue.
pub struct FakeDevice {
    mem: GuestMemoryMmap,
    size: u16,
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    last_avail: u16,
    used_idx: u16,
}

impl FakeDevice {
    pub fn new(q: &SplitQueue) -> Self {
        let (desc, avail, used) = q.ring_addrs();
        FakeDevice {
            mem: q.memory().clone(),
            size: q.size(),
            desc,
            avail,
            used,
            last_avail: 0,
            used_idx: 0,
        }
    }

    /// Takes every descriptor the driver published (this driver's chains are one
    /// descriptor long; a NEXT flag would be a bug).
    pub fn pop_all(&mut self) -> Vec<Desc> {
        let idx: u16 = self
            .mem
            .load(GuestAddress(self.avail.0 + 2), Ordering::Acquire)
            .unwrap();
        let mut descs = Vec::new();
        while self.last_avail != idx {
            let slot = self.avail.0 + 4 + 2 * u64::from(self.last_avail % self.size);
            let id: u16 = self.mem.read_obj(GuestAddress(slot)).unwrap();
            self.last_avail = self.last_avail.wrapping_add(1);
            let at = GuestAddress(self.desc.0 + 16 * u64::from(id));
            let mut d = [0u8; 16];
            self.mem.read_slice(&mut d, at).unwrap();
            let flags = u16::from_le_bytes([d[12], d[13]]);
            assert_eq!(flags & VRING_DESC_F_NEXT as u16, 0, "chained descriptor");
            descs.push(Desc {
                id,
                addr: u64::from_le_bytes(d[0..8].try_into().unwrap()),
                len: u32::from_le_bytes(d[8..12].try_into().unwrap()),
                write: flags & VRING_DESC_F_WRITE as u16 != 0,
            });
        }
        descs
    }

    /// Publishes one used entry.
    pub fn push_used(&mut self, id: u16, len: u32) {
        self.push_used_batch(&[(id, len)]);
    }

    /// Publishes several used entries with one index store, like a burst-mode backend.
    pub fn push_used_batch(&mut self, entries: &[(u16, u32)]) {
        for &(id, len) in entries {
            let slot = self.used.0 + 4 + 8 * u64::from(self.used_idx % self.size);
            self.mem
                .write_obj(u32::from(id), GuestAddress(slot))
                .unwrap();
            self.mem.write_obj(len, GuestAddress(slot + 4)).unwrap();
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        self.mem
            .store(
                self.used_idx,
                GuestAddress(self.used.0 + 2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// Writes `data` into guest memory (device writes into an RX buffer).
    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(addr)).unwrap();
    }

    /// Reads `len` bytes of guest memory (device reads a TX buffer).
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// The driver's `used_event` (where it wants the next interrupt).
    pub fn used_event(&self) -> u16 {
        let at = self.avail.0 + 4 + 2 * u64::from(self.size);
        self.mem.load(GuestAddress(at), Ordering::Acquire).unwrap()
    }

    /// The avail ring's flags (VRING_AVAIL_F_NO_INTERRUPT).
    pub fn avail_flags(&self) -> u16 {
        self.mem.load(self.avail, Ordering::Acquire).unwrap()
    }

    /// Sets `avail_event` (where the device wants the next kick).
    pub fn set_avail_event(&self, idx: u16) {
        let at = self.used.0 + 4 + 8 * u64::from(self.size);
        self.mem
            .store(idx, GuestAddress(at), Ordering::Release)
            .unwrap();
    }

    /// Sets the used ring's flags (VRING_USED_F_NO_NOTIFY).
    pub fn set_used_flags(&self, flags: u16) {
        self.mem.store(flags, self.used, Ordering::Release).unwrap();
    }
}
