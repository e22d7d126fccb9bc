// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A running vpmd: ports, their vhost-user connections, macvlan uplinks, the polling
//! threads and the control socket, started from a [`Config`] and stopped in the
//! reverse order.
//!
//! Start-up has two phases, so that `main` can drop every privilege between them, on
//! its one thread: [`Switch::open`] opens everything that may need a capability (the
//! sockets with their modes and owners, the uplinks with their XDP programs, AF_XDP
//! sockets, UMEMs and packet taps) and starts no thread; [`Opened::spawn`] starts the
//! polling, connection, control and watchdog threads, which inherit whatever
//! privileges are left by then.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vpmd_backend::connection::{Connection, ConnectionError, PortSocket, Role, SocketAccess};
use vpmd_backend::fault_guard::{self, GuardError};
use vpmd_backend::port::VirtioNetPort;
use vpmd_backend::stall_guard::{self, StallGuardError, Watchdog};

use crate::config::{Config, Mode};
use crate::control::{ControlError, ControlServer, ControlSocket};
use crate::counters::{PortCounters, ThreadCounters};
use crate::fwd::veth::VethStream;
use crate::fwd::{Stream, VhostEndpoint};
use crate::pmd_thread::{IdlePolicy, PmdThread};
use crate::stats::{PortEntry, PortKind, Registry, Snapshot, ThreadEntry};
use crate::tsc;
use crate::uplink_setup::{self, UplinkSetupError};
use vpmd_uplink::Uplink;

