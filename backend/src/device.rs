//! The vhost-user backend of one connection: features, config space, and handing
//! the rings to the polling threads.
//!
//! vhost-user-backend runs the protocol; this type answers its questions. It never
//! touches frames. When a ring becomes ready and enabled the library calls
//! `handle_event` once (and again on the rare guest kick); that is where the rings
//! are published to the port for the polling threads.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::features;
use crate::port::{ActiveRings, VirtioNetPort};
use crate::split_ring::MAX_QUEUE_SIZE;
use crate::GuestMemoryAtomicMmap;

/// Queues per device: one RX/TX pair for now.
pub const NUM_QUEUES: usize = 2;

/// Backend state of one vhost-user connection of a port.
pub struct NetDevice {
    port: Arc<VirtioNetPort>,
    mem: GuestMemoryAtomicMmap,
    acked_features: Arc<AtomicU64>,
    /// Bumped after every memory-table change, so that polling threads reload the
    /// snapshot only when it changed.
    mem_generation: Arc<AtomicU64>,
    published: AtomicBool,
}

impl NetDevice {
    /// A device for a new connection of `port`, over `mem` (the daemon's memory).
    pub fn new(port: Arc<VirtioNetPort>, mem: GuestMemoryAtomicMmap) -> Self {
        NetDevice {
            port,
            mem,
            acked_features: Arc::new(AtomicU64::new(0)),
            mem_generation: Arc::new(AtomicU64::new(1)),
            published: AtomicBool::new(false),
        }
    }

    /// Withdraws this connection's rings from the polling threads.
    pub fn unpublish(&self) {
        self.published.store(false, Ordering::Release);
        self.port.set_active(None);
    }
}

impl VhostUserBackend for NetDevice {
    type Bitmap = ();
    type Vring = VringRwLock<GuestMemoryAtomicMmap>;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        usize::from(MAX_QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        features::device_features()
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        features::protocol_features()
    }

    fn reset_device(&self) {
        self.unpublish();
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The queue itself records it; VirtQueue reads it every burst.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let space = features::config_space(self.port.mac(), self.port.mtu());
        features::config_window(&space, offset, size)
    }

    fn update_memory(&self, _mem: GuestMemoryAtomicMmap) -> io::Result<()> {
        // The library has swapped the snapshot inside the atomic we share with it:
        // tell the polling threads to load it at their next burst.
        self.mem_generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        vec![(1 << NUM_QUEUES) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if usize::from(device_event) >= NUM_QUEUES || self.published.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let rings = ActiveRings::new(
            vrings.to_vec(),
            self.mem.clone(),
            self.acked_features.clone(),
            self.mem_generation.clone(),
        );
        self.port.set_active(Some(Arc::new(rings)));
        log::info!("port {}: rings started, polling", self.port.name());
        Ok(())
    }
}

/// Guest memory of a new connection: empty until SET_MEM_TABLE.
pub fn new_guest_memory() -> GuestMemoryAtomicMmap {
    GuestMemoryAtomicMmap::new(GuestMemoryMmap::new())
}
