// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The control socket: how `vpmd stats` reaches the running instance.
//!
//! A unix stream socket (mode 0600). The client sends one request line, the server
//! answers one JSON line and closes. Requests: `stats` (a plain word, as older
//! clients send it), or one JSON object, a [`Request`] (`{"request":"port-del",
//! "name":"vm3"}`; docs/interfaces.md lists them). Refused and unknown requests get
//! `{"error": "..."}`, the message naming the field when a field is wrong
//! (`port.mac: ...`). The server threads never touch frames: requests that change
//! ports are handed to the switch ([`Requests`]), which changes the polling
//! threads' streams without stopping them.
//!
//! Who may ask what: whoever may connect (`[pmd] control_socket_mode/group`, e.g. a
//! monitoring group) gets `stats` and `port-list`; requests that change ports are
//! answered only for root and vpmd's own user, told apart by the connecting
//! process's credentials (`SO_PEERCRED`, set by the kernel at `connect`).
//!
//! One thread accepts; each client is answered by a short-lived thread of its own,
//! so a client that connects and sends nothing, or reads its answer slowly, never
//! delays another. What clients can hold is bounded: at most `MAX_CLIENTS` (16)
//! are served at once, and a client beyond that is served after the *oldest* one is
//! cut off (its socket shut down): silent clients that pile up push each other out
//! instead of locking `vpmd stats` out. A request line is at most `MAX_REQUEST` (4096) bytes (a
//! longer one is answered with an error and the connection closed), and the whole
//! exchange has one deadline (`IO_TIMEOUT`, 2 s), however slowly the client trickles.
//! [`ControlServer::stop`] waits for the accept thread only: a client thread still
//! running ends at its deadline on its own.

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::clients::{self, write_all_by, Acceptor, Head};
use crate::stats::{Registry, Snapshot};

/// A request on the control socket, as JSON: `{"request": "<kebab-case name>", ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Every counter (also the plain line `stats`).
    Stats,
    /// Add a port: `port` holds the `[[port]]` fields of the config file.
    PortAdd {
        /// The port, as in the file.
        port: serde_json::Value,
    },
    /// Remove a port (and the veth pair it is in), closing its connection.
    PortDel {
        /// Its name.
        name: String,
    },
    /// The ports and what each is attached to.
    PortList,
    /// Pair two ports that are in no veth or macvlan.
    VethAdd {
        /// The two ports.
        ports: [String; 2],
    },
    /// Remove the veth pair `port` is in; both ports stay.
    VethDel {
        /// Either port of the pair.
        port: String,
    },
    /// Add a port that is in no veth or macvlan to a running macvlan.
    MacvlanAddPort {
        /// The macvlan's uplink.
        uplink: String,
        /// The port.
        port: String,
    },
    /// Take a port off its macvlan; the port stays.
    MacvlanDelPort {
        /// The macvlan's uplink.
        uplink: String,
        /// The port.
        port: String,
    },
    /// Apply the difference between the running ports and the config file.
    Reload,
}

impl Request {
    /// Whether the request changes ports (and may take a while).
    pub fn changes(&self) -> bool {
        !matches!(self, Request::Stats | Request::PortList)
    }
}

/// What answers the requests other than `stats` (the running switch).
pub trait Requests: Send + Sync {
    /// The answer, or why the request was refused (nothing was changed then,
    /// unless the message says what was).
    fn handle(&self, request: Request) -> Result<serde_json::Value, String>;
}

/// How long a client may take to send its request and read the answer, in all.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request line accepted, newline included.
const MAX_REQUEST: usize = 4096;
/// How long a client waits for the answer to a request that changes ports (closing
/// a VM's connection may wait for its memory to be let go of: up to 5 s a port).
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);
/// Most clients answered at once.
const MAX_CLIENTS: usize = 16;

