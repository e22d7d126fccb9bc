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

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::counters::{FaultCounts, XskKernelCounts};
use crate::stats::{Registry, Snapshot};

/// How long a client may take to send its request head and read the answer, in all.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// Most clients answered at once.
pub const MAX_CLIENTS: usize = 8;
/// How often the accept loop looks at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
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
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
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
            stop,
            thread: Some(thread),
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
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The clients being answered, oldest first.
#[derive(Default)]
struct Clients {
    next: AtomicU64,
    open: Mutex<VecDeque<(u64, TcpStream)>>,
}

/// One client's place in [`Clients`], given back when its thread ends.
struct Slot {
    clients: Arc<Clients>,
    id: u64,
}

impl Slot {
    /// Takes a place for `stream`, cutting the oldest client off if all are taken.
    fn take(clients: &Arc<Clients>, stream: &TcpStream) -> Slot {
        let id = clients.next.fetch_add(1, Ordering::Relaxed);
        let mut open = clients.open.lock().unwrap_or_else(PoisonError::into_inner);
        while open.len() >= MAX_CLIENTS {
            if let Some((_, oldest)) = open.pop_front() {
                let _ = oldest.shutdown(Shutdown::Both);
                log::debug!("metrics: {MAX_CLIENTS} clients at once; the oldest cut off");
            }
        }
        if let Ok(handle) = stream.try_clone() {
            open.push_back((id, handle));
        }
        Slot {
            clients: clients.clone(),
            id,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.retain(|(id, _)| *id != self.id);
    }
}

fn accept_loop(listener: &TcpListener, registry: &Arc<Registry>, stop: &AtomicBool) {
    let clients = Arc::new(Clients::default());
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let slot = Slot::take(&clients, &stream);
                let registry = registry.clone();
                let spawned = thread::Builder::new()
                    .name("vpmd-metrics-client".into())
                    .spawn(move || {
                        let _slot = slot;
                        if let Err(e) = answer(&stream, &registry) {
                            log::debug!("metrics: request from {peer} failed: {e}");
                        }
                    });
                if let Err(e) = spawned {
                    log::warn!("metrics: cannot start a client thread: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL_INTERVAL),
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// The time left until `end`, or a timeout error once it has passed.
fn left(end: Instant) -> io::Result<Duration> {
    match end.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client too slow: deadline passed",
        )),
    }
}

/// Reads the request head (up to the blank line), each read limited to the time
/// left until `end`. `None`: longer than [`MAX_REQUEST`].
fn read_head(mut stream: &TcpStream, end: Instant) -> io::Result<Option<String>> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    while len < MAX_REQUEST {
        stream.set_read_timeout(Some(left(end)?))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        len += n;
        if let Some(pos) = find_end_of_head(&buf[..len]) {
            return Ok(Some(String::from_utf8_lossy(&buf[..pos]).into_owned()));
        }
    }
    if len == MAX_REQUEST {
        return Ok(None);
    }
    // The client closed its side without a blank line: answer what it sent.
    Ok(Some(String::from_utf8_lossy(&buf[..len]).into_owned()))
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

/// Writes all of `bytes`, each write limited to the time left until `end`.
fn write_all_by(mut stream: &TcpStream, mut bytes: &[u8], end: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(left(end)?))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A label value escaped as the text format wants (`\\`, `\"`, `\n`).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes metric families: a `# HELP` and `# TYPE` once per name, then its samples.
struct Writer {
    out: String,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A port counter family: name, help, and how to read it from a port.
type PortCounter = (
    &'static str,
    &'static str,
    fn(&crate::counters::PortStats) -> u64,
);

const PORT_COUNTERS: [PortCounter; 7] = [
    (
        "vpmd_port_rx_packets_total",
        "Frames vpmd delivered into the port's guest RX queue (uplink: sent out of it).",
        |p| p.rx_packets,
    ),
    (
        "vpmd_port_rx_bytes_total",
        "Ethernet bytes of rx_packets.",
        |p| p.rx_bytes,
    ),
    (
        "vpmd_port_tx_packets_total",
        "Frames vpmd took from the port's guest TX queue (uplink: brought in).",
        |p| p.tx_packets,
    ),
    (
        "vpmd_port_tx_bytes_total",
        "Ethernet bytes of tx_packets.",
        |p| p.tx_bytes,
    ),
    (
        "vpmd_port_forwarded_total",
        "Frames taken from the port that reached at least one destination.",
        |p| p.forwarded,
    ),
    (
        "vpmd_port_rx_dropped_total",
        "Copies of flooded frames for this port that its RX queue could not take.",
        |p| p.rx_dropped,
    ),
    (
        "vpmd_port_ring_errors_total",
        "Bursts in which one of the port's rings broke the virtio rules.",
        |p| p.ring_errors,
    ),
];

/// The Prometheus text of one snapshot.
pub fn render(snap: &Snapshot) -> String {
    let mut w = Writer { out: String::new() };
    w.family(
        "vpmd_build_info",
        "gauge",
        "vpmd's version, as a label; always 1.",
    );
    w.sample(
        "vpmd_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    w.family(
        "vpmd_port_up",
        "gauge",
        "1 while the port's guest driver runs its queues (uplink: while attached), else 0.",
    );
    for p in &snap.ports {
        w.sample(
            "vpmd_port_up",
            &[("port", &p.name), ("kind", &p.kind)],
            u8::from(p.state == "up"),
        );
    }
    for (name, help, get) in PORT_COUNTERS {
        w.family(name, "counter", help);
        for p in &snap.ports {
            w.sample(name, &[("port", &p.name)], get(p));
        }
    }
    w.family(
        "vpmd_port_drops_total",
        "counter",
        "Frames taken from the port and delivered nowhere, by reason.",
    );
    for p in &snap.ports {
        for (reason, v) in p.drops.pairs() {
            w.sample(
                "vpmd_port_drops_total",
                &[("port", &p.name), ("reason", reason)],
                v,
            );
        }
    }
    w.family(
        "vpmd_port_faults_total",
        "counter",
        "What the port's frontends did to the files they share with vpmd, by fault (VM ports).",
    );
    for p in &snap.ports {
        for (fault, v) in p.faults.iter().flat_map(FaultCounts::pairs) {
            w.sample(
                "vpmd_port_faults_total",
                &[("port", &p.name), ("fault", fault)],
                v,
            );
        }
    }
    w.family(
        "vpmd_port_feature_negotiated",
        "gauge",
        "1 for each virtio feature vpmd offers that the guest driver took, else 0 (VM ports with rings started).",
    );
    for p in &snap.ports {
        if let Some(taken) = &p.features {
            for (_, feature) in vpmd_backend::features::OFFERED_NAMES {
                w.sample(
                    "vpmd_port_feature_negotiated",
                    &[("port", &p.name), ("feature", feature)],
                    u8::from(taken.iter().any(|t| t == feature)),
                );
            }
        }
    }
    w.family(
        "vpmd_uplink_info",
        "gauge",
        "How a macvlan uplink is attached (XDP mode, AF_XDP socket mode, macvlan mode); always 1.",
    );
    for p in &snap.ports {
        if let Some(u) = &p.uplink {
            w.sample(
                "vpmd_uplink_info",
                &[
                    ("port", &p.name),
                    ("xdp", &u.xdp),
                    ("socket_mode", &u.socket_mode),
                    ("macvlan_mode", &u.macvlan_mode),
                ],
                1,
            );
        }
    }
    w.family(
        "vpmd_uplink_queues",
        "gauge",
        "AF_XDP sockets of a macvlan uplink, one per RX queue.",
    );
    for p in &snap.ports {
        if let Some(u) = &p.uplink {
            w.sample("vpmd_uplink_queues", &[("port", &p.name)], u.queues);
        }
    }
    for (counter, help) in XSK_KERNEL_HELP {
        let name = format!("vpmd_uplink_xsk_{counter}_total");
        w.family(&name, "counter", help);
        for p in &snap.ports {
            if let Some(k) = p.uplink.as_ref().and_then(|u| u.xsk_kernel.as_ref()) {
                let v = k
                    .pairs()
                    .iter()
                    .find(|(n, _)| *n == counter)
                    .map_or(0, |p| p.1);
                w.sample(&name, &[("port", &p.name)], v);
            }
        }
    }
    render_threads(&mut w, snap);
    w.out
}

/// The help text of each `XDP_STATISTICS` counter, in [`XskKernelCounts::NAMES`] order.
const XSK_KERNEL_HELP: [(&str, &str); XskKernelCounts::NAMES.len()] = [
    ("rx_dropped", "Kernel (XDP_STATISTICS): frames an uplink's AF_XDP sockets dropped for lack of a fill-ring chunk or room in one."),
    ("rx_invalid_descs", "Kernel (XDP_STATISTICS): RX descriptors found invalid."),
    ("tx_invalid_descs", "Kernel (XDP_STATISTICS): TX descriptors found invalid."),
    ("rx_ring_full", "Kernel (XDP_STATISTICS): frames dropped because an AF_XDP RX ring was full."),
    ("rx_fill_ring_empty_descs", "Kernel (XDP_STATISTICS): times the fill ring was found empty."),
    ("tx_ring_empty_descs", "Kernel (XDP_STATISTICS): times the TX ring was found empty when asked to send."),
];

fn render_threads(w: &mut Writer, snap: &Snapshot) {
    let cores: Vec<String> = snap.threads.iter().map(|t| t.core.to_string()).collect();
    type ThreadCounter = (
        &'static str,
        &'static str,
        fn(&crate::counters::ThreadStats) -> u64,
    );
    const THREAD_COUNTERS: [ThreadCounter; 4] = [
        (
            "vpmd_pmd_frames_total",
            "Frames the polling thread moved (delivered or dropped).",
            |t| t.frames,
        ),
        (
            "vpmd_pmd_busy_cycles_total",
            "TSC cycles the polling thread spent in polls that moved frames.",
            |t| t.busy_cycles,
        ),
        (
            "vpmd_pmd_idle_cycles_total",
            "TSC cycles the polling thread spent in polls that moved nothing.",
            |t| t.idle_cycles,
        ),
        (
            "vpmd_pmd_polls_total",
            "Polls (rounds over all its streams) the polling thread made.",
            |t| t.polls,
        ),
    ];
    for (name, help, get) in THREAD_COUNTERS {
        w.family(name, "counter", help);
        for (t, core) in snap.threads.iter().zip(&cores) {
            w.sample(name, &[("core", core)], get(t));
        }
    }
    w.family(
        "vpmd_pmd_stream_info",
        "gauge",
        "The streams (source->destination) each polling thread polls; always 1.",
    );
    for (t, core) in snap.threads.iter().zip(&cores) {
        for s in &t.streams {
            w.sample("vpmd_pmd_stream_info", &[("core", core), ("stream", s)], 1);
        }
    }
    w.family(
        "vpmd_tsc_hz",
        "gauge",
        "TSC cycles per second, to turn the cycle counters into time.",
    );
    if let Some(t) = snap.threads.first() {
        w.sample("vpmd_tsc_hz", &[], t.tsc_hz);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::{DropCounts, PortStats, ThreadStats};
    use crate::stats::UplinkInfo;

    fn port(name: &str) -> PortStats {
        PortStats {
            name: name.into(),
            kind: "vhost-user".into(),
            state: "up".into(),
            rx_packets: 10,
            rx_bytes: 600,
            tx_packets: 12,
            tx_bytes: 720,
            forwarded: 9,
            rx_dropped: 1,
            drops: DropCounts {
                peer_down: 2,
                too_big: 1,
                ..Default::default()
            },
            ring_errors: 0,
            faults: Some(FaultCounts {
                throttled: 4,
                ..Default::default()
            }),
            uplink: None,
            features: Some(vec!["VERSION_1".into(), "EVENT_IDX".into()]),
        }
    }

    fn sample() -> Snapshot {
        let mut uplink = port("eth\"1");
        uplink.kind = "uplink".into();
        uplink.faults = None;
        uplink.features = None;
        uplink.uplink = Some(UplinkInfo {
            xdp: "driver".into(),
            socket_mode: "copy".into(),
            queues: 1,
            macvlan_mode: "bridge".into(),
            xsk_kernel: Some(XskKernelCounts {
                rx_ring_full: 7,
                ..Default::default()
            }),
            sockets: Default::default(),
        });
        let mut down = port("vm1");
        down.state = "down".into();
        down.features = None;
        Snapshot {
            ports: vec![port("vm0"), down, uplink],
            threads: vec![ThreadStats {
                core: 1,
                streams: vec!["vm0->vm1".into(), "vm1->vm0".into()],
                frames: 22,
                busy_cycles: 3000,
                idle_cycles: 7000,
                polls: 99,
                tsc_hz: 2_000_000_000,
            }],
        }
    }

    #[test]
    fn renders_every_counter_with_labels() {
        let t = render(&sample());
        for line in [
            "vpmd_port_up{port=\"vm0\",kind=\"vhost-user\"} 1",
            "vpmd_port_up{port=\"vm1\",kind=\"vhost-user\"} 0",
            "vpmd_port_rx_packets_total{port=\"vm0\"} 10",
            "vpmd_port_rx_bytes_total{port=\"vm0\"} 600",
            "vpmd_port_tx_packets_total{port=\"vm0\"} 12",
            "vpmd_port_tx_bytes_total{port=\"vm0\"} 720",
            "vpmd_port_forwarded_total{port=\"vm0\"} 9",
            "vpmd_port_rx_dropped_total{port=\"vm0\"} 1",
            "vpmd_port_drops_total{port=\"vm0\",reason=\"peer_down\"} 2",
            "vpmd_port_drops_total{port=\"vm0\",reason=\"too_big\"} 1",
            "vpmd_port_faults_total{port=\"vm0\",fault=\"throttled\"} 4",
            "vpmd_port_feature_negotiated{port=\"vm0\",feature=\"EVENT_IDX\"} 1",
            "vpmd_port_feature_negotiated{port=\"vm0\",feature=\"MRG_RXBUF\"} 0",
            "vpmd_uplink_info{port=\"eth\\\"1\",xdp=\"driver\",socket_mode=\"copy\",macvlan_mode=\"bridge\"} 1",
            "vpmd_uplink_queues{port=\"eth\\\"1\"} 1",
            "vpmd_uplink_xsk_rx_ring_full_total{port=\"eth\\\"1\"} 7",
            "vpmd_uplink_xsk_rx_dropped_total{port=\"eth\\\"1\"} 0",
            "vpmd_pmd_frames_total{core=\"1\"} 22",
            "vpmd_pmd_busy_cycles_total{core=\"1\"} 3000",
            "vpmd_pmd_idle_cycles_total{core=\"1\"} 7000",
            "vpmd_pmd_polls_total{core=\"1\"} 99",
            "vpmd_pmd_stream_info{core=\"1\",stream=\"vm1->vm0\"} 1",
            "vpmd_tsc_hz 2000000000",
        ] {
            assert!(t.lines().any(|l| l == line), "no line {line:?} in\n{t}");
        }
        // Every reason for every port, from the one list; no features for a port
        // without rings, no faults for an uplink.
        for reason in DropCounts::NAMES {
            for p in ["vm0", "vm1", "eth\\\"1"] {
                let l = format!("vpmd_port_drops_total{{port=\"{p}\",reason=\"{reason}\"}}");
                assert!(t.contains(&l), "{l}");
            }
        }
        assert!(!t.contains("feature_negotiated{port=\"vm1\""));
        assert!(!t.contains("faults_total{port=\"eth"));
    }

    #[test]
    fn every_family_has_help_and_type_once_before_its_samples() {
        let t = render(&sample());
        let mut seen = std::collections::HashSet::new();
        let mut current = String::new();
        for l in t.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(seen.insert(name.clone()), "{name} declared twice");
                current = name;
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                let mut w = rest.split(' ');
                assert_eq!(w.next().unwrap(), current);
                let kind = w.next().unwrap();
                assert!(kind == "counter" || kind == "gauge");
                assert_eq!(kind == "counter", current.ends_with("_total"), "{current}");
            } else {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample {l:?} outside its family");
            }
        }
    }

    /// docs/interfaces.md names every metric family served.
    #[test]
    fn the_docs_name_every_family() {
        let doc = include_str!("../../docs/interfaces.md");
        for l in render(&sample()).lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    doc.contains(&format!("`{name}`")) || doc.contains(&format!("`{name}{{")),
                    "docs/interfaces.md does not name metric {name}"
                );
            }
        }
    }

    #[test]
    fn xsk_help_follows_the_counter_names() {
        let names: Vec<&str> = XSK_KERNEL_HELP.iter().map(|h| h.0).collect();
        assert_eq!(names, XskKernelCounts::NAMES);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    fn registry() -> Arc<Registry> {
        Arc::new(Registry {
            ports: Vec::new(),
            threads: Vec::new(),
            tsc_hz: 1,
        })
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
