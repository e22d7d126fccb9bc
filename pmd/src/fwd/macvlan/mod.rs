// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The macvlan engine: VM ports hanging off one kernel interface (the uplink), read
//! and written through AF_XDP, as Linux's macvlan hangs its devices off a lower one.
//!
//! - [`decide`]: where a frame goes, by mode and MAC (no rings; unit-tested alone).
//! - [`deliver`]: classified frames into VM receive queues and out of the uplink.
//! - [`header`]: a VM's frame with its Ethernet header read from guest memory once.
//! - [`ports`]: which VM transmit queues a shard polls, and changing them at runtime.
//! - this file: a [`MacvlanShard`], the stream a polling thread runs: one AF_XDP
//!   queue of the uplink and the VM ports whose transmit queues it polls.
//!
//! A burst is handled in two passes, as DPDK's forwarding engines do: classify every
//! frame, then deliver destination by destination. Frames from the uplink are copied
//! once, from their UMEM chunk into guest buffers; frames from a VM once per
//! destination, from the guest's buffers into another guest's or into a UMEM chunk.
//!
//! A guest may rewrite its TX buffers while they are forwarded. Every byte a
//! decision depends on (the MACs) is read from guest memory once: the header is
//! sealed into the shard's memory ([`header::seal`]), decided on, and is what every
//! destination receives; only the rest comes from the guest's buffers again.
//! Frames from the uplink are in UMEM chunks or the tap's ring, which no guest
//! can write.

pub mod checksum;
pub mod decide;
pub mod deliver;
pub mod header;
pub mod ports;

pub use self::ports::Released;

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;

use vpmd_backend::guest_mem::HostBuf;
use vpmd_backend::net;
use vpmd_backend::offload::vnet_hdr;
use vpmd_backend::port::RingCache;
use vpmd_backend::seglist::SegList;
use vpmd_backend::wake::Wake;
use vpmd_uplink::packet_tap::PacketTap;
use vpmd_uplink::rx::{RxFrame, XskReceiver};
use vpmd_uplink::tx::XskTransmitter;

use self::checksum::{UplinkChecksums, Verdict};
use self::decide::{Destinations, Ingress, MacvlanTable};
use self::header::Headers;
use super::offload::{self, TxOffload};
use super::{bad_chain, Scratch, Stream, VhostEndpoint, BURST, MIN_FRAME};
use crate::counters::{CounterBlock, DropReason, OffloadEvent, PortTally};

/// The uplink as a shard holds it: counters of the frames it brings in (`tx_*`,
/// from the outside's point of view, like a port's guest) and takes out (`rx_*`).
pub struct UplinkEndpoint {
    /// This shard's counters for the uplink.
    pub counters: Arc<CounterBlock>,
    /// This burst's figures.
    pub tally: PortTally,
    /// Largest frame sent out: the interface's MTU + 18, at most what the sockets carry.
    pub max_frame: u32,
    /// This shard's AF_XDP queue and the uplink's number of them: a VM running as
    /// many queue pairs gets this queue's frames on its pair of the same rank.
    pub queue: (usize, usize),
    /// What is done with the TCP/UDP checksums of frames coming in (resolved:
    /// never `Auto`).
    pub checksums: checksum::UplinkChecksums,
}

/// One AF_XDP queue of a macvlan's uplink and the VM ports it serves.
pub struct MacvlanShard {
    name: String,
    table: Arc<MacvlanTable>,
    rx: XskReceiver,
    tx: XskTransmitter,
    /// Copies of the broadcast and multicast frames the uplink receives (which the
    /// XDP program leaves to the kernel): one shard of each macvlan has it.
    tap: Option<PacketTap>,
    uplink: UplinkEndpoint,
    /// Every VM port of the macvlan (index = port number in `table`), as
    /// destinations; this shard's own ring caches and tallies.
    vms: Vec<VhostEndpoint>,
    /// The transmit queues this shard polls: (VM port, queue pair), see
    /// [`ports::owned_queues`].
    own: Vec<(usize, usize)>,
    /// Ring caches for those transmit queues (`tx_caches[k]` for `own[k]`), apart
    /// from the endpoints' caches that the receive side uses: a VM's TX queue stays
    /// open (borrowing its cache) while other VMs' endpoints receive, and a cache is
    /// about a kilobyte (the guest memory table), too much to move out of the list
    /// and back on every poll.
    tx_caches: Vec<RingCache>,
    /// The sealed Ethernet headers of the VM burst being forwarded.
    headers: Headers,
    /// The VM whose receive cache the next poll looks at (see `poll`).
    sweep: usize,
}

