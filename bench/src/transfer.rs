// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Checked transfers: send numbered test frames from one device, expect exactly them, in
//! order and intact, on another.
//!
//! At most `window` frames are outstanding, so a receiver whose ring holds more buffers
//! than that never makes the switch drop: any loss is a bug, not congestion.

use std::time::{Duration, Instant};

use crate::frame::{self, Endpoints, FrameError};
use crate::frontend::NetFrontend;

/// Sequence numbers from here up (of the 48 a frame carries) mark warm-up frames, never
/// counted frames.
pub const WARMUP_SEQ: u64 = 1 << 47;

/// What to send.
#[derive(Clone, Debug)]
pub struct TransferSpec {
    /// Frames to send.
    pub count: u64,
    /// Frame sizes, used in turn.
    pub sizes: Vec<usize>,
    /// Destination MAC written into every frame.
    pub dst: [u8; 6],
    /// Source MAC.
    pub src: [u8; 6],
    /// Sequence number of the first frame.
    pub first_seq: u64,
    /// Most frames sent and not yet received.
    pub window: u64,
    /// Longest wait for the next frame before giving up.
    pub idle_timeout: Duration,
}

impl TransferSpec {
    /// Size of the `i`-th frame.
    pub fn size(&self, i: u64) -> usize {
        self.sizes[(i % self.sizes.len() as u64) as usize]
    }

    /// Ethernet bytes of all frames.
    pub fn total_bytes(&self) -> u64 {
        (0..self.count).map(|i| self.size(i) as u64).sum()
    }

    /// Frame addresses: the MACs given, default IPv4 addresses and ports.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            src_mac: self.src,
            dst_mac: self.dst,
            ..Endpoints::default()
        }
    }
}

/// `n` sizes from `min` to `max`: both ends, then a spread in between.
pub fn spread_sizes(min: usize, max: usize, n: usize) -> Vec<usize> {
    let span = max - min + 1;
    let mut v = vec![min, max];
    v.extend((2..n).map(|i| min + (i * 7919) % span));
    v
}

/// A completed transfer.
#[derive(Clone, Copy, Debug)]
pub struct TransferReport {
    /// Frames received intact.
    pub frames: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// A received frame was damaged.
    #[error("frame #{index}")]
    Damaged {
        /// Position in the expected order.
        index: u64,
        /// What was wrong.
        #[source]
        error: FrameError,
    },
    /// A frame arrived out of order (or one was lost).
    #[error("frame #{index}: expected seq {expected}, got {got} (len {len})")]
    OutOfOrder {
        /// Position in the expected order.
        index: u64,
        /// Expected sequence number.
        expected: u64,
        /// Received sequence number.
        got: u64,
        /// Its length.
        len: usize,
    },
    /// A frame had the wrong size.
    #[error("frame seq {seq}: {got} bytes, {expected} sent")]
    WrongSize {
        /// Sequence number.
        seq: u64,
        /// Bytes sent.
        expected: usize,
        /// Bytes received.
        got: usize,
    },
    /// Nothing arrived for `idle_timeout`.
    #[error("timed out after {received} of {count} frames ({sent} sent)")]
    Timeout {
        /// Frames received.
        received: u64,
        /// Frames sent.
        sent: u64,
        /// Frames expected.
        count: u64,
    },
}

/// Runs `spec` from `tx` to `rx`.
pub fn transfer(
    tx: &mut NetFrontend,
    rx: &mut NetFrontend,
    spec: &TransferSpec,
) -> Result<TransferReport, TransferError> {
    let start = Instant::now();
    let mut buf = Vec::with_capacity(spec.sizes.iter().copied().max().unwrap_or(0));
    let (mut sent, mut received, mut bytes) = (0u64, 0u64, 0u64);
    let mut last_progress = Instant::now();
    let ep = spec.endpoints();
    while received < spec.count {
        while sent < spec.count && sent - received < spec.window {
            frame::build(&mut buf, &ep, spec.first_seq + sent, spec.size(sent));
            if !tx.send(&buf) {
                break; // TX ring full: let the backend catch up.
            }
            sent += 1;
        }
        let mut err = None;
        let n = rx.recv_burst(&mut |f: &[u8]| {
            if err.is_some() {
                return;
            }
            let index = received;
            match frame::check(f) {
                Err(error) => err = Some(TransferError::Damaged { index, error }),
                Ok(p) if p.seq != spec.first_seq + index => {
                    err = Some(TransferError::OutOfOrder {
                        index,
                        expected: spec.first_seq + index,
                        got: p.seq,
                        len: f.len(),
                    });
                }
                Ok(p) if p.len != spec.size(index) => {
                    err = Some(TransferError::WrongSize {
                        seq: p.seq,
                        expected: spec.size(index),
                        got: p.len,
                    });
                }
                Ok(p) => {
                    received += 1;
                    bytes += p.len as u64;
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        if n > 0 {
            last_progress = Instant::now();
            continue;
        }
        if last_progress.elapsed() > spec.idle_timeout {
            return Err(TransferError::Timeout {
                received,
                sent,
                count: spec.count,
            });
        }
        rx.wait_rx(Duration::from_millis(5));
    }
    Ok(TransferReport {
        frames: received,
        bytes,
        elapsed: start.elapsed(),
    })
}

/// Sends warm-up frames from `tx` until one arrives on `rx` (a path that drops frames until
/// both ends are up, like DPDK's vhost, is then known to work), then drains `rx` for
/// `settle`. Returns false if nothing arrived within `timeout`.
pub fn warm_up(
    tx: &mut NetFrontend,
    rx: &mut NetFrontend,
    src: [u8; 6],
    dst: [u8; 6],
    timeout: Duration,
    settle: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut seq = WARMUP_SEQ;
    let mut arrived = false;
    let ep = Endpoints {
        src_mac: src,
        dst_mac: dst,
        ..Endpoints::default()
    };
    while !arrived && Instant::now() < deadline {
        frame::build(&mut buf, &ep, seq, 60);
        seq += 1;
        tx.send(&buf);
        rx.wait_rx(Duration::from_millis(20));
        rx.recv_burst(&mut |_: &[u8]| arrived = true);
    }
    let end = Instant::now() + settle;
    while Instant::now() < end {
        rx.wait_rx(Duration::from_millis(5));
        rx.recv_burst(&mut |_: &[u8]| {});
    }
    tx.wait_tx_done(settle);
    arrived
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_cover_both_ends_and_stay_in_range() {
        let v = spread_sizes(60, 1514, 50);
        assert_eq!(v.len(), 50);
        assert!(v.contains(&60) && v.contains(&1514));
        assert!(v.iter().all(|&s| (60..=1514).contains(&s)));
    }
}
