// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Creating and binding AF_XDP sockets, one per RX queue, all on one UMEM.
//!
//! The first socket registers the UMEM (`XDP_UMEM_REG`) and is bound first,
//! trying zero-copy (`XDP_ZEROCOPY`) and falling back to copy mode
//! (`XDP_COPY`) when the driver has no zero-copy support (veth, most virtual
//! devices). Every other socket binds with `XDP_SHARED_UMEM` naming the
//! first one: the kernel gives it a buffer pool of its own on its queue,
//! fed by its own fill and completion rings (kernel >= 5.10), and it
//! inherits the first socket's mode and need-wakeup setting. All sockets use
//! `XDP_USE_NEED_WAKEUP`, so the data path makes system calls only when the
//! kernel asks for them (see [`crate::rx`] and [`crate::tx`]).
//!
//! Multi-buffer: the first socket asks for `XDP_USE_SG` (kernel >= 6.6 in copy
//! mode, or a zero-copy driver that supports it) and binds without it if the
//! kernel refuses; the others inherit the UMEM's setting. With it, a frame
//! larger than a chunk comes and goes as several descriptors, all but the last
//! flagged `XDP_PKT_CONTD`: that is what carries jumbo frames (MTU 9000).
//!
//! Transmit metadata: the UMEM is registered with room for `struct
//! xsk_tx_metadata` in front of every transmitted frame
//! (`XDP_UMEM_TX_METADATA_LEN`, Linux 6.11+; without it if the kernel refuses),
//! so that a frame may leave with its checksum for the kernel or NIC to fill in.
//!
//! # Threads
//! An [`XskSocket`] is `Send` and not `Sync`: move it into the polling
//! thread that serves its queue; that thread alone calls its `&mut self`
//! burst methods. [`XskSocket::split`] gives a receive half and a transmit
//! half that may live in two different threads: they share no ring and no
//! chunk, only the socket descriptor (for wakeups, which the kernel
//! serialises).
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::mem::size_of;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use crate::ring::{ConsumerRing, ProducerRing, XdpDesc};
use crate::rx::{RxBurst, XskReceiver};
use crate::stats::{RxCounters, TxCounters, XdpStatistics};
use crate::tx::{TxBurst, TxSetup, XskTransmitter};
use crate::umem::UmemArea;

/// How the kernel moves frames between the device and the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// The driver DMAs straight into UMEM chunks.
    ZeroCopy,
    /// The kernel copies each frame between its own buffers and the UMEM.
    Copy,
}

impl fmt::Display for BindMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroCopy => "zero-copy",
            Self::Copy => "copy",
        })
    }
}

/// Which modes to try when binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindPreference {
    /// Zero-copy, else copy.
    #[default]
    ZeroCopyThenCopy,
    ZeroCopyOnly,
    CopyOnly,
}

/// Entries in each ring of each socket (powers of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSizes {
    pub fill: u32,
    pub completion: u32,
    pub rx: u32,
    pub tx: u32,
}

impl Default for RingSizes {
    fn default() -> Self {
        Self {
            fill: 2048,
            completion: 2048,
            rx: 2048,
            tx: 2048,
        }
    }
}

/// Failures of socket setup, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("ring sizes must be powers of two: {0:?}")]
    RingSizes(RingSizes),
    #[error("socket(AF_XDP) failed")]
    Create(#[source] io::Error),
    #[error("setsockopt({option}) on the AF_XDP socket of queue {queue} failed")]
    SetOption {
        option: &'static str,
        queue: u32,
        #[source]
        source: io::Error,
    },
    #[error("getsockopt({option}) on the AF_XDP socket of queue {queue} failed")]
    GetOption {
        option: &'static str,
        queue: u32,
        #[source]
        source: io::Error,
    },
    #[error("mmap of the {ring} ring of queue {queue} failed")]
    MapRing {
        ring: &'static str,
        queue: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "bind of the AF_XDP socket to ifindex {ifindex} queue {queue} ({how}) failed: {source}"
    )]
    Bind {
        ifindex: u32,
        queue: u32,
        how: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Everything needed to open one socket.
pub(crate) struct SocketSetup<'a> {
    pub umem: &'a Arc<UmemArea>,
    pub ifindex: u32,
    pub queue_id: u32,
    pub rings: RingSizes,
    /// Indices of the chunks this socket owns.
    pub chunks: Range<u64>,
    /// The socket that registered the UMEM; `None` for that first socket.
    pub share_with: Option<&'a XskSocket>,
    pub preference: BindPreference,
}

