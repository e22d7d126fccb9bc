// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! systemd's readiness protocol (`sd_notify(3)`), for `Type=notify` units.
//!
//! systemd passes a datagram unix socket in `$NOTIFY_SOCKET`: a path, or an abstract
//! name written with a leading `@`. vpmd sends `READY=1` once every port is listening
//! and its threads run, and `STOPPING=1` when a signal tells it to stop. Without
//! `$NOTIFY_SOCKET` (vpmd run by hand, or by another supervisor) nothing is sent.
//!
//! The socket is connected by [`Notifier::from_env`] before vpmd drops its
//! privileges, so sending later needs none, whoever owns the socket file.

use std::ffi::OsString;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Why the notification socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `$NOTIFY_SOCKET` is neither an absolute path nor an `@` abstract name.
    #[error("NOTIFY_SOCKET={0:?} is neither an absolute path nor an @abstract name")]
    Address(String),
    /// The socket could not be created or connected.
    #[error("cannot connect to NOTIFY_SOCKET={addr:?}")]
    Connect {
        /// The address.
        addr: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A notification could not be sent.
    #[error("cannot send {state:?} to NOTIFY_SOCKET")]
    Send {
        /// What was being sent (its first line).
        state: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// A connection to the service manager, or nothing when there is none.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<UnixDatagram>,
}

/// The socket address `$NOTIFY_SOCKET` names.
fn address(value: &OsString) -> Result<SocketAddr, NotifyError> {
    let bytes = value.as_bytes();
    let bad = || NotifyError::Address(value.to_string_lossy().into_owned());
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).map_err(|_| bad()),
        Some(b'/') => SocketAddr::from_pathname(std::path::Path::new(value)).map_err(|_| bad()),
        _ => Err(bad()),
    }
}

impl Notifier {
    /// Connects to `$NOTIFY_SOCKET`, or returns a notifier that sends nothing when
    /// it is not set (or empty).
    pub fn from_env() -> Result<Notifier, NotifyError> {
        match std::env::var_os(NOTIFY_SOCKET) {
            Some(v) if !v.is_empty() => Self::connect(&v),
            _ => Ok(Self::none()),
        }
    }

    /// A notifier that sends nothing, as without `$NOTIFY_SOCKET`.
    pub fn none() -> Notifier {
        Notifier { socket: None }
    }

    /// Connects to the socket `value` names (a path or `@abstract`).
    pub fn connect(value: &OsString) -> Result<Notifier, NotifyError> {
        let addr = address(value)?;
        let connect = |source| NotifyError::Connect {
            addr: value.to_string_lossy().into_owned(),
            source,
        };
        let socket = UnixDatagram::unbound().map_err(connect)?;
        socket.connect_addr(&addr).map_err(connect)?;
        Ok(Notifier {
            socket: Some(socket),
        })
    }

    /// Whether there is a service manager to tell.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` assignments) in one datagram.
    /// Returns whether it was sent (false: no `$NOTIFY_SOCKET`).
    pub fn send(&self, state: &str) -> Result<bool, NotifyError> {
        let Some(socket) = &self.socket else {
            return Ok(false);
        };
        socket
            .send(state.as_bytes())
            .map_err(|source| NotifyError::Send {
                state: state.lines().next().unwrap_or_default().to_string(),
                source,
            })?;
        Ok(true)
    }

    /// `READY=1`, with a status line and our pid.
    pub fn ready(&self, status: &str) -> Result<bool, NotifyError> {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ))
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) -> Result<bool, NotifyError> {
        self.send("STOPPING=1\nSTATUS=stopping")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("vpmd-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::connect(&path.clone().into_os_string()).unwrap();
        assert!(n.is_enabled());
        assert!(n.ready("serving 2 ports").unwrap());
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        assert!(
            got.starts_with("READY=1\nSTATUS=serving 2 ports\nMAINPID="),
            "{got}"
        );
        assert!(n.stopping().unwrap());
        let len = listener.recv(&mut buf).unwrap();
        assert!(buf[..len].starts_with(b"STOPPING=1"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        let name = format!("vpmd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        let n = Notifier::connect(&OsString::from(format!("@{name}"))).unwrap();
        assert!(n.send("READY=1").unwrap());
        let mut buf = [0u8; 64];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1");
    }

    #[test]
    fn no_socket_sends_nothing_and_bad_addresses_are_errors() {
        let n = Notifier { socket: None };
        assert!(!n.is_enabled());
        assert!(!n.ready("x").unwrap());
        assert!(matches!(
            Notifier::connect(&OsString::from("relative/path")),
            Err(NotifyError::Address(_))
        ));
        assert!(matches!(
            Notifier::connect(&OsString::from("/nonexistent/vpmd/notify.sock")),
            Err(NotifyError::Connect { .. })
        ));
    }
}
