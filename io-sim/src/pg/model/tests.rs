//! Unit tests of the model and its logical decoding.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ampere_core::lsn::Lsn;
use ampere_core::pgoutput::{Decoder, Oid, ProtoVersion, Xid};
use ampere_core::ports::SlotPersistence;
use ampere_core::shape::RelationName;
use ampere_core::snapshot::FullXid;
use ampere_core::txn::{Change, Transaction, TxnAssembler};

use super::session::advisory_key;
use super::*;
use crate::pg::walsender::Walsender;

const ITEMS_OID: u32 = 16_384;
const OTHER_OID: u32 = 16_390;
const PUB: &str = "electric_publication_default";
const SLOT: &str = "electric_slot_default";

fn items() -> RelationName {
    RelationName {
        schema: "public".into(),
        table: "items".into(),
    }
}

fn other() -> RelationName {
    RelationName {
        schema: "public".into(),
        table: "other".into(),
    }
}

fn model_from(first_xid: u64) -> PgModel {
    PgModel::new(PgModelConfig {
        system_id: 7_000_000_000_000_000_001,
        timeline: 1,
        first_xid,
        tables: vec![
            TableDef::with_text_columns(items(), ITEMS_OID, &["title"]),
            TableDef::with_text_columns(other(), OTHER_OID, &["note"]),
        ],
    })
}

fn model() -> PgModel {
    model_from(740)
}

fn row(id: u64, title: &str) -> Row {
    vec![Some(id.to_string()), Some(title.to_owned())]
}

/// Commits one transaction inserting `rows` into items.
fn insert_committed(m: &mut PgModel, rows: &[(u64, &str)]) -> Lsn {
    let xid = m.begin();
    for (id, title) in rows {
        m.insert(xid, &items(), row(*id, title)).unwrap();
    }
    m.commit(xid).unwrap()
}

/// Decodes everything from `start` through the core's decoder and assembler.
fn stream(m: &PgModel, start: Lsn) -> Vec<Transaction> {
    let mut walsender = Walsender::new(m, PUB, start);
    let messages = walsender.poll(m, usize::MAX).unwrap();
    let mut decoder = Decoder::new(ProtoVersion::V1);
    let mut assembler = TxnAssembler::new();
    let mut out = Vec::new();
    for message in messages {
        let decoded = decoder.decode(&message.data).unwrap();
        out.extend(assembler.push(decoded).unwrap());
    }
    assert!(!assembler.in_transaction(), "a transaction was cut off");
    out
}

#[test]
fn snapshot_excludes_transactions_in_progress() {
    let mut m = model();
    insert_committed(&mut m, &[(1, "a")]);
    let open = m.begin();
    m.insert(open, &items(), row(2, "b")).unwrap();
    let later = m.begin();

    let snapshot = m.current_snapshot();
    assert_eq!(snapshot.xmin, FullXid(open));
    assert_eq!(snapshot.xmax, FullXid(later + 1));
    assert_eq!(snapshot.xip, vec![FullXid(open), FullXid(later)]);
    assert!(m.xact_in_progress(open));
    let reader = m.open_backend("client", false);
    m.begin_read(reader).unwrap();
    assert_eq!(m.read_snapshot(reader).unwrap(), snapshot);
    let rows = m
        .read_rows(reader, &items(), &["id".into(), "title".into()])
        .unwrap();
    assert_eq!(rows, vec![row(1, "a")]);

    m.commit(open).unwrap();
    assert_eq!(m.xact_status(open), XactStatus::Committed);
    assert_eq!(m.rows(&items()), vec![row(1, "a"), row(2, "b")]);
    assert_eq!(m.current_snapshot().xip, vec![FullXid(later)]);
}

#[test]
fn xids_straddling_an_epoch_boundary_compare_in_64_bits() {
    // Epoch 3, two xids below the wrap: the third transaction is 4:3 (0, 1, 2 are special).
    let first = (3_u64 << 32) + 0xFFFF_FFFE;
    let mut m = model_from(first);
    let a = m.begin();
    let b = m.begin();
    let c = m.begin();
    assert_eq!((a, b, c), (first, first + 1, (4_u64 << 32) + 3));
    m.commit(a).unwrap();
    let snapshot = m.current_snapshot();
    assert_eq!(snapshot.xmin, FullXid(b));
    assert_eq!(snapshot.xip, vec![FullXid(b), FullXid(c)]);
    let low = |x: u64| Xid(u32::try_from(x & 0xFFFF_FFFF).unwrap());
    assert!(snapshot.is_visible(low(a)));
    assert!(!snapshot.is_visible(low(b)));
    assert!(!snapshot.is_visible(low(c)), "xid 3 of epoch 4 is in xip");
    m.commit(c).unwrap();
    let streamed = m.committed().iter().map(|t| t.xid).collect::<Vec<_>>();
    assert_eq!(streamed, vec![a, c]);
}

