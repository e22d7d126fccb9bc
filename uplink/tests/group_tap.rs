// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Broadcast and multicast with the MAC-filter program attached: the host's
//! own stack on the uplink keeps working (ARP, ping), and the group tap
//! gives the VMs a copy of every group frame the uplink receives, and of
//! nothing else.
//!
//! As in `veth.rs`, ordering makes the negative checks sound: frames on a
//! single-queue veth are handled in order, and the kernel hands a received
//! frame to every packet socket (the tap, the test's own) in one go, so
//! once a later frame has arrived, an earlier one that did not arrive
//! before it never will. Frames the host transmits are copied to packet
//! sockets before the transmit call returns.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vpmd_uplink::{PacketTap, PacketTapConfig, Uplink, UplinkConfig, XskSocket};

/// `IFF_ALLMULTI` in the interface flags.
const IFF_ALLMULTI: u32 = 0x200;
const ETH_P_ARP: [u8; 2] = [0x08, 0x06];

fn config(net: &TestNet) -> UplinkConfig {
    let mut config = UplinkConfig::new(&net.host_if);
    config.umem.chunks_per_queue = 512;
    config.rings = vpmd_uplink::RingSizes {
        fill: 256,
        completion: 256,
        rx: 256,
        tx: 256,
    };
    config.tap.frames = 64;
    config
}

/// The uplink on `net` with [`VM_MAC`] registered, its one socket and its group tap
/// (keep the uplink for as long as they are used).
fn open_with_vm(net: &TestNet) -> (Uplink, XskSocket, PacketTap) {
    let mut uplink = Uplink::open(&config(net)).expect("open uplink");
    uplink
        .mac_table()
        .insert(VM_MAC, 1)
        .expect("register VM MAC");
    let socket = uplink.take_sockets().remove(0);
    let tap = uplink.take_group_tap().expect("group tap");
    (uplink, socket, tap)
}

/// The sender's protocol address of an ARP frame.
fn arp_sender_ip(frame: &[u8]) -> Option<[u8; 4]> {
    (frame.len() >= 42 && frame[12..14] == ETH_P_ARP).then(|| frame[28..32].try_into().unwrap())
}

#[test]
fn host_stack_answers_arp_and_ping_and_its_own_frames_stay_out_of_the_tap() {
    if !is_root() {
        return;
    }
    ensure_ping();
    let net = TestNet::new("arp", 1, 1500);
    net.set_host_mac();
    net.add_addresses("198.18.5.1/24", "198.18.5.2/24");
    let (_uplink, mut socket, mut tap) = open_with_vm(&net);

    // The namespace resolves the host's address (a broadcast ARP request the
    // host stack must see) and pings it.
    let out = net
        .exec_in_ns(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.5.1"])
        .unwrap_or_else(|e| panic!("ping from the namespace to the uplink's address: {e}"));
    println!("{out}");
    assert!(out.contains("3 received"), "{out}");

    // The tap got the namespace's ARP request as well.
    let mut frames = receive_tap_frames(&mut tap, |f| {
        f.iter().any(|f| arp_sender_ip(f) == Some([198, 18, 5, 2]))
    });
    let request = frames
        .iter()
        .find(|f| arp_sender_ip(f) == Some([198, 18, 5, 2]))
        .expect("the ARP request from the namespace reaches the group tap");
    assert_eq!(request[..6], BROADCAST);
    assert_eq!(request[6..12], PEER_MAC);

    // The host sends broadcasts of its own: an ARP request (neighbour
    // forgotten, then pinged) and a raw broadcast frame. Neither is a frame
    // the uplink received, so neither may show up in the tap.
    ip(&["neigh", "flush", "dev", &net.host_if]);
    let out = std::process::Command::new("ping")
        .args(["-c", "1", "-W", "2", "-I", &net.host_if, "198.18.5.2"])
        .output()
        .expect("run ping");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ping from the host: {text}");
    let host = PacketSocket::open(&net.host_if).expect("packet socket on host end");
    host.send(&test_frame(BROADCAST, HOST_MAC, 100, 60));
    // A broadcast from the namespace marks the end.
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");
    peer.send(&test_frame(BROADCAST, PEER_MAC, 101, 60));
    frames.extend(receive_tap_frames(&mut tap, |f| {
        f.iter().any(|f| frame_seq(f) == Some(101))
    }));
    assert!(
        frames.iter().any(|f| frame_seq(f) == Some(101)),
        "the marker reaches the tap"
    );
    for frame in &frames {
        assert_ne!(
            frame[6..12],
            HOST_MAC,
            "a frame the host sent: {frame:02x?}"
        );
    }

    // Nothing of this went to the AF_XDP socket: it only takes VM unicast.
    let burst = socket.receive_burst(64);
    assert_eq!(burst.len(), 0, "no frame for the VM was sent");
    drop(burst);
    let counters = tap.read_kernel_statistics().expect("PACKET_STATISTICS");
    println!("tap counters {counters:?}");
    assert_eq!(counters.kernel_drops, 0);
}

#[test]
fn group_frames_reach_the_tap_intact_and_unicast_does_not() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("grp", 1, 1500);
    let (_uplink, mut socket, mut tap) = open_with_vm(&net);
    assert!(tap.max_frame_len() >= 1518, "MTU + 18 by default");
    assert_ne!(
        net.host_flags() & IFF_ALLMULTI,
        0,
        "tap asks for all multicast"
    );
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");
    let host = PacketSocket::open(&net.host_if).expect("packet socket on host end");

    let sent = [
        test_frame(UNKNOWN_MAC, PEER_MAC, 1, 60),
        test_frame(VM_MAC, PEER_MAC, 2, 60),
        test_frame(BROADCAST, PEER_MAC, 3, 60),
        test_frame(MULTICAST, PEER_MAC, 4, 98),
        // A full-size tagged broadcast: the kernel takes the tag out on
        // receive; the tap puts it back.
        vlan_tagged(&test_frame(BROADCAST, PEER_MAC, 5, 1514), 0x2005),
        test_frame(VM_MAC, PEER_MAC, 6, 1514),
        test_frame(BROADCAST, PEER_MAC, 7, 1514),
        test_frame(MULTICAST6, PEER_MAC, 8, 200),
        test_frame(VM_MAC, PEER_MAC, 9, 60),
    ];
    for frame in &sent {
        peer.send(frame);
    }

    // Group frames, and only them, in order and intact (the VM frames 2
    // and 6 came before the last group frame and are not there).
    let group = tap_test_frames_until(&mut tap, 8);
    assert_eq!(seqs(&group), vec![3, 4, 5, 7, 8]);
    for frame in &group {
        let seq = frame_seq(frame).unwrap() as usize;
        assert_eq!(frame, &sent[seq - 1], "frame {seq} arrives intact");
    }
    // VM unicast, and only it, in the AF_XDP socket (frame 9 comes after
    // every group frame).
    let got = receive_test_frames(&mut socket, |f| f.len() >= 3);
    assert_eq!(seqs(&got), vec![2, 6, 9]);
    // The host stack saw the group frames and the unknown unicast.
    let passed = host
        .recv_test_frames_until(8)
        .expect("group frames reach the kernel");
    assert_eq!(seqs(&passed), vec![1, 3, 4, 5, 7, 8]);

    let counters = tap.read_kernel_statistics().expect("PACKET_STATISTICS");
    println!("tap counters {counters:?}");
    assert!(counters.frames >= 5);
    assert_eq!(counters.too_big, 0);
    assert_eq!(counters.vlan_restored, 1);
    assert_eq!(counters.kernel_drops, 0);

    // The membership ends with the socket's last reference; a child that
    // another test thread forks may hold one until it execs (the descriptor
    // is close-on-exec), so wait a bounded while.
    drop(tap);
    let deadline = Instant::now() + PATIENCE;
    while net.host_flags() & IFF_ALLMULTI != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        net.host_flags() & IFF_ALLMULTI,
        0,
        "the membership ends with the tap"
    );
}

