// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The uplink on a real veth pair: each test builds its own namespace and
//! veth pair (see `common`), attaches on the host end, binds AF_XDP on it
//! and sends raw frames from inside the namespace.
//!
//! Ordering, not timing, makes the negative checks sound: frames sent on a
//! single-queue veth are handled in order, so once a later frame has
//! arrived, an earlier one that did not arrive before it never will.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vpmd_uplink::{
    attached_xdp_program, AttachError, AttachPreference, BindMode, RedirectPolicy, Uplink,
    UplinkConfig, UplinkError, XdpLink, XdpProgram,
};

#[test]
fn receive_takes_vm_frames_and_passes_the_rest() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("rx", 1, 3000);
    let mut uplink = Uplink::open(&config(&net, vec![0])).expect("open uplink");
    println!(
        "veth: XDP in {} mode, AF_XDP bound in {} mode",
        uplink.attach_mode(),
        uplink.bind_mode()
    );
    let macs = uplink.mac_table();
    macs.insert(VM_MAC, 1).expect("register VM MAC");
    macs.insert(VM2_MAC, 2).expect("register second VM MAC");
    let mut socket = uplink.take_sockets().remove(0);
    let mut tap = uplink
        .take_group_tap()
        .expect("MAC filter opens the group tap");
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");
    let host = PacketSocket::open(&net.host_if).expect("packet socket on host end");

    // 1: unknown unicast, 2: VM, 3: broadcast, 4: multicast, 5: VM jumbo,
    // 6: unknown unicast (marks the end for the host-side socket).
    let sent = [
        test_frame(UNKNOWN_MAC, PEER_MAC, 1, 60),
        test_frame(VM_MAC, PEER_MAC, 2, 1514),
        test_frame(BROADCAST, PEER_MAC, 3, 60),
        test_frame(MULTICAST, PEER_MAC, 4, 98),
        test_frame(VM_MAC, PEER_MAC, 5, 3014),
        test_frame(UNKNOWN_MAC, PEER_MAC, 6, 60),
    ];
    for frame in &sent {
        peer.send(frame);
    }

    let got = receive_test_frames(&mut socket, |f| f.len() >= 2);
    assert_eq!(seqs(&got), vec![2, 5], "VM frames, and only them, in order");
    for frame in &got {
        let seq = frame_seq(frame).unwrap() as usize;
        assert_eq!(frame, &sent[seq - 1], "frame {seq} arrives intact");
    }

    // The kernel stack saw everything else, group frames included.
    let passed = host
        .recv_test_frames_until(6)
        .expect("unknown unicast reaches the kernel");
    assert_eq!(
        seqs(&passed),
        vec![1, 3, 4, 6],
        "all but VM frames are passed"
    );
    assert_eq!(passed[0], sent[0]);
    // The VMs' copy of the group frames.
    let group = tap_test_frames_until(&mut tap, 4);
    assert_eq!(group, vec![sent[2].clone(), sent[3].clone()]);

    // A MAC removed at run time: its frames go to the kernel again (a
    // frame for the second VM marks the end).
    assert!(macs.remove(VM_MAC).expect("remove MAC"));
    peer.send(&test_frame(VM_MAC, PEER_MAC, 7, 60));
    peer.send(&test_frame(BROADCAST, PEER_MAC, 8, 60));
    peer.send(&test_frame(VM2_MAC, PEER_MAC, 9, 60));
    let got = receive_test_frames(&mut socket, |f| !f.is_empty());
    assert_eq!(seqs(&got), vec![9], "removed MAC is not redirected");
    let passed = host
        .recv_test_frames_until(8)
        .expect("removed MAC reaches the kernel");
    assert_eq!(seqs(&passed), vec![7, 8]);

    let rx = socket.rx_counters();
    let stats = socket.kernel_statistics().expect("XDP_STATISTICS");
    println!("rx counters {rx:?}\nkernel statistics {stats:?}");
    if socket.bind_mode() == BindMode::Copy {
        assert_eq!(rx.wakeups, 0, "copy mode never asks for RX wakeups");
    }
    assert_eq!(stats.rx_dropped, 0);
    assert_eq!(rx.frames, 3);
}

