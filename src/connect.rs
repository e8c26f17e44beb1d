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
pub use redis_conn::{
    cluster_enabled, is_not_connected, is_out_of_memory, master_of, refused_by_the_cluster, slot_of, Outcome, Pinned, RedisConn, RedisRole, RedisSource,
    Topology,
};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// `next` is the advice for the cause ([`Cause`]).
    #[error("cannot connect to PostgreSQL at {url}: {reason}\n  next: {next}")]
    Postgres { url: String, reason: String, next: String },
    #[error("database {name:?} does not exist on {url}\n  next: create it ({command}), or correct the database name in the URL")]
    NoDatabase { url: String, name: String, command: String },
    #[error("cannot connect to Redis at {url}: {reason}\n  next: {next}")]
    Redis { url: String, reason: String, next: String },
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
    /// Relations a serving pool plans a query over on each new connection (empty for
    /// other pools). A serving pool also keeps `max_connections` open, so connections are
    /// opened, primed and replaced (after their lifetime) in the background, never on a
    /// request's path.
    pub prime: &'static [&'static str],
}

impl PgLimits {
    pub fn from_settings(d: &DatabaseSettings) -> PgLimits {
        PgLimits {
            max_connections: d.max_connections,
            acquire_timeout: Duration::from_secs(d.connect_timeout_secs),
            statement_timeout: Some(Duration::from_secs(d.statement_timeout_secs)).filter(|t| !t.is_zero()),
            prime: &[],
        }
    }

    /// These limits for a serving pool that primes its connections on `relations`.
    pub fn serving(self, relations: &'static [&'static str]) -> PgLimits {
        PgLimits { prime: relations, ..self }
    }

    fn pool_options(&self) -> PgPoolOptions {
        let (statement_timeout, prime) = (self.statement_timeout, self.prime);
        let options = PgPoolOptions::new().max_connections(self.max_connections).acquire_timeout(self.acquire_timeout);
        let options = if prime.is_empty() { options } else { options.min_connections(self.max_connections) };
        options.after_connect(move |conn, _| Box::pin(set_up_connection(conn, statement_timeout, prime)))
    }
}

/// What every new connection of a pool runs first.
async fn set_up_connection(conn: &mut PgConnection, statement_timeout: Option<Duration>, prime: &'static [&'static str]) -> sqlx::Result<()> {
    // SET rather than a startup option: connection poolers (PgBouncer) reject unknown startup parameters.
    if let Some(timeout) = statement_timeout {
        sqlx::query(&format!("SET statement_timeout = {}", timeout.as_millis())).execute(&mut *conn).await?;
    }
    prime_connection(conn, prime).await;
    Ok(())
}

/// Plans a query over each of `relations` that exists, once, on a new connection: the
/// first statement a fresh backend plans over a hypertable or a partitioned table loads
/// the descriptors of every chunk and index (and TimescaleDB's caches) and takes tens of
/// milliseconds; a request should not be the one that pays it. Best effort: a relation
/// that cannot be planned is left to the first statement that needs it.
async fn prime_connection(conn: &mut PgConnection, relations: &[&str]) {
    if relations.is_empty() {
        return;
    }
    let statement = priming_statement(relations);
    if let Err(e) = sqlx::query(&statement).persistent(false).execute(&mut *conn).await {
        tracing::debug!(error = %e, "could not prime a new connection");
    }
}

/// The one statement that primes a connection on `relations` (the program's own names,
/// never input): `EXPLAIN` of a query over each that exists, in the server.
pub fn priming_statement(relations: &[&str]) -> String {
    let listed = relations.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(", ");
    format!(
        "DO $$ DECLARE r text; BEGIN FOREACH r IN ARRAY ARRAY[{listed}] LOOP \
         IF to_regclass(r) IS NOT NULL THEN EXECUTE 'EXPLAIN SELECT * FROM ' || r; END IF; END LOOP; END $$"
    )
}

fn pg_options(url: &SecretUrl) -> Result<PgConnectOptions, ConnectError> {
    let options: PgConnectOptions = url.expose().parse().map_err(|e: sqlx::Error| ConnectError::Postgres {
        url: url.redacted(),
        reason: scrub(&e.to_string(), url),
        next: "correct the URL: postgres://user:password@host:5432/database".into(),
    })?;
    // Statements that scan a window of events (validation hashing, aggregate refreshes,
    // backfill pages) take seconds by design; sqlx's default warns after one second.
    Ok(options.application_name("tsmigrate").log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT))
}

