// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`HostileVm`]: one vhost-user frontend with its own memory and rings, set up step
//! by step so that a test can replace any step with a malformed one.
//!
//! The steps follow QEMU's order: SET_OWNER, GET_FEATURES, GET/SET_PROTOCOL_FEATURES
//! (REPLY_ACK, so every later request is acked and a refusal is seen at once),
//! SET_FEATURES, SET_MEM_TABLE, per queue SET_VRING_NUM/ADDR/BASE/CALL/KICK, then
//! SET_VRING_ENABLE.
#![allow(unsafe_code)] // eventfd(2).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

use crate::mem::{GuestRam, MemError};
use crate::msg::{body, req, Conn, MsgError, RawMsg};
use crate::ring::{Layout, Ring};

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
/// `VIRTIO_NET_F_MRG_RXBUF`.
pub const F_MRG_RXBUF: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub const F_INDIRECT_DESC: u64 = 1 << VIRTIO_RING_F_INDIRECT_DESC;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub const F_PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
/// Protocol feature REPLY_ACK.
pub const PF_REPLY_ACK: u64 = VhostUserProtocolFeatures::REPLY_ACK.bits();

/// Queue index of RX.
pub const RX: u32 = 0;
/// Queue index of TX.
pub const TX: u32 = 1;
/// Default guest RAM: 4 MiB at guest-physical 0.
pub const RAM_LEN: usize = 4 << 20;
/// Where the default RX ring starts.
pub const RX_RING: u64 = 0;
/// Where the default TX ring starts.
pub const TX_RING: u64 = 0x4000;
/// Buffers from here up.
pub const BUF_BASE: u64 = 0x1_0000;
/// Default queue size.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio-net header length with VERSION_1.
pub const HDR_LEN: usize = 12;

