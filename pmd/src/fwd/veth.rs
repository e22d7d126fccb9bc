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
//!
//! Multi-queue: a stream polls one TX queue of its source (one stream per queue
//! pair, each on the thread it was given). Into a peer with one queue pair frames go
//! straight, as above. Into a peer with several, a burst is taken in two passes:
//! every frame is taken and steered to one of the peer's running RX queues by its
//! flow hash ([`super::steer`]), then the RX queues that got frames are filled one
//! after the other, in ascending order, each opened once.

use vpmd_backend::net;
use vpmd_backend::net::NetLayout;
use vpmd_backend::offload::vnet_hdr;
use vpmd_backend::port::{tx_queue, MAX_QUEUE_PAIRS};
use vpmd_backend::virtqueue::VirtQueue;

use super::offload::{self, SendScratch, Sent, TxOffload};
use super::{
    bad_chain, open_tx, ring_error, steer, RxTarget, Scratch, Stream, VhostEndpoint, BURST,
    MIN_FRAME,
};
use crate::counters::{CounterBlock, DropReason, PortTally};
use crate::ratelimit::LogLimiter;
use vpmd_backend::port::VirtioNetPort;

/// One direction of a veth pair, from one TX queue of the sender.
pub struct VethStream {
    name: String,
    src: VhostEndpoint,
    dst: VhostEndpoint,
    /// The sender's queue pair whose TX queue this stream polls.
    pair: usize,
}

impl VethStream {
    /// Frames from `src`'s TX queue of queue pair `pair` into `dst`'s RX queues.
    pub fn new(src: VhostEndpoint, dst: VhostEndpoint, pair: usize) -> Self {
        let pairs = src.port.queue_pairs();
        VethStream {
            name: stream_name(src.port.name(), dst.port.name(), pair, pairs),
            src,
            dst,
            pair,
        }
    }
}

/// The name of the stream from `src`'s queue pair `pair` (of `pairs`) to `dst`:
/// "src->dst" for a single-queue sender, "src->dst/qN" otherwise.
pub fn stream_name(src: &str, dst: &str, pair: usize, pairs: usize) -> String {
    if pairs > 1 {
        format!("{src}->{dst}/q{pair}")
    } else {
        format!("{src}->{dst}")
    }
}

/// The sending port and queue pair of a veth stream named by [`stream_name`];
/// `None` for other streams (macvlan shards).
pub fn stream_source(name: &str) -> Option<(&str, usize)> {
    stream_ports(name).map(|(src, _, pair)| (src, pair))
}

/// The sending port, receiving port and queue pair of a veth stream named by
/// [`stream_name`]; `None` for other streams. Port names hold no '>' or '/', so the
/// first '>' is the arrow's and a "/q" ends the receiver's name.
pub fn stream_ports(name: &str) -> Option<(&str, &str, usize)> {
    let arrow = name.find('>')?;
    let src = name.get(..arrow.checked_sub(1)?)?;
    if !name[..arrow].ends_with('-') || src.is_empty() {
        return None;
    }
    let rest = &name[arrow + 1..];
    let (dst, pair) = match rest.split_once("/q") {
        Some((dst, q)) => (dst, q.parse().ok()?),
        None => (rest, 0),
    };
    (!dst.is_empty()).then_some((src, dst, pair))
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
        match view.queue(tx_queue(self.pair)) {
            Ok(Some(q)) => u64::from(q.pending()),
            _ => 0,
        }
    }

    fn request_kicks(&mut self, wake: &std::sync::Arc<vpmd_backend::wake::Wake>) -> bool {
        // The peer's setup changes (its connection closing) must wake us too: its
        // cache is let go of by a poll.
        self.dst.port.wake_on_kick(wake);
        self.src.request_tx_kicks(self.pair, wake)
    }

    fn wait_fds(&self, fds: &mut super::WaitFds) {
        fds.add_tx_kick(&self.src.port, self.pair);
    }

    fn poll(&mut self, s: &mut Scratch) -> u32 {
        let pair = self.pair;
        let (src, dst) = (&mut self.src, &mut self.dst);
        // The peer's cache too, every poll, even when nothing is sent to it: a closed
        // connection is let go of (its guest memory unmapped) at once, not at the next
        // frame for it. One atomic load while nothing changed.
        let _ = dst.cache.rings(&dst.port);
        let VhostEndpoint {
            port,
            counters,
            cache,
            tally,
            log,
        } = src;
        let Some((txq, src_layout, sent)) = open_tx(cache, port, pair, (tally, log, counters))
        else {
            return 0;
        };
        let sender = Sender {
            port,
            tally,
            log,
            counters,
        };
        // Into a multi-queue peer: where its frames may go, read once a burst (the
        // RX vrings' read locks, taken after the TX queue's as every thread does).
        // With one RX queue running, the frames go straight into it as into a
        // single-queue peer: no hash, no second pass.
        // As many RX queues running as the sender runs TX queues: the one of the same
        // rank takes the whole burst (steer::same_rank).
        let mut dst_pair = 0;
        if dst.port.queue_pairs() > 1 {
            let running = dst
                .cache
                .rings(&dst.port)
                .map_or(0, |v| v.rings().running_rx_queues());
            if running.count_ones() > 1 {
                match steer::same_rank(pair, sent, running) {
                    Some(p) => dst_pair = p,
                    None => {
                        return burst_steered((sender, dst), (txq, src_layout), pair, running, s)
                    }
                }
            } else {
                dst_pair = (running.trailing_zeros() as usize).min(MAX_QUEUE_PAIRS - 1);
            }
        }
        burst_direct((sender, dst), (txq, src_layout), pair, dst_pair, s)
    }
}

