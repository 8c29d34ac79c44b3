//! TLS to Postgres for every connection ampere opens: the SQL connections (tokio-postgres, through
//! [`MakeRustlsConnect`]) and the replication connection (the SSLRequest handshake of
//! [`PgTls::negotiate`], then the hand-rolled protocol of [`crate::replication`] over the
//! encrypted stream).
//!
//! Owns: what `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and `channel_binding` in
//! `DATABASE_URL` and `ELECTRIC_DATABASE_CA_CERTIFICATE_FILE` ([`TlsOptions`]) mean
//! ([`TlsSettings`]), the refusal of parameters that ask for a protection ampere does not give
//! (`refuse_unsupported`: `sslcrl`, `sslcrldir`, `gssencmode=require`), the rustls
//! configuration built from them once ([`PgTls`]), the SSLRequest exchange and the handshake, the
//! channel-binding data of a session (`tls_server_end_point`), and errors that name the fix
//! ([`TlsError`], each with its [`DisconnectKind`]).
//!
//! `sslmode` means what it means to libpq, whose default (`prefer`) is also ampere's and
//! Electric's: `disable` never encrypts; `allow` connects in plaintext and encrypts only when the
//! server refuses the plaintext login (SQLSTATE 28000); `prefer` asks for TLS and falls back to
//! plaintext when the server answers the SSLRequest with 'N', or when the handshake fails at the
//! TLS level while nothing was to be verified (no root certificate; `PgTls::may_downgrade`);
//! `require` encrypts without verifying the server unless a root certificate is given, which then
//! verifies the chain (as `verify-ca`); `verify-ca` verifies the chain, not the host name;
//! `verify-full` verifies both. The roots are `sslrootcert=<file>`, `sslrootcert=system` (the
//! system's roots; forces `verify-full`, as libpq 16 does), or
//! `ELECTRIC_DATABASE_CA_CERTIFICATE_FILE`, which as in Electric also turns verification fully on
//! (`verify-full`, unless the URL says `verify-ca`). `verify-full` without any of them uses the
//! system's roots (libpq would read `~/.postgresql/root.crt`); `verify-ca` without one is a
//! configuration error, since the system's roots without the host name check accept any publicly
//! trusted certificate. Unix-socket connections never use TLS, as with libpq. The host name goes
//! out as SNI (Neon routes by it).
//!
//! `channel_binding` also has libpq's meaning: SCRAM-SHA-256-PLUS with RFC 5929's
//! `tls-server-end-point` whenever the server offers it over TLS (`prefer`, the default), never
//! (`disable`), or on every login (`require`: any other authentication fails, and with it a man
//! in the middle, even under `sslmode=require`, which verifies no certificate). tokio-postgres
//! runs it for the SQL connections from `RustlsStream`'s data, [`crate::replication`] for the
//! replication connection from `MaybeTls::Tls`'s.
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
pub(crate) const URL_PARAMETERS: [&str; 5] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "channel_binding",
];

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

/// What `channel_binding` asks for, with libpq's meaning (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChannelBindingMode {
    /// SCRAM without channel binding, even when the server offers it.
    Disable,
    /// SCRAM-SHA-256-PLUS when the server offers it over TLS, else without (the default).
    #[default]
    Prefer,
    /// Only SCRAM-SHA-256-PLUS logs in: plaintext connections, servers that do not offer it and
    /// every other authentication method (trust, password, md5) fail.
    Require,
}

impl ChannelBindingMode {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            _ => return None,
        })
    }

    /// tokio-postgres's equivalent, for the SQL connections.
    pub(crate) fn driver_mode(self) -> tokio_postgres::config::ChannelBinding {
        match self {
            Self::Disable => tokio_postgres::config::ChannelBinding::Disable,
            Self::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            Self::Require => tokio_postgres::config::ChannelBinding::Require,
        }
    }
}

