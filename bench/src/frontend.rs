// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`NetFrontend`]: one virtio-net device with its own guest memory and buffers, and a
//! frame-at-a-time API (copy in, borrow out) for checked transfers and tests. The
//! benchmark modes drive [`Port`]s over shared memory directly instead.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MTU;

use crate::connection::DRIVER_PROTOCOL_FEATURES;
use crate::guest_mem::{GuestMem, MemError, DEFAULT_MEM_SIZE};
use crate::net_rx::RxStats;
use crate::net_tx::TxStats;
use crate::pool::{BufPool, PoolError};
use crate::port::{Port, PortError, PortOptions};
use crate::split_queue::DEFAULT_QUEUE_SIZE;
use crate::virtio_net::{has, DRIVER_FEATURES};

pub use crate::port::DeviceInfo;

/// How to build and connect a [`NetFrontend`]. Start from [`FrontendOptions::new`].
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// vhost-user socket of the backend (it listens).
    pub socket: PathBuf,
    /// Descriptors per queue (power of two).
    pub queue_size: u16,
    /// Bytes offered to the device per RX buffer. With MRG_RXBUF a larger frame spans
    /// several buffers; without it, buffers are enlarged to hold the largest frame.
    pub rx_buf_size: u32,
    /// Smallest TX buffer; buffers always hold the largest frame.
    pub tx_buf_size: u32,
    /// Guest physical address of the memory.
    pub mem_base: u64,
    /// Guest memory size in bytes.
    pub mem_size: usize,
    /// Back guest memory with 2 MiB hugepages.
    pub huge_pages: bool,
    /// Virtio features to accept if offered.
    pub features: u64,
    /// Protocol features to accept if offered.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Read the MAC/MTU with GET_CONFIG when CONFIG is negotiated. DPDK's net vhost does not
    /// answer it; turn this off there.
    pub read_config: bool,
    /// Largest Ethernet frame expected (raised to the device's MTU + 18 when it has one).
    pub max_frame: usize,
    /// Frames per [`NetFrontend::recv_burst`].
    pub burst: usize,
    /// How long to retry connecting while the socket is absent or refusing.
    pub connect_timeout: Duration,
    /// How long to wait for any reply of the backend.
    pub reply_timeout: Duration,
}

impl FrontendOptions {
    /// Defaults: 256-entry queues, 2 KiB buffers, 64 MiB at address 0, all driver features.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        FrontendOptions {
            socket: socket.into(),
            queue_size: DEFAULT_QUEUE_SIZE,
            rx_buf_size: 2048,
            tx_buf_size: 2048,
            mem_base: 0,
            mem_size: DEFAULT_MEM_SIZE,
            huge_pages: false,
            features: DRIVER_FEATURES,
            protocol_features: DRIVER_PROTOCOL_FEATURES,
            read_config: true,
            max_frame: 1518,
            burst: 64,
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(5),
        }
    }

    /// The [`PortOptions`] part.
    pub fn port_options(&self) -> PortOptions {
        PortOptions {
            socket: self.socket.clone(),
            queue_size: self.queue_size,
            features: self.features,
            protocol_features: self.protocol_features,
            read_config: self.read_config,
            connect_timeout: self.connect_timeout,
            reply_timeout: self.reply_timeout,
            queue_pairs: 1,
            enabled_pairs: None,
        }
    }
}

