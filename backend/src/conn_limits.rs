// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! What one frontend connection may make vpmd hold or do: memory regions, mapped
//! bytes, and messages per second.
//!
//! The relay ([`crate::relay`]) keeps a [`RegionBook`] of the memory table as the
//! frontend describes it (SET_MEM_TABLE replaces it, ADD_MEM_REG and REM_MEM_REG
//! edit it) and refuses a message that would take it past [`ConnLimits`]: more
//! regions than vpmd translates ([`crate::guest_mem::MAX_REGIONS`]), or more bytes
//! than the port's cap (a sparse 1 TiB memfd costs the frontend nothing and vpmd a
//! terabyte of address space). Every region holds one fd, so the region cap is the
//! fd cap too: at most `MAX_REGIONS` memory fds, one kick/call/err fd per queue, and
//! the fds of the one message in flight (at most 8) per connection.
//!
//! A [`MessageRate`] token bucket spaces out a flood: a frontend past its budget
//! is simply read more slowly (its own relay thread sleeps), so the work it causes
//! (mapping, ring resets, revalidation in the polling threads) stays bounded, and
//! nothing else waits for it.

use std::time::{Duration, Instant};

use crate::guest_mem::MAX_REGIONS;

/// Per-connection limits, set per port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most guest memory one connection may map, in bytes.
    pub max_memory: u64,
    /// Messages per second a connection may send in the long run.
    pub messages_per_sec: u32,
    /// Messages it may send at once before being slowed down.
    pub message_burst: u32,
}

impl ConnLimits {
    /// 64 GiB of guest memory; 1000 messages per second, 4096 at once (QEMU sends
    /// about 60 to start a single-queue device, a few hundred for many queues).
    pub const DEFAULT: ConnLimits = ConnLimits {
        max_memory: 64 << 30,
        messages_per_sec: 1000,
        message_burst: 4096,
    };
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A memory-table change refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Too many regions.
    #[error("{count} memory regions: more than the {MAX_REGIONS} vpmd accepts")]
    Regions {
        /// Regions the table would have.
        count: usize,
    },
    /// Too much memory.
    #[error("{bytes} bytes of guest memory: more than this port's max_memory_mib ({max} bytes)")]
    Memory {
        /// Bytes the table would map.
        bytes: u64,
        /// The cap.
        max: u64,
    },
}

/// A memory region as the frontend describes it: guest address, size, its
/// address in the frontend, and the offset into its file.
pub type Region = [u64; 4];

/// The memory table as the frontend has described it, each region with the number
/// of times it was added.
///
/// QEMU 7.2 sends a multi-queue port's regions once per queue pair: each pair is a
/// vhost device of its own that keeps its own idea of what the backend holds, and
/// all of them add (and remove) the same regions on the one connection. The library
/// refuses a region that overlaps one it has, which would end the connection, so an
/// exact repeat is counted here and not passed on, and only the last removal of a
/// region is (as DPDK's vhost library tolerates the repeats).
#[derive(Debug, Default)]
pub struct RegionBook {
    regions: Vec<(Region, u32)>,
}

impl RegionBook {
    fn check<'a>(
        regions: impl Iterator<Item = &'a Region>,
        limits: &ConnLimits,
    ) -> Result<(), LimitError> {
        let (mut count, mut bytes) = (0usize, 0u64);
        for r in regions {
            count += 1;
            bytes = bytes.saturating_add(r[1]);
        }
        if count > MAX_REGIONS {
            return Err(LimitError::Regions { count });
        }
        if bytes > limits.max_memory {
            return Err(LimitError::Memory {
                bytes,
                max: limits.max_memory,
            });
        }
        Ok(())
    }

    /// SET_MEM_TABLE: the table becomes `regions`, if within `limits`.
    pub fn replace(&mut self, regions: Vec<Region>, limits: &ConnLimits) -> Result<(), LimitError> {
        Self::check(regions.iter(), limits)?;
        self.regions = regions.into_iter().map(|r| (r, 1)).collect();
        Ok(())
    }

    /// ADD_MEM_REG, if within `limits`. `Ok(false)`: an exact repeat of a region
    /// the table has, counted and not to be passed on.
    pub fn add(&mut self, region: Region, limits: &ConnLimits) -> Result<bool, LimitError> {
        if let Some(e) = self.regions.iter_mut().find(|(r, _)| *r == region) {
            e.1 = e.1.saturating_add(1);
            return Ok(false);
        }
        Self::check(
            self.regions
                .iter()
                .map(|(r, _)| r)
                .chain(std::iter::once(&region)),
            limits,
        )?;
        self.regions.push((region, 1));
        Ok(true)
    }

    /// REM_MEM_REG (compared by guest address and size, as the library does):
    /// whether to pass it on: the region's last removal, or a region the book does
    /// not know (the library refuses it).
    pub fn remove(&mut self, gpa: u64, size: u64) -> bool {
        let Some(i) = self
            .regions
            .iter()
            .position(|(r, _)| (r[0], r[1]) == (gpa, size))
        else {
            return true;
        };
        self.regions[i].1 -= 1;
        if self.regions[i].1 == 0 {
            self.regions.swap_remove(i);
            return true;
        }
        false
    }

    /// Regions now.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

