// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A `vpmd run` of a test's own: two veth pairs in a temp dir, stats, log, clean stop.
//!
//! Pair 1 (`g1`, `g2`) carries the well-behaved checked transfer; pair 2 (`h`, `p`)
//! has the hostile frontend on `h` and, where an attack needs frames sent to `h`, a
//! well-behaved sender on `p`. One polling thread on the last core polls all four
//! streams, so an attack that slowed that thread would show in pair 1's transfer.
//!
//! Starting, stats and stopping are `vpmd_bench::vpmd`, the harness pmd's tests use
//! too (the binary: `VPMD_BIN`, else the `vpmd` next to the test binary's directory).

/// The stats document readers, shared with the other harnesses.
pub use vpmd_bench::stats_doc::{counter, drops, port};
/// The one vpmd harness.
pub use vpmd_bench::vpmd::{binary, StatsReader, Vpmd, STOP_DEADLINE};

/// Ports and their MACs: pair 1 then pair 2.
pub const PORTS: [(&str, [u8; 6]); 4] = [
    ("g1", [0x52, 0x54, 0, 0, 1, 1]),
    ("g2", [0x52, 0x54, 0, 0, 1, 2]),
    ("h", [0x52, 0x54, 0, 0, 2, 1]),
    ("p", [0x52, 0x54, 0, 0, 2, 2]),
];

/// MAC of port `name`.
pub fn mac(name: &str) -> [u8; 6] {
    PORTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| *m)
        .unwrap_or_else(|| panic!("no port {name}"))
}

/// Starts vpmd with the two-pair config in a fresh temp dir named after `test`.
pub fn start(test: &str) -> Vpmd {
    Vpmd::start(&format!("hostile-{test}"), |dir| {
        let core = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1;
        let mut config = format!(
            "[pmd]\ncores = [{core}]\ncontrol_socket = \"{}\"\n",
            dir.join("control.sock").display()
        );
        for (name, mac) in PORTS {
            config.push_str(&format!(
                "\n[[port]]\nname = \"{name}\"\nsocket = \"{}\"\nmac = \"{}\"\n",
                dir.join(format!("{name}.sock")).display(),
                vpmd_bench::MacAddr(mac)
            ));
        }
        config
            .push_str("\n[[veth]]\nports = [\"g1\", \"g2\"]\n\n[[veth]]\nports = [\"h\", \"p\"]\n");
        config
    })
}
