//! Connecting to PostgreSQL and Redis, with errors that say what to do next.
//!
//! Every message shows the redacted URL only. TLS: PostgreSQL takes `sslmode` and
//! `sslrootcert` from its URL (sqlx reads them); Redis takes `rediss://` plus
//! `redis.tls_ca_file` / `redis.tls_insecure`, applied in [`redis_client`], the one place a
//! `redis::Client` is built. Both trust the Mozilla root set compiled into the binary
//! (webpki-roots), plus the CA file when one is given.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection, PgConnection, PgPool};

use crate::config::{DatabaseSettings, RedisSettings, SecretUrl};

mod redis_conn;
pub use redis_conn::{is_not_connected, is_out_of_memory, Outcome, Pinned, RedisConn, RedisRole};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to PostgreSQL at {url}: {reason}\n  next: check that the server is running and the URL is right (scripts/services.sh starts a local one)")]
    Postgres { url: String, reason: String },
    #[error("database {name:?} does not exist on {url}\n  next: create it, for example: createdb -h <host> -U <user> {name}")]
    NoDatabase { url: String, name: String },
    #[error("cannot connect to Redis at {url}: {reason}\n  next: check that Redis is running and REDIS_URL is right (scripts/services.sh starts a local one)")]
    Redis { url: String, reason: String },
    #[error("TLS to PostgreSQL at {url} failed: {reason}\n  next: {next}")]
    PostgresTls { url: String, reason: String, next: String },
    #[error("TLS to Redis at {url} failed: {reason}\n  next: {next}")]
    RedisTls { url: String, reason: String, next: String },
    #[error("cannot use the Redis CA file {path}: {reason}\n  next: set redis.tls_ca_file (TSMIGRATE_REDIS_TLS_CA_FILE) to a PEM file holding the CA certificate that signed the server's")]
    RedisCaFile { path: String, reason: String },
}

/// Statements slower than this are logged as warnings.
const SLOW_STATEMENT: Duration = Duration::from_secs(60);

/// Sizes and deadlines of a PostgreSQL pool.
#[derive(Debug, Clone, Copy)]
pub struct PgLimits {
    pub max_connections: u32,
    /// Waiting for a pooled connection (or a new one) gives up after this.
    pub acquire_timeout: Duration,
    /// PostgreSQL cancels a statement running longer (`statement_timeout`); `None` = no limit.
    pub statement_timeout: Option<Duration>,
}

impl PgLimits {
    pub fn from_settings(d: &DatabaseSettings) -> PgLimits {
        PgLimits {
            max_connections: d.max_connections,
            acquire_timeout: Duration::from_secs(d.connect_timeout_secs),
            statement_timeout: Some(Duration::from_secs(d.statement_timeout_secs)).filter(|t| !t.is_zero()),
        }
    }

    fn pool_options(&self) -> PgPoolOptions {
        let statement_timeout = self.statement_timeout;
        PgPoolOptions::new().max_connections(self.max_connections).acquire_timeout(self.acquire_timeout).after_connect(move |conn, _| {
            Box::pin(async move {
                // SET rather than a startup option: connection poolers (PgBouncer) reject unknown startup parameters.
                if let Some(timeout) = statement_timeout {
                    sqlx::query(&format!("SET statement_timeout = {}", timeout.as_millis())).execute(conn).await?;
                }
                Ok(())
            })
        })
    }
}

fn pg_options(url: &SecretUrl) -> Result<PgConnectOptions, ConnectError> {
    let options: PgConnectOptions =
        url.expose().parse().map_err(|e: sqlx::Error| ConnectError::Postgres { url: url.redacted(), reason: scrub(&e.to_string(), url) })?;
    // Statements that scan a window of events (validation hashing, aggregate refreshes,
    // backfill pages) take seconds by design; sqlx's default warns after one second.
    Ok(options.application_name("tsmigrate").log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT))
}

/// A pool on `url`; fails fast (within the acquire timeout) when the server is unreachable.
pub async fn pg_pool(url: &SecretUrl, limits: PgLimits) -> Result<PgPool, ConnectError> {
    let options = pg_options(url)?;
    let timeout = limits.acquire_timeout;
    // One direct attempt first: a pool retries until its timeout and then reports only
    // "timed out", hiding the cause (connection refused, authentication failed...).
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
        Ok(Err(e)) => return Err(pg_error(url, e)),
        Err(_) => return Err(ConnectError::Postgres { url: url.redacted(), reason: format!("no answer within {}s", timeout.as_secs()) }),
    }
    limits.pool_options().connect_with(options).await.map_err(|e| pg_error(url, e))
}

