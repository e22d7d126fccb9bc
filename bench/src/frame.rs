//! Self-checking test frames: Ethernet, a sequence number, the length and a checksum.
//!
//! Layout: `dst[6] src[6] ethertype=0x88b5[2] seq[8] len[2] fnv1a32[4] payload...`, all
//! integers little-endian. The payload is a pattern derived from `seq`, and the checksum
//! covers seq, len and payload, so reordering, truncation and corruption are all told apart.

/// IEEE 802 "local experimental" ethertype.
pub const ETHERTYPE: u16 = 0x88b5;
/// Smallest test frame: the headers above with no payload.
pub const MIN_LEN: usize = 28;

const SEQ: usize = 14;
const LEN: usize = 22;
const SUM: usize = 24;

/// What a valid test frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Sequence number.
    pub seq: u64,
    /// Frame length written by the sender.
    pub len: usize,
}

/// Why a frame is not an intact test frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than [`MIN_LEN`].
    #[error("frame of {0} bytes is too short for a test frame")]
    TooShort(usize),
    /// Not our ethertype.
    #[error("ethertype {0:#06x} is not a test frame")]
    NotProbe(u16),
    /// Length field and actual length differ.
    #[error("frame is {actual} bytes, sender wrote {sent}")]
    Length {
        /// Bytes received.
        actual: usize,
        /// Bytes sent.
        sent: usize,
    },
    /// Checksum mismatch.
    #[error("checksum mismatch in frame seq {0}")]
    Checksum(u64),
}

/// Writes a `len`-byte test frame (at least [`MIN_LEN`]) into `buf`, reusing its capacity.
pub fn build(buf: &mut Vec<u8>, dst: [u8; 6], src: [u8; 6], seq: u64, len: usize) {
    let len = len.clamp(MIN_LEN, usize::from(u16::MAX));
    buf.clear();
    buf.extend_from_slice(&dst);
    buf.extend_from_slice(&src);
    buf.extend_from_slice(&ETHERTYPE.to_be_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&(len as u16).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    let mut x = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    buf.extend((MIN_LEN..len).map(|_| {
        // xorshift64: cheap, and differs for every seq.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u8
    }));
    let sum = checksum(buf);
    buf[SUM..SUM + 4].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a received frame and returns what it carries.
pub fn check(frame: &[u8]) -> Result<Probe, FrameError> {
    if frame.len() < MIN_LEN {
        return Err(FrameError::TooShort(frame.len()));
    }
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    if ethertype != ETHERTYPE {
        return Err(FrameError::NotProbe(ethertype));
    }
    let seq = u64::from_le_bytes(frame[SEQ..SEQ + 8].try_into().unwrap());
    let sent = usize::from(u16::from_le_bytes([frame[LEN], frame[LEN + 1]]));
    if sent != frame.len() {
        return Err(FrameError::Length {
            actual: frame.len(),
            sent,
        });
    }
    let sum = u32::from_le_bytes(frame[SUM..SUM + 4].try_into().unwrap());
    if sum != checksum(frame) {
        return Err(FrameError::Checksum(seq));
    }
    Ok(Probe { seq, len: sent })
}

/// FNV-1a over seq, len and payload (everything after the ethertype except the sum).
fn checksum(frame: &[u8]) -> u32 {
    frame[SEQ..SUM]
        .iter()
        .chain(&frame[MIN_LEN..])
        .fold(0x811c_9dc5u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    const B: [u8; 6] = [0x52, 0x54, 0, 0, 0, 2];

    #[test]
    fn round_trips_every_size() {
        let mut buf = Vec::new();
        for len in [28, 60, 61, 1514, 9014] {
            build(&mut buf, B, A, len as u64 * 3, len);
            assert_eq!(buf.len(), len);
            assert_eq!(&buf[..6], &B);
            assert_eq!(
                check(&buf),
                Ok(Probe {
                    seq: len as u64 * 3,
                    len
                })
            );
        }
    }

    #[test]
    fn detects_damage() {
        let mut buf = Vec::new();
        build(&mut buf, B, A, 7, 100);
        let mut bad = buf.clone();
        bad[80] ^= 1;
        assert_eq!(check(&bad), Err(FrameError::Checksum(7)));
        assert_eq!(
            check(&buf[..99]),
            Err(FrameError::Length {
                actual: 99,
                sent: 100
            })
        );
        bad = buf.clone();
        bad[12] = 0x08;
        assert!(matches!(check(&bad), Err(FrameError::NotProbe(_))));
        assert_eq!(check(&buf[..10]), Err(FrameError::TooShort(10)));
    }
}
