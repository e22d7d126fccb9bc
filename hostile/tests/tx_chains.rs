// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Hostile TX rings: descriptors and chains that break every rule, offered on port
//! `h` while pair 1 carries a checked transfer.
//!
//! vpmd must skip each bad chain (return it to the guest, count it as `bad_tx_desc`,
//! log it rate-limited), keep taking the good frames around it, and never let the
//! attack slow the other pair.

use std::time::{Duration, Instant};

use vpmd_bench::frame::{self, Endpoints};
use vpmd_hostile::ring::{Desc, Layout, INDIRECT, NEXT, WRITE};
use vpmd_hostile::scenario::{Scenario, Sender};
use vpmd_hostile::vm::{HostileVm, RAM_LEN, TX};
use vpmd_hostile::vpmd::{counter, mac};

/// How long each attack runs (the good pair transfers all along).
const ATTACK: Duration = Duration::from_millis(1500);

/// A valid test frame h -> p.
fn frame_to_p(seq: u64, len: usize) -> Vec<u8> {
    let ep = Endpoints {
        src_mac: mac("h"),
        dst_mac: mac("p"),
        ..Endpoints::default()
    };
    let mut buf = Vec::new();
    frame::build(&mut buf, &ep, seq, len);
    buf
}

/// Offers `heads` on `vm`'s TX ring again and again for [`ATTACK`], each time after
/// vpmd has returned the previous batch, while `p` drains what reaches it. Asserts
/// every chain came back untouched (used length 0). Returns (rounds, frames p got);
/// every frame p got must equal `expect`.
fn offer_rounds(vm: &HostileVm, heads: &[u16], p: &mut Sender, expect: &[u8]) -> (u64, u64) {
    let tx = vm.tx_ring();
    let end = Instant::now() + ATTACK;
    let (mut rounds, mut got) = (0, 0);
    let mut drain = |p: &mut Sender| {
        while let Some(f) = p.fe.recv() {
            assert_eq!(f, expect, "p received a changed frame");
            got += 1;
        }
    };
    while Instant::now() < end {
        let start = tx.avail_idx();
        tx.offer(heads);
        let want = start.wrapping_add(heads.len() as u16);
        assert!(
            tx.wait_used(want, Duration::from_secs(5)),
            "vpmd did not return the chains: used {} of {want}",
            tx.used_idx()
        );
        for i in 0..heads.len() as u16 {
            let (id, len) = tx.used_elem(start.wrapping_add(i));
            assert_eq!(id, u32::from(heads[i as usize]), "used entry {i}");
            assert_eq!(len, 0, "vpmd wrote into a TX chain");
        }
        rounds += 1;
        drain(p);
    }
    std::thread::sleep(Duration::from_millis(50));
    drain(p);
    (rounds, got)
}

#[test]
fn buffers_outside_across_or_past_guest_memory_are_skipped() {
    let sc = Scenario::start("tx-mem");
    let mut p = Sender::connect(&sc.vpmd);
    // Two regions of one memfd, cut at 2 MiB: separate mappings in vpmd.
    let cut = (RAM_LEN / 2) as u64;
    let vm = HostileVm::start_with(&sc.vpmd.socket("h"), |vm| vm.set_mem_table_cut(&[cut]))
        .expect("hostile setup");
    sc.vpmd.wait_up(&["h"]);
    let tx = vm.tx_ring();
    let bad = [
        Desc::new(0x1_0000_0000, 100, 0, 0),       // outside guest memory
        Desc::new(cut - 50, 100, 0, 0),            // across the two regions
        Desc::new(RAM_LEN as u64 - 10, 100, 0, 0), // past the last region's end
        Desc::new(HostileVm::buf(0), 0, 0, 0),     // zero length: no header
        Desc::new(HostileVm::buf(0), u32::MAX - 15, 0, 0), // length near 4 GiB
        Desc::new(u64::MAX - 10, 100, 0, 0),       // address + length overflows
        Desc::new(cut - 4096, 4096 + 1, 0, 0),     // one byte across the cut
    ];
    for (i, d) in bad.iter().enumerate() {
        tx.set_desc(i as u16, *d);
    }
    // A good frame between the bad chains: the queue keeps working.
    let good = frame_to_p(1, 200);
    let (addr, len) = vm.tx_frame(1, &good);
    tx.set_desc(20, Desc::new(addr, len, 0, 0));
    let mut heads: Vec<u16> = (0..bad.len() as u16).collect();
    heads.insert(3, 20);
    let (rounds, got) = offer_rounds(&vm, &heads, &mut p, &good);
    let bad_chains = rounds * bad.len() as u64;
    assert_eq!(got, rounds, "good frames between bad chains");
    sc.assert_logged_rate_limited(&["port h", "bad TX"], bad_chains);
    sc.finish(|s| {
        assert_eq!(counter(s, "h", "drops.bad_tx_desc"), bad_chains, "{s}");
        assert_eq!(counter(s, "h", "forwarded"), rounds, "{s}");
        assert_eq!(counter(s, "h", "ring_errors"), 0, "{s}");
    });
}

