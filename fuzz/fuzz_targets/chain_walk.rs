//! Fuzz target: one burst of vpmd's data path on a ring a guest controls completely.
//!
//! The input is a small header (queue size, where the three ring areas are, the
//! device's next index, direction and header layout) followed by the bytes of guest
//! memory: descriptors, ring entries, indirect tables, all fuzzer-chosen. The burst
//! goes through the same code a polling thread runs: `QueueCache::open` (ring
//! checks, `avail.idx` sanity), then `take_tx_frame` (chain walk, header skip) or
//! `deliver_rx_frame` (chain walk, MRG_RXBUF, used entries).
//!
//! Guest memory is three regions, each its own mapping with inaccessible guard
//! pages around it: a buffer that straddles two regions or runs past one is a
//! segfault here, not silent corruption. Every segment vpmd hands out is also
//! checked to lie inside one region.
#![no_main]
#![allow(unsafe_code)]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhost_user_backend::VringT;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vpmd_backend::guest_mem::HostBuf;
use vpmd_backend::net::{self, NetLayout, RxScratch};
use vpmd_backend::seglist::SegList;
use vpmd_backend::virtqueue::QueueCache;
use vpmd_backend::{GuestMemoryAtomicMmap, Vring};

/// (guest address, length, host offset in the reservation): A and B are adjacent in
/// guest-physical space but not on the host; C sits behind a hole.
const REGIONS: [(u64, usize, usize); 3] = [
    (0x0, 0x2000, 0x1000),
    (0x2000, 0x2000, 0x4000),
    (0x1_0000, 0x1000, 0x8000),
];
const RESERVATION: usize = 0xa000;
const HEADER: usize = 12;

struct Guest {
    base: usize,
    mem: GuestMemoryMmap,
}

// SAFETY: the reservation is process-lifetime and only touched through `mem` (which
// is Send + Sync) and plain byte copies in the single fuzzing thread.
unsafe impl Send for Guest {}
// SAFETY: as above.
unsafe impl Sync for Guest {}

fn guest() -> &'static Guest {
    static G: OnceLock<Guest> = OnceLock::new();
    G.get_or_init(|| {
        // SAFETY: a fresh anonymous reservation, no address hint.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                RESERVATION,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as usize;
        let regions = REGIONS
            .iter()
            .map(|&(gpa, len, off)| {
                // SAFETY: [base+off, +len) lies inside our reservation (constants).
                let rc = unsafe {
                    libc::mprotect(
                        (base + off) as *mut _,
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                    )
                };
                assert_eq!(rc, 0);
                // SAFETY: the pointer is page-aligned, valid for `len` bytes for the
                // process's life, and not unmapped by the region (raw mappings are
                // not owned).
                let mapping: MmapRegion = unsafe {
                    MmapRegionBuilder::new(len)
                        .with_raw_mmap_pointer((base + off) as *mut u8)
                        .build()
                        .unwrap()
                };
                GuestRegionMmap::new(mapping, GuestAddress(gpa)).unwrap()
            })
            .collect();
        Guest {
            base,
            mem: GuestMemoryMmap::from_regions(regions).unwrap(),
        }
    })
}

/// Whether `[ptr, ptr + len)` lies inside one region's host mapping.
fn inside_one_region(g: &Guest, b: &HostBuf) -> bool {
    let p = b.as_ptr() as usize;
    REGIONS.iter().any(|&(_, len, off)| {
        let start = g.base + off;
        p >= start && p + b.len() as usize <= start + len
    })
}

fn u16_at(d: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([d[i], d[i + 1]])
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let g = guest();
    // Guest memory: the rest of the input, region after region, zero beyond it.
    let mut rest = &data[HEADER..];
    for &(_, len, off) in &REGIONS {
        let n = rest.len().min(len);
        // SAFETY: the region's host range is mapped read-write and `n` <= its length.
        unsafe {
            let dst = (g.base + off) as *mut u8;
            std::ptr::copy_nonoverlapping(rest.as_ptr(), dst, n);
            std::ptr::write_bytes(dst.add(n), 0, len - n);
        }
        rest = &rest[n..];
    }
    let size = u16_at(data, 0);
    let (desc, avail, used) = (
        u64::from(u16_at(data, 2)) * 2,
        u64::from(u16_at(data, 4)) * 2,
        u64::from(u16_at(data, 6)) * 2,
    );
    let next_avail = u16_at(data, 8);
    let flags = data[10];
    let rx = flags & 1 != 0;
    let layout = NetLayout {
        hdr_len: if flags & 2 != 0 { 10 } else { 12 },
        mrg_rxbuf: flags & 4 != 0,
    };

    let atomic = GuestMemoryAtomicMmap::new(g.mem.clone());
    let Ok(vring) = Vring::new(atomic.clone(), 32768) else {
        return;
    };
    vring.set_queue_size(size);
    if vring.set_queue_info(desc, avail, used).is_err() {
        return;
    }
    vring.set_queue_next_avail(next_avail);
    vring.set_queue_next_used(next_avail);
    vring.set_queue_event_idx(flags & 8 != 0);
    vring.set_queue_ready(true);
    vring.set_enabled(true);

    let mut cache = QueueCache::default();
    let Ok(Some(mut q)) = cache.open(&vring, usize::from(!rx), &atomic, 1) else {
        return;
    };
    if rx {
        let mut src_bytes = vec![0x5au8; 1514];
        let mut frame = SegList::default();
        frame.push(HostBuf::from_slice(&mut src_bytes));
        let len = u32::from(data[11]) * 6;
        let mut scratch = RxScratch::new();
        for _ in 0..64 {
            if net::deliver_rx_frame(&mut q, layout, &frame, len.min(1514), &mut scratch).is_err() {
                break;
            }
        }
    } else {
        let mut frame = SegList::default();
        let mut n = 0;
        while let Some(head) = q.pop() {
            if let Ok(len) = net::take_tx_frame(&q, head, layout, &mut frame) {
                assert_eq!(len, frame.total());
                for seg in frame.segs() {
                    assert!(inside_one_region(g, seg), "segment outside guest memory");
                }
                let mut out = vec![0u8; len as usize];
                assert_eq!(frame.read_at(0, &mut out), len);
            }
            q.push_used(head, 0);
            n += 1;
            if n == 64 {
                break;
            }
        }
    }
});
