//! The vhost-user socket of one port, in either role, across reconnects.
//!
//! One thread per port. In the server role it owns the listening socket and serves
//! one frontend at a time; in the client role it connects to the frontend's socket,
//! retrying until it appears. Either way a disconnect (guest reboot, QEMU restart)
//! ends the connection's `VhostUserDaemon`, withdraws its rings from the polling
//! threads, and the loop waits for the next frontend with fresh backend state.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};

use crate::device::{new_guest_memory, NetDevice};
use crate::port::VirtioNetPort;

/// How often waiting loops look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Which side opens the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// vpmd listens; the frontend connects (QEMU `-chardev socket,path=...`).
    Server,
    /// The frontend listens; vpmd connects (QEMU `-chardev socket,path=...,server=on`).
    Client,
}

/// Errors setting up a port's socket.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The listening socket could not be created.
    #[error("port {port}: cannot listen on {path}: {source}")]
    Listen {
        /// Port name.
        port: String,
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: vhost::vhost_user::Error,
    },
    /// The socket's permissions could not be set.
    #[error("port {port}: cannot set mode of {path}: {source}")]
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
    #[error("port {port}: cannot start its connection thread: {source}")]
    Thread {
        /// Port name.
        port: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running connection thread of one port.
pub struct Connection {
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
    thread: Option<JoinHandle<()>>,
}

struct Worker {
    port: Arc<VirtioNetPort>,
    path: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<ShutdownHandle>>>,
}

impl Connection {
    /// Starts serving `port` on `path`. In the server role the socket exists (mode
    /// `mode`) when this returns.
    pub fn spawn(
        port: Arc<VirtioNetPort>,
        path: &Path,
        role: Role,
        mode: u32,
    ) -> Result<Connection, ConnectionError> {
        let listener = match role {
            Role::Server => {
                let l = Listener::new(path, true).map_err(|source| ConnectionError::Listen {
                    port: port.name().to_string(),
                    path: path.to_path_buf(),
                    source,
                })?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(
                    |source| ConnectionError::Permissions {
                        port: port.name().to_string(),
                        path: path.to_path_buf(),
                        source,
                    },
                )?;
                Some(l)
            }
            Role::Client => None,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let name = port.name().to_string();
        let worker = Worker {
            port,
            path: path.to_path_buf(),
            stop: stop.clone(),
            current: current.clone(),
        };
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

    /// Closes the connection (if any), stops the thread and waits for it.
    /// In the server role the socket file is removed.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            h.shutdown();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

    /// Serves one established connection until the frontend goes away.
    fn run_connection(&self, mut daemon: VhostUserDaemon<Arc<NetDevice>>, dev: Arc<NetDevice>) {
        log::info!(
            "port {}: frontend connected on {}",
            self.port.name(),
            self.path.display()
        );
        {
            let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
            *cur = daemon.shutdown_handle();
            if self.stopping() {
                if let Some(h) = cur.take() {
                    h.shutdown();
                }
            }
        }
        let result = daemon.wait();
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        dev.unpublish();
        match result {
            Ok(()) => log::info!("port {}: frontend disconnected", self.port.name()),
            Err(e) => log::warn!("port {}: connection ended: {e}", self.port.name()),
        }
        // Dropping the daemon joins its vring worker thread and unmaps guest memory
        // once the polling threads have let go of their last snapshot.
    }

    fn serve(self, mut listener: Listener) {
        while wait_readable(&listener, &self.stop) {
            let Some((mut daemon, dev)) = self.new_daemon() else {
                thread::sleep(POLL_INTERVAL);
                continue;
            };
            if let Err(e) = daemon.start(&mut listener) {
                log::warn!(
                    "port {}: accepting a frontend failed: {e}",
                    self.port.name()
                );
                continue;
            }
            self.run_connection(daemon, dev);
        }
    }

    fn connect_loop(self) {
        let mut waiting_logged = false;
        while !self.stopping() {
            if !self.path.exists() {
                if !waiting_logged {
                    log::info!(
                        "port {}: waiting for the frontend to create {}",
                        self.port.name(),
                        self.path.display()
                    );
                    waiting_logged = true;
                }
                thread::sleep(POLL_INTERVAL);
                continue;
            }
            let Some((mut daemon, dev)) = self.new_daemon() else {
                thread::sleep(POLL_INTERVAL);
                continue;
            };
            match daemon.start_client(&self.path.to_string_lossy()) {
                Ok(()) => {
                    waiting_logged = false;
                    self.run_connection(daemon, dev);
                }
                Err(e) => {
                    if !waiting_logged {
                        log::info!("port {}: cannot connect yet: {e}", self.port.name());
                        waiting_logged = true;
                    }
                    thread::sleep(POLL_INTERVAL);
                }
            }
        }
    }
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
        let n = unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL.as_millis() as i32) };
        if n > 0 {
            return true;
        }
    }
    false
}
