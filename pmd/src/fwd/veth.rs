// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The veth engine: frames sent by one port of a pair are received by the other.
//!
//! One burst: open the source's TX queue (one read of `avail.idx`); if it has frames,
//! open the peer's RX queue; move up to [`BURST`] frames, each copied once from the
//! sender's TX buffers straight into the receiver's RX buffers; then both queues
//! publish their used entries with one store each and notify at most once each.
//! A frame that cannot be delivered is still taken from the sender (as a veth
//! drops it) and counted under its reason, so a stuck peer never stalls the sender.

use vpmd_backend::net;
use vpmd_backend::port::TX_QUEUE;

use super::{
    bad_chain, deliver, ring_error, RxTarget, Scratch, Stream, VhostEndpoint, BURST, MIN_FRAME,
};
use crate::counters::DropReason;

/// One direction of a veth pair.
pub struct VethStream {
    name: String,
    src: VhostEndpoint,
    dst: VhostEndpoint,
}

impl VethStream {
    /// Frames from `src`'s TX queue into `dst`'s RX queue.
    pub fn new(src: VhostEndpoint, dst: VhostEndpoint) -> Self {
        VethStream {
            name: format!("{}->{}", src.port.name(), dst.port.name()),
            src,
            dst,
        }
    }
}

impl Stream for VethStream {
    fn name(&self) -> &str {
        &self.name
    }

    fn retire(&mut self) -> u64 {
        let src = &mut self.src;
        let Some(view) = src.cache.rings(&src.port) else {
            return 0;
        };
        // Opened and dropped with nothing taken: no used entry, no notification.
        match view.queue(TX_QUEUE) {
            Ok(Some(q)) => u64::from(q.pending()),
            _ => 0,
        }
    }

    fn poll(&mut self, s: &mut Scratch) -> u32 {
        let (src, dst) = (&mut self.src, &mut self.dst);
        // The peer's cache too, every poll, even when nothing is sent to it: a closed
        // connection is let go of (its guest memory unmapped) at once, not at the next
        // frame for it. One atomic load while nothing changed.
        let _ = dst.cache.rings(&dst.port);
        let Some(src_view) = src.cache.rings(&src.port) else {
            return 0;
        };
        let src_layout = src_view.layout();
        let mut txq = match src_view.queue(TX_QUEUE) {
            Ok(Some(q)) => q,
            Ok(None) => return 0,
            Err(e) => {
                ring_error(&mut src.tally, &mut src.log, src.port.name(), "TX", &e);
                src.counters.flush(&mut src.tally);
                return 0;
            }
        };
        if txq.pending() == 0 {
            return 0;
        }
        let max_frame = dst.max_frame();

        // The peer's RX queue: absent while its guest driver is not running.
        let mut rx = None;
        let mut rx_broken = false;
        if let Some(dst_view) = dst.cache.rings(&dst.port) {
            match RxTarget::open(dst_view) {
                Ok(target) => rx = target,
                Err(e) => {
                    rx_broken = true;
                    ring_error(&mut dst.tally, &mut dst.log, dst.port.name(), "RX", &e);
                }
            }
        }

        txq.prefetch(BURST as u16);
        if let Some(rx) = rx.as_ref() {
            rx.queue.prefetch(BURST as u16);
        }
        let mut taken = 0u32;
        while (taken as usize) < BURST {
            let Some(head) = txq.pop() else { break };
            taken += 1;
            src.tally.tx_packets += 1;
            let len = match net::take_tx_frame(&txq, head, src_layout, &mut s.frame) {
                Ok(len) => len,
                Err(e) => {
                    bad_chain(&mut src.log, src.port.name(), "TX", &e);
                    src.tally.drop(DropReason::BadTxDesc);
                    txq.push_used(head, 0);
                    continue;
                }
            };
            src.tally.tx_bytes += u64::from(len);
            let outcome = if len < MIN_FRAME {
                Err(DropReason::Runt)
            } else if len > max_frame {
                Err(DropReason::TooBig)
            } else {
                match rx.as_mut() {
                    Some(rx) => {
                        deliver(rx, &s.frame, len, &mut s.rx, &mut dst.log, dst.port.name())
                    }
                    None if rx_broken => Err(DropReason::BadRxDesc),
                    None => Err(DropReason::PeerDown),
                }
            };
            match outcome {
                Ok(()) => {
                    src.tally.forwarded += 1;
                    dst.tally.rx_packets += 1;
                    dst.tally.rx_bytes += u64::from(len);
                }
                Err(reason) => src.tally.drop(reason),
            }
            // The TX buffers are done with either way; the device writes nothing into them.
            txq.push_used(head, 0);
        }
        // Publish the receiver's frames, then give the sender its buffers back.
        drop(rx);
        drop(txq);
        src.flush();
        dst.flush();
        taken
    }
}
