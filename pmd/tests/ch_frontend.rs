//! vpmd driven the way cloud-hypervisor drives a vhost-user-net backend: a Rust frontend
//! (vpmd-bench) per port, memfd guest memory, cloud-hypervisor's message order.
//!
//! Each test starts its own `vpmd run --config` in a temp dir (two server ports forming a
//! veth pair) and stops it with SIGTERM however the test ends. Tests run one at a time: two
//! busy-polling daemons on a two-core machine would starve each other and the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use vpmd_bench::transfer::{spread_sizes, transfer, TransferSpec};
use vpmd_bench::{format_mac, FrontendOptions, NetFrontend};

const VPMD: &str = env!("CARGO_BIN_EXE_vpmd");
const MAC_A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];
const MTU_A: u16 = 1500;
const MTU_B: u16 = 9000;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running vpmd in its own directory; SIGTERM, reap and clean up on drop.
struct Vpmd {
    child: Child,
    dir: PathBuf,
}

impl Vpmd {
    fn start(name: &str) -> Vpmd {
        let dir = std::env::temp_dir().join(format!("vpmd-ch-{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let last_core = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
        let config = format!(
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
            mac_a = format_mac(&MAC_A),
            mac_b = format_mac(&MAC_B),
        );
        let config_path = dir.join("vpmd.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.join("vpmd.log")).unwrap();
        let child = Command::new(VPMD)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vpmd");
        let mut vpmd = Vpmd { child, dir };
        vpmd.wait_for_sockets(Duration::from_secs(20));
        vpmd
    }

    fn socket(&self, port: &str) -> PathBuf {
        self.dir.join(format!("{port}.sock"))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vpmd.log")).unwrap_or_default()
    }

    fn wait_for_sockets(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let ready = |d: &Path| {
            ["a.sock", "b.sock", "control.sock"]
                .iter()
                .all(|s| d.join(s).exists())
        };
        while !ready(&self.dir) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("vpmd exited early ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "vpmd sockets missing after {timeout:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `vpmd stats --json --control <dir>/control.sock`, parsed.
    fn stats(&self) -> Value {
        let out: Output = Command::new(VPMD)
            .args(["stats", "--json", "--control"])
            .arg(self.dir.join("control.sock"))
            .output()
            .expect("run vpmd stats");
        assert!(
            out.status.success(),
            "vpmd stats failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "vpmd stats --json output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Waits until `pred` holds for the stats, returning the last stats either way.
    fn wait_stats(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if pred(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until both ports report `state: "up"` (their rings are with the polling thread;
    /// frames sent before that would be dropped as peer_down).
    fn wait_up(&self) {
        let s = self.wait_stats(Duration::from_secs(10), |s| {
            ["a", "b"].iter().all(|p| port(s, p)["state"] == "up")
        });
        for p in ["a", "b"] {
            assert_eq!(
                port(&s, p)["state"],
                "up",
                "port {p} not up: {s}\nlog:\n{}",
                self.log()
            );
        }
    }
}

impl Drop for Vpmd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the pid of our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            eprintln!("vpmd ignored SIGTERM for 5 s; killing it");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("vpmd log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn port<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no port {name} in stats: {stats}"))
}

fn counter(stats: &Value, name: &str, field: &str) -> u64 {
    port(stats, name)[field]
        .as_u64()
        .unwrap_or_else(|| panic!("port {name} has no counter {field}: {stats}"))
}

fn connect(socket: PathBuf, rx_buf_size: u32) -> NetFrontend {
    let mut o = FrontendOptions::new(socket);
    o.rx_buf_size = rx_buf_size;
    NetFrontend::connect(&o).unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn config_space_traffic_both_ways_and_counters() {
    let _serial = serial();
    let vpmd = Vpmd::start("traffic");
    let mut a = connect(vpmd.socket("a"), 2048);
    let mut b = connect(vpmd.socket("b"), 2048);

    for (f, mac, mtu) in [(&a, MAC_A, MTU_A), (&b, MAC_B, MTU_B)] {
        let info = f.info();
        assert!(
            info.config.is_some(),
            "GET_CONFIG not negotiated: {:?}",
            info.negotiated
        );
        assert_eq!(f.mac().map(|m| format_mac(&m)), Some(format_mac(&mac)));
        assert_eq!(f.mtu(), Some(mtu));
        assert_eq!(info.layout.hdr_len, 12);
    }
    vpmd.wait_up();

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
    let r =
        transfer(&mut a, &mut b, &spec).unwrap_or_else(|e| panic!("a -> b: {e}\n{}", vpmd.stats()));
    assert_eq!((r.frames, r.bytes), (n, bytes));
    (spec.dst, spec.src, spec.first_seq) = (MAC_A, MAC_B, 1 << 32);
    let r =
        transfer(&mut b, &mut a, &spec).unwrap_or_else(|e| panic!("b -> a: {e}\n{}", vpmd.stats()));
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
    let vpmd = Vpmd::start("mrg");
    let mut a = connect(vpmd.socket("a"), 2048);
    let mut b = connect(vpmd.socket("b"), 512);
    assert!(
        b.info().layout.mrg_rxbuf,
        "MRG_RXBUF not negotiated: {:?}",
        b.info().negotiated
    );
    vpmd.wait_up();

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
    transfer(&mut a, &mut b, &spec).unwrap_or_else(|e| panic!("a -> b: {e}\n{}", vpmd.stats()));
    let s = b.stats();
    assert_eq!(s.rx.merged, merged_each_round * 10, "{s:?}");
    assert_eq!((s.bad_used, s.rx.malformed), (0, 0), "{s:?}");
    drop((a, b));
}
