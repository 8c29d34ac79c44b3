//! Helpers shared by io-real's integration tests.
// Each test binary compiles this module; `pub` items are reachable from the binary's root.
#![allow(unreachable_pub, dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ampere_core::pgoutput::Oid;
use ampere_core::ports::{ChunkRead, LogEntry, ReadOutcome, ShapeLogStore, StoredShape};
use ampere_core::shape::{
    ColumnSchema, LogMode, RelationName, Replica, ServerVersion, ShapeDefinition, ShapeHandle,
    TableSchema,
};
use ampere_core::LogOffset;
use ampere_io_real::store::FileStore;

/// A fresh directory under /tmp, deleted on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// `/tmp/ampere-<tag>-<pid>-<nanos>-<n>`.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("ampere-{tag}-{}-{nanos}-{n}", std::process::id());
        let path = PathBuf::from("/tmp").join(name);
        fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Parses an offset written in a test.
pub fn off(text: &str) -> LogOffset {
    text.parse().expect("valid offset")
}

/// The `n`th test handle.
pub fn handle(n: u32) -> ShapeHandle {
    ShapeHandle::from_string(format!("{n}-1721812114261123"))
}

/// An entry's JSON: names its offset, holds a comma and a brace inside a string, and ends
/// its transaction (each test entry is a whole transaction; see [`mid_transaction_entry`]).
pub fn entry_json(offset: &str) -> String {
    format!(r#"{{"offset":"{offset}","value":{{"v":"a,}}b"}},"headers":{{"op":0,"last":true}}}}"#)
}

/// An entry at `offset` that does not end its transaction (no `"last":true`).
pub fn mid_transaction_entry(offset: &str) -> LogEntry {
    LogEntry {
        offset: off(offset),
        json: format!(r#"{{"offset":"{offset}","headers":{{}}}}"#),
        chunk_end: false,
    }
}

/// An entry at `offset` whose JSON is [`entry_json`].
pub fn entry(offset: &str, chunk_end: bool) -> LogEntry {
    LogEntry {
        offset: off(offset),
        json: entry_json(offset),
        chunk_end,
    }
}

/// The chunk of a read, panicking on any other outcome.
pub fn chunk(outcome: ReadOutcome) -> ChunkRead {
    match outcome {
        ReadOutcome::Chunk(chunk) => chunk,
        other => panic!("expected a chunk, got {other:?}"),
    }
}

/// (body, entries, end) of a read, asserting it is a chunk.
pub fn read(store: &FileStore, h: &ShapeHandle, after: &str) -> (String, usize, String) {
    let c = chunk(store.read(h, off(after)));
    let body = String::from_utf8(c.body.to_vec()).expect("utf-8 body");
    (body, c.entries, c.end.to_string())
}

/// The expected answer for offsets naming entries, joined as the store must join them.
pub fn expected(offsets: &[&str], end: &str) -> (String, usize, String) {
    let body = offsets
        .iter()
        .map(|o| entry_json(o))
        .collect::<Vec<_>>()
        .join(",");
    (body, offsets.len(), end.to_owned())
}

/// The `snapshot-end` entry the store tests write.
pub const SNAPSHOT_END: &str =
    r#"{"headers":{"control":"snapshot-end","xip_list":[],"xmax":"9","xmin":"9"}}"#;

/// A stored shape `handle` of all of `public.<table>` (one `int4` primary key `id`, on
/// PostgreSQL 15), without a snapshot yet; tests set the fields they vary.
pub fn stored_shape(handle: ShapeHandle, table: &str) -> StoredShape {
    let relation = RelationName {
        schema: "public".to_owned(),
        table: table.to_owned(),
    };
    StoredShape {
        handle,
        definition: ShapeDefinition {
            relation: relation.clone(),
            columns: None,
            replica: Replica::Default,
            where_clause: None,
            log: LogMode::Full,
        },
        schema: TableSchema {
            server_version: ServerVersion::PG_15,
            oid: Oid(16_384),
            relation,
            columns: vec![ColumnSchema {
                name: "id".to_owned(),
                type_oid: 23,
                typname: "int4".to_owned(),
                dims: 0,
                not_null: true,
                pk_index: Some(0),
                modifiers: Vec::new(),
                is_enum: false,
            }],
        },
        snapshot: None,
        snapshot_filter_done: false,
    }
}
