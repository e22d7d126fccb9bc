// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The benchmark engines, one per file, like testpmd's forwarding engines:
//! - [`txonly`]: a packet generator on one port.
//! - [`rxonly`]: a checking sink on one port (waits on its call eventfd by default).
//! - [`loopback`]: two ports, a burst injected, then zero-copy io forwarding between them.
//! - [`ring_loop`]: two ports, rings filled once, only indexes moved: the backend alone.
//! - [`loop_report`]: what `loopback` and `ring_loop` measure and print alike.
//! - [`latency`]: timestamped frames through a pair at a fixed rate, a histogram.
//! - [`xdp_txonly`]: a packet generator on a kernel interface (AF_XDP), for macvlan uplinks.
//!
//! Here: what they share: device options ([`DeviceArgs`]), the generators' traffic options
//! ([`TrafficArgs`]), guest memory and pool setup,
//! CPU pinning, the stop flag set by SIGINT/SIGTERM, and rate formatting.
#![allow(unsafe_code)] // signal(2) for SIGINT/SIGTERM, sched_setaffinity(2).

pub mod latency;
pub mod loop_report;
pub mod loopback;
pub mod ring_loop;
pub mod rxonly;
pub mod txonly;
pub mod xdp_txonly;

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::frame::{self, Endpoints, FrameError};
use crate::frontend::FrontendError;
use crate::guest_mem::{GuestMem, HUGE_PAGE};
use crate::pacing::{Pacer, RunLimit};
use crate::pool::{BufPool, BUF_ALIGN};
use crate::port::{Handshake, Port, PortOptions};

/// Options every mode has for its device(s).
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Descriptors per virtqueue (a power of two).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub queue_size: u16,
    /// Seconds to keep retrying while a socket is absent or refuses.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub connect_timeout: f64,
    /// Back guest memory with 2 MiB hugepages (needs free hugepages), like a VM with
    /// hugepage memory; default is plain memfd pages, as cloud-hypervisor without hugepages.
    #[arg(long)]
    pub huge: bool,
    /// Pin this process to CPU core N.
    #[arg(long, value_name = "N")]
    pub core: Option<usize>,
}

/// What the two-port loop modes (`loopback`, `ring-loop`) share: the ports, the
/// frame size and the run's phases.
#[derive(clap::Args, Clone, Debug)]
pub struct LoopArgs {
    /// vhost-user socket of port A.
    pub a: PathBuf,
    /// vhost-user socket of port B.
    pub b: PathBuf,
    /// Ethernet frame size in bytes (no FCS), 60 to 9000; with `ring-loop --tso`, the
    /// TSO frame's, up to 65549 (an IPv4 packet of 65535 bytes).
    #[arg(long, default_value = "64", value_parser = parse_loop_frame_size)]
    pub size: usize,
    /// Seconds to measure.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Seconds to run (frames moving) before measuring.
    #[arg(long, default_value = "1", value_name = "SECONDS", value_parser = parse_seconds)]
    pub warmup: Duration,
    /// Seconds to wait after connecting before the first frames are sent (the backend
    /// starts polling).
    #[arg(long, default_value = "0.2", value_name = "SECONDS", value_parser = parse_seconds)]
    pub settle: Duration,
}

/// What the generators (`txonly`, `xdp-txonly`) send and for how long; the
/// destination MAC is each mode's own (one MAC, or a weighted list).
#[derive(clap::Args, Clone, Debug)]
pub struct TrafficArgs {
    /// Stop after this many frames.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds (default 10 when no --count is given).
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,
    /// Frames per second (default: as fast as possible).
    #[arg(long, value_name = "PPS")]
    pub rate: Option<u64>,
    /// Number of flows: flow i uses UDP source port --src-port + i, in turn.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub flows: u16,
    /// Source MAC.
    #[arg(long, default_value = "02:00:00:00:00:01", value_parser = parse_mac)]
    pub src_mac: [u8; 6],
    /// Source IPv4 address.
    #[arg(long, default_value = "198.18.0.1")]
    pub src_ip: Ipv4Addr,
    /// Destination IPv4 address.
    #[arg(long, default_value = "198.19.0.1")]
    pub dst_ip: Ipv4Addr,
    /// UDP source port of flow 0.
    #[arg(long, default_value_t = 1024)]
    pub src_port: u16,
    /// UDP destination port.
    #[arg(long, default_value_t = 1024)]
    pub dst_port: u16,
}

impl TrafficArgs {
    /// The frames' addresses, to `dst_mac`.
    pub fn endpoints(&self, dst_mac: [u8; 6]) -> Endpoints {
        Endpoints {
            src_mac: self.src_mac,
            dst_mac,
            src_ip: self.src_ip,
            dst_ip: self.dst_ip,
            src_port: self.src_port,
            dst_port: self.dst_port,
        }
    }

