// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The group tap: a copy of every broadcast and multicast frame the uplink
//! receives, for the polling threads to hand to every VM port.
//!
//! The XDP program passes group frames to the kernel: XDP cannot clone a
//! frame, and the host's own stack on the uplink needs them (ARP, IPv6
//! neighbour discovery). The tap is an AF_PACKET socket on the uplink that
//! gets its copy where the kernel hands received frames to packet sockets:
//!
//! - bound to the uplink's ifindex with `ETH_P_ALL`;
//! - `PACKET_IGNORE_OUTGOING`: frames the host (or anyone) transmits on
//!   the uplink are not seen, only frames received from the wire;
//! - a classic-BPF socket filter (`SO_ATTACH_FILTER`) that accepts only
//!   frames whose destination MAC has the group bit set; unicast is refused
//!   in the kernel, before any copy, for a few instructions per frame;
//! - a memory-mapped receive ring (`packet_ring`, `TPACKET_V2`):
//!   the kernel copies each accepted frame into the ring once, and the
//!   polling thread finds it by reading a status word, with no system call
//!   (idle costs one load per poll);
//! - optionally `PACKET_MR_ALLMULTI`, so that a NIC with a multicast filter
//!   delivers every multicast group (as for the VMs behind a macvlan); the
//!   membership ends with the socket.
//!
//! Setup order: options, filter and ring first, bind last, so no frame
//! enters the ring unfiltered and none arrives before the ring exists.
//!
//! ```text
//! group filter (cBPF, offsets from the Ethernet header):
//!  0: ldb [0]                  ; first byte of the destination MAC
//!  1: jset #0x01, 2, 3         ; group bit: broadcast or multicast
//!  2: ret #0xffffffff          ; accept the whole frame
//!  3: ret #0                   ; refuse
//! ```
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::netlink::{self, NetlinkError};
use crate::packet_ring::{Geometry, TapBurst, TapRing};
use crate::stats::TapCounters;

/// Shape of the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketTapConfig {
    /// Longest frame to receive whole, Ethernet header included. `None`:
    /// the interface's MTU + 18 (header and one VLAN tag). Longer frames
    /// are counted ([`TapCounters::too_big`]) and dropped, never truncated.
    pub max_frame_len: Option<u32>,
    /// Ring slots, one frame each (rounded up to whole blocks).
    pub frames: u32,
    /// Ask the interface for all multicast groups (`PACKET_MR_ALLMULTI`).
    pub all_multicast: bool,
}

impl Default for PacketTapConfig {
    /// MTU-sized slots, 512 of them, all multicast.
    fn default() -> Self {
        Self {
            max_frame_len: None,
            frames: 512,
            all_multicast: true,
        }
    }
}

