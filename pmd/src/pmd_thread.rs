// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A polling thread: pinned to one core, it polls its streams round-robin until told
//! to stop, and accounts its time in TSC cycles (busy: polls that moved frames; idle:
//! polls that moved none), as OVS's `dpif-netdev/pmd-stats-show` does.
//!
//! It busy-polls while there is traffic. Once it has moved nothing for
//! `[pmd] sleep_after_us` (default 1 ms) it sleeps until a guest kicks
//! ([`crate::kick_wait`], adaptive polling); with `sleep_after_us = 0` it busy-polls
//! all the time, as DPDK and OVS do. With a maximum sleep
//! (`[pmd] max_sleep_us`, like OVS's `pmd-maxsleep`) it backs off when its load is
//! light: after [`SPIN_POLLS`] empty polls, or at once after a poll that moved fewer
//! than [`FULL_POLL`] frames (a full burst), it sleeps, doubling the sleep up to the
//! maximum while polls stay light. A full poll means frames may be waiting: it polls
//! again at once, and halves the next sleep. Under a steady stream the sleeps settle
//! where a poll finds about a full burst, so frames are taken, copied and signalled
//! to each guest in bursts rather than one by one (the guest's wake-ups, one per
//! burst, are the dearest part), and a light or moderate load costs a fraction of a
//! core; a load the thread can only just carry keeps every poll full and never
//! sleeps. Frames that arrive meanwhile wait in the rings (hundreds of slots: far
//! more than the longest sleep fills). Counting only empty polls would never back
//! off under a steady stream: one frame every microsecond or so makes no poll empty
//! for long, and the thread would spin all the time, one frame per poll.
//!
//! Its set of streams changes while it runs ([`StreamChanges`]): the control plane
//! posts added streams and the names of streams to remove, bumps an epoch, and waits
//! until the thread has taken them. The thread reads that epoch once per loop
//! iteration (one relaxed-cost atomic load, like a port's connection generation)
//! and takes the lock only when it moved, between two polls: a removed stream's
//! last burst is complete (its used entries published, its counters flushed) when it
//! leaves the list, and the other streams are polled on as before, in the same
//! order, with no lock per frame or per burst.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vpmd_backend::wake::Wake;

use crate::counters::{ThreadCounters, WaitCounts};
use crate::fwd::{Scratch, Stream};
use crate::kick_wait::{KickWait, Slept};
use crate::tsc;

/// Empty polls in a row before the first sleep (a few microseconds of spinning,
/// so a busy link never sleeps between bursts).
pub const SPIN_POLLS: u32 = 256;
/// A poll that moves at least this many frames (a full burst) means a busy link:
/// poll again at once. A poll that moves fewer starts or continues the backoff.
pub const FULL_POLL: u64 = crate::fwd::BURST as u64;
/// The first sleep of a backoff.
const FIRST_SLEEP: Duration = Duration::from_micros(1);

/// How a polling thread behaves while its queues are empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IdlePolicy {
    /// Longest sleep between polls; zero: never sleep (busy-poll).
    pub max_sleep: Duration,
    /// Idle time after which the thread sleeps until a guest kicks
    /// ([`crate::kick_wait`]); zero: never (busy-poll).
    pub sleep_after: Duration,
    /// TSC frequency, to count `sleep_after` in cycles.
    pub tsc_hz: u64,
}

/// A running polling thread.
pub struct PmdThread {
    core: usize,
    thread: JoinHandle<()>,
    changes: Arc<StreamChanges>,
    /// Wakes the thread while it sleeps until kicked.
    wake: Arc<Wake>,
}

/// A change of a polling thread's streams.
pub enum Change {
    /// Start polling this stream (after the others, at the end of the list).
    Add(Box<dyn Stream>),
    /// Stop polling the streams of these names, between two polls.
    Remove(Vec<String>),
    /// Change the stream of this name, between two polls (a macvlan's ports).
    Edit(String, Edit),
}

/// A change made to one stream on its polling thread.
pub type Edit = Box<dyn FnOnce(&mut dyn Stream) + Send>;

/// A stream a polling thread has stopped polling, handed back to be dropped by the
/// control plane (not on the polling thread).
pub struct Retired {
    /// The stream, its last burst complete.
    pub stream: Box<dyn Stream>,
    /// Frames its source had made available and it did not take (see
    /// [`Stream::retire`]).
    pub in_flight: u64,
}

/// Changes posted to one polling thread, taken by it between polls.
#[derive(Default)]
pub struct StreamChanges {
    /// Bumped (under `pending`'s lock) whenever changes are posted.
    posted: AtomicU64,
    /// The last `posted` value whose changes the thread has applied.
    applied: AtomicU64,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    changes: Vec<Change>,
    retired: Vec<Retired>,
}