/// Refuses `DATABASE_URL` parameters ampere ignores but must not ignore silently, because they
/// ask for a protection it does not give: certificate revocation lists (`sslcrl`,
/// `sslcrldir`; an empty value asks for none, as in libpq) and GSSAPI encryption
/// (`gssencmode=require`; `disable` and `prefer` ask for nothing ampere must give).
pub(crate) fn refuse_unsupported(key: &str, value: &str) -> Result<(), TlsError> {
    match key {
        "sslcrl" | "sslcrldir" if !value.is_empty() => Err(TlsError::Config(format!(
            "ampere cannot check certificate revocation lists; remove {key} from DATABASE_URL"
        ))),
        "gssencmode" if value == "require" => Err(TlsError::Config(
            "ampere cannot encrypt with GSSAPI; remove gssencmode=require from DATABASE_URL and \
             use sslmode=verify-full (or require) for TLS"
                .to_owned(),
        )),
        _ => Ok(()),
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
    channel_binding: ChannelBindingMode,
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
        let (mode, roots) = mode_and_roots(explicit, last("sslrootcert"), options)?;
        Ok(Self {
            mode,
            roots,
            client_identity: client_identity(last("sslcert"), last("sslkey"))?,
            channel_binding: channel_binding(last("channel_binding"), mode)?,
        })
    }
}

/// The mode in force and what it verifies against, from the explicit `sslmode`, `sslrootcert`
/// and Electric's variable.
fn mode_and_roots(
    explicit: Option<SslMode>,
    url_roots: Option<&str>,
    options: &TlsOptions,
) -> Result<(SslMode, Option<Roots>), TlsError> {
    Ok(match (url_roots, &options.ca_certificate_file) {
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
        // The system's roots trust every public CA: only with the host name checked do they
        // say anything about the server (libpq refuses verify-ca without a root file, and weak
        // modes with sslrootcert=system).
        (None, None) => match explicit.unwrap_or(SslMode::DEFAULT) {
            SslMode::VerifyCa => {
                return Err(TlsError::Config(format!(
                    "sslmode=verify-ca needs the CA to verify the server against: give it with \
                     sslrootcert=<file> in DATABASE_URL or {CA_FILE_VARIABLE}, or use \
                     sslmode=verify-full to verify against the system's root certificates (the \
                     host name is then checked too)"
                )))
            }
            SslMode::VerifyFull => (SslMode::VerifyFull, Some(Roots::System)),
            mode => (mode, None),
        },
    })
}

/// `sslcert` and `sslkey`: both or neither.
fn client_identity(
    cert: Option<&str>,
    key: Option<&str>,
) -> Result<Option<(PathBuf, PathBuf)>, TlsError> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some((PathBuf::from(cert), PathBuf::from(key)))),
        (None, None) => Ok(None),
        (cert, _) => {
            let (given, missing) = if cert.is_some() {
                ("sslcert", "sslkey")
            } else {
                ("sslkey", "sslcert")
            };
            Err(TlsError::Config(format!(
                "DATABASE_URL has {given} but no {missing}: a client certificate needs both"
            )))
        }
    }
}

