// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Transmit checksum offload through AF_XDP metadata on a real veth pair:
//! UDP frames leave with only the pseudo-header sum in their checksum field
//! and a checksum request in front of them, and a UDP socket in the namespace
//! (the kernel's own checks) takes them, one chunk or several (MTU 9000). The
//! same frame without the request is dropped by that socket's stack: the
//! request is what made the difference.

mod common;

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;
use vpmd_uplink::{Uplink, UplinkConfig};

const HOST_IP: [u8; 4] = [198, 18, 7, 1];
const NS_IP: [u8; 4] = [198, 18, 7, 2];
const PORT: u16 = 5555;

/// The ones' complement sum of `bytes` (big-endian words), folded.
fn fold(mut acc: u64, bytes: &[u8]) -> u16 {
    for w in bytes.chunks(2) {
        acc += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// An Ethernet/IPv4/UDP frame to the namespace's socket; its UDP checksum
/// field holds the pseudo-header sum only (`partial`) or the full checksum.
/// Returns the frame and the UDP header's offset.
fn udp_frame(payload: &[u8], partial: bool) -> (Vec<u8>, usize) {
    let udp_len = 8 + payload.len();
    let mut f = Vec::with_capacity(14 + 20 + udp_len);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&VM_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&HOST_IP);
    f.extend_from_slice(&NS_IP);
    let ip_sum = !fold(0, &f[14..34]);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let l4 = f.len();
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&PORT.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&HOST_IP);
    pseudo.extend_from_slice(&NS_IP);
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let pseudo_sum = fold(0, &pseudo);
    let field = if partial {
        pseudo_sum
    } else {
        !fold(u64::from(pseudo_sum), &f[l4..])
    };
    f[l4 + 6..l4 + 8].copy_from_slice(&field.to_be_bytes());
    (f, l4)
}

/// A UDP socket on the namespace's address, created by a thread that entered
/// the namespace (the socket stays there).
fn udp_socket_in(ns: &str) -> UdpSocket {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let ns_file = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: setns on this helper thread only; ns_file is an open network
        // namespace file.
        let entered = unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
        let s = UdpSocket::bind((std::net::Ipv4Addr::from(NS_IP), PORT)).expect("bind");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s
    })
    .join()
    .expect("netns helper thread")
}

#[test]
fn checksum_requests_let_partial_frames_through_one_chunk_or_several() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("ck", 1, 9000);
    net.add_addresses("198.18.7.1/24", "198.18.7.2/24");
    // The namespace must not need ARP for the replies it never sends; the
    // frames are addressed to its MAC directly.
    let mut uplink = Uplink::open(&UplinkConfig::new(&net.host_if)).expect("open uplink");
    let mut socket = uplink.take_sockets().remove(0);
    assert!(
        socket.tx_checksum(),
        "this kernel (6.11+) takes AF_XDP transmit metadata"
    );
    let capacity = socket.transmitter().frame_capacity();
    assert_eq!(capacity, 4096 - 64, "room for the metadata in front");
    let udp = udp_socket_in(&net.ns);

    let payloads: Vec<Vec<u8>> = [1usize, 1400, 4100, 8900]
        .iter()
        .map(|&n| (0..n).map(|i| (i * 13 + n) as u8).collect())
        .collect();
    // First the control: a partial frame without a request, dropped by the
    // namespace's UDP (bad checksum); then one complete frame, which arrives.
    let (bad, _) = udp_frame(b"no request: dropped", true);
    let (good, _) = udp_frame(b"complete: taken", false);
    let mut burst = socket.transmit_burst(2);
    assert!(burst.push(&bad));
    assert!(burst.push(&good));
    drop(burst);
    let mut buf = vec![0u8; 65536];
    let n = udp.recv(&mut buf).expect("the complete frame arrives");
    assert_eq!(
        &buf[..n],
        b"complete: taken",
        "the partial frame was dropped"
    );

    // Partial frames with a request: every one arrives, payload intact.
    for payload in &payloads {
        let (frame, l4) = udp_frame(payload, true);
        let tx = socket.transmitter();
        let slots = tx.slots_for(frame.len());
        let mut burst = socket.transmit_burst(slots);
        if frame.len() <= capacity {
            let b = burst.buffer().expect("slot");
            b[..frame.len()].copy_from_slice(&frame);
            assert!(burst.commit_partial(frame.len(), l4 as u16, 6));
        } else {
            let mut chain = burst.chain(frame.len()).expect("slots");
            for (i, part) in frame.chunks(capacity).enumerate() {
                chain.part(i).copy_from_slice(part);
            }
            chain.commit_partial(l4 as u16, 6);
        }
        drop(burst);
        let n = udp
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("the {}-byte datagram did not arrive: {e}", payload.len()));
        assert!(
            &buf[..n] == payload.as_slice(),
            "{} bytes intact",
            payload.len()
        );
    }
    std::thread::sleep(Duration::from_millis(10));
    socket.flush_tx();
    let tx = socket.tx_counters();
    println!("tx counters {tx:?}");
    assert_eq!(tx.checksum_requests, payloads.len() as u64);
    assert_eq!(tx.frames, payloads.len() as u64 + 2);
    let stats = socket.kernel_statistics().expect("XDP_STATISTICS");
    assert_eq!(stats.tx_invalid_descs, 0, "{stats:?}");
}
