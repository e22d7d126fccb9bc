// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Test bench for the uplink: a network namespace with one end of a veth
//! pair, the other end ("host end") in the test's own namespace for the
//! uplink to attach to; raw AF_PACKET sockets on either end; test frames.
//!
//! Traffic only ever flows over the test's own veth pair. Everything is
//! removed by `Drop` guards, also when a test fails.
#![allow(dead_code, unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use vpmd_uplink::MacAddr;

/// How long a test waits for a frame it expects (a bound on waiting, not a
/// timing assertion: frames normally arrive in microseconds).
pub const PATIENCE: Duration = Duration::from_secs(5);

/// Ethernet addresses of the test.
pub const VM_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0xaa, 0x01];
pub const VM2_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0xaa, 0x02];
pub const UNKNOWN_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0xbb, 0x01];
pub const PEER_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0xcc, 0x01];
pub const HOST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0xdd, 0x01];
pub const BROADCAST: [u8; 6] = [0xff; 6];
pub const MULTICAST: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
pub const MULTICAST6: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];

/// True when running as root; otherwise prints why the test is skipped.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: this test needs root (netns, veth, BPF, AF_XDP)");
    }
    root
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program} {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip ARGS`, panicking with its error output on failure.
pub fn ip(args: &[&str]) -> String {
    run("ip", args).unwrap_or_else(|e| panic!("{e}"))
}

/// A namespace `vpmd-up-<tag>-<pid>` holding `ns_if`, veth peer of
/// `host_if` in the test's namespace. Dropping it deletes both.
pub struct TestNet {
    pub ns: String,
    pub host_if: String,
    pub ns_if: String,
}

impl TestNet {
    /// `tag`: at most 4 characters, unique per test. `queues`: RX and TX
    /// queues on each end. `mtu`: on both ends.
    pub fn new(tag: &str, queues: u32, mtu: u32) -> Self {
        assert!(tag.len() <= 4, "interface names have 15 characters");
        let pid = std::process::id();
        let net = Self {
            ns: format!("vpmd-up-{tag}-{pid}"),
            host_if: format!("vu{pid}{tag}h"),
            ns_if: format!("vu{pid}{tag}n"),
        };
        // `net` exists before anything is created: a failure below still
        // runs Drop and removes what was made.
        let q = queues.to_string();
        let mtu = mtu.to_string();
        ip(&["netns", "add", &net.ns]);
        // No IPv6 autoconfiguration chatter on the test link.
        let _ = run(
            "ip",
            &[
                "netns",
                "exec",
                &net.ns,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; \
                 echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6",
            ],
        );
        ip(&[
            "link",
            "add",
            &net.host_if,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &net.ns_if,
            "netns",
            &net.ns,
            "numtxqueues",
            &q,
            "numrxqueues",
            &q,
        ]);
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", net.host_if),
            "1",
        );
        ip(&["link", "set", "dev", &net.host_if, "mtu", &mtu, "up"]);
        ip(&[
            "-n",
            &net.ns,
            "link",
            "set",
            "dev",
            &net.ns_if,
            "address",
            &MacAddr(PEER_MAC).to_string(),
        ]);
        ip(&[
            "-n", &net.ns, "link", "set", "dev", &net.ns_if, "mtu", &mtu, "up",
        ]);
        net
    }

    pub fn host_ifindex(&self) -> u32 {
        vpmd_uplink::ifindex(&self.host_if).expect("host end exists")
    }

    /// Gives the host end the fixed MAC [`HOST_MAC`].
    pub fn set_host_mac(&self) {
        ip(&[
            "link",
            "set",
            "dev",
            &self.host_if,
            "address",
            &MacAddr(HOST_MAC).to_string(),
        ]);
    }

    /// Puts `host` (CIDR) on the host end and `ns` on the namespace end.
    /// Addresses go away with the interfaces.
    pub fn add_addresses(&self, host: &str, ns: &str) {
        ip(&["addr", "add", host, "dev", &self.host_if]);
        ip(&["-n", &self.ns, "addr", "add", ns, "dev", &self.ns_if]);
    }

    /// `ip netns exec NS ARGS`: its output, or its error output.
    pub fn exec_in_ns(&self, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["netns", "exec", &self.ns];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The host end's interface flags (`IFF_*`).
    pub fn host_flags(&self) -> u32 {
        let text = std::fs::read_to_string(format!("/sys/class/net/{}/flags", self.host_if))
            .expect("flags of the host end");
        u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).expect("hex flags")
    }
}

/// Installs `ping` (Debian `iputils-ping`) unless it is there; once per
/// test binary, waiting for the dpkg lock if someone else holds it.
pub fn ensure_ping() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        if run("ping", &["-V"]).is_ok() {
            return;
        }
        let install = || {
            run(
                "apt-get",
                &[
                    "install",
                    "-y",
                    "-q",
                    "-o",
                    "DPkg::Lock::Timeout=300",
                    "iputils-ping",
                ],
            )
        };
        if install().is_err() {
            let _ = run("apt-get", &["update", "-q"]);
            install().unwrap_or_else(|e| panic!("installing iputils-ping: {e}"));
        }
        run("ping", &["-V"]).expect("ping runs after installing iputils-ping");
    });
}

impl Drop for TestNet {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth end and with it the pair;
        // delete the host end as well in case the move never happened.
        let _ = run("ip", &["netns", "del", &self.ns]);
        let _ = run("ip", &["link", "del", "dev", &self.host_if]);
    }
}

/// UDP port range of test frames: frames of different sequence numbers
/// are different flows, so a multi-queue veth spreads them over queues.
const BASE_PORT: u16 = 40000;
const MAGIC: &[u8; 8] = b"VPMDTEST";

/// An IPv4/UDP frame from 198.18.0.2 to 198.18.0.1 carrying `MAGIC`, `seq`
/// and a byte pattern, `len` bytes in all (>= 60).
pub fn test_frame(dst: [u8; 6], src: [u8; 6], seq: u32, len: usize) -> Vec<u8> {
    assert!(len >= 60);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64; // TTL
    f[23] = 17; // UDP
    f[26..30].copy_from_slice(&[198, 18, 0, 2]);
    f[30..34].copy_from_slice(&[198, 18, 0, 1]);
    let port = BASE_PORT + (seq % 1000) as u16;
    f[34..36].copy_from_slice(&port.to_be_bytes());
    f[36..38].copy_from_slice(&port.to_be_bytes());
    f[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
    f[42..50].copy_from_slice(MAGIC);
    f[50..54].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in f[54..].iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(31).wrapping_add(seq) as u8;
    }
    f
}

/// `frame` with an 802.1Q tag (`tci`) after its MAC addresses.
pub fn vlan_tagged(frame: &[u8], tci: u16) -> Vec<u8> {
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00]);
    tagged.extend_from_slice(&tci.to_be_bytes());
    tagged.extend_from_slice(&frame[12..]);
    tagged
}

/// The sequence number of a test frame (tagged or not); `None` for any
/// other frame.
pub fn frame_seq(frame: &[u8]) -> Option<u32> {
    let tag = if frame.len() >= 14 && frame[12..14] == [0x81, 0x00] {
        4
    } else {
        0
    };
    if frame.len() >= 54 + tag && &frame[42 + tag..50 + tag] == MAGIC {
        Some(u32::from_be_bytes(
            frame[50 + tag..54 + tag].try_into().unwrap(),
        ))
    } else {
        None
    }
}

/// A raw AF_PACKET socket bound to one interface.
pub struct PacketSocket {
    fd: OwnedFd,
}

const PACKET_OUTGOING: u8 = 4;

impl PacketSocket {
    /// On interface `ifname` of the calling thread's namespace.
    pub fn open(ifname: &str) -> io::Result<Self> {
        let name = CString::new(ifname).unwrap();
        // SAFETY: name is a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0 until bound: no frames of other interfaces sneak in.
        // SAFETY: plain socket(2) call; checked below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let rcvbuf: libc::c_int = 8 << 20;
        // SAFETY: rcvbuf is a live c_int of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const rcvbuf).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        // SAFETY: sockaddr_ll is plain data; zeroes are valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll of the size passed.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// On interface `ifname` of namespace `ns`: a helper thread enters the
    /// namespace and creates the socket there; a socket stays in the
    /// namespace it was created in, whichever thread uses it later.
    pub fn open_in_netns(ns: &str, ifname: &str) -> io::Result<Self> {
        let path = format!("/run/netns/{ns}");
        let ifname = ifname.to_owned();
        std::thread::spawn(move || {
            let ns_file = std::fs::File::open(&path)?;
            // SAFETY: setns on this helper thread only; ns_file is an open
            // network namespace file.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Self::open(&ifname)
        })
        .join()
        .expect("netns helper thread")
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: frame is readable for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame received (not sent) on the interface, waiting at most
    /// `wait`.
    pub fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 16384];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: pfd is one valid pollfd.
            let ready = unsafe { libc::poll(&raw mut pfd, 1, left.as_millis() as libc::c_int) };
            if ready <= 0 {
                return None;
            }
            // SAFETY: sockaddr_ll is plain data; zeroes are valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are writable for the lengths passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&raw mut from).cast(),
                    &raw mut from_len,
                )
            };
            if n < 0 {
                continue;
            }
            if from.sll_pkttype != PACKET_OUTGOING {
                return Some(buf[..n as usize].to_vec());
            }
        }
    }

    /// Test frames received until one with sequence number `seq` (included),
    /// or `None` if it does not come.
    pub fn recv_test_frames_until(&self, seq: u32) -> Option<Vec<Vec<u8>>> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        while let Some(frame) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            if let Some(s) = frame_seq(&frame) {
                seen.push(frame);
                if s == seq {
                    return Some(seen);
                }
            }
        }
        None
    }

    /// Test frames already queued (waiting briefly for stragglers).
    pub fn drain_test_frames(&self) -> Vec<Vec<u8>> {
        let mut seen = Vec::new();
        while let Some(frame) = self.recv(Duration::from_millis(20)) {
            if frame_seq(&frame).is_some() {
                seen.push(frame);
            }
        }
        seen
    }
}

/// Receives test frames from `socket` until `done(frames so far)` holds or
/// `PATIENCE` runs out; returns them in arrival order.
pub fn receive_test_frames(
    socket: &mut vpmd_uplink::XskSocket,
    done: impl Fn(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + PATIENCE;
    let mut frames = Vec::new();
    while !done(&frames) && Instant::now() < deadline {
        let burst = socket.receive_burst(64);
        if burst.is_empty() {
            drop(burst);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        frames.extend(
            burst
                .iter()
                .map(|f| f.to_vec())
                .filter(|f| frame_seq(f).is_some()),
        );
    }
    frames
}

/// Sequence numbers of `frames`.
pub fn seqs(frames: &[Vec<u8>]) -> Vec<u32> {
    frames.iter().filter_map(|f| frame_seq(f)).collect()
}

/// Receives frames (all of them, test frames or not) from the group tap
/// until `done(frames so far)` holds or `PATIENCE` runs out; returns them
/// in arrival order.
pub fn receive_tap_frames(
    tap: &mut vpmd_uplink::PacketTap,
    done: impl Fn(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + PATIENCE;
    let mut frames = Vec::new();
    while !done(&frames) && Instant::now() < deadline {
        let burst = tap.receive_burst(64);
        if burst.is_empty() {
            drop(burst);
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        frames.extend(burst.iter().map(<[u8]>::to_vec));
    }
    frames
}

/// Test frames from the group tap up to the one with sequence number `seq`
/// (included); panics if it does not come.
pub fn tap_test_frames_until(tap: &mut vpmd_uplink::PacketTap, seq: u32) -> Vec<Vec<u8>> {
    let is_it = |f: &Vec<u8>| frame_seq(f) == Some(seq);
    let frames = receive_tap_frames(tap, |f| f.iter().any(is_it));
    let end = frames
        .iter()
        .position(is_it)
        .unwrap_or_else(|| panic!("test frame {seq} does not reach the group tap"));
    frames
        .into_iter()
        .take(end + 1)
        .filter(|f| frame_seq(f).is_some())
        .collect()
}

/// An uplink on `net`'s host end over RX queues `queues`, with a UMEM and rings
/// small enough to keep the tests light, large enough for their bursts.
pub fn config(net: &TestNet, queues: Vec<u32>) -> vpmd_uplink::UplinkConfig {
    vpmd_uplink::UplinkConfig {
        queues,
        umem: vpmd_uplink::UmemConfig {
            chunks_per_queue: 1024,
            ..Default::default()
        },
        rings: vpmd_uplink::RingSizes {
            fill: 512,
            completion: 512,
            rx: 512,
            tx: 512,
        },
        ..vpmd_uplink::UplinkConfig::new(&net.host_if)
    }
}
