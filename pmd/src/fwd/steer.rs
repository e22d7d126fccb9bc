// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! Which receive queue of a multi-queue port a frame goes to.
//!
//! A frame's flow (IPv4 or IPv6 addresses, TCP or UDP ports, protocol; the MACs
//! for anything else) is hashed symmetrically, as Linux's veth (`skb_get_hash`
//! over the flow dissector) and DPDK's symmetric RSS do: both directions of a
//! connection hash the same, and every frame of a flow takes the same queue, so
//! no flow is ever reordered by vpmd. Fragments beyond the first carry no ports:
//! every fragment of an IPv4 datagram hashes by addresses alone, so a datagram's
//! pieces stay together too.
//!
//! When the sender runs as many queue pairs as the receiver, no hash is needed:
//! the k-th running TX queue feeds the k-th running RX queue ([`same_rank`]), as
//! Linux's veth maps TX queue k to RX queue k; the sender's stack already chose the
//! TX queue by flow (its own hash, or XPS, which moves a flow only while none of its
//! packets is in flight), so each flow still keeps one queue, and a burst goes to
//! one RX queue whole. Otherwise the hash picks among the receive queues the guest
//! has *running* (started and enabled): a guest that enabled fewer pairs than offered (`ethtool -L`) gets
//! all of its traffic on those, and no frame is steered to a disabled queue.
//!
//! Concurrent writers: two polling threads may steer frames into the same
//! receive queue (the sender's TX queues are polled by different threads). They
//! serialise on that queue's vring lock, held for one burst, as DPDK's vhost
//! library does with its per-virtqueue lock; a thread holds at most one receive
//! queue at a time (queues are filled one after the other, in ascending order),
//! and never asks for a transmit queue while holding one, so no two threads can
//! wait for each other in a cycle.

/// Bytes of a frame the hash may look at: Ethernet, one VLAN tag, an IPv6 header,
/// the first 4 bytes of TCP/UDP.
pub const HEAD: usize = 14 + 4 + 40 + 4;

/// The symmetric flow hash of a frame whose first bytes are `head` (fewer than
/// [`HEAD`] if the frame is shorter).
pub fn flow_hash(head: &[u8]) -> u32 {
    let Some(ethertype) = head.get(12..14) else {
        return mac_hash(head);
    };
    let (mut ethertype, mut l3) = (u16::from_be_bytes([ethertype[0], ethertype[1]]), 14);
    if ethertype == 0x8100 {
        let Some(inner) = head.get(16..18) else {
            return mac_hash(head);
        };
        ethertype = u16::from_be_bytes([inner[0], inner[1]]);
        l3 = 18;
    }
    let l3h = &head[l3.min(head.len())..];
    let (a, b, proto, l4) = match ethertype {
        0x0800 if l3h.len() >= 20 && l3h[0] >> 4 == 4 => {
            let ihl = usize::from(l3h[0] & 0xf) * 4;
            // Offset or more fragments: no ports in this fragment (or in the rest).
            let fragmented = u16::from_be_bytes([l3h[6], l3h[7]]) & 0x3fff != 0;
            let l4 = (!fragmented && ihl >= 20).then(|| l3h.get(ihl..)).flatten();
            (
                u64::from(word32(l3h, 12)),
                u64::from(word32(l3h, 16)),
                l3h[9],
                l4,
            )
        }
        0x86dd if l3h.len() >= 40 && l3h[0] >> 4 == 6 => {
            // Each address folded to 64 bits: its two halves, one of them turned.
            let addr = |at: usize| word64(l3h, at) ^ word64(l3h, at + 8).rotate_left(29);
            (addr(8), addr(24), l3h[6], l3h.get(40..))
        }
        _ => return mac_hash(head),
    };
    let ports = match (proto, l4) {
        (6 | 17, Some(l4)) if l4.len() >= 4 => {
            let s = u16::from_be_bytes([l4[0], l4[1]]);
            let d = u16::from_be_bytes([l4[2], l4[3]]);
            let (lo, hi) = (s.min(d), s.max(d));
            u64::from(lo) << 16 | u64::from(hi)
        }
        _ => 0,
    };
    let (lo, hi) = (a.min(b), a.max(b));
    // One multiply per word, one finalising mix: the frame's only per-frame cost
    // beside the copy in a multi-queue burst.
    let x =
        lo.wrapping_mul(K1) ^ hi.rotate_left(31).wrapping_mul(K2) ^ (ports << 8 | u64::from(proto));
    (mix(x) >> 32) as u32
}

/// Odd 64-bit constants (splitmix64's).
const K1: u64 = 0x9e37_79b9_7f4a_7c15;
const K2: u64 = 0xbf58_476d_1ce4_e5b9;

fn word32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn word64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Hash of the two MACs (order-free), for frames that are not IP.
fn mac_hash(head: &[u8]) -> u32 {
    let mac = |at: usize| {
        head.get(at..at + 6).map(|m| {
            let mut w = [0u8; 8];
            w[..6].copy_from_slice(m);
            u64::from_le_bytes(w)
        })
    };
    let (Some(a), Some(b)) = (mac(0), mac(6)) else {
        return 0;
    };
    (mix(a.min(b).wrapping_mul(K1) ^ a.max(b)) >> 32) as u32
}

/// A 64-bit finaliser (splitmix64's); callers keep its high 32 bits.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(K1);
    z = (z ^ (z >> 30)).wrapping_mul(K2);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The queue pair a frame from the sender's queue pair `from` goes to when the
