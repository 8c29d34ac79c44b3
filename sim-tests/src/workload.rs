//! The workload: transactions written straight into the Postgres model between simulation
//! steps — short and long (open across other commits and across shape creation, the #4773
//! schedule), large, aborted, and DDL (TRUNCATE, added columns).

use std::collections::BTreeMap;
use std::time::Duration;

use ampere_core::shape::RelationName;
use ampere_io_sim::faults::{FaultProfile, SimRng};
use ampere_io_sim::pg::{lock, ModelColumn, ModelError, SharedPg};

/// Keys are drawn from `1..=KEY_SPACE`, so updates and deletes often hit existing rows.
const KEY_SPACE: u64 = 120;
/// Columns added per table at most (each rotates the table's shapes).
const MAX_ADDED_COLUMNS: usize = 2;
/// `pg_type.oid` of `int4`.
pub const INT4_OID: u32 = 23;
/// The `int4` column of `items` the where-shapes filter on (values `0..16` or NULL).
pub const N_COLUMN: &str = "n";

/// The `int4` column `n` (nullable).
pub fn int4_column(name: &str) -> ModelColumn {
    ModelColumn {
        name: name.to_owned(),
        type_oid: INT4_OID,
        typname: "int4".to_owned(),
        not_null: false,
        pk_index: None,
    }
}

/// The where-shapes clients ask for on `items (id int8, value text, note text, n int4)`: the
/// `where` text and its `params[1..]`. Equality, ranges, boolean combinations, LIKE and
/// IS NULL, some through parameters.
pub const WHERE_SHAPES: &[(&str, &[&str])] = &[
    ("n = 3", &[]),
    ("n > 5 AND n <= 12", &[]),
    ("n = 1 OR n IN (4, 7)", &[]),
    ("NOT (n < 3)", &[]),
    ("value LIKE 'v1%'", &[]),
    ("note IS NULL", &[]),
    ("n IS NOT NULL AND id <= 60", &[]),
    ("n = $1", &["7"]),
    ("n >= $1 AND n < $2", &["2", "9"]),
    ("value LIKE $1 OR n IS NULL", &["%7-1"]),
];

/// A where-shape drawn from [`WHERE_SHAPES`]: the text and its `params[n]` by `n`.
pub fn pick_where(rng: &mut SimRng) -> (String, BTreeMap<u32, String>) {
    let n = WHERE_SHAPES.len() as u64;
    let (text, params) = WHERE_SHAPES[usize::try_from(rng.below(n)).unwrap_or(0)];
    let params = (1..)
        .zip(params.iter())
        .map(|(i, v)| (i, (*v).to_owned()))
        .collect();
    (text.to_owned(), params)
}

/// A value in `0..16`, or NULL one time in eight, derived from the workload's counter.
fn small_int(counter: u64, column: usize) -> Option<String> {
    let mut z = counter
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(column as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z & 7 != 0).then(|| ((z >> 8) & 15).to_string())
}

/// An open transaction and when it commits.
#[derive(Debug)]
struct Open {
    xid: u64,
    commit_at: Duration,
    abort: bool,
}

/// Writes transactions into the model.
#[derive(Debug)]
pub struct Workload {
    rng: SimRng,
    tables: Vec<RelationName>,
    open: Vec<Open>,
    /// Makes every written value unique, so every update changes the row.
    counter: u64,
    added_columns: BTreeMap<RelationName, usize>,
    /// Transactions committed, aborted, and DDL statements run.
    pub stats: WorkloadStats,
}

/// What the workload did.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkloadStats {
    /// Committed transactions.
    pub committed: u64,
    /// Aborted transactions (including row-lock conflicts).
    pub aborted: u64,
    /// Large transactions committed.
    pub large: u64,
    /// Transactions kept open across other commits.
    pub long: u64,
    /// TRUNCATE statements.
    pub truncates: u64,
    /// Columns added.
    pub added_columns: u64,
}

impl Workload {
    /// A workload over `tables`.
    pub fn new(rng: SimRng, tables: Vec<RelationName>) -> Self {
        Self {
            rng,
            tables,
            open: Vec::new(),
            counter: 0,
            added_columns: BTreeMap::new(),
            stats: WorkloadStats::default(),
        }
    }

    /// One step of `dt` at simulated time `now`: maybe start transactions, commit due ones.
    pub fn step(&mut self, pg: &SharedPg, profile: &FaultProfile, now: Duration, dt: Duration) {
        self.commit_due(pg, now);
        if self.rng.chance(profile.txn_rate * dt.as_secs_f64()) {
            self.transaction(pg, profile, now);
        }
    }

    /// Ends every open transaction now (liveness phase).
    pub fn finish(&mut self, pg: &SharedPg) {
        for open in std::mem::take(&mut self.open) {
            self.end(pg, open.xid, open.abort);
        }
    }

    /// A last write to every table, so converged clients must reach the WAL's end.
    pub fn final_writes(&mut self, pg: &SharedPg) {
        for table in self.tables.clone() {
            let mut model = lock(pg);
            let xid = model.begin();
            let row = self.row(&model, &table, KEY_SPACE + 1 + self.counter);
            let wrote = model.insert(xid, &table, row).is_ok();
            drop(model);
            self.end(pg, xid, !wrote);
        }
    }

