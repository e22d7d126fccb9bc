// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Checks of the file descriptors a frontend sends, before vhost-user-backend uses them.
//!
//! The library maps whatever a memory region names and writes to whatever fd a
//! SET_VRING_CALL attaches. A hostile frontend turns both into crashes or stalls:
//! - a region longer than its file (or a file shrunk later) maps fine, and the
//!   first access past the end raises SIGBUS. Regions must be regular files on
//!   tmpfs (memfds live there too) or hugetlbfs, holding the whole region. A file
//!   on any other filesystem (ext4, FUSE, NFS, ...) is refused: a page fault there
//!   can wait on a disk, a daemon or a network, with the polling thread stuck in
//!   it. vpmd first seals the file against shrinking where the kernel allows it
//!   (memfds created with MFD_ALLOW_SEALING; QEMU's memfd backend has sealed it
//!   already) and only then checks its size, so the size cannot change between the
//!   check and the seal. Files that cannot be sealed (hugetlbfs, tmpfs files,
//!   memfds without sealing) are covered by [`crate::fault_guard`].
//! - a call fd that is a pipe, a socket or an eventfd near its maximum count makes
//!   the interrupt write block, and with it the polling thread and every port it
//!   serves. Kick, call and error fds must be eventfds, and are made non-blocking.
#![allow(unsafe_code)] // fstat(2) and fcntl(2) on fds the frontend sent.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use vhost::vhost_user::message::FrontendReq;

/// `statfs.f_type` of tmpfs (and of memfds).
const TMPFS_MAGIC: libc::__fsword_t = 0x0102_1994;
/// `statfs.f_type` of hugetlbfs.
const HUGETLBFS_MAGIC: libc::__fsword_t = 0x9584_58f6;
/// SET_VRING_KICK/CALL/ERR body bit: no fd attached (the `vhost` crate has no name
/// for it).
pub(crate) const VRING_NOFD: u64 = 0x100;
/// Size of one `VhostUserMemoryRegion`.
const REGION_LEN: usize = 32;

