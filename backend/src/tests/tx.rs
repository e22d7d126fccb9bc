// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! TX chains: frames over several buffers, split headers, header length by
//! features, indirect tables, and every malformed form being reported.

use super::harness::*;
use crate::chain::ChainError;
use crate::net::{take_tx_frame, NetLayout, TxError};
use crate::seglist::SegList;
use crate::split_ring::{DESC_F_INDIRECT, DESC_F_NEXT};

/// Takes every available TX chain in one burst, returning each as the frame bytes
/// or the error, and marks each used (length 0) as a TX loop does.
fn take_all(ring: &Ring, layout: NetLayout) -> Vec<Result<Vec<u8>, TxError>> {
    let mut q = ring.burst();
    let mut seg = SegList::default();
    let mut out = Vec::new();
    while let Some(head) = q.pop() {
        let r = take_tx_frame(&q, head, layout, &mut seg).map(|len| {
            assert_eq!(len, seg.total());
            bytes_of(&seg)
        });
        out.push(r);
        q.push_used(head, 0);
    }
    out
}

fn take_one(ring: &Ring, layout: NetLayout) -> Result<Vec<u8>, TxError> {
    let mut all = take_all(ring, layout);
    assert_eq!(all.len(), 1);
    all.pop().unwrap()
}

#[test]
fn frame_over_several_buffers_is_taken_in_order() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 16);
    let frame = pattern(1000, 1);
    // header alone, then the frame over four buffers
    let h1 = tx.add_tx_frame(12, &frame, &[12, 20, 30, 100]);
    // frame over three buffers, the header in front of the first
    let h2 = tx.add_tx_frame(12, &frame, &[40, 500]);
    let got = take_all(&tx, v1(true));
    assert_eq!(got, vec![Ok(frame.clone()), Ok(frame)]);
    assert_eq!(tx.used_idx(), 2);
    assert_eq!(tx.used_elem(0), (u32::from(h1), 0));
    assert_eq!(tx.used_elem(1), (u32::from(h2), 0));
}

#[test]
fn header_split_over_two_buffers() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 16);
    let frame = pattern(300, 2);
    tx.add_tx_frame(12, &frame, &[5, 10]); // 5 + 7 header bytes, 3 frame bytes with them
    tx.add_tx_frame(12, &frame, &[4, 8]); // header ends exactly at a buffer's end
    tx.add_tx_frame(12, &frame, &[1, 1, 1, 9]); // header over four buffers
    assert_eq!(
        take_all(&tx, v1(false)),
        vec![Ok(frame.clone()), Ok(frame.clone()), Ok(frame)]
    );
}

#[test]
fn header_length_follows_features() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 16);
    let frame = pattern(64, 3);
    assert_eq!(
        (legacy().hdr_len, v1(false).hdr_len, v1(true).hdr_len),
        (10, 12, 12)
    );
    tx.add_tx_frame(10, &frame, &[]);
    assert_eq!(take_one(&tx, legacy()), Ok(frame.clone()));
    tx.add_tx_frame(12, &frame, &[]);
    assert_eq!(take_one(&tx, v1(false)), Ok(frame.clone()));
    // A 10-byte header read with the 12-byte layout loses two frame bytes.
    tx.add_tx_frame(10, &frame, &[]);
    assert_eq!(take_one(&tx, v1(true)), Ok(frame[2..].to_vec()));
}

#[test]
fn short_chains_and_empty_buffers() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 16);
    let a = g.alloc(64);
    tx.add_chain(&[(a, 11, R)]);
    assert_eq!(take_one(&tx, v1(true)), Err(TxError::ShortHeader));
    tx.add_chain(&[(a, 11, R)]);
    assert_eq!(take_one(&tx, legacy()).map(|f| f.len()), Ok(1));
    // Zero-length descriptors inside a chain carry nothing and are skipped.
    let frame = pattern(50, 4);
    let bufs = tx.tx_buffers(12, &frame, &[12]);
    tx.add_chain(&[bufs[0], (a, 0, R), bufs[1], (0, 0, R)]);
    assert_eq!(take_one(&tx, v1(true)), Ok(frame));
}

#[test]
fn frame_through_an_indirect_table() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 16);
    let frame = pattern(1518, 5);
    let bufs = tx.tx_buffers(12, &frame, &[12, 100, 700]);
    assert_eq!(bufs.len(), 4);
    let head = tx.add_indirect(&bufs);
    let bufs = tx.tx_buffers(12, &frame, &[]);
    tx.add_indirect(&bufs);
    assert_eq!(take_all(&tx, v1(true)), vec![Ok(frame.clone()), Ok(frame)]);
    assert_eq!(tx.used_elem(0), (u32::from(head), 0));
}