/// `channel_binding` (default `prefer`); `require` cannot work without TLS.
fn channel_binding(text: Option<&str>, mode: SslMode) -> Result<ChannelBindingMode, TlsError> {
    let Some(text) = text else {
        return Ok(ChannelBindingMode::default());
    };
    let parsed = ChannelBindingMode::parse(text).ok_or_else(|| {
        TlsError::Config(format!(
            "DATABASE_URL has channel_binding={text}; use one of disable, prefer, require"
        ))
    })?;
    if parsed == ChannelBindingMode::Require && mode == SslMode::Disable {
        return Err(TlsError::Config(
            "channel_binding=require binds the login to the TLS session, but DATABASE_URL has \
             sslmode=disable: use sslmode=require (or verify-ca / verify-full), or remove \
             channel_binding=require"
                .to_owned(),
        ));
    }
    Ok(parsed)
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
    channel_binding: ChannelBindingMode,
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
            channel_binding: settings.channel_binding,
        })
    }

    /// The mode in force.
    pub(crate) fn mode(&self) -> SslMode {
        self.mode
    }

    /// `channel_binding` in force.
    pub(crate) fn channel_binding(&self) -> ChannelBindingMode {
        self.channel_binding
    }

    /// Whether a handshake that failed at the TLS level ([`TlsError::is_handshake_failure`])
    /// may be retried in plaintext, as libpq's `prefer` does: only when nothing was to be
    /// verified (no root certificate) and the login need not be bound to a TLS session. Then
    /// TLS only guarded against eavesdroppers, and a server whose TLS rustls cannot speak
    /// (1024-bit RSA keys, old ciphers) keeps working as it did in plaintext.
    pub(crate) fn may_downgrade(&self) -> bool {
        self.mode == SslMode::Prefer
            && self.roots.is_none()
            && self.channel_binding != ChannelBindingMode::Require
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
            b'S' => {
                let (stream, end_point) = self.handshake(stream, host).await?;
                Ok(MaybeTls::Tls {
                    stream: Box::new(stream),
                    end_point,
                })
            }
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

    /// The TLS handshake with `host` (SNI for a host name; verified as the mode says), and the
    /// session's `tls-server-end-point` for channel binding (`None` for `channel_binding=disable`
    /// or when the certificate allows none, which `require` refuses here).
    async fn handshake<S>(
        &self,
        stream: S,
        host: &str,
    ) -> Result<(tokio_rustls::client::TlsStream<S>, Option<Vec<u8>>), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name =
            ServerName::try_from(host.to_owned()).map_err(|source| TlsError::InvalidHost {
                host: host.to_owned(),
                source,
            })?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(name, stream)
            .await
            .map_err(|error| self.handshake_error(host, error))?;
        let end_point = match self.channel_binding {
            ChannelBindingMode::Disable => None,
            ChannelBindingMode::Prefer => match tls_server_end_point(stream.get_ref().1) {
                Ok(end_point) => Some(end_point),
                Err(why) => {
                    tracing::debug!(host, why, "no channel binding for this TLS session");
                    None
                }
            },
            ChannelBindingMode::Require => {
                let end_point = tls_server_end_point(stream.get_ref().1).map_err(|why| {
                    TlsError::ChannelBindingUnavailable {
                        host: host.to_owned(),
                        why,
                    }
                })?;
                Some(end_point)
            }
        };
        Ok((stream, end_point))
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
    /// Encrypted.
    Tls {
        /// Boxed: rustls's connection state is large.
        stream: Box<tokio_rustls::client::TlsStream<S>>,
        /// `tls-server-end-point` for SCRAM channel binding, when in use and available.
        end_point: Option<Vec<u8>>,
    },
}

/// RFC 5929's `tls-server-end-point` of an established session, the channel-binding data of
/// SCRAM-SHA-256-PLUS: the server's certificate hashed with its signature algorithm's hash
/// (SHA-256 for MD5 and SHA-1), as Postgres computes it. `Err` says why there is none.
pub(crate) fn tls_server_end_point(session: &rustls::ClientConnection) -> Result<Vec<u8>, String> {
    let certificate = session
        .peer_certificates()
        .and_then(<[_]>::first)
        .ok_or_else(|| "the server presented no certificate".to_owned())?;
    certificate_end_point(certificate)
}

/// [`tls_server_end_point`] of one DER certificate.
fn certificate_end_point(certificate: &[u8]) -> Result<Vec<u8>, String> {
    let oid = signature_algorithm(certificate)
        .ok_or_else(|| "the server's certificate does not parse as X.509".to_owned())?;
    match end_point_hash(oid) {
        Ok(hash) => Ok(hash.digest(certificate)),
        Err(algorithm) => Err(format!(
            "the server's certificate is signed with {algorithm}, and ampere binds only to \
             certificates signed with SHA-256, SHA-384, SHA-1 or MD5 (RSA or ECDSA)"
        )),
    }
}

