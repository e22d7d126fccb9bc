//! vpmd-bench: a vhost-user virtio-net *driver* (the VM side, like DPDK's virtio-user),
//! for testing vpmd and, later, generating traffic through it.
//!
//! Control plane:
//! - [`frontend`]: [`NetFrontend`], one device: connect, send/receive bursts, disconnect.
//! - [`connection`]: the vhost-user setup messages, in cloud-hypervisor's order.
//! - [`guest_mem`]: memfd-backed "guest RAM" shared with the backend.
//!
//! Data path:
//! - [`split_queue`]: the driver side of a split virtqueue: chains, publish, kick, used ring.
//! - [`net_tx`]: frames into TX chains.
//! - [`net_rx`]: RX buffers and frame reassembly (MRG_RXBUF).
//! - [`virtio_net`]: header, features and config space definitions.
//!
//! Traffic:
//! - [`frame`]: self-checking test frames (sequence number, length, checksum).
//! - [`transfer`]: send numbered frames one way and check they all arrive, in order.

pub mod connection;
pub mod frame;
pub mod frontend;
pub mod guest_mem;
pub mod net_rx;
pub mod net_tx;
pub mod split_queue;
pub mod transfer;
pub mod virtio_net;

#[cfg(test)]
mod test_device;

pub use frontend::{DeviceInfo, FrontendError, FrontendOptions, NetFrontend, Stats};
pub use virtio_net::{format_mac, NetConfig, NetLayout};
