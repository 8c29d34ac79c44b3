//! Chunk boundaries by bytes (protocol.md §6.2), and snapshots as both the real and the
//! simulated Postgres adapters fetch and write them: the columns fetched, the chunks written
//! and counted.

use crate::error_chain;
use crate::json::EntryEncoder;
use crate::ports::{SnapshotError, SnapshotWriter};
use crate::shape::{ShapeDefinition, TableSchema};
use crate::where_clause::WhereClause;

/// The columns one shape's snapshot fetches — the selected ones plus the key columns, in
/// `attnum` order — and how a fetched row becomes an entry.
#[derive(Debug)]
pub struct SnapshotColumns {
    /// Indices (in `attnum` order) of the fetched columns, in the order the query returns them.
    pub fetched: Vec<usize>,
    /// Encodes a row given in the table's column order.
    pub encoder: EntryEncoder,
    /// The shape's row filter: the snapshot query's `WHERE` (rendered from the typed tree),
    /// and what a model Postgres evaluates.
    pub filter: Option<WhereClause>,
    /// Number of columns in the table's schema.
    width: usize,
}

impl SnapshotColumns {
    /// The columns of `definition` on `schema`; a selected column the table lacks means the
    /// schema changed under the shape.
    pub fn new(definition: &ShapeDefinition, schema: &TableSchema) -> Result<Self, SnapshotError> {
        let selected: Vec<usize> = match &definition.columns {
            None => (0..schema.columns.len()).collect(),
            Some(names) => names
                .iter()
                .map(|name| {
                    schema
                        .column_index(name)
                        .ok_or_else(|| SnapshotError::SchemaChanged {
                            message: format!("column {name:?} is not in {}", schema.relation),
                        })
                })
                .collect::<Result<_, _>>()?,
        };
        let mut fetched: Vec<usize> = selected
            .iter()
            .copied()
            .chain(schema.key_columns())
            .collect();
        fetched.sort_unstable();
        fetched.dedup();
        let filter = definition
            .where_clause
            .as_deref()
            .map(|text| WhereClause::from_canonical(text, schema))
            .transpose()
            .map_err(|e| SnapshotError::SchemaChanged {
                message: format!(
                    "the where clause no longer applies to {}: {e}",
                    schema.relation
                ),
            })?;
        Ok(Self {
            fetched,
            encoder: EntryEncoder::new(schema, &selected, definition.replica),
            filter,
            width: schema.columns.len(),
        })
    }

    /// ` WHERE <condition>` for the snapshot query, or nothing without a filter.
    pub fn where_sql(&self) -> String {
        self.filter
            .as_ref()
            .map(|f| format!(" WHERE {}", f.to_sql()))
            .unwrap_or_default()
    }

    /// A row in the table's column order with nothing fetched yet: fill `fetched[i]` with the
    /// query's column `i`.
    pub fn empty_row(&self) -> Vec<Option<String>> {
        vec![None; self.width]
    }
}

/// SN-3: a snapshot must read the table its shape was created against. The shape's schema
/// comes from a catalog lookup made when its request arrived, which may be seconds old by the
/// snapshot (a standby holds creations until it is active; SN-2 waits out open
/// transactions). A column change committed in between is visible to the snapshot, whose rows
/// then do not match the shape's columns; and if the `Relation` message describing the change
/// was decoded before the shape subscribed, nothing later would invalidate the shape
/// (§1.15). So each adapter reads the table's schema inside the snapshot itself, and the
/// shape fails its snapshot (409 for its clients) unless it is `expected` exactly.
pub fn check_schema_unchanged(
    expected: &TableSchema,
    seen: Option<&TableSchema>,
) -> Result<(), SnapshotError> {
    let Some(seen) = seen else {
        return Err(SnapshotError::SchemaChanged {
            message: format!("table {} no longer exists", expected.relation),
        });
    };
    if seen == expected {
        return Ok(());
    }
    let names = |schema: &TableSchema| -> Vec<String> {
        schema.columns.iter().map(|c| c.name.clone()).collect()
    };
    Err(SnapshotError::SchemaChanged {
        message: format!(
            "{} changed since the shape was created: oid {} with columns {:?}, the shape has \
             oid {} with columns {:?}",
            expected.relation,
            seen.oid.0,
            names(seen),
            expected.oid.0,
            names(expected)
        ),
    })
}

