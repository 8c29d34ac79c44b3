//! The model served on a turmoil host, driven through [`SimPg`] as the driver drives it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ampere_core::lsn::Lsn;
use ampere_core::pgoutput::{Decoder, ProtoVersion};
use ampere_core::ports::{
    DisconnectKind, PgError, PgPort, ReplicationMessage, ReplicationSession, ReplicationStream,
    ReplicationTarget, SlotPersistence, SnapshotRequest, SnapshotWriter, StandbyStatus,
};
use ampere_core::shape::{HandleStamp, RelationName, Replica, ShapeDefinition, ShapeHandle};
use ampere_core::snapshot::PgSnapshot;
use ampere_core::txn::{Change, Transaction, TxnAssembler};

use super::*;

const SLOT: &str = "electric_slot_default";
const PUBLICATION: &str = "electric_publication_default";

fn items() -> RelationName {
    RelationName {
        schema: "public".into(),
        table: "items".into(),
    }
}

fn shared_model() -> SharedPg {
    PgModel::shared(PgModelConfig {
        system_id: 7_000_000_000_000_000_001,
        timeline: 1,
        first_xid: (1_u64 << 32) - 3,
        tables: vec![TableDef::with_text_columns(items(), 16_384, &["title"])],
    })
}

fn row(id: u64, title: &str) -> Row {
    vec![Some(id.to_string()), Some(title.to_owned())]
}

fn target() -> ReplicationTarget {
    ReplicationTarget {
        slot: SLOT.into(),
        publication: PUBLICATION.into(),
        slot_persistence: SlotPersistence::Persistent,
    }
}

fn insert_committed(pg: &SharedPg, rows: &[(u64, &str)]) -> Lsn {
    let mut model = lock(pg);
    let xid = model.begin();
    for (id, title) in rows {
        model.insert(xid, &items(), row(*id, title)).unwrap();
    }
    model.commit(xid).unwrap()
}

/// Collects snapshot chunks in memory.
#[derive(Clone, Default)]
struct MemWriter(Arc<Mutex<Vec<(u64, String)>>>);

impl SnapshotWriter for MemWriter {
    type Error = Infallible;

    async fn write_chunk(&mut self, index: u64, body: String) -> Result<(), Infallible> {
        self.0.lock().unwrap().push((index, body));
        Ok(())
    }

