// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Microbenchmarks of the data path, to judge a change in seconds:
//! `cargo bench -p vpmd-backend` (about 40 s), or add a filter such as `burst`.
//!
//! - `burst/*`: one burst of 32 frames taken from a TX ring and delivered into an
//!   RX ring: both `VirtQueue::open`s, chain walks, the copy, used entries, the
//!   two `used.idx` publishes. The rings are filled once; between iterations the
//!   "driver" only moves each `avail.idx` on by 32 (its slot `i` always holds
//!   head `i`), so nothing is allocated and only the device side is measured.
//! - `chain_walk/*`: `chain::walk` of a one-descriptor chain and of an indirect
//!   table of four.
//! - `seglist_copy/*`: the frame copy, one source segment into 4 KiB segments.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vhost_user_backend::VringT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vpmd_backend::chain;
use vpmd_backend::guest_mem::{HostBuf, MemMap};
use vpmd_backend::net::{deliver_rx_frame, take_tx_frame, NetLayout, RxScratch};
use vpmd_backend::port::Notifier;
use vpmd_backend::seglist::{self, Cursor, SegList};
use vpmd_backend::split_ring::{SplitRing, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};
use vpmd_backend::virtqueue::QueueCache;
use vpmd_backend::{GuestMemoryAtomicMmap, Vring};

const QSIZE: u16 = 256;
const BURST: u16 = 32;
const MEM_SIZE: usize = 16 << 20;
const TX_RING: u64 = 0;
const RX_RING: u64 = 0x1_0000;
const BUFS: u64 = 0x10_0000;
/// VERSION_1 + MRG_RXBUF, as Linux and DPDK's virtio-user negotiate.
const LAYOUT: NetLayout = NetLayout {
    hdr_len: 12,
    mrg_rxbuf: true,
    offloads: vpmd_backend::net::Offloads::NONE,
};

fn guest() -> (GuestMemoryMmap, GuestMemoryAtomicMmap) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let atomic = GuestMemoryAtomicMmap::new(mem.clone());
    (mem, atomic)
}

fn write_desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16) {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&(i + 1).to_le_bytes());
    mem.write_slice(&raw, GuestAddress(table + 16 * u64::from(i)))
        .unwrap();
}

/// Ring area addresses: (desc, avail, used).
fn areas(base: u64) -> (u64, u64, u64) {
    let n = u64::from(QSIZE);
    (base, base + 16 * n, (base + 16 * n + 6 + 2 * n + 3) & !3)
}

