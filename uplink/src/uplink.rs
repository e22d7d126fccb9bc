// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One uplink, put together: the XDP program and its maps, attached to the
//! interface, one AF_XDP socket per configured RX queue on one UMEM, and
//! (MAC filter) the group tap for broadcast and multicast.
//!
//! Setup order keeps the interface usable throughout: refuse early if a
//! foreign XDP program is attached; load the program; create the UMEM and
//! the sockets; put the sockets in the XSK map; open the group tap; attach
//! last. Until the attach the kernel stack sees every frame; from then on,
//! unicast frames for VM MACs go to the sockets (passthru: every frame),
//! and group frames reach both the kernel stack and the tap.

use crate::attach::{self, AttachError, AttachMode, AttachPreference, XdpLink};
use crate::maps::{MacTable, MapError};
use crate::netlink::{self, NetlinkError};
use crate::packet_tap::{PacketTap, PacketTapConfig, PacketTapError};
use crate::program::{ProgramError, RedirectPolicy, XdpProgram};
use crate::socket::{BindMode, BindPreference, RingSizes, SocketError, SocketSetup, XskSocket};
use crate::umem::{UmemArea, UmemConfig, UmemError};
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::Arc;

/// What to build on which interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkConfig {
    /// The kernel interface, e.g. `eth1`.
    pub ifname: String,
    /// RX queues to bind a socket to. Frames arriving on any other queue are
    /// not redirected (they reach the kernel stack): list every queue, or
    /// reduce the device to one (`ethtool -L DEV combined 1`).
    pub queues: Vec<u32>,
    pub policy: RedirectPolicy,
    pub umem: UmemConfig,
    pub rings: RingSizes,
    /// Most VM MAC addresses the MAC table holds.
    pub mac_capacity: u32,
    pub attach: AttachPreference,
    pub bind: BindPreference,
    /// Whether to open the group tap ([`Uplink::take_group_tap`]).
    pub group_tap: GroupTap,
    /// Its shape, when it is opened.
    pub tap: PacketTapConfig,
}

impl UplinkConfig {
    /// Defaults: queue 0, MAC filter, 4096 chunks of 4096 bytes per queue,
    /// rings of 2048, up to 1024 MACs, native XDP and zero-copy if possible,
    /// group tap as the policy needs it, with MTU-sized slots.
    pub fn new(ifname: impl Into<String>) -> Self {
        Self {
            ifname: ifname.into(),
            queues: vec![0],
            policy: RedirectPolicy::MacFilter,
            umem: UmemConfig::default(),
            rings: RingSizes::default(),
            mac_capacity: 1024,
            attach: AttachPreference::default(),
            bind: BindPreference::default(),
            group_tap: GroupTap::default(),
            tap: PacketTapConfig::default(),
        }
    }

    /// The interface's index.
    pub(crate) fn ifindex(&self) -> Result<u32, UplinkError> {
        netlink::ifindex(&self.ifname).map_err(|source| UplinkError::Interface {
            ifname: self.ifname.clone(),
            source,
        })
    }

    /// A UMEM of `chunks` chunks, laid out as `self.umem` says.
    pub(crate) fn map_umem(&self, chunks: u64) -> Result<Arc<UmemArea>, UplinkError> {
        UmemArea::map(chunks, &self.umem).map_err(|source| UplinkError::Umem {
            ifname: self.ifname.clone(),
            source,
        })
    }

    /// The socket of RX/TX queue `queue_id` of interface `ifindex`, owning
    /// `chunks` of `umem`, with `self.rings` and `self.bind`; `share_with` is
    /// the socket that registered the UMEM (`None`: this one does).
    pub(crate) fn open_socket(
        &self,
        umem: &Arc<UmemArea>,
        ifindex: u32,
        queue_id: u32,
        chunks: Range<u64>,
        share_with: Option<&XskSocket>,
    ) -> Result<XskSocket, UplinkError> {
        let setup = SocketSetup {
            umem,
            ifindex,
            queue_id,
            rings: self.rings,
            chunks,
            share_with,
            preference: self.bind,
        };
        XskSocket::open(&setup).map_err(|source| UplinkError::Socket {
            ifname: self.ifname.clone(),
            queue: queue_id,
            source,
        })
    }
}

