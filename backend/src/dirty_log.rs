// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Dirty-page logging for live migration (vhost-user `LOG_SHMFD`, `VHOST_F_LOG_ALL`).
//!
//! While a VM migrates, its frontend copies guest memory to the destination and
//! copies again every page written since. vpmd writes guest memory behind the
//! frontend's back (RX buffers, used rings), so it must say which pages it wrote:
//! the frontend hands over a shared bitmap, the log (`SET_LOG_BASE`, with a memfd),
//! and sets `VHOST_F_LOG_ALL`; from then on every page vpmd writes gets its bit set.
//!
//! Layout (vhost-user spec, "Migration"; the same as the kernel's vhost): one bit per
//! 4 KiB page of guest-physical memory, page `n` is bit `n % 8` of byte `n / 8`
//! (bit `n % 64` of little-endian u64 word `n / 64`), set with an atomic OR.
//!
//! - [`LogRegion`]: one log as mapped from the frontend's fd. Bounds-checked: a page
//!   past its end is counted (the port's `log_outside` fault), never written. The fd is distrusted
//!   like a memory region's (checked by [`crate::fd_check`]) and registered with
//!   [`crate::fault_guard`], so a frontend that truncates it costs a fault, not vpmd.
//! - [`DirtyLog`]: one connection's logging state. The relay sets it (base, LOG_ALL);
//!   each burst reads it once, under its vring's lock ([`DirtyLog::current`]), so
//!   when logging is off a burst costs one load and one branch more.
//!
//! When is a page marked? [`crate::virtqueue::VirtQueue`] marks, at the end of a
//! burst, every RX buffer byte range it used (after the frame bytes were written,
//! before `used.idx` makes them the guest's), then the used ring after its index
//! store. A bit set after the write is what makes it safe: the frontend clears a
//! bit and then copies the page, so a bit set before the write could be cleared
//! and the page copied without it. The frontend syncs the log one last time after
//! GET_VRING_BASE, which waits for the burst to end, so nothing written is missed.
//!
//! Switching logs: the relay installs a new log (or stops logging) and then takes
//! every vring lock of the connection once ([`DirtyLog::quiesce`]): every burst that
//! may still hold the old log has ended when the frontend is answered, so the old
//! log is never written after the frontend has read it for the last time, and it
//! can be unmapped then.
#![allow(unsafe_code)] // mmap/munmap of the log fd, atomic access to its bytes.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use vhost_user_backend::VringT;

use crate::fault_guard;
use crate::Vring;

/// Granularity of the log: one bit per page of this many bytes.
pub const LOG_PAGE: u64 = 4096;
/// The largest log vpmd maps: 1 GiB of bitmap covers 32 TiB of guest memory.
pub const MAX_LOG_BYTES: u64 = 1 << 30;

/// Why a log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log's size is zero or larger than [`MAX_LOG_BYTES`].
    #[error("log of {0} bytes (must be 1 to {MAX_LOG_BYTES})")]
    Size(u64),
    /// The offset is not page-aligned or the range overflows.
    #[error("log offset {0:#x} is not page-aligned")]
    Offset(u64),
    /// mmap failed.
    #[error("mapping the log")]
    Map(#[source] io::Error),
    /// The SIGBUS guard has no room for it.
    #[error("guarding the log")]
    Guard(#[source] fault_guard::GuardError),
}

/// Paths whose logging a test may switch off (`VPMD_TEST_UNLOGGED`), to show that
/// the migration test would catch a page missing from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unlogged {
    /// Everything is logged (the only setting for production).
    Nothing,
    /// RX buffer bytes are not logged.
    RxData,
    /// The used ring is not logged.
    UsedRing,
}

