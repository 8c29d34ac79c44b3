//! Read-only `REPEATABLE READ` transactions of backends: the transaction an initial snapshot
//! reads in (SN-3), statement by statement as io-real runs it.
//!
//! As in Postgres: `LOCK TABLE … IN ACCESS SHARE MODE` takes no snapshot; the first
//! statement that needs one (`pg_current_snapshot()` or the rows query) fixes the
//! transaction's snapshot and the committed rows it sees; catalog reads are not snapshot reads
//! (they see the latest catalog); the rows query resolves its columns with the latest catalog
//! too. DDL (`ADD COLUMN`, `TRUNCATE`) conflicts with the `ACCESS SHARE` lock until the
//! transaction ends. Where Postgres would wait for a conflicting lock, the model refuses with
//! 55P03 (`lock_not_available`), as a `lock_timeout` would.

use std::collections::{BTreeMap, BTreeSet};

use ampere_core::shape::RelationName;
use ampere_core::snapshot::PgSnapshot;

use super::session::SqlError;
use super::{PgModel, Row};

/// A backend's open read transaction.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub(crate) struct ReadTxn {
    /// Tables locked `ACCESS SHARE`.
    share_locks: BTreeSet<RelationName>,
    /// Fixed by the first statement that needs a snapshot.
    frozen: Option<Frozen>,
}

/// A transaction snapshot and the committed rows of every table it sees.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Frozen {
    snapshot: PgSnapshot,
    rows: BTreeMap<RelationName, Vec<Row>>,
}

impl PgModel {
    /// `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY` on backend `pid`.
    pub fn begin_read(&mut self, pid: i32) -> Result<(), SqlError> {
        let backend = self.backends.get_mut(&pid).ok_or_else(|| gone(pid))?;
        if backend.read.is_some() {
            return Err(SqlError::new(
                "25001",
                "there is already a transaction in progress",
            ));
        }
        backend.read = Some(ReadTxn::default());
        Ok(())
    }

    /// `LOCK TABLE relation IN ACCESS SHARE MODE` in `pid`'s read transaction.
    pub fn lock_share(&mut self, pid: i32, relation: &RelationName) -> Result<(), SqlError> {
        self.table(relation)
            .ok_or_else(|| SqlError::new("42P01", format!("relation {relation} does not exist")))?;
        if let Some(holder) = self.table_locks.get(relation) {
            // TRUNCATE's ACCESS EXCLUSIVE: Postgres would wait for it.
            return Err(SqlError::new(
                "55P03",
                format!("could not obtain lock on relation {relation} (held by {holder})"),
            ));
        }
        self.read_txn(pid)?.share_locks.insert(relation.clone());
        Ok(())
    }

    /// `pg_current_snapshot()` inside `pid`'s read transaction: the transaction's snapshot,
    /// fixed now if no statement fixed it before.
    pub fn read_snapshot(&mut self, pid: i32) -> Result<PgSnapshot, SqlError> {
        Ok(self.frozen(pid)?.snapshot.clone())
    }

    /// The rows query of `pid`'s read transaction: the named columns (resolved with the
    /// latest catalog; a column added after the snapshot reads NULL) of every row the
    /// transaction's snapshot sees, in primary-key order.
    pub fn read_rows(
        &mut self,
        pid: i32,
        relation: &RelationName,
        columns: &[String],
    ) -> Result<Vec<Row>, SqlError> {
        let def = self
            .table(relation)
            .ok_or_else(|| SqlError::new("42P01", format!("relation {relation} does not exist")))?;
        let indices = columns
            .iter()
            .map(|name| {
                def.columns
                    .iter()
                    .position(|c| &c.name == name)
                    .ok_or_else(|| {
                        SqlError::new("42703", format!("column \"{name}\" does not exist"))
                    })
            })
            .collect::<Result<Vec<usize>, SqlError>>()?;
        let frozen = self.frozen(pid)?;
        let rows = frozen.rows.get(relation).map_or(&[][..], Vec::as_slice);
        Ok(rows
            .iter()
            .map(|row| {
                indices
                    .iter()
                    .map(|&i| row.get(i).cloned().flatten())
                    .collect()
            })
            .collect())
    }

    /// `COMMIT` of `pid`'s read transaction: its locks are released.
    pub fn end_read(&mut self, pid: i32) -> Result<(), SqlError> {
        let backend = self.backends.get_mut(&pid).ok_or_else(|| gone(pid))?;
        backend
            .read
            .take()
            .map(drop)
            .ok_or_else(|| SqlError::new("25P01", "there is no transaction in progress"))
    }

    /// A backend whose read transaction holds `relation` locked `ACCESS SHARE`.
    pub(crate) fn share_locker(&self, relation: &RelationName) -> Option<i32> {
        self.backends.iter().find_map(|(&pid, backend)| {
            backend
                .read
                .as_ref()
                .is_some_and(|read| read.share_locks.contains(relation))
                .then_some(pid)
        })
    }

    fn read_txn(&mut self, pid: i32) -> Result<&mut ReadTxn, SqlError> {
        self.backends
            .get_mut(&pid)
            .ok_or_else(|| gone(pid))?
            .read
            .as_mut()
            .ok_or_else(|| SqlError::new("25P01", "there is no transaction in progress"))
    }

    fn frozen(&mut self, pid: i32) -> Result<&Frozen, SqlError> {
        if self.read_txn(pid)?.frozen.is_none() {
            let frozen = Frozen {
                snapshot: self.current_snapshot(),
                rows: self
                    .tables
                    .iter()
                    .map(|(relation, table)| {
                        (relation.clone(), table.rows.values().cloned().collect())
                    })
                    .collect(),
            };
            self.read_txn(pid)?.frozen = Some(frozen);
        }
        Ok(self
            .read_txn(pid)?
            .frozen
            .as_ref()
            .expect("invariant: frozen just above"))
    }
}

fn gone(pid: i32) -> SqlError {
    SqlError::new("57P01", format!("backend {pid} was terminated"))
}
