// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
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
//!
//! A racing guest (flag bit 4 of header byte 10): the input's last byte is a
//! control byte (`& 31`: mutation count, `>> 5`: how many rounds), and the
//! mutations (8 bytes each) sit right before it, inside the memory image. While
//! the burst runs, a second thread plays a driver that keeps rewriting descriptors,
//! available-ring slots, `avail.idx`, used-ring bytes or any guest bytes (indirect
//! tables, buffers): each round writes every mutation's value, the next round the
//! bytes that were there before, so a device that read a field twice would see
//! two different values. vpmd must read each shared field once; the checks above
//! hold whatever the other thread does. The mutator's loop is bounded (at most
//! 2 x 449 rounds of 31 writes), is running before the queue is opened and is
//! joined before the next input: which interleaving a run gets varies, what it can
//! get is fixed by the input.
#![no_main]
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vhost_user_backend::VringT;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};
use vpmd_backend::guest_mem::HostBuf;
use vpmd_backend::net::{self, NetLayout, RxScratch};
use vpmd_backend::port::Notifier;
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
/// Header byte 10, bit 4: a second thread mutates guest memory during the burst.
const FLAG_RACE: u8 = 16;
/// Bytes of one mutation: kind, index (2), field, value (4).
const MUTATION: usize = 8;

struct Guest {
    base: usize,
    mem: GuestMemoryMmap,
}

// SAFETY: the reservation is process-lifetime and only touched through `mem` (which
// is Send + Sync) and plain byte copies: by the fuzzing thread, and during a burst by
// the mutator thread, which plays the guest (racing vpmd is what it is for).
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

/// The host address of guest range `[gpa, gpa + n)`, when it lies inside one region.
fn host_range(g: &Guest, gpa: u64, n: usize) -> Option<*mut u8> {
    REGIONS.iter().find_map(|&(start, len, off)| {
        let rel = gpa.checked_sub(start)?;
        (rel + n as u64 <= len as u64).then(|| (g.base + off + rel as usize) as *mut u8)
    })
}

/// One write the racing driver repeats: `bytes` of `value` at `host`, and what was
/// there before.
#[derive(Clone, Copy)]
struct Mutation {
    host: *mut u8,
    bytes: usize,
    value: [u8; 4],
    before: [u8; 4],
}

/// Decodes the mutations at the input's tail (see the module doc) against the
/// ring's layout. Those outside guest memory are dropped.
fn mutations(
    g: &Guest,
    data: &[u8],
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
) -> (Vec<Mutation>, usize) {
    let Some((&ctl, body)) = data[HEADER..].split_last() else {
        return (Vec::new(), 0);
    };
    let n = usize::from(ctl & 31).min(body.len() / MUTATION);
    let rounds = 1 + 64 * usize::from(ctl >> 5);
    let size = u64::from(size.max(1));
    let list = body[body.len() - n * MUTATION..]
        .chunks_exact(MUTATION)
        .filter_map(|m| {
            let index = u64::from(u16::from_le_bytes([m[1], m[2]]));
            let field = m[3];
            let (gpa, bytes) = match m[0] % 5 {
                // avail.idx, or one available-ring slot
                0 if field & 1 != 0 => (avail + 2, 2),
                0 => (avail + 4 + 2 * (index % size), 2),
                // one field of a descriptor: addr (low or high half), len, flags, next
                1 => {
                    let (off, bytes) =
                        [(0, 4), (4, 4), (8, 4), (12, 2), (14, 2)][usize::from(field % 5)];
                    (desc + 16 * (index % size) + off, bytes)
                }
                // the used ring's bytes (flags, idx, entries, avail_event)
                2 => (used + index % (6 + 8 * size), 2),
                // anywhere in guest memory: indirect tables, buffers
                _ => ((u64::from(field & 1) << 16) | index, 4),
            };
            let host = host_range(g, gpa, bytes)?;
            let mut before = [0u8; 4];
            // SAFETY: `host_range` checked that `bytes` bytes at `host` lie inside a
            // region's read-write mapping; no other thread runs yet.
            unsafe { std::ptr::copy_nonoverlapping(host, before.as_mut_ptr(), bytes) };
            Some(Mutation {
                host,
                bytes,
                value: m[4..8].try_into().unwrap(),
                before,
            })
        })
        .collect();
    (list, rounds)
}

/// The racing driver: `rounds` rounds over `list`, new values and old in turn, the
/// old ones last. Raises `started` first, so that the burst overlaps the loop.
fn mutate(list: &[Mutation], rounds: usize, started: &AtomicBool) {
    started.store(true, Ordering::Release);
    for round in 0..rounds * 2 {
        for m in list {
            let src = if round % 2 == 0 { &m.value } else { &m.before };
            for (i, &b) in src[..m.bytes].iter().enumerate() {
                // SAFETY: inside a region's read-write mapping (checked when decoded).
                // vpmd reads these bytes concurrently, as it does a real guest's;
                // volatile keeps every store in the loop.
                unsafe { m.host.add(i).write_volatile(b) };
            }
        }
    }
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
        offloads: net::Offloads::NONE,
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

    let (list, rounds) = if flags & FLAG_RACE != 0 {
        mutations(g, data, size, desc, avail, used)
    } else {
        (Vec::new(), 0)
    };
    if list.is_empty() {
        burst(g, data, &vring, &atomic, rx, layout);
        return;
    }
    struct Shared<'a>(&'a [Mutation]);
    // SAFETY: the pointers lead into the process-lifetime guest mapping, and the
    // mutator only writes there (playing the guest).
    unsafe impl Send for Shared<'_> {}
    let shared = Shared(&list);
    let started = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let started = &started;
        let mutator = scope.spawn(move || {
            let shared = shared;
            mutate(shared.0, rounds, started)
        });
        while !started.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        burst(g, data, &vring, &atomic, rx, layout);
        mutator.join().expect("mutator thread panicked");
    });
});

/// One burst on `vring`, TX or RX, with every check the target makes.
fn burst(
    g: &Guest,
    data: &[u8],
    vring: &Vring,
    atomic: &GuestMemoryAtomicMmap,
    rx: bool,
    layout: NetLayout,
) {
    let mut cache = QueueCache::default();
    cache.map(atomic);
    let Ok(Some(mut q)) = cache.open(vring, usize::from(!rx), Notifier::detached()) else {
        return;
    };
    if rx {
        let mut src_bytes = vec![0x5au8; 1514];
        let mut frame = SegList::default();
        // SAFETY: `frame` is used only in this branch, while `src_bytes` lives and
        // is not touched otherwise.
        frame.push(unsafe { HostBuf::from_slice(&mut src_bytes) });
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
}
