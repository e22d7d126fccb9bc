// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Property tests of the pieces a guest steers: chain walking over arbitrary
//! descriptor tables (never a panic, never a byte outside guest memory, Ok exactly
//! for well-formed chains), segment copies between arbitrary layouts, and
//! translation against arbitrary region maps.
#![allow(unsafe_code)] // Views of test-owned memory: HostBuf, MemMap and SplitRing constructors.

use proptest::collection::vec;
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::chain::{walk, ChainError};
use crate::guest_mem::{HostBuf, MemMap};
use crate::seglist::{self, Cursor, SegList, MAX_SEGS};
use crate::split_ring::{vring_need_event, SplitRing, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

// ---- chain::walk -------------------------------------------------------------

/// Two adjacent regions (a buffer may not straddle them) and one behind a hole.
const REGIONS: [(u64, u64); 3] = [(0, 0x1_0000), (0x1_0000, 0x1_0000), (0x4_0000, 0x1_0000)];
const QSIZE: u16 = 8;
const DESC: u64 = 0x1000;
/// Where the generated indirect tables are written (16 entries each).
const TABLE_A: u64 = 0x2000;
const TABLE_B: u64 = 0x4_0000;

type RawDesc = (u64, u32, u16, u16);

fn desc_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(TABLE_A),
        Just(TABLE_B),
        Just(DESC), // the main table itself as an "indirect table"
        0u64..0x5_0000,
        (0u64..64).prop_map(|d| 0x1_0000 - d), // at the seam of the two regions
        (0u64..64).prop_map(|d| 0x5_0000 - d), // at the end of memory
        any::<u64>(),
    ]
}

fn desc_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        0u32..64,
        (0u32..20).prop_map(|n| 16 * n),
        0u32..0x2_0000,
        any::<u32>(),
    ]
}

fn desc() -> impl Strategy<Value = RawDesc> {
    let flags = prop_oneof![4 => 0u16..8, 1 => any::<u16>()];
    let next = prop_oneof![4 => 0u16..QSIZE + 2, 1 => 0u16..18, 1 => any::<u16>()];
    (desc_addr(), desc_len(), flags, next)
}

fn write_table(mem: &GuestMemoryMmap, at: u64, descs: &[RawDesc]) {
    for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(at + 16 * i as u64))
            .unwrap();
    }
}

/// The region holding all of `[addr, addr + len)`, if one does.
fn region_of(addr: u64, len: u32) -> Option<usize> {
    let end = u128::from(addr) + u128::from(len);
    REGIONS
        .iter()
        .position(|&(s, l)| addr >= s && end <= u128::from(s + l))
}