#[test]
fn a_change_written_before_add_table_is_not_published() {
    // Electric #4773: a transaction open across ALTER PUBLICATION … ADD TABLE.
    let mut m = model();
    m.create_publication(PUB);
    let pid = m.open_backend("app", true);
    let start = m
        .create_slot(pid, SLOT, SlotPersistence::Persistent)
        .unwrap();
    let xid = m.begin();
    m.insert(xid, &items(), row(1, "before")).unwrap();
    m.add_table_to_publication(PUB, &items()).unwrap();
    m.insert(xid, &items(), row(2, "after")).unwrap();
    m.commit(xid).unwrap();

    let txns = stream(&m, start);
    assert_eq!(txns.len(), 1);
    let [Change::Insert { new, .. }] = &txns[0].changes[..] else {
        panic!("one insert expected: {:?}", txns[0].changes);
    };
    assert_eq!(new, &row(2, "after"));
}

#[test]
fn transactions_committing_before_the_start_point_are_skipped() {
    let mut m = model();
    m.create_publication(PUB);
    m.add_table_to_publication(PUB, &items()).unwrap();
    let first = insert_committed(&mut m, &[(1, "a")]);
    let second = insert_committed(&mut m, &[(2, "b")]);
    let commits = |start| -> Vec<Lsn> { stream(&m, start).iter().map(|t| t.commit_lsn).collect() };
    assert_eq!(commits(first), vec![first, second]);
    assert_eq!(
        commits(first.next()),
        vec![second],
        "commit_lsn + 1 confirms it"
    );
    assert_eq!(commits(second), vec![second]);
    assert_eq!(commits(second.next()), vec![]);
}

#[test]
fn keepalives_report_the_wal_end_only_once_caught_up() {
    let mut m = model();
    m.create_publication(PUB);
    m.add_table_to_publication(PUB, &items()).unwrap();
    let start = m.wal_end();
    let mut walsender = Walsender::new(&m, PUB, start);
    let commit = insert_committed(&mut m, &[(1, "a")]);
    assert_eq!(walsender.keepalive_wal_end(&m), start, "not decoded yet");
    walsender.poll(&m, usize::MAX).unwrap();
    let open = m.begin();
    m.insert(open, &items(), row(2, "b")).unwrap();
    let wal_end = walsender.keepalive_wal_end(&m);
    assert_eq!(wal_end, m.wal_end());
    assert!(wal_end > commit);
    let next_commit = m.commit(open).unwrap();
    assert!(
        next_commit >= wal_end,
        "the open transaction commits at or after it"
    );
}

#[test]
fn encoded_transactions_decode_to_the_same_changes() {
    // Goal: encode → core Decoder + TxnAssembler gives back the model's changes, including
    // a Relation message after ADD COLUMN, a large transaction and an empty one.
    let mut m = model();
    m.create_publication(PUB);
    m.add_table_to_publication(PUB, &items()).unwrap();
    m.add_table_to_publication(PUB, &other()).unwrap();
    let start = m.wal_end();
    let big: Vec<(u64, String)> = (0..3000).map(|i| (i, format!("title {i}"))).collect();
    let big: Vec<(u64, &str)> = big.iter().map(|(i, t)| (*i, t.as_str())).collect();
    insert_committed(&mut m, &big);
    let xid = m.begin();
    m.update(xid, &items(), row(5, "renamed")).unwrap();
    m.delete(xid, &items(), &["6"]).unwrap();
    m.insert(xid, &other(), row(1, "x")).unwrap();
    m.commit(xid).unwrap();
    m.add_column(&items(), "extra").unwrap();
    let xid = m.begin();
    m.insert(
        xid,
        &items(),
        vec![Some("9000".into()), None, Some("e".into())],
    )
    .unwrap();
    m.truncate(xid, &[other()]).unwrap();
    m.commit(xid).unwrap();
    let empty = m.begin();
    m.commit(empty).unwrap();

    let txns = stream(&m, start);
    let model_txns: Vec<&CommittedTxn> = m.committed().iter().collect();
    assert_eq!(txns.len(), model_txns.len(), "empty transactions are sent");
    for (decoded, expected) in txns.iter().zip(&model_txns) {
        assert_eq!(
            decoded.xid.0,
            u32::try_from(expected.xid & 0xFFFF_FFFF).unwrap()
        );
        assert_eq!(decoded.commit_lsn, expected.commit_lsn);
        assert_eq!(decoded.end_lsn, expected.end_lsn);
        let changes: Vec<Change> = expected.changes.iter().filter_map(core_change).collect();
        assert_eq!(decoded.changes, changes);
    }
    let after_ddl = &txns[3];
    assert_eq!(
        after_ddl.relations.len(),
        1,
        "items anew; other was described before"
    );
    assert_eq!(after_ddl.relations[0].columns.len(), 3);
    assert_eq!(txns[1].relations.len(), 1, "other, first change on it");
}

