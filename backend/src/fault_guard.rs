// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Guest memory that goes away under vpmd: the SIGBUS it raises is caught and made
//! harmless, and the connection that owned the memory is told.
//!
//! A frontend keeps sharing the file behind each memory region. Shrinking it
//! (`ftruncate`), punching a hole into a hugetlbfs file whose pool is empty, or any
//! other way of taking pages away makes vpmd's next access to those pages raise
//! SIGBUS, which would kill the process and every VM's network with it. Sealing
//! (see [`crate::fd_check`]) prevents this only for memfds created sealable;
//! hugetlbfs files (QEMU's `memory-backend-file,mem-path=/dev/hugepages`, DPDK's
//! virtio-user), which are the most common OVS-DPDK setup, cannot be sealed.
//!
//! So vpmd survives the fault itself. Every guest region is registered here (host
//! address range and the connection that owns it) before the polling threads can
//! see it. A SIGBUS inside a registered range replaces the *whole* range, in place,
//! with private anonymous memory (`mmap(MAP_FIXED)`, async-signal-safe) and returns:
//! the faulting instruction runs again against that memory and the thread carries
//! on. The region is gone for good (reads see zeros, writes land nowhere the guest
//! can see), the slot is marked faulted, and [`faults`] moves. The connection's relay
//! thread notices within its poll interval and closes that connection; nothing in
//! the data path checks anything, so this costs nothing per burst. A SIGBUS outside
//! every registered range goes to the handler that was there before (Rust's own
//! stack-overflow handler, or the default action), as if this module did not exist.
//!
//! Slots are released only once the mapping is really gone (the last snapshot of
//! the connection's memory dropped), so no access can fault in an unregistered
//! guest range; see [`MemoryWatch`].
#![allow(unsafe_code)] // sigaction(2), mmap(2) in a signal handler, siginfo access.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Most guest regions registered at once, over all connections (32 per connection
/// is the protocol's limit vpmd advertises).
pub const MAX_SLOTS: usize = 4096;

/// Errors registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// Every slot is taken.
    #[error("more than {MAX_SLOTS} guest memory regions mapped at once")]
    Full,
    /// The SIGBUS handler could not be installed.
    #[error("cannot install the SIGBUS handler")]
    Install(#[source] io::Error),
}

struct Slot {
    start: AtomicUsize,
    /// 0: free. Written last on registration, first on release.
    len: AtomicUsize,
    owner: AtomicU64,
    faulted: AtomicBool,
}

#[allow(clippy::declare_interior_mutable_const)] // Only used to initialise TABLE.
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    owner: AtomicU64::new(0),
    faulted: AtomicBool::new(false),
};

static TABLE: [Slot; MAX_SLOTS] = [FREE; MAX_SLOTS];
/// Registration and release: one at a time (the handler only reads).
static WRITERS: Mutex<()> = Mutex::new(());
static FAULTS: AtomicU64 = AtomicU64::new(0);
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);
static INSTALL: Once = Once::new();
/// The SIGBUS action that was installed before ours (leaked, read by the handler).
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

/// Installs the SIGBUS handler (once per process; later calls do nothing).
pub fn install() -> Result<(), GuardError> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: all-zero is a valid `sigaction` (no handler, empty mask).
        let mut new: libc::sigaction = unsafe { std::mem::zeroed() };
        new.sa_sigaction = on_sigbus as *const () as usize;
        new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `new.sa_mask` is a valid sigset to initialise.
        unsafe { libc::sigemptyset(&raw mut new.sa_mask) };
        // SAFETY: as above.
        let old = Box::into_raw(Box::new(unsafe { std::mem::zeroed::<libc::sigaction>() }));
        // SAFETY: `new` is a fully initialised action whose handler has the
        // SA_SIGINFO signature; `old` points at writable storage for the old one.
        if unsafe { libc::sigaction(libc::SIGBUS, &raw const new, old) } != 0 {
            result = Err(GuardError::Install(io::Error::last_os_error()));
            // SAFETY: `old` came from Box::into_raw above and was not published.
            drop(unsafe { Box::from_raw(old) });
            return;
        }
        PREVIOUS.store(old, Ordering::Release);
    });
    result
}

/// A fresh connection identity for [`register`].
pub fn new_owner() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

/// Guest memory faults caught since start-up, over all connections.
pub fn faults() -> u64 {
    FAULTS.load(Ordering::Acquire)
}

/// Whether any region of `owner` faulted.
pub fn faulted(owner: u64) -> bool {
    TABLE.iter().any(|s| {
        s.len.load(Ordering::Acquire) != 0
            && s.owner.load(Ordering::Relaxed) == owner
            && s.faulted.load(Ordering::Acquire)
    })
}

