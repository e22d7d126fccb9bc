// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vpmd's vhost-user virtio-net device.
//!
//! Control plane (vhost-user protocol, one thread per port):
//! - [`connection`]: a port's socket in server or client role, across reconnects.
//! - [`device`]: the `VhostUserBackend` of one connection: features, config space,
//!   publishing started rings to the polling threads.
//! - [`features`]: offered virtio / vhost-user features and the config space.
//! - [`relay`]: passes vhost-user messages to the library, holding back an early ring enable.
//! - [`migration`]: the messages of live migration the relay answers (dirty log, RARP).
//! - [`port`]: [`port::VirtioNetPort`], what polling threads hold: identity and live rings.
//! - [`fd_check`]: refuses memory and eventfd fds that would crash or stall vpmd.
//! - [`conn_limits`]: what one connection may map and how fast it may send messages.
//! - [`fault_guard`]: guest memory that goes away under vpmd (SIGBUS) made harmless.
//! - [`dirty_log`]: the pages vpmd writes, marked for a migrating VM's frontend.
//! - [`stall_guard`]: a polling thread blocked on a frontend's eventfd is interrupted.
//! - [`ratelimit`]: log lines a guest can trigger, at most a few per interval.
//! - [`report`]: an error and its causes in one log line.
//! - [`wake`]: waking a polling thread that sleeps until a guest kicks.
//!
//! Data path (called by polling threads, one burst at a time):
//! - [`virtqueue`]: one burst on one queue: lock, map, pop, push used, publish once, notify once.
//! - [`net`]: virtio-net frames: take one from a TX chain, deliver one into RX buffers.
//! - [`offload`]: checksums and segmentation done in software for a receiver that cannot.
//! - [`chain`]: descriptor chain walking with every guest error reported.
//! - [`split_ring`]: raw access to the split ring's areas.
//! - [`seglist`]: a chain's buffers as host segments, and the one frame copy.
//! - [`guest_mem`]: guest-physical to host translation, bounds-checked.
#![deny(unsafe_code)]

pub mod chain;
pub mod conn_limits;
pub mod connection;
pub mod device;
pub mod dirty_log;
pub mod fault_guard;
pub mod fd_check;
pub mod features;
pub mod guest_mem;
pub mod migration;
pub mod net;
pub mod offload;
pub mod port;
pub mod ratelimit;
pub mod relay;
pub mod report;
pub mod seglist;
pub mod split_ring;
pub mod stall_guard;
pub mod virtqueue;
pub mod wake;

#[cfg(test)]
mod tests;

/// The memory type every vring and snapshot uses (no dirty-page bitmap).
pub type GuestMemoryAtomicMmap = vm_memory::GuestMemoryAtomic<vm_memory::GuestMemoryMmap>;
/// A vring shared between the vhost-user thread and the polling threads.
pub type Vring = vhost_user_backend::VringRwLock<GuestMemoryAtomicMmap>;
