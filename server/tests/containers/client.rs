//! A shape client that behaves like `@electric-sql/client`'s `ShapeStream` + `Shape`:
//!
//! * `GET /v1/shape?table=T&offset=-1`, then follows `electric-handle` / `electric-offset`;
//! * once a response ends with `up-to-date`, switches to `live=true` with the last
//!   `electric-cursor`;
//! * `409` → forget the rows, restart at `offset=-1` with the handle from the 409 (counted);
//! * `429`/`5xx` → wait `retry-after` seconds (else a capped backoff); network errors → backoff;
//! * other statuses (`400`, …) are fatal, as in the official client.
//!
//! It keeps the materialized rows (key → value, applying insert/update/delete) and records every
//! replicated change with its offset, flagging anomalies: an offset that does not increase within
//! a handle (duplicate or reorder), an insert of a present key, an update/delete of a missing key.
//! The target port is an `Arc<AtomicU16>`, so a test can move the client to another instance
//! (a tiny switch) while it runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::ampere::LONG_POLL_MS;
use crate::docker::Pg;
use crate::http;

/// Columns of the scenarios' tables: `(id bigint PRIMARY KEY, v text NOT NULL, n int NOT NULL)`.
pub(crate) const COLUMNS: [&str; 3] = ["id", "v", "n"];

/// A row as text, in `COLUMNS` order.
pub(crate) type Row = Vec<Option<String>>;

/// `"public"."<table>"/"<id>"`: Electric's key for a single-column primary key.
pub(crate) fn key(table: &str, id: &str) -> String {
    format!("\"public\".\"{table}\"/\"{}\"", id.replace('/', "//"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op {
    Insert,
    Update,
    Delete,
}

/// One replicated change as received (snapshot rows carry no offset and are not recorded).
/// Fields not read by the checks are there for failure output (`{:?}`).
#[allow(dead_code)]
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub(crate) handle: String,
    pub(crate) lsn: u64,
    pub(crate) op_position: u64,
    pub(crate) key: String,
    pub(crate) op: Op,
    /// The `id` column of the row, when present in `value`.
    pub(crate) id: Option<String>,
}

/// What one request did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A 200 with `n` changes; `up_to_date` if it ended with `up-to-date`.
    Data { changes: usize, up_to_date: bool },
    /// A 409: restarting at `offset=-1`.
    MustRefetch,
    /// A 5xx/429 or network error: wait this long, then retry.
    Retry(Duration),
    /// A status the official client does not retry; the client stops.
    Fatal(String),
}

/// Counters for summaries and assertions.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stats {
    pub(crate) requests: u64,
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) must_refetch: u32,
    pub(crate) network_errors: u64,
    /// `retry-after` of each 429/5xx, with its status.
    pub(crate) retry_after: Vec<String>,
    /// 429/5xx answers to live (long-poll) requests, and to all others.
    pub(crate) live_5xx: u64,
    pub(crate) nonlive_5xx: u64,
    pub(crate) first_409: Option<Instant>,
}

/// Shared view of a running client (all fields shown in failure output).
#[allow(dead_code)]
#[derive(Clone, Debug, Default)]
pub(crate) struct Progress {
    pub(crate) rows: usize,
    pub(crate) changes: usize,
    pub(crate) up_to_date: bool,
    pub(crate) must_refetch: u32,
    pub(crate) handle: Option<String>,
    pub(crate) offset: String,
    pub(crate) fatal: Option<String>,
    pub(crate) requests: u64,
}

pub(crate) struct ShapeClient {
    pub(crate) name: String,
    target: Arc<AtomicU16>,
    pub(crate) table: String,
    pub(crate) handle: Option<String>,
    pub(crate) offset: String,
    cursor: Option<String>,
    /// Up to date at least once since the last (re)start: requests are live.
    pub(crate) live: bool,
    /// The last response ended with `up-to-date`.
    pub(crate) at_up_to_date: bool,
    pub(crate) rows: BTreeMap<String, Map<String, Value>>,
    pub(crate) changes: Vec<Change>,
    pub(crate) anomalies: Vec<String>,
    pub(crate) handles: Vec<String>,
    pub(crate) stats: Stats,
    pub(crate) fatal: Option<String>,
    last_position: Option<(u64, u64)>,
    backoff: Duration,
}

