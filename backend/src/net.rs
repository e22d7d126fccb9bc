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
    /// The offloads negotiated.
    pub offloads: Offloads,
}

/// The offload feature bits a driver negotiated ([`crate::features::OFFLOADS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads(pub u64);

impl Offloads {
    /// None at all.
    pub const NONE: Offloads = Offloads(0);

    #[inline]
    fn has(self, bit: u32) -> bool {
        self.0 & (1 << bit) != 0
    }

    /// HOST_TSO4 (`ipv6` false) or HOST_TSO6: the driver may send TCP to segment.
    #[inline]
    pub fn host_tso(self, ipv6: bool) -> bool {
        use virtio_bindings::virtio_net::{VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6};
        self.has(if ipv6 {
            VIRTIO_NET_F_HOST_TSO6
        } else {
            VIRTIO_NET_F_HOST_TSO4
        })
    }

    /// GUEST_TSO4 (`ipv6` false) or GUEST_TSO6: the driver takes large TCP frames.
    #[inline]
    pub fn guest_tso(self, ipv6: bool) -> bool {
        use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6};
        self.has(if ipv6 {
            VIRTIO_NET_F_GUEST_TSO6
        } else {
            VIRTIO_NET_F_GUEST_TSO4
        })
    }
}

/// One accessor per single-bit offload.
macro_rules! offload_bits {
    ($( $(#[doc = $doc:literal])+ $name:ident => $bit:ident, )+) => {
        impl Offloads {
            $(
                $(#[doc = $doc])+
                #[inline]
                pub fn $name(self) -> bool {
                    self.has(virtio_bindings::virtio_net::$bit)
                }
            )+
        }
    };
}

offload_bits! {
    /// CSUM: the driver may send frames with the checksum left to do. Every other
    /// HOST_* offload needs it, so without it the TX header is not even read.
    host_csum => VIRTIO_NET_F_CSUM,
    /// HOST_ECN: the driver may send TSO frames with CWR set.
    host_ecn => VIRTIO_NET_F_HOST_ECN,
    /// GUEST_CSUM: the driver takes frames whose checksum is left to do.
    guest_csum => VIRTIO_NET_F_GUEST_CSUM,
    /// GUEST_ECN: the driver takes TSO frames with CWR set.
    guest_ecn => VIRTIO_NET_F_GUEST_ECN,
}

/// What goes into RX buffers for one frame: the virtio-net header's offload fields,
/// then `head` (headers vpmd built: a segment's, or a frame's first bytes with the
/// checksum filled in), then `body_len` bytes of `body` from `body_at` on.
#[derive(Clone, Copy)]
pub struct RxFrame<'a> {
    /// Flags, GSO and checksum fields (the first 10 header bytes).
    pub vnet: [u8; 10],
    /// Bytes of vpmd's own ahead of the body.
    pub head: &'a [u8],
    /// The sender's buffers.
    pub body: &'a SegList,
    /// Where in `body` the bytes start.
    pub body_at: u32,
    /// How many.
    pub body_len: u32,
}

impl<'a> RxFrame<'a> {
    /// A frame delivered as it was sent: `len` bytes of `frame`, no offload fields.
    #[inline]
    pub fn whole(frame: &'a SegList, len: u32) -> Self {
        RxFrame {
            vnet: [0; 10],
            head: &[],
            body: frame,
            body_at: 0,
            body_len: len,
        }
    }

    /// Ethernet length.
    #[inline]
    pub fn len(&self) -> u32 {
        self.head.len() as u32 + self.body_len
    }

    /// Whether there are no bytes at all.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Walks the TX chain at `head` into `frame` and strips the virtio-net header.
/// Returns the Ethernet frame length.
/// The header's offload fields are not read: for a driver without CSUM they carry
/// nothing vpmd acts on (see [`take_tx_frame_with_header`]).
#[inline]
pub fn take_tx_frame(
    q: &VirtQueue<'_>,
    head: u16,
    layout: NetLayout,
    frame: &mut SegList,
) -> Result<u32, TxError> {
    take_tx_frame_with_header(q, head, layout, frame, &mut [])
}

/// [`take_tx_frame`], also copying the first `vnet.len()` header bytes into `vnet`
/// (once, while walking: the guest may rewrite them afterwards, and vpmd acts only
/// on this copy).
#[inline]
pub fn take_tx_frame_with_header(
    q: &VirtQueue<'_>,
    head: u16,
    layout: NetLayout,
    frame: &mut SegList,
    vnet: &mut [u8],
) -> Result<u32, TxError> {
    let total = q.chain_with_header(head, layout.hdr_len, frame, vnet)?;
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
    deliver::<true>(q, layout, &RxFrame::whole(frame, len), s)
}

/// Copies `frame` into the RX buffers of `q` behind a virtio-net header made of
/// its offload fields (and `num_buffers`), as [`deliver_rx_frame`] does.
pub fn deliver_rx(
    q: &mut VirtQueue<'_>,
    layout: NetLayout,
    frame: &RxFrame<'_>,
    s: &mut RxScratch,
) -> Result<(), RxError> {
    deliver::<false>(q, layout, frame, s)
}

/// The header of a frame with no offload fields: all zero but `num_buffers` (in
/// the 12-byte form), 1 unless the frame takes more chains.
const PLAIN_HEADER: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

/// Both of the above; `PLAIN`: `frame` is a whole frame without offload fields
/// (the common case, compiled without the rest).
#[inline(always)]
fn deliver<const PLAIN: bool>(
    q: &mut VirtQueue<'_>,
    layout: NetLayout,
    frame: &RxFrame<'_>,
    s: &mut RxScratch,
) -> Result<(), RxError> {
    let start = q.avail_position();
    let need = layout.hdr_len + frame.len();
    let mut src = Cursor::default();
    if !PLAIN && frame.body_at > 0 {
        seglist::skip(frame.body, &mut src, frame.body_at);
    }
    let header = if PLAIN {
        PLAIN_HEADER
    } else {
        let mut h = PLAIN_HEADER;
        h[..10].copy_from_slice(&frame.vnet);
        h
    };
    let mut head_left: &[u8] = if PLAIN { &[] } else { frame.head };
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
                12 => dst.write_array_at(0, &header),
                n => dst.write_at(0, &header[..n as usize]),
            };
            seglist::skip(dst, &mut pos, layout.hdr_len);
            written = layout.hdr_len;
            left -= layout.hdr_len;
        }
        if !PLAIN && !head_left.is_empty() {
            let n = seglist::write(dst, &mut pos, head_left);
            head_left = &head_left[n as usize..];
            written += n;
            left -= n;
        }
        let copied = seglist::copy(dst, &mut pos, frame.body, &mut src, left);
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