/// The hash `tls-server-end-point` uses for a certificate signed with the algorithm of DER OID
/// contents `oid` (RFC 5929 §4.1: the signature's own hash, SHA-256 for MD5 and SHA-1), or the
/// algorithm's name when ampere cannot compute it (Postgres itself binds to none for RSASSA-PSS
/// and EdDSA: OpenSSL names no digest for them).
fn end_point_hash(oid: &[u8]) -> Result<EndPointHash, &'static str> {
    use EndPointHash::{Sha256, Sha384};
    match oid {
        // 1.2.840.113549.1.1.{4,5,11}: md5-, sha1-, sha256WithRSAEncryption
        [42, 134, 72, 134, 247, 13, 1, 1, 4 | 5 | 11] => Ok(Sha256),
        [42, 134, 72, 134, 247, 13, 1, 1, 12] => Ok(Sha384),
        [42, 134, 72, 134, 247, 13, 1, 1, 13] => Err("sha512WithRSAEncryption"),
        [42, 134, 72, 134, 247, 13, 1, 1, 14] => Err("sha224WithRSAEncryption"),
        [42, 134, 72, 134, 247, 13, 1, 1, 10] => Err("RSASSA-PSS"),
        // 1.2.840.10045.4.1 and 1.2.840.10045.4.3.{1,2,3,4}: ecdsa-with-SHA1, -SHA224, …
        [42, 134, 72, 206, 61, 4, 1] | [42, 134, 72, 206, 61, 4, 3, 2] => Ok(Sha256),
        [42, 134, 72, 206, 61, 4, 3, 3] => Ok(Sha384),
        [42, 134, 72, 206, 61, 4, 3, 1] => Err("ecdsa-with-SHA224"),
        [42, 134, 72, 206, 61, 4, 3, 4] => Err("ecdsa-with-SHA512"),
        // 1.3.101.112 and 113
        [43, 101, 112] => Err("Ed25519"),
        [43, 101, 113] => Err("Ed448"),
        _ => Err("an algorithm ampere does not know"),
    }
}

/// The hashes `tls-server-end-point` uses that rustls's ring provider exposes (through its
/// TLS 1.3 cipher suites). SHA-512 and SHA-224 are not among them: certificates signed with
/// those are rare enough not to add a hash crate for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndPointHash {
    Sha256,
    Sha384,
}

impl EndPointHash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        use rustls::crypto::ring::cipher_suite::{
            TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384,
        };
        let suite = match self {
            Self::Sha256 => TLS13_AES_128_GCM_SHA256,
            Self::Sha384 => TLS13_AES_256_GCM_SHA384,
        };
        let suite = suite.tls13().expect("a TLS 1.3 cipher suite");
        suite.common.hash_provider.hash(data).as_ref().to_vec()
    }
}

/// The contents of a certificate's `signatureAlgorithm` OID (RFC 5280 §4.1.1.2: the
/// `AlgorithmIdentifier` after `tbsCertificate` in the outer SEQUENCE).
fn signature_algorithm(certificate: &[u8]) -> Option<&[u8]> {
    const SEQUENCE: u8 = 0x30;
    const OBJECT_IDENTIFIER: u8 = 0x06;
    let (certificate, _) = der_element(certificate, SEQUENCE)?;
    let (_tbs_certificate, rest) = der_element(certificate, SEQUENCE)?;
    let (algorithm, _) = der_element(rest, SEQUENCE)?;
    let (oid, _) = der_element(algorithm, OBJECT_IDENTIFIER)?;
    Some(oid)
}

