// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Fuzz target: the offload request of a virtio-net header and the segmentation of
//! the frame behind it, as a guest can write both.
//!
//! Input: byte 0 the sender's negotiated offloads (bit 0 CSUM, 1 HOST_TSO4, 2
//! HOST_TSO6, 3 HOST_ECN), bytes 1..11 the header's offload fields, the rest the
//! frame. Whatever they say, `tx_request` and `Segmenter` must answer without
//! panicking, reading past the frame or planning more than `MAX_SEGMENTS`
//! segments, and a plan must cover the payload exactly, each segment's headers
//! writable in `MAX_HEADERS` bytes (full and partial checksums alike).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpmd_backend::net::Offloads;
use vpmd_backend::offload::csum::Checksum;
use vpmd_backend::offload::headers::MAX_HEADERS;
use vpmd_backend::offload::segment::{Segmenter, MAX_SEGMENTS};
use vpmd_backend::offload::vnet_hdr::{Request, LEN};
use vpmd_backend::offload::tx_request;

fuzz_target!(|data: &[u8]| {
    if data.len() < 1 + LEN {
        return;
    }
    let bits = [0u32, 11, 12, 13]; // CSUM, HOST_TSO4, HOST_TSO6, HOST_ECN
    let sender = Offloads(
        bits.iter()
            .enumerate()
            .filter(|(i, _)| data[0] & (1 << i) != 0)
            .fold(0u64, |acc, (_, b)| acc | (1 << b)),
    );
    let mut vnet = [0u8; LEN];
    vnet.copy_from_slice(&data[1..1 + LEN]);
    let frame = &data[1 + LEN..];
    let Ok(request) = tx_request(&vnet, sender, frame.len()) else {
        return;
    };
    match request {
        Request::None => {}
        Request::Checksum { start, offset } => {
            assert!(usize::from(start) + usize::from(offset) + 2 <= frame.len());
        }
        Request::Segment { .. } => {
            let head = &frame[..frame.len().min(MAX_HEADERS)];
            let Ok(plan) = Segmenter::new(request, head, frame.len()) else {
                return;
            };
            assert!(plan.count() >= 1 && plan.count() <= MAX_SEGMENTS);
            let mut covered = plan.header_len();
            let mut out = [0u8; MAX_HEADERS];
            for i in 0..plan.count() {
                let s = plan.segment(i);
                assert_eq!(s.payload_at, covered, "segments follow each other");
                covered += s.payload_len;
                assert!(covered <= frame.len());
                let mut sum = Checksum::new();
                sum.add(&frame[s.payload_at..s.payload_at + s.payload_len]);
                plan.write_headers(i, sum, &mut out);
                let _ = plan.write_headers_partial(i, &mut out);
            }
            assert_eq!(covered, frame.len(), "the payload covered exactly");
        }
    }
});
