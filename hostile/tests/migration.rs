// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Live migration as a frontend drives it, and as a hostile one abuses it: the dirty
//! log (SET_LOG_BASE with LOG_SHMFD, VHOST_F_LOG_ALL) against a running vpmd, the
//! ring base GET_VRING_BASE returns while frames arrive, SEND_RARP, and logs that
//! are no shared memory, too small, or named for another MAC. Each runs while pair 1
//! carries a checked transfer ([`Scenario::finish`]).

use std::time::Duration;

use serde_json::Value;
use vpmd_hostile::mem::GuestRam;
use vpmd_hostile::msg::{body, req, RawMsg, FLAG_REPLY};
use vpmd_hostile::ring::{Desc, WRITE};
use vpmd_hostile::scenario::{h_still_works, Scenario};
use vpmd_hostile::vm::{HostileVm, RAM_LEN, RX};
use vpmd_hostile::vpmd::{mac, port};

/// `VHOST_F_LOG_ALL`.
const F_LOG_ALL: u64 = 1 << 26;
/// Where h's RX buffers go: one per 4 KiB page, clear of its rings and TX buffers.
const RX_BUFS: u64 = 0x20_0000;
const PAGE: u64 = 4096;

fn fault(s: &Value, name: &str) -> u64 {
    port(s, "h")["faults"][name].as_u64().unwrap_or(0)
}

