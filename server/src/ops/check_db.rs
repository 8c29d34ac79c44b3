//! `ampere check-db`: a preflight before deploying. Connects as ampere would (`DATABASE_URL`
//! and its TLS options) and checks what `serve` needs: PostgreSQL 14 or later, `wal_level =
//! logical`, a role that may replicate, the right to create the publication (or own the
//! existing one), a free replication slot and walsender, whether the connection is encrypted,
//! and that a replication connection opens and answers `IDENTIFY_SYSTEM`. Each check prints
//! PASS, WARN, FAIL (with the fix) or SKIP (an earlier failure makes it moot).
//!
//! With `DATABASE_URL` unset it checks the embedded cluster if it is running, and otherwise
//! only that the PostgreSQL server binaries the embedded mode runs are installed and new
//! enough. Never writes anything (module docs of [`crate::ops`]); the replication connection
//! is closed right after `IDENTIFY_SYSTEM`, without taking the advisory lock.

use std::process::ExitCode;

use ampere_core::error_chain;
use ampere_core::ports::PgPort as _;
use ampere_core::shape::quote_ident;
use ampere_io_real::embedded_pg::PgBinaries;
use ampere_io_real::inspect::{self, ServerFacts, SlotStatus};
use ampere_io_real::pg::{PgPortError, RealPg, MIN_SERVER_VERSION_NUM};
use serde_json::{json, Value};

