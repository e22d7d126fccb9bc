// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What pmd's integration tests share: the one vpmd harness (`vpmd_bench::vpmd`), a
//! lock so one vpmd runs at a time, the veth-pairs config and the accounting check.
#![allow(dead_code, unused_imports)] // Each test binary uses its own subset.

use std::sync::Mutex;

use serde_json::Value;

/// The stats document readers, shared with the other harnesses.
pub use vpmd_bench::stats_doc::{counter, drops, port};
/// The one vpmd harness (shared with the hostile suite).
pub use vpmd_bench::vpmd::Vpmd;

/// One busy-polling vpmd at a time: two on a two-core machine starve each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the one-vpmd-at-a-time lock for a test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// MAC of port `p<pair><side>` in [`pairs_config`]: 52:54:00:00:<pair>:0a / 0b.
pub fn pair_mac(pair: usize, side: char) -> [u8; 6] {
    [
        0x52,
        0x54,
        0,
        0,
        pair as u8,
        if side == 'a' { 0x0a } else { 0x0b },
    ]
}

/// `n` veth pairs of server-role ports `p<i>a`/`p<i>b`, polled by one thread on the
/// last core.
pub fn pairs_config(n: usize) -> impl Fn(&std::path::Path) -> String {
    move |dir| {
        let last_core = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1;
        let mut c = format!(
            "[pmd]\ncores = [{last_core}]\ncontrol_socket = \"{}\"\n",
            dir.join("control.sock").display()
        );
        for i in 0..n {
            for side in ['a', 'b'] {
                let m = pair_mac(i, side);
                c += &format!(
                    "\n[[port]]\nname = \"p{i}{side}\"\nsocket = \"{}\"\nmac = \"{}\"\n",
                    dir.join(format!("p{i}{side}.sock")).display(),
                    vpmd_bench::MacAddr(m)
                );
            }
            c += &format!("\n[[veth]]\nports = [\"p{i}a\", \"p{i}b\"]\n");
        }
        c
    }
}

/// docs/interfaces.md, exactly: `tx_packets` = `forwarded` + drops on `name`, and
/// `forwarded` = `peer`'s `rx_packets`. Call it while no traffic flows.
pub fn assert_accounting(stats: &Value, name: &str, peer: &str) {
    let (tx, fwd) = (
        counter(stats, name, "tx_packets"),
        counter(stats, name, "forwarded"),
    );
    assert_eq!(
        tx,
        fwd + drops(stats, name),
        "{name}: tx_packets != forwarded + drops: {stats}"
    );
    assert_eq!(
        fwd,
        counter(stats, peer, "rx_packets"),
        "{name}: forwarded != {peer} rx_packets: {stats}"
    );
}
