// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The vhost-user backend of one connection: features, config space, and handing
//! the rings to the polling threads.
//!
//! vhost-user-backend runs the protocol; this type answers its questions. It never
//! touches frames. When a ring becomes ready and enabled the library calls
//! `handle_event` once (and again on the rare guest kick); that is where the rings
//! are published to the port for the polling threads.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::dirty_log::DirtyLog;
use crate::fault_guard::MemoryWatch;
use crate::features;
use crate::port::{close_reason, ActiveRings, ConnHealth, VirtioNetPort};
use crate::split_ring::MAX_QUEUE_SIZE;
use crate::GuestMemoryAtomicMmap;

/// Backend state of one vhost-user connection of a port.
pub struct NetDevice {
    port: Arc<VirtioNetPort>,
    mem: GuestMemoryAtomicMmap,
    acked_features: Arc<AtomicU64>,
    published: AtomicBool,
    /// Shared with the relay and the polling threads: set when the connection
    /// must close.
    health: Arc<ConnHealth>,
    /// Shared with the relay (which sets it) and the polling threads (which mark it).
    log: Arc<DirtyLog>,
    /// This connection's guest memory, registered with the SIGBUS guard.
    watch: Arc<MemoryWatch>,
    /// Exit-event consumer fds handed to vhost-user-backend. Its
    /// `VringEpollHandler::new` (0.24) takes each with `into_raw_fd` and never closes
    /// it: one eventfd leaked per connection. Closed when this device is dropped,
    /// which happens only once every handler holding it is gone.
    lent_exit_fds: Mutex<Vec<RawFd>>,
}

impl NetDevice {
    /// A device for a new connection of `port`, over `mem` (the daemon's memory).
    pub fn new(port: Arc<VirtioNetPort>, mem: GuestMemoryAtomicMmap) -> Self {
        NetDevice {
            port,
            mem,
            acked_features: Arc::new(AtomicU64::new(0)),
            published: AtomicBool::new(false),
            health: Arc::new(ConnHealth::new()),
            log: Arc::new(DirtyLog::new()),
            watch: Arc::new(MemoryWatch::default()),
            lent_exit_fds: Mutex::new(Vec::new()),
        }
    }

    /// The connection's health, shared with its relay.
    pub fn health(&self) -> &Arc<ConnHealth> {
        &self.health
    }

    /// The connection's dirty log, shared with its relay.
    pub fn dirty_log(&self) -> &Arc<DirtyLog> {
        &self.log
    }

    /// The connection's guest memory as the SIGBUS guard knows it.
    pub fn memory_watch(&self) -> &Arc<MemoryWatch> {
        &self.watch
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
        2 * self.port.queue_pairs()
    }

    fn max_queue_size(&self) -> usize {
        usize::from(MAX_QUEUE_SIZE)
    }

    fn features(&self) -> u64 {
        features::device_features(self.port.offloads(), self.port.queue_pairs())
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
        let space =
            features::config_space(self.port.mac(), self.port.mtu(), self.port.queue_pairs());
        features::config_window(&space, offset, size)
    }

    fn update_memory(&self, mem: GuestMemoryAtomicMmap) -> io::Result<()> {
        // The library has swapped the snapshot inside the atomic we share with it.
        // Register its regions with the SIGBUS guard first, then tell the polling
        // threads to load it at their next burst.
        if let Err(e) = self.watch.add_snapshot(mem.memory().into_inner()) {
            // Unguarded memory must never be touched: stop serving this connection.
            self.health.request_close(close_reason::UNGUARDED_MEMORY);
            return Err(io::Error::other(e));
        }
        self.port.setup_changed();
        Ok(())
    }

    fn stop_vring(&self, _queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE: the driver is resetting the ring. Polling threads stop a
        // queue that broke a rule until its configuration changes (see
        // `QueueCache::open`); a reset that sets up the very same addresses and
        // base must still count as a change, so bump the port's setup generation.
        self.port.setup_changed();
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One worker thread (kicks are not used: the rings are polled) for all.
        vec![(1u64 << self.num_queues()) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()?;
        self.lent_exit_fds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        if usize::from(device_event) >= self.num_queues()
            || self.published.swap(true, Ordering::AcqRel)
        {
            return Ok(());
        }
        let rings = ActiveRings::new(
            vrings.to_vec(),
            self.mem.clone(),
            self.acked_features.clone(),
            self.port.setup_generation(),
            self.health.clone(),
            self.port.faults().clone(),
            self.log.clone(),
        );
        self.log.set_vrings(vrings);
        self.port.set_active(Some(Arc::new(rings)));
        log::info!(
            "port {}: rings started, polling; features {}",
            self.port.name(),
            features::describe(self.acked_features.load(Ordering::Relaxed))
        );
        Ok(())
    }
}

impl Drop for NetDevice {
    #[allow(unsafe_code)] // Closing the fds vhost-user-backend leaks.
    fn drop(&mut self) {
        let fds = self
            .lent_exit_fds
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for fd in fds.drain(..) {
            // SAFETY: `fd` is an exit-event consumer that vhost-user-backend took with
            // `into_raw_fd` and never closes (see `lent_exit_fds`; the test below checks
            // that it is still open once the daemon is gone). Its only user, the
            // library's epoll handler, held an `Arc` of this device, so it is gone too:
            // nothing else owns this number, and closing it cannot hit another file.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
}

/// Guest memory of a new connection: empty until SET_MEM_TABLE.
pub fn new_guest_memory() -> GuestMemoryAtomicMmap {
    GuestMemoryAtomicMmap::new(GuestMemoryMmap::new())
}

#[cfg(test)]
mod exit_fd_tests {
    use super::*;
    use vhost_user_backend::VhostUserDaemon;

    /// vhost-user-backend 0.24 leaves the exit-event consumer open after the daemon is
    /// gone, so `NetDevice::drop` closing it is no double close. Should a new version
    /// close it itself, this fails: then drop `lent_exit_fds`.
    #[test]
    #[allow(unsafe_code)] // fcntl(F_GETFD) to see whether an fd number is open.
    fn library_leaves_the_exit_fd_to_us() {
        let port = Arc::new(VirtioNetPort::new("t", [2, 0, 0, 0, 0, 1], 1500));
        let mem = new_guest_memory();
        let dev = Arc::new(NetDevice::new(port, mem.clone()));
        let daemon = VhostUserDaemon::new("t".into(), dev.clone(), mem).unwrap();
        let fds: Vec<RawFd> = dev.lent_exit_fds.lock().unwrap().clone();
        assert_eq!(fds.len(), 1, "one vring worker thread, one exit event");
        drop(daemon);
        assert_eq!(
            Arc::strong_count(&dev),
            1,
            "the daemon let go of the device"
        );
        for &fd in &fds {
            // SAFETY: F_GETFD only reads the flags of an fd number, open or not.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(flags >= 0, "vhost-user-backend closed exit fd {fd} itself");
        }
    }
}
