// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Prometheus metrics: `[pmd] metrics = "127.0.0.1:9477"` serves `GET /metrics` in
//! the text exposition format (version 0.0.4).
//!
//! What it serves is [`render`] of the same [`Snapshot`] `vpmd stats --json` reads,
//! taken from the [`Registry`] per request: the polling threads are never touched
//! beyond the relaxed loads of their counters that every snapshot does. Names follow
//! Prometheus conventions (`vpmd_port_rx_packets_total{port="vm0"}`); drop reasons and
//! faults are labels whose values come from the one list in [`crate::counters`].
//!
//! The server is a minimal HTTP/1.x responder on a std `TcpListener`, on threads of
//! its own, bounded like the control socket: one thread accepts; each client gets a
//! short-lived thread and one deadline ([`IO_TIMEOUT`]) for reading its request head
//! (at most [`MAX_REQUEST`] bytes) and writing the answer; at most [`MAX_CLIENTS`]
//! are served at once, and one beyond that cuts the *oldest* off. Every answer
//! closes the connection. So a scraper that connects and sends nothing, trickles,
//! or never reads can hold a thread for at most the deadline and can never delay
//! vpmd's polling, its control socket or the next scrape for long.
//!
//! The text itself comes from [`render()`], in the `render` module.

mod render;

pub use render::render;

use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::clients::{self, write_all_by, Acceptor};
use crate::stats::Registry;

/// How long a client may take to send its request head and read the answer, in all.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// Most clients answered at once.
pub const MAX_CLIENTS: usize = 8;
/// The exposition format served.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Metrics listener errors.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be listened on.
    #[error("pmd.metrics: cannot listen on {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The server thread could not be started.
    #[error("cannot start the metrics thread")]
    Thread(#[source] io::Error),
}

/// The metrics address bound and not yet served: bound before privileges are
/// dropped (a port below 1024 needs `CAP_NET_BIND_SERVICE`), served after.
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
}

/// The running metrics server; stopped when dropped.
pub struct MetricsServer {
    acceptor: Acceptor,
    addr: SocketAddr,
}

impl MetricsListener {
    /// Listens on `addr`.
    pub fn bind(addr: SocketAddr) -> Result<MetricsListener, MetricsError> {
        let bind = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        Ok(MetricsListener { listener, addr })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers scrapes from `registry` on threads of its own.
    pub fn serve(self, registry: Arc<Registry>) -> Result<MetricsServer, MetricsError> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let listener = self.listener;
        let thread = thread::Builder::new()
            .name("vpmd-metrics".into())
            .spawn(move || accept_loop(&listener, &registry, &flag))
            .map_err(MetricsError::Thread)?;
        Ok(MetricsServer {
            acceptor: Acceptor::new(stop, thread),
            addr: self.addr,
        })
    }
}

impl MetricsServer {
    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting. Clients being answered finish (or reach their deadline) on
    /// their own threads.
    pub fn stop(mut self) {
        self.acceptor.stop();
    }
}

fn accept_loop(listener: &TcpListener, registry: &Arc<Registry>, stop: &AtomicBool) {
    let registry = registry.clone();
    clients::accept_loop(
        "metrics",
        "vpmd-metrics-client",
        MAX_CLIENTS,
        stop,
        || {
            listener
                .accept()
                .map(|(s, peer)| (s, format!(" from {peer}")))
        },
        Arc::new(move |stream: &TcpStream| answer(stream, &registry)),
    );
}

/// Reads the request head (up to the blank line), each read limited to the time
/// left until `end`. `None`: longer than [`MAX_REQUEST`]. A client that closed its
/// side without a blank line is answered on what it sent.
fn read_head(stream: &TcpStream, end: Instant) -> io::Result<Option<String>> {
    Ok(
        match clients::read_head(stream, end, MAX_REQUEST, find_end_of_head)? {
            clients::Head::Found(head) | clients::Head::Closed(head) => Some(head),
            clients::Head::TooLong => None,
        },
    )
}

fn find_end_of_head(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n"))
}

/// An HTTP answer: status line, content type, body.
struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    /// HEAD: headers only.
    head_only: bool,
    extra_header: &'static str,
}

/// What to answer to a request head.
fn route(head: Option<&str>, registry: &Registry) -> Response {
    let plain = |status, body: &str| Response {
        status,
        content_type: "text/plain; charset=utf-8",
        body: format!("{body}\n"),
        head_only: false,
        extra_header: "",
    };
    let Some(head) = head else {
        return plain(
            "431 Request Header Fields Too Large",
            "request head too long",
        );
    };
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        let mut r = plain("405 Method Not Allowed", "only GET and HEAD");
        r.extra_header = "Allow: GET, HEAD\r\n";
        return r;
    }
    match path {
        "/metrics" => Response {
            status: "200 OK",
            content_type: CONTENT_TYPE,
            body: render(&registry.snapshot()),
            head_only,
            extra_header: "",
        },
        "/" => Response {
            head_only,
            ..plain("200 OK", "vpmd: metrics at /metrics")
        },
        _ => Response {
            head_only,
            ..plain("404 Not Found", "not found: metrics are at /metrics")
        },
    }
}

/// Reads one request and writes its answer, all within [`IO_TIMEOUT`].
fn answer(stream: &TcpStream, registry: &Registry) -> io::Result<()> {
    let end = Instant::now() + IO_TIMEOUT;
    stream.set_nonblocking(false)?;
    let head = read_head(stream, end)?;
    let r = route(head.as_deref(), registry);
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len(),
        r.extra_header
    )
    .into_bytes();
    if !r.head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
    write_all_by(stream, &out, end)?;
    let _ = stream.shutdown(Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::new(Vec::new(), Vec::new(), 1))
    }

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let server = MetricsListener::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .serve(registry())
            .unwrap();
        let addr = server.local_addr();
        let r = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains(CONTENT_TYPE));
        assert!(r.contains("\r\n\r\n# HELP vpmd_build_info"), "{r}");
        let r = get(addr, "HEAD /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        assert!(get(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        let r = get(addr, "POST /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 405") && r.contains("Allow: GET, HEAD"));
        // Exactly the most it reads, and no end of the head in it.
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}", "x".repeat(MAX_REQUEST));
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&long.as_bytes()[..MAX_REQUEST]).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
        server.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "still listening after stop"
        );
    }

    #[test]
    fn silent_clients_do_not_block_a_scrape() {
        let server = MetricsListener::bind("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .serve(registry())
            .unwrap();
        let addr = server.local_addr();
        // Three times the cap of clients that connect and send nothing.
        let silent: Vec<TcpStream> = (0..MAX_CLIENTS * 3)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        let start = Instant::now();
        let r = get(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(
            start.elapsed() < IO_TIMEOUT,
            "scrape waited for silent clients"
        );
        server.stop();
        drop(silent);
    }

    #[test]
    fn bind_errors_name_the_field() {
        let first = MetricsListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let e = MetricsListener::bind(first.local_addr()).err().unwrap();
        assert!(e
            .to_string()
            .starts_with("pmd.metrics: cannot listen on 127.0.0.1:"));
    }
}
