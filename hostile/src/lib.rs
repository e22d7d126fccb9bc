// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vpmd-hostile: a vhost-user frontend that behaves like a hostile VM, and the
//! harness its tests use to attack a running `vpmd` while well-behaved traffic flows.
//!
//! - [`msg`]: raw vhost-user messages (any header, body and fds, malformed on purpose)
//!   and a connection that sends them and reads replies.
//! - [`mem`]: memfd "guest RAM" the frontend shares with vpmd, written byte by byte.
//! - [`ring`]: the driver side of a split ring, writing any descriptor, head or index.
//! - [`vm`]: [`vm::HostileVm`], the handshake step by step, each step replaceable.
//! - [`vpmd`]: a `vpmd run` of its own (two veth pairs) with stats, log and a clean stop.
//! - [`good`]: a checked transfer through the other pair while an attack runs.
//! - [`scenario`]: vpmd + good transfer + the checks every attack ends with.
//!
//! The tests in `tests/` start a vpmd each, so they run one at a time.
#![deny(unsafe_code)]

pub mod good;
pub mod mem;
pub mod msg;
pub mod ring;
pub mod scenario;
pub mod vm;
pub mod vpmd;