/// What a burst needs of its sending endpoint while its TX queue is open (the queue
/// borrows the endpoint's ring cache).
struct Sender<'a> {
    port: &'a VirtioNetPort,
    tally: &'a mut PortTally,
    log: &'a mut LogLimiter,
    counters: &'a CounterBlock,
}

impl Sender<'_> {
    fn flush(&mut self) {
        self.counters.flush(self.tally);
    }
}

/// A burst from `src`'s TX queue of pair `pair` (open: `txq`) straight into `dst`'s
/// RX queue of pair `dst_pair`, frame by frame.
fn burst_direct(
    (mut src, dst): (Sender<'_>, &mut VhostEndpoint),
    (mut txq, src_layout): (VirtQueue<'_>, NetLayout),
    pair: usize,
    dst_pair: usize,
    s: &mut Scratch,
) -> u32 {
    {
        let max_frame = dst.max_frame();
        let forwarded_before = src.tally.forwarded;

        // The peer's RX queue: absent while its guest driver is not running.
        let mut rx = None;
        let mut rx_broken = false;
        if let Some(dst_view) = dst.cache.rings(&dst.port) {
            match RxTarget::open_pair(dst_view, dst_pair) {
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
                    bad_chain(&mut *src.log, src.port.name(), "TX", &e);
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
                    offload::bad_offload(&mut *src.log, src.port.name(), &e);
                    Sent::dropped(1, DropReason::BadOffload)
                }
                Ok(_) if len < MIN_FRAME => Sent::dropped(1, DropReason::Runt),
                Ok(tx) => {
                    let target = rx.as_mut().ok_or(if rx_broken {
                        DropReason::BadRxDesc
                    } else {
                        DropReason::PeerDown
                    });
                    let scratch = SendScratch {
                        rx: &mut s.rx,
                        offload: &mut s.offload,
                    };
                    let (log, name) = (&mut dst.log, dst.port.name());
                    let plan = s.plan.as_ref();
                    offload::send_to(
                        target,
                        &s.frame,
                        len,
                        &tx,
                        plan,
                        max_frame,
                        scratch,
                        &mut *src.tally,
                        log,
                        name,
                    )
                }
            };
            // A frame counts once at its source, segmented or not: forwarded if
            // anything of it arrived (segments the peer could not take count in its
            // rx_dropped, as a flood's copies do), else under one drop reason.
            if sent.delivered > 0 {
                src.tally.forwarded += 1;
                dst.tally.rx_packets += u64::from(sent.delivered);
                dst.tally.rx_bytes += sent.bytes;
                dst.tally.rx_dropped += u64::from(sent.dropped);
                dst.tally.queues.rx_packets[dst_pair] += u64::from(sent.delivered);
            } else {
                src.tally.drop(sent.reason);
            }
            // The TX buffers are done with either way; the device writes nothing into them.
            txq.push_used(head, 0);
        }
        let forwarded = src.tally.forwarded - forwarded_before;
        src.tally.queues.tx_packets[pair] += u64::from(taken);
        src.tally.queues.tx_dropped[pair] += u64::from(taken) - forwarded;
        // Publish the receiver's frames, then give the sender its buffers back.
        drop(rx);
        drop(txq);
        src.flush();
        dst.flush();
        taken
    }
}

/// A burst into a multi-queue peer with several RX queues running (`running`): take
/// and steer every frame, then fill the peer's RX queues one at a time (see the
/// module's documentation).
fn burst_steered(
    (mut src, dst): (Sender<'_>, &mut VhostEndpoint),
    (mut txq, src_layout): (VirtQueue<'_>, NetLayout),
    pair: usize,
    running: u32,
    s: &mut Scratch,
) -> u32 {
    {
        let Scratch {
            batch,
            rx: rx_scratch,
            offload: offload_scratch,
            ..
        } = s;
        let max_frame = dst.max_frame();
        let reads_header = src_layout.offloads.host_csum();
        // The peer queue pair each frame goes to; NONE: dropped (reason in batch).
        const NONE: u8 = u8::MAX;
        let mut target = [NONE; BURST];
        let mut wanted = 0u32;
        let mut n = 0;
        while n < BURST {
            let Some(head) = txq.pop() else { break };
            let k = n;
            n += 1;
            batch.heads[k] = head;
            batch.delivered[k] = false;
            batch.offload[k] = TxOffload::NONE;
            src.tally.tx_packets += 1;
            let mut vnet = [0u8; vnet_hdr::LEN];
            let header: &mut [u8] = if reads_header { &mut vnet } else { &mut [] };
            let frame = &mut batch.frames[k];
            let len = match net::take_tx_frame_with_header(&txq, head, src_layout, frame, header) {
                Ok(len) => len,
                Err(e) => {
                    bad_chain(&mut *src.log, src.port.name(), "TX", &e);
                    batch.reason[k] = DropReason::BadTxDesc;
                    continue;
                }
            };
            src.tally.tx_bytes += u64::from(len);
            batch.lens[k] = len;
            if reads_header {
                let plan = &mut batch.plans[k];
                match TxOffload::check(vnet, src_layout.offloads, &batch.frames[k], len, plan) {
                    Ok(tx) => batch.offload[k] = tx,
                    Err(e) => {
                        offload::bad_offload(&mut *src.log, src.port.name(), &e);
                        batch.reason[k] = DropReason::BadOffload;
                        continue;
                    }
                }
            }
            if len < MIN_FRAME {
                batch.reason[k] = DropReason::Runt;
                continue;
            }
            let mut head_bytes = [0u8; steer::HEAD];
            let got = batch.frames[k].read_at(0, &mut head_bytes) as usize;
            match steer::pick(steer::flow_hash(&head_bytes[..got]), running) {
                Some(p) => {
                    target[k] = p as u8;
                    wanted |= 1 << p;
                }
                None => batch.reason[k] = DropReason::PeerDown,
            }
        }
        let mut forwarded = 0u64;
        while wanted != 0 {
            let p = wanted.trailing_zeros() as usize;
            wanted &= wanted - 1;
            let mut rx = None;
            let mut rx_broken = false;
            if let Some(view) = dst.cache.rings(&dst.port) {
                match RxTarget::open_pair(view, p) {
                    Ok(t) => rx = t,
                    Err(e) => {
                        rx_broken = true;
                        ring_error(&mut dst.tally, &mut dst.log, dst.port.name(), "RX", &e);
                    }
                }
            }
            for k in (0..n).filter(|&k| usize::from(target[k]) == p) {
                let len = batch.lens[k];
                let tx = &batch.offload[k];
                // None: stopped between the look at it and now.
                let target = rx.as_mut().ok_or(if rx_broken {
                    DropReason::BadRxDesc
                } else {
                    DropReason::PeerDown
                });
                let scratch = SendScratch {
                    rx: rx_scratch,
                    offload: offload_scratch,
                };
                let (log, name) = (&mut dst.log, dst.port.name());
                let (frame, plan) = (&batch.frames[k], batch.plans[k].as_ref());
                let sent = offload::send_to(
                    target,
                    frame,
                    len,
                    tx,
                    plan,
                    max_frame,
                    scratch,
                    &mut *src.tally,
                    log,
                    name,
                );
                if sent.delivered > 0 {
                    batch.delivered[k] = true;
                    forwarded += 1;
                    dst.tally.rx_packets += u64::from(sent.delivered);
                    dst.tally.rx_bytes += sent.bytes;
                    dst.tally.rx_dropped += u64::from(sent.dropped);
                    dst.tally.queues.rx_packets[p] += u64::from(sent.delivered);
                } else {
                    batch.reason[k] = sent.reason;
                }
            }
            // This queue's frames published before the next queue is opened.
            drop(rx);
        }
        for k in 0..n {
            if !batch.delivered[k] {
                src.tally.drop(batch.reason[k]);
            }
            txq.push_used(batch.heads[k], 0);
        }
        src.tally.forwarded += forwarded;
        src.tally.queues.tx_packets[pair] += n as u64;
        src.tally.queues.tx_dropped[pair] += n as u64 - forwarded;
        drop(txq);
        src.flush();
        dst.flush();
        n as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_say_port_and_queue() {
        assert_eq!(stream_name("a", "b", 0, 1), "a->b");
        assert_eq!(stream_name("a", "b", 1, 2), "a->b/q1");
        assert_eq!(stream_source("a->b"), Some(("a", 0)));
        assert_eq!(stream_source("a->b/q1"), Some(("a", 1)));
        assert_eq!(stream_source("x-->y-/q7"), Some(("x-", 7)));
        assert_eq!(stream_source("eth0/q0"), None, "a macvlan shard");
        assert_eq!(stream_source(">b"), None);
        assert_eq!(stream_ports("a->b/q1"), Some(("a", "b", 1)));
        assert_eq!(stream_ports("a->b"), Some(("a", "b", 0)));
        assert_eq!(stream_ports("a>b"), None);
    }
}
