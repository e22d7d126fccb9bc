// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A lone AF_XDP socket: one queue of an interface, a UMEM of its own, and no
//! XDP program. Nothing is ever redirected to it, so it receives nothing; it
//! is for transmitting, e.g. a traffic generator inside a namespace feeding
//! the far end of a veth pair whose near end runs an uplink.
//!
//! Binding an AF_XDP socket needs no program on the interface (only
//! receiving does), so the interface stays as it is: no program attached,
//! every received frame goes to the kernel stack as before.

use crate::socket::XskSocket;
use crate::uplink::{UplinkConfig, UplinkError};

/// Opens one AF_XDP socket on `config.ifname`, RX/TX queue `config.queues[0]`
/// (exactly one queue must be listed), with `config.umem`, `config.rings`
/// and `config.bind`; the policy, MAC capacity, attach and group tap settings
/// do not apply. Its chunks are split as an uplink socket's are: at most the
/// fill ring's size for receiving (give it a small fill ring), the rest for
/// transmitting.
pub fn open_unattached(config: &UplinkConfig) -> Result<XskSocket, UplinkError> {
    let ifname = config.ifname.as_str();
    let queue_id = match config.queues.as_slice() {
        [] => {
            return Err(UplinkError::NoQueues {
                ifname: ifname.into(),
            })
        }
        [q] => *q,
        many => {
            return Err(UplinkError::LoneQueues {
                ifname: ifname.into(),
                count: many.len(),
            })
        }
    };
    let ifindex = config.ifindex()?;
    let chunks = u64::from(config.umem.chunks_per_queue);
    let umem = config.map_umem(chunks)?;
    let socket = config.open_socket(&umem, ifindex, queue_id, 0..chunks, None)?;
    log::info!(
        "{ifname}: lone AF_XDP socket on queue {queue_id} in {} mode (no XDP program)",
        socket.bind_mode()
    );
    Ok(socket)
}
