// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A VM's frame with its Ethernet header read out of guest memory exactly once.
//!
//! A guest can rewrite its TX buffers while vpmd forwards them (a second vCPU, or
//! a hostile driver on purpose). The macvlan decision depends on the first 12
//! bytes (the anti-spoofing check on the source MAC, the destination by the
//! destination MAC), and the frame is copied out of guest memory only afterwards,
//! once per destination. Were the header copied from guest memory again, bytes
//! rewritten between the check and the copy would go out as checked: a forged
//! source MAC out of the uplink or into another VM.
//!
//! So [`seal`] reads the first [`ETH_HLEN`] bytes once, into host memory of the
//! shard's (a [`Headers`] slot), and rebuilds the frame's segment list as that
//! header followed by the guest's buffers from byte 14 on. The decision reads the
//! sealed header; every copy of the frame (to a VM's RX buffers, to a UMEM chunk)
//! starts with those very bytes. The rest of the frame is still copied once per
//! destination straight from guest memory: nothing vpmd decides depends on it.
#![allow(unsafe_code)] // A `HostBuf` view of a header slot (and of test buffers).

use vpmd_backend::guest_mem::HostBuf;
use vpmd_backend::seglist::SegList;

use crate::fwd::BURST;

/// Bytes of an Ethernet header: destination, source, EtherType.
pub const ETH_HLEN: usize = 14;

/// One burst's sealed headers, slot `k` for frame `k` of the batch.
///
/// The batch's segment lists point into these slots until the next burst of the
/// same shard rebuilds them, so the slots live in the shard (not on the stack) and
/// are handed out once per burst by [`Headers::slots`].
pub struct Headers([[u8; ETH_HLEN]; BURST]);

impl Headers {
    /// Zeroed slots.
    pub fn new() -> Self {
        Headers([[0; ETH_HLEN]; BURST])
    }

    /// The slots for one burst, in frame order. Taken once per burst: each slot's
    /// address is then derived once, and a frame's list keeps pointing at it while
    /// later slots are written.
    pub fn slots(&mut self) -> std::slice::IterMut<'_, [u8; ETH_HLEN]> {
        self.0.iter_mut()
    }
}

impl Default for Headers {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads `src`'s first [`ETH_HLEN`] bytes (from guest memory) once into `hdr`, and
/// makes `out` the frame to forward: `hdr`, then `src` from byte [`ETH_HLEN`] on.
/// `src` must hold at least [`ETH_HLEN`] bytes (the caller drops runts first).
///
/// `out` points into `hdr`: neither may be moved or written until `out` has been
/// copied from for the last time (the end of the burst).
///
/// Returns `false`, with `out` unusable, when the rebuilt list would need more
/// segments than a [`SegList`] holds (a chain of `MAX_SEGS` buffers whose first
/// buffer holds more than the header).
#[inline]
pub fn seal(src: &SegList, hdr: &mut [u8; ETH_HLEN], out: &mut SegList) -> bool {
    let got = src.read_at(0, hdr);
    debug_assert_eq!(got as usize, ETH_HLEN, "runts are dropped before sealing");
    out.clear();
    // SAFETY: the caller keeps `hdr` in place and unwritten until `out` has been
    // read for the last time (this function's contract; `Headers::slots` hands
    // each slot out once per burst), and only `out` reads it meanwhile.
    let view = unsafe { HostBuf::from_slice(hdr) };
    if !out.push(view) {
        return false;
    }
    let mut skip = ETH_HLEN as u32;
    for seg in src.segs() {
        if skip >= seg.len() {
            skip -= seg.len();
            continue;
        }
        if !out.push(seg.advance(skip)) {
            return false;
        }
        skip = 0;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpmd_backend::seglist::{self, Cursor, MAX_SEGS};

    const GENUINE: [u8; 12] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0, 0, 1];
    const FORGED: [u8; 12] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0xba, 0xd0, 0, 0, 9,
    ];

    fn list(bufs: &mut [Vec<u8>]) -> SegList {
        let mut l = SegList::default();
        for b in bufs.iter_mut() {
            // SAFETY: every test keeps `bufs` alive and in place while the list is
            // used, and reaches the bytes only through the list meanwhile.
            let view = unsafe { HostBuf::from_slice(b) };
            assert!(l.push(view));
        }
        l
    }

    /// A frame of `len` bytes: GENUINE addresses, EtherType 0x0800, payload `i as u8`.
    fn frame(len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| i as u8).collect();
        f[..12].copy_from_slice(&GENUINE);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f
    }

    /// Splits `f` into buffers at `cuts`.
    fn split(f: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&f.len())) {
            out.push(f[at..c].to_vec());
            at = c;
        }
        out
    }

    /// What a destination gets: `src` copied into one buffer of its length, as
    /// `deliver_rx_frame` and the uplink's copy do (SegList copy and read_at).
    fn copies(src: &SegList) -> (Vec<u8>, Vec<u8>) {
        let mut rx = vec![0u8; src.total() as usize];
        let dst = list(std::slice::from_mut(&mut rx));
        let (mut dp, mut sp) = (Cursor::default(), Cursor::default());
        assert_eq!(
            seglist::copy(&dst, &mut dp, src, &mut sp, src.total()),
            src.total()
        );
        let mut umem = vec![0u8; src.total() as usize];
        assert_eq!(src.read_at(0, &mut umem), src.total());
        let mut rx_bytes = vec![0u8; rx.len()];
        dst.read_at(0, &mut rx_bytes);
        (rx_bytes, umem)
    }

    /// The race, made deterministic: the "guest" rewrites the addresses after the
    /// check read them and before the copies. Every copy must carry the checked
    /// (genuine) addresses and the guest's rest of the frame.
    #[test]
    fn bytes_rewritten_after_the_check_never_reach_a_destination() {
        let f = frame(100);
        // Header in one buffer, across buffers, in tiny buffers, with an empty one.
        for cuts in [
            &[][..],
            &[5],
            &[14],
            &[13, 20],
            &[1, 2, 3, 4, 5, 6, 7],
            &[0, 14],
        ] {
            let mut guest = split(&f, cuts);
            let src = list(&mut guest);
            let mut hdr = [0u8; ETH_HLEN];
            let mut out = SegList::default();
            assert!(seal(&src, &mut hdr, &mut out), "{cuts:?}");
            assert_eq!(out.total(), src.total());
            assert_eq!(hdr[..12], GENUINE, "the check sees the genuine header");
            // Second vCPU: forge the addresses in guest memory.
            assert_eq!(src.write_at(0, &FORGED), 12);
            let (rx, umem) = copies(&out);
            for got in [rx, umem] {
                assert_eq!(got[..12], GENUINE, "{cuts:?}: forged header delivered");
                assert_eq!(got[12..], f[12..], "{cuts:?}: rest of the frame");
            }
            // Without sealing, the copy would have carried the forged bytes.
            let (raw, _) = copies(&src);
            assert_eq!(raw[..12], FORGED);
        }
    }

    #[test]
    fn a_full_list_that_cannot_take_the_header_is_refused() {
        let mut guest: Vec<Vec<u8>> = (0..MAX_SEGS).map(|_| vec![0u8; 20]).collect();
        let src = list(&mut guest);
        let mut hdr = [0u8; ETH_HLEN];
        let mut out = SegList::default();
        assert!(!seal(&src, &mut hdr, &mut out));
        // A full list whose first buffer is exactly the header fits.
        guest[0].truncate(ETH_HLEN);
        let src = list(&mut guest);
        assert!(seal(&src, &mut hdr, &mut out));
        assert_eq!(out.total(), src.total());
    }
}