impl MacvlanShard {
    /// A shard of the macvlan described by `table`.
    pub fn new(
        name: String,
        table: Arc<MacvlanTable>,
        (rx, tx): (XskReceiver, XskTransmitter),
        tap: Option<PacketTap>,
        uplink: UplinkEndpoint,
        vms: Vec<VhostEndpoint>,
        own: Vec<(usize, usize)>,
    ) -> Self {
        let tx_caches = own.iter().map(|_| RingCache::default()).collect();
        MacvlanShard {
            name,
            table,
            rx,
            tx,
            tap,
            uplink,
            vms,
            own,
            tx_caches,
            headers: Headers::new(),
            sweep: 0,
        }
    }

    /// Frames from the uplink's AF_XDP queue to the VMs.
    fn poll_uplink(&mut self, s: &mut Scratch) -> u32 {
        let burst = self.rx.receive_burst(BURST);
        if burst.is_empty() {
            return 0;
        }
        let (q, queues) = self.uplink.queue;
        let from = Some((q, (1u32 << queues.min(31)) - 1));
        let n = uplink_to_vms(
            burst.iter(),
            from,
            &self.table,
            &mut self.uplink,
            &mut self.vms,
            s,
        );
        // The frames' UMEM chunks go back to the kernel only now.
        drop(burst);
        n
    }

    /// Broadcast and multicast frames from the uplink (the tap's copies) to the VMs.
    fn poll_tap(&mut self, s: &mut Scratch) -> u32 {
        let Some(tap) = self.tap.as_mut() else {
            return 0;
        };
        let burst = tap.receive_burst(BURST);
        if burst.is_empty() {
            return 0;
        }
        // Copies of group frames from no particular queue: steered by their hash.
        uplink_to_vms(
            burst.iter(),
            None,
            &self.table,
            &mut self.uplink,
            &mut self.vms,
            s,
        )
    }

    /// One burst from each of this shard's VM ports' transmit queues.
    fn poll_vms(&mut self, s: &mut Scratch) -> u32 {
        // The caches are borrowed by the TX queues while `self` delivers: hold them
        // outside `self` meanwhile (moving a Vec moves three words).
        let mut caches = std::mem::take(&mut self.tx_caches);
        let mut moved = 0;
        for (k, cache) in caches.iter_mut().enumerate() {
            let (i, pair) = self.own[k];
            moved += self.forward_vm_burst(i, pair, cache, s);
        }
        self.tx_caches = caches;
        moved
    }

    /// One burst from the transmit queue of VM port `i`'s queue pair `pair`, read
    /// through `cache`.
    fn forward_vm_burst(
        &mut self,
        i: usize,
        pair: usize,
        cache: &mut RingCache,
        s: &mut Scratch,
    ) -> u32 {
        let vm = &mut self.vms[i];
        let counting = (&mut vm.tally, &mut vm.log, &*vm.counters);
        let Some((mut txq, layout, sent)) = super::open_tx(cache, &vm.port, pair, counting) else {
            return 0;
        };
        let mut dests = [Destinations::default(); BURST];
        let batch = &mut s.batch;
        // The chain as the guest's buffers; batch.frames[k] becomes it sealed.
        let chain = &mut s.frame;
        let mut slots = self.headers.slots();
        let mut n = 0;
        while n < BURST {
            let Some(head) = txq.pop() else { break };
            let k = n;
            n += 1;
            batch.heads[k] = head;
            batch.delivered[k] = false;
            let hdr = slots.next().expect("one header slot per burst frame");
            let tally = &mut self.vms[i].tally;
            tally.tx_packets += 1;
            let mut vnet = [0u8; vnet_hdr::LEN];
            let header: &mut [u8] = if layout.offloads.host_csum() {
                &mut vnet
            } else {
                &mut []
            };
            batch.offload[k] = TxOffload::NONE;
            let len = match net::take_tx_frame_with_header(&txq, head, layout, chain, header) {
                Ok(len) => len,
                Err(e) => {
                    let vm = &mut self.vms[i];
                    bad_chain(&mut vm.log, vm.port.name(), "TX", &e);
                    batch.lens[k] = 0;
                    batch.reason[k] = DropReason::BadTxDesc;
                    continue;
                }
            };
            tally.tx_bytes += u64::from(len);
            batch.lens[k] = len;
            if len < MIN_FRAME {
                batch.reason[k] = DropReason::Runt;
                continue;
            }
            // The one read of the header from guest memory: decided on below, and
            // the first bytes of every copy.
            if !header::seal(chain, hdr, &mut batch.frames[k]) {
                batch.reason[k] = DropReason::BadTxDesc;
                continue;
            }
            let checked = if layout.offloads.host_csum() {
                TxOffload::check(
                    vnet,
                    layout.offloads,
                    &batch.frames[k],
                    len,
                    &mut batch.plans[k],
                )
            } else {
                Ok(TxOffload::NONE)
            };
            match checked {
                Ok(tx) => batch.offload[k] = tx,
                Err(e) => {
                    let vm = &mut self.vms[i];
                    offload::bad_offload(&mut vm.log, vm.port.name(), &e);
                    batch.reason[k] = DropReason::BadOffload;
                    continue;
                }
            }
            let (dst, src) = addresses(hdr);
            match self.table.decide(Ingress::Vm(i), &dst, &src) {
                Ok(d) => dests[k] = d,
                Err(reason) => batch.reason[k] = reason,
            }
        }
        let mut work = PortTally::default();
        deliver::to_vms(
            &mut self.vms,
            (&dests[..n], Some((pair, sent))),
            batch,
            (&mut s.rx, &mut s.offload),
            &mut work,
        );
        deliver::to_uplink(
            &mut self.uplink,
            &mut self.tx,
            &dests[..n],
            batch,
            &mut work,
        );
        let tally = &mut self.vms[i].tally;
        tally.take_offloads(&mut work);
        account(tally, batch, n);
        let forwarded = batch.delivered[..n].iter().filter(|&&d| d).count();
        tally.queues.tx_packets[pair] += n as u64;
        tally.queues.tx_dropped[pair] += (n - forwarded) as u64;
        // Every copy is made: the sender may have its buffers back.
        for &head in &batch.heads[..n] {
            txq.push_used(head, 0);
        }
        n as u32
    }