/// Why vpmd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket's directory could not be created.
    #[error("cannot create directory {path} for {what}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Whose socket lives there.
        what: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The control socket failed.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A port's socket failed.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The control socket's mode, owner or group could not be set.
    #[error("cannot set mode, owner or group of control socket {path}")]
    ControlAccess {
        /// The socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A macvlan's uplink could not be set up.
    #[error(transparent)]
    Uplink(#[from] UplinkSetupError),
    /// The SIGBUS guard (guest memory that goes away) could not be set up.
    #[error("cannot set up the guard against guest memory that goes away")]
    FaultGuard(#[source] GuardError),
    /// The watchdog (frontends that block a polling thread) could not be started.
    #[error("cannot start the watchdog against frontends that block a polling thread")]
    Watchdog(#[source] StallGuardError),
    /// A polling thread could not be started.
    #[error("cannot start the polling thread for core {core}")]
    Thread {
        /// Its core.
        core: usize,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The running instance.
pub struct Switch {
    registry: Arc<Registry>,
    stop: Arc<AtomicBool>,
    threads: Vec<PmdThread>,
    connections: Vec<Connection>,
    control: Option<ControlServer>,
    /// Open uplinks: their XDP programs stay attached while these live.
    uplinks: Vec<Uplink>,
    /// Interrupts a polling thread blocked on a frontend's eventfd.
    watchdog: Option<Watchdog>,
}

/// One polling thread's share of the streams.
struct Assignment {
    core: usize,
    streams: Vec<Box<dyn Stream>>,
}

fn ensure_parent(path: &Path, what: &str) -> Result<(), StartError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| StartError::Directory {
                path: dir.to_path_buf(),
                what: what.to_string(),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// The two directions of every veth pair.
fn veth_streams(
    config: &Config,
    ports: &[Arc<VirtioNetPort>],
    counters: &[Arc<PortCounters>],
) -> Vec<Box<dyn Stream>> {
    let endpoint = |i: usize| VhostEndpoint::new(ports[i].clone(), &counters[i]);
    let mut streams: Vec<Box<dyn Stream>> = Vec::new();
    for &[a, b] in &config.veths {
        streams.push(Box::new(VethStream::new(endpoint(a), endpoint(b))));
        streams.push(Box::new(VethStream::new(endpoint(b), endpoint(a))));
    }
    streams
}

/// Deals the streams out to the cores round-robin, in config order, so that the two
/// directions of a pair land on different cores when there are two.
fn assign_streams(cores: &[usize], streams: Vec<Box<dyn Stream>>) -> Vec<Assignment> {
    let mut out: Vec<Assignment> = cores
        .iter()
        .map(|&core| Assignment {
            core,
            streams: Vec::new(),
        })
        .collect();
    let n = out.len();
    for (i, s) in streams.into_iter().enumerate() {
        out[i % n].streams.push(s);
    }
    out
}

/// Everything [`Switch::open`] opened, and no thread yet. Dropped unspawned, it
/// closes it all again (socket files removed, XDP programs detached).
pub struct Opened {
    registry: Arc<Registry>,
    assignments: Vec<(Assignment, Arc<ThreadCounters>)>,
    idle: IdlePolicy,
    control: ControlSocket,
    sockets: Vec<PortSocket>,
    uplinks: Vec<Uplink>,
}

impl Switch {
    /// Opens everything `config` describes that may need privileges, and starts no
    /// thread. On error, whatever was opened is closed.
    pub fn open(config: &Config) -> Result<Opened, StartError> {
        let ports: Vec<Arc<VirtioNetPort>> = config
            .ports
            .iter()
            .map(|p| Arc::new(VirtioNetPort::new(&p.name, p.mac.0, p.mtu).with_limits(p.limits)))
            .collect();
        let counters: Vec<Arc<PortCounters>> = ports
            .iter()
            .map(|_| Arc::new(PortCounters::default()))
            .collect();
        let mut streams = veth_streams(config, &ports, &counters);
        let mut uplinks = Vec::new();
        let mut port_entries: Vec<PortEntry> = ports
            .iter()
            .zip(&counters)
            .map(|(p, c)| PortEntry {
                name: p.name().to_string(),
                kind: PortKind::Vhost(p.clone()),
                counters: c.clone(),
            })
            .collect();
        for m in &config.macvlans {
            let opened = uplink_setup::open(m, &config.ports, &ports, &counters)?;
            streams.extend(opened.shards);
            port_entries.push(opened.entry);
            uplinks.push(opened.uplink);
        }
        let assignments = assign_streams(&config.cores, streams);
        let thread_counters: Vec<Arc<ThreadCounters>> = assignments
            .iter()
            .map(|_| Arc::new(ThreadCounters::default()))
            .collect();
        let registry = Arc::new(Registry {
            ports: port_entries,
            threads: assignments
                .iter()
                .zip(&thread_counters)
                .map(|(a, c)| ThreadEntry {
                    core: a.core,
                    streams: a.streams.iter().map(|s| s.name().to_string()).collect(),
                    counters: c.clone(),
                })
                .collect(),
            tsc_hz: tsc::measure_hz(Duration::from_millis(50)),
        });

        ensure_parent(&config.control_socket, "the control socket")?;
        let control = ControlSocket::bind(&config.control_socket)?;
        SocketAccess {
            mode: config.control_socket_mode,
            owner: config.control_socket_owner,
            group: config.control_socket_group,
        }
        .apply(&config.control_socket)
        .map_err(|source| StartError::ControlAccess {
            path: config.control_socket.clone(),
            source,
        })?;

        let mut sockets = Vec::new();
        for (p, port) in config.ports.iter().zip(&ports) {
            let role = match p.mode {
                Mode::Server => {
                    ensure_parent(&p.socket, &format!("port {}", p.name))?;
                    Role::Server
                }
                Mode::Client => Role::Client,
            };
            let access = SocketAccess {
                mode: p.socket_mode,
                owner: p.socket_owner,
                group: p.socket_group,
            };
            sockets.push(PortSocket::open(port.clone(), &p.socket, role, access)?);
            let doing = match role {
                Role::Server => "listening on",
                Role::Client => "connecting to",
            };
            log::info!(
                "port {}: {doing} {} (mac {}, mtu {})",
                p.name,
                p.socket.display(),
                p.mac,
                p.mtu
            );
        }
        Ok(Opened {
            registry,
            assignments: assignments.into_iter().zip(thread_counters).collect(),
            idle: IdlePolicy {
                max_sleep: Duration::from_micros(u64::from(config.max_sleep_us)),
            },
            control,
            sockets,
            uplinks,
        })
    }

    /// [`Switch::open`] and [`Opened::spawn`] in one, privileges untouched (for tests).
    pub fn start(config: &Config) -> Result<Switch, StartError> {
        Self::open(config)?.spawn()
    }

    /// Every counter now.
    pub fn snapshot(&self) -> Snapshot {
        self.registry.snapshot()
    }

    /// Where snapshots come from, for readers of counters (the metrics server).
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Stops polling, closes every connection and socket, and returns the final counters.
    pub fn stop(mut self) -> Snapshot {
        self.shutdown();
        self.registry.snapshot()
    }

    fn shutdown(&mut self) {
        // Polling first, so nothing touches guest memory while connections close.
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            t.join();
        }
        for c in self.connections.drain(..) {
            c.stop();
        }
        if let Some(c) = self.control.take() {
            c.stop();
        }
        // Detaches the XDP programs; the sockets went with the polling threads.
        self.uplinks.clear();
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
    }
}

impl Opened {
    /// Starts the watchdog, the control thread, the polling threads and one
    /// connection thread per port. On error, whatever was started is stopped.
    pub fn spawn(self) -> Result<Switch, StartError> {
        let mut switch = Switch {
            registry: self.registry.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            connections: Vec::new(),
            control: None,
            uplinks: self.uplinks,
            watchdog: None,
        };
        fault_guard::install().map_err(StartError::FaultGuard)?;
        switch.watchdog = Some(stall_guard::start().map_err(StartError::Watchdog)?);
        switch.control = Some(self.control.serve(self.registry)?);
        for (a, c) in self.assignments {
            let names: Vec<&str> = a.streams.iter().map(|s| s.name()).collect();
            if names.is_empty() {
                log::info!("pmd thread on core {}: no streams (idle)", a.core);
            } else {
                log::info!(
                    "pmd thread on core {}: streams {}",
                    a.core,
                    names.join(", ")
                );
            }
            let t = PmdThread::spawn(a.core, a.streams, self.idle, switch.stop.clone(), c)
                .map_err(|source| StartError::Thread {
                    core: a.core,
                    source,
                })?;
            switch.threads.push(t);
        }
        for socket in self.sockets {
            switch.connections.push(socket.spawn()?);
        }
        Ok(switch)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shutdown();
    }
}
