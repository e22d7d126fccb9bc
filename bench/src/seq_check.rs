// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Receiver-side accounting of test frames: what arrived intact, corrupted or not at all,
//! in order or not.
//!
//! Sequence numbers are expected to rise by one from a known first value (one sender,
//! one queue: a switch keeps their order). A frame above the next expected number leaves
//! a gap (counted missing); a frame below it is either a late one that fills a gap
//! (reordered) or a duplicate, told apart by a bitmap of the last [`WINDOW`] numbers.
//! A damaged frame whose test header is still readable is counted corrupted *and* placed
//! in the sequence (the sender's `--corrupt-every` damages payload bytes only), so loss
//! and corruption stay separate.

use serde::Serialize;

use crate::frame::{self, FrameError, Probe};

/// Sequence numbers remembered for telling late frames from duplicates.
pub const WINDOW: u64 = 1 << 16;

/// Totals of a receiver.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SeqReport {
    /// Test frames received, intact or not.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Frames that passed every check.
    pub intact: u64,
    /// Frames that failed a check (checksum, length, IPv4 header, too short).
    pub corrupted: u64,
    /// Frames that are not test frames (another protocol, no magic).
    pub foreign: u64,
    /// Expected sequence numbers never seen.
    pub lost: u64,
    /// Frames that arrived after a higher sequence number.
    pub reordered: u64,
    /// Frames whose sequence number had already been seen.
    pub duplicates: u64,
    /// Lowest sequence number expected.
    pub first_seq: u64,
    /// Highest sequence number seen, if any.
    pub last_seq: Option<u64>,
}

/// Running accounting; feed it every received frame.
pub struct SeqTracker {
    first: u64,
    next: u64,
    seen: Vec<u64>,
    missing: u64,
    r: SeqReport,
}

impl SeqTracker {
    /// Expects sequence numbers from `first_seq` up.
    pub fn new(first_seq: u64) -> Self {
        SeqTracker {
            first: first_seq,
            next: first_seq,
            seen: vec![0; (WINDOW / 64) as usize],
            missing: 0,
            r: SeqReport {
                first_seq,
                ..SeqReport::default()
            },
        }
    }

    /// Checks and accounts one received frame; returns what [`frame::check`] said.
    #[inline]
    pub fn observe(&mut self, f: &[u8]) -> Result<Probe, FrameError> {
        let res = frame::check(f);
        match res {
            Ok(p) => {
                self.r.intact += 1;
                self.count(p.seq, f.len());
            }
            Err(FrameError::NotProbe) => self.r.foreign += 1,
            Err(e) => {
                self.r.corrupted += 1;
                match e.seq() {
                    Some(seq) => self.count(seq, f.len()),
                    None => {
                        self.r.frames += 1;
                        self.r.bytes += f.len() as u64;
                    }
                }
            }
        }
        res
    }

    /// Test frames received so far.
    pub fn frames(&self) -> u64 {
        self.r.frames
    }

    /// The totals. With `expected` (frames the sender sent from the first sequence number
    /// on), `lost` is what never arrived of them; without, the gaps seen so far.
    pub fn report(&self, expected: Option<u64>) -> SeqReport {
        let unique = self.r.frames - self.r.duplicates;
        SeqReport {
            lost: expected.map_or(self.missing, |e| e.saturating_sub(unique)),
            ..self.r
        }
    }

    fn count(&mut self, seq: u64, len: usize) {
        if seq < self.first {
            // Older than anything expected (a stray from an earlier run): not ours.
            self.r.foreign += 1;
            return;
        }
        self.r.frames += 1;
        self.r.bytes += len as u64;
        self.r.last_seq = Some(self.r.last_seq.map_or(seq, |l| l.max(seq)));
        if seq >= self.next {
            let gap = seq - self.next;
            self.missing += gap;
            if gap >= WINDOW {
                self.seen.fill(0);
            } else {
                for s in self.next..seq {
                    self.clear(s);
                }
            }
            self.set(seq);
            self.next = seq + 1;
        } else if self.next - seq > WINDOW {
            self.r.reordered += 1;
            self.missing = self.missing.saturating_sub(1);
        } else if self.is_set(seq) {
            self.r.duplicates += 1;
        } else {
            self.set(seq);
            self.r.reordered += 1;
            self.missing = self.missing.saturating_sub(1);
        }
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, m) = Self::bit(seq);
        self.seen[w] |= m;
    }

    fn clear(&mut self, seq: u64) {
        let (w, m) = Self::bit(seq);
        self.seen[w] &= !m;
    }

    fn is_set(&self, seq: u64) -> bool {
        let (w, m) = Self::bit(seq);
        self.seen[w] & m != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Endpoints, FrameTemplate};

    fn frames(seqs: &[u64]) -> Vec<Vec<u8>> {
        let t = FrameTemplate::new(&Endpoints::default(), 64).unwrap();
        seqs.iter()
            .map(|&s| {
                let mut f = vec![0; 64];
                t.write(&mut f, s, 0, 0);
                f
            })
            .collect()
    }

    fn run(first: u64, seqs: &[u64], expected: Option<u64>) -> SeqReport {
        let mut t = SeqTracker::new(first);
        for f in frames(seqs) {
            let _ = t.observe(&f);
        }
        t.report(expected)
    }

    #[test]
    fn in_order_stream_is_clean() {
        let r = run(5, &[5, 6, 7, 8], Some(4));
        assert_eq!(
            (r.frames, r.intact, r.lost, r.reordered, r.duplicates),
            (4, 4, 0, 0, 0)
        );
        assert_eq!((r.bytes, r.last_seq), (256, Some(8)));
    }

    #[test]
    fn gaps_late_frames_and_duplicates_are_told_apart() {
        let r = run(0, &[0, 2, 3, 1, 3, 6], None);
        assert_eq!(r.reordered, 1, "1 came after 2");
        assert_eq!(r.duplicates, 1, "3 twice");
        assert_eq!(r.lost, 2, "4 and 5 never came");
        let r = run(0, &[0, 2, 3, 1, 3, 6], Some(8));
        assert_eq!(r.lost, 3, "4, 5 and 7 of 0..8");
    }

    #[test]
    fn corrupted_frames_count_once_and_keep_their_place() {
        let mut t = SeqTracker::new(0);
        for (i, mut f) in frames(&[0, 1, 2, 3]).into_iter().enumerate() {
            if i == 2 {
                frame::corrupt(&mut f);
            }
            let _ = t.observe(&f);
        }
        let _ = t.observe(&[0u8; 64]); // not a test frame
        let r = t.report(Some(4));
        assert_eq!((r.frames, r.intact, r.corrupted), (4, 3, 1));
        assert_eq!((r.lost, r.reordered, r.foreign), (0, 0, 1));
    }

    #[test]
    fn window_is_recycled_after_a_long_run() {
        let seqs: Vec<u64> = (0..3 * WINDOW).collect();
        let r = run(0, &seqs, Some(3 * WINDOW));
        assert_eq!((r.lost, r.duplicates, r.reordered), (0, 0, 0));
        let r = run(0, &[0, WINDOW + 10, 3], None);
        assert_eq!((r.reordered, r.duplicates), (1, 0));
    }
}
