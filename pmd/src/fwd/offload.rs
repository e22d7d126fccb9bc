// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! One frame, with what its sender's virtio-net header asks for, delivered to one
//! guest: passed through when the receiver negotiated the offload, else done here.
//!
//! | the sender asks for | receiver negotiated              | vpmd                                          |
//! |---------------------|----------------------------------|-----------------------------------------------|
//! | nothing             | anything                         | copies the frame                              |
//! | a checksum          | GUEST_CSUM                       | copies frame and header (NEEDS_CSUM)          |
//! | a checksum          | not GUEST_CSUM                   | fills the checksum in while copying           |
//! | TSO                 | GUEST_TSO4/6 (+ GUEST_ECN if CWR) | copies frame and header, up to 64 KiB         |
//! | TSO                 | GUEST_CSUM only                  | segments, checksums left partial (NEEDS_CSUM) |
//! | TSO                 | neither                          | segments, every checksum filled in            |
//!
//! Every path copies the payload once, from the sender's buffers straight into the
//! receiver's; only headers vpmd rebuilds (at most [`MAX_HEADERS`] bytes) go through
//! its own memory. The headers a decision rests on are read once into that memory
//! and checked there ([`Segmenter::new`]), so a guest rewriting its buffers
//! meanwhile can spoil only its own payload, never make vpmd step outside a frame.

use vpmd_backend::net::{RxFrame, RxScratch};
use vpmd_backend::offload::csum::Checksum;
use vpmd_backend::offload::headers::MAX_HEADERS;
use vpmd_backend::offload::segment::{checksum_field, Segmenter};
use vpmd_backend::offload::vnet_hdr::{self, GsoKind, Request, VnetHdr};
use vpmd_backend::offload::{self, OffloadError};
use vpmd_backend::seglist::{self, SegList};

use super::{deliver, deliver_frame, RxTarget, L2_OVERHEAD};
use crate::counters::{DropReason, OffloadEvent, PortTally};
use crate::ratelimit::LogLimiter;

/// Longest frame a TSO request may carry: an IP packet of 65535 bytes behind an
/// Ethernet header and one VLAN tag.
pub const MAX_GSO_FRAME: u32 = 65535 + L2_OVERHEAD;

/// What a sender's frame asks for, read from its header once and checked at the
/// sender (so a lie is counted and logged under the port that told it, once, and
/// never depends on who receives the frame).
#[derive(Debug, Clone, Copy)]
pub struct TxOffload {
    /// The checked request.
    pub request: Request,
    /// The header's offload fields as the sender wrote them (passed on unchanged).
    pub vnet: [u8; vnet_hdr::LEN],
}

impl TxOffload {
    /// A frame that asks for nothing.
    pub const NONE: TxOffload = TxOffload {
        request: Request::None,
        vnet: [0; vnet_hdr::LEN],
    };

    /// A frame whose checksum from `start` on is left to do, stored at
    /// `start + offset` (a partial checksum from an uplink).
    pub fn checksum(start: u16, offset: u16) -> TxOffload {
        TxOffload {
            request: Request::Checksum { start, offset },
            vnet: partial(start, offset),
        }
    }

    /// The request in `vnet` (the sender's header bytes) of `frame` (`len` bytes),
    /// checked against the frame and the `sender`'s negotiated offloads. A TSO
    /// frame's headers are read once and checked here; its segmentation plan goes
    /// into `plan`.
    #[inline(never)]
    pub fn check(
        vnet: [u8; vnet_hdr::LEN],
        sender: vpmd_backend::net::Offloads,
        frame: &SegList,
        len: u32,
        plan: &mut Option<Segmenter>,
    ) -> Result<TxOffload, OffloadError> {
        if !sender.host_csum() {
            return Ok(TxOffload::NONE);
        }
        let request = offload::tx_request(&vnet, sender, len as usize)?;
        match request {
            Request::None => {}
            Request::Checksum { start, offset } => {
                // vpmd fills a checksum in within the headers it copies itself.
                let field = usize::from(start) + usize::from(offset);
                if field + 2 > MAX_HEADERS {
                    return Err(OffloadError::ChecksumTooDeep(field));
                }
            }
            Request::Segment { .. } => {
                let mut head = [0u8; MAX_HEADERS];
                let n = frame.read_at(0, &mut head[..(len as usize).min(MAX_HEADERS)]);
                *plan = Some(Segmenter::new(request, &head[..n as usize], len as usize)?);
            }
        }
        Ok(TxOffload { request, vnet })
    }
}

/// What became of one frame sent to one receiver: frames delivered (a segmented
/// frame's segments, else 0 or 1) and their bytes, frames dropped and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// Frames the receiver got.
    pub delivered: u32,
    /// Their Ethernet bytes.
    pub bytes: u64,
    /// Frames dropped (the rest of a frame's segments once one failed).
    pub dropped: u32,
    /// Why, when `dropped` > 0.
    pub reason: DropReason,
}

