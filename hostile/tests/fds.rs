// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Attacks through what a frontend shares besides ring contents: the files behind
//! its memory regions, its eventfds, how much it asks vpmd to map and hold, bytes
//! it rewrites while vpmd works on them, and the control socket. Each runs while
//! pair 1 carries a checked transfer; [`Scenario::finish`] then checks that vpmd is
//! alive, pair 1's transfer arrived complete, in order and intact at full speed, the
//! counters add up, and SIGTERM stops vpmd within 2 s with its final counters.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpmd_hostile::mem::GuestRam;
use vpmd_hostile::msg::{body, req, RawMsg};
use vpmd_hostile::ring::{Desc, INDIRECT, NEXT, WRITE};
use vpmd_hostile::scenario::{frame_to_p, h_still_works, send_one_h_to_p, Scenario, Sender};
use vpmd_hostile::vm::{eventfd, HostileVm, F_VERSION_1, RAM_LEN, RX, TX};
use vpmd_hostile::vpmd::port;

/// Protocol feature CONFIGURE_MEM_SLOTS.
const PF_CONFIGURE_MEM_SLOTS: u64 = 1 << 15;
/// Protocol feature REPLY_ACK.
const PF_REPLY_ACK: u64 = 1 << 3;

fn fault(s: &Value, name: &str) -> u64 {
    port(s, "h")["faults"][name].as_u64().unwrap_or(0)
}

/// Posts `n` RX buffers of 2 KiB on h's RX ring.
fn post_rx(vm: &HostileVm, n: u16) {
    let rx = vm.rx_ring();
    for i in 0..n {
        rx.set_desc(i, Desc::new(HostileVm::buf(u32::from(i)), 2048, WRITE, 0));
    }
    let heads: Vec<u16> = (0..n).collect();
    rx.offer(&heads);
}

fn set_blocking(fd: RawFd) {
    // SAFETY: fcntl on our own fd with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) };
    assert_eq!(rc, 0);
}

fn eventfd_write(fd: RawFd, v: u64) -> isize {
    // SAFETY: writes 8 bytes from a local u64.
    unsafe { libc::write(fd, (&raw const v).cast(), 8) }
}

/// Waits until vpmd has counted `name` on h at least once; returns the stats.
fn wait_fault(sc: &Scenario, name: &str) -> Value {
    let s = sc
        .vpmd
        .wait_stats(Duration::from_secs(5), |s| fault(s, name) >= 1);
    assert!(
        fault(&s, name) >= 1,
        "{name} not counted: {s}\nlog:\n{}",
        sc.vpmd.log()
    );
    s
}

/// Memory truncated under running rings: only h stops; it is counted and logged.
fn truncated_under_running_rings(sc: &Scenario, p: &mut Sender, mem: GuestRam, what: &str) {
    let vm = HostileVm::connect_with(&sc.vpmd.socket("h"), mem).expect("connect");
    let vm = HostileVm::start_on(vm, HostileVm::set_mem_table).expect("setup");
    sc.vpmd.wait_up(&["h"]);
    post_rx(&vm, 64);
    p.send(16, 128);
    assert!(
        vm.rx_ring().wait_used(16, Duration::from_secs(5)),
        "{what}: h got nothing"
    );
    vm.mem.truncate(0).expect("truncate");
    // From here on this process must not touch h's memory either.
    p.send(16, 128);
    wait_fault(sc, "mem_faults");
    assert!(
        vm.conn.wait_closed(Duration::from_secs(3)),
        "{what}: h's connection left open"
    );
    drop(vm);
    assert!(
        sc.wait_logged(
            &["port h", "guest memory went away"],
            Duration::from_secs(3)
        ),
        "{what}: not logged"
    );
    h_still_works(sc, p, 1000);
}

#[test]
fn a_memfd_truncated_under_running_rings_stops_only_that_port() {
    let sc = Scenario::start("truncate");
    let mut p = Sender::connect(&sc.vpmd);
    let mem = GuestRam::new(0, RAM_LEN).expect("memfd");
    truncated_under_running_rings(&sc, &mut p, mem, "memfd");
    sc.finish(|s| assert!(fault(s, "mem_faults") >= 1, "{s}"));
}

