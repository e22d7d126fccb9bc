// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The UMEM: one anonymous memory area, cut into equal chunks, that the
//! kernel and the AF_XDP sockets share. Every frame the uplink receives or
//! transmits lives in one chunk.
//!
//! All sockets of an uplink share the one area (`XDP_SHARED_UMEM`), but each
//! owns a disjoint range of chunks: the chunks it puts on its own fill ring
//! come back on its own RX ring, and the chunks it transmits come back on its
//! own completion ring. No chunk ever crosses from one socket to another, so
//! sockets in different threads never synchronise with each other.
//!
//! Chunk addresses are byte offsets from the start of the area ("aligned
//! mode"): the kernel finds a chunk's start by masking off the low bits.
#![allow(unsafe_code)]

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

/// `sizeof(struct xsk_tx_metadata)`: flags (8 bytes), then the checksum
/// request (start, offset: 2 bytes each) or the completion timestamp, padded.
pub const TX_METADATA_LEN: u32 = 24;

/// Where transmit metadata is on: bytes in front of a transmitted frame's
/// data, its metadata at their end (the frame stays cache-line aligned).
pub const TX_METADATA_ROOM: u32 = 64;

/// Size of one chunk. A larger frame takes several (multi-buffer, where the kernel
/// has it: see [`crate::socket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChunkSize {
    /// 2048 bytes: received frames up to 1792 bytes in copy mode.
    Bytes2048,
    /// 4096 bytes: received frames up to 3840 bytes in copy mode.
    #[default]
    Bytes4096,
}

impl ChunkSize {
    pub fn bytes(self) -> u32 {
        match self {
            Self::Bytes2048 => 2048,
            Self::Bytes4096 => 4096,
        }
    }
}

/// Shape of the UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    pub chunk_size: ChunkSize,
    /// Chunks given to each socket: part stocks its fill ring (receive), the
    /// rest is its free list (transmit).
    pub chunks_per_queue: u32,
    /// Bytes kept free at the start of each chunk, before the frame
    /// (`xdp_umem_reg.headroom`; received frames start after it plus the
    /// kernel's own 256-byte `XDP_PACKET_HEADROOM`).
    pub headroom: u32,
}

impl Default for UmemConfig {
    fn default() -> Self {
        Self {
            chunk_size: ChunkSize::Bytes4096,
            chunks_per_queue: 4096,
            headroom: 0,
        }
    }
}

/// Failures of creating the UMEM area.
#[derive(Debug, thiserror::Error)]
pub enum UmemError {
    #[error("UMEM headroom {headroom} leaves no room for a frame in a {chunk_size}-byte chunk")]
    Headroom { headroom: u32, chunk_size: u32 },
    #[error("UMEM of {chunks} chunks of {chunk_size} bytes is too large or empty")]
    Size { chunks: u64, chunk_size: u32 },
    #[error("mmap of a {bytes}-byte UMEM failed")]
    Mmap {
        bytes: usize,
        #[source]
        source: io::Error,
    },
}

/// The mapped area. Shared (`Arc`) by all sockets of an uplink and unmapped
/// when the last one is dropped. The kernel pins the pages at registration
/// and holds them until its last socket on the UMEM is gone, so it never
/// writes through a stale mapping whichever goes first.
#[derive(Debug)]
pub(crate) struct UmemArea {
    base: NonNull<u8>,
    len: usize,
    chunk_size: u32,
    headroom: u32,
}

// SAFETY: UmemArea is an address range. It hands out byte views only through
// `unsafe fn`s whose callers must own the chunks involved, and chunks are
// partitioned between sockets, so sharing the range between threads
// introduces no data race by itself.
unsafe impl Send for UmemArea {}
// SAFETY: see Send; &UmemArea gives no access to the bytes without the
// ownership contract of `bytes`/`bytes_mut`.
unsafe impl Sync for UmemArea {}

