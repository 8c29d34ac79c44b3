//! An in-memory [`ShapeApi`] for the HTTP layer's tests: tables, shapes with snapshot chunks
//! and replicated entries, health and failure switches.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use ampere_core::pgoutput::Oid;
use ampere_core::ports::SnapshotError;
use ampere_core::ports::{CatalogTable, ChunkRead, LogEntry, LogStatus, ReadOutcome};
use ampere_core::shape::{
    ColumnSchema, HandleStamp, RelationName, ShapeDefinition, ShapeHandle, TableSchema,
};
use ampere_core::snapshot::{FullXid, PgSnapshot};
use ampere_core::subset::{SubsetQuery, SubsetRows};
use ampere_core::where_clause::tz::Zone;
use ampere_core::where_clause::ZoneMismatch;
use ampere_core::{LogOffset, Lsn};
use tokio::sync::Notify;

use crate::api::{
    CatalogUnavailable, CreateShapeError, DeleteShapeError, Health, NotActive, ShapeApi, ShapeInfo,
};

/// How long [`FakeApi::until_active`] waits, as the service does.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The snapshot-end entry every fake snapshot closes with.
pub(crate) const SNAPSHOT_END: &str =
    r#"{"headers":{"control":"snapshot-end","xmin":"750","xmax":"750","xip_list":[]}}"#;

#[derive(Clone, Default)]
pub(crate) struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    tables: BTreeMap<RelationName, (TableSchema, Vec<String>)>,
    shapes: BTreeMap<ShapeHandle, FakeShape>,
    /// Handles whose log the store lost (status `None`) while the shape stays registered.
    lost_logs: Vec<ShapeHandle>,
    /// Handles the read model has not seen yet (a standby between metadata refreshes):
    /// unknown by handle and by definition, but creating the definition finds them.
    unseen: Vec<ShapeHandle>,
    stamp: HandleStamp,
    is_starting: bool,
    is_catalog_down: bool,
    last_seen_lsn: Lsn,
    /// Time zones the fake server reads otherwise than ampere, by canonical name.
    zone_mismatches: BTreeMap<String, ZoneMismatch>,
    /// Every subset read asked for, in order.
    subset_queries: Vec<SubsetQuery>,
    /// What the next subset reads fail with (`None`: they return the table's rows).
    subset_failure: Option<fn() -> SnapshotError>,
    /// Every use recorded, in order.
    uses: Vec<ShapeHandle>,
}

struct FakeShape {
    info: ShapeInfo,
    snapshot: Vec<String>,
    is_snapshot_complete: bool,
    changes: Vec<LogEntry>,
}

impl FakeApi {
    /// A database with `public.items (id int4 primary key, title text)` holding two rows.
    pub(crate) fn with_items() -> Self {
        let api = Self::default();
        api.add_table(
            "items",
            &[("id", "int4", Some(0)), ("title", "text", None)],
            vec![row(1, "a"), row(2, "b")],
        );
        api
    }

    pub(crate) fn add_table(
        &self,
        name: &str,
        columns: &[(&str, &str, Option<u32>)],
        rows: Vec<String>,
    ) {
        let relation = RelationName {
            schema: "public".to_owned(),
            table: name.to_owned(),
        };
        let columns = columns
            .iter()
            .map(|(name, typname, pk_index)| ColumnSchema {
                name: (*name).to_owned(),
                type_oid: match *typname {
                    "bool" => 16,
                    "int8" => 20,
                    "int4" => 23,
                    "text" => 25,
                    _ => 0,
                },
                typname: (*typname).to_owned(),
                dims: 0,
                not_null: pk_index.is_some(),
                pk_index: *pk_index,
                modifiers: vec![],
                is_enum: false,
            })
            .collect();
        let schema = TableSchema {
            server_version: ampere_core::shape::ServerVersion::PG_15,
            oid: Oid(1),
            relation: relation.clone(),
            columns,
        };
        self.lock().tables.insert(relation, (schema, rows));
    }

