//! TLS to Postgres for every connection ampere opens: the SQL connections (tokio-postgres, through
//! [`MakeRustlsConnect`]) and the replication connection (the SSLRequest handshake of
//! [`PgTls::negotiate`], then the hand-rolled protocol of [`crate::replication`] over the
//! encrypted stream).
//!
//! Owns: what `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in `DATABASE_URL` and
//! `ELECTRIC_DATABASE_CA_CERTIFICATE_FILE` ([`TlsOptions`]) mean ([`TlsSettings`]), the rustls
//! configuration built from them once ([`PgTls`]), the SSLRequest exchange and the handshake,
//! and errors that name the fix ([`TlsError`], each with its [`DisconnectKind`]).
//!
//! `sslmode` means what it means to libpq, whose default (`prefer`) is also ampere's and
//! Electric's: `disable` never encrypts; `allow` connects in plaintext and encrypts only when the
//! server refuses plaintext; `prefer` asks for TLS and falls back to plaintext only when the
//! server answers the SSLRequest with 'N' (a failed handshake is an error, not a downgrade);
//! `require` encrypts without verifying the server unless a root certificate is given, which then
//! verifies the chain (as `verify-ca`); `verify-ca` verifies the chain, not the host name;
//! `verify-full` verifies both. The roots are `sslrootcert=<file>`, `sslrootcert=system` (the
//! system's roots; forces `verify-full`, as libpq 16 does), or
//! `ELECTRIC_DATABASE_CA_CERTIFICATE_FILE`, which as in Electric also turns verification fully on
//! (`verify-full`, unless the URL says `verify-ca`). `verify-ca` and `verify-full` without any of
//! them use the system's roots (libpq would read `~/.postgresql/root.crt`). Unix-socket
//! connections never use TLS, as with libpq. The host name goes out as SNI (Neon routes by it).
//! No channel binding: SCRAM runs without it, as with `channel_binding=prefer` against a client
//! that has none.
//!
//! Never: retries, or decides what a failure means beyond its [`TlsError::kind`].

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use ampere_core::ports::DisconnectKind;

/// The `DATABASE_URL` parameters this module reads.
pub(crate) const URL_PARAMETERS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Electric's variable for the CA file, named in messages.
const CA_FILE_VARIABLE: &str = "ELECTRIC_DATABASE_CA_CERTIFICATE_FILE";
/// The file settings, as messages name them.
const ROOT_FILE: &str = "the sslrootcert file";
const CERT_FILE: &str = "the sslcert file";
const KEY_FILE: &str = "the sslkey file";

/// What `sslmode` asks for, with libpq's meaning (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext; TLS when the server refuses plaintext.
    Allow,
    /// TLS when the server offers it, else plaintext (the default).
    Prefer,
    /// TLS; the certificate verified only against a given root certificate.
    Require,
    /// TLS; the chain verified, the host name not.
    VerifyCa,
    /// TLS; the chain and the host name verified.
    VerifyFull,
}

impl SslMode {
    /// libpq's and Electric's default.
    pub const DEFAULT: Self = Self::Prefer;

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the server's certificate must chain to a root.
    fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }

    /// How the first connection attempt encrypts.
    fn first_attempt(self) -> Encryption {
        match self {
            Self::Disable | Self::Allow => Encryption::Off,
            Self::Prefer => Encryption::IfOffered,
            Self::Require | Self::VerifyCa | Self::VerifyFull => Encryption::Required,
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disable => "disable",
            Self::Allow => "allow",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        })
    }
}

/// How one connection attempt encrypts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encryption {
    /// No SSLRequest.
    Off,
    /// SSLRequest; plaintext when the server answers 'N'.
    IfOffered,
    /// SSLRequest; 'N' is [`TlsError::Unsupported`].
    Required,
}