#[test]
fn malformed_indirect_tables_are_rejected_and_the_burst_goes_on() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 32);
    let frame = pattern(100, 6);
    let good = tx.tx_buffers(12, &frame, &[12]);
    let mut heads = Vec::new();

    // nested: an INDIRECT descriptor inside an indirect table
    let inner = g.alloc(16);
    heads.push(tx.add_indirect(&[good[0], (inner, 16, DESC_F_INDIRECT)]));
    // INDIRECT together with NEXT
    heads.push(tx.add_chain(&[(inner, 16, DESC_F_INDIRECT), good[1]]));
    // lengths that are not a positive multiple of 16
    heads.push(tx.add_chain(&[(inner, 40, DESC_F_INDIRECT)]));
    heads.push(tx.add_chain(&[(inner, 0, DESC_F_INDIRECT)]));
    // tables outside guest memory, or running past its end
    heads.push(tx.add_chain(&[(MEM_SIZE + 0x1000, 32, DESC_F_INDIRECT)]));
    heads.push(tx.add_chain(&[(MEM_SIZE - 16, 32, DESC_F_INDIRECT)]));
    // a loop inside a table: entry 1 points back to entry 0
    let table = g.alloc(32);
    tx.set_desc(30, table, 32, DESC_F_INDIRECT, 0);
    heads.push(30);
    tx.make_available(30);
    // a next index past the table's end
    let table2 = g.alloc(32);
    tx.set_desc(31, table2, 32, DESC_F_INDIRECT, 0);
    heads.push(31);
    tx.make_available(31);
    for (t, next_of_1) in [(table, 0u16), (table2, 2)] {
        let entries = [
            (good[0].0, good[0].1, DESC_F_NEXT, 1u16),
            (good[1].0, good[1].1, DESC_F_NEXT, next_of_1),
        ];
        for (i, (addr, len, flags, next)) in entries.into_iter().enumerate() {
            let mut raw = addr.to_le_bytes().to_vec();
            raw.extend_from_slice(&len.to_le_bytes());
            raw.extend_from_slice(&flags.to_le_bytes());
            raw.extend_from_slice(&next.to_le_bytes());
            g.write(t + 16 * i as u64, &raw);
        }
    }
    // and a good frame after all of them
    heads.push(tx.add_indirect(&good));

    use ChainError::*;
    let want: Vec<Result<Vec<u8>, TxError>> = vec![
        Err(IndirectNested.into()),
        Err(IndirectWithNext.into()),
        Err(IndirectLength(40).into()),
        Err(IndirectLength(0).into()),
        Err(IndirectOutsideMemory.into()),
        Err(IndirectOutsideMemory.into()),
        Err(Loop.into()),
        Err(NextOutOfRange(2).into()),
        Ok(frame),
    ];
    assert_eq!(take_all(&tx, v1(true)), want);
    // Every chain, good or bad, went back to the driver in order.
    assert_eq!(tx.used_idx(), heads.len() as u16);
    for (i, &h) in heads.iter().enumerate() {
        assert_eq!(tx.used_elem(i as u16), (u32::from(h), 0));
    }
}

#[test]
fn malformed_direct_chains_are_rejected() {
    let g = Guest::new();
    let mut tx = g.ring(RING_A, 256);
    let a = g.alloc(4096);
    // (add_chain fills the table from slot 0 on: hand-made chains sit at its end)
    // a loop: 250 -> 251 -> 250, of empty buffers so that only the loop check ends it
    // (with bytes in them the 64-buffer limit comes first)
    tx.set_desc(250, a, 0, DESC_F_NEXT, 251);
    tx.set_desc(251, a, 0, DESC_F_NEXT, 250);
    tx.make_available(250);
    // head and next indices out of range
    tx.make_available(256);
    tx.set_desc(252, a, 64, DESC_F_NEXT, 256);
    tx.make_available(252);
    // buffers outside memory, straddling its end, and device-writable
    tx.add_chain(&[(a, 12, R), (MEM_SIZE + 4096, 64, R)]);
    tx.add_chain(&[(a, 12, R), (MEM_SIZE - 8, 64, R)]);
    tx.add_chain(&[(u64::MAX - 8, 64, R)]);
    tx.add_chain(&[(a, 12, R), (a, 64, W)]);
    // more buffers than a frame may have (64), then exactly that many
    let many: Vec<_> = (0..65).map(|i| (a + i, 1, R)).collect();
    tx.add_chain(&many);
    tx.add_chain(&many[..64]);

    use ChainError::*;
    let got = take_all(&tx, legacy());
    let want: Vec<Result<Vec<u8>, TxError>> = vec![
        // A loop in a 256-entry table hits the 64-descriptor cap before the table
        // size: every descriptor counts, so walking one chain costs at most 64 reads.
        Err(TooManyBuffers.into()),
        Err(HeadOutOfRange(256).into()),
        Err(NextOutOfRange(256).into()),
        Err(BufferOutsideMemory.into()),
        Err(BufferOutsideMemory.into()),
        Err(BufferOutsideMemory.into()),
        Err(WrongDirection.into()),
        Err(TooManyBuffers.into()),
        Ok(g.read(a + 10, 54)),
    ];
    assert_eq!(got, want);
}
