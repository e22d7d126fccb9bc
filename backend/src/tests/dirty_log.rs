// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The dirty log: its bitmap layout against the vhost-user spec (one bit per 4 KiB
//! page, page n is bit n % 8 of byte n / 8, i.e. bit n % 64 of LE u64 word n / 64),
//! its bounds, a hostile log fd, and what a burst marks: the RX buffer bytes a used
//! entry covers and the used ring, nothing else, and nothing while logging is off.
#![allow(unsafe_code)] // memfds, ftruncate, HostBuf views of test-owned frames.

use std::os::fd::{FromRawFd, OwnedFd};

use super::harness::*;
use crate::dirty_log::{DirtyLog, LogError, LogRegion, LOG_PAGE};
use crate::guest_mem::HostBuf;
use crate::net::{deliver_rx_frame, RxScratch};
use crate::port::Notifier;
use crate::seglist::SegList;
use crate::virtqueue::QueueCache;

fn memfd(len: i64) -> OwnedFd {
    // SAFETY: a fresh memfd; the name is a NUL-terminated literal.
    let fd = unsafe { libc::memfd_create(c"vpmd-test-log".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: `fd` is ours and open.
    assert_eq!(unsafe { libc::ftruncate(fd, len) }, 0);
    // SAFETY: a fresh fd nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads the log back through the fd (the frontend's view), as bytes.
fn log_bytes(fd: &OwnedFd, len: usize) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut out = vec![0u8; len];
    // SAFETY: `out` is valid for `len` bytes; pread on an open fd.
    let n = unsafe { libc::pread(fd.as_raw_fd(), out.as_mut_ptr().cast(), len, 0) };
    assert_eq!(n, len as isize);
    out
}

/// The pages set in `log`.
fn pages(log: &[u8]) -> Vec<u64> {
    (0..log.len() as u64 * 8)
        .filter(|p| log[(p / 8) as usize] & (1 << (p % 8)) != 0)
        .collect()
}

#[test]
fn a_page_is_one_bit_in_spec_order() {
    let fd = memfd(4096);
    let log = LogRegion::map(&fd, 4096, 0).unwrap();
    assert_eq!(log.mark(0, 1), 0);
    assert_eq!(log.mark(9 * LOG_PAGE + 100, 1), 0);
    // Two bytes straddling pages 7 and 8: both marked.
    assert_eq!(log.mark(8 * LOG_PAGE - 1, 2), 0);
    // Page 63: the top bit of the first little-endian u64 word.
    assert_eq!(log.mark(63 * LOG_PAGE, LOG_PAGE), 0);
    let bytes = log_bytes(&fd, 4096);
    assert_eq!(bytes[0], 0b1000_0001, "pages 0 and 7");
    assert_eq!(bytes[1], 0b0000_0011, "pages 8 and 9");
    let word = u64::from_le_bytes(bytes[0..8].try_into().unwrap());
    assert_eq!(word, 1 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 63);
    assert_eq!(pages(&bytes), [0, 7, 8, 9, 63]);
    assert_eq!(log.mark(0, 0), 0, "nothing written, nothing marked");
    assert_eq!(pages(&log_bytes(&fd, 4096)), [0, 7, 8, 9, 63]);
}

#[test]
fn pages_past_the_log_are_counted_not_written() {
    // A 4 KiB file, of which the frontend says the log is 2 bytes: pages 0..16.
    let fd = memfd(4096);
    let log = LogRegion::map(&fd, 2, 0).unwrap();
    assert_eq!(
        log.mark(15 * LOG_PAGE, 3 * LOG_PAGE),
        2,
        "pages 16 and 17 outside"
    );
    assert_eq!(
        log.mark(u64::MAX - 10, 100),
        1,
        "the top of the address space"
    );
    let bytes = log_bytes(&fd, 4096);
    assert_eq!(pages(&bytes), [15], "nothing past the log's 2 bytes");
}

#[test]
fn bad_log_parameters_are_refused() {
    let fd = memfd(8192);
    assert!(matches!(LogRegion::map(&fd, 0, 0), Err(LogError::Size(0))));
    assert!(matches!(
        LogRegion::map(&fd, 1 << 40, 0),
        Err(LogError::Size(_))
    ));
    assert!(matches!(
        LogRegion::map(&fd, 4096, 100),
        Err(LogError::Offset(100))
    ));
    assert!(matches!(
        LogRegion::map(&fd, 4096, !4095),
        Err(LogError::Offset(_))
    ));
    let log = LogRegion::map(&fd, 4096, 4096).unwrap();
    log.mark(0, 1);
    assert_eq!(
        log_bytes(&fd, 8192)[4096],
        1,
        "the log starts at its offset"
    );
}

#[test]
fn a_log_fd_that_is_too_short_or_not_shared_memory_is_refused() {
    use crate::fd_check::check_message_fds;
    use vhost::vhost_user::message::FrontendReq;
    let body = |size: u64, offset: u64| {
        let mut b = size.to_le_bytes().to_vec();
        b.extend_from_slice(&offset.to_le_bytes());
        b
    };
    let req = FrontendReq::SET_LOG_BASE as u32;
    assert!(check_message_fds(req, &body(4096, 0), &[memfd(4096)]).is_ok());
    assert!(
        check_message_fds(req, &body(8192, 0), &[memfd(4096)]).is_err(),
        "a log past the end of its file"
    );
    assert!(check_message_fds(req, &body(4096, 4096), &[memfd(4096)]).is_err());
    let mut pipe = [0; 2];
    // SAFETY: `pipe` has room for the two fds.
    assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
    // SAFETY: fresh fds nothing else owns.
    let (r, _w) = unsafe { (OwnedFd::from_raw_fd(pipe[0]), OwnedFd::from_raw_fd(pipe[1])) };
    assert!(
        check_message_fds(req, &body(4096, 0), &[r]).is_err(),
        "a pipe is no log"
    );
}

#[test]
fn a_log_truncated_under_vpmd_faults_harmlessly_and_is_reported() {
    use std::os::fd::AsRawFd;
    crate::fault_guard::install().unwrap();
    let fd = memfd(8192);
    let log = LogRegion::map(&fd, 8192, 0).unwrap();
    log.mark(0, 1);
    assert!(!log.faulted());
    // SAFETY: our own fd.
    assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }, 0);
    // Would be SIGBUS: the guard replaces the mapping and the mark lands nowhere.
    log.mark(LOG_PAGE * 8 * 4096 + 1, 1);
    assert!(
        log.faulted(),
        "the fault is reported for the relay to close on"
    );
}

