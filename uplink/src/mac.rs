// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! [`MacAddr`]: an Ethernet MAC address, parsed from and printed as `aa:bb:cc:dd:ee:ff`.
//!
//! The one MAC type of the workspace (config, the MAC table, the traffic generators,
//! the test harnesses). It lives here because `vpmd-uplink` is the lowest vpmd crate:
//! `vpmd` and `vpmd-bench` depend on it, `vpmd-hostile` through `vpmd-bench`. The hot
//! path keeps plain `[u8; 6]` (the bytes as they sit in a frame); `MacAddr(pub [u8; 6])`
//! converts both ways for free.

use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address, in wire order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The six bytes, in wire order.
    #[inline]
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// `ff:ff:ff:ff:ff:ff`.
    #[inline]
    pub fn is_broadcast(self) -> bool {
        self == Self::BROADCAST
    }

    /// The group bit is set (broadcast is multicast too).
    #[inline]
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 != 0
    }

    /// The group bit is clear.
    #[inline]
    pub const fn is_unicast(self) -> bool {
        !self.is_multicast()
    }

    /// The six bytes as an integer (big-endian, in the low 48 bits): one compare
    /// instead of six.
    #[inline]
    pub const fn to_u64(self) -> u64 {
        let [a, b, c, d, e, f] = self.0;
        u64::from_be_bytes([0, 0, a, b, c, d, e, f])
    }

    /// All six bytes zero.
    #[inline]
    pub fn is_zero(self) -> bool {
        self.0 == [0; 6]
    }
}

impl From<[u8; 6]> for MacAddr {
    #[inline]
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

impl From<MacAddr> for [u8; 6] {
    #[inline]
    fn from(m: MacAddr) -> Self {
        m.0
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MacParseError {
    /// Not six colon-separated parts.
    #[error("{0:?} is not a MAC address (want six hex bytes like 52:54:00:00:00:01)")]
    Shape(String),
    /// A part is not two hex digits.
    #[error("{text:?} is not a MAC address (bad byte {byte:?})")]
    Byte {
        /// The whole text.
        text: String,
        /// The bad part.
        byte: String,
    },
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, MacParseError> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(MacParseError::Shape(s.to_string()));
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16)
                .ok()
                .filter(|_| p.len() == 2)
                .ok_or_else(|| MacParseError::Byte {
                    text: s.to_string(),
                    byte: p.to_string(),
                })?;
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        let m: MacAddr = "52:54:00:ab:01:ff".parse().unwrap();
        assert_eq!(m, MacAddr([0x52, 0x54, 0, 0xab, 1, 0xff]));
        assert_eq!(m.to_string(), "52:54:00:ab:01:ff");
        assert_eq!("52:54:00:AB:01:FF".parse::<MacAddr>(), Ok(m));
    }

    #[test]
    fn refuses_what_is_not_six_hex_bytes() {
        for bad in [
            "",
            "52:54:00:00:00",
            "52:54:00:00:00:01:02",
            "5:54:00:00:00:01",
            "zz:54:00:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?}");
        }
        assert!("52:54:00"
            .parse::<MacAddr>()
            .unwrap_err()
            .to_string()
            .contains("is not a MAC address"));
    }

    #[test]
    fn group_bit_and_broadcast() {
        assert!(MacAddr::BROADCAST.is_broadcast() && MacAddr::BROADCAST.is_multicast());
        let mcast = MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(mcast.is_multicast() && !mcast.is_broadcast() && !mcast.is_unicast());
        let ucast = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
        assert!(ucast.is_unicast() && !ucast.is_multicast());
        assert!(MacAddr::default().is_zero());
        assert_eq!(<[u8; 6]>::from(ucast), ucast.octets());
        assert_eq!(MacAddr([0, 0, 0, 0, 1, 2]).to_u64(), 0x0102);
    }
}