    fn flush(&mut self) {
        self.uplink.counters.flush(&mut self.uplink.tally);
        for vm in &mut self.vms {
            vm.flush();
        }
    }
}

impl Stream for MacvlanShard {
    fn name(&self) -> &str {
        &self.name
    }

    fn as_macvlan(&mut self) -> Option<&mut MacvlanShard> {
        Some(self)
    }

    fn request_kicks(&mut self, wake: &Arc<Wake>) -> bool {
        // Frames left on the uplink's TX ring go out before we sleep.
        self.tx.flush();
        // Every VM, sender or not: a connection closing must wake the sweep.
        for vm in &self.vms {
            vm.port.wake_on_kick(wake);
        }
        let mut waiting = false;
        for (k, cache) in self.tx_caches.iter_mut().enumerate() {
            let (i, pair) = self.own[k];
            waiting |= super::request_tx_kicks(cache, &self.vms[i].port, pair, wake);
        }
        waiting
    }

    fn wait_fds(&self, fds: &mut super::WaitFds) {
        for &(i, pair) in &self.own {
            fds.add_tx_kick(&self.vms[i].port, pair);
        }
        fds.sockets.push(self.rx.as_fd().as_raw_fd());
        if let Some(tap) = &self.tap {
            fds.sockets.push(tap.as_fd().as_raw_fd());
        }
    }

    fn poll(&mut self, s: &mut Scratch) -> u32 {
        // The VMs' receive caches too, one per poll, even when no frame is for them:
        // a closed connection is let go of (its guest memory unmapped) within a few
        // polls, not at the next frame for that VM, which after the VM migrated away
        // never comes. One atomic load while nothing changed.
        if !self.vms.is_empty() {
            self.sweep = (self.sweep + 1) % self.vms.len();
            let vm = &mut self.vms[self.sweep];
            let _ = vm.cache.rings(&vm.port);
        }
        let moved = self.poll_uplink(s) + self.poll_tap(s) + self.poll_vms(s);
        if moved > 0 {
            self.flush();
        } else {
            // Idle: take back finished transmit chunks, kick what is left over.
            self.tx.flush();
        }
        moved
    }
}

/// A frame from the uplink as the classifier reads it: in one piece (the group
/// tap's copies), or possibly in parts (AF_XDP multi-buffer: jumbo frames).
trait UplinkFrame<'f> {
    /// The frame, or its first part (which holds its headers).
    fn head(&self) -> &'f [u8];
    /// Whether there is more than the head.
    fn is_multi_buffer(&self) -> bool;
    /// Appends every part to `list`; `false` if they do not fit.
    fn push_parts(&self, list: &mut SegList) -> bool;
}

