//! Tables that go away under their shapes (dropped, renamed, recreated) and snapshots that
//! can never succeed (issue 12).

use std::time::Duration;

use super::harness::{kinds, others, removed, selecting, table, whole, Harness, Txn, START_LSN};
use crate::instance::{Input, Output};
use crate::pgoutput::Oid;
use crate::ports::{RefusalKind, SnapshotRefusal};
use crate::shape::{RelationName, ShapeHandle, TableSchema};
use crate::OpId;

use super::harness::items;

/// `relation_check::RELATION_CHECK_PERIOD`.
const PERIOD: Duration = Duration::from_secs(5);
/// How long a refused table is denied (`REFUSAL_TTL`).
const REFUSAL_TTL: Duration = Duration::from_secs(10);

fn refusal() -> SnapshotRefusal {
    SnapshotRefusal {
        kind: RefusalKind::Privilege,
        message: "Unable to create initial snapshot: must be owner of table items".to_owned(),
    }
}

/// The `CheckRelations` among `out`: its op and the tables it asks about.
fn check(out: &[Output]) -> Option<(OpId, Vec<Oid>)> {
    out.iter().find_map(|o| match o {
        Output::CheckRelations {
            op,
            tables,
            publication,
        } => {
            assert!(!publication.is_empty(), "the check names the publication");
            Some((*op, tables.clone()))
        }
        _ => None,
    })
}

fn named(schema: &TableSchema) -> (Oid, RelationName) {
    (schema.oid, schema.relation.clone())
}

#[test]
fn a_refused_snapshot_tells_its_readers_why_before_the_shape_goes() {
    // Goal: a snapshot that can never succeed is not a 409 (which sends the client round
    // again): the read model learns the refusal before the shape's removal wakes readers.
    // Method: a shape whose snapshot fails with a refusal.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.input(Input::SnapshotFailed {
        op,
        refusal: Some(refusal()),
    });
    let out = h.take();
    assert_eq!(kinds(&out), ["RefuseShape", "RemoveShape"]);
    let Output::RefuseShape {
        handle: h,
        refusal: r,
    } = &out[0]
    else {
        unreachable!("checked above")
    };
    assert_eq!((h, r), (&handle, &refusal()));
    assert_eq!(removed(&out), [handle]);
}

#[test]
fn requests_on_a_refused_table_are_denied_without_a_new_snapshot_until_the_refusal_expires() {
    // Goal: a client retrying a refused shape costs no snapshot (no `ALTER PUBLICATION`)
    // while the refusal is fresh, whatever the definition on that table; after it expires
    // the table is tried again (an operator may have fixed it), and other tables never wait.
    // Method: a refused snapshot on items; requests for two definitions on items and one on
    // others; then the same request after the refusal's lifetime.
    let mut h = Harness::active();
    let (_, op) = h.create_shape(&items());
    h.take();
    h.input(Input::SnapshotFailed {
        op,
        refusal: Some(refusal()),
    });
    h.take();
    for definition in [whole(&items()), selecting(&items(), &["id", "title"])] {
        let again = h.request(definition, &items());
        let out = h.take();
        assert_eq!(kinds(&out), ["ShapeDenied"]);
        let Output::ShapeDenied { op, refusal: r } = &out[0] else {
            unreachable!("checked above")
        };
        assert_eq!((*op, r), (again, &refusal()));
    }
    h.request(whole(&others()), &others());
    assert!(kinds(&h.take()).contains(&"CreateShape"));

    h.advance(REFUSAL_TTL + Duration::from_secs(1));
    h.take();
    h.request(whole(&items()), &items());
    assert!(kinds(&h.take()).contains(&"CreateShape"), "tried again");
}

#[test]
fn a_transient_snapshot_failure_leaves_the_table_to_the_next_request() {
    // Goal: only refusals are remembered: a lost connection or a lock timeout is retried by
    // the next request as before.
    // Method: a snapshot fails without a refusal; the same definition is requested again.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.input(Input::SnapshotFailed { op, refusal: None });
    let out = h.take();
    assert_eq!(kinds(&out), ["RemoveShape"]);
    assert_eq!(removed(&out), [handle]);
    h.request(whole(&items()), &items());
    assert!(kinds(&h.take()).contains(&"CreateShape"));
}

