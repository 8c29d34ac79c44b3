//! The periodic check that each live shape's table still exists under the name and OID the
//! shape was created on (issue 12, "Relations").
//!
//! pgoutput says nothing when a table is dropped or renamed: a `Relation` message comes only
//! before the next change the table publishes, and a dropped table publishes none. Without
//! this check a dropped table's shapes were served forever, and a table recreated under the
//! same name (new OID, not in the publication) never reached them. So, while active and
//! holding shapes, the core asks the catalog about every shape's OID at once (one query:
//! `pg_class WHERE oid = ANY(...)`) right after streaming starts (a restart included) and
//! every [`RELATION_CHECK_PERIOD`] after, and rotates the shapes whose table is gone or
//! renamed: their clients get 409, and a re-request resolves the name afresh (a new shape on
//! the new table, or the protocol's 400 when no table has that name).
//!
//! A partition whose partitioned table joined the publication since its shapes were created
//! counts as gone too: with `publish_via_partition_root` Postgres publishes its changes under
//! that table from then on, so its shapes would silently miss every one. They are rotated
//! like a dropped table's, and the re-request is refused with the reason (a 400 naming the
//! partitioned table to ask for instead).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Instance, Output};
use crate::pgoutput::Oid;
use crate::shape::{RelationName, ShapeHandle};
use crate::time::Instant;
use crate::OpId;

/// How often the live shapes' tables are looked up: one cheap catalog query per period,
/// whatever the number of shapes, so that a client of a dropped table's shape gets its 409
/// within about this (issue 12 asks for 10 s).
pub(super) const RELATION_CHECK_PERIOD: Duration = Duration::from_secs(5);

/// The check's state: the query in flight (with the tables it asked about) or when to ask.
#[derive(Debug)]
pub(super) struct RelationCheck {
    /// The query in flight and the OIDs it covers: only those are judged by its answer (a
    /// shape created meanwhile, on a table it did not ask about, is not "missing").
    query: Option<(OpId, BTreeSet<Oid>)>,
    /// When to ask next.
    next_at: Instant,
}

impl RelationCheck {
    /// Due at once: the first check runs as soon as the instance is active with shapes.
    pub(super) fn new(now: Instant) -> Self {
        Self {
            query: None,
            next_at: now,
        }
    }
}

impl Instance {
    /// When [`Instance::check_relations_if_due`] has something to do, for `poll_timeout`.
    pub(super) fn relation_check_due_at(&self) -> Option<Instant> {
        let idle = self.relation_check.query.is_none();
        (self.is_active() && idle && !self.by_relation.is_empty())
            .then_some(self.relation_check.next_at)
    }

    /// Before the first shape is created on an instance holding none: its table was looked
    /// up just now, so the next check is a period away (not at once, as after a restart,
    /// when the restored shapes' tables may have gone while the instance was down).
    pub(super) fn schedule_relation_check_for_first_shape(&mut self) {
        if self.by_relation.is_empty() {
            self.relation_check.next_at = self.now + RELATION_CHECK_PERIOD;
        }
    }

    /// Asks the catalog about every live shape's table, if due.
    pub(super) fn check_relations_if_due(&mut self) {
        if self
            .relation_check_due_at()
            .is_none_or(|due| self.now < due)
        {
            return;
        }
        let tables: BTreeSet<Oid> = self.by_relation.keys().copied().collect();
        let op = self.op();
        self.relation_check.query = Some((op, tables.clone()));
        self.outputs.push_back(Output::CheckRelations {
            op,
            tables: tables.into_iter().collect(),
            publication: self.config.target.publication.clone(),
        });
    }

    /// Rotates the shapes whose table the catalog no longer has under the shape's name.
    pub(super) fn on_relations_checked(
        &mut self,
        op: OpId,
        found: Option<Vec<(Oid, RelationName)>>,
    ) {
        let Some((expected, asked)) = self.relation_check.query.take() else {
            return;
        };
        assert_eq!(
            op, expected,
            "reply-issued: relation check {op:?} was never issued"
        );
        self.relation_check.next_at = self.now + RELATION_CHECK_PERIOD;
        // A reply from before a disconnect, or a failed query, concludes nothing.
        let (true, Some(found)) = (self.is_active(), found) else {
            return;
        };
        let found: BTreeMap<Oid, RelationName> = found.into_iter().collect();
        let mut rotated: Vec<(ShapeHandle, &'static str)> = Vec::new();
        for shape in self.shapes.values() {
            let oid = shape.schema.oid;
            if !asked.contains(&oid) {
                continue;
            }
            match found.get(&oid) {
                None => rotated.push((
                    shape.handle.clone(),
                    "table dropped, or its changes now published under its partitioned table",
                )),
                Some(name) if *name != shape.schema.relation => {
                    rotated.push((shape.handle.clone(), "table renamed"));
                }
                Some(_) => {}
            }
        }
        for (handle, reason) in rotated {
            self.remove_shape(&handle, reason);
        }
    }
}