/// Decides where chunks close: after appending an entry, the chunk closes once the bytes
/// accumulated (each JSON line plus one) reach the threshold. A chunk therefore passes the
/// threshold by at most one entry, and a boundary may fall inside a transaction.
#[derive(Clone, Copy, Debug)]
pub struct ChunkCutter {
    threshold: u64,
    bytes: u64,
}

impl ChunkCutter {
    /// A cutter for chunks of `threshold` bytes (`ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD`),
    /// resuming with `bytes` already in the open chunk.
    pub fn new(threshold: u64, bytes: u64) -> Self {
        assert!(threshold > 0, "chunk threshold must be positive");
        Self { threshold, bytes }
    }

    /// Accounts for an entry of `len` bytes; returns whether the chunk closes after it.
    pub fn push(&mut self, len: usize) -> bool {
        self.bytes += len as u64 + 1;
        if self.bytes >= self.threshold {
            self.bytes = 0;
            return true;
        }
        false
    }

    /// Bytes in the open chunk.
    pub fn open_bytes(&self) -> u64 {
        self.bytes
    }
}

/// Cuts entries into chunks by the byte rule and writes each closed chunk once the next entry
/// arrives: only then is it known not to be the last, which gets `snapshot-end` appended. So
/// no chunk holds `snapshot-end` alone, except chunk 0 of an empty table.
pub struct SnapshotChunks<W> {
    writer: W,
    cutter: ChunkCutter,
    /// Entries of the open chunk joined by `,`.
    open: String,
    /// A closed chunk not written yet.
    closed: Option<String>,
    /// Index of the next chunk to write.
    index: u64,
}

impl<W: SnapshotWriter> SnapshotChunks<W> {
    /// Chunks of `chunk_bytes_threshold` bytes, written through `writer` from index 0.
    pub fn new(writer: W, chunk_bytes_threshold: u64) -> Self {
        // A zero threshold would be a configuration bug; one entry per chunk is its limit.
        let cutter = ChunkCutter::new(chunk_bytes_threshold.max(1), 0);
        Self {
            writer,
            cutter,
            open: String::new(),
            closed: None,
            index: 0,
        }
    }

    /// Adds one entry (a snapshot row's JSON).
    pub async fn push(&mut self, entry: String) -> Result<(), SnapshotError> {
        if let Some(body) = self.closed.take() {
            assert!(
                self.open.is_empty(),
                "chunk-order: an entry went into a chunk after a closed one"
            );
            self.write(body).await?;
        }
        if !self.open.is_empty() {
            self.open.push(',');
        }
        self.open.push_str(&entry);
        if self.cutter.push(entry.len()) {
            self.closed = Some(std::mem::take(&mut self.open));
        }
        Ok(())
    }

    /// Writes the last chunk, ending with `end` (the snapshot-end entry).
    pub async fn finish(mut self, end: &str) -> Result<W, SnapshotError> {
        let mut last = self
            .closed
            .take()
            .unwrap_or_else(|| std::mem::take(&mut self.open));
        if !last.is_empty() {
            last.push(',');
        }
        last.push_str(end);
        self.write(last).await?;
        Ok(self.writer)
    }

    async fn write(&mut self, body: String) -> Result<(), SnapshotError> {
        self.writer
            .write_chunk(self.index, body)
            .await
            .map_err(|e| SnapshotError::Store {
                message: error_chain(&e),
            })?;
        self.index += 1;
        Ok(())
    }
}

