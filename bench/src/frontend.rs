//! [`NetFrontend`]: one virtio-net device driven over vhost-user, the way a VM's driver
//! drives it through cloud-hypervisor: memfd guest memory, one RX and one TX queue.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Frontend;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::connection::{self, ConnError, Negotiated, DRIVER_PROTOCOL_FEATURES};
use crate::guest_mem::{GuestMem, MemError, DEFAULT_MEM_SIZE};
use crate::net_rx::{RxQueue, RxStats};
use crate::net_tx::{TxQueue, TxStats};
use crate::split_queue::{QueueError, SplitQueue, DEFAULT_QUEUE_SIZE};
use crate::virtio_net::{has, NetConfig, NetLayout, DRIVER_FEATURES, RX_QUEUE, TX_QUEUE};

/// Queues this driver sets up: one RX/TX pair.
const NUM_QUEUES: u64 = 2;

/// How to build and connect a [`NetFrontend`]. Start from [`FrontendOptions::new`].
#[derive(Clone, Debug)]
pub struct FrontendOptions {
    /// vhost-user socket of the backend (it listens).
    pub socket: PathBuf,
    /// Descriptors per queue (power of two).
    pub queue_size: u16,
    /// Bytes per RX buffer (each RX descriptor).
    pub rx_buf_size: u32,
    /// Bytes per TX buffer; larger frames span several descriptors.
    pub tx_buf_size: u32,
    /// Guest physical address of the memory.
    pub mem_base: u64,
    /// Guest memory size in bytes.
    pub mem_size: usize,
    /// Virtio features to accept if offered.
    pub features: u64,
    /// Protocol features to accept if offered.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Read the MAC/MTU with GET_CONFIG when CONFIG is negotiated. DPDK's net vhost does not
    /// answer it; turn this off there.
    pub read_config: bool,
    /// Largest Ethernet frame expected (sizes RX chains without MRG_RXBUF).
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
            features: DRIVER_FEATURES,
            protocol_features: DRIVER_PROTOCOL_FEATURES,
            read_config: true,
            max_frame: 1518,
            burst: 64,
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(5),
        }
    }
}

/// A failed connect.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    Memory(#[from] MemError),
    /// A queue could not be laid out.
    #[error("queue {index}: {source}")]
    Queue {
        /// Queue index.
        index: usize,
        /// Cause.
        #[source]
        source: QueueError,
    },
    /// A vhost-user step failed.
    #[error("vhost-user {}: {source}", .socket.display())]
    Vhost {
        /// Socket path.
        socket: PathBuf,
        /// Cause.
        #[source]
        source: ConnError,
    },
}

/// What the device told us during setup.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInfo {
    /// Features offered, acknowledged, protocol features, queue count.
    pub negotiated: Negotiated,
    /// The config space, when read.
    pub config: Option<NetConfig>,
    /// Header length and merging.
    pub layout: NetLayout,
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

/// A connected virtio-net driver.
pub struct NetFrontend {
    // Field order is drop order: the connection closes before the memory is unmapped.
    vu: Option<Frontend>,
    rx: RxQueue,
    tx: TxQueue,
    info: DeviceInfo,
    burst: usize,
    socket: PathBuf,
    _mem: GuestMem,
}