impl ShapeClient {
    pub(crate) fn new(name: &str, port: u16, table: &str) -> Self {
        Self {
            name: name.to_owned(),
            target: Arc::new(AtomicU16::new(port)),
            table: table.to_owned(),
            handle: None,
            offset: "-1".to_owned(),
            cursor: None,
            live: false,
            at_up_to_date: false,
            rows: BTreeMap::new(),
            changes: Vec::new(),
            anomalies: Vec::new(),
            handles: Vec::new(),
            stats: Stats::default(),
            fatal: None,
            last_position: None,
            backoff: Duration::from_millis(100),
        }
    }

    /// The switch: store another port to move the client (takes effect at the next request).
    pub(crate) fn target(&self) -> Arc<AtomicU16> {
        self.target.clone()
    }

    pub(crate) fn progress(&self) -> Progress {
        Progress {
            rows: self.rows.len(),
            changes: self.changes.len(),
            up_to_date: self.at_up_to_date,
            must_refetch: self.stats.must_refetch,
            handle: self.handle.clone(),
            offset: self.offset.clone(),
            fatal: self.fatal.clone(),
            requests: self.stats.requests,
        }
    }

    fn url(&self) -> String {
        let mut q = vec![
            format!("offset={}", http::encode(&self.offset)),
            format!("table={}", http::encode(&self.table)),
        ];
        if let Some(h) = &self.handle {
            q.push(format!("handle={}", http::encode(h)));
        }
        if self.live {
            q.push("live=true".to_owned());
            q.push(format!(
                "cursor={}",
                http::encode(self.cursor.as_deref().unwrap_or_default())
            ));
        }
        q.sort();
        format!("/v1/shape?{}", q.join("&"))
    }

    /// One request and its effect on the client's state. Cancel-safe: state changes only after
    /// a complete response has arrived.
    pub(crate) async fn poll_once(&mut self) -> Step {
        let url = self.url();
        let port = self.target.load(Ordering::SeqCst);
        let timeout = if self.live {
            Duration::from_millis(LONG_POLL_MS) + Duration::from_secs(20)
        } else {
            Duration::from_secs(90)
        };
        self.stats.requests += 1;
        let Ok(response) = http::get(port, &url, timeout).await else {
            self.stats.network_errors += 1;
            let wait = self.backoff;
            self.backoff = (self.backoff * 2).min(Duration::from_secs(1));
            return Step::Retry(wait);
        };
        *self.stats.statuses.entry(response.status).or_default() += 1;
        match response.status {
            200 => {
                self.backoff = Duration::from_millis(100);
                match self.apply_ok(&response) {
                    Ok(step) => step,
                    Err(e) => self.fail(format!("GET :{port}{url}: {e}")),
                }
            }
            409 => {
                self.backoff = Duration::from_millis(100);
                self.stats.must_refetch += 1;
                self.stats.first_409.get_or_insert_with(Instant::now);
                self.handle = response.header("electric-handle").map(str::to_owned);
                self.offset = "-1".to_owned();
                self.cursor = None;
                self.live = false;
                self.at_up_to_date = false;
                self.rows.clear();
                self.last_position = None;
                Step::MustRefetch
            }
            429 | 500..=599 => {
                if self.live {
                    self.stats.live_5xx += 1;
                } else {
                    self.stats.nonlive_5xx += 1;
                }
                let ra = response
                    .header("retry-after")
                    .unwrap_or_default()
                    .to_owned();
                self.stats
                    .retry_after
                    .push(format!("{} retry-after={ra:?}", response.status));
                let wait = match ra.parse::<u64>() {
                    Ok(s) => Duration::from_secs(s),
                    Err(_) => {
                        let w = self.backoff;
                        self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
                        w
                    }
                };
                Step::Retry(wait)
            }
            status => self.fail(format!(
                "GET :{port}{url} -> {status}: {}",
                response.body_text()
            )),
        }
    }

    fn fail(&mut self, message: String) -> Step {
        self.fatal = Some(message.clone());
        Step::Fatal(message)
    }

