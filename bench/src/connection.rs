// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The vhost-user control messages, one function per setup step, in the order
//! cloud-hypervisor's vhost-user-net sends them.
//!
//! connect (retrying until the socket exists) → SET_OWNER → GET_FEATURES →
//! GET/SET_PROTOCOL_FEATURES → SET_FEATURES → [GET_QUEUE_NUM] → [GET_CONFIG] →
//! SET_MEM_TABLE → per queue SET_VRING_NUM, _ADDR, _BASE(0), _CALL, _KICK →
//! SET_VRING_ENABLE(1) for every queue. [`crate::NetFrontend::connect`] runs them.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::VhostBackend;

use crate::guest_mem::{GuestMem, MemError};
use crate::split_queue::SplitQueue;
use crate::virtio_net::{NetConfig, CONFIG_LEN};

/// Protocol features this driver uses when offered (what vpmd and cloud-hypervisor share).
pub const DRIVER_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::CONFIG
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::MQ)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS);

/// A failed setup step; each names the message that failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The socket did not accept a connection in time.
    #[error("connecting to {path}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Last error seen.
        #[source]
        source: io::Error,
    },
    /// Setting the reply timeout on the socket failed.
    #[error("setting the socket timeout")]
    Timeout(#[source] io::Error),
    /// A vhost-user request failed or was refused.
    #[error("{step}")]
    Request {
        /// The message.
        step: &'static str,
        /// What vhost reported.
        #[source]
        source: vhost::Error,
    },
    /// The device has fewer queues than the driver needs.
    #[error("device has {have} queues, {need} needed")]
    TooFewQueues {
        /// GET_QUEUE_NUM's answer.
        have: u64,
        /// Queues the driver sets up.
        need: u64,
    },
    /// The config space reply was too short.
    #[error("GET_CONFIG returned {0} bytes")]
    ShortConfig(usize),
    /// The memory regions could not be described.
    #[error("SET_MEM_TABLE")]
    Memory(#[source] MemError),
}

fn req<T>(step: &'static str, r: vhost::Result<T>) -> Result<T, ConnError> {
    r.map_err(|source| ConnError::Request { step, source })
}

/// What the handshake settled.
#[derive(Clone, Copy, Debug)]
pub struct Negotiated {
    /// Virtio features the device offered.
    pub offered: u64,
    /// Virtio features acknowledged (offered ∩ wanted).
    pub features: u64,
    /// Protocol features acknowledged (empty when the protocol-features bit is absent).
    pub protocol: VhostUserProtocolFeatures,
    /// GET_QUEUE_NUM's answer, when MQ was negotiated.
    pub queue_num: Option<u64>,
}

/// Connects to `path`, retrying while the socket does not exist or refuses, until `timeout`.
/// `reply_timeout` bounds every later wait for a reply so a stuck backend fails the caller
/// instead of hanging it.
pub fn connect(
    path: &Path,
    num_queues: u64,
    timeout: Duration,
    reply_timeout: Duration,
) -> Result<Frontend, ConnError> {
    let deadline = Instant::now() + timeout;
    let sock = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e)
                if Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(ConnError::Connect {
                    path: path.to_owned(),
                    source,
                })
            }
        }
    };
    sock.set_read_timeout(Some(reply_timeout))
        .map_err(ConnError::Timeout)?;
    Ok(Frontend::from_stream(sock, num_queues))
}

/// SET_OWNER, then feature and protocol-feature negotiation, then GET_QUEUE_NUM under MQ.
/// After this every request asks for an ack when REPLY_ACK was negotiated.
pub fn negotiate(
    vu: &mut Frontend,
    wanted: u64,
    wanted_protocol: VhostUserProtocolFeatures,
    num_queues: u64,
) -> Result<Negotiated, ConnError> {
    req("SET_OWNER", vu.set_owner())?;
    let offered = req("GET_FEATURES", vu.get_features())?;
    let features = offered & wanted;
    let mut protocol = VhostUserProtocolFeatures::empty();
    if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
        let offered_protocol = req("GET_PROTOCOL_FEATURES", vu.get_protocol_features())?;
        protocol = offered_protocol & wanted_protocol;
        req("SET_PROTOCOL_FEATURES", vu.set_protocol_features(protocol))?;
        if protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
    }
    req("SET_FEATURES", vu.set_features(features))?;
    let mut queue_num = None;
    if protocol.contains(VhostUserProtocolFeatures::MQ) {
        let have = req("GET_QUEUE_NUM", vu.get_queue_num())?;
        if have < num_queues {
            return Err(ConnError::TooFewQueues {
                have,
                need: num_queues,
            });
        }
        queue_num = Some(have);
    }
    Ok(Negotiated {
        offered,
        features,
        protocol,
        queue_num,
    })
}

/// GET_CONFIG of the whole `virtio_net_config`.
pub fn read_config(vu: &mut Frontend) -> Result<NetConfig, ConnError> {
    let zeros = [0u8; CONFIG_LEN];
    let (_, space) = req(
        "GET_CONFIG",
        vu.get_config(0, CONFIG_LEN as u32, VhostUserConfigFlags::WRITABLE, &zeros),
    )?;
    NetConfig::parse(&space).ok_or(ConnError::ShortConfig(space.len()))
}

/// SET_MEM_TABLE with every region of `mem` (fds travel as SCM_RIGHTS).
pub fn set_mem_table(vu: &Frontend, mem: &GuestMem) -> Result<(), ConnError> {
    let regions = mem.region_infos().map_err(ConnError::Memory)?;
    req("SET_MEM_TABLE", vu.set_mem_table(&regions))?;
    Ok(())
}

/// SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE(0), SET_VRING_CALL, SET_VRING_KICK.
pub fn setup_vring(vu: &Frontend, index: usize, q: &SplitQueue) -> Result<(), ConnError> {
    req("SET_VRING_NUM", vu.set_vring_num(index, q.size()))?;
    req("SET_VRING_ADDR", vu.set_vring_addr(index, &q.config_data()))?;
    req("SET_VRING_BASE", vu.set_vring_base(index, 0))?;
    req("SET_VRING_CALL", vu.set_vring_call(index, q.call_fd()))?;
    req("SET_VRING_KICK", vu.set_vring_kick(index, q.kick_fd()))?;
    Ok(())
}

/// SET_VRING_ENABLE, which needs the protocol-features bit; without it rings start enabled.
pub fn enable_vring(
    vu: &mut Frontend,
    index: usize,
    enable: bool,
    n: &Negotiated,
) -> Result<(), ConnError> {
    if n.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0 {
        return Ok(());
    }
    req("SET_VRING_ENABLE", vu.set_vring_enable(index, enable))
}

/// GET_VRING_BASE: stops the ring in the backend and returns its next avail index.
pub fn stop_vring(vu: &Frontend, index: usize) -> Result<u32, ConnError> {
    req("GET_VRING_BASE", vu.get_vring_base(index))
}
