// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The vhost-user socket of one port, in either role, across reconnects.
//!
//! One thread per port. In the server role it owns the listening socket and serves
//! one frontend at a time; in the client role it connects to the frontend's socket,
//! retrying until it appears. Either way a disconnect (guest reboot, QEMU restart)
//! ends the connection's `VhostUserDaemon`, withdraws its rings from the polling
//! threads, and the loop waits for the next frontend with fresh backend state.
//! vpmd accepts or connects the frontend itself and puts a [`relay`] between it and
//! the daemon, to smooth over a QEMU message order the library rejects.
//!
//! Opening the socket ([`PortSocket::open`]) and starting its thread
//! ([`PortSocket::spawn`]) are two steps, so that vpmd opens every socket while it
//! may still need privileges and starts threads only once it has dropped them.

use std::fs::DirBuilder;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;

use crate::device::{new_guest_memory, NetDevice};
use crate::port::VirtioNetPort;
use crate::ratelimit::LogLimiter;
use crate::relay;
use crate::report::Chain;

/// How often waiting loops look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A frontend that sends half a message, or does not read vpmd's replies, for this
/// long is disconnected.
const FRONTEND_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closed connection's memory may stay mapped (a polling thread lets go
/// at its next poll, microseconds later) before vpmd stops waiting for it.
const MEMORY_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which side opens the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// vpmd listens; the frontend connects (QEMU `-chardev socket,path=...`).
    Server,
    /// The frontend listens; vpmd connects (QEMU `-chardev socket,path=...,server=on`).
    Client,
}

/// Who may connect to a server-role socket: its permission bits, owner and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits (0600: only the owner).
    pub mode: u32,
    /// New owner (uid); `None` leaves vpmd's user.
    pub owner: Option<u32>,
    /// New group (gid); `None` leaves vpmd's group.
    pub group: Option<u32>,
}

impl SocketAccess {
    /// `mode`, owner and group left as created.
    pub fn mode(mode: u32) -> Self {
        SocketAccess {
            mode,
            owner: None,
            group: None,
        }
    }

    /// Applies to the socket file at `path`: the mode first, while vpmd still owns the
    /// file, then owner and group (`lchown`: should `path` have been replaced by a
    /// symlink, the link itself changes, not what it points to).
    pub fn apply(&self, path: &Path) -> std::io::Result<()> {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))?;
        if self.owner.is_some() || self.group.is_some() {
            std::os::unix::fs::lchown(path, self.owner, self.group)?;
        }
        Ok(())
    }
}

