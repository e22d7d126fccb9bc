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
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vpmd_backend::connection::{Connection, ConnectionError, PortSocket, Role, SocketAccess};
use vpmd_backend::fault_guard::{self, GuardError};
use vpmd_backend::port::VirtioNetPort;
use vpmd_backend::report::Chain;
use vpmd_backend::stall_guard::{self, StallGuardError, Watchdog};

use crate::config::{Config, ConfigError, MacvlanMode, Mode, Port, MAX_MACVLAN_PORTS};
use crate::control::{ControlError, ControlServer, ControlSocket, Request, Requests};
use crate::counters::{PortCounters, ThreadCounters};
use crate::fwd::macvlan::decide::MacvlanTable;
use crate::fwd::macvlan::Released;
use crate::fwd::veth::VethStream;
use crate::fwd::{Stream, VhostEndpoint};
use crate::pmd_thread::{Change, IdlePolicy, PmdThread};
use crate::reload::{self, Layout, MacvlanLayout};
use crate::stats::{PortEntry, PortKind, Registry, Snapshot, ThreadEntry};
use crate::tsc;
use crate::uplink_setup::{self, UplinkSetupError};
use vpmd_uplink::{MacTable, Uplink};

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
    runtime: Arc<Runtime>,
    control: Option<ControlServer>,
    /// Interrupts a polling thread blocked on a frontend's eventfd.
    watchdog: Option<Watchdog>,
}

/// What the control socket's requests change: ports, pairs and the polling threads'
/// streams, behind one lock (requests are applied one at a time; no polling thread
/// ever takes it).
struct Runtime {
    registry: Arc<Registry>,
    state: Mutex<State>,
    /// The file `vpmd reload` reads; `None`: started on the built-in default.
    config_file: Option<PathBuf>,
}

struct State {
    /// Stopping or stopped: requests are refused.
    closed: bool,
    /// The configuration vpmd started with: its `[pmd]` settings are fixed.
    started: Config,
    ports: Vec<LivePort>,
    veths: Vec<[String; 2]>,
    macvlans: Vec<LiveMacvlan>,
    threads: Vec<LiveThread>,
    stop: Arc<AtomicBool>,
    /// Open uplinks: their XDP programs stay attached while these live.
    uplinks: Vec<Uplink>,
}

/// A port and its connection thread.
struct LivePort {
    spec: Port,
    port: Arc<VirtioNetPort>,
    counters: Arc<PortCounters>,
    connection: Option<Connection>,
}

/// A macvlan: its ports by name, the XDP program's MAC table (a BPF map whose fd
/// was opened at start-up: updating it needs no capability), its shards' names.
struct LiveMacvlan {
    layout: MacvlanLayout,
    macs: MacTable,
    shards: Vec<String>,
    /// Its VM ports as the stats know them.
    port_list: crate::stats::SharedNames,
    /// Where its ports announce themselves after a migration.
    announcer: Option<Arc<dyn vpmd_backend::migration::Announce>>,
}