#[test]
fn malformed_chains_and_indirect_tables_are_skipped() {
    let (sc, mut p, vm) = Scenario::start_with_h("tx-chains");
    let tx = vm.tx_ring();
    let n = tx.layout.size;
    let f = frame_to_p(7, 300);
    let (addr, len) = vm.tx_frame(0, &f);
    let hdr = HostileVm::buf(0);
    // Indirect tables, 4 KiB apart.
    let t = |k: u64| HostileVm::buf(100) + 0x1000 * k;
    let set = |i: u16, d: Desc| tx.set_desc(i, d);
    // Bad chains start at these heads.
    let bad: Vec<u16> = vec![0, 1, 3, 4, 5, 6, 7, 8, 9, 12, 32, n + 3];
    set(0, Desc::new(addr, 6, NEXT, 0)); // next points back at itself
    set(1, Desc::new(addr, 6, NEXT, 2)); // a two-descriptor cycle
    set(2, Desc::new(addr, 6, NEXT, 1));
    set(3, Desc::new(addr, 6, NEXT, n + 44)); // next out of range
    set(4, Desc::new(addr, len, WRITE, 0)); // device-writable buffer in TX
    set(5, Desc::new(t(0), 17, INDIRECT, 0)); // indirect table of bad length
    set(6, Desc::new(t(0), 0, INDIRECT, 0)); // empty indirect table
    tx.write_table(t(1), &[Desc::new(t(0), 16, INDIRECT, 0)]);
    set(7, Desc::new(t(1), 16, INDIRECT, 0)); // nested indirect
    set(8, Desc::new(0x40_0000_0000, 64, INDIRECT, 0)); // table outside memory
    tx.write_table(
        t(2),
        &[Desc::new(addr, len, 0, 0), Desc::new(addr, len, 0, 0)],
    );
    set(9, Desc::new(t(2), 32, INDIRECT | NEXT, 10)); // INDIRECT with NEXT
    set(10, Desc::new(addr, len, 0, 0));
    tx.write_table(
        t(3),
        &[Desc::new(addr, 6, NEXT, 1), Desc::new(addr, 6, NEXT, 0)],
    );
    set(12, Desc::new(t(3), 32, INDIRECT, 0)); // loop inside an indirect table
                                               // Longer than the queue: slots 32..n-1 and round again, forever.
    for i in 32..n {
        set(
            i,
            Desc::new(addr, 1, NEXT, if i + 1 == n { 32 } else { i + 1 }),
        );
    }
    // n + 3: a head out of range.
    // Well-formed: the header split over three buffers, through an indirect table.
    tx.write_table(
        t(4),
        &[
            Desc::new(hdr, 4, NEXT, 1),
            Desc::new(hdr + 4, 5, NEXT, 2),
            Desc::new(hdr + 9, 3, NEXT, 3),
            Desc::new(addr + 12, len - 12, 0, 0),
        ],
    );
    set(16, Desc::new(t(4), 64, INDIRECT, 0));
    // Well-formed but empty: a header and no frame (a runt).
    set(17, Desc::new(hdr, 12, 0, 0));
    let mut heads = bad.clone();
    // The good head twice in flight: taken twice, as the ring says.
    heads.extend([16, 17, 16]);
    let (rounds, got) = offer_rounds(&vm, &heads, &mut p, &f);
    let bad_chains = rounds * bad.len() as u64;
    assert_eq!(got, 2 * rounds);
    sc.assert_logged_rate_limited(&["port h", "bad TX"], bad_chains);
    sc.finish(|s| {
        assert_eq!(counter(s, "h", "drops.bad_tx_desc"), bad_chains, "{s}");
        assert_eq!(counter(s, "h", "drops.runt"), rounds, "{s}");
        assert_eq!(counter(s, "h", "forwarded"), 2 * rounds, "{s}");
    });
}