#[test]
fn transmit_reaches_the_namespace_intact() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("tx", 1, 3000);
    let mut uplink = Uplink::open(&config(&net, vec![0])).expect("open uplink");
    let mut socket = uplink.take_sockets().remove(0);
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");
    let capacity = socket.transmitter().frame_capacity();
    // Transmit metadata (checksum offload) takes 64 bytes in front of a frame.
    let meta = if socket.tx_checksum() { 64 } else { 0 };
    assert_eq!(capacity, 4096 - meta);

    let mut sent = Vec::new();
    let mut seq = 0;
    let mut next = |len: usize| {
        seq += 1;
        test_frame(PEER_MAC, VM_MAC, seq, len)
    };
    // Bursts of 1, 5 and 64 frames (the kernel sends 32 per kick in copy
    // mode, so the last needs a second kick), then jumbo frames.
    for burst_len in [1usize, 5, 64] {
        let frames: Vec<Vec<u8>> = (0..burst_len).map(|i| next(60 + (i * 37) % 1455)).collect();
        let mut tx = socket.transmit_burst(frames.len());
        assert_eq!(tx.granted(), frames.len());
        for frame in &frames {
            let buf = tx.buffer().expect("granted slot");
            buf[..frame.len()].copy_from_slice(frame);
            assert!(tx.commit(frame.len()));
        }
        drop(tx);
        sent.extend(frames);
    }
    let jumbo = [next(3014), next(2000)];
    let mut tx = socket.transmit_burst(4);
    assert!(tx.push(&jumbo[0]));
    assert!(!tx.push(&vec![0u8; capacity + 1]), "larger than a chunk");
    assert!(!tx.commit(0), "abandoned slot");
    assert!(tx.push(&jumbo[1]));
    assert_eq!(tx.remaining(), 0);
    drop(tx);
    sent.extend(jumbo);

    let last = frame_seq(sent.last().unwrap()).unwrap();
    let received = peer
        .recv_test_frames_until(last)
        .expect("all frames arrive");
    assert_eq!(received.len(), sent.len(), "nothing lost, nothing extra");
    for (got, want) in received.iter().zip(&sent) {
        assert_eq!(got, want, "frame {:?} intact", frame_seq(want));
    }

    // Completions follow once the kernel frees the sent buffers.
    let deadline = Instant::now() + PATIENCE;
    while socket.tx_counters().completed < sent.len() as u64 && Instant::now() < deadline {
        socket.flush_tx();
        std::thread::sleep(Duration::from_millis(1));
    }
    let tx = socket.tx_counters();
    println!("tx counters {tx:?}");
    assert_eq!(tx.frames, sent.len() as u64);
    assert_eq!((tx.too_big, tx.abandoned), (1, 1));
    assert_eq!(tx.kick_errors, 0);
    assert_eq!(tx.completed, sent.len() as u64, "every chunk came back");
    assert_eq!(socket.transmitter().free_chunks(), 512);
}

#[test]
fn passthru_takes_every_frame_with_2048_byte_chunks() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("pt", 1, 1500);
    let mut cfg = config(&net, vec![0]);
    cfg.policy = RedirectPolicy::Passthru;
    cfg.umem.chunk_size = vpmd_uplink::ChunkSize::Bytes2048;
    let mut uplink = Uplink::open(&cfg).expect("open uplink");
    assert!(
        uplink.take_group_tap().is_none(),
        "passthru needs no group tap: the socket gets every frame"
    );
    let mut socket = uplink.take_sockets().remove(0);
    let meta = if socket.tx_checksum() { 64 } else { 0 };
    assert_eq!(socket.transmitter().frame_capacity(), 2048 - meta);
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");
    let sent = [
        test_frame(UNKNOWN_MAC, PEER_MAC, 1, 60),
        test_frame(BROADCAST, PEER_MAC, 2, 60),
        test_frame(VM_MAC, PEER_MAC, 3, 1514),
    ];
    for frame in &sent {
        peer.send(frame);
    }
    let got = receive_test_frames(&mut socket, |f| f.len() >= 3);
    assert_eq!(got, sent.to_vec());
}

