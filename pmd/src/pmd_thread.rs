//! A polling thread: pinned to one core, it polls its streams round-robin until told
//! to stop, and accounts its time in TSC cycles (busy: polls that moved frames; idle:
//! polls that moved none), as OVS's `dpif-netdev/pmd-stats-show` does.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::counters::ThreadCounters;
use crate::fwd::{Scratch, Stream};
use crate::tsc;

/// A running polling thread.
pub struct PmdThread {
    core: usize,
    thread: JoinHandle<()>,
}

impl PmdThread {
    /// Starts a thread pinned to `core` that polls `streams` until `stop` is set.
    pub fn spawn(
        core: usize,
        streams: Vec<Box<dyn Stream>>,
        stop: Arc<AtomicBool>,
        counters: Arc<ThreadCounters>,
    ) -> io::Result<PmdThread> {
        let thread = thread::Builder::new()
            .name(format!("pmd-core{core}"))
            .spawn(move || {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    log::warn!("pmd thread: cannot pin to core {core}; polling unpinned");
                }
                run(streams, &stop, &counters);
            })?;
        Ok(PmdThread { core, thread })
    }

    /// Waits for the thread to end (after `stop` was set).
    pub fn join(self) {
        if self.thread.join().is_err() {
            log::error!("pmd thread on core {} panicked", self.core);
        }
    }
}

fn run(mut streams: Vec<Box<dyn Stream>>, stop: &AtomicBool, counters: &ThreadCounters) {
    let mut scratch = Scratch::new();
    let (mut frames, mut busy, mut idle) = (0u64, 0u64, 0u64);
    let mut last = tsc::now();
    while !stop.load(Ordering::Relaxed) {
        let mut moved = 0u64;
        for s in streams.iter_mut() {
            moved += u64::from(s.poll(&mut scratch));
        }
        let now = tsc::now();
        let spent = now.wrapping_sub(last);
        last = now;
        if moved > 0 {
            frames += moved;
            busy += spent;
        } else {
            idle += spent;
            std::hint::spin_loop();
        }
        counters.publish(frames, busy, idle);
    }
    // Let go of every connection's rings and memory before the thread ends.
    drop(streams);
}
