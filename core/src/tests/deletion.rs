//! Shape deletion (`DELETE /v1/shape`, protocol.md §1.5, and eviction beyond
//! `ELECTRIC_MAX_SHAPES`): the shape is removed through the same `RemoveShape` as an
//! invalidated one, and the answer follows the removal.

use super::harness::{early_snapshot, items, kinds, removed, whole, Harness, Txn};
use crate::instance::{Deletion, DeletionCause, Input, Output};
use crate::shape::ShapeHandle;
use crate::OpId;

/// Deletion requests carry ops of their own; the core only echoes them.
const DELETE_OP: OpId = OpId(1 << 40);

/// Asks the core to delete `handle`, as `DELETE /v1/shape` does; returns the outputs.
fn delete(h: &mut Harness, handle: &ShapeHandle) -> Vec<Output> {
    delete_for(h, handle, DeletionCause::Request)
}

/// Asks the core to delete `handle` for `cause`; returns the outputs.
fn delete_for(h: &mut Harness, handle: &ShapeHandle, cause: DeletionCause) -> Vec<Output> {
    h.input(Input::ShapeDeletionRequested {
        op: DELETE_OP,
        handle: handle.clone(),
        cause,
    });
    h.take()
}

/// The outcome of the `AnswerDeletion` among `out`, which must be the last output.
fn answer(out: &[Output]) -> Deletion {
    match out.last() {
        Some(Output::AnswerDeletion { op, outcome }) if *op == DELETE_OP => *outcome,
        _ => panic!("expected AnswerDeletion last: {:?}", kinds(out)),
    }
}

#[test]
fn a_deleted_shape_is_removed_before_the_answer_and_its_definition_gets_a_new_handle() {
    // Goal: the client hears of the deletion only once the shape's log and row are gone, and
    // the handle is retired for good: the definition's next request mints a later one.
    // Method: delete a live shape, then request its definition again.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let out = delete(&mut h, &handle);
    assert_eq!(removed(&out), std::slice::from_ref(&handle));
    assert!(
        out.iter().any(|o| matches!(
            o,
            Output::RemoveShape {
                reason: "deleted by request",
                ..
            }
        )),
        "{:?}",
        kinds(&out)
    );
    assert_eq!(answer(&out), Deletion::Removed);
    assert!(!h.stored_handles().contains(&handle));

    let (again, _) = h.create_shape(&items());
    assert_ne!(again, handle);
    assert!(again.supersedes(&handle), "{again} after {handle}");
}

#[test]
fn deleting_an_unknown_or_already_deleted_handle_is_not_found_and_removes_nothing() {
    // Goal: a 404 for a handle the core does not hold, and a second deletion is not a second
    // removal.
    // Method: delete a made-up handle; delete a live shape twice.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let unknown = ShapeHandle::from_string("1-1".to_owned());
    let out = delete(&mut h, &unknown);
    assert_eq!(kinds(&out), ["AnswerDeletion"]);
    assert_eq!(answer(&out), Deletion::NotFound);

    assert_eq!(answer(&delete(&mut h, &handle)), Deletion::Removed);
    let out = delete(&mut h, &handle);
    assert_eq!(kinds(&out), ["AnswerDeletion"]);
    assert_eq!(answer(&out), Deletion::NotFound);
}

#[test]
fn a_deletion_while_not_active_is_refused_and_removes_nothing() {
    // Goal: only the lock holder writes storage: a deletion reaching a core that lost its
    // replication connection is answered NotActive (503) and the shape stays.
    // Method: lose replication with a live shape, then delete it.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    h.lose_replication();
    h.take();
    let out = delete(&mut h, &handle);
    assert_eq!(kinds(&out), ["AnswerDeletion"]);
    assert_eq!(answer(&out), Deletion::NotActive);
    assert!(h.stored_handles().contains(&handle));
}

#[test]
fn deleting_a_shape_during_its_snapshot_drops_the_snapshots_late_answer() {
    // Goal: a shape deleted while snapshotting releases what it buffered, and its snapshot's
    // answer, arriving afterwards, persists nothing for it.
    // Method: create a shape, commit a transaction it buffers, delete it, then answer its
    // snapshot.
    let mut h = Harness::active();
    let (handle, op) = h.create_shape(&items());
    h.take();
    h.commit(&Txn::new(800, 0x3000_0000).insert(&items(), &["7", "x", "1"]));
    h.take();
    assert_eq!(answer(&delete(&mut h, &handle)), Deletion::Removed);
    h.snapshot_taken(op, early_snapshot());
    let out = h.take();
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::PersistShape { shape } if shape.handle == handle)),
        "{:?}",
        kinds(&out)
    );
    assert!(!h.stored_handles().contains(&handle));
    // The definition is free again.
    let again = h.request(whole(&items()), &items());
    assert!(h
        .take()
        .iter()
        .any(|o| matches!(o, Output::CreateShape { op, .. } if *op == again)));
}

#[test]
fn an_evicted_shape_is_removed_as_a_deleted_one_and_the_log_says_it_was_evicted() {
    // Goal: eviction takes the deletion path (removal before the answer, handle retired for
    // good) and the removal names its cause. Method: evict a live shape, then request its
    // definition again.
    let mut h = Harness::active();
    let handle = h.live_shape(&items());
    let out = delete_for(&mut h, &handle, DeletionCause::Eviction);
    assert_eq!(removed(&out), std::slice::from_ref(&handle));
    let reasons: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::RemoveShape { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(reasons, [DeletionCause::Eviction.reason()]);
    assert!(reasons[0].starts_with("evicted"), "{reasons:?}");
    assert_eq!(answer(&out), Deletion::Removed);
    assert!(!h.stored_handles().contains(&handle));
    let (again, _) = h.create_shape(&items());
    assert!(again.supersedes(&handle), "{again} after {handle}");
}