/// A polling thread and the names of its streams.
struct LiveThread {
    pmd: PmdThread,
    streams: Vec<String>,
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

/// A stream and the core its thread must run on, if the config says (a port's
/// `queue_cores`); `None`: dealt out automatically.
type Placed = (Box<dyn Stream>, Option<usize>);

/// The two directions of a veth pair: one stream per TX queue pair of each port,
/// the first port's first (dealt round-robin, queue pair `n` of each direction lands
/// on the same thread), each with the core its port's `queue_cores` names.
fn pair_streams(a: (&LivePort, &LivePort)) -> Vec<Placed> {
    let endpoint = |p: &LivePort| VhostEndpoint::new(p.port.clone(), &p.counters);
    let mut out: Vec<Placed> = Vec::new();
    for (src, dst) in [(a.0, a.1), (a.1, a.0)] {
        for pair in 0..src.port.queue_pairs() {
            let stream = VethStream::new(endpoint(src), endpoint(dst), pair);
            out.push((Box::new(stream), src.spec.queue_cores.get(pair).copied()));
        }
    }
    out
}

/// The names of the streams from `a` (of `pairs` queue pairs) to `b`.
fn veth_stream_names(a: &str, b: &str, pairs: usize) -> Vec<String> {
    (0..pairs)
        .map(|q| crate::fwd::veth::stream_name(a, b, q, pairs))
        .collect()
}

/// Puts each stream pinned to a core (`queue_cores`) on that core's thread, and deals
/// the others out to the cores round-robin, in config order, so that the two
/// directions of a pair land on different cores when there are two.
fn assign_streams(cores: &[usize], streams: Vec<Placed>) -> Vec<Assignment> {
    let mut out: Vec<Assignment> = cores
        .iter()
        .map(|&core| Assignment {
            core,
            streams: Vec::new(),
        })
        .collect();
    let n = out.len();
    let mut next = 0;
    for (s, pinned) in streams {
        // Validated: a pinned core is one of `cores`.
        let i = match pinned.and_then(|c| cores.iter().position(|&k| k == c)) {
            Some(i) => i,
            None => {
                next += 1;
                (next - 1) % n
            }
        };
        out[i].streams.push(s);
    }
    out
}

/// A port's vhost-user object and counters, and its socket opened (server role:
/// listening, with its mode and owner); no thread yet.
fn open_port(
    spec: &Port,
) -> Result<(Arc<VirtioNetPort>, Arc<PortCounters>, PortSocket), StartError> {
    let port = Arc::new(
        VirtioNetPort::new(&spec.name, spec.mac.0, spec.mtu)
            .with_limits(spec.limits)
            .with_offloads(spec.offloads)
            .with_queue_pairs(spec.queue_pairs),
    );
    let role = match spec.mode {
        Mode::Server => {
            ensure_parent(&spec.socket, &format!("port {}", spec.name))?;
            Role::Server
        }
        Mode::Client => Role::Client,
    };
    let access = SocketAccess {
        mode: spec.socket_mode,
        owner: spec.socket_owner,
        group: spec.socket_group,
    };
    let socket = PortSocket::open(port.clone(), &spec.socket, role, access)?;
    let doing = match role {
        Role::Server => "listening on",
        Role::Client => "connecting to",
    };
    log::info!(
        "port {}: {doing} {} (mac {}, mtu {}, {} queue pair{})",
        spec.name,
        spec.socket.display(),
        spec.mac,
        spec.mtu,
        spec.queue_pairs,
        if spec.queue_pairs == 1 { "" } else { "s" }
    );
    Ok((port, Arc::new(PortCounters::default()), socket))
}

fn vhost_entry(port: &Arc<VirtioNetPort>, counters: &Arc<PortCounters>) -> PortEntry {
    PortEntry {
        name: port.name().to_string(),
        kind: PortKind::Vhost(port.clone()),
        counters: counters.clone(),
    }
}

/// Everything [`Switch::open`] opened, and no thread yet. Dropped unspawned, it
/// closes it all again (socket files removed, XDP programs detached).
pub struct Opened {
    registry: Arc<Registry>,
    config: Config,
    config_file: Option<PathBuf>,
    ports: Vec<(Port, Arc<VirtioNetPort>, Arc<PortCounters>, PortSocket)>,
    assignments: Vec<(Assignment, Arc<ThreadCounters>)>,
    idle: IdlePolicy,
    control: ControlSocket,
    uplinks: Vec<Uplink>,
    macvlans: Vec<LiveMacvlan>,
}

impl Switch {
    /// Opens everything `config` describes that may need privileges, and starts no
    /// thread. On error, whatever was opened is closed.
    pub fn open(config: &Config) -> Result<Opened, StartError> {
        let mut opened_ports = Vec::new();
        for p in &config.ports {
            let (port, counters, socket) = open_port(p)?;
            opened_ports.push((p.clone(), port, counters, socket));
        }
        let live = |i: usize| {
            let (spec, port, counters, _) = &opened_ports[i];
            LivePort {
                spec: spec.clone(),
                port: port.clone(),
                counters: counters.clone(),
                connection: None,
            }
        };
        let mut streams: Vec<Placed> = Vec::new();
        for &[a, b] in &config.veths {
            streams.extend(pair_streams((&live(a), &live(b))));
        }
        let vhost: Vec<Arc<VirtioNetPort>> = opened_ports.iter().map(|p| p.1.clone()).collect();
        let counters: Vec<Arc<PortCounters>> = opened_ports.iter().map(|p| p.2.clone()).collect();
        let mut port_entries: Vec<PortEntry> = vhost
            .iter()
            .zip(&counters)
            .map(|(p, c)| vhost_entry(p, c))
            .collect();
        let mut uplinks = Vec::new();
        let mut macvlans = Vec::new();
        for (m, layout) in config.macvlans.iter().zip(Layout::of(config).macvlans) {
            let opened = uplink_setup::open(m, &config.ports, &vhost, &counters)?;
            macvlans.push(LiveMacvlan {
                layout,
                macs: opened.uplink.mac_table(),
                shards: opened.shards.iter().map(|s| s.name().to_string()).collect(),
                port_list: opened.port_list.clone(),
                announcer: opened.announcer.clone(),
            });
            streams.extend(opened.shards.into_iter().map(|s| (s, None)));
            port_entries.push(opened.entry);
            uplinks.push(opened.uplink);
        }
        let assignments = assign_streams(&config.cores, streams);
        let thread_counters: Vec<Arc<ThreadCounters>> = assignments
            .iter()
            .map(|_| Arc::new(ThreadCounters::default()))
            .collect();
        let registry = Arc::new(Registry::new(
            port_entries,
            assignments
                .iter()
                .zip(&thread_counters)
                .map(|(a, c)| ThreadEntry {
                    core: a.core,
                    streams: a.streams.iter().map(|s| s.name().to_string()).collect(),
                    counters: c.clone(),
                })
                .collect(),
            tsc::measure_hz(Duration::from_millis(50)),
        ));
        let tsc_hz = registry.tsc_hz;

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
        Ok(Opened {
            registry,
            config: config.clone(),
            config_file: None,
            ports: opened_ports,
            assignments: assignments.into_iter().zip(thread_counters).collect(),
            idle: IdlePolicy {
                max_sleep: Duration::from_micros(u64::from(config.max_sleep_us)),
                sleep_after: Duration::from_micros(u64::from(config.sleep_after_us)),
                tsc_hz,
            },
            control,
            uplinks,
            macvlans,
        })
    }

    /// [`Switch::open`] and [`Opened::spawn`] in one, privileges untouched (for tests).
    pub fn start(config: &Config) -> Result<Switch, StartError> {
        Self::open(config)?.spawn()
    }

