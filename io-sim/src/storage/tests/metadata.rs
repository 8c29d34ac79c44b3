//! Metadata: read-only before promotion, each write one durable transaction, the stamp
//! high-water mark never lowered, rows rebuilt from shape descriptions on promotion.

use std::sync::{Arc, Mutex};

use ampere_core::ports::{MetadataStore, ShapeLogStore, StorageIdentity};
use ampere_core::shape::HandleStamp;
use ampere_core::Lsn;

use super::*;
use crate::storage::{MutationKind, SimDisk, SimMetadata, SimMetadataError};

fn identity(acked: u64) -> StorageIdentity {
    StorageIdentity {
        system_id: "7300000000000000001".into(),
        timeline: 1,
        slot: "electric_slot_default".into(),
        acked: Lsn(acked),
        purge_pending: false,
    }
}

async fn promoted(disk: &SimDisk, writer: &str) -> SimMetadata {
    let metadata = SimMetadata::open(disk.clone(), writer);
    metadata.promote().await.expect("promote");
    metadata
}

#[test]
fn metadata_is_read_only_before_promote() {
    in_sim(async {
        let disk = SimDisk::new(31);
        let metadata = SimMetadata::open(disk.clone(), "a");
        assert!(metadata.is_read_only());
        let h = handle(1);
        let ro = |e: SimMetadataError| matches!(e, SimMetadataError::ReadOnly { .. });
        let put = metadata.put_shape(stored_shape(&h), HandleStamp(5));
        assert!(ro(put.await.expect_err("put")));
        assert!(ro(metadata.delete_shape(&h).await.expect_err("delete")));
        assert!(ro(metadata
            .put_identity(identity(1))
            .await
            .expect_err("identity")));
        assert_eq!(
            metadata.load().await.expect("load"),
            (vec![], HandleStamp(0))
        );
        assert_eq!(metadata.load_identity().await.expect("identity"), None);

        metadata.promote().await.expect("promote");
        assert!(!metadata.is_read_only());
        metadata.put_identity(identity(7)).await.expect("identity");
        assert_eq!(
            metadata.load_identity().await.expect("load"),
            Some(identity(7))
        );
        // A standby on the same disk reads what the writer committed.
        let standby = SimMetadata::open(disk.clone(), "b");
        assert_eq!(
            standby.load_identity().await.expect("load"),
            Some(identity(7))
        );
    });
}

#[test]
fn the_stamp_high_water_mark_is_raised_by_put_shape_and_never_lowered() {
    in_sim(async {
        let disk = SimDisk::new(32);
        let metadata = promoted(&disk, "a").await;
        let (h1, h2) = (handle(1), handle(2));
        metadata
            .put_shape(stored_shape(&h1), HandleStamp(50))
            .await
            .expect("put");
        metadata
            .put_shape(stored_shape(&h2), HandleStamp(20))
            .await
            .expect("put");
        // The driver persists later rows with a default stamp.
        metadata
            .put_shape(stored_shape(&h1), HandleStamp::default())
            .await
            .expect("put");
        let (rows, stamp) = metadata.load().await.expect("load");
        assert_eq!(stamp, HandleStamp(50));
        let handles: Vec<&str> = rows.iter().map(|r| r.handle.as_str()).collect();
        assert_eq!(handles, [h1.as_str(), h2.as_str()], "ordered by handle");
        metadata.delete_shape(&h1).await.expect("delete");
        let (rows, stamp) = metadata.load().await.expect("load");
        assert_eq!(rows.len(), 1);
        assert_eq!(stamp, HandleStamp(50), "deleting keeps the mark");
    });
}

#[test]
fn a_crash_loses_a_metadata_write_whose_latency_had_not_elapsed() {
    in_sim(async {
        let disk = SimDisk::new(33);
        disk.set_fsync_latency(Duration::from_millis(10), Duration::from_millis(10));
        let metadata = promoted(&disk, "a").await;
        metadata.put_identity(identity(1)).await.expect("identity");
        let pending = tokio::spawn(metadata.put_identity(identity(2)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        disk.crash("a", 3);
        let err = pending.await.expect("join").expect_err("lost");
        assert!(matches!(err, SimMetadataError::Lost { .. }), "{err}");
        assert_eq!(disk.durable_metadata().2, Some(identity(1)));
    });
}

#[test]
fn promotion_restores_lost_rows_from_shape_descriptions_and_raises_the_stamp() {
    // Goal (MD-3, ID-2): a row lost to a crash comes back from `shape.json`, and a shape
    // directory whose row never landed still keeps its stamp from being reissued.
    in_sim(async {
        let disk = SimDisk::new(34);
        let store = writer(&disk, "a").await;
        let metadata = promoted(&disk, "a").await;
        let kept = ShapeHandle::from_string("11-300".into());
        let bare = ShapeHandle::from_string("12-900".into());
        store.create_shape(&kept).await.expect("create");
        metadata
            .put_shape(stored_shape(&kept), HandleStamp(300))
            .await
            .expect("put");
        store
            .create_shape(&bare)
            .await
            .expect("create, row never written");
        // The row is lost (say with SQLite's `synchronous=OFF`), its description is not.
        metadata
            .delete_shape(&kept)
            .await
            .expect("stands in for the lost row");
        assert!(disk.durable_metadata().0.is_empty());

        let audit: Arc<Mutex<Vec<MutationKind>>> = Arc::default();
        let log = Arc::clone(&audit);
        disk.set_audit_hook(Box::new(move |m| {
            log.lock().expect("lock").push(m.kind.clone())
        }));
        let next = promoted(&disk, "b").await;
        let (rows, stamp) = next.load().await.expect("load");
        assert_eq!(rows, vec![stored_shape(&kept)]);
        assert_eq!(
            stamp,
            HandleStamp(900),
            "above every shape directory's stamp"
        );
        assert_eq!(
            audit.lock().expect("lock").clone(),
            [
                MutationKind::LeaseAcquired { generation: 2 },
                MutationKind::MetadataRebuild { rows: 1 }
            ]
        );
        // Nothing left to repair: promoting again writes nothing but its lease.
        promoted(&disk, "c").await;
        let repairs = audit
            .lock()
            .expect("lock")
            .iter()
            .filter(|k| !matches!(k, MutationKind::LeaseAcquired { .. }))
            .count();
        assert_eq!(repairs, 1);
    });
}
