//! Behaviour tests for the simulated storage, each in a tiny turmoil simulation. Many mirror
//! io-real's `tests/store.rs` and `tests/follower.rs` one to one, so the two stores answer
//! alike.

mod crash;
mod follower;
mod metadata;
mod reads;

use std::future::Future;
use std::time::Duration;

use ampere_core::pgoutput::Oid;
use ampere_core::ports::{
    ChunkRead, LogEntry, ReadOutcome, ShapeLogStore, SnapshotWriter, StoredShape,
};
use ampere_core::shape::{RelationName, Replica, ShapeDefinition, ShapeHandle, TableSchema};
use ampere_core::LogOffset;

use super::{SimDisk, SimStore};

/// The `snapshot-end` entry the tests write.
const SNAPSHOT_END: &str =
    r#"{"headers":{"control":"snapshot-end","xip_list":[],"xmax":"9","xmin":"9"}}"#;

/// Runs `test` as the one client of a turmoil simulation (paused time, sim_elapsed).
fn in_sim(test: impl Future<Output = ()> + 'static) {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .build();
    sim.client("test", async move {
        test.await;
        Ok(())
    });
    sim.run().expect("simulation");
}

fn off(text: &str) -> LogOffset {
    text.parse().expect("valid offset")
}

fn handle(n: u32) -> ShapeHandle {
    ShapeHandle::from_string(format!("{n}-1721812114261123"))
}

/// An entry's JSON: names its offset, holds a comma and a brace inside a string, and ends
/// its transaction (each test entry is a whole transaction; see `mid_transaction_entry`).
fn entry_json(offset: &str) -> String {
    format!(r#"{{"offset":"{offset}","value":{{"v":"a,}}b"}},"headers":{{"op":0,"last":true}}}}"#)
}

/// An entry that does not end its transaction.
fn mid_transaction_entry(offset: &str) -> LogEntry {
    LogEntry {
        offset: off(offset),
        json: format!(r#"{{"offset":"{offset}","headers":{{}}}}"#),
        chunk_end: false,
    }
}

fn entry(offset: &str, chunk_end: bool) -> LogEntry {
    LogEntry {
        offset: off(offset),
        json: entry_json(offset),
        chunk_end,
    }
}

fn chunk(outcome: ReadOutcome) -> ChunkRead {
    match outcome {
        ReadOutcome::Chunk(chunk) => chunk,
        other => panic!("expected a chunk, got {other:?}"),
    }
}

/// (body, entries, end) of a read, asserting it is a chunk.
fn read(store: &SimStore, h: &ShapeHandle, after: &str) -> (String, usize, String) {
    let c = chunk(store.read(h, off(after)));
    let body = String::from_utf8(c.body.to_vec()).expect("utf-8 body");
    (body, c.entries, c.end.to_string())
}

/// The expected answer for offsets naming entries.
fn expected(offsets: &[&str], end: &str) -> (String, usize, String) {
    let body = offsets
        .iter()
        .map(|o| entry_json(o))
        .collect::<Vec<_>>()
        .join(",");
    (body, offsets.len(), end.to_owned())
}

/// A promoted store on `disk`.
async fn writer(disk: &SimDisk, name: &str) -> SimStore {
    let store = SimStore::open(disk.clone(), name);
    store.promote().await.expect("promote");
    store
}

/// A promoted store with one shape whose two-chunk snapshot is complete.
async fn store_with_snapshot(disk: &SimDisk, h: &ShapeHandle) -> SimStore {
    let store = writer(disk, "a").await;
    create_with_snapshot(&store, h).await;
    store
}

async fn create_with_snapshot(store: &SimStore, h: &ShapeHandle) {
    store.create_shape(h).await.expect("create");
    let mut snapshot = store.snapshot_writer(h);
    snapshot
        .write_chunk(0, r#"{"row":1},{"row":"2,}"}"#.to_owned())
        .await
        .expect("chunk 0");
    snapshot
        .write_chunk(1, format!(r#"{{"row":3}},{SNAPSHOT_END}"#))
        .await
        .expect("chunk 1");
    snapshot.finish().await.expect("finish");
}

async fn append_and_flush(store: &SimStore, h: &ShapeHandle, entries: Vec<LogEntry>) {
    store.append(h, entries).expect("append");
    store.flush().await.expect("flush");
}

fn offsets(log: &[LogEntry]) -> Vec<String> {
    log.iter().map(|e| e.offset.to_string()).collect()
}

/// A metadata row for `h`.
fn stored_shape(h: &ShapeHandle) -> StoredShape {
    let relation = RelationName {
        schema: "public".into(),
        table: "items".into(),
    };
    StoredShape {
        handle: h.clone(),
        definition: ShapeDefinition {
            relation: relation.clone(),
            columns: None,
            replica: Replica::Default,
            where_clause: None,
            log: ampere_core::shape::LogMode::Full,
        },
        schema: TableSchema {
            server_version: ampere_core::shape::ServerVersion::PG_15,
            oid: Oid(16_384),
            relation,
            columns: Vec::new(),
        },
        snapshot: None,
        snapshot_filter_done: false,
    }
}

/// Whether `waiter` resolves within `within` of simulated time.
async fn resolves(waiter: impl Future<Output = ()>, within: Duration) -> bool {
    tokio::time::timeout(within, waiter).await.is_ok()
}
