// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Hostile vhost-user messages on port `h`'s socket while pair 1 carries a checked
//! transfer: malformed, oversized, unknown, with wrong or bad fds, regions that
//! overlap or lie, rings before memory, a memory table swapped under traffic, a
//! flood of connections. vpmd must close only that connection (or refuse that
//! message), stay up, and serve `h` again to the next well-behaved frontend.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use vpmd_hostile::mem::GuestRam;
use vpmd_hostile::msg::{body, req, Conn, RawMsg, FLAG_NEED_REPLY, VERSION_1};
use vpmd_hostile::ring::Desc;
use vpmd_hostile::scenario::{frame_to_p, h_still_works, Scenario, Sender};
use vpmd_hostile::vm::{eventfd, HostileVm, F_INDIRECT_DESC, F_MRG_RXBUF, F_VERSION_1, RX, TX};
use vpmd_hostile::vpmd::counter;

/// A hostile VM on h, negotiated and (unless `no_table`) with its memory table.
fn negotiated(sc: &Scenario, no_table: bool) -> HostileVm {
    let mut vm = HostileVm::connect(&sc.vpmd.socket("h")).expect("connect");
    vm.negotiate(F_VERSION_1 | F_MRG_RXBUF | F_INDIRECT_DESC)
        .expect("negotiate");
    if !no_table {
        vm.set_mem_table().expect("mem table");
    }
    vm
}

/// Asserts vpmd refuses `msg` on `vm`'s connection: a failed ack or a closed socket.
fn refused(vm: &HostileVm, what: &str, mut msg: RawMsg) {
    msg.flags |= FLAG_NEED_REPLY;
    let sent = vm.conn.send(&msg);
    if sent.is_err() {
        return;
    }
    if let Ok(r) = vm.conn.recv() {
        assert_ne!(r.u64(), Some(0), "{what}: vpmd accepted it");
    }
    assert!(
        vm.conn.wait_closed(Duration::from_secs(3)),
        "{what}: connection left open"
    );
}

