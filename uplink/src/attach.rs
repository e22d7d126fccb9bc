// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Attaching the XDP program to the uplink with `BPF_LINK_CREATE`.
//!
//! A BPF link, unlike the netlink `IFLA_XDP_FD` attach, belongs to its file
//! descriptor: when the last descriptor closes — [`XdpLink`] dropped, process
//! exit, even `SIGKILL` — the kernel detaches the program. Nothing is left on
//! the interface after vpmd dies. (BPF descriptors are close-on-exec; a
//! `fork` without `exec` would keep the link alive in the child.)
//!
//! Before attaching we ask the kernel (rtnetlink `IFLA_XDP`) whether the
//! interface already runs an XDP program. If it does, it is not ours — ours
//! only exists as long as the [`XdpLink`] — and we refuse with an error
//! naming the interface rather than fight over it. `BPF_LINK_CREATE` refuses
//! too (`EBUSY`/`EEXIST`) if one appears between the query and the attach.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};

use crate::bpf::{self, BpfError};
use crate::netlink::{self, AttachedMode, NetlinkError};
use crate::program::XdpProgram;

/// `XDP_FLAGS_SKB_MODE`.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Which XDP hook to attach to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachPreference {
    /// Native (driver) mode, else generic mode if the driver has no XDP.
    #[default]
    DriverThenGeneric,
    /// Native mode or nothing.
    DriverOnly,
    /// Generic mode (runs after the driver built an skb; slower).
    GenericOnly,
}

/// The mode the program was attached in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Driver,
    Generic,
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Driver => "driver",
            Self::Generic => "generic",
        })
    }
}

/// Failures of attaching.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "interface `{ifname}` already has an XDP program attached (id {prog_id}, {mode} mode); \
         refusing to replace it. Stop whatever owns it (another vpmd, or \
         `ip link set dev {ifname} xdp off` if it was attached with ip) and retry"
    )]
    AlreadyAttached {
        ifname: String,
        prog_id: u32,
        mode: AttachedMode,
    },
    #[error("querying the XDP program of interface `{ifname}` failed")]
    Query {
        ifname: String,
        #[source]
        source: NetlinkError,
    },
    #[error("attaching the XDP program to interface `{ifname}` in {mode} mode failed")]
    Link {
        ifname: String,
        mode: AttachMode,
        #[source]
        source: BpfError,
    },
}

/// The program attached to an interface; detached when dropped.
#[derive(Debug)]
pub struct XdpLink {
    _link: OwnedFd,
    ifname: String,
    ifindex: u32,
    mode: AttachMode,
    prog_id: u32,
}

impl XdpLink {
    /// Attaches `program` to the interface `ifname` (index `ifindex`),
    /// refusing if the interface already has an XDP program.
    pub fn attach(
        program: &XdpProgram,
        ifname: &str,
        ifindex: u32,
        preference: AttachPreference,
    ) -> Result<Self, AttachError> {
        refuse_if_attached(ifname, ifindex)?;
        let modes: &[AttachMode] = match preference {
            AttachPreference::DriverThenGeneric => &[AttachMode::Driver, AttachMode::Generic],
            AttachPreference::DriverOnly => &[AttachMode::Driver],
            AttachPreference::GenericOnly => &[AttachMode::Generic],
        };
        let mut last_error = None;
        for &mode in modes {
            let flags = match mode {
                AttachMode::Driver => XDP_FLAGS_DRV_MODE,
                AttachMode::Generic => XDP_FLAGS_SKB_MODE,
            };
            match bpf::link_create_xdp(program.as_fd(), ifindex, flags) {
                Ok(link) => {
                    log::info!(
                        "XDP program {} attached to {ifname} in {mode} mode",
                        program.id()
                    );
                    return Ok(Self {
                        _link: link,
                        ifname: ifname.to_owned(),
                        ifindex,
                        mode,
                        prog_id: program.id(),
                    });
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EEXIST)) => {
                    // Someone attached between our query and our attach.
                    refuse_if_attached(ifname, ifindex)?;
                    return Err(AttachError::Link {
                        ifname: ifname.to_owned(),
                        mode,
                        source: e,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    log::info!("{ifname}: no XDP in {mode} mode ({e})");
                    last_error = Some((mode, e));
                }
                Err(e) => {
                    return Err(AttachError::Link {
                        ifname: ifname.to_owned(),
                        mode,
                        source: e,
                    })
                }
            }
        }
        let (mode, source) = last_error.expect("at least one mode was tried");
        Err(AttachError::Link {
            ifname: ifname.to_owned(),
            mode,
            source,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The XDP hook the program runs at.
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Id of the attached program.
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }
}

pub(crate) fn refuse_if_attached(ifname: &str, ifindex: u32) -> Result<(), AttachError> {
    let attached = netlink::attached_xdp_program(ifindex).map_err(|source| AttachError::Query {
        ifname: ifname.to_owned(),
        source,
    })?;
    match attached {
        None => Ok(()),
        Some(found) => Err(AttachError::AlreadyAttached {
            ifname: ifname.to_owned(),
            prog_id: found.prog_id,
            mode: found.mode,
        }),
    }
}
