//! Assembling pgoutput messages into committed transactions, with the relation cache.
//!
//! Protocol v1: a transaction arrives whole after its commit, as `Begin`, changes (with
//! `Relation` messages before first use and after DDL), `Commit`.

use std::collections::BTreeMap;

use crate::lsn::Lsn;
use crate::pgoutput::{ColumnValue, Oid, OldTuple, PgOutputMessage, Relation, TupleData, Xid};

/// A row as text values in the relation's column order; `None` is SQL `NULL`.
pub type RowValues = Vec<Option<String>>;

/// A committed transaction, ready to route.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Transaction {
    /// The 32-bit transaction id.
    pub xid: Xid,
    /// The LSN of the commit record: the `tx` part of every offset in it.
    pub commit_lsn: Lsn,
    /// The end of the commit record.
    pub end_lsn: Lsn,
    /// When the transaction committed on the server: microseconds since 2000-01-01 UTC
    /// (Postgres's epoch), by the server's clock.
    pub commit_time_micros: i64,
    /// `Relation` messages received inside this transaction (schema announcements).
    pub relations: Vec<Relation>,
    /// The changes, in order; change `i` has op position `2 i`.
    pub changes: Vec<Change>,
}

/// One change of a transaction.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Change {
    /// A row inserted.
    Insert {
        /// The table.
        relation: Oid,
        /// The new row.
        new: RowValues,
    },
    /// A row updated. `old` is the full old row (`REPLICA IDENTITY FULL`), or `None` when
    /// Postgres did not send it.
    Update {
        /// The table.
        relation: Oid,
        /// The full old row.
        old: Option<RowValues>,
        /// The new row, unchanged TOAST values filled from `old`.
        new: RowValues,
    },
    /// A row deleted: the full old row, or `None` if only the key was sent.
    Delete {
        /// The table.
        relation: Oid,
        /// The full old row.
        old: Option<RowValues>,
    },
    /// `TRUNCATE` of one or more tables.
    Truncate {
        /// The tables.
        relations: Vec<Oid>,
    },
    /// A change ampere cannot represent faithfully (unchanged TOAST without an old row,
    /// binary values): shapes on the table must be invalidated rather than fed a guess.
    Unrepresentable {
        /// The table.
        relation: Oid,
        /// Why.
        reason: &'static str,
    },
}

impl Change {
    /// The tables this change touches.
    pub fn relations(&self) -> &[Oid] {
        match self {
            Self::Insert { relation, .. }
            | Self::Update { relation, .. }
            | Self::Delete { relation, .. }
            | Self::Unrepresentable { relation, .. } => std::slice::from_ref(relation),
            Self::Truncate { relations } => relations,
        }
    }
}

/// The stream broke the protocol's sequencing; the connection must be restarted.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum AssembleError {
    /// A change or commit arrived outside `Begin … Commit`.
    #[error("{what} outside a transaction")]
    OutsideTransaction {
        /// The message kind.
        what: &'static str,
    },
    /// `Begin` arrived inside a transaction.
    #[error("Begin inside a transaction")]
    NestedBegin,
    /// A streamed-transaction message arrived, but streaming was not requested.
    #[error("unexpected streaming message")]
    UnexpectedStreaming,
}

/// Assembles committed transactions.
#[derive(Debug, Default)]
pub struct TxnAssembler {
    relations: BTreeMap<Oid, Relation>,
    open: Option<Transaction>,
}

impl TxnAssembler {
    /// A fresh assembler (after connecting, the relation cache starts empty).
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a transaction is open (between `Begin` and `Commit`).
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// The cached relation for an OID.
    pub fn relation(&self, oid: Oid) -> Option<&Relation> {
        self.relations.get(&oid)
    }

    /// Feeds one message; returns the transaction it completes, if any.
    pub fn push(&mut self, msg: PgOutputMessage) -> Result<Option<Transaction>, AssembleError> {
        match msg {
            PgOutputMessage::Begin(b) => {
                if self.open.is_some() {
                    return Err(AssembleError::NestedBegin);
                }
                self.open = Some(Transaction {
                    xid: b.xid,
                    commit_lsn: b.final_lsn,
                    end_lsn: b.final_lsn,
                    commit_time_micros: b.commit_time_micros,
                    relations: Vec::new(),
                    changes: Vec::new(),
                });
                Ok(None)
            }
            PgOutputMessage::Commit(c) => {
                let mut txn = self
                    .open
                    .take()
                    .ok_or(AssembleError::OutsideTransaction { what: "Commit" })?;
                txn.commit_lsn = c.commit_lsn;
                txn.end_lsn = c.end_lsn;
                txn.commit_time_micros = c.commit_time_micros;
                Ok(Some(txn))
            }
            PgOutputMessage::Relation(r) => {
                if let Some(txn) = self.open.as_mut() {
                    txn.relations.push(r.clone());
                }
                self.relations.insert(r.oid, r);
                Ok(None)
            }
            PgOutputMessage::Insert(i) => self
                .change("Insert", |_| Change::Insert {
                    relation: i.relation,
                    new: text_row(&i.new, None).unwrap_or_default(),
                })
                .map(|()| None),
            PgOutputMessage::Update(u) => {
                self.change("Update", |_| update_change(u)).map(|()| None)
            }
            PgOutputMessage::Delete(d) => self
                .change("Delete", |_| {
                    let old = match &d.old {
                        OldTuple::Full(t) => text_row(t, None),
                        OldTuple::Key(_) => None,
                    };
                    Change::Delete {
                        relation: d.relation,
                        old,
                    }
                })
                .map(|()| None),
            PgOutputMessage::Truncate(t) => self
                .change("Truncate", |_| Change::Truncate {
                    relations: t.relations,
                })
                .map(|()| None),
            PgOutputMessage::Origin { .. }
            | PgOutputMessage::Type { .. }
            | PgOutputMessage::Message { .. } => Ok(None),
            PgOutputMessage::StreamStart { .. }
            | PgOutputMessage::StreamStop
            | PgOutputMessage::StreamCommit { .. }
            | PgOutputMessage::StreamAbort { .. } => Err(AssembleError::UnexpectedStreaming),
        }
    }