/// One AF_XDP socket bound to one queue of the uplink.
#[derive(Debug)]
pub struct XskSocket {
    receiver: XskReceiver,
    transmitter: XskTransmitter,
    fd: Arc<OwnedFd>,
    ifindex: u32,
    mode: BindMode,
    /// Bound with `XDP_USE_SG` (or sharing a UMEM that was).
    multi_buffer: bool,
}

impl XskSocket {
    pub(crate) fn open(setup: &SocketSetup<'_>) -> Result<Self, SocketError> {
        let rings = setup.rings;
        let sizes = [rings.fill, rings.completion, rings.rx, rings.tx];
        if sizes.iter().any(|s| !s.is_power_of_two()) {
            return Err(SocketError::RingSizes(rings));
        }
        let queue = setup.queue_id;
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(SocketError::Create(io::Error::last_os_error()));
        }
        // SAFETY: raw is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let set = |option, name, value: &dyn OptionValue| {
            set_option(fd.as_fd(), name, value).map_err(|source| SocketError::SetOption {
                option,
                queue,
                source,
            })
        };
        // Transmit metadata (checksum offload) where the kernel takes it; the
        // UMEM's owner decides for every socket sharing it.
        let tx_metadata = match setup.share_with {
            Some(owner) => owner.tx_checksum(),
            None => {
                let reg = |meta| {
                    set(
                        "XDP_UMEM_REG",
                        libc::XDP_UMEM_REG,
                        &setup.umem.registration(meta),
                    )
                };
                match reg(true) {
                    Ok(()) => true,
                    Err(e) => {
                        let why = std::error::Error::source(&e).map(ToString::to_string);
                        log::info!(
                            "{e} with XDP_UMEM_TX_METADATA_LEN ({}); registering the UMEM without transmit metadata",
                            why.unwrap_or_default()
                        );
                        reg(false)?;
                        false
                    }
                }
            }
        };
        set("XDP_UMEM_FILL_RING", libc::XDP_UMEM_FILL_RING, &rings.fill)?;
        set(
            "XDP_UMEM_COMPLETION_RING",
            libc::XDP_UMEM_COMPLETION_RING,
            &rings.completion,
        )?;
        set("XDP_RX_RING", libc::XDP_RX_RING, &rings.rx)?;
        set("XDP_TX_RING", libc::XDP_TX_RING, &rings.tx)?;

        let offsets: libc::xdp_mmap_offsets = get_option(fd.as_fd(), libc::XDP_MMAP_OFFSETS)
            .map_err(|source| SocketError::GetOption {
                option: "XDP_MMAP_OFFSETS",
                queue,
                source,
            })?;
        let map_err = |ring| {
            move |source| SocketError::MapRing {
                ring,
                queue,
                source,
            }
        };
        let fill = ProducerRing::<u64>::map(
            fd.as_fd(),
            libc::XDP_UMEM_PGOFF_FILL_RING as i64,
            &offsets.fr,
            rings.fill,
        )
        .map_err(map_err("fill"))?;
        let completion = ConsumerRing::<u64>::map(
            fd.as_fd(),
            libc::XDP_UMEM_PGOFF_COMPLETION_RING as i64,
            &offsets.cr,
            rings.completion,
        )
        .map_err(map_err("completion"))?;
        let rx = ConsumerRing::<XdpDesc>::map(
            fd.as_fd(),
            libc::XDP_PGOFF_RX_RING,
            &offsets.rx,
            rings.rx,
        )
        .map_err(map_err("RX"))?;
        let tx = ProducerRing::<XdpDesc>::map(
            fd.as_fd(),
            libc::XDP_PGOFF_TX_RING,
            &offsets.tx,
            rings.tx,
        )
        .map_err(map_err("TX"))?;

        let (mode, multi_buffer) = bind(fd.as_fd(), setup)?;
        let fd = Arc::new(fd);

        // Receive chunks: at most what the fill ring holds, so that chunks
        // coming back from the RX ring always find room on it; half the
        // socket's chunks, so that transmit keeps as many.
        let owned = setup.chunks.end - setup.chunks.start;
        let receive = (owned / 2).min(u64::from(rings.fill));
        let split = setup.chunks.start + receive;
        let umem = setup.umem;
        let receiver = XskReceiver::new(
            rx,
            fill,
            (setup.chunks.start..split)
                .map(|c| umem.chunk_addr(c))
                .collect(),
            Arc::clone(umem),
            Arc::clone(&fd),
            queue,
        );
        let transmitter = XskTransmitter::new(
            tx,
            completion,
            (split..setup.chunks.end)
                .map(|c| umem.chunk_addr(c))
                .collect(),
            Arc::clone(umem),
            Arc::clone(&fd),
            TxSetup {
                queue_id: queue,
                multi_buffer,
                tx_metadata,
            },
        );
        Ok(Self {
            receiver,
            transmitter,
            fd,
            ifindex: setup.ifindex,
            mode,
            multi_buffer,
        })
    }

    /// Received frames; see [`XskReceiver::receive_burst`].
    pub fn receive_burst(&mut self, max: usize) -> RxBurst<'_> {
        self.receiver.receive_burst(max)
    }

    /// Slots to transmit into; see [`XskTransmitter::transmit_burst`].
    pub fn transmit_burst(&mut self, max: usize) -> TxBurst<'_> {
        self.transmitter.transmit_burst(max)
    }

    /// See [`XskTransmitter::flush`].
    pub fn flush_tx(&mut self) {
        self.transmitter.flush();
    }

    pub fn receiver(&mut self) -> &mut XskReceiver {
        &mut self.receiver
    }

    pub fn transmitter(&mut self) -> &mut XskTransmitter {
        &mut self.transmitter
    }

    /// The two halves, for a receive thread and a transmit thread.
    pub fn split(self) -> (XskReceiver, XskTransmitter) {
        (self.receiver, self.transmitter)
    }

    pub fn queue_id(&self) -> u32 {
        self.receiver.queue_id()
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The mode the kernel bound this socket in.
    pub fn bind_mode(&self) -> BindMode {
        self.mode
    }

    /// Whether frames larger than a chunk are received and sent as several
    /// descriptors (`XDP_USE_SG`).
    pub fn multi_buffer(&self) -> bool {
        self.multi_buffer
    }

    /// Whether frames may leave with their TCP/UDP checksum for the kernel (or
    /// the NIC) to fill in (AF_XDP transmit metadata); see
    /// [`XskTransmitter::checksum_offload`].
    pub fn tx_checksum(&self) -> bool {
        self.transmitter.checksum_offload()
    }

    pub fn rx_counters(&self) -> RxCounters {
        self.receiver.counters()
    }

    pub fn tx_counters(&self) -> TxCounters {
        self.transmitter.counters()
    }

    /// The kernel's counters for this socket (one `getsockopt`; not for
    /// every burst).
    pub fn kernel_statistics(&self) -> io::Result<XdpStatistics> {
        kernel_statistics(self.fd.as_fd())
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `XDP_STATISTICS` of any AF_XDP socket (e.g. a half's `as_fd()`).
pub fn kernel_statistics(fd: BorrowedFd<'_>) -> io::Result<XdpStatistics> {
    get_option::<libc::xdp_statistics>(fd, libc::XDP_STATISTICS).map(XdpStatistics::from)
}

/// Binds as `setup` says and returns the mode the kernel chose, and whether
/// multi-buffer (`XDP_USE_SG`) is on.
fn bind(fd: BorrowedFd<'_>, setup: &SocketSetup<'_>) -> Result<(BindMode, bool), SocketError> {
    let bind_as = |flags: u16, shared: u32, how: &'static str| {
        let addr = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: setup.ifindex,
            sxdp_queue_id: setup.queue_id,
            sxdp_shared_umem_fd: shared,
        };
        // SAFETY: addr is a valid sockaddr_xdp of the length passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(SocketError::Bind {
                ifindex: setup.ifindex,
                queue: setup.queue_id,
                how,
                source: io::Error::last_os_error(),
            })
        }
    };
    // Multi-buffer if the kernel (and driver) can, else frames of one chunk. A
    // failed bind leaves the socket unbound with its rings intact, so the same
    // socket can try again.
    let bind_sg = |flags: u16, how: &'static str| match bind_as(flags | libc::XDP_USE_SG, 0, how) {
        Ok(()) => Ok(true),
        Err(sg) => {
            log::info!("{sg}; binding without XDP_USE_SG (frames up to one UMEM chunk)");
            bind_as(flags, 0, how).map(|()| false)
        }
    };
    let wakeup = libc::XDP_USE_NEED_WAKEUP;
    let multi_buffer = match (setup.share_with, setup.preference) {
        (Some(owner), _) => {
            // Flags are the UMEM owner's: the kernel refuses any here.
            bind_as(
                libc::XDP_SHARED_UMEM,
                owner.as_fd().as_raw_fd() as u32,
                "shared UMEM",
            )?;
            owner.multi_buffer()
        }
        (None, BindPreference::CopyOnly) => bind_sg(libc::XDP_COPY | wakeup, "copy")?,
        (None, BindPreference::ZeroCopyOnly) => bind_sg(libc::XDP_ZEROCOPY | wakeup, "zero-copy")?,
        (None, BindPreference::ZeroCopyThenCopy) => {
            match bind_sg(libc::XDP_ZEROCOPY | wakeup, "zero-copy") {
                Ok(sg) => sg,
                Err(zc) => {
                    log::info!("{zc}; falling back to copy mode");
                    bind_sg(libc::XDP_COPY | wakeup, "copy")?
                }
            }
        }
    };
    let options: libc::xdp_options =
        get_option(fd, libc::XDP_OPTIONS).map_err(|source| SocketError::GetOption {
            option: "XDP_OPTIONS",
            queue: setup.queue_id,
            source,
        })?;
    let mode = if options.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
        BindMode::ZeroCopy
    } else {
        BindMode::Copy
    };
    Ok((mode, multi_buffer))
}