impl Sent {
    /// `n` frames dropped for `reason`, none delivered.
    #[inline]
    pub fn dropped(n: u32, reason: DropReason) -> Sent {
        Sent {
            delivered: 0,
            bytes: 0,
            dropped: n,
            reason,
        }
    }

    /// One frame of `len` bytes delivered, or dropped for the reason in `result`.
    #[inline]
    pub fn one(result: Result<(), DropReason>, len: u32) -> Sent {
        match result {
            Ok(()) => Sent {
                delivered: 1,
                bytes: u64::from(len),
                dropped: 0,
                reason: DropReason::NoDestination,
            },
            Err(reason) => Sent::dropped(1, reason),
        }
    }
}

/// Space for headers vpmd rebuilds, one per polling thread.
pub struct OffloadScratch {
    head: [u8; MAX_HEADERS],
}

impl OffloadScratch {
    /// Empty scratch.
    pub fn new() -> Self {
        OffloadScratch {
            head: [0; MAX_HEADERS],
        }
    }
}

impl Default for OffloadScratch {
    fn default() -> Self {
        Self::new()
    }
}

/// The scratch space [`send`] works in.
pub struct SendScratch<'s> {
    /// For RX delivery.
    pub rx: &'s mut RxScratch,
    /// For rebuilt headers.
    pub offload: &'s mut OffloadScratch,
}

/// Where a frame is delivered by [`send_to`]: an open RX queue, or why there is none.
pub type Target<'r, 'q> = Result<&'r mut RxTarget<'q>, DropReason>;

/// [`send`] into `target`, with the common case (nothing asked of the offloads)
/// inlined into the caller's burst loop; a frame with no target is dropped for the
/// reason given. The one dispatch of veth's and macvlan's delivery loops.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn send_to(
    target: Target<'_, '_>,
    frame: &SegList,
    len: u32,
    tx: &TxOffload,
    plan: Option<&Segmenter>,
    max_frame: u32,
    s: SendScratch<'_>,
    tally: &mut PortTally,
    log: &mut LogLimiter,
    port: &str,
) -> Sent {
    match target {
        Ok(rx) if matches!(tx.request, Request::None) => {
            send_plain(rx, frame, len, max_frame, s.rx, log, port)
        }
        Ok(rx) => send(rx, frame, len, tx, plan, max_frame, s, tally, log, port),
        Err(reason) => Sent::dropped(1, reason),
    }
}

/// Delivers `frame` (`len` bytes, asking for `tx`, with the segmentation `plan`
/// [`TxOffload::check`] made for a TSO frame) into `rx`, whose guest accepts frames
/// of at most `max_frame` bytes. Offload work is counted in the sender's `tally`;
/// the caller counts what [`Sent`] says.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub fn send(
    rx: &mut RxTarget<'_>,
    frame: &SegList,
    len: u32,
    tx: &TxOffload,
    plan: Option<&Segmenter>,
    max_frame: u32,
    s: SendScratch<'_>,
    tally: &mut PortTally,
    log: &mut LogLimiter,
    port: &str,
) -> Sent {
    match tx.request {
        Request::None => send_plain(rx, frame, len, max_frame, s.rx, log, port),
        Request::Checksum { start, offset } => {
            if len > max_frame {
                return Sent::dropped(1, DropReason::TooBig);
            }
            if rx.layout.offloads.guest_csum() {
                let out = RxFrame {
                    vnet: partial(start, offset),
                    ..RxFrame::whole(frame, len)
                };
                let sent = Sent::one(deliver_frame(rx, &out, s.rx, log, port), len);
                tally.offload(OffloadEvent::CsumPassed, u64::from(sent.delivered));
                return sent;
            }
            let Some(head) = complete_checksum(frame, len, start, offset, &mut s.offload.head)
            else {
                // The guest shortened its chain under vpmd: cannot happen with a
                // frame of `len` bytes, whose checks held.
                return Sent::dropped(1, DropReason::BadOffload);
            };
            let out = RxFrame {
                vnet: [0; vnet_hdr::LEN],
                head: &s.offload.head[..head],
                body: frame,
                body_at: head as u32,
                body_len: len - head as u32,
            };
            let sent = Sent::one(deliver_frame(rx, &out, s.rx, log, port), len);
            tally.offload(OffloadEvent::SwChecksummed, u64::from(sent.delivered));
            sent
        }
        Request::Segment {
            kind, ipv6, size, ..
        } => {
            if len > MAX_GSO_FRAME {
                return Sent::dropped(1, DropReason::TooBig);
            }
            let Some(seg) = plan else {
                return Sent::dropped(1, DropReason::BadOffload);
            };
            let o = rx.layout.offloads;
            let ecn = tx.vnet[1] & vnet_hdr::GSO_ECN != 0;
            if kind == GsoKind::Tcp && o.guest_tso(ipv6) && (!ecn || o.guest_ecn()) {
                let out = RxFrame {
                    vnet: tx.vnet,
                    ..RxFrame::whole(frame, len)
                };
                let sent = Sent::one(deliver_frame(rx, &out, s.rx, log, port), len);
                tally.offload(OffloadEvent::TsoPassed, u64::from(sent.delivered));
                return sent;
            }
            if seg.header_len() as u32 + u32::from(size) > max_frame {
                return Sent::dropped(1, DropReason::TooBig);
            }
            segment(rx, frame, seg, s, tally, log, port)
        }
    }
}