/// A failed connect.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Guest memory could not be created.
    #[error("guest memory")]
    Memory(#[from] MemError),
    /// The buffer pool could not be created.
    #[error("buffer pool")]
    Pool(#[from] PoolError),
    /// Connecting or setting up the device failed.
    #[error(transparent)]
    Port(#[from] PortError),
}

/// Counters of both directions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Receive side.
    pub rx: RxStats,
    /// Transmit side.
    pub tx: TxStats,
    /// Used entries naming no in-flight chain, both queues (backend bugs).
    pub bad_used: u64,
}

/// A connected virtio-net driver with its own memory.
pub struct NetFrontend {
    // Field order is drop order: the connection closes before the memory is unmapped.
    port: Port,
    pool: BufPool,
    burst: usize,
    _mem: GuestMem,
}

impl NetFrontend {
    /// Builds guest memory, runs the vhost-user handshake, sizes buffers for the largest
    /// frame (from the device's MTU when it has one), then sets up and enables the rings.
    pub fn connect(opts: &FrontendOptions) -> Result<Self, FrontendError> {
        let mut mem = if opts.huge_pages {
            GuestMem::new_huge(opts.mem_base, opts.mem_size)?
        } else {
            GuestMem::new(opts.mem_base, opts.mem_size)?
        };
        let hs = Port::handshake(&opts.port_options())?;
        let info = *hs.info();
        let max_frame = match info.config {
            Some(c) if has(info.negotiated.features, VIRTIO_NET_F_MTU) => {
                opts.max_frame.max(usize::from(c.mtu) + 18)
            }
            _ => opts.max_frame,
        };
        let frame_buf = (info.layout.hdr_len + max_frame) as u32;
        let rx_post = if info.layout.mrg_rxbuf {
            opts.rx_buf_size
        } else {
            opts.rx_buf_size.max(frame_buf)
        };
        let buf_size = rx_post.max(opts.tx_buf_size).max(frame_buf);
        // Both rings full, plus a burst in hand.
        let count = 2 * u32::from(opts.queue_size) + opts.burst as u32;
        let mut pool = BufPool::new(&mut mem, count, buf_size)?;
        let port = hs.start(&mut mem, &mut pool, rx_post)?;
        Ok(NetFrontend {
            port,
            pool,
            burst: opts.burst.max(1),
            _mem: mem,
        })
    }

    /// What setup learnt.
    pub fn info(&self) -> &DeviceInfo {
        self.port.info()
    }

    /// Acknowledged virtio features.
    pub fn features(&self) -> u64 {
        self.info().negotiated.features
    }

    /// The MAC from the config space, if read.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.info().config.map(|c| c.mac)
    }

    /// The MTU from the config space, if read.
    pub fn mtu(&self) -> Option<u16> {
        self.info().config.map(|c| c.mtu)
    }

    /// Copies as many frames as fit into the TX ring; returns how many.
    pub fn send_burst(&mut self, frames: &[&[u8]]) -> usize {
        self.port.tx.send_copy(&mut self.pool, frames)
    }

    /// Queues one frame; false when the TX ring is full.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.send_burst(&[frame]) == 1
    }

    /// Lends up to the configured burst of received frames to `f`; returns how many.
    pub fn recv_burst(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        self.port.rx.recv_frames(&mut self.pool, self.burst, f)
    }

    /// One received frame, if any, copied out.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut out = None;
        self.port
            .rx
            .recv_frames(&mut self.pool, 1, &mut |f: &[u8]| out = Some(f.to_vec()));
        out
    }

    /// One received frame, waiting up to `timeout` for it.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.recv() {
                return Some(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.port.rx.wait(left);
        }
    }

    /// Waits up to `timeout` until the RX ring has used entries.
    pub fn wait_rx(&mut self, timeout: Duration) -> bool {
        self.port.rx.wait(timeout)
    }

    /// Waits until the backend has consumed every queued TX frame.
    pub fn wait_tx_done(&mut self, timeout: Duration) -> bool {
        self.port.tx.wait_done(&mut self.pool, timeout)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            rx: self.port.rx.stats(),
            tx: self.port.tx.stats(),
            bad_used: self.port.rx.queue().bad_used() + self.port.tx.queue().bad_used(),
        }
    }

    /// Stops both rings and closes the connection (see [`Port::disconnect`]).
    pub fn disconnect(self) -> Result<(), FrontendError> {
        let NetFrontend { port, .. } = self;
        port.disconnect().map_err(FrontendError::from)
    }
}
