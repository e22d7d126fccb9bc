//! A message-aware relay between a vhost-user frontend and vhost-user-backend.
//!
//! Why it exists: QEMU's virtio-net sends `SET_VRING_ENABLE` as soon as the guest
//! driver writes its feature bits (`peer_attach`), before it sends `SET_FEATURES`:
//! QEMU treats `VHOST_USER_F_PROTOCOL_FEATURES` as negotiated once the backend
//! offers it. The `vhost` crate's request parser answers that message with an
//! error that ends the connection, so no QEMU guest could ever use a port.
//!
//! The relay reads each frontend message whole (header, body and attached fds) and
//! passes it on unchanged, with one exception: a `SET_VRING_ENABLE` that arrives
//! before a `SET_FEATURES` carrying `PROTOCOL_FEATURES` is held back (and acked if
//! the frontend asked for an ack), then replayed right after that `SET_FEATURES`.
//! (QEMU also re-sends the enable after `SET_FEATURES`; replaying keeps frontends
//! that do not re-send working.) Replies flow back byte for byte. Messages larger
//! than the protocol allows, or with more fds than it allows, end the connection
//! before the library sees them.
//!
//! Only control messages pass here; frames never do.
#![allow(unsafe_code)] // recvmsg with SCM_RIGHTS, poll(2).

use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use vhost::vhost_user::message::{VhostUserVirtioFeatures, MAX_ATTACHED_FD_ENTRIES, MAX_MSG_SIZE};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

const HEADER_LEN: usize = 12;
const SET_FEATURES: u32 = 2;
const SET_PROTOCOL_FEATURES: u32 = 16;
const SET_VRING_ENABLE: u32 = 18;
const VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const REPLY_ACK: u64 = 1 << 3;
/// Most queues a held-back enable is remembered for (vhost-user's index limit).
const MAX_QUEUES: usize = 256;

/// Why the relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from or writing to a socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// Receiving a message's fds failed.
    #[error("receiving fds: {0}")]
    Fds(#[source] vmm_sys_util::errno::Error),
    /// A message carries an fd vpmd refuses to use.
    #[error("message {request}: {source}")]
    BadFd {
        /// Request code.
        request: u32,
        /// What is wrong with the fd.
        #[source]
        source: crate::fd_check::FdError,
    },
    /// A message header names a body larger than the protocol allows.
    #[error("message {request} claims a {size}-byte body (limit {MAX_MSG_SIZE})")]
    Oversized {
        /// Request code.
        request: u32,
        /// Claimed size.
        size: u32,
    },
}

/// One frontend message.
struct Message {
    header: [u8; HEADER_LEN],
    body: Vec<u8>,
    fds: Vec<OwnedFd>,
}

impl Message {
    fn request(&self) -> u32 {
        u32::from_le_bytes(self.header[0..4].try_into().unwrap())
    }

    fn flags(&self) -> u32 {
        u32::from_le_bytes(self.header[4..8].try_into().unwrap())
    }

    fn body_u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.get(0..8)?.try_into().ok()?))
    }

    /// `struct vhost_vring_state`: index, num.
    fn body_vring_state(&self) -> Option<(u32, u32)> {
        let index = u32::from_le_bytes(self.body.get(0..4)?.try_into().ok()?);
        let num = u32::from_le_bytes(self.body.get(4..8)?.try_into().ok()?);
        Some((index, num))
    }

    fn vring_enable(index: u32, num: u32) -> Message {
        let mut body = Vec::with_capacity(8);
        body.extend_from_slice(&index.to_le_bytes());
        body.extend_from_slice(&num.to_le_bytes());
        Message {
            header: header(SET_VRING_ENABLE, VERSION_1, 8),
            body,
            fds: Vec::new(),
        }
    }
}

