// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A message-aware relay between a vhost-user frontend and vhost-user-backend.
//!
//! Why it exists: QEMU's virtio-net sends `SET_VRING_ENABLE` as soon as the guest
//! driver writes its feature bits (`peer_attach`), before it sends `SET_FEATURES`:
//! QEMU treats `VHOST_USER_F_PROTOCOL_FEATURES` as negotiated once the backend
//! offers it. The `vhost` crate's request parser answers that message with an
//! error that ends the connection, so no QEMU guest could ever use a port.
//!
//! The relay reads each frontend message whole (header, body and attached fds) and
//! passes it on unchanged, with one exception: a `SET_VRING_ENABLE` that arrives
//! before a `SET_FEATURES` carrying `PROTOCOL_FEATURES` is held back (and acked if
//! the frontend asked for an ack), then replayed right after that `SET_FEATURES`.
//! (QEMU also re-sends the enable after `SET_FEATURES`; replaying keeps frontends
//! that do not re-send working.) Replies flow back byte for byte. Messages larger
//! than the protocol allows, or with more fds than it allows, end the connection
//! before the library sees them.
//!
//! It is also where a frontend's messages are held to account before the library
//! acts on them (every one of these ends the connection, counted as `refused`,
//! unless said otherwise):
//! - every fd is checked ([`crate::fd_check`]): memory must be a memfd, tmpfs or
//!   hugetlbfs file that holds the whole region (sealed where it can be); vring
//!   fds must be eventfds;
//! - the frontend's kick and error fds never reach the library: each is replaced
//!   by a private eventfd of vpmd's own (the polling threads need no kicks), so no
//!   vpmd thread ever reads a file description the frontend can make blocking;
//! - the memory table is kept within the port's [`ConnLimits`] (regions, bytes);
//!   GET_MAX_MEM_SLOTS is answered here with the number vpmd really translates;
//! - acked protocol features are cut down to those offered;
//! - messages beyond the port's rate are read more slowly (counted as `throttled`,
//!   not refused).
//!
//! While the connection lives the relay also watches its health: guest memory
//! that went away (see [`crate::fault_guard`]) or a notification that blocked (see
//! [`crate::stall_guard`]) close it within [`HEALTH_INTERVAL`], logged once.
//!
//! Only control messages pass here; frames never do.
#![allow(unsafe_code)] // recvmsg with SCM_RIGHTS, poll(2), eventfd(2).

use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::conn_limits::{LimitError, MessageRate, Region, RegionBook};
use crate::dirty_log::DirtyLog;
use crate::fault_guard::{self, MemoryWatch};
use crate::fd_check::VRING_NOFD;
use crate::guest_mem::MAX_REGIONS;
use crate::port::{close_reason, ConnHealth, VirtioNetPort};

