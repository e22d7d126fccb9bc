// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The delivery half of a macvlan burst: classified frames into VM receive queues,
//! one destination at a time, and out of the uplink.
//!
//! Offloads: a VM receives a frame as a veth peer would ([`offload::send`]: passed
//! through when it negotiated what the frame asks for, else checksummed or segmented
//! here). AF_XDP has no segmentation offload: a TSO frame leaves the uplink
//! segmented in software, each segment built in its UMEM chunk. Checksums go with
//! AF_XDP's transmit metadata where the kernel has it (Linux 6.11+): a frame or
//! segment leaves with its checksum partial and a request for the kernel (or NIC) to
//! fill it in; elsewhere vpmd fills it in while copying. A frame (or segment) larger than a chunk, at a
//! jumbo MTU, is built across several chunks ([`TxChain`], multi-buffer).

use vpmd_backend::net::RxScratch;
use vpmd_backend::offload::csum::Checksum;
use vpmd_backend::offload::segment::{checksum_field, Segmenter};
use vpmd_backend::offload::vnet_hdr::Request;
use vpmd_backend::seglist::SegList;
use vpmd_uplink::tx::{TxBurst, TxChain, XskTransmitter};

use super::decide::Destinations;
use super::UplinkEndpoint;
use crate::counters::{DropReason, OffloadEvent, PortTally};
use crate::fwd::offload::{self, OffloadScratch, SendScratch};
use crate::fwd::{ring_error, steer, Batch, RxTarget, VhostEndpoint, BURST};

/// Delivers each frame `k` of `batch` to the VMs in `dests[k].vms`. Each VM's RX
/// queue is opened once, in ascending port order, and closed before the next one is
/// opened, so no thread ever waits for one receive queue while holding another. A
/// VM with several queue pairs running gets the burst on the pair of the same rank
/// as the queue it came from (`from`: that queue and the source's running queues)
/// when it runs as many as the source, else each frame on one of its running RX
/// queues by the frame's flow hash ([`steer`]), its queues filled one after the
/// other. Offload work is counted in `work` (the sender's).
pub fn to_vms(
    vms: &mut [VhostEndpoint],
    (dests, from): (&[Destinations], Option<(usize, u32)>),
    batch: &mut Batch,
    scratch: (&mut RxScratch, &mut OffloadScratch),
    work: &mut PortTally,
) {
    let mut left = dests.iter().fold(0u64, |m, d| m | d.vms);
    while left != 0 {
        let j = left.trailing_zeros() as usize;
        left &= left - 1;
        let bit = 1u64 << j;
        let vm = &mut vms[j];
        if vm.port.queue_pairs() == 1 {
            to_vm_queue(
                vm,
                0,
                dests,
                batch,
                |k| dests[k].vms & bit != 0,
                (&mut *scratch.0, &mut *scratch.1),
                work,
            );
            continue;
        }
        // Steer first: the VM's running RX queues, read once, and each frame's pick.
        let running = vm
            .cache
            .rings(&vm.port)
            .map_or(0, |v| v.rings().running_rx_queues());
        if let Some(p) = from.and_then(|(q, sent)| steer::same_rank(q, sent, running)) {
            let picked = |k: usize| dests[k].vms & bit != 0;
            to_vm_queue(
                vm,
                p,
                dests,
                batch,
                picked,
                (&mut *scratch.0, &mut *scratch.1),
                work,
            );
            continue;
        }
        let mut pair_of = [u8::MAX; BURST];
        let mut wanted = 0u32;
        for (k, d) in dests.iter().enumerate() {
            if d.vms & bit == 0 {
                continue;
            }
            let mut head = [0u8; steer::HEAD];
            let got = batch.frames[k].read_at(0, &mut head) as usize;
            match steer::pick(steer::flow_hash(&head[..got]), running) {
                Some(p) => {
                    pair_of[k] = p as u8;
                    wanted |= 1 << p;
                }
                None => {
                    // No RX queue running: as for a VM whose driver is down.
                    if d.flood {
                        vm.tally.rx_dropped += 1;
                    }
                    if !batch.delivered[k] {
                        batch.reason[k] = DropReason::PeerDown;
                    }
                }
            }
        }
        while wanted != 0 {
            let p = wanted.trailing_zeros() as usize;
            wanted &= wanted - 1;
            let picked = |k: usize| usize::from(pair_of[k]) == p;
            to_vm_queue(
                vm,
                p,
                dests,
                batch,
                picked,
                (&mut *scratch.0, &mut *scratch.1),
                work,
            );
        }
    }
}