impl StreamChanges {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Posts `changes`; returns the epoch to wait for.
    fn post(&self, changes: Vec<Change>) -> u64 {
        let mut p = self.lock();
        p.changes.extend(changes);
        self.posted.fetch_add(1, Ordering::Release) + 1
    }

    /// On the polling thread: whether changes were posted since `seen`. One atomic load.
    #[inline]
    fn moved(&self, seen: u64) -> bool {
        self.posted.load(Ordering::Acquire) != seen
    }

    /// On the polling thread, between polls: applies what was posted; returns the
    /// epoch now applied.
    #[cold]
    fn apply(&self, streams: &mut Vec<Box<dyn Stream>>) -> u64 {
        let mut p = self.lock();
        let epoch = self.posted.load(Ordering::Acquire);
        let changes = std::mem::take(&mut p.changes);
        for c in changes {
            match c {
                Change::Add(s) => streams.push(s),
                Change::Edit(name, edit) => {
                    if let Some(s) = streams.iter_mut().find(|s| s.name() == name) {
                        edit(s.as_mut());
                    }
                }
                Change::Remove(names) => {
                    let mut k = 0;
                    while k < streams.len() {
                        if names.iter().any(|n| n == streams[k].name()) {
                            // `remove`, not `swap_remove`: the others keep their order.
                            let mut stream = streams.remove(k);
                            let in_flight = stream.retire();
                            p.retired.push(Retired { stream, in_flight });
                        } else {
                            k += 1;
                        }
                    }
                }
            }
        }
        self.applied.store(epoch, Ordering::Release);
        epoch
    }
}

impl PmdThread {
    /// Starts a thread pinned to `core` that polls `streams` until `stop` is set.
    pub fn spawn(
        core: usize,
        streams: Vec<Box<dyn Stream>>,
        idle: IdlePolicy,
        stop: Arc<AtomicBool>,
        counters: Arc<ThreadCounters>,
    ) -> io::Result<PmdThread> {
        let changes = Arc::new(StreamChanges::default());
        let posted = changes.clone();
        let wake = Arc::new(Wake::new()?);
        let kicks = KickWait::new(wake.clone(), idle.sleep_after, idle.tsc_hz);
        let thread = thread::Builder::new()
            .name(format!("pmd-core{core}"))
            .spawn(move || {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    log::warn!("pmd thread: cannot pin to core {core}; polling unpinned");
                }
                if !idle.max_sleep.is_zero() {
                    precise_sleeps();
                }
                // A guest notification that blocks (a frontend made its call eventfd
                // blocking) is interrupted by the watchdog instead of freezing us.
                let watched = vpmd_backend::stall_guard::register();
                if let Err(e) = &watched {
                    log::error!(
                        "pmd thread on core {core}: {e}: a hostile frontend could block it"
                    );
                }
                run(streams, idle, kicks, &stop, &counters, &posted);
                drop(watched);
            })?;
        Ok(PmdThread {
            core,
            thread,
            changes,
            wake,
        })
    }

    /// The core it is pinned to.
    pub fn core(&self) -> usize {
        self.core
    }

    /// Applies `changes` between two of the thread's polls and waits until it has;
    /// returns the streams it stopped polling. Returns at once if the thread has
    /// ended (its streams went with it).
    pub fn change(&self, changes: Vec<Change>) -> Vec<Retired> {
        let epoch = self.changes.post(changes);
        // Always written, not only when it sleeps: control path, and no ordering
        // between the epoch and the sleeping flag to reason about.
        self.wake.force();
        let mut spins = 0u32;
        while self.changes.applied.load(Ordering::Acquire) < epoch && !self.thread.is_finished() {
            // The thread comes round in microseconds, or after its longest idle
            // sleep (`max_sleep_us`, at most 10 ms).
            spins += 1;
            if spins < 100 {
                thread::yield_now();
            } else {
                thread::sleep(Duration::from_micros(100));
            }
        }
        std::mem::take(&mut self.changes.lock().retired)
    }

    /// Waits for the thread to end (after `stop` was set).
    pub fn join(self) {
        self.wake.force();
        if self.thread.join().is_err() {
            log::error!("pmd thread on core {} panicked", self.core);
        }
    }
}

/// Backoff state of one thread.
struct Backoff {
    max: Duration,
    empty_polls: u32,
    next_sleep: Duration,
}

impl Backoff {
    fn new(policy: IdlePolicy) -> Self {
        Backoff {
            max: policy.max_sleep,
            empty_polls: 0,
            next_sleep: FIRST_SLEEP,
        }
    }

