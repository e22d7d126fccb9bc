// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! `ring-loop`'s sampled checks: a received frame intact and from the other port (a
//! test frame, or with `--tso` a TSO frame whole or one of its segments), a TX
//! completion in ring order.

#![allow(unsafe_code)] // descriptors read in place in our guest memory.

use super::report::Checks;
use super::ring::Ring;
use super::tso::{RxOffloads, TsoFrames};
use super::MACS;
use crate::frame;
use crate::pool::BufPool;
use crate::split_queue::SplitQueue;
use crate::virtio_net::NetLayout;

/// What the sampled checks compare against.
pub(super) struct Checker<'p> {
    pool: &'p BufPool,
    /// Pool buffer of each RX descriptor, per receiving port and RX queue pair.
    rx_bufs: [Vec<Vec<u32>>; 2],
    layout: [NetLayout; 2],
    size: usize,
    queue_size: u16,
    /// With `--tso`: the frames A sends and what B negotiated.
    tso: Option<(TsoFrames, RxOffloads)>,
    /// With `--tso`: RX buffers per whole frame on B (above 1: merged), and B's RX
    /// buffer size.
    merged: (u16, usize),
    /// A merged frame gathered for its check (allocated once).
    scratch: Vec<u8>,
    pub(super) every: u64,
    /// Per sending port: check when `received` reaches this.
    pub(super) next_rx: [u64; 2],
    pub(super) next_tx: [u64; 2],
    pub(super) out: Checks,
}

impl<'p> Checker<'p> {
    /// Checks every `every` frames (0: none) of `size` bytes sent over rings of
    /// `queue_size`, received on the RX queues `rx` (one per queue pair; buffers from
    /// `pool`, headers as `layout` says) of ports 0 and 1.
    pub(super) fn new(
        pool: &'p BufPool,
        rx: [&[&SplitQueue]; 2],
        layout: [NetLayout; 2],
        size: usize,
        queue_size: u16,
        every: u64,
    ) -> Self {
        Checker {
            pool,
            rx_bufs: rx.map(|qs| qs.iter().map(|q| desc_bufs(q, pool)).collect()),
            layout,
            size,
            queue_size,
            tso: None,
            merged: (1, 0),
            scratch: Vec::new(),
            every,
            next_rx: [1; 2],
            next_tx: [1; 2],
            out: Checks::default(),
        }
    }

    /// Expects port A's frames to be `frames`, received by a port B that negotiated
    /// `rx`: whole (in RX buffers of `rx_buf` bytes, merged if need be), or cut into
    /// segments (one buffer each).
    pub(super) fn expect_tso(&mut self, frames: TsoFrames, rx: RxOffloads, rx_buf: usize) {
        self.tso = Some((frames, rx));
        let whole = self.layout[1].hdr_len + frames.size();
        let n = if rx.segmented() {
            1
        } else {
            whole.div_ceil(rx_buf)
        };
        self.merged = (n as u16, rx_buf);
        if n > 1 {
            self.scratch = vec![0; whole];
        }
    }

    fn problem(&mut self, p: String) {
        self.out.first_problem.get_or_insert(p);
    }

    /// Checks the last frame `rx` (port `to`'s RX queue of pair `queue`) received, sent
    /// by port `from`.
    #[cold]
    pub(super) fn check_rx(&mut self, rx: &Ring, from: usize, to: usize, queue: usize) {
        self.out.rx_sampled += 1;
        let (id, len) = rx.last_used();
        let hdr_len = self.layout[to].hdr_len;
        let bad = if let Some((t, offloads)) = self.tso {
            self.check_tso(t, offloads, rx, from, to, queue)
        } else if id != rx.last_slot() {
            Some(format!("RX used id {id} in slot {}", rx.last_slot()))
        } else if len as usize != hdr_len + self.size {
            Some(format!(
                "RX used length {len}, expected {}",
                hdr_len + self.size
            ))
        } else {
            let bytes = self
                .pool
                .bytes(self.rx_bufs[to][queue][id as usize], len as usize);
            let (hdr, frame) = bytes.split_at(hdr_len);
            if self.layout[to].num_buffers(hdr) != 1 {
                Some(format!(
                    "num_buffers {} in a one-buffer frame",
                    self.layout[to].num_buffers(hdr)
                ))
            } else if frame[6..12] != MACS[from] {
                Some(format!("frame on port {to} not from port {from}"))
            } else {
                match frame::check(frame) {
                    Ok(p) if p.len == self.size && p.seq < u64::from(self.queue_size) => None,
                    Ok(p) => Some(format!("test frame seq {} of {} bytes", p.seq, p.len)),
                    Err(e) => Some(e.to_string()),
                }
            }
        };
        if let Some(p) = bad {
            self.out.rx_bad += 1;
            self.problem(p);
        }
    }