fn header(request: u32, flags: u32, size: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

/// What the relay knows of the negotiation so far.
#[derive(Default)]
struct Negotiation {
    /// A SET_FEATURES acking PROTOCOL_FEATURES has been passed on.
    protocol_acked: bool,
    /// The frontend negotiated REPLY_ACK.
    reply_ack: bool,
    /// Enables held back until SET_FEATURES: (index, num), last one per index wins.
    held: Vec<(u32, u32)>,
}

/// Reads one whole message; `None` at a clean end of stream.
fn read_message(sock: &UnixStream) -> Result<Option<Message>, RelayError> {
    let mut header = [0u8; HEADER_LEN];
    let mut raw_fds = [-1 as RawFd; MAX_ATTACHED_FD_ENTRIES];
    let mut bufs = [IoSliceMut::new(&mut header)];
    // SAFETY: the iovec points at `header`, which is valid for writes of its length
    // and borrowed mutably for the call; any bytes may be written into it.
    let (n, nfds) = unsafe { sock.recv_with_fds(as_iovecs(&mut bufs), &mut raw_fds) }
        .map_err(RelayError::Fds)?;
    let fds: Vec<OwnedFd> = raw_fds[..nfds]
        .iter()
        .map(|&fd| {
            // SAFETY: recv_with_fds returned `nfds` fresh descriptors nothing else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect();
    if n == 0 {
        return Ok(None);
    }
    if n < HEADER_LEN {
        (&*sock).read_exact(&mut header[n..])?;
    }
    let size = u32::from_le_bytes(header[8..12].try_into().unwrap());
    if size as usize > MAX_MSG_SIZE {
        return Err(RelayError::Oversized {
            request: u32::from_le_bytes(header[0..4].try_into().unwrap()),
            size,
        });
    }
    let mut body = vec![0u8; size as usize];
    (&*sock).read_exact(&mut body)?;
    Ok(Some(Message { header, body, fds }))
}

/// `IoSliceMut` is ABI-compatible with `iovec` on Unix.
fn as_iovecs<'a>(bufs: &'a mut [IoSliceMut<'_>]) -> &'a mut [libc::iovec] {
    // SAFETY: std documents IoSliceMut as ABI-compatible with `struct iovec` on
    // Unix (repr(transparent) over it); the length and borrow are carried over.
    unsafe { std::slice::from_raw_parts_mut(bufs.as_mut_ptr().cast(), bufs.len()) }
}

/// Sends a message whole, its fds with the first byte.
fn write_message(sock: &UnixStream, msg: &Message) -> Result<(), RelayError> {
    let mut data = Vec::with_capacity(HEADER_LEN + msg.body.len());
    data.extend_from_slice(&msg.header);
    data.extend_from_slice(&msg.body);
    let fds: Vec<RawFd> = msg.fds.iter().map(|f| f.as_raw_fd()).collect();
    let sent = if fds.is_empty() {
        0
    } else {
        sock.send_with_fds(&[&data[..]], &fds)
            .map_err(|e| RelayError::Io(io::Error::from_raw_os_error(e.errno())))?
    };
    (&*sock).write_all(&data[sent..])?;
    Ok(())
}

/// Handles one frontend message: forward it, or hold it back and maybe ack it.
fn relay_one(
    msg: Message,
    st: &mut Negotiation,
    frontend: &UnixStream,
    backend: &UnixStream,
) -> Result<(), RelayError> {
    crate::fd_check::check_message_fds(msg.request(), &msg.body, &msg.fds).map_err(|source| {
        RelayError::BadFd {
            request: msg.request(),
            source,
        }
    })?;
    match msg.request() {
        SET_PROTOCOL_FEATURES => {
            st.reply_ack = msg.body_u64().is_some_and(|f| f & REPLY_ACK != 0);
        }
        SET_VRING_ENABLE if !st.protocol_acked => {
            if let Some((index, num)) = msg.body_vring_state() {
                if (index as usize) < MAX_QUEUES {
                    st.held.retain(|&(i, _)| i != index);
                    st.held.push((index, num));
                }
                if st.reply_ack && msg.flags() & FLAG_NEED_REPLY != 0 {
                    let mut ack = header(SET_VRING_ENABLE, VERSION_1 | FLAG_REPLY, 8).to_vec();
                    ack.extend_from_slice(&0u64.to_le_bytes());
                    (&*frontend).write_all(&ack)?;
                }
                log::debug!("relay: SET_VRING_ENABLE {index}={num} before SET_FEATURES: held");
                return Ok(());
            }
        }
        SET_FEATURES => {
            let acked = msg.body_u64().unwrap_or(0);
            write_message(backend, &msg)?;
            if acked & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                st.protocol_acked = true;
                for (index, num) in std::mem::take(&mut st.held) {
                    write_message(backend, &Message::vring_enable(index, num))?;
                }
            } else {
                // Without protocol features the backend enables every ring itself.
                st.held.clear();
            }
            return Ok(());
        }
        _ => {}
    }
    write_message(backend, &msg)
}

/// Relays between `frontend` and `backend` until either side closes; then shuts
/// both down, so the other side's reader ends too. Returns why it stopped (the
/// caller logs it, rate-limited: a frontend can reconnect and fail in a loop).
pub fn run(frontend: UnixStream, backend: UnixStream) -> Result<(), RelayError> {
    let result = pump(&frontend, &backend);
    let _ = frontend.shutdown(std::net::Shutdown::Both);
    let _ = backend.shutdown(std::net::Shutdown::Both);
    result
}

fn pump(frontend: &UnixStream, backend: &UnixStream) -> Result<(), RelayError> {
    let mut st = Negotiation::default();
    let mut buf = vec![0u8; MAX_MSG_SIZE + HEADER_LEN];
    let mut pfds = [
        libc::pollfd {
            fd: frontend.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: backend.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `pfds` is a valid array of two pollfds for the duration of the call.
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        if pfds[0].revents != 0 {
            match read_message(frontend)? {
                Some(msg) => relay_one(msg, &mut st, frontend, backend)?,
                None => return Ok(()),
            }
        }
        if pfds[1].revents != 0 {
            // Replies (no fds: nothing vpmd offers sends fds back) pass through as bytes.
            let n = (&*backend).read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            (&*frontend).write_all(&buf[..n])?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut m = header(request, flags, body.len() as u32).to_vec();
        m.extend_from_slice(body);
        m
    }

    fn vring_state(index: u32, num: u32) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&num.to_le_bytes());
        b
    }

    fn read_all_messages(sock: &UnixStream) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        while let Ok(Some(m)) = read_message(sock) {
            out.push((m.request(), m.body));
        }
        out
    }

    #[test]
    fn early_enable_is_held_acked_and_replayed_after_set_features() {
        let (front_peer, front) = UnixStream::pair().unwrap();
        let (back, back_peer) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || run(front, back));
        let mut fp = &front_peer;
        fp.write_all(&msg(
            SET_PROTOCOL_FEATURES,
            VERSION_1,
            &REPLY_ACK.to_le_bytes(),
        ))
        .unwrap();
        fp.write_all(&msg(
            SET_VRING_ENABLE,
            VERSION_1 | FLAG_NEED_REPLY,
            &vring_state(0, 1),
        ))
        .unwrap();
        // The relay acks the held enable itself.
        let mut ack = [0u8; HEADER_LEN + 8];
        (&front_peer).read_exact(&mut ack).unwrap();
        assert_eq!(
            u32::from_le_bytes(ack[0..4].try_into().unwrap()),
            SET_VRING_ENABLE
        );
        assert_eq!(&ack[HEADER_LEN..], &0u64.to_le_bytes());
        let features = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        fp.write_all(&msg(SET_FEATURES, VERSION_1, &features.to_le_bytes()))
            .unwrap();
        fp.write_all(&msg(SET_VRING_ENABLE, VERSION_1, &vring_state(1, 1)))
            .unwrap();
        front_peer.shutdown(std::net::Shutdown::Write).unwrap();
        let got = read_all_messages(&back_peer);
        relay.join().unwrap().unwrap();
        let requests: Vec<u32> = got.iter().map(|m| m.0).collect();
        assert_eq!(
            requests,
            [
                SET_PROTOCOL_FEATURES,
                SET_FEATURES,
                SET_VRING_ENABLE,
                SET_VRING_ENABLE
            ]
        );
        assert_eq!(got[2].1, vring_state(0, 1), "the held enable, replayed");
        assert_eq!(got[3].1, vring_state(1, 1), "the later one, passed through");
    }

    #[test]
    fn fds_pass_through_and_oversized_messages_end_the_relay() {
        let (front_peer, front) = UnixStream::pair().unwrap();
        let (back, back_peer) = UnixStream::pair().unwrap();
        let relay = std::thread::spawn(move || run(front, back));
        let file = std::fs::File::open("/dev/null").unwrap();
        let m = msg(SET_FEATURES + 100, VERSION_1, &[1, 2, 3, 4]);
        front_peer
            .send_with_fds(&[&m[..]], &[file.as_raw_fd()])
            .unwrap();
        let got = read_message(&back_peer).unwrap().unwrap();
        assert_eq!(got.body, [1, 2, 3, 4]);
        assert_eq!(got.fds.len(), 1);
        (&front_peer)
            .write_all(&header(SET_FEATURES, VERSION_1, (MAX_MSG_SIZE + 1) as u32))
            .unwrap();
        assert!(matches!(
            relay.join().unwrap(),
            Err(RelayError::Oversized { .. })
        ));
        assert!(
            read_message(&back_peer).unwrap().is_none(),
            "backend side closed"
        );
    }
}