use super::{config_error, finish, Database, Verdict};
use crate::config::{Config, ReportArgs};

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Check {
    name: &'static str,
    verdict: Verdict,
    /// What was found.
    detail: String,
    /// How to fix a FAIL (or act on a WARN).
    fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// Runs `ampere check-db`.
pub async fn run(config: &Config, args: &ReportArgs) -> ExitCode {
    let database = Database::of(config);
    let pg = match database.connect(config) {
        Ok(pg) => pg,
        Err(message) => return config_error(&message),
    };
    let checks = match pg {
        Some(pg) => check_database(config, &database, &pg).await,
        None => check_embedded_binaries().await,
    };
    let failed = checks.iter().any(|c| c.verdict == Verdict::Fail);
    let json = args.json.then(|| {
        json!({
            "database": database.source(),
            "passed": !failed,
            "checks": checks.iter().map(check_json).collect::<Vec<_>>(),
        })
    });
    finish(json, &text(database.source(), &checks, failed), failed)
}

async fn check_database(config: &Config, database: &Database, pg: &RealPg) -> Vec<Check> {
    let facts = async {
        let client = pg.connect_sql("check-db").await?;
        let facts = inspect::server_facts(&client).await?;
        let slot = inspect::slot(&client, &config.slot_name()).await?;
        let publication = inspect::publication(&client, &config.publication_name()).await?;
        Ok::<_, PgPortError>((facts, slot, publication.map(|p| p.owner)))
    };
    let (facts, slot, publication_owner) = match facts.await {
        Ok(read) => read,
        Err(e) => {
            return vec![Check::new("connect", Verdict::Fail, error_chain(&e)).fix(
                "check DATABASE_URL (host, port, user, password, dbname, sslmode) and that \
                 PostgreSQL accepts this client in pg_hba.conf",
            )]
        }
    };
    let mut checks = vec![
        Check::new(
            "connect",
            Verdict::Pass,
            format!("connected to {} as {}", facts.database, facts.user),
        ),
        version_check(&facts),
        wal_level_check(&facts),
    ];
    let replication = replication_check(pg, &facts).await;
    checks.push(role_check(&facts, &replication));
    checks.push(replication);
    checks.push(publication_check(
        &facts,
        &config.publication_name(),
        publication_owner.as_deref(),
    ));
    checks.push(slot_check(&facts, &config.slot_name(), slot.as_ref()));
    checks.push(walsender_check(&facts));
    checks.push(tls_check(&facts, database));
    checks
}

fn version_check(facts: &ServerFacts) -> Check {
    let detail = format!("PostgreSQL {}", facts.server_version);
    if facts.server_version_num >= MIN_SERVER_VERSION_NUM {
        return Check::new("server version", Verdict::Pass, detail);
    }
    let error = PgPortError::ServerVersion {
        server_version_num: facts.server_version_num,
    };
    Check::new("server version", Verdict::Fail, detail).fix(error.to_string())
}

fn wal_level_check(facts: &ServerFacts) -> Check {
    let detail = format!("wal_level is {}", facts.wal_level);
    if facts.wal_level == "logical" {
        return Check::new("wal_level", Verdict::Pass, detail);
    }
    let error = PgPortError::WalLevel {
        wal_level: facts.wal_level.clone(),
    };
    Check::new("wal_level", Verdict::Fail, detail).fix(error.to_string())
}

/// Opens a replication connection exactly as `serve` does (its `wal_level` and version checks
/// first), reads `IDENTIFY_SYSTEM`, and closes it.
async fn replication_check(pg: &RealPg, facts: &ServerFacts) -> Check {
    const NAME: &str = "replication connection";
    if facts.wal_level != "logical" || facts.server_version_num < MIN_SERVER_VERSION_NUM {
        return Check::new(
            NAME,
            Verdict::Skip,
            "needs wal_level = logical and PostgreSQL 14+",
        );
    }
    match pg.connect_replication().await {
        Ok((session, identity)) => {
            drop(session);
            Check::new(
                NAME,
                Verdict::Pass,
                format!(
                    "IDENTIFY_SYSTEM: system {}, timeline {}",
                    identity.system_id, identity.timeline
                ),
            )
        }
        Err(e) => {
            let fix = match &e {
                PgPortError::ReplicationRole { .. } => e.to_string(),
                _ => "allow replication connections for this role and database in \
                      pg_hba.conf (a `host replication` line is not needed for logical \
                      replication, but the database's line must match), and check \
                      max_wal_senders"
                    .to_owned(),
            };
            Check::new(NAME, Verdict::Fail, error_chain(&e)).fix(fix)
        }
    }
}

/// The role's REPLICATION attribute. Managed services grant replication through role
/// membership instead (Amazon RDS: `rds_replication`), so a replication connection that opened
/// settles it.
fn role_check(facts: &ServerFacts, replication: &Check) -> Check {
    const NAME: &str = "replication role";
    let user = &facts.user;
    if facts.is_superuser {
        return Check::new(NAME, Verdict::Pass, format!("{user} is a superuser"));
    }
    if facts.has_replication {
        return Check::new(NAME, Verdict::Pass, format!("{user} has REPLICATION"));
    }
    if facts.is_rds_replication_member {
        return Check::new(NAME, Verdict::Pass, format!("{user} is in rds_replication"));
    }
    if replication.verdict == Verdict::Pass {
        return Check::new(
            NAME,
            Verdict::Pass,
            format!("{user} lacks REPLICATION but the server let it open a replication connection"),
        );
    }
    let error = PgPortError::ReplicationRole { user: user.clone() };
    Check::new(
        NAME,
        Verdict::Fail,
        format!("{user} has neither SUPERUSER nor REPLICATION"),
    )
    .fix(error.to_string())
}

/// ampere creates the publication when it is missing (CREATE on the database) and alters it
/// (`ALTER PUBLICATION … ADD TABLE`, its comment) once it exists, which takes ownership.
fn publication_check(facts: &ServerFacts, name: &str, owner: Option<&str>) -> Check {
    const NAME: &str = "publication";
    let user = &facts.user;
    match owner {
        Some(owner) if owner == user || facts.is_superuser => Check::new(
            NAME,
            Verdict::Pass,
            format!("{name} exists, owned by {owner}"),
        ),
        Some(owner) => Check::new(
            NAME,
            Verdict::Fail,
            format!("{name} exists, owned by {owner}, not {user}: ampere cannot add tables to it"),
        )
        .fix(format!(
            "as {owner} or a superuser: ALTER PUBLICATION {} OWNER TO {}",
            quote_ident(name),
            quote_ident(user)
        )),
        None if facts.can_create_in_database => Check::new(
            NAME,
            Verdict::Pass,
            format!("{name} does not exist; {user} may create it"),
        ),
        None => Check::new(
            NAME,
            Verdict::Fail,
            format!(
                "{name} does not exist and {user} may not CREATE in {}",
                facts.database
            ),
        )
        .fix(format!(
            "GRANT CREATE ON DATABASE {} TO {}, or create it as its owner-to-be: CREATE \
             PUBLICATION {}",
            quote_ident(&facts.database),
            quote_ident(user),
            quote_ident(name)
        )),
    }
}

fn slot_check(facts: &ServerFacts, name: &str, slot: Option<&SlotStatus>) -> Check {
    const NAME: &str = "replication slots";
    let free = facts.max_replication_slots - facts.used_replication_slots;
    let usage = format!(
        "{} of max_replication_slots {} used",
        facts.used_replication_slots, facts.max_replication_slots
    );
    match slot {
        Some(slot) if slot.database.as_deref() != Some(facts.database.as_str()) => Check::new(
            NAME,
            Verdict::Fail,
            format!(
                "{name} exists for database {}, not {}",
                slot.database
                    .as_deref()
                    .unwrap_or("(none: a physical slot)"),
                facts.database
            ),
        )
        .fix(
            "give this deployment its own ELECTRIC_REPLICATION_STREAM_ID, or drop the other \
             slot (`ampere cleanup --yes` with that database's URL)",
        ),
        Some(_) => Check::new(
            NAME,
            Verdict::Pass,
            format!("{name} exists and is reused; {usage}"),
        ),
        None if free >= 1 => Check::new(
            NAME,
            Verdict::Pass,
            format!("{name} will be created; {usage}"),
        ),
        None => Check::new(
            NAME,
            Verdict::Fail,
            format!("no free slot for {name}; {usage}"),
        )
        .fix(
            "raise max_replication_slots in postgresql.conf and restart PostgreSQL, or drop \
             slots nothing uses (SELECT slot_name, active FROM pg_replication_slots; then \
             SELECT pg_drop_replication_slot('<name>'))",
        ),
    }
}

/// Every instance holds one walsender, a standby waiting for the lock included.
fn walsender_check(facts: &ServerFacts) -> Check {
    const NAME: &str = "walsenders";
    let free = facts.max_wal_senders - facts.walsenders;
    let detail = format!(
        "{free} free ({} of max_wal_senders {} in use); each ampere instance, standbys \
         included, holds one",
        facts.walsenders, facts.max_wal_senders
    );
    if free >= 1 {
        return Check::new(NAME, Verdict::Pass, detail);
    }
    Check::new(NAME, Verdict::Fail, detail).fix(
        "raise max_wal_senders in postgresql.conf and restart PostgreSQL (or stop what uses \
         them: SELECT pid, application_name FROM pg_stat_activity WHERE backend_type = \
         'walsender')",
    )
}

fn tls_check(facts: &ServerFacts, database: &Database) -> Check {
    const NAME: &str = "TLS";
    let sslmode = database
        .url()
        .and_then(sslmode_of)
        .unwrap_or("prefer (default)");
    match &facts.tls {
        Some(tls) => Check::new(
            NAME,
            Verdict::Pass,
            format!(
                "encrypted ({}, {}); sslmode {sslmode}",
                tls.version.as_deref().unwrap_or("-"),
                tls.cipher.as_deref().unwrap_or("-")
            ),
        ),
        None if matches!(database, Database::EmbeddedRunning(_)) => Check::new(
            NAME,
            Verdict::Pass,
            "not encrypted: the embedded cluster listens on 127.0.0.1 only",
        ),
        None => Check::new(
            NAME,
            Verdict::Warn,
            format!("not encrypted; sslmode {sslmode}"),
        )
        .fix(
            "unless the network to PostgreSQL is trusted, enable ssl on the server and set \
             sslmode=verify-full in DATABASE_URL (docs/tls.md)",
        ),
    }
}

/// The `sslmode` a URL or key=value string names, if it names one.
fn sslmode_of(url: &str) -> Option<&str> {
    let start = url.find("sslmode=")? + "sslmode=".len();
    let rest = &url[start..];
    let end = rest.find(['&', ' ']).unwrap_or(rest.len());
    Some(&rest[..end]).filter(|mode| !mode.is_empty())
}

/// `DATABASE_URL` unset and no embedded cluster running: what `serve` would need to start one.
async fn check_embedded_binaries() -> Vec<Check> {
    const NAME: &str = "embedded PostgreSQL";
    let located = tokio::task::spawn_blocking(|| {
        let binaries = PgBinaries::locate()?;
        let major = binaries.major_version()?;
        Ok::<_, ampere_io_real::embedded_pg::EmbeddedPgError>((binaries, major))
    })
    .await;
    let fix = "install the PostgreSQL server package (14 or later), set PG_BIN to its bin \
               directory, or set DATABASE_URL";
    let check = match located {
        Ok(Ok((binaries, major))) => {
            let detail = format!(
                "DATABASE_URL is unset: serve runs PostgreSQL {major} from {} inside \
                 ELECTRIC_STORAGE_DIR, configured for logical replication",
                binaries.dir().display()
            );
            let is_new_enough = major
                .split('.')
                .next()
                .and_then(|m| m.parse::<u32>().ok())
                .is_some_and(|m| m * 10_000 >= MIN_SERVER_VERSION_NUM);
            if is_new_enough {
                Check::new(NAME, Verdict::Pass, detail)
            } else {
                Check::new(NAME, Verdict::Fail, detail).fix(fix)
            }
        }
        Ok(Err(e)) => Check::new(NAME, Verdict::Fail, error_chain(&e)).fix(fix),
        Err(e) => Check::new(NAME, Verdict::Fail, e.to_string()).fix(fix),
    };
    vec![check]
}

fn check_json(check: &Check) -> Value {
    json!({
        "name": check.name,
        "verdict": check.verdict.as_str(),
        "detail": check.detail,
        "fix": check.fix,
    })
}

fn text(source: &str, checks: &[Check], failed: bool) -> String {
    let mut out = format!("database: {source}\n");
    for check in checks {
        out.push_str(&format!(
            "{} {}: {}\n",
            check.verdict.as_str(),
            check.name,
            check.detail
        ));
        if let Some(fix) = &check.fix {
            out.push_str(&format!("     fix: {fix}\n"));
        }
    }
    out.push_str(if failed {
        "check-db: FAILED\n"
    } else {
        "check-db: passed\n"
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> ServerFacts {
        ServerFacts {
            server_version: "15.10".to_owned(),
            server_version_num: 150_010,
            wal_level: "logical".to_owned(),
            user: "app".to_owned(),
            database: "shop".to_owned(),
            is_superuser: false,
            has_replication: true,
            is_rds_replication_member: false,
            can_create_in_database: true,
            max_replication_slots: 10,
            used_replication_slots: 3,
            max_wal_senders: 10,
            walsenders: 2,
            tls: None,
        }
    }

    #[test]
    fn a_server_older_than_14_fails_with_the_upgrade_fix() {
        let old = ServerFacts {
            server_version_num: 130_023,
            server_version: "13.23".to_owned(),
            ..facts()
        };
        let check = version_check(&old);
        assert_eq!(check.verdict, Verdict::Fail);
        assert!(check
            .fix
            .is_some_and(|fix| fix.contains("PostgreSQL 14 or later")));
        assert_eq!(version_check(&facts()).verdict, Verdict::Pass);
    }

    #[test]
    fn full_slots_fail_unless_ampere_s_slot_already_exists_in_this_database() {
        let full = ServerFacts {
            used_replication_slots: 10,
            ..facts()
        };
        let check = slot_check(&full, "electric_slot_default", None);
        assert_eq!(check.verdict, Verdict::Fail);
        assert!(check
            .fix
            .is_some_and(|fix| fix.contains("max_replication_slots")));
        let ours = SlotStatus {
            slot_type: "logical".to_owned(),
            plugin: Some("pgoutput".to_owned()),
            database: Some("shop".to_owned()),
            temporary: false,
            active: false,
            active_pid: None,
            wal_status: Some("reserved".to_owned()),
            restart_lsn: None,
            confirmed_flush_lsn: None,
            retained_wal_bytes: None,
            confirmed_flush_lag_bytes: None,
            safe_wal_size: None,
        };
        let reused = slot_check(&full, "electric_slot_default", Some(&ours));
        assert_eq!(reused.verdict, Verdict::Pass);
        let elsewhere = SlotStatus {
            database: Some("other".to_owned()),
            ..ours
        };
        let check = slot_check(&full, "electric_slot_default", Some(&elsewhere));
        assert_eq!(check.verdict, Verdict::Fail);
    }

    #[test]
    fn a_publication_owned_by_another_role_fails_with_the_owner_change() {
        let check = publication_check(&facts(), "electric_publication_default", Some("admin"));
        assert_eq!(check.verdict, Verdict::Fail);
        assert_eq!(
            check.fix.as_deref(),
            Some(
                "as admin or a superuser: ALTER PUBLICATION \"electric_publication_default\" \
                 OWNER TO \"app\""
            )
        );
        let no_create = ServerFacts {
            can_create_in_database: false,
            ..facts()
        };
        let check = publication_check(&no_create, "electric_publication_default", None);
        assert_eq!(check.verdict, Verdict::Fail);
    }

    #[test]
    fn no_free_walsender_fails() {
        let busy = ServerFacts {
            walsenders: 10,
            ..facts()
        };
        assert_eq!(walsender_check(&busy).verdict, Verdict::Fail);
        assert_eq!(walsender_check(&facts()).verdict, Verdict::Pass);
    }

    #[test]
    fn sslmode_is_read_from_urls_and_key_value_strings() {
        assert_eq!(
            sslmode_of("postgresql://h/db?sslmode=require&x=1"),
            Some("require")
        );
        assert_eq!(
            sslmode_of("host=h sslmode=verify-full dbname=d"),
            Some("verify-full")
        );
        assert_eq!(sslmode_of("postgresql://h/db"), None);
    }
}
