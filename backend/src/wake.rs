// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Waking a polling thread that sleeps until a guest kicks (adaptive polling).
//!
//! A polling thread that has had nothing to move for a while asks the drivers of
//! its queues to kick ([`crate::virtqueue::VirtQueue::request_kicks`]) and sleeps
//! in `epoll_wait` on the frontends' kick eventfds (which the relay keeps for it,
//! [`crate::port::VirtioNetPort::kick_fd`]; vhost-user-backend gets vpmd's own),
//! its uplink's sockets and a [`Wake`] of its own. Whatever the control plane
//! changes under a port (a connection, memory table, ring or kick fd) wakes the
//! threads registered with it ([`PortWakers`]), so they look again.
//!
//! Ordering: the thread sets `sleeping` before it requests kicks and reads the
//! rings again; a waker writes the eventfd only if it sees `sleeping` (SeqCst on
//! both sides), so a change either finds the thread's last look, or the thread
//! awake, or its eventfd written. The eventfd is vpmd's own and non-blocking:
//! writing it never waits.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

/// The eventfd one polling thread sleeps on.
#[derive(Debug)]
pub struct Wake {
    fd: EventFd,
    sleeping: AtomicBool,
    /// Wake-ups written while it slept (for stats and tests).
    woken: AtomicU64,
}

impl Wake {
    /// A fresh, non-blocking eventfd.
    pub fn new() -> io::Result<Self> {
        Ok(Wake {
            fd: EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)?,
            sleeping: AtomicBool::new(false),
            woken: AtomicU64::new(0),
        })
    }

    /// The thread is about to look at its rings a last time and sleep.
    pub fn going_to_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// The thread is polling again: empties the eventfd.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
        // EAGAIN: nothing was written.
        let _ = self.fd.read();
    }

    /// Wakes the thread if it sleeps (or is about to).
    pub fn wake(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            self.force();
        }
    }

    /// Wakes the thread whether or not it sleeps (stop, stream changes).
    pub fn force(&self) {
        // EAGAIN: the counter is full, the thread has a wake-up pending anyway.
        if self.fd.write(1).is_ok() {
            self.woken.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The eventfd, for `poll(2)`: valid while `self` lives.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wake-ups written so far.
    pub fn woken(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
    }
}

/// The threads to wake when a port's driver kicks or its setup changes.
#[derive(Debug, Default)]
pub struct PortWakers {
    threads: Mutex<Vec<Weak<Wake>>>,
}

impl PortWakers {
    /// Adds `wake` (once; threads that ended are dropped from the list).
    pub fn register(&self, wake: &Arc<Wake>) {
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        threads.retain(|w| w.strong_count() > 0);
        if !threads
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(wake)))
        {
            threads.push(Arc::downgrade(wake));
        }
    }

    /// Wakes every registered thread that sleeps.
    pub fn wake_all(&self) {
        let threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        for w in threads.iter().filter_map(Weak::upgrade) {
            w.wake();
        }
    }
}
