// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver side of the tests: guest memory, split rings laid out in it, and the
//! `Vring` the device code sees, pointed at those rings.
//!
//! The rings are built from virtio-queue's mock pieces (`DescriptorTable`,
//! `AvailRing`, `UsedRing`). `MockSplitQueue::create` itself is not used: in
//! virtio-queue 0.18 it places the used ring at the available ring's start plus
//! its entry *count* (not bytes), so the used ring overlaps the upper half of the
//! available ring (rust-vmm/vm-virtio PR #400). [`Ring`] lays the three areas out
//! as the spec does and writes `used_event` itself (the mock's
//! `UsedRing` also computes its event field's offset with 2-byte entries; it only
//! zeroes it once, inside the used entries, before any test writes there).

use std::cell::Cell;
use std::fs::File;

use vhost_user_backend::VringT;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::{AvailRing, DescriptorTable, UsedRing};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::features;
use crate::net::NetLayout;
use crate::port::Notifier;
use crate::seglist::SegList;
use crate::split_ring::{DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use crate::virtqueue::{QueueCache, QueueError, VirtQueue};
use crate::{GuestMemoryAtomicMmap, Vring};

/// Guest RAM: one region `[0, MEM_SIZE)`.
pub const MEM_SIZE: u64 = 4 << 20;
/// Where the first ring of a test goes; buffers are allocated from `BUF_BASE` up.
pub const RING_A: u64 = 0;
/// Where the second ring of a test goes.
pub const RING_B: u64 = 0x4_0000;
const BUF_BASE: u64 = 0x10_0000;

/// A device-readable buffer (TX).
pub const R: u16 = 0;
/// A device-writable buffer (RX).
pub const W: u16 = DESC_F_WRITE;
/// `VRING_AVAIL_F_NO_INTERRUPT`.
pub const NO_INTERRUPT: u16 = 1;

/// Layout of VERSION_1 (12-byte header) with or without MRG_RXBUF.
pub fn v1(mrg_rxbuf: bool) -> NetLayout {
    let mut bits = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
    if mrg_rxbuf {
        bits |= 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    }
    features::layout(bits)
}

/// Legacy layout without MRG_RXBUF: the 10-byte header.
pub fn legacy() -> NetLayout {
    features::layout(0)
}

/// `len` bytes that differ from frame to frame (`seed`) and along the frame.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed.wrapping_mul(31))
        .collect()
}

/// The bytes a segment list holds, in order.
pub fn bytes_of(list: &SegList) -> Vec<u8> {
    let mut out = vec![0u8; list.total() as usize];
    assert_eq!(list.read_at(0, &mut out), list.total());
    out
}

/// Guest memory, seen both as the mock driver writes it and as the device loads it.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub atomic: GuestMemoryAtomicMmap,
    next_buf: Cell<u64>,
}

impl Guest {
    pub fn new() -> Guest {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
        // Both views share the same mappings (regions are reference counted).
        let atomic = GuestMemoryAtomicMmap::new(mem.clone());
        Guest {
            mem,
            atomic,
            next_buf: Cell::new(BUF_BASE),
        }
    }

    /// A fresh, 64-byte aligned guest buffer of `len` bytes, filled with 0xee.
    pub fn alloc(&self, len: u32) -> u64 {
        let gpa = self.next_buf.get();
        let end = gpa + u64::from(len);
        assert!(end <= MEM_SIZE, "test guest memory exhausted");
        self.next_buf.set((end + 63) & !63);
        self.write(gpa, &vec![0xee; len as usize]);
        gpa
    }

    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(gpa)).unwrap();
    }

    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(gpa)).unwrap();
        out
    }

    pub fn read_u16(&self, gpa: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(gpa)).unwrap())
    }

    pub fn write_u16(&self, gpa: u64, v: u16) {
        self.mem.write_obj(v.to_le(), GuestAddress(gpa)).unwrap();
    }

    /// A started, enabled ring of `size` entries with its areas from `base` on.
    pub fn ring(&self, base: u64, size: u16) -> Ring<'_> {
        Ring::new(self, base, size)
    }
}