/// A pool on `url`; fails fast (within the acquire timeout) when the server is unreachable.
pub async fn pg_pool(url: &SecretUrl, limits: PgLimits) -> Result<PgPool, ConnectError> {
    // One direct attempt first: a pool retries until its timeout and then reports only
    // "timed out", hiding the cause (connection refused, authentication failed...).
    let _ = pg_connection(url, limits.acquire_timeout).await?.close().await;
    limits.pool_options().connect_with(pg_options(url)?).await.map_err(|e| pg_error(url, e))
}

/// One connection of its own, outside any pool (a session advisory lock lives and dies
/// with its connection), with the pools' options and errors; gives up after `timeout`.
pub async fn pg_connection(url: &SecretUrl, timeout: Duration) -> Result<PgConnection, ConnectError> {
    let options = pg_options(url)?;
    match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
        Ok(connected) => connected.map_err(|e| pg_error(url, e)),
        Err(_) => Err(ConnectError::Postgres {
            url: url.redacted(),
            reason: format!("no answer within {}s", timeout.as_secs()),
            next: pg_advice(Cause::Timeout, url),
        }),
    }
}

fn pg_error(url: &SecretUrl, e: sqlx::Error) -> ConnectError {
    if let Some(next) = pg_tls_advice(url, &e) {
        return ConnectError::PostgresTls { url: url.redacted(), reason: scrub(&e.to_string(), url), next };
    }
    match pg_cause(&e) {
        Cause::NoDatabase => {
            let name = url.database_name().unwrap_or_default();
            let parts = UrlParts::of(url);
            let command = format!("createdb -h {} -p {} -U {} {name}", parts.host, parts.port.unwrap_or(5432), parts.user.as_deref().unwrap_or("postgres"));
            ConnectError::NoDatabase { url: url.redacted(), name, command }
        }
        cause => ConnectError::Postgres { url: url.redacted(), reason: scrub(&e.to_string(), url), next: pg_advice(cause, url) },
    }
}

/// Why a connection failed, in the terms an operator acts on (TLS failures: [`TlsFailure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Nothing listens there (connection refused).
    Refused,
    /// No answer in time: a wrong address, a firewall that drops, a hung server.
    Timeout,
    /// The host name does not resolve.
    UnknownHost,
    /// The server refused the credentials.
    Authentication,
    /// PostgreSQL: the role does not exist.
    NoRole,
    /// PostgreSQL: pg_hba.conf has no entry for this user, host and database.
    NotAllowed,
    /// PostgreSQL: the database does not exist.
    NoDatabase,
    Other,
}

/// The cause of a PostgreSQL connection error. Pure.
pub fn pg_cause(e: &sqlx::Error) -> Cause {
    if let Some(db) = e.as_database_error() {
        match db.code().as_deref() {
            Some("28P01") => return Cause::Authentication,
            // "role \"x\" does not exist" and "no pg_hba.conf entry ..." share the code.
            Some("28000") if db.message().contains("does not exist") => return Cause::NoRole,
            Some("28000") => return Cause::NotAllowed,
            Some("3D000") => return Cause::NoDatabase,
            _ => {}
        }
    }
    if matches!(e, sqlx::Error::PoolTimedOut) {
        return Cause::Timeout;
    }
    io_cause(e)
}

/// The cause of a Redis connection error. Pure.
pub fn redis_cause(e: &redis::RedisError) -> Cause {
    let text = e.to_string();
    // WRONGPASS: wrong user or password; NOAUTH: the server wants one and none was given.
    let refused_credentials = ["WRONGPASS", "NOAUTH", "invalid password", "without any password configured"];
    if e.kind() == redis::ErrorKind::AuthenticationFailed || refused_credentials.iter().any(|words| text.contains(words)) {
        return Cause::Authentication;
    }
    if e.is_timeout() {
        return Cause::Timeout;
    }
    io_cause(e)
}

/// Refused, timed out or an unknown host, from the I/O error somewhere in `e`'s chain.
fn io_cause(e: &(dyn std::error::Error + 'static)) -> Cause {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Cause::Refused,
                std::io::ErrorKind::TimedOut => return Cause::Timeout,
                _ => {}
            }
        }
        // getaddrinfo's words (glibc, musl, macOS); the I/O error kind says nothing specific.
        let text = err.to_string();
        if ["failed to lookup address", "Name or service not known", "nodename nor servname", "Temporary failure in name resolution", "No address associated"]
            .iter()
            .any(|words| text.contains(words))
        {
            return Cause::UnknownHost;
        }
        next = err.source();
    }
    Cause::Other
}