impl Encryption {
    /// tokio-postgres's equivalent, for the SQL connections.
    pub(crate) fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Off => tokio_postgres::config::SslMode::Disable,
            Self::IfOffered => tokio_postgres::config::SslMode::Prefer,
            Self::Required => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// TLS settings from outside `DATABASE_URL`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `ELECTRIC_DATABASE_CA_CERTIFICATE_FILE`: PEM certificates to verify the server against.
    /// As in Electric it turns full verification on (`verify-full`, or `verify-ca` when
    /// `DATABASE_URL` says so); `sslmode=disable` with it is an error.
    pub ca_certificate_file: Option<PathBuf>,
}

/// What the TLS parameters ask for, before any file is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    mode: SslMode,
    /// `None`: the certificate is not verified (only `allow`, `prefer` and `require`).
    roots: Option<Roots>,
    /// `sslcert` and `sslkey`: presented when the server asks for a client certificate.
    client_identity: Option<(PathBuf, PathBuf)>,
}

/// Where the root certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Roots {
    /// `sslrootcert=<file>`.
    UrlFile(PathBuf),
    /// `ELECTRIC_DATABASE_CA_CERTIFICATE_FILE`.
    EnvFile(PathBuf),
    /// The operating system's roots (rustls-native-certs).
    System,
}

impl fmt::Display for Roots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UrlFile(path) => write!(f, "sslrootcert {}", path.display()),
            Self::EnvFile(path) => write!(f, "{CA_FILE_VARIABLE} {}", path.display()),
            Self::System => f.write_str("the system's root certificates"),
        }
    }
}