    fn change(
        &mut self,
        what: &'static str,
        make: impl FnOnce(&Self) -> Change,
    ) -> Result<(), AssembleError> {
        if self.open.is_none() {
            return Err(AssembleError::OutsideTransaction { what });
        }
        let change = make(self);
        if let Some(txn) = self.open.as_mut() {
            txn.changes.push(change);
        }
        Ok(())
    }
}

fn update_change(u: crate::pgoutput::Update) -> Change {
    let relation = u.relation;
    let old = match &u.old {
        Some(OldTuple::Full(t)) => text_row(t, None),
        Some(OldTuple::Key(_)) | None => None,
    };
    match text_row(&u.new, old.as_deref()) {
        Some(new) => Change::Update { relation, old, new },
        None => Change::Unrepresentable {
            relation,
            reason: "unchanged TOAST value without the old row (REPLICA IDENTITY is not FULL)",
        },
    }
}

/// Converts a tuple to text values, filling unchanged TOAST values from `old`. `None` when a
/// value cannot be represented (unchanged TOAST with no old row, or a binary value).
fn text_row(tuple: &TupleData, old: Option<&[Option<String>]>) -> Option<RowValues> {
    tuple
        .0
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            ColumnValue::Null => Some(None),
            ColumnValue::Text(s) => Some(Some(s.clone())),
            ColumnValue::UnchangedToast => old.and_then(|o| o.get(i).cloned()),
            ColumnValue::Binary(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Begin, Commit, Insert, ReplicaIdentity, Update};

    fn begin(xid: u32) -> PgOutputMessage {
        PgOutputMessage::Begin(Begin {
            final_lsn: Lsn(100),
            commit_time_micros: 0,
            xid: Xid(xid),
        })
    }

    fn commit(lsn: u64) -> PgOutputMessage {
        PgOutputMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 8),
            commit_time_micros: 0,
        })
    }

    fn tuple(vals: &[ColumnValue]) -> TupleData {
        TupleData(vals.to_vec())
    }

    fn text(s: &str) -> ColumnValue {
        ColumnValue::Text(s.into())
    }

    #[test]
    fn assembles_a_committed_transaction_with_its_changes() {
        let mut a = TxnAssembler::new();
        assert_eq!(a.push(begin(7)), Ok(None));
        let relation = Relation {
            xid: None,
            oid: Oid(1),
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Full,
            columns: vec![],
        };
        a.push(PgOutputMessage::Relation(relation))
            .expect("relation");
        let insert = Insert {
            xid: None,
            relation: Oid(1),
            new: tuple(&[text("1"), ColumnValue::Null]),
        };
        a.push(PgOutputMessage::Insert(insert)).expect("insert");
        let txn = a.push(commit(200)).expect("commit").expect("completes");
        assert_eq!(txn.xid, Xid(7));
        assert_eq!(txn.commit_lsn, Lsn(200));
        assert_eq!(txn.relations.len(), 1);
        assert_eq!(
            txn.changes,
            vec![Change::Insert {
                relation: Oid(1),
                new: vec![Some("1".into()), None]
            }]
        );
        assert!(a.relation(Oid(1)).is_some());
    }

    #[test]
    fn unchanged_toast_values_are_filled_from_the_old_row() {
        let mut a = TxnAssembler::new();
        a.push(begin(1)).expect("begin");
        let update = Update {
            xid: None,
            relation: Oid(1),
            old: Some(OldTuple::Full(tuple(&[text("1"), text("big")]))),
            new: tuple(&[text("2"), ColumnValue::UnchangedToast]),
        };
        a.push(PgOutputMessage::Update(update)).expect("update");
        let txn = a.push(commit(5)).expect("commit").expect("completes");
        let Change::Update { new, .. } = &txn.changes[0] else {
            panic!("update expected")
        };
        assert_eq!(new, &vec![Some("2".to_owned()), Some("big".to_owned())]);
    }

    #[test]
    fn unchanged_toast_without_old_row_is_unrepresentable() {
        let mut a = TxnAssembler::new();
        a.push(begin(1)).expect("begin");
        let update = Update {
            xid: None,
            relation: Oid(1),
            old: None,
            new: tuple(&[text("2"), ColumnValue::UnchangedToast]),
        };
        a.push(PgOutputMessage::Update(update)).expect("update");
        let txn = a.push(commit(5)).expect("commit").expect("completes");
        assert!(matches!(txn.changes[0], Change::Unrepresentable { .. }));
    }

    #[test]
    fn changes_outside_a_transaction_are_protocol_errors() {
        let mut a = TxnAssembler::new();
        assert!(a.push(commit(1)).is_err());
        a.push(begin(1)).expect("begin");
        assert_eq!(a.push(begin(2)), Err(AssembleError::NestedBegin));
    }
}