    /// Every counter now.
    pub fn snapshot(&self) -> Snapshot {
        self.runtime.registry.snapshot()
    }

    /// Answers a control request, as the control socket does.
    pub fn request(&self, request: Request) -> Result<serde_json::Value, String> {
        self.runtime.handle(request)
    }

    /// `vpmd reload` (what SIGHUP does): applies the config file's difference.
    pub fn reload(&self) -> Result<serde_json::Value, String> {
        self.runtime.handle(Request::Reload)
    }

    /// Where snapshots come from, for readers of counters (the metrics server).
    pub fn registry(&self) -> Arc<Registry> {
        self.runtime.registry.clone()
    }

    /// Stops polling, closes every connection and socket, and returns the final counters.
    pub fn stop(mut self) -> Snapshot {
        self.shutdown();
        self.runtime.registry.snapshot()
    }

    fn shutdown(&mut self) {
        // No more requests first; one being applied finishes before the state is
        // taken down below.
        if let Some(c) = self.control.take() {
            c.stop();
        }
        self.runtime.shutdown();
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
    }
}

impl Opened {
    /// `vpmd reload` and SIGHUP will read `path` (the file the config came from).
    pub fn reloading_from(mut self, path: PathBuf) -> Self {
        self.config_file = Some(path);
        self
    }

    /// Starts the watchdog, the polling threads, one connection thread per port and
    /// the control thread. On error, whatever was started is stopped.
    pub fn spawn(self) -> Result<Switch, StartError> {
        let macvlans = self.macvlans;
        let runtime = Arc::new(Runtime {
            registry: self.registry.clone(),
            config_file: self.config_file,
            state: Mutex::new(State {
                closed: false,
                started: self.config,
                ports: Vec::new(),
                veths: Vec::new(),
                macvlans,
                threads: Vec::new(),
                stop: Arc::new(AtomicBool::new(false)),
                uplinks: self.uplinks,
            }),
        });
        let mut switch = Switch {
            runtime: runtime.clone(),
            control: None,
            watchdog: None,
        };
        fault_guard::install().map_err(StartError::FaultGuard)?;
        switch.watchdog = Some(stall_guard::start().map_err(StartError::Watchdog)?);
        {
            let mut state = runtime.lock();
            let state = &mut *state;
            for (a, c) in self.assignments {
                let names: Vec<String> = a.streams.iter().map(|s| s.name().to_string()).collect();
                if names.is_empty() {
                    log::info!("pmd thread on core {}: no streams (idle)", a.core);
                } else {
                    log::info!(
                        "pmd thread on core {}: streams {}",
                        a.core,
                        names.join(", ")
                    );
                }
                let t = PmdThread::spawn(a.core, a.streams, self.idle, state.stop.clone(), c)
                    .map_err(|source| StartError::Thread {
                        core: a.core,
                        source,
                    })?;
                state.threads.push(LiveThread {
                    pmd: t,
                    streams: names,
                });
            }
            let name = |i: usize| state.started.ports[i].name.clone();
            state.veths = state
                .started
                .veths
                .iter()
                .map(|&[a, b]| [name(a), name(b)])
                .collect();
            for (spec, port, counters, socket) in self.ports {
                state.ports.push(LivePort {
                    spec,
                    port,
                    counters,
                    connection: Some(socket.spawn()?),
                });
            }
        }
        switch.control = Some(
            self.control
                .serve_requests(self.registry, runtime as Arc<dyn Requests>)?,
        );
        Ok(switch)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A request refused: the message names the field, as the config file's errors do.
fn field_error(e: &ConfigError) -> String {
    match e {
        ConfigError::Invalid { field, reason, .. } => format!("{field}: {reason}"),
        other => Chain(other).to_string(),
    }
}

impl Requests for Runtime {
    fn handle(&self, request: Request) -> Result<serde_json::Value, String> {
        let mut state = self.lock();
        if state.closed {
            return Err("vpmd is stopping".to_string());
        }
        let registry = &self.registry;
        match request {
            Request::Stats => serde_json::to_value(registry.snapshot()).map_err(|e| e.to_string()),
            Request::PortList => Ok(state.list()),
            Request::PortAdd { port } => {
                let running: Vec<&Port> = state.ports.iter().map(|p| &p.spec).collect();
                let spec = Port::from_request(port, &running).map_err(|e| field_error(&e))?;
                let name = spec.name.clone();
                state.add_port(registry, spec)?;
                Ok(serde_json::json!({ "added": name }))
            }
            Request::PortDel { name } => state.del_port(registry, &name),
            Request::VethAdd { ports: [a, b] } => {
                state.add_veth(registry, &a, &b)?;
                Ok(serde_json::json!({ "veth": [a, b] }))
            }
            Request::VethDel { port } => match state.del_veth_of(registry, &port)? {
                Some(v) => Ok(v),
                None => Err(format!("veth.port: port {port:?} is in no veth pair")),
            },
            Request::MacvlanAddPort { uplink, port } => {
                state.macvlan_add_port(&uplink, &port)?;
                Ok(serde_json::json!({ "macvlan": uplink, "added": port }))
            }
            Request::MacvlanDelPort { uplink, port } => {
                if state.find(&port).is_none() {
                    return Err(format!("macvlan.port: no port is named {port:?}"));
                }
                state.macvlan_del_port(&uplink, &port)
            }
            Request::Reload => {
                let Some(path) = &self.config_file else {
                    return Err(
                        "vpmd was started without --config: there is no file to reload".to_string(),
                    );
                };
                let file = Config::load(path).map_err(|e| Chain(&e).to_string())?;
                state.reload(registry, &file)
            }
        }
    }
}

impl Runtime {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shutdown(&self) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        state.closed = true;
        // Polling first, so nothing touches guest memory while connections close.
        state.stop.store(true, Ordering::Release);
        for t in state.threads.drain(..) {
            t.pmd.join();
        }
        for p in &mut state.ports {
            if let Some(c) = p.connection.take() {
                c.stop();
            }
        }
        // Detaches the XDP programs; the sockets went with the polling threads.
        state.uplinks.clear();
    }
}

impl State {
    fn find(&self, name: &str) -> Option<usize> {
        self.ports.iter().position(|p| p.spec.name == name)
    }