/// A value passed to setsockopt(SOL_XDP, ..) by address and size.
trait OptionValue {
    fn as_bytes(&self) -> (*const libc::c_void, libc::socklen_t);
}

impl OptionValue for u32 {
    fn as_bytes(&self) -> (*const libc::c_void, libc::socklen_t) {
        (
            std::ptr::from_ref::<u32>(self).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    }
}

impl OptionValue for libc::xdp_umem_reg {
    fn as_bytes(&self) -> (*const libc::c_void, libc::socklen_t) {
        (
            std::ptr::from_ref::<Self>(self).cast(),
            size_of::<Self>() as libc::socklen_t,
        )
    }
}

fn set_option(fd: BorrowedFd<'_>, name: libc::c_int, value: &dyn OptionValue) -> io::Result<()> {
    let (ptr, len) = value.as_bytes();
    // SAFETY: ptr points to len readable bytes of a live value.
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_XDP, name, ptr, len) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Option values the kernel returns: `#[repr(C)]` structs of integers,
/// for which every bit pattern is a valid value.
trait PlainOption: Copy {}
impl PlainOption for libc::xdp_mmap_offsets {}
impl PlainOption for libc::xdp_statistics {}
impl PlainOption for libc::xdp_options {}

/// getsockopt(SOL_XDP, name) into a `T`, which must be filled completely.
fn get_option<T: PlainOption>(fd: BorrowedFd<'_>, name: libc::c_int) -> io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: value is writable for len bytes; the kernel writes at most len.
    let ret = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            name,
            value.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<T>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("kernel returned {len} bytes, expected {}", size_of::<T>()),
        ));
    }
    // SAFETY: zero-initialised, then filled by the kernel; T: PlainOption,
    // so any bytes are a valid value.
    Ok(unsafe { value.assume_init() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread story, checked by the compiler: a socket and its halves
    /// can move to a polling thread.
    #[test]
    fn sockets_and_halves_are_send() {
        fn send<T: Send>() {}
        send::<XskSocket>();
        send::<XskReceiver>();
        send::<XskTransmitter>();
    }
}