/// The core's view of a model change (every table here is published).
fn core_change(change: &ModelChange) -> Option<Change> {
    let oid = |r: &RelationName| Oid(if *r == items() { ITEMS_OID } else { OTHER_OID });
    Some(match change {
        ModelChange::Insert { relation, row } => Change::Insert {
            relation: oid(relation),
            new: row.clone(),
        },
        ModelChange::Update { relation, old, new } => Change::Update {
            relation: oid(relation),
            old: Some(old.clone()),
            new: new.clone(),
        },
        ModelChange::Delete { relation, old } => Change::Delete {
            relation: oid(relation),
            old: Some(old.clone()),
        },
        ModelChange::Truncate { relations } => Change::Truncate {
            relations: relations.iter().map(oid).collect(),
        },
        ModelChange::AddColumn { .. } => return None,
    })
}

#[test]
fn add_column_gives_existing_rows_null_and_waits_for_writers() {
    let mut m = model();
    insert_committed(&mut m, &[(1, "a")]);
    let writer = m.begin();
    m.insert(writer, &items(), row(2, "b")).unwrap();
    let refused = m.add_column(&items(), "extra");
    assert!(matches!(refused, Err(ModelError::Locked { holder, .. }) if holder == writer));
    m.commit(writer).unwrap();
    m.add_column(&items(), "extra").unwrap();
    assert_eq!(
        m.rows(&items())[0],
        vec![Some("1".into()), Some("a".into()), None]
    );
    assert_eq!(m.table(&items()).unwrap().columns.len(), 3);
}

#[test]
fn a_crash_reverts_confirmed_flush_to_the_last_checkpoint() {
    let mut m = model();
    let pid = m.open_backend("app", true);
    let start = m
        .create_slot(pid, SLOT, SlotPersistence::Persistent)
        .unwrap();
    m.start_replication(pid, SLOT).unwrap();
    m.standby_status(pid, Lsn(start.0 + 10), Duration::from_secs(1));
    m.checkpoint();
    m.standby_status(pid, Lsn(start.0 + 20), Duration::from_secs(2));
    m.standby_status(pid, Lsn(start.0 + 15), Duration::from_secs(3));
    assert_eq!(
        m.slot(SLOT).unwrap().confirmed_flush_lsn,
        Lsn(start.0 + 20),
        "max"
    );
    m.restart(true);
    let slot = m.slot(SLOT).unwrap();
    assert_eq!(slot.confirmed_flush_lsn, Lsn(start.0 + 10));
    assert!(!slot.is_active());
    assert!(!m.is_backend_alive(pid));

    let pid = m.open_backend("app", true);
    m.start_replication(pid, SLOT).unwrap();
    m.standby_status(pid, Lsn(start.0 + 30), Duration::from_secs(4));
    m.restart(false);
    assert_eq!(m.slot(SLOT).unwrap().confirmed_flush_lsn, Lsn(start.0 + 30));
    assert_eq!(m.ack_events().len(), 4);
}

#[test]
fn a_restart_aborts_transactions_in_progress() {
    let mut m = model();
    let xid = m.begin();
    m.insert(xid, &items(), row(1, "a")).unwrap();
    m.restart(true);
    assert_eq!(m.xact_status(xid), XactStatus::Aborted);
    assert!(matches!(
        m.commit(xid),
        Err(ModelError::NotInProgress { .. })
    ));
    assert!(m.rows(&items()).is_empty());
    let again = m.begin();
    m.insert(again, &items(), row(1, "a")).unwrap();
    m.commit(again).unwrap();
}

