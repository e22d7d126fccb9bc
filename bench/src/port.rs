// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`Port`]: one virtio-net device driven over vhost-user, the way a VM's driver drives it
//! through cloud-hypervisor: one RX and one TX queue (or, with
//! [`PortOptions::queue_pairs`] above 1, that many pairs under VIRTIO_NET_F_MQ) over
//! guest memory that several ports of the same "VM" may share, with frame buffers from a
//! shared [`BufPool`].
//!
//! Setup is two steps so the caller can size buffers from what the device says (its MTU):
//! [`Port::handshake`] (connect, features, config space), then [`Handshake::start`]
//! (memory table, rings, RX buffers posted, rings enabled).

use std::path::PathBuf;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::Frontend;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MQ;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use crate::connection::{self, ConnError, Negotiated, DRIVER_PROTOCOL_FEATURES};
use crate::guest_mem::GuestMem;
use crate::net_rx::RxQueue;
use crate::net_tx::TxQueue;
use crate::pool::BufPool;
use crate::split_queue::{QueueError, SplitQueue, DEFAULT_QUEUE_SIZE};
use crate::virtio_net::{NetConfig, NetLayout, DRIVER_FEATURES, RX_QUEUE, TX_QUEUE};

/// Most queue pairs a port sets up (what vpmd offers at most).
pub const MAX_QUEUE_PAIRS: u16 = 8;

/// Vring index of pair `pair`'s RX queue (virtio-net: RX 2n, TX 2n + 1).
fn rx_index(pair: usize) -> usize {
    RX_QUEUE + 2 * pair
}

/// Vring index of pair `pair`'s TX queue.
fn tx_index(pair: usize) -> usize {
    TX_QUEUE + 2 * pair
}

/// How to connect a [`Port`]. Start from [`PortOptions::new`].
#[derive(Clone, Debug)]
pub struct PortOptions {
    /// vhost-user socket of the backend (it listens).
    pub socket: PathBuf,
    /// Descriptors per queue (power of two).
    pub queue_size: u16,
    /// Virtio features to accept if offered.
    pub features: u64,
    /// Protocol features to accept if offered.
    pub protocol_features: VhostUserProtocolFeatures,
    /// Read the MAC/MTU with GET_CONFIG when CONFIG is negotiated. DPDK's net vhost does not
    /// answer it; turn this off there.
    pub read_config: bool,
    /// How long to retry connecting while the socket is absent or refusing.
    pub connect_timeout: Duration,
    /// How long to wait for any reply of the backend.
    pub reply_timeout: Duration,
    /// Queue pairs to set up, 1..=[`MAX_QUEUE_PAIRS`]; above 1 the device must offer
    /// VIRTIO_NET_F_MQ and at least as many pairs (GET_QUEUE_NUM).
    pub queue_pairs: u16,
    /// Of those, how many are enabled (SET_VRING_ENABLE 1) after setup, the first ones;
    /// `None`: all. The others are set up and left disabled, as after a guest's
    /// `ethtool -L combined M`.
    pub enabled_pairs: Option<u16>,
}

impl PortOptions {
    /// Defaults: 256-entry queues, all driver features, config space read, 10 s to connect.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        PortOptions {
            socket: socket.into(),
            queue_size: DEFAULT_QUEUE_SIZE,
            features: DRIVER_FEATURES,
            protocol_features: DRIVER_PROTOCOL_FEATURES,
            read_config: true,
            connect_timeout: Duration::from_secs(10),
            reply_timeout: Duration::from_secs(5),
            queue_pairs: 1,
            enabled_pairs: None,
        }
    }
}