/// Control socket errors.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another vpmd answers on the socket.
    #[error("control socket {0} is in use by a running vpmd; stop it or set pmd.control_socket")]
    InUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on control socket {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the control thread")]
    Thread(#[source] io::Error),
    /// The running vpmd refused the request.
    #[error("{0}")]
    Refused(String),
    /// `vpmd stats` could not reach a running vpmd.
    #[error("cannot reach vpmd on {path} (is it running?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The exchange failed half-way.
    #[error("control socket {path}")]
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

/// The control socket bound and not yet answered: [`ControlSocket::bind`] needs
/// whatever privileges its directory asks for, [`ControlSocket::serve`] none.
pub struct ControlSocket {
    listener: UnixListener,
    file: SocketFile,
}

/// The running control socket server.
pub struct ControlServer {
    acceptor: Acceptor,
    /// Dropped (the file removed) after the accept thread has stopped.
    _file: SocketFile,
}

/// A socket file vpmd created, removed when this is dropped.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What one client may hold, and how many clients at once.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Clients answered at once.
    clients: usize,
    /// Time for a whole exchange, from accept to the last byte of the answer.
    deadline: Duration,
}

const LIMITS: Limits = Limits {
    clients: MAX_CLIENTS,
    deadline: IO_TIMEOUT,
};

impl ControlSocket {
    /// Listens on `path` (mode 0600), removing a stale socket of a vpmd that is gone.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
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
        let file = SocketFile(path.to_path_buf());
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        Ok(ControlSocket { listener, file })
    }

    /// Answers `stats` from `registry` in threads of its own; other requests are
    /// refused.
    pub fn serve(self, registry: Arc<Registry>) -> Result<ControlServer, ControlError> {
        self.serve_with(Handlers::stats_only(registry), LIMITS)
    }

    /// Answers `stats` from `registry` and every other request with `requests`.
    pub fn serve_requests(
        self,
        registry: Arc<Registry>,
        requests: Arc<dyn Requests>,
    ) -> Result<ControlServer, ControlError> {
        self.serve_with(
            Handlers {
                registry,
                requests: Some(requests),
            },
            LIMITS,
        )
    }

    fn serve_with(self, handlers: Handlers, limits: Limits) -> Result<ControlServer, ControlError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let listener = self.listener;
        let handlers = Arc::new(handlers);
        let thread = thread::Builder::new()
            .name("vpmd-control".into())
            .spawn(move || accept_loop(listener, handlers, flag, limits))
            .map_err(ControlError::Thread)?;
        Ok(ControlServer {
            acceptor: Acceptor::new(stop, thread),
            _file: self.file,
        })
    }
}

impl ControlServer {
    /// [`ControlSocket::bind`] and [`ControlSocket::serve`] in one.
    pub fn start(path: &Path, registry: Arc<Registry>) -> Result<ControlServer, ControlError> {
        ControlSocket::bind(path)?.serve(registry)
    }

    #[cfg(test)]
    fn start_with(
        path: &Path,
        registry: Arc<Registry>,
        limits: Limits,
    ) -> Result<ControlServer, ControlError> {
        ControlSocket::bind(path)?.serve_with(Handlers::stats_only(registry), limits)
    }

    /// Stops accepting and removes the socket file. Clients being answered finish
    /// (or reach their deadline) on their own threads.
    pub fn stop(mut self) {
        self.acceptor.stop();
        // The socket file goes when `self._file` is dropped, right after.
    }
}

/// Who answers what.
struct Handlers {
    registry: Arc<Registry>,
    requests: Option<Arc<dyn Requests>>,
}

impl Handlers {
    fn stats_only(registry: Arc<Registry>) -> Self {
        Handlers {
            registry,
            requests: None,
        }
    }

    /// The answer to one request line from a process running as `peer` (uid).
    fn reply(&self, line: &str, peer: Option<u32>) -> serde_json::Value {
        let line = line.trim();
        let request = if line == "stats" {
            Request::Stats
        } else if line.starts_with('{') {
            match serde_json::from_str::<Request>(line) {
                Ok(r) => r,
                Err(e) => return error_reply(format!("bad request: {e}")),
            }
        } else {
            return error_reply(format!("unknown request {line:?}"));
        };
        if request.changes() && !may_change(peer) {
            return error_reply(format!(
                "only root and vpmd's own user (uid {}) may change ports; this caller \
                 (uid {}) may read stats and the port list",
                own_uid(),
                peer.map_or_else(|| "unknown".to_string(), |u| u.to_string())
            ));
        }
        match request {
            Request::Stats => serde_json::to_value(self.registry.snapshot())
                .unwrap_or_else(|e| error_reply(e.to_string())),
            other => match &self.requests {
                None => error_reply("this instance answers stats only".to_string()),
                Some(h) => h.handle(other).unwrap_or_else(error_reply),
            },
        }
    }
}

