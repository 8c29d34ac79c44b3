//! `ampere status`: this stream's replication slot (activity, `wal_status`, the WAL it retains,
//! `confirmed_flush_lsn` and its lag), its publication and the replica identity of each table,
//! the backend holding its advisory lock, and its storage directory (shapes, bytes, storage
//! lease).
//!
//! Fails (exit 1) only on what needs an operator now: Postgres unreachable, the slot's WAL
//! lost (`wal_status = lost`: the next active instance recreates the slot and every client
//! resyncs), or the storage directory unreadable. An inactive slot while nothing runs is a
//! warning: it retains WAL until an instance streams from it again or `ampere cleanup` drops
//! it. Never writes anything (module docs of [`crate::ops`]).

use std::process::ExitCode;

use ampere_core::error_chain;
use ampere_io_real::inspect::{self, LockHolder, PublicationStatus, SlotStatus};
use ampere_io_real::pg::{PgPortError, RealPg};
use serde_json::{json, Value};

use super::storage::StorageStatus;
use super::{config_error, finish, human_bytes, Database};
use crate::config::{Config, ReportArgs};

/// What Postgres says about the stream, or why it could not be asked.
// One value per run, never moved around in bulk: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
enum PgView {
    Read {
        slot: Option<SlotStatus>,
        publication: Option<PublicationStatus>,
        lock_holders: Vec<LockHolder>,
    },
    /// `DATABASE_URL` unset and the embedded cluster is not running.
    NotRunning,
    Unreachable(String),
}

/// Runs `ampere status`.
pub async fn run(config: &Config, args: &ReportArgs) -> ExitCode {
    let database = Database::of(config);
    let pg = match database.connect(config) {
        Ok(pg) => pg,
        Err(message) => return config_error(&message),
    };
    let slot_name = config.slot_name();
    let publication_name = config.publication_name();
    let pg_view = match pg {
        Some(pg) => match read_pg(&pg, &slot_name, &publication_name).await {
            Ok(view) => view,
            Err(e) => PgView::Unreachable(error_chain(&e)),
        },
        None => PgView::NotRunning,
    };
    let storage = StorageStatus::read(config).await;
    let report = Report {
        slot_name,
        publication_name,
        database_source: database.source(),
        pg: pg_view,
        storage,
    };
    let (failures, warnings) = report.problems();
    let json = args.json.then(|| report.json(&failures, &warnings));
    finish(
        json,
        &report.text(&failures, &warnings),
        !failures.is_empty(),
    )
}

async fn read_pg(pg: &RealPg, slot: &str, publication: &str) -> Result<PgView, PgPortError> {
    let client = pg.connect_sql("status").await?;
    Ok(PgView::Read {
        slot: inspect::slot(&client, slot).await?,
        publication: inspect::publication(&client, publication).await?,
        lock_holders: inspect::lock_holders(&client, slot).await?,
    })
}

struct Report {
    slot_name: String,
    publication_name: String,
    database_source: &'static str,
    pg: PgView,
    storage: StorageStatus,
}

impl Report {
    /// What fails the status, and what is only worth a look.
    fn problems(&self) -> (Vec<String>, Vec<String>) {
        let mut failures = Vec::new();
        let mut warnings = Vec::new();
        match &self.pg {
            PgView::Unreachable(e) => failures.push(format!("Postgres: {e}")),
            PgView::NotRunning => warnings.push(
                "DATABASE_URL is unset and the embedded PostgreSQL is not running: storage only"
                    .to_owned(),
            ),
            PgView::Read {
                slot, lock_holders, ..
            } => match slot {
                Some(slot) if slot.wal_status.as_deref() == Some("lost") => failures.push(format!(
                    "slot {} lost WAL it needed (wal_status lost): the next active instance \
                     recreates it and every client resyncs",
                    self.slot_name
                )),
                Some(slot) if !slot.active => warnings.push(format!(
                    "slot {} is inactive and retains WAL until an instance streams from it \
                     again; if this stream is retired, drop it with `ampere cleanup --yes`",
                    self.slot_name
                )),
                Some(_) => {}
                None if !lock_holders.is_empty() => {}
                None => warnings.push(format!(
                    "slot {} does not exist (no instance has started streaming)",
                    self.slot_name
                )),
            },
        }
        if let Some(error) = &self.storage.error {
            failures.push(format!("storage: {error}"));
        }
        (failures, warnings)
    }

    fn json(&self, failures: &[String], warnings: &[String]) -> Value {
        let (database, slot, publication, lock) = match &self.pg {
            PgView::Read {
                slot,
                publication,
                lock_holders,
            } => (
                json!({ "source": self.database_source, "reachable": true }),
                slot_json(slot.as_ref()),
                publication_json(publication.as_ref()),
                json!({
                    "held": !lock_holders.is_empty(),
                    "holders": lock_holders.iter().map(holder_json).collect::<Vec<_>>(),
                }),
            ),
            PgView::NotRunning => (
                json!({ "source": self.database_source, "reachable": false }),
                Value::Null,
                Value::Null,
                Value::Null,
            ),
            PgView::Unreachable(e) => (
                json!({ "source": self.database_source, "reachable": false, "error": e }),
                Value::Null,
                Value::Null,
                Value::Null,
            ),
        };
        json!({
            "slot_name": self.slot_name,
            "publication_name": self.publication_name,
            "database": database,
            "slot": slot,
            "publication": publication,
            "lock": lock,
            "storage": self.storage.json(),
            "healthy": failures.is_empty(),
            "failures": failures,
            "warnings": warnings,
        })
    }

