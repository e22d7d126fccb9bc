// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The delivery half of a macvlan burst: classified frames into VM receive queues,
//! one destination at a time, and out of the uplink.

use vpmd_uplink::tx::XskTransmitter;

use super::decide::Destinations;
use super::UplinkEndpoint;
use crate::counters::DropReason;
use crate::fwd::{deliver, ring_error, Batch, RxTarget, VhostEndpoint};
use vpmd_backend::net::RxScratch;

/// Delivers each frame `k` of `batch` to the VMs in `dests[k].vms`. Each VM's RX
/// queue is opened once, in ascending port order, and closed before the next one is
/// opened, so no thread ever waits for one receive queue while holding another.
pub fn to_vms(
    vms: &mut [VhostEndpoint],
    dests: &[Destinations],
    batch: &mut Batch,
    rx_scratch: &mut RxScratch,
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
            let result = if len > max_frame {
                Err(DropReason::TooBig)
            } else {
                match target.as_mut() {
                    Some(t) => deliver(
                        t,
                        &batch.frames[k],
                        len,
                        rx_scratch,
                        &mut vm.log,
                        vm.port.name(),
                    ),
                    None => Err(down),
                }
            };
            match result {
                Ok(()) => {
                    vm.tally.rx_packets += 1;
                    vm.tally.rx_bytes += u64::from(len);
                    batch.delivered[k] = true;
                }
                Err(reason) => {
                    if d.flood {
                        vm.tally.rx_dropped += 1;
                    }
                    batch.reason[k] = reason;
                }
            }
        }
    }
}

/// Sends each frame `k` of `batch` with `dests[k].uplink` out of the uplink: one
/// copy from the frame's buffers into a UMEM chunk, one publish and at most one
/// kick for the burst.
pub fn to_uplink(
    uplink: &mut UplinkEndpoint,
    tx: &mut XskTransmitter,
    dests: &[Destinations],
    batch: &mut Batch,
) {
    let want = dests.iter().filter(|d| d.uplink).count();
    if want == 0 {
        return;
    }
    let mut burst = tx.transmit_burst(want);
    for (k, d) in dests.iter().enumerate() {
        if !d.uplink {
            continue;
        }
        let len = batch.lens[k];
        let reason = if len > uplink.max_frame {
            DropReason::TooBig
        } else {
            match burst.buffer() {
                Some(buf) => {
                    let n = len as usize;
                    let copied = batch.frames[k].read_at(0, &mut buf[..n]);
                    debug_assert_eq!(copied, len);
                    burst.commit(n);
                    uplink.tally.rx_packets += 1;
                    uplink.tally.rx_bytes += u64::from(len);
                    batch.delivered[k] = true;
                    continue;
                }
                None => DropReason::UplinkBusy,
            }
        };
        if d.flood {
            uplink.tally.rx_dropped += 1;
        }
        batch.reason[k] = reason;
    }
}
