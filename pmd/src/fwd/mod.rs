// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Forwarding: what a polling thread does with frames, one burst at a time.
//!
//! A [`Stream`] is DPDK testpmd's forwarding stream: a source queue, where its frames
//! go, and the counters. Each forwarding engine lives in a file of its own:
//! - [`veth`]: a frame taken from one port of a pair is delivered to the other.
//! - [`macvlan`]: VM ports hanging off an AF_XDP uplink, by destination MAC.
//!
//! - [`steer`]: which RX queue of a multi-queue port a frame goes to.
//!
//! Shared pieces: [`VhostEndpoint`] (a vhost-user port as a stream holds it),
//! [`deliver`] (one frame into a guest's RX queue, with the drop reason on failure)
//! and [`offload`] (what a sender's virtio-net header asks for, done for a receiver
//! that cannot, or passed on to one that can).

pub mod macvlan;
pub mod offload;
pub mod steer;
pub mod veth;

use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;

use vpmd_backend::net::{self, NetLayout, RxError, RxFrame, RxScratch};
use vpmd_backend::port::{rx_queue, tx_queue, PortView, RingCache, VirtioNetPort};
use vpmd_backend::seglist::SegList;
use vpmd_backend::virtqueue::{QueueError, VirtQueue};
use vpmd_backend::wake::Wake;

use crate::counters::{CounterBlock, DropReason, PortCounters, PortTally};
use crate::ratelimit::LogLimiter;

/// Most frames one poll of a stream moves.
pub const BURST: usize = 32;
/// Bytes a frame may exceed the MTU by: Ethernet header and one VLAN tag, as Linux's
/// veth accepts (`is_skb_forwardable`).
pub const L2_OVERHEAD: u32 = 14 + 4;
/// Shortest frame forwarded: an Ethernet header.
pub const MIN_FRAME: u32 = 14;

/// Per-thread scratch space, reused by every burst (the thread's only allocations).
pub struct Scratch {
    /// The frame being forwarded, as segments of the sender's buffers.
    pub frame: SegList,
    /// Space for delivering into RX buffers.
    pub rx: RxScratch,
    /// A whole burst held between classifying and delivering (macvlan).
    pub batch: Batch,
    /// Headers rebuilt for offloads.
    pub offload: offload::OffloadScratch,
    /// The segmentation plan of the TSO frame being forwarded (veth).
    pub plan: Option<vpmd_backend::offload::segment::Segmenter>,
}

impl Scratch {
    /// Scratch for one polling thread.
    pub fn new() -> Self {
        Scratch {
            frame: SegList::default(),
            rx: RxScratch::new(),
            batch: Batch::new(),
            offload: offload::OffloadScratch::new(),
            plan: None,
        }
    }
}

/// A burst of frames classified first and delivered after, destination by
/// destination, so that each receive queue is opened once per burst and only one
/// is held at a time.
pub struct Batch {
    /// Each frame's buffers.
    pub frames: Vec<SegList>,
    /// Each frame's Ethernet length.
    pub lens: [u32; BURST],
    /// The descriptor head each frame came in (vhost sources).
    pub heads: [u16; BURST],
    /// Whether each frame reached at least one destination.
    pub delivered: [bool; BURST],
    /// Why a frame that reached nothing was dropped (the last failure).
    pub reason: [DropReason; BURST],
    /// What each frame's virtio-net header asks for (VM sources).
    pub offload: [offload::TxOffload; BURST],
    /// Each TSO frame's segmentation plan.
    pub plans: Vec<Option<vpmd_backend::offload::segment::Segmenter>>,
}