#[test]
fn the_periodic_check_rotates_shapes_whose_table_was_dropped_or_renamed() {
    // Goal: a dropped table (its OID gone) and a renamed one (its OID under another name)
    // lose their shapes, so clients get 409 and re-resolve the name; a table unchanged
    // keeps its shape. One query covers every table.
    // Method: live shapes on three tables; a period later, answer the check with items
    // unchanged, others missing and t renamed.
    let mut h = Harness::active();
    let t = table(9, "t", &[("id", 23, true)]);
    let kept = h.live_shape(&items());
    let dropped = h.live_shape(&others());
    let renamed = h.live_shape(&t);
    h.advance(PERIOD);
    let (op, tables) = check(&h.take()).expect("a check a period after the first shape");
    assert_eq!(tables, [t.oid, items().oid, others().oid]);
    let moved = RelationName {
        schema: "public".to_owned(),
        table: "t_old".to_owned(),
    };
    let found = vec![named(&items()), (t.oid, moved)];
    h.input(Input::RelationsChecked {
        op,
        found: Some(found),
    });
    let mut gone = removed(&h.take());
    gone.sort();
    let mut expected = vec![dropped, renamed];
    expected.sort();
    assert_eq!(gone, expected);
    assert!(h.core().shape_handles().any(|s| *s == kept));

    h.advance(PERIOD);
    let (_, tables) = check(&h.take()).expect("checked every period");
    assert_eq!(tables, [items().oid]);
}

#[test]
fn a_failed_check_rotates_nothing_and_the_next_period_asks_again() {
    // Goal: a catalog query that failed (Postgres busy, a pool timeout) is no evidence that
    // tables are gone.
    // Method: the check fails; a period later another one is issued.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.advance(PERIOD);
    let (op, _) = check(&h.take()).expect("a check");
    h.input(Input::RelationsChecked { op, found: None });
    assert!(removed(&h.take()).is_empty());
    assert_eq!(h.core().shape_handles().count(), 1);
    h.advance(PERIOD);
    assert!(check(&h.take()).is_some());
}

#[test]
fn a_shape_created_while_a_check_runs_is_not_judged_by_its_answer() {
    // Goal: the answer covers only the tables it asked about: a shape created meanwhile on
    // another table is not "missing" from it.
    // Method: a check in flight; a shape on others is created; the answer lists items only.
    let mut h = Harness::active();
    h.live_shape(&items());
    h.advance(PERIOD);
    let (op, tables) = check(&h.take()).expect("a check");
    assert_eq!(tables, [items().oid]);
    let newcomer = h.live_shape(&others());
    h.input(Input::RelationsChecked {
        op,
        found: Some(vec![named(&items())]),
    });
    assert!(removed(&h.take()).is_empty());
    assert!(h.core().shape_handles().any(|s| *s == newcomer));
}

#[test]
fn restored_shapes_are_checked_as_soon_as_streaming_starts() {
    // Goal: a table dropped while ampere was down rotates its shapes at startup, not
    // "forever" (issue 12) nor a period later.
    // Method: a live shape, a crash-restart; once streaming, the check is issued at once;
    // answered with the table missing, the shape goes.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let mut h = h.crashed();
    h.start(START_LSN);
    let out = h.take();
    let (op, tables) = check(&out).expect("a check at startup");
    assert_eq!(tables, [items().oid]);
    h.input(Input::RelationsChecked {
        op,
        found: Some(Vec::new()),
    });
    assert_eq!(removed(&h.take()), [handle]);
}

#[test]
fn a_relation_message_giving_a_shapes_table_name_to_another_oid_rotates_the_shape() {
    // Goal: a table recreated under a shape's table name, once it publishes (it joined the
    // publication, or the publication is FOR ALL TABLES), rotates the old table's shapes
    // at once instead of at the next check.
    // Method: a live shape on items; a transaction announces a table named items with
    // another OID and inserts into it.
    let mut h = Harness::active();
    let old: ShapeHandle = h.live_shape(&items());
    let recreated = TableSchema {
        oid: Oid(items().oid.0 + 100),
        ..items()
    };
    h.commit(
        &Txn::new(700, 0x2000)
            .relation(&recreated)
            .insert(&recreated, &["1", "a", "2"]),
    );
    assert_eq!(removed(&h.take()), [old]);
}