    /// What port `name` is attached to, for messages.
    fn attached(&self, name: &str) -> Option<String> {
        if let Some([a, b]) = self.veths.iter().find(|v| v.iter().any(|p| p == name)) {
            return Some(format!("veth {a}<->{b}"));
        }
        self.macvlan_of(name)
            .map(|m| format!("macvlan on {}", self.macvlans[m].layout.uplink))
    }

    /// The macvlan port `name` is on.
    fn macvlan_of(&self, name: &str) -> Option<usize> {
        self.macvlans
            .iter()
            .position(|m| m.layout.ports.iter().any(|p| p == name))
    }

    /// The macvlan on `uplink`.
    fn macvlan_on(&self, uplink: &str) -> Result<usize, String> {
        self.macvlans
            .iter()
            .position(|m| m.layout.uplink == uplink)
            .ok_or_else(|| {
                format!(
                    "macvlan.uplink: no macvlan runs on {uplink:?} (uplinks are opened at \
                     start-up only: add a [[macvlan]] to the file and restart vpmd)"
                )
            })
    }

    /// Gives macvlan `m`'s shards its new port list `names` (and the new port's
    /// endpoint, for `added`), each between two polls of its thread; returns what
    /// they let go of.
    fn set_macvlan_ports(
        &mut self,
        m: usize,
        names: &[String],
        added: Option<usize>,
    ) -> Vec<Released> {
        let lm = &self.macvlans[m];
        let specs: Vec<([u8; 6], bool)> = names
            .iter()
            .filter_map(|n| self.find(n))
            .map(|i| {
                (
                    self.ports[i].spec.mac.0,
                    self.ports[i].spec.allow_mac_spoofing,
                )
            })
            .collect();
        let table = Arc::new(MacvlanTable::new(lm.layout.mode, &specs));
        let queues = lm.layout.queues as usize;
        let mut released = Vec::new();
        for (q, shard) in lm.shards.iter().enumerate() {
            let Some(t) = self.threads.iter().position(|t| t.streams.contains(shard)) else {
                continue;
            };
            let endpoint = added.map(|i| {
                let p = &self.ports[i];
                VhostEndpoint::new(p.port.clone(), &p.counters)
            });
            let out: Arc<Mutex<Option<Released>>> = Arc::default();
            let (slot, table, names) = (out.clone(), table.clone(), names.to_vec());
            let edit = move |s: &mut dyn Stream| {
                if let Some(shard) = s.as_macvlan() {
                    let r = shard.set_ports(table, &names, endpoint, queues, q);
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(r);
                }
            };
            let _ = self.threads[t]
                .pmd
                .change(vec![Change::Edit(shard.clone(), Box::new(edit))]);
            released.extend(out.lock().unwrap_or_else(PoisonError::into_inner).take());
        }
        lm.port_list.set(names.to_vec());
        released
    }

    /// Puts port `name` (in no veth or macvlan) on the macvlan on `uplink`: the
    /// shards learn it first, then the XDP program redirects its MAC.
    fn macvlan_add_port(&mut self, uplink: &str, name: &str) -> Result<(), String> {
        let m = self.macvlan_on(uplink)?;
        let idx = self
            .find(name)
            .ok_or_else(|| format!("macvlan.port: no port is named {name:?}"))?;
        if let Some(by) = self.attached(name) {
            return Err(format!(
                "macvlan.port: port {name:?} already belongs to {by}"
            ));
        }
        let layout = &self.macvlans[m].layout;
        if layout.mode == MacvlanMode::Passthru && !layout.ports.is_empty() {
            return Err(format!(
                "macvlan.port: the macvlan on {uplink} is in passthru mode, which gives the \
                 uplink to exactly one port ({:?})",
                layout.ports[0]
            ));
        }
        if layout.ports.len() >= MAX_MACVLAN_PORTS {
            return Err(format!(
                "macvlan.port: the macvlan on {uplink} has {MAX_MACVLAN_PORTS} ports already"
            ));
        }
        let mut names = layout.ports.clone();
        names.push(name.to_string());
        let released = self.set_macvlan_ports(m, &names, Some(idx));
        drop(released);
        let mac = self.ports[idx].spec.mac;
        if let Err(e) = self.macvlans[m].macs.insert(mac, (names.len() - 1) as u32) {
            // Back off again: the port would get no unicast frames.
            let mut back = self.set_macvlan_ports(m, &self.macvlans[m].layout.ports.clone(), None);
            back.clear();
            return Err(format!(
                "macvlan.port: cannot add MAC {mac} of port {name} to the XDP program's \
                 table: {}",
                Chain(&e)
            ));
        }
        self.macvlans[m].layout.ports = names;
        self.ports[idx]
            .port
            .set_announcer(self.macvlans[m].announcer.clone());
        log::info!("macvlan on {uplink}: port {name} added at runtime (MAC {mac} redirected)");
        Ok(())
    }

