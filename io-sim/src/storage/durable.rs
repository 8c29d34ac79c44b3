//! What a [`super::SimDisk`] holds durably, the writes that change it, and what a crash
//! leaves of a write in flight. Pure: no time, no locks.

use std::collections::{BTreeMap, BTreeSet};

use ampere_core::ports::{LogEntry, StorageIdentity, StoredShape};
use ampere_core::shape::HandleStamp;
use ampere_core::LogOffset;

use super::audit::MutationKind;
use super::rng::SplitMix64;

/// Everything durable in one storage directory (shape logs, snapshots, metadata).
#[derive(Clone, Debug, Default)]
pub(super) struct Durable {
    pub(super) shapes: BTreeMap<String, DurableShape>,
    /// Half-created shape directories (`shapes/.<handle>.creating`) a crash left.
    pub(super) creating: BTreeSet<String>,
    /// Removed shapes whose files a crash left in `trash/`.
    pub(super) trash: BTreeSet<String>,
    pub(super) metadata: DurableMetadata,
}

/// One shape directory.
#[derive(Clone, Debug, Default)]
pub(super) struct DurableShape {
    /// Replicated entries whose data and index records are durable.
    pub(super) log: Vec<LogEntry>,
    /// Durable snapshot chunks, in order.
    pub(super) chunks: Vec<String>,
    /// Whether the completion marker is durable.
    pub(super) complete: bool,
    /// `shape.json`: the shape's own copy of its metadata row (MD-3).
    pub(super) description: Option<StoredShape>,
}

impl DurableShape {
    /// The last durable offset (`0_inf` with no replicated entries).
    pub(super) fn latest(&self) -> LogOffset {
        self.log
            .last()
            .map_or(LogOffset::SNAPSHOT_END, |entry| entry.offset)
    }
}

/// The metadata database (SQLite in production).
#[derive(Clone, Debug, Default)]
pub(super) struct DurableMetadata {
    pub(super) rows: BTreeMap<String, StoredShape>,
    pub(super) stamp: HandleStamp,
    pub(super) identity: Option<StorageIdentity>,
}

/// Entries of one shape handed to a flush, and where they go in its index.
#[derive(Clone, Debug)]
pub(super) struct FlushBatch {
    pub(super) handle: String,
    /// The index record number of `entries[0]` (the writer's view of its log length).
    pub(super) index_start: usize,
    pub(super) entries: Vec<LogEntry>,
}

/// One write issued to the disk: durable once its fsync latency elapsed.
#[derive(Clone, Debug)]
pub(super) enum Write {
    CreateShape {
        handle: String,
    },
    RemoveShape {
        handle: String,
    },
    Flush {
        batches: Vec<FlushBatch>,
    },
    SnapshotChunk {
        handle: String,
        index: u64,
        body: String,
    },
    SnapshotComplete {
        handle: String,
    },
    MetadataPut {
        shape: StoredShape,
        stamp: HandleStamp,
    },
    MetadataDelete {
        handle: String,
    },
    IdentityPut {
        identity: StorageIdentity,
    },
    DescriptionPut {
        shape: StoredShape,
    },
    MetadataRebuild {
        rows: Vec<StoredShape>,
        min_stamp: HandleStamp,
    },
    PromoteCleanup,
    /// Crash-only: what survives of an in-flight flush (a prefix of each batch).
    TornFlush {
        batches: Vec<FlushBatch>,
    },
    /// Crash-only: a half-created shape directory.
    CreateLeftover {
        handle: String,
    },
    /// Crash-only: an in-flight removal's rename became durable.
    RemoveToTrash {
        handle: String,
    },
}

/// Why a write was refused when it was to take effect.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Refused {
    /// `create_shape` found the shape's directory there.
    ShapeExists,
    /// The shape's directory is gone (a snapshot write into a removed shape).
    ShapeGone,
    /// Another writer acquired the storage lease since this writer did (fencing, §2 item 13).
    Fenced,
}

