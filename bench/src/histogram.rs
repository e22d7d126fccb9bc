// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A latency histogram: log-linear buckets (32 per power of two, so a value is known to
//! within about 3 %), exact minimum, maximum and mean, and percentiles.

use serde::Serialize;

const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;

/// Recorded values, in nanoseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
    sum: u128,
}

/// One row of [`Histogram::octaves`]: values in `[from_ns, to_ns)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Lower bound (inclusive).
    pub from_ns: u64,
    /// Upper bound (exclusive).
    pub to_ns: u64,
    /// Values in the range.
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; Self::index(u64::MAX) + 1],
            total: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }

    /// Records one value.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.counts[Self::index(ns)] += 1;
        self.total += 1;
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
        self.sum += u128::from(ns);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Smallest value (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// Largest value.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at or below which a fraction `q` (0..=1) of the values lie: the upper
    /// bound of the bucket holding that rank, never above the maximum. Monotonic in `q`.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    /// Counts per power-of-two range, non-empty ranges only.
    pub fn octaves(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = Vec::new();
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let lo = Self::lower(i);
            let from: u64 = if lo == 0 {
                0
            } else {
                1 << (63 - lo.leading_zeros())
            };
            let to = if from == 0 { 1 } else { from.saturating_mul(2) };
            match rows.last_mut() {
                Some(r) if r.from_ns == from => r.count += c,
                _ => rows.push(Row {
                    from_ns: from,
                    to_ns: to,
                    count: c,
                }),
            }
        }
        rows
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let e = 63 - v.leading_zeros();
        let shift = e - SUB_BITS;
        ((e - SUB_BITS + 1) as usize) * SUB as usize + ((v >> shift) & (SUB - 1)) as usize
    }

    /// Smallest value of bucket `i`.
    fn lower(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let (g, m) = (i / SUB, i % SUB);
        let e = (g - 1) as u32 + SUB_BITS;
        (1 << e) + (m << (e - SUB_BITS))
    }

    /// Largest value of bucket `i`.
    fn upper(i: usize) -> u64 {
        if i >= Self::index(u64::MAX) {
            return u64::MAX;
        }
        Self::lower(i + 1) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        for v in [
            0,
            1,
            31,
            32,
            33,
            63,
            64,
            65,
            1000,
            123_456,
            1 << 40,
            u64::MAX,
        ] {
            let i = Histogram::index(v);
            assert!(Histogram::lower(i) <= v && v <= Histogram::upper(i), "{v}");
            if v > 64 && v < 1 << 62 {
                let width = Histogram::upper(i) - Histogram::lower(i) + 1;
                assert!(width * 32 <= v.next_power_of_two(), "{v}: width {width}");
            }
        }
        for i in 0..Histogram::index(u64::MAX) {
            assert_eq!(Histogram::upper(i) + 1, Histogram::lower(i + 1));
        }
    }

    #[test]
    fn quantiles_are_ordered_and_close() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v * 100);
        }
        let (p50, p99, p999, max) = (
            h.quantile(0.5),
            h.quantile(0.99),
            h.quantile(0.999),
            h.max(),
        );
        assert!(p50 <= p99 && p99 <= p999 && p999 <= max);
        assert!((p50 as f64 - 500_000.0).abs() < 500_000.0 * 0.04, "{p50}");
        assert!((p99 as f64 - 990_000.0).abs() < 990_000.0 * 0.04, "{p99}");
        assert_eq!(max, 1_000_000);
        assert_eq!(h.min(), 100);
        assert_eq!(h.octaves().iter().map(|r| r.count).sum::<u64>(), 10_000);
    }

    #[test]
    fn single_value_and_empty() {
        let mut h = Histogram::new();
        assert_eq!((h.quantile(0.5), h.max(), h.min()), (0, 0, 0));
        h.record(7_777);
        assert_eq!((h.quantile(0.5), h.quantile(1.0)), (7_777, 7_777));
        assert_eq!(
            h.octaves(),
            vec![Row {
                from_ns: 4096,
                to_ns: 8192,
                count: 1
            }]
        );
    }
}