/// A raw connection that sends `bytes` (and fds) then expects vpmd to hang up.
fn raw_closed(sc: &Scenario, what: &str, bytes: &[u8], close_after: bool) {
    let c = Conn::connect(&sc.vpmd.socket("h")).expect("connect");
    let _ = c.send_bytes(bytes);
    if close_after {
        let _ = c.socket().shutdown(std::net::Shutdown::Write);
    }
    assert!(
        c.wait_closed(Duration::from_secs(3)),
        "{what}: connection left open"
    );
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [0; 2];
    // SAFETY: `p` has room for the two fds pipe(2) returns.
    assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

#[test]
fn malformed_messages_and_bad_fds_close_only_that_connection() {
    let sc = Scenario::start("msgs");
    let mut p = Sender::connect(&sc.vpmd);
    let hdr = |request: u32, size: u32| {
        let mut b = request.to_le_bytes().to_vec();
        b.extend_from_slice(&VERSION_1.to_le_bytes());
        b.extend_from_slice(&size.to_le_bytes());
        b
    };
    raw_closed(&sc, "truncated header", &hdr(req::SET_OWNER, 0)[..5], true);
    let mut short = hdr(req::SET_FEATURES, 8);
    short.extend_from_slice(&[0; 4]);
    raw_closed(&sc, "truncated body", &short, true);
    raw_closed(&sc, "oversized", &hdr(req::SET_FEATURES, 0x10_0000), false);
    let mut unknown = hdr(999, 8);
    unknown.extend_from_slice(&[0; 8]);
    raw_closed(&sc, "unknown request", &unknown, false);
    // NET_SET_MTU: a request of a protocol feature vpmd does not offer (SEND_RARP
    // was one until vpmd supported live migration; tests/migration.rs has it now).
    let mut mtu = hdr(20, 8);
    mtu.extend_from_slice(&1500u64.to_le_bytes());
    raw_closed(&sc, "request vpmd does not offer", &mtu, false);

    let ram = GuestRam::new(0, 1 << 20).expect("memfd");
    let table = |regions: &[body::Region]| {
        RawMsg::new(
            req::SET_MEM_TABLE,
            body::mem_table(regions.len() as u32, regions),
        )
    };
    let r = ram.region();
    let ev = eventfd().expect("eventfd");
    let devnull = std::fs::File::open("/dev/null").expect("/dev/null");
    let (pr, pw) = pipe();
    let cases: Vec<(&str, RawMsg)> = vec![
        (
            "GET_FEATURES with an fd",
            RawMsg::new(req::GET_FEATURES, vec![]).with_fds(&[ram.fd()]),
        ),
        ("memory table without fds", table(&[r])),
        (
            "memory table with two fds for one region",
            table(&[r]).with_fds(&[ram.fd(), ram.fd()]),
        ),
        ("memory table of 0 regions", table(&[]).with_fds(&[])),
        ("memory table whose count lies", {
            let mut m = table(&[r]).with_fds(&[ram.fd()]);
            m.body[0..4].copy_from_slice(&40u32.to_le_bytes());
            m
        }),
        (
            "region backed by an eventfd",
            table(&[r]).with_fds(&[ev.as_raw_fd()]),
        ),
        (
            "region backed by /dev/null",
            table(&[r]).with_fds(&[devnull.as_raw_fd()]),
        ),
        (
            "region backed by a pipe",
            table(&[r]).with_fds(&[pr.as_raw_fd()]),
        ),
        (
            "regions that overlap",
            table(&[r, r]).with_fds(&[ram.fd(), ram.fd()]),
        ),
        (
            "region past the end of its file",
            table(&[body::Region {
                size: 64 << 20,
                ..r
            }])
            .with_fds(&[ram.fd()]),
        ),
        (
            "region at an offset past the file",
            table(&[body::Region {
                offset: 1 << 20,
                ..r
            }])
            .with_fds(&[ram.fd()]),
        ),
        (
            "region whose end overflows",
            table(&[body::Region {
                gpa: u64::MAX - 4095,
                ..r
            }])
            .with_fds(&[ram.fd()]),
        ),
        (
            "zero-size region",
            table(&[body::Region { size: 0, ..r }]).with_fds(&[ram.fd()]),
        ),
    ];
    for (what, msg) in cases {
        refused(&negotiated(&sc, true), what, msg);
    }
    // Ring and fd messages on a connection that has its memory table.
    let ring_cases: Vec<(&str, RawMsg)> = vec![
        (
            "call fd that is a pipe",
            RawMsg::new(req::SET_VRING_CALL, body::u64(0)).with_fds(&[pw.as_raw_fd()]),
        ),
        (
            "kick fd that is a memfd",
            RawMsg::new(req::SET_VRING_KICK, body::u64(1)).with_fds(&[ram.fd()]),
        ),
        (
            "kick with two fds",
            RawMsg::new(req::SET_VRING_KICK, body::u64(1))
                .with_fds(&[ev.as_raw_fd(), ev.as_raw_fd()]),
        ),
        (
            "kick of queue 200",
            RawMsg::new(req::SET_VRING_KICK, body::u64(200)).with_fds(&[ev.as_raw_fd()]),
        ),
        (
            "queue size 0",
            RawMsg::new(req::SET_VRING_NUM, body::vring_state(0, 0)),
        ),
        (
            "queue size 65535",
            RawMsg::new(req::SET_VRING_NUM, body::vring_state(0, 65535)),
        ),
        (
            "queue size 65536",
            RawMsg::new(req::SET_VRING_NUM, body::vring_state(0, 65536)),
        ),
        (
            "ring outside memory",
            RawMsg::new(
                req::SET_VRING_ADDR,
                body::vring_addr(
                    0,
                    GuestRam::va(1 << 40),
                    GuestRam::va(0x2000),
                    GuestRam::va(0x1000),
                ),
            ),
        ),
        (
            "ring address of queue 7",
            RawMsg::new(req::SET_VRING_ADDR, body::vring_addr(7, 0, 0, 0)),
        ),
        (
            "SET_VRING_ADDR body too short",
            RawMsg::new(req::SET_VRING_ADDR, vec![0; 12]),
        ),
    ];
    for (what, msg) in ring_cases {
        refused(&negotiated(&sc, false), what, msg);
    }
    refused(
        &negotiated(&sc, true),
        "ring before the memory table",
        RawMsg::new(
            req::SET_VRING_ADDR,
            body::vring_addr(
                0,
                GuestRam::va(0),
                GuestRam::va(0x2000),
                GuestRam::va(0x1000),
            ),
        ),
    );
    h_still_works(&sc, &mut p, 1);
    sc.finish(|s| {
        assert_eq!(counter(s, "h", "forwarded"), 1, "{s}");
    });
}

#[test]
fn saturated_blocking_call_eventfd_does_not_stall_the_polling_thread() {
    let sc = Scenario::start("callfd");
    let mut p = Sender::connect(&sc.vpmd);
    let mut vm = negotiated(&sc, false);
    vm.setup_queue(RX, vm.rx).expect("rx");
    vm.setup_queue(TX, vm.tx).expect("tx");
    // A *blocking* eventfd one short of its maximum: a blocking write of 1 would
    // wait forever for a reader that never comes, holding the TX queue's lock.
    // SAFETY: eventfd takes no pointers.
    let call = unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_CLOEXEC)) };
    let max = (u64::MAX - 1).to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array to our own eventfd.
    let n = unsafe { libc::write(call.as_raw_fd(), max.as_ptr().cast(), 8) };
    assert_eq!(n, 8);
    vm.vring_fd(req::SET_VRING_CALL, TX, call.as_raw_fd())
        .expect("call fd");
    vm.enable(RX, true).expect("enable");
    vm.enable(TX, true).expect("enable");
    sc.vpmd.wait_up(&["h"]);
    let f = frame_to_p(5);
    let (addr, len) = vm.tx_frame(0, &f);
    let tx = vm.tx_ring();
    tx.set_desc(0, Desc::new(addr, len, 0, 0));
    let end = Instant::now() + Duration::from_millis(1500);
    let mut sent = 0u64;
    while Instant::now() < end {
        tx.offer(&[0; 8]);
        sent += 8;
        assert!(
            tx.wait_used(sent as u16, Duration::from_secs(5)),
            "h's TX stalled"
        );
        while p.fe.recv().is_some() {}
    }
    sc.finish(|s| {
        assert_eq!(counter(s, "h", "tx_packets"), sent, "{s}");
    });
}

