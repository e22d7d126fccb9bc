// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The vhost-user messages of live migration, answered by the relay
//! ([`crate::relay`]) rather than by vhost-user-backend:
//!
//! - `SET_LOG_BASE` (with `LOG_SHMFD`): the frontend's dirty log. Its fd was checked
//!   like a memory region's ([`crate::fd_check`]); it is mapped here
//!   ([`crate::dirty_log::LogRegion`]) and installed in the connection's
//!   [`DirtyLog`], which waits for every burst that might still write the old log
//!   before the frontend is answered.
//! - `VHOST_F_LOG_ALL` in `SET_FEATURES`: logging on or off, in force for every
//!   burst once the message is passed on (so before the frontend's ack).
//! - `SET_LOG_FD`: the log's eventfd, which vpmd never signals (it logs in shared
//!   memory and the frontend reads the log when it syncs); dropped, acked.
//! - `SEND_RARP` (`VHOST_USER_PROTOCOL_F_RARP`): after a migration, for a guest that
//!   cannot announce itself (no `GUEST_ANNOUNCE`), QEMU asks the backend to. vpmd
//!   announces the port's own MAC through the port's [`Announce`] (the macvlan
//!   uplink: a RARP frame out to the physical switch, which learns where the MAC
//!   now lives), as DPDK's vhost library does. The MAC in the message is not
//!   trusted: a different one is logged and not announced, so a guest cannot make
//!   the outside switch send it another VM's traffic.
//!
//! The ring state handover (GET_VRING_BASE on the source, SET_VRING_BASE on the
//! destination) needs nothing here: GET_VRING_BASE takes the vring lock, so it
//! waits for the burst in progress, and every chain a burst takes is used or given
//! back within that burst; the base it returns is exact.

use std::io;
use std::time::{Duration, Instant};

use crate::dirty_log::{DirtyLog, LogError, LogRegion};

/// Something that can tell the network a MAC address now lives behind this port.
pub trait Announce: Send + Sync {
    /// Sends one announcement (a RARP frame from `mac`).
    fn announce(&self, mac: [u8; 6]) -> io::Result<()>;
    /// Where it goes, for log lines (e.g. `uplink eth1`).
    fn describe(&self) -> String;
}

/// Announcements of one port closer together than this are skipped: QEMU sends one
/// SEND_RARP per migration (a few over its announce rounds); a frontend sending a
/// flood of them gets at most ten a second onto the wire.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);

/// Why a migration message was refused.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// SET_LOG_BASE without exactly one fd or with a short body.
    #[error("SET_LOG_BASE needs a 16-byte body and one fd")]
    LogMessage,
    /// The log could not be mapped.
    #[error("dirty log")]
    Log(#[from] LogError),
}

/// The ring addresses last passed on, per queue, to keep a repeated SET_VRING_ADDR
/// away from a running ring.
///
/// When a migration starts (and ends) QEMU sends every running ring's addresses
/// again, unchanged but for the `LOG` flag. vhost-user-backend then re-reads
/// `used.idx` from guest memory and resets the queue's next used index to it, in
/// steps that each take the vring lock on their own: a burst that completes
/// between them has its used entries written over by the next one (frames lost,
/// descriptors never returned). vpmd needs nothing from the repeat (it logs the
/// used ring by its guest address), so a repeat for a ring still running is acked
/// here and not passed on. After GET_VRING_BASE (the ring stopped) or a memory
/// table change, the next SET_VRING_ADDR passes again as it must.
#[derive(Debug, Default)]
pub struct RingAddrs {
    /// (index, desc/used/avail addresses as sent, running since).
    rings: Vec<(u32, [u8; 24], bool)>,
}

impl RingAddrs {
    /// Most queues remembered (vhost-user's index limit).
    const MAX: usize = 256;

    /// Whether the SET_VRING_ADDR `body` repeats the addresses of a running ring
    /// (then it is not passed on); records them otherwise.
    pub fn is_repeat(&mut self, body: &[u8]) -> bool {
        let (Some(index), Some(addrs)) = (
            body.get(0..4)
                .map(|b| u32::from_le_bytes(b.try_into().unwrap())),
            body.get(8..32).and_then(|b| <[u8; 24]>::try_from(b).ok()),
        ) else {
            return false;
        };
        match self.rings.iter_mut().find(|r| r.0 == index) {
            Some(r) if r.2 && r.1 == addrs => true,
            Some(r) => {
                *r = (index, addrs, true);
                false
            }
            None => {
                if self.rings.len() < Self::MAX {
                    self.rings.push((index, addrs, true));
                }
                false
            }
        }
    }

