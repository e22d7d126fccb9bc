// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Tests of the data path on rings a mock driver fills in real guest memory.
//!
//! Every test drives the code the polling threads run: `VirtQueue::open` on a
//! `VringRwLock`, `net::take_tx_frame`, `net::deliver_rx_frame`, and the publish
//! and notify done when the burst ends.
//!
//! - [`harness`]: guest memory, rings built from virtio-queue's mock pieces.
//! - [`ring_index`]: index wrap-around, ring placement, avail.idx sanity, kick suppression.
//! - [`tx`]: TX chains: several buffers, split headers, indirect tables, rejected forms.
//! - [`notify`]: when a burst signals the call eventfd (EVENT_IDX, NO_INTERRUPT).
//! - [`rx`]: RX delivery: MRG_RXBUF spreading, multi-buffer chains, rewinds, short buffers.
//! - [`dirty_log`]: the dirty log's layout and bounds, and what a burst marks.
//! - [`props`]: property tests of chain walking, segment copies and translation.

mod dirty_log;
mod harness;
mod notify;
mod props;
mod ring_index;
mod rx;
mod tx;