    /// Takes port `name` off the macvlan on `uplink`: the XDP program stops
    /// redirecting its MAC first, then the shards let go of it. The port stays.
    fn macvlan_del_port(&mut self, uplink: &str, name: &str) -> Result<serde_json::Value, String> {
        let m = self.macvlan_on(uplink)?;
        let layout = &self.macvlans[m].layout;
        if !layout.ports.iter().any(|p| p == name) {
            return Err(format!(
                "macvlan.port: port {name:?} is not on the macvlan on {uplink}"
            ));
        }
        let names: Vec<String> = layout
            .ports
            .iter()
            .filter(|p| *p != name)
            .cloned()
            .collect();
        let idx = self.find(name).expect("a macvlan's ports exist");
        self.ports[idx].port.set_announcer(None);
        let mac = self.ports[idx].spec.mac;
        if let Err(e) = self.macvlans[m].macs.remove(mac) {
            log::warn!(
                "macvlan on {uplink}: cannot remove MAC {mac} of port {name}: {}",
                Chain(&e)
            );
        }
        // The others' numbers, as the shards' new table has them.
        for (i, n) in names.iter().enumerate() {
            if let Some(j) = self.find(n) {
                if let Err(e) = self.macvlans[m]
                    .macs
                    .insert(self.ports[j].spec.mac, i as u32)
                {
                    log::warn!("macvlan on {uplink}: port {n}: {}", Chain(&e));
                }
            }
        }
        let mut released = self.set_macvlan_ports(m, &names, None);
        let in_flight: u64 = released.iter_mut().map(|r| r.in_flight(name)).sum();
        // The shards' endpoints and caches of the port go here.
        drop(released);
        self.macvlans[m].layout.ports = names;
        log::info!(
            "macvlan on {uplink}: port {name} taken off at runtime; {in_flight} frames left \
             untaken in its transmit ring"
        );
        Ok(
            serde_json::json!({ "macvlan_removed": [uplink, name], "in_flight": { name: in_flight } }),
        )
    }

    fn layout(&self) -> Layout {
        Layout {
            ports: self.ports.iter().map(|p| p.spec.clone()).collect(),
            veths: self.veths.clone(),
            macvlans: self.macvlans.iter().map(|m| m.layout.clone()).collect(),
        }
    }