    /// Appends a replicated change and wakes waiters.
    pub(crate) fn append(&self, handle: &ShapeHandle, offset: &str, json: &str, chunk_end: bool) {
        let offset: LogOffset = offset.parse().expect("test offset");
        {
            let mut inner = self.lock();
            inner.last_seen_lsn = Lsn(offset.tx());
            let shape = inner.shapes.get_mut(handle).expect("known shape");
            shape.changes.push(LogEntry {
                offset,
                json: json.to_owned(),
                chunk_end,
            });
        }
        self.notify.notify_waiters();
    }

    /// Replaces a shape's snapshot chunks.
    pub(crate) fn set_snapshot(&self, handle: &ShapeHandle, chunks: Vec<String>, complete: bool) {
        {
            let mut inner = self.lock();
            let shape = inner.shapes.get_mut(handle).expect("known shape");
            shape.snapshot = chunks;
            shape.is_snapshot_complete = complete;
        }
        self.notify.notify_waiters();
    }

    /// Deletes a shape entirely and wakes waiters.
    pub(crate) fn remove(&self, handle: &ShapeHandle) {
        self.lock().shapes.remove(handle);
        self.notify.notify_waiters();
    }

    /// Makes the store forget a shape's log while the shape stays registered.
    pub(crate) fn lose_log(&self, handle: &ShapeHandle) {
        self.lock().lost_logs.push(handle.clone());
        self.notify.notify_waiters();
    }

    /// Hides a shape from lookups as a read model that has not refreshed yet would.
    pub(crate) fn hide_from_read_model(&self, handle: &ShapeHandle) {
        self.lock().unseen.push(handle.clone());
    }

    /// Starting (or a standby) while `is_starting`: shapes are served, not created or
    /// deleted. Wakes waiters.
    pub(crate) fn set_starting(&self, is_starting: bool) {
        self.lock().is_starting = is_starting;
        self.notify.notify_waiters();
    }

    pub(crate) fn set_catalog_down(&self, is_down: bool) {
        self.lock().is_catalog_down = is_down;
    }

    /// Makes the fake server read `mismatch`'s zone otherwise than ampere does.
    pub(crate) fn set_zone_mismatch(&self, zone: &str, mismatch: ZoneMismatch) {
        self.lock()
            .zone_mismatches
            .insert(zone.to_owned(), mismatch);
    }

    pub(crate) fn set_last_seen_lsn(&self, lsn: u64) {
        self.lock().last_seen_lsn = Lsn(lsn);
    }

    /// Every use recorded so far, in order.
    pub(crate) fn uses(&self) -> Vec<ShapeHandle> {
        self.lock().uses.clone()
    }

    pub(crate) fn shape_count(&self) -> usize {
        self.lock().shapes.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake lock poisoned")
    }
}

/// A snapshot row of `public.items`.
pub(crate) fn row(id: u32, title: &str) -> String {
    format!(
        r#"{{"key":"\"public\".\"items\"/\"{id}\"","value":{{"id":"{id}","title":"{title}"}},"headers":{{"operation":"insert","relation":["public","items"]}}}}"#
    )
}

impl FakeApi {
    /// The subset reads asked for so far.
    pub(crate) fn subset_queries(&self) -> Vec<SubsetQuery> {
        self.lock().subset_queries.clone()
    }

    /// Makes the next subset reads fail with what `failure` builds.
    pub(crate) fn fail_subsets(&self, failure: fn() -> SnapshotError) {
        self.lock().subset_failure = Some(failure);
    }
}

impl FakeShape {
    fn latest(&self) -> LogOffset {
        self.changes
            .last()
            .map_or(LogOffset::SNAPSHOT_END, |e| e.offset)
    }

    fn read(&self, after: LogOffset) -> ReadOutcome {
        let chunks = self.snapshot.len() as u64;
        let next_chunk = match after {
            LogOffset::BeforeAll => Some(0),
            _ => after.snapshot_chunk_index().map(|i| i + 1),
        };
        if let Some(next) = next_chunk {
            if next < chunks {
                return ReadOutcome::Chunk(ChunkRead {
                    body: self.snapshot[next as usize].clone().into(),
                    entries: 1,
                    end: LogOffset::snapshot_chunk(next),
                });
            }
            if !self.is_snapshot_complete {
                return ReadOutcome::SnapshotPending;
            }
        }
        self.read_changes(after)
    }

