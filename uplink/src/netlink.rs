// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Interface lookup, and the one rtnetlink query the uplink needs: which
//! XDP program, if any, is attached to an interface (`RTM_GETLINK`, nested
//! attribute `IFLA_XDP`) — the same answer `ip -d link show` prints.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fmt;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `IFLA_XDP` in `enum ifla` (`include/uapi/linux/if_link.h`).
const IFLA_XDP: u16 = 43;
/// Members of the `IFLA_XDP` nest.
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_HW_PROG_ID: u16 = 7;
/// Attribute type bits that are flags, not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDR_LEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;
const RTATTR_HDR_LEN: usize = 4;
const REPLY_BUFFER: usize = 64 * 1024;

/// Failures of interface lookups and rtnetlink queries.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("no network interface named `{name}`")]
    NoSuchInterface {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("opening an rtnetlink socket failed")]
    Socket {
        #[source]
        source: io::Error,
    },
    #[error("sending RTM_GETLINK for ifindex {ifindex} failed")]
    Send {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("receiving the RTM_GETLINK reply for ifindex {ifindex} failed")]
    Recv {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused RTM_GETLINK for ifindex {ifindex}")]
    Refused {
        ifindex: u32,
        #[source]
        source: io::Error,
    },
    #[error("malformed RTM_GETLINK reply for ifindex {ifindex}: {what}")]
    Malformed { ifindex: u32, what: &'static str },
}

/// The index of the interface `name` in this thread's network namespace.
pub fn ifindex(name: &str) -> Result<u32, NetlinkError> {
    let no_such = |source| NetlinkError::NoSuchInterface {
        name: name.to_owned(),
        source,
    };
    let c_name = CString::new(name).map_err(|_| no_such(io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: c_name is a valid NUL-terminated string for the whole call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(no_such(io::Error::last_os_error()));
    }
    Ok(index)
}

/// How an XDP program is attached (`XDP_ATTACHED_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachedMode {
    /// In the driver (native XDP).
    Driver,
    /// Generic (skb) XDP.
    Generic,
    /// Offloaded to the NIC.
    Offload,
    /// Several programs in different modes.
    Multiple,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Driver => "driver (xdpdrv)",
            Self::Generic => "generic (xdpgeneric)",
            Self::Offload => "offload (xdpoffload)",
            Self::Multiple => "several modes",
        })
    }
}

/// An XDP program attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachedProgram {
    /// Program id (`bpftool prog show id N`); for [`AttachedMode::Multiple`]
    /// the driver-mode one if any, else the generic one.
    pub prog_id: u32,
    pub mode: AttachedMode,
}

/// Asks the kernel which XDP program is attached to `ifindex`, if any.
pub fn attached_xdp_program(ifindex: u32) -> Result<Option<AttachedProgram>, NetlinkError> {
    let socket = RtnetlinkSocket::open()?;
    let reply = socket.get_link(ifindex)?;
    parse_get_link_reply(&reply, ifindex)
}

/// A `NETLINK_ROUTE` socket, used for one request.
struct RtnetlinkSocket {
    fd: OwnedFd,
}

impl RtnetlinkSocket {
    fn open() -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::Socket {
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Sends `RTM_GETLINK` for one interface and returns the raw reply.
    fn get_link(&self, ifindex: u32) -> Result<Vec<u8>, NetlinkError> {
        let request = get_link_request(ifindex);
        // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: request and kernel are valid for the lengths passed.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                request.as_ptr().cast(),
                request.len(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(NetlinkError::Send {
                ifindex,
                source: io::Error::last_os_error(),
            });
        }
        let mut reply = vec![0u8; REPLY_BUFFER];
        let received = loop {
            // SAFETY: reply is writable for its whole length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    reply.as_mut_ptr().cast(),
                    reply.len(),
                    0,
                )
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(NetlinkError::Recv {
                    ifindex,
                    source: err,
                });
            }
        };
        reply.truncate(received);
        Ok(reply)
    }
}