/// A failed port setup.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// A queue could not be laid out.
    #[error("queue {index}")]
    Queue {
        /// Queue index.
        index: usize,
        /// Cause.
        #[source]
        source: QueueError,
    },
    /// A vhost-user step failed.
    #[error("vhost-user {}", .socket.display())]
    Vhost {
        /// Socket path.
        socket: PathBuf,
        /// Cause.
        #[source]
        source: ConnError,
    },
    /// More queue pairs were asked for than the device (or this driver) has.
    #[error("{want} queue pairs asked for: the device did not negotiate MQ, or this driver sets up 1..={MAX_QUEUE_PAIRS}")]
    QueuePairs {
        /// Pairs asked for.
        want: u16,
    },
    /// RX buffers would not hold what is offered to the device.
    #[error("RX buffers of {post_len} bytes do not fit pool buffers of {buf_size}")]
    PostLen {
        /// Bytes to offer per RX buffer.
        post_len: u32,
        /// Pool buffer size.
        buf_size: u32,
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

/// A connected device whose features are settled and whose rings are not set up yet.
pub struct Handshake {
    vu: Frontend,
    info: DeviceInfo,
    opts: PortOptions,
}

impl Handshake {
    /// What the device offered and said.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Lays out the rings in `mem`, posts RX buffers of `rx_post_len` bytes from `pool`
    /// (as a guest driver does at probe, before the rings start), then sends the memory
    /// table and ring setup and enables the rings.
    pub fn start(
        self,
        mem: &mut GuestMem,
        pool: &mut BufPool,
        rx_post_len: u32,
    ) -> Result<Port, PortError> {
        let Handshake { mut vu, info, opts } = self;
        if rx_post_len > pool.buf_size() || (rx_post_len as usize) < info.layout.hdr_len + 60 {
            return Err(PortError::PostLen {
                post_len: rx_post_len,
                buf_size: pool.buf_size(),
            });
        }
        let vhost = |source| PortError::Vhost {
            socket: opts.socket.clone(),
            source,
        };
        let queue = |mem: &mut GuestMem, index| {
            SplitQueue::new(mem, opts.queue_size)
                .map_err(|source| PortError::Queue { index, source })
        };
        let event_idx = info.negotiated.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut pairs = Vec::with_capacity(usize::from(opts.queue_pairs));
        for pair in 0..usize::from(opts.queue_pairs) {
            let mut rx = RxQueue::new(queue(mem, rx_index(pair))?, info.layout, rx_post_len);
            let mut tx = TxQueue::new(queue(mem, tx_index(pair))?, info.layout);
            rx.queue_mut().set_event_idx(event_idx);
            tx.queue_mut().set_event_idx(event_idx);
            rx.refill(pool);
            pairs.push((rx, tx));
        }

        connection::set_mem_table(&vu, mem).map_err(vhost)?;
        for (pair, (rx, tx)) in pairs.iter().enumerate() {
            connection::setup_vring(&vu, rx_index(pair), rx.queue()).map_err(vhost)?;
            connection::setup_vring(&vu, tx_index(pair), tx.queue()).map_err(vhost)?;
        }
        let enabled = opts.enabled_pairs.map_or(pairs.len(), usize::from);
        for index in 0..2 * enabled.min(pairs.len()) {
            connection::enable_vring(&mut vu, index, true, &info.negotiated).map_err(vhost)?;
        }
        let mut pairs = pairs.into_iter();
        let (rx, tx) = pairs.next().expect("at least one queue pair");
        Ok(Port {
            vu: Some(vu),
            rx,
            tx,
            more: pairs.collect(),
            info,
            socket: opts.socket,
        })
    }
}

/// A connected virtio-net device: its RX and TX queues are public, the data path is theirs.
pub struct Port {
    // Field order is drop order: the connection closes (in Drop) before the rings go.
    vu: Option<Frontend>,
    /// Receive queue (of pair 0).
    pub rx: RxQueue,
    /// Transmit queue (of pair 0).
    pub tx: TxQueue,
    /// Pairs 1.. (RX, TX) when more than one was set up.
    pub more: Vec<(RxQueue, TxQueue)>,
    info: DeviceInfo,
    socket: PathBuf,
}

impl Port {
    /// Connects and settles features: SET_OWNER, features, protocol features, queue
    /// count, and GET_CONFIG when wanted and offered.
    pub fn handshake(opts: &PortOptions) -> Result<Handshake, PortError> {
        let vhost = |source| PortError::Vhost {
            socket: opts.socket.clone(),
            source,
        };
        let want = opts.queue_pairs;
        if !(1..=MAX_QUEUE_PAIRS).contains(&want) {
            return Err(PortError::QueuePairs { want });
        }
        let vrings = 2 * u64::from(want);
        let mut features = opts.features;
        if want > 1 {
            features |= 1 << VIRTIO_NET_F_MQ;
        }
        let mut vu = connection::connect(
            &opts.socket,
            vrings,
            opts.connect_timeout,
            opts.reply_timeout,
        )
        .map_err(vhost)?;
        let negotiated = connection::negotiate(&mut vu, features, opts.protocol_features, vrings)
            .map_err(vhost)?;
        if want > 1 && negotiated.features & (1 << VIRTIO_NET_F_MQ) == 0 {
            return Err(PortError::QueuePairs { want });
        }
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
        Ok(Handshake {
            vu,
            info: DeviceInfo {
                negotiated,
                config,
                layout,
            },
            opts: opts.clone(),
        })
    }

    /// [`Port::handshake`] then [`Handshake::start`] with RX buffers as large as the
    /// pool's.
    pub fn connect(
        opts: &PortOptions,
        mem: &mut GuestMem,
        pool: &mut BufPool,
    ) -> Result<Port, PortError> {
        Self::handshake(opts)?.start(mem, pool, pool.buf_size())
    }

    /// What setup learnt.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// virtio-net header bytes in front of every frame.
    pub fn hdr_len(&self) -> usize {
        self.info.layout.hdr_len
    }

    /// The socket this port is connected to.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Queue pairs set up.
    pub fn queue_pairs(&self) -> usize {
        1 + self.more.len()
    }

    /// Pair `pair`'s RX queue.
    pub fn rx_queue(&self, pair: usize) -> &RxQueue {
        match pair {
            0 => &self.rx,
            n => &self.more[n - 1].0,
        }
    }

    /// Pair `pair`'s TX queue.
    pub fn tx_queue(&self, pair: usize) -> &TxQueue {
        match pair {
            0 => &self.tx,
            n => &self.more[n - 1].1,
        }
    }

    /// Pair `pair`'s TX queue, mutably.
    pub fn tx_queue_mut(&mut self, pair: usize) -> &mut TxQueue {
        match pair {
            0 => &mut self.tx,
            n => &mut self.more[n - 1].1,
        }
    }

    /// Kicks sent on every queue.
    pub fn kicks(&self) -> u64 {
        (0..self.queue_pairs())
            .map(|p| self.rx_queue(p).queue().kicks() + self.tx_queue(p).queue().kicks())
            .sum()
    }

    /// Stops every ring (SET_VRING_ENABLE 0, GET_VRING_BASE, as cloud-hypervisor does on
    /// reset) and closes the connection, reporting the first failure.
    pub fn disconnect(mut self) -> Result<(), PortError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), PortError> {
        let Some(mut vu) = self.vu.take() else {
            return Ok(());
        };
        let n = self.info.negotiated;
        let mut first_err = None;
        let vrings = 2 * self.queue_pairs();
        for index in 0..vrings {
            if let Err(e) = connection::enable_vring(&mut vu, index, false, &n) {
                first_err.get_or_insert(e);
            }
        }
        for index in 0..vrings {
            if let Err(e) = connection::stop_vring(&vu, index) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => Ok(()),
            Some(source) => Err(PortError::Vhost {
                socket: self.socket.clone(),
                source,
            }),
        }
    }
}

impl Drop for Port {
    /// Best-effort [`Port::disconnect`]; replies are bounded by the reply timeout.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
