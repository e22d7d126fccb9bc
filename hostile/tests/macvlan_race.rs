// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A macvlan port's guest rewrites its frames' source MAC while vpmd forwards them.
//!
//! vpmd runs a bridge-mode macvlan on one end of a veth; the other end sits in a
//! network namespace of the test's, where a packet socket receives what leaves the
//! uplink. A hostile frontend on the macvlan's one port sends broadcast frames
//! with its own (genuine) source MAC while a second thread keeps flipping the
//! source MAC bytes of those very TX buffers to a forged value and back.
//!
//! Each frame vpmd takes is either checked genuine and sent out with exactly the
//! bytes it checked, or seen forged and dropped as `spoofed`: the namespace must
//! never receive a frame with another source than the port's MAC. (Before the
//! header was read from guest memory only once, the copy to the uplink re-read
//! it, and bytes rewritten after the check went out.)
//!
//! Needs root (namespaces, veth, XDP) and the release vpmd binary
//! (`cargo build --release -p vpmd`, or `VPMD_BIN`).
#![allow(unsafe_code)] // setns(2) and an AF_PACKET socket for the receiver.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpmd_hostile::ring::Desc;
use vpmd_hostile::vm::{HostileVm, HDR_LEN, QUEUE_SIZE};
use vpmd_hostile::vpmd::{counter, Vpmd};

/// The macvlan port's MAC: the only source the namespace may see.
const GENUINE: [u8; 6] = [0x52, 0x54, 0, 0, 3, 1];
/// What the second vCPU writes over it.
const FORGED: [u8; 6] = [0x02, 0xba, 0xd0, 0, 0, 0x66];
/// A local experimental EtherType: the namespace's stack ignores these frames.
const ETHERTYPE: u16 = 0x88b5;
/// TX buffers in flight per round.
const IN_FLIGHT: u16 = 32;
/// Rounds of [`IN_FLIGHT`] frames.
const ROUNDS: u32 = 1000;
const FRAME_LEN: usize = 64;

/// `ip ...`, panicking with its output on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace and a veth into it, one queue each way; removed on drop.
struct Net {
    ns: String,
    uplink: String,
    peer: String,
}

impl Net {
    fn new() -> Net {
        let id = std::process::id() % 100_000;
        let net = Net {
            ns: format!("vpmd-race-{id}"),
            uplink: format!("vrace{id}a"),
            peer: format!("vrace{id}b"),
        };
        net.remove();
        ip(&["netns", "add", &net.ns]);
        ip(&[
            "link",
            "add",
            &net.uplink,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "type",
            "veth",
            "peer",
            "name",
            &net.peer,
            "numtxqueues",
            "1",
            "numrxqueues",
            "1",
            "netns",
            &net.ns,
        ]);
        ip(&["link", "set", &net.uplink, "up"]);
        ip(&["-n", &net.ns, "link", "set", &net.peer, "up"]);
        ip(&[
            "-n",
            &net.ns,
            "addr",
            "add",
            "198.18.77.2/24",
            "dev",
            &net.peer,
        ]);
        net
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.uplink])
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

/// vpmd with one bridge-mode macvlan port `h` on `uplink`.
fn start_vpmd(uplink: &str) -> Vpmd {
    Vpmd::start("macvlan-race", |dir| {
        let core = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) - 1;
        format!(
            "[pmd]\ncores = [{core}]\ncontrol_socket = \"{ctl}\"\n\n\
             [[port]]\nname = \"h\"\nsocket = \"{sock}\"\nmac = \"{mac}\"\n\n\
             [[macvlan]]\nuplink = \"{uplink}\"\nqueues = 1\nmode = \"bridge\"\nports = [\"h\"]\n",
            ctl = dir.join("control.sock").display(),
            sock = dir.join("h.sock").display(),
            mac = vpmd_bench::MacAddr(GENUINE),
        )
    })
}

/// An AF_PACKET socket for [`ETHERTYPE`] frames on interface `dev` of namespace `ns`.
fn packet_socket(ns: &str, dev: &str) -> io::Result<OwnedFd> {
    let ns_file = File::open(Path::new("/run/netns").join(ns))?;
    let dev = std::ffi::CString::new(dev).expect("interface name");
    // A thread of its own enters the namespace; the socket stays in it.
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) takes a descriptor we hold open; it changes only this
            // thread's network namespace, and the thread ends right after.
            if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let proto = ETHERTYPE.to_be();
            // SAFETY: socket(2) takes no pointers.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: `dev` is a NUL-terminated string that outlives the call.
            let index = unsafe { libc::if_nametoindex(dev.as_ptr()) };
            if index == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = index as i32;
            // SAFETY: `addr` is a live sockaddr_ll and the length passed is its size.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if r != 0 {
                return Err(io::Error::last_os_error());
            }
            let size: libc::c_int = 8 << 20;
            // SAFETY: the option value is a live c_int and the length is its size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&raw const size).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
            Ok(fd)
        })
        .join()
        .expect("namespace thread")
    })
}