/// Failures of [`PacketTap::open`], naming the step.
#[derive(Debug, thiserror::Error)]
pub enum PacketTapError {
    #[error("group tap: looking up interface `{ifname}` failed")]
    Interface {
        ifname: String,
        #[source]
        source: NetlinkError,
    },
    #[error("group tap: socket(AF_PACKET) failed")]
    Create(#[source] io::Error),
    #[error("group tap: reading the MTU of `{ifname}` (SIOCGIFMTU) failed")]
    Mtu {
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("group tap: a ring of {frames} frames of up to {max_frame_len} bytes is not possible (frames of 14..=65535 bytes, ring under 4 GiB)")]
    Geometry { max_frame_len: u32, frames: u32 },
    #[error(
        "group tap: setsockopt({option}) on the AF_PACKET socket for ifindex {ifindex} failed"
    )]
    SetOption {
        option: &'static str,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("group tap: mmap of the {bytes}-byte receive ring for ifindex {ifindex} failed")]
    MapRing {
        bytes: usize,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("group tap: bind of the AF_PACKET socket to ifindex {ifindex} failed")]
    Bind {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

/// `TPACKET_V2` in `enum tpacket_versions`.
const TPACKET_V2: libc::c_int = 1;
/// cBPF opcodes (`include/uapi/linux/filter.h`).
const BPF_LD_B_ABS: u16 = 0x30; // BPF_LD (0x00) | BPF_B (0x10) | BPF_ABS (0x20)
const BPF_JMP_JSET_K: u16 = 0x45; // BPF_JMP (0x05) | BPF_JSET (0x40) | BPF_K (0x00)
const BPF_RET_K: u16 = 0x06; // BPF_RET (0x06) | BPF_K (0x00)

/// The group filter (listing in the module documentation).
pub(crate) fn group_filter() -> [libc::sock_filter; 4] {
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        op(BPF_LD_B_ABS, 0, 0, 0),
        op(BPF_JMP_JSET_K, 0, 1, 0x01),
        op(BPF_RET_K, 0, 0, u32::MAX),
        op(BPF_RET_K, 0, 0, 0),
    ]
}

/// An AF_PACKET socket on the uplink receiving its broadcast and multicast
/// frames into a mapped ring. `Send`, not `Sync`: one polling thread owns
/// it and calls [`Self::receive_burst`] through `&mut self`.
#[derive(Debug)]
pub struct PacketTap {
    // Declared first, dropped first: unmapped before the socket closes.
    ring: TapRing,
    fd: OwnedFd,
    ifindex: u32,
    kernel_drops: u64,
    statistics_reads: u64,
}

impl PacketTap {
    /// Opens the tap on interface `ifname` (of the calling thread's network
    /// namespace). From the return on, every group frame the interface
    /// receives lands in the ring.
    pub fn open(ifname: &str, config: &PacketTapConfig) -> Result<Self, PacketTapError> {
        let ifindex = netlink::ifindex(ifname).map_err(|source| PacketTapError::Interface {
            ifname: ifname.into(),
            source,
        })?;
        // Protocol 0: the socket receives nothing until bound.
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(PacketTapError::Create(io::Error::last_os_error()));
        }
        // SAFETY: raw is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let max_frame_len = match config.max_frame_len {
            Some(len) => len,
            None => mtu(fd.as_fd(), ifname)
                .map_err(|source| PacketTapError::Mtu {
                    ifname: ifname.into(),
                    source,
                })?
                .saturating_add(18),
        };
        let geometry = (14..=65535)
            .contains(&max_frame_len)
            .then(|| Geometry::new(max_frame_len, config.frames, page_size()))
            .flatten()
            .ok_or(PacketTapError::Geometry {
                max_frame_len,
                frames: config.frames,
            })?;

        let set = |level, option, name, value: &dyn AsBytes| {
            set_option(fd.as_fd(), level, name, value).map_err(|source| PacketTapError::SetOption {
                option,
                ifindex,
                source,
            })
        };
        let filter = group_filter();
        let program = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr().cast_mut(),
        };
        set(
            libc::SOL_PACKET,
            "PACKET_VERSION",
            libc::PACKET_VERSION,
            &TPACKET_V2,
        )?;
        set(
            libc::SOL_PACKET,
            "PACKET_RESERVE",
            libc::PACKET_RESERVE,
            &(crate::packet_ring::RESERVE as libc::c_int),
        )?;
        set(
            libc::SOL_PACKET,
            "PACKET_IGNORE_OUTGOING",
            libc::PACKET_IGNORE_OUTGOING,
            &1,
        )?;
        set(
            libc::SOL_SOCKET,
            "SO_ATTACH_FILTER",
            libc::SO_ATTACH_FILTER,
            &program,
        )?;
        set(
            libc::SOL_PACKET,
            "PACKET_RX_RING",
            libc::PACKET_RX_RING,
            &geometry.request(),
        )?;
        let ring =
            TapRing::map(fd.as_fd(), geometry).map_err(|source| PacketTapError::MapRing {
                bytes: geometry.map_len(),
                ifindex,
                source,
            })?;
        if config.all_multicast {
            // SAFETY: packet_mreq is plain data; zeroes are valid.
            let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
            mreq.mr_ifindex = ifindex as libc::c_int;
            mreq.mr_type = libc::PACKET_MR_ALLMULTI as u16;
            set(
                libc::SOL_PACKET,
                "PACKET_ADD_MEMBERSHIP",
                libc::PACKET_ADD_MEMBERSHIP,
                &mreq,
            )?;
        }
        bind(fd.as_fd(), ifindex).map_err(|source| PacketTapError::Bind { ifindex, source })?;
        log::info!(
            "group tap on {ifname}: {} ring slots for frames of up to {} bytes",
            geometry.frame_nr(),
            geometry.max_frame_len(),
        );
        Ok(Self {
            ring,
            fd,
            ifindex,
            kernel_drops: 0,
            statistics_reads: 0,
        })
    }

    /// Up to `max` group frames received (fewer if fewer are waiting;
    /// possibly none), valid until the burst is dropped. No system call,
    /// except one `PACKET_STATISTICS` read after the kernel flagged losses
    /// (`TP_STATUS_LOSING`), to keep [`TapCounters::kernel_drops`] current.
    pub fn receive_burst(&mut self, max: usize) -> TapBurst<'_> {
        if self.ring.take_losing() {
            // Failure leaves the drops for the next read.
            let _ = self.read_kernel_statistics();
        }
        self.ring.receive_burst(max)
    }

    /// Our counters, with the kernel's drops as of the last
    /// `PACKET_STATISTICS` read.
    pub fn counters(&self) -> TapCounters {
        let ring = self.ring.counters();
        TapCounters {
            frames: ring.frames,
            bytes: ring.bytes,
            too_big: ring.too_big,
            vlan_restored: ring.vlan_restored,
            checksum_partial: ring.checksum_partial,
            kernel_drops: self.kernel_drops,
            statistics_reads: self.statistics_reads,
        }
    }

    /// Reads `PACKET_STATISTICS` (one `getsockopt`, which also resets the
    /// kernel's counts), adds its drops to ours and returns the counters.
    pub fn read_kernel_statistics(&mut self) -> io::Result<TapCounters> {
        // SAFETY: tpacket_stats is plain data; zeroes are valid.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: stats is writable for len bytes; the kernel writes at most len.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &raw mut len,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        self.statistics_reads += 1;
        self.kernel_drops += u64::from(stats.tp_drops);
        Ok(self.counters())
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Longest frame a ring slot holds whole.
    pub fn max_frame_len(&self) -> u32 {
        self.ring.geometry().max_frame_len()
    }

    /// Slots in the ring.
    pub fn ring_frames(&self) -> u32 {
        self.ring.geometry().frame_nr()
    }
}

