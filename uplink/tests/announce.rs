// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A migrated VM's announcement on a real veth pair: the RARP request the
//! `Announcer` sends out of the host end arrives on the namespace's end whole,
//! broadcast, from the VM's MAC, and a bridge in the namespace learns that MAC
//! on the port it came in by (what the outside switch does after a migration).

mod common;

use std::time::Duration;

use common::*;
use vpmd_uplink::announce::{rarp_frame, Announcer, ETH_P_RARP};

#[test]
fn the_rarp_request_leaves_the_uplink_and_a_bridge_learns_the_mac() {
    if !is_root() {
        return;
    }
    let net = TestNet::new("ann", 1, 1500);
    let rx = PacketSocket::open_in_netns(&net.ns, &net.ns_if).expect("capture socket");
    let announcer = Announcer::open(&net.host_if).expect("announcer");
    announcer.send_rarp(VM_MAC).expect("sent");
    let mut got = None;
    while let Some(f) = rx.recv(PATIENCE) {
        if f.get(12..14) == Some(&ETH_P_RARP.to_be_bytes()[..]) {
            got = Some(f);
            break;
        }
    }
    let f = got.expect("no RARP frame arrived on the namespace's end");
    assert_eq!(
        &f[..60],
        &rarp_frame(VM_MAC)[..],
        "QEMU's RARP request, whole"
    );
    assert_eq!(&f[0..6], &BROADCAST);

    // The namespace's end in a bridge: it learns the VM's MAC on that port.
    ip(&["-n", &net.ns, "link", "add", "br0", "type", "bridge"]);
    ip(&["-n", &net.ns, "link", "set", &net.ns_if, "master", "br0"]);
    ip(&["-n", &net.ns, "link", "set", "br0", "up"]);
    // A new bridge port goes through learning first (forward delay 0 skips it).
    let _ = net.exec_in_ns(&[
        "ip",
        "link",
        "set",
        "br0",
        "type",
        "bridge",
        "forward_delay",
        "0",
    ]);
    let mac = vpmd_uplink::MacAddr(VM_MAC).to_string();
    let mut learnt = false;
    for _ in 0..50 {
        announcer.send_rarp(VM_MAC).expect("sent");
        std::thread::sleep(Duration::from_millis(100));
        let fdb = net
            .exec_in_ns(&["bridge", "fdb", "show", "br", "br0"])
            .unwrap_or_default();
        if fdb
            .lines()
            .any(|l| l.starts_with(&mac) && l.contains(&net.ns_if))
        {
            learnt = true;
            break;
        }
    }
    assert!(learnt, "the bridge did not learn {mac} on {}", net.ns_if);
}

#[test]
fn an_unknown_uplink_is_an_error_naming_it() {
    let e = Announcer::open("vpmd-nope0").unwrap_err();
    assert!(e.to_string().contains("vpmd-nope0"), "{e}");
}