/// The DER element of type `tag` at the start of `input` (definite length, as DER has it):
/// its contents and what follows it.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if !(1..=4).contains(&count) || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes.iter().fold(0, |len, b| len << 8 | usize::from(*b));
        (len, rest)
    };
    (found == tag && rest.len() >= len).then(|| rest.split_at(len))
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
    /// `channel_binding=require`, and the server's certificate allows no `tls-server-end-point`.
    #[error(
        "cannot bind the login to the TLS session with server {host}, which \
         channel_binding=require demands: {why}; use channel_binding=prefer, or give the server a \
         certificate signed with SHA-256 or SHA-384"
    )]
    ChannelBindingUnavailable {
        /// The server.
        host: String,
        /// Why there is no channel-binding data.
        why: String,
    },
    /// `channel_binding=require`, and the server would authenticate ampere without it.
    #[error(
        "server {host} would authenticate ampere without channel binding, which \
         channel_binding=require demands ({why}): connect over TLS (sslmode=require or stronger, \
         not a unix socket) to a server whose pg_hba.conf asks this role for scram-sha-256, with \
         its password stored as SCRAM, or remove channel_binding=require"
    )]
    ChannelBindingNotUsed {
        /// The server.
        host: String,
        /// What the server did instead.
        why: &'static str,
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

    /// Fatal for configuration (files, modes, certificates the roots reject, a server without
    /// SSL or refusing plaintext, channel binding impossible, a TLS-level disagreement such as no
    /// common protocol version); Transient when the connection failed mid-way and for what a
    /// server-side certificate rotation or a proxy's hiccup heals: a certificate that expired or
    /// is not valid yet, an alert from the server, a garbled TLS message.
    pub fn kind(&self) -> DisconnectKind {
        match self {
            Self::Handshake { source, .. } => match rustls_error(source) {
                None => DisconnectKind::Transient,
                Some(e) if is_passing(e) => DisconnectKind::Transient,
                Some(_) => DisconnectKind::Fatal,
            },
            Self::Certificate { source, .. } if is_passing(source) => DisconnectKind::Transient,
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
            | Self::ChannelBindingUnavailable { .. }
            | Self::ChannelBindingNotUsed { .. } => DisconnectKind::Fatal,
        }
    }

    /// A handshake that failed at the TLS level (rustls refused what the server sent or said),
    /// not a connection lost mid-way: what `prefer` may retry in plaintext
    /// ([`PgTls::may_downgrade`]). A certificate rejected against roots is not one: with roots,
    /// there is no downgrade.
    pub(crate) fn is_handshake_failure(&self) -> bool {
        matches!(self, Self::Handshake { source, .. } if rustls_error(source).is_some())
    }
}

// Small enough for `PgPortError` to stay under clippy's `result_large_err` (128 bytes).
const _: () = assert!(size_of::<TlsError>() <= 80);

/// The rustls error inside an i/o error: the peers disagree at the TLS level.
fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A TLS failure that may pass by itself: a server certificate outside its validity period
/// (renewed on the server, or a clock put right), an alert the server sent or a message that
/// did not decode (a proxy restarting, a server mid-rotation). Retrying the same way can work.
fn is_passing(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::AlertReceived(_)
            | rustls::Error::InvalidMessage(_)
            | rustls::Error::InvalidCertificate(
                CertificateError::Expired
                    | CertificateError::ExpiredContext { .. }
                    | CertificateError::NotValidYet
                    | CertificateError::NotValidYetContext { .. }
            )
    )
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
    if is_passing(error) {
        return "the certificate has expired or is not valid yet: renew it on the server, or \
                correct this machine's clock (ampere keeps retrying)";
    }
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

/// SQLSTATE `invalid_authorization_specification`: `pg_hba.conf` has no line admitting this
/// login (for one, none admitting it without TLS), or the role does not exist.
pub(crate) const LOGIN_REFUSED: &str = "28000";

/// Whether a login error says that `pg_hba.conf` admits this client only over TLS, for the
/// error's hint: [`LOGIN_REFUSED`] naming the missing encryption in English (PG >= 14 says "no
/// encryption", older versions "SSL off"). A localised message gets no hint; `allow` retries on
/// the code alone.
pub(crate) fn is_plaintext_refused(code: &str, message: &str) -> bool {
    code == LOGIN_REFUSED && (message.contains("no encryption") || message.contains("SSL off"))
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
            let (stream, end_point) = self.tls.handshake(stream, &self.host).await?;
            Ok(RustlsStream {
                stream: Box::new(stream),
                end_point,
            })
        })
    }
}

/// An encrypted SQL connection's stream.
pub(crate) struct RustlsStream<S> {
    stream: Box<tokio_rustls::client::TlsStream<S>>,
    /// `tls-server-end-point`, computed after the handshake.
    end_point: Option<Vec<u8>>,
}

