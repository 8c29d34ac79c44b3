//! TLS to a real PostgreSQL 15: every sslmode against a server that accepts only TLS, and
//! `prefer`/`require` against one without SSL, through `RealPg` — the SQL connections and the
//! replication connection, which streams a change end to end over TLS — and SCRAM channel
//! binding (`channel_binding`).
//!
//! Method: one throwaway cluster for the binary, switched to TLS after start: a CA and a server
//! certificate for `localhost` only (rcgen) go into the data directory, `pg_hba.conf` gets
//! `hostssl` lines only for every role but two: one logs in with a client certificate (`cert`),
//! one with a SCRAM password (`scram-sha-256`, over TLS and, to show a login channel binding
//! cannot bind, in plaintext too). Then `ssl = on` and a reload. Host `localhost` matches the
//! certificate, `127.0.0.1` does not. The non-SSL server is the shared test cluster. Each test
//! uses its own database or only reads, so they run in parallel.

// Helpers outside `#[test]` fns panic on failure too: this whole file is test code.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio_postgres::Client;

use ampere_core::ports::{
    DisconnectKind, PgError, PgPort, ReplicationMessage, ReplicationSession, ReplicationStream,
    ReplicationTarget, SlotPersistence,
};
use ampere_io_real::embedded_pg::{
    shared_for_tests, sweep_stale, EmbeddedOptions, EmbeddedPostgres,
};
use ampere_io_real::pg::{PgPortError, RealPg};
use ampere_io_real::replication::{connect_tcp, ReplicationConfig, ReplicationError};
use ampere_io_real::tls::{ChannelBindingMode, TlsOptions};

/// The role that logs in with a client certificate (`cert` in `pg_hba.conf`).
const CERT_USER: &str = "certuser";
/// The role that logs in with a SCRAM-SHA-256 password, with TLS or without.
const SCRAM_USER: &str = "scramuser";
const SCRAM_PASSWORD: &str = "scram-secret";

/// The TLS-only cluster and the client-side files.
struct TlsCluster {
    pg: EmbeddedPostgres,
    /// The CA that signed the server's certificate.
    ca: PathBuf,
    /// A CA that did not.
    wrong_ca: PathBuf,
    /// [`CERT_USER`]'s certificate and key, signed by `ca`.
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl TlsCluster {
    /// `postgresql://postgres@<host>:<port>/<db>?<params>`.
    fn url(&self, host: &str, db: &str, params: &str) -> String {
        self.url_as("postgres", host, db, params)
    }

    fn url_as(&self, user: &str, host: &str, db: &str, params: &str) -> String {
        let port = self.pg.port();
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!("postgresql://{user}@{host}:{port}/{db}{query}")
    }

    fn ca(&self) -> &str {
        self.ca.to_str().unwrap()
    }
}

/// The cluster for this binary, set up once. Never dropped, like `shared_for_tests`: the
/// postmaster dies with the test process and `sweep_stale` removes its directory (the client
/// files live in it too).
fn tls_cluster() -> &'static TlsCluster {
    static CLUSTER: OnceLock<TlsCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        sweep_stale();
        let pg = EmbeddedPostgres::start(EmbeddedOptions::for_tests()).expect("cluster starts");
        let ca = Authority::new("ampere test CA");
        let wrong = Authority::new("some other CA");
        let (server_cert, server_key) = ca.issue("localhost", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = ca.issue(CERT_USER, ExtendedKeyUsagePurpose::ClientAuth);

        // Server side: owned by the data directory's owner (the `postgres` OS user when the
        // tests run as root), the key 0600, as Postgres insists.
        let data = pg.data_dir();
        let owner = fs::metadata(data).unwrap();
        let hba = format!(
            "local all all trust\n\
             hostssl all {CERT_USER} 127.0.0.1/32 cert\n\
             hostssl all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             host all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
             hostssl all all 127.0.0.1/32 trust\n"
        );
        for (name, text) in [
            ("server.crt", server_cert.as_str()),
            ("server.key", server_key.as_str()),
            ("root.crt", ca.pem.as_str()),
            ("pg_hba.conf", hba.as_str()),
        ] {
            let path = data.join(name);
            fs::write(&path, text).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
        }
        pg.psql("postgres", "ALTER SYSTEM SET ssl = on").unwrap();
        pg.psql("postgres", "ALTER SYSTEM SET ssl_ca_file = 'root.crt'")
            .unwrap();
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {CERT_USER} LOGIN REPLICATION"),
        )
        .unwrap();
        pg.psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256'; \
                 CREATE ROLE {SCRAM_USER} LOGIN REPLICATION PASSWORD '{SCRAM_PASSWORD}'"
            ),
        )
        .unwrap();
        pg.psql("postgres", "SELECT pg_reload_conf()").unwrap();
        wait_for_ssl(&pg);

        // Client side.
        let dir = pg.dir().join("client");
        fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            fs::write(&path, text).unwrap();
            path
        };
        TlsCluster {
            ca: write("ca.crt", &ca.pem),
            wrong_ca: write("wrong-ca.crt", &wrong.pem),
            client_cert: write("client.crt", &client_cert),
            client_key: write("client.key", &client_key),
            pg,
        }
    })
}