impl Batch {
    fn new() -> Self {
        Batch {
            frames: (0..BURST).map(|_| SegList::default()).collect(),
            lens: [0; BURST],
            heads: [0; BURST],
            delivered: [false; BURST],
            reason: [DropReason::NoDestination; BURST],
            offload: [offload::TxOffload::NONE; BURST],
            plans: (0..BURST).map(|_| None).collect(),
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// What a polling thread polls.
pub trait Stream: Send {
    /// "source->destination", for logs and stats.
    fn name(&self) -> &str;
    /// Moves at most [`BURST`] frames; returns how many were taken from the source.
    fn poll(&mut self, scratch: &mut Scratch) -> u32;
    /// Called once, between polls, when the stream is taken off its thread (a port
    /// removed at runtime): how many frames its source has made available that it
    /// will not take (they stay in the guest's ring, uncounted by `tx_packets`).
    fn retire(&mut self) -> u64 {
        0
    }
    /// This stream as a macvlan shard, for changing its ports between polls.
    fn as_macvlan(&mut self) -> Option<&mut macvlan::MacvlanShard> {
        None
    }
    /// Before its thread sleeps (adaptive polling, see `pmd_thread`): registers
    /// `wake` with every port the stream polls or delivers to, asks the drivers of
    /// its source queues to kick, and looks at them a last time. Returns whether
    /// frames are waiting (the thread polls on instead). A stream that cannot be
    /// woken says so: the default keeps its thread polling.
    fn request_kicks(&mut self, _wake: &Arc<Wake>) -> bool {
        true
    }
    /// What its thread waits on while it sleeps: the kick eventfds of its source
    /// queues, and sockets that have frames for it when readable (an uplink's).
    /// Called after [`Stream::request_kicks`].
    fn wait_fds(&self, _fds: &mut WaitFds) {}
}

/// What a sleeping polling thread waits on, gathered from its streams.
#[derive(Default)]
pub struct WaitFds {
    /// The frontends' kick eventfds of the source queues: waited on edge-triggered
    /// and never read (a frontend can make its eventfd blocking), held while waited
    /// on.
    pub kicks: Vec<Arc<OwnedFd>>,
    /// Sockets with frames when readable (level-triggered); owned by the streams.
    pub sockets: Vec<RawFd>,
}

impl WaitFds {
    /// Adds `port`'s kick eventfd of TX queue pair `pair`, if its frontend gave one.
    pub fn add_tx_kick(&mut self, port: &VirtioNetPort, pair: usize) {
        if let Some(fd) = port.kick_fd(tx_queue(pair)) {
            self.kicks.push(fd);
        }
    }
}

/// A vhost-user port as one stream holds it: the shared port and counters, and
/// this stream's private ring cache, burst tally and log limiter.
pub struct VhostEndpoint {
    /// The port.
    pub port: Arc<VirtioNetPort>,
    /// This stream's counters for the port, flushed once per burst.
    pub counters: Arc<CounterBlock>,
    /// The port's rings as this stream last saw them.
    pub cache: RingCache,
    /// This burst's figures.
    pub tally: PortTally,
    /// Limits log lines about this port's bad rings.
    pub log: LogLimiter,
}

impl VhostEndpoint {
    /// An endpoint of `port`.
    pub fn new(port: Arc<VirtioNetPort>, counters: &PortCounters) -> Self {
        VhostEndpoint {
            port,
            counters: counters.writer(),
            cache: RingCache::default(),
            tally: PortTally::default(),
            log: LogLimiter::guest_errors(),
        }
    }

    /// Largest Ethernet frame the port's guest accepts.
    #[inline]
    pub fn max_frame(&self) -> u32 {
        u32::from(self.port.mtu()) + L2_OVERHEAD
    }

    /// Adds this burst's tally to the shared counters.
    #[inline]
    pub fn flush(&mut self) {
        self.counters.flush(&mut self.tally);
    }

    /// [`request_tx_kicks`] for this port's own cache.
    pub fn request_tx_kicks(&mut self, pair: usize, wake: &Arc<Wake>) -> bool {
        request_tx_kicks(&mut self.cache, &self.port, pair, wake)
    }
}

/// [`Stream::request_kicks`] for `port`'s TX queue of queue pair `pair`, read
/// through `cache`: whether frames wait there. A queue not running has none (its
/// start, or the connection's, changes the port's setup, which wakes the thread).
pub fn request_tx_kicks(
    cache: &mut RingCache,
    port: &VirtioNetPort,
    pair: usize,
    wake: &Arc<Wake>,
) -> bool {
    port.wake_on_kick(wake);
    let Some(view) = cache.rings(port) else {
        return false;
    };
    match view.queue(tx_queue(pair)) {
        Ok(Some(mut q)) => q.request_kicks(),
        // A broken ring is counted by the next poll; it waits for a reset.
        Ok(None) | Err(_) => false,
    }
}

/// Counts and (rate-limited) logs a ring that broke a rule. The queue is stopped
/// from then on ([`QueueError::Stopped`], neither counted nor logged again) until
/// the driver resets or moves it.
#[cold]
pub fn ring_error(
    tally: &mut PortTally,
    log: &mut LogLimiter,
    port: &str,
    queue: &str,
    e: &QueueError,
) {
    if *e == QueueError::Stopped {
        return;
    }
    tally.ring_errors += 1;
    if let Some(held_back) = log.allow() {
        log::warn!(
            "port {port}: {queue} queue stopped until the driver resets it: {e} \
             ({held_back} similar messages held back)"
        );
    }
}

/// Logs (rate-limited) a malformed descriptor chain that was skipped; the caller
/// counts it (`bad_tx_desc` / `bad_rx_desc`). A guest can make this happen for
/// every frame, so the log line must never be per frame.
#[cold]
pub fn bad_chain(log: &mut LogLimiter, port: &str, queue: &str, e: &dyn std::fmt::Display) {
    if let Some(held_back) = log.allow() {
        log::warn!(
            "port {port}: bad {queue} descriptor chain skipped: {e} \
             ({held_back} similar messages held back)"
        );
    }
}

/// An open TX queue, the layout its guest negotiated, and the sender's queue pairs
/// whose TX queues run (see `ActiveRings::tx_running`).
pub type OpenTx<'c> = (VirtQueue<'c>, NetLayout, u32);

/// Opens `port`'s TX queue of queue pair `pair` (through `cache`) for a burst; `None`
/// when it is not running or holds no frame. Whether it runs is noted for the
/// connection (`ActiveRings::note_tx_running`). A broken ring is counted and logged
/// under the port (rate-limited by `log`), and the tally flushed to `counters` at
/// once (no burst follows to do it).
#[inline]
pub fn open_tx<'c>(
    cache: &'c mut RingCache,
    port: &VirtioNetPort,
    pair: usize,
    (tally, log, counters): (&mut PortTally, &mut LogLimiter, &CounterBlock),
) -> Option<OpenTx<'c>> {
    let view = cache.rings(port)?;
    let layout = view.layout();
    let rings = view.rings();
    match view.queue(tx_queue(pair)) {
        Ok(Some(q)) => {
            rings.note_tx_running(pair, true);
            (q.pending() > 0).then(|| (q, layout, rings.tx_running()))
        }
        Ok(None) => {
            rings.note_tx_running(pair, false);
            None
        }
        Err(e) => {
            ring_error(tally, log, port.name(), "TX", &e);
            counters.flush(tally);
            None
        }
    }
}