#[test]
fn a_sealable_memfd_is_sealed_and_holes_punched_into_it_harm_nobody() {
    let sc = Scenario::start("punch");
    let mut p = Sender::connect(&sc.vpmd);
    let mem = GuestRam::new_sealable(0, RAM_LEN).expect("memfd");
    let vm = HostileVm::connect_with(&sc.vpmd.socket("h"), mem).expect("connect");
    let vm = HostileVm::start_on(vm, HostileVm::set_mem_table).expect("setup");
    sc.vpmd.wait_up(&["h"]);
    assert!(vm.mem.truncate(0).is_err(), "vpmd did not seal the memfd");
    post_rx(&vm, 64);
    for round in 0..20u64 {
        p.send(8, 128);
        // The rings and the buffers, freed under vpmd: they read back as zeros.
        vm.mem.punch_hole(0, RAM_LEN as u64).expect("punch");
        if round % 4 == 0 {
            post_rx(&vm, 64);
        }
    }
    drop(vm);
    h_still_works(&sc, &mut p, 2000);
    sc.finish(|s| assert_eq!(fault(s, "mem_faults"), 0, "{s}"));
}

/// A hugetlbfs mount with a few free 2 MiB pages, set up for the test and put back.
struct HugePages {
    mount: PathBuf,
    mounted_here: bool,
    old_count: Option<String>,
}

impl HugePages {
    const NR: &'static str = "/proc/sys/vm/nr_hugepages";

    fn get() -> Option<HugePages> {
        let old = std::fs::read_to_string(Self::NR).ok()?;
        let free: u64 =
            std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
                .ok()?
                .trim()
                .parse()
                .ok()?;
        let count: u64 = old.trim().parse().ok()?;
        let mut hp = HugePages {
            mount: PathBuf::new(),
            mounted_here: false,
            old_count: None,
        };
        if free < 8 {
            std::fs::write(Self::NR, format!("{}", count + 8 - free)).ok()?;
            hp.old_count = Some(old);
        }
        let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
        match mounts
            .lines()
            .find(|l| l.split(' ').nth(2) == Some("hugetlbfs"))
        {
            Some(l) => hp.mount = PathBuf::from(l.split(' ').nth(1)?),
            None => {
                let dir =
                    std::env::temp_dir().join(format!("vpmd-hugetlbfs-{}", std::process::id()));
                std::fs::create_dir_all(&dir).ok()?;
                let ok = std::process::Command::new("mount")
                    .args(["-t", "hugetlbfs", "none"])
                    .arg(&dir)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return None;
                }
                hp.mount = dir;
                hp.mounted_here = true;
            }
        }
        Some(hp)
    }

    fn mount(&self) -> &Path {
        &self.mount
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = std::process::Command::new("umount")
                .arg(&self.mount)
                .status();
            let _ = std::fs::remove_dir(&self.mount);
        }
        if let Some(old) = &self.old_count {
            let _ = std::fs::write(Self::NR, old.trim());
        }
    }
}

#[test]
fn a_hugetlbfs_file_truncated_or_punched_under_running_rings_never_crashes_vpmd() {
    let Some(huge) = HugePages::get() else {
        eprintln!("skipped: no hugetlbfs here (needs root and 2 MiB huge pages)");
        return;
    };
    let sc = Scenario::start("hugetlbfs");
    let mut p = Sender::connect(&sc.vpmd);
    // Holes first: freed huge pages come back as fresh zero pages while the pool
    // has some; vpmd must neither crash nor corrupt anyone else.
    let mem = GuestRam::on_hugetlbfs(huge.mount(), 0, RAM_LEN).expect("hugetlbfs file");
    let vm = HostileVm::connect_with(&sc.vpmd.socket("h"), mem).expect("connect");
    let vm = HostileVm::start_on(vm, HostileVm::set_mem_table).expect("setup");
    sc.vpmd.wait_up(&["h"]);
    post_rx(&vm, 64);
    for _ in 0..5 {
        p.send(8, 128);
        vm.mem.punch_hole(0, RAM_LEN as u64).expect("punch");
        post_rx(&vm, 64);
    }
    drop(vm);
    // Then a truncation, which no seal can prevent on hugetlbfs.
    let mem = GuestRam::on_hugetlbfs(huge.mount(), 0, RAM_LEN).expect("hugetlbfs file");
    truncated_under_running_rings(&sc, &mut p, mem, "hugetlbfs");
    sc.finish(|s| assert!(fault(s, "mem_faults") >= 1, "{s}"));
}

