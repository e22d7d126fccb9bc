// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! No polling thread stays blocked in a system call on a file a frontend controls.
//!
//! A guest notification is an 8-byte `write` to the frontend's call eventfd. vpmd
//! makes that fd non-blocking when it arrives, but `O_NONBLOCK` lives on the file
//! description the frontend still shares: it can clear the flag later and saturate
//! the counter, and the next `write` sleeps until the frontend reads, which it never
//! will. There is no way to write to an eventfd that ignores the description's flags
//! (`pwritev2(RWF_NOWAIT)` is refused for eventfds, and an eventfd cannot be
//! reopened as a description of our own), so vpmd bounds the sleep instead:
//!
//! - a polling thread [`register`]s itself and brackets each such call with
//!   [`Watched::enter`] (two plain stores; the call is a system call anyway);
//! - a watchdog thread ([`start`]) looks every [`PERIOD`]: a thread found inside the
//!   *same* bracketed call twice in a row gets [`interrupt_signal`], whose handler
//!   does nothing and is installed without `SA_RESTART`, so the sleeping `write`
//!   returns `EINTR`. A non-blocking write never sleeps and so never sees it;
//!   `EINTR` therefore means the frontend tampered with the fd, and the caller stops
//!   that connection (see `virtqueue`).
//!
//! A thread is thus blocked at most about two periods, once per hostile connection.
//! Threads that never registered (tests, tools) are never signalled.
#![allow(unsafe_code)] // sigaction(2), pthread_kill(3).

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the watchdog looks.
pub const PERIOD: Duration = Duration::from_millis(5);

/// Errors starting the guard.
#[derive(Debug, thiserror::Error)]
pub enum StallGuardError {
    /// The interrupt signal's handler could not be installed.
    #[error("cannot install the interrupt signal handler")]
    Install(#[source] io::Error),
    /// The watchdog thread could not be started.
    #[error("cannot start the watchdog thread")]
    Thread(#[source] io::Error),
}

struct ThreadSlot {
    thread: libc::pthread_t,
    /// Odd while inside a bracketed call; bumped on every enter and leave.
    seq: AtomicU64,
    interrupts: AtomicU64,
    /// The thread sleeps where it makes no bracketed call (see [`set_idle`]).
    idle: AtomicBool,
}

static THREADS: Mutex<Vec<Arc<ThreadSlot>>> = Mutex::new(Vec::new());
/// Where the watchdog waits while every registered thread is idle, and the threads
/// waking up tell it so.
static IDLE_WAIT: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());
/// How long the watchdog waits while every registered thread is idle, at most.
const IDLE_PERIOD: Duration = Duration::from_millis(500);
static INSTALL: Once = Once::new();

thread_local! {
    static CURRENT: RefCell<Option<Arc<ThreadSlot>>> = const { RefCell::new(None) };
}

/// The signal that interrupts a blocked call (a real-time one nothing else uses).
pub fn interrupt_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

extern "C" fn on_interrupt(_sig: libc::c_int) {
    // Nothing to do: being delivered is what makes the blocked call return EINTR.
}

fn install() -> Result<(), StallGuardError> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: all-zero is a valid sigaction (empty mask, no flags).
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_interrupt as *const () as usize;
        // No SA_RESTART: an interrupted write must return EINTR, not sleep again.
        sa.sa_flags = 0;
        // SAFETY: `sa` is fully initialised; the old action is not needed.
        if unsafe { libc::sigaction(interrupt_signal(), &raw const sa, std::ptr::null_mut()) } != 0
        {
            result = Err(StallGuardError::Install(io::Error::last_os_error()));
        }
    });
    result
}

/// The calling thread, registered for as long as this lives.
pub struct Registration {
    slot: Arc<ThreadSlot>,
}

/// Registers the calling thread: its bracketed calls are interrupted when stuck.
pub fn register() -> Result<Registration, StallGuardError> {
    install()?;
    let slot = Arc::new(ThreadSlot {
        // SAFETY: pthread_self has no preconditions.
        thread: unsafe { libc::pthread_self() },
        seq: AtomicU64::new(0),
        interrupts: AtomicU64::new(0),
        idle: AtomicBool::new(false),
    });
    THREADS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(slot.clone());
    CURRENT.with(|c| *c.borrow_mut() = Some(slot.clone()));
    Ok(Registration { slot })
}

impl Registration {
    /// Times the watchdog interrupted this thread.
    pub fn interrupts(&self) -> u64 {
        self.slot.interrupts.load(Ordering::Relaxed)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = None);
        // Under the lock the watchdog signals with: once removed, this thread is
        // never signalled again, so it may exit.
        THREADS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|s| !Arc::ptr_eq(s, &self.slot));
    }
}

/// A bracketed call on the current thread; ends when dropped.
pub struct Watched {
    slot: Option<Arc<ThreadSlot>>,
}

impl Watched {
    /// Starts a call that a frontend could make block.
    #[inline]
    pub fn enter() -> Watched {
        let slot = CURRENT.with(|c| c.borrow().clone());
        if let Some(s) = &slot {
            s.seq.fetch_add(1, Ordering::Release);
        }
        Watched { slot }
    }
}

impl Drop for Watched {
    #[inline]
    fn drop(&mut self) {
        if let Some(s) = &self.slot {
            s.seq.fetch_add(1, Ordering::Release);
        }
    }
}

