// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Raw vhost-user messages and a connection that sends them.
//!
//! Nothing here checks what it sends: a [`RawMsg`] is a 12-byte header (request,
//! flags, size), a body and fds, and the `size` field may disagree with the body on
//! purpose. [`Conn`] writes messages (fds with the first byte, as SCM_RIGHTS), reads
//! replies with a timeout and tells whether vpmd has closed the connection.
#![allow(unsafe_code)] // sendmsg with SCM_RIGHTS.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserHeaderFlag;

/// Header flag: protocol version 1 (the `vhost` crate names the version field's mask,
/// `VhostUserHeaderFlag::VERSION`, not the value).
pub const VERSION_1: u32 = 0x1;
/// Header flag: this is a reply.
pub const FLAG_REPLY: u32 = VhostUserHeaderFlag::REPLY.bits();
/// Header flag: the frontend wants an ack (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = VhostUserHeaderFlag::NEED_REPLY.bits();
/// Bit of a SET_VRING_KICK/CALL/ERR body: no fd attached (no name for it in `vhost`).
pub const VRING_NOFD: u64 = 0x100;

/// Frontend request codes as the `u32` on the wire, taken from the `vhost` crate's
/// [`FrontendReq`] (a raw message may carry any code, so the field stays a `u32`).
pub mod req {
    use vhost::vhost_user::message::FrontendReq;

    macro_rules! codes {
        ($($name:ident),+ $(,)?) => {
            $(
                #[doc = concat!("`", stringify!($name), "`.")]
                pub const $name: u32 = FrontendReq::$name as u32;
            )+
        };
    }

    codes!(
        GET_FEATURES,
        SET_FEATURES,
        SET_OWNER,
        RESET_OWNER,
        SET_MEM_TABLE,
        SET_LOG_BASE,
        SET_VRING_NUM,
        SET_VRING_ADDR,
        SET_VRING_BASE,
        GET_VRING_BASE,
        SET_VRING_KICK,
        SET_VRING_CALL,
        SET_VRING_ERR,
        GET_PROTOCOL_FEATURES,
        SET_PROTOCOL_FEATURES,
        GET_QUEUE_NUM,
        SET_VRING_ENABLE,
        SEND_RARP,
        GET_CONFIG,
        GET_MAX_MEM_SLOTS,
        ADD_MEM_REG,
        REM_MEM_REG,
    );
}

/// One message as bytes on the wire plus fds.
#[derive(Clone, Debug, Default)]
pub struct RawMsg {
    /// Request code.
    pub request: u32,
    /// Header flags.
    pub flags: u32,
    /// The header's size field; `None` means the body's real length.
    pub size: Option<u32>,
    /// Body bytes actually sent.
    pub body: Vec<u8>,
    /// Raw fds attached (borrowed: the caller keeps them open).
    pub fds: Vec<RawFd>,
}

impl RawMsg {
    /// A well-formed request with `body`.
    pub fn new(request: u32, body: Vec<u8>) -> RawMsg {
        RawMsg {
            request,
            flags: VERSION_1,
            size: None,
            body,
            fds: Vec::new(),
        }
    }

    /// The same message with fds attached.
    pub fn with_fds(mut self, fds: &[RawFd]) -> RawMsg {
        self.fds = fds.to_vec();
        self
    }