impl AsFd for PacketTap {
    /// For `poll(2)` by a thread that would rather sleep than poll the ring.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).unwrap_or(4096)
}

/// The MTU of `ifname` (`SIOCGIFMTU` on any socket).
fn mtu(fd: BorrowedFd<'_>, ifname: &str) -> io::Result<u32> {
    // SAFETY: ifreq is plain data; zeroes are valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= req.ifr_name.len() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    // SAFETY: req is a valid ifreq with a NUL-terminated name; the kernel
    // writes the MTU into it.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the union's ifru_mtu member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| io::ErrorKind::InvalidData.into())
}

fn bind(fd: BorrowedFd<'_>, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; zeroes are valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: addr is a valid sockaddr_ll of the length passed.
    let ret = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A value passed to setsockopt by address and size: a plain `#[repr(C)]`
/// value whose bytes the kernel copies in.
trait AsBytes {
    fn as_bytes(&self) -> (*const libc::c_void, libc::socklen_t);
}

macro_rules! as_bytes {
    ($($t:ty),*) => {$(
        impl AsBytes for $t {
            fn as_bytes(&self) -> (*const libc::c_void, libc::socklen_t) {
                (std::ptr::from_ref::<Self>(self).cast(), size_of::<Self>() as libc::socklen_t)
            }
        }
    )*};
}
as_bytes!(
    libc::c_int,
    libc::sock_fprog,
    libc::tpacket_req,
    libc::packet_mreq
);

fn set_option(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &dyn AsBytes,
) -> io::Result<()> {
    let (ptr, len) = value.as_bytes();
    // SAFETY: ptr points to len readable bytes of a live value (for
    // sock_fprog, its filter array outlives the call too).
    let ret = unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, ptr, len) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the filter the way the kernel does, for the three opcodes it
    /// uses: the value returned is the number of bytes to accept.
    fn filter_verdict(frame: &[u8]) -> u32 {
        let filter = group_filter();
        let mut acc = 0u32;
        let mut pc = 0usize;
        loop {
            let op = filter[pc];
            pc += 1;
            match op.code {
                BPF_LD_B_ABS => match frame.get(op.k as usize) {
                    Some(&b) => acc = u32::from(b),
                    None => return 0, // out-of-bounds load: the kernel refuses
                },
                BPF_JMP_JSET_K => pc += usize::from(if acc & op.k != 0 { op.jt } else { op.jf }),
                BPF_RET_K => return op.k,
                other => panic!("opcode {other:#x} not modelled"),
            }
        }
    }

    #[test]
    fn filter_accepts_group_frames_only() {
        let mut frame = [0u8; 60];
        for (dst, accepted) in [
            ([0xff; 6], true),
            ([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb], true),
            ([0x33, 0x33, 0x00, 0x00, 0x00, 0x01], true),
            ([0x52, 0x54, 0x00, 0x12, 0x34, 0x56], false),
            ([0x02, 0x00, 0x00, 0x00, 0x00, 0x01], false),
        ] {
            frame[..6].copy_from_slice(&dst);
            let verdict = filter_verdict(&frame);
            assert_eq!(verdict != 0, accepted, "{dst:02x?}");
            if accepted {
                assert!(verdict as usize >= frame.len(), "accepted whole");
            }
        }
        assert_eq!(filter_verdict(&[]), 0, "empty frame");
    }

    #[test]
    fn filter_opcodes_are_the_uapi_ones() {
        // BPF_LD=0x00 BPF_B=0x10 BPF_ABS=0x20; BPF_JMP=0x05 BPF_JSET=0x40
        // BPF_K=0x00; BPF_RET=0x06.
        let codes: Vec<u16> = group_filter().iter().map(|op| op.code).collect();
        assert_eq!(codes, [0x30, 0x45, 0x06, 0x06]);
    }

    #[test]
    fn tap_is_send() {
        fn send<T: Send>() {}
        send::<PacketTap>();
    }
}