    /// GET_VRING_BASE on queue `index`: the ring is stopped.
    pub fn stopped(&mut self, index: u32) {
        if let Some(r) = self.rings.iter_mut().find(|r| r.0 == index) {
            r.2 = false;
        }
    }

    /// The memory table changed: the same addresses may mean other memory now.
    pub fn forget(&mut self) {
        self.rings.clear();
    }
}

/// `VhostUserLog`: the log's size and offset in its file.
pub fn log_body(body: &[u8]) -> Option<(u64, u64)> {
    let size = u64::from_le_bytes(body.get(0..8)?.try_into().ok()?);
    let offset = u64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    Some((size, offset))
}

/// SET_LOG_BASE: maps the log and makes it the connection's; returns its size.
pub fn set_log_base(
    body: &[u8],
    fds: &[std::os::fd::OwnedFd],
    log: &DirtyLog,
) -> Result<u64, MigrationError> {
    let ((size, offset), [fd]) = (log_body(body).ok_or(MigrationError::LogMessage)?, fds) else {
        return Err(MigrationError::LogMessage);
    };
    let region = LogRegion::map(fd, size, offset)?;
    log.set_region(region);
    Ok(size)
}

/// The MAC of a SEND_RARP body (the first six bytes of its u64).
pub fn rarp_mac(body: &[u8]) -> Option<[u8; 6]> {
    body.get(0..6)?.try_into().ok()
}

/// What became of one SEND_RARP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// Sent.
    Sent,
    /// Skipped: another was sent less than [`ANNOUNCE_INTERVAL`] ago.
    TooSoon,
    /// The port has nowhere to announce to (a veth pair: no outside switch).
    Nowhere,
    /// The message named another MAC than the port's: not announced.
    ForeignMac,
    /// Sending failed.
    Failed,
}

/// `52:54:00:12:34:56`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Rate limit of one port's announcements.
#[derive(Debug, Default)]
pub struct AnnounceGate {
    last: std::sync::Mutex<Option<Instant>>,
}

impl AnnounceGate {
    /// Whether an announcement may go out at `now` (and records it if so).
    pub fn allow(&self, now: Instant) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| now.duration_since(t) < ANNOUNCE_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_and_short_ones_do_not() {
        let mut b = 8192u64.to_le_bytes().to_vec();
        b.extend_from_slice(&4096u64.to_le_bytes());
        assert_eq!(log_body(&b), Some((8192, 4096)));
        assert_eq!(log_body(&b[..15]), None);
        assert_eq!(
            rarp_mac(&[1, 2, 3, 4, 5, 6, 0, 0]),
            Some([1, 2, 3, 4, 5, 6])
        );
        assert_eq!(rarp_mac(&[1, 2, 3]), None);
    }

    fn addr(index: u32, flags: u32, desc: u64) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&flags.to_le_bytes());
        for v in [desc, desc + 0x1000, desc + 0x2000, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    #[test]
    fn a_running_rings_repeated_address_is_held_back() {
        let mut r = RingAddrs::default();
        assert!(!r.is_repeat(&addr(0, 0, 0x1000)), "first time: passed on");
        assert!(r.is_repeat(&addr(0, 1, 0x1000)), "LOG flag only: held back");
        assert!(!r.is_repeat(&addr(1, 0, 0x1000)), "another queue");
        assert!(!r.is_repeat(&addr(0, 0, 0x8000)), "moved: passed on");
        r.stopped(0);
        assert!(
            !r.is_repeat(&addr(0, 0, 0x8000)),
            "restarted after GET_VRING_BASE"
        );
        assert!(r.is_repeat(&addr(0, 0, 0x8000)));
        r.forget();
        assert!(
            !r.is_repeat(&addr(0, 0, 0x8000)),
            "after a memory table change"
        );
        assert!(
            !r.is_repeat(&[0; 10]),
            "short: passed on (the library refuses it)"
        );
    }

    #[test]
    fn announcements_are_spaced_out() {
        let gate = AnnounceGate::default();
        let t = Instant::now();
        assert!(gate.allow(t));
        assert!(!gate.allow(t + Duration::from_millis(10)));
        assert!(gate.allow(t + ANNOUNCE_INTERVAL));
    }

    #[test]
    fn a_log_message_without_its_fd_is_refused() {
        let log = DirtyLog::new();
        let mut b = 8192u64.to_le_bytes().to_vec();
        b.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(
            set_log_base(&b, &[], &log),
            Err(MigrationError::LogMessage)
        ));
        assert!(!log.is_on());
    }
}