/// A token bucket of messages.
#[derive(Debug)]
pub struct MessageRate {
    per_sec: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl MessageRate {
    /// A full bucket.
    pub fn new(limits: &ConnLimits) -> Self {
        MessageRate {
            per_sec: f64::from(limits.messages_per_sec.max(1)),
            burst: f64::from(limits.message_burst.max(1)),
            tokens: f64::from(limits.message_burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes a token for one message at `now`; returns how long to wait first
    /// (zero while within budget).
    pub fn take_at(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_sec)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_and_bytes_are_capped() {
        let limits = ConnLimits {
            max_memory: 1 << 30,
            ..ConnLimits::DEFAULT
        };
        let r = |gpa: u64, size: u64| [gpa, size, 0x7f00_0000_0000 + gpa, 0];
        let mut book = RegionBook::default();
        book.replace(vec![r(0, 1 << 29), r(1 << 29, 1 << 29)], &limits)
            .unwrap();
        assert!(matches!(
            book.add(r(1 << 30, 4096), &limits),
            Err(LimitError::Memory { .. })
        ));
        assert_eq!(book.len(), 2, "a refused region is not kept");
        assert!(book.remove(1 << 29, 1 << 29));
        assert_eq!(book.add(r(1 << 30, 4096), &limits), Ok(true));
        let mut book = RegionBook::default();
        let big = ConnLimits {
            max_memory: u64::MAX,
            ..ConnLimits::DEFAULT
        };
        for i in 0..MAX_REGIONS as u64 {
            book.add(r(i << 20, 1 << 20), &big).unwrap();
        }
        assert_eq!(
            book.add(r(1 << 40, 1 << 20), &big),
            Err(LimitError::Regions {
                count: MAX_REGIONS + 1
            })
        );
        assert!(book
            .replace(vec![r(0, u64::MAX), r(1, u64::MAX)], &limits)
            .is_err());
    }

    #[test]
    fn repeated_regions_are_counted_not_passed_on() {
        let limits = ConnLimits::DEFAULT;
        let region = [1 << 32, 1 << 28, 0x7f00_0000_0000, 0];
        let mut book = RegionBook::default();
        assert_eq!(book.add(region, &limits), Ok(true), "the first: passed on");
        assert_eq!(
            book.add(region, &limits),
            Ok(false),
            "a repeat (queue pair 1)"
        );
        let mut moved = region;
        moved[3] = 4096;
        assert_eq!(
            book.add(moved, &limits),
            Ok(true),
            "not a repeat: the library decides"
        );
        assert_eq!(book.len(), 2);
        assert!(!book.remove(region[0], region[1]), "still added once more");
        assert!(
            book.remove(region[0], region[1]),
            "the last removal: passed on"
        );
        assert!(book.remove(region[0], region[1]), "the other copy");
        assert!(
            book.remove(region[0], region[1]),
            "unknown: passed on, refused there"
        );
        assert!(book.is_empty());
    }

    #[test]
    fn a_flood_is_spaced_out_after_the_burst() {
        let limits = ConnLimits {
            messages_per_sec: 100,
            message_burst: 10,
            ..ConnLimits::DEFAULT
        };
        let mut rate = MessageRate::new(&limits);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(rate.take_at(t0), Duration::ZERO);
        }
        let wait = rate.take_at(t0);
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(10));
        // After a second the bucket is full again.
        assert_eq!(rate.take_at(t0 + Duration::from_secs(1)), Duration::ZERO);
    }
}