impl TlsSettings {
    /// Interprets the [`URL_PARAMETERS`] taken out of `DATABASE_URL` (a later value wins, as
    /// in libpq) together with `options`.
    pub(crate) fn new(params: &[(String, String)], options: &TlsOptions) -> Result<Self, TlsError> {
        let last = |key: &str| {
            params
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let explicit = match last("sslmode") {
            None => None,
            Some(text) => Some(SslMode::parse(text).ok_or_else(|| {
                TlsError::Config(format!(
                    "DATABASE_URL has sslmode={text}; use one of disable, allow, prefer, \
                     require, verify-ca, verify-full"
                ))
            })?),
        };
        let (mode, roots) = match (last("sslrootcert"), &options.ca_certificate_file) {
            (Some(url), Some(env)) => {
                return Err(TlsError::Config(format!(
                    "both sslrootcert={url} in DATABASE_URL and {CA_FILE_VARIABLE}={} name a CA: \
                     keep one",
                    env.display()
                )))
            }
            (Some("system"), None) => system_roots_mode(explicit)?,
            (Some(path), None) => (
                explicit.unwrap_or(SslMode::DEFAULT),
                Some(Roots::UrlFile(PathBuf::from(path))),
            ),
            (None, Some(env)) => (
                env_file_mode(explicit, env)?,
                Some(Roots::EnvFile(env.clone())),
            ),
            (None, None) => {
                let mode = explicit.unwrap_or(SslMode::DEFAULT);
                (mode, mode.verifies().then_some(Roots::System))
            }
        };
        let client_identity = match (last("sslcert"), last("sslkey")) {
            (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
            (None, None) => None,
            (cert, _) => {
                let (given, missing) = if cert.is_some() {
                    ("sslcert", "sslkey")
                } else {
                    ("sslkey", "sslcert")
                };
                return Err(TlsError::Config(format!(
                    "DATABASE_URL has {given} but no {missing}: a client certificate needs both"
                )));
            }
        };
        Ok(Self {
            mode,
            roots,
            client_identity,
        })
    }
}

/// `sslrootcert=system` forces `verify-full`, and a weaker explicit mode is an error (libpq 16).
fn system_roots_mode(explicit: Option<SslMode>) -> Result<(SslMode, Option<Roots>), TlsError> {
    match explicit {
        None | Some(SslMode::VerifyFull) => Ok((SslMode::VerifyFull, Some(Roots::System))),
        Some(mode) => Err(TlsError::Config(format!(
            "sslmode={mode} may not be used with sslrootcert=system: use sslmode=verify-full"
        ))),
    }
}

/// Electric's rule for its CA variable: full verification, unless the URL asks for verify-ca.
fn env_file_mode(explicit: Option<SslMode>, env: &Path) -> Result<SslMode, TlsError> {
    match explicit {
        Some(SslMode::Disable) => Err(TlsError::Config(format!(
            "{CA_FILE_VARIABLE}={} is set but DATABASE_URL has sslmode=disable: remove one",
            env.display()
        ))),
        Some(SslMode::VerifyCa) => Ok(SslMode::VerifyCa),
        None | Some(SslMode::Allow | SslMode::Prefer | SslMode::Require | SslMode::VerifyFull) => {
            Ok(SslMode::VerifyFull)
        }
    }
}

/// TLS for Postgres connections: the settings with their certificates loaded. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PgTls {
    mode: SslMode,
    config: Arc<ClientConfig>,
    /// What the certificate is verified against (`None`: not verified).
    roots: Option<Roots>,
}

impl PgTls {
    /// Reads the root and client certificates the settings name (none for `disable`).
    pub(crate) fn new(settings: &TlsSettings) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let in_use = settings.mode != SslMode::Disable;
        let roots = settings.roots.as_ref().filter(|_| in_use);
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            None => Arc::new(NoVerification {
                algorithms: provider.signature_verification_algorithms,
            }),
            Some(roots) => {
                let store = Arc::new(load_roots(roots)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                    .build()
                    .map_err(|e| TlsError::Config(format!("cannot verify against {roots}: {e}")))?;
                if settings.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly { webpki })
                }
            }
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(format!("rustls refused its own defaults: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match settings.client_identity.as_ref().filter(|_| in_use) {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certificates(cert, CERT_FILE)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::File {
                    what: KEY_FILE,
                    path: key.clone(),
                    source,
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::ClientCertificate {
                        path: cert.clone(),
                        source: Box::new(source),
                    })?
            }
        };
        // What libpq 17 sends; servers before 17 ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Self {
            mode: settings.mode,
            config: Arc::new(config),
            roots: roots.cloned(),
        })
    }

    /// The mode in force.
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// How the first attempt encrypts; `allow` retries with [`Encryption::Required`] after the
    /// server refused plaintext ([`TlsError::RequiredByServer`]).
    pub(crate) fn first_attempt(&self) -> Encryption {
        self.mode.first_attempt()
    }

    /// The connector for tokio-postgres (whose `Config::ssl_mode` decides whether it is used).
    pub(crate) fn connector(&self) -> MakeRustlsConnect {
        MakeRustlsConnect { tls: self.clone() }
    }

    /// The SSLRequest exchange over a fresh `stream` to `host`, then the handshake, as
    /// `encryption` asks. Not cancel-safe (drop the stream).
    pub(crate) async fn negotiate<S>(
        &self,
        mut stream: S,
        host: &str,
        encryption: Encryption,
    ) -> Result<MaybeTls<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let is_required = match encryption {
            Encryption::Off => return Ok(MaybeTls::Plain(stream)),
            Encryption::IfOffered => false,
            Encryption::Required => true,
        };
        let io_failed = |source| TlsError::Handshake {
            host: host.to_owned(),
            source,
        };
        let mut request = BytesMut::new();
        frontend::ssl_request(&mut request);
        stream.write_all(&request).await.map_err(io_failed)?;
        stream.flush().await.map_err(io_failed)?;
        // Exactly one byte: nothing the server (or a man in the middle) sends after it may be
        // read as plaintext (CVE-2021-23222).
        let mut reply = [0_u8; 1];
        stream.read_exact(&mut reply).await.map_err(io_failed)?;
        match reply[0] {
            b'S' => Ok(MaybeTls::Tls(Box::new(self.handshake(stream, host).await?))),
            b'N' if is_required => Err(TlsError::Unsupported {
                host: host.to_owned(),
            }),
            b'N' => Ok(MaybeTls::Plain(stream)),
            other => Err(TlsError::Negotiation {
                host: host.to_owned(),
                reply: char::from(other),
            }),
        }
    }

    /// The TLS handshake with `host` (SNI for a host name; verified as the mode says).
    async fn handshake<S>(
        &self,
        stream: S,
        host: &str,
    ) -> Result<tokio_rustls::client::TlsStream<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name =
            ServerName::try_from(host.to_owned()).map_err(|source| TlsError::InvalidHost {
                host: host.to_owned(),
                source,
            })?;
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(name, stream)
            .await
            .map_err(|error| self.handshake_error(host, error))
    }

    /// A rejected certificate becomes [`TlsError::Certificate`], naming host and roots.
    fn handshake_error(&self, host: &str, error: io::Error) -> TlsError {
        let rustls_error = error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>());
        match (rustls_error, &self.roots) {
            (Some(source @ rustls::Error::InvalidCertificate(_)), Some(roots)) => {
                TlsError::certificate(host, roots, source.clone())
            }
            _ => TlsError::Handshake {
                host: host.to_owned(),
                source: error,
            },
        }
    }
}