#[test]
fn closing_a_backend_releases_its_locks_and_temporary_slot() {
    let mut m = model();
    m.observe_time(Duration::from_secs(5));
    let first = m.open_backend("ampere-1", true);
    let second = m.open_backend("ampere-2", true);
    let key = advisory_key(SLOT);
    assert!(m.try_advisory_lock(first, key));
    assert!(m.try_advisory_lock(first, key), "re-entrant");
    assert!(!m.try_advisory_lock(second, key));
    assert_eq!(m.lock_holder_host(SLOT).as_deref(), Some("ampere-1"));
    m.create_slot(first, SLOT, SlotPersistence::Temporary)
        .unwrap();
    assert_eq!(m.slot(SLOT).unwrap().active_pid, Some(first));

    m.close_backend(first);
    assert!(m.slot(SLOT).is_none(), "temporary slot dropped");
    assert_eq!(m.lock_holder(SLOT), None);
    assert!(m.try_advisory_lock(second, key));
    let events: Vec<(i32, bool)> = m
        .lock_events()
        .iter()
        .map(|e| (e.pid, e.acquired))
        .collect();
    assert_eq!(events, vec![(first, true), (first, false), (second, true)]);
    assert!(m
        .lock_events()
        .iter()
        .all(|e| e.at == Duration::from_secs(5)));
    assert!(m.terminate_backend(second));
    assert!(!m.terminate_backend(second));
    assert_eq!(m.lock_holder(SLOT), None);
}

#[test]
fn stale_lock_holders_are_reported_only_while_the_slot_is_inactive() {
    let mut m = model();
    let holder = m.open_backend("ampere-1", true);
    let waiter = m.open_backend("ampere-2", true);
    assert!(m.try_advisory_lock(holder, advisory_key(SLOT)));
    assert!(m.stale_lock_holders(SLOT, waiter).is_empty(), "no slot");
    m.create_slot(holder, SLOT, SlotPersistence::Persistent)
        .unwrap();
    assert_eq!(m.stale_lock_holders(SLOT, waiter), vec![holder]);
    assert!(
        m.stale_lock_holders(SLOT, holder).is_empty(),
        "never our own"
    );
    m.start_replication(holder, SLOT).unwrap();
    assert!(m.stale_lock_holders(SLOT, waiter).is_empty(), "streaming");
    let busy = m.start_replication(waiter, SLOT).unwrap_err();
    assert_eq!(busy.sqlstate, "55006");
}

#[test]
fn slot_faults_terminate_the_walsender() {
    let mut m = model();
    let pid = m.open_backend("app", true);
    m.create_slot(pid, SLOT, SlotPersistence::Persistent)
        .unwrap();
    m.start_replication(pid, SLOT).unwrap();
    assert!(m.invalidate_slot(SLOT));
    assert!(!m.is_backend_alive(pid));
    let pid = m.open_backend("app", true);
    let lost = m.start_replication(pid, SLOT).unwrap_err();
    assert_eq!(lost.sqlstate, "55000");
    assert_eq!(m.slot(SLOT).unwrap().wal_status(), "lost");
    assert!(m.drop_slot(SLOT));
    assert_eq!(
        m.start_replication(pid, SLOT).unwrap_err().sqlstate,
        "42704"
    );
}

#[test]
fn decoding_where_the_publication_was_dropped_fails() {
    let mut m = model();
    m.create_publication(PUB);
    m.add_table_to_publication(PUB, &items()).unwrap();
    let start = m.wal_end();
    insert_committed(&mut m, &[(1, "a")]);
    m.drop_publication(PUB);
    insert_committed(&mut m, &[(2, "b")]);
    let mut walsender = Walsender::new(&m, PUB, start);
    let error = walsender.poll(&m, usize::MAX).unwrap_err();
    assert_eq!(error.sqlstate, "42704");
}

#[test]
fn the_ack_hook_reads_the_model() {
    let mut m = model();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    m.set_on_ack(Some(Box::new(move |model: &PgModel, event: &AckEvent| {
        let confirmed = model.slot(&event.slot).map(|s| s.confirmed_flush_lsn);
        log.lock().unwrap().push((event.flush, confirmed));
    })));
    let pid = m.open_backend("app", true);
    let start = m
        .create_slot(pid, SLOT, SlotPersistence::Persistent)
        .unwrap();
    m.start_replication(pid, SLOT).unwrap();
    m.standby_status(pid, Lsn(start.0 + 8), Duration::from_secs(1));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, vec![(Lsn(start.0 + 8), Some(Lsn(start.0 + 8)))]);
}