/// Polls (psql, libpq's `prefer`) until new connections are encrypted: the reload took.
fn wait_for_ssl(pg: &EmbeddedPostgres) {
    const SQL: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    for _ in 0..200 {
        if pg.psql("postgres", SQL).is_ok_and(|ssl| ssl == "t") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("ssl never came on; see {}", pg.log_path().display());
}

/// A CA made for this run.
struct Authority {
    cert: Certificate,
    key: KeyPair,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        Self { cert, key, pem }
    }

    /// A certificate with common name `name` (and, for a server, only the SAN DNS:`name`);
    /// PEM certificate and key.
    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let sans = if usage == ExtendedKeyUsagePurpose::ServerAuth {
            vec![name.to_owned()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Whether the connection of `pid` is encrypted (`pg_stat_ssl`).
async fn is_encrypted(client: &Client, pid: i32) -> bool {
    let row = client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = $1", &[&pid])
        .await
        .unwrap();
    row.get(0)
}

/// Connects SQL and replication with `url`; asserts both work and are encrypted as expected.
async fn assert_connects(url: &str, options: &TlsOptions, encrypted: bool) {
    let pg = RealPg::from_url_with_tls(url, options).unwrap();
    let admin = pg.admin().await.unwrap_or_else(|e| panic!("{url}: {e:?}"));
    let own: i32 = admin
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(is_encrypted(&admin, own).await, encrypted, "SQL via {url}");
    let (session, identity) = pg.connect_replication().await.unwrap();
    assert!(!identity.system_id.is_empty());
    let replication = is_encrypted(&admin, identity.backend_pid).await;
    assert_eq!(replication, encrypted, "replication via {url}");
    drop(session);
}

/// The error of a first SQL connection with `url`.
async fn connect_error(url: &str, options: &TlsOptions) -> PgPortError {
    let pg = RealPg::from_url_with_tls(url, options).unwrap();
    pg.admin().await.err().unwrap()
}

#[tokio::test]
async fn require_encrypts_both_connections_and_streams_a_change() {
    // Goal: sslmode=require (what Neon, Supabase and RDS ask for) works end to end: the
    // replication connection runs its whole protocol over TLS and delivers a committed insert.
    // Method: host 127.0.0.1, which the certificate does not name: require does not verify.
    let cluster = tls_cluster();
    cluster
        .pg
        .create_database("tls_stream")
        .expect("CREATE DATABASE");
    let url = cluster.url("127.0.0.1", "tls_stream", "sslmode=require");
    let pg = RealPg::from_url(&url).unwrap();
    let client = pg.connect_sql("test").await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); \
             CREATE PUBLICATION electric_publication_tls FOR TABLE t",
        )
        .await
        .unwrap();
    let target = ReplicationTarget {
        slot: "electric_slot_tls".into(),
        publication: "electric_publication_tls".into(),
        slot_persistence: SlotPersistence::Temporary,
    };
    let (session, identity) = pg.connect_replication().await.expect("connect replication");
    assert!(is_encrypted(&client, identity.backend_pid).await);
    let (session, locked) = session.try_advisory_lock(target.slot.clone()).await;
    assert!(locked.unwrap(), "the lock is free");
    let (mut stream, _) = session.start_streaming(target).await.expect("streaming");
    client
        .batch_execute("INSERT INTO t VALUES (42)")
        .await
        .unwrap();
    let insert = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.recv().await.expect("recv") {
                ReplicationMessage::XLogData { data, .. } if data[0] == b'I' => break data,
                _ => {}
            }
        }
    })
    .await
    .expect("the insert within 10 s");
    // pgoutput Insert: 'I', relation oid, 'N', 1 column, 't', length 2, "42"
    assert!(insert.ends_with(b"t\0\0\0\x0242"), "{insert:?}");
    stream.close().await.unwrap();
}

#[tokio::test]
async fn verify_full_with_the_ca_accepts_the_host_the_certificate_names() {
    let cluster = tls_cluster();
    let params = format!("sslmode=verify-full&sslrootcert={}", cluster.ca());
    let url = cluster.url("localhost", "postgres", &params);
    assert_connects(&url, &TlsOptions::default(), true).await;
}

