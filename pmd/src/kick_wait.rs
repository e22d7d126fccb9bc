// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Adaptive polling: a polling thread that has had nothing to move for a while
//! (`[pmd] sleep_after_us`) sleeps until a guest kicks, as VPP's adaptive mode
//! does, and polls again from the first kick.
//!
//! Going to sleep ([`KickWait::wait`]): the thread marks itself sleeping, asks the
//! driver of every source queue it polls to kick ([`Stream::request_kicks`], which
//! also registers the thread with each port it polls or delivers to) and looks at
//! those queues a last time; frames that came meanwhile keep it polling. Then it
//! sleeps in `epoll_wait` on
//! - the frontends' kick eventfds of those queues, edge-triggered: vpmd never reads
//!   them (a frontend can clear `O_NONBLOCK` on its eventfd and make a read block),
//!   each write by the frontend is one event;
//! - its uplinks' AF_XDP and packet sockets, level-triggered (frames in their
//!   rings);
//! - its own eventfd ([`Wake`]): a port's setup changing (a connection, memory
//!   table, ring or kick fd), stream changes and stop wake it there.
//!
//! Events left from before the kicks were requested are drained first, so a
//! wake-up is a kick that came after the thread's last look. Nothing is lost on
//! wake-up: frames wait in the rings, the first poll takes them, and the next burst
//! on each queue asks the driver not to kick again. Every wait ends after at most
//! [`LONGEST_WAIT`], a safety net for a wake-up that cannot come (a frontend that
//! never kicks): its frames then wait that long, nobody else's.
//!
//! Under load none of this runs: the thread is never idle for `sleep_after_us`, and
//! the loop's only extra work is one compare of the cycle counter per poll.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use vpmd_backend::wake::Wake;

use crate::fwd::{Stream, WaitFds};
use crate::ratelimit::LogLimiter;

/// Longest single sleep, whatever wakes or does not wake the thread.
pub const LONGEST_WAIT: Duration = Duration::from_millis(100);

/// Events one `epoll_wait` takes.
const EVENTS: usize = 16;
/// Event data of the kick eventfds (the others carry their fd).
const KICK: u64 = u64::MAX;

/// How a [`KickWait::wait`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slept {
    /// Frames or a change were waiting: it did not sleep.
    No,
    /// It slept and a guest's kick woke it.
    Kicked,
    /// It slept and something else woke it (a socket, its eventfd).
    Woken,
    /// It slept [`LONGEST_WAIT`] and nothing woke it.
    TimedOut,
}

/// One polling thread's way to sleep until kicked.
pub struct KickWait {
    wake: Arc<Wake>,
    /// Idle cycles before sleeping; 0: never sleep (busy-poll).
    after_cycles: u64,
    /// The epoll set and what is in it (the kick fds held so that their numbers
    /// stay theirs while registered); rebuilt when what to wait on changes.
    epoll: Option<OwnedFd>,
    registered: WaitFds,
    /// What the streams want waited on now (kept between sleeps: no allocation).
    wanted: WaitFds,
    /// The thread's streams changed since the epoll set was built.
    streams_changed: bool,
    /// A failing epoll would otherwise log at every try (one per idle period).
    log: LogLimiter,
}

impl KickWait {
    /// Sleeps after `after` idle (zero: never), counted at `tsc_hz` cycles a second.
    pub fn new(wake: Arc<Wake>, after: Duration, tsc_hz: u64) -> Self {
        let after_cycles = if after.is_zero() || tsc_hz == 0 {
            0
        } else {
            let cycles = u128::from(tsc_hz) * after.as_nanos() / 1_000_000_000;
            u64::try_from(cycles).unwrap_or(u64::MAX).max(1)
        };
        KickWait {
            wake,
            after_cycles,
            epoll: None,
            registered: WaitFds::default(),
            wanted: WaitFds::default(),
            streams_changed: true,
            log: LogLimiter::guest_errors(),
        }
    }

    /// Whether the thread has been idle long enough to sleep: `idle` cycles since
    /// the last poll that moved a frame.
    #[inline]
    pub fn due(&self, idle: u64) -> bool {
        self.after_cycles != 0 && idle >= self.after_cycles
    }

    /// Idle cycles before sleeping (0: never).
    pub fn after_cycles(&self) -> u64 {
        self.after_cycles
    }

    /// The thread's streams changed: its sockets may have closed, so the epoll set
    /// is built afresh before the next sleep.
    pub fn streams_changed(&mut self) {
        self.streams_changed = true;
    }

