// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! AF_XDP uplink for vpmd's macvlan mode: everything between one kernel
//! network interface and the polling threads, with no compiler at build or
//! run time (no clang, libbpf or aya: the XDP program is hand-assembled and
//! loaded with raw `bpf(2)` calls).
//!
//! Unicast frames arriving on the uplink whose destination MAC belongs to a
//! VM port are redirected by the XDP program to an AF_XDP socket; every
//! other frame returns `XDP_PASS` and reaches the kernel stack untouched.
//! Broadcast and multicast are among those (XDP cannot clone, and the host's
//! own stack on the uplink needs them): the VM ports get a copy of each from
//! the group tap, an AF_PACKET socket with a mapped ring. Frames from VMs
//! leave through the AF_XDP socket.
//!
//! # Map of the crate
//!
//! | module | the one concept it owns |
//! |---|---|
//! | [`bpf`] | the `bpf(2)` system call: maps, program load (with the verifier log), test runs, XDP links, program ids |
//! | [`insn`] | eBPF instruction encoding |
//! | [`program`] | the hand-assembled XDP programs (MAC filter, passthru), with their listings, and loading them |
//! | [`mac`] | [`MacAddr`]: the workspace's one MAC address type (parse, print, group bit) |
//! | [`tsc`] | the CPU's time-stamp counter, the polling threads' and generators' cheap clock |
//! | [`maps`] | the program's two maps: [`MacTable`] (VM MACs) and [`XskMap`] (RX queue → socket) |
//! | [`announce`] | a migrated VM's RARP announcement out of the uplink (AF_PACKET, send only) |
//! | [`netlink`] | interface lookup; which XDP program an interface runs (`RTM_GETLINK`) |
//! | [`attach`] | attaching with `BPF_LINK_CREATE` (detached when the process dies), refusing foreign programs |
//! | [`umem`] | the UMEM: one mmap'd area of equal chunks, partitioned between sockets |
//! | `ring` | the producer/consumer rings shared with the kernel |
//! | [`socket`] | creating and binding AF_XDP sockets: zero-copy else copy, shared UMEM, need-wakeup |
//! | [`rx`] | receive bursts: frames as UMEM byte views, one release and one refill per burst |
//! | [`tx`] | transmit bursts: frames written into UMEM chunks, one publish and at most one kick per burst |
//! | [`packet_tap`] | the group tap: an AF_PACKET socket receiving the uplink's broadcast/multicast frames ([`PacketTap`]) |
//! | `packet_ring` | the tap's mapped `TPACKET_V2` receive ring and its bursts ([`TapBurst`]) |
//! | [`stats`] | our counters and the kernel's `XDP_STATISTICS` |
//! | [`uplink`] | one interface put together: [`Uplink::open`] |
//! | [`lone`] | a lone socket with no XDP program, for transmitting (traffic generators): [`open_unattached`] |
//! | `sim` (tests only) | an interpreter for the listings, for inputs `BPF_PROG_TEST_RUN` refuses |
//!
//! # Using it from a polling thread
//!
//! ```no_run
//! use vpmd_uplink::{Uplink, UplinkConfig};
//!
//! let mut uplink = Uplink::open(&UplinkConfig::new("eth1"))?;
//! uplink.mac_table().insert([0x52, 0x54, 0, 0, 0, 1], 0)?;
//! let mut socket = uplink.take_sockets().remove(0); // move into the thread
//! let mut group_tap = uplink.take_group_tap();       // MAC filter: Some
//!
//! // Uplink -> VMs: frames are read in place, released when `rx` drops.
//! let rx = socket.receive_burst(32);
//! for frame in rx.iter() {
//!     // copy `frame` into the guest buffer of the VM it is for
//! }
//! drop(rx);
//! if let Some(tap) = group_tap.as_mut() {
//!     let group = tap.receive_burst(32);
//!     for frame in group.iter() {
//!         // copy `frame` into every VM port's guest buffer
//!     }
//! }
//!
//! // VMs -> uplink: write each frame straight into a UMEM chunk.
//! let mut tx = socket.transmit_burst(32);
//! while let Some(buf) = tx.buffer() {
//!     let len = 60; // copy a guest frame into `buf`, get its length
//!     buf[..len].fill(0);
//!     tx.commit(len);
//! }
//! drop(tx); // one publish, one kick if the kernel wants one
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `README.md` for the program listing, ring usage, need-wakeup and
//! limits.
#![deny(unsafe_code)]

pub mod announce;
pub mod attach;
pub mod bpf;
pub mod insn;
pub mod lone;
pub mod mac;
pub mod maps;
pub mod netlink;
pub(crate) mod packet_ring;
pub mod packet_tap;
pub mod program;
pub(crate) mod ring;
pub mod rx;
// The simulator models a little-endian machine.
#[cfg(all(test, target_endian = "little"))]
mod sim;
pub mod socket;
pub mod stats;
pub mod tsc;
pub mod tx;
pub mod umem;
pub mod uplink;

pub use attach::{AttachError, AttachMode, AttachPreference, XdpLink};
pub use lone::open_unattached;
pub use mac::{MacAddr, MacParseError};
pub use maps::{MacTable, MapError, XskMap};
pub use netlink::{attached_xdp_program, ifindex, AttachedMode, AttachedProgram};
pub use packet_ring::TapBurst;
pub use packet_tap::{PacketTap, PacketTapConfig, PacketTapError};
pub use program::{RedirectPolicy, XdpAction, XdpProgram};
pub use rx::{RxBurst, XskReceiver};
pub use socket::{kernel_statistics, BindMode, BindPreference, RingSizes, SocketError, XskSocket};
pub use stats::{RxCounters, TapCounters, TxCounters, XdpStatistics};
pub use tx::{TxBurst, XskTransmitter};
pub use umem::{ChunkSize, UmemConfig};
pub use uplink::{GroupTap, Uplink, UplinkConfig, UplinkError};