/// A stream after [`PgTls::negotiate`].
pub(crate) enum MaybeTls<S> {
    /// The server answered 'N' (or no SSLRequest was sent).
    Plain(S),
    /// Encrypted. (Boxed: rustls's connection state is large.)
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

/// Every root certificate of `roots`; none is an error.
fn load_roots(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let certificates = match roots {
        Roots::UrlFile(path) => read_certificates(path, ROOT_FILE)?,
        Roots::EnvFile(path) => read_certificates(path, CA_FILE_VARIABLE)?,
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                tracing::debug!(%error, "skipped a system root certificate source");
            }
            found.certs
        }
    };
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(certificates);
    if ignored > 0 {
        tracing::warn!(%roots, ignored, "root certificates that do not parse are ignored");
    }
    match roots {
        _ if added > 0 => Ok(store),
        Roots::System => Err(TlsError::NoSystemRoots),
        Roots::UrlFile(path) => Err(TlsError::NoCertificate {
            what: ROOT_FILE,
            path: path.clone(),
        }),
        Roots::EnvFile(path) => Err(TlsError::NoCertificate {
            what: CA_FILE_VARIABLE,
            path: path.clone(),
        }),
    }
}

/// The PEM certificates in `path`.
fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |source| TlsError::File {
        what,
        path: path.to_owned(),
        source,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(failed)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(failed)?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// Why TLS to Postgres failed or cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The TLS parameters contradict each other or are invalid (the message names the fix).
    #[error("{0}")]
    Config(String),
    /// A certificate or key file cannot be read.
    #[error("cannot read {what} {path}")]
    File {
        /// Which setting names the file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate {
        /// Which setting names the file.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// Verification needs roots and the system has none.
    #[error(
        "no system root certificates were found to verify the server against: give its CA with \
         sslrootcert=<file> in DATABASE_URL or {CA_FILE_VARIABLE}, or install the system's CA \
         bundle (ca-certificates)"
    )]
    NoSystemRoots,
    /// `sslcert` and `sslkey` do not make a usable identity.
    #[error("cannot use the client certificate {path} with the key in sslkey")]
    ClientCertificate {
        /// The `sslcert` file.
        path: PathBuf,
        /// What rustls said. (Boxed, like the next one's: rustls's error is 64 bytes.)
        #[source]
        source: Box<rustls::Error>,
    },
    /// The host is neither a DNS name nor an IP address, so it cannot be verified or sent as SNI.
    #[error("{host:?} cannot be used as a TLS server name")]
    InvalidHost {
        /// The host.
        host: String,
        /// What rustls said.
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The sslmode requires TLS and the server answered the SSLRequest with 'N'.
    #[error("server {host} does not support SSL; use sslmode=disable or enable ssl on the server")]
    Unsupported {
        /// The server.
        host: String,
    },
    /// The server refused a plaintext login (`pg_hba.conf` has only `hostssl` lines for it).
    #[error(
        "server {host} accepts only SSL connections ({message}); use sslmode=require (or \
         verify-ca / verify-full)"
    )]
    RequiredByServer {
        /// The server.
        host: String,
        /// The server's message, e.g. `no pg_hba.conf entry for host …, no encryption`.
        message: String,
    },
    /// The server's certificate failed verification.
    #[error("the certificate of server {host} failed verification against {roots}; {fix}")]
    Certificate {
        /// The server, as verified (`DATABASE_URL`'s host).
        host: String,
        /// What it was verified against.
        roots: String,
        /// What to change.
        fix: &'static str,
        /// Why it failed.
        #[source]
        source: Box<rustls::Error>,
    },
    /// The SSLRequest exchange or the handshake failed otherwise.
    #[error("TLS handshake with server {host} failed")]
    Handshake {
        /// The server.
        host: String,
        /// What failed (a `rustls::Error` inside for a TLS-level failure).
        #[source]
        source: io::Error,
    },
    /// The server answered the SSLRequest with neither 'S' nor 'N'.
    #[error(
        "server {host} answered the SSL request with {reply:?} instead of 'S' or 'N': is it a \
         PostgreSQL server?"
    )]
    Negotiation {
        /// The server.
        host: String,
        /// The byte it sent.
        reply: char,
    },
}

