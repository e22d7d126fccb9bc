// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! The Internet checksum (RFC 1071), summed over pieces of any length: a frame's
//! bytes lie in several guest buffers, and a piece may end on an odd byte.

/// A running ones' complement sum of big-endian 16-bit words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checksum {
    /// Carries are kept in the upper bits and folded at the end: 2^48 bytes of
    /// input before it could overflow.
    acc: u64,
    /// The bytes so far had an odd length: the next piece starts mid-word.
    odd: bool,
}

impl Checksum {
    /// An empty sum.
    pub const fn new() -> Self {
        Checksum { acc: 0, odd: false }
    }

    /// Adds `bytes`, which follow the bytes added so far.
    pub fn add(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        if self.odd {
            if let Some((&first, tail)) = rest.split_first() {
                self.acc += u64::from(first);
                self.odd = false;
                rest = tail;
            }
        }
        let mut words = rest.chunks_exact(2);
        let mut sum = 0u64;
        for w in &mut words {
            sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
        }
        self.acc += sum;
        if let [last] = words.remainder() {
            self.acc += u64::from(*last) << 8;
            self.odd = true;
        }
    }

    /// Adds one 16-bit word at an even position (a pseudo-header field).
    pub fn add_u16(&mut self, word: u16) {
        self.acc += u64::from(word);
    }

    /// Adds a 32-bit value as two words (addresses, lengths).
    pub fn add_u32(&mut self, v: u32) {
        self.acc += u64::from(v >> 16) + u64::from(v & 0xffff);
    }

    /// Adds another sum of bytes that follow these at an even position.
    pub fn add_sum(&mut self, other: Checksum) {
        self.acc += other.acc;
    }

    /// The sum folded to 16 bits (not complemented).
    pub fn fold(self) -> u16 {
        let mut s = self.acc;
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        // The loop leaves at most 0xffff.
        s as u16
    }

    /// The checksum field's value: the folded sum, complemented.
    pub fn finish(self) -> u16 {
        !self.fold()
    }
}

/// The checksum of `bytes` alone.
pub fn of(bytes: &[u8]) -> u16 {
    let mut c = Checksum::new();
    c.add(bytes);
    c.finish()
}