    /// [`check_rx`](Self::check_rx) with `--tso`: the last frame or segment `rx`
    /// received, gathered from its buffers when merged.
    fn check_tso(
        &mut self,
        t: TsoFrames,
        offloads: RxOffloads,
        rx: &Ring,
        from: usize,
        to: usize,
        queue: usize,
    ) -> Option<String> {
        let hdr_len = self.layout[to].hdr_len;
        let (n, rx_buf) = self.merged;
        // The last entry of a burst ends a frame: its first buffer is n - 1 before.
        let mut got = 0;
        for back in (0..n).rev() {
            let (id, len) = rx.used_before(back);
            let slot = rx.slot_before(back);
            if id != slot {
                return Some(format!("RX used id {id} in slot {slot}"));
            }
            let len = len as usize;
            if len > self.pool.buf_size() as usize
                || (n > 1 && back > 0 && len != rx_buf)
                || (back == 0 && len < hdr_len + 60)
                || got + len > self.scratch.len().max(len)
            {
                return Some(format!(
                    "RX used length {len} in buffer {} of {n}",
                    n - back
                ));
            }
            if n > 1 {
                let bytes = self.pool.bytes(self.rx_bufs[to][queue][id as usize], len);
                self.scratch[got..got + len].copy_from_slice(bytes);
            }
            got += len;
        }
        let (id, len) = rx.last_used();
        let bytes = if n > 1 {
            &self.scratch[..got]
        } else {
            self.pool
                .bytes(self.rx_bufs[to][queue][id as usize], len as usize)
        };
        let (hdr, frame) = bytes.split_at(hdr_len);
        if self.layout[to].num_buffers(hdr) != n {
            return Some(format!(
                "num_buffers {} in a frame of {n} buffer(s)",
                self.layout[to].num_buffers(hdr)
            ));
        }
        let hdr = &hdr[..10];
        if offloads.segmented() {
            return t
                .check_segment(hdr, frame, offloads == RxOffloads::Csum)
                .err();
        }
        match t.check_whole(hdr, frame, MACS[from], MACS[to]) {
            Ok(true) => None,
            Ok(false) => {
                self.out.rx_offload_completed += 1;
                None
            }
            Err(e) => Some(e),
        }
    }

    /// Checks that the last TX completion seen is in ring order.
    #[cold]
    pub(super) fn check_tx(&mut self, tx: &Ring) {
        self.out.tx_sampled += 1;
        let (id, _) = tx.last_used();
        if id != tx.last_slot() {
            self.out.tx_out_of_order += 1;
            self.problem(format!("TX used id {id} in slot {}", tx.last_slot()));
        }
    }
}

/// The pool buffer behind each descriptor of `q`'s table.
fn desc_bufs(q: &SplitQueue, pool: &BufPool) -> Vec<u32> {
    let desc = q.config_data().desc_table_addr as *const u64;
    let stride = pool.addr(1) - pool.addr(0);
    (0..usize::from(q.size()))
        .map(|i| {
            // SAFETY: descriptor `i < size` of the table laid out by `SplitQueue::new`
            // (16 bytes each, `addr` first, 8-byte aligned), mapped while `q` lives; we
            // wrote it and the device only reads it.
            let addr = u64::from_le(unsafe { desc.add(2 * i).read_volatile() });
            ((addr - pool.addr(0)) / stride) as u32
        })
        .collect()
}
