// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! vpmd driven the way cloud-hypervisor drives a vhost-user-net backend: a Rust frontend
//! (vpmd-bench) per port, memfd guest memory, cloud-hypervisor's message order.
//!
//! Each test starts its own `vpmd run --config` in a temp dir (two server ports forming a
//! veth pair) and stops it with SIGTERM however the test ends. Tests run one at a time: two
//! busy-polling daemons on a two-core machine would starve each other and the test.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{counter, port, serial, Vpmd};
use vpmd_bench::transfer::{spread_sizes, transfer, TransferSpec};
use vpmd_bench::{FrontendOptions, MacAddr, NetFrontend};

const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const MTU_A: u16 = 1500;
const MTU_B: u16 = 9000;

/// Two server ports `a` (MTU 1500) and `b` (MTU 9000) forming a veth pair.
fn config(dir: &Path) -> String {
    let last_core = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1;
    format!(
        r#"[pmd]
cores = [{last_core}]
control_socket = "{control}"

[[port]]
name = "a"
socket = "{a}"
mode = "server"
mac = "{mac_a}"
mtu = {MTU_A}

[[port]]
name = "b"
socket = "{b}"
mode = "server"
mac = "{mac_b}"
mtu = {MTU_B}

[[veth]]
ports = ["a", "b"]
"#,
        control = dir.join("control.sock").display(),
        a = dir.join("a.sock").display(),
        b = dir.join("b.sock").display(),
        mac_a = MacAddr(MAC_A),
        mac_b = MacAddr(MAC_B),
    )
}

fn connect(socket: PathBuf, rx_buf_size: u32) -> NetFrontend {
    let mut o = FrontendOptions::new(socket);
    o.rx_buf_size = rx_buf_size;
    NetFrontend::connect(&o).unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

#[test]
fn config_space_traffic_both_ways_and_counters() {
    let _serial = serial();
    let vpmd = Vpmd::start("ch-traffic", config);
    let mut a = connect(vpmd.socket("a"), 2048);
    let mut b = connect(vpmd.socket("b"), 2048);

    for (f, mac, mtu) in [(&a, MAC_A, MTU_A), (&b, MAC_B, MTU_B)] {
        let info = f.info();
        assert!(
            info.config.is_some(),
            "GET_CONFIG not negotiated: {:?}",
            info.negotiated
        );
        assert_eq!(f.mac().map(MacAddr), Some(MacAddr(mac)));
        assert_eq!(f.mtu(), Some(mtu));
        assert_eq!(info.layout.hdr_len, 12);
    }
    vpmd.wait_state(&["a", "b"], true);

    let n = 1000;
    let mut spec = TransferSpec {
        count: n,
        sizes: spread_sizes(60, 1514, 101),
        dst: MAC_B,
        src: MAC_A,
        first_seq: 0,
        // Well below the receiver's 256 RX buffers: nothing may legitimately be dropped.
        window: 128,
        idle_timeout: Duration::from_secs(5),
    };
    let bytes = spec.total_bytes();
    let r = transfer(&mut a, &mut b, &spec)
        .unwrap_or_else(|e| panic!("a -> b: {:#}\n{}", anyhow::Error::from(e), vpmd.stats()));
    assert_eq!((r.frames, r.bytes), (n, bytes));
    (spec.dst, spec.src, spec.first_seq) = (MAC_A, MAC_B, 1 << 32);
    let r = transfer(&mut b, &mut a, &spec)
        .unwrap_or_else(|e| panic!("b -> a: {:#}\n{}", anyhow::Error::from(e), vpmd.stats()));
    assert_eq!((r.frames, r.bytes), (n, bytes));
    for f in [&mut a, &mut b] {
        assert!(
            f.wait_tx_done(Duration::from_secs(5)),
            "TX chains not returned"
        );
        let s = f.stats();
        assert_eq!((s.bad_used, s.rx.malformed), (0, 0), "{s:?}");
        assert_eq!((s.rx.packets, s.tx.packets), (n, n));
    }

    // Counters may trail delivery by a burst; give them a moment, then compare exactly.
    let s = vpmd.wait_stats(Duration::from_secs(2), |s| {
        ["a", "b"]
            .iter()
            .all(|p| counter(s, p, "rx_packets") == n && counter(s, p, "tx_packets") == n)
    });
    for p in ["a", "b"] {
        assert_eq!(counter(&s, p, "tx_packets"), n, "{p}: {s}");
        assert_eq!(counter(&s, p, "tx_bytes"), bytes, "{p}: {s}");
        assert_eq!(counter(&s, p, "rx_packets"), n, "{p}: {s}");
        assert_eq!(counter(&s, p, "rx_bytes"), bytes, "{p}: {s}");
        let drops = port(&s, p)["drops"]
            .as_object()
            .unwrap_or_else(|| panic!("{p} drops: {s}"));
        for (why, v) in drops {
            assert_eq!(v.as_u64(), Some(0), "{p} drops.{why}: {s}");
        }
    }
    drop((a, b));
}

#[test]
fn frame_larger_than_one_rx_buffer_arrives_whole() {
    let _serial = serial();
    let vpmd = Vpmd::start("ch-mrg", config);
    let mut a = connect(vpmd.socket("a"), 2048);
    let mut b = connect(vpmd.socket("b"), 512);
    assert!(
        b.info().layout.mrg_rxbuf,
        "MRG_RXBUF not negotiated: {:?}",
        b.info().negotiated
    );
    vpmd.wait_state(&["a", "b"], true);

    let sizes = vec![1500, 1514, 500, 501, 1000, 60];
    // 12-byte header + frame over 512-byte buffers: all but 500 and 60 need several.
    let merged_each_round = sizes.iter().filter(|&&s| s + 12 > 512).count() as u64;
    let spec = TransferSpec {
        count: sizes.len() as u64 * 10,
        sizes,
        dst: MAC_B,
        src: MAC_A,
        first_seq: 7,
        window: 16,
        idle_timeout: Duration::from_secs(5),
    };
    transfer(&mut a, &mut b, &spec)
        .unwrap_or_else(|e| panic!("a -> b: {:#}\n{}", anyhow::Error::from(e), vpmd.stats()));
    let s = b.stats();
    assert_eq!(s.rx.merged, merged_each_round * 10, "{s:?}");
    assert_eq!((s.bad_used, s.rx.malformed), (0, 0), "{s:?}");
    drop((a, b));
}