/// Host, port and user of a URL, for advice (never the password).
struct UrlParts {
    host: String,
    port: Option<u16>,
    user: Option<String>,
}

impl UrlParts {
    fn of(url: &SecretUrl) -> UrlParts {
        let parsed = url::Url::parse(url.expose()).ok();
        let host = parsed.as_ref().and_then(|u| u.host_str().map(str::to_string)).filter(|h| !h.is_empty()).unwrap_or_else(|| "localhost".into());
        let user = parsed.as_ref().map(|u| u.username().to_string()).filter(|u| !u.is_empty());
        UrlParts { host, port: parsed.as_ref().and_then(|u| u.port()), user }
    }

    fn address(&self, default_port: u16) -> String {
        format!("{}:{}", self.host, self.port.unwrap_or(default_port))
    }
}

/// What to do about a PostgreSQL connection that failed for `cause`.
fn pg_advice(cause: Cause, url: &SecretUrl) -> String {
    let parts = UrlParts::of(url);
    let address = parts.address(5432);
    let user = parts.user.clone().unwrap_or_else(|| "the connecting user".into());
    match cause {
        Cause::Refused => format!("nothing accepts connections at {address}: start PostgreSQL there (scripts/services.sh starts a local one), or correct the host and port in the URL"),
        Cause::Timeout => format!("no answer from {address}: check the host and port in the URL, and that no firewall or security group drops the connection"),
        Cause::UnknownHost => format!("the host name {:?} does not resolve: correct the host in the URL", parts.host),
        Cause::Authentication => format!(
            "the server refused user {user:?} with this password: check the user and password in the URL (percent-encode @ : / in a password)"
        ),
        Cause::NoRole => format!(
            "there is no role {user:?} on {address}: put an existing user in the URL, or create the role: createuser -h {} -U postgres --pwprompt {user}",
            parts.host
        ),
        Cause::NotAllowed => format!(
            "the server's pg_hba.conf does not let {user:?} connect from here to this database: use a user it allows, add an entry on the server, or add sslmode=require if it accepts only TLS"
        ),
        Cause::NoDatabase => format!("create the database on {address} (createdb), or correct its name in the URL"),
        Cause::Other => "check that the server is running and the URL is right (scripts/services.sh starts a local one)".into(),
    }
}

/// What to do about a Redis connection that failed for `cause`.
fn redis_advice(cause: Cause, url: &SecretUrl) -> String {
    let address = UrlParts::of(url).address(6379);
    match cause {
        Cause::Refused => format!(
            "nothing accepts connections at {address}: start Redis there (scripts/services.sh starts a local one), or correct the host and port in REDIS_URL"
        ),
        Cause::Timeout => {
            format!("no answer from {address}: check the host and port in REDIS_URL, and that no firewall or security group drops the connection")
        }
        Cause::UnknownHost => format!("the host name in REDIS_URL ({address}) does not resolve: correct it"),
        Cause::Authentication => "Redis refused the credentials: put the right user and password in REDIS_URL (redis://user:password@host:6379, or \
             redis://:password@host:6379 without ACL users; a server without a password refuses one too: drop it from the URL)"
            .into(),
        _ => "check that Redis is running and REDIS_URL is right (scripts/services.sh starts a local one)".into(),
    }
}

/// A pool that connects on first use: for workers that must start while the target is down.
pub fn pg_pool_lazy(url: &SecretUrl, limits: PgLimits) -> Result<PgPool, ConnectError> {
    Ok(limits.pool_options().connect_lazy_with(pg_options(url)?))
}

/// The one place a `redis::Client` is built: `rediss://` URLs get `redis.tls_ca_file` as
/// their trust anchor, and `redis.tls_insecure` turns verification off (the `#insecure` fragment).
pub fn redis_client(settings: &RedisSettings) -> Result<redis::Client, ConnectError> {
    let first = settings.seed_urls().into_iter().next().unwrap_or_default();
    client_for(settings, &first)
}

/// Every seed node of `redis.url` (one URL, or a comma-separated list of a cluster's nodes),
/// with the TLS settings applied to each ([`redis_client`]'s).
pub fn redis_source(settings: &RedisSettings) -> Result<RedisSource, ConnectError> {
    let seeds = settings.seed_urls().iter().map(|url| client_for(settings, url)).collect::<Result<Vec<_>, _>>()?;
    let ca = settings.tls_ca_file.as_deref().map(read_ca_file).transpose()?;
    Ok(RedisSource { seeds, ca })
}