/// The test-only switch, read once from `VPMD_TEST_UNLOGGED` (`rx-data`, `used`).
pub fn unlogged() -> Unlogged {
    static SWITCH: OnceLock<Unlogged> = OnceLock::new();
    *SWITCH.get_or_init(|| match std::env::var("VPMD_TEST_UNLOGGED").as_deref() {
        Ok("rx-data") => {
            log::warn!("VPMD_TEST_UNLOGGED=rx-data: RX buffers are NOT dirty-logged (tests only: migrations corrupt guests)");
            Unlogged::RxData
        }
        Ok("used") => {
            log::warn!("VPMD_TEST_UNLOGGED=used: used rings are NOT dirty-logged (tests only: migrations corrupt guests)");
            Unlogged::UsedRing
        }
        _ => Unlogged::Nothing,
    })
}

/// One dirty log, mapped from the frontend's fd.
#[derive(Debug)]
pub struct LogRegion {
    base: *mut u8,
    /// Bytes mapped (the log's size).
    len: usize,
    /// Its identity with the SIGBUS guard.
    guard_owner: u64,
}

// SAFETY: `base` points at a shared mapping this struct owns until it is dropped;
// its bytes are only ever accessed atomically (`mark`), from any thread.
unsafe impl Send for LogRegion {}
// SAFETY: as for Send: all access through `&self` is an atomic OR.
unsafe impl Sync for LogRegion {}

impl LogRegion {
    /// Maps `size` bytes of `fd` from `offset` (a SET_LOG_BASE). The fd must have
    /// been checked first ([`crate::fd_check`]: a tmpfs/hugetlbfs file holding the
    /// whole range); it may be closed afterwards, the mapping keeps the file.
    pub fn map(fd: &OwnedFd, size: u64, offset: u64) -> Result<Self, LogError> {
        if size == 0 || size > MAX_LOG_BYTES {
            return Err(LogError::Size(size));
        }
        if !offset.is_multiple_of(LOG_PAGE) || offset.checked_add(size).is_none() {
            return Err(LogError::Offset(offset));
        }
        let len = usize::try_from(size).map_err(|_| LogError::Size(size))?;
        let off = libc::off_t::try_from(offset).map_err(|_| LogError::Offset(offset))?;
        // SAFETY: a fresh shared mapping of an open fd; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(LogError::Map(io::Error::last_os_error()));
        }
        let region = LogRegion {
            base: p.cast(),
            len,
            guard_owner: fault_guard::new_owner(),
        };
        fault_guard::register(region.guard_owner, p as usize, len).map_err(LogError::Guard)?;
        Ok(region)
    }

    /// The log's size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the log is empty (never: `map` refuses that).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the frontend took the log's pages away under vpmd (truncated its file).
    pub fn faulted(&self) -> bool {
        fault_guard::faulted(self.guard_owner)
    }

    /// Marks every page `[gpa, gpa + len)` touches; returns how many of them lie
    /// past the log's end (not marked: the frontend's log is too small).
    #[inline]
    pub fn mark(&self, gpa: u64, len: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        let mut outside = 0;
        for page in first..=last {
            let byte = page / 8;
            if byte >= self.len as u64 {
                outside += last - page + 1;
                break;
            }
            // SAFETY: `byte < len`, so the byte is inside the mapping, which lives as
            // long as `self`. The frontend reads and clears these bytes concurrently,
            // with atomic operations, so we only ever touch them atomically too.
            let cell = unsafe { AtomicU8::from_ptr(self.base.add(byte as usize)) };
            // Release: the frame bytes written before this mark are visible to a
            // frontend that sees the bit.
            cell.fetch_or(1 << (page % 8), Ordering::Release);
        }
        outside
    }
}