impl<'f> UplinkFrame<'f> for &'f [u8] {
    #[inline]
    fn head(&self) -> &'f [u8] {
        self
    }
    #[inline]
    fn is_multi_buffer(&self) -> bool {
        false
    }
    fn push_parts(&self, list: &mut SegList) -> bool {
        // SAFETY: the bytes ('f) outlive the burst being forwarded, and the batch's
        // lists are used only in it: as copy sources (`deliver::to_vms`, never
        // written) and cleared before their next use.
        #[allow(unsafe_code)]
        list.push(unsafe { HostBuf::from_bytes(self) })
    }
}

impl<'f> UplinkFrame<'f> for RxFrame<'f> {
    #[inline]
    fn head(&self) -> &'f [u8] {
        RxFrame::head(self)
    }
    #[inline]
    fn is_multi_buffer(&self) -> bool {
        RxFrame::is_multi_buffer(self)
    }
    fn push_parts(&self, list: &mut SegList) -> bool {
        if !self.is_multi_buffer() {
            return self.head().push_parts(list);
        }
        // SAFETY: as for a frame in one piece: the chunks ('f) stay ours until the
        // burst is dropped, after the lists' last (read-only) use.
        #[allow(unsafe_code)]
        self.parts()
            .all(|part| list.push(unsafe { HostBuf::from_bytes(part) }))
    }
}

/// Classifies a burst of frames from the uplink and delivers them to the VMs;
/// `from`: the AF_XDP queue they came on, with the uplink's running queues (see
/// [`deliver::to_vms`]).
fn uplink_to_vms<'f>(
    frames: impl Iterator<Item = impl UplinkFrame<'f>>,
    from: Option<(usize, u32)>,
    table: &MacvlanTable,
    uplink: &mut UplinkEndpoint,
    vms: &mut [VhostEndpoint],
    s: &mut Scratch,
) -> u32 {
    let mut dests = [Destinations::default(); BURST];
    let batch = &mut s.batch;
    let mut n = 0;
    for frame in frames.take(BURST) {
        let k = n;
        n += 1;
        let head = frame.head();
        let multi = frame.is_multi_buffer();
        batch.frames[k].clear();
        batch.delivered[k] = false;
        batch.offload[k] = TxOffload::NONE;
        let fits = frame.push_parts(&mut batch.frames[k]);
        let len = batch.frames[k].total();
        uplink.tally.tx_packets += 1;
        uplink.tally.tx_bytes += u64::from(len);
        batch.lens[k] = len;
        if !fits {
            // More parts than a frame list holds (64): a frame beyond any MTU.
            batch.reason[k] = DropReason::TooBig;
            continue;
        }
        if (head.len() as u32) < MIN_FRAME {
            batch.reason[k] = DropReason::Runt;
            continue;
        }
        let (dst, src) = addresses(head);
        match table.decide(Ingress::Uplink, &dst, &src) {
            Ok(d) => dests[k] = d,
            Err(reason) => {
                batch.reason[k] = reason;
                continue;
            }
        }
        if uplink.checksums != UplinkChecksums::Trust {
            let verify = uplink.checksums == UplinkChecksums::Verify;
            let whole = multi.then_some(&batch.frames[k]);
            match checksum::classify(head, whole, verify) {
                Verdict::Complete => {}
                Verdict::Partial { start, offset } => {
                    uplink.tally.offload(OffloadEvent::PartialChecksum, 1);
                    batch.offload[k] = TxOffload::checksum(start, offset);
                }
                Verdict::Bad => uplink.tally.offload(OffloadEvent::BadChecksum, 1),
            }
        }
    }
    deliver::to_vms(
        vms,
        (&dests[..n], from),
        batch,
        (&mut s.rx, &mut s.offload),
        &mut uplink.tally,
    );
    account(&mut uplink.tally, batch, n);
    n as u32
}

/// A frame's destination and source MAC (the first 12 bytes).
#[inline]
fn addresses(frame: &[u8]) -> ([u8; 6], [u8; 6]) {
    let mut dst = [0u8; 6];
    let mut src = [0u8; 6];
    dst.copy_from_slice(&frame[0..6]);
    src.copy_from_slice(&frame[6..12]);
    (dst, src)
}

/// Counts each of the burst's `n` frames once at its source: forwarded if any
/// copy went out, else dropped for the last reason seen.
#[inline]
fn account(tally: &mut PortTally, batch: &crate::fwd::Batch, n: usize) {
    for k in 0..n {
        if batch.delivered[k] {
            tally.forwarded += 1;
        } else {
            tally.drop(batch.reason[k]);
        }
    }
}