#[test]
fn a_call_eventfd_made_blocking_and_saturated_never_freezes_the_switch() {
    // First the counter alone: vpmd's write fails at once, counted, nothing stops.
    let (sc, mut p, vm) = Scenario::start_with_h("callfd");
    post_rx(&vm, 128);
    let call = vm.vring_eventfd(RX, false);
    assert_eq!(eventfd_write(call, u64::MAX - 1), 8);
    p.send(16, 128);
    assert!(vm.rx_ring().wait_used(16, Duration::from_secs(5)));
    wait_fault(&sc, "notify_failed");
    // Then the flag too: the write would sleep until h reads, which it never does.
    set_blocking(call);
    p.send(16, 128);
    wait_fault(&sc, "notify_blocked");
    assert!(
        vm.conn.wait_closed(Duration::from_secs(3)),
        "h's connection left open"
    );
    assert!(sc.wait_logged(&["port h", "notification blocked"], Duration::from_secs(3)));
    drop(vm);
    h_still_works(&sc, &mut p, 3000);
    sc.finish(|s| assert!(fault(s, "notify_blocked") >= 1, "{s}"));
}

#[test]
fn a_replaced_kick_fd_is_let_go_of_and_the_old_one_written_and_made_blocking_harms_nobody() {
    let (sc, mut p, vm) = Scenario::start_with_h("kickfd");
    let fds_before = sc.vpmd.open_fds();
    let mut old = Vec::new();
    for _ in 0..100 {
        let kick = eventfd().expect("eventfd");
        vm.vring_fd(req::SET_VRING_KICK, TX, kick.as_raw_fd())
            .expect("SET_VRING_KICK");
        old.push(kick);
    }
    for fd in &old {
        // Written, drained by nobody, and made blocking: vpmd never reads it.
        set_blocking(fd.as_raw_fd());
        assert_eq!(eventfd_write(fd.as_raw_fd(), 1), 8);
    }
    let fds_after = sc.vpmd.open_fds();
    assert!(
        fds_after <= fds_before + 4,
        "vpmd holds on to replaced kick fds: {fds_before} -> {fds_after}"
    );
    // h still sends.
    send_one_h_to_p(&vm, &mut p, 7);
    drop(vm);
    sc.finish(|_| {});
}

/// A VM on h that acked CONFIGURE_MEM_SLOTS (for ADD_MEM_REG).
fn with_mem_slots(sc: &Scenario) -> HostileVm {
    let mut vm = HostileVm::connect(&sc.vpmd.socket("h")).expect("connect");
    vm.negotiate(F_VERSION_1).expect("negotiate");
    vm.conn
        .request_ack(RawMsg::new(
            req::SET_PROTOCOL_FEATURES,
            body::u64(PF_REPLY_ACK | PF_CONFIGURE_MEM_SLOTS),
        ))
        .expect("protocol features");
    vm
}

#[test]
fn region_floods_and_sparse_huge_files_are_refused_and_hold_nothing() {
    let sc = Scenario::start("regions");
    let mut p = Sender::connect(&sc.vpmd);
    let fds_before = sc.vpmd.open_fds();
    let vm = with_mem_slots(&sc);
    let slots = vm
        .conn
        .request_reply(RawMsg::new(req::GET_MAX_MEM_SLOTS, vec![]))
        .expect("GET_MAX_MEM_SLOTS")
        .u64();
    assert_eq!(
        slots,
        Some(32),
        "vpmd must say how many regions it really takes"
    );
    let mut accepted = 0;
    let mut rams = Vec::new();
    for i in 0..300u64 {
        let ram = GuestRam::new(i << 20, 1 << 16).expect("memfd");
        let msg =
            RawMsg::new(req::ADD_MEM_REG, body::single_region(&ram.region())).with_fds(&[ram.fd()]);
        rams.push(ram);
        if vm.conn.request_ack(msg).is_err() {
            break;
        }
        accepted += 1;
    }
    assert_eq!(accepted, 32, "regions accepted before the refusal");
    assert!(
        vm.conn.wait_closed(Duration::from_secs(3)),
        "flood left open"
    );
    drop(vm);
    drop(rams);
    wait_fault(&sc, "refused");

    // One region of 1 TiB (a sparse memfd costs the frontend nothing).
    let vm = with_mem_slots(&sc);
    let sparse = GuestRam::sparse_fd(1 << 40).expect("sparse memfd");
    let region = body::Region {
        gpa: 0,
        size: 1 << 40,
        uaddr: 0x7f00_0000_0000,
        offset: 0,
    };
    let msg = RawMsg::new(req::SET_MEM_TABLE, body::mem_table(1, &[region]))
        .with_fds(&[sparse.as_raw_fd()]);
    assert!(vm.conn.request_ack(msg).is_err(), "1 TiB accepted");
    assert!(vm.conn.wait_closed(Duration::from_secs(3)));
    drop(vm);
    assert!(
        sc.wait_logged(&["port h", "max_memory_mib"], Duration::from_secs(3)),
        "not logged"
    );

    // Everything let go of.
    let deadline = Instant::now() + Duration::from_secs(5);
    while sc.vpmd.open_fds() > fds_before + 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        sc.vpmd.open_fds() <= fds_before + 2,
        "fds held: {} -> {}",
        fds_before,
        sc.vpmd.open_fds()
    );
    h_still_works(&sc, &mut p, 4000);
    sc.finish(|s| assert!(fault(s, "refused") >= 2, "{s}"));
}