/// An RX queue open for a burst, with the layout its guest negotiated.
pub struct RxTarget<'a> {
    /// The queue.
    pub queue: VirtQueue<'a>,
    /// Header layout.
    pub layout: NetLayout,
    /// Set once the queue ran out of buffers: the rest of the burst is dropped
    /// without looking again.
    pub full: bool,
    /// Why frames are dropped once `full`: a driver that never posted a buffer is
    /// not receiving yet (peer down), else it ran out (no RX buffer).
    pub empty_reason: DropReason,
}

impl<'a> RxTarget<'a> {
    /// Opens the port's (first) RX queue for a burst; `Ok(None)` while its driver is
    /// not running.
    #[inline]
    pub fn open(view: PortView<'a>) -> Result<Option<RxTarget<'a>>, QueueError> {
        Self::open_pair(view, 0)
    }

    /// Opens the RX queue of queue pair `pair` for a burst; `Ok(None)` while it is
    /// not running (not started, or disabled by the driver).
    #[inline]
    pub fn open_pair(view: PortView<'a>, pair: usize) -> Result<Option<RxTarget<'a>>, QueueError> {
        let rings = view.rings();
        let layout = view.layout();
        let Some(queue) = view.queue(rx_queue(pair))? else {
            return Ok(None);
        };
        let empty_reason = if rings.rx_posted(queue.pending()) {
            DropReason::NoRxBuffer
        } else {
            DropReason::PeerDown
        };
        Ok(Some(RxTarget {
            queue,
            layout,
            full: false,
            empty_reason,
        }))
    }
}

/// Copies `frame` (`len` bytes) into `rx`, or says why not. A malformed RX chain
/// is logged (rate-limited by `log`) under the receiving `port`'s name.
#[inline]
pub fn deliver(
    rx: &mut RxTarget<'_>,
    frame: &SegList,
    len: u32,
    scratch: &mut RxScratch,
    log: &mut LogLimiter,
    port: &str,
) -> Result<(), DropReason> {
    deliver_with(rx, log, port, |q, layout| {
        net::deliver_rx_frame(q, layout, frame, len, scratch)
    })
}

/// [`deliver`] for a frame with offload fields or headers of vpmd's own.
#[inline]
pub fn deliver_frame(
    rx: &mut RxTarget<'_>,
    frame: &RxFrame<'_>,
    scratch: &mut RxScratch,
    log: &mut LogLimiter,
    port: &str,
) -> Result<(), DropReason> {
    deliver_with(rx, log, port, |q, layout| {
        net::deliver_rx(q, layout, frame, scratch)
    })
}

/// Runs `copy` into `rx`'s queue unless it is full already, and turns its result
/// into a drop reason: a full queue marks `rx` full for the rest of the burst, a
/// malformed chain is logged (rate-limited).
#[inline(always)]
fn deliver_with(
    rx: &mut RxTarget<'_>,
    log: &mut LogLimiter,
    port: &str,
    copy: impl FnOnce(&mut VirtQueue<'_>, NetLayout) -> Result<(), RxError>,
) -> Result<(), DropReason> {
    if rx.full {
        return Err(rx.empty_reason);
    }
    match copy(&mut rx.queue, rx.layout) {
        Ok(()) => Ok(()),
        Err(RxError::NoBuffers) => {
            rx.full = true;
            Err(rx.empty_reason)
        }
        Err(e @ (RxError::Chain(_) | RxError::ShortHeader)) => {
            bad_chain(log, port, "RX", &e);
            Err(DropReason::BadRxDesc)
        }
    }
}