use vhost::vhost_user::message::{
    FrontendReq, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE,
};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HEADER_LEN: usize = 12;
/// How often a quiet connection's health is looked at.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(100);
/// Header flags of protocol version 1 (the crate names the version field's mask,
/// `VhostUserHeaderFlag::VERSION`, not the value).
const VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = VhostUserHeaderFlag::REPLY.bits();
const FLAG_NEED_REPLY: u32 = VhostUserHeaderFlag::NEED_REPLY.bits();
const REPLY_ACK: u64 = VhostUserProtocolFeatures::REPLY_ACK.bits();
/// Most queues a held-back enable is remembered for (vhost-user's index limit).
const MAX_QUEUES: usize = 256;

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from or writing to a socket failed.
    #[error("socket")]
    Io(#[from] io::Error),
    /// Receiving a message's fds failed.
    #[error("receiving fds")]
    Fds(#[source] vmm_sys_util::errno::Error),
    /// A message carries an fd vpmd refuses to use.
    #[error("message {request}")]
    BadFd {
        /// Request code.
        request: u32,
        /// What is wrong with the fd.
        #[source]
        source: crate::fd_check::FdError,
    },
    /// A message header names a body larger than the protocol allows.
    #[error("message {request} claims a {size}-byte body (limit {MAX_MSG_SIZE})")]
    Oversized {
        /// Request code.
        request: u32,
        /// Claimed size.
        size: u32,
    },
    /// A memory-table change past the port's limits.
    #[error("message {request}")]
    Limit {
        /// Request code.
        request: u32,
        /// Which limit.
        #[source]
        source: LimitError,
    },
    /// A private eventfd could not be made.
    #[error("creating an eventfd")]
    EventFd(#[source] io::Error),
    /// The guest memory went away under vpmd (truncated, hole punched).
    #[error("guest memory went away under vpmd (the file behind a region was truncated or had a hole punched); connection stopped")]
    MemoryGone,
    /// A notification to the guest blocked: the frontend cleared O_NONBLOCK on its
    /// call eventfd and filled the counter.
    #[error("a guest notification blocked (the frontend made its call eventfd blocking and filled it); connection stopped")]
    NotifyBlocked,
    /// Its memory could not be registered with the SIGBUS guard.
    #[error("guest memory could not be guarded; connection stopped")]
    Unguarded,
    /// A migration message vpmd cannot act on (a bad dirty log).
    #[error("message {request}")]
    Migration {
        /// Request code.
        request: u32,
        /// What is wrong.
        #[source]
        source: crate::migration::MigrationError,
    },
}

impl RelayError {
    /// Whether this error refused something the frontend sent.
    fn is_refusal(&self) -> bool {
        matches!(
            self,
            RelayError::BadFd { .. }
                | RelayError::Oversized { .. }
                | RelayError::Limit { .. }
                | RelayError::Migration { .. }
        )
    }
}

/// What the relay of one connection knows of its port and connection.
pub struct RelayContext {
    /// The port (name, limits, fault counters).
    pub port: Arc<VirtioNetPort>,
    /// The connection's health, shared with the polling threads.
    pub health: Arc<ConnHealth>,
    /// The connection's guest memory, as registered with the SIGBUS guard.
    pub memory: Arc<MemoryWatch>,
    /// The connection's dirty log (live migration).
    pub log: Arc<DirtyLog>,
}

impl RelayContext {
    /// A context for `port` with fresh connection state (tests, fuzzing).
    pub fn detached(port: Arc<VirtioNetPort>) -> Self {
        RelayContext {
            port,
            health: Arc::new(ConnHealth::new()),
            memory: Arc::new(MemoryWatch::default()),
            log: Arc::new(DirtyLog::new()),
        }
    }
}

/// One frontend message.
struct Message {
    header: [u8; HEADER_LEN],
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes(self.header[0..4].try_into().unwrap())
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes(self.header[4..8].try_into().unwrap())
    }

    fn body_u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.get(0..8)?.try_into().ok()?))
    }

    /// `struct vhost_vring_state`: index, num.
    fn body_vring_state(&self) -> Option<(u32, u32)> {
        let index = u32::from_le_bytes(self.body.get(0..4)?.try_into().ok()?);
        let num = u32::from_le_bytes(self.body.get(4..8)?.try_into().ok()?);
        Some((index, num))
    }

    fn vring_enable(index: u32, num: u32) -> Message {
        let mut body = Vec::with_capacity(8);
        body.extend_from_slice(&index.to_le_bytes());
        body.extend_from_slice(&num.to_le_bytes());
        Message {
            header: header(FrontendReq::SET_VRING_ENABLE.into(), VERSION_1, 8),
            body,
            fds: Vec::new(),
        }
    }
}