    /// Sleeps until a kick, a socket, a wake-up or [`LONGEST_WAIT`], unless frames
    /// are waiting or `interrupted()` (stop, stream changes) says otherwise once the
    /// thread is marked sleeping.
    #[cold]
    pub fn wait(
        &mut self,
        streams: &mut [Box<dyn Stream>],
        interrupted: impl Fn() -> bool,
    ) -> Slept {
        // Marked first: a port's kick fd or setup changing from here on writes our
        // eventfd, so what is gathered next cannot go stale unnoticed.
        self.wake.going_to_sleep();
        self.wanted.kicks.clear();
        self.wanted.sockets.clear();
        for s in streams.iter() {
            s.wait_fds(&mut self.wanted);
        }
        let Some(epoll) = self.epoll_set() else {
            self.wake.awake();
            return Slept::No;
        };
        // Drain what came before the kicks are requested: a readable socket or our
        // eventfd means work (frames, a change); older kick events mean nothing now
        // (the look below finds their frames).
        if wait_events(epoll, 0).2 {
            self.wake.awake();
            return Slept::No;
        }
        let mut waiting = false;
        for s in streams.iter_mut() {
            // Every stream, even once one has frames: each registers the thread.
            waiting |= s.request_kicks(&self.wake);
        }
        if waiting || interrupted() {
            self.wake.awake();
            return Slept::No;
        }
        // No bracketed call while asleep: the stall watchdog may rest too.
        vpmd_backend::stall_guard::set_idle(true);
        let (events, kicked, _) = wait_events(epoll, LONGEST_WAIT.as_millis() as libc::c_int);
        vpmd_backend::stall_guard::set_idle(false);
        self.wake.awake();
        match (events, kicked) {
            (0, _) => Slept::TimedOut,
            (_, true) => Slept::Kicked,
            _ => Slept::Woken,
        }
    }

    /// The epoll set for `wanted`, built afresh if it differs from what is
    /// registered (or the streams changed); `None` if epoll fails (logged: the
    /// thread then polls on).
    fn epoll_set(&mut self) -> Option<RawFd> {
        let same = !self.streams_changed
            && self.registered.sockets == self.wanted.sockets
            && self.registered.kicks.len() == self.wanted.kicks.len()
            && self
                .registered
                .kicks
                .iter()
                .zip(&self.wanted.kicks)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            if let Some(e) = &self.epoll {
                return Some(e.as_raw_fd());
            }
        }
        // Dropping the old set unregisters everything in it; then the kick fds it
        // held may go.
        self.epoll = None;
        match self.build() {
            Ok(e) => {
                self.epoll = Some(e);
                std::mem::swap(&mut self.registered, &mut self.wanted);
                self.streams_changed = false;
                self.epoll.as_ref().map(AsRawFd::as_raw_fd)
            }
            Err(e) => {
                if let Some(held_back) = self.log.allow() {
                    log::warn!(
                        "pmd thread: cannot wait for kicks, polling on: {e} \
                         ({held_back} similar messages held back)"
                    );
                }
                None
            }
        }
    }

    fn build(&self) -> io::Result<OwnedFd> {
        // SAFETY: epoll_create1 takes no pointers; a new fd is owned below.
        #[allow(unsafe_code)]
        let epoll = unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let level = libc::EPOLLIN as u32;
        let edge = (libc::EPOLLIN | libc::EPOLLET) as u32;
        add(&epoll, self.wake.raw_fd(), level, self.wake.raw_fd() as u64)?;
        for &fd in &self.wanted.sockets {
            add(&epoll, fd, level, fd as u64)?;
        }
        for fd in &self.wanted.kicks {
            // One fd may serve two queues of a hostile frontend: added once.
            match add(&epoll, fd.as_raw_fd(), edge, KICK) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                other => other?,
            }
        }
        Ok(epoll)
    }
}