fn pg_error(url: &SecretUrl, e: sqlx::Error) -> ConnectError {
    if let Some(next) = pg_tls_advice(url, &e) {
        return ConnectError::PostgresTls { url: url.redacted(), reason: scrub(&e.to_string(), url), next };
    }
    if let Some(db) = e.as_database_error() {
        if db.code().as_deref() == Some("3D000") {
            return ConnectError::NoDatabase { url: url.redacted(), name: url.database_name().unwrap_or_default() };
        }
    }
    ConnectError::Postgres { url: url.redacted(), reason: scrub(&e.to_string(), url) }
}

/// A pool that connects on first use: for workers that must start while the target is down.
pub fn pg_pool_lazy(url: &SecretUrl, limits: PgLimits) -> Result<PgPool, ConnectError> {
    Ok(limits.pool_options().connect_lazy_with(pg_options(url)?))
}

/// The one place a `redis::Client` is built: `rediss://` URLs get `redis.tls_ca_file` as
/// their trust anchor, and `redis.tls_insecure` turns verification off (the `#insecure` fragment).
pub fn redis_client(settings: &RedisSettings) -> Result<redis::Client, ConnectError> {
    install_crypto_provider();
    let url = &settings.url;
    let err = |e: redis::RedisError| ConnectError::Redis { url: url.redacted(), reason: scrub(&e.to_string(), url) };
    let mut target = url.expose().to_string();
    if settings.tls_insecure {
        if let Ok(mut parsed) = url::Url::parse(&target) {
            parsed.set_fragment(Some("insecure"));
            target = parsed.into();
        }
    }
    match &settings.tls_ca_file {
        Some(path) => {
            let root_cert = read_ca_file(path)?;
            redis::Client::build_with_tls(target, redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) }).map_err(err)
        }
        None => redis::Client::open(target).map_err(err),
    }
}

/// The CA file's bytes, refused here (not at the handshake) when it holds no certificate.
fn read_ca_file(path: &Path) -> Result<Vec<u8>, ConnectError> {
    let fail = |reason: String| ConnectError::RedisCaFile { path: path.display().to_string(), reason };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(pem),
        Ok(_) => Err(fail("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into())),
        Err(e) => Err(fail(format!("it is not a valid PEM file ({e})"))),
    }
}

/// redis builds its rustls configuration from the process-wide crypto provider; sqlx names
/// ring itself. Installing ring here keeps one provider even if another dependency ever
/// compiles in a second one (rustls would then refuse to pick, and panic).
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Deadlines of a Redis connection.
#[derive(Debug, Clone, Copy)]
pub struct RedisTimeouts {
    /// Each connection attempt, the first and every reconnection.
    pub connect: Duration,
    /// A command without an answer after this fails, and its connection is replaced; the
    /// wait for a connection counts in it.
    pub response: Duration,
}

impl RedisTimeouts {
    pub fn from_settings(r: &RedisSettings) -> RedisTimeouts {
        RedisTimeouts { connect: r.connect_timeout(), response: r.response_timeout() }
    }

    /// For a connection whose commands wait on the server by design (`XREADGROUP ... BLOCK`):
    /// the usual response deadline on top of the longest wait, so a wait is never cut short.
    pub fn blocking(self, longest_wait: Duration) -> RedisTimeouts {
        RedisTimeouts { response: self.response + longest_wait, ..self }
    }
}

/// A Redis connection with deadlines on every command and connection attempt, replaced when
/// it misses one ([`RedisConn`]).
///
/// While the server is down every command fails at once (nothing retries or sleeps: a
/// blip of a few seconds must not become minutes of hung requests), and the first command
/// after the server's return connects. A command that gets no answer in time drops its
/// connection: a socket that a NAT or load balancer silently dropped never reports an error.
///
/// Clones share one multiplexed connection: a command that holds it (a blocking read)
/// delays every other clone, so such commands need a connection of their own, with
/// [`RedisTimeouts::blocking`] deadlines.
pub async fn redis(settings: &RedisSettings, timeouts: RedisTimeouts) -> Result<RedisConn, ConnectError> {
    redis_as(settings, timeouts, RedisRole::Shared).await
}

/// [`redis`] for one of the process's own connections (`role` labels its metrics).
pub async fn redis_as(settings: &RedisSettings, timeouts: RedisTimeouts, role: RedisRole) -> Result<RedisConn, ConnectError> {
    let url = &settings.url;
    let client = redis_client(settings)?;
    RedisConn::connect(client, timeouts, role).await.map_err(|e| match e.is_timeout() {
        true => ConnectError::Redis { url: url.redacted(), reason: no_answer(url, timeouts.connect) },
        false => redis_error(settings, e),
    })
}

fn redis_error(settings: &RedisSettings, e: redis::RedisError) -> ConnectError {
    let url = &settings.url;
    let reason = scrub(&e.to_string(), url);
    match tls_failure(&e) {
        Some(failure) => ConnectError::RedisTls { url: url.redacted(), reason, next: redis_tls_advice(failure).into() },
        // A TLS-only server drops a plaintext client, and "connection reset" alone does not say why.
        None if e.is_connection_dropped() && is_tls_url(url) == Some(false) => ConnectError::Redis {
            url: url.redacted(),
            reason: format!("{reason} (a server that requires TLS drops plaintext clients: if this one does, use a rediss:// URL)"),
        },
        None => ConnectError::Redis { url: url.redacted(), reason },
    }
}

/// A plaintext Redis port never answers a TLS handshake (it waits for the end of a command
/// line), so for `rediss://` a timeout is the only symptom of the wrong port.
fn no_answer(url: &SecretUrl, timeout: Duration) -> String {
    let hint = if is_tls_url(url) == Some(true) { " (a plaintext port never answers a TLS handshake: check that this port serves TLS)" } else { "" };
    format!("no answer within {timeout:?}{hint}")
}

fn is_tls_url(url: &SecretUrl) -> Option<bool> {
    url::Url::parse(url.expose()).ok().map(|u| u.scheme() == "rediss")
}

/// Why a TLS handshake failed, in the terms an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate chain does not end at a trusted CA (or is otherwise invalid).
    Untrusted,
    /// The certificate is valid but does not name the host connected to.
    WrongHost,
    /// Expired or not yet valid.
    Expired,
    /// The peer's answer was not TLS at all: a plaintext port.
    NotTls,
    /// Any other handshake failure.
    Other,
}