    /// A DDL statement on a random table: TRUNCATE or ADD COLUMN (rotates its shapes).
    pub fn ddl(&mut self, pg: &SharedPg) -> Option<RelationName> {
        let table = self.pick_table();
        let added = self.added_columns.get(&table).copied().unwrap_or(0);
        let mut model = lock(pg);
        if added < MAX_ADDED_COLUMNS && self.rng.chance(0.4) {
            let name = format!("extra{}", added + 1);
            model.add_column(&table, &name).ok()?;
            self.added_columns.insert(table.clone(), added + 1);
            self.stats.added_columns += 1;
        } else {
            let xid = model.begin();
            if model.truncate(xid, std::slice::from_ref(&table)).is_err() {
                let _ = model.abort(xid);
                return None;
            }
            model.commit(xid).ok()?;
            self.stats.truncates += 1;
        }
        Some(table)
    }

    fn transaction(&mut self, pg: &SharedPg, profile: &FaultProfile, now: Duration) {
        let large = self.rng.chance(profile.large_txn_chance);
        let changes = if large {
            200 + self.rng.below(400)
        } else {
            1 + self.rng.below(5)
        };
        let table = self.pick_table();
        let mut model = lock(pg);
        let xid = model.begin();
        for _ in 0..changes {
            let id = 1 + self.rng.below(KEY_SPACE);
            let result = match self.rng.below(10) {
                0..=4 => {
                    let row = self.row(&model, &table, id);
                    model.insert(xid, &table, row).map(|()| true)
                }
                5..=7 => {
                    let row = self.row(&model, &table, id);
                    model.update(xid, &table, row)
                }
                _ => model.delete(xid, &table, &[&id.to_string()]),
            };
            match result {
                Ok(_) | Err(ModelError::UniqueViolation { .. }) => {}
                // A row or table lock held by another open transaction: give up this one.
                Err(_) => {
                    let _ = model.abort(xid);
                    self.stats.aborted += 1;
                    return;
                }
            }
        }
        drop(model);
        if large {
            self.stats.large += 1;
        }
        let abort = self.rng.chance(0.05);
        if self.rng.chance(profile.long_txn_chance) {
            self.stats.long += 1;
            let commit_at = now
                + self
                    .rng
                    .duration(Duration::from_millis(200), Duration::from_secs(15));
            self.open.push(Open {
                xid,
                commit_at,
                abort,
            });
        } else {
            self.end(pg, xid, abort);
        }
    }

    fn commit_due(&mut self, pg: &SharedPg, now: Duration) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.open)
            .into_iter()
            .partition(|o| o.commit_at <= now);
        self.open = keep;
        for open in due {
            self.end(pg, open.xid, open.abort);
        }
    }

    fn end(&mut self, pg: &SharedPg, xid: u64, abort: bool) {
        let mut model = lock(pg);
        // A restart of the model may already have aborted it: both outcomes are fine.
        if abort {
            if model.abort(xid).is_ok() {
                self.stats.aborted += 1;
            }
        } else if model.commit(xid).is_ok() {
            self.stats.committed += 1;
        }
    }

    fn pick_table(&mut self) -> RelationName {
        let n = self.tables.len() as u64;
        // The first table gets most of the traffic.
        let i = if self.rng.chance(0.7) {
            0
        } else {
            self.rng.below(n)
        };
        self.tables[usize::try_from(i).unwrap_or(0)].clone()
    }

    fn row(
        &mut self,
        model: &ampere_io_sim::pg::PgModel,
        table: &RelationName,
        id: u64,
    ) -> Vec<Option<String>> {
        self.counter += 1;
        let columns = model.table(table).map_or(2, |t| t.columns.len());
        let int_column = |c: usize| {
            model
                .table(table)
                .and_then(|t| t.columns.get(c))
                .is_some_and(|col| col.type_oid == INT4_OID)
        };
        let mut row = vec![Some(id.to_string())];
        for c in 1..columns {
            if int_column(c) {
                // Drawn from the counter, not the RNG, so the workload's choices stay those
                // of a table without it; updates move rows across every where-shape's filter.
                row.push(small_int(self.counter, c));
                continue;
            }
            // Some NULLs, some quoting-sensitive text; every value unique.
            let value = match self.rng.below(8) {
                0 => None,
                1 => Some(format!("q\"uote,{}/{c}", self.counter)),
                _ => Some(format!("v{}-{c}", self.counter)),
            };
            row.push(value);
        }
        row
    }
}

#[cfg(test)]
mod tests {
    use ampere_core::where_clause::WhereClause;
    use ampere_io_sim::pg::TableDef;

    use super::*;

    #[test]
    fn every_where_shape_compiles_against_items() {
        let mut def = TableDef::with_text_columns(
            RelationName {
                schema: "public".into(),
                table: "items".into(),
            },
            16_384,
            &["value", "note"],
        );
        def.columns.push(int4_column(N_COLUMN));
        let schema = def.schema();
        for (text, params) in WHERE_SHAPES {
            let params = (1..)
                .zip(params.iter())
                .map(|(i, v)| (i, (*v).to_owned()))
                .collect();
            let canonical =
                WhereClause::canonicalize(text, &params).unwrap_or_else(|e| panic!("{text}: {e}"));
            WhereClause::compile(text, &params, &schema).unwrap_or_else(|e| panic!("{text}: {e}"));
            WhereClause::from_canonical(&canonical, &schema)
                .unwrap_or_else(|e| panic!("{canonical}: {e}"));
        }
    }

    #[test]
    fn small_ints_cover_the_range_and_null() {
        let values: std::collections::BTreeSet<_> = (0..2000).map(|c| small_int(c, 3)).collect();
        assert!(values.contains(&None));
        assert_eq!(values.len(), 17);
    }
}
