// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A vhost-user virtio-net port as the polling threads see it.
//!
//! A [`VirtioNetPort`] outlives connections: it has a name, a MAC and an MTU, and,
//! while a frontend is connected and has started its rings, an [`ActiveRings`].
//!
//! One counter says when what a polling thread cached of the port may be stale: the
//! port's *setup generation*, bumped by the connection thread whenever a connection
//! comes or goes, the frontend replaces the memory table, or a ring is reset
//! (GET_VRING_BASE). Each polling thread keeps one [`RingCache`] per port: one
//! acquire load of that generation per burst; only when it moved, a lock, an `Arc`
//! clone and a fresh mapping of the memory and rings ([`QueueCache::map`]). A cache
//! holding rings of a closed connection keeps that connection's memory mapped until
//! its next burst, so a polling thread never touches an unmapped address.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vhost_user_backend::VringT;
use virtio_queue::QueueT;

use crate::conn_limits::ConnLimits;
use crate::dirty_log::DirtyLog;
use crate::features;
use crate::migration::{Announce, AnnounceGate, Announced};
use crate::net::NetLayout;
use crate::virtqueue::{QueueCache, QueueError, VirtQueue};
use crate::wake::{PortWakers, Wake};
use crate::{GuestMemoryAtomicMmap, Vring};

/// Queue index of the first RX queue.
pub const RX_QUEUE: usize = 0;
/// Queue index of the first TX queue.
pub const TX_QUEUE: usize = 1;

/// Most queue pairs a port may have (`VIRTIO_NET_F_MQ`): what a VM of up to 8
/// vCPUs spreads its traffic over; DPDK's and QEMU's limits are far above.
pub const MAX_QUEUE_PAIRS: usize = 8;

/// Queue index of queue pair `pair`'s RX queue (virtio-net: RX 2n, TX 2n+1).
#[inline]
pub const fn rx_queue(pair: usize) -> usize {
    2 * pair
}

/// Queue index of queue pair `pair`'s TX queue.
#[inline]
pub const fn tx_queue(pair: usize) -> usize {
    2 * pair + 1
}

/// What went wrong with a port's frontends, over all its connections. Each of
/// these is rare (once per hostile connection, or a notification that found the
/// guest's counter full), so they are plain shared atomics, not per-burst tallies.
#[derive(Debug)]
pub struct PortFaults {
    /// Connections stopped because their guest memory went away under vpmd
    /// (the file behind a region truncated, a hole punched into it).
    pub mem_faults: AtomicU64,
    /// Connections stopped because a guest notification blocked: the frontend
    /// made its call eventfd blocking and filled its counter.
    pub notify_blocked: AtomicU64,
    /// Guest notifications not delivered because the call eventfd's counter was full.
    pub notify_failed: AtomicU64,
    /// Connections closed for a refused message: an fd or memory kind vpmd does
    /// not accept, or a memory table past the port's limits.
    pub refused: AtomicU64,
    /// Messages a frontend sent faster than its rate limit, and was made to wait for.
    pub throttled: AtomicU64,
    /// Guest pages vpmd wrote while the VM migrated that lay past the end of the
    /// dirty log the frontend gave (a log too small: those pages were not logged).
    pub log_outside: AtomicU64,
}

impl PortFaults {
    /// All zero.
    pub const fn new() -> Self {
        PortFaults {
            mem_faults: AtomicU64::new(0),
            notify_blocked: AtomicU64::new(0),
            notify_failed: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            log_outside: AtomicU64::new(0),
        }
    }

    /// Every counter with its name, in the order stats print them.
    pub fn pairs(&self) -> [(&'static str, u64); 6] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("mem_faults", v(&self.mem_faults)),
            ("notify_blocked", v(&self.notify_blocked)),
            ("notify_failed", v(&self.notify_failed)),
            ("refused", v(&self.refused)),
            ("throttled", v(&self.throttled)),
            ("log_outside", v(&self.log_outside)),
        ]
    }
}

