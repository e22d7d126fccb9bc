// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! virtio-net frame semantics on top of [`VirtQueue`]: taking a frame from a TX
//! chain and delivering one into RX buffers (virtio 1.x, 5.1.6).
//!
//! A frame is never copied into a buffer of ours: [`take_tx_frame`] only translates
//! the TX chain into segments (header stripped), and [`deliver_rx_frame`] copies
//! those segments straight into the receiving guest's RX buffers.

use crate::chain::ChainError;
use crate::seglist::{self, Cursor, SegList};
use crate::virtqueue::VirtQueue;

/// Most RX buffers one frame may be spread over (MRG_RXBUF).
pub const MAX_RX_BUFFERS: usize = 64;

/// Offset of `num_buffers` in `virtio_net_hdr_mrg_rxbuf`.
const NUM_BUFFERS_OFFSET: u32 = 10;

/// The RX header: no offloads are negotiated, so all zero but `num_buffers` (in
/// the 12-byte form), 1 unless the frame takes more chains.
const RX_HEADER: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// Why a TX chain does not carry a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The chain is malformed.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The chain is shorter than the virtio-net header.
    #[error("chain shorter than the virtio-net header")]
    ShortHeader,
}

/// Why a frame was not delivered into RX buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RxError {
    /// Not enough RX buffers (or too small ones without MRG_RXBUF).
    #[error("no RX buffers")]
    NoBuffers,
    /// A malformed RX chain; the chains taken for this frame were returned empty.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The first RX buffer cannot hold the virtio-net header.
    #[error("RX buffer smaller than the virtio-net header")]
    ShortHeader,
}

/// Layout facts of one port's negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLayout {
    /// virtio-net header size: 12 with VERSION_1 or MRG_RXBUF, else 10.
    pub hdr_len: u32,
    /// MRG_RXBUF negotiated: frames may span several RX chains.
    pub mrg_rxbuf: bool,
}

/// Walks the TX chain at `head` into `frame` and strips the virtio-net header.
/// Returns the Ethernet frame length.
#[inline]
pub fn take_tx_frame(
    q: &VirtQueue<'_>,
    head: u16,
    layout: NetLayout,
    frame: &mut SegList,
) -> Result<u32, TxError> {
    let total = q.chain_skipping(head, false, layout.hdr_len, frame)?;
    if total < layout.hdr_len {
        return Err(TxError::ShortHeader);
    }
    Ok(frame.total())
}

/// Scratch space for [`deliver_rx_frame`], kept per polling thread.
#[derive(Default)]
pub struct RxScratch {
    first: SegList,
    next: SegList,
    used: Vec<(u16, u32)>,
}

impl RxScratch {
    /// Scratch with room for [`MAX_RX_BUFFERS`] used entries (the only allocation).
    pub fn new() -> Self {
        RxScratch {
            first: SegList::default(),
            next: SegList::default(),
            used: Vec::with_capacity(MAX_RX_BUFFERS),
        }
    }
}

/// Copies `frame` (`len` bytes) into the RX buffers of `q`, behind a virtio-net header.
/// On error no buffer is consumed, except chains found malformed, which are returned
/// to the driver empty so that they are not retried forever.
pub fn deliver_rx_frame(
    q: &mut VirtQueue<'_>,
    layout: NetLayout,
    frame: &SegList,
    len: u32,
    s: &mut RxScratch,
) -> Result<(), RxError> {
    let start = q.avail_position();
    let need = layout.hdr_len + len;
    let mut src = Cursor::default();
    let mut left = need;
    s.used.clear();
    while left > 0 {
        let Some(head) = q.pop() else {
            q.rewind(start);
            return Err(RxError::NoBuffers);
        };
        let first = s.used.is_empty();
        let dst = if first { &mut s.first } else { &mut s.next };
        if let Err(e) = q.chain(head, true, dst) {
            // Return every chain taken for this frame, the bad one last, empty.
            for &(h, _) in &s.used {
                q.push_used(h, 0);
            }
            q.push_used(head, 0);
            return Err(e.into());
        }
        let dst: &SegList = if first { &s.first } else { &s.next };
        let mut pos = Cursor::default();
        let mut written = 0;
        if first {
            if dst.total() < layout.hdr_len {
                // Unusable for any frame: hand it back empty rather than retry it forever.
                q.push_used(head, 0);
                return Err(RxError::ShortHeader);
            }
            if !layout.mrg_rxbuf && dst.total() < need {
                q.rewind(start);
                return Err(RxError::NoBuffers);
            }
            match layout.hdr_len {
                12 => dst.write_array_at(0, &RX_HEADER),
                n => dst.write_at(0, &RX_HEADER[..n as usize]),
            };
            seglist::skip(dst, &mut pos, layout.hdr_len);
            written = layout.hdr_len;
            left -= layout.hdr_len;
        }
        let copied = seglist::copy(dst, &mut pos, frame, &mut src, left);
        written += copied;
        left -= copied;
        s.used.push((head, written));
        if left > 0 && (!layout.mrg_rxbuf || s.used.len() == MAX_RX_BUFFERS) {
            q.rewind(start);
            return Err(RxError::NoBuffers);
        }
    }
    // The 12-byte header has num_buffers: the chains used with MRG_RXBUF, and 1
    // without it (virtio 1.x 5.1.6.4.1: VERSION_1 drivers get the 12-byte header
    // even without MRG_RXBUF, and the device MUST set num_buffers to 1 then).
    // RX_HEADER wrote 1; only a frame over several chains needs the real count.
    let n = s.used.len() as u16;
    if layout.hdr_len > NUM_BUFFERS_OFFSET && n > 1 {
        s.first.write_array_at(NUM_BUFFERS_OFFSET, &n.to_le_bytes());
    }
    for &(h, l) in &s.used {
        q.push_used(h, l);
    }
    Ok(())
}