/// Whether an uplink opens the group tap ([`PacketTap`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GroupTap {
    /// On for [`RedirectPolicy::MacFilter`] (group frames go to the kernel,
    /// the VMs need their copy), off for [`RedirectPolicy::Passthru`] (the
    /// socket gets every frame already; the kernel sees none).
    #[default]
    Auto,
    On,
    Off,
}

impl GroupTap {
    /// Whether the tap is opened under `policy`.
    pub fn enabled(self, policy: RedirectPolicy) -> bool {
        match self {
            Self::Auto => policy == RedirectPolicy::MacFilter,
            Self::On => true,
            Self::Off => false,
        }
    }
}

/// Failures of [`Uplink::open`].
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("uplink `{ifname}`: no RX queue configured")]
    NoQueues { ifname: String },
    #[error("uplink `{ifname}`: RX queue {queue} is listed twice")]
    DuplicateQueue { ifname: String, queue: u32 },
    #[error("uplink `{ifname}`: a lone socket takes exactly one queue, {count} listed")]
    LoneQueues { ifname: String, count: usize },
    #[error("uplink `{ifname}`: looking up the interface failed")]
    Interface {
        ifname: String,
        #[source]
        source: NetlinkError,
    },
    /// Refusals name the interface themselves.
    #[error(transparent)]
    Attach(#[from] AttachError),
    #[error("uplink `{ifname}`: loading the XDP program failed")]
    Program {
        ifname: String,
        #[source]
        source: ProgramError,
    },
    #[error("uplink `{ifname}`: creating the UMEM failed")]
    Umem {
        ifname: String,
        #[source]
        source: UmemError,
    },
    #[error("uplink `{ifname}`: setting up the AF_XDP socket of RX queue {queue} failed")]
    Socket {
        ifname: String,
        queue: u32,
        #[source]
        source: SocketError,
    },
    #[error("uplink `{ifname}`: registering the sockets in the XSK map failed")]
    XskMap {
        ifname: String,
        #[source]
        source: MapError,
    },
    #[error("uplink `{ifname}`: opening the group tap failed")]
    GroupTap {
        ifname: String,
        #[source]
        source: PacketTapError,
    },
}

/// An attached uplink. Dropping it detaches the program; sockets already
/// taken with [`Self::take_sockets`] keep working for transmit until they
/// are dropped, but receive nothing more. A group tap already taken keeps
/// receiving group frames until it is dropped.
#[derive(Debug)]
pub struct Uplink {
    // Declared first, dropped first: the program leaves the interface
    // before anything it redirects to goes away.
    link: XdpLink,
    program: XdpProgram,
    sockets: Vec<XskSocket>,
    group_tap: Option<PacketTap>,
    bind_mode: BindMode,
    multi_buffer: bool,
}