    fn text(&self, failures: &[String], warnings: &[String]) -> String {
        let mut out = format!("database: {}\n", self.database_source);
        match &self.pg {
            PgView::Read {
                slot,
                publication,
                lock_holders,
            } => {
                out.push_str(&slot_text(&self.slot_name, slot.as_ref()));
                out.push_str(&publication_text(
                    &self.publication_name,
                    publication.as_ref(),
                ));
                out.push_str(&lock_text(lock_holders));
            }
            PgView::NotRunning => out.push_str("slot, publication, lock: not read\n"),
            PgView::Unreachable(e) => out.push_str(&format!("unreachable: {e}\n")),
        }
        out.push_str(&self.storage.text());
        for failure in failures {
            out.push_str(&format!("FAIL {failure}\n"));
        }
        for warning in warnings {
            out.push_str(&format!("WARN {warning}\n"));
        }
        if failures.is_empty() {
            out.push_str("status: healthy\n");
        } else {
            out.push_str("status: failing\n");
        }
        out
    }
}

fn slot_json(slot: Option<&SlotStatus>) -> Value {
    let Some(s) = slot else {
        return json!({ "exists": false });
    };
    json!({
        "exists": true,
        "slot_type": s.slot_type,
        "plugin": s.plugin,
        "database": s.database,
        "temporary": s.temporary,
        "active": s.active,
        "active_pid": s.active_pid,
        "wal_status": s.wal_status,
        "restart_lsn": s.restart_lsn,
        "confirmed_flush_lsn": s.confirmed_flush_lsn,
        "retained_wal_bytes": s.retained_wal_bytes,
        "confirmed_flush_lag_bytes": s.confirmed_flush_lag_bytes,
        "safe_wal_size": s.safe_wal_size,
    })
}

fn publication_json(publication: Option<&PublicationStatus>) -> Value {
    let Some(p) = publication else {
        return json!({ "exists": false });
    };
    let tables: Vec<Value> = p
        .tables
        .iter()
        .map(|t| {
            json!({
                "schema": t.schema,
                "name": t.name,
                "replica_identity": t.replica_identity.as_str(),
            })
        })
        .collect();
    json!({
        "exists": true,
        "all_tables": p.all_tables,
        "owner": p.owner,
        "tables": tables,
    })
}

fn holder_json(holder: &LockHolder) -> Value {
    json!({
        "pid": holder.pid,
        "application_name": holder.application_name,
        "client_addr": holder.client_addr,
        "backend_start": holder.backend_start,
        "backend_type": holder.backend_type,
    })
}

fn slot_text(name: &str, slot: Option<&SlotStatus>) -> String {
    let Some(s) = slot else {
        return format!("slot {name}: does not exist\n");
    };
    let activity = match (s.active, s.active_pid) {
        (true, Some(pid)) => format!("active (walsender pid {pid})"),
        (true, None) => "active".to_owned(),
        (false, _) => "inactive".to_owned(),
    };
    let kind = if s.temporary { ", temporary" } else { "" };
    let na = || "-".to_owned();
    let bytes = |b: Option<i64>| b.map_or_else(na, exact_bytes);
    let mut out = format!(
        "slot {name}: {activity}{kind}, wal_status {}\n",
        s.wal_status.as_deref().unwrap_or("-")
    );
    out.push_str(&format!(
        "  restart_lsn {}, retained WAL {}\n",
        s.restart_lsn.clone().unwrap_or_else(na),
        bytes(s.retained_wal_bytes)
    ));
    out.push_str(&format!(
        "  confirmed_flush_lsn {}, lag {}\n",
        s.confirmed_flush_lsn.clone().unwrap_or_else(na),
        bytes(s.confirmed_flush_lag_bytes)
    ));
    out.push_str(&format!(
        "  safe_wal_size {}\n",
        s.safe_wal_size.map_or_else(
            || "unlimited (max_slot_wal_keep_size = -1)".to_owned(),
            exact_bytes
        )
    ));
    out
}

/// `4.5 KiB (4648 bytes)`, or `730 bytes` when that says it all.
fn exact_bytes(bytes: i64) -> String {
    if bytes.unsigned_abs() < 1024 {
        human_bytes(bytes)
    } else {
        format!("{} ({bytes} bytes)", human_bytes(bytes))
    }
}

fn publication_text(name: &str, publication: Option<&PublicationStatus>) -> String {
    let Some(p) = publication else {
        return format!("publication {name}: does not exist\n");
    };
    let scope = if p.all_tables { ", FOR ALL TABLES" } else { "" };
    let mut out = format!(
        "publication {name}: owner {}{scope}, tables: {}\n",
        p.owner,
        p.tables.len()
    );
    for table in &p.tables {
        out.push_str(&format!(
            "  {}.{}: replica identity {}\n",
            table.schema,
            table.name,
            table.replica_identity.as_str()
        ));
    }
    out
}

fn lock_text(holders: &[LockHolder]) -> String {
    if holders.is_empty() {
        return "advisory lock: not held\n".to_owned();
    }
    let mut out = String::new();
    for h in holders {
        out.push_str(&format!(
            "advisory lock: held by pid {} ({}, {}, {}, since {})\n",
            h.pid,
            h.application_name.as_deref().unwrap_or("-"),
            h.backend_type.as_deref().unwrap_or("-"),
            h.client_addr.as_deref().unwrap_or("local socket"),
            h.backend_start.as_deref().unwrap_or("-"),
        ));
    }
    out
}