/// One split ring: the driver's side (mock pieces) and the device's `Vring`.
pub struct Ring<'g> {
    g: &'g Guest,
    desc: DescriptorTable<'g, GuestMemoryMmap>,
    avail: AvailRing<'g, GuestMemoryMmap>,
    used: UsedRing<'g, GuestMemoryMmap>,
    pub vring: Vring,
    pub size: u16,
    pub avail_addr: u64,
    pub used_addr: u64,
    next_desc: u16,
}

impl<'g> Ring<'g> {
    fn new(g: &'g Guest, base: u64, size: u16) -> Ring<'g> {
        let n = u64::from(size);
        let avail_addr = base + 16 * n;
        let used_addr = (avail_addr + 6 + 2 * n + 3) & !3;
        let desc = DescriptorTable::new(&g.mem, GuestAddress(base), size);
        let avail = AvailRing::new(&g.mem, GuestAddress(avail_addr), size);
        let used = UsedRing::new(&g.mem, GuestAddress(used_addr), size);
        let vring = Vring::new(g.atomic.clone(), size).unwrap();
        vring.set_queue_size(size);
        vring.set_queue_info(base, avail_addr, used_addr).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        Ring {
            g,
            desc,
            avail,
            used,
            vring,
            size,
            avail_addr,
            used_addr,
            next_desc: 0,
        }
    }

    /// Puts both sides at index `idx`: the device's next_avail / next_used and the
    /// ring's avail.idx / used.idx, as after a long run.
    pub fn start_at(&self, idx: u16) {
        self.vring.set_queue_next_avail(idx);
        self.vring.set_queue_next_used(idx);
        self.avail.idx().store(idx);
        self.used.idx().store(idx);
    }

    pub fn set_event_idx(&self, on: bool) {
        self.vring.set_queue_event_idx(on);
    }

    /// Opens a burst the way a polling thread does. Each call maps the ring afresh
    /// with a cache of its own, leaked (a few hundred bytes, tests only), so that a
    /// test can keep using the ring while the burst is open.
    pub fn open(&self) -> Result<Option<VirtQueue<'_>>, QueueError> {
        let cache: &'static mut QueueCache = Box::leak(Box::default());
        cache.map(&self.g.atomic);
        cache.open(&self.vring, 0, Notifier::detached())
    }