impl TlsError {
    fn certificate(host: &str, roots: &Roots, source: rustls::Error) -> Self {
        Self::Certificate {
            host: host.to_owned(),
            roots: roots.to_string(),
            fix: certificate_fix(&source, roots),
            source: Box::new(source),
        }
    }

    /// Fatal for configuration (files, modes, certificates, a server without SSL or refusing
    /// plaintext, a TLS-level handshake failure such as no common protocol version); Transient
    /// when the connection itself failed mid-way.
    pub fn kind(&self) -> DisconnectKind {
        match self {
            Self::Handshake { source, .. } if !is_tls_failure(source) => DisconnectKind::Transient,
            Self::Negotiation { .. } => DisconnectKind::Transient,
            Self::Config(_)
            | Self::File { .. }
            | Self::NoCertificate { .. }
            | Self::NoSystemRoots
            | Self::ClientCertificate { .. }
            | Self::InvalidHost { .. }
            | Self::Unsupported { .. }
            | Self::RequiredByServer { .. }
            | Self::Certificate { .. }
            | Self::Handshake { .. } => DisconnectKind::Fatal,
        }
    }
}

// Small enough for `PgPortError` to stay under clippy's `result_large_err` (128 bytes).
const _: () = assert!(size_of::<TlsError>() <= 80);

/// An i/o error that carries a rustls error: the peers disagree, retrying the same way fails.
fn is_tls_failure(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|e| e.downcast_ref::<rustls::Error>().is_some())
}

/// What to change when a certificate is rejected (`sslmode=require` does not lift the
/// verification that Electric's variable asks for).
fn certificate_fix(error: &rustls::Error, roots: &Roots) -> &'static str {
    let is_name = matches!(
        error,
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
        )
    );
    match (is_name, roots) {
        (true, _) => {
            "the certificate does not name this host: connect with a host name it lists, or \
             use sslmode=verify-ca to verify the chain only"
        }
        (false, Roots::EnvFile(_)) => {
            "put the CA that signed the server's certificate in that file, or unset \
             ELECTRIC_DATABASE_CA_CERTIFICATE_FILE and use sslmode=require to encrypt without \
             verifying"
        }
        (false, Roots::UrlFile(_) | Roots::System) => {
            "give the CA that signed the server's certificate with sslrootcert=<file> (or \
             ELECTRIC_DATABASE_CA_CERTIFICATE_FILE), or use sslmode=require to encrypt without \
             verifying"
        }
    }
}

