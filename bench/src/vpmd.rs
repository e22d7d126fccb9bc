// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The one harness that starts `vpmd` for tests (pmd's integration tests, the hostile
//! suite): a directory of its own with the config, log and sockets; `vpmd stats
//! --json`; SIGTERM, reap and clean up on drop, however the test ends.
//!
//! The binary is `VPMD_BIN`, else the `vpmd` that cargo built next to the test
//! binary's directory (`target/<profile>/vpmd`).

#![allow(unsafe_code)] // kill(2) of our own child.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::stats_doc::port;

/// vpmd stops within this long of SIGTERM, whatever its frontends are doing.
pub const STOP_DEADLINE: Duration = Duration::from_secs(2);
/// How long start-up may take before the harness gives up.
const START_DEADLINE: Duration = Duration::from_secs(20);
/// How long dropping a [`Vpmd`] waits for it to stop before killing it.
const DROP_DEADLINE: Duration = Duration::from_secs(5);

/// Where the vpmd binary is: `VPMD_BIN`, else `target/<profile>/vpmd`.
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

/// A running vpmd.
pub struct Vpmd {
    child: Option<Child>,
    dir: PathBuf,
    bin: PathBuf,
}

impl Vpmd {
    /// Writes `config(dir)` to a fresh temp dir named after `name`, starts [`binary`]
    /// on it and returns once it logged "vpmd ready".
    pub fn start(name: &str, config: impl FnOnce(&Path) -> String) -> Vpmd {
        Vpmd::start_binary(binary(), name, config)
    }

    /// [`Vpmd::start`] with the binary `bin`.
    pub fn start_binary(
        bin: impl Into<PathBuf>,
        name: &str,
        config: impl FnOnce(&Path) -> String,
    ) -> Vpmd {
        let bin = bin.into();
        let dir = std::env::temp_dir().join(format!("vpmd-{name}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config_path = dir.join("vpmd.toml");
        std::fs::write(&config_path, config(&dir)).expect("write config");
        let log = std::fs::File::create(dir.join("vpmd.log")).expect("log file");
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
        let mut vpmd = Vpmd {
            child: Some(child),
            dir,
            bin,
        };
        let deadline = Instant::now() + START_DEADLINE;
        while !vpmd.log().contains("vpmd ready") {
            if let Some(Ok(Some(status))) = vpmd.child.as_mut().map(Child::try_wait) {
                panic!(
                    "vpmd exited during start-up ({status}); log:\n{}",
                    vpmd.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "vpmd not ready after {START_DEADLINE:?}; log:\n{}",
                vpmd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        vpmd
    }

    /// Its directory: config, log, sockets.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The vhost-user socket of port `name` (`<dir>/<name>.sock`).
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

    /// Its process id (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// File descriptors the process holds now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// `vpmd stats --json`, parsed.
    pub fn stats(&self) -> Value {
        self.stats_reader()
            .stats()
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

    /// Waits until every port in `names` is "up" (or, with `up` false, "down").
    pub fn wait_state(&self, names: &[&str], up: bool) {
        let want = if up { "up" } else { "down" };
        let s = self.wait_stats(Duration::from_secs(10), |s| {
            names.iter().all(|p| port(s, p)["state"] == want)
        });
        for p in names {
            assert_eq!(
                port(&s, p)["state"],
                want,
                "port {p}: {s}\nlog:\n{}",
                self.log()
            );
        }
    }

    /// Waits until every port in `names` is "up".
    pub fn wait_up(&self, names: &[&str]) {
        self.wait_state(names, true);
    }

    /// SIGTERM, waits up to [`STOP_DEADLINE`] (vpmd's promise), and returns the exit
    /// status; fails if it had to be killed. The final counters must be in the log.
    pub fn stop(&mut self) -> ExitStatus {
        let status = self.terminate(STOP_DEADLINE);
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

    /// SIGTERM, then SIGKILL if it is still running after `deadline`; `None` if killed.
    fn terminate(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on the pid of our own child, not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + deadline;
        while Instant::now() < until {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("vpmd ignored SIGTERM for {deadline:?}; killing it");
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
        let _ = self.terminate(DROP_DEADLINE);
        if std::thread::panicking() {
            eprintln!("---- vpmd log ----\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads a running vpmd's stats (cloneable into other threads).
#[derive(Clone, Debug)]
pub struct StatsReader {
    bin: PathBuf,
    control: PathBuf,
}

impl StatsReader {
    /// `vpmd stats --json`, parsed.
    pub fn stats(&self) -> Result<Value, String> {
        let out = Command::new(&self.bin)
            .args(["stats", "--json", "--control"])
            .arg(&self.control)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }
}
