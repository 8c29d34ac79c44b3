//! Write-ahead log positions.

use std::fmt;
use std::str::FromStr;

/// A position in Postgres's write-ahead log (`pg_lsn`), displayed as Postgres does: `16/B374D848`.
///
/// On the HTTP wire an LSN is always a decimal string (`"24187768"`); use [`Lsn::as_u64`] there.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `0/0`: before any WAL. `START_REPLICATION … 0/0` resumes at the slot's `confirmed_flush_lsn`.
    pub const ZERO: Self = Self(0);

    /// The raw 64-bit value, as used in offsets and decimal wire fields.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The position one byte later. Standby status confirms `commit_lsn + 1` (the +1 rule).
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text was not an LSN in Postgres's `X/Y` hexadecimal notation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {text:?}: expected Postgres's X/Y hexadecimal notation")]
pub struct ParseLsnError {
    text: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError { text: s.to_owned() };
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hex = |part: &str| {
            let ok = !part.is_empty() && part.len() <= 8;
            ok.then(|| u32::from_str_radix(part, 16).ok()).flatten()
        };
        let (hi, lo) = (hex(hi).ok_or_else(err)?, hex(lo).ok_or_else(err)?);
        Ok(Self((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_like_postgres() {
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
    }

    #[test]
    fn parses_postgres_notation_and_round_trips() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = text.parse().expect("valid");
            assert_eq!(lsn.to_string(), text);
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for text in ["", "0", "/0", "0/", "g/0", "123456789/0", "0/0/0"] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} should be rejected");
        }
    }
}