/// Why a connection is being closed (bits of [`ConnHealth`]).
pub mod close_reason {
    /// Its guest memory went away.
    pub const MEM_FAULT: u32 = 1;
    /// A notification to it blocked.
    pub const NOTIFY_BLOCKED: u32 = 2;
    /// vpmd could not keep track of its memory.
    pub const UNGUARDED_MEMORY: u32 = 4;
}

/// One connection's state of health, shared by its relay thread and the polling
/// threads: once anything asks for it to close, its queues are not served again
/// and the relay closes the connection.
#[derive(Debug, Default)]
pub struct ConnHealth {
    close: std::sync::atomic::AtomicU32,
}

impl Default for PortFaults {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnHealth {
    /// Healthy.
    pub const fn new() -> Self {
        ConnHealth {
            close: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Asks for the connection to be closed, for `reason` (a [`close_reason`] bit).
    pub fn request_close(&self, reason: u32) {
        self.close.fetch_or(reason, Ordering::AcqRel);
    }

    /// The reasons the connection is closing for; 0 while healthy.
    #[inline]
    pub fn closing(&self) -> u32 {
        self.close.load(Ordering::Relaxed)
    }
}

/// The rings and memory of one live connection.
pub struct ActiveRings {
    vrings: Vec<Vring>,
    mem: GuestMemoryAtomicMmap,
    acked_features: Arc<AtomicU64>,
    /// The port's setup generation (shared with it), read again at the start of
    /// each burst.
    setup_generation: Arc<AtomicU64>,
    /// The guest driver has posted RX buffers at least once on this connection.
    rx_posted: AtomicBool,
    /// See [`ActiveRings::tx_running`].
    tx_running: std::sync::atomic::AtomicU32,
    health: Arc<ConnHealth>,
    faults: Arc<PortFaults>,
    log: Arc<DirtyLog>,
}

impl ActiveRings {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vrings: Vec<Vring>,
        mem: GuestMemoryAtomicMmap,
        acked_features: Arc<AtomicU64>,
        setup_generation: Arc<AtomicU64>,
        health: Arc<ConnHealth>,
        faults: Arc<PortFaults>,
        log: Arc<DirtyLog>,
    ) -> Self {
        ActiveRings {
            vrings,
            mem,
            acked_features,
            setup_generation,
            rx_posted: AtomicBool::new(false),
            tx_running: std::sync::atomic::AtomicU32::new(0),
            health,
            faults,
            log,
        }
    }

    /// Whether the guest has ever posted RX buffers, given that `pending` are
    /// available now. A driver that has not (its interface was never brought up)
    /// is not receiving yet: frames for it count as the peer being down, as a veth
    /// counts them, rather than as a receiver that ran out of buffers.
    #[inline]
    pub fn rx_posted(&self, pending: u16) -> bool {
        if self.rx_posted.load(Ordering::Relaxed) {
            return true;
        }
        if pending > 0 {
            self.rx_posted.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Frame layout of the negotiated features.
    #[inline]
    pub fn layout(&self) -> NetLayout {
        features::layout(self.acked_features.load(Ordering::Relaxed))
    }

    /// The feature bits the driver acknowledged (for stats).
    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }

    /// The queue pairs whose RX queue is started and enabled, as a bit mask (bit
    /// `n`: pair `n`): where frames for this port may be steered. Takes each RX
    /// vring's read lock once.
    pub fn running_rx_queues(&self) -> u32 {
        let pairs = (self.vrings.len() / 2).min(MAX_QUEUE_PAIRS);
        (0..pairs)
            .filter(|&p| self.queue_running(rx_queue(p)))
            .fold(0, |m, p| m | 1 << p)
    }

    /// The queue pairs whose TX queue its polling stream last found running, as a
    /// bit mask: kept by the streams themselves ([`Self::note_tx_running`]), so that
    /// a burst holding one TX queue's lock never takes another's (two threads doing
    /// so the other way round would wait for each other).
    #[inline]
    pub fn tx_running(&self) -> u32 {
        self.tx_running.load(Ordering::Relaxed)
    }

    /// Records whether TX queue pair `pair`'s queue was running when its stream
    /// opened it (a store only when that changed).
    #[inline]
    pub fn note_tx_running(&self, pair: usize, running: bool) {
        let bit = 1u32 << pair.min(31);
        let was = self.tx_running.load(Ordering::Relaxed) & bit != 0;
        if was != running {
            if running {
                self.tx_running.fetch_or(bit, Ordering::Relaxed);
            } else {
                self.tx_running.fetch_and(!bit, Ordering::Relaxed);
            }
        }
    }

    /// Queue pairs the connection has (half its vrings).
    pub fn queue_pairs(&self) -> usize {
        self.vrings.len() / 2
    }

    /// Whether queue `index` is started and enabled.
    pub fn queue_running(&self, index: usize) -> bool {
        self.health.closing() == 0
            && self.vrings.get(index).is_some_and(|v| {
                let s = v.get_ref();
                s.get_queue().ready() && s.is_enabled()
            })
    }
}

/// A virtio-net port served over vhost-user.
pub struct VirtioNetPort {
    name: String,
    mac: [u8; 6],
    mtu: u16,
    offloads: u64,
    /// Queue pairs offered (1: no `VIRTIO_NET_F_MQ`).
    queue_pairs: usize,
    limits: ConnLimits,
    faults: Arc<PortFaults>,
    active: Mutex<Option<Arc<ActiveRings>>>,
    /// Bumped (release) after every change a polling thread's [`RingCache`] must see:
    /// `active` replaced (a connection came or went), the memory table replaced, a
    /// ring reset. Starts at 1, so that an empty cache (0) always loads.
    setup_generation: Arc<AtomicU64>,
    /// Where SEND_RARP announces the port's MAC after a migration (its macvlan
    /// uplink), if anywhere.
    announcer: Mutex<Option<Arc<dyn Announce>>>,
    announce_gate: AnnounceGate,
    /// Polling threads to wake when the setup changes.
    wakers: PortWakers,
    /// The frontend's kick eventfd of each queue (index = queue), kept by the relay
    /// for polling threads that sleep until kicked ([`crate::wake`]); never read.
    kicks: Mutex<Vec<Option<Arc<OwnedFd>>>>,
}

impl VirtioNetPort {
    /// A port with no connection yet, with the default [`ConnLimits`].
    pub fn new(name: &str, mac: [u8; 6], mtu: u16) -> Self {
        VirtioNetPort {
            name: name.to_string(),
            mac,
            mtu,
            offloads: features::OFFLOADS,
            queue_pairs: 1,
            limits: ConnLimits::DEFAULT,
            faults: Arc::new(PortFaults::default()),
            active: Mutex::new(None),
            setup_generation: Arc::new(AtomicU64::new(1)),
            announcer: Mutex::new(None),
            announce_gate: AnnounceGate::default(),
            wakers: PortWakers::default(),
            kicks: Mutex::new(Vec::new()),
        }
    }

    /// Sets (or with `None` clears) where the port announces its MAC after a
    /// migration.
    pub fn set_announcer(&self, announcer: Option<Arc<dyn Announce>>) {
        *self
            .announcer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = announcer;
    }

    /// SEND_RARP for `mac`: announces the port's MAC where its announcer sends it.
    pub fn announce(&self, mac: [u8; 6]) -> Announced {
        if mac != self.mac {
            return Announced::ForeignMac;
        }
        let announcer = self
            .announcer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(announcer) = announcer else {
            return Announced::Nowhere;
        };
        if !self.announce_gate.allow(std::time::Instant::now()) {
            return Announced::TooSoon;
        }
        match announcer.announce(mac) {
            Ok(()) => {
                log::info!(
                    "port {}: announced {} on {} after a migration (RARP)",
                    self.name,
                    crate::migration::mac_string(mac),
                    announcer.describe()
                );
                Announced::Sent
            }
            Err(e) => {
                log::warn!(
                    "port {}: announcing on {} failed: {e}",
                    self.name,
                    announcer.describe()
                );
                Announced::Failed
            }
        }
    }

    /// The same port with other per-connection limits.
    pub fn with_limits(mut self, limits: ConnLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same port offering other offloads (closed under their dependencies,
    /// [`features::offload_closure`]).
    pub fn with_offloads(mut self, offloads: u64) -> Self {
        self.offloads = features::offload_closure(offloads);
        self
    }

    /// The same port offering `pairs` queue pairs (1 to [`MAX_QUEUE_PAIRS`];
    /// clamped), with `VIRTIO_NET_F_MQ` when more than one.
    pub fn with_queue_pairs(mut self, pairs: usize) -> Self {
        self.queue_pairs = pairs.clamp(1, MAX_QUEUE_PAIRS);
        self
    }

    /// Queue pairs this port offers.
    pub fn queue_pairs(&self) -> usize {
        self.queue_pairs
    }

    /// The offload feature bits this port offers.
    pub fn offloads(&self) -> u64 {
        self.offloads
    }

    /// What each connection of this port may use.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// What went wrong with this port's frontends so far.
    pub fn faults(&self) -> &Arc<PortFaults> {
        &self.faults
    }

    /// Port name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// MAC address the guest sees in config space.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// MTU the guest sees in config space.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The live rings, if a frontend has started them. Takes a lock: polling
    /// threads go through a [`RingCache`] instead.
    #[inline]
    pub fn active(&self) -> Option<Arc<ActiveRings>> {
        self.active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the guest driver has both queues running.
    pub fn is_up(&self) -> bool {
        self.active()
            .is_some_and(|a| a.queue_running(RX_QUEUE) && a.queue_running(TX_QUEUE))
    }

    pub(crate) fn set_active(&self, rings: Option<Arc<ActiveRings>>) {
        *self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = rings;
        self.setup_changed();
    }

    /// Tells the polling threads that what they mapped of this port (memory, rings)
    /// may be stale: they map it afresh at their next burst.
    pub(crate) fn setup_changed(&self) {
        self.setup_generation.fetch_add(1, Ordering::Release);
        self.wakers.wake_all();
    }

    /// Registers a polling thread that polls this port and may sleep until it is
    /// kicked ([`crate::wake`]): a change of the port's setup wakes it. Takes a
    /// lock: call it only before sleeping.
    pub fn wake_on_kick(&self, wake: &Arc<Wake>) {
        self.wakers.register(wake);
    }

    /// The frontend's kick eventfd of queue `index`, if it gave one: to wait on
    /// (edge-triggered: it is the frontend's, never read by vpmd, see
    /// [`crate::wake`]). Takes a lock: call it only before sleeping.
    pub fn kick_fd(&self, index: usize) -> Option<Arc<OwnedFd>> {
        let kicks = self.kicks.lock().unwrap_or_else(PoisonError::into_inner);
        kicks.get(index).cloned().flatten()
    }

    /// SET_VRING_KICK: the frontend's kick eventfd of queue `index` (None: polled
    /// only). Wakes the threads that sleep so they wait on the new one.
    pub(crate) fn set_kick(&self, index: usize, fd: Option<OwnedFd>) {
        {
            let mut kicks = self.kicks.lock().unwrap_or_else(PoisonError::into_inner);
            if kicks.len() <= index {
                kicks.resize(index + 1, None);
            }
            kicks[index] = fd.map(Arc::new);
        }
        self.wakers.wake_all();
    }

    /// The connection ended: its kick eventfds are let go of (a polling thread that
    /// waits on one holds it until it next looks).
    pub(crate) fn clear_kicks(&self) {
        self.kicks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.wakers.wake_all();
    }

    /// The counter [`VirtioNetPort::setup_changed`] bumps, for the rings of a new
    /// connection to carry.
    pub(crate) fn setup_generation(&self) -> Arc<AtomicU64> {
        self.setup_generation.clone()
    }
}

/// The connection a burst works for: where a queue reports notifications it could
/// not deliver, and the dirty log it marks while the VM migrates.
#[derive(Clone, Copy)]
pub struct Notifier<'a> {
    /// The connection (closed when a notification blocks).
    pub health: &'a ConnHealth,
    /// The port's fault counters.
    pub faults: &'a PortFaults,
    /// The connection's dirty log.
    pub log: &'a DirtyLog,
}

impl Notifier<'static> {
    /// A notifier of no connection (tests, benchmarks, fuzzing).
    pub fn detached() -> Self {
        static HEALTH: ConnHealth = ConnHealth::new();
        static FAULTS: PortFaults = PortFaults::new();
        static LOG: DirtyLog = DirtyLog::new();
        Notifier {
            health: &HEALTH,
            faults: &FAULTS,
            log: &LOG,
        }
    }
}

/// A polling thread's cache of one port: the connection's rings and, mapped for
/// this thread, its guest memory and ring areas ([`QueueCache`]). The port's setup
/// generation is the one thing that says when any of it is stale.
#[derive(Default)]
pub struct RingCache {
    /// The port's setup generation `rings` and `queues` were loaded at (0: never).
    setup_generation: u64,
    rings: Option<Arc<ActiveRings>>,
    queues: QueueCache,
}

impl RingCache {
    /// The port's current rings. Costs one atomic load unless the port's setup
    /// changed since the last call.
    #[inline]
    pub fn rings(&mut self, port: &VirtioNetPort) -> Option<PortView<'_>> {
        let generation = port.setup_generation.load(Ordering::Acquire);
        if generation != self.setup_generation {
            // Read the generation before the rings and the memory: a change racing
            // with these reads bumps it again, and the check after `avail.idx` in
            // `PortView::queue` skips the burst; the next one loads the newer state.
            self.rings = port.active();
            match &self.rings {
                Some(rings) => self.queues.map(&rings.mem),
                None => self.queues.clear(),
            }
            self.setup_generation = generation;
        }
        let rings = self.rings.as_deref()?;
        Some(PortView {
            rings,
            queues: &mut self.queues,
            seen: generation,
        })
    }

    /// Lets go of the cached rings (and the memory they keep mapped).
    pub fn clear(&mut self) {
        *self = RingCache::default();
    }
}

/// One port's live rings, as a burst uses them.
pub struct PortView<'c> {
    rings: &'c ActiveRings,
    queues: &'c mut QueueCache,
    /// The port's setup generation `queues` was mapped at.
    seen: u64,
}

impl<'c> PortView<'c> {
    /// The connection's rings.
    #[inline]
    pub fn rings(&self) -> &'c ActiveRings {
        self.rings
    }

    /// Frame layout of the negotiated features.
    #[inline]
    pub fn layout(&self) -> NetLayout {
        self.rings.layout()
    }

    /// Opens queue `index` for a burst; `Ok(None)` when it is not running (or the
    /// connection is being closed). The port's setup generation is read again after
    /// `avail.idx`: when a memory table was replaced since this view was taken (the
    /// frontend, told it is done, may already have offered buffers in the new
    /// memory), the queue is let go of untouched for this burst, so no chain offered
    /// after the replacement was acked is ever taken through the old mapping.
    #[inline]
    pub fn queue(self, index: usize) -> Result<Option<VirtQueue<'c>>, QueueError> {
        if self.rings.health.closing() != 0 {
            return Ok(None);
        }
        let Some(vring) = self.rings.vrings.get(index) else {
            return Ok(None);
        };
        let notifier = Notifier {
            health: &self.rings.health,
            faults: &self.rings.faults,
            log: &self.rings.log,
        };
        match self.queues.open(vring, index, notifier) {
            Ok(Some(q)) if self.rings.setup_generation.load(Ordering::Acquire) != self.seen => {
                // Nothing popped, nothing published.
                drop(q);
                Ok(None)
            }
            other => other,
        }
    }
}