impl Write {
    /// What a crash leaves of this write while it was in flight (power-loss semantics), or
    /// `None` if nothing of it survives. Flushes: per shape, any prefix of the batch's index
    /// records (data is synced before the index, so never a gap); chunks, markers and
    /// metadata transactions: lost; renames: may or may not have become durable.
    pub(super) fn torn(self, rng: &mut SplitMix64) -> Option<Self> {
        match self {
            Self::Flush { batches } => {
                let batches: Vec<FlushBatch> = batches
                    .into_iter()
                    .filter_map(|mut batch| {
                        let keep = rng.up_to(batch.entries.len() as u64);
                        let keep = usize::try_from(keep).unwrap_or(usize::MAX);
                        batch.entries.truncate(keep);
                        (!batch.entries.is_empty()).then_some(batch)
                    })
                    .collect();
                (!batches.is_empty()).then_some(Self::TornFlush { batches })
            }
            Self::CreateShape { handle } => rng.coin().then_some(Self::CreateLeftover { handle }),
            Self::RemoveShape { handle } => rng.coin().then_some(Self::RemoveToTrash { handle }),
            _ => None,
        }
    }
}

impl Durable {
    /// The mutations `write` makes, for the audit (none if it would change nothing).
    pub(super) fn mutations(&self, write: &Write) -> Vec<(MutationKind, Option<String>)> {
        let one = |kind, handle: &str| vec![(kind, Some(handle.to_owned()))];
        match write {
            Write::CreateShape { handle } if !self.shapes.contains_key(handle) => {
                one(MutationKind::CreateShape, handle)
            }
            Write::RemoveShape { handle } if self.shapes.contains_key(handle) => {
                one(MutationKind::RemoveShape, handle)
            }
            Write::Flush { batches } => self.appends(batches, false),
            Write::TornFlush { batches } => self.appends(batches, true),
            Write::SnapshotChunk { handle, index, .. } if self.shapes.contains_key(handle) => {
                one(MutationKind::SnapshotChunk { index: *index }, handle)
            }
            Write::SnapshotComplete { handle } if self.shapes.contains_key(handle) => {
                one(MutationKind::SnapshotComplete, handle)
            }
            Write::MetadataPut { shape, .. } => {
                one(MutationKind::MetadataPut, shape.handle.as_str())
            }
            Write::MetadataDelete { handle } => one(MutationKind::MetadataDelete, handle),
            Write::IdentityPut { identity } => vec![(
                MutationKind::IdentityPut {
                    acked: identity.acked,
                    purge_pending: identity.purge_pending,
                },
                None,
            )],
            Write::DescriptionPut { shape } if self.shapes.contains_key(shape.handle.as_str()) => {
                one(MutationKind::DescriptionPut, shape.handle.as_str())
            }
            Write::MetadataRebuild { rows, .. } => {
                vec![(MutationKind::MetadataRebuild { rows: rows.len() }, None)]
            }
            Write::PromoteCleanup => self
                .creating
                .iter()
                .chain(&self.trash)
                .map(|handle| (MutationKind::PromoteCleanup, Some(handle.clone())))
                .collect(),
            Write::CreateLeftover { handle } => one(MutationKind::CreateLeftover, handle),
            Write::RemoveToTrash { handle } if self.shapes.contains_key(handle) => {
                one(MutationKind::RemovedToTrash, handle)
            }
            _ => Vec::new(),
        }
    }

    fn appends(&self, batches: &[FlushBatch], torn: bool) -> Vec<(MutationKind, Option<String>)> {
        batches
            .iter()
            .filter(|batch| self.lands(batch))
            .filter_map(|batch| {
                let last = batch.entries.last()?.offset;
                let entries = batch.entries.len();
                let kind = if torn {
                    MutationKind::TornAppend { entries, last }
                } else {
                    MutationKind::AppendDurable { entries, last }
                };
                Some((kind, Some(batch.handle.clone())))
            })
            .collect()
    }

    /// Whether a batch reaches a readable log: its shape exists and it starts at or before
    /// the log's end. A batch starting past the end (the log was replaced under its writer,
    /// e.g. an old copy restored) would leave a hole that recovery truncates at: unreadable.
    fn lands(&self, batch: &FlushBatch) -> bool {
        self.shapes
            .get(&batch.handle)
            .is_some_and(|shape| batch.index_start <= shape.log.len())
    }