/// [`send`] for a frame that asks for nothing, the common case: inlined into the
/// engines' loops, with none of the offload work.
#[inline]
pub fn send_plain(
    rx: &mut RxTarget<'_>,
    frame: &SegList,
    len: u32,
    max_frame: u32,
    scratch: &mut RxScratch,
    log: &mut LogLimiter,
    port: &str,
) -> Sent {
    if len > max_frame {
        return Sent::dropped(1, DropReason::TooBig);
    }
    Sent::one(deliver(rx, frame, len, scratch, log, port), len)
}

/// Cuts the frame into `seg`'s segments, straight into `rx`. Once one segment
/// cannot be delivered the rest are dropped for the same reason (the receiver is
/// full or broken: trying them would only fail again).
fn segment(
    rx: &mut RxTarget<'_>,
    frame: &SegList,
    seg: &Segmenter,
    s: SendScratch<'_>,
    tally: &mut PortTally,
    log: &mut LogLimiter,
    port: &str,
) -> Sent {
    let count = seg.count() as u32;
    let partial_ok = rx.layout.offloads.guest_csum();
    let head_len = seg.header_len();
    let mut sent = Sent {
        delivered: 0,
        bytes: 0,
        dropped: 0,
        reason: DropReason::NoDestination,
    };
    for i in 0..seg.count() {
        let part = seg.segment(i);
        let vnet = if partial_ok {
            let (start, offset) = seg.write_headers_partial(i, &mut s.offload.head);
            partial(start, offset)
        } else {
            let mut sum = Checksum::new();
            seglist::sum(
                frame,
                part.payload_at as u32,
                part.payload_len as u32,
                &mut sum,
            );
            seg.write_headers(i, sum, &mut s.offload.head);
            [0; vnet_hdr::LEN]
        };
        let out = RxFrame {
            vnet,
            head: &s.offload.head[..head_len],
            body: frame,
            body_at: part.payload_at as u32,
            body_len: part.payload_len as u32,
        };
        match deliver_frame(rx, &out, s.rx, log, port) {
            Ok(()) => {
                sent.delivered += 1;
                sent.bytes += u64::from(out.len());
            }
            Err(reason) => {
                sent.dropped = count - sent.delivered;
                sent.reason = reason;
                break;
            }
        }
    }
    // Counted only for a frame that got anywhere (forwarded, its lost segments in the
    // receiver's rx_dropped); one that got nowhere is a single drop, like any frame.
    if sent.delivered > 0 {
        tally.offload(OffloadEvent::SwSegmented, 1);
        tally.offload(OffloadEvent::SwSegments, u64::from(count));
    }
    sent
}

/// A header asking the receiver to finish the checksum at `start` + `offset`.
#[inline]
fn partial(start: u16, offset: u16) -> [u8; vnet_hdr::LEN] {
    VnetHdr {
        flags: vnet_hdr::F_NEEDS_CSUM,
        csum_start: start,
        csum_offset: offset,
        ..VnetHdr::default()
    }
    .to_bytes()
}

/// Copies the frame's first bytes, up to and including the checksum field, into
/// `head` and fills the field in there: the sum of the frame from `start` on (the
/// field holds the pseudo-header sum), as `skb_checksum_help` does. Returns how
/// many bytes `head` holds; `None` if the frame is shorter than that or the field
/// lies past `head` ([`TxOffload::check`] refused both).
fn complete_checksum(
    frame: &SegList,
    len: u32,
    start: u16,
    offset: u16,
    head: &mut [u8; MAX_HEADERS],
) -> Option<usize> {
    let field = usize::from(start) + usize::from(offset);
    let end = field + 2;
    if end > MAX_HEADERS || frame.read_at(0, &mut head[..end]) != end as u32 || end > len as usize {
        return None;
    }
    let mut sum = Checksum::new();
    // The bytes from `start` to the field's end come from our copy, the rest from
    // the frame: the field's value is computed from the copy that is delivered.
    // (Checksum carries an odd-length piece over into the next.)
    sum.add(&head[usize::from(start)..end]);
    seglist::sum(frame, end as u32, len - end as u32, &mut sum);
    let value = checksum_field(sum);
    head[field..end].copy_from_slice(&value.to_be_bytes());
    Some(end)
}

/// Logs (rate-limited) a frame dropped because its header lies; the caller counts
/// it as `bad_offload` under the port that sent it.
#[cold]
pub fn bad_offload(log: &mut LogLimiter, port: &str, e: &OffloadError) {
    if let Some(held_back) = log.allow() {
        log::warn!(
            "port {port}: frame dropped, its virtio-net header does not fit it: {e} \
             ({held_back} similar messages held back)"
        );
    }
}
