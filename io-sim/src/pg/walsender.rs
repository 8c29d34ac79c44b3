//! Logical decoding of the model for one walsender: the committed transactions from the
//! slot's start point on, with only the changes published in its publication, as pgoutput v1
//! messages. Pure: the server calls [`Walsender::poll`] under the model's lock.
//!
//! Decoding rules, as Postgres applies them:
//! - A transaction is sent iff its commit record starts at or after the start point
//!   (`commit_lsn >= confirmed_flush_lsn`); Postgres skips one whose commit starts before.
//! - A change is sent iff its table was in the publication when the change was *written*
//!   (not when it committed): the schedule of Electric #4773.
//! - A change written where the publication did not exist fails decoding with 42704.
//! - A `Relation` message precedes the first change of a table on this connection and the
//!   first change after each `ADD COLUMN`.
//! - A transaction without published change is sent as `Begin`/`Commit` or skipped,
//!   per [`PgSettings::send_empty_transactions`](super::model::PgSettings).

use std::collections::BTreeMap;

use bytes::Bytes;

use ampere_core::lsn::Lsn;
use ampere_core::shape::RelationName;

use super::encode;
use super::model::session::SqlError;
use super::model::{CommittedTxn, ModelChange, PgModel};

/// One `XLogData` message: a pgoutput payload and its WAL position.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WalMessage {
    /// Where the WAL data starts (Begin: first change; change: its record; Commit: end).
    pub wal_start: Lsn,
    /// Postgres sends `wal_start` here too for logical replication.
    pub wal_end: Lsn,
    /// The pgoutput message.
    pub data: Bytes,
}

/// One walsender's decoding position.
#[derive(Clone, Debug)]
pub struct Walsender {
    publication: String,
    /// Index of the next transaction in [`PgModel::committed`] to decode.
    next_txn: usize,
    /// Relation schema versions described on this connection, by oid.
    described: BTreeMap<u32, usize>,
    /// The end of the WAL processed so far (Postgres's `sentPtr`).
    sent_lsn: Lsn,
}

impl Walsender {
    /// Starts decoding at `start` (the slot's `confirmed_flush_lsn`).
    pub fn new(model: &PgModel, publication: &str, start: Lsn) -> Self {
        let next_txn = model.committed().partition_point(|t| t.commit_lsn < start);
        Self {
            publication: publication.to_owned(),
            next_txn,
            described: BTreeMap::new(),
            sent_lsn: start,
        }
    }

    /// Decodes whole transactions until about `max_bytes` of messages are produced or every
    /// committed transaction is decoded.
    pub fn poll(&mut self, model: &PgModel, max_bytes: usize) -> Result<Vec<WalMessage>, SqlError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(txn) = model.committed().get(self.next_txn) {
            if bytes >= max_bytes {
                break;
            }
            let messages = self.decode(model, txn)?;
            bytes += messages.iter().map(|m| m.data.len()).sum::<usize>();
            out.extend(messages);
            self.next_txn += 1;
            self.sent_lsn = self.sent_lsn.max(txn.end_lsn);
        }
        Ok(out)
    }

    /// Whether every committed transaction has been decoded.
    pub fn is_caught_up(&self, model: &PgModel) -> bool {
        self.next_txn >= model.committed().len()
    }

    /// The `wal_end` of a primary keepalive: the WAL end once caught up (WAL of transactions
    /// still open is read, their commits lie beyond), else the end of the last decoded one.
    pub fn keepalive_wal_end(&self, model: &PgModel) -> Lsn {
        if self.is_caught_up(model) {
            model.wal_end().max(self.sent_lsn)
        } else {
            self.sent_lsn
        }
    }

    fn decode(&mut self, model: &PgModel, txn: &CommittedTxn) -> Result<Vec<WalMessage>, SqlError> {
        let mut body = Vec::new();
        for (change, &lsn) in txn.changes.iter().zip(&txn.change_lsns) {
            self.decode_change(model, change, lsn, &mut body)?;
        }
        if body.is_empty() && !model.settings().send_empty_transactions {
            return Ok(body);
        }
        let time = encode::commit_time_micros(txn.commit_lsn);
        let first = txn.change_lsns.first().copied().unwrap_or(txn.commit_lsn);
        let xid = u32::try_from(txn.xid & 0xFFFF_FFFF).expect("invariant: masked to 32 bits");
        let mut out = Vec::with_capacity(body.len() + 2);
        out.push(message(first, encode::begin(txn.commit_lsn, time, xid)));
        out.append(&mut body);
        out.push(message(
            txn.end_lsn,
            encode::commit(txn.commit_lsn, txn.end_lsn, time),
        ));
        Ok(out)
    }

    fn decode_change(
        &mut self,
        model: &PgModel,
        change: &ModelChange,
        lsn: Lsn,
        out: &mut Vec<WalMessage>,
    ) -> Result<(), SqlError> {
        let data = match change {
            ModelChange::Insert { relation, row } => self
                .published(model, relation, lsn, out)?
                .map(|oid| encode::insert(oid, row)),
            ModelChange::Update { relation, old, new } => self
                .published(model, relation, lsn, out)?
                .map(|oid| encode::update(oid, old, new)),
            ModelChange::Delete { relation, old } => self
                .published(model, relation, lsn, out)?
                .map(|oid| encode::delete(oid, old)),
            ModelChange::Truncate { relations } => {
                let mut oids = Vec::new();
                for relation in relations {
                    oids.extend(self.published(model, relation, lsn, out)?);
                }
                (!oids.is_empty()).then(|| encode::truncate(&oids))
            }
            // DDL is not decoded; the next change on the table describes it anew
            ModelChange::AddColumn { .. } => None,
        };
        if let Some(data) = data {
            out.push(message(lsn, data));
        }
        Ok(())
    }

    /// The table's oid if a change to it written at `lsn` is published, after queueing a
    /// `Relation` message when this connection has not described that schema yet.
    fn published(
        &mut self,
        model: &PgModel,
        relation: &RelationName,
        lsn: Lsn,
        out: &mut Vec<WalMessage>,
    ) -> Result<Option<u32>, SqlError> {
        let Some((oid, version, columns)) = model.schema_at(relation, lsn) else {
            return Ok(None);
        };
        let published = model
            .published_at(&self.publication, oid, lsn)
            .ok_or_else(|| {
                SqlError::new(
                    "42704",
                    format!("publication \"{}\" does not exist", self.publication),
                )
            })?;
        if !published {
            return Ok(None);
        }
        if self.described.get(&oid) != Some(&version) {
            let data = encode::relation(oid, &relation.schema, &relation.table, columns);
            out.push(message(lsn, data));
            self.described.insert(oid, version);
        }
        Ok(Some(oid))
    }
}

fn message(lsn: Lsn, data: Bytes) -> WalMessage {
    WalMessage {
        wal_start: lsn,
        wal_end: lsn,
        data,
    }
}