/// An fd a frontend sent that vpmd refuses to use.
#[derive(Debug, thiserror::Error)]
pub enum FdError {
    /// A memory region's fd is not a regular file.
    #[error("memory region {index}: fd is not a regular file (mode {mode:#o})")]
    NotAFile {
        /// Region index in the message.
        index: usize,
        /// `st_mode`.
        mode: u32,
    },
    /// A memory region's file is on a filesystem vpmd does not map guest memory from.
    #[error("memory region {index}: {path} is on a filesystem of type {fs_type:#x}, not tmpfs, a memfd or hugetlbfs (page faults there can stall)")]
    Filesystem {
        /// Region index in the message.
        index: usize,
        /// The file, as /proc names it, escaped.
        path: String,
        /// `statfs.f_type`.
        fs_type: libc::__fsword_t,
    },
    /// A memory region reaches past the end of its file.
    #[error("memory region {index}: offset {offset:#x} + size {size:#x} is past the file's end ({file_len:#x})")]
    PastEof {
        /// Region index in the message.
        index: usize,
        /// `mmap_offset`.
        offset: u64,
        /// `memory_size`.
        size: u64,
        /// The file's length.
        file_len: u64,
    },
    /// A kick, call or error fd that is not an eventfd.
    #[error("vring fd is not an eventfd ({0})")]
    NotEventFd(String),
    /// fstat or fcntl failed on an fd.
    #[error("checking an fd")]
    Sys(#[source] io::Error),
}

/// Checks (and where needed adjusts) the fds of one frontend message with code
/// `request` and body `body`. Messages whose fds vpmd does not use, or whose fd
/// count is wrong (the library refuses those), pass unchanged.
pub fn check_message_fds(request: u32, body: &[u8], fds: &[OwnedFd]) -> Result<(), FdError> {
    match FrontendReq::try_from(request) {
        Ok(FrontendReq::SET_MEM_TABLE) => {
            let count = body
                .get(0..4)
                .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()) as usize);
            if count != fds.len() {
                return Ok(());
            }
            for (index, fd) in fds.iter().enumerate() {
                let at = 8 + index * REGION_LEN;
                if let Some(region) = body.get(at..at + REGION_LEN) {
                    check_region(index, region, fd.as_raw_fd())?;
                }
            }
            Ok(())
        }
        Ok(FrontendReq::SET_LOG_BASE) => match (fds, crate::migration::log_body(body)) {
            // The dirty log is shared memory like a region: the same rules, checked
            // as a region of its size at its offset.
            ([fd], Some((size, offset))) => {
                let mut region = [0u8; REGION_LEN];
                region[8..16].copy_from_slice(&size.to_le_bytes());
                region[24..32].copy_from_slice(&offset.to_le_bytes());
                check_region(0, &region, fd.as_raw_fd())
            }
            _ => Ok(()),
        },
        Ok(FrontendReq::ADD_MEM_REG) => match (fds, body.get(8..8 + REGION_LEN)) {
            ([fd], Some(region)) => check_region(0, region, fd.as_raw_fd()),
            _ => Ok(()),
        },
        Ok(
            FrontendReq::SET_VRING_KICK | FrontendReq::SET_VRING_CALL | FrontendReq::SET_VRING_ERR,
        ) => {
            let nofd = body
                .get(0..8)
                .is_some_and(|b| u64::from_le_bytes(b.try_into().unwrap()) & VRING_NOFD != 0);
            match fds {
                [fd] if !nofd => check_eventfd(fd.as_raw_fd()),
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// `region` is a `VhostUserMemoryRegion`: guest address, size, user address, offset.
fn check_region(index: usize, region: &[u8], fd: RawFd) -> Result<(), FdError> {
    let word = |i: usize| u64::from_le_bytes(region[8 * i..8 * i + 8].try_into().unwrap());
    let (size, offset) = (word(1), word(3));
    // SAFETY: `st` is a plain C struct that fstat fills; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open (owned by the message) and `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &raw mut st) } != 0 {
        return Err(FdError::Sys(io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(FdError::NotAFile {
            index,
            mode: st.st_mode,
        });
    }
    // SAFETY: all-zero is a valid statfs for fstatfs to fill.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `fs` is a valid out-pointer.
    if unsafe { libc::fstatfs(fd, &raw mut fs) } != 0 {
        return Err(FdError::Sys(io::Error::last_os_error()));
    }
    let fs_type = fs.f_type;
    if fs_type != TMPFS_MAGIC && fs_type != HUGETLBFS_MAGIC {
        return Err(FdError::Filesystem {
            index,
            path: fd_path(fd),
            fs_type,
        });
    }
    // Seal first, then look at the size: a file sealed against shrinking cannot
    // get shorter after the check.
    seal_against_shrinking(fd);
    // SAFETY: as for the first fstat.
    if unsafe { libc::fstat(fd, &raw mut st) } != 0 {
        return Err(FdError::Sys(io::Error::last_os_error()));
    }
    let file_len = st.st_size as u64;
    if offset.checked_add(size).is_none_or(|end| end > file_len) {
        return Err(FdError::PastEof {
            index,
            offset,
            size,
            file_len,
        });
    }
    Ok(())
}

/// What /proc calls `fd`, escaped for a log line (a frontend picks the name).
fn fd_path(fd: RawFd) -> String {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).map_or_else(
        |_| "(unknown file)".to_string(),
        |p| p.to_string_lossy().escape_debug().take(256).collect(),
    )
}

/// Adds F_SEAL_SHRINK where the kernel allows it, so the frontend cannot cut the
/// file under vpmd's mapping later. Files that cannot be sealed (hugetlbfs files,
/// memfds without MFD_ALLOW_SEALING) are used as they are: see docs/reliability.md.
fn seal_against_shrinking(fd: RawFd) {
    // SAFETY: fcntl on an open fd with integer arguments only.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals >= 0 && seals & libc::F_SEAL_SHRINK != 0 {
        return;
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) } != 0 {
        log::debug!(
            "memory region fd cannot be sealed against shrinking: {}",
            io::Error::last_os_error()
        );
    }
}

fn check_eventfd(fd: RawFd) -> Result<(), FdError> {
    // /proc names what an anonymous-inode fd is; without /proc (a sandbox that
    // hides it) the fd is still made non-blocking below, which is what keeps the
    // polling thread from stalling.
    if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
        let target = target.to_string_lossy().into_owned();
        if target != "anon_inode:[eventfd]" {
            return Err(FdError::NotEventFd(target));
        }
    }
    // SAFETY: fcntl on an open fd with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } != 0 {
        return Err(FdError::Sys(io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    const SET_MEM_TABLE: u32 = FrontendReq::SET_MEM_TABLE as u32;
    const SET_VRING_KICK: u32 = FrontendReq::SET_VRING_KICK as u32;
    const SET_VRING_CALL: u32 = FrontendReq::SET_VRING_CALL as u32;

    fn owned(fd: RawFd) -> OwnedFd {
        assert!(fd >= 0, "{}", io::Error::last_os_error());
        // SAFETY: a fresh fd from the call just made.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    fn memfd(len: i64, flags: libc::c_uint) -> OwnedFd {
        // SAFETY: valid C string and flags.
        let fd = owned(unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC | flags) });
        // SAFETY: ftruncate on our own fd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), len) }, 0);
        fd
    }

