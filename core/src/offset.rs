//! Shape-log offsets: the `offset` query parameter and `electric-offset` header.
//!
//! Grammar (protocol.md §2): `-1` (before everything, `-1_0` too), `<tx>_<op>` with `op` a
//! decimal or `inf`. Snapshot chunks are virtual offsets `0_<i>`; `0_inf` ends the snapshot;
//! replicated changes are `<commit lsn>_<op>` with `op` stepping by 2 within a transaction.

use std::fmt;
use std::str::FromStr;

use crate::lsn::Lsn;

/// A position in a shape's log. Ordered lexicographically by `(tx, op)`, `inf` above every op,
/// and [`LogOffset::BEFORE_ALL`] (`-1`) below everything.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogOffset {
    /// `-1`: before the first entry (initial sync).
    BeforeAll,
    /// `<tx>_<op>`.
    At {
        /// The transaction part: `0` for snapshot chunks, else the commit LSN.
        tx: u64,
        /// The operation part.
        op: OpIndex,
    },
}

/// The `op` part of an offset.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum OpIndex {
    /// A finite operation index.
    Index(u64),
    /// `inf`: after every operation of this `tx`.
    Inf,
}

impl LogOffset {
    /// `-1`.
    pub const BEFORE_ALL: Self = Self::BeforeAll;
    /// `0_inf`: the end of the initial snapshot, before any replicated change.
    pub const SNAPSHOT_END: Self = Self::At {
        tx: 0,
        op: OpIndex::Inf,
    };

    /// `0_<i>`: the end of snapshot chunk `i`.
    pub const fn snapshot_chunk(i: u64) -> Self {
        Self::At {
            tx: 0,
            op: OpIndex::Index(i),
        }
    }

    /// `<commit_lsn>_<op>`: a replicated change.
    pub const fn change(commit_lsn: Lsn, op: u64) -> Self {
        Self::At {
            tx: commit_lsn.0,
            op: OpIndex::Index(op),
        }
    }

    /// The transaction part (`0` for `-1` and snapshot offsets).
    pub const fn tx(self) -> u64 {
        match self {
            Self::BeforeAll => 0,
            Self::At { tx, .. } => tx,
        }
    }

    /// Whether this offset lies within the initial snapshot (`-1`, `0_<i>` or `0_inf`).
    pub const fn is_snapshot(self) -> bool {
        self.tx() == 0
    }

    /// The snapshot chunk index of a `0_<i>` offset.
    pub const fn snapshot_chunk_index(self) -> Option<u64> {
        match self {
            Self::At {
                tx: 0,
                op: OpIndex::Index(i),
            } => Some(i),
            _ => None,
        }
    }
}

impl fmt::Display for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BeforeAll => f.write_str("-1"),
            Self::At {
                tx,
                op: OpIndex::Index(op),
            } => write!(f, "{tx}_{op}"),
            Self::At {
                tx,
                op: OpIndex::Inf,
            } => write!(f, "{tx}_inf"),
        }
    }
}

impl fmt::Debug for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The text is not an offset (`has invalid format` on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid offset {text:?}")]
pub struct ParseOffsetError {
    text: String,
}

impl FromStr for LogOffset {
    type Err = ParseOffsetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseOffsetError { text: s.to_owned() };
        if s == "-1" || s == "-1_0" {
            return Ok(Self::BeforeAll);
        }
        let (tx, op) = s.split_once('_').ok_or_else(err)?;
        let tx = parse_decimal(tx).ok_or_else(err)?;
        let op = if op == "inf" {
            OpIndex::Inf
        } else {
            OpIndex::Index(parse_decimal(op).ok_or_else(err)?)
        };
        Ok(Self::At { tx, op })
    }
}

/// A non-negative decimal integer with optional leading `+` and zeros; `None` above `u64::MAX`.
fn parse_decimal(text: &str) -> Option<u64> {
    let digits = text.strip_prefix('+').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The `offset` query parameter: a log offset or `now` (skip history).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestOffset {
    /// A position in the log.
    Log(LogOffset),
    /// `now`: answer at once with the current end of the log.
    Now,
}

impl FromStr for RequestOffset {
    type Err = ParseOffsetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "now" {
            return Ok(Self::Now);
        }
        s.parse().map(Self::Log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(s: &str) -> LogOffset {
        s.parse().expect("valid offset")
    }

    #[test]
    fn orders_before_all_then_snapshot_then_changes() {
        let ordered = [
            "-1",
            "0_0",
            "0_1",
            "0_inf",
            "1_0",
            "1_2",
            "1_inf",
            "24187768_0",
        ];
        for pair in ordered.windows(2) {
            assert!(off(pair[0]) < off(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn accepts_leading_zeros_and_plus_and_renders_canonically() {
        assert_eq!(off("0_02"), off("0_2"));
        assert_eq!(off("+12_+3").to_string(), "12_3");
        assert_eq!(off("007_inf").to_string(), "7_inf");
        assert_eq!(off("-1_0"), LogOffset::BEFORE_ALL);
        assert_eq!(LogOffset::BEFORE_ALL.to_string(), "-1");
    }

    #[test]
    fn rejects_malformed_offsets() {
        for text in [
            "",
            "-2",
            "-1_1",
            "1",
            "_1",
            "1_",
            "a_1",
            "1_b",
            "1_2_3",
            "1__2",
            " 1_2",
            "1_-2",
            "18446744073709551616_0",
            "0_Inf",
            "++1_0",
            "1_2 ",
        ] {
            assert!(
                text.parse::<LogOffset>().is_err(),
                "{text:?} should be rejected"
            );
        }
    }

    #[test]
    fn accepts_u64_max_transaction() {
        assert_eq!(off("18446744073709551615_0").tx(), u64::MAX);
    }

    #[test]
    fn request_offset_now_is_distinct_from_log_offsets() {
        assert_eq!("now".parse::<RequestOffset>(), Ok(RequestOffset::Now));
        assert_eq!("-1".parse(), Ok(RequestOffset::Log(LogOffset::BEFORE_ALL)));
    }

    #[test]
    fn snapshot_helpers_classify_offsets() {
        assert_eq!(off("0_3").snapshot_chunk_index(), Some(3));
        assert_eq!(off("0_inf").snapshot_chunk_index(), None);
        assert!(off("0_inf").is_snapshot());
        assert!(!off("5_0").is_snapshot());
        assert_eq!(LogOffset::change(Lsn(42), 4).to_string(), "42_4");
    }
}