    /// The header and body as sent.
    pub fn bytes(&self) -> Vec<u8> {
        let size = self.size.unwrap_or(self.body.len() as u32);
        let mut out = Vec::with_capacity(12 + self.body.len());
        out.extend_from_slice(&self.request.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

/// Body builders for the messages the tests send (little-endian, as on x86).
pub mod body {
    /// A `u64` body (features, SET_VRING_KICK/CALL).
    pub fn u64(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    /// `struct vhost_vring_state`: index, num.
    pub fn vring_state(index: u32, num: u32) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&num.to_le_bytes());
        b
    }

    /// `struct vhost_vring_addr`: index, flags, desc, used, avail, log (frontend VAs).
    pub fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
        let mut b = index.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        for v in [desc, used, avail, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// One memory region: guest address, size, frontend VA, offset in the fd.
    #[derive(Clone, Copy, Debug)]
    pub struct Region {
        /// Guest-physical address.
        pub gpa: u64,
        /// Bytes.
        pub size: u64,
        /// Frontend virtual address (SET_VRING_ADDR speaks these).
        pub uaddr: u64,
        /// Offset of the region in its fd.
        pub offset: u64,
    }

    impl Region {
        fn push(&self, b: &mut Vec<u8>) {
            for v in [self.gpa, self.size, self.uaddr, self.offset] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
    }

    /// SET_MEM_TABLE: count, padding, regions (the count may lie).
    pub fn mem_table(count: u32, regions: &[Region]) -> Vec<u8> {
        let mut b = count.to_le_bytes().to_vec();
        b.extend_from_slice(&0u32.to_le_bytes());
        for r in regions {
            r.push(&mut b);
        }
        b
    }

    /// ADD_MEM_REG / REM_MEM_REG: padding, one region.
    pub fn single_region(r: &Region) -> Vec<u8> {
        let mut b = 0u64.to_le_bytes().to_vec();
        r.push(&mut b);
        b
    }
}

/// A reply from vpmd.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Request code it answers.
    pub request: u32,
    /// Its flags.
    pub flags: u32,
    /// Its body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as a u64 (feature replies, acks: 0 = success).
    pub fn u64(&self) -> Option<u64> {
        Some(u64::from_le_bytes(self.body.get(..8)?.try_into().ok()?))
    }
}

/// Why talking to vpmd failed.
#[derive(Debug, thiserror::Error)]
pub enum MsgError {
    /// The socket failed.
    #[error("socket")]
    Io(#[from] io::Error),
    /// vpmd closed the connection.
    #[error("vpmd closed the connection")]
    Closed,
    /// No reply within the timeout.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// vpmd acked the request with a failure.
    #[error("request {request} refused (ack {ack})")]
    Refused {
        /// Request code.
        request: u32,
        /// The ack's value.
        ack: u64,
    },
}

/// A frontend connection to one vpmd port.
pub struct Conn {
    sock: UnixStream,
    timeout: Duration,
}

impl Conn {
    /// Connects to `path`, retrying for up to 5 s while it is absent or refusing.
    pub fn connect(path: &Path) -> Result<Conn, MsgError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match UnixStream::connect(path) {
                Ok(sock) => {
                    return Ok(Conn {
                        sock,
                        timeout: Duration::from_secs(5),
                    })
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one message (fds with its first byte). A closed peer is [`MsgError::Closed`].
    pub fn send(&self, msg: &RawMsg) -> Result<(), MsgError> {
        let bytes = msg.bytes();
        let sent = if msg.fds.is_empty() {
            0
        } else {
            send_with_fds(&self.sock, &bytes, &msg.fds).map_err(closed)?
        };
        (&self.sock).write_all(&bytes[sent..]).map_err(closed)
    }

    /// Sends raw bytes, no fds (truncated or garbage messages).
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<(), MsgError> {
        (&self.sock).write_all(bytes).map_err(closed)
    }

    /// Reads one reply (header and body).
    pub fn recv(&self) -> Result<Reply, MsgError> {
        self.sock.set_read_timeout(Some(self.timeout))?;
        let mut hdr = [0u8; 12];
        self.read_exact(&mut hdr)?;
        let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        let mut body = vec![0u8; word(8).min(4096) as usize];
        self.read_exact(&mut body)?;
        Ok(Reply {
            request: word(0),
            flags: word(4),
            body,
        })
    }

    fn read_exact(&self, buf: &mut [u8]) -> Result<(), MsgError> {
        match (&self.sock).read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(MsgError::Closed),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(MsgError::Timeout(self.timeout))
            }
            Err(e) => Err(closed(e)),
        }
    }

    /// Sends `msg` with NEED_REPLY and waits for its ack (REPLY_ACK must be negotiated).
    pub fn request_ack(&self, mut msg: RawMsg) -> Result<(), MsgError> {
        msg.flags |= FLAG_NEED_REPLY;
        let request = msg.request;
        self.send(&msg)?;
        let reply = self.recv()?;
        match reply.u64() {
            Some(0) => Ok(()),
            ack => Err(MsgError::Refused {
                request,
                ack: ack.unwrap_or(u64::MAX),
            }),
        }
    }

    /// Sends a request that has a reply body and returns it.
    pub fn request_reply(&self, msg: RawMsg) -> Result<Reply, MsgError> {
        self.send(&msg)?;
        self.recv()
    }

    /// Waits up to `timeout` for vpmd to close the connection (reading and dropping
    /// whatever replies come first). True when it did.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            let _ = self.sock.set_read_timeout(Some(Duration::from_millis(50)));
            match (&self.sock).read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// The socket, for tests that need to do something odd with it.
    pub fn socket(&self) -> &UnixStream {
        &self.sock
    }
}

fn closed(e: io::Error) -> MsgError {
    match e.kind() {
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => MsgError::Closed,
        _ => MsgError::Io(e),
    }
}

/// sendmsg(2) of `data` with `fds` as SCM_RIGHTS; returns the bytes sent.
fn send_with_fds(sock: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let fd_bytes = size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cmsg_buf = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &raw mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cmsg_buf.as_mut_ptr().cast();
    mh.msg_controllen = space;
    // SAFETY: `mh` points at a control buffer of `space` bytes, enough for one
    // header carrying `fds.len()` descriptors (CMSG_SPACE), so CMSG_FIRSTHDR is
    // non-null and CMSG_DATA has room for `fd_bytes` bytes; `fds` is a live slice.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&raw const mh);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
    }
    // SAFETY: `mh` and everything it points at (iov, data, control buffer) are alive
    // for the call; sendmsg only reads them.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &raw const mh, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