/// `require` without roots: any certificate, but the handshake's signatures are still checked
/// (the connection is encrypted to whoever holds the presented certificate's key).
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `require` with roots): webpki's verification without the host name check.
/// webpki checks the chain before the name, so a name error means the chain was good.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        match verified {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Whether a login error means `pg_hba.conf` admits this client only over TLS: class 28 naming
/// the missing encryption (PG >= 14 says "no encryption", older versions "SSL off").
pub(crate) fn is_plaintext_refused(code: &str, message: &str) -> bool {
    code.starts_with("28") && (message.contains("no encryption") || message.contains("SSL off"))
}

/// tokio-postgres's TLS hook over [`PgTls`]: one [`RustlsConnect`] per host it tries.
#[derive(Clone)]
pub(crate) struct MakeRustlsConnect {
    tls: PgTls,
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<RustlsConnect, TlsError> {
        Ok(RustlsConnect {
            tls: self.tls.clone(),
            host: host.to_owned(),
        })
    }
}

/// One handshake for tokio-postgres, after its SSLRequest got 'S'.
pub(crate) struct RustlsConnect {
    tls: PgTls,
    host: String,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = TlsError;
    type Future = Pin<Box<dyn Future<Output = Result<RustlsStream<S>, TlsError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let stream = self.tls.handshake(stream, &self.host).await?;
            Ok(RustlsStream(Box::new(stream)))
        })
    }
}

