// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Jumbo frames (MTU 9000) on a real veth pair: the frags-aware program and
//! multi-buffer sockets (`XDP_USE_SG`) carry frames of several UMEM chunks
//! both ways, byte for byte, mixed with frames of one chunk.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vpmd_uplink::Uplink;

const MTU: u32 = 9000;

/// Frame lengths that cross chunk boundaries every way: one chunk exactly
/// (3840 bytes after copy mode's 256 of headroom), one byte more, two and
/// three chunks, the MTU's largest frame.
const LENGTHS: [usize; 7] = [60, 3840, 3841, 4096, 7681, 8000, MTU as usize + 14];

#[test]
fn jumbo_frames_pass_both_ways_in_several_chunks() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("jb", 1, MTU);
    let mut uplink = Uplink::open(&config(&net, vec![0])).expect("open uplink at MTU 9000");
    assert!(uplink.program().frags(), "program loaded frags-aware");
    assert!(
        uplink.multi_buffer(),
        "this kernel (6.6+) binds copy-mode sockets with XDP_USE_SG"
    );
    uplink
        .mac_table()
        .insert(VM_MAC, 1)
        .expect("register VM MAC");
    let mut socket = uplink.take_sockets().remove(0);
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");

    // Namespace -> AF_XDP: each frame whole, in as many parts as it needs.
    let sent: Vec<Vec<u8>> = LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &len)| test_frame(VM_MAC, PEER_MAC, i as u32 + 1, len))
        .collect();
    for frame in &sent {
        peer.send(frame);
    }
    let deadline = Instant::now() + PATIENCE;
    let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
    while got.len() < sent.len() && Instant::now() < deadline {
        // Bursts of 2 frames: a burst must end on a frame's last part.
        let burst = socket.receive_burst(2);
        assert!(burst.len() <= 2);
        got.extend(burst.iter().map(|f| {
            assert_eq!(f.head().len(), f.parts().next().unwrap().len());
            (f.part_count(), f.to_vec())
        }));
        drop(burst);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(got.len(), sent.len(), "every frame arrives once");
    for ((parts, frame), want) in got.iter().zip(&sent) {
        assert_eq!(frame.len(), want.len());
        assert!(frame == want, "frame of {} bytes intact", want.len());
        assert_eq!(*parts, want.len().div_ceil(3840), "parts of {}", want.len());
    }
    let rx = socket.rx_counters();
    assert_eq!(rx.frames, sent.len() as u64);
    let extra: usize = got.iter().map(|(p, _)| p - 1).sum();
    assert_eq!(rx.parts_after_first, extra as u64);
    let stats = socket.kernel_statistics().expect("XDP_STATISTICS");
    assert_eq!(stats.rx_dropped, 0, "{stats:?}");

    // AF_XDP -> namespace: chains for what a chunk does not hold.
    let back: Vec<Vec<u8>> = LENGTHS
        .iter()
        .enumerate()
        .map(|(i, &len)| test_frame(PEER_MAC, VM_MAC, 100 + i as u32, len))
        .collect();
    let tx = socket.transmitter();
    let capacity = tx.frame_capacity();
    assert_eq!(tx.max_frame(), capacity * vpmd_uplink::tx::MAX_TX_PARTS);
    let slots: usize = back.iter().map(|f| tx.slots_for(f.len())).sum();
    let mut burst = socket.transmit_burst(slots);
    assert_eq!(burst.granted(), slots);
    for frame in &back {
        if frame.len() <= capacity {
            assert!(burst.push(frame));
            continue;
        }
        let mut chain = burst.chain(frame.len()).expect("slots for the chain");
        for (i, part) in frame.chunks(capacity).enumerate() {
            chain.part(i).copy_from_slice(part);
        }
        chain.commit();
    }
    assert_eq!(burst.remaining(), 0);
    assert!(
        burst.chain(capacity * 17).is_none(),
        "more than MAX_TX_PARTS chunks"
    );
    drop(burst);
    let last = frame_seq(back.last().unwrap()).unwrap();
    let received = peer
        .recv_test_frames_until(last)
        .expect("all frames reach the namespace");
    assert_eq!(received.len(), back.len(), "nothing lost, nothing extra");
    for (got, want) in received.iter().zip(&back) {
        assert!(got == want, "frame of {} bytes intact", want.len());
    }
    let deadline = Instant::now() + PATIENCE;
    while socket.tx_counters().completed < slots as u64 && Instant::now() < deadline {
        socket.flush_tx();
        std::thread::sleep(Duration::from_millis(1));
    }
    let tx = socket.tx_counters();
    println!("tx counters {tx:?}");
    assert_eq!(tx.frames, back.len() as u64);
    assert_eq!(tx.too_big, 1);
    assert_eq!(tx.completed, slots as u64, "every chunk came back");
    assert_eq!(tx.parts_after_first, (slots - back.len()) as u64);
    let stats = socket.kernel_statistics().expect("XDP_STATISTICS");
    assert_eq!(stats.tx_invalid_descs, 0, "{stats:?}");
}
