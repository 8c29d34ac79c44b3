//! `ampere cleanup`: decommissioning a stream. An unused slot retains WAL forever, so
//! removing ampere needs its slot and publication dropped (deploy-semantics ST-4); with
//! `--storage` also the storage directory's contents that ampere owns.

use std::path::{Path, PathBuf};

use ampere_io_real::embedded_pg::{EmbeddedOptions, EmbeddedPostgres};
use anyhow::Context as _;

use crate::config::{CleanupArgs, Config};

/// Entries of a storage directory that ampere creates (anything else is left alone).
const OWNED_ENTRIES: &[&str] = &[
    "shapes",
    "trash",
    "shapes.sqlite3",
    "shapes.sqlite3-wal",
    "shapes.sqlite3-shm",
    "shapes.sqlite3-journal",
    "embedded-postgres",
];

/// Runs the cleanup; without `--yes` only says what it would do.
pub async fn run(config: &Config, args: &CleanupArgs) -> anyhow::Result<()> {
    let slot = config.slot_name();
    let publication = config.publication_name();
    let mut storage = owned_storage_entries(&config.storage_dir);
    if config.shape_db_dir() != config.storage_dir {
        // ELECTRIC_SHAPE_DB_STORAGE_DIR holds only the metadata database.
        let metadata = owned_storage_entries(config.shape_db_dir());
        storage.extend(metadata.into_iter().filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("shapes.sqlite3"))
        }));
    }
    if !args.yes {
        println!("ampere cleanup would drop replication slot {slot} and publication {publication}");
        if args.storage {
            for path in &storage {
                println!("  and delete {}", path.display());
            }
        }
        println!("nothing done: pass --yes to do it");
        return Ok(());
    }
    let (embedded, url) = database(config)?;
    let pg = config.real_pg(&url)?;
    let report = pg
        .drop_slot_and_publication(&slot, &publication)
        .await
        .with_context(|| format!("dropping {slot} and {publication}"))?;
    for pid in &report.terminated_pids {
        println!("terminated walsender {pid} streaming from {slot}");
    }
    match (report.slot_existed, report.slot_dropped) {
        (true, true) => println!("dropped replication slot {slot}"),
        (true, false) => println!("replication slot {slot} vanished with its walsender"),
        (false, _) => println!("replication slot {slot} did not exist"),
    }
    if report.publication_dropped {
        println!("dropped publication {publication}");
    } else {
        println!("publication {publication} did not exist");
    }
    drop(embedded);
    if args.storage {
        for path in storage {
            remove(&path)?;
            println!("deleted {}", path.display());
        }
    }
    Ok(())
}

/// `DATABASE_URL`, or the embedded cluster inside the storage directory.
fn database(config: &Config) -> anyhow::Result<(Option<EmbeddedPostgres>, String)> {
    if let Some(url) = config.external_database_url() {
        return Ok((None, url.to_owned()));
    }
    let embedded = EmbeddedPostgres::start(EmbeddedOptions::product(&config.storage_dir))
        .context("DATABASE_URL is unset and the embedded PostgreSQL could not start")?;
    let url = embedded.admin_url();
    Ok((Some(embedded), url))
}

fn owned_storage_entries(root: &Path) -> Vec<PathBuf> {
    OWNED_ENTRIES
        .iter()
        .map(|name| root.join(name))
        .filter(|p| p.exists())
        .collect()
}

fn remove(path: &Path) -> anyhow::Result<()> {
    let removed = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.with_context(|| format!("deleting {}", path.display()))
}