impl<S> tokio_postgres::tls::TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// What tokio-postgres binds SCRAM-SHA-256-PLUS to. None (`channel_binding=disable`, or a
    /// certificate that allows none): SCRAM-SHA-256 without binding, which tokio-postgres then
    /// refuses under `channel_binding=require`.
    fn channel_binding(&self) -> ChannelBinding {
        match &self.end_point {
            Some(end_point) => ChannelBinding::tls_server_end_point(end_point.clone()),
            None => ChannelBinding::none(),
        }
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
        Pin::new(&mut *self.get_mut().stream).poll_read(cx, buf)
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
        Pin::new(&mut *self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_shutdown(cx)
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
            let pairs = [("sslmode", text.as_str()), ("sslrootcert", "/ca.pem")];
            assert_eq!(settings(&pairs, None).unwrap().mode, mode);
        }
        let later = settings(&[("sslmode", "disable"), ("sslmode", "require")], None);
        assert_eq!(later.unwrap().mode, SslMode::Require);
        let err = settings(&[("sslmode", "yes")], None).unwrap_err();
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        assert!(err.to_string().contains("verify-full"), "{err}");
    }

    #[test]
    fn verify_full_without_a_ca_uses_the_system_roots() {
        let (mode, roots) = mode_and_roots(&[("sslmode", "verify-full")], None);
        assert_eq!((mode, roots), (SslMode::VerifyFull, Some(Roots::System)));
        assert_eq!(mode_and_roots(&[("sslmode", "require")], None).1, None);
    }

    #[test]
    fn verify_ca_without_a_ca_is_refused_naming_the_fixes() {
        // Goal: the system's roots without the host name check would accept any publicly
        // trusted certificate for any domain; libpq refuses this too.
        let err = settings(&[("sslmode", "verify-ca")], None).unwrap_err();
        assert_eq!(err.kind(), DisconnectKind::Fatal);
        let text = err.to_string();
        for fix in [
            "sslrootcert=<file>",
            CA_FILE_VARIABLE,
            "sslmode=verify-full",
        ] {
            assert!(text.contains(fix), "{fix:?} missing from: {text}");
        }
        // with a CA, verify-ca stays what it asks for
        let (mode, roots) =
            mode_and_roots(&[("sslmode", "verify-ca"), ("sslrootcert", "/ca")], None);
        assert_eq!(
            (mode, roots),
            (SslMode::VerifyCa, Some(Roots::UrlFile("/ca".into())))
        );
    }

    #[test]
    fn channel_binding_has_libpqs_values_and_require_needs_tls() {
        assert_eq!(
            settings(&[], None).unwrap().channel_binding,
            ChannelBindingMode::Prefer
        );
        for (text, mode) in [
            ("disable", ChannelBindingMode::Disable),
            ("prefer", ChannelBindingMode::Prefer),
            ("require", ChannelBindingMode::Require),
        ] {
            let got = settings(&[("sslmode", "require"), ("channel_binding", text)], None);
            assert_eq!(got.unwrap().channel_binding, mode, "{text}");
        }
        let err = settings(&[("channel_binding", "always")], None).unwrap_err();
        assert!(err.to_string().contains("channel_binding=always"), "{err}");
        let err = settings(
            &[("sslmode", "disable"), ("channel_binding", "require")],
            None,
        );
        let text = err.unwrap_err().to_string();
        assert!(text.contains("sslmode=require"), "{text}");
    }

    #[test]
    fn only_prefer_without_roots_or_required_binding_may_downgrade() {
        let may = |pairs: &[(&str, &str)]| {
            PgTls::new(&settings(pairs, None).unwrap())
                .unwrap()
                .may_downgrade()
        };
        assert!(may(&[]));
        assert!(may(&[("sslmode", "prefer"), ("channel_binding", "prefer")]));
        assert!(!may(&[("sslmode", "require")]));
        assert!(!may(&[("sslmode", "allow")]));
        assert!(!may(&[("channel_binding", "require")]));
        // a root file asks for verification, which plaintext would drop
        let ca = rcgen::generate_simple_self_signed(vec!["ca".to_owned()]).unwrap();
        let file =
            std::env::temp_dir().join(format!("ampere-tls-test-ca-{}.pem", std::process::id()));
        std::fs::write(&file, ca.cert.pem()).unwrap();
        assert!(!may(&[("sslrootcert", file.to_str().unwrap())]));
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn end_points_hash_the_certificate_with_its_signature_hash() {
        // Goal: RFC 5929's tls-server-end-point as Postgres computes it. Method: certificates
        // signed with ECDSA P-256/SHA-256 and P-384/SHA-384 hash with SHA-256 and SHA-384 (both
        // checked against FIPS 180 vectors); Ed25519 has no hash, and says so.
        assert_eq!(
            hex(&EndPointHash::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&EndPointHash::Sha384.digest(b"abc")),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
             8086072ba1e7cc2358baeca134c825a7"
        );
        let certificate = |algorithm| {
            let key = rcgen::KeyPair::generate_for(algorithm).unwrap();
            let params = rcgen::CertificateParams::new(vec!["db".to_owned()]).unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let p256 = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let end_point = certificate_end_point(&p256).unwrap();
        assert_eq!(end_point, EndPointHash::Sha256.digest(&p256));
        let p384 = certificate(&rcgen::PKCS_ECDSA_P384_SHA384);
        let end_point = certificate_end_point(&p384).unwrap();
        assert_eq!(end_point, EndPointHash::Sha384.digest(&p384));
        let ed25519 = certificate(&rcgen::PKCS_ED25519);
        let why = certificate_end_point(&ed25519).unwrap_err();
        assert!(why.contains("Ed25519"), "{why}");
        // what is not a certificate, or only part of one, has no end point and no panic
        for cut in [0, 1, 2, 4, 10, p256.len() / 2, p256.len() - 1] {
            assert!(certificate_end_point(&p256[..cut]).is_err(), "{cut}");
        }
        assert!(certificate_end_point(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn md5_and_sha1_signatures_bind_with_sha256_as_rfc_5929_says() {
        let rsa = |last: u8| [42, 134, 72, 134, 247, 13, 1, 1, last];
        for (oid, expected) in [
            (rsa(4), Ok(EndPointHash::Sha256)),
            (rsa(5), Ok(EndPointHash::Sha256)),
            (rsa(11), Ok(EndPointHash::Sha256)),
            (rsa(12), Ok(EndPointHash::Sha384)),
            (rsa(13), Err("sha512WithRSAEncryption")),
        ] {
            assert_eq!(end_point_hash(&oid), expected, "{oid:?}");
        }
        let ecdsa_with_sha1 = [42, 134, 72, 206, 61, 4, 1];
        assert_eq!(end_point_hash(&ecdsa_with_sha1), Ok(EndPointHash::Sha256));
        assert!(end_point_hash(&[1, 2, 3]).is_err());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    fn what_a_rotation_or_a_proxy_heals_is_transient_and_a_disagreement_fatal() {
        // Goal: an expired certificate (renewed on the server), an alert or a garbled message
        // must not stop the instance for good; a certificate no CA vouches for, for another
        // host or with a bad signature must.
        let roots = Roots::UrlFile("/ca.pem".into());
        let certificate =
            |e| TlsError::certificate("db", &roots, rustls::Error::InvalidCertificate(e));
        for passing in [CertificateError::Expired, CertificateError::NotValidYet] {
            let err = certificate(passing.clone());
            assert_eq!(err.kind(), DisconnectKind::Transient, "{passing:?}");
            assert!(err.to_string().contains("renew"), "{err}");
        }
        for lasting in [
            CertificateError::UnknownIssuer,
            CertificateError::NotValidForName,
            CertificateError::BadSignature,
        ] {
            assert_eq!(
                certificate(lasting.clone()).kind(),
                DisconnectKind::Fatal,
                "{lasting:?}"
            );
        }
        let handshake = |e: rustls::Error| TlsError::Handshake {
            host: "db".into(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        };
        let alert = handshake(rustls::Error::AlertReceived(
            rustls::AlertDescription::InternalError,
        ));
        assert_eq!(alert.kind(), DisconnectKind::Transient);
        assert!(alert.is_handshake_failure());
        let garbled = handshake(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(garbled.kind(), DisconnectKind::Transient);
        let bad_signature = handshake(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        ));
        assert_eq!(bad_signature.kind(), DisconnectKind::Fatal);
    }

    #[test]
    fn a_connection_lost_mid_handshake_is_transient() {
        let reset = TlsError::Handshake {
            host: "db".into(),
            source: io::ErrorKind::ConnectionReset.into(),
        };
        assert_eq!(reset.kind(), DisconnectKind::Transient);
        assert!(
            !reset.is_handshake_failure(),
            "not a TLS-level failure: no downgrade"
        );
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