/// Whether a process running as `peer` may change ports: root, or vpmd's own user.
fn may_change(peer: Option<u32>) -> bool {
    peer.is_some_and(|uid| uid == 0 || uid == own_uid())
}

/// vpmd's effective uid.
#[allow(unsafe_code)]
fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of the process that connected `stream` (`SO_PEERCRED`).
#[allow(unsafe_code)]
fn peer_uid(stream: &UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (the size of `ucred`) into
    // `cred`, a live local of that type, and its length into `len`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &raw mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<libc::ucred>()).then_some(cred.uid)
}

fn error_reply(message: String) -> serde_json::Value {
    serde_json::json!({ "error": message })
}

fn accept_loop(
    listener: UnixListener,
    registry: Arc<Handlers>,
    stop: Arc<AtomicBool>,
    limits: Limits,
) {
    clients::accept_loop(
        "control socket",
        "vpmd-control-client",
        limits.clients,
        &stop,
        || listener.accept().map(|(s, _)| (s, String::new())),
        Arc::new(move |stream: &UnixStream| answer(stream, &registry, limits.deadline)),
    );
}

/// Reads one request line and writes the answer, all before `deadline` has passed
/// since the call.
fn answer(stream: &UnixStream, handlers: &Handlers, deadline: Duration) -> io::Result<()> {
    let mut end = Instant::now() + deadline;
    stream.set_nonblocking(false)?;
    let reply = match read_request(stream, end)? {
        Line::Line(line) => {
            let reply = handlers.reply(&line, peer_uid(stream)).to_string();
            // A change may take longer than the deadline (connections closing): the
            // answer gets a deadline of its own.
            end = Instant::now() + deadline;
            reply
        }
        Line::TooLong => serde_json::json!({
            "error": format!("request longer than {MAX_REQUEST} bytes")
        })
        .to_string(),
    };
    let mut out = reply.into_bytes();
    out.push(b'\n');
    write_all_by(stream, &out, end)
    // Dropping the stream closes it; unread request bytes make the client's next
    // write fail, which is how an endless line is cut off.
}

/// What a client sent.
enum Line {
    /// Up to the newline or the end of the stream (the newline not included).
    Line(String),
    /// `MAX_REQUEST` bytes and no newline.
    TooLong,
}

/// Reads one request line, each read limited to the time left until `end`.
fn read_request(stream: &UnixStream, end: Instant) -> io::Result<Line> {
    let newline = |b: &[u8]| b.iter().position(|&c| c == b'\n');
    Ok(
        match clients::read_head(stream, end, MAX_REQUEST, newline)? {
            Head::Found(line) | Head::Closed(line) => Line::Line(line),
            Head::TooLong => Line::TooLong,
        },
    )
}

/// Sends `request` to the vpmd listening on `path` and returns its answer; an
/// `{"error": ...}` answer is [`ControlError::Refused`].
pub fn request(path: &Path, request: &Request) -> Result<serde_json::Value, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let timeout = if request.changes() {
        CHANGE_TIMEOUT
    } else {
        IO_TIMEOUT
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(request).map_err(|e| io(io::Error::other(e)))?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(io)?;
    let value: serde_json::Value =
        serde_json::from_str(&reply).map_err(|e| ControlError::BadAnswer {
            path: path.to_path_buf(),
            detail: format!("{e}: {}", reply.trim()),
        })?;
    if let Some(msg) = value.get("error").and_then(serde_json::Value::as_str) {
        return Err(ControlError::Refused(msg.to_string()));
    }
    Ok(value)
}