    fn read_changes(&self, after: LogOffset) -> ReadOutcome {
        let mut taken = Vec::new();
        let mut end = self.latest();
        for entry in self.changes.iter().filter(|e| e.offset > after) {
            taken.push(entry.json.as_str());
            if entry.chunk_end {
                end = entry.offset;
                break;
            }
        }
        if taken.is_empty() && after > end {
            end = after;
        }
        ReadOutcome::Chunk(ChunkRead {
            body: taken.join(",").into(),
            entries: taken.len(),
            end,
        })
    }
}

impl ShapeApi for FakeApi {
    fn shape_for_definition(&self, definition: &ShapeDefinition) -> Option<ShapeInfo> {
        let inner = self.lock();
        let shape = inner
            .shapes
            .values()
            .filter(|s| !inner.unseen.contains(&s.info.handle))
            .find(|s| s.info.definition == *definition)?;
        Some(shape.info.clone())
    }

    fn shape(&self, handle: &ShapeHandle) -> Option<ShapeInfo> {
        let inner = self.lock();
        if inner.unseen.contains(handle) {
            return None;
        }
        inner.shapes.get(handle).map(|s| s.info.clone())
    }

    fn record_use(&self, handle: &ShapeHandle) {
        self.lock().uses.push(handle.clone());
    }

    fn check_time_zone(
        &self,
        zone: Zone,
    ) -> impl Future<Output = Result<Option<ZoneMismatch>, CatalogUnavailable>> + Send {
        let inner = self.lock();
        let result = if inner.is_catalog_down {
            Err(CatalogUnavailable)
        } else {
            Ok(inner.zone_mismatches.get(zone.name()).cloned())
        };
        std::future::ready(result)
    }

    fn table_schema(
        &self,
        relation: RelationName,
    ) -> impl Future<Output = Result<Option<CatalogTable>, CatalogUnavailable>> + Send {
        let inner = self.lock();
        let result = if inner.is_catalog_down {
            Err(CatalogUnavailable)
        } else {
            Ok(inner.tables.get(&relation).map(|(schema, _)| CatalogTable {
                schema: schema.clone(),
                generated: Vec::new(),
            }))
        };
        std::future::ready(result)
    }

    fn create_shape(
        &self,
        definition: ShapeDefinition,
        schema: TableSchema,
    ) -> impl Future<Output = Result<ShapeInfo, CreateShapeError>> + Send {
        std::future::ready(self.create_now(definition, schema))
    }

    fn query_subset(
        &self,
        query: SubsetQuery,
    ) -> impl Future<Output = Result<SubsetRows, SnapshotError>> + Send {
        let mut inner = self.lock();
        let relation = query.schema.relation.clone();
        inner.subset_queries.push(query);
        let result = match inner.subset_failure {
            Some(failure) => Err(failure()),
            None => {
                let rows = inner
                    .tables
                    .get(&relation)
                    .map(|(_, rows)| rows.clone())
                    .unwrap_or_default();
                Ok(SubsetRows {
                    snapshot: PgSnapshot {
                        xmin: FullXid(750),
                        xmax: FullXid(752),
                        xip: vec![FullXid(751)],
                    },
                    database_lsn: Lsn(4096),
                    rows: rows.len(),
                    data: rows.join(","),
                })
            }
        };
        std::future::ready(result)
    }