#[test]
fn two_queues_share_one_umem() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("mq", 2, 1500);
    let mut uplink = Uplink::open(&config(&net, vec![0, 1])).expect("open uplink");
    uplink
        .mac_table()
        .insert(VM_MAC, 1)
        .expect("register VM MAC");
    let mut sockets = uplink.take_sockets();
    assert_eq!(sockets.len(), 2);
    assert_eq!(sockets[1].queue_id(), 1);
    assert_eq!(
        sockets[0].bind_mode(),
        sockets[1].bind_mode(),
        "shared UMEM inherits the mode"
    );
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");

    // Different UDP ports: the sender's veth spreads flows over its queues.
    let count = 64u32;
    for seq in 1..=count {
        peer.send(&test_frame(VM_MAC, PEER_MAC, seq, 100));
    }
    let deadline = Instant::now() + PATIENCE;
    let mut per_queue = [Vec::new(), Vec::new()];
    while per_queue.iter().map(Vec::len).sum::<usize>() < count as usize
        && Instant::now() < deadline
    {
        for (socket, got) in sockets.iter_mut().zip(per_queue.iter_mut()) {
            let burst = socket.receive_burst(64);
            got.extend(burst.iter().filter_map(|f| frame_seq(&f.to_vec())));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "frames per RX queue: {} on 0, {} on 1",
        per_queue[0].len(),
        per_queue[1].len()
    );
    let mut all: Vec<u32> = per_queue.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=count).collect::<Vec<_>>(),
        "every frame in exactly one socket"
    );

    // Both sockets transmit, each from its own part of the UMEM.
    for (i, socket) in sockets.iter_mut().enumerate() {
        let mut tx = socket.transmit_burst(1);
        assert!(tx.push(&test_frame(PEER_MAC, VM_MAC, 1000 + i as u32, 60)));
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let frame = peer
            .recv(PATIENCE)
            .expect("frames sent on both queues arrive");
        got.extend(frame_seq(&frame));
    }
    got.sort_unstable();
    assert_eq!(got, vec![1000, 1001]);
}

#[test]
fn second_attach_on_the_same_interface_is_refused() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("dup", 1, 1500);
    let ifindex = net.host_ifindex();
    let first = Uplink::open(&config(&net, vec![0])).expect("first attach");
    let first_id = first.program().id();

    let other = XdpProgram::load(RedirectPolicy::MacFilter, 4, 1).expect("load");
    let err = XdpLink::attach(&other, &net.host_if, ifindex, AttachPreference::default())
        .expect_err("second attach must be refused");
    println!("second attach: {err}");
    match &err {
        AttachError::AlreadyAttached {
            ifname, prog_id, ..
        } => {
            assert_eq!(ifname, &net.host_if);
            assert_eq!(*prog_id, first_id);
        }
        other => panic!("wrong refusal: {other}"),
    }
    assert!(
        err.to_string().contains(&net.host_if),
        "the message names the interface"
    );

    let err = Uplink::open(&config(&net, vec![0])).expect_err("second uplink must be refused");
    assert!(
        matches!(
            err,
            UplinkError::Attach(AttachError::AlreadyAttached { .. })
        ),
        "{err}"
    );

    // Dropping the uplink detaches its program; then the interface is free.
    // The link goes with its descriptor's last reference, and a child that
    // another test thread forks may hold one until it execs (the
    // descriptor is close-on-exec): wait a bounded while.
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    while attached_xdp_program(ifindex).unwrap().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(attached_xdp_program(ifindex).unwrap(), None);
    let link = XdpLink::attach(&other, &net.host_if, ifindex, AttachPreference::default())
        .expect("attach after the first detached");
    assert_eq!(
        attached_xdp_program(ifindex).unwrap().map(|p| p.prog_id),
        Some(other.id())
    );
    drop(link);
}