    fn apply_ok(&mut self, response: &http::Response) -> Result<Step, String> {
        let handle = response
            .header("electric-handle")
            .ok_or("200 without electric-handle")?
            .to_owned();
        let offset = response
            .header("electric-offset")
            .ok_or("200 without electric-offset")?
            .to_owned();
        if self.live && response.header("electric-cursor").is_none() {
            return Err("live 200 without electric-cursor".into());
        }
        if !self.live && response.header("electric-schema").is_none() {
            return Err("non-live 200 without electric-schema".into());
        }
        let body: Value = if response.body.is_empty() {
            Value::Array(Vec::new())
        } else {
            serde_json::from_slice(&response.body).map_err(|e| format!("body is not JSON: {e}"))?
        };
        let Value::Array(messages) = body else {
            return Err("body is not a JSON array".into());
        };
        if let Some(sent) = &self.handle {
            if *sent != handle {
                self.anomalies.push(format!(
                    "200 for handle {sent} came with electric-handle {handle}"
                ));
            }
        }
        if self.handles.last() != Some(&handle) {
            self.handles.push(handle.clone());
        }
        let mut changes = 0;
        let mut up_to_date = false;
        for message in messages {
            let headers = message.get("headers").cloned().unwrap_or(Value::Null);
            if let Some(control) = headers.get("control").and_then(Value::as_str) {
                if control == "up-to-date" {
                    up_to_date = true;
                }
                continue;
            }
            self.apply_change(&handle, &message, &headers)?;
            changes += 1;
        }
        self.handle = Some(handle);
        self.offset = offset;
        if let Some(c) = response.header("electric-cursor") {
            self.cursor = Some(c.to_owned());
        }
        self.at_up_to_date = up_to_date;
        if up_to_date {
            self.live = true;
        }
        Ok(Step::Data {
            changes,
            up_to_date,
        })
    }

    fn apply_change(
        &mut self,
        handle: &str,
        message: &Value,
        headers: &Value,
    ) -> Result<(), String> {
        let key = message
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("change without key: {message}"))?
            .to_owned();
        let op = match headers.get("operation").and_then(Value::as_str) {
            Some("insert") => Op::Insert,
            Some("update") => Op::Update,
            Some("delete") => Op::Delete,
            other => return Err(format!("unknown operation {other:?} in {message}")),
        };
        let value = message
            .get("value")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        // replicated changes carry lsn + op_position; snapshot rows do not
        let lsn = headers
            .get("lsn")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(lsn) = lsn {
            let op_position = headers
                .get("op_position")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if let Some(last) = self.last_position {
                if (lsn, op_position) <= last {
                    self.anomalies.push(format!(
                        "offset {lsn}_{op_position} after {}_{} in handle {handle} (duplicate or reorder), key {key}",
                        last.0, last.1
                    ));
                }
            }
            self.last_position = Some((lsn, op_position));
            self.changes.push(Change {
                handle: handle.to_owned(),
                lsn,
                op_position,
                key: key.clone(),
                op,
                id: value.get("id").and_then(Value::as_str).map(str::to_owned),
            });
        }
        match op {
            Op::Insert => {
                if self.rows.insert(key.clone(), value).is_some() {
                    self.anomalies
                        .push(format!("insert of present key {key} (duplicate)"));
                }
            }
            Op::Update => match self.rows.get_mut(&key) {
                Some(row) => row.extend(value),
                None => self
                    .anomalies
                    .push(format!("update of missing key {key} (gap)")),
            },
            Op::Delete => {
                if self.rows.remove(&key).is_none() {
                    self.anomalies
                        .push(format!("delete of missing key {key} (gap)"));
                }
            }
        }
        Ok(())
    }

    /// The rows as text in `COLUMNS` order.
    pub(crate) fn materialized(&self) -> BTreeMap<String, Row> {
        self.rows
            .iter()
            .map(|(k, v)| {
                let row = COLUMNS
                    .iter()
                    .map(|c| v.get(*c).and_then(Value::as_str).map(str::to_owned))
                    .collect();
                (k.clone(), row)
            })
            .collect()
    }

    /// Polls until up to date *and* equal to `SELECT` on Postgres (writes must have stopped),
    /// or `timeout`. Returns the number of rows verified.
    pub(crate) async fn converge(&mut self, pg: &Pg, timeout: Duration) -> Result<usize, String> {
        let t = Instant::now();
        let mut last_diff = String::from("never up to date");
        loop {
            if let Some(f) = &self.fatal {
                return Err(format!("{}: fatal: {f}", self.name));
            }
            if self.at_up_to_date {
                let oracle = oracle(pg, &self.table).await?;
                match diff(&oracle, &self.materialized()) {
                    None => return Ok(oracle.len()),
                    Some(d) => last_diff = d,
                }
            }
            if t.elapsed() > timeout {
                return Err(format!(
                    "{}: did not converge within {timeout:?}: {last_diff}; progress {:?}",
                    self.name,
                    self.progress()
                ));
            }
            if let Step::Retry(d) = self.poll_once().await {
                tokio::time::sleep(d).await;
            }
        }
    }

    /// Runs in the background until stopped; see `Background`.
    pub(crate) fn spawn(mut self) -> Background {
        let (stop_tx, mut stop) = watch::channel(false);
        let (progress_tx, progress) = watch::channel(self.progress());
        let task = tokio::spawn(async move {
            loop {
                if *stop.borrow() {
                    break;
                }
                let step = tokio::select! {
                    s = self.poll_once() => s,
                    _ = stop.changed() => break,
                };
                let _ = progress_tx.send(self.progress());
                match step {
                    Step::Retry(d) => {
                        tokio::select! {
                            () = tokio::time::sleep(d) => {}
                            _ = stop.changed() => break,
                        }
                    }
                    Step::Fatal(_) => break,
                    Step::Data { .. } | Step::MustRefetch => {}
                }
            }
            self
        });
        Background {
            stop: stop_tx,
            progress,
            task,
        }
    }

    /// Every replicated insert's `id`, in arrival order.
    pub(crate) fn inserted_ids(&self) -> Vec<i64> {
        self.changes
            .iter()
            .filter(|c| c.op == Op::Insert)
            .filter_map(|c| c.id.as_deref().and_then(|s| s.parse().ok()))
            .collect()
    }
}