#[test]
fn oversized_frames_and_a_full_ring_are_counted() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("big", 1, 1500);
    let mut cfg = config(&net);
    cfg.tap = PacketTapConfig {
        max_frame_len: Some(256),
        frames: 8,
        all_multicast: false,
    };
    let mut uplink = Uplink::open(&cfg).expect("open uplink");
    let mut tap = uplink.take_group_tap().expect("group tap");
    let slots = tap.ring_frames();
    assert!(tap.max_frame_len() >= 256);
    println!(
        "ring: {slots} slots for frames of up to {} bytes",
        tap.max_frame_len()
    );
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");
    let host = PacketSocket::open(&net.host_if).expect("packet socket on host end");

    // Too big, just fits, small: the first is counted, not truncated.
    let sent = [
        test_frame(BROADCAST, PEER_MAC, 1, 1000),
        test_frame(BROADCAST, PEER_MAC, 2, tap.max_frame_len() as usize),
        test_frame(BROADCAST, PEER_MAC, 3, 60),
    ];
    for frame in &sent {
        peer.send(frame);
    }
    let group = tap_test_frames_until(&mut tap, 3);
    assert_eq!(group, vec![sent[1].clone(), sent[2].clone()]);
    assert_eq!(tap.counters().too_big, 1);

    // Fill the ring without reading it: what does not fit is dropped by
    // the kernel and counted. The host-side socket sees every frame in the
    // same pass as the tap, so once it has the last one, the tap has too.
    let count = slots + 20;
    for seq in 10..10 + count {
        peer.send(&test_frame(BROADCAST, PEER_MAC, seq, 60));
    }
    host.recv_test_frames_until(10 + count - 1)
        .expect("the host stack gets every frame");
    let burst = tap.receive_burst(slots as usize);
    let kept: Vec<u32> = burst.iter().filter_map(frame_seq).collect();
    drop(burst);
    assert!(!kept.is_empty() && kept.len() <= slots as usize, "{kept:?}");
    assert_eq!(
        kept,
        (10..10 + kept.len() as u32).collect::<Vec<_>>(),
        "the first frames, in order"
    );
    assert_eq!(tap.counters().statistics_reads, 0);

    // With room again, frames flow. The first one carries the kernel's
    // TP_STATUS_LOSING, and the next burst reads its drop count.
    peer.send(&test_frame(BROADCAST, PEER_MAC, 1000, 60));
    assert_eq!(seqs(&tap_test_frames_until(&mut tap, 1000)), vec![1000]);
    drop(tap.receive_burst(1));
    let counters = tap.counters();
    println!("tap counters {counters:?}");
    assert_eq!(counters.statistics_reads, 1, "losses flagged, drops read");
    assert!(
        counters.kernel_drops >= u64::from(count) - kept.len() as u64,
        "{counters:?}"
    );
}