/// `nlmsghdr` + `ifinfomsg` asking for one link by index.
fn get_link_request(ifindex: u32) -> [u8; NLMSG_HDR_LEN + IFINFOMSG_LEN] {
    let mut msg = [0u8; NLMSG_HDR_LEN + IFINFOMSG_LEN];
    let len = msg.len() as u32;
    msg[0..4].copy_from_slice(&len.to_ne_bytes()); // nlmsg_len
    msg[4..6].copy_from_slice(&libc::RTM_GETLINK.to_ne_bytes()); // nlmsg_type
    msg[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes()); // nlmsg_flags
    msg[8..12].copy_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
                                                     // ifinfomsg: family AF_UNSPEC, then ifi_index at offset 4.
    msg[NLMSG_HDR_LEN + 4..NLMSG_HDR_LEN + 8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    msg
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

/// Iterates `(type, payload)` over a run of netlink attributes.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(buf, 0)? as usize;
        let kind = u16_at(buf, 2)? & NLA_TYPE_MASK;
        if len < RTATTR_HDR_LEN || len > buf.len() {
            return None;
        }
        let payload = &buf[RTATTR_HDR_LEN..len];
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

fn parse_get_link_reply(
    reply: &[u8],
    ifindex: u32,
) -> Result<Option<AttachedProgram>, NetlinkError> {
    let malformed = |what| NetlinkError::Malformed { ifindex, what };
    let msg_len = u32_at(reply, 0).ok_or(malformed("short header"))? as usize;
    let msg_type = u16_at(reply, 4).ok_or(malformed("short header"))?;
    let msg = reply.get(..msg_len).ok_or(malformed("truncated message"))?;
    if msg_type == libc::NLMSG_ERROR as u16 {
        let errno = u32_at(msg, NLMSG_HDR_LEN).ok_or(malformed("short error"))? as i32;
        return Err(NetlinkError::Refused {
            ifindex,
            source: io::Error::from_raw_os_error(-errno),
        });
    }
    if msg_type != libc::RTM_NEWLINK {
        return Err(malformed("unexpected message type"));
    }
    let attrs = msg
        .get(NLMSG_HDR_LEN + IFINFOMSG_LEN..)
        .ok_or(malformed("short ifinfomsg"))?;
    let Some((_, xdp)) = attributes(attrs).find(|(kind, _)| *kind == IFLA_XDP) else {
        return Ok(None);
    };
    let mut attached = None;
    let (mut prog, mut drv, mut skb, mut hw) = (0, 0, 0, 0);
    for (kind, payload) in attributes(xdp) {
        match kind {
            IFLA_XDP_ATTACHED => attached = payload.first().copied(),
            IFLA_XDP_PROG_ID => prog = u32_at(payload, 0).unwrap_or(0),
            IFLA_XDP_DRV_PROG_ID => drv = u32_at(payload, 0).unwrap_or(0),
            IFLA_XDP_SKB_PROG_ID => skb = u32_at(payload, 0).unwrap_or(0),
            IFLA_XDP_HW_PROG_ID => hw = u32_at(payload, 0).unwrap_or(0),
            _ => {}
        }
    }
    let mode = match attached.ok_or(malformed("IFLA_XDP without IFLA_XDP_ATTACHED"))? {
        0 => return Ok(None),
        1 => AttachedMode::Driver,
        2 => AttachedMode::Generic,
        3 => AttachedMode::Offload,
        _ => AttachedMode::Multiple,
    };
    let prog_id = [prog, drv, skb, hw]
        .into_iter()
        .find(|&id| id != 0)
        .unwrap_or(0);
    Ok(Some(AttachedProgram { prog_id, mode }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((RTATTR_HDR_LEN + payload.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(payload);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out
    }

    fn newlink(attrs: &[u8]) -> Vec<u8> {
        let mut msg = get_link_request(7).to_vec();
        msg[4..6].copy_from_slice(&libc::RTM_NEWLINK.to_ne_bytes());
        msg.extend_from_slice(attrs);
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg
    }

    #[test]
    fn parses_an_attached_driver_program() {
        let mut nest = attr(IFLA_XDP_ATTACHED, &[1]);
        nest.extend(attr(IFLA_XDP_PROG_ID, &42u32.to_ne_bytes()));
        let mut attrs = attr(3, b"veth0\0"); // IFLA_IFNAME first
        attrs.extend(attr(IFLA_XDP | 0x8000, &nest)); // NLA_F_NESTED set
        let found = parse_get_link_reply(&newlink(&attrs), 7).unwrap();
        assert_eq!(
            found,
            Some(AttachedProgram {
                prog_id: 42,
                mode: AttachedMode::Driver
            })
        );
    }

    #[test]
    fn parses_no_program() {
        let attrs = attr(IFLA_XDP, &attr(IFLA_XDP_ATTACHED, &[0]));
        assert_eq!(parse_get_link_reply(&newlink(&attrs), 7).unwrap(), None);
        assert_eq!(parse_get_link_reply(&newlink(&[]), 7).unwrap(), None);
    }

    #[test]
    fn loopback_has_no_xdp_program() {
        let lo = ifindex("lo").expect("lo exists");
        assert_eq!(attached_xdp_program(lo).expect("query"), None);
        assert!(matches!(
            ifindex("vpmd-no-such-if"),
            Err(NetlinkError::NoSuchInterface { .. })
        ));
    }
}
