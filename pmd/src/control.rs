//! The control socket: how `vpmd stats` reaches the running instance.
//!
//! A unix stream socket (mode 0600). The client sends one request line, the server
//! answers one JSON line and closes. Requests: `stats`. Unknown requests get
//! `{"error": "..."}`. The server thread never touches frames.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::stats::{Registry, Snapshot};

/// How long a client may take to send its request, and we to answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the accept loop looks at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Longest request line accepted.
const MAX_REQUEST: u64 = 256;

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another vpmd answers on the socket.
    #[error("control socket {0} is in use by a running vpmd; stop it or set pmd.control_socket")]
    InUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on control socket {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the control thread: {0}")]
    Thread(#[source] io::Error),
    /// `vpmd stats` could not reach a running vpmd.
    #[error("cannot reach vpmd on {path} (is it running?): {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The exchange failed half-way.
    #[error("control socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The answer was not what this vpmd understands.
    #[error("control socket {path}: unexpected answer: {detail}")]
    BadAnswer {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// The running control socket server.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Listens on `path` (removing a stale socket of a vpmd that is gone) and answers
    /// requests from `registry` in a thread of its own.
    pub fn start(path: &Path, registry: Arc<Registry>) -> Result<ControlServer, ControlError> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let bind = |source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(bind)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("vpmd-control".into())
            .spawn(move || accept_loop(listener, registry, flag))
            .map_err(ControlError::Thread)?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    /// Stops answering and removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: UnixListener, registry: Arc<Registry>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &registry) {
                    log::debug!("control socket: request failed: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL_INTERVAL),
            Err(e) => {
                log::warn!("control socket: accept failed: {e}");
                thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

fn answer(stream: UnixStream, registry: &Registry) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let reply = match line.trim() {
        "stats" => serde_json::to_string(&registry.snapshot()).map_err(io::Error::other)?,
        other => serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string(),
    };
    let mut w = &stream;
    w.write_all(reply.as_bytes())?;
    w.write_all(b"\n")
}

/// Asks the vpmd listening on `path` for its counters.
pub fn request_stats(path: &Path) -> Result<Snapshot, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    stream.write_all(b"stats\n").map_err(io)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(io)?;
    serde_json::from_str(&reply).map_err(|e| ControlError::BadAnswer {
        path: path.to_path_buf(),
        detail: format!("{e}: {}", reply.trim()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry {
            ports: Vec::new(),
            threads: Vec::new(),
            tsc_hz: 1,
        })
    }

    #[test]
    fn answers_stats_and_refuses_a_second_server() {
        let dir = std::env::temp_dir().join(format!("vpmd-control-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let server = ControlServer::start(&path, registry()).unwrap();
        let snap = request_stats(&path).unwrap();
        assert!(snap.ports.is_empty());
        assert!(matches!(
            ControlServer::start(&path, registry()),
            Err(ControlError::InUse(_))
        ));
        server.stop();
        assert!(!path.exists());
        assert!(matches!(
            request_stats(&path),
            Err(ControlError::Connect { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