/// The TLS failure somewhere in `e`'s source chain. rustls errors reach us either directly or
/// wrapped in an `io::Error`, whose `source()` skips them, hence `get_ref`.
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<TlsFailure> {
    let mut next = Some(e);
    while let Some(err) = next {
        let inner = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()).map(|inner| inner as &(dyn std::error::Error + 'static));
        if let Some(tls) = err.downcast_ref::<rustls::Error>().or_else(|| inner.and_then(|i| i.downcast_ref::<rustls::Error>())) {
            return Some(classify(tls));
        }
        next = err.source();
    }
    None
}

fn classify(e: &rustls::Error) -> TlsFailure {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => TlsFailure::WrongHost,
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. }) => TlsFailure::Expired,
        rustls::Error::InvalidCertificate(_) => TlsFailure::Untrusted,
        rustls::Error::InvalidMessage(_) => TlsFailure::NotTls,
        _ => TlsFailure::Other,
    }
}

fn redis_tls_advice(failure: TlsFailure) -> &'static str {
    match failure {
        TlsFailure::Untrusted => {
            "the server certificate is not signed by a trusted CA: set redis.tls_ca_file (TSMIGRATE_REDIS_TLS_CA_FILE) to the CA that signed it; \
             only for testing, redis.tls_insecure = true (TSMIGRATE_REDIS_TLS_INSECURE=1) skips verification"
        }
        TlsFailure::WrongHost => "the server certificate does not name this host: put a host name the certificate lists in REDIS_URL",
        TlsFailure::Expired => "the server certificate has expired or is not yet valid: renew it on the server, or check this machine's clock",
        TlsFailure::NotTls => "the server did not answer in TLS: use its TLS port (redis-server --tls-port), or a redis:// URL for a plaintext port",
        TlsFailure::Other => "check the server's TLS settings and that REDIS_URL names its TLS port",
    }
}