/// Asks the vpmd listening on `path` for its counters.
pub fn request_stats(path: &Path) -> Result<Snapshot, ControlError> {
    let value = request(path, &Request::Stats)?;
    serde_json::from_value(value.clone()).map_err(|e| ControlError::BadAnswer {
        path: path.to_path_buf(),
        detail: format!("{e}: {value}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(Vec::new(), Vec::new(), 1))
    }

    /// A control server with the [`PATIENT`] limits in a directory of its own;
    /// stopped and removed when dropped.
    struct Patient {
        path: PathBuf,
        dir: PathBuf,
        server: Option<ControlServer>,
    }

    impl Patient {
        fn start(name: &str) -> Patient {
            let (path, dir) = socket_path(name);
            let server = ControlServer::start_with(&path, registry(), PATIENT).unwrap();
            Patient {
                path,
                dir,
                server: Some(server),
            }
        }
    }

    impl Patient {
        fn stop(&mut self) {
            if let Some(s) = self.server.take() {
                s.stop();
            }
        }
    }

    impl Drop for Patient {
        fn drop(&mut self) {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// A fresh socket path for test `name`, and its directory to remove.
    fn socket_path(name: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("vpmd-control-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        (dir.join("control.sock"), dir)
    }

    /// Limits whose deadline no test run reaches: a silent client holds its slot
    /// for the whole test, whatever the machine's speed.
    const PATIENT: Limits = Limits {
        clients: 8,
        deadline: Duration::from_secs(600),
    };

    #[test]
    fn only_root_and_vpmds_user_may_change_ports() {
        assert!(may_change(Some(0)));
        assert!(may_change(Some(own_uid())));
        assert!(!may_change(Some(own_uid().wrapping_add(4242).max(1))));
        assert!(!may_change(None));
        let h = Handlers::stats_only(registry());
        let r = h.reply(r#"{"request":"port-del","name":"vm0"}"#, Some(65534));
        assert!(r["error"].as_str().unwrap().starts_with("only root"), "{r}");
        // Reading is for everyone who may connect.
        assert!(h.reply("stats", Some(65534))["ports"].is_array());
        assert!(h.reply(r#"{"request":"stats"}"#, None)["ports"].is_array());
    }

    #[test]
    fn requests_are_json_with_their_fields() {
        let h = Handlers::stats_only(registry());
        let e = |line: &str| {
            h.reply(line, Some(0))["error"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert!(e(r#"{"request":"port-del"}"#).contains("missing field `name`"));
        assert!(e(r#"{"request":"port-del","name":"a","x":1}"#).contains("unknown field `x`"));
        assert!(e(r#"{"request":"dance"}"#).contains("unknown variant `dance`"));
        assert!(e("reload").contains("unknown request"));
        assert!(e(r#"{"request":"reload"}"#).contains("stats only"));
        let r = Request::VethAdd {
            ports: ["a".into(), "b".into()],
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"request":"veth-add","ports":["a","b"]}"#
        );
        assert!(r.changes() && !Request::PortList.changes());
    }

    #[test]
    fn answers_stats_and_refuses_a_second_server() {
        let (path, dir) = socket_path("basic");
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

    #[test]
    fn silent_clients_do_not_delay_others() {
        let server = Patient::start("silent");
        let path = server.path.clone();
        let silent: Vec<UnixStream> = (0..5)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        // Each answered while all five hold their connections and send nothing.
        for _ in 0..3 {
            let snap = request_stats(&path).unwrap();
            assert!(snap.ports.is_empty());
        }
        // stop() returns with the five still connected and silent.
        let mut server = server;
        server.stop();
        assert!(!path.exists());
        drop(silent);
    }

    #[test]
    fn clients_beyond_the_limit_push_the_oldest_out() {
        let server = Patient::start("busy");
        let path = server.path.clone();
        let mut silent: Vec<UnixStream> = (0..PATIENT.clients * 3)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        // However many silent clients there are, a real request is answered.
        for _ in 0..3 {
            assert!(request_stats(&path).is_ok());
        }
        // The first ones were cut off: they read the end of their stream.
        let mut b = [0u8; 1];
        assert_eq!(silent[0].read(&mut b).unwrap_or(0), 0);
    }

    #[test]
    fn endless_line_is_cut_off() {
        let server = Patient::start("endless");
        let path = server.path.clone();
        let mut endless = UnixStream::connect(&path).unwrap();
        let writer = thread::spawn(move || {
            let chunk = [b'x'; 4096];
            let mut sent = 0u64;
            // Ends only when the server closes the connection.
            loop {
                match endless.write(&chunk) {
                    Ok(n) => sent += n as u64,
                    Err(e) => return (sent, e),
                }
            }
        });
        let (sent, err) = writer.join().unwrap();
        assert!(
            sent >= MAX_REQUEST as u64,
            "cut off after {sent} bytes: {err}"
        );
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
        assert!(request_stats(&path).unwrap().ports.is_empty());
    }

    #[test]
    fn too_long_request_gets_an_error_answer() {
        let server = Patient::start("long");
        let path = server.path.clone();
        let mut c = UnixStream::connect(&path).unwrap();
        c.write_all(&[b'x'; MAX_REQUEST]).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert!(reply.contains("longer than"), "{reply}");
    }
}
