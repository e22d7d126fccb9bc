// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The driver's "guest RAM": one memfd mapped shared, wrapped as vm-memory guest memory.
//!
//! A vhost-user backend can only reach memory it can map, so the rings and every buffer
//! live in a memfd whose descriptor travels with SET_MEM_TABLE. Areas are handed out by
//! a bump allocator once, at setup; the data path never allocates guest memory. The
//! memfd may be backed by 2 MiB hugepages (like a VM with `hugepages=on`), which spares
//! the backend TLB misses on buffers; it then needs free hugepages.
#![allow(unsafe_code)] // memfd_create and mmap of the frontend's guest memory; raw access into it.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::ptr::NonNull;

use vhost::VhostUserMemoryRegionInfo;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap,
};

/// Default guest memory size: room for many 256-entry queues and their buffers.
pub const DEFAULT_MEM_SIZE: usize = 64 << 20;
/// Hugepage size used with [`GuestMem::new_huge`].
pub const HUGE_PAGE: usize = 2 << 20;

/// Failures while creating or carving the guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    /// memfd_create failed.
    #[error("memfd_create")]
    Memfd(#[source] io::Error),
    /// Sizing the memfd failed.
    #[error("sizing the memfd to {size} bytes")]
    Truncate {
        /// Requested size.
        size: usize,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// vm-memory could not map the memfd.
    #[error("mapping guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    /// The bump allocator ran out of guest memory.
    #[error("guest memory exhausted: {wanted} bytes wanted, {left} left")]
    Exhausted {
        /// Bytes asked for.
        wanted: u64,
        /// Bytes still free.
        left: u64,
    },
    /// vhost could not describe a region for SET_MEM_TABLE.
    #[error("describing a region for SET_MEM_TABLE")]
    Region(#[source] vhost::Error),
}

/// Shared, fd-backed guest memory with a bump allocator.
pub struct GuestMem {
    mem: GuestMemoryMmap,
    base: GuestAddress,
    size: u64,
    next_free: u64,
}

impl GuestMem {
    /// Creates `size` bytes of memfd memory at guest physical address `base`.
    pub fn new(base: u64, size: usize) -> Result<Self, MemError> {
        Self::with_flags(base, size, 0)
    }

    /// Like [`GuestMem::new`], backed by 2 MiB hugepages (`size` is rounded up to them).
    pub fn new_huge(base: u64, size: usize) -> Result<Self, MemError> {
        let size = size.next_multiple_of(HUGE_PAGE);
        Self::with_flags(base, size, libc::MFD_HUGETLB | libc::MFD_HUGE_2MB)
    }

    fn with_flags(base: u64, size: usize, flags: libc::c_uint) -> Result<Self, MemError> {
        let file = memfd(c"vpmd-bench-guest", flags)?;
        file.set_len(size as u64)
            .map_err(|source| MemError::Truncate { size, source })?;
        let region =
            GuestRegionMmap::from_range(GuestAddress(base), size, Some(FileOffset::new(file, 0)))
                .map_err(MemError::Map)?;
        let mem =
            GuestMemoryMmap::from_regions(vec![region]).map_err(|e| MemError::Map(e.into()))?;
        Ok(GuestMem {
            mem,
            base: GuestAddress(base),
            size: size as u64,
            next_free: 0,
        })
    }

    /// The vm-memory view; cheap to clone (regions are reference counted).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Guest physical address of the first byte.
    pub fn base(&self) -> GuestAddress {
        self.base
    }

    /// Reserves `len` bytes aligned to `align` (a power of two), zero-filled (fresh memfd pages).
    pub fn alloc(&mut self, len: u64, align: u64) -> Result<GuestAddress, MemError> {
        debug_assert!(align.is_power_of_two());
        let start = (self.base.raw_value() + self.next_free).next_multiple_of(align);
        let offset = start - self.base.raw_value();
        let left = self.size.saturating_sub(offset);
        if len > left {
            return Err(MemError::Exhausted { wanted: len, left });
        }
        self.next_free = offset + len;
        Ok(GuestAddress(start))
    }

    /// The regions as SET_MEM_TABLE wants them: guest address, our mapping's address, fd.
    ///
    /// The fds stay owned by `self`; keep it alive while the backend may still map them.
    pub fn region_infos(&self) -> Result<Vec<VhostUserMemoryRegionInfo>, MemError> {
        self.mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).map_err(MemError::Region))
            .collect()
    }

    /// Our own (frontend process) virtual address of `addr`: vhost-user ring addresses
    /// (SET_VRING_ADDR) are frontend virtual addresses, unlike descriptor addresses.
    pub fn host_address(&self, addr: GuestAddress) -> Option<u64> {
        self.host_ptr(addr, 0).map(|p| p.as_ptr() as u64)
    }

    /// Our mapping of the `len` bytes at `addr`, if they all lie in one region. The pointer
    /// stays valid as long as any clone of [`GuestMem::memory`] is alive.
    pub fn host_ptr(&self, addr: GuestAddress, len: u64) -> Option<NonNull<u8>> {
        let region = self.mem.find_region(addr)?;
        let offset = addr.checked_offset_from(region.start_addr())?;
        if offset.checked_add(len)? > region.len() {
            return None;
        }
        // SAFETY: `offset` (plus `len`) lies within the region's mapping, checked above, so
        // the result points into (or one past) the same mapping.
        let p = unsafe { region.as_ptr().add(offset as usize) };
        NonNull::new(p)
    }
}

/// An anonymous memory file that can be shared over a unix socket.
fn memfd(name: &CStr, flags: libc::c_uint) -> Result<File, MemError> {
    // SAFETY: `name` is a valid NUL-terminated string; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | flags) };
    if fd < 0 {
        return Err(MemError::Memfd(io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn alloc_aligns_and_runs_out() {
        let mut m = GuestMem::new(0x1_0000, 1 << 20).unwrap();
        let a = m.alloc(10, 16).unwrap();
        let b = m.alloc(10, 4096).unwrap();
        assert_eq!(a.raw_value(), 0x1_0000);
        assert_eq!(b.raw_value() % 4096, 0);
        assert!(b.raw_value() >= a.raw_value() + 10);
        assert!(matches!(
            m.alloc(2 << 20, 8),
            Err(MemError::Exhausted { .. })
        ));
    }

    #[test]
    fn region_info_describes_the_memfd() {
        let m = GuestMem::new(0x4000_0000, 1 << 20).unwrap();
        let infos = m.region_infos().unwrap();
        assert_eq!(infos.len(), 1);
        assert_eq!(infos[0].guest_phys_addr, 0x4000_0000);
        assert_eq!(infos[0].memory_size, 1 << 20);
        assert!(infos[0].mmap_handle >= 0);
        let host = m.host_address(GuestAddress(0x4000_0010)).unwrap();
        assert_eq!(host, infos[0].userspace_addr + 0x10);
        m.memory()
            .write_obj(7u32, GuestAddress(0x4000_0010))
            .unwrap();
    }
}
