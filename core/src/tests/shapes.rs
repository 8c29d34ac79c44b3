//! Shape requests, handles and invalidation.

use std::time::Duration;

use super::harness::{
    entries, flushes, items, kinds, others, removed, selecting, table, whole, Harness, Txn,
    START_LSN,
};
use crate::instance::{Input, Output};
use crate::lsn::Lsn;
use crate::ports::LogEntry;
use crate::shape::{HandleStamp, Replica, ShapeHandle};

/// The handle and stamp of the `CreateShape` among `out`.
fn created(out: &[Output]) -> (ShapeHandle, HandleStamp) {
    out.iter()
        .find_map(|o| match o {
            Output::CreateShape { shape, stamp, .. } => Some((shape.handle.clone(), *stamp)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("expected CreateShape: {:?}", kinds(out)))
}

#[test]
fn a_request_while_not_active_is_refused() {
    // Goal: no shape is created before the core holds the lock and streams (it could miss
    // transactions, and only the lock holder writes storage).
    // Method: request a shape while the first ConnectReplication is unanswered.
    let mut h = Harness::new();
    h.take();
    let op = h.request(whole(&items()), &items());
    let out = h.take();
    assert_eq!(kinds(&out), ["ShapeRefused"]);
    assert!(matches!(out[0], Output::ShapeRefused { op: o, .. } if o == op));
}

#[test]
fn a_request_while_active_creates_the_shape_and_asks_for_its_snapshot() {
    // Goal: SN-1: a new shape's metadata (snapshot not taken) and its snapshot request
    // leave in one CreateShape that echoes the request.
    // Method: request a shape while active.
    let mut h = Harness::active();
    let op = h.request(whole(&items()), &items());
    let out = h.take();
    assert_eq!(kinds(&out), ["CreateShape"]);
    let Output::CreateShape {
        op: echoed,
        shape,
        stamp,
        snapshot,
        ..
    } = &out[0]
    else {
        unreachable!()
    };
    assert_eq!(*echoed, op);
    assert_eq!(shape.definition, whole(&items()));
    assert_eq!(shape.schema, items());
    assert_eq!(shape.snapshot, None);
    assert!(!shape.snapshot_filter_done);
    assert_eq!(snapshot.handle, shape.handle);
    assert_eq!(snapshot.publication, Harness::config().target.publication);
    let suffix = format!("-{}", stamp.0);
    assert!(
        shape.handle.as_str().ends_with(&suffix),
        "{} vs {suffix}",
        shape.handle
    );
}

#[test]
fn a_second_request_for_the_same_definition_gets_the_same_handle() {
    // Goal: one shape per definition: later requests are answered with its handle, during
    // its snapshot and after.
    // Method: request the same definition three times around its snapshot.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    let again = h.request(whole(&items()), &items());
    let out = h.take();
    assert!(
        matches!(&out[..], [Output::ShapeExists { op, handle: h }] if *op == again && *h == handle)
    );
    h.snapshot_taken(op, super::harness::early_snapshot());
    h.take();
    h.request(whole(&items()), &items());
    assert!(matches!(&h.take()[..], [Output::ShapeExists { handle: h, .. }] if *h == handle));
}

#[test]
fn different_definitions_get_different_handles() {
    // Goal: table, column selection, replica mode and log mode each make a different shape.
    // Method: request five definitions.
    let mut h = Harness::active();
    let definitions = [
        whole(&items()),
        selecting(&items(), &["id", "title"]),
        crate::shape::ShapeDefinition {
            replica: Replica::Full,
            where_clause: None,
            log: crate::shape::LogMode::Full,
            ..whole(&items())
        },
        crate::shape::ShapeDefinition {
            log: crate::shape::LogMode::ChangesOnly,
            ..whole(&items())
        },
        whole(&others()),
    ];
    let mut handles = Vec::new();
    for d in definitions {
        let schema = if d.relation.table == "items" {
            items()
        } else {
            others()
        };
        h.request(d, &schema);
        handles.push(created(&h.take()).0);
    }
    let distinct: std::collections::BTreeSet<_> = handles.iter().collect();
    assert_eq!(distinct.len(), 5, "{handles:?}");
}

#[test]
fn handle_stamps_strictly_increase_when_the_wall_clock_steps_back() {
    // Goal: ID: a handle is never issued twice, even if wall time steps backwards.
    // Method: three requests with unix_micros 5000, 4000, 9000.
    let mut h = Harness::active();
    let mut stamps = Vec::new();
    for (schema, micros) in [
        (items(), 5_000),
        (others(), 4_000),
        (table(9, "t", &[("id", 23, true)]), 9_000),
    ] {
        h.request_at(whole(&schema), &schema, micros);
        stamps.push(created(&h.take()).1 .0);
    }
    assert_eq!(stamps, [5_000, 5_001, 9_000]);
}

/// The stamp reservation the `CreateShape` among `out` asks Postgres for.
fn reservation(out: &[Output]) -> Option<HandleStamp> {
    out.iter().find_map(|o| match o {
        Output::CreateShape { reserve_stamps, .. } => *reserve_stamps,
        _ => None,
    })
}

#[test]
fn a_restored_storage_directory_never_gets_a_shown_handle_again_even_with_the_clock_behind() {
    // Goal: ID-2 (found by sim seed 0x5e): an operator restores an older copy of the storage
    // directory, which rolls its stamp floor back, and the wall clock is behind the stamps
    // that copy never saw. Postgres's reservation, which no restore rolls back, keeps the
    // next handle from repeating one already shown.
    // Method: back up empty storage; create a shape with the clock at 9000; restore the
    // backup; request the same definition with the clock at 9000 again.
    let mut h = Harness::active();
    let backup = h.backup();
    h.request_at(whole(&items()), &items(), 9_000);
    let out = h.take();
    let (shown, stamp) = created(&out);
    assert_eq!(stamp, HandleStamp(9_000));
    assert!(
        reservation(&out).is_some_and(|r| r >= stamp),
        "reserved first"
    );

    let mut h = h.restored(backup);
    h.start(START_LSN);
    h.take();
    h.request_at(whole(&items()), &items(), 9_000);
    let (again, stamp_again) = created(&h.take());
    assert_ne!(again, shown);
    assert!(stamp_again > stamp, "{stamp_again:?} after {stamp:?}");
}

#[test]
fn stamps_are_reserved_in_postgres_a_block_at_a_time_and_again_after_a_failed_creation() {
    // Goal: ID-2: the reservation is written when a stamp passes it (not per shape), and a
    // creation that failed (its reservation may not have reached Postgres) makes the next
    // one reserve again.
    // Method: three requests a second apart; the first snapshot fails; a fourth request.
    let mut h = Harness::active();
    let mut reserved = Vec::new();
    let mut ops = Vec::new();
    for (schema, micros) in [
        (items(), 1_000_000),
        (others(), 2_000_000),
        (table(9, "t", &[("id", 23, true)]), 3_000_000),
    ] {
        ops.push(h.request_at(whole(&schema), &schema, micros));
        reserved.push(reservation(&h.take()));
    }
    let first = reserved[0].expect("the first stamp is past the empty reservation");
    assert!(first > HandleStamp(3_000_000), "a block ahead: {first:?}");
    assert_eq!(reserved[1..], [None, None]);

    h.input(Input::SnapshotFailed {
        op: ops[0],
        refusal: None,
    });
    h.take();
    let schema = table(10, "u", &[("id", 23, true)]);
    h.request_at(whole(&schema), &schema, 4_000_000);
    assert!(reservation(&h.take()).is_some(), "reserved again");
}

#[test]
fn truncating_the_table_removes_its_shape_and_a_new_request_mints_another_handle() {
    // Goal: invalidation: TRUNCATE removes the shape (clients get 409) and the definition
    // gets a new handle next time.
    // Method: a live shape, a TRUNCATE, a new request for the same definition.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    h.commit(&Txn::new(700, 0x2000).truncate(&[&items()]));
    let out = h.take();
    assert_eq!(removed(&out), std::slice::from_ref(&handle));
    assert!(entries(&out, &handle).is_empty());
    assert_eq!(
        flushes(&out),
        [Lsn(0x2001)],
        "nothing to flush: confirmed at once"
    );

    h.request(whole(&items()), &items());
    let (fresh, _) = created(&h.take());
    assert_ne!(fresh, handle);
}

#[test]
fn a_relation_message_with_changed_columns_removes_the_shape() {
    // Goal: a schema change Postgres announces invalidates the table's shapes.
    // Method: after a first transaction announced items, a transaction announces items with
    // an added column and inserts a row of the new shape.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    h.commit(&Txn::new(700, 0x2000).insert(&items(), &["1", "a", "1"]));
    h.complete_flush();
    h.take();
    let mut altered = items();
    altered
        .columns
        .push(table(0, "x", &[("extra", 25, false)]).columns.remove(0));
    h.commit(&Txn::new(701, 0x3000).insert(&altered, &["2", "b", "2", "e"]));
    let out = h.take();
    assert_eq!(removed(&out), std::slice::from_ref(&handle));
    assert!(entries(&out, &handle).is_empty());
}

#[test]
fn an_unchanged_relation_announced_again_keeps_the_shape() {
    // Goal: pgoutput re-announces every relation on a new connection; an identical
    // announcement is not a schema change for the shape reloaded from storage.
    // Method: reach active, reconnect, then a transaction that re-announces items.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    h.commit(&Txn::new(700, 0x2000).insert(&items(), &["1", "a", "1"]));
    h.complete_flush();
    h.lose_replication();
    h.advance(Duration::from_secs(1));
    h.start(Lsn(0x2001));
    h.take();
    h.commit(
        &Txn::new(701, 0x3000)
            .relation(&items())
            .insert(&items(), &["2", "b", "2"]),
    );
    let out = h.take();
    assert!(removed(&out).is_empty());
    assert_eq!(
        super::harness::offsets(&entries(&out, &handle)),
        ["12288_0"]
    );
}

#[test]
fn a_transaction_on_another_table_leaves_the_shape_alone() {
    // Goal: truncates and schema changes of other tables do not touch a shape.
    // Method: a shape on items; truncate and alter others; then use items.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    h.commit(&Txn::new(700, 0x2000).truncate(&[&others()]));
    let mut altered = others();
    altered.columns.pop();
    h.commit(&Txn::new(701, 0x3000).insert(&altered, &["1"]));
    assert!(removed(&h.take()).is_empty());
    h.commit(&Txn::new(702, 0x4000).insert(&items(), &["1", "a", "1"]));
    assert_eq!(entries(&h.take(), &handle).len(), 1);
}

#[test]
fn a_recreated_slot_removes_every_existing_shape() {
    // Goal: CT-1: a slot created anew breaks continuity: every shape is removed, and
    // requests then create fresh ones. (The snapshotting shape is now removed as incomplete
    // when storage is reloaded (SN-6) rather than by the purge, which finds only the live one.)
    // Method: a live shape and a snapshotting one; reconnect to a newly created slot.
    let mut h = Harness::active();
    let live = h.live_shape(&items());
    let (snapshotting, _) = h.create_shape(&others());
    h.take();
    h.lose_replication();
    h.advance(Duration::from_secs(1));
    h.start_with(START_LSN, true);
    let out = h.take();
    assert_eq!(kinds(&out).iter().filter(|k| **k == "Purged").count(), 1);
    let mut gone = removed(&out);
    gone.sort();
    let mut expected = vec![live.clone(), snapshotting];
    expected.sort();
    assert_eq!(gone, expected);
    assert!(h.stored_handles().is_empty());

    h.request(whole(&items()), &items());
    assert_ne!(created(&h.take()).0, live);
}

#[test]
fn a_recreated_slot_restarts_positions_at_its_consistent_point() {
    // Goal: CT-1: after a continuity break (a PITR or a failover to another cluster: the new
    // slot's consistent point may lie below what the old slot confirmed) the core must
    // neither confirm the old position to the new slot nor drop its transactions as
    // "already durable".
    // Method: confirm 0x9001 on the old slot; reconnect to a new slot at 0x2000; create a
    // shape and commit a transaction at 0x3000 on it.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.commit(&Txn::new(700, 0x9000).insert(&items(), &["1", "a", "1"]));
    h.complete_flush();
    assert_eq!(flushes(&h.take()), [Lsn(0x9001)]);
    h.lose_replication();
    h.advance(Duration::from_secs(1));
    h.start_with(Lsn(0x2000), true);
    let out = h.take();
    assert_eq!(
        flushes(&out),
        [Lsn(0x2000)],
        "the new slot is confirmed where it starts"
    );

    let handle = h.live_shape(&items());
    h.commit(&Txn::new(701, 0x3000).insert(&items(), &["2", "b", "2"]));
    let out = h.take();
    assert_eq!(
        super::harness::offsets(&entries(&out, &handle)),
        ["12288_0"]
    );
}

#[test]
fn an_update_without_the_full_old_row_removes_the_shape() {
    // Goal: a change ampere cannot render faithfully (no full old row: REPLICA IDENTITY is
    // not FULL) invalidates the shape instead of feeding clients a guess.
    // Method: a live shape; an update carrying only the new row.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    h.commit(&Txn::new(700, 0x2000).update_without_old_row(&items(), &["1", "b", "1"]));
    let out = h.take();
    assert_eq!(removed(&out), std::slice::from_ref(&handle));
    assert!(entries(&out, &handle).is_empty());
    assert_eq!(flushes(&out), [Lsn(0x2001)]);
}

#[test]
fn a_schema_change_during_the_snapshot_removes_the_snapshotting_shape() {
    // Goal: a shape whose table changes while its snapshot runs is removed at once, holds
    // nothing, and its late snapshot reply is dropped.
    // Method: a snapshotting shape; a transaction announcing items with a column dropped;
    // then the snapshot completes.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    let mut altered = items();
    altered.columns.pop();
    h.commit(&Txn::new(700, 0x2000).insert(&altered, &["1", "a"]));
    let out = h.take();
    assert_eq!(removed(&out), std::slice::from_ref(&handle));
    assert_eq!(flushes(&out), [Lsn(0x2001)]);
    h.snapshot_taken(op, super::harness::early_snapshot());
    assert!(h.take().is_empty());
}

/// A live shape of `items` filtered by `where_clause`; outputs taken.
fn live_where_shape(h: &mut Harness, where_clause: &str) -> ShapeHandle {
    live_filtered_shape(h, where_clause, crate::shape::LogMode::Full)
}

/// A live shape of `items` filtered by `where_clause`, with log mode `log`; outputs taken.
fn live_filtered_shape(
    h: &mut Harness,
    where_clause: &str,
    log: crate::shape::LogMode,
) -> ShapeHandle {
    let canonical =
        crate::where_clause::WhereClause::canonicalize(where_clause, &Default::default())
            .expect("valid where clause");
    let definition = crate::shape::ShapeDefinition {
        where_clause: Some(canonical),
        log,
        ..whole(&items())
    };
    let op = h.request(definition, &items());
    let (handle, _) = created(&h.take());
    h.snapshot_taken(op, super::harness::early_snapshot());
    h.take();
    handle
}

/// Each entry's `operation` header and `key` (as escaped in the JSON text).
fn operations(entries: &[LogEntry]) -> Vec<(String, String)> {
    let member = |json: &str, name: &str| -> String {
        let start = json
            .find(&format!("\"{name}\":\""))
            .expect("member present")
            + name.len()
            + 4;
        let rest = &json[start..];
        let mut end = 0;
        let bytes = rest.as_bytes();
        while bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        rest[..end].to_owned()
    };
    entries
        .iter()
        .map(|e| (member(&e.json, "operation"), member(&e.json, "key")))
        .collect()
}

#[test]
fn rows_move_in_and_out_of_a_filtered_shape_as_updates_change_them() {
    // Goal: protocol.md §5.5: insert iff where(new), delete iff where(old); an update
    // in→in is an update, in→out a delete, out→in an insert of the whole row, out→out nothing.
    // Method: a live `n = 7` shape; one transaction with every transition, in order.
    let mut h = Harness::active();
    let handle = live_where_shape(&mut h, "n = 7");
    let t = items();
    h.commit(
        &Txn::new(700, 0x2000)
            .insert(&t, &["1", "a", "7"])
            .insert(&t, &["2", "b", "8"])
            .update(&t, &["1", "a", "7"], &["1", "a2", "7"])
            .update(&t, &["1", "a2", "7"], &["1", "a2", "9"])
            .update(&t, &["2", "b", "8"], &["2", "b", "7"])
            .update(&t, &["3", "c", "1"], &["3", "c", "2"])
            .delete(&t, &["2", "b", "7"])
            .delete(&t, &["4", "d", "5"]),
    );
    let ops = operations(&entries(&h.take(), &handle));
    let expect = |op: &str, key: &str| {
        (
            op.to_owned(),
            format!("\\\"public\\\".\\\"items\\\"/\\\"{key}\\\""),
        )
    };
    assert_eq!(
        ops,
        [
            expect("insert", "1"),
            expect("update", "1"),
            expect("delete", "1"),
            expect("insert", "2"),
            expect("delete", "2"),
        ]
    );
}

#[test]
fn a_key_change_inside_a_filtered_shape_is_a_delete_and_insert_pair() {
    // Goal: a primary-key change of a row in the shape before and after keeps the
    // key_change pair; moving out under a new key is a plain delete of the old key.
    let mut h = Harness::active();
    let handle = live_where_shape(&mut h, "n = 7");
    let t = items();
    h.commit(
        &Txn::new(700, 0x2000)
            .update(&t, &["1", "a", "7"], &["10", "a", "7"])
            .update(&t, &["10", "a", "7"], &["11", "a", "8"]),
    );
    let out = entries(&h.take(), &handle);
    let ops = operations(&out);
    assert_eq!(ops.len(), 3, "{out:?}");
    assert_eq!(ops[0].0, "delete");
    assert!(out[0].json.contains("key_change_to"), "{}", out[0].json);
    assert_eq!(ops[1].0, "insert");
    assert!(out[1].json.contains("key_change_from"), "{}", out[1].json);
    assert_eq!(ops[2].0, "delete");
    assert!(ops[2].1.contains("10"), "{}", out[2].json);
    assert!(!out[2].json.contains("key_change"), "{}", out[2].json);
}

#[test]
fn a_row_moving_into_a_filtered_changes_only_shape_arrives_as_an_insert_of_the_whole_row() {
    // Goal: a changes_only shape logged no rows, so the client knows a row only from an
    // insert. A row moving in (out→in) is an insert of the whole new row, as for full shapes
    // and as Electric sends it; the client applies later updates and deletes to it. An update
    // in→in of a row the log never inserted stays an update (Electric's log too): the
    // client's `Shape` in changes_only mode applies updates and deletes only to keys it saw
    // inserted, and the shape holds no per-key state to tell them apart.
    // Method: a live changes_only `n = 7` shape; row 1 moves in, is updated and moves out;
    // row 2 is updated in→in without ever being inserted.
    let mut h = Harness::active();
    let handle = live_filtered_shape(&mut h, "n = 7", crate::shape::LogMode::ChangesOnly);
    let t = items();
    h.commit(
        &Txn::new(700, 0x2000)
            .update(&t, &["1", "a", "1"], &["1", "a", "7"])
            .update(&t, &["1", "a", "7"], &["1", "b", "7"])
            .update(&t, &["1", "b", "7"], &["1", "b", "8"])
            .update(&t, &["2", "c", "7"], &["2", "d", "7"]),
    );
    let out = entries(&h.take(), &handle);
    let ops: Vec<String> = operations(&out).into_iter().map(|(op, _)| op).collect();
    assert_eq!(ops, ["insert", "update", "delete", "update"]);
    assert!(
        out[0]
            .json
            .contains(r#""value":{"id":"1","title":"a","n":"7"}"#),
        "the move-in carries the whole row: {}",
        out[0].json
    );
}

#[test]
fn shapes_that_encode_alike_share_each_entry_and_get_what_a_shape_alone_gets() {
    // Goal: a change is encoded once per distinct encoder (table, columns, replica), and
    // every shape still gets exactly its own entries: where clauses decide which entries,
    // never what they say; a shape selecting other columns gets its own encoding.
    // Method: the same transaction (insert, key change, update moving a row out, delete)
    // routed to three where-shapes and one column-selecting shape in one instance, and to
    // each alone in a fresh instance; entries compared byte for byte.
    let txn = || {
        Txn::new(700, 0x2000)
            .insert(&items(), &["1", "a", "1"])
            .insert(&items(), &["5", "e", "5"])
            .update(&items(), &["1", "a", "1"], &["2", "a", "1"])
            .update(&items(), &["5", "e", "5"], &["5", "f", "9"])
            .delete(&items(), &["2", "a", "1"])
    };
    let clauses = ["id > 0", "n < 6", "id <> 5"];
    let mut together = Harness::active();
    let handles: Vec<ShapeHandle> = clauses
        .iter()
        .map(|c| live_where_shape(&mut together, c))
        .collect();
    let op = together.request(selecting(&items(), &["title", "id"]), &items());
    let (selecting, _) = created(&together.take());
    together.snapshot_taken(op, super::harness::early_snapshot());
    together.take();
    together.commit(&txn());
    let out = together.take();

    for (clause, handle) in clauses.iter().zip(&handles) {
        let mut alone = Harness::active();
        let own = live_where_shape(&mut alone, clause);
        alone.commit(&txn());
        let expected: Vec<String> = entries(&alone.take(), &own)
            .into_iter()
            .map(|e| e.json)
            .collect();
        let got: Vec<String> = entries(&out, handle).into_iter().map(|e| e.json).collect();
        assert!(!got.is_empty(), "{clause}: no entries");
        assert_eq!(got, expected, "{clause}");
    }
    let selected = entries(&out, &selecting);
    assert_eq!(
        selected.len(),
        6,
        "two inserts, a key change (two), an update, a delete"
    );
    assert!(
        selected.iter().all(|e| !e.json.contains(r#""n":"#)),
        "the column-selecting shape's own encoding: {selected:?}"
    );
}
