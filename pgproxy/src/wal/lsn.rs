//! Positions in the write-ahead log.

use std::fmt;
use std::str::FromStr;

/// A log sequence number: a byte position in the write-ahead log, shown as PostgreSQL shows it
/// (`16/B374D848`: the high and low 32 bits in upper-case hexadecimal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a text is no LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is no LSN (expected two hexadecimal numbers of up to 8 digits, as in 16/B374D848)")]
pub struct LsnParseError(pub String);

impl FromStr for Lsn {
    type Err = LsnParseError;

    /// Parses `high/low` (hexadecimal, either case, leading zeros allowed).
    fn from_str(text: &str) -> Result<Lsn, LsnParseError> {
        let invalid = || LsnParseError(text.to_owned());
        let (high, low) = text.split_once('/').ok_or_else(invalid)?;
        let half = |part: &str| {
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            u64::from_str_radix(part, 16).map_err(|_| invalid())
        };
        Ok(Lsn((half(high)? << 32) | half(low)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_and_show_as_postgresql_does() {
        for (text, value) in [
            ("0/0", 0),
            ("0/16B6C50", 0x016B_6C50),
            ("16/B374D848", 0x16_B374_D848),
            ("FFFFFFFF/FFFFFFFF", u64::MAX),
        ] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn, Lsn(value));
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("0/0016b6c50".parse::<Lsn>().ok(), None);
        assert_eq!("00/016b6c50".parse::<Lsn>().unwrap(), Lsn(0x016B_6C50));
        for bad in [
            "",
            "/",
            "1/",
            "/1",
            "1/2/3",
            "g/1",
            "123456789/0",
            "-1/0",
            "+1/0",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?}");
        }
    }
}
