// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The relay: held-back enables, fds passed through, oversized messages.
use super::*;

const SET_FEATURES: u32 = FrontendReq::SET_FEATURES as u32;
const SET_PROTOCOL_FEATURES: u32 = FrontendReq::SET_PROTOCOL_FEATURES as u32;
const SET_VRING_ENABLE: u32 = FrontendReq::SET_VRING_ENABLE as u32;

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
    let ctx = RelayContext::detached(Arc::new(VirtioNetPort::new("t", [2, 0, 0, 0, 0, 1], 1500)));
    let relay = std::thread::spawn(move || run(front, back, &ctx));
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
    let ctx = RelayContext::detached(Arc::new(VirtioNetPort::new("t", [2, 0, 0, 0, 0, 1], 1500)));
    let relay = std::thread::spawn(move || run(front, back, &ctx));
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

/// Reads an eventfd's counter without blocking (None: zero).
#[allow(unsafe_code)]
fn eventfd_count(fd: std::os::fd::RawFd) -> Option<u64> {
    // SAFETY: F_GETFL/F_SETFL take no pointers; `fd` is open for the whole test.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut v = 0u64;
    // SAFETY: an 8-byte read into a live 8-byte buffer.
    let n = unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
    (n == 8).then_some(v)
}

#[test]
fn the_frontends_kick_fd_is_kept_for_sleeping_threads_and_the_library_gets_ours() {
    use vmm_sys_util::eventfd::EventFd;
    const SET_VRING_KICK: u32 = FrontendReq::SET_VRING_KICK as u32;
    let (front_peer, front) = UnixStream::pair().unwrap();
    let (back, back_peer) = UnixStream::pair().unwrap();
    let port = Arc::new(VirtioNetPort::new("t", [2, 0, 0, 0, 0, 1], 1500));
    let ctx = RelayContext::detached(port.clone());
    let relay = std::thread::spawn(move || run(front, back, &ctx));
    let theirs = EventFd::new(0).unwrap();
    let m = msg(SET_VRING_KICK, VERSION_1, &1u64.to_le_bytes());
    front_peer
        .send_with_fds(&[&m[..]], &[theirs.as_raw_fd()])
        .unwrap();
    let got = read_message(&back_peer).unwrap().unwrap();
    assert_eq!(got.fds.len(), 1);
    let kept = port.kick_fd(1).expect("queue 1's kick fd kept");
    // A kick by the frontend shows on the kept fd, not on the library's.
    theirs.write(5).unwrap();
    assert_eq!(
        eventfd_count(got.fds[0].as_raw_fd()),
        None,
        "the library gets vpmd's own eventfd"
    );
    assert_eq!(
        eventfd_count(kept.as_raw_fd()),
        Some(5),
        "the frontend's, kept"
    );
    assert!(port.kick_fd(0).is_none());
    // VRING_NOFD: polled only, nothing kept.
    let m = msg(SET_VRING_KICK, VERSION_1, &(1u64 | 0x100).to_le_bytes());
    (&front_peer).write_all(&m).unwrap();
    let _ = read_message(&back_peer).unwrap().unwrap();
    assert!(port.kick_fd(1).is_none(), "NOFD lets go of the old one");
    drop(front_peer);
    let _ = relay.join().unwrap();
}