    async fn finish(self) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Receives until a whole transaction arrived.
async fn next_transaction(
    stream: &mut SimReplicationStream,
    decoder: &mut Decoder,
    assembler: &mut TxnAssembler,
) -> Transaction {
    loop {
        match stream.recv().await.unwrap() {
            ReplicationMessage::XLogData { data, .. } => {
                let message = decoder.decode(&data).unwrap();
                if let Some(txn) = assembler.push(message).unwrap() {
                    return txn;
                }
            }
            ReplicationMessage::PrimaryKeepalive { .. } => {}
        }
    }
}

async fn wait_for(pg: &SharedPg, what: impl Fn(&PgModel) -> bool) {
    while !what(&lock(pg)) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes a snapshot of items with a tiny chunk threshold and checks its chunks.
async fn snapshot_of_items(port: &SimPg) -> PgSnapshot {
    let schema = port
        .table_schema(items())
        .await
        .unwrap()
        .expect("items exists")
        .schema;
    assert_eq!(schema.columns.len(), 2);
    let chunks = MemWriter::default();
    let definition = ShapeDefinition::default_for(&items());
    let request = SnapshotRequest {
        handle: ShapeHandle::mint(definition.identity(), HandleStamp(1)),
        definition,
        schema,
        publication: PUBLICATION.into(),
        chunk_bytes_threshold: 100,
    };
    let snapshot = port.take_snapshot(request, chunks.clone()).await.unwrap();
    let chunks = chunks.0.lock().unwrap().clone();
    assert!(chunks.len() >= 2, "a 100-byte threshold cuts: {chunks:?}");
    let indices: Vec<u64> = chunks.iter().map(|(i, _)| *i).collect();
    assert_eq!(indices, (0..chunks.len() as u64).collect::<Vec<_>>());
    let all: String = chunks
        .iter()
        .map(|(_, body)| body.as_str())
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(all.matches("\"operation\":\"insert\"").count(), 3, "{all}");
    assert!(all.ends_with(&snapshot.snapshot_end_json()));
    snapshot
}

#[test]
fn a_client_locks_snapshots_streams_and_acks_over_the_network() {
    // Goal: the port runs the driver's whole conversation against the served model.
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    let pg = shared_model();
    let served = pg.clone();
    sim.host("pg", move || serve(served.clone()));
    sim.client("ampere", async move {
        insert_committed(&pg, &[(1, "one"), (2, "two"), (3, "three")]);
        let port = SimPg::new("pg");
        let (session, identity) = port.connect_replication().await?;
        assert_eq!(identity.system_id, "7000000000000000001");
        assert_eq!(identity.timeline, 1);
        let (session, locked) = session.try_advisory_lock(SLOT.into()).await;
        assert!(locked?);
        let (rival, _) = port.connect_replication().await?;
        let (rival, locked) = rival.try_advisory_lock(SLOT.into()).await;
        assert!(!locked?, "the second session waits");
        assert_eq!(lock(&pg).lock_holder_host(SLOT).as_deref(), Some("ampere"));
        assert_eq!(lock(&pg).lock_holder(SLOT), Some(session.backend_pid()));

        let (mut stream, started) = session.start_streaming(target()).await?;
        assert!(started.slot_created);
        assert_eq!(
            lock(&pg).slot(SLOT).map(|s| s.active_pid),
            Some(Some(stream.backend_pid()))
        );
        let stale = port
            .stale_lock_holders(SLOT.into(), rival.backend_pid())
            .await?;
        assert!(stale.is_empty(), "a streaming holder is never stale");

        let snapshot = snapshot_of_items(&port).await;

        let commit_lsn = insert_committed(&pg, &[(4, "four")]);
        let mut decoder = Decoder::new(ProtoVersion::V1);
        let mut assembler = TxnAssembler::new();
        let txn = next_transaction(&mut stream, &mut decoder, &mut assembler).await;
        assert_eq!(txn.commit_lsn, commit_lsn);
        assert!(
            !snapshot.is_visible(txn.xid),
            "committed after the snapshot"
        );
        assert!(matches!(&txn.changes[..], [Change::Insert { new, .. }] if *new == row(4, "four")));

        let flush = commit_lsn.next();
        let status = StandbyStatus {
            write: flush,
            flush,
            apply: flush,
            reply_requested: false,
        };
        stream.send_status(status).await?;
        wait_for(&pg, |m| {
            m.slot(SLOT).is_some_and(|s| s.confirmed_flush_lsn == flush)
        })
        .await;
        assert_eq!(lock(&pg).ack_events().last().map(|a| a.flush), Some(flush));
        drop(rival);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_silent_walsender_client_is_disconnected_after_wal_sender_timeout() {
    // Goal: a held link (half-open connection) ends the walsender at wal_sender_timeout,
    // releasing the lock and the slot, and the client sees the close once the link heals.
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    let pg = shared_model();
    lock(&pg).set_wal_sender_timeout(Duration::from_secs(6));
    let served = pg.clone();
    sim.host("pg", move || serve(served.clone()));
    sim.client("ampere", async move {
        let port = SimPg::new("pg");
        let (session, _) = port.connect_replication().await?;
        let (session, locked) = session.try_advisory_lock(SLOT.into()).await;
        assert!(locked?);
        let (mut stream, _) = session.start_streaming(target()).await?;
        turmoil::hold("ampere", "pg");
        tokio::time::sleep(Duration::from_secs(10)).await;
        {
            let model = lock(&pg);
            assert_eq!(
                model.lock_holder(SLOT),
                None,
                "the lock went with the walsender"
            );
            assert!(!model.slot(SLOT).unwrap().is_active());
        }
        turmoil::release("ampere", "pg");
        let error = loop {
            match stream.recv().await {
                Ok(_) => continue, // keepalives sent before the timeout
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), DisconnectKind::Transient);
        Ok(())
    });
    sim.run().unwrap();
}

#[test]
fn a_crashed_pg_host_comes_back_with_crash_semantics() {
    // Goal: crash + bounce of the pg host, without an explicit model restart, ends the
    // client's stream and reverts the slot to its last checkpoint; the client resumes there.
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .build();
    let pg = shared_model();
    let mut settings = lock(&pg).settings();
    settings.checkpoint_interval = Duration::from_secs(3600);
    lock(&pg).set_settings(settings);
    let served = pg.clone();
    sim.host("pg", move || serve(served.clone()));
    let acked = Arc::new(AtomicBool::new(false));
    let acked_in_client = Arc::clone(&acked);
    let client_pg = pg.clone();
    sim.client("ampere", async move {
        let pg = client_pg;
        let port = SimPg::new("pg");
        let (session, _) = port.connect_replication().await?;
        let (session, _) = session.try_advisory_lock(SLOT.into()).await;
        let (mut stream, started) = session.start_streaming(target()).await?;
        let flush = Lsn(started.confirmed_flush_lsn.0 + 0x100);
        stream
            .send_status(StandbyStatus {
                write: flush,
                flush,
                apply: flush,
                reply_requested: false,
            })
            .await?;
        wait_for(&pg, |m| {
            m.slot(SLOT).is_some_and(|s| s.confirmed_flush_lsn == flush)
        })
        .await;
        acked_in_client.store(true, Ordering::SeqCst);
        let error = loop {
            match stream.recv().await {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), DisconnectKind::Transient);
        let (session, _) = loop {
            match port.connect_replication().await {
                Ok(connected) => break connected,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let (session, locked) = session.try_advisory_lock(SLOT.into()).await;
        assert!(locked?, "the crash released the lock");
        let (_stream, resumed) = session.start_streaming(target()).await?;
        assert!(!resumed.slot_created);
        assert_eq!(
            resumed.confirmed_flush_lsn, started.confirmed_flush_lsn,
            "reverted"
        );
        Ok(())
    });
    while !acked.load(Ordering::SeqCst) {
        sim.step().unwrap();
    }
    sim.crash("pg");
    assert_eq!(
        lock(&pg).lock_holder(SLOT),
        None,
        "dropped backend tasks closed their backends"
    );
    sim.bounce("pg");
    sim.run().unwrap();
    assert_eq!(lock(&pg).incarnation(), 1);
}

trait DefaultShape {
    fn default_for(relation: &RelationName) -> Self;
}

impl DefaultShape for ShapeDefinition {
    fn default_for(relation: &RelationName) -> Self {
        Self {
            relation: relation.clone(),
            columns: None,
            replica: Replica::Default,
            where_clause: None,
            log: ampere_core::shape::LogMode::Full,
        }
    }
}

#[test]
fn a_terminated_backend_gets_57p01_and_loses_its_lock() {
    // Goal: the lock breaker's pg_terminate_backend ends the holder's connection and frees
    // the lock for the waiter at once.
    let mut sim = turmoil::Builder::new().build();
    let pg = shared_model();
    let served = pg.clone();
    sim.host("pg", move || serve(served.clone()));
    sim.client("ampere", async move {
        let port = SimPg::new("pg");
        let (holder, _) = port.connect_replication().await?;
        let (holder, locked) = holder.try_advisory_lock(SLOT.into()).await;
        assert!(locked?);
        let (waiter, _) = port.connect_replication().await?;
        let (waiter, locked) = waiter.try_advisory_lock(SLOT.into()).await;
        assert!(!locked?);
        assert!(port.terminate_backend(holder.backend_pid()).await?);
        assert_eq!(lock(&pg).lock_holder(SLOT), None);
        let error = holder.start_streaming(target()).await.unwrap_err();
        assert_eq!(error.sqlstate.as_deref(), Some("57P01"), "{error}");
        assert_eq!(error.kind(), DisconnectKind::Transient);
        let (_waiter, locked) = waiter.try_advisory_lock(SLOT.into()).await;
        assert!(locked?);
        assert_eq!(lock(&pg).lock_holder_host(SLOT).as_deref(), Some("ampere"));
        Ok(())
    });
    sim.run().unwrap();
}
