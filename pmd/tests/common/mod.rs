//! A running `vpmd` for integration tests: its own directory, config, log and control
//! socket; SIGTERM, reap and clean up on drop, however the test ends.
#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The stats document readers, shared with the other harnesses.
pub use vpmd_bench::stats_doc::{counter, drops, port};

/// The binary under test.
pub const VPMD: &str = env!("CARGO_BIN_EXE_vpmd");

/// One busy-polling vpmd at a time: two on a two-core machine starve each other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Holds the one-vpmd-at-a-time lock for a test.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
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
        let last_core = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
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

/// A running vpmd.
pub struct Vpmd {
    child: Child,
    /// Its directory: config, log, sockets.
    pub dir: PathBuf,
}

impl Vpmd {
    /// Writes `config(dir)` and starts vpmd on it; returns once it logged "vpmd ready".
    pub fn start(name: &str, config: impl Fn(&std::path::Path) -> String) -> Vpmd {
        let dir = std::env::temp_dir().join(format!("vpmd-{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("vpmd.toml");
        std::fs::write(&config_path, config(&dir)).unwrap();
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while !vpmd.log().contains("vpmd ready") {
            if let Ok(Some(status)) = vpmd.child.try_wait() {
                panic!("vpmd exited early ({status}); log:\n{}", vpmd.log());
            }
            assert!(
                Instant::now() < deadline,
                "vpmd not ready after 20 s; log:\n{}",
                vpmd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        vpmd
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The socket of port `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vpmd.log")).unwrap_or_default()
    }

    /// `vpmd stats --json`, parsed.
    pub fn stats(&self) -> Value {
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
        serde_json::from_slice(&out.stdout).expect("vpmd stats --json is JSON")
    }

    /// Waits up to `timeout` until `pred` holds; returns the last stats either way.
    pub fn wait_stats(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if pred(&s) || Instant::now() > deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every port in `names` is "up" (or, with `up` false, "down").
    pub fn wait_state(&self, names: &[&str], up: bool) {
        let want = if up { "up" } else { "down" };
        let s = self.wait_stats(Duration::from_secs(10), |s| {
            names.iter().all(|p| port(s, p)["state"] == want)
        });
        for p in names {
            assert_eq!(port(&s, p)["state"], want, "port {p}: {s}\n{}", self.log());
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