/// An encrypted SQL connection's stream.
pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// None: SCRAM then runs without channel binding (`channel_binding=prefer` semantics).
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S> AsyncRead for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn settings(pairs: &[(&str, &str)], ca: Option<&str>) -> Result<TlsSettings, TlsError> {
        let options = TlsOptions {
            ca_certificate_file: ca.map(PathBuf::from),
        };
        TlsSettings::new(&params(pairs), &options)
    }

    fn mode_and_roots(pairs: &[(&str, &str)], ca: Option<&str>) -> (SslMode, Option<Roots>) {
        let s = settings(pairs, ca).unwrap();
        (s.mode, s.roots)
    }

    #[test]
    fn the_default_is_prefer_without_verification() {
        assert_eq!(mode_and_roots(&[], None), (SslMode::Prefer, None));
        assert_eq!(SslMode::DEFAULT.first_attempt(), Encryption::IfOffered);
    }

    #[test]
    fn every_libpq_mode_parses_and_a_later_value_wins() {
        for mode in [
            SslMode::Disable,
            SslMode::Allow,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyCa,
            SslMode::VerifyFull,
        ] {
            let text = mode.to_string();
            assert_eq!(settings(&[("sslmode", &text)], None).unwrap().mode, mode);
        }
        let later = settings(&[("sslmode", "disable"), ("sslmode", "require")], None);
        assert_eq!(later.unwrap().mode, SslMode::Require);
        let err = settings(&[("sslmode", "yes")], None).unwrap_err();
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        assert!(err.to_string().contains("verify-full"), "{err}");
    }

    #[test]
    fn verifying_modes_without_a_ca_use_the_system_roots() {
        for mode in ["verify-ca", "verify-full"] {
            let (_, roots) = mode_and_roots(&[("sslmode", mode)], None);
            assert_eq!(roots, Some(Roots::System), "{mode}");
        }
        assert_eq!(mode_and_roots(&[("sslmode", "require")], None).1, None);
    }

    #[test]
    fn a_root_file_in_the_url_keeps_the_mode_as_libpq_does() {
        let (mode, roots) = mode_and_roots(&[("sslmode", "require"), ("sslrootcert", "/ca")], None);
        assert_eq!(mode, SslMode::Require);
        assert_eq!(roots, Some(Roots::UrlFile("/ca".into())));
        assert_eq!(
            mode_and_roots(&[("sslrootcert", "/ca")], None).0,
            SslMode::Prefer
        );
    }

    #[test]
    fn system_roots_force_verify_full() {
        let (mode, roots) = mode_and_roots(&[("sslrootcert", "system")], None);
        assert_eq!((mode, roots), (SslMode::VerifyFull, Some(Roots::System)));
        let err = settings(&[("sslrootcert", "system"), ("sslmode", "require")], None);
        assert!(err.unwrap_err().to_string().contains("verify-full"));
    }

    #[test]
    fn electrics_ca_variable_turns_full_verification_on() {
        let env = Some(Roots::EnvFile("/ca.pem".into()));
        for mode in ["allow", "prefer", "require", "verify-full"] {
            let got = mode_and_roots(&[("sslmode", mode)], Some("/ca.pem"));
            assert_eq!(got, (SslMode::VerifyFull, env.clone()), "{mode}");
        }
        assert_eq!(
            mode_and_roots(&[], Some("/ca.pem")),
            (SslMode::VerifyFull, env.clone())
        );
        assert_eq!(
            mode_and_roots(&[("sslmode", "verify-ca")], Some("/ca.pem")),
            (SslMode::VerifyCa, env)
        );
        let disable = settings(&[("sslmode", "disable")], Some("/ca.pem")).unwrap_err();
        assert!(disable.to_string().contains(CA_FILE_VARIABLE), "{disable}");
        let both = settings(&[("sslrootcert", "/other")], Some("/ca.pem")).unwrap_err();
        assert!(both.to_string().contains("keep one"), "{both}");
    }

    #[test]
    fn a_client_certificate_needs_both_files() {
        let s = settings(&[("sslcert", "/c"), ("sslkey", "/k")], None).unwrap();
        assert_eq!(s.client_identity, Some(("/c".into(), "/k".into())));
        let err = settings(&[("sslcert", "/c")], None).unwrap_err();
        assert!(err.to_string().contains("no sslkey"), "{err}");
        let err = settings(&[("sslkey", "/k")], None).unwrap_err();
        assert!(err.to_string().contains("no sslcert"), "{err}");
    }

    #[test]
    fn a_missing_root_file_is_fatal_and_named() {
        let s = settings(&[("sslrootcert", "/no/such/ca.pem")], None).unwrap();
        let err = PgTls::new(&s).err().unwrap();
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        assert!(err.to_string().contains("/no/such/ca.pem"), "{err}");
        // sslmode=disable reads no file
        let s = settings(&[("sslrootcert", "/no/such"), ("sslmode", "disable")], None).unwrap();
        assert!(PgTls::new(&s).is_ok());
    }

    #[test]
    fn certificate_errors_name_the_fix() {
        let roots = Roots::UrlFile("/ca.pem".into());
        let wrong_host = TlsError::certificate(
            "127.0.0.1",
            &roots,
            rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
        );
        let text = wrong_host.to_string();
        assert!(
            text.contains("127.0.0.1") && text.contains("/ca.pem"),
            "{text}"
        );
        assert!(text.contains("verify-ca"), "{text}");
        let unknown_issuer = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        let unknown = TlsError::certificate("db", &roots, unknown_issuer.clone());
        let text = unknown.to_string();
        assert!(
            text.contains("sslrootcert=") && text.contains("sslmode=require"),
            "{text}"
        );
        assert_eq!(unknown.kind(), DisconnectKind::Fatal);
        let env = TlsError::certificate("db", &Roots::EnvFile("/ca.pem".into()), unknown_issuer);
        let text = env.to_string();
        assert!(
            text.contains("unset ELECTRIC_DATABASE_CA_CERTIFICATE_FILE"),
            "{text}"
        );
    }

    #[test]
    fn a_connection_lost_mid_handshake_is_transient() {
        let reset = TlsError::Handshake {
            host: "db".into(),
            source: io::ErrorKind::ConnectionReset.into(),
        };
        assert_eq!(reset.kind(), DisconnectKind::Transient);
        let no_common_version = TlsError::Handshake {
            host: "db".into(),
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered),
            ),
        };
        assert_eq!(no_common_version.kind(), DisconnectKind::Fatal);
    }
}
