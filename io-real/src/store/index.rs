//! The log index file (`log.idx`): one fixed-size record per entry of `log.json`, so recovery
//! and seeks never parse JSON.
//!
//! Record layout (little-endian, [`RECORD_LEN`] bytes):
//!
//! | bytes  | field                                                          |
//! |--------|----------------------------------------------------------------|
//! | 0..8   | offset `tx`                                                    |
//! | 8..16  | offset `op` (0 when `inf`)                                     |
//! | 16..24 | position of the entry's JSON in `log.json`                     |
//! | 24..28 | length of the JSON (the `,` that follows it is not counted)    |
//! | 28..32 | flags: bit 0 a chunk closes after this entry, bit 1 `op = inf` |
//! | 32..40 | FNV-1a 64 of bytes 0..32                                       |
//!
//! The checksum tells a torn record (zeros or half-written sectors after a crash) from a real
//! one; an all-zero record never checks out.

use ampere_core::offset::{LogOffset, OpIndex};

/// Bytes per index record.
pub(super) const RECORD_LEN: usize = 40;

const FLAG_CHUNK_END: u32 = 1;
const FLAG_OP_INF: u32 = 2;
const FLAGS_KNOWN: u32 = FLAG_CHUNK_END | FLAG_OP_INF;

/// One entry of a shape's replicated log, as the index names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct IndexRecord {
    /// The entry's offset (always above `0_inf`).
    pub(super) offset: LogOffset,
    /// Where its JSON starts in `log.json`.
    pub(super) pos: u64,
    /// Length of its JSON, without the trailing `,`.
    pub(super) len: u32,
    /// Whether a chunk closes after it.
    pub(super) chunk_end: bool,
}

impl IndexRecord {
    /// The data position just past this entry's trailing `,`: where the next entry starts.
    pub(super) fn end(&self) -> u64 {
        self.pos + u64::from(self.len) + 1
    }

    /// The position just past this entry's JSON (before its `,`): where a read ending here stops.
    pub(super) fn json_end(&self) -> u64 {
        self.pos + u64::from(self.len)
    }

    pub(super) fn encode(&self) -> [u8; RECORD_LEN] {
        let (tx, op, mut flags) = match self.offset {
            LogOffset::At {
                tx,
                op: OpIndex::Index(op),
            } => (tx, op, 0),
            LogOffset::At {
                tx,
                op: OpIndex::Inf,
            } => (tx, 0, FLAG_OP_INF),
            // `LogState::append` only accepts offsets above `0_inf`.
            LogOffset::BeforeAll => panic!("invariant: -1 is never a log entry's offset"),
        };
        if self.chunk_end {
            flags |= FLAG_CHUNK_END;
        }
        let mut out = [0u8; RECORD_LEN];
        out[0..8].copy_from_slice(&tx.to_le_bytes());
        out[8..16].copy_from_slice(&op.to_le_bytes());
        out[16..24].copy_from_slice(&self.pos.to_le_bytes());
        out[24..28].copy_from_slice(&self.len.to_le_bytes());
        out[28..32].copy_from_slice(&flags.to_le_bytes());
        let check = fnv1a64(&out[0..32]);
        out[32..40].copy_from_slice(&check.to_le_bytes());
        out
    }

    /// Decodes one record; `None` if it is short, fails its checksum or has unknown flags.
    pub(super) fn decode(raw: &[u8]) -> Option<Self> {
        let raw: &[u8; RECORD_LEN] = raw.try_into().ok()?;
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&raw[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let u32_at = |i: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&raw[i..i + 4]);
            u32::from_le_bytes(b)
        };
        if u64_at(32) != fnv1a64(&raw[0..32]) {
            return None;
        }
        let flags = u32_at(28);
        if flags & !FLAGS_KNOWN != 0 {
            return None;
        }
        let op = if flags & FLAG_OP_INF == 0 {
            OpIndex::Index(u64_at(8))
        } else {
            OpIndex::Inf
        };
        Some(Self {
            offset: LogOffset::At { tx: u64_at(0), op },
            pos: u64_at(16),
            len: u32_at(24),
            chunk_end: flags & FLAG_CHUNK_END != 0,
        })
    }
}

