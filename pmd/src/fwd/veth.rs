// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The veth engine: frames sent by one port of a pair are received by the other.
//!
//! One burst: open the source's TX queue (one read of `avail.idx`); if it has frames,
//! open the peer's RX queue; move up to [`BURST`] frames, each copied once from the
//! sender's TX buffers straight into the receiver's RX buffers; then both queues
//! publish their used entries with one store each and notify at most once each.
//! A frame that cannot be delivered is still taken from the sender (as a veth
//! drops it) and counted under its reason, so a stuck peer never stalls the sender.
//! What the sender's virtio-net header asks for (a checksum, TSO) is passed on to a
//! peer that negotiated it and done in software for one that did not
//! ([`super::offload`]).

use vpmd_backend::net;
use vpmd_backend::offload::vnet_hdr::{self, Request};
use vpmd_backend::port::TX_QUEUE;

use super::offload::{self, SendScratch, Sent, TxOffload};
use super::{bad_chain, ring_error, RxTarget, Scratch, Stream, VhostEndpoint, BURST, MIN_FRAME};
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
        let reads_header = src_layout.offloads.host_csum();
        while (taken as usize) < BURST {
            let Some(head) = txq.pop() else { break };
            taken += 1;
            src.tally.tx_packets += 1;
            let mut vnet = [0u8; vnet_hdr::LEN];
            let header: &mut [u8] = if reads_header { &mut vnet } else { &mut [] };
            let len = match net::take_tx_frame_with_header(
                &txq,
                head,
                src_layout,
                &mut s.frame,
                header,
            ) {
                Ok(len) => len,
                Err(e) => {
                    bad_chain(&mut src.log, src.port.name(), "TX", &e);
                    src.tally.drop(DropReason::BadTxDesc);
                    txq.push_used(head, 0);
                    continue;
                }
            };
            src.tally.tx_bytes += u64::from(len);
            let checked = if reads_header {
                TxOffload::check(vnet, src_layout.offloads, &s.frame, len, &mut s.plan)
            } else {
                Ok(TxOffload::NONE)
            };
            let sent = match checked {
                Err(e) => {
                    offload::bad_offload(&mut src.log, src.port.name(), &e);
                    Sent::dropped(1, DropReason::BadOffload)
                }
                Ok(_) if len < MIN_FRAME => Sent::dropped(1, DropReason::Runt),
                Ok(tx) => match rx.as_mut() {
                    // The common case, without offload work: straight into the peer.
                    Some(rx) if matches!(tx.request, Request::None) => offload::send_plain(
                        rx,
                        &s.frame,
                        len,
                        max_frame,
                        &mut s.rx,
                        &mut dst.log,
                        dst.port.name(),
                    ),
                    Some(rx) => offload::send(
                        rx,
                        &s.frame,
                        len,
                        &tx,
                        s.plan.as_ref(),
                        max_frame,
                        SendScratch {
                            rx: &mut s.rx,
                            offload: &mut s.offload,
                        },
                        &mut src.tally,
                        &mut dst.log,
                        dst.port.name(),
                    ),
                    None if rx_broken => Sent::dropped(1, DropReason::BadRxDesc),
                    None => Sent::dropped(1, DropReason::PeerDown),
                },
            };
            // A frame counts once at its source, segmented or not: forwarded if
            // anything of it arrived (segments the peer could not take count in its
            // rx_dropped, as a flood's copies do), else under one drop reason.
            if sent.delivered > 0 {
                src.tally.forwarded += 1;
                dst.tally.rx_packets += u64::from(sent.delivered);
                dst.tally.rx_bytes += sent.bytes;
                dst.tally.rx_dropped += u64::from(sent.dropped);
            } else {
                src.tally.drop(sent.reason);
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
