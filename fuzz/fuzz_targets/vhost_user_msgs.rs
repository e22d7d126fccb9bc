// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Fuzz target: a frontend that sends anything over a port's vhost-user socket.
//!
//! The input is a list of chunks; each is written to the socket as is, optionally
//! with fds attached (a memfd whose size and bytes come from the input, an eventfd,
//! a pipe, /dev/null). vpmd's side is exactly what a port's connection thread runs
//! (`connection::serve_one`): the relay with its fd checks, a fresh
//! vhost-user-backend daemon, vpmd's device. After the chunks, a GET_FEATURES is
//! the sync point; if the rings the messages set up were published, one TX and one
//! RX burst run on them (whatever memory and addresses the messages named). Then the
//! socket closes and the connection must wind down. Crashes, panics (libFuzzer
//! aborts on any), SIGBUS from a bad mapping and hangs are the findings.
//!
//! A frontend that takes its memory away: a chunk of kind [`TRUNCATE`] sends
//! nothing; it shrinks every memfd sent so far to `len & 0x7fff` bytes (rounded
//! down to a page) right there in the message stream, or, with bit 15 of `len`,
//! from a second thread while the bursts run. The memfds are created without
//! MFD_ALLOW_SEALING, so vpmd cannot seal them against shrinking: the bursts then
//! touch pages that are gone, and vpmd's SIGBUS guard (`fault_guard`) must keep the
//! process alive (the connection is then closed). [`TRUNCATION`] switches this off.
#![no_main]
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vpmd_backend::connection::serve_one;
use vpmd_backend::net::{self, RxScratch};
use vpmd_backend::port::{RingCache, VirtioNetPort, RX_QUEUE, TX_QUEUE};
use vpmd_backend::seglist::SegList;

/// The chunk kind that truncates the memfds sent so far instead of sending bytes.
const TRUNCATE: u8 = 0xff;
/// Whether [`TRUNCATE`] chunks truncate. vpmd survives guest memory that goes away
/// (backend `fault_guard`); turning this off (the chunk is then an ordinary one)
/// tells a SIGBUS finding from any other when bisecting.
const TRUNCATION: bool = true;

fn port() -> &'static Arc<VirtioNetPort> {
    static P: OnceLock<Arc<VirtioNetPort>> = OnceLock::new();
    P.get_or_init(|| Arc::new(VirtioNetPort::new("fuzz", [0x52, 0x54, 0, 0, 0, 1], 1500)))
}

fn owned(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: a fresh fd from the call that returned it, owned by nothing else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The fd a chunk's kind byte asks for (`kind % 5`: none, memfd of `kind / 5 % 17`
/// pages filled from `extra`, eventfd, pipe, /dev/null).
fn make_fd(kind: u8, extra: &[u8]) -> Option<OwnedFd> {
    match kind % 5 {
        1 => {
            // No MFD_ALLOW_SEALING: vpmd cannot seal this file, so a TRUNCATE chunk
            // can take its pages away under a mapping.
            // SAFETY: valid C string and flags.
            let fd = owned(unsafe { libc::memfd_create(c"fuzz".as_ptr(), libc::MFD_CLOEXEC) })?;
            let pages = usize::from(kind / 5 % 17);
            let mut f = std::fs::File::from(fd);
            f.set_len((pages * 4096) as u64).ok()?;
            let n = extra.len().min(pages * 4096);
            f.write_all(&extra[..n]).ok()?;
            Some(OwnedFd::from(f))
        }
        // SAFETY: eventfd takes no pointers.
        2 => owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }),
        3 => {
            let mut p = [0; 2];
            // SAFETY: `p` has room for two fds.
            if unsafe { libc::pipe(p.as_mut_ptr()) } != 0 {
                return None;
            }
            drop(owned(p[0]));
            owned(p[1])
        }
        4 => std::fs::File::open("/dev/null").ok().map(OwnedFd::from),
        _ => None,
    }
}