/// What a recovery scan of an index file found.
#[derive(Debug)]
pub(super) struct Scan {
    /// The valid prefix of records.
    pub(super) records: Vec<IndexRecord>,
    /// Bytes of `log.json` the valid records cover.
    pub(super) data_len: u64,
    /// Why the scan stopped before the end of the files, if it did: a torn tail to truncate.
    pub(super) torn: Option<&'static str>,
}

/// Scans an index file's bytes against the data file's length.
///
/// A torn tail (a short or checksum-failing record with nothing valid after it, a record naming
/// data past the data file's end, or data past the last record) is reported in [`Scan::torn`]
/// and left out. Damage with valid records after it, or valid records that break ordering or
/// contiguity, is corruption, not a torn write: `Err` with the reason, so no durable entry is
/// dropped silently.
pub(super) fn scan(index: &[u8], data_len: u64) -> Result<Scan, &'static str> {
    let tail = scan_tail(index, Cursor::START, data_len);
    let torn = match tail.stop {
        None if tail.cursor.next_pos < data_len => Some("data past the last indexed entry"),
        None => None,
        Some(Stop::Corrupt(reason)) => return Err(reason),
        Some(Stop::DataMissing) => Some("index names data past the end of the data file"),
        Some(Stop::Damaged) => {
            let rest = &index[((tail.records.len() + 1) * RECORD_LEN).min(index.len())..];
            if rest
                .chunks(RECORD_LEN)
                .any(|r| IndexRecord::decode(r).is_some())
            {
                return Err("damaged index record followed by valid ones");
            }
            Some("partial or damaged index record")
        }
    };
    Ok(Scan {
        records: tail.records,
        data_len: tail.cursor.next_pos,
        torn,
    })
}

/// Where the valid records read so far end: the next record must start its data at
/// `next_pos` with an offset above `last`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Cursor {
    pub(super) next_pos: u64,
    pub(super) last: LogOffset,
}

impl Cursor {
    /// Before the first record of a log.
    pub(super) const START: Self = Self {
        next_pos: 0,
        last: LogOffset::SNAPSHOT_END,
    };
}

/// Why a tail scan stopped before the end of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Stop {
    /// A record that is short or fails its checksum (torn by a crash, or still being
    /// written).
    Damaged,
    /// A valid record naming data past the data file's end.
    DataMissing,
    /// A checksum-valid record that breaks ordering or contiguity: no crash or concurrent
    /// write produces it.
    Corrupt(&'static str),
}

/// What [`scan_tail`] accepted.
#[derive(Debug)]
pub(super) struct Tail {
    /// Complete, valid records continuing from the cursor given.
    pub(super) records: Vec<IndexRecord>,
    /// The cursor after them.
    pub(super) cursor: Cursor,
    /// Why it stopped early, if it did.
    pub(super) stop: Option<Stop>,
}

/// Reads the records in `bytes` (starting at a record boundary) that continue `cursor` and
/// whose data lies within `data_len`, stopping at the first that does not. Never an error:
/// recovery decides what a stop means; a follower just serves the prefix.
pub(super) fn scan_tail(bytes: &[u8], mut cursor: Cursor, data_len: u64) -> Tail {
    let mut records = Vec::with_capacity(bytes.len() / RECORD_LEN);
    let mut stop = None;
    for raw in bytes.chunks(RECORD_LEN) {
        let Some(record) = IndexRecord::decode(raw) else {
            stop = Some(Stop::Damaged);
            break;
        };
        // offsets-contiguous (recovery and follower side; `LogState` asserts the write side).
        if record.offset <= cursor.last {
            stop = Some(Stop::Corrupt("index record offsets do not increase"));
            break;
        }
        if record.pos != cursor.next_pos {
            stop = Some(Stop::Corrupt(
                "index records do not cover the data file contiguously",
            ));
            break;
        }
        if record.end() > data_len {
            stop = Some(Stop::DataMissing);
            break;
        }
        cursor = Cursor {
            next_pos: record.end(),
            last: record.offset,
        };
        records.push(record);
    }
    Tail {
        records,
        cursor,
        stop,
    }
}