#[test]
fn conflicting_writes_are_refused_until_the_holder_ends() {
    let mut m = model();
    let a = m.begin();
    let b = m.begin();
    m.insert(a, &items(), row(1, "a")).unwrap();
    assert!(matches!(
        m.insert(b, &items(), row(1, "b")),
        Err(ModelError::Locked { .. })
    ));
    assert!(matches!(
        m.truncate(b, &[items()]),
        Err(ModelError::Locked { .. })
    ));
    m.abort(a).unwrap();
    m.insert(b, &items(), row(1, "b")).unwrap();
    assert!(matches!(
        m.insert(b, &items(), row(1, "c")),
        Err(ModelError::UniqueViolation { .. })
    ));
    assert!(m.update(b, &items(), row(1, "c")).unwrap());
    assert!(!m.delete(b, &items(), &["2"]).unwrap());
    m.commit(b).unwrap();
    assert_eq!(m.rows(&items()), vec![row(1, "c")]);
}

#[test]
fn a_publication_comment_survives_crashes_and_goes_with_its_publication() {
    // Goal: ampere's stamp reservation (ID-2) lives in a publication comment: committed
    // catalog state, so a crash keeps it; DROP PUBLICATION takes it along, as in Postgres.
    let mut m = model();
    assert!(
        m.comment_on_publication("p", "x".into()).is_err(),
        "no publication"
    );
    m.create_publication("p");
    assert_eq!(m.publication_comment("p"), None);
    m.comment_on_publication("p", "reserved".into()).unwrap();
    m.restart(true);
    assert_eq!(m.publication_comment("p"), Some("reserved"));
    m.drop_publication("p");
    m.create_publication("p");
    assert_eq!(m.publication_comment("p"), None);
}

#[test]
fn a_read_transaction_sees_the_rows_of_its_first_snapshot_only() {
    let mut m = model();
    insert_committed(&mut m, &[(1, "a")]);
    let reader = m.open_backend("client", false);
    m.begin_read(reader).unwrap();
    let snapshot = m.read_snapshot(reader).unwrap();
    insert_committed(&mut m, &[(2, "b")]);
    assert_eq!(m.read_snapshot(reader).unwrap(), snapshot);
    let columns = ["id".to_owned(), "title".to_owned()];
    assert_eq!(
        m.read_rows(reader, &items(), &columns).unwrap(),
        vec![row(1, "a")]
    );
    m.end_read(reader).unwrap();
    assert!(m.read_rows(reader, &items(), &columns).is_err());
}

#[test]
fn a_share_lock_holds_off_ddl_until_the_read_ends_or_its_backend_closes() {
    let mut m = model();
    let reader = m.open_backend("client", false);
    m.begin_read(reader).unwrap();
    m.lock_share(reader, &items()).unwrap();
    assert!(matches!(
        m.add_column(&items(), "extra"),
        Err(ModelError::ShareLocked { pid, .. }) if pid == reader
    ));
    let truncating = m.begin();
    assert!(matches!(
        m.truncate(truncating, &[items()]),
        Err(ModelError::ShareLocked { .. })
    ));
    m.truncate(truncating, &[other()]).unwrap();
    m.commit(truncating).unwrap();
    m.end_read(reader).unwrap();
    m.add_column(&items(), "extra").unwrap();

    m.begin_read(reader).unwrap();
    m.lock_share(reader, &items()).unwrap();
    m.close_backend(reader);
    m.add_column(&items(), "extra2").unwrap();
}

#[test]
fn a_share_lock_is_refused_while_a_truncate_is_in_progress() {
    let mut m = model();
    let truncating = m.begin();
    m.truncate(truncating, &[items()]).unwrap();
    let reader = m.open_backend("client", false);
    m.begin_read(reader).unwrap();
    let refused = m.lock_share(reader, &items()).unwrap_err();
    assert_eq!(refused.sqlstate, "55P03");
}

#[test]
fn a_column_added_after_the_read_snapshot_reads_null() {
    let mut m = model();
    insert_committed(&mut m, &[(1, "a")]);
    let reader = m.open_backend("client", false);
    m.begin_read(reader).unwrap();
    m.read_snapshot(reader).unwrap();
    m.add_column(&items(), "extra").unwrap();
    let columns = ["id".to_owned(), "extra".to_owned()];
    assert_eq!(
        m.read_rows(reader, &items(), &columns).unwrap(),
        vec![vec![Some("1".into()), None]]
    );
}
