//! The on-disk record: framing, encoding, decoding and the checksum that guards it.
//!
//! Every record is laid out as follows, all integers little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | `length`: u32, the bytes after this 8-byte prefix (16 + payload length) |
//! | 4 | 4 | `crc`: u32, CRC-32 (IEEE, `crc32fast`) of those `length` bytes |
//! | 8 | 8 | `seq`: u64, the record's sequence number |
//! | 16 | 8 | `appended_at`: i64, microseconds since the Unix epoch (negative before it) |
//! | 24 | `length - 16` | the payload |
//!
//! The checksum covers everything after it; the length is not covered directly, but a damaged
//! length frames a different range of bytes, which then fails the checksum or runs past the
//! end of the file.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes of `length` + `crc` before the checksummed part.
pub(crate) const PREFIX_LEN: usize = 8;
/// Bytes of `seq` + `appended_at` at the start of the checksummed part.
const META_LEN: usize = 16;
/// Bytes of framing around every payload.
pub(crate) const HEADER_LEN: usize = PREFIX_LEN + META_LEN;
/// The largest payload a record can frame (the `length` field is a u32).
pub(crate) const MAX_PAYLOAD_LEN: u64 = u32::MAX as u64 - META_LEN as u64;

/// The bytes a record with a payload of `payload_len` bytes takes on disk.
pub(crate) fn encoded_len(payload_len: usize) -> u64 {
    HEADER_LEN as u64 + payload_len as u64
}

/// Appends the encoding of one record to `buf`. The caller has checked that the payload is at
/// most [`MAX_PAYLOAD_LEN`] bytes.
pub(crate) fn encode_into(buf: &mut Vec<u8>, seq: u64, appended_micros: i64, payload: &[u8]) {
    debug_assert!(payload.len() as u64 <= MAX_PAYLOAD_LEN);
    let length = u32::try_from(META_LEN + payload.len()).unwrap_or(u32::MAX);
    let start = buf.len();
    buf.reserve(HEADER_LEN + payload.len());
    buf.extend_from_slice(&length.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(&appended_micros.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[start + PREFIX_LEN..]);
    buf[start + 4..start + PREFIX_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// One record read back, borrowing its payload from the buffer it was decoded from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodedRecord<'a> {
    /// The record's sequence number.
    pub(crate) seq: u64,
    /// When it was appended, in Unix microseconds.
    pub(crate) appended_micros: i64,
    /// Its payload.
    pub(crate) payload: &'a [u8],
    /// The bytes the whole record takes, framing included.
    pub(crate) encoded_len: usize,
}

/// Why the bytes at some offset are not a valid record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Fewer than the 8 bytes of `length` and `crc` remain.
    ShortPrefix {
        /// Bytes remaining.
        available: usize,
    },
    /// The `length` field is smaller than the fixed fields it must cover.
    BadLength {
        /// The length read.
        length: u32,
    },
    /// The record's `length` runs past the end of the buffer.
    ShortBody {
        /// The bytes the record claims, framing included.
        needed: u64,
        /// Bytes remaining.
        available: usize,
    },
    /// The checksum does not match the bytes it covers.
    BadChecksum {
        /// The checksum stored in the record.
        stored: u32,
        /// The checksum of the bytes as read.
        computed: u32,
        /// The bytes the record claims, framing included.
        encoded_len: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShortPrefix { available } => {
                write!(
                    f,
                    "record header cut short ({available} of {PREFIX_LEN} bytes)"
                )
            }
            Self::BadLength { length } => {
                write!(
                    f,
                    "record length {length} is below the {META_LEN} fixed bytes"
                )
            }
            Self::ShortBody { needed, available } => {
                write!(
                    f,
                    "record of {needed} bytes cut short ({available} bytes remain)"
                )
            }
            Self::BadChecksum {
                stored, computed, ..
            } => write!(
                f,
                "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
        }
    }
}

/// Decodes the record at the start of `buf`.
pub(crate) fn decode(buf: &[u8]) -> Result<DecodedRecord<'_>, DecodeError> {
    let Some((prefix, rest)) = buf.split_first_chunk::<PREFIX_LEN>() else {
        return Err(DecodeError::ShortPrefix {
            available: buf.len(),
        });
    };
    let length = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    let stored = u32::from_le_bytes([prefix[4], prefix[5], prefix[6], prefix[7]]);
    if (length as usize) < META_LEN {
        return Err(DecodeError::BadLength { length });
    }
    let Some(body) = rest.get(..length as usize) else {
        return Err(DecodeError::ShortBody {
            needed: PREFIX_LEN as u64 + u64::from(length),
            available: buf.len(),
        });
    };
    let encoded_len = PREFIX_LEN + length as usize;
    let computed = crc32fast::hash(body);
    if computed != stored {
        return Err(DecodeError::BadChecksum {
            stored,
            computed,
            encoded_len,
        });
    }
    let (seq, rest) = split_u64(body);
    let (micros, payload) = split_u64(rest);
    Ok(DecodedRecord {
        seq,
        appended_micros: i64::from_le_bytes(micros.to_le_bytes()),
        payload,
        encoded_len,
    })
}