/// 64-bit FNV-1a: tiny and stable; catches torn sectors, not malice.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(tx: u64, op: u64, pos: u64, len: u32, chunk_end: bool) -> IndexRecord {
        IndexRecord {
            offset: LogOffset::At {
                tx,
                op: OpIndex::Index(op),
            },
            pos,
            len,
            chunk_end,
        }
    }

    fn file(records: &[IndexRecord]) -> Vec<u8> {
        records.iter().flat_map(IndexRecord::encode).collect()
    }

    #[test]
    fn records_round_trip_including_inf_and_chunk_end() {
        let inf = IndexRecord {
            offset: LogOffset::At {
                tx: u64::MAX,
                op: OpIndex::Inf,
            },
            ..rec(0, 0, 7, u32::MAX, true)
        };
        for r in [rec(1, 0, 0, 3, false), rec(9, 4, 12, 5, true), inf] {
            assert_eq!(IndexRecord::decode(&r.encode()), Some(r));
        }
    }

    #[test]
    fn zeroed_or_flipped_records_fail_the_checksum() {
        assert_eq!(IndexRecord::decode(&[0u8; RECORD_LEN]), None);
        let mut raw = rec(1, 0, 0, 3, false).encode();
        raw[17] ^= 1;
        assert_eq!(IndexRecord::decode(&raw), None);
    }

    #[test]
    fn scan_keeps_a_clean_log_whole() {
        let rs = [rec(5, 0, 0, 3, false), rec(5, 2, 4, 2, true)];
        let s = scan(&file(&rs), 7).expect("clean");
        assert_eq!(s.records, rs);
        assert_eq!((s.data_len, s.torn), (7, None));
    }

    #[test]
    fn scan_cuts_a_torn_tail() {
        let rs = [rec(5, 0, 0, 3, false), rec(5, 2, 4, 2, true)];
        let mut bytes = file(&rs);
        bytes.truncate(RECORD_LEN + 13);
        let s = scan(&bytes, 7).expect("torn, not corrupt");
        assert_eq!(s.records, rs[..1]);
        assert_eq!(s.data_len, 4);
        assert!(s.torn.is_some());

        let s = scan(&file(&rs), 6).expect("data short");
        assert_eq!(s.records, rs[..1]);

        let s = scan(&file(&rs), 9).expect("data long");
        assert_eq!((s.records.len(), s.data_len), (2, 7));
        assert!(s.torn.is_some());
    }

    #[test]
    fn scan_refuses_damage_before_valid_records() {
        let rs = [rec(5, 0, 0, 3, false), rec(5, 2, 4, 2, true)];
        let mut bytes = file(&rs);
        bytes[3] ^= 0xff;
        assert!(scan(&bytes, 7).is_err());
        let unordered = [rec(5, 2, 0, 3, false), rec(5, 0, 4, 2, true)];
        assert!(scan(&file(&unordered), 7).is_err());
        let gap = [rec(5, 0, 0, 3, false), rec(5, 2, 5, 2, true)];
        assert!(scan(&file(&gap), 8).is_err());
    }

    #[test]
    fn scan_tail_continues_a_cursor_and_stops_at_the_first_incomplete_record() {
        let rs = [
            rec(5, 0, 0, 3, false),
            rec(5, 2, 4, 2, true),
            rec(6, 0, 7, 2, false),
        ];
        let all = file(&rs);
        let after_first = Cursor {
            next_pos: 4,
            last: rs[0].offset,
        };
        let tail = scan_tail(&all[RECORD_LEN..], after_first, 10);
        assert_eq!(tail.records, rs[1..]);
        assert_eq!(tail.cursor.next_pos, 10);
        assert_eq!(tail.stop, None);

        // A half-written third record, then one whose data is not all there yet.
        let tail = scan_tail(&all[..2 * RECORD_LEN + 7], Cursor::START, 10);
        assert_eq!(tail.records, rs[..2]);
        assert_eq!(tail.stop, Some(Stop::Damaged));
        let tail = scan_tail(&all, Cursor::START, 9);
        assert_eq!(tail.records, rs[..2]);
        assert_eq!(tail.stop, Some(Stop::DataMissing));

        // Damage followed by valid records is only a stop here, never an error.
        let mut damaged = all.clone();
        damaged[RECORD_LEN + 3] ^= 0xff;
        let tail = scan_tail(&damaged, Cursor::START, 10);
        assert_eq!(tail.records, rs[..1]);
        let tail = scan_tail(&all, after_first, 10);
        assert!(matches!(tail.stop, Some(Stop::Corrupt(_))));
    }
}