fn log_body(size: u64, offset: u64) -> Vec<u8> {
    let mut b = size.to_le_bytes().to_vec();
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

/// SET_LOG_BASE with `fd`; waits for vpmd's reply.
fn set_log_base(vm: &HostileVm, fd: std::os::fd::RawFd, size: u64) {
    let msg = RawMsg::new(req::SET_LOG_BASE, log_body(size, 0)).with_fds(&[fd]);
    vm.conn.send(&msg).expect("SET_LOG_BASE sent");
    let reply = vm.conn.recv().expect("SET_LOG_BASE answered");
    assert_eq!(reply.request, req::SET_LOG_BASE);
    assert_ne!(reply.flags & FLAG_REPLY, 0);
}

fn set_features(vm: &HostileVm, features: u64) {
    vm.conn
        .request_ack(RawMsg::new(req::SET_FEATURES, body::u64(features)))
        .expect("SET_FEATURES acked");
}

/// The pages whose bit is set in `log` (its first `len` bytes).
fn logged(log: &GuestRam, len: usize) -> Vec<u64> {
    let bytes = log.read(0, len);
    (0..len as u64 * 8)
        .filter(|p| bytes[(p / 8) as usize] & (1 << (p % 8)) != 0)
        .collect()
}

/// [`logged`] without the page of h's TX used ring: vpmd writes (and so marks) it
/// too, whenever its idle polling thread asks h to kick before it sleeps (adaptive
/// polling: `VRING_USED_F_NO_NOTIFY` cleared, or `avail_event` set), which may or may
/// not happen during a test.
fn logged_but_tx_used(vm: &HostileVm, log: &GuestRam, len: usize) -> Vec<u64> {
    let tx_used = vm.tx_ring().layout.used / PAGE;
    logged(log, len)
        .into_iter()
        .filter(|&p| p != tx_used)
        .collect()
}

/// Offers `n` RX buffers, one per page from [`RX_BUFS`] + `first` pages on, as
/// descriptors `first..first + n`.
fn offer_rx(vm: &HostileVm, first: u16, n: u16) {
    let rx = vm.rx_ring();
    for i in first..first + n {
        rx.set_desc(i, Desc::new(RX_BUFS + PAGE * u64::from(i), 2048, WRITE, 0));
    }
    rx.offer(&(first..first + n).collect::<Vec<_>>());
}

#[test]
fn every_page_vpmd_writes_is_logged_and_the_ring_base_is_exact() {
    let (sc, mut p, vm) = Scenario::start_with_h("migrate-log");
    // The log for 4 MiB of guest memory: 1024 pages, 128 bytes.
    let log_len = RAM_LEN / 4096 / 8;
    let log = GuestRam::new(0, 4096).expect("log memfd");
    set_log_base(&vm, log.fd(), log_len as u64);

    // Logging is not on yet (no LOG_ALL): frames land, nothing is marked.
    offer_rx(&vm, 0, 2);
    p.send(2, 200);
    assert!(vm.rx_ring().wait_used(2, Duration::from_secs(5)));
    assert_eq!(logged(&log, log_len), Vec::<u64>::new());

    set_features(&vm, vm.features | F_LOG_ALL);
    offer_rx(&vm, 2, 6);
    p.send(4, 1000);
    let rx = vm.rx_ring();
    assert!(
        rx.wait_used(6, Duration::from_secs(5)),
        "4 frames delivered"
    );
    let used_page = rx.layout.used / PAGE;
    let buf_page = |i: u64| (RX_BUFS + PAGE * i) / PAGE;
    let mut want: Vec<u64> = (2..6).map(buf_page).collect();
    want.push(used_page);
    want.sort_unstable();
    assert_eq!(
        logged_but_tx_used(&vm, &log, log_len),
        want,
        "the four buffers filled and h's used ring, nothing else"
    );

    // GET_VRING_BASE while p keeps sending: the base is exactly what was used, and
    // nothing lands in the stopped ring afterwards.
    let base = vm.stop_queue(RX).expect("GET_VRING_BASE");
    assert_eq!(base, u32::from(rx.used_idx()), "no descriptor in flight");
    assert_eq!(base, 6);
    p.send(3, 200);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(rx.used_idx(), 6, "nothing used after GET_VRING_BASE");

    // SEND_RARP for another MAC: not announced, logged; the connection stays.
    let mut other = [0u8; 8];
    other[..6].copy_from_slice(&mac("p"));
    vm.conn
        .request_ack(RawMsg::new(req::SEND_RARP, other.to_vec()))
        .expect("SEND_RARP acked");
    assert!(sc.wait_logged(&["port h", "not the port's MAC"], Duration::from_secs(3)));
    // For its own MAC on a veth pair: nowhere to announce, acked.
    let mut own = [0u8; 8];
    own[..6].copy_from_slice(&mac("h"));
    vm.conn
        .request_ack(RawMsg::new(req::SEND_RARP, own.to_vec()))
        .expect("SEND_RARP acked");

    let s = sc.stats();
    assert_eq!(fault(&s, "log_outside"), 0, "{s}");
    assert_eq!(fault(&s, "refused"), 0, "{s}");
    drop(vm);
    h_still_works(&sc, &mut p, 100);
    sc.finish(|s| {
        assert_eq!(port(s, "h")["rx_packets"].as_u64(), Some(6), "{s}");
    });
}

#[test]
fn a_log_that_is_no_shared_memory_is_refused_and_one_too_small_is_counted() {
    let (sc, mut p, vm) = Scenario::start_with_h("migrate-badlog");
    let (r, _w) = std::io::pipe().expect("pipe");
    use std::os::fd::AsRawFd;
    let msg = RawMsg::new(req::SET_LOG_BASE, log_body(128, 0)).with_fds(&[r.as_raw_fd()]);
    vm.conn.send(&msg).expect("sent");
    assert!(
        vm.conn.wait_closed(Duration::from_secs(3)),
        "a pipe as the dirty log closes the connection"
    );
    drop(vm);
    assert_eq!(fault(&sc.stats(), "refused"), 1);
    h_still_works(&sc, &mut p, 200);

    // A log of one byte covers pages 0-7; buffers from 2 MiB on lie past it.
    let vm = HostileVm::start(&sc.vpmd.socket("h")).expect("setup");
    sc.vpmd.wait_up(&["h"]);
    let log = GuestRam::new(0, 4096).expect("log memfd");
    set_log_base(&vm, log.fd(), 1);
    set_features(&vm, vm.features | F_LOG_ALL);
    offer_rx(&vm, 0, 2);
    p.send(2, 200);
    assert!(vm.rx_ring().wait_used(2, Duration::from_secs(5)));
    let s = sc.stats();
    // Two buffer pages and the used ring's page (page 1, inside the log).
    assert_eq!(fault(&s, "log_outside"), 2, "{s}");
    assert_eq!(
        logged_but_tx_used(&vm, &log, 1),
        [vm.rx_ring().layout.used / PAGE]
    );
    drop(vm);
    sc.finish(|_| {});
}

#[test]
fn a_log_truncated_while_logging_closes_only_that_connection() {
    let (sc, mut p, vm) = Scenario::start_with_h("migrate-trunc");
    let log = GuestRam::new(0, 8192).expect("log memfd");
    set_log_base(&vm, log.fd(), 8192);
    set_features(&vm, vm.features | F_LOG_ALL);
    log.truncate(0).expect("truncate");
    offer_rx(&vm, 0, 4);
    p.send(4, 200);
    assert!(
        vm.conn.wait_closed(Duration::from_secs(3)),
        "vpmd closes the connection whose log went away"
    );
    drop(vm);
    let s = sc.stats();
    assert!(fault(&s, "mem_faults") >= 1, "{s}");
    h_still_works(&sc, &mut p, 300);
    sc.finish(|_| {});
}
