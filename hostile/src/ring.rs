// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver side of a split virtqueue, with no rule enforced.
//!
//! [`Ring`] writes descriptors, available-ring entries and `avail.idx` directly into
//! [`GuestRam`]: any address, length, flags, `next`, head or index jump. It also reads
//! back what vpmd did (`used.idx`, used entries).

use crate::mem::GuestRam;

/// `VRING_DESC_F_NEXT`.
pub const NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`.
pub const WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`.
pub const INDIRECT: u16 = 4;

/// Where a ring's three areas are (guest-physical) and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Entries (the SET_VRING_NUM value).
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

impl Layout {
    /// The spec's contiguous layout from `base` on: table, available ring, used ring
    /// (4-aligned).
    pub fn contiguous(base: u64, size: u16) -> Layout {
        let n = u64::from(size);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        Layout {
            size,
            desc: base,
            avail,
            used,
        }
    }

    /// First byte after the used ring.
    pub fn end(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size)
    }
}

/// One descriptor, exactly as written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    /// Buffer address.
    pub addr: u64,
    /// Buffer length.
    pub len: u32,
    /// Flags.
    pub flags: u16,
    /// Next index.
    pub next: u16,
}

impl Desc {
    /// A descriptor.
    pub const fn new(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
        Desc {
            addr,
            len,
            flags,
            next,
        }
    }

    /// Its 16 bytes.
    pub fn bytes(&self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&self.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..14].copy_from_slice(&self.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&self.next.to_le_bytes());
        raw
    }
}

/// A split ring in hostile memory.
pub struct Ring<'m> {
    mem: &'m GuestRam,
    /// Where it is.
    pub layout: Layout,
}

impl<'m> Ring<'m> {
    /// A view of the ring at `layout` in `mem` (fresh memfd pages are zero, so a
    /// new ring is empty).
    pub fn new(mem: &'m GuestRam, layout: Layout) -> Ring<'m> {
        Ring { mem, layout }
    }

    /// Writes descriptor `index` of the ring's own table (index taken as is: the
    /// table must hold it).
    pub fn set_desc(&self, index: u16, d: Desc) {
        self.mem
            .write(self.layout.desc + 16 * u64::from(index), &d.bytes());
    }

    /// Writes a table of descriptors at `gpa` (an indirect table).
    pub fn write_table(&self, gpa: u64, descs: &[Desc]) {
        for (i, d) in descs.iter().enumerate() {
            self.mem.write(gpa + 16 * i as u64, &d.bytes());
        }
    }

    /// `avail.idx`.
    pub fn avail_idx(&self) -> u16 {
        self.mem.load_u16(self.layout.avail + 2)
    }

    /// Sets `avail.idx` (release), without writing entries.
    pub fn set_avail_idx(&self, idx: u16) {
        self.mem.store_u16(self.layout.avail + 2, idx);
    }

    /// Writes available-ring slot `pos` (modulo the size).
    pub fn set_avail_entry(&self, pos: u16, head: u16) {
        let slot = u64::from(pos % self.layout.size);
        self.mem.store_u16(self.layout.avail + 4 + 2 * slot, head);
    }

    /// Offers `heads` in the next slots, then publishes them with one `avail.idx` store.
    pub fn offer(&self, heads: &[u16]) {
        let idx = self.avail_idx();
        for (i, &h) in heads.iter().enumerate() {
            self.set_avail_entry(idx.wrapping_add(i as u16), h);
        }
        self.set_avail_idx(idx.wrapping_add(heads.len() as u16));
    }

    /// `used.idx` as vpmd published it.
    pub fn used_idx(&self) -> u16 {
        self.mem.load_u16(self.layout.used + 2)
    }

    /// Used entry at `pos` (modulo the size): (id, len).
    pub fn used_elem(&self, pos: u16) -> (u32, u32) {
        let at = self.layout.used + 4 + 8 * u64::from(pos % self.layout.size);
        let raw = self.mem.read(at, 8);
        (
            u32::from_le_bytes(raw[0..4].try_into().unwrap()),
            u32::from_le_bytes(raw[4..8].try_into().unwrap()),
        )
    }

    /// Waits until `used.idx` reaches `idx` (wrapping compare), up to `timeout`.
    pub fn wait_used(&self, idx: u16, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if idx.wrapping_sub(self.used_idx()) == 0 || idx.wrapping_sub(self.used_idx()) > 0x8000
            {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
