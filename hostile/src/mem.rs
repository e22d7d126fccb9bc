// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The hostile VM's "guest RAM": a memfd mapped shared, written byte by byte.
//!
//! Like vpmd-bench's guest memory (and QEMU's `memory-backend-memfd`), but without any
//! allocator or type: the tests put rings, descriptors and buffers wherever an attack
//! needs them, including places a real driver never would. The memfd can also be
//! shrunk under vpmd's feet ([`GuestRam::truncate`]).
#![allow(unsafe_code)] // memfd_create, mmap and raw stores into the shared mapping.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::Path;

use crate::msg::body::Region;

/// Frontend virtual addresses are guest-physical addresses plus this, so that vpmd
/// really has to translate ring addresses (as with QEMU) rather than get lucky.
pub const VA_OFFSET: u64 = 0x7f00_0000_0000;

/// Why guest memory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// memfd_create, ftruncate or mmap failed.
    #[error("{what}")]
    Sys {
        /// The call.
        what: &'static str,
        /// Its error.
        #[source]
        source: io::Error,
    },
}

fn sys(what: &'static str) -> MemError {
    MemError::Sys {
        what,
        source: io::Error::last_os_error(),
    }
}

/// `len` bytes of shared memory at guest-physical `gpa`.
pub struct GuestRam {
    file: File,
    ptr: *mut u8,
    len: usize,
    gpa: u64,
}

// SAFETY: the mapping is owned by this struct and unmapped only in Drop; the raw
// pointer is not tied to the creating thread.
unsafe impl Send for GuestRam {}
// SAFETY: every access through `&GuestRam` copies plain bytes or uses atomic
// loads and stores; two threads racing on the same bytes (as a second vCPU would)
// is what the tests want, and neither can step outside the mapping.
unsafe impl Sync for GuestRam {}

impl GuestRam {
    /// A fresh, zero-filled memfd of `len` bytes (a page multiple) at `gpa`.
    pub fn new(gpa: u64, len: usize) -> Result<GuestRam, MemError> {
        Self::with_flags(gpa, len, 0)
    }

    /// Like [`GuestRam::new`], created with MFD_ALLOW_SEALING (as QEMU's memfd backend).
    pub fn new_sealable(gpa: u64, len: usize) -> Result<GuestRam, MemError> {
        Self::with_flags(gpa, len, libc::MFD_ALLOW_SEALING)
    }

    fn with_flags(gpa: u64, len: usize, flags: libc::c_uint) -> Result<GuestRam, MemError> {
        // SAFETY: a valid C string and flags; the call has no other inputs.
        let fd = unsafe { libc::memfd_create(c"vpmd-hostile".as_ptr(), libc::MFD_CLOEXEC | flags) };
        if fd < 0 {
            return Err(sys("memfd_create"));
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        Self::map(file, gpa, len)
    }

    /// Guest RAM in a file of its own on the hugetlbfs mounted at `mount` (as QEMU's
    /// `memory-backend-file,mem-path=/dev/hugepages` and DPDK's virtio-user use);
    /// `len` a multiple of the huge page size. The file is unlinked at once.
    pub fn on_hugetlbfs(mount: &Path, gpa: u64, len: usize) -> Result<GuestRam, MemError> {
        let path = mount.join(format!("vpmd-hostile-{}-{gpa:x}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|source| MemError::Sys {
                what: "open on hugetlbfs",
                source,
            })?;
        let _ = std::fs::remove_file(&path);
        Self::map(file, gpa, len)
    }

    /// A sparse memfd of `len` bytes (say 1 TiB), not mapped here: only its fd and
    /// region are used, to ask vpmd to map more than it should.
    pub fn sparse_fd(len: u64) -> Result<File, MemError> {
        // SAFETY: a valid C string and flags.
        let fd = unsafe { libc::memfd_create(c"vpmd-hostile-sparse".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(sys("memfd_create"));
        }
        // SAFETY: fresh fd nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len).map_err(|source| MemError::Sys {
            what: "ftruncate",
            source,
        })?;
        Ok(file)
    }

    fn map(file: File, gpa: u64, len: usize) -> Result<GuestRam, MemError> {
        file.set_len(len as u64).map_err(|source| MemError::Sys {
            what: "ftruncate",
            source,
        })?;
        // SAFETY: a new shared mapping of our own fd; no address hint, so nothing
        // existing is replaced.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(sys("mmap"));
        }
        Ok(GuestRam {
            file,
            ptr: ptr.cast(),
            len,
            gpa,
        })
    }

    /// The memfd.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Guest-physical address of the first byte.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the memory has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The whole memfd as one SET_MEM_TABLE region.
    pub fn region(&self) -> Region {
        Region {
            gpa: self.gpa,
            size: self.len as u64,
            uaddr: self.gpa + VA_OFFSET,
            offset: 0,
        }
    }

    /// The frontend virtual address of `gpa` (what SET_VRING_ADDR carries).
    pub fn va(gpa: u64) -> u64 {
        gpa.wrapping_add(VA_OFFSET)
    }

    fn offset(&self, gpa: u64, n: usize) -> usize {
        let off = gpa
            .checked_sub(self.gpa)
            .filter(|o| o + n as u64 <= self.len as u64)
            .unwrap_or_else(|| panic!("test bug: {n} bytes at {gpa:#x} outside guest RAM"));
        off as usize
    }

    /// Writes `bytes` at `gpa` (must be inside this memory).
    pub fn write(&self, gpa: u64, bytes: &[u8]) {
        let off = self.offset(gpa, bytes.len());
        // SAFETY: the range is inside our live mapping (checked by `offset`); vpmd
        // may read it concurrently, which is the point: it copies plain bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(off), bytes.len()) };
    }

    /// Reads `n` bytes at `gpa`.
    pub fn read(&self, gpa: u64, n: usize) -> Vec<u8> {
        let off = self.offset(gpa, n);
        let mut out = vec![0u8; n];
        // SAFETY: the range is inside our live mapping (checked by `offset`).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off), out.as_mut_ptr(), n) };
        out
    }

    /// A little-endian u16 store, atomic and release-ordered (ring indices).
    pub fn store_u16(&self, gpa: u64, v: u16) {
        let off = self.offset(gpa, 2);
        assert!(
            gpa.is_multiple_of(2),
            "test bug: unaligned index at {gpa:#x}"
        );
        // SAFETY: inside the mapping and 2-byte aligned (checked above); vpmd reads
        // the same location atomically.
        let a = unsafe { &*(self.ptr.add(off) as *const std::sync::atomic::AtomicU16) };
        a.store(v.to_le(), std::sync::atomic::Ordering::Release);
    }

    /// A little-endian u16 load, acquire-ordered (ring indices).
    pub fn load_u16(&self, gpa: u64) -> u16 {
        let off = self.offset(gpa, 2);
        assert!(
            gpa.is_multiple_of(2),
            "test bug: unaligned index at {gpa:#x}"
        );
        // SAFETY: inside the mapping and 2-byte aligned (checked above).
        let a = unsafe { &*(self.ptr.add(off) as *const std::sync::atomic::AtomicU16) };
        u16::from_le(a.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Shrinks (or grows) the memfd under every mapping of it, vpmd's included.
    /// The caller must not touch the memory past `len` afterwards (it would SIGBUS).
    pub fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    /// Punches a hole of `len` bytes at `offset` into the file (its pages are freed;
    /// the file keeps its size).
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our own fd with integer arguments.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; no reference into it
        // outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