impl NetFrontend {
    /// Builds guest memory and queues, then runs the whole vhost-user setup.
    pub fn connect(opts: &FrontendOptions) -> Result<Self, FrontendError> {
        let vhost = |source| FrontendError::Vhost {
            socket: opts.socket.clone(),
            source,
        };
        let mut mem = GuestMem::new(opts.mem_base, opts.mem_size)?;
        let queue = |mem: &mut GuestMem, index, buf| {
            SplitQueue::new(mem, opts.queue_size, buf)
                .map_err(|source| FrontendError::Queue { index, source })
        };
        let rxq = queue(&mut mem, RX_QUEUE, opts.rx_buf_size)?;
        let txq = queue(&mut mem, TX_QUEUE, opts.tx_buf_size)?;

        let mut vu = connection::connect(
            &opts.socket,
            NUM_QUEUES,
            opts.connect_timeout,
            opts.reply_timeout,
        )
        .map_err(vhost)?;
        let negotiated =
            connection::negotiate(&mut vu, opts.features, opts.protocol_features, NUM_QUEUES)
                .map_err(vhost)?;
        let config = if opts.read_config
            && negotiated
                .protocol
                .contains(VhostUserProtocolFeatures::CONFIG)
        {
            Some(connection::read_config(&mut vu).map_err(vhost)?)
        } else {
            None
        };
        let layout = NetLayout::new(negotiated.features);
        let max_frame = match config {
            Some(c)
                if has(
                    negotiated.features,
                    virtio_bindings::virtio_net::VIRTIO_NET_F_MTU,
                ) =>
            {
                opts.max_frame.max(usize::from(c.mtu) + 18)
            }
            _ => opts.max_frame,
        };
        let event_idx = has(negotiated.features, VIRTIO_RING_F_EVENT_IDX);
        let mut rx = RxQueue::new(rxq, layout, max_frame);
        let mut tx = TxQueue::new(txq, layout);
        rx.queue_mut().set_event_idx(event_idx);
        tx.queue_mut().set_event_idx(event_idx);
        // RX buffers go in before the ring starts, as a guest driver posts them at probe.
        rx.refill();

        connection::set_mem_table(&vu, &mem).map_err(vhost)?;
        connection::setup_vring(&vu, RX_QUEUE, rx.queue()).map_err(vhost)?;
        connection::setup_vring(&vu, TX_QUEUE, tx.queue()).map_err(vhost)?;
        for index in [RX_QUEUE, TX_QUEUE] {
            connection::enable_vring(&mut vu, index, true, &negotiated).map_err(vhost)?;
        }
        Ok(NetFrontend {
            vu: Some(vu),
            rx,
            tx,
            info: DeviceInfo {
                negotiated,
                config,
                layout,
            },
            burst: opts.burst.max(1),
            socket: opts.socket.clone(),
            _mem: mem,
        })
    }

    /// What setup learnt.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Acknowledged virtio features.
    pub fn features(&self) -> u64 {
        self.info.negotiated.features
    }

    /// The MAC from the config space, if read.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.info.config.map(|c| c.mac)
    }

    /// The MTU from the config space, if read.
    pub fn mtu(&self) -> Option<u16> {
        self.info.config.map(|c| c.mtu)
    }

    /// Queues as many frames as fit in the TX ring; returns how many.
    pub fn send_burst(&mut self, frames: &[&[u8]]) -> usize {
        self.tx.send_burst(frames)
    }

    /// Queues one frame; false when the TX ring is full.
    pub fn send(&mut self, frame: &[u8]) -> bool {
        self.send_burst(&[frame]) == 1
    }

    /// Hands up to the configured burst of received frames to `f`; returns how many.
    pub fn recv_burst(&mut self, f: &mut dyn FnMut(&[u8])) -> usize {
        self.rx.recv_burst(self.burst, f)
    }

    /// One received frame, if any, copied out.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut out = None;
        self.rx
            .recv_burst(1, &mut |f: &[u8]| out = Some(f.to_vec()));
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
            self.rx.wait(left);
        }
    }

    /// Waits up to `timeout` until the RX ring has used entries.
    pub fn wait_rx(&mut self, timeout: Duration) -> bool {
        self.rx.wait(timeout)
    }

    /// Waits until the backend has consumed every queued TX frame.
    pub fn wait_tx_done(&mut self, timeout: Duration) -> bool {
        self.tx.wait_done(timeout)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            rx: self.rx.stats(),
            tx: self.tx.stats(),
            bad_used: self.rx.queue().bad_used() + self.tx.queue().bad_used(),
        }
    }

    /// Stops both rings (SET_VRING_ENABLE 0, GET_VRING_BASE, as cloud-hypervisor does on
    /// reset) and closes the connection, reporting the first failure.
    pub fn disconnect(mut self) -> Result<(), FrontendError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), FrontendError> {
        let Some(mut vu) = self.vu.take() else {
            return Ok(());
        };
        let n = self.info.negotiated;
        let mut first_err = None;
        for index in [RX_QUEUE, TX_QUEUE] {
            if let Err(e) = connection::enable_vring(&mut vu, index, false, &n) {
                first_err.get_or_insert(e);
            }
        }
        for index in [RX_QUEUE, TX_QUEUE] {
            if let Err(e) = connection::stop_vring(&vu, index) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(source) => Err(FrontendError::Vhost {
                socket: self.socket.clone(),
                source,
            }),
        }
    }
}

impl Drop for NetFrontend {
    /// Best-effort [`NetFrontend::disconnect`]; replies are bounded by the reply timeout.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