#[test]
fn memory_table_replaced_and_cut_while_frames_flow() {
    let (sc, mut p, vm) = Scenario::start_with_h("memswap");
    let f = frame_to_p(9);
    let (addr, len) = vm.tx_frame(0, &f);
    let tx = vm.tx_ring();
    tx.set_desc(0, Desc::new(addr, len, 0, 0));
    let mut got = 0u64;
    let mut offered = 0u64;
    let pump = |n: usize, got: &mut u64, offered: &mut u64, p: &mut Sender| {
        for _ in 0..n {
            tx.offer(&[0; 16]);
            *offered += 16;
            let want = tx.avail_idx();
            assert!(tx.wait_used(want, Duration::from_secs(5)), "h's TX stalled");
            while let Some(fr) = p.fe.recv() {
                assert_eq!(fr, f, "frame changed while the memory table was replaced");
                *got += 1;
            }
        }
    };
    let whole = vm.mem.region();
    for round in 0..20 {
        pump(10, &mut got, &mut offered, &mut p);
        // The same memory again, then cut into three regions: frames keep flowing.
        if round % 2 == 0 {
            vm.set_mem_table().expect("same table");
        } else {
            vm.set_mem_table_cut(&[0x1_8000, 0x20_0000])
                .expect("cut table");
        }
    }
    // A table without the rings: the TX queue stops (counted once) ...
    let upper = body::Region {
        gpa: whole.gpa + (2 << 20),
        size: whole.size - (2 << 20),
        uaddr: whole.uaddr + (2 << 20),
        offset: 2 << 20,
    };
    let msg =
        RawMsg::new(req::SET_MEM_TABLE, body::mem_table(1, &[upper])).with_fds(&[vm.mem.fd()]);
    vm.conn.request_ack(msg).expect("table without the rings");
    let before = tx.used_idx();
    tx.offer(&[0; 4]);
    offered += 4;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        tx.used_idx(),
        before,
        "vpmd used a ring outside its memory table"
    );
    // ... until the rings are mapped again.
    vm.set_mem_table().expect("whole table again");
    let want = tx.avail_idx();
    assert!(
        tx.wait_used(want, Duration::from_secs(5)),
        "queue did not resume"
    );
    std::thread::sleep(Duration::from_millis(100));
    while let Some(fr) = p.fe.recv() {
        assert_eq!(fr, f);
        got += 1;
    }
    sc.assert_logged_rate_limited(&["port h", "TX queue stopped"], 1);
    sc.finish(|s| {
        assert_eq!(counter(s, "h", "ring_errors"), 1, "{s}");
        assert_eq!(counter(s, "h", "tx_packets"), offered, "{s}");
        assert_eq!(counter(s, "p", "rx_packets"), got, "{s}");
    });
}