const CHILD_ENV: &str = "VPMD_UPLINK_TEST_CHILD_IFNAME";

/// Not a test on its own: the child process of
/// `sigkill_leaves_no_program_behind`, which runs this binary again with
/// this test selected and `CHILD_ENV` set. Without it, it does nothing.
#[test]
fn child_attaches_and_waits_for_sigkill() {
    let Ok(ifname) = std::env::var(CHILD_ENV) else {
        return;
    };
    let ifindex = vpmd_uplink::ifindex(&ifname).expect("interface");
    let program = XdpProgram::load(RedirectPolicy::MacFilter, 4, 1).expect("load");
    let _link =
        XdpLink::attach(&program, &ifname, ifindex, AttachPreference::default()).expect("attach");
    println!("ATTACHED {}", program.id());
    // Wait to be killed; give up eventually so that no child outlives a
    // parent that died first.
    std::thread::sleep(Duration::from_secs(60));
}

/// Kills the child on drop, whatever happened.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_leaves_no_program_behind() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("kill", 1, 1500);
    let ifindex = net.host_ifindex();
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_attaches_and_waits_for_sigkill",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &net.host_if)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let mut child = ChildGuard(child);
    let stdout = child.0.stdout.take().expect("child stdout");
    let prog_id: u32 = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        // libtest prints "test NAME ... " before the child's own line.
        .find_map(|line| {
            line.split("ATTACHED ")
                .nth(1)
                .map(|id| id.trim().parse().unwrap())
        })
        .expect("child attached");
    let attached = attached_xdp_program(ifindex)
        .unwrap()
        .expect("program attached");
    assert_eq!(attached.prog_id, prog_id);

    child.0.kill().expect("SIGKILL"); // std's kill is SIGKILL
    let status = child.0.wait().expect("reap child");
    assert!(!status.success());

    // The kernel releases the link as the dead process's files close; poll
    // a bounded while rather than assume when that is done.
    let deadline = Instant::now() + PATIENCE;
    while attached_xdp_program(ifindex).unwrap().is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        attached_xdp_program(ifindex).unwrap(),
        None,
        "no XDP program left"
    );
    let shown = ip(&["-d", "link", "show", "dev", &net.host_if]);
    assert!(!shown.contains("prog/xdp"), "ip -d link show: {shown}");
}

#[test]
fn lone_socket_transmits_without_a_program() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("lone", 1, 1504);
    let peer = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("packet socket in netns");
    let mut cfg = config(&net, vec![0]);
    cfg.rings.fill = 8; // receives nothing: keep the chunks for transmitting
    let mut socket = vpmd_uplink::open_unattached(&cfg).expect("open a lone socket");
    assert_eq!(
        attached_xdp_program(net.host_ifindex()).unwrap(),
        None,
        "no program is attached for a lone socket"
    );
    assert_eq!(socket.transmitter().free_chunks(), 1024 - 8);

    // 100 frames in bursts of up to 40 (more than one kick each in copy mode).
    let sent: Vec<Vec<u8>> = (1..=100u32)
        .map(|seq| test_frame(PEER_MAC, VM_MAC, seq, 60 + (seq as usize * 97) % 1458))
        .collect();
    for chunk in sent.chunks(40) {
        let mut tx = socket.transmit_burst(chunk.len());
        assert_eq!(tx.granted(), chunk.len());
        for frame in chunk {
            assert!(tx.push(frame));
        }
    }
    let received = peer.recv_test_frames_until(100).expect("all frames arrive");
    assert_eq!(received, sent, "every frame, intact and in order");
    assert_eq!(
        socket.receive_burst(32).len(),
        0,
        "nothing is redirected to it"
    );

    let cfg_two = UplinkConfig {
        queues: vec![0, 1],
        ..cfg.clone()
    };
    assert!(matches!(
        vpmd_uplink::open_unattached(&cfg_two),
        Err(UplinkError::LoneQueues { count: 2, .. })
    ));
}
