// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vpmd: a vhost-user poll-mode virtual switch for VMs.
//!
//! `main` parses the command line, [`config`] turns TOML into a validated [`config::Config`],
//! and [`switch::Switch::start`] runs it until a signal arrives.
//!
//! Control plane:
//! - [`config`]: the TOML configuration, validated with errors that name the field.
//! - [`switch`]: a running instance: ports, connections, polling threads, control socket.
//! - [`uplink_setup`]: a macvlan's AF_XDP uplink opened and cut into shards.
//! - [`control`]: the control socket behind `vpmd stats`, `vpmd port ...`, `vpmd reload`.
//! - [`clients`]: the bounded client set and accept thread the control socket and metrics share.
//! - [`reload`]: what `vpmd reload` changes: the running ports against the file.
//! - [`stats`]: snapshots of every counter, as JSON or a table.
//! - [`stats_view`]: `vpmd stats --watch` rates and the per-thread `--pmd` view.
//! - [`metrics`]: `[pmd] metrics`, the same snapshots served to Prometheus.
//! - [`notify`]: systemd readiness (`READY=1`, `STOPPING=1` to `$NOTIFY_SOCKET`).
//! - [`privileges`]: capabilities dropped once, before any thread starts; socket owners.
//!
//! Data path (the polling threads):
//! - [`pmd_thread`]: one pinned polling thread and its cycle accounting; [`kick_wait`]: sleeping until a guest kicks when idle (adaptive polling).
//! - [`fwd`]: forwarding streams; one engine per file ([`fwd::veth`], [`fwd::macvlan`]).
//! - [`counters`]: per-port and per-thread counters, flushed once per burst.
//! - [`tsc`]: the cycle counter (re-exported from `vpmd-uplink`, shared with the generators); [`ratelimit`]: guest-triggered log lines.
//!
//! The vhost-user device itself (rings, descriptor chains, the one frame copy) is the
//! `vpmd-backend` crate.
#![deny(unsafe_code)]

pub mod clients;
pub mod config;
pub mod control;
pub mod counters;
pub mod fwd;
pub mod kick_wait;
pub mod metrics;
pub mod notify;
pub mod pmd_thread;
pub mod privileges;
pub mod ratelimit;
pub mod reload;
pub mod stats;
pub mod stats_view;
pub mod switch;
/// The time-stamp counter (one module for vpmd and the generators).
pub use vpmd_uplink::tsc;
pub mod uplink_setup;