/// Delivers the frames `k` of `batch` that `picked` selects into the RX queue of
/// `vm`'s queue pair `pair`, opened once for them.
fn to_vm_queue(
    vm: &mut VhostEndpoint,
    pair: usize,
    dests: &[Destinations],
    batch: &mut Batch,
    picked: impl Fn(usize) -> bool,
    (rx_scratch, offload_scratch): (&mut RxScratch, &mut OffloadScratch),
    work: &mut PortTally,
) {
    let max_frame = vm.max_frame();
    let mut down = DropReason::PeerDown;
    let mut target = None;
    if let Some(view) = vm.cache.rings(&vm.port) {
        match RxTarget::open_pair(view, pair) {
            Ok(t) => target = t,
            Err(e) => {
                down = DropReason::BadRxDesc;
                ring_error(&mut vm.tally, &mut vm.log, vm.port.name(), "RX", &e);
            }
        }
    }
    for (k, d) in dests.iter().enumerate() {
        if !picked(k) {
            continue;
        }
        let len = batch.lens[k];
        let scratch = SendScratch {
            rx: &mut *rx_scratch,
            offload: &mut *offload_scratch,
        };
        let (frame, tx, plan) = (&batch.frames[k], &batch.offload[k], batch.plans[k].as_ref());
        let sent = offload::send_to(
            target.as_mut().ok_or(down),
            frame,
            len,
            tx,
            plan,
            max_frame,
            scratch,
            work,
            &mut vm.log,
            vm.port.name(),
        );
        if sent.delivered > 0 {
            vm.tally.rx_packets += u64::from(sent.delivered);
            vm.tally.rx_bytes += sent.bytes;
            vm.tally.queues.rx_packets[pair] += u64::from(sent.delivered);
            // Segments of a frame that got in only partly.
            vm.tally.rx_dropped += u64::from(sent.dropped);
            batch.delivered[k] = true;
        } else {
            if d.flood {
                vm.tally.rx_dropped += 1;
            }
            batch.reason[k] = sent.reason;
        }
    }
}