impl Drop for LogRegion {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` is the mapping `map` made, and nothing refers to it
        // any more (a `LogRegion` is dropped only once no burst can hold it).
        unsafe { libc::munmap(self.base.cast(), self.len) };
        fault_guard::release_owner(self.guard_owner);
    }
}

/// What the relay set: the log (kept mapped while set) and whether LOG_ALL is on.
#[derive(Default)]
struct LogSetting {
    region: Option<Box<LogRegion>>,
    log_all: bool,
    /// The connection's vrings, to wait for their bursts (`quiesce`).
    vrings: Vec<Vring>,
}

/// One connection's dirty logging: off until the frontend both gave a log and set
/// `VHOST_F_LOG_ALL`.
pub struct DirtyLog {
    /// The log bursts write to, or null while logging is off. Points into
    /// `setting.region`, which is replaced only after a [`DirtyLog::quiesce`].
    active: AtomicPtr<LogRegion>,
    setting: Mutex<LogSetting>,
}

impl Default for DirtyLog {
    fn default() -> Self {
        Self::new()
    }
}

impl DirtyLog {
    /// Logging off, no log.
    pub const fn new() -> Self {
        DirtyLog {
            active: AtomicPtr::new(std::ptr::null_mut()),
            setting: Mutex::new(LogSetting {
                region: None,
                log_all: false,
                vrings: Vec::new(),
            }),
        }
    }

    fn setting(&self) -> std::sync::MutexGuard<'_, LogSetting> {
        self.setting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log to mark, if logging is on. Call with the vring lock of the queue
    /// being used held, and use the log only while it is held: that is what
    /// [`DirtyLog::quiesce`] waits for before a log is unmapped.
    #[inline]
    pub fn current(&self) -> Option<&LogRegion> {
        let p = self.active.load(Ordering::Acquire);
        // SAFETY: non-null `active` points at the boxed region in `setting`, which is
        // dropped only after `active` moved away from it and every vring lock was
        // taken once since (`quiesce`); the caller holds a vring lock, so the region
        // outlives its use. A region never moves: it is boxed.
        unsafe { p.as_ref() }
    }

    /// Whether logging is on.
    pub fn is_on(&self) -> bool {
        !self.active.load(Ordering::Acquire).is_null()
    }

    /// Whether the frontend truncated the current log under vpmd.
    pub fn faulted(&self) -> bool {
        self.setting().region.as_ref().is_some_and(|r| r.faulted())
    }

    /// Tells the log which vrings its connection has (when they are published).
    pub fn set_vrings(&self, vrings: &[Vring]) {
        self.setting().vrings = vrings.to_vec();
    }

    /// Replaces the log (SET_LOG_BASE). Returns once no burst can write the old one.
    pub fn set_region(&self, region: LogRegion) {
        let mut s = self.setting();
        let mut new = Box::new(region);
        let ptr: *mut LogRegion = &raw mut *new;
        let old = s.region.replace(new);
        self.publish(&s, ptr);
        drop(old);
    }

    /// Turns logging on or off (`VHOST_F_LOG_ALL` in SET_FEATURES). Returns once
    /// every later burst sees the change.
    pub fn set_log_all(&self, on: bool) {
        let mut s = self.setting();
        if s.log_all == on {
            return;
        }
        s.log_all = on;
        let ptr = s
            .region
            .as_deref_mut()
            .map_or(std::ptr::null_mut(), std::ptr::from_mut);
        self.publish(&s, ptr);
    }

    /// Makes `region` (null: none) the active log if LOG_ALL is on, then waits for
    /// every burst that may have loaded the previous one.
    fn publish(&self, s: &LogSetting, region: *mut LogRegion) {
        let active = if s.log_all {
            region
        } else {
            std::ptr::null_mut()
        };
        self.active.store(active, Ordering::Release);
        Self::quiesce(&s.vrings);
    }

    /// Takes each vring's lock once: a burst holds its vring's lock from before it
    /// loads the log until after its last mark, so once this returns no burst that
    /// loaded an earlier value of `active` is still running. The locks are held by
    /// vpmd's own polling threads for one burst at most (never by a frontend).
    fn quiesce(vrings: &[Vring]) {
        for v in vrings {
            drop(v.get_mut());
        }
    }
}