/// virtio 1.x 2.7.5 read straight off the spec, against vm-memory's own accessors:
/// the guest-physical buffers of a well-formed chain, or why it is not one.
fn reference_walk(
    mem: &GuestMemoryMmap,
    head: u16,
    writable: bool,
) -> Result<Vec<(u64, u32)>, ChainError> {
    use ChainError::*;
    if head >= QSIZE {
        return Err(HeadOutOfRange(head));
    }
    let (mut table, mut entries, mut i) = (DESC, u32::from(QSIZE), u32::from(head));
    let mut budget = entries;
    let mut indirect = false;
    let mut bufs = Vec::new();
    let mut total = 0u64;
    // Every descriptor counts against MAX_SEGS, empty ones included.
    let mut descs = 0usize;
    loop {
        if i >= entries {
            return Err(NextOutOfRange(i as u16));
        }
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
        let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(raw[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes(raw[12..14].try_into().unwrap());
        let next = u16::from_le_bytes(raw[14..16].try_into().unwrap());
        if flags & DESC_F_INDIRECT != 0 {
            match () {
                _ if indirect => return Err(IndirectNested),
                _ if flags & DESC_F_NEXT != 0 => return Err(IndirectWithNext),
                // u16 `next` fields reach at most 65536 entries
                _ if len == 0 || len % 16 != 0 || len / 16 > 65536 => {
                    return Err(IndirectLength(len))
                }
                _ if region_of(addr, len).is_none() => return Err(IndirectOutsideMemory),
                _ => {}
            }
            (table, entries, i, budget, indirect) = (addr, len / 16, 0, len / 16, true);
            continue;
        }
        if budget == 0 {
            return Err(Loop);
        }
        budget -= 1;
        descs += 1;
        if descs > MAX_SEGS {
            return Err(TooManyBuffers);
        }
        if (flags & DESC_F_WRITE != 0) != writable {
            return Err(WrongDirection);
        }
        if len > 0 {
            region_of(addr, len).ok_or(BufferOutsideMemory)?;
            bufs.push((addr, len));
            total += u64::from(len);
            if bufs.len() > MAX_SEGS || total > u64::from(u32::MAX) {
                return Err(TooManyBuffers);
            }
        }
        if flags & DESC_F_NEXT == 0 {
            return Ok(bufs);
        }
        i = u32::from(next);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn walk_agrees_with_the_spec_and_stays_in_memory(
        main in vec(desc(), QSIZE as usize),
        table_a in vec(desc(), 16),
        table_b in vec(desc(), 16),
        head in 0u16..QSIZE + 2,
        writable in any::<bool>(),
    ) {
        let ranges: Vec<_> = REGIONS.iter().map(|&(s, l)| (GuestAddress(s), l as usize)).collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        write_table(&mem, DESC, &main);
        write_table(&mem, TABLE_A, &table_a);
        write_table(&mem, TABLE_B, &table_b);
        // SAFETY: `mem` outlives `map`, `ring` and `out`, all used only in this case.
        let map = unsafe { MemMap::new(&mem) };
        // SAFETY: as above, for the ring.
        let ring = unsafe { SplitRing::new(&map, QSIZE, DESC, 0x1080, 0x1100) }.unwrap();
        let mut out = SegList::default();
        let got = walk::<false>(&ring, &map, head, writable, 0, &mut out, &mut []).map(|_| ());
        let want = reference_walk(&mem, head, writable);
        prop_assert_eq!(got.err(), want.as_ref().err().copied());
        if let Ok(bufs) = want {
            prop_assert_eq!(out.segs().len(), bufs.len());
            prop_assert_eq!(u64::from(out.total()), bufs.iter().map(|b| u64::from(b.1)).sum::<u64>());
            for (seg, &(addr, len)) in out.segs().iter().zip(&bufs) {
                // The host range is the guest range, inside one region's mapping.
                let r = mem.find_region(GuestAddress(addr)).unwrap();
                let host = r.as_ptr() as usize;
                let p = seg.as_ptr() as usize;
                prop_assert_eq!(seg.len(), len);
                prop_assert_eq!(p, host + (addr - r.start_addr().0) as usize);
                prop_assert!(p + len as usize <= host + r.len() as usize);
            }
        }
    }
}

// ---- seglist ----------------------------------------------------------------

fn seg_lens() -> impl Strategy<Value = Vec<usize>> {
    vec(prop_oneof![1 => Just(0usize), 6 => 1usize..48], 0..12)
}

fn make_list(bufs: &mut [Vec<u8>]) -> SegList {
    let mut l = SegList::default();
    for b in bufs.iter_mut() {
        // SAFETY: callers use the list only while `bufs` lives and is not accessed
        // otherwise: they read the buffers only after the list's last use.
        assert!(l.push(unsafe { HostBuf::from_slice(b) }));
    }
    l
}

fn buffers(lens: &[usize], fill: impl Fn(usize) -> u8) -> Vec<Vec<u8>> {
    let mut k = 0;
    lens.iter()
        .map(|&n| {
            (0..n)
                .map(|_| {
                    k += 1;
                    fill(k)
                })
                .collect()
        })
        .collect()
}

proptest! {
    #[test]
    fn copy_moves_exactly_the_bytes_both_sides_hold_in_order(
        src_lens in seg_lens(),
        dst_lens in seg_lens(),
        src_skip in 0u32..80,
        n in prop_oneof![0u32..700, Just(u32::MAX)],
        first_part in 0u32..700,
    ) {
        let mut src_bufs = buffers(&src_lens, |k| (k % 251) as u8 + 1);
        let mut dst_bufs = buffers(&dst_lens, |_| 0);
        let src_flat: Vec<u8> = src_bufs.concat();
        let src = make_list(&mut src_bufs);
        let dst = make_list(&mut dst_bufs);
        let (mut sp, mut dp) = (Cursor::default(), Cursor::default());
        let skipped = seglist::skip(&src, &mut sp, src_skip);
        prop_assert_eq!(skipped, src_skip.min(src.total()));
        // In two calls: the cursors must carry the position over exactly.
        let a = first_part.min(n);
        let mut copied = seglist::copy(&dst, &mut dp, &src, &mut sp, a);
        copied += seglist::copy(&dst, &mut dp, &src, &mut sp, n - a);
        let want = n.min(src.total() - skipped).min(dst.total());
        prop_assert_eq!(copied, want);
        let dst_flat: Vec<u8> = dst_bufs.concat();
        let (w, s) = (want as usize, skipped as usize);
        prop_assert_eq!(&dst_flat[..w], &src_flat[s..s + w]);
        prop_assert!(dst_flat[w..].iter().all(|&b| b == 0), "bytes past the copy untouched");
    }

}

// ---- guest_mem::MemMap ------------------------------------------------------

const PAGE: u64 = 4096;

/// Region layouts: a base, then (gap, length) in pages for up to five regions.
fn region_map() -> impl Strategy<Value = Vec<(u64, u64)>> {
    let base = prop_oneof![
        Just(0u64),
        (0u64..1 << 28).prop_map(|p| p * PAGE),
        Just(u64::MAX - (1 << 30) + 1), // near the top of the address space
    ];
    (base, vec((0u64..3, 1u64..4), 1..5)).prop_map(|(base, shape)| {
        let mut at = base;
        shape
            .into_iter()
            .map(|(gap, len)| {
                let r = (at + gap * PAGE, len * PAGE);
                at = r.0 + r.1;
                r
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn translate_returns_only_whole_ranges_inside_one_region(
        regions in region_map(),
        queries in vec((0usize..5, -300i64..17000, prop_oneof![0u32..300, 0u32..20000, any::<u32>()]), 40),
        wild in vec((any::<u64>(), any::<u32>()), 8),
        align_log in 0u32..5,
    ) {
        let ranges: Vec<_> = regions.iter().map(|&(s, l)| (GuestAddress(s), l as usize)).collect();
        let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        // SAFETY: `mem` outlives `map` and every translation; none is dereferenced.
        let map = unsafe { MemMap::new(&mem) };
        let near = queries.iter().map(|&(r, off, len)| {
            let (s, _) = regions[r % regions.len()];
            (s.wrapping_add_signed(off), len)
        });
        for (gpa, len) in near.chain(wild) {
            let end = u128::from(gpa) + u128::from(len);
            let holder = mem.iter().find(|r| {
                gpa >= r.start_addr().0 && end <= u128::from(r.start_addr().0) + u128::from(r.len())
            });
            let got = map.translate(gpa, len);
            match (got, holder) {
                (Some(b), Some(r)) => {
                    prop_assert_eq!(b.len(), len);
                    let want = r.as_ptr() as usize + (gpa - r.start_addr().0) as usize;
                    prop_assert_eq!(b.as_ptr() as usize, want);
                }
                (None, None) => {}
                (got, _) => prop_assert!(false, "gpa {:#x} len {}: got {:?}", gpa, len, got),
            }
            let align = 1u64 << align_log;
            let aligned = map.translate_aligned(gpa, len, align);
            prop_assert_eq!(aligned.is_some(), got.is_some() && gpa % align == 0);
        }
    }

    #[test]
    fn need_event_is_event_within_old_to_new(event: u16, old: u16, n in 0u16..1024) {
        let new = old.wrapping_add(n);
        // event in [old, new) modulo 2^16
        let want = event.wrapping_sub(old) < n;
        prop_assert_eq!(vring_need_event(event, new, old), want);
    }
}