/// Counts the comma-joined JSON values in a chunk body: commas outside strings at nesting
/// depth 0, plus one.
pub fn count_entries(body: &[u8]) -> usize {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut commas = 0;
    let mut any = false;
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => commas += 1,
            _ => {}
        }
        any |= !b.is_ascii_whitespace();
    }
    if any {
        commas + 1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::tests::poll_once;

    /// Collects chunks in memory.
    #[derive(Clone, Default)]
    struct MemWriter(Arc<Mutex<Vec<(u64, String)>>>);

    impl SnapshotWriter for MemWriter {
        type Error = Infallible;

        async fn write_chunk(&mut self, index: u64, body: String) -> Result<(), Infallible> {
            self.0.lock().unwrap().push((index, body));
            Ok(())
        }

        async fn finish(self) -> Result<(), Infallible> {
            Ok(())
        }
    }

    fn cut(threshold: u64, entries: &[&str]) -> Vec<(u64, String)> {
        let chunks = MemWriter::default();
        poll_once(async {
            let mut writer = SnapshotChunks::new(chunks.clone(), threshold);
            for e in entries {
                writer.push((*e).to_owned()).await.unwrap();
            }
            writer.finish("END").await.unwrap();
        });
        let out = chunks.0.lock().unwrap().clone();
        out
    }

    #[test]
    fn snapshot_chunks_close_at_the_threshold_and_the_last_one_ends_with_snapshot_end() {
        // "aaa" counts 4 bytes: the second entry reaches 8 and closes the chunk.
        let chunks = cut(8, &["aaa", "bbb", "ccc"]);
        assert_eq!(chunks, vec![(0, "aaa,bbb".into()), (1, "ccc,END".into())]);
    }

    #[test]
    fn snapshot_end_joins_a_chunk_closed_by_the_last_row() {
        assert_eq!(cut(8, &["aaa", "bbb"]), vec![(0, "aaa,bbb,END".into())]);
    }

    #[test]
    fn an_empty_table_gives_one_chunk_with_snapshot_end_only() {
        assert_eq!(cut(8, &[]), vec![(0, "END".into())]);
    }

    #[test]
    fn counts_entries_ignoring_commas_in_strings_and_nesting() {
        assert_eq!(count_entries(b""), 0);
        assert_eq!(count_entries(b"{}"), 1);
        assert_eq!(
            count_entries(br#"{"a":[1,2]},{"b":"x,\"}{,y"},{"c":{"d":1,"e":2}}"#),
            3
        );
        assert_eq!(count_entries(br#"{"a":"\\"},{}"#), 2);
    }

    /// `items` in `public` with `id` (the key) and the other `columns`, all text.
    fn items(columns: &[&str]) -> TableSchema {
        let columns: Vec<_> = columns
            .iter()
            .map(|&name| (name, 25, name == "id"))
            .collect();
        crate::tests::harness::table(16_384, "items", &columns)
    }

    #[test]
    fn a_snapshot_of_another_schema_than_the_shapes_is_a_schema_change() {
        let shape = items(&["id", "value"]);
        assert!(check_schema_unchanged(&shape, Some(&items(&["id", "value"]))).is_ok());
        let added = items(&["id", "value", "extra1"]);
        assert!(matches!(
            check_schema_unchanged(&shape, Some(&added)),
            Err(SnapshotError::SchemaChanged { .. })
        ));
        let mut recreated = items(&["id", "value"]);
        recreated.oid = crate::pgoutput::Oid(16500);
        assert!(matches!(
            check_schema_unchanged(&shape, Some(&recreated)),
            Err(SnapshotError::SchemaChanged { .. })
        ));
        assert!(matches!(
            check_schema_unchanged(&shape, None),
            Err(SnapshotError::SchemaChanged { .. })
        ));
    }

    #[test]
    fn chunk_closes_on_the_entry_that_reaches_the_threshold() {
        let mut c = ChunkCutter::new(10, 0);
        assert!(!c.push(3)); // 4
        assert!(!c.push(4)); // 9
        assert!(c.push(0)); // 10: closes
        assert_eq!(c.open_bytes(), 0);
        assert!(c.push(100)); // one big entry closes its own chunk
    }

    #[test]
    fn resumes_with_the_open_chunk_size() {
        let mut c = ChunkCutter::new(10, 8);
        assert!(c.push(1));
    }
}