#[test]
fn logging_is_on_only_with_a_log_and_log_all() {
    let log = DirtyLog::new();
    assert!(log.current().is_none());
    log.set_log_all(true);
    assert!(log.current().is_none(), "LOG_ALL without a log");
    let fd = memfd(4096);
    log.set_region(LogRegion::map(&fd, 4096, 0).unwrap());
    assert!(log.is_on());
    log.current().unwrap().mark(LOG_PAGE, 1);
    log.set_log_all(false);
    assert!(log.current().is_none());
    // A new log replaces the old one; turning LOG_ALL on again uses the new one.
    let fd2 = memfd(4096);
    log.set_region(LogRegion::map(&fd2, 4096, 0).unwrap());
    log.set_log_all(true);
    log.current().unwrap().mark(2 * LOG_PAGE, 1);
    assert_eq!(pages(&log_bytes(&fd, 16)), [1]);
    assert_eq!(pages(&log_bytes(&fd2, 16)), [2]);
}

/// One burst on `rx` with `log`, delivering `frame`.
fn deliver_logged(rx: &Ring, log: &'static DirtyLog, g: &Guest, frame: &[u8]) {
    let cache: &'static mut QueueCache = Box::leak(Box::default());
    cache.map(&g.atomic);
    let notifier = Notifier {
        log,
        ..Notifier::detached()
    };
    let mut q = cache.open(&rx.vring, 0, notifier).unwrap().unwrap();
    let mut bytes = frame.to_vec();
    let mut seg = SegList::default();
    // SAFETY: `seg` is used only in this function, while `bytes` lives untouched.
    assert!(seg.push(unsafe { HostBuf::from_slice(&mut bytes) }));
    deliver_rx_frame(
        &mut q,
        v1(true),
        &seg,
        frame.len() as u32,
        &mut RxScratch::new(),
    )
    .unwrap();
}

#[test]
fn a_burst_marks_the_buffers_it_filled_and_the_used_ring() {
    let g = Guest::new();
    let mut rx = g.ring(RING_A, 16);
    // Eight 4 KiB buffers; a 9000-byte frame fills three of them (MRG_RXBUF),
    // the third one partly.
    let bufs = rx.add_rx_buffers(8, 4096);
    let log: &'static DirtyLog = Box::leak(Box::default());
    let fd = memfd(4096);
    log.set_region(LogRegion::map(&fd, 4096, 0).unwrap());

    // Logging off (no LOG_ALL): nothing marked.
    deliver_logged(&rx, log, &g, &pattern(100, 1));
    assert!(pages(&log_bytes(&fd, 4096)).is_empty());

    log.set_log_all(true);
    deliver_logged(&rx, log, &g, &pattern(9000, 2));
    let mut want: Vec<u64> = bufs[1..4]
        .iter()
        .flat_map(|&(_, gpa)| {
            let first = gpa / LOG_PAGE;
            let last = (gpa + 4095) / LOG_PAGE;
            first..=last
        })
        .collect();
    // The used ring's pages (flags .. avail_event).
    want.extend(rx.used_addr / LOG_PAGE..=(rx.used_addr + 6 + 8 * 16 - 1) / LOG_PAGE);
    want.sort_unstable();
    want.dedup();
    // The third buffer holds only the frame's last bytes: 9012 - 2 * 4096 = 820
    // bytes, so a buffer page past them is not marked.
    let third = bufs[3].1;
    let untouched: Vec<u64> =
        ((third + 820).div_ceil(LOG_PAGE)..=(third + 4095) / LOG_PAGE).collect();
    want.retain(|p| !untouched.contains(p));
    assert_eq!(pages(&log_bytes(&fd, 4096)), want);
    // The first buffer (filled while logging was off) and the unused ones: not marked.
    let got = pages(&log_bytes(&fd, 4096));
    for &(_, gpa) in bufs[0..1].iter().chain(&bufs[4..]) {
        assert!(
            !got.contains(&(gpa / LOG_PAGE)) || rx.used_addr / LOG_PAGE == gpa / LOG_PAGE,
            "buffer at {gpa:#x} marked"
        );
    }
}
