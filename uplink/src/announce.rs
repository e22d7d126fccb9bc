// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Telling the physical network where a VM now lives, after a live migration.
//!
//! When a VM arrives on this host, the switch outside still sends its frames to
//! the old host until it sees a frame from the VM's MAC on this uplink. A guest
//! that cannot announce itself (no `VIRTIO_NET_F_GUEST_ANNOUNCE`) leaves that to
//! the backend: QEMU sends `SEND_RARP`, and the backend sends a RARP request from
//! the VM's MAC, as QEMU's own `announce_self` and DPDK's vhost library do.
//!
//! [`Announcer`] sends that frame out of the uplink through an AF_PACKET socket of
//! its own: the frame leaves the interface exactly as one the host sends (XDP sees
//! only what the uplink receives), and the socket binds to no protocol, so it
//! never receives anything. Sends are non-blocking: a full queue loses the
//! announcement (QEMU repeats it), it never stalls the control thread.
#![allow(unsafe_code)] // socket(2), sendto(2).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netlink::{self, NetlinkError};

/// `ETH_P_RARP`.
pub const ETH_P_RARP: u16 = 0x8035;
/// The RARP frame's length: the Ethernet minimum, padding included.
pub const RARP_FRAME_LEN: usize = 60;

/// Why an announcer could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The uplink is not there.
    #[error("uplink {ifname}")]
    Interface {
        /// The uplink's name.
        ifname: String,
        /// From the lookup.
        #[source]
        source: NetlinkError,
    },
    /// socket(2) failed.
    #[error("creating an AF_PACKET socket")]
    Socket(#[source] io::Error),
}

/// A RARP request from `mac` ("who is `mac`", op 3), broadcast, as QEMU builds it
/// (`announce_self_create`): the switch learns `mac` from the source address.
pub fn rarp_frame(mac: [u8; 6]) -> [u8; RARP_FRAME_LEN] {
    let mut f = [0u8; RARP_FRAME_LEN];
    f[0..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_RARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    f[18] = 6; // hardware address length
    f[19] = 4; // protocol address length
    f[20..22].copy_from_slice(&3u16.to_be_bytes()); // op: reverse request
    f[22..28].copy_from_slice(&mac); // sender hardware address
                                     // sender protocol address 0.0.0.0
    f[32..38].copy_from_slice(&mac); // target hardware address
                                     // target protocol address 0.0.0.0, then padding
    f
}

/// Sends announcements out of one uplink.
#[derive(Debug)]
pub struct Announcer {
    fd: OwnedFd,
    ifindex: u32,
    ifname: String,
}

impl Announcer {
    /// An announcer on interface `ifname` (of the calling thread's namespace).
    pub fn open(ifname: &str) -> Result<Self, AnnounceError> {
        let ifindex = netlink::ifindex(ifname).map_err(|source| AnnounceError::Interface {
            ifname: ifname.into(),
            source,
        })?;
        // Protocol 0: bound to nothing, the socket receives no frames.
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if raw < 0 {
            return Err(AnnounceError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Announcer {
            fd,
            ifindex,
            ifname: ifname.into(),
        })
    }

    /// The uplink's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Sends one RARP request from `mac` out of the uplink.
    pub fn send_rarp(&self, mac: [u8; 6]) -> io::Result<()> {
        let frame = rarp_frame(mac);
        // SAFETY: all-zero is a valid sockaddr_ll, filled in below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = ETH_P_RARP.to_be();
        to.sll_ifindex = self.ifindex as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].fill(0xff);
        // SAFETY: `frame` and `to` are valid for the lengths passed, for the call.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        match n {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize != frame.len() => Err(io::Error::other("short send")),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rarp_frame_is_qemus() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let f = rarp_frame(mac);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x80, 0x35]);
        assert_eq!(&f[14..22], &[0, 1, 8, 0, 6, 4, 0, 3]);
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[0; 4]);
        assert_eq!(&f[32..38], &mac);
        assert!(f[38..].iter().all(|&b| b == 0));
    }

    #[test]
    fn an_unknown_uplink_is_refused() {
        assert!(matches!(
            Announcer::open("vpmd-no-such0"),
            Err(AnnounceError::Interface { .. })
        ));
    }
}
