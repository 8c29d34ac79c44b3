//! Publication and slot before `START_REPLICATION` (SL-1, SL-2, CT-1): the decisions, once.
//! Each Postgres adapter (io-real, io-sim) implements the four steps on its connections;
//! [`prepare`] decides which to take.

use std::future::Future;

use crate::lsn::Lsn;
use crate::ports::SlotStarted;
use crate::shape::HandleStamp;

/// Why an existing slot is dropped before streaming.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SlotReset {
    /// SL-1: the publication is missing (and created next), so the slot's history is
    /// unusable.
    PublicationCreated,
    /// SL-1: the publication is about to be altered so that changes of tables it already
    /// publishes arrive under other relations (a partitioned table's, once
    /// `publish_via_partition_root` is on): the slot's unconsumed history would still be
    /// decoded the old way, and the shapes built from it missed those changes.
    PublicationRerouted,
    /// CT-1: `wal_status = 'lost'`, the slot cannot stream (continuity is broken).
    SlotLost,
}

/// An existing slot as `pg_replication_slots` shows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ExistingSlot {
    /// `confirmed_flush_lsn` (`None` while Postgres has not set it).
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `wal_status = 'lost'`.
    pub is_lost: bool,
}

/// The publication as [`SlotSetup::existing_publication`] found it.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ExistingPublication {
    /// The handle-stamp reservation its comment records (ID-2; zero for none).
    pub stamps_reserved: HandleStamp,
    /// [`SlotSetup::ensure_publication`] will alter it so that changes of tables it already
    /// publishes arrive under other relations ([`SlotReset::PublicationRerouted`]).
    pub is_rerouting: bool,
}

/// The steps of [`prepare`], on one adapter's connections, for one slot and publication.
pub trait SlotSetup: Send {
    /// The adapter's error.
    type Error;

    /// `CREATE PUBLICATION` unless it exists (then brings its options to what ampere needs,
    /// where it may); whether it was created now.
    fn ensure_publication(&mut self) -> impl Future<Output = Result<bool, Self::Error>> + Send;
    /// The publication before [`Self::ensure_publication`] runs, or `None` when there is no
    /// publication.
    fn existing_publication(
        &mut self,
    ) -> impl Future<Output = Result<Option<ExistingPublication>, Self::Error>> + Send;
    /// Drops the slot if it exists and is inactive (a missing one is fine).
    fn drop_slot(&mut self, why: SlotReset)
        -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// `CREATE_REPLICATION_SLOT`: its consistent point, or `None` if the slot exists.
    fn create_slot(&mut self) -> impl Future<Output = Result<Option<Lsn>, Self::Error>> + Send;
    /// The existing slot, `None` if it is gone.
    fn existing_slot(
        &mut self,
    ) -> impl Future<Output = Result<Option<ExistingSlot>, Self::Error>> + Send;
    /// The error for a slot that appeared or vanished while this ran (transient).
    fn changed_concurrently(&self) -> Self::Error;
}