    /// The flow after `flow`: each in turn, `--flows` of them.
    pub fn next_flow(&self, flow: u16) -> u16 {
        if flow + 1 == self.flows {
            0
        } else {
            flow + 1
        }
    }

    /// When the run ends: `--count`, `--duration`, or 10 s when neither is given.
    pub fn limit(&self) -> RunLimit {
        RunLimit {
            count: self.count,
            duration: self
                .duration
                .or(self.count.is_none().then_some(Duration::from_secs(10))),
        }
    }
}

/// Why a mode could not run.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    /// Guest memory, the buffer pool or a device could not be set up (as for a
    /// [`NetFrontend`](crate::NetFrontend)).
    #[error(transparent)]
    Setup(#[from] FrontendError),
    /// The frame options are invalid.
    #[error("frame")]
    Frame(#[from] FrameError),
    /// Pinning to a core failed.
    #[error("pinning to core {core}")]
    Pin {
        /// The core.
        core: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The AF_XDP socket could not be set up.
    #[error(transparent)]
    Uplink(vpmd_uplink::UplinkError),
    /// The TSO frame options are invalid.
    #[error("TSO frames")]
    Tso(#[from] ring_loop::tso::TsoError),
    /// `--rx-buf` does not fit the frames.
    #[error("--rx-buf {rx_buf}: RX buffers must hold one segment ({min} bytes) and fit the pool's {max}")]
    RxBuf {
        /// The size asked for.
        rx_buf: u32,
        /// Header + one segment.
        min: u32,
        /// Pool buffer size.
        max: u32,
    },
    /// A port did not negotiate the offloads the mode needs.
    #[error("port {port} did not negotiate the features {missing:#x} (does the backend offer TSO and checksum offloads?)")]
    Offloads {
        /// The port ("a" or "b").
        port: &'static str,
        /// The feature bits asked for and not negotiated.
        missing: u64,
    },
    /// `--enable-queues` above `--queues`.
    #[error("--enable-queues {enabled} is more than the {pairs} queue pairs set up")]
    EnableQueues {
        /// Pairs to enable.
        enabled: u16,
        /// Pairs set up.
        pairs: u16,
    },
    /// `ring-loop --tso` with more than one queue pair.
    #[error("--tso runs over one queue pair: drop --queues")]
    TsoQueues,
    /// The backend never carried a frame.
    #[error("no frame came through within {0:?}: is the backend forwarding?")]
    NoTraffic(Duration),
}

/// Global options of the command line that modes need.
#[derive(Clone, Copy, Debug, Default)]
pub struct Global {
    /// Skip GET_CONFIG (DPDK's net vhost does not answer it).
    pub no_config: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM end the current run early (it still reports).
pub fn install_stop_handler() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: `on_signal` only stores to an atomic, which is async-signal-safe; the
        // handler stays valid for the life of the process.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether a stop signal arrived.
#[inline]
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Pins the calling thread to `core`, if given.
pub fn pin(core: Option<usize>) -> Result<(), ModeError> {
    let Some(core) = core else {
        return Ok(());
    };
    if core >= libc::CPU_SETSIZE as usize {
        return Err(ModeError::Pin {
            core,
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    }
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `core < CPU_SETSIZE`, so the bit lies inside `set`.
    unsafe { libc::CPU_SET(core, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) };
    if rc != 0 {
        return Err(ModeError::Pin {
            core,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The port options for `socket`.
pub fn port_options(socket: &Path, dev: &DeviceArgs, g: &Global) -> PortOptions {
    let mut o = PortOptions::new(socket);
    o.queue_size = dev.queue_size;
    o.read_config = !g.no_config;
    o.connect_timeout = Duration::from_secs_f64(dev.connect_timeout.max(0.0));
    o
}

/// Pool buffer size for frames up to `max_frame` bytes behind a 12-byte header, and never
/// below 2 KiB (a DPDK mbuf's data room), so a frame always sits in one buffer.
pub fn buf_size_for(max_frame: usize) -> u32 {
    ((12 + max_frame.max(1518)) as u32)
        .max(2048)
        .next_multiple_of(BUF_ALIGN)
}

/// Guest memory and a pool of `count` buffers of `buf_size` bytes for `ports` ports of
/// `queue_size` descriptors per queue.
pub fn memory(
    dev: &DeviceArgs,
    ports: u32,
    count: u32,
    buf_size: u32,
) -> Result<(GuestMem, BufPool), FrontendError> {
    let q = u64::from(dev.queue_size);
    // Per queue: descriptors, avail and used rings, each on its own pages.
    let ring_bytes = (16 * q).next_multiple_of(4096)
        + (6 + 2 * q).next_multiple_of(4096)
        + (6 + 8 * q).next_multiple_of(4096);
    let need = 2 * u64::from(ports) * ring_bytes
        + u64::from(count) * u64::from(buf_size + 3 * BUF_ALIGN)
        + (1 << 20);
    let size = (need as usize).next_multiple_of(HUGE_PAGE);
    let mut mem = if dev.huge {
        GuestMem::new_huge(0, size)?
    } else {
        GuestMem::new(0, size)?
    };
    let pool = BufPool::new(&mut mem, count, buf_size)?;
    Ok((mem, pool))
}

/// Handshakes with every socket first (so a backend sees all its devices negotiate before
/// any ring starts), then starts them in order, RX buffers as large as the pool's.
pub fn connect_all(
    sockets: &[&Path],
    dev: &DeviceArgs,
    g: &Global,
    mem: &mut GuestMem,
    pool: &mut BufPool,
) -> Result<Vec<Port>, FrontendError> {
    let n = sockets.len();
    let post = vec![pool.buf_size(); n];
    connect_all_with(sockets, &vec![0; n], &post, (1, 1), dev, g, mem, pool)
}

/// [`connect_all`], asking on `sockets[i]` for the features `extra[i]` too (each only
/// if offered, as every feature), with RX buffers of `rx_post_len[i]` bytes and
/// `pairs.0` queue pairs on every port, the first `pairs.1` of them enabled.
#[allow(clippy::too_many_arguments)]
pub fn connect_all_with(
    sockets: &[&Path],
    extra: &[u64],
    rx_post_len: &[u32],
    pairs: (u16, u16),
    dev: &DeviceArgs,
    g: &Global,
    mem: &mut GuestMem,
    pool: &mut BufPool,
) -> Result<Vec<Port>, FrontendError> {
    let shakes: Vec<Handshake> = sockets
        .iter()
        .zip(extra)
        .map(|(s, f)| {
            let mut o = port_options(s, dev, g);
            o.features |= f;
            (o.queue_pairs, o.enabled_pairs) = (pairs.0, Some(pairs.1));
            Port::handshake(&o)
        })
        .collect::<Result<_, _>>()?;
    let mut ports = Vec::with_capacity(shakes.len());
    for (h, &post) in shakes.into_iter().zip(rx_post_len) {
        ports.push(h.start(mem, pool, post)?);
    }
    Ok(ports)
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff` (as [`vpmd_uplink::MacAddr`] does) into the
/// bytes a frame carries.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    s.parse::<vpmd_uplink::MacAddr>()
        .map(vpmd_uplink::MacAddr::octets)
        .map_err(|e| e.to_string())
}

/// Parses a frame size in 60..=9000.
pub fn parse_frame_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(frame::MIN_LEN..=9000).contains(&n) {
        return Err(format!(
            "frame size {n} is outside {}..=9000",
            frame::MIN_LEN
        ));
    }
    Ok(n)
}

/// Parses a loop mode's frame size in 60..=65549 (each mode checks its own limit).
pub fn parse_loop_frame_size(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(frame::MIN_LEN..=ring_loop::tso::MAX_FRAME).contains(&n) {
        return Err(format!(
            "frame size {n} is outside {}..={}",
            frame::MIN_LEN,
            ring_loop::tso::MAX_FRAME
        ));
    }
    Ok(n)
}

/// Parses seconds (a non-negative decimal).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("'{s}' is not a valid duration"))
}

/// A generator's next burst: how many frames to send now, at most `burst` and what
/// `limit` leaves after `sent` since `start`, waiting until `pacer` lets at least one go;
/// `None` once the run is over or a stop signal came.
pub fn next_burst(
    pacer: &mut Pacer,
    limit: &RunLimit,
    start: Instant,
    sent: u64,
    burst: u64,
) -> Option<u64> {
    while !limit.done(sent, start.elapsed()) && !stop_requested() {
        let burst = burst.min(limit.left(sent));
        let want = pacer.allowed(sent, burst);
        if want > 0 {
            return Some(want);
        }
        pacer.wait(sent, burst);
    }
    None
}

/// Millions of frames per second.
pub fn mpps(frames: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        frames as f64 / secs / 1e6
    } else {
        0.0
    }
}

/// Gigabits per second of frame bytes (no FCS, preamble or gap).
pub fn gbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e9
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_mac("02:00:00:0a:Ff:01"), Ok([2, 0, 0, 10, 255, 1]));
        assert!(parse_mac("02:00:00:0a:ff").is_err());
        assert!(parse_mac("02:00:00:0a:ff:zz").is_err());
        assert_eq!(parse_frame_size("64"), Ok(64));
        assert!(parse_frame_size("59").is_err());
        assert!(parse_frame_size("9001").is_err());
        assert_eq!(parse_loop_frame_size("65549"), Ok(65549));
        assert!(parse_loop_frame_size("65550").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert_eq!(buf_size_for(64), 2048);
        assert_eq!(buf_size_for(9000), 9024);
        assert!((mpps(2_000_000, 2.0) - 1.0).abs() < 1e-9);
        assert!((gbps(125_000_000, 1.0) - 1.0).abs() < 1e-9);
    }
}