#[test]
fn connections_carrying_as_many_fds_as_they_can_do_not_exhaust_vpmd() {
    let sc = Scenario::start("fdflood");
    let mut p = Sender::connect(&sc.vpmd);
    let fds_before = sc.vpmd.open_fds();
    let mut conns = Vec::new();
    let evs: Vec<_> = (0..8).map(|_| eventfd().expect("eventfd")).collect();
    let raw: Vec<RawFd> = evs.iter().map(AsRawFd::as_raw_fd).collect();
    for _ in 0..100 {
        let Ok(c) = vpmd_hostile::msg::Conn::connect(&sc.vpmd.socket("h")) else {
            break;
        };
        // Eight fds on a message that takes none, and then silence.
        let _ = c.send(&RawMsg::new(req::GET_FEATURES, vec![]).with_fds(&raw));
        conns.push(c);
    }
    // vpmd serves one frontend per port at a time: the rest wait in the kernel's
    // queue, their fds with them, not in vpmd's table.
    let during = sc.vpmd.open_fds();
    assert!(
        during <= fds_before + 24,
        "vpmd took in fds of waiting connections: {fds_before} -> {during}"
    );
    let _ = sc.stats();
    drop(conns);
    h_still_works(&sc, &mut p, 5000);
    sc.finish(|_| {});
}

#[test]
fn a_second_thread_rewriting_descriptors_and_headers_mid_burst_harms_nobody() {
    let (sc, mut p, vm) = Scenario::start_with_h("rewrite");
    let tx = vm.tx_ring();
    let stop = AtomicBool::new(false);
    let mut offered = 0u64;
    std::thread::scope(|s| {
        // The "second vCPU": rewrites descriptors 0..64 and the frames' headers.
        s.spawn(|| {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x % 64) as u16;
                let flags = [0, NEXT, INDIRECT, WRITE, NEXT | INDIRECT][(x >> 8) as usize % 5];
                let addr = HostileVm::buf((x >> 16) as u32 % 128) + (x >> 40) % 64;
                tx.set_desc(
                    i,
                    Desc::new(
                        addr,
                        ((x >> 24) % 3000) as u32,
                        flags,
                        (x >> 48) as u16 % 80,
                    ),
                );
                vm.mem
                    .write(HostileVm::buf(u32::from(i)) + 12, &x.to_le_bytes());
            }
        });
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let heads: Vec<u16> = (0..64).collect();
            for &i in &heads {
                let (addr, len) = vm.tx_frame(u32::from(i), &frame_to_p(offered + u64::from(i)));
                tx.set_desc(i, Desc::new(addr, len, 0, 0));
            }
            let target = tx.used_idx().wrapping_add(64);
            tx.offer(&heads);
            offered += 64;
            if !tx.wait_used(target, Duration::from_secs(5)) {
                break;
            }
            while p.fe.recv().is_some() {}
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(offered > 0);
    drop(vm);
    while p.fe.recv().is_some() {}
    h_still_works(&sc, &mut p, 6000);
    sc.finish(|s| {
        let h = port(s, "h");
        assert!(h["tx_packets"].as_u64().unwrap_or(0) >= offered / 2, "{s}");
    });
}

#[test]
fn silent_control_socket_clients_never_block_stats() {
    let sc = Scenario::start("control");
    let control = sc.vpmd.socket("h").with_file_name("control.sock");
    let silent: Vec<_> = (0..40)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&control).ok())
        .collect();
    assert!(!silent.is_empty());
    for _ in 0..5 {
        let s = sc.stats();
        assert!(s["ports"].is_array(), "{s}");
    }
    // A client that sends an endless line without a newline.
    let mut endless = std::os::unix::net::UnixStream::connect(&control).expect("connect");
    let _ = std::io::Write::write_all(&mut endless, &[b'x'; 4096]);
    let s = sc.stats();
    assert!(s["ports"].is_array(), "{s}");
    sc.finish(|_| {});
    drop(silent);
}
