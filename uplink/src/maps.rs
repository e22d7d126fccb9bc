// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Typed views of the two maps the XDP program reads.
//!
//! - [`MacTable`]: hash map from a VM port's MAC address to its port number.
//!   The program redirects a unicast frame to AF_XDP when its destination MAC
//!   is a key. Changed at run time, while the program runs: an update is one
//!   `bpf(2)` call and the next frame sees it.
//! - [`XskMap`]: `BPF_MAP_TYPE_XSKMAP` from an RX queue index to the AF_XDP
//!   socket bound to that queue.
//!
//! Both are control-path objects (every call is a system call); they are
//! `Send + Sync` and can live in the control thread.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;

use crate::bpf::{BpfError, BpfMap, MAP_TYPE_HASH, MAP_TYPE_XSKMAP, UPDATE_ANY};
use crate::mac::MacAddr;

/// Size of a [`MacTable`] key: the 6 MAC bytes, no padding.
pub const MAC_KEY_SIZE: u32 = 6;

/// Failures of map operations, naming the element involved.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("creating the {what} map failed")]
    Create {
        what: &'static str,
        #[source]
        source: BpfError,
    },
    #[error("adding MAC {mac} to the MAC table failed")]
    InsertMac {
        mac: MacAddr,
        #[source]
        source: BpfError,
    },
    #[error("removing MAC {mac} from the MAC table failed")]
    RemoveMac {
        mac: MacAddr,
        #[source]
        source: BpfError,
    },
    #[error("looking up MAC {mac} in the MAC table failed")]
    LookupMac {
        mac: MacAddr,
        #[source]
        source: BpfError,
    },
    #[error("placing the AF_XDP socket of RX queue {queue} in the XSK map failed")]
    InsertSocket {
        queue: u32,
        #[source]
        source: BpfError,
    },
    #[error("removing RX queue {queue} from the XSK map failed")]
    RemoveSocket {
        queue: u32,
        #[source]
        source: BpfError,
    },
}

/// The VM ports' MAC addresses: frames to these go to AF_XDP instead of the
/// kernel stack. Cheap to clone (shares one map descriptor).
#[derive(Debug, Clone)]
pub struct MacTable {
    map: Arc<BpfMap>,
}

impl MacTable {
    /// Creates an empty table for up to `capacity` MAC addresses.
    pub fn create(capacity: u32) -> Result<Self, MapError> {
        let map = BpfMap::create("vpmd_macs", MAP_TYPE_HASH, MAC_KEY_SIZE, 4, capacity).map_err(
            |source| MapError::Create {
                what: "MAC table",
                source,
            },
        )?;
        Ok(Self { map: Arc::new(map) })
    }

    /// Adds `mac` (or moves it to `port`): from the next frame on, frames
    /// to `mac` are redirected to AF_XDP. `port` is informational (it shows
    /// in `bpftool map dump`); the program only tests for presence.
    pub fn insert(&self, mac: impl Into<MacAddr>, port: u32) -> Result<(), MapError> {
        let mac = mac.into();
        self.map
            .update(&mac.0, &port.to_ne_bytes(), UPDATE_ANY)
            .map_err(|source| MapError::InsertMac { mac, source })
    }

    /// Removes `mac`: frames to it reach the kernel stack again. Returns
    /// whether it was present.
    pub fn remove(&self, mac: impl Into<MacAddr>) -> Result<bool, MapError> {
        let mac = mac.into();
        self.map
            .delete(&mac.0)
            .map_err(|source| MapError::RemoveMac { mac, source })
    }

    /// The port `mac` was added for, if present.
    pub fn get(&self, mac: impl Into<MacAddr>) -> Result<Option<u32>, MapError> {
        let mac = mac.into();
        let mut port = [0u8; 4];
        let found = self
            .map
            .lookup(&mac.0, &mut port)
            .map_err(|source| MapError::LookupMac { mac, source })?;
        Ok(found.then(|| u32::from_ne_bytes(port)))
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.map.as_fd().as_raw_fd()
    }
}

/// RX queue index → AF_XDP socket. A frame that the program redirects goes
/// to the socket at its own RX queue: a socket only accepts frames of the
/// queue it is bound to, and the kernel drops a frame handed to any other.
/// An empty slot (or a queue beyond `slots`) makes `bpf_redirect_map` return
/// its fallback action, `XDP_PASS`.
#[derive(Debug)]
pub struct XskMap {
    map: BpfMap,
    slots: u32,
}

impl XskMap {
    /// Creates a map for RX queues `0..slots`.
    pub fn create(slots: u32) -> Result<Self, MapError> {
        let map = BpfMap::create("vpmd_xsks", MAP_TYPE_XSKMAP, 4, 4, slots).map_err(|source| {
            MapError::Create {
                what: "XSK",
                source,
            }
        })?;
        Ok(Self { map, slots })
    }

    /// Number of queue slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Puts `socket` (an AF_XDP socket) in the slot of RX queue `queue`.
    /// The map holds its own reference to the socket until removed.
    pub fn insert(&self, queue: u32, socket: BorrowedFd<'_>) -> Result<(), MapError> {
        let fd = socket.as_raw_fd() as u32;
        self.map
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), UPDATE_ANY)
            .map_err(|source| MapError::InsertSocket { queue, source })
    }

    /// Empties the slot of `queue`; returns whether it held a socket.
    pub fn remove(&self, queue: u32) -> Result<bool, MapError> {
        self.map
            .delete(&queue.to_ne_bytes())
            .map_err(|source| MapError::RemoveSocket { queue, source })
    }

    pub(crate) fn raw_fd(&self) -> i32 {
        self.map.as_fd().as_raw_fd()
    }
}