impl Uplink {
    /// Builds and attaches the uplink described by `config`.
    pub fn open(config: &UplinkConfig) -> Result<Self, UplinkError> {
        let ifname = config.ifname.as_str();
        let queues = &config.queues;
        if queues.is_empty() {
            return Err(UplinkError::NoQueues {
                ifname: ifname.into(),
            });
        }
        for (i, &queue) in queues.iter().enumerate() {
            if queues[..i].contains(&queue) {
                return Err(UplinkError::DuplicateQueue {
                    ifname: ifname.into(),
                    queue,
                });
            }
        }
        let ifindex = config.ifindex()?;
        // Refuse before building anything if the interface is taken.
        attach::refuse_if_attached(ifname, ifindex)?;

        let slots = queues.iter().max().copied().unwrap_or(0) + 1;
        let program =
            XdpProgram::load(config.policy, config.mac_capacity, slots).map_err(|source| {
                UplinkError::Program {
                    ifname: ifname.into(),
                    source,
                }
            })?;

        let per_queue = u64::from(config.umem.chunks_per_queue);
        let umem = config.map_umem(per_queue * queues.len() as u64)?;
        let mut sockets: Vec<XskSocket> = Vec::with_capacity(queues.len());
        for (i, &queue_id) in queues.iter().enumerate() {
            let first = i as u64 * per_queue;
            let socket = config.open_socket(
                &umem,
                ifindex,
                queue_id,
                first..first + per_queue,
                sockets.first(),
            )?;
            sockets.push(socket);
        }
        for socket in &sockets {
            program
                .xsk_map()
                .insert(socket.queue_id(), socket.as_fd())
                .map_err(|source| UplinkError::XskMap {
                    ifname: ifname.into(),
                    source,
                })?;
        }
        let bind_mode = sockets[0].bind_mode();
        // Before the attach: no group frame passed to the kernel from then
        // on escapes the tap.
        let group_tap = if config.group_tap.enabled(config.policy) {
            let tap =
                PacketTap::open(ifname, &config.tap).map_err(|source| UplinkError::GroupTap {
                    ifname: ifname.into(),
                    source,
                })?;
            Some(tap)
        } else {
            None
        };
        let link = XdpLink::attach(&program, ifname, ifindex, config.attach)?;
        let multi_buffer = sockets[0].multi_buffer();
        log::info!(
            "uplink {ifname}: XDP program {} ({:?}{}) in {} mode, {} AF_XDP socket(s) in {bind_mode} mode{}, group tap {}",
            program.id(),
            config.policy,
            if program.frags() { ", frags" } else { "" },
            link.mode(),
            sockets.len(),
            if multi_buffer { " with multi-buffer" } else { "" },
            if group_tap.is_some() { "on" } else { "off" },
        );
        Ok(Self {
            link,
            program,
            sockets,
            group_tap,
            bind_mode,
            multi_buffer,
        })
    }

    /// The VM MAC table, to add and remove ports' MACs at run time (from
    /// any thread: each change is one `bpf(2)` call).
    pub fn mac_table(&self) -> MacTable {
        self.program.mac_table().clone()
    }

    /// Hands the sockets over (in the order of `config.queues`), to be
    /// moved into the polling threads. Empty after the first call.
    pub fn take_sockets(&mut self) -> Vec<XskSocket> {
        std::mem::take(&mut self.sockets)
    }

    /// The sockets not yet taken.
    pub fn sockets_mut(&mut self) -> &mut [XskSocket] {
        &mut self.sockets
    }

    /// Hands the group tap over, to be moved into the polling thread that
    /// copies broadcast and multicast to every VM port. `None` if it was not
    /// opened ([`UplinkConfig::group_tap`]) or was taken already.
    pub fn take_group_tap(&mut self) -> Option<PacketTap> {
        self.group_tap.take()
    }

    /// The group tap, if opened and not yet taken.
    pub fn group_tap_mut(&mut self) -> Option<&mut PacketTap> {
        self.group_tap.as_mut()
    }

    /// Copy or zero-copy: chosen by the kernel for the first socket, shared
    /// by all.
    pub fn bind_mode(&self) -> BindMode {
        self.bind_mode
    }

    /// Whether frames larger than a UMEM chunk come and go in several
    /// (`XDP_USE_SG` on the sockets): what jumbo MTUs need.
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// The XDP hook the program runs at.
    pub fn attach_mode(&self) -> AttachMode {
        self.link.mode()
    }

    pub fn program(&self) -> &XdpProgram {
        &self.program
    }

    pub fn ifname(&self) -> &str {
        self.link.ifname()
    }

    pub fn ifindex(&self) -> u32 {
        self.link.ifindex()
    }
}