#[tokio::test]
async fn verify_full_rejects_a_host_the_certificate_does_not_name() {
    let cluster = tls_cluster();
    let params = format!("sslmode=verify-full&sslrootcert={}", cluster.ca());
    let err = connect_error(
        &cluster.url("127.0.0.1", "postgres", &params),
        &TlsOptions::default(),
    )
    .await;
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
    let message = ampere_core::error_chain(&err);
    for part in [
        "127.0.0.1",
        cluster.ca(),
        "sslmode=verify-ca",
        "not valid for name",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[tokio::test]
async fn verify_ca_accepts_a_host_the_certificate_does_not_name() {
    let cluster = tls_cluster();
    let params = format!("sslmode=verify-ca&sslrootcert={}", cluster.ca());
    let url = cluster.url("127.0.0.1", "postgres", &params);
    assert_connects(&url, &TlsOptions::default(), true).await;
}

#[tokio::test]
async fn verify_full_rejects_a_certificate_from_another_ca() {
    let cluster = tls_cluster();
    let wrong = cluster.wrong_ca.to_str().unwrap();
    let params = format!("sslmode=verify-full&sslrootcert={wrong}");
    let err = connect_error(
        &cluster.url("localhost", "postgres", &params),
        &TlsOptions::default(),
    )
    .await;
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
    let message = ampere_core::error_chain(&err);
    for part in ["localhost", wrong, "sslrootcert=<file>", "sslmode=require"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    // require with a root file verifies the chain too (libpq)
    let params = format!("sslmode=require&sslrootcert={wrong}");
    let url = cluster.url("localhost", "postgres", &params);
    let err = connect_error(&url, &TlsOptions::default()).await;
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
}

#[tokio::test]
async fn electrics_ca_variable_verifies_chain_and_host() {
    // Goal: ELECTRIC_DATABASE_CA_CERTIFICATE_FILE means full verification even when the URL
    // asks for less (Electric's rule), and a good CA for the right host connects.
    let cluster = tls_cluster();
    let options = TlsOptions {
        ca_certificate_file: Some(cluster.ca.clone()),
    };
    assert_connects(&cluster.url("localhost", "postgres", ""), &options, true).await;
    let url = cluster.url("127.0.0.1", "postgres", "sslmode=require");
    let err = connect_error(&url, &options).await;
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
    let message = ampere_core::error_chain(&err);
    assert!(
        message.contains("ELECTRIC_DATABASE_CA_CERTIFICATE_FILE"),
        "{message}"
    );
    let options = TlsOptions {
        ca_certificate_file: Some(cluster.wrong_ca.clone()),
    };
    let err = connect_error(&cluster.url("localhost", "postgres", ""), &options).await;
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
    let message = ampere_core::error_chain(&err);
    assert!(message.contains("unset ELECTRIC_DATABASE"), "{message}");
}

#[tokio::test]
async fn disable_is_refused_by_a_tls_only_server_with_the_fix() {
    let cluster = tls_cluster();
    let url = cluster.url("127.0.0.1", "postgres", "sslmode=disable");
    let err = connect_error(&url, &TlsOptions::default()).await;
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
    let message = err.to_string();
    for part in ["no encryption", "use sslmode=require"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[tokio::test]
async fn allow_and_prefer_encrypt_when_the_server_insists_or_offers() {
    let cluster = tls_cluster();
    for mode in ["sslmode=allow", "sslmode=prefer", ""] {
        let url = cluster.url("127.0.0.1", "postgres", mode);
        assert_connects(&url, &TlsOptions::default(), true).await;
    }
}

#[tokio::test]
async fn a_client_certificate_logs_in_where_pg_hba_asks_for_one() {
    let cluster = tls_cluster();
    let params = format!(
        "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
        cluster.ca(),
        cluster.client_cert.display(),
        cluster.client_key.display()
    );
    let url = cluster.url_as(CERT_USER, "localhost", "postgres", &params);
    assert_connects(&url, &TlsOptions::default(), true).await;
    // without it, `cert` authentication fails (fatal: authentication)
    let params = format!("sslmode=verify-full&sslrootcert={}", cluster.ca());
    let url = cluster.url_as(CERT_USER, "localhost", "postgres", &params);
    let err = connect_error(&url, &TlsOptions::default()).await;
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
}

#[tokio::test]
async fn prefer_falls_back_to_plaintext_on_a_server_without_ssl() {
    let plain = shared_for_tests().expect("shared test cluster starts");
    for mode in ["", "?sslmode=prefer", "?sslmode=allow", "?sslmode=disable"] {
        let url = format!("{}{mode}", plain.admin_url());
        assert_connects(&url, &TlsOptions::default(), false).await;
    }
}

#[tokio::test]
async fn require_against_a_server_without_ssl_names_the_fix() {
    let plain = shared_for_tests().expect("shared test cluster starts");
    let url = format!("{}?sslmode=require", plain.admin_url());
    let err = connect_error(&url, &TlsOptions::default()).await;
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("does not support SSL; use sslmode=disable or enable ssl on the server"),
        "{message}"
    );
}

#[tokio::test]
async fn channel_binding_require_logs_in_with_scram_bound_to_tls() {
    // Goal: channel_binding=require (Neon's URLs) logs both connections in with
    // SCRAM-SHA-256-PLUS: under sslmode=require, which verifies no certificate, the binding is
    // what stops a man in the middle. Method: a role whose pg_hba.conf line asks for
    // scram-sha-256; require refuses every login it cannot bind, so logging in shows the
    // binding held (the server checked our tls-server-end-point against its certificate).
    let cluster = tls_cluster();
    let user = format!("{SCRAM_USER}:{SCRAM_PASSWORD}");
    let verify_full = format!(
        "sslmode=verify-full&sslrootcert={}&channel_binding=require",
        cluster.ca()
    );
    for (host, params) in [
        ("127.0.0.1", "sslmode=require&channel_binding=require"),
        ("localhost", verify_full.as_str()),
        // prefer (the default) binds when it can; disable logs in unbound
        ("127.0.0.1", ""),
        ("127.0.0.1", "sslmode=require&channel_binding=disable"),
    ] {
        let url = cluster.url_as(&user, host, "postgres", params);
        assert_connects(&url, &TlsOptions::default(), true).await;
    }
}

#[tokio::test]
async fn channel_binding_require_refuses_logins_it_cannot_bind() {
    // Goal: require fails clearly, and for good, wherever the login cannot be bound: without
    // TLS (sslmode=disable, at startup), a SCRAM login in plaintext (no SCRAM-SHA-256-PLUS
    // there), and a trust login over TLS (no SCRAM at all).
    let cluster = tls_cluster();
    let user = format!("{SCRAM_USER}:{SCRAM_PASSWORD}");
    let url = cluster.url_as(
        &user,
        "127.0.0.1",
        "postgres",
        "sslmode=disable&channel_binding=require",
    );
    let err = RealPg::from_url(&url).err().unwrap();
    assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
    let message = err.to_string();
    for part in [
        "channel_binding=require",
        "sslmode=disable",
        "sslmode=require",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    // allow: its first attempt is plaintext, which pg_hba.conf admits for this role
    let plaintext = cluster.url_as(
        &user,
        "127.0.0.1",
        "postgres",
        "sslmode=allow&channel_binding=require",
    );
    let trust = cluster.url(
        "127.0.0.1",
        "postgres",
        "sslmode=require&channel_binding=require",
    );
    for url in [plaintext, trust] {
        let err = connect_error(&url, &TlsOptions::default()).await;
        assert_eq!(err.kind(), DisconnectKind::Fatal, "{err:?}");
        let message = ampere_core::error_chain(&err);
        for part in ["without channel binding", "channel_binding=require"] {
            assert!(message.contains(part), "{part:?} missing from: {message}");
        }
    }
    // the replication connection's own SCRAM, over a plaintext stream
    let mut config = ReplicationConfig::new(SCRAM_USER, "postgres");
    config.password = Some(SCRAM_PASSWORD.to_owned());
    config.channel_binding = ChannelBindingMode::Require;
    let refused = connect_tcp("127.0.0.1", cluster.pg.port(), &config).await;
    let err = refused.err().unwrap();
    assert!(
        matches!(err, ReplicationError::ChannelBindingNotUsed { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("SCRAM-SHA-256-PLUS"), "{err}");
    config.channel_binding = ChannelBindingMode::Prefer;
    let unbound = connect_tcp("127.0.0.1", cluster.pg.port(), &config).await;
    unbound.expect("prefer logs in unbound where it cannot bind");
}

#[test]
fn verify_ca_without_a_ca_is_refused_at_startup() {
    // Goal: verify-ca against the system's roots, without the host name check, would accept
    // any publicly trusted certificate: the error names the ways to mean something else.
    let err = RealPg::from_url("postgresql://amp@db.example/app?sslmode=verify-ca")
        .err()
        .unwrap();
    assert_eq!(err.kind(), DisconnectKind::Fatal);
    let message = err.to_string();
    for part in [
        "sslrootcert=<file>",
        "ELECTRIC_DATABASE_CA_CERTIFICATE_FILE",
        "verify-full",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}

#[test]
fn unreadable_ca_files_fail_at_startup_naming_the_file() {
    let missing = Path::new("/nonexistent/ampere-ca.pem");
    let options = TlsOptions {
        ca_certificate_file: Some(missing.to_owned()),
    };
    let err = RealPg::from_url_with_tls("postgresql://amp@db/app", &options)
        .err()
        .unwrap();
    assert_eq!(err.kind(), DisconnectKind::Fatal);
    let message = err.to_string();
    assert!(message.contains("/nonexistent/ampere-ca.pem"), "{message}");
}
