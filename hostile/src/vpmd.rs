//! A `vpmd run` of a test's own: two veth pairs in a temp dir, stats, log, clean stop.
//!
//! Pair 1 (`g1`, `g2`) carries the well-behaved checked transfer; pair 2 (`h`, `p`)
//! has the hostile frontend on `h` and, where an attack needs frames sent to `h`, a
//! well-behaved sender on `p`. One polling thread on the last core polls all four
//! streams, so an attack that slowed that thread would show in pair 1's transfer.
//!
//! The binary is the one `cargo build --release -p vpmd` (or `cargo test
//! --workspace`) put next to the test binary's directory: `VPMD_BIN` overrides it.
#![allow(unsafe_code)] // kill(2) of our own child.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The stats document readers, shared with the other harnesses.
pub use vpmd_bench::stats_doc::{counter, drops, port};

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

/// Where the vpmd binary is.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("VPMD_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/vpmd
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("vpmd"))
        .expect("test binary has no grandparent directory");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --release -p vpmd` first (or set VPMD_BIN)",
        bin.display()
    );
    bin
}

/// vpmd stops within this long of SIGTERM, whatever its frontends are doing.
pub const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// A running vpmd; SIGTERM and cleanup on drop if [`Vpmd::stop`] was not called.
pub struct Vpmd {
    child: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
}

impl Vpmd {
    /// Starts vpmd with the two-pair config in a fresh temp dir named after `test`,
    /// and waits until every socket exists.
    pub fn start(test: &str) -> Vpmd {
        let dir = std::env::temp_dir().join(format!("vpmd-hostile-{test}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let core = std::thread::available_parallelism().map_or(1, |n| n.get()) - 1;
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
        let config_path = dir.join("vpmd.toml");
        std::fs::write(&config_path, config).expect("write config");
        let log = std::fs::File::create(dir.join("vpmd.log")).expect("log file");
        let bin = binary();
        let child = Command::new(&bin)
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn vpmd");
        let mut v = Vpmd {
            child: Some(child),
            dir,
            bin,
        };
        v.wait_ready(Duration::from_secs(20));
        v
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let mut names: Vec<String> = PORTS.iter().map(|(n, _)| format!("{n}.sock")).collect();
            names.push("control.sock".into());
            if names.iter().all(|n| self.dir.join(n).exists()) {
                return;
            }
            assert!(
                self.alive(),
                "vpmd exited during start-up; log:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "vpmd not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The vhost-user socket of port `name`.
    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.sock"))
    }

    /// Everything vpmd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vpmd.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `vpmd stats --json`, parsed.
    pub fn stats(&self) -> Value {
        stats_at(&self.bin, &self.dir.join("control.sock"))
            .unwrap_or_else(|e| panic!("vpmd stats: {e}\nlog:\n{}", self.log()))
    }

    /// A handle that can read stats from another thread.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader {
            bin: self.bin.clone(),
            control: self.dir.join("control.sock"),
        }
    }

    /// Polls stats until `pred` holds or `timeout` passes; returns the last stats.
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

    /// Waits until the ports are all "up".
    pub fn wait_up(&self, ports: &[&str]) {
        let s = self.wait_stats(Duration::from_secs(10), |s| {
            ports.iter().all(|p| port(s, p)["state"] == "up")
        });
        for p in ports {
            assert_eq!(
                port(&s, p)["state"],
                "up",
                "port {p}: {s}\nlog:\n{}",
                self.log()
            );
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// File descriptors the process holds now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// SIGTERM, waits up to [`STOP_DEADLINE`] (vpmd's promise), and returns the exit
    /// status; fails if it had to be killed. The final counters must be in the log.
    pub fn stop(&mut self) -> ExitStatus {
        let status = self.terminate();
        let log = self.log();
        let _ = std::fs::remove_dir_all(&self.dir);
        let status = status.unwrap_or_else(|| {
            panic!("vpmd did not stop on SIGTERM within {STOP_DEADLINE:?}; log:\n{log}")
        });
        assert!(
            log.contains("final counters:"),
            "no final counters; log:\n{log}"
        );
        status
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid, not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Vpmd {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if std::thread::panicking() {
            eprintln!("---- vpmd log ----\n{}", self.log());
        }
        let _ = self.terminate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads a running vpmd's stats (cloneable into other threads).
#[derive(Clone)]
pub struct StatsReader {
    bin: PathBuf,
    control: PathBuf,
}

impl StatsReader {
    /// `vpmd stats --json`, parsed.
    pub fn stats(&self) -> Result<Value, String> {
        stats_at(&self.bin, &self.control)
    }
}

fn stats_at(bin: &Path, control: &Path) -> Result<Value, String> {
    let out = Command::new(bin)
        .args(["stats", "--json", "--control"])
        .arg(control)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}