/// sender runs the pairs in `sent` and the receiver those in `running`, and both run
/// as many: the pair of the same rank (the k-th running TX queue to the k-th running
/// RX queue, one to one), as Linux's veth gives a frame from TX queue k to RX queue
/// k. A sender keeps a flow on one TX queue (Linux moves a flow to another only
/// when none of its packets is in flight), so the flow keeps its RX queue, and the
/// frames need no hash. `None` when the counts differ (then [`flow_hash`] decides)
/// or `from` is not among `sent`.
#[inline]
pub fn same_rank(from: usize, sent: u32, running: u32) -> Option<usize> {
    if from >= 32 || sent & 1 << from == 0 || sent.count_ones() != running.count_ones() {
        return None;
    }
    let rank = (sent & ((1u32 << from) - 1)).count_ones();
    let mut left = running;
    for _ in 0..rank {
        left &= left - 1;
    }
    Some(left.trailing_zeros() as usize)
}

/// The queue pair, among those set in `running` (bit `n`: pair `n`), that a frame
/// with flow hash `hash` goes to; `None` when none runs.
#[inline]
pub fn pick(hash: u32, running: u32) -> Option<usize> {
    let n = running.count_ones();
    if n == 0 {
        return None;
    }
    // The k-th running pair, k = hash * n / 2^32 (a multiply, not a division), by a
    // bit walk over at most 8 bits.
    let mut k = ((u64::from(hash) * u64::from(n)) >> 32) as u32;
    let mut left = running;
    loop {
        let pair = left.trailing_zeros() as usize;
        if k == 0 {
            return Some(pair);
        }
        k -= 1;
        left &= left - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP/TCP head.
    fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0; 16]);
        f
    }

    fn v6(src: u8, dst: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
        let mut a = [0u8; 16];
        a[0] = 0x20;
        a[15] = src;
        f.extend_from_slice(&a);
        a[15] = dst;
        f.extend_from_slice(&a);
        f.extend_from_slice(&sport.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f
    }

    #[test]
    fn both_directions_of_a_flow_hash_the_same() {
        let (a, b) = ([198, 18, 0, 1], [198, 18, 0, 2]);
        for proto in [6, 17] {
            let there = flow_hash(&v4(a, b, proto, 40000, 5201));
            assert_eq!(there, flow_hash(&v4(b, a, proto, 5201, 40000)));
            assert_ne!(
                there,
                flow_hash(&v4(a, b, proto, 40001, 5201)),
                "ports count"
            );
        }
        assert_eq!(flow_hash(&v6(1, 2, 7, 9)), flow_hash(&v6(2, 1, 9, 7)));
        assert_ne!(flow_hash(&v6(1, 2, 7, 9)), flow_hash(&v6(1, 3, 7, 9)));
        let mut tagged = v4(a, b, 6, 1, 2);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        assert_eq!(
            flow_hash(&tagged),
            flow_hash(&v4(a, b, 6, 1, 2)),
            "VLAN tag skipped"
        );
    }

    #[test]
    fn fragments_of_a_datagram_stay_together() {
        let (a, b) = ([198, 18, 0, 1], [198, 18, 0, 2]);
        let mut first = v4(a, b, 17, 1000, 2000);
        first[20] = 0x20; // more fragments
        let mut later = v4(a, b, 17, 0xdead, 0xbeef); // payload bytes, not ports
        later[20] = 0x20;
        later[21] = 0xb9; // offset
        assert_eq!(flow_hash(&first), flow_hash(&later));
    }

    #[test]
    fn short_and_odd_frames_hash_without_panicking() {
        for len in 0..HEAD {
            let f = v4([198, 18, 0, 1], [198, 18, 0, 2], 6, 1, 2);
            let _ = flow_hash(&f[..len.min(f.len())]);
        }
        let arp = [0xffu8; 42];
        assert_eq!(flow_hash(&arp), flow_hash(&arp));
        let mut bad_ihl = v4([1, 1, 1, 1], [2, 2, 2, 2], 6, 1, 2);
        bad_ihl[14] = 0x4f; // IHL 60: past the head
        let _ = flow_hash(&bad_ihl);
    }

    #[test]
    fn flows_spread_over_the_running_queues_only() {
        for running in [0b11u32, 0b101, 0b1111, 0b1000_0001] {
            let mut seen = [0u32; 8];
            for port in 0..1000u16 {
                let h = flow_hash(&v4([198, 18, 0, 1], [198, 18, 0, 2], 6, 10000 + port, 80));
                let q = pick(h, running).expect("a running queue");
                assert!(running & 1 << q != 0, "queue {q} is not running");
                seen[q] += 1;
            }
            let want = 1000 / running.count_ones();
            for q in (0..8).filter(|q| running & 1 << q != 0) {
                assert!(
                    seen[q] > want * 3 / 4 && seen[q] < want * 5 / 4,
                    "running {running:#b}: {seen:?}"
                );
            }
        }
        assert_eq!(pick(12345, 0), None);
        // Same counts: rank to rank, one to one.
        assert_eq!(same_rank(1, 0b11, 0b11), Some(1));
        assert_eq!(same_rank(0, 0b11, 0b110), Some(1));
        assert_eq!(same_rank(1, 0b11, 0b110), Some(2));
        assert_eq!(same_rank(3, 0b1010, 0b11), Some(1));
        // Otherwise the hash decides.
        assert_eq!(
            same_rank(0, 0b1, 0b11),
            None,
            "one sender queue, two receivers"
        );
        assert_eq!(same_rank(2, 0b11, 0b11), None, "not a running sender queue");
        assert_eq!(pick(12345, 0b100), Some(2));
    }
}
