// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vpmd-bench: a vhost-user virtio-net *driver* (the VM side, like DPDK's virtio-user)
//! and the traffic tools built on it: a packet generator, a checking sink, a zero-copy
//! loopback forwarder and a latency meter, to test and benchmark vpmd and its peers.
//!
//! Control plane:
//! - [`port`]: [`Port`], one device: handshake, rings, RX/TX queues, disconnect.
//! - [`connection`]: the vhost-user setup messages, in cloud-hypervisor's order.
//! - [`guest_mem`]: memfd-backed "guest RAM" (optionally hugepages) shared with backends.
//! - [`frontend`]: [`NetFrontend`], a port with its own memory and a frame-copy API.
//!
//! Data path:
//! - [`split_queue`]: the driver side of a split virtqueue over raw ring pointers.
//! - [`pool`]: frame buffers in guest memory, shared by the ports of one "VM".
//! - [`net_rx`]: RX buffers, zero-copy or lent frames, MRG_RXBUF reassembly.
//! - [`net_tx`]: buffers into the TX ring, reclaim.
//! - [`virtio_net`]: header, features and config space definitions.
//!
//! Traffic:
//! - [`frame`]: Ethernet/IPv4/UDP test frames (sequence number, length, stamp, checksum).
//! - [`seq_check`]: loss, reordering, duplicate and corruption accounting of a receiver.
//! - [`histogram`]: latency histogram and percentiles.
//! - [`pacing`]: rate limiting, run limits (count, duration) and clocks.
//! - [`transfer`]: send numbered frames one way and check they all arrive, in order.
//! - [`stats_doc`]: reading `vpmd stats --json` documents (ports, counters, drops).
//! - [`vpmd`]: the one harness that starts `vpmd` for tests ([`vpmd::Vpmd`]).
//! - [`modes`]: the benchmark engines, one per file: txonly, rxonly, loopback, latency.
#![deny(unsafe_code)]

pub mod connection;
pub mod frame;
pub mod frontend;
pub mod guest_mem;
pub mod histogram;
pub mod modes;
pub mod net_rx;
pub mod net_tx;
pub mod pacing;
pub mod pool;
pub mod port;
pub mod seq_check;
pub mod split_queue;
pub mod stats_doc;
pub mod transfer;
pub mod virtio_net;
pub mod vpmd;

#[cfg(test)]
mod test_device;

pub use frontend::{DeviceInfo, FrontendError, FrontendOptions, NetFrontend, Stats};
pub use port::{Port, PortError, PortOptions};
pub use virtio_net::{NetConfig, NetLayout};
/// The workspace's MAC address type, for the harnesses built on this crate.
pub use vpmd_uplink::MacAddr;
