// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Ports added and removed at runtime while another pair carries a checked stream
//! (README "Ports at runtime"): the stream loses, reorders, damages and stalls
//! nothing, and its ports' drop counters stay at zero, with every stream on the one
//! polling thread.
//!
//! vpmd is started by the shared harness and changed with the `vpmd` CLI; the ports
//! are driven by vpmd-bench's `NetFrontend` (a virtio-net driver over memfd memory).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::{assert_accounting, counter, drops, pair_mac, pairs_config, serial, Vpmd};
use serde_json::Value;
use vpmd_bench::frame::{self, Endpoints};
use vpmd_bench::transfer::{spread_sizes, transfer, TransferSpec};
use vpmd_bench::{FrontendOptions, MacAddr, NetFrontend};

/// Frames per checked chunk of the stream; chunks run back to back.
const CHUNK: u64 = 5_000;
/// Times a second pair is added, used and taken apart under the stream.
const CYCLES: usize = 6;

fn connect(socket: PathBuf) -> NetFrontend {
    NetFrontend::connect(&FrontendOptions::new(socket))
        .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

/// `vpmd ARGS --control <its socket>`: the answer, or the error it printed.
fn cli(vpmd: &Vpmd, args: &[&str]) -> Result<Value, String> {
    let out = Command::new(vpmd_bench::vpmd::binary())
        .args(args)
        .arg("--control")
        .arg(vpmd.dir().join("control.sock"))
        .output()
        .expect("run vpmd");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("one JSON line"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn mac(i: usize, side: char) -> String {
    MacAddr([0x52, 0x54, 0, 1, i as u8, side as u8]).to_string()
}

fn add_port(vpmd: &Vpmd, name: &str, mac: &str) {
    let socket = vpmd.dir().join(format!("{name}.sock"));
    let socket = socket.to_str().unwrap();
    cli(
        vpmd,
        &["port", "add", name, "--socket", socket, "--mac", mac],
    )
    .unwrap();
}

/// The stream's ports' counters that must not move: drops, rx_dropped, ring errors.
fn losses(s: &Value) -> [u64; 4] {
    [
        drops(s, "p0a"),
        drops(s, "p0b"),
        counter(s, "p0b", "rx_dropped"),
        counter(s, "p0a", "ring_errors") + counter(s, "p0b", "ring_errors"),
    ]
}

#[test]
fn ports_come_and_go_under_a_checked_stream() {
    let _serial = serial();
    let vpmd = Vpmd::start("runtime-ports", pairs_config(1));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready) = mpsc::channel();
    let (go_tx, go) = mpsc::channel::<()>();
    let stream = {
        let (stop, sa, sb) = (stop.clone(), vpmd.socket("p0a"), vpmd.socket("p0b"));
        std::thread::spawn(move || {
            let (mut a, mut b) = (connect(sa), connect(sb));
            ready_tx.send(()).unwrap();
            // Not before vpmd polls both: a frame sent to a peer not up yet is
            // dropped (peer_down), and the stream would wait for it forever.
            go.recv().unwrap();
            let mut spec = TransferSpec {
                count: CHUNK,
                sizes: spread_sizes(60, 1514, 53),
                dst: pair_mac(0, 'b'),
                src: pair_mac(0, 'a'),
                first_seq: 0,
                window: 128,
                // A stall this long of the stream fails the test.
                idle_timeout: Duration::from_secs(2),
            };
            let mut chunks = 0u64;
            while !stop.load(Ordering::Relaxed) || chunks < 2 {
                let r = transfer(&mut a, &mut b, &spec);
                let r = r.map_err(|e| format!("{:#}", anyhow::Error::from(e)))?;
                assert_eq!(r.frames, CHUNK);
                spec.first_seq += CHUNK;
                chunks += 1;
            }
            Ok::<u64, String>(spec.first_seq)
        })
    };
    ready.recv().unwrap();
    vpmd.wait_state(&["p0a", "p0b"], true);
    go_tx.send(()).unwrap();
    // Let the stream run, then note what its ports lost so far (nothing, since
    // both ends were up before the first frame).
    std::thread::sleep(Duration::from_millis(200));
    let before = losses(&vpmd.stats());

    for i in 0..CYCLES {
        let (x, y) = (format!("q{i}x"), format!("q{i}y"));
        add_port(&vpmd, &x, &mac(i, 'x'));
        add_port(&vpmd, &y, &mac(i, 'y'));
        // A bad request on the way changes nothing.
        let e = cli(&vpmd, &["veth", "add", &x, "p0a"]).unwrap_err();
        assert!(e.contains("veth.ports[1]: "), "{e}");
        cli(&vpmd, &["veth", "add", &x, &y]).unwrap();
        let mut fx = connect(vpmd.socket(&x));
        let mut fy = connect(vpmd.socket(&y));
        vpmd.wait_state(&[x.as_str(), y.as_str()], true);
        // The new pair carries frames of its own, checked too.
        let spec = TransferSpec {
            count: 1_000,
            sizes: spread_sizes(60, 1514, 17),
            dst: [0x52, 0x54, 0, 1, i as u8, b'y'],
            src: [0x52, 0x54, 0, 1, i as u8, b'x'],
            first_seq: 0,
            window: 64,
            idle_timeout: Duration::from_secs(5),
        };
        transfer(&mut fx, &mut fy, &spec).unwrap_or_else(|e| panic!("{x} -> {y}: {e}"));
        // y goes while x is still sending to it; its VM's connection is closed.
        let ep = Endpoints {
            src_mac: spec.src,
            dst_mac: spec.dst,
            ..Endpoints::default()
        };
        let mut buf = Vec::new();
        for seq in 0..64 {
            frame::build(&mut buf, &ep, seq, 200);
            let _ = fx.send(&buf);
        }
        let del = cli(&vpmd, &["port", "del", &y]).unwrap();
        assert_eq!(del["connected"], Value::Bool(true), "{del}");
        assert_eq!(del["veth_removed"], serde_json::json!([x, y]), "{del}");
        assert!(del["in_flight"][format!("{x}->{y}")].is_u64(), "{del}");
        if i % 2 == 0 {
            // Added back and paired again, then both go.
            add_port(&vpmd, &y, &mac(i, 'y'));
            cli(&vpmd, &["veth", "add", &y, &x]).unwrap();
            cli(&vpmd, &["port", "del", &y]).unwrap();
        }
        cli(&vpmd, &["port", "del", &x]).unwrap();
        drop((fx, fy));
    }
    let list = cli(&vpmd, &["port", "list", "--json"]).unwrap();
    assert_eq!(
        list["threads"][0]["streams"],
        serde_json::json!(["p0a->p0b", "p0b->p0a"]),
        "{list}"
    );

    stop.store(true, Ordering::Relaxed);
    let sent = stream
        .join()
        .expect("stream thread")
        .unwrap_or_else(|e| panic!("the checked stream p0a -> p0b broke: {e}"));
    let s = vpmd.wait_stats(Duration::from_secs(2), |s| {
        counter(s, "p0b", "rx_packets") == sent
    });
    assert_eq!(losses(&s), before, "the stream's ports lost frames: {s}");
    assert_eq!(before, [0; 4], "{s}");
    assert_eq!(counter(&s, "p0a", "tx_packets"), sent, "{s}");
    assert_eq!(counter(&s, "p0b", "rx_packets"), sent, "{s}");
    assert_accounting(&s, "p0a", "p0b");
    let names: Vec<&str> = s["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["p0a", "p0b"], "removed ports left no entry");
    let log = vpmd.log();
    assert!(
        log.contains("connection closed and its memory unmapped"),
        "no removal with a connected VM logged: {log}"
    );
    eprintln!(
        "runtime ports: {CYCLES} pairs added, used and removed under a checked stream of \
         {sent} frames p0a -> p0b on the same polling thread: none lost, reordered or \
         damaged, no stall over 2 s, drops 0"
    );
}