/// Why a hostile VM could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// Guest memory failed.
    #[error(transparent)]
    Mem(#[from] MemError),
    /// A vhost-user step failed.
    #[error("{step}")]
    Step {
        /// The message.
        step: &'static str,
        /// Why.
        #[source]
        source: MsgError,
    },
    /// eventfd(2) failed.
    #[error("eventfd")]
    EventFd(#[source] io::Error),
}

fn step<T>(step: &'static str, r: Result<T, MsgError>) -> Result<T, VmError> {
    r.map_err(|source| VmError::Step { step, source })
}

/// A nonblocking eventfd.
pub fn eventfd() -> Result<OwnedFd, VmError> {
    // SAFETY: eventfd(2) takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(VmError::EventFd(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A hostile frontend connected to one vpmd port.
pub struct HostileVm {
    /// The vhost-user connection.
    pub conn: Conn,
    /// Its guest RAM.
    pub mem: GuestRam,
    /// RX ring placement.
    pub rx: Layout,
    /// TX ring placement.
    pub tx: Layout,
    /// Acknowledged virtio features.
    pub features: u64,
    /// Kick and call eventfds, per queue (kept open for vpmd).
    fds: Vec<OwnedFd>,
}

impl HostileVm {
    /// Connects to `socket` with fresh 4 MiB guest RAM and the default ring layouts.
    pub fn connect(socket: &Path) -> Result<HostileVm, VmError> {
        Self::connect_with(socket, GuestRam::new(0, RAM_LEN)?)
    }

    /// Connects to `socket` with `mem` as guest RAM (at least [`RAM_LEN`] bytes).
    pub fn connect_with(socket: &Path, mem: GuestRam) -> Result<HostileVm, VmError> {
        Ok(HostileVm {
            conn: step("connect", Conn::connect(socket))?,
            mem,
            rx: Layout::contiguous(RX_RING, QUEUE_SIZE),
            tx: Layout::contiguous(TX_RING, QUEUE_SIZE),
            features: 0,
            fds: Vec::new(),
        })
    }

    /// SET_OWNER, features and protocol features: accepts `wanted` of what vpmd offers
    /// (plus PROTOCOL_FEATURES) and REPLY_ACK. Returns the acknowledged features.
    pub fn negotiate(&mut self, wanted: u64) -> Result<u64, VmError> {
        let c = &self.conn;
        step("SET_OWNER", c.send(&RawMsg::new(req::SET_OWNER, vec![])))?;
        let offered = step(
            "GET_FEATURES",
            c.request_reply(RawMsg::new(req::GET_FEATURES, vec![])),
        )?
        .u64()
        .unwrap_or(0);
        let features = offered & (wanted | F_PROTOCOL_FEATURES);
        if features & F_PROTOCOL_FEATURES != 0 {
            step(
                "GET_PROTOCOL_FEATURES",
                c.request_reply(RawMsg::new(req::GET_PROTOCOL_FEATURES, vec![])),
            )?;
            step(
                "SET_PROTOCOL_FEATURES",
                c.send(&RawMsg::new(
                    req::SET_PROTOCOL_FEATURES,
                    body::u64(PF_REPLY_ACK),
                )),
            )?;
        }
        // REPLY_ACK is live from SET_FEATURES's own reply on.
        step(
            "SET_FEATURES",
            c.request_ack(RawMsg::new(req::SET_FEATURES, body::u64(features))),
        )?;
        self.features = features;
        Ok(features)
    }

    /// SET_MEM_TABLE with the whole memfd as one region.
    pub fn set_mem_table(&self) -> Result<(), VmError> {
        let msg = RawMsg::new(req::SET_MEM_TABLE, body::mem_table(1, &[self.mem.region()]))
            .with_fds(&[self.mem.fd()]);
        step("SET_MEM_TABLE", self.conn.request_ack(msg))
    }

    /// SET_MEM_TABLE with the memfd cut into regions at the given offsets (each its
    /// own mapping in vpmd, so a buffer across a cut is across two regions).
    pub fn set_mem_table_cut(&self, cuts: &[u64]) -> Result<(), VmError> {
        let whole = self.mem.region();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(whole.size);
        let regions: Vec<body::Region> = bounds
            .windows(2)
            .map(|w| body::Region {
                gpa: whole.gpa + w[0],
                size: w[1] - w[0],
                uaddr: whole.uaddr + w[0],
                offset: w[0],
            })
            .collect();
        let fds = vec![self.mem.fd(); regions.len()];
        let msg = RawMsg::new(
            req::SET_MEM_TABLE,
            body::mem_table(regions.len() as u32, &regions),
        )
        .with_fds(&fds);
        step("SET_MEM_TABLE", self.conn.request_ack(msg))
    }

    /// SET_VRING_NUM, _ADDR, _BASE(0), _CALL, _KICK for queue `index` at `layout`.
    pub fn setup_queue(&mut self, index: u32, layout: Layout) -> Result<(), VmError> {
        let c = &self.conn;
        step(
            "SET_VRING_NUM",
            c.request_ack(RawMsg::new(
                req::SET_VRING_NUM,
                body::vring_state(index, u32::from(layout.size)),
            )),
        )?;
        step(
            "SET_VRING_ADDR",
            c.request_ack(RawMsg::new(
                req::SET_VRING_ADDR,
                body::vring_addr(
                    index,
                    GuestRam::va(layout.desc),
                    GuestRam::va(layout.used),
                    GuestRam::va(layout.avail),
                ),
            )),
        )?;
        step(
            "SET_VRING_BASE",
            c.request_ack(RawMsg::new(
                req::SET_VRING_BASE,
                body::vring_state(index, 0),
            )),
        )?;
        let call = eventfd()?;
        let kick = eventfd()?;
        self.vring_fd(req::SET_VRING_CALL, index, call.as_raw_fd())?;
        self.vring_fd(req::SET_VRING_KICK, index, kick.as_raw_fd())?;
        self.fds.extend([call, kick]);
        Ok(())
    }

    /// The call (`kick == false`) or kick eventfd this VM gave vpmd for queue
    /// `index` in [`HostileVm::setup_queue`].
    pub fn vring_eventfd(&self, index: u32, kick: bool) -> RawFd {
        let order = [RX, TX].iter().position(|&q| q == index).expect("RX or TX");
        self.fds[2 * order + usize::from(kick)].as_raw_fd()
    }

    /// SET_VRING_CALL / _KICK / _ERR of queue `index` with `fd` attached.
    pub fn vring_fd(&self, request: u32, index: u32, fd: RawFd) -> Result<(), VmError> {
        let msg = RawMsg::new(request, body::u64(u64::from(index))).with_fds(&[fd]);
        step("SET_VRING_CALL/KICK", self.conn.request_ack(msg))
    }

    /// SET_VRING_ENABLE.
    pub fn enable(&self, index: u32, on: bool) -> Result<(), VmError> {
        step(
            "SET_VRING_ENABLE",
            self.conn.request_ack(RawMsg::new(
                req::SET_VRING_ENABLE,
                body::vring_state(index, u32::from(on)),
            )),
        )
    }

    /// GET_VRING_BASE: stops queue `index` and returns vpmd's next available index.
    pub fn stop_queue(&self, index: u32) -> Result<u32, VmError> {
        let reply = step(
            "GET_VRING_BASE",
            self.conn.request_reply(RawMsg::new(
                req::GET_VRING_BASE,
                body::vring_state(index, 0),
            )),
        )?;
        Ok(reply
            .body
            .get(4..8)
            .map_or(u32::MAX, |b| u32::from_le_bytes(b.try_into().unwrap())))
    }

    /// The whole well-behaved setup with the current layouts: negotiate (VERSION_1,
    /// MRG_RXBUF, INDIRECT_DESC), memory table, both queues, enable both.
    pub fn start(socket: &Path) -> Result<HostileVm, VmError> {
        Self::start_with(socket, HostileVm::set_mem_table)
    }

    /// [`HostileVm::start`] with another memory-table step.
    pub fn start_with(
        socket: &Path,
        mem_table: impl FnOnce(&HostileVm) -> Result<(), VmError>,
    ) -> Result<HostileVm, VmError> {
        Self::start_on(HostileVm::connect(socket)?, mem_table)
    }

    /// [`HostileVm::start_with`] on an already connected VM (with memory of its own).
    pub fn start_on(
        vm: HostileVm,
        mem_table: impl FnOnce(&HostileVm) -> Result<(), VmError>,
    ) -> Result<HostileVm, VmError> {
        Self::start_negotiating(vm, F_VERSION_1 | F_MRG_RXBUF | F_INDIRECT_DESC, mem_table)
    }

    /// [`HostileVm::start_on`] accepting `wanted` of the offered features.
    pub fn start_negotiating(
        mut vm: HostileVm,
        wanted: u64,
        mem_table: impl FnOnce(&HostileVm) -> Result<(), VmError>,
    ) -> Result<HostileVm, VmError> {
        vm.negotiate(wanted)?;
        mem_table(&vm)?;
        vm.setup_queue(RX, vm.rx)?;
        vm.setup_queue(TX, vm.tx)?;
        vm.enable(RX, true)?;
        vm.enable(TX, true)?;
        Ok(vm)
    }

    /// The RX ring.
    pub fn rx_ring(&self) -> Ring<'_> {
        Ring::new(&self.mem, self.rx)
    }

    /// The TX ring.
    pub fn tx_ring(&self) -> Ring<'_> {
        Ring::new(&self.mem, self.tx)
    }

    /// Guest address of buffer `i` (2 KiB each, from [`BUF_BASE`] up).
    pub fn buf(i: u32) -> u64 {
        BUF_BASE + 2048 * u64::from(i)
    }

    /// Writes a TX buffer: a zero virtio-net header then `frame`, at buffer `i`.
    /// Returns (address, length).
    pub fn tx_frame(&self, i: u32, frame: &[u8]) -> (u64, u32) {
        let mut bytes = vec![0u8; HDR_LEN];
        bytes.extend_from_slice(frame);
        self.mem.write(Self::buf(i), &bytes);
        (Self::buf(i), bytes.len() as u32)
    }
}