impl UmemArea {
    /// Maps an area of `chunks` chunks.
    pub(crate) fn map(chunks: u64, config: &UmemConfig) -> Result<Arc<Self>, UmemError> {
        let chunk_size = config.chunk_size.bytes();
        // A frame needs at least an Ethernet header after all the headroom.
        if config.headroom + 256 + 64 > chunk_size {
            return Err(UmemError::Headroom {
                headroom: config.headroom,
                chunk_size,
            });
        }
        let len = chunks
            .checked_mul(u64::from(chunk_size))
            .filter(|&len| len > 0)
            .and_then(|len| usize::try_from(len).ok())
            .ok_or(UmemError::Size { chunks, chunk_size })?;
        // SAFETY: anonymous private mapping at a kernel-chosen address; no
        // existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(UmemError::Mmap {
                bytes: len,
                source: io::Error::last_os_error(),
            });
        }
        // The kernel pins these pages for DMA/copy: keep them out of any
        // child made by fork(), so copy-on-write can never split a page the
        // kernel writes from the page we read. Failure only loses that
        // protection, so it is ignored.
        // SAFETY: ptr..ptr+len is the mapping just created.
        unsafe { libc::madvise(ptr, len, libc::MADV_DONTFORK) };
        // Transparent huge pages where the kernel has them (THP `madvise` or
        // `always`): the kernel and the polling thread touch a different chunk for
        // every frame, 8 MiB and more of them in turn, far beyond what 4 KiB TLB
        // entries cover; 2 MiB pages cover them with a few entries. The pages are
        // faulted in (and pinned) at registration. Failure (THP off) only keeps
        // 4 KiB pages, so it is ignored.
        // SAFETY: as above.
        unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
        Ok(Arc::new(Self {
            base: NonNull::new(ptr.cast()).expect("mmap returned a non-null address"),
            len,
            chunk_size,
            headroom: config.headroom,
        }))
    }

    /// The `XDP_UMEM_REG` argument describing this area; `tx_metadata`: with
    /// room for `struct xsk_tx_metadata` in front of every transmitted frame
    /// (`XDP_UMEM_TX_METADATA_LEN`, Linux 6.11+), for transmit checksum offload.
    pub(crate) fn registration(&self, tx_metadata: bool) -> libc::xdp_umem_reg {
        libc::xdp_umem_reg {
            addr: self.base.as_ptr() as u64,
            len: self.len as u64,
            chunk_size: self.chunk_size,
            headroom: self.headroom,
            flags: if tx_metadata {
                libc::XDP_UMEM_TX_METADATA_LEN
            } else {
                0
            },
            tx_metadata_len: if tx_metadata { TX_METADATA_LEN } else { 0 },
        }
    }

    pub(crate) fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    pub(crate) fn headroom(&self) -> u32 {
        self.headroom
    }

    /// Address of chunk number `index`.
    pub(crate) fn chunk_addr(&self, index: u64) -> u64 {
        index * u64::from(self.chunk_size)
    }

    /// Start of the chunk holding `addr` (a frame address from the kernel).
    pub(crate) fn chunk_of(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.chunk_size) - 1)
    }

    /// Clamps `addr..addr + len` to the area; returns the start pointer and
    /// the clamped length (0 if `addr` lies outside).
    fn clamp(&self, addr: u64, len: usize) -> (*mut u8, usize) {
        let Ok(offset) = usize::try_from(addr) else {
            return (self.base.as_ptr(), 0);
        };
        if offset >= self.len {
            return (self.base.as_ptr(), 0);
        }
        let len = len.min(self.len - offset);
        // SAFETY: offset < self.len, so the result stays inside the mapping.
        (unsafe { self.base.as_ptr().add(offset) }, len)
    }

    /// The bytes `addr..addr + len`, clamped to the area.
    ///
    /// # Safety
    /// The caller must own the chunk holding these bytes (not on a fill or
    /// TX ring, not handed to anyone else) for as long as the slice lives,
    /// so that neither the kernel nor another socket writes them meanwhile.
    pub(crate) unsafe fn bytes(&self, addr: u64, len: usize) -> &[u8] {
        let (ptr, len) = self.clamp(addr, len);
        // SAFETY: ptr..ptr+len lies inside the live mapping (clamped); the
        // caller guarantees nobody writes it while the slice lives.
        unsafe { std::slice::from_raw_parts(ptr, len) }
    }

    /// The bytes `addr..addr + len`, clamped to the area, writable.
    ///
    /// # Safety
    /// As for [`Self::bytes`], and no other slice of these bytes may exist
    /// while this one lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self, addr: u64, len: usize) -> &mut [u8] {
        let (ptr, len) = self.clamp(addr, len);
        // SAFETY: ptr..ptr+len lies inside the live mapping (clamped); the
        // caller guarantees exclusive access while the slice lives.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }
}

impl Drop for UmemArea {
    fn drop(&mut self) {
        // SAFETY: base..base+len is our mapping; every socket that used it
        // has been closed (they hold the Arc), so nothing references it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_arithmetic() {
        let area = UmemArea::map(4, &UmemConfig::default()).unwrap();
        assert_eq!(area.chunk_addr(3), 3 * 4096);
        assert_eq!(area.chunk_of(3 * 4096 + 256 + 17), 3 * 4096);
        // SAFETY: nothing else uses this area.
        let tail = unsafe { area.bytes(4 * 4096 - 10, 100) };
        assert_eq!(tail.len(), 10, "clamped to the area");
        // SAFETY: as above.
        let outside = unsafe { area.bytes(1 << 40, 100) };
        assert!(outside.is_empty());
    }

    #[test]
    fn headroom_must_leave_room() {
        let config = UmemConfig {
            chunk_size: ChunkSize::Bytes2048,
            headroom: 1800,
            ..Default::default()
        };
        assert!(matches!(
            UmemArea::map(4, &config),
            Err(UmemError::Headroom { .. })
        ));
    }
}