#[test]
fn flood_of_connects_and_a_memfd_that_cannot_shrink() {
    let sc = Scenario::start("flood");
    let mut p = Sender::connect(&sc.vpmd);
    let end = Instant::now() + Duration::from_secs(2);
    let mut n = 0u64;
    while Instant::now() < end && n < 1000 {
        let c = Conn::connect(&sc.vpmd.socket("h")).expect("connect");
        if n % 2 == 1 {
            let _ = c.send(&RawMsg::new(req::SET_OWNER, vec![]));
            let _ = c.send_bytes(&[0xff; 7]);
        }
        n += 1;
        drop(c);
    }
    eprintln!("{n} connections opened and dropped");
    let lines = sc.log_lines(&["port h"]);
    assert!(
        lines <= 30,
        "{lines} log lines about port h for {n} connections"
    );
    // A memfd vpmd can seal: once mapped, the frontend can no longer shrink it
    // (which would make vpmd's next access raise SIGBUS).
    let mut vm = HostileVm::connect(&sc.vpmd.socket("h")).expect("connect");
    vm.mem = GuestRam::new_sealable(0, vpmd_hostile::vm::RAM_LEN).expect("memfd");
    vm.negotiate(F_VERSION_1 | F_MRG_RXBUF).expect("negotiate");
    vm.set_mem_table().expect("table");
    let shrink = vm.mem.truncate(4096);
    assert!(
        shrink.is_err(),
        "the frontend could shrink mapped guest memory"
    );
    drop(vm);
    h_still_works(&sc, &mut p, 2);
    sc.finish(|s| {
        assert_eq!(counter(s, "h", "forwarded"), 1, "{s}");
    });
}

/// QEMU 7.2 sends a multi-queue port's memory regions once per queue pair. vpmd
/// maps a region once: an exact repeat (same guest address, size, frontend address
/// and offset) is acked and not passed on, its fd dropped unmapped, even when it
/// names another file; only the last of as many removals is passed on. Shrinking
/// that other file afterwards harms nothing: vpmd never mapped it.
#[test]
fn a_region_added_again_is_mapped_once_and_its_other_file_never_used() {
    let (sc, mut p, vm) = Scenario::start_with_h("dupregion");
    let f = frame_to_p(11);
    let (addr, len) = vm.tx_frame(0, &f);
    let tx = vm.tx_ring();
    tx.set_desc(0, Desc::new(addr, len, 0, 0));
    let region = vm.mem.region();
    let other = GuestRam::new(region.gpa, region.size as usize).expect("another memfd");
    let o = other.region();
    assert_eq!(
        (o.gpa, o.size, o.uaddr, o.offset),
        (region.gpa, region.size, region.uaddr, region.offset),
        "the same region, another file"
    );
    let add = |fd| RawMsg::new(req::ADD_MEM_REG, body::single_region(&region)).with_fds(&[fd]);
    let rem = || RawMsg::new(req::REM_MEM_REG, body::single_region(&region));
    vm.conn
        .request_ack(add(other.fd()))
        .expect("a repeat naming another file: acked");
    vm.conn
        .request_ack(add(vm.mem.fd()))
        .expect("a repeat: acked");
    vm.conn
        .request_ack(rem())
        .expect("a removal of a repeat: acked");
    vm.conn.request_ack(rem()).expect("another: acked");
    other.truncate(0).expect("truncate the other file");
    let mut got = 0u64;
    for _ in 0..20 {
        tx.offer(&[0; 16]);
        let want = tx.avail_idx();
        assert!(tx.wait_used(want, Duration::from_secs(5)), "h's TX stalled");
        while let Some(fr) = p.fe.recv() {
            assert_eq!(fr, f);
            got += 1;
        }
    }
    std::thread::sleep(Duration::from_millis(100));
    while let Some(fr) = p.fe.recv() {
        assert_eq!(fr, f);
        got += 1;
    }
    assert!(
        !vm.conn.wait_closed(Duration::from_millis(200)),
        "h's connection was closed"
    );
    sc.finish(|s| {
        assert_eq!(counter(s, "h", "faults.mem_faults"), 0, "{s}");
        assert_eq!(counter(s, "h", "faults.refused"), 0, "{s}");
        assert_eq!(counter(s, "h", "tx_packets"), 320, "{s}");
        assert_eq!(counter(s, "p", "rx_packets"), got, "{s}");
    });
}
