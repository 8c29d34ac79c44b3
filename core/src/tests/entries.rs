//! Log entries a transaction adds to a shape: offsets, `last`, key changes, chunks.

use super::harness::{entries, items, kinds, offsets, others, selecting, Harness, Txn};
use crate::instance::Output;
use crate::lsn::Lsn;
use crate::ports::LogEntry;

/// Commit LSN 0x2000 in decimal, as offsets and `lsn` headers spell it.
const T: u64 = 0x2000;

fn committed(h: &mut Harness, txn: &Txn) -> Vec<Output> {
    h.commit(txn);
    h.take()
}

#[test]
fn an_insert_becomes_one_complete_entry() {
    // Goal: the whole JSON line of a replicated insert, end to end from pgoutput bytes.
    // Method: one insert into a shaped table.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let out = committed(
        &mut h,
        &Txn::new(745, T).insert(&items(), &["1", "a\"b", "5"]),
    );
    let entries = entries(&out, &handle);
    assert_eq!(offsets(&entries), ["8192_0"]);
    assert_eq!(
        entries[0].json,
        r#"{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"a\"b","n":"5"},"headers":{"operation":"insert","relation":["public","items"],"lsn":"8192","op_position":0,"txids":[745],"last":true}}"#
    );
}

#[test]
fn offsets_are_the_commit_lsn_and_twice_the_change_index() {
    // Goal: offsets are `<commit_lsn>_<2i>` with i the change's index in the whole
    // transaction, other tables included; only the shape's last entry has "last":true.
    // Method: a transaction of changes to another table and to the shaped table.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let txn = Txn::new(700, T)
        .insert(&others(), &["1", "v"])
        .insert(&items(), &["1", "a", "1"])
        .update(&items(), &["1", "a", "1"], &["1", "b", "1"])
        .insert(&others(), &["2", "v"])
        .delete(&items(), &["1", "b", "1"])
        .insert(&others(), &["3", "v"]);
    let entries = entries(&committed(&mut h, &txn), &handle);
    assert_eq!(offsets(&entries), ["8192_2", "8192_4", "8192_8"]);
    let last: Vec<bool> = entries
        .iter()
        .map(|e| e.json.ends_with(r#","last":true}}"#))
        .collect();
    assert_eq!(last, [false, false, true]);
    assert!(entries[1]
        .json
        .contains(r#""value":{"id":"1","title":"b"},"headers":{"operation":"update""#));
    assert!(entries[1].json.contains(r#""op_position":4"#));
    assert!(entries[2]
        .json
        .contains(r#""value":{"id":"1"},"headers":{"operation":"delete""#));
}

#[test]
fn a_primary_key_change_becomes_a_delete_and_an_insert_linked_by_key() {
    // Goal: an update of the key is a delete at op and an insert at op + 1, each naming the
    // other key (key_change_to / key_change_from); the insert is the last entry.
    // Method: update id 1 → 2 as the second change of a transaction.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let txn = Txn::new(700, T).insert(&others(), &["1", "v"]).update(
        &items(),
        &["1", "a", "1"],
        &["2", "a", "1"],
    );
    let entries = entries(&committed(&mut h, &txn), &handle);
    assert_eq!(offsets(&entries), ["8192_2", "8192_3"]);
    let (delete, insert) = (&entries[0].json, &entries[1].json);
    assert!(delete.starts_with(r#"{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1"},"headers":{"operation":"delete""#), "{delete}");
    assert!(
        delete.ends_with(r#""key_change_to":"\"public\".\"items\"/\"2\""}}"#),
        "{delete}"
    );
    assert!(insert.starts_with(r#"{"key":"\"public\".\"items\"/\"2\"","value":{"id":"2","title":"a","n":"1"},"headers":{"operation":"insert""#), "{insert}");
    assert!(
        insert.ends_with(r#""key_change_from":"\"public\".\"items\"/\"1\"","last":true}}"#),
        "{insert}"
    );
}

#[test]
fn an_update_changing_no_selected_column_produces_nothing() {
    // Goal: a shape selecting some columns ignores updates of the others entirely: no
    // entry, no append, no flush, and the commit is confirmed at once.
    // Method: a shape on (id, title); update only n.
    let mut h = Harness::active();
    let op = h.request(selecting(&items(), &["title", "id"]), &items());
    h.snapshot_taken(op, super::harness::early_snapshot());
    h.take();
    let out = committed(
        &mut h,
        &Txn::new(700, T).update(&items(), &["1", "a", "1"], &["1", "a", "2"]),
    );
    assert_eq!(
        kinds(&out),
        ["PersistIdentity", "SendStandbyStatus"],
        "xid 700 ends filtering, persisted only with the shape's next durable entry \
         (`filter-end-durable`); the acked position is persisted before it is sent"
    );
    assert_eq!(super::harness::flushes(&out), [Lsn(T + 1)]);
}

#[test]
fn a_selected_column_update_carries_only_selected_columns() {
    // Goal: entries of a column-selecting shape hold only its columns, in name order.
    // Method: a shape on (title, id); update title and n.
    let mut h = Harness::active();
    let op = h.request(selecting(&items(), &["title", "id"]), &items());
    h.snapshot_taken(op, super::harness::early_snapshot());
    let handle = match &h.take()[..] {
        [Output::CreateShape { shape, .. }, ..] => shape.handle.clone(),
        other => panic!("expected CreateShape first: {:?}", kinds(other)),
    };
    let txn = Txn::new(700, T).update(&items(), &["1", "a", "1"], &["1", "b", "2"]);
    let entries = entries(&committed(&mut h, &txn), &handle);
    assert_eq!(offsets(&entries), ["8192_0"]);
    assert!(
        entries[0]
            .json
            .contains(r#""value":{"id":"1","title":"b"},"#),
        "{}",
        entries[0].json
    );
}

/// The chunk_end flags the byte rule gives for `entries` with `threshold`, starting empty.
fn expected_chunk_ends(entries: &[LogEntry], threshold: u64) -> Vec<bool> {
    let mut bytes = 0;
    entries
        .iter()
        .map(|e| {
            bytes += e.json.len() as u64 + 1;
            let end = bytes >= threshold;
            if end {
                bytes = 0;
            }
            end
        })
        .collect()
}

#[test]
fn chunk_ends_follow_the_byte_threshold_across_transactions() {
    // Goal: a chunk closes after the entry that brings it to the threshold (each line plus
    // one byte), counting across transactions, even inside a transaction.
    // Method: a 500-byte threshold and three transactions of inserts (~150 bytes each).
    let mut config = Harness::config();
    config.chunk_bytes_threshold = 500;
    let mut h = Harness::active_with(config);
    let handle = h.live_shape(&items());
    let mut all = Vec::new();
    for (i, lsn) in [0x2000u64, 0x3000, 0x4000].into_iter().enumerate() {
        let mut txn = Txn::new(700 + i as u32, lsn);
        for j in 0..4 {
            txn = txn.insert(&items(), &[&format!("{i}{j}"), "some title", "1"]);
        }
        all.extend(entries(&committed(&mut h, &txn), &handle));
        h.complete_flush();
    }
    let flags: Vec<bool> = all.iter().map(|e| e.chunk_end).collect();
    assert_eq!(flags, expected_chunk_ends(&all, 500));
    assert!(flags.iter().filter(|f| **f).count() >= 3, "{flags:?}");
    let inside = all
        .iter()
        .any(|e| e.chunk_end && !e.json.ends_with(r#""last":true}}"#));
    assert!(
        inside,
        "a boundary can fall inside a transaction: {flags:?}"
    );
}