/// Registers `fd` in `epoll`.
fn add(epoll: &OwnedFd, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: `ev` is a live epoll_event the call reads; both fds are open.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &raw mut ev) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One `epoll_wait` of at most `timeout_ms`: how many events came (an interrupted
/// wait counts as one), whether one was a kick, and whether one was not (a socket
/// with frames, the thread's eventfd).
fn wait_events(epoll: RawFd, timeout_ms: libc::c_int) -> (usize, bool, bool) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    // SAFETY: `events` is a live array of EVENTS entries the call writes.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::epoll_wait(
            epoll,
            events.as_mut_ptr(),
            EVENTS as libc::c_int,
            timeout_ms,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            log::debug!("pmd thread: epoll_wait: {e}");
        }
        return (1, false, false);
    }
    let events = &events[..n as usize];
    (
        events.len(),
        events.iter().any(|e| ({ e.u64 }) == KICK),
        events.iter().any(|e| ({ e.u64 }) != KICK),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fwd::Scratch;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A stream that is woken through `wake` by a test, with `waiting` frames.
    struct Sleepy {
        waiting: Arc<AtomicU32>,
        registered: Arc<AtomicBool>,
        woken_by: Option<Arc<Wake>>,
    }

    impl Stream for Sleepy {
        fn name(&self) -> &str {
            "sleepy"
        }
        fn poll(&mut self, _: &mut Scratch) -> u32 {
            0
        }
        fn request_kicks(&mut self, wake: &Arc<Wake>) -> bool {
            self.registered.store(true, Ordering::SeqCst);
            self.woken_by = Some(wake.clone());
            self.waiting.load(Ordering::SeqCst) > 0
        }
    }

    fn sleepy() -> (Box<dyn Stream>, Arc<AtomicU32>, Arc<AtomicBool>) {
        let waiting = Arc::new(AtomicU32::new(0));
        let registered = Arc::new(AtomicBool::new(false));
        let s = Sleepy {
            waiting: waiting.clone(),
            registered: registered.clone(),
            woken_by: None,
        };
        (Box::new(s), waiting, registered)
    }

    #[test]
    fn zero_never_sleeps() {
        let w = KickWait::new(
            Arc::new(Wake::new().unwrap()),
            Duration::ZERO,
            1_000_000_000,
        );
        assert!(!w.due(u64::MAX));
        let w = KickWait::new(
            Arc::new(Wake::new().unwrap()),
            Duration::from_micros(5),
            1_000_000_000,
        );
        assert!(!w.due(4_999));
        assert!(w.due(5_000));
    }

    #[test]
    fn frames_waiting_or_an_interruption_keep_it_polling() {
        let wake = Arc::new(Wake::new().unwrap());
        let mut w = KickWait::new(wake.clone(), Duration::from_micros(1), 1_000_000_000);
        let (s, waiting, registered) = sleepy();
        let mut streams = vec![s];
        waiting.store(3, Ordering::SeqCst);
        assert_eq!(
            w.wait(&mut streams, || false),
            Slept::No,
            "frames wait: no sleep"
        );
        assert!(registered.load(Ordering::SeqCst));
        waiting.store(0, Ordering::SeqCst);
        assert_eq!(
            w.wait(&mut streams, || true),
            Slept::No,
            "a change posted: no sleep"
        );
        // A stream that cannot be woken keeps the thread polling.
        struct Plain;
        impl Stream for Plain {
            fn name(&self) -> &str {
                "plain"
            }
            fn poll(&mut self, _: &mut Scratch) -> u32 {
                0
            }
        }
        let mut plain: Vec<Box<dyn Stream>> = vec![Box::new(Plain)];
        assert_eq!(w.wait(&mut plain, || false), Slept::No);
    }

    #[test]
    fn a_wake_while_it_sleeps_ends_the_sleep() {
        let wake = Arc::new(Wake::new().unwrap());
        let mut w = KickWait::new(wake.clone(), Duration::from_micros(1), 1_000_000_000);
        let (s, _, _) = sleepy();
        let mut streams = vec![s];
        // A wake before the thread marked itself sleeping writes nothing...
        wake.wake();
        assert_eq!(wake.woken(), 0);
        // ...and one while it sleeps ends the sleep well before the safety net.
        let waker = {
            let wake = wake.clone();
            std::thread::spawn(move || {
                while wake.woken() == 0 {
                    wake.wake();
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        assert_eq!(w.wait(&mut streams, || false), Slept::Woken);
        waker.join().unwrap();
        // `wake` writes only while the thread is marked sleeping: it was.
        assert!(wake.woken() >= 1);
        // The eventfd is empty again for the next sleep.
        let mut buf = [0u8; 8];
        // SAFETY: reading 8 bytes into a live 8-byte buffer from the eventfd.
        #[allow(unsafe_code)]
        let n = unsafe { libc::read(wake.raw_fd(), buf.as_mut_ptr().cast(), 8) };
        assert_eq!(n, -1, "awake() emptied the eventfd");
    }
}