fn send(sock: &UnixStream, bytes: &[u8], fd: Option<&OwnedFd>) -> bool {
    let Some(fd) = fd else {
        return (&*sock).write_all(bytes).is_ok();
    };
    let raw = [fd.as_raw_fd()];
    let mut cmsg = [0u64; 4];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid empty value.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cmsg.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes a size.
    mh.msg_controllen = unsafe { libc::CMSG_SPACE(4) } as usize;
    // SAFETY: the control buffer (32 bytes) holds one header with one fd.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), 4);
    }
    // SAFETY: everything `mh` points at lives across the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &mh, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return false;
    }
    (&*sock).write_all(&bytes[n as usize..]).is_ok()
}

/// Reads replies until the GET_FEATURES reply (request 1) or the end.
fn wait_sync(sock: &UnixStream) -> bool {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    loop {
        let mut hdr = [0u8; 12];
        if (&*sock).read_exact(&mut hdr).is_err() {
            return false;
        }
        let size = u32::from_le_bytes(hdr[8..12].try_into().unwrap()).min(4096) as usize;
        let mut body = vec![0u8; size];
        if (&*sock).read_exact(&mut body).is_err() {
            return false;
        }
        if u32::from_le_bytes(hdr[0..4].try_into().unwrap()) == 1 {
            return true;
        }
    }
}

/// Shrinks every memfd in `memfds` to `len`, rounded down to a page.
fn truncate(memfds: &[RawFd], len: u16) {
    let size = libc::off_t::from(len & 0x7fff) & !4095;
    for &fd in memfds {
        // SAFETY: `fd` is a memfd this input owns (kept open in `fds` until the end);
        // ftruncate takes no pointers. Failure leaves the file as it was.
        unsafe { libc::ftruncate(fd, size) };
    }
}

/// One TX and one RX burst on whatever rings the messages published.
fn burst() {
    let mut cache = RingCache::default();
    let mut frame = SegList::default();
    if let Some(view) = cache.rings(port()) {
        let layout = view.layout();
        if let Ok(Some(mut q)) = view.queue(TX_QUEUE) {
            for _ in 0..32 {
                let Some(head) = q.pop() else { break };
                let _ = net::take_tx_frame(&q, head, layout, &mut frame);
                q.push_used(head, 0);
            }
        }
    }
    let mut src = vec![0x11u8; 300];
    frame.clear();
    // SAFETY: `frame` is used only in this function, while `src` lives and is not
    // touched otherwise.
    frame.push(unsafe { vpmd_backend::guest_mem::HostBuf::from_slice(&mut src) });
    let mut scratch = RxScratch::new();
    if let Some(view) = cache.rings(port()) {
        let layout = view.layout();
        if let Ok(Some(mut q)) = view.queue(RX_QUEUE) {
            let _ = net::deliver_rx_frame(&mut q, layout, &frame, 300, &mut scratch);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return;
    };
    let server = std::thread::spawn(move || serve_one(port().clone(), theirs));
    let _ = ours.set_write_timeout(Some(Duration::from_millis(50)));
    let mut rest = data;
    // Chunk: [fd kind][len lo][len hi][len bytes]; a memfd's bytes are what follows.
    let mut fds = Vec::new();
    let mut memfds = Vec::new();
    // A truncation to run from a second thread during the bursts: (memfds, length).
    let mut racing: Option<(Vec<RawFd>, u16)> = None;
    while rest.len() >= 3 {
        let kind = rest[0];
        let raw_len = u16::from_le_bytes([rest[1], rest[2]]);
        if TRUNCATION && kind == TRUNCATE {
            rest = &rest[3..];
            if raw_len & 0x8000 != 0 {
                racing = Some((memfds.clone(), raw_len));
            } else {
                truncate(&memfds, raw_len);
            }
            continue;
        }
        let len = usize::from(raw_len).min(rest.len() - 3);
        let bytes = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let fd = make_fd(kind, rest);
        if !send(&ours, bytes, fd.as_ref()) {
            break;
        }
        if kind % 5 == 1 {
            memfds.extend(fd.as_ref().map(AsRawFd::as_raw_fd));
        }
        fds.extend(fd);
    }
    let sync = [1u8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]; // GET_FEATURES
    if (&ours).write_all(&sync).is_ok() && wait_sync(&ours) {
        std::thread::scope(|scope| {
            if let Some((memfds, len)) = &racing {
                scope.spawn(move || truncate(memfds, *len));
            }
            burst();
        });
    }
    let _ = ours.shutdown(std::net::Shutdown::Both);
    server.join().expect("connection thread panicked");
    drop(fds);
});