/// A client polling in a background task.
pub(crate) struct Background {
    stop: watch::Sender<bool>,
    progress: watch::Receiver<Progress>,
    task: tokio::task::JoinHandle<ShapeClient>,
}

impl Background {
    pub(crate) fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until `pred(progress)` holds (or the client hit a fatal error, or `timeout`).
    pub(crate) async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Progress) -> bool,
    ) -> Result<Progress, String> {
        let wait = async {
            loop {
                {
                    let p = self.progress.borrow_and_update();
                    if pred(&p) {
                        return Ok(p.clone());
                    }
                    if let Some(f) = &p.fatal {
                        return Err(format!("client failed while waiting for {what}: {f}"));
                    }
                }
                if self.progress.changed().await.is_err() {
                    return Err(format!("client stopped while waiting for {what}"));
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "timed out after {timeout:?} waiting for {what}; progress {:?}",
                self.progress()
            )),
        }
    }

    /// Stops the task (an in-flight request is abandoned, never half-applied).
    pub(crate) async fn stop(self) -> ShapeClient {
        let _ = self.stop.send(true);
        self.task
            .await
            .unwrap_or_else(|e| panic!("client task panicked: {e}"))
    }
}

/// `SELECT id, v, n FROM <table>` as key → text row.
pub(crate) async fn oracle(pg: &Pg, table: &str) -> Result<BTreeMap<String, Row>, String> {
    let rows = pg
        .sql(&format!("SELECT id::text, v, n::text FROM {table}"))
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let id = r[0].clone().unwrap_or_default();
            (key(table, &id), r)
        })
        .collect())
}

/// `None` if equal, else a short description of the difference.
pub(crate) fn diff(
    oracle: &BTreeMap<String, Row>,
    client: &BTreeMap<String, Row>,
) -> Option<String> {
    if oracle == client {
        return None;
    }
    let missing: Vec<&String> = oracle.keys().filter(|k| !client.contains_key(*k)).collect();
    let extra: Vec<&String> = client.keys().filter(|k| !oracle.contains_key(*k)).collect();
    let differing: Vec<&String> = oracle
        .iter()
        .filter(|(k, v)| client.get(*k).is_some_and(|c| c != *v))
        .map(|(k, _)| k)
        .collect();
    Some(format!(
        "postgres has {} rows, client {}: {} missing (e.g. {:?}), {} extra (e.g. {:?}), {} differ (e.g. {:?})",
        oracle.len(),
        client.len(),
        missing.len(),
        missing.iter().take(3).collect::<Vec<_>>(),
        extra.len(),
        extra.iter().take(3).collect::<Vec<_>>(),
        differing.len(),
        differing.iter().take(3).collect::<Vec<_>>(),
    ))
}