/// What to do about a PostgreSQL TLS failure, or None when `e` is not one.
fn pg_tls_advice(url: &SecretUrl, e: &sqlx::Error) -> Option<String> {
    // sqlx reports a server without TLS as a plain message, not a rustls error.
    if let sqlx::Error::Tls(inner) = e {
        if inner.to_string().contains("server does not support TLS") {
            return Some("the server does not offer TLS: enable ssl on the server, or use sslmode=prefer to fall back to plaintext".into());
        }
    }
    let host = url::Url::parse(url.expose()).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
    Some(match tls_failure(e)? {
        TlsFailure::Untrusted => "the server certificate is not signed by a trusted CA: add sslrootcert=/path/to/ca.pem to the URL \
             (managed services publish their CA), or use sslmode=require to encrypt without verifying the certificate"
            .into(),
        // Not "use verify-ca": sqlx 0.8 checks the name in verify-ca too (launchbadge/sqlx#3793).
        TlsFailure::WrongHost => format!(
            "the server certificate does not name host {host:?}: connect with a host name it lists, or use sslmode=require to encrypt without verifying the certificate"
        ),
        TlsFailure::Expired => "the server certificate has expired or is not yet valid: renew it on the server, or check this machine's clock".into(),
        TlsFailure::NotTls | TlsFailure::Other => "check the server's TLS settings; sslmode=require encrypts without verifying the certificate".into(),
    })
}

/// Drivers sometimes echo the URL back; never let a password through.
fn scrub(message: &str, url: &SecretUrl) -> String {
    match url::Url::parse(url.expose()).ok().and_then(|u| u.password().map(str::to_string)) {
        Some(password) if !password.is_empty() => message.replace(&password, "***"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_wrapped(e: rustls::Error) -> std::io::Error {
        // How tokio-rustls and sqlx hand a handshake failure up.
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors_and_classified() {
        use rustls::CertificateError as C;
        let cases = [
            (rustls::Error::InvalidCertificate(C::UnknownIssuer), TlsFailure::Untrusted),
            (rustls::Error::InvalidCertificate(C::NotValidForName), TlsFailure::WrongHost),
            (rustls::Error::InvalidCertificate(C::Expired), TlsFailure::Expired),
            (rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType), TlsFailure::NotTls),
            (rustls::Error::HandshakeNotComplete, TlsFailure::Other),
        ];
        for (error, expected) in cases {
            let redis_error = redis::RedisError::from(io_wrapped(error.clone()));
            assert_eq!(tls_failure(&redis_error), Some(expected), "{error:?} via redis");
            let sqlx_error = sqlx::Error::Io(io_wrapped(error.clone()));
            assert_eq!(tls_failure(&sqlx_error), Some(expected), "{error:?} via sqlx");
        }
        let refused = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(tls_failure(&refused), None, "a refused connection is not a TLS failure");
    }

    #[test]
    fn postgres_tls_advice_names_the_url_setting_to_change() {
        let url = SecretUrl::new("postgres://app:pw@db.example/x?sslmode=verify-full");
        let untrusted = sqlx::Error::Io(io_wrapped(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)));
        let advice = pg_tls_advice(&url, &untrusted).unwrap();
        assert!(advice.contains("sslrootcert=") && advice.contains("sslmode=require"), "{advice}");
        let no_tls = sqlx::Error::Tls("server does not support TLS".into());
        assert!(pg_tls_advice(&url, &no_tls).unwrap().contains("enable ssl on the server"));
        assert_eq!(pg_tls_advice(&url, &sqlx::Error::PoolTimedOut), None);
    }

    /// ARCHITECTURE.md: every Redis client is built by `redis_client`, so TLS settings reach all.
    #[test]
    fn no_other_source_file_builds_a_redis_client() {
        fn visit(dir: &Path, offenders: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    visit(&path, offenders);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("src/connect.rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if ["Client::open(", "Client::build_with_tls("].iter().any(|call| text.contains(call)) {
                        offenders.push(path.display().to_string());
                    }
                }
            }
        }
        let mut offenders = Vec::new();
        visit(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut offenders);
        assert!(offenders.is_empty(), "build Redis clients with connect::redis_client (it applies the TLS settings): {offenders:?}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let settings = RedisSettings { url: SecretUrl::new("rediss://127.0.0.1:1"), tls_ca_file: Some(empty), ..Default::default() };
        let err = redis_client(&settings).unwrap_err().to_string();
        assert!(err.contains("holds no PEM certificate") && err.contains("redis.tls_ca_file"), "{err}");
        let missing = RedisSettings { tls_ca_file: Some(dir.path().join("missing.pem")), ..settings };
        assert!(redis_client(&missing).unwrap_err().to_string().contains("missing.pem"));
    }
}