fn header(request: u32, flags: u32, size: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

/// What the relay knows of the negotiation so far.
#[derive(Default)]
struct Negotiation {
    /// A SET_FEATURES acking PROTOCOL_FEATURES has been passed on.
    protocol_acked: bool,
    /// The frontend negotiated REPLY_ACK.
    reply_ack: bool,
    /// Enables held back until SET_FEATURES: (index, num), last one per index wins.
    held: Vec<(u32, u32)>,
    /// The memory table as the frontend described it.
    book: RegionBook,
    /// Ring addresses passed on (see [`crate::migration::RingAddrs`]).
    ring_addrs: crate::migration::RingAddrs,
    /// Log lines about the frontend's migration messages (it can send them fast).
    migration_log: crate::ratelimit::LogLimiter,
}

/// Reads one whole message; `None` at a clean end of stream.
fn read_message(sock: &UnixStream) -> Result<Option<Message>, RelayError> {
    let mut header = [0u8; HEADER_LEN];
    let mut raw_fds = [-1 as RawFd; MAX_ATTACHED_FD_ENTRIES];
    let mut bufs = [IoSliceMut::new(&mut header)];
    // SAFETY: the iovec points at `header`, which is valid for writes of its length
    // and borrowed mutably for the call; any bytes may be written into it.
    let (n, nfds) = unsafe { sock.recv_with_fds(as_iovecs(&mut bufs), &mut raw_fds) }
        .map_err(RelayError::Fds)?;
    let fds: Vec<OwnedFd> = raw_fds[..nfds]
        .iter()
        .map(|&fd| {
            // SAFETY: recv_with_fds returned `nfds` fresh descriptors nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    if n < HEADER_LEN {
        (&*sock).read_exact(&mut header[n..])?;
    }
    let size = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if size as usize > MAX_MSG_SIZE {
        return Err(RelayError::Oversized {
            request: u32::from_le_bytes(header[0..4].try_into().unwrap()),
            size,
        });
    }
    let mut body = vec![0u8; size as usize];
    (&*sock).read_exact(&mut body)?;
    Ok(Some(Message { header, body, fds }))
}

/// `IoSliceMut` is ABI-compatible with `iovec` on Unix.
fn as_iovecs<'a>(bufs: &'a mut [IoSliceMut<'_>]) -> &'a mut [libc::iovec] {
    // SAFETY: std documents IoSliceMut as ABI-compatible with `struct iovec` on
    // Unix (repr(transparent) over it); the length and borrow are carried over.
    unsafe { std::slice::from_raw_parts_mut(bufs.as_mut_ptr().cast(), bufs.len()) }
}

/// Sends a message whole, its fds with the first byte.
fn write_message(sock: &UnixStream, msg: &Message) -> Result<(), RelayError> {
    let mut data = Vec::with_capacity(HEADER_LEN + msg.body.len());
    data.extend_from_slice(&msg.header);
    data.extend_from_slice(&msg.body);
    let fds: Vec<RawFd> = msg.fds.iter().map(AsRawFd::as_raw_fd).collect();
    let sent = if fds.is_empty() {
        0
    } else {
        sock.send_with_fds(&[&data[..]], &fds)
            .map_err(|e| RelayError::Io(io::Error::from_raw_os_error(e.errno())))?
    };
    (&*sock).write_all(&data[sent..])?;
    Ok(())
}

/// Regions a SET_MEM_TABLE body describes.
fn table_regions(body: &[u8]) -> Vec<Region> {
    let count = body
        .get(0..4)
        .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
    (0..count.min(MAX_REGIONS + 1))
        .filter_map(|i| region_at(body, 8 + 32 * i))
        .collect()
}

/// The `VhostUserMemoryRegion` at `at`: guest address, size, frontend address,
/// file offset.
fn region_at(body: &[u8], at: usize) -> Option<Region> {
    let word = |i: usize| {
        body.get(at + 8 * i..at + 8 * i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    Some([word(0)?, word(1)?, word(2)?, word(3)?])
}

/// A private, non-blocking eventfd standing in for one the frontend sent.
fn private_eventfd() -> Result<OwnedFd, RelayError> {
    // SAFETY: eventfd takes no pointers.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(RelayError::EventFd(io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes a reply carrying one u64 to the frontend.
fn reply_u64(frontend: &UnixStream, request: u32, value: u64) -> Result<(), RelayError> {
    let mut reply = header(request, VERSION_1 | FLAG_REPLY, 8).to_vec();
    reply.extend_from_slice(&value.to_le_bytes());
    (&*frontend).write_all(&reply)?;
    Ok(())
}

/// Answers a message the relay does not pass on as the library would have: with
/// an ack of success if the frontend asked for one.
fn ack(st: &Negotiation, msg: &Message, frontend: &UnixStream) -> Result<(), RelayError> {
    if st.reply_ack && msg.flags() & FLAG_NEED_REPLY != 0 {
        reply_u64(frontend, msg.request(), 0)?;
    }
    Ok(())
}

/// Handles one frontend message: forward it, or hold it back and maybe ack it.
fn relay_one(
    mut msg: Message,
    st: &mut Negotiation,
    ctx: &RelayContext,
    frontend: &UnixStream,
    backend: &UnixStream,
) -> Result<(), RelayError> {
    let limits = ctx.port.limits();
    let request = msg.request();
    crate::fd_check::check_message_fds(request, &msg.body, &msg.fds)
        .map_err(|source| RelayError::BadFd { request, source })?;
    let limit = |source| RelayError::Limit { request, source };
    match FrontendReq::try_from(request) {
        Ok(FrontendReq::SET_MEM_TABLE) => {
            st.ring_addrs.forget();
            st.book
                .replace(table_regions(&msg.body), limits)
                .map_err(limit)?;
        }
        Ok(FrontendReq::SET_VRING_ADDR) if st.ring_addrs.is_repeat(&msg.body) => {
            return ack(st, &msg, frontend);
        }
        Ok(FrontendReq::GET_VRING_BASE) => {
            if let Some((index, _)) = msg.body_vring_state() {
                st.ring_addrs.stopped(index);
            }
        }
        Ok(FrontendReq::ADD_MEM_REG) => {
            st.ring_addrs.forget();
            if let Some(region) = region_at(&msg.body, 8) {
                if !st.book.add(region, limits).map_err(limit)? {
                    // A repeat (another queue pair of a QEMU 7.2 frontend): the
                    // library has the region; its fd is dropped here unmapped.
                    return ack(st, &msg, frontend);
                }
            }
        }
        Ok(FrontendReq::REM_MEM_REG) => {
            st.ring_addrs.forget();
            if let Some([gpa, size, ..]) = region_at(&msg.body, 8) {
                if !st.book.remove(gpa, size) {
                    return ack(st, &msg, frontend);
                }
            }
        }
        Ok(FrontendReq::GET_MAX_MEM_SLOTS) => {
            // The library would say 509; vpmd translates at most MAX_REGIONS.
            return reply_u64(frontend, request, MAX_REGIONS as u64);
        }
        Ok(FrontendReq::SET_VRING_KICK) => {
            let body = msg.body_u64().unwrap_or(0);
            let index = (body & 0xff) as usize;
            let theirs = if body & VRING_NOFD == 0 && msg.fds.len() == 1 {
                std::mem::replace(&mut msg.fds, vec![private_eventfd()?]).pop()
            } else {
                None
            };
            // Kept (never read) for polling threads that sleep until kicked; the
            // library gets vpmd's own eventfd. A replaced kick fd is let go of.
            if index < 2 * ctx.port.queue_pairs() {
                ctx.port.set_kick(index, theirs);
            }
        }
        Ok(FrontendReq::SET_VRING_ERR) => {
            let nofd = msg.body_u64().is_some_and(|b| b & VRING_NOFD != 0);
            if !nofd && msg.fds.len() == 1 {
                // Dropping the frontend's fd lets go of it.
                msg.fds = vec![private_eventfd()?];
            }
        }
        Ok(FrontendReq::SET_PROTOCOL_FEATURES) => {
            let offered = crate::features::protocol_features().bits();
            let acked = msg.body_u64().unwrap_or(0);
            if acked & !offered != 0 {
                log::debug!(
                    "relay: protocol features {:#x} not offered, ignored",
                    acked & !offered
                );
                msg.body[0..8].copy_from_slice(&(acked & offered).to_le_bytes());
            }
            st.reply_ack = acked & offered & REPLY_ACK != 0;
        }
        Ok(FrontendReq::SET_VRING_ENABLE) if !st.protocol_acked => {
            if let Some((index, num)) = msg.body_vring_state() {
                if (index as usize) < MAX_QUEUES {
                    st.held.retain(|&(i, _)| i != index);
                    st.held.push((index, num));
                }
                if st.reply_ack && msg.flags() & FLAG_NEED_REPLY != 0 {
                    reply_u64(frontend, request, 0)?;
                }
                log::debug!("relay: SET_VRING_ENABLE {index}={num} before SET_FEATURES: held");
                return Ok(());
            }
        }
        Ok(FrontendReq::SET_LOG_BASE) => {
            let size = crate::migration::set_log_base(&msg.body, &msg.fds, &ctx.log)
                .map_err(|source| RelayError::Migration { request, source })?;
            if let Some(held_back) = st.migration_log.allow() {
                log::info!(
                    "port {}: dirty log of {size} bytes set (covers {} MiB of guest memory; \
                     {held_back} similar messages held back)",
                    ctx.port.name(),
                    (size * 8 * 4096) >> 20
                );
            }
            // Answered as DPDK does: an empty reply once the log is in use.
            (&*frontend).write_all(&header(request, VERSION_1 | FLAG_REPLY, 0))?;
            return Ok(());
        }
        Ok(FrontendReq::SET_LOG_FD) => {
            // vpmd never signals the log fd: dropping it lets go of it.
            return ack(st, &msg, frontend);
        }
        Ok(FrontendReq::SEND_RARP) => {
            let outcome =
                crate::migration::rarp_mac(&msg.body).map(|mac| (mac, ctx.port.announce(mac)));
            log::debug!("relay: SEND_RARP: {outcome:?}");
            if let Some((mac, crate::migration::Announced::ForeignMac)) = outcome {
                if let Some(held_back) = st.migration_log.allow() {
                    log::warn!(
                        "port {}: SEND_RARP for {} is not the port's MAC: not announced \
                         ({held_back} similar messages held back)",
                        ctx.port.name(),
                        crate::migration::mac_string(mac)
                    );
                }
            }
            return ack(st, &msg, frontend);
        }
        Ok(FrontendReq::SET_FEATURES) => {
            let acked = msg.body_u64().unwrap_or(0);
            // In force for every burst before the library (and so the ack) sees it.
            ctx.log
                .set_log_all(acked & (1 << crate::features::VHOST_F_LOG_ALL) != 0);
            write_message(backend, &msg)?;
            if acked & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                st.protocol_acked = true;
                for (index, num) in std::mem::take(&mut st.held) {
                    write_message(backend, &Message::vring_enable(index, num))?;
                }
            } else {
                // Without protocol features the backend enables every ring itself.
                st.held.clear();
            }
            return Ok(());
        }
        _ => {}
    }
    write_message(backend, &msg)
}

/// Relays between `frontend` and `backend` until either side closes or the
/// connection must stop; then shuts both down, so the other side's reader ends
/// too. Returns why it stopped (the caller logs it, rate-limited: a frontend can
/// reconnect and fail in a loop); refusals and faults are counted on the port.
pub fn run(
    frontend: UnixStream,
    backend: UnixStream,
    ctx: &RelayContext,
) -> Result<(), RelayError> {
    let result = pump(&frontend, &backend, ctx);
    let _ = frontend.shutdown(std::net::Shutdown::Both);
    let _ = backend.shutdown(std::net::Shutdown::Both);
    let faults = ctx.port.faults();
    match &result {
        Err(e) if e.is_refusal() => {
            faults.refused.fetch_add(1, Ordering::Relaxed);
        }
        Err(RelayError::MemoryGone) => {
            faults.mem_faults.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    result
}

/// Why the connection must stop now, if it must.
fn health_check(ctx: &RelayContext, faults_seen: &mut u64) -> Result<(), RelayError> {
    let faults = fault_guard::faults();
    if faults != *faults_seen {
        *faults_seen = faults;
        if ctx.memory.faulted() {
            ctx.health.request_close(close_reason::MEM_FAULT);
        }
    }
    if ctx.log.faulted() {
        // The frontend truncated its dirty log under vpmd.
        ctx.health.request_close(close_reason::MEM_FAULT);
    }
    let closing = ctx.health.closing();
    if closing & close_reason::MEM_FAULT != 0 {
        Err(RelayError::MemoryGone)
    } else if closing & close_reason::NOTIFY_BLOCKED != 0 {
        Err(RelayError::NotifyBlocked)
    } else if closing & close_reason::UNGUARDED_MEMORY != 0 {
        Err(RelayError::Unguarded)
    } else {
        Ok(())
    }
}

fn pump(frontend: &UnixStream, backend: &UnixStream, ctx: &RelayContext) -> Result<(), RelayError> {
    let limits = *ctx.port.limits();
    let mut st = Negotiation::default();
    let mut rate = MessageRate::new(&limits);
    let mut faults_seen = fault_guard::faults();
    let mut buf = vec![0u8; MAX_MSG_SIZE + HEADER_LEN];
    let mut pfds = [
        libc::pollfd {
            fd: frontend.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: backend.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        health_check(ctx, &mut faults_seen)?;
        // SAFETY: `pfds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, HEALTH_INTERVAL.as_millis() as i32) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if pfds[0].revents != 0 {
            let wait = rate.take_at(Instant::now());
            if !wait.is_zero() {
                ctx.port.faults().throttled.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(wait.min(HEALTH_INTERVAL));
            }
            match read_message(frontend)? {
                Some(msg) => relay_one(msg, &mut st, ctx, frontend, backend)?,
                None => return Ok(()),
            }
        }
        if pfds[1].revents != 0 {
            // Replies (no fds: nothing vpmd offers sends fds back) pass through as bytes.
            let n = (&*backend).read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            (&*frontend).write_all(&buf[..n])?;
        }
    }
}

#[cfg(test)]
#[path = "tests/relay.rs"]
mod tests;