/// Sends each frame `k` of `batch` with `dests[k].uplink` out of the uplink: one
/// copy from the frame's buffers into a UMEM chunk (per segment for a TSO frame),
/// one publish and at most one kick for the burst. Offload work is counted in `work`.
pub fn to_uplink(
    uplink: &mut UplinkEndpoint,
    tx: &mut XskTransmitter,
    dests: &[Destinations],
    batch: &mut Batch,
    work: &mut PortTally,
) {
    // Slots (chunks) for the burst: a frame or segment larger than a chunk
    // takes several.
    let want: usize = dests
        .iter()
        .enumerate()
        .filter(|(_, d)| d.uplink)
        .map(
            |(k, _)| match (&batch.offload[k].request, &batch.plans[k]) {
                (Request::Segment { size, .. }, Some(plan)) => {
                    plan.count() * tx.slots_for(plan.header_len() + usize::from(*size))
                }
                _ => tx.slots_for(batch.lens[k] as usize),
            },
        )
        .sum();
    if want == 0 {
        return;
    }
    let partial_ok = tx.checksum_offload();
    let mut burst = tx.transmit_burst(want);
    for (k, d) in dests.iter().enumerate() {
        if !d.uplink {
            continue;
        }
        let len = batch.lens[k];
        let (sent, lost, reason) = match batch.offload[k].request {
            Request::None | Request::Checksum { .. } if len > uplink.max_frame => {
                (0, 0, DropReason::TooBig)
            }
            Request::None => match copy_out(&mut burst, batch, k, None) {
                Some(()) => (1, 0, DropReason::NoDestination),
                None => (0, 0, DropReason::UplinkBusy),
            },
            Request::Checksum { start, offset } if partial_ok => {
                match copy_out_partial(&mut burst, batch, k, (start, offset)) {
                    Some(()) => {
                        work.offload(OffloadEvent::CsumPassed, 1);
                        (1, 0, DropReason::NoDestination)
                    }
                    None => (0, 0, DropReason::UplinkBusy),
                }
            }
            Request::Checksum { start, offset } => {
                match copy_out(&mut burst, batch, k, Some((start, offset))) {
                    Some(()) => {
                        work.offload(OffloadEvent::SwChecksummed, 1);
                        (1, 0, DropReason::NoDestination)
                    }
                    None => (0, 0, DropReason::UplinkBusy),
                }
            }
            Request::Segment { size, .. } => match &batch.plans[k] {
                Some(plan) if plan.header_len() as u32 + u32::from(size) > uplink.max_frame => {
                    (0, 0, DropReason::TooBig)
                }
                Some(plan) => {
                    let out =
                        segment_out(&mut burst, batch, k, plan, partial_ok, &mut uplink.tally);
                    if out > 0 {
                        work.offload(OffloadEvent::SwSegmented, 1);
                        work.offload(OffloadEvent::SwSegments, plan.count() as u64);
                    }
                    (out, plan.count() as u32 - out, DropReason::UplinkBusy)
                }
                None => (0, 0, DropReason::BadOffload),
            },
        };
        if sent > 0 {
            if !matches!(batch.offload[k].request, Request::Segment { .. }) {
                uplink.tally.rx_packets += 1;
                uplink.tally.rx_bytes += u64::from(len);
            }
            uplink.tally.rx_dropped += u64::from(lost);
            batch.delivered[k] = true;
            continue;
        }
        if d.flood {
            uplink.tally.rx_dropped += 1;
        }
        batch.reason[k] = reason;
    }
}

/// Copies frame `k` into the burst's next chunk (or chunks), filling in the
/// checksum at `checksum` (`csum_start`, `csum_offset`) if the frame asks for one.
/// `None` when the uplink has no free chunk.
fn copy_out(
    burst: &mut TxBurst<'_>,
    batch: &Batch,
    k: usize,
    checksum: Option<(u16, u16)>,
) -> Option<()> {
    let n = batch.lens[k] as usize;
    let src = &batch.frames[k];
    let Some(buf) = burst.buffer().filter(|b| n <= b.len()) else {
        return copy_out_chain(burst, src, n, checksum);
    };
    let copied = src.read_at(0, &mut buf[..n]);
    debug_assert_eq!(copied as usize, n);
    if let Some((start, offset)) = checksum {
        // Checked against the frame by `TxOffload::check`; the copy is ours now.
        let (start, field) = (usize::from(start), usize::from(start) + usize::from(offset));
        let mut sum = Checksum::new();
        sum.add(&buf[start..n]);
        buf[field..field + 2].copy_from_slice(&checksum_field(sum).to_be_bytes());
    }
    burst.commit(n);
    Some(())
}

/// Copies frame `k` (it asks for a checksum: `start`, `offset`) into the burst's
/// next chunk (or chunks) as it is, with a request for the kernel to fill the
/// checksum in (the field holds the pseudo-header sum, as `NEEDS_CSUM` says).
fn copy_out_partial(
    burst: &mut TxBurst<'_>,
    batch: &Batch,
    k: usize,
    (start, offset): (u16, u16),
) -> Option<()> {
    let n = batch.lens[k] as usize;
    let src = &batch.frames[k];
    match burst.buffer() {
        Some(buf) if n <= buf.len() => {
            src.read_at(0, &mut buf[..n]);
            burst.commit_partial(n, start, offset).then_some(())
        }
        _ => {
            let mut chain = burst.chain(n)?;
            chain_copy(&mut chain, 0, src, 0, n, None);
            chain.commit_partial(start, offset);
            Some(())
        }
    }
}

