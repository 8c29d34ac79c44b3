//! One scenario's world: the serial lock, a Postgres container, a scratch directory, the ampere
//! processes it started, and a one-line summary printed at the end (also on failure, with the
//! stage it failed in, followed by the tails of every process log).

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, MutexGuard};

use crate::ampere::{Ampere, AmpereConfig};
use crate::docker::Pg;
use crate::util::{secs, Scratch};

/// Containers are heavy on 2 cores (the vfs storage driver copies the image per container):
/// scenarios run one at a time even under the default parallel test runner.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// What the summary line reports.
#[derive(Default, Debug)]
pub(crate) struct Summary {
    pub(crate) writes: u64,
    pub(crate) rows_verified: usize,
    pub(crate) refetches: u32,
    pub(crate) recover: Option<Duration>,
    pub(crate) notes: Vec<String>,
}

pub(crate) struct Ctx {
    pub(crate) name: &'static str,
    pub(crate) summary: Summary,
    stage: String,
    started: Instant,
    /// Declared before `pg` and `scratch`: processes die first, then the container goes,
    /// then the files.
    procs: Vec<Ampere>,
    pub(crate) pg: Pg,
    pub(crate) scratch: Scratch,
    _serial: MutexGuard<'static, ()>,
}

/// `Some(ctx)`, or `None` when container tests are skipped (`AMPERE_SKIP_CONTAINER_TESTS=1`).
pub(crate) async fn setup(name: &'static str) -> Option<Ctx> {
    if std::env::var("AMPERE_SKIP_CONTAINER_TESTS").is_ok_and(|v| v == "1") {
        eprintln!("SUMMARY {name}: SKIPPED (AMPERE_SKIP_CONTAINER_TESTS=1)");
        return None;
    }
    let serial = SERIAL.lock().await;
    let started = Instant::now();
    // a short tag for the scratch dir, the container and its network
    let tag: String = name.chars().take(20).collect();
    let scratch = Scratch::new(&tag);
    let container = format!("ampere-ct-{}-{tag}", std::process::id());
    let pg = Pg::start(&container).await;
    eprintln!(
        "[{name}] postgres {} ({}) on 127.0.0.1:{} ready after {}",
        pg.name,
        pg.image,
        pg.port,
        secs(started.elapsed())
    );
    Some(Ctx {
        name,
        summary: Summary::default(),
        stage: "setup".into(),
        started,
        procs: Vec::new(),
        pg,
        scratch,
        _serial: serial,
    })
}

impl Ctx {
    /// Marks progress (shown when the scenario fails).
    pub(crate) fn stage(&mut self, stage: impl Into<String>) {
        self.stage = stage.into();
        eprintln!(
            "[{}] {:>6} {}",
            self.name,
            secs(self.started.elapsed()),
            self.stage
        );
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("[{}] note: {note}", self.name);
        self.summary.notes.push(note);
    }

    /// A storage directory path inside the scratch dir (not created: ampere creates it).
    pub(crate) fn storage(&self, name: &str) -> PathBuf {
        self.scratch.path(name)
    }

    /// The configuration of an instance on this test's Postgres.
    pub(crate) fn config(
        &self,
        storage: &str,
        stream_id: &str,
        extra: &[(&str, &str)],
    ) -> AmpereConfig {
        AmpereConfig {
            database_url: self.pg.url(),
            storage: self.storage(storage),
            stream_id: stream_id.to_owned(),
            extra: extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// Starts an instance; returns its index for `proc_mut`.
    pub(crate) fn spawn(&mut self, name: &str, config: AmpereConfig) -> usize {
        let a = Ampere::spawn(name, config, &self.scratch.root);
        eprintln!(
            "[{}] started {name} (pid {:?}) on port {}",
            self.name,
            a.pid(),
            a.port
        );
        self.procs.push(a);
        self.procs.len() - 1
    }

    pub(crate) fn proc_mut(&mut self, i: usize) -> &mut Ampere {
        &mut self.procs[i]
    }

    pub(crate) fn proc(&self, i: usize) -> &Ampere {
        &self.procs[i]
    }

    /// Creates the scenarios' table shape: `(id bigint PRIMARY KEY, v text NOT NULL, n int NOT NULL)`.
    pub(crate) async fn create_table(&self, table: &str) {
        self.pg
            .sql_ok(&format!(
                "CREATE TABLE {table} (id bigint PRIMARY KEY, v text NOT NULL, n int NOT NULL)"
            ))
            .await;
    }

    /// Inserts ids `from..=to` in one transaction.
    pub(crate) async fn insert_range(&mut self, table: &str, from: i64, to: i64) {
        self.pg
            .sql_ok(&format!(
                "INSERT INTO {table} SELECT g, md5(g::text), (g % 1000)::int FROM generate_series({from}, {to}) g"
            ))
            .await;
        self.summary.writes += u64::try_from(to - from + 1).unwrap_or(0);
    }

    /// Ends the scenario successfully: prints the summary line.
    pub(crate) fn pass(mut self) {
        self.stage = "done".into();
        self.print_summary("PASS");
    }

    /// Prints the summary line; also appends it to `$AMPERE_TEST_SUMMARY` when that is set.
    fn print_summary(&self, result: &str) {
        let s = &self.summary;
        let line = format!(
            "SUMMARY {}: {result} writes={} rows_verified={} 409s={} recover={} time={}{}",
            self.name,
            s.writes,
            s.rows_verified,
            s.refetches,
            s.recover.map_or_else(|| "-".to_owned(), secs),
            secs(self.started.elapsed()),
            if s.notes.is_empty() {
                String::new()
            } else {
                format!(" | {}", s.notes.join("; "))
            }
        );
        eprintln!("{line}");
        if let Some(path) = std::env::var_os("AMPERE_TEST_SUMMARY") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{line}");
            }
        }
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if self.stage == "done" {
            return;
        }
        self.print_summary(&format!("FAIL (stage: {})", self.stage));
        {
            for p in &self.procs {
                eprintln!(
                    "----- {} log ({}), last 40 lines:\n{}",
                    p.name,
                    p.log.display(),
                    p.log_tail(40)
                );
            }
            eprintln!(
                "----- postgres container log, last 20 lines:\n{}",
                self.pg.log_tail(20)
            );
        }
    }
}
