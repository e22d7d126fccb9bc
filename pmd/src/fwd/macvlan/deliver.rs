// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The delivery half of a macvlan burst: classified frames into VM receive queues,
//! one destination at a time, and out of the uplink.
//!
//! Offloads: a VM receives a frame as a veth peer would ([`offload::send`]: passed
//! through when it negotiated what the frame asks for, else checksummed or segmented
//! here). The uplink takes no offload (AF_XDP has no segmentation offload; its
//! transmit-checksum metadata is not used, see docs/offloads.md), so a frame asking
//! for a checksum or TSO leaves it checksummed and segmented in software, each
//! segment built in its UMEM chunk.

use vpmd_backend::net::RxScratch;
use vpmd_backend::offload::csum::Checksum;
use vpmd_backend::offload::segment::{checksum_field, Segmenter};
use vpmd_backend::offload::vnet_hdr::Request;
use vpmd_uplink::tx::{TxBurst, XskTransmitter};

use super::decide::Destinations;
use super::UplinkEndpoint;
use crate::counters::{DropReason, OffloadEvent, PortTally};
use crate::fwd::offload::{self, OffloadScratch, SendScratch};
use crate::fwd::{ring_error, Batch, RxTarget, VhostEndpoint};

/// Delivers each frame `k` of `batch` to the VMs in `dests[k].vms`. Each VM's RX
/// queue is opened once, in ascending port order, and closed before the next one is
/// opened, so no thread ever waits for one receive queue while holding another.
/// Offload work is counted in `work` (the sender's).
pub fn to_vms(
    vms: &mut [VhostEndpoint],
    dests: &[Destinations],
    batch: &mut Batch,
    (rx_scratch, offload_scratch): (&mut RxScratch, &mut OffloadScratch),
    work: &mut PortTally,
) {
    let mut left = dests.iter().fold(0u64, |m, d| m | d.vms);
    while left != 0 {
        let j = left.trailing_zeros() as usize;
        left &= left - 1;
        let bit = 1u64 << j;
        let vm = &mut vms[j];
        let max_frame = vm.max_frame();
        let mut down = DropReason::PeerDown;
        let mut target = None;
        if let Some(view) = vm.cache.rings(&vm.port) {
            match RxTarget::open(view) {
                Ok(t) => target = t,
                Err(e) => {
                    down = DropReason::BadRxDesc;
                    ring_error(&mut vm.tally, &mut vm.log, vm.port.name(), "RX", &e);
                }
            }
        }
        for (k, d) in dests.iter().enumerate() {
            if d.vms & bit == 0 {
                continue;
            }
            let len = batch.lens[k];
            let sent = match target.as_mut() {
                // The common case, without offload work.
                Some(t) if matches!(batch.offload[k].request, Request::None) => {
                    offload::send_plain(
                        t,
                        &batch.frames[k],
                        len,
                        max_frame,
                        rx_scratch,
                        &mut vm.log,
                        vm.port.name(),
                    )
                }
                Some(t) => offload::send(
                    t,
                    &batch.frames[k],
                    len,
                    &batch.offload[k],
                    batch.plans[k].as_ref(),
                    max_frame,
                    SendScratch {
                        rx: rx_scratch,
                        offload: offload_scratch,
                    },
                    work,
                    &mut vm.log,
                    vm.port.name(),
                ),
                None => offload::Sent::dropped(1, down),
            };
            if sent.delivered > 0 {
                vm.tally.rx_packets += u64::from(sent.delivered);
                vm.tally.rx_bytes += sent.bytes;
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
    let want: usize = dests
        .iter()
        .enumerate()
        .filter(|(_, d)| d.uplink)
        .map(
            |(k, _)| match (&batch.offload[k].request, &batch.plans[k]) {
                (Request::Segment { .. }, Some(plan)) => plan.count(),
                _ => 1,
            },
        )
        .sum();
    if want == 0 {
        return;
    }
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
                    let out = segment_out(&mut burst, batch, k, plan, &mut uplink.tally);
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

/// Copies frame `k` into the burst's next chunk, filling in the checksum at
/// `checksum` (`csum_start`, `csum_offset`) if the frame asks for one. `None`
/// when the uplink has no free chunk.
fn copy_out(
    burst: &mut TxBurst<'_>,
    batch: &Batch,
    k: usize,
    checksum: Option<(u16, u16)>,
) -> Option<()> {
    let buf = burst.buffer()?;
    let n = batch.lens[k] as usize;
    let copied = batch.frames[k].read_at(0, &mut buf[..n]);
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

/// Cuts TSO frame `k` into `plan`'s segments, each built in a chunk of the burst:
/// the payload copied from the frame, then the headers written with its sum.
/// Returns how many segments went out (the rest found no chunk).
fn segment_out(
    burst: &mut TxBurst<'_>,
    batch: &Batch,
    k: usize,
    plan: &Segmenter,
    tally: &mut PortTally,
) -> u32 {
    let head = plan.header_len();
    let mut out = 0;
    for i in 0..plan.count() {
        let Some(buf) = burst.buffer() else { break };
        let part = plan.segment(i);
        let end = head + part.payload_len;
        batch.frames[k].read_at(part.payload_at as u32, &mut buf[head..end]);
        let mut sum = Checksum::new();
        sum.add(&buf[head..end]);
        plan.write_headers(i, sum, &mut buf[..head]);
        burst.commit(end);
        tally.rx_packets += 1;
        tally.rx_bytes += end as u64;
        out += 1;
    }
    out
}
