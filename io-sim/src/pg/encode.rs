//! `pgoutput` protocol version 1 encoding: the payloads of the model walsender's `XLogData`.
//!
//! The inverse of `ampere_core::pgoutput`: Begin, Relation, Insert, Update (`'O'` old tuple,
//! REPLICA IDENTITY FULL), Delete (`'O'`), Truncate and Commit, text values only.

use bytes::{BufMut, Bytes, BytesMut};

use ampere_core::lsn::Lsn;

use super::model::ModelColumn;

/// Microseconds from the Postgres epoch (2000-01-01) to 2025-01-01, the model's time origin.
const COMMIT_TIME_ORIGIN_MICROS: i64 = 788_918_400_000_000;

/// A commit timestamp derived from the commit LSN (deterministic; never the OS clock).
pub fn commit_time_micros(commit_lsn: Lsn) -> i64 {
    COMMIT_TIME_ORIGIN_MICROS.saturating_add(i64::try_from(commit_lsn.0).unwrap_or(i64::MAX))
}

/// `'B'`: Begin of a transaction committing at `final_lsn`.
pub fn begin(final_lsn: Lsn, commit_time_micros: i64, xid: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(21);
    out.put_u8(b'B');
    out.put_u64(final_lsn.0);
    out.put_i64(commit_time_micros);
    out.put_u32(xid);
    out.freeze()
}

/// `'C'`: Commit.
pub fn commit(commit_lsn: Lsn, end_lsn: Lsn, commit_time_micros: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(26);
    out.put_u8(b'C');
    out.put_u8(0);
    out.put_u64(commit_lsn.0);
    out.put_u64(end_lsn.0);
    out.put_i64(commit_time_micros);
    out.freeze()
}

/// `'R'`: a relation's schema with REPLICA IDENTITY FULL (every column flagged as key).
pub fn relation(oid: u32, namespace: &str, name: &str, columns: &[ModelColumn]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(b'R');
    out.put_u32(oid);
    put_cstr(&mut out, namespace);
    put_cstr(&mut out, name);
    out.put_u8(b'f');
    out.put_u16(u16::try_from(columns.len()).expect("invariant: tables have < 1600 columns"));
    for column in columns {
        out.put_u8(1);
        put_cstr(&mut out, &column.name);
        out.put_u32(column.type_oid);
        out.put_i32(-1);
    }
    out.freeze()
}

/// `'I'`: a row inserted.
pub fn insert(oid: u32, new: &[Option<String>]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(b'I');
    out.put_u32(oid);
    out.put_u8(b'N');
    put_tuple(&mut out, new);
    out.freeze()
}

/// `'U'`: a row updated, with its full old row.
pub fn update(oid: u32, old: &[Option<String>], new: &[Option<String>]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(b'U');
    out.put_u32(oid);
    out.put_u8(b'O');
    put_tuple(&mut out, old);
    out.put_u8(b'N');
    put_tuple(&mut out, new);
    out.freeze()
}

/// `'D'`: a row deleted, with its full old row.
pub fn delete(oid: u32, old: &[Option<String>]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(b'D');
    out.put_u32(oid);
    out.put_u8(b'O');
    put_tuple(&mut out, old);
    out.freeze()
}

/// `'T'`: `TRUNCATE` of `oids` (no CASCADE, no RESTART IDENTITY).
pub fn truncate(oids: &[u32]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(b'T');
    out.put_u32(u32::try_from(oids.len()).expect("invariant: few relations per TRUNCATE"));
    out.put_u8(0);
    for oid in oids {
        out.put_u32(*oid);
    }
    out.freeze()
}

fn put_cstr(out: &mut BytesMut, text: &str) {
    out.put_slice(text.as_bytes());
    out.put_u8(0);
}

fn put_tuple(out: &mut BytesMut, row: &[Option<String>]) {
    out.put_u16(u16::try_from(row.len()).expect("invariant: tables have < 1600 columns"));
    for value in row {
        match value {
            None => out.put_u8(b'n'),
            Some(text) => {
                out.put_u8(b't');
                out.put_u32(u32::try_from(text.len()).expect("invariant: values below 4 GiB"));
                out.put_slice(text.as_bytes());
            }
        }
    }
}