    async fn until_active(&self) -> Result<(), NotActive> {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            let changed = Arc::clone(&self.notify).notified_owned();
            if !self.lock().is_starting {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(NotActive {
                    message: "Timeout waiting for Postgres lock acquisition".to_owned(),
                });
            }
        }
    }

    async fn delete_shape(&self, handle: ShapeHandle) -> Result<(), DeleteShapeError> {
        {
            let mut inner = self.lock();
            if inner.is_starting {
                return Err(DeleteShapeError::NotActive(NotActive {
                    message: "Timeout waiting for Postgres lock acquisition".to_owned(),
                }));
            }
            if inner.shapes.remove(&handle).is_none() {
                return Err(DeleteShapeError::NotFound);
            }
        }
        self.notify.notify_waiters();
        Ok(())
    }

    fn read(&self, handle: &ShapeHandle, after: LogOffset) -> ReadOutcome {
        let inner = self.lock();
        match inner.shapes.get(handle) {
            Some(shape) if !inner.lost_logs.contains(handle) => shape.read(after),
            _ => ReadOutcome::UnknownShape,
        }
    }

    fn status(&self, handle: &ShapeHandle) -> Option<LogStatus> {
        let inner = self.lock();
        if inner.lost_logs.contains(handle) {
            return None;
        }
        let shape = inner.shapes.get(handle)?;
        Some(LogStatus {
            latest: shape.latest(),
            snapshot_complete: shape.is_snapshot_complete,
        })
    }

    fn changed(&self, _handle: &ShapeHandle) -> impl Future<Output = ()> + Send {
        // Created now, so it sees every `notify_waiters` from here on, even before a poll.
        Arc::clone(&self.notify).notified_owned()
    }

    fn last_seen_lsn(&self) -> Lsn {
        self.lock().last_seen_lsn
    }

    fn health(&self) -> Health {
        if self.lock().is_starting {
            Health::Starting
        } else {
            Health::Active
        }
    }
}

impl FakeApi {
    fn create_now(
        &self,
        definition: ShapeDefinition,
        schema: TableSchema,
    ) -> Result<ShapeInfo, CreateShapeError> {
        let mut inner = self.lock();
        if inner.is_starting {
            return Err(CreateShapeError::NotReady(
                "Timeout waiting for Postgres lock acquisition".to_owned(),
            ));
        }
        if let Some(shape) = inner
            .shapes
            .values()
            .find(|s| s.info.definition == definition)
        {
            return Ok(shape.info.clone());
        }
        inner.stamp = inner.stamp.next(1_721_812_114_261_123);
        let handle = ShapeHandle::mint(definition.identity(), inner.stamp);
        let rows = inner
            .tables
            .get(&schema.relation)
            .map(|(_, rows)| rows.clone())
            .unwrap_or_default();
        let mut chunk = rows;
        chunk.push(SNAPSHOT_END.to_owned());
        let info = ShapeInfo {
            handle: handle.clone(),
            definition,
            schema: Arc::new(schema),
        };
        let shape = FakeShape {
            info: info.clone(),
            snapshot: vec![chunk.join(",")],
            is_snapshot_complete: true,
            changes: Vec::new(),
        };
        inner.shapes.insert(handle, shape);
        Ok(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_follow_the_snapshot_then_the_change_log() {
        let api = FakeApi::with_items();
        let schema = api.lock().tables.values().next().expect("table").0.clone();
        let definition = ShapeDefinition {
            relation: schema.relation.clone(),
            columns: None,
            replica: Default::default(),
            where_clause: None,
            log: ampere_core::shape::LogMode::Full,
        };
        let info = api.create_now(definition, schema).expect("created");
        let h = &info.handle;
        let end = |outcome: ReadOutcome| match outcome {
            ReadOutcome::Chunk(c) => (c.end.to_string(), c.entries),
            other => panic!("{other:?}"),
        };
        assert_eq!(end(api.read(h, LogOffset::BEFORE_ALL)), ("0_0".into(), 1));
        assert_eq!(
            end(api.read(h, "0_0".parse().expect("o"))),
            ("0_inf".into(), 0)
        );
        api.append(h, "5_0", "{}", true);
        api.append(h, "5_2", "{}", false);
        assert_eq!(
            end(api.read(h, "0_inf".parse().expect("o"))),
            ("5_0".into(), 1)
        );
        assert_eq!(
            end(api.read(h, "5_0".parse().expect("o"))),
            ("5_2".into(), 1)
        );
        assert_eq!(api.status(h).expect("status").latest.to_string(), "5_2");
    }
}