fn client_for(settings: &RedisSettings, seed: &str) -> Result<redis::Client, ConnectError> {
    install_crypto_provider();
    let url = &settings.url;
    let err = |e: redis::RedisError| ConnectError::Redis { url: url.redacted(), reason: scrub(&e.to_string(), url), next: redis_advice(Cause::Other, url) };
    let mut target = seed.to_string();
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
    let source = redis_source(settings)?;
    RedisConn::connect(source, timeouts, role).await.map_err(|e| match e.is_timeout() {
        true => ConnectError::Redis { url: url.redacted(), reason: no_answer(url, timeouts.connect), next: redis_advice(Cause::Timeout, url) },
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
            next: redis_advice(redis_cause(&e), url),
        },
        None => ConnectError::Redis { url: url.redacted(), reason, next: redis_advice(redis_cause(&e), url) },
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
    url.scrub(message)
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

    #[test]
    fn connection_failures_are_told_apart_by_cause() {
        use std::io::{Error, ErrorKind};
        let pg = |e: Error| pg_cause(&sqlx::Error::Io(e));
        assert_eq!(pg(Error::from(ErrorKind::ConnectionRefused)), Cause::Refused);
        assert_eq!(pg(Error::from(ErrorKind::TimedOut)), Cause::Timeout);
        assert_eq!(pg(Error::other("failed to lookup address information: Name or service not known")), Cause::UnknownHost);
        assert_eq!(pg(Error::other("something else")), Cause::Other);
        assert_eq!(pg_cause(&sqlx::Error::PoolTimedOut), Cause::Timeout);
        let redis = |e: redis::RedisError| redis_cause(&e);
        assert_eq!(redis(Error::from(ErrorKind::ConnectionRefused).into()), Cause::Refused);
        assert_eq!(redis((redis::ErrorKind::AuthenticationFailed, "invalid username-password pair").into()), Cause::Authentication);
        assert_eq!(redis((redis::ErrorKind::ResponseError, "WRONGPASS invalid username-password pair or user is disabled.").into()), Cause::Authentication);
        assert_eq!(redis((redis::ErrorKind::ResponseError, "NOAUTH Authentication required.").into()), Cause::Authentication);
        assert_eq!(redis(Error::other("failed to lookup address information: Name or service not known").into()), Cause::UnknownHost);
    }

    #[test]
    fn the_advice_fits_the_cause() {
        let url = SecretUrl::new("postgres://app:pw@db.example:5433/analytics");
        let advice = |cause| pg_advice(cause, &url);
        assert!(advice(Cause::Refused).contains("db.example:5433") && advice(Cause::Refused).contains("scripts/services.sh"), "{}", advice(Cause::Refused));
        assert!(advice(Cause::Timeout).contains("firewall"), "{}", advice(Cause::Timeout));
        assert!(advice(Cause::UnknownHost).contains("\"db.example\" does not resolve"), "{}", advice(Cause::UnknownHost));
        assert!(advice(Cause::NoRole).contains("createuser -h db.example -U postgres --pwprompt app"), "{}", advice(Cause::NoRole));
        assert!(advice(Cause::Authentication).contains("user \"app\"") && advice(Cause::Authentication).contains("password"));
        assert!(advice(Cause::NotAllowed).contains("pg_hba.conf"));
        // Starting a server fixes neither a missing role nor a wrong password, nor DNS.
        for cause in [Cause::NoRole, Cause::Authentication, Cause::NotAllowed, Cause::UnknownHost, Cause::NoDatabase] {
            assert!(!advice(cause).contains("services.sh"), "{cause:?}: {}", advice(cause));
        }
        for cause in [Cause::Refused, Cause::Timeout, Cause::Authentication, Cause::UnknownHost, Cause::Other] {
            let advice = redis_advice(cause, &SecretUrl::new("redis://:pw@cache.example:6380"));
            assert!(advice.contains("REDIS_URL") && !advice.contains("tsmigrate prepare") && !advice.contains("pw@"), "{cause:?}: {advice}");
        }
        assert!(redis_advice(Cause::Refused, &SecretUrl::new("redis://cache.example:6380")).contains("start Redis there"));
        assert!(redis_advice(Cause::Authentication, &SecretUrl::new("redis://cache.example")).contains("password"));
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