/// SL-1, SL-2, CT-1: a slot ready to stream from, created now or existing.
///
/// A missing publication drops the slot *before* it is created: a slot older than the
/// publication cannot decode (the walsender fails with 42704 on the first change), and had the
/// drop come after the creation, a failure in between (a connection lost, an active slot) would
/// leave a publication that exists and a slot that predates it, retried forever (found by sim
/// seed 0x4f5). A publication about to be rerouted drops the slot before it is altered, for
/// the same reason.
pub async fn prepare<S: SlotSetup>(setup: &mut S) -> Result<SlotStarted, S::Error> {
    let stamps_reserved = match setup.existing_publication().await? {
        Some(existing) => {
            if existing.is_rerouting {
                setup.drop_slot(SlotReset::PublicationRerouted).await?;
            }
            existing.stamps_reserved
        }
        None => {
            setup.drop_slot(SlotReset::PublicationCreated).await?;
            HandleStamp::default()
        }
    };
    if setup.ensure_publication().await? {
        // Dropped just above, unless the publication vanished in between: drop again.
        setup.drop_slot(SlotReset::PublicationCreated).await?;
    }
    let created = |consistent_point| SlotStarted {
        slot_created: true,
        confirmed_flush_lsn: consistent_point,
        stamps_reserved,
    };
    if let Some(consistent_point) = setup.create_slot().await? {
        return Ok(created(consistent_point));
    }
    let existing = setup
        .existing_slot()
        .await?
        .ok_or_else(|| setup.changed_concurrently())?;
    if existing.is_lost {
        setup.drop_slot(SlotReset::SlotLost).await?;
        return match setup.create_slot().await? {
            Some(consistent_point) => Ok(created(consistent_point)),
            None => Err(setup.changed_concurrently()),
        };
    }
    let confirmed_flush_lsn = existing
        .confirmed_flush_lsn
        .ok_or_else(|| setup.changed_concurrently())?;
    Ok(SlotStarted {
        slot_created: false,
        confirmed_flush_lsn,
        stamps_reserved,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::tests::poll_once;

    /// Scripted answers; records the steps taken.
    #[derive(Default)]
    struct Script {
        publication_missing: bool,
        is_rerouting: bool,
        creates: VecDeque<Option<Lsn>>,
        existing: Option<ExistingSlot>,
        reserved: HandleStamp,
        failing_drops: usize,
        steps: Vec<String>,
    }

    impl SlotSetup for Script {
        type Error = String;

        async fn ensure_publication(&mut self) -> Result<bool, String> {
            self.steps.push("publication".into());
            self.is_rerouting = false;
            Ok(std::mem::take(&mut self.publication_missing))
        }
        async fn existing_publication(&mut self) -> Result<Option<ExistingPublication>, String> {
            self.steps.push("read publication".into());
            Ok((!self.publication_missing).then_some(ExistingPublication {
                stamps_reserved: self.reserved,
                is_rerouting: self.is_rerouting,
            }))
        }
        async fn drop_slot(&mut self, why: SlotReset) -> Result<(), String> {
            self.steps.push(format!("drop {why:?}"));
            if self.failing_drops > 0 {
                self.failing_drops -= 1;
                return Err("connection lost".into());
            }
            Ok(())
        }
        async fn create_slot(&mut self) -> Result<Option<Lsn>, String> {
            self.steps.push("create".into());
            Ok(self.creates.pop_front().expect("scripted create"))
        }
        async fn existing_slot(&mut self) -> Result<Option<ExistingSlot>, String> {
            self.steps.push("read".into());
            Ok(self.existing)
        }
        fn changed_concurrently(&self) -> String {
            "changed concurrently".into()
        }
    }

    fn run(script: &mut Script) -> Result<SlotStarted, String> {
        poll_once(prepare(script))
    }

    #[test]
    fn a_new_publication_drops_the_slot_so_it_is_created_afresh() {
        let mut script = Script {
            publication_missing: true,
            creates: [Some(Lsn(0x100))].into(),
            ..Script::default()
        };
        let started = run(&mut script).expect("started");
        assert!(started.slot_created);
        assert_eq!(started.confirmed_flush_lsn, Lsn(0x100));
        assert_eq!(
            script.steps,
            [
                "read publication",
                "drop PublicationCreated",
                "publication",
                "drop PublicationCreated",
                "create"
            ]
        );
    }

    #[test]
    fn a_drop_that_fails_leaves_the_publication_missing_so_the_retry_drops_again() {
        // Found by sim (0x4f5): created first, the publication outlived a failed drop and
        // the old slot, unable to decode, was kept on every retry.
        let mut script = Script {
            publication_missing: true,
            failing_drops: 1,
            creates: [Some(Lsn(0x100))].into(),
            ..Script::default()
        };
        assert_eq!(run(&mut script), Err("connection lost".into()));
        assert_eq!(
            script.steps,
            ["read publication", "drop PublicationCreated"]
        );
        script.steps.clear();
        let started = run(&mut script).expect("started");
        assert!(started.slot_created);
        assert_eq!(
            script.steps[..3],
            ["read publication", "drop PublicationCreated", "publication"]
        );
    }

    #[test]
    fn an_existing_slot_resumes_from_its_confirmed_flush_lsn() {
        let mut script = Script {
            creates: [None].into(),
            existing: Some(ExistingSlot {
                confirmed_flush_lsn: Some(Lsn(0x200)),
                is_lost: false,
            }),
            ..Script::default()
        };
        let started = run(&mut script).expect("started");
        assert!(!started.slot_created);
        assert_eq!(started.confirmed_flush_lsn, Lsn(0x200));
        assert_eq!(
            script.steps,
            ["read publication", "publication", "create", "read"]
        );
    }

    #[test]
    fn a_lost_slot_is_dropped_and_created_again() {
        let mut script = Script {
            creates: [None, Some(Lsn(0x300))].into(),
            existing: Some(ExistingSlot {
                confirmed_flush_lsn: Some(Lsn(0x200)),
                is_lost: true,
            }),
            ..Script::default()
        };
        let started = run(&mut script).expect("started");
        assert!(started.slot_created);
        assert_eq!(started.confirmed_flush_lsn, Lsn(0x300));
        assert_eq!(
            script.steps,
            [
                "read publication",
                "publication",
                "create",
                "read",
                "drop SlotLost",
                "create"
            ]
        );
    }

    #[test]
    fn the_publication_s_stamp_reservation_comes_with_the_slot_created_or_existing() {
        let reserved = HandleStamp(1_767_225_600_000_000);
        let mut script = Script {
            creates: [Some(Lsn(0x100))].into(),
            reserved,
            ..Script::default()
        };
        assert_eq!(run(&mut script).expect("created").stamps_reserved, reserved);
        let mut script = Script {
            creates: [None].into(),
            existing: Some(ExistingSlot {
                confirmed_flush_lsn: Some(Lsn(0x200)),
                is_lost: false,
            }),
            reserved,
            ..Script::default()
        };
        assert_eq!(
            run(&mut script).expect("existing").stamps_reserved,
            reserved
        );
    }

    #[test]
    fn a_publication_about_to_be_rerouted_drops_the_slot_before_it_is_altered() {
        // Goal: an old publication that publishes a partitioned table without
        // publish_via_partition_root: its slot's history and the shapes built from it missed
        // the table's changes, so the slot is made afresh (and storage purged, CT-1).
        let mut script = Script {
            is_rerouting: true,
            creates: [Some(Lsn(0x100))].into(),
            ..Script::default()
        };
        let started = run(&mut script).expect("started");
        assert!(started.slot_created);
        assert_eq!(
            script.steps,
            [
                "read publication",
                "drop PublicationRerouted",
                "publication",
                "create"
            ]
        );
    }

    #[test]
    fn a_reroute_that_failed_before_the_alter_drops_again_on_the_retry() {
        // The drop comes first: a failure after it leaves the publication unaltered, so the
        // next attempt sees it rerouting and drops the (recreated or missing) slot again.
        let mut script = Script {
            is_rerouting: true,
            failing_drops: 1,
            creates: [Some(Lsn(0x100))].into(),
            ..Script::default()
        };
        assert_eq!(run(&mut script), Err("connection lost".into()));
        assert_eq!(
            script.steps,
            ["read publication", "drop PublicationRerouted"]
        );
        script.steps.clear();
        assert!(run(&mut script).expect("started").slot_created);
        assert_eq!(script.steps[1], "drop PublicationRerouted");
    }

    #[test]
    fn a_slot_that_vanishes_between_create_and_read_is_a_concurrent_change() {
        let mut script = Script {
            creates: [None].into(),
            ..Script::default()
        };
        assert_eq!(run(&mut script), Err("changed concurrently".into()));
    }
}