    /// [`Ring::open`] on a ring that must be running.
    pub fn burst(&self) -> VirtQueue<'_> {
        self.open().expect("ring maps").expect("ring is running")
    }

    /// Writes descriptor `index` of the ring's table.
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let d = Descriptor::new(addr, len, flags, next);
        self.desc.store(index, RawDescriptor::from(d)).unwrap();
    }

    /// Writes `bufs` (address, length, flags) as one chain at the next table slots,
    /// linked with NEXT, and returns its head without making it available.
    pub fn write_chain(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        assert!(!bufs.is_empty() && bufs.len() <= usize::from(self.size));
        let head = self.next_desc;
        let mut index = head;
        for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
            let next = (index + 1) % self.size;
            let more = if i + 1 < bufs.len() { DESC_F_NEXT } else { 0 };
            self.set_desc(index, addr, len, flags | more, next);
            index = next;
        }
        self.next_desc = index;
        head
    }

    /// Offers `head` in the next available slot and bumps avail.idx.
    pub fn make_available(&self, head: u16) {
        let idx = self.avail.idx().load();
        let slot = usize::from(idx % self.size);
        self.avail.ring().ref_at(slot).unwrap().store(head);
        self.avail.idx().store(idx.wrapping_add(1));
    }

    /// [`Ring::write_chain`] and [`Ring::make_available`].
    pub fn add_chain(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.write_chain(bufs);
        self.make_available(head);
        head
    }

    /// Writes `entries` into a new indirect table (linked with NEXT, flags kept) and
    /// offers one INDIRECT descriptor pointing at it. Returns the head.
    pub fn add_indirect(&mut self, entries: &[(u64, u32, u16)]) -> u16 {
        let table = self.g.alloc(16 * entries.len() as u32);
        let t = DescriptorTable::new(&self.g.mem, GuestAddress(table), entries.len() as u16);
        for (i, &(addr, len, flags)) in entries.iter().enumerate() {
            let more = if i + 1 < entries.len() {
                DESC_F_NEXT
            } else {
                0
            };
            let d = Descriptor::new(addr, len, flags | more, i as u16 + 1);
            t.store(i as u16, RawDescriptor::from(d)).unwrap();
        }
        self.add_chain(&[(table, 16 * entries.len() as u32, DESC_F_INDIRECT)])
    }

    /// Places a virtio-net header (`hdr_len` zero bytes) and `frame` in guest
    /// buffers cut at `cuts` (lengths; the rest goes in one last buffer).
    /// Returns the descriptors, ready for [`Ring::add_chain`] or [`Ring::add_indirect`].
    pub fn tx_buffers(&self, hdr_len: u32, frame: &[u8], cuts: &[u32]) -> Vec<(u64, u32, u16)> {
        let mut bytes = vec![0u8; hdr_len as usize];
        bytes.extend_from_slice(frame);
        let mut bufs = Vec::new();
        let mut rest = &bytes[..];
        for &cut in cuts {
            let (now, later) = rest.split_at(cut as usize);
            bufs.push(now);
            rest = later;
        }
        if !rest.is_empty() {
            bufs.push(rest);
        }
        bufs.iter()
            .map(|b| {
                let gpa = self.g.alloc(b.len() as u32);
                self.g.write(gpa, b);
                (gpa, b.len() as u32, R)
            })
            .collect()
    }

    /// Offers a TX frame as one chain, see [`Ring::tx_buffers`]. Returns the head.
    pub fn add_tx_frame(&mut self, hdr_len: u32, frame: &[u8], cuts: &[u32]) -> u16 {
        let bufs = self.tx_buffers(hdr_len, frame, cuts);
        self.add_chain(&bufs)
    }

    /// Offers `count` RX chains of one `size`-byte buffer each; returns (head, gpa).
    pub fn add_rx_buffers(&mut self, count: usize, size: u32) -> Vec<(u16, u64)> {
        (0..count)
            .map(|_| {
                let gpa = self.g.alloc(size);
                (self.add_chain(&[(gpa, size, W)]), gpa)
            })
            .collect()
    }

    pub fn avail_idx(&self) -> u16 {
        self.avail.idx().load()
    }

    /// Sets avail.idx directly (a driver that misbehaves).
    pub fn set_avail_idx(&self, idx: u16) {
        self.avail.idx().store(idx);
    }

    /// `used.idx` as the driver reads it.
    pub fn used_idx(&self) -> u16 {
        self.used.idx().load()
    }

    /// Used-ring entry at index `pos` (taken modulo the size): (id, len).
    pub fn used_elem(&self, pos: u16) -> (u32, u32) {
        let e = self
            .used
            .ring()
            .ref_at(usize::from(pos % self.size))
            .unwrap()
            .load();
        (e.id(), e.len())
    }

    /// `used.flags` as the driver reads it.
    pub fn used_flags(&self) -> u16 {
        self.g.read_u16(self.used_addr)
    }

    /// The driver's `used_event` (EVENT_IDX interrupt threshold).
    pub fn set_used_event(&self, v: u16) {
        self.g
            .write_u16(self.avail_addr + 4 + 2 * u64::from(self.size), v);
    }

    /// `avail.flags` (NO_INTERRUPT without EVENT_IDX).
    pub fn set_avail_flags(&self, v: u16) {
        self.g.write_u16(self.avail_addr, v);
    }

    /// The device's next available index as the control plane would read it.
    pub fn device_next_avail(&self) -> u16 {
        self.vring.queue_next_avail()
    }

    /// Attaches a call eventfd and returns our end of it, see [`interrupts`].
    pub fn attach_call(&self) -> EventFd {
        let ours = EventFd::new(EFD_NONBLOCK).unwrap();
        self.vring
            .set_call(Some(into_file(ours.try_clone().unwrap())));
        ours
    }
}

/// Interrupts signalled since the last call (the eventfd's counter, then reset).
pub fn interrupts(call: &EventFd) -> u64 {
    call.read().unwrap_or(0)
}

#[allow(unsafe_code)] // vmm-sys-util's EventFd has no safe conversion into a File.
fn into_file(fd: EventFd) -> File {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `into_raw_fd` hands over sole ownership of an open descriptor, which
    // the File then owns and closes.
    unsafe { File::from_raw_fd(fd.into_raw_fd()) }
}