    fn list(&self) -> serde_json::Value {
        let ports: Vec<serde_json::Value> = self
            .ports
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.spec.name,
                    "socket": p.spec.socket,
                    "mode": match p.spec.mode { Mode::Server => "server", Mode::Client => "client" },
                    "mac": p.spec.mac.to_string(),
                    "mtu": p.spec.mtu,
                    "state": if p.port.is_up() { "up" } else { "down" },
                    "attached": self.attached(&p.spec.name),
                })
            })
            .collect();
        let threads: Vec<serde_json::Value> = self
            .threads
            .iter()
            .map(|t| serde_json::json!({ "core": t.pmd.core(), "streams": t.streams }))
            .collect();
        serde_json::json!({ "ports": ports, "veths": self.veths, "threads": threads })
    }

    /// Adds a port (in no veth or macvlan yet): its socket opened, its connection
    /// thread started. On error nothing is left behind.
    fn add_port(&mut self, registry: &Registry, spec: Port) -> Result<(), String> {
        for (q, c) in spec.queue_cores.iter().enumerate() {
            if !self.threads.iter().any(|t| t.pmd.core() == *c) {
                let cores: Vec<usize> = self.threads.iter().map(|t| t.pmd.core()).collect();
                return Err(format!(
                    "port.queue_cores[{q}]: core {c} is not one of pmd.cores {cores:?}"
                ));
            }
        }
        let opened = open_port(&spec).map_err(|e| Chain(&e).to_string())?;
        let (port, counters, socket) = opened;
        let connection = socket.spawn().map_err(|e| Chain(&e).to_string())?;
        registry.add_port(vhost_entry(&port, &counters));
        log::info!(
            "port {}: added at runtime; in no veth or macvlan yet (not polled)",
            spec.name
        );
        self.ports.push(LivePort {
            spec,
            port,
            counters,
            connection: Some(connection),
        });
        Ok(())
    }

    /// Starts polling `streams`: one pinned to a core goes to that core's thread; any
    /// other to the polling thread with the fewest streams, preferring threads this
    /// call has not given one yet (the two directions of a pair land on two cores
    /// when there are two).
    fn add_streams(&mut self, registry: &Registry, streams: Vec<Placed>) {
        let mut given: Vec<usize> = Vec::new();
        let mut per_thread: Vec<Vec<Change>> = self.threads.iter().map(|_| Vec::new()).collect();
        for (s, pinned) in streams {
            // Fewest streams (those given in this call included), then lowest index.
            let load = |i: usize| (given.contains(&i), self.threads[i].streams.len(), i);
            let on_core = pinned.and_then(|c| self.threads.iter().position(|t| t.pmd.core() == c));
            let Some(i) = on_core.or_else(|| (0..self.threads.len()).min_by_key(|&i| load(i)))
            else {
                return;
            };
            log::info!(
                "stream {} assigned to the pmd thread on core {} ({} streams there before)",
                s.name(),
                self.threads[i].pmd.core(),
                self.threads[i].streams.len()
            );
            given.push(i);
            self.threads[i].streams.push(s.name().to_string());
            per_thread[i].push(Change::Add(s));
        }
        for (i, changes) in per_thread.into_iter().enumerate() {
            if changes.is_empty() {
                continue;
            }
            // Returns once the thread polls them.
            let _ = self.threads[i].pmd.change(changes);
            registry.set_streams(i, self.threads[i].streams.clone());
        }
    }

    /// Stops polling the streams named `names`, each between two polls of its
    /// thread, and drops them here; returns each one's frames in flight.
    fn remove_streams(&mut self, registry: &Registry, names: &[String]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (i, t) in self.threads.iter_mut().enumerate() {
            let mine: Vec<String> = names
                .iter()
                .filter(|n| t.streams.contains(n))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            for r in t.pmd.change(vec![Change::Remove(mine.clone())]) {
                out.push((r.stream.name().to_string(), r.in_flight));
                // The stream's ring caches go here: the connection's memory stays
                // mapped until now.
                drop(r.stream);
            }
            t.streams.retain(|s| !mine.contains(s));
            registry.set_streams(i, t.streams.clone());
        }
        out
    }

    fn add_veth(&mut self, registry: &Registry, a: &str, b: &str) -> Result<(), String> {
        let mut idx = [0usize; 2];
        for (j, name) in [a, b].into_iter().enumerate() {
            let field = format!("veth.ports[{j}]");
            idx[j] = self
                .find(name)
                .ok_or_else(|| format!("{field}: no port is named {name:?}"))?;
            if let Some(by) = self.attached(name) {
                return Err(format!("{field}: port {name:?} already belongs to {by}"));
            }
        }
        if a == b {
            return Err(format!(
                "veth.ports[1]: port {b:?} cannot be paired with itself"
            ));
        }
        let streams = pair_streams((&self.ports[idx[0]], &self.ports[idx[1]]));
        self.veths.push([a.to_string(), b.to_string()]);
        self.add_streams(registry, streams);
        log::info!("veth {a} <-> {b}: added at runtime");
        Ok(())
    }

    /// Removes the veth pair `name` is in (both streams off their threads); `None`
    /// if it is in none. Both ports stay.
    fn del_veth_of(
        &mut self,
        registry: &Registry,
        name: &str,
    ) -> Result<Option<serde_json::Value>, String> {
        let Some(k) = self.veths.iter().position(|v| v.iter().any(|p| p == name)) else {
            return Ok(None);
        };
        let [a, b] = self.veths.remove(k);
        let pairs = |n: &str| self.find(n).map_or(1, |i| self.ports[i].port.queue_pairs());
        let mut names = veth_stream_names(&a, &b, pairs(&a));
        names.extend(veth_stream_names(&b, &a, pairs(&b)));
        let in_flight = self.remove_streams(registry, &names);
        log::info!(
            "veth {a} <-> {b}: removed; frames left untaken in the senders' rings: {}",
            in_flight
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let in_flight: serde_json::Map<String, serde_json::Value> = in_flight
            .into_iter()
            .map(|(s, n)| (s, serde_json::Value::from(n)))
            .collect();
        Ok(Some(
            serde_json::json!({ "veth_removed": [a, b], "in_flight": in_flight }),
        ))
    }

    /// Removes a port: its pair first (streams off their threads, last bursts
    /// complete), then its connection (closed, memory unmapped once no thread holds
    /// it) and its socket. Answers with its last counters and what was in flight.
    fn del_port(&mut self, registry: &Registry, name: &str) -> Result<serde_json::Value, String> {
        let idx = self
            .find(name)
            .ok_or_else(|| format!("port.name: no port is named {name:?}"))?;
        let mut macvlan = None;
        if let Some(m) = self.macvlan_of(name) {
            let uplink = self.macvlans[m].layout.uplink.clone();
            macvlan = Some(self.macvlan_del_port(&uplink, name)?);
        }
        let veth = self.del_veth_of(registry, name)?;
        let live = self.ports.remove(idx);
        let connected = live.port.active().is_some();
        if let Some(c) = live.connection {
            // Closes the frontend's connection; returns once its rings are withdrawn
            // and its memory unmapped (no stream holds it any more).
            c.stop();
        }
        let last = live
            .counters
            .snapshot(name, "vhost-user", false, live.port.queue_pairs());
        registry.remove_port(name);
        log::info!(
            "port {name}: removed at runtime{}; last counters tx_packets={} rx_packets={} \
             forwarded={} drops={}",
            if connected {
                ", its frontend's connection closed and its memory unmapped"
            } else {
                ""
            },
            last.tx_packets,
            last.rx_packets,
            last.forwarded,
            last.drops.total()
        );
        let mut reply = serde_json::json!({
            "removed": name,
            "connected": connected,
            "counters": last,
        });
        if let Some(v) = veth {
            reply["veth_removed"] = v["veth_removed"].clone();
            reply["in_flight"] = v["in_flight"].clone();
        }
        if let Some(m) = macvlan {
            reply["macvlan_removed"] = m["macvlan_removed"].clone();
            reply["in_flight"] = m["in_flight"].clone();
        }
        Ok(reply)
    }

    /// Turns the running ports into `file`'s (see [`crate::reload`]).
    fn reload(&mut self, registry: &Registry, file: &Config) -> Result<serde_json::Value, String> {
        let plan = reload::plan(&self.started, &self.layout(), file).map_err(|refused| {
            format!("reload refused, nothing changed: {}", refused.join("; "))
        })?;
        if plan.is_empty() {
            log::info!("reload: the running ports already match the file");
            return Ok(serde_json::json!({ "reload": "nothing to do" }));
        }
        log::info!(
            "reload: taking [{}] off macvlans, removing veths [{}] and ports [{}] (restarted: \
             [{}]), adding ports [{}] and veths [{}], putting [{}] on macvlans",
            plan.macvlan_del
                .iter()
                .map(|v| v.join(":"))
                .collect::<Vec<_>>()
                .join(", "),
            plan.del_veths
                .iter()
                .map(|v| v.join("<->"))
                .collect::<Vec<_>>()
                .join(", "),
            plan.del_ports.join(", "),
            plan.restarted.join(", "),
            plan.add_ports
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            plan.add_veths
                .iter()
                .map(|v| v.join("<->"))
                .collect::<Vec<_>>()
                .join(", "),
            plan.macvlan_add
                .iter()
                .map(|v| v.join(":"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        let mut done: Vec<String> = Vec::new();
        let stopped = |done: &[String], e: String| {
            format!(
                "reload stopped: {e}; applied before that: [{}]",
                done.join(", ")
            )
        };
        for [uplink, p] in &plan.macvlan_del {
            self.macvlan_del_port(uplink, p)
                .map_err(|e| stopped(&done, e))?;
            done.push(format!("macvlan del-port {uplink} {p}"));
        }
        for v in &plan.del_veths {
            self.del_veth_of(registry, &v[0])
                .map_err(|e| stopped(&done, e))?;
            done.push(format!("veth del {}", v[0]));
        }
        for p in &plan.del_ports {
            self.del_port(registry, p).map_err(|e| stopped(&done, e))?;
            done.push(format!("port del {p}"));
        }
        for p in &plan.add_ports {
            let name = p.name.clone();
            self.add_port(registry, p.clone())
                .map_err(|e| stopped(&done, e))?;
            done.push(format!("port add {name}"));
        }
        for [a, b] in &plan.add_veths {
            self.add_veth(registry, a, b)
                .map_err(|e| stopped(&done, e))?;
            done.push(format!("veth add {a} {b}"));
        }
        for [uplink, p] in &plan.macvlan_add {
            self.macvlan_add_port(uplink, p)
                .map_err(|e| stopped(&done, e))?;
            done.push(format!("macvlan add-port {uplink} {p}"));
        }
        Ok(serde_json::json!({
            "reload": "applied",
            "del_veths": plan.del_veths,
            "del_ports": plan.del_ports,
            "add_ports": plan.add_ports.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "add_veths": plan.add_veths,
            "restarted": plan.restarted,
            "macvlan_del": plan.macvlan_del,
            "macvlan_add": plan.macvlan_add,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vpmd-switch-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A stream that only has a name.
    struct Named(String);

    impl Stream for Named {
        fn name(&self) -> &str {
            &self.0
        }
        fn poll(&mut self, _: &mut crate::fwd::Scratch) -> u32 {
            0
        }
    }

    #[test]
    fn pinned_streams_go_to_their_core_the_rest_round_robin() {
        let placed =
            |name: &str, pin: Option<usize>| -> Placed { (Box::new(Named(name.into())), pin) };
        let streams = vec![
            placed("a->b/q0", Some(3)),
            placed("a->b/q1", Some(3)),
            placed("b->a/q0", None),
            placed("b->a/q1", None),
            placed("eth0/q0", None),
        ];
        let names = |a: &Assignment| {
            a.streams
                .iter()
                .map(|s| s.name().to_string())
                .collect::<Vec<_>>()
        };
        let out = assign_streams(&[2, 3], streams);
        assert_eq!(out[0].core, 2);
        assert_eq!(names(&out[0]), ["b->a/q0", "eth0/q0"]);
        assert_eq!(names(&out[1]), ["a->b/q0", "a->b/q1", "b->a/q1"]);
    }

    fn pmd_section(d: &Path) -> String {
        format!(
            "[pmd]\ncores = [0]\ncontrol_socket = \"{}\"\n",
            d.join("control.sock").display()
        )
    }

    fn port_toml(d: &Path, name: &str, mac: u8) -> String {
        format!(
            "[[port]]\nname = \"{name}\"\nsocket = \"{}\"\nmac = \"52:54:00:00:00:{mac:02x}\"\n",
            d.join(format!("{name}.sock")).display()
        )
    }

    fn add(d: &Path, name: &str, mac: &str) -> Request {
        Request::PortAdd {
            port: json!({ "name": name, "socket": d.join(format!("{name}.sock")), "mac": mac }),
        }
    }

    fn streams(sw: &Switch) -> Vec<String> {
        sw.snapshot().threads[0].streams.clone()
    }

    fn port_names(sw: &Switch) -> Vec<String> {
        sw.snapshot().ports.iter().map(|p| p.name.clone()).collect()
    }

    #[test]
    fn ports_and_pairs_come_and_go_and_bad_requests_change_nothing() {
        let d = dir("runtime");
        let config = Config::parse(&pmd_section(&d), "t.toml").unwrap();
        let sw = Switch::start(&config).unwrap();
        assert!(port_names(&sw).is_empty());
        sw.request(add(&d, "a", "52:54:00:00:00:01")).unwrap();
        assert!(d.join("a.sock").exists(), "server role: listening at once");

        let before = sw.request(Request::PortList).unwrap();
        let e = sw.request(add(&d, "b", "52:54:00:00:00:01")).unwrap_err();
        assert!(e.starts_with("port.mac: "), "{e}");
        let e = sw.request(add(&d, "a", "52:54:00:00:00:09")).unwrap_err();
        assert!(e.starts_with("port.name: "), "{e}");
        let e = sw
            .request(Request::VethAdd {
                ports: ["a".into(), "b".into()],
            })
            .unwrap_err();
        assert!(e.starts_with("veth.ports[1]: "), "{e}");
        let e = sw
            .request(Request::VethAdd {
                ports: ["a".into(), "a".into()],
            })
            .unwrap_err();
        assert!(e.starts_with("veth.ports[1]: "), "{e}");
        let e = sw
            .request(Request::PortDel { name: "b".into() })
            .unwrap_err();
        assert!(e.starts_with("port.name: "), "{e}");
        assert_eq!(sw.request(Request::PortList).unwrap(), before);
        assert!(!d.join("b.sock").exists());

        sw.request(add(&d, "b", "52:54:00:00:00:02")).unwrap();
        sw.request(Request::VethAdd {
            ports: ["a".into(), "b".into()],
        })
        .unwrap();
        assert_eq!(streams(&sw), ["a->b", "b->a"]);
        assert_eq!(port_names(&sw), ["a", "b"]);
        let e = sw
            .request(Request::VethAdd {
                ports: ["b".into(), "a".into()],
            })
            .unwrap_err();
        assert!(e.contains("already belongs to veth a<->b"), "{e}");

        let del = sw.request(Request::PortDel { name: "b".into() }).unwrap();
        assert_eq!(del["veth_removed"], json!(["a", "b"]));
        assert_eq!(del["connected"], json!(false));
        assert_eq!(del["in_flight"], json!({ "a->b": 0, "b->a": 0 }));
        assert!(streams(&sw).is_empty());
        assert_eq!(port_names(&sw), ["a"]);
        assert!(!d.join("b.sock").exists(), "its socket removed");
        let e = sw.reload().unwrap_err();
        assert!(e.contains("without --config"), "{e}");
        sw.stop();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn reload_applies_the_file_or_refuses_and_changes_nothing() {
        let d = dir("reload");
        let file = d.join("vpmd.toml");
        std::fs::write(&file, pmd_section(&d)).unwrap();
        let config = Config::load(&file).unwrap();
        let sw = Switch::open(&config)
            .unwrap()
            .reloading_from(file.clone())
            .spawn()
            .unwrap();
        let pair = format!(
            "{}{}{}[[veth]]\nports = [\"a\", \"b\"]\n",
            pmd_section(&d),
            port_toml(&d, "a", 1),
            port_toml(&d, "b", 2)
        );
        std::fs::write(&file, &pair).unwrap();
        let r = sw.reload().unwrap();
        assert_eq!(r["add_ports"], json!(["a", "b"]));
        assert_eq!(streams(&sw), ["a->b", "b->a"]);
        assert_eq!(sw.reload().unwrap()["reload"], json!("nothing to do"));

        let before = sw.request(Request::PortList).unwrap();
        std::fs::write(
            &file,
            pair.replace("cores = [0]", "cores = [0]\nmax_sleep_us = 5"),
        )
        .unwrap();
        let e = sw.reload().unwrap_err();
        assert!(e.contains("pmd.max_sleep_us: "), "{e}");
        std::fs::write(
            &file,
            pair.replace("mac = \"52:54:00:00:00:02\"", "mac = \"zz\""),
        )
        .unwrap();
        let e = sw.reload().unwrap_err();
        assert!(e.contains("port[1].mac: "), "{e}");
        assert_eq!(sw.request(Request::PortList).unwrap(), before);

        // b changed: restarted, its pair with it.
        std::fs::write(&file, pair.replace("[[veth]]", "mtu = 9000\n[[veth]]")).unwrap();
        let r = sw.reload().unwrap();
        assert_eq!(r["restarted"], json!(["b"]));
        assert_eq!(streams(&sw), ["a->b", "b->a"]);
        assert_eq!(
            sw.request(Request::PortList).unwrap()["ports"][1]["mtu"],
            json!(9000)
        );

        std::fs::write(&file, pmd_section(&d)).unwrap();
        let r = sw.reload().unwrap();
        assert_eq!(r["del_ports"], json!(["a", "b"]));
        assert!(port_names(&sw).is_empty() && streams(&sw).is_empty());
        sw.stop();
        let _ = std::fs::remove_dir_all(&d);
    }
}