    /// After a poll that moved `moved` frames: the sleep to take now, if any.
    #[inline]
    fn after_poll(&mut self, moved: u64) -> Option<Duration> {
        if self.max.is_zero() {
            return None;
        }
        if moved >= FULL_POLL {
            // Busy: poll again at once. The sleep that let this many frames gather
            // was long enough: the next one is half as long, so that under a steady
            // load the sleeps settle where each poll takes about a full burst.
            self.empty_polls = 0;
            self.next_sleep = (self.next_sleep / 2).max(FIRST_SLEEP);
            return None;
        }
        if moved == 0 && self.empty_polls < SPIN_POLLS {
            self.empty_polls += 1;
            if self.empty_polls < SPIN_POLLS {
                return None;
            }
        }
        // Backing off (a light poll, or spun long enough): empty polls sleep at
        // once from now on, until a full poll.
        self.empty_polls = SPIN_POLLS;
        let sleep = self.next_sleep.min(self.max);
        self.next_sleep = (self.next_sleep * 2).min(self.max);
        Some(sleep)
    }
}

fn run(
    mut streams: Vec<Box<dyn Stream>>,
    idle: IdlePolicy,
    mut kicks: KickWait,
    stop: &AtomicBool,
    counters: &ThreadCounters,
    changes: &StreamChanges,
) {
    let mut seen = 0u64;
    let mut scratch = Scratch::new();
    let mut backoff = Backoff::new(idle);
    let (mut frames, mut busy, mut idle_cycles) = (0u64, 0u64, 0u64);
    let mut last = tsc::now();
    let mut last_busy = last;
    let mut polls = 0u64;
    let mut waits = WaitCounts::default();
    while !stop.load(Ordering::Relaxed) {
        if changes.moved(seen) {
            seen = changes.apply(&mut streams);
            kicks.streams_changed();
        }
        let mut moved = 0u64;
        for s in &mut streams {
            moved += u64::from(s.poll(&mut scratch));
        }
        match backoff.after_poll(moved) {
            Some(sleep) => thread::sleep(sleep),
            None if moved == 0 => std::hint::spin_loop(),
            None => {}
        }
        let now = tsc::now();
        let spent = now.wrapping_sub(last);
        last = now;
        if moved > 0 {
            frames += moved;
            busy += spent;
            last_busy = now;
        } else {
            idle_cycles += spent;
            if kicks.due(now.wrapping_sub(last_busy)) {
                let slept = kicks.wait(&mut streams, || {
                    stop.load(Ordering::SeqCst) || changes.moved(seen)
                });
                if slept != Slept::No {
                    // The sleep is idle time; the next poll is measured from here.
                    waits.count(slept);
                    counters.publish_waits(waits);
                    last = tsc::now();
                    idle_cycles += last.wrapping_sub(now);
                }
                // Slept or not (frames came meanwhile), the thread polls a whole
                // `sleep_after` again before it tries: one try per idle period.
                // After a sleep nothing ended, one empty poll is enough to go back
                // to sleep: an idle thread then costs one poll per safety-net
                // period, not `sleep_after` of spinning.
                last_busy = if slept == Slept::TimedOut {
                    last.wrapping_sub(kicks.after_cycles())
                } else {
                    last
                };
            }
        }
        counters.publish(frames, busy, idle_cycles);
        polls += 1;
        counters.publish_polls(polls);
    }
    // Let go of every connection's rings and memory before the thread ends.
    drop(streams);
}