    /// Applies `write`; returns the handles whose readers should wake.
    pub(super) fn apply(&mut self, write: Write) -> Result<Vec<String>, Refused> {
        match write {
            Write::CreateShape { handle } => {
                if self.shapes.contains_key(&handle) {
                    return Err(Refused::ShapeExists);
                }
                self.creating.remove(&handle);
                self.shapes.insert(handle.clone(), DurableShape::default());
                Ok(vec![handle])
            }
            Write::RemoveShape { handle } => {
                self.trash.remove(&handle);
                Ok(self
                    .shapes
                    .remove(&handle)
                    .map(|_| handle)
                    .into_iter()
                    .collect())
            }
            Write::Flush { batches } | Write::TornFlush { batches } => Ok(self.append(batches)),
            Write::SnapshotChunk {
                handle,
                index,
                body,
            } => {
                let shape = self.shapes.get_mut(&handle).ok_or(Refused::ShapeGone)?;
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                shape.chunks.truncate(index);
                shape.chunks.push(body);
                Ok(vec![handle])
            }
            Write::SnapshotComplete { handle } => {
                let shape = self.shapes.get_mut(&handle).ok_or(Refused::ShapeGone)?;
                shape.complete = true;
                Ok(vec![handle])
            }
            Write::RemoveToTrash { handle } => {
                let removed = self.shapes.remove(&handle).is_some();
                if removed {
                    self.trash.insert(handle.clone());
                }
                Ok(removed.then_some(handle).into_iter().collect())
            }
            Write::CreateLeftover { handle } => {
                self.creating.insert(handle);
                Ok(Vec::new())
            }
            Write::PromoteCleanup => {
                self.creating.clear();
                self.trash.clear();
                Ok(Vec::new())
            }
            metadata => {
                self.apply_metadata(metadata);
                Ok(Vec::new())
            }
        }
    }

    fn append(&mut self, batches: Vec<FlushBatch>) -> Vec<String> {
        let mut woken = Vec::new();
        for batch in batches {
            if !self.lands(&batch) {
                tracing::warn!(
                    handle = %batch.handle, index_start = batch.index_start,
                    "flushed entries land past the end of a replaced log: unreadable"
                );
                continue;
            }
            let Some(shape) = self.shapes.get_mut(&batch.handle) else {
                continue;
            };
            // A positional write: records from `index_start` on are replaced.
            shape.log.truncate(batch.index_start);
            for entry in batch.entries {
                // offsets-contiguous (durable side; the store checks it on append).
                if let Some(prev) = shape.log.last() {
                    assert!(
                        entry.offset > prev.offset,
                        "offsets-contiguous: {} after {} in {}",
                        entry.offset,
                        prev.offset,
                        batch.handle
                    );
                }
                shape.log.push(entry);
            }
            woken.push(batch.handle);
        }
        woken
    }

    fn apply_metadata(&mut self, write: Write) {
        let metadata = &mut self.metadata;
        match write {
            Write::MetadataPut { shape, stamp } => {
                metadata
                    .rows
                    .insert(shape.handle.as_str().to_owned(), shape);
                metadata.stamp = metadata.stamp.max(stamp);
            }
            Write::MetadataDelete { handle } => {
                metadata.rows.remove(&handle);
            }
            Write::IdentityPut { identity } => metadata.identity = Some(identity),
            Write::DescriptionPut { shape } => {
                if let Some(dir) = self.shapes.get_mut(shape.handle.as_str()) {
                    dir.description = Some(shape);
                }
            }
            Write::MetadataRebuild { rows, min_stamp } => {
                for row in rows {
                    let handle = row.handle.as_str().to_owned();
                    metadata.rows.entry(handle).or_insert(row);
                }
                metadata.stamp = metadata.stamp.max(min_stamp);
            }
            other => unreachable!("not a metadata write: {other:?}"),
        }
    }
}