/// Splits a little-endian u64 off the front of `bytes`, which holds at least 8 bytes.
fn split_u64(bytes: &[u8]) -> (u64, &[u8]) {
    match bytes.split_first_chunk::<8>() {
        Some((head, rest)) => (u64::from_le_bytes(*head), rest),
        None => (0, bytes),
    }
}

/// `time` as microseconds since the Unix epoch (negative before it, saturating far out).
pub(crate) fn unix_micros(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|micros| -micros)
            .unwrap_or(i64::MIN),
    }
}

/// The time `micros` microseconds after (or before, if negative) the Unix epoch.
pub(crate) fn system_time(micros: i64) -> SystemTime {
    let offset = Duration::from_micros(micros.unsigned_abs());
    let time = if micros >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    time.unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(seq: u64, micros: i64, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_into(&mut buf, seq, micros, payload);
        buf
    }

    #[test]
    fn round_trips_records_back_to_back() {
        let mut buf = Vec::new();
        encode_into(&mut buf, 1, 1_700_000_000_000_000, b"first");
        encode_into(&mut buf, 2, -5, b"");
        encode_into(&mut buf, u64::MAX, i64::MIN, &[0xff; 300]);
        assert_eq!(
            buf.len() as u64,
            encoded_len(5) + encoded_len(0) + encoded_len(300)
        );

        let first = decode(&buf).unwrap();
        assert_eq!(
            (first.seq, first.appended_micros, first.payload),
            (1, 1_700_000_000_000_000, &b"first"[..])
        );
        let rest = &buf[first.encoded_len..];
        let second = decode(rest).unwrap();
        assert_eq!((second.seq, second.appended_micros), (2, -5));
        assert!(second.payload.is_empty());
        let rest = &rest[second.encoded_len..];
        let third = decode(rest).unwrap();
        assert_eq!((third.seq, third.appended_micros), (u64::MAX, i64::MIN));
        assert_eq!(third.payload, &[0xff; 300][..]);
        assert_eq!(third.encoded_len, rest.len());
    }

    #[test]
    fn layout_is_length_crc_seq_time_payload_little_endian() {
        let buf = encode(0x0102_0304_0506_0708, 42, b"abc");
        assert_eq!(&buf[0..4], &19u32.to_le_bytes());
        assert_eq!(&buf[4..8], &crc32fast::hash(&buf[8..]).to_le_bytes());
        assert_eq!(&buf[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&buf[16..24], &42i64.to_le_bytes());
        assert_eq!(&buf[24..], b"abc");
    }

    #[test]
    fn every_single_bit_flip_is_caught() {
        let buf = encode(7, 1_234_567, b"a mirror copy");
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&damaged).is_err(),
                "flipping bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn a_flipped_payload_bit_is_a_checksum_mismatch() {
        let mut buf = encode(7, 0, b"payload");
        let last = buf.len() - 1;
        buf[last] ^= 0x10;
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::BadChecksum { encoded_len, .. }) if encoded_len == buf.len()
        ));
    }

    #[test]
    fn every_cut_is_reported_as_short() {
        let buf = encode(3, 0, b"twelve bytes");
        for cut in 0..buf.len() {
            let err = decode(&buf[..cut]).unwrap_err();
            if cut < PREFIX_LEN {
                assert_eq!(err, DecodeError::ShortPrefix { available: cut });
            } else {
                assert_eq!(
                    err,
                    DecodeError::ShortBody {
                        needed: buf.len() as u64,
                        available: cut
                    }
                );
            }
        }
    }

    #[test]
    fn zeroed_bytes_are_a_bad_length() {
        assert_eq!(decode(&[0; 64]), Err(DecodeError::BadLength { length: 0 }));
    }

    #[test]
    fn times_convert_both_ways() {
        for micros in [0, 1, -1, 1_700_000_000_123_456, -86_400_000_000] {
            assert_eq!(unix_micros(system_time(micros)), micros);
        }
        let now = SystemTime::now();
        let back = system_time(unix_micros(now));
        assert!(now.duration_since(back).unwrap() < Duration::from_micros(1));
    }
}