/// The calling (registered) thread goes to sleep where it makes no bracketed call
/// (`idle`), or is back. While every registered thread is idle the watchdog stops
/// looking every [`PERIOD`] (200 wake-ups a second would be most of an idle vpmd's
/// CPU) and waits until one is back. A slow path: it takes a lock when a thread
/// comes back.
pub fn set_idle(idle: bool) {
    CURRENT.with(|c| {
        if let Some(s) = c.borrow().as_ref() {
            s.idle.store(idle, Ordering::SeqCst);
            if !idle {
                // Under the lock the watchdog checks the flags with before it waits:
                // it either saw this thread awake or is waiting and gets the notice.
                let _g = IDLE_WAIT
                    .0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                IDLE_WAIT.1.notify_all();
            }
        }
    });
}

/// Adds 1 to the eventfd `fd` with one `write`, bracketed for the watchdog and
/// never retried: `EINTR` (the write slept and was interrupted) and `EAGAIN` (the
/// counter is full) come back as errors. `fd` must stay open for the call (the
/// caller holds what owns it).
pub fn signal_eventfd(fd: std::os::fd::RawFd) -> io::Result<()> {
    let one = 1u64;
    let watched = Watched::enter();
    // SAFETY: writes 8 bytes from a local u64; `fd` is open (caller's contract), and
    // a wrong kind of fd can at worst fail the write.
    let n = unsafe { libc::write(fd, (&raw const one).cast(), 8) };
    drop(watched);
    if n == 8 {
        Ok(())
    } else if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Err(io::Error::from(io::ErrorKind::WriteZero))
    }
}

/// The running watchdog.
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the watchdog thread.
pub fn start() -> Result<Watchdog, StallGuardError> {
    install()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::Builder::new()
        .name("vpmd-watchdog".into())
        .spawn(move || watch(&flag))
        .map_err(StallGuardError::Thread)?;
    Ok(Watchdog {
        stop,
        thread: Some(thread),
    })
}

fn watch(stop: &AtomicBool) {
    // (slot address, seq seen last time)
    let mut seen: Vec<(usize, u64)> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        thread::sleep(PERIOD);
        let threads = THREADS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut now = Vec::with_capacity(threads.len());
        for s in threads.iter() {
            let key = Arc::as_ptr(s) as usize;
            let seq = s.seq.load(Ordering::Acquire);
            let stuck = seq % 2 == 1 && seen.contains(&(key, seq));
            if stuck {
                s.interrupts.fetch_add(1, Ordering::Relaxed);
                // SAFETY: the thread is registered (we hold the lock that
                // deregistration takes), so it has not exited and its pthread_t
                // is valid; the signal's handler does nothing.
                unsafe { libc::pthread_kill(s.thread, interrupt_signal()) };
            }
            now.push((key, seq));
        }
        drop(threads);
        seen = now;
        wait_while_all_idle(stop);
    }
}

/// Returns at once unless every registered thread is idle; then waits until one is
/// back, stop, or [`IDLE_PERIOD`]. An idle thread makes no bracketed call, so
/// nothing can get stuck meanwhile.
fn wait_while_all_idle(stop: &AtomicBool) {
    let g = IDLE_WAIT
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let all_idle = || {
        let threads = THREADS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        !threads.is_empty() && threads.iter().all(|s| s.idle.load(Ordering::SeqCst))
    };
    if all_idle() && !stop.load(Ordering::Acquire) {
        let _ = IDLE_WAIT
            .1
            .wait_timeout(g, IDLE_PERIOD)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

impl Watchdog {
    /// Stops the watchdog thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        {
            let _g = IDLE_WAIT
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            IDLE_WAIT.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_blocked_on_a_tampered_eventfd_is_interrupted() {
        let dog = start().unwrap();
        let t = thread::spawn(|| {
            let reg = register().unwrap();
            // SAFETY: eventfd takes no pointers; blocking on purpose (no EFD_NONBLOCK).
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(fd >= 0);
            let max = u64::MAX - 1;
            // SAFETY: writes 8 bytes from a local u64 to our own fd.
            let n = unsafe { libc::write(fd, (&raw const max).cast(), 8) };
            assert_eq!(n, 8);
            // This write blocks (the counter is saturated) until interrupted.
            let err = signal_eventfd(fd).unwrap_err();
            // SAFETY: closing our own fd.
            unsafe { libc::close(fd) };
            (err.raw_os_error(), reg.interrupts())
        });
        let (errno, interrupts) = t.join().unwrap();
        assert_eq!(errno, Some(libc::EINTR));
        assert!(interrupts >= 1);
        dog.stop();
    }

    #[test]
    fn a_thread_back_from_idle_is_watched_again() {
        let dog = start().unwrap();
        let t = thread::spawn(|| {
            let reg = register().unwrap();
            // Idle long enough for the watchdog to rest, then back: the watchdog
            // must look again, or the blocked write below would never return.
            set_idle(true);
            thread::sleep(Duration::from_millis(50));
            set_idle(false);
            // SAFETY: eventfd takes no pointers; blocking on purpose (no EFD_NONBLOCK).
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            assert!(fd >= 0);
            let max = u64::MAX - 1;
            // SAFETY: writes 8 bytes from a local u64 to our own fd.
            let n = unsafe { libc::write(fd, (&raw const max).cast(), 8) };
            assert_eq!(n, 8);
            let err = signal_eventfd(fd).unwrap_err();
            // SAFETY: closing our own fd.
            unsafe { libc::close(fd) };
            (err.raw_os_error(), reg.interrupts())
        });
        let (errno, interrupts) = t.join().unwrap();
        assert_eq!(errno, Some(libc::EINTR));
        assert!(interrupts >= 1);
        dog.stop();
    }
}