    fn table(regions: &[(u64, u64)]) -> Vec<u8> {
        let mut b = (regions.len() as u32).to_le_bytes().to_vec();
        b.extend_from_slice(&[0; 4]);
        for &(size, offset) in regions {
            for v in [0u64, size, 0, offset] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn regions_must_fit_their_file_and_get_sealed() {
        let fd = memfd(1 << 20, libc::MFD_ALLOW_SEALING);
        let ok = table(&[(1 << 20, 0)]);
        check_message_fds(SET_MEM_TABLE, &ok, std::slice::from_ref(&fd)).unwrap();
        // SAFETY: fcntl with integer arguments on our fd.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        assert!(seals & libc::F_SEAL_SHRINK != 0, "not sealed: {seals:#x}");
        for bad in [(2 << 20, 0), (1 << 20, 4096), (u64::MAX, 1)] {
            let err = check_message_fds(SET_MEM_TABLE, &table(&[bad]), std::slice::from_ref(&fd));
            assert!(
                matches!(err, Err(FdError::PastEof { .. })),
                "{bad:?}: {err:?}"
            );
        }
        let ev = owned(unsafe_eventfd());
        let err = check_message_fds(SET_MEM_TABLE, &ok, std::slice::from_ref(&ev));
        assert!(matches!(err, Err(FdError::NotAFile { .. })), "{err:?}");
    }

    #[test]
    fn files_on_other_filesystems_are_refused_with_an_escaped_path() {
        // The test binary's own directory is on a disk filesystem, not tmpfs.
        let dir = std::env::current_exe().unwrap();
        let dir = dir.parent().unwrap();
        let path = dir.join("vpmd-fd-check-\n\x1b[31m-test");
        let file = std::fs::File::create(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        let fd = OwnedFd::from(file);
        let mut fs: libc::statfs = unsafe_zeroed_statfs();
        // SAFETY: valid fd and out-pointer.
        assert_eq!(unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut fs) }, 0);
        let err = check_message_fds(
            SET_MEM_TABLE,
            &table(&[(1 << 20, 0)]),
            std::slice::from_ref(&fd),
        );
        let _ = std::fs::remove_file(&path);
        if fs.f_type == TMPFS_MAGIC {
            return; // a build directory on tmpfs: nothing to refuse here
        }
        match err {
            Err(FdError::Filesystem { path, .. }) => {
                assert!(path.contains("vpmd-fd-check-"), "{path}");
                assert!(!path.contains('\x1b'), "not escaped: {path}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn unsafe_zeroed_statfs() -> libc::statfs {
        // SAFETY: all-zero is a valid statfs.
        unsafe { std::mem::zeroed() }
    }

    fn unsafe_eventfd() -> RawFd {
        // SAFETY: eventfd takes no pointers.
        unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) }
    }

    #[test]
    fn vring_fds_must_be_eventfds_and_become_nonblocking() {
        let ev = owned(unsafe_eventfd());
        check_message_fds(
            SET_VRING_CALL,
            &1u64.to_le_bytes(),
            std::slice::from_ref(&ev),
        )
        .unwrap();
        // SAFETY: fcntl with integer arguments on our fd.
        let flags = unsafe { libc::fcntl(ev.as_raw_fd(), libc::F_GETFL) };
        assert!(flags & libc::O_NONBLOCK != 0);
        let mut p = [0; 2];
        // SAFETY: `p` has room for the two fds pipe(2) returns.
        assert_eq!(unsafe { libc::pipe(p.as_mut_ptr()) }, 0);
        let (r, w) = (owned(p[0]), owned(p[1]));
        drop(r);
        let err = check_message_fds(
            SET_VRING_CALL,
            &0u64.to_le_bytes(),
            std::slice::from_ref(&w),
        );
        assert!(matches!(err, Err(FdError::NotEventFd(_))), "{err:?}");
        // NOFD set: the fd count is the library's business.
        check_message_fds(SET_VRING_KICK, &0x100u64.to_le_bytes(), &[]).unwrap();
    }
}