/// Registers `[start, start + len)` as guest memory of `owner` (idempotent for a
/// range already registered to it).
pub fn register(owner: u64, start: usize, len: usize) -> Result<(), GuardError> {
    if len == 0 {
        return Ok(());
    }
    let _w = WRITERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let live = |s: &Slot| s.len.load(Ordering::Relaxed) != 0;
    if TABLE.iter().any(|s| {
        live(s)
            && s.owner.load(Ordering::Relaxed) == owner
            && s.start.load(Ordering::Relaxed) == start
            && s.len.load(Ordering::Relaxed) == len
    }) {
        return Ok(());
    }
    let slot = TABLE.iter().find(|s| !live(s)).ok_or(GuardError::Full)?;
    slot.start.store(start, Ordering::Relaxed);
    slot.owner.store(owner, Ordering::Relaxed);
    slot.faulted.store(false, Ordering::Relaxed);
    slot.len.store(len, Ordering::Release);
    Ok(())
}

/// Releases `owner`'s slots whose range `keep` does not return true for.
fn release_where(owner: u64, keep: impl Fn(usize, usize) -> bool) {
    let _w = WRITERS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for s in &TABLE {
        let len = s.len.load(Ordering::Relaxed);
        if len != 0
            && s.owner.load(Ordering::Relaxed) == owner
            && !keep(s.start.load(Ordering::Relaxed), len)
        {
            s.len.store(0, Ordering::Release);
        }
    }
}

/// Releases every slot of `owner` (its mappings are gone).
pub fn release_owner(owner: u64) {
    release_where(owner, |_, _| false);
}

/// Slots in use (for tests and leak checks).
pub fn slots_in_use() -> usize {
    TABLE
        .iter()
        .filter(|s| s.len.load(Ordering::Relaxed) != 0)
        .count()
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler; si_addr
    // is the faulting address for SIGBUS.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &TABLE {
        let len = s.len.load(Ordering::Acquire);
        if len == 0 {
            continue;
        }
        let start = s.start.load(Ordering::Relaxed);
        if addr < start || addr - start >= len {
            continue;
        }
        // SAFETY: `[start, start + len)` is a guest region vpmd mapped (registered
        // before any access and released only after it was unmapped). Replacing it
        // in place with private anonymous memory keeps every pointer into it valid;
        // mmap is a plain system call, safe in a signal handler.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            s.faulted.store(true, Ordering::Release);
            FAULTS.fetch_add(1, Ordering::AcqRel);
            return;
        }
        break;
    }
    chain(sig, info, ctx);
}

/// Hands a SIGBUS that is not a guest region's to the previous action.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `prev` is null or the leaked Box written once by `install`.
    let prev = unsafe { prev.as_ref() };
    match prev.map(|p| (p.sa_sigaction, p.sa_flags)) {
        Some((h, flags)) if h != libc::SIG_DFL && h != libc::SIG_IGN => {
            if flags & libc::SA_SIGINFO != 0 {
                // SAFETY: the previous action was installed with SA_SIGINFO, so
                // `h` is a handler of this signature; we pass our own arguments on.
                let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    unsafe { std::mem::transmute(h) };
                f(sig, info, ctx);
            } else {
                // SAFETY: without SA_SIGINFO the handler takes the signal number only.
                let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
                f(sig);
            }
        }
        _ => {
            // Default action: restore it and return, so the faulting instruction
            // runs again and the process dies of this SIGBUS as it would have.
            // SAFETY: all-zero is SIG_DFL with an empty mask; sigaction is
            // async-signal-safe.
            unsafe {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(libc::SIGBUS, &raw const dfl, std::ptr::null_mut());
            }
        }
    }
}

/// The guest memory of one connection, registered with the guard while it is
/// mapped.
///
/// Every snapshot the connection's memory went through is remembered weakly: a
/// region stays registered while any snapshot holding it is alive (the library's,
/// or one a polling thread still has for its current burst).
pub struct MemoryWatch {
    owner: u64,
    snapshots: Mutex<Vec<Weak<GuestMemoryMmap>>>,
}

impl Default for MemoryWatch {
    fn default() -> Self {
        MemoryWatch {
            owner: new_owner(),
            snapshots: Mutex::new(Vec::new()),
        }
    }
}

impl MemoryWatch {
    /// The connection identity its regions are registered under.
    pub fn owner(&self) -> u64 {
        self.owner
    }