/// [`copy_out`] for a frame larger than a chunk: across a chain of them.
#[cold]
fn copy_out_chain(
    burst: &mut TxBurst<'_>,
    src: &SegList,
    n: usize,
    checksum: Option<(u16, u16)>,
) -> Option<()> {
    let mut chain = burst.chain(n)?;
    match checksum {
        None => {
            chain_copy(&mut chain, 0, src, 0, n, None);
        }
        Some((start, offset)) => {
            let start = usize::from(start);
            let mut sum = Checksum::new();
            chain_copy(&mut chain, 0, src, 0, start, None);
            chain_copy(
                &mut chain,
                start,
                src,
                start as u32,
                n - start,
                Some(&mut sum),
            );
            let field = checksum_field(sum).to_be_bytes();
            chain_write(&mut chain, start + usize::from(offset), &field);
        }
    }
    chain.commit();
    Some(())
}

/// Cuts TSO frame `k` into `plan`'s segments, each built in a chunk of the burst
/// (in a chain of them when larger): the payload copied from the frame, then the
/// headers written with its sum, or with the checksum left to the kernel
/// (`partial`: the uplink takes checksum requests). Returns how many segments went
/// out (the rest found no chunk).
fn segment_out(
    burst: &mut TxBurst<'_>,
    batch: &Batch,
    k: usize,
    plan: &Segmenter,
    partial: bool,
    tally: &mut PortTally,
) -> u32 {
    let head = plan.header_len();
    let src = &batch.frames[k];
    let mut out = 0;
    for i in 0..plan.count() {
        let part = plan.segment(i);
        let end = head + part.payload_len;
        let mut sum = Checksum::new();
        match burst.buffer() {
            Some(buf) if end <= buf.len() => {
                src.read_at(part.payload_at as u32, &mut buf[head..end]);
                if partial {
                    let (start, offset) = plan.write_headers_partial(i, &mut buf[..head]);
                    burst.commit_partial(end, start, offset);
                } else {
                    sum.add(&buf[head..end]);
                    plan.write_headers(i, sum, &mut buf[..head]);
                    burst.commit(end);
                }
            }
            _ => {
                // A segment larger than a chunk (jumbo MTU); its headers fit in
                // the first (a chunk is 2 KiB at least, headers at most 256 bytes).
                let Some(mut chain) = burst.chain(end) else {
                    break;
                };
                let at = part.payload_at as u32;
                let summed = (!partial).then_some(&mut sum);
                chain_copy(&mut chain, head, src, at, part.payload_len, summed);
                if partial {
                    let (start, offset) = plan.write_headers_partial(i, &mut chain.part(0)[..head]);
                    chain.commit_partial(start, offset);
                } else {
                    plan.write_headers(i, sum, &mut chain.part(0)[..head]);
                    chain.commit();
                }
            }
        }
        tally.rx_packets += 1;
        tally.rx_bytes += end as u64;
        out += 1;
    }
    out
}

/// Copies `len` bytes of `src` from `from` on into `chain` at byte `at` of the
/// frame it builds, across its parts; adds them to `sum` in order if given.
fn chain_copy(
    chain: &mut TxChain<'_, '_>,
    at: usize,
    src: &SegList,
    from: u32,
    len: usize,
    mut sum: Option<&mut Checksum>,
) {
    let (mut done, mut offset) = (0, at);
    for i in 0..chain.parts() {
        let part = chain.part(i);
        if offset >= part.len() {
            offset -= part.len();
            continue;
        }
        let want = (len - done).min(part.len() - offset);
        let dst = &mut part[offset..offset + want];
        src.read_at(from + done as u32, dst);
        if let Some(sum) = sum.as_deref_mut() {
            sum.add(dst);
        }
        done += want;
        offset = 0;
        if done == len {
            break;
        }
    }
    debug_assert_eq!(done, len);
}

/// Writes `bytes` at byte `at` of the frame `chain` builds (across a part
/// boundary if it falls on one).
fn chain_write(chain: &mut TxChain<'_, '_>, at: usize, bytes: &[u8]) {
    let mut offset = at;
    let mut rest = bytes;
    for i in 0..chain.parts() {
        let part = chain.part(i);
        if offset >= part.len() {
            offset -= part.len();
            continue;
        }
        let n = rest.len().min(part.len() - offset);
        part[offset..offset + n].copy_from_slice(&rest[..n]);
        rest = &rest[n..];
        offset = 0;
        if rest.is_empty() {
            break;
        }
    }
}