/// Makes this thread's sleeps as short as asked: the default timer slack of 50 µs
/// would stretch every short sleep to at least that.
#[allow(unsafe_code)]
fn precise_sleeps() {
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument (nanoseconds) and only
    // changes this thread's timer slack; the unused arguments are zero.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000u64, 0u64, 0u64, 0u64) };
    if rc != 0 {
        log::debug!(
            "pmd thread: cannot reduce timer slack: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream that counts its polls and has `pending` frames it never takes.
    struct Counting {
        name: String,
        polls: Arc<AtomicU64>,
        pending: u64,
    }

    impl Stream for Counting {
        fn name(&self) -> &str {
            &self.name
        }
        fn poll(&mut self, _: &mut Scratch) -> u32 {
            self.polls.fetch_add(1, Ordering::Relaxed);
            0
        }
        fn retire(&mut self) -> u64 {
            self.pending
        }
    }

    fn counting(name: &str, pending: u64) -> (Box<dyn Stream>, Arc<AtomicU64>) {
        let polls = Arc::new(AtomicU64::new(0));
        let s = Counting {
            name: name.to_string(),
            polls: polls.clone(),
            pending,
        };
        (Box::new(s), polls)
    }

    fn wait_polled(polls: &AtomicU64, more_than: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while polls.load(Ordering::Relaxed) <= more_than {
            assert!(std::time::Instant::now() < deadline, "never polled");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn streams_are_added_and_removed_between_polls() {
        let stop = Arc::new(AtomicBool::new(false));
        let (a, a_polls) = counting("a", 0);
        let idle = IdlePolicy {
            max_sleep: Duration::from_micros(50),
            ..IdlePolicy::default()
        };
        let t = PmdThread::spawn(0, vec![a], idle, stop.clone(), Arc::default()).unwrap();
        wait_polled(&a_polls, 0);

        let (b, b_polls) = counting("b", 7);
        let (c, c_polls) = counting("c", 0);
        assert!(t.change(vec![Change::Add(b), Change::Add(c)]).is_empty());
        // Once `change` has returned, the new streams are in the loop.
        wait_polled(&b_polls, 0);
        wait_polled(&c_polls, 0);

        let retired = t.change(vec![Change::Remove(vec!["b".into(), "nosuch".into()])]);
        assert_eq!(retired.len(), 1);
        assert_eq!(retired[0].stream.name(), "b");
        assert_eq!(
            retired[0].in_flight, 7,
            "retire() is asked once, on removal"
        );
        // Handed back, not polled any more; the others go on.
        let after = b_polls.load(Ordering::Relaxed);
        let (a_now, c_now) = (
            a_polls.load(Ordering::Relaxed),
            c_polls.load(Ordering::Relaxed),
        );
        wait_polled(&a_polls, a_now + 10);
        wait_polled(&c_polls, c_now + 10);
        assert_eq!(b_polls.load(Ordering::Relaxed), after);
        drop(retired);

        stop.store(true, Ordering::Release);
        t.join();
    }

    #[test]
    fn a_change_to_a_stopped_thread_returns() {
        let stop = Arc::new(AtomicBool::new(true));
        let t =
            PmdThread::spawn(0, Vec::new(), IdlePolicy::default(), stop, Arc::default()).unwrap();
        while !t.thread.is_finished() {
            thread::sleep(Duration::from_millis(1));
        }
        let (a, _) = counting("a", 0);
        assert!(t.change(vec![Change::Add(a)]).is_empty());
        t.join();
    }

    #[test]
    fn busy_polling_never_sleeps() {
        let mut b = Backoff::new(IdlePolicy::default());
        for _ in 0..10_000 {
            assert_eq!(b.after_poll(0), None);
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum_and_resets_on_work() {
        let max = Duration::from_micros(50);
        let mut b = Backoff::new(IdlePolicy {
            max_sleep: max,
            ..IdlePolicy::default()
        });
        for _ in 1..SPIN_POLLS {
            assert_eq!(b.after_poll(0), None, "spins first");
        }
        let sleeps: Vec<_> = (0..8).filter_map(|_| b.after_poll(0)).collect();
        assert_eq!(sleeps[0], FIRST_SLEEP);
        assert_eq!(sleeps[1], FIRST_SLEEP * 2);
        assert_eq!(*sleeps.last().unwrap(), max);
        assert!(sleeps.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            b.after_poll(FULL_POLL),
            None,
            "a full poll polls again at once"
        );
        assert_eq!(b.after_poll(0), None, "and spins again");
    }

    #[test]
    fn light_polls_back_off_at_once_and_full_polls_halve_the_sleep() {
        let max = Duration::from_micros(50);
        let mut b = Backoff::new(IdlePolicy {
            max_sleep: max,
            ..IdlePolicy::default()
        });
        // A steady trickle: one frame per poll never leaves the queues empty for
        // long, but it is no reason to spin.
        assert_eq!(b.after_poll(1), Some(FIRST_SLEEP), "light: sleep at once");
        assert_eq!(
            b.after_poll(0),
            Some(FIRST_SLEEP * 2),
            "backing off: empty polls sleep too"
        );
        assert_eq!(b.after_poll(FULL_POLL - 1), Some(FIRST_SLEEP * 4));
        for _ in 0..10 {
            b.after_poll(1);
        }
        assert_eq!(b.after_poll(1), Some(max), "capped");
        assert_eq!(
            b.after_poll(FULL_POLL),
            None,
            "a full poll: poll again at once"
        );
        assert_eq!(b.after_poll(0), None, "spins again first");
        assert_eq!(b.after_poll(2), Some(max / 2), "with the sleep halved");
        assert_eq!(b.after_poll(FULL_POLL), None);
        assert_eq!(b.after_poll(FULL_POLL), None);
        assert_eq!(b.after_poll(1), Some(max / 4), "halved per full poll");
        for _ in 0..20 {
            assert_eq!(b.after_poll(FULL_POLL), None);
        }
        assert_eq!(
            b.after_poll(1),
            Some(FIRST_SLEEP),
            "down to the first sleep"
        );
        let mut busy = Backoff::new(IdlePolicy::default());
        assert_eq!(busy.after_poll(1), None, "busy-polling never sleeps");
    }
}