    /// Registers every region of `mem` (a new snapshot), then releases regions no
    /// live snapshot holds any more.
    pub fn add_snapshot(&self, mem: Arc<GuestMemoryMmap>) -> Result<(), GuardError> {
        for r in mem.iter() {
            register(self.owner, r.as_ptr() as usize, r.len() as usize)?;
        }
        let mut snaps = self
            .snapshots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        snaps.push(Arc::downgrade(&mem));
        drop(mem);
        Self::sweep(self.owner, &mut snaps);
        Ok(())
    }

    fn sweep(owner: u64, snaps: &mut Vec<Weak<GuestMemoryMmap>>) {
        let live: Vec<Arc<GuestMemoryMmap>> = snaps.iter().filter_map(Weak::upgrade).collect();
        snaps.retain(|w| w.strong_count() > 0);
        release_where(owner, |start, len| {
            live.iter().any(|m| {
                m.iter()
                    .any(|r| r.as_ptr() as usize == start && r.len() as usize == len)
            })
        });
    }

    /// Whether any of this connection's regions faulted.
    pub fn faulted(&self) -> bool {
        faulted(self.owner)
    }

    /// After the connection ended: waits (up to `timeout`) until every snapshot is
    /// gone, releasing regions as they are unmapped. Regions still mapped after
    /// that stay registered (a slot leaked is safe; a live region unregistered is not).
    pub fn release(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut snaps = self
                .snapshots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Self::sweep(self.owner, &mut snaps);
            if snaps.is_empty() || Instant::now() >= deadline {
                if !snaps.is_empty() {
                    log::warn!(
                        "guest memory of a closed connection still mapped after {timeout:?}"
                    );
                }
                return;
            }
            drop(snaps);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use vm_memory::{FileOffset, GuestAddress, GuestRegionMmap, MmapRegion};

    fn memfd(len: u64) -> std::fs::File {
        // SAFETY: valid C string and flags.
        let fd = unsafe { libc::memfd_create(c"guard".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd nothing else owns.
        let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        f.set_len(len).unwrap();
        f
    }

    fn mapped(file: &std::fs::File, len: usize) -> Arc<GuestMemoryMmap> {
        let region = MmapRegion::from_file(FileOffset::new(file.try_clone().unwrap(), 0), len)
            .expect("mmap");
        let r = GuestRegionMmap::new(region, GuestAddress(0)).unwrap();
        Arc::new(GuestMemoryMmap::from_regions(vec![r]).unwrap())
    }

    #[test]
    fn a_truncated_region_is_replaced_and_reported_not_fatal() {
        install().unwrap();
        let len = 64 * 4096;
        let file = memfd(len as u64);
        let mem = mapped(&file, len);
        let watch = MemoryWatch::default();
        watch.add_snapshot(mem.clone()).unwrap();
        let base = mem.iter().next().unwrap().as_ptr();
        // SAFETY: inside the mapping just made.
        unsafe { base.add(100).write_volatile(7) };
        assert!(!watch.faulted());
        let before = faults();
        file.set_len(0).unwrap();
        // SAFETY: inside the (registered) mapping: this faults, the guard replaces
        // the region, and the load runs again against anonymous memory.
        let v = unsafe { base.add(5 * 4096).read_volatile() };
        assert_eq!(v, 0);
        // SAFETY: as above; the write lands in the replacement.
        unsafe { base.add(200).write_volatile(9) };
        assert!(faults() > before);
        assert!(watch.faulted());
        let _ = file.as_raw_fd();
        drop(mem);
        watch.release(Duration::from_secs(1));
        assert!(!watch.faulted(), "slots released once unmapped");
    }

    #[test]
    fn regions_stay_registered_while_any_snapshot_lives() {
        let file = memfd(4096 * 4);
        let a = mapped(&file, 4096 * 4);
        let watch = MemoryWatch::default();
        watch.add_snapshot(a.clone()).unwrap();
        let owned = |w: &MemoryWatch| {
            TABLE
                .iter()
                .filter(|s| {
                    s.len.load(Ordering::Relaxed) != 0
                        && s.owner.load(Ordering::Relaxed) == w.owner()
                })
                .count()
        };
        assert_eq!(owned(&watch), 1);
        let b = mapped(&file, 4096 * 4);
        watch.add_snapshot(b.clone()).unwrap();
        assert_eq!(owned(&watch), 2, "old snapshot still alive");
        drop(a);
        watch.add_snapshot(b.clone()).unwrap();
        assert_eq!(
            owned(&watch),
            1,
            "old region released once its snapshot died"
        );
        drop(b);
        watch.release(Duration::from_secs(1));
        assert_eq!(owned(&watch), 0);
    }
}