/// A running ring whose descriptor `i` is one buffer of `buf_len` bytes at
/// `bufs + i * stride`, and whose available slot `i` holds head `i`.
fn ring(
    mem: &GuestMemoryMmap,
    atomic: &GuestMemoryAtomicMmap,
    base: u64,
    bufs: u64,
    buf_len: u32,
    flags: u16,
) -> Vring {
    let (desc, avail, used) = areas(base);
    let stride = (u64::from(buf_len) + 4095) & !4095;
    for i in 0..QSIZE {
        write_desc(mem, desc, i, bufs + u64::from(i) * stride, buf_len, flags);
        mem.write_obj(i.to_le(), GuestAddress(avail + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    let vring = Vring::new(atomic.clone(), QSIZE).unwrap();
    vring.set_queue_size(QSIZE);
    vring.set_queue_info(desc, avail, used).unwrap();
    vring.set_queue_event_idx(true);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    vring
}

/// The driver offers `n` more chains: one store of avail.idx.
fn offer(mem: &GuestMemoryMmap, base: u64, n: u16) {
    let idx_addr = GuestAddress(areas(base).1 + 2);
    let idx: u16 = mem.read_obj(idx_addr).unwrap();
    mem.write_obj(u16::from_le(idx).wrapping_add(n).to_le(), idx_addr)
        .unwrap();
}

fn bench_burst(c: &mut Criterion) {
    let mut g = c.benchmark_group("burst");
    g.throughput(Throughput::Elements(u64::from(BURST)));
    // (frame length, RX buffer length, RX chains per frame)
    for (frame_len, rx_len, rx_per_frame) in
        [(64u32, 2048u32, 1u16), (1518, 2048, 1), (9000, 4096, 3)]
    {
        let (mem, atomic) = guest();
        let tx_len = LAYOUT.hdr_len + frame_len;
        let tx = ring(&mem, &atomic, TX_RING, BUFS, tx_len, 0);
        let rx_bufs = BUFS + u64::from(QSIZE) * ((u64::from(tx_len) + 4095) & !4095);
        let rx = ring(&mem, &atomic, RX_RING, rx_bufs, rx_len, DESC_F_WRITE);
        let mut frame = SegList::default();
        let mut scratch = RxScratch::new();
        let (mut tcache, mut rcache) = (QueueCache::default(), QueueCache::default());
        tcache.map(&atomic);
        rcache.map(&atomic);
        g.bench_function(format!("{frame_len}B"), |b| {
            b.iter(|| {
                offer(&mem, TX_RING, BURST);
                offer(&mem, RX_RING, BURST * rx_per_frame);
                let detached = Notifier::detached();
                let mut tq = tcache.open(&tx, 1, detached).unwrap().unwrap();
                let mut rq = rcache.open(&rx, 0, detached).unwrap().unwrap();
                while let Some(head) = tq.pop() {
                    let len = take_tx_frame(&tq, head, LAYOUT, &mut frame).unwrap();
                    deliver_rx_frame(&mut rq, LAYOUT, &frame, len, &mut scratch).unwrap();
                    tq.push_used(head, 0);
                }
                assert_eq!(rq.pending(), 0);
                // dropping both publishes their used entries
            });
        });
    }
    g.finish();
}

fn bench_chain_walk(c: &mut Criterion) {
    let mut g = c.benchmark_group("chain_walk");
    g.throughput(Throughput::Elements(1));
    let (mem, _) = guest();
    let (desc, avail, used) = areas(TX_RING);
    write_desc(&mem, desc, 0, BUFS, 1530, 0);
    let table = BUFS + 0x1000;
    write_desc(&mem, desc, 1, table, 4 * 16, DESC_F_INDIRECT);
    for i in 0..4u16 {
        let flags = if i < 3 { DESC_F_NEXT } else { 0 };
        write_desc(
            &mem,
            table,
            i,
            BUFS + 0x2000 + 0x800 * u64::from(i),
            400,
            flags,
        );
    }
    // SAFETY: `mem` lives to the end of this function, past every use of `map`,
    // `ring` and `out`.
    let map = unsafe { MemMap::new(&mem) };
    // SAFETY: as above, for the ring.
    let ring = unsafe { SplitRing::new(&map, QSIZE, desc, avail, used) }.unwrap();
    let mut out = SegList::default();
    for (name, head, segs) in [("1desc", 0u16, 1usize), ("indirect4", 1, 4)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                chain::walk::<false>(&ring, &map, black_box(head), false, 0, &mut out, &mut [])
                    .unwrap();
                assert_eq!(out.segs().len(), segs);
            });
        });
    }
    g.finish();
}

fn bench_copy(c: &mut Criterion) {
    let mut g = c.benchmark_group("seglist_copy");
    for len in [64usize, 1518, 9000] {
        let mut src_buf = vec![0x5au8; len];
        let mut dst_buf = vec![0u8; len.next_multiple_of(4096)];
        let mut src = SegList::default();
        // SAFETY: `src` and `dst` are used only in this iteration, while the
        // buffers live and are not touched otherwise.
        src.push(unsafe { HostBuf::from_slice(&mut src_buf) });
        let mut dst = SegList::default();
        for chunk in dst_buf.chunks_mut(4096) {
            // SAFETY: as above.
            dst.push(unsafe { HostBuf::from_slice(chunk) });
        }
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("{len}B"), |b| {
            b.iter(|| {
                let (mut dp, mut sp) = (Cursor::default(), Cursor::default());
                let n = seglist::copy(&dst, &mut dp, &src, &mut sp, black_box(len as u32));
                assert_eq!(n as usize, len);
            });
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(700))
        .measurement_time(Duration::from_secs(2))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_burst, bench_chain_walk, bench_copy
}
criterion_main!(benches);