#[test]
fn long_chains_of_empty_descriptors_do_not_stall_other_ports() {
    let sc = Scenario::start("tx-long");
    let _p = Sender::connect(&sc.vpmd);
    // The largest queue, every chain 32768 empty descriptors ending in an indirect
    // table of 65536 more: ~100k descriptor reads per chain if vpmd walked them all.
    let mut vm = HostileVm::connect(&sc.vpmd.socket("h")).expect("connect");
    vm.tx = Layout::contiguous(0x10_0000, 32768);
    let table = 0x28_0000u64;
    vm.negotiate(vpmd_hostile::vm::F_VERSION_1 | vpmd_hostile::vm::F_INDIRECT_DESC)
        .expect("negotiate");
    vm.set_mem_table().expect("mem table");
    vm.setup_queue(vpmd_hostile::vm::RX, vm.rx).expect("rx");
    vm.setup_queue(TX, vm.tx).expect("tx");
    vm.enable(vpmd_hostile::vm::RX, true).expect("enable");
    vm.enable(TX, true).expect("enable");
    sc.vpmd.wait_up(&["h"]);
    let tx = vm.tx_ring();
    let n = tx.layout.size;
    for i in 0..n - 1 {
        tx.set_desc(i, Desc::new(HostileVm::buf(0), 0, NEXT, i + 1));
    }
    tx.set_desc(n - 1, Desc::new(table, 65536 * 16, INDIRECT, 0));
    let entries: Vec<Desc> = (0..65536u32)
        .map(|i| Desc::new(HostileVm::buf(0), 0, NEXT, (i + 1) as u16))
        .collect();
    let mut entries = entries;
    entries[65535].flags = 0;
    tx.write_table(table, &entries);
    // Keep the ring full of head 0 for the whole attack.
    let end = Instant::now() + Duration::from_secs(3);
    let mut offered = 0u64;
    while Instant::now() < end {
        let used = tx.used_idx();
        let avail = tx.avail_idx();
        let room = n - avail.wrapping_sub(used);
        if room > 0 {
            tx.offer(&vec![0u16; room as usize]);
            offered += u64::from(room);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let taken = counter(&sc.stats(), "h", "tx_packets");
    eprintln!("offered {offered} long chains, vpmd took {taken}");
    sc.assert_logged_rate_limited(&["port h", "bad TX"], taken);
    sc.finish(|s| {
        let bad = counter(s, "h", "drops.bad_tx_desc");
        assert!(bad > 0 && bad == counter(s, "h", "tx_packets"), "{s}");
    });
}

#[test]
fn avail_idx_jumping_past_the_ring_stops_the_queue_until_reset() {
    let (sc, mut p, mut vm) = Scenario::start_with_h("tx-avail");
    let f = frame_to_p(3, 128);
    let (addr, len) = vm.tx_frame(0, &f);
    {
        let tx = vm.tx_ring();
        tx.set_desc(0, Desc::new(addr, len, 0, 0));
        // Further ahead than the ring holds: vpmd cannot know which entries are real.
        tx.set_avail_idx(tx.layout.size + 1000);
    }
    std::thread::sleep(ATTACK);
    let s = sc.stats();
    assert_eq!(
        counter(&s, "h", "ring_errors"),
        1,
        "stopped once, not retried: {s}"
    );
    assert_eq!(counter(&s, "h", "tx_packets"), 0, "{s}");
    sc.assert_logged_rate_limited(&["port h", "TX queue"], 1);
    // The driver resets the queue (as Linux does after NEEDS_RESET): it works again.
    // Like a real driver it zeroes its ring before handing it back: enabling first
    // would let vpmd see the bad index again (and rightly stop the queue again).
    vm.stop_queue(TX).expect("GET_VRING_BASE");
    vm.tx_ring().set_avail_idx(0);
    vm.setup_queue(TX, vm.tx).expect("re-setup");
    vm.enable(TX, true).expect("enable");
    let tx = vm.tx_ring();
    tx.set_desc(0, Desc::new(addr, len, 0, 0));
    tx.offer(&[0, 0, 0]);
    assert!(
        tx.wait_used(3, Duration::from_secs(5)),
        "queue still stopped"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = 0;
    while got < 3 && Instant::now() < deadline {
        p.fe.wait_rx(Duration::from_millis(10));
        got += p.drain();
    }
    assert_eq!(got, 3);
    sc.finish(|s| {
        assert_eq!(counter(s, "h", "ring_errors"), 1, "{s}");
        assert_eq!(counter(s, "h", "forwarded"), 3, "{s}");
    });
}