/// Frames received on `sock` until `done` is set and it has been quiet a while:
/// (with the genuine source, with any other).
fn receive(sock: OwnedFd, done: Arc<AtomicBool>) -> (u64, u64) {
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: the option value is a live timeval and the length is its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    let (mut genuine, mut forged) = (0u64, 0u64);
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: `buf` is live and writable for its whole length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            if done.load(Ordering::Acquire) {
                return (genuine, forged);
            }
            continue;
        }
        let n = n as usize;
        if n < 14 || buf[12..14] != ETHERTYPE.to_be_bytes() {
            continue;
        }
        if buf[6..12] == GENUINE {
            genuine += 1;
        } else {
            forged += 1;
            if forged <= 5 {
                eprintln!("forged frame received: {:02x?}", &buf[..n.min(24)]);
            }
        }
    }
}

#[test]
fn rewritten_source_mac_never_leaves_the_uplink() {
    let net = Net::new();
    let vpmd = start_vpmd(&net.uplink);
    let sock = packet_socket(&net.ns, &net.peer).expect("packet socket in the namespace");
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let done = done.clone();
        std::thread::spawn(move || receive(sock, done))
    };
    let vm = HostileVm::start(&vpmd.socket("h")).expect("hostile frontend");

    // IN_FLIGHT TX buffers, each one descriptor: header + broadcast frame.
    let mut frame = vec![0u8; FRAME_LEN];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&GENUINE);
    frame[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    let tx = vm.tx_ring();
    let heads: Vec<u16> = (0..IN_FLIGHT).collect();
    let mut src_offsets = Vec::new();
    for &h in &heads {
        let (addr, len) = vm.tx_frame(u32::from(h), &frame);
        tx.set_desc(h, Desc::new(addr, len, 0, 0));
        src_offsets.push(addr + HDR_LEN as u64 + 6);
    }
    const { assert!(IN_FLIGHT <= QUEUE_SIZE) };

    // The second vCPU: its own file description of the guest's memfd (the guest
    // RAM is at guest-physical 0, so file offset = address), flipping every
    // buffer's source MAC to FORGED and back until told to stop.
    let memfd = OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/fd/{}", vm.mem.fd()))
        .expect("open the guest memfd again");
    let flipping = Arc::new(AtomicBool::new(true));
    let flipper = {
        let flipping = flipping.clone();
        let offsets = src_offsets.clone();
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while flipping.load(Ordering::Relaxed) {
                for &off in &offsets {
                    memfd.write_all_at(&FORGED, off).expect("flip");
                    memfd.write_all_at(&GENUINE, off).expect("flip back");
                    flips += 1;
                }
            }
            flips
        })
    };

    let sent = u64::from(ROUNDS) * u64::from(IN_FLIGHT);
    for round in 0..ROUNDS {
        let start = tx.avail_idx();
        tx.offer(&heads);
        let want = start.wrapping_add(IN_FLIGHT);
        assert!(
            tx.wait_used(want, Duration::from_secs(10)),
            "round {round}: vpmd did not return the TX chains; log:\n{}",
            vpmd.log()
        );
    }
    flipping.store(false, Ordering::Relaxed);
    let flips = flipper.join().expect("flipper");

    // Every frame is accounted for at the port before the receiver is stopped.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let s = vpmd.stats();
        if counter(&s, "h", "tx_packets") >= sent || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    done.store(true, Ordering::Release);
    let (genuine, forged) = receiver.join().expect("receiver");
    let spoofed = counter(&stats, "h", "drops.spoofed");
    let forwarded = counter(&stats, "h", "forwarded");
    eprintln!(
        "sent {sent}, flips {flips}: vpmd forwarded {forwarded}, spoofed {spoofed}; \
         namespace got {genuine} genuine, {forged} forged"
    );
    assert_eq!(forged, 0, "frames with a forged source left the uplink");
    assert_eq!(counter(&stats, "h", "tx_packets"), sent, "{stats}");
    assert_eq!(
        forwarded + spoofed,
        sent,
        "each frame forwarded or spoofed: {stats}"
    );
    assert!(
        genuine <= forwarded,
        "more received than forwarded: {stats}"
    );
    assert!(genuine > 0, "nothing reached the namespace: {stats}");
    drop(vm);
    drop(vpmd);
    drop(net);
}