/// Errors setting up a port's socket.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The listening socket could not be created.
    #[error("port {port}: cannot listen on {path}")]
    Listen {
        /// Port name.
        port: String,
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The socket's permissions, owner or group could not be set.
    #[error("port {port}: cannot set mode, owner or group of {path}")]
    Permissions {
        /// Port name.
        port: String,
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The connection thread could not be started.
    #[error("port {port}: cannot start its connection thread")]
    Thread {
        /// Port name.
        port: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A port's socket opened and not yet served: in the server role the listening
/// socket exists with its access applied (the step that may need privileges); in the
/// client role nothing is opened until [`PortSocket::spawn`]'s thread connects.
/// Dropped unserved, a server socket's file is removed.
pub struct PortSocket {
    port: Arc<VirtioNetPort>,
    path: PathBuf,
    listener: Option<Listener>,
}

/// A running connection thread of one port.
pub struct Connection {
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

struct Worker {
    port: Arc<VirtioNetPort>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The live frontend connection, so that `stop` can shut it down.
    current: Arc<Mutex<Option<UnixStream>>>,
    /// Connection log lines: a frontend that connects and fails in a loop must
    /// not flood the log.
    log: LogLimiter,
}

impl PortSocket {
    /// Opens `port`'s socket on `path`. In the server role the socket exists (with
    /// `access` applied) when this returns; no thread is started.
    pub fn open(
        port: Arc<VirtioNetPort>,
        path: &Path,
        role: Role,
        access: SocketAccess,
    ) -> Result<PortSocket, ConnectionError> {
        let listener = match role {
            Role::Server => {
                let l = Listener::new(path, true).map_err(|source| ConnectionError::Listen {
                    port: port.name().to_string(),
                    path: path.to_path_buf(),
                    source,
                })?;
                access
                    .apply(path)
                    .map_err(|source| ConnectionError::Permissions {
                        port: port.name().to_string(),
                        path: path.to_path_buf(),
                        source,
                    })?;
                Some(l)
            }
            Role::Client => None,
        };
        Ok(PortSocket {
            port,
            path: path.to_path_buf(),
            listener,
        })
    }

    /// Starts the port's connection thread: it serves frontends on the listening
    /// socket (server role) or connects to the frontend's (client role).
    pub fn spawn(self) -> Result<Connection, ConnectionError> {
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let name = self.port.name().to_string();
        let worker = Worker {
            port: self.port,
            path: self.path,
            stop: stop.clone(),
            current: current.clone(),
            log: LogLimiter::guest_errors(),
        };
        let listener = self.listener;
        let thread = thread::Builder::new()
            .name(format!("vhost-{name}"))
            .spawn(move || match listener {
                Some(l) => worker.serve(l),
                None => worker.connect_loop(),
            })
            .map_err(|source| ConnectionError::Thread { port: name, source })?;
        Ok(Connection {
            stop,
            current,
            thread: Some(thread),
        })
    }
}

impl Connection {
    /// Closes the connection (if any), stops the thread and waits for it.
    /// In the server role the socket file is removed.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(s) = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one already-connected frontend on `port` until it goes away, exactly as
/// a port's connection thread serves each frontend (relay, fresh daemon and device
/// state, rings published and withdrawn). For fuzzing and tests of the protocol.
pub fn serve_one(port: Arc<VirtioNetPort>, frontend: UnixStream) {
    let mut worker = Worker {
        port,
        path: PathBuf::from("(socket pair)"),
        stop: Arc::new(AtomicBool::new(false)),
        current: Arc::new(Mutex::new(None)),
        log: LogLimiter::guest_errors(),
    };
    worker.run_connection(frontend);
}

impl Worker {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn new_daemon(&self) -> Option<(VhostUserDaemon<Arc<NetDevice>>, Arc<NetDevice>)> {
        let mem = new_guest_memory();
        let dev = Arc::new(NetDevice::new(self.port.clone(), mem.clone()));
        match VhostUserDaemon::new(format!("vhost-{}", self.port.name()), dev.clone(), mem) {
            Ok(d) => Some((d, dev)),
            Err(e) => {
                log::error!(
                    "port {}: cannot create vhost-user daemon: {e}",
                    self.port.name()
                );
                None
            }
        }
    }

    /// Serves one established frontend connection until it goes away: a fresh
    /// vhost-user-backend daemon behind a [`relay`].
    fn run_connection(&mut self, frontend: UnixStream) {
        if hung_up(&frontend) {
            // Connected and gone without a word (a connect flood): no daemon, no
            // threads, no log line; the next queued frontend is served at once.
            return;
        }
        let name = self.port.name().to_string();
        if let Some(held_back) = self.log.allow() {
            log::info!(
                "port {name}: frontend connected on {} ({held_back} similar messages held back)",
                self.path.display()
            );
        }
        if let Err(e) = crate::fault_guard::install() {
            log::error!("port {name}: {}: refusing the frontend", Chain(&e));
            return;
        }
        for (what, r) in [
            ("read", frontend.set_read_timeout(Some(FRONTEND_IO_TIMEOUT))),
            (
                "write",
                frontend.set_write_timeout(Some(FRONTEND_IO_TIMEOUT)),
            ),
        ] {
            if let Err(e) = r {
                log::error!("port {name}: cannot set a {what} timeout on the frontend socket: {e}");
                return;
            }
        }
        let (mut internal, backend_side) = match relay_pair() {
            Ok(p) => p,
            Err(e) => {
                log::error!("port {name}: cannot set up the vhost-user relay: {e}");
                return;
            }
        };
        let Some((mut daemon, dev)) = self.new_daemon() else {
            return;
        };
        // Our end is already queued on the internal listener, so this accepts it at once.
        if let Err(e) = daemon.start(&mut internal) {
            log::error!("port {name}: cannot start the vhost-user daemon: {e}");
            return;
        }
        {
            let mut cur = self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match frontend.try_clone() {
                Ok(c) => *cur = Some(c),
                Err(e) => log::warn!("port {name}: cannot keep a handle to stop it: {e}"),
            }
            if self.stopping() {
                let _ = frontend.shutdown(Shutdown::Both);
            }
        }
        let ctx = relay::RelayContext {
            port: self.port.clone(),
            health: dev.health().clone(),
            memory: dev.memory_watch().clone(),
            log: dev.dirty_log().clone(),
        };
        let memory = ctx.memory.clone();
        let relay = thread::Builder::new()
            .name(format!("relay-{name}"))
            .spawn(move || relay::run(frontend, backend_side, &ctx));
        let result = match relay {
            Ok(relay) => {
                let r = daemon.wait();
                if let Ok(Err(e)) = relay.join() {
                    if let Some(held_back) = self.log.allow() {
                        log::warn!(
                            "port {name}: vhost-user connection closed: {} \
                             ({held_back} similar messages held back)",
                            Chain(&e)
                        );
                    }
                }
                r
            }
            Err(e) => {
                log::error!("port {name}: cannot start the relay thread: {e}");
                daemon.request_shutdown();
                daemon.wait()
            }
        };
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        dev.unpublish();
        self.port.clear_kicks();
        // Dropping the daemon joins its vring worker thread; the polling threads let
        // go of their last snapshot of the memory at their next poll. Only then is
        // it unmapped, and only then may the SIGBUS guard forget it.
        drop(daemon);
        drop(dev);
        memory.release(MEMORY_RELEASE_TIMEOUT);
        let Some(held_back) = self.log.allow() else {
            return;
        };
        match result {
            Ok(())
            | Err(vhost_user_backend::Error::HandleRequest(
                vhost::vhost_user::Error::Disconnected,
            )) => log::info!(
                "port {name}: frontend disconnected ({held_back} similar messages held back)"
            ),
            Err(e) => log::warn!(
                "port {name}: connection ended: {e} ({held_back} similar messages held back)"
            ),
        }
    }

    fn serve(mut self, listener: Listener) {
        while wait_readable(&listener, &self.stop) {
            match listener.accept() {
                Ok(Some(stream)) => self.run_connection(stream),
                Ok(None) => {}
                Err(e) => {
                    log::warn!(
                        "port {}: accepting a frontend failed: {e}",
                        self.port.name()
                    );
                    thread::sleep(POLL_INTERVAL);
                }
            }
        }
    }

    fn connect_loop(mut self) {
        let mut waiting_logged = false;
        while !self.stopping() {
            match UnixStream::connect(&self.path) {
                Ok(stream) => {
                    waiting_logged = false;
                    self.run_connection(stream);
                }
                Err(e) => {
                    if !waiting_logged {
                        log::info!(
                            "port {}: waiting for the frontend's socket {} ({e})",
                            self.port.name(),
                            self.path.display()
                        );
                        waiting_logged = true;
                    }
                    thread::sleep(POLL_INTERVAL);
                }
            }
        }
    }
}

/// A listener for vhost-user-backend and a stream already connected to it, for the
/// relay. The listener is bound in a fresh directory only we (the owner) may enter,
/// and its name is gone before anyone is accepted, so no other process can slip in.
fn relay_pair() -> std::io::Result<(Listener, UnixStream)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vpmd-relay-{}-{n}", std::process::id()));
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
        let path = dir.join("s");
        let pair =
            UnixListener::bind(&path).and_then(|l| UnixStream::connect(&path).map(|s| (l, s)));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        let (l, s) = pair?;
        return Ok((Listener::from(l), s));
    }
}

/// Whether the peer has closed its end with nothing left to read.
#[allow(unsafe_code)] // recv(2) with MSG_PEEK.
fn hung_up(s: &UnixStream) -> bool {
    let mut b = 0u8;
    // SAFETY: a one-byte peek into a local byte; MSG_DONTWAIT so it never blocks.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            (&raw mut b).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// Waits until a frontend is connecting; `false` once `stop` is set.
#[allow(unsafe_code)] // poll(2) on the listener, so that a stop request is noticed.
fn wait_readable(listener: &Listener, stop: &AtomicBool) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !stop.load(Ordering::Acquire) {
        // SAFETY: `pfd` is a valid pollfd for the duration of the call and the count is 1.
        let n = unsafe { libc::poll(&raw mut pfd, 1, POLL_INTERVAL.as_millis() as i32) };
        if n > 0 {
            return true;
        }
    }
    false
}
