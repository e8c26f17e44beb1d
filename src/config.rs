//! Settings: a TOML file plus environment overrides.
//!
//! `Settings::load` only reads and parses; `Settings::validate` is pure and says
//! everything that is wrong at once; connecting is somebody else's job
//! (`crate::db`, `crate::connect`). Connection strings are wrapped in
//! [`SecretUrl`] so that a password never reaches a log line or an error message.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// Where settings come from when no `--config` is given.
pub const CONFIG_ENV: &str = "TSMIGRATE_CONFIG";
/// Read when present in the working directory and no other file was named.
pub const DEFAULT_CONFIG_FILE: &str = "tsmigrate.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// A connection URL whose password is hidden whenever it is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }
    /// The real URL, for the driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// The URLs of a comma-separated list of several (a Redis Cluster's seed nodes), each of
    /// them a `scheme://` URL; `None` for one URL.
    fn list(&self) -> Option<Vec<SecretUrl>> {
        let parts: Vec<&str> = self.0.split(',').map(str::trim).collect();
        (parts.len() > 1 && parts.iter().all(|p| p.contains("://"))).then(|| parts.into_iter().map(SecretUrl::new).collect())
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        if let Some(list) = self.list() {
            return list.iter().map(SecretUrl::redacted).collect::<Vec<_>>().join(",");
        }
        match url::Url::parse(&self.0) {
            // `postgres:/user:pw@host/db` parses, as a path: everything after the scheme may be a secret.
            Ok(url) if !self.has_authority() => format!("{}:<hidden: not a {}://host URL>", url.scheme(), url.scheme()),
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                if url.query_pairs().any(|(k, _)| is_secret_param(&k)) {
                    let pairs: Vec<(String, String)> = url
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if is_secret_param(&k) { "***".to_string() } else { v.into_owned() };
                            (k.into_owned(), v)
                        })
                        .collect();
                    url.query_pairs_mut().clear().extend_pairs(pairs);
                }
                url.to_string()
            }
            // Not a URL: it may still hold a secret, so show nothing of it.
            Err(_) => "<unparseable url>".to_string(),
        }
    }

    /// Whether the URL is `scheme://…` (an authority, possibly empty for a socket path).
    pub fn has_authority(&self) -> bool {
        self.0.split_once(':').is_some_and(|(_, rest)| rest.starts_with("//"))
    }

    /// `message` with every secret of this URL hidden: its password (as written and
    /// decoded), secret query parameters, and all of it when it is not a `scheme://` URL.
    /// For driver messages, which sometimes echo what they were given.
    pub fn scrub(&self, message: &str) -> String {
        if let Some(list) = self.list() {
            return list.iter().fold(message.to_string(), |m, url| url.scrub(&m));
        }
        let mut secrets: Vec<String> = Vec::new();
        match url::Url::parse(&self.0) {
            Ok(url) if self.has_authority() => {
                if let Some(password) = url.password().filter(|p| !p.is_empty()) {
                    secrets.push(password.to_string());
                    if let Ok(decoded) = percent_decode(password) {
                        secrets.push(decoded);
                    }
                }
                secrets.extend(url.query_pairs().filter(|(k, _)| is_secret_param(k)).map(|(_, v)| v.into_owned()));
                // As written too (percent-encoded), which is how a driver may echo it.
                let raw = url.query().unwrap_or_default().split('&').filter_map(|pair| pair.split_once('='));
                secrets.extend(raw.filter(|(k, _)| is_secret_param(k)).map(|(_, v)| v.to_string()));
            }
            _ => {
                secrets.push(self.0.clone());
                if let Some((_, rest)) = self.0.split_once(':') {
                    secrets.push(rest.to_string());
                }
            }
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a secret that contains another is hidden whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.iter().fold(message.to_string(), |m, secret| m.replace(secret.as_str(), "***"))
    }

    /// The database name of a PostgreSQL URL, if any.
    pub fn database_name(&self) -> Option<String> {
        let url = url::Url::parse(&self.0).ok()?;
        let name = url.path().trim_start_matches('/');
        (!name.is_empty()).then(|| name.to_string())
    }
    /// The same server with another database name.
    pub fn with_database(&self, name: &str) -> SecretUrl {
        match url::Url::parse(&self.0) {
            Ok(mut url) => {
                url.set_path(&format!("/{name}"));
                SecretUrl(url.to_string())
            }
            Err(_) => self.clone(),
        }
    }
}

/// Query parameters that carry a password (libpq's `password`, redis's `password`/`pass`).
fn is_secret_param(name: &str) -> bool {
    matches!(name.to_ascii_lowercase().as_str(), "password" | "pass" | "passwd" | "sslpassword")
}

fn percent_decode(s: &str) -> Result<String, std::str::Utf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).map(str::to_string)
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted())
    }
}

/// A secret token (bearer token for ingest/admin endpoints).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretToken(String);

impl SecretToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Which storage layout the target gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ModeChoice {
    /// TimescaleDB when the server can load it, plain PostgreSQL otherwise.
    #[default]
    Auto,
    /// Require the TimescaleDB extension.
    Timescaledb,
    /// Plain PostgreSQL: native partitions and tool-maintained rollups.
    Postgres,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub legacy: LegacySettings,
    pub target: TargetSettings,
    pub ingest: IngestSettings,
    pub http: HttpSettings,
    pub migration: MigrationSettings,
    pub log: LogSettings,
    pub jobs: JobsSettings,
    pub assess: AssessSettings,
}

/// `tsmigrate assess`: the decision criteria (the thresholds its verdict uses, stated in its
/// output) and the bounds of what it reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AssessSettings {
    /// Below this many events a day the legacy design is enough ("keep the current design").
    pub baseline_events_per_day: u64,
    /// Above this many events a day, migrate (volume).
    pub migrate_above_events_per_day: u64,
    /// Growth over the baseline from which TimescaleDB is the recommended home.
    pub timescaledb_growth: u32,
    /// Growth over the baseline from which other engines (a managed time-series service)
    /// deserve a look instead.
    pub other_engine_growth: u32,
    /// A legacy read query slower than this at p95 is a reason to migrate (milliseconds).
    #[serde(deserialize_with = "crate::duration::millis::deserialize")]
    pub slow_query_ms: u64,
    /// Redis memory used by the events sorted set above which it is a reason to migrate.
    pub redis_memory_bytes: u64,
    /// Redis holding less than this many hours of events before the cap trims them is a
    /// reason to migrate (raw events are gone sooner than a day's reports need them).
    #[serde(deserialize_with = "crate::duration::hours::deserialize")]
    pub min_redis_hold_hours: u32,
    /// A growth trend that reaches `migrate_above_events_per_day` within this many days
    /// turns "not yet" into "plan it".
    #[serde(deserialize_with = "crate::duration::days::deserialize")]
    pub horizon_days: u32,
    /// The target outage the outbox must absorb during dual-write, in minutes.
    pub outage_minutes: u32,
    /// Events copied into the rolled-back sample table (compression, size, copy rate).
    pub sample_events: usize,
    /// At most this many members are read from the sorted set (the newest first).
    pub max_read_events: usize,
    /// Each legacy read query is timed this many times.
    pub query_runs: u32,
}

impl Default for AssessSettings {
    fn default() -> Self {
        Self {
            baseline_events_per_day: 100_000,
            migrate_above_events_per_day: 500_000,
            timescaledb_growth: 10,
            other_engine_growth: 100,
            slow_query_ms: 1_000,
            redis_memory_bytes: 1 << 30,
            min_redis_hold_hours: 24,
            horizon_days: 90,
            outage_minutes: 60,
            sample_events: 10_000,
            max_read_events: 100_000,
            query_runs: 5,
        }
    }
}

/// How log lines look on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event for people (coloured only when stderr is a terminal).
    #[default]
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` or `json`. Env: `TSMIGRATE_LOG_FORMAT`; `--log-format` wins over both.
    pub format: LogFormat,
    /// A `TSMIGRATE_LOG_FORMAT` that is neither, for `validate` to name.
    #[serde(skip)]
    pub invalid_env: Option<String>,
}

/// The scheduled jobs of `tsmigrate run` and the lease that picks the replica running them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsSettings {
    /// A replica without the jobs lease tries to take it this often (seconds); the holder
    /// checks its lease connection as often. A dead holder's jobs move within about this long.
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub lease_retry_secs: u64,
    /// Cron expressions (with seconds, UTC) replacing a job's default schedule, by job name.
    pub schedules: std::collections::BTreeMap<String, String>,
}

impl Default for JobsSettings {
    fn default() -> Self {
        Self { lease_retry_secs: 5, schedules: Default::default() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// The target database (TimescaleDB or plain PostgreSQL). Env: `DATABASE_URL`.
    pub url: SecretUrl,
    /// The legacy database holding the hourly tables; defaults to the target. Env: `LEGACY_DATABASE_URL`.
    pub legacy_url: Option<SecretUrl>,
    /// A hot standby of the target (streaming replication) for the read API; unset means
    /// every read goes to the target. Env: `DATABASE_READ_URL`.
    pub read_url: Option<SecretUrl>,
    /// Reads go to the target (the primary) while the standby is further behind than this,
    /// in seconds (also when it is unreachable or not a standby of the target).
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub read_max_lag_secs: u64,
    /// Pool size per database.
    pub max_connections: u32,
    /// How long to wait for a connection before giving up, in seconds.
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub connect_timeout_secs: u64,
    /// PostgreSQL cancels any statement of ours running longer than this (`statement_timeout`),
    /// in seconds; 0 = no limit. Generous: validation and aggregate refreshes scan by design.
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub statement_timeout_secs: u64,
    /// libpq's `PGSSLMODE` / `PGSSLROOTCERT`, which the driver reads for a URL that does not
    /// set `sslmode` / `sslrootcert`: kept for `validate` to check like the URL's own, since
    /// the driver ignores a mode it does not know (falling back to `prefer`, unverified).
    #[serde(skip)]
    pub tls_env: PgTlsEnv,
}

/// The PostgreSQL TLS variables of the environment (see [`DatabaseSettings::tls_env`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgTlsEnv {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("postgres://postgres@127.0.0.1:5432/tsmigrate"),
            legacy_url: None,
            read_url: None,
            read_max_lag_secs: 30,
            max_connections: 8,
            connect_timeout_secs: 5,
            statement_timeout_secs: 600,
            tls_env: PgTlsEnv::default(),
        }
    }
}

impl DatabaseSettings {
    pub fn legacy_url(&self) -> &SecretUrl {
        self.legacy_url.as_ref().unwrap_or(&self.url)
    }
}

/// The legacy Redis layout. Every name is configurable because every deployment named its keys differently.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Env: `REDIS_URL`.
    pub url: SecretUrl,
    /// Prepended to every key below (empty in most deployments).
    pub key_prefix: String,
    /// Sorted set: score = event time (epoch ms), member = event JSON.
    pub events_key: String,
    /// Hash: event_name -> all-time count.
    pub event_counters_key: String,
    /// Hash: category -> all-time count.
    pub category_counters_key: String,
    /// Sorted set: session_id -> last seen (epoch ms).
    pub sessions_key: String,
    /// How many members the events sorted set keeps (oldest trimmed after each write).
    pub event_cap: u64,
    /// Stream the ingest path appends to during dual-write; the relay drains it.
    pub outbox_stream: String,
    /// Consumer group the relay workers share.
    pub outbox_group: String,
    /// How long the relay's read waits for new outbox entries when it has caught up (ms).
    /// The relay reads on a connection of its own, so this wait never delays other work.
    #[serde(deserialize_with = "crate::duration::millis::deserialize")]
    pub relay_block_ms: u64,
    /// After a read that found less than a full batch (the relay has caught up), the relay
    /// lets new entries gather this long before reading again (ms; 0 = read at once): fewer,
    /// larger transactions cost the target and Redis much less per event, for a few
    /// milliseconds more before an event reaches the target.
    #[serde(deserialize_with = "crate::duration::millis::deserialize")]
    pub relay_linger_ms: u64,
    /// String key set to "1" once the legacy flush is retired, for external workers to check.
    pub flush_retired_key: String,
    /// Prefix of read-API cache keys.
    pub cache_prefix: String,
    /// Prefix of the keys `{first_seen_key}:{event_id}` → epoch ms at which ingest first
    /// accepted an event that had an `id` and no timestamp (see `ingest.resend_window_secs`).
    pub first_seen_key: String,
    /// Each (re)connection attempt to Redis gives up after this, in milliseconds.
    #[serde(deserialize_with = "crate::duration::millis::deserialize")]
    pub connect_timeout_ms: u64,
    /// A Redis command without an answer after this fails, in milliseconds (a hung server
    /// then costs a request this long at most; a stopped one fails at once).
    #[serde(deserialize_with = "crate::duration::millis::deserialize")]
    pub response_timeout_ms: u64,
    /// PEM file with the CA that signed the server certificate, for a `rediss://` URL whose
    /// server is not signed by a public CA. Env: `TSMIGRATE_REDIS_TLS_CA_FILE`.
    pub tls_ca_file: Option<PathBuf>,
    /// Encrypt without checking the server certificate at all (like the `#insecure` URL
    /// fragment). For testing only: it gives up protection against interception. Env:
    /// `TSMIGRATE_REDIS_TLS_INSECURE`.
    pub tls_insecure: bool,
    /// After an ingest batch is written, `WAIT` for this many replicas of the master holding
    /// the events to acknowledge it before answering 202 (0 = do not wait). Fewer within
    /// `wait_timeout_ms`: 503 "outcome unknown" (the batch is on the master and may survive a
    /// failover or not). Redis replication is asynchronous: without it, a failover can drop
    /// batches already answered 202. Env: `TSMIGRATE_REDIS_WAIT_REPLICAS`.
    pub wait_replicas: u32,
    /// How long ingest waits for `wait_replicas` acknowledgements, in milliseconds.
    #[serde(deserialize_with = "crate::duration::millis::deserialize")]
    pub wait_timeout_ms: u64,
    /// A `TSMIGRATE_REDIS_WAIT_REPLICAS` that is not a number, for `validate` to name.
    #[serde(skip)]
    pub wait_replicas_invalid_env: Option<String>,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: SecretUrl::new("redis://127.0.0.1:6379"),
            key_prefix: String::new(),
            events_key: "analytics:events".into(),
            event_counters_key: "analytics:counters:events".into(),
            category_counters_key: "analytics:counters:categories".into(),
            sessions_key: "analytics:sessions".into(),
            event_cap: 100_000,
            outbox_stream: "analytics:outbox".into(),
            outbox_group: "tsmigrate-relay".into(),
            relay_block_ms: 500,
            relay_linger_ms: 20,
            flush_retired_key: "analytics:flush_retired".into(),
            cache_prefix: "analytics:cache".into(),
            first_seen_key: "analytics:ingest:first_seen".into(),
            connect_timeout_ms: 2000,
            response_timeout_ms: 5000,
            tls_ca_file: None,
            tls_insecure: false,
            wait_replicas: 0,
            wait_timeout_ms: 500,
            wait_replicas_invalid_env: None,
        }
    }
}

impl RedisSettings {
    /// The URLs in `url`: one server (or one node of a cluster), or the seed nodes of a Redis
    /// Cluster separated by commas (`redis://h:7000,redis://h:7001`); a cluster is detected
    /// either way.
    pub fn seed_urls(&self) -> Vec<String> {
        self.url.expose().split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_string).collect()
    }

    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.key_prefix, name)
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    pub fn wait_timeout(&self) -> Duration {
        Duration::from_millis(self.wait_timeout_ms)
    }
}

/// The legacy PostgreSQL side filled by the hourly flush worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LegacySettings {
    pub hourly_table: String,
    pub asset_table: String,
    pub popular_function: String,
}

impl Default for LegacySettings {
    fn default() -> Self {
        Self { hourly_table: "analytics_events".into(), asset_table: "analytics_asset_popularity".into(), popular_function: "get_popular_asset_types".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TargetSettings {
    /// auto | timescaledb | postgres
    pub mode: ModeChoice,
    /// IANA time zone in which hour and day buckets are cut (both systems).
    pub bucket_timezone: String,
    #[serde(deserialize_with = "crate::duration::days::deserialize")]
    pub raw_retention_days: u32,
    #[serde(deserialize_with = "crate::duration::days::deserialize")]
    pub hourly_retention_days: u32,
    #[serde(deserialize_with = "crate::duration::days::deserialize")]
    pub daily_retention_days: u32,
    #[serde(deserialize_with = "crate::duration::days::deserialize")]
    pub columnstore_after_days: u32,
    /// Plain mode: daily partitions are created this many days ahead.
    #[serde(deserialize_with = "crate::duration::days::deserialize")]
    pub partitions_ahead_days: u32,
}

impl Default for TargetSettings {
    fn default() -> Self {
        Self {
            mode: ModeChoice::Auto,
            bucket_timezone: "UTC".into(),
            raw_retention_days: 90,
            hourly_retention_days: 365,
            daily_retention_days: 5 * 365,
            columnstore_after_days: 7,
            partitions_ahead_days: 7,
        }
    }
}

impl TargetSettings {
    pub fn timezone(&self) -> Tz {
        self.bucket_timezone.parse().unwrap_or(Tz::UTC)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Largest batch accepted by `POST /api/v1/analytics`.
    pub max_batch: usize,
    /// Largest single event, serialized, in bytes.
    pub max_event_bytes: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// How long ingest remembers when it first accepted an event that has an `id` and no
    /// timestamp, so that a resend of it within this window gets the same time (and so is
    /// the same row). Costs one small Redis key per such event for this long. 0: off.
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub resend_window_secs: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self { max_batch: 50, max_event_bytes: 16 * 1024, max_body_bytes: 1024 * 1024, resend_window_secs: 24 * 3600 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub bind: String,
    /// Bearer token required by ingest and admin endpoints when set. Env: `TSMIGRATE_API_TOKEN`.
    pub api_token: Option<SecretToken>,
    /// `TSMIGRATE_API_TOKEN` was set to nothing, for `validate` to refuse (an empty token
    /// must not quietly mean "no authentication").
    #[serde(skip)]
    pub api_token_env_empty: bool,
    /// Read-API cache TTL in seconds.
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub cache_ttl_secs: u64,
    /// A client must send the request headers within this many seconds of connecting (or of
    /// its previous request), and then the whole body within as many again; otherwise the
    /// connection is closed. Half-sent requests cannot pile up.
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub read_timeout_secs: u64,
    /// A request not answered within this many seconds gets 503 (a server behind it hangs).
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub request_timeout_secs: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { bind: "127.0.0.1:8080".into(), api_token: None, api_token_env_empty: false, cache_ttl_secs: 60, read_timeout_secs: 10, request_timeout_secs: 30 }
    }
}

impl HttpSettings {
    pub fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MigrationSettings {
    /// A validation older than this does not open the cutover gate.
    #[serde(deserialize_with = "crate::duration::hours::deserialize")]
    pub validation_freshness_hours: u32,
    /// Reads must stay switched this long before the flush can be retired.
    #[serde(deserialize_with = "crate::duration::hours::deserialize")]
    pub soak_hours: u32,
    /// Validation ignores the newest events younger than this (in flight).
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub settle_secs: u64,
    /// Events per backfill page.
    pub backfill_page_size: usize,
    /// Tail mode: how far back each poll looks for late events, in seconds.
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub tail_lookback_secs: u64,
    /// After `complete`, the legacy Redis keys expire after this many days.
    #[serde(deserialize_with = "crate::duration::days::deserialize")]
    pub legacy_key_expiry_days: u32,
    /// How often `tsmigrate run` checks that the Redis dual-write flag agrees with the
    /// migration state in PostgreSQL (and restores it when Redis lost it), in seconds.
    #[serde(deserialize_with = "crate::duration::secs::deserialize")]
    pub dual_write_check_secs: u64,
    /// Whether a validation at `--depth counts` (counts per hour only: it cannot see an
    /// altered event) may open the cutover and retire gates. Off unless you decide so.
    pub counts_depth_opens_gates: bool,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        Self {
            validation_freshness_hours: 24,
            soak_hours: 24,
            settle_secs: 300,
            backfill_page_size: 10_000,
            tail_lookback_secs: 600,
            legacy_key_expiry_days: 7,
            dual_write_check_secs: 5,
            counts_depth_opens_gates: false,
        }
    }
}

impl Settings {
    /// Reads the file (explicit path, `TSMIGRATE_CONFIG`, or `./tsmigrate.toml` when present),
    /// then applies environment overrides. Does not validate.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let env_path = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let chosen = match (path, env_path) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(p)) => Some(p),
            (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_FILE)).filter(|p| p.exists()),
        };
        let mut settings = match chosen {
            Some(path) => Self::from_file(&path)?,
            None => Settings::default(),
        };
        settings.apply_env(|name| std::env::var(name).ok());
        Ok(settings)
    }

    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })
    }

    /// Parse errors are scrubbed of secrets: the parser quotes the offending line, which may
    /// be a URL with a password or the API token.
    pub fn from_toml(text: &str) -> Result<Settings, String> {
        toml::from_str(text).map_err(|e| scrub_toml_error(&e.to_string()))
    }

    /// Environment overrides; `lookup` is injected so tests need not touch the process environment.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        if let Some(v) = lookup("DATABASE_URL") {
            self.database.url = SecretUrl::new(v);
        }
        if let Some(v) = lookup("LEGACY_DATABASE_URL") {
            self.database.legacy_url = Some(SecretUrl::new(v));
        }
        if let Some(v) = lookup("DATABASE_READ_URL") {
            // Set but empty: no standby (an environment cannot unset a file's setting otherwise).
            self.database.read_url = (!v.trim().is_empty()).then(|| SecretUrl::new(v));
        }
        self.database.tls_env = PgTlsEnv { sslmode: lookup("PGSSLMODE"), sslrootcert: lookup("PGSSLROOTCERT") };
        if let Some(v) = lookup("REDIS_URL") {
            self.redis.url = SecretUrl::new(v);
        }
        if let Some(v) = lookup("TSMIGRATE_REDIS_PREFIX") {
            self.redis.key_prefix = v;
        }
        if let Some(v) = lookup("TSMIGRATE_REDIS_TLS_CA_FILE") {
            self.redis.tls_ca_file = (!v.is_empty()).then(|| PathBuf::from(v));
        }
        if let Some(v) = lookup("TSMIGRATE_REDIS_TLS_INSECURE") {
            self.redis.tls_insecure = matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on");
        }
        if let Some(v) = lookup("TSMIGRATE_REDIS_WAIT_REPLICAS") {
            match v.trim().parse() {
                Ok(n) => self.redis.wait_replicas = n,
                // Kept as given so validate() names it.
                Err(_) => self.redis.wait_replicas_invalid_env = Some(v),
            }
        }
        if let Some(v) = lookup("TSMIGRATE_API_TOKEN") {
            if v.trim().is_empty() {
                self.http.api_token_env_empty = true;
            } else {
                self.http.api_token = Some(SecretToken::new(v));
            }
        }
        if let Some(v) = lookup("TSMIGRATE_BIND") {
            self.http.bind = v;
        }
        if let Some(v) = lookup("TSMIGRATE_LOG_FORMAT") {
            match v.trim().to_ascii_lowercase().as_str() {
                "json" => self.log.format = LogFormat::Json,
                "text" => self.log.format = LogFormat::Text,
                // Kept as given so validate() names it.
                _ => self.log.invalid_env = Some(v),
            }
        }
    }

    // Long by design: a flat list of independent checks, so every problem is reported at once.
    /// Everything wrong with these settings, at once. Pure: touches no server.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        for (what, url) in [("database.url (DATABASE_URL)", &self.database.url), ("database.legacy_url (LEGACY_DATABASE_URL)", self.database.legacy_url())] {
            check_url(what, url, &["postgres", "postgresql"], &mut problems);
        }
        for (what, url) in [("database.url (DATABASE_URL)", &self.database.url), ("database.legacy_url (LEGACY_DATABASE_URL)", self.database.legacy_url())] {
            check_pg_tls(what, url, &self.database.tls_env, &mut problems);
        }
        if let Some(url) = &self.database.read_url {
            check_url("database.read_url (DATABASE_READ_URL)", url, &["postgres", "postgresql"], &mut problems);
            check_pg_tls("database.read_url (DATABASE_READ_URL)", url, &self.database.tls_env, &mut problems);
        }
        check_redis_urls(&self.redis, &mut problems);
        if self.database.max_connections == 0 {
            problems.push("database.max_connections must be at least 1 (each command needs a connection)".into());
        }
        if self.http.api_token_env_empty {
            problems.push(
                "TSMIGRATE_API_TOKEN is set but empty: set it to the token clients send, or unset it (and http.api_token) to run without authentication".into(),
            );
        }
        if self.http.api_token.as_ref().is_some_and(|t| t.expose().trim().is_empty()) {
            problems.push("http.api_token is empty: set the token clients send, or remove the setting to run without authentication".into());
        }
        for job in crate::schedule::JobName::ALL {
            let (what, when) = match self.jobs.schedules.get(job.as_str()) {
                Some(when) => (format!("jobs.schedules.{}", job.as_str()), when.as_str()),
                None => (format!("the default schedule of job {}", job.as_str()), job.schedule()),
            };
            if let Err(e) = crate::schedule::parse_cron(when) {
                problems.push(format!(
                    "{what} {when:?} is not a cron expression with seconds ({e}); for example \"0 5 * * * *\" (second minute hour day month weekday)"
                ));
            }
        }
        check_redis_tls(&self.redis, &mut problems);
        if self.target.bucket_timezone.parse::<Tz>().is_err() {
            problems
                .push(format!("target.bucket_timezone {:?} is not an IANA time zone (for example \"UTC\" or \"Europe/Berlin\")", self.target.bucket_timezone));
        }
        for (what, name) in [
            ("legacy.hourly_table", &self.legacy.hourly_table),
            ("legacy.asset_table", &self.legacy.asset_table),
            ("legacy.popular_function", &self.legacy.popular_function),
        ] {
            if !is_sql_identifier(name) {
                problems.push(format!("{what} {name:?} must be a plain SQL name (letters, digits, _; optionally schema.name)"));
            }
        }
        for (what, key) in [
            ("redis.events_key", &self.redis.events_key),
            ("redis.event_counters_key", &self.redis.event_counters_key),
            ("redis.category_counters_key", &self.redis.category_counters_key),
            ("redis.sessions_key", &self.redis.sessions_key),
            ("redis.outbox_stream", &self.redis.outbox_stream),
            ("redis.outbox_group", &self.redis.outbox_group),
            ("redis.flush_retired_key", &self.redis.flush_retired_key),
            ("redis.first_seen_key", &self.redis.first_seen_key),
        ] {
            if key.is_empty() {
                problems.push(format!("{what} must not be empty"));
            }
        }
        if self.redis.event_cap == 0 {
            problems.push("redis.event_cap must be at least 1".into());
        }
        if !(1..=MAX_RELAY_BLOCK_MS).contains(&self.redis.relay_block_ms) {
            problems.push(format!("redis.relay_block_ms must be between 1 and {MAX_RELAY_BLOCK_MS} (it bounds how late the relay notices shutdown)"));
        }
        if self.redis.relay_linger_ms > MAX_RELAY_LINGER_MS {
            problems.push(format!("redis.relay_linger_ms must be at most {MAX_RELAY_LINGER_MS} (events wait this long before the relay reads them)"));
        }
        if self.ingest.max_batch == 0 {
            problems.push("ingest.max_batch must be at least 1".into());
        }
        if self.migration.backfill_page_size == 0 {
            problems.push("migration.backfill_page_size must be at least 1".into());
        }
        let t = &self.target;
        if t.raw_retention_days < 2 {
            problems.push("target.raw_retention_days must be at least 2".into());
        }
        if t.columnstore_after_days >= t.raw_retention_days {
            problems.push("target.columnstore_after_days must be shorter than raw_retention_days".into());
        }
        if t.hourly_retention_days < t.raw_retention_days || t.daily_retention_days < t.hourly_retention_days {
            problems.push("retention must not shrink upwards: raw <= hourly <= daily".into());
        }
        for (what, value) in [
            ("redis.connect_timeout_ms", self.redis.connect_timeout_ms),
            ("redis.response_timeout_ms", self.redis.response_timeout_ms),
            ("database.connect_timeout_secs", self.database.connect_timeout_secs),
            ("ingest.max_event_bytes", self.ingest.max_event_bytes as u64),
            ("ingest.max_body_bytes", self.ingest.max_body_bytes as u64),
            ("http.read_timeout_secs", self.http.read_timeout_secs),
            ("http.request_timeout_secs", self.http.request_timeout_secs),
            ("migration.dual_write_check_secs", self.migration.dual_write_check_secs),
            ("jobs.lease_retry_secs", self.jobs.lease_retry_secs),
        ] {
            if value == 0 {
                problems.push(format!("{what} must be at least 1"));
            }
        }
        if let Some(v) = &self.redis.wait_replicas_invalid_env {
            problems.push(format!("TSMIGRATE_REDIS_WAIT_REPLICAS {v:?} must be a whole number of replicas (0 = do not wait)"));
        }
        if self.redis.wait_replicas > 0 && self.redis.wait_timeout_ms == 0 {
            problems.push("redis.wait_timeout_ms must be at least 1 when redis.wait_replicas is set (0 would wait forever)".into());
        }
        if self.redis.wait_replicas > 0 && self.redis.wait_timeout_ms >= self.redis.response_timeout_ms {
            problems.push("redis.wait_timeout_ms must be shorter than redis.response_timeout_ms (the whole ingest write has that deadline)".into());
        }
        if let Some(v) = &self.log.invalid_env {
            problems.push(format!("TSMIGRATE_LOG_FORMAT {v:?} must be text or json"));
        }
        for job in self.jobs.schedules.keys() {
            if !crate::schedule::JobName::ALL.iter().any(|j| j.as_str() == job) {
                let known: Vec<&str> = crate::schedule::JobName::ALL.iter().map(|j| j.as_str()).collect();
                problems.push(format!("jobs.schedules names no job {job:?}; the jobs are {}", known.join(", ")));
            }
        }
        let a = &self.assess;
        for (what, value) in [
            ("assess.baseline_events_per_day", a.baseline_events_per_day),
            ("assess.migrate_above_events_per_day", a.migrate_above_events_per_day),
            ("assess.timescaledb_growth", u64::from(a.timescaledb_growth)),
            ("assess.other_engine_growth", u64::from(a.other_engine_growth)),
            ("assess.slow_query_ms", a.slow_query_ms),
            ("assess.redis_memory_bytes", a.redis_memory_bytes),
            ("assess.horizon_days", u64::from(a.horizon_days)),
            ("assess.outage_minutes", u64::from(a.outage_minutes)),
            ("assess.sample_events", a.sample_events as u64),
            ("assess.max_read_events", a.max_read_events as u64),
            ("assess.query_runs", u64::from(a.query_runs)),
        ] {
            if value == 0 {
                problems.push(format!("{what} must be at least 1"));
            }
        }
        if a.other_engine_growth < a.timescaledb_growth {
            problems.push("assess.other_engine_growth must not be smaller than assess.timescaledb_growth".into());
        }
        if self.http.bind.parse::<std::net::SocketAddr>().is_err() {
            problems.push(format!("http.bind {:?} must be host:port, like 127.0.0.1:8080", self.http.bind));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// The relay notices shutdown between reads, so its read wait is kept to a minute at most.
pub const MAX_RELAY_BLOCK_MS: u64 = 60_000;
pub const MAX_RELAY_LINGER_MS: u64 = 10_000;

fn check_url(what: &str, url: &SecretUrl, schemes: &[&str], problems: &mut Vec<String>) {
    let parsed = match url::Url::parse(url.expose()) {
        Ok(parsed) if schemes.contains(&parsed.scheme()) => parsed,
        Ok(parsed) => return problems.push(format!("{what} has scheme {:?}; expected one of {}", parsed.scheme(), schemes.join(", "))),
        Err(e) => return problems.push(format!("{what} is not a valid URL ({e}): {}", url.redacted())),
    };
    let scheme = parsed.scheme();
    let socket = matches!(scheme, "unix" | "redis+unix");
    let example = match scheme {
        "postgres" | "postgresql" => format!("{scheme}://user:password@host:5432/database"),
        "unix" | "redis+unix" => format!("{scheme}:///path/to/redis.sock"),
        _ => format!("{scheme}://:password@host:6379"),
    };
    // A socket directory may stand in for the host (`postgres:///db?host=/run/postgresql`).
    let host_param = parsed.query_pairs().any(|(k, v)| k == "host" && !v.is_empty());
    let has_host = parsed.host_str().is_some_and(|h| !h.is_empty()) || host_param;
    if !url.has_authority() || (!socket && !has_host) {
        // Without a host, drivers fall back to a local default server and read the rest as a
        // database name: the typo would connect somewhere else.
        problems.push(format!("{what} has no host (shown as {}): write it as {example}", url.redacted()));
    } else if socket && parsed.path().trim_matches('/').is_empty() {
        problems.push(format!("{what} names no socket path: write it as {example}"));
    }
}

/// A TOML error quotes the line it is about; the value of a setting that may be secret (a
/// URL, a token, a password) is hidden there, and so is the password of any URL.
fn scrub_toml_error(message: &str) -> String {
    message
        .lines()
        .map(|line| {
            // The quoted source lines look like `12 | url = "postgres://…"`.
            let quoted = line.split_once('|').filter(|(number, _)| !number.trim().is_empty() && number.trim().chars().all(|c| c.is_ascii_digit()));
            let line = match quoted {
                Some((number, source)) => match source.split_once('=') {
                    Some((key, _)) if is_secret_key(key) => format!("{number}|{key}= <hidden: the value may be a secret>"),
                    _ => line.to_string(),
                },
                None => line.to_string(),
            };
            hide_url_passwords(&line)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_secret_key(key: &str) -> bool {
    let key = key.trim().trim_matches('"').trim_matches('\'').to_ascii_lowercase();
    key.ends_with("url") || ["token", "password", "secret"].iter().any(|s| key.contains(s))
}

/// `scheme://user:password@` → `scheme://user:***@` anywhere in `text`.
fn hide_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let end = after.find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '/').unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@').and_then(|a| authority[..a].find(':').map(|c| (c, a))) {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The PostgreSQL TLS options of `url`: a known `sslmode` and an `sslrootcert` that exists,
/// from the URL or, where it sets none, from `PGSSLMODE` / `PGSSLROOTCERT`.
fn check_pg_tls(what: &str, url: &SecretUrl, env: &PgTlsEnv, problems: &mut Vec<String>) {
    let Ok(parsed) = url::Url::parse(url.expose()) else { return };
    let sets = |keys: &[&str]| parsed.query_pairs().any(|(key, _)| keys.contains(&key.as_ref()));
    if let Some(mode) = env.sslmode.as_deref().filter(|_| !sets(&["sslmode", "ssl-mode"])) {
        if !PG_SSL_MODES.contains(&mode) {
            problems.push(format!("PGSSLMODE={mode:?} (used because {what} sets no sslmode) is not one of {}", PG_SSL_MODES.join(", ")));
        }
    }
    if let Some(root) = env.sslrootcert.as_deref().filter(|_| !sets(&["sslrootcert", "ssl-root-cert", "ssl-ca"])) {
        check_file(&format!("PGSSLROOTCERT (used because {what} sets no sslrootcert)"), root, Path::new(root), problems);
    }
    for (key, value) in parsed.query_pairs() {
        match key.as_ref() {
            "sslmode" | "ssl-mode" if !PG_SSL_MODES.contains(&value.as_ref()) => {
                problems.push(format!("{what} has sslmode={value:?}; expected one of {}", PG_SSL_MODES.join(", ")))
            }
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" | "sslcert" | "ssl-cert" | "sslkey" | "ssl-key" => {
                check_file(what, &format!("{key}={value}"), Path::new(value.as_ref()), problems)
            }
            _ => {}
        }
    }
}

/// What sqlx accepts (`allow` behaves like `disable` there).
const PG_SSL_MODES: &[&str] = &["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/// One URL, or a cluster's seed nodes separated by commas (TCP only: a cluster names its
/// nodes by address, all with the same scheme).
fn check_redis_urls(redis: &RedisSettings, problems: &mut Vec<String>) {
    let seeds = redis.seed_urls();
    if seeds.len() <= 1 {
        let url = seeds.first().map(|u| SecretUrl::new(u.as_str())).unwrap_or_else(|| redis.url.clone());
        return check_url("redis.url (REDIS_URL)", &url, &["redis", "rediss", "redis+unix", "unix"], problems);
    }
    let before = problems.len();
    for (i, seed) in seeds.iter().enumerate() {
        check_url(&format!("seed node {} of redis.url (REDIS_URL)", i + 1), &SecretUrl::new(seed.as_str()), &["redis", "rediss"], problems);
    }
    let schemes: std::collections::BTreeSet<_> = seeds.iter().filter_map(|u| url::Url::parse(u).ok()).map(|u| u.scheme().to_string()).collect();
    if problems.len() == before && schemes.len() > 1 {
        problems.push("redis.url (REDIS_URL) lists cluster seed nodes with different schemes: use redis:// for all of them, or rediss:// for all".into());
    }
}

fn check_redis_tls(redis: &RedisSettings, problems: &mut Vec<String>) {
    let tls_url = redis.seed_urls().first().and_then(|u| url::Url::parse(u).ok()).is_some_and(|u| u.scheme() == "rediss");
    if let Some(path) = &redis.tls_ca_file {
        check_file("redis.tls_ca_file (TSMIGRATE_REDIS_TLS_CA_FILE)", &path.display().to_string(), path, problems);
        if !tls_url {
            problems.push("redis.tls_ca_file is set but redis.url (REDIS_URL) is not a rediss:// URL: use rediss:// for TLS, or unset the CA file".into());
        }
        if redis.tls_insecure {
            problems
                .push("redis.tls_ca_file and redis.tls_insecure are both set: keep the CA file to verify the server, or drop it to skip verification".into());
        }
    }
    if redis.tls_insecure && !tls_url {
        problems.push("redis.tls_insecure is set but redis.url (REDIS_URL) is not a rediss:// URL: use rediss:// for TLS, or unset tls_insecure".into());
    }
}

/// A certificate or key file named in the settings must be a readable file now, not at first connect.
fn check_file(what: &str, shown: &str, path: &Path, problems: &mut Vec<String>) {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => problems.push(format!("{what}: {shown} is not a file; give the path of a PEM file")),
        Err(e) => problems.push(format!("{what}: cannot read {shown} ({e}); give the path of an existing PEM file")),
    }
}

/// `name` or `schema.name`, each part a plain identifier, so it can be spliced into SQL safely.
pub fn is_sql_identifier(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            let mut chars = part.chars();
            matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && part.len() <= 63
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_everywhere_it_is_shown() {
        let url = SecretUrl::new("postgres://app:hunter2@db.example:5432/analytics");
        assert_eq!(url.redacted(), "postgres://app:***@db.example:5432/analytics");
        assert!(!format!("{url:?} {url}").contains("hunter2"));
        let settings = Settings { database: DatabaseSettings { url, ..Default::default() }, ..Default::default() };
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn env_overrides_file_values() {
        let mut s = Settings::from_toml("[redis]\nevents_key = \"evts\"\nevent_cap = 10\n").unwrap();
        s.apply_env(|name| match name {
            "DATABASE_URL" => Some("postgres://x@h/db".into()),
            "REDIS_URL" => Some("redis://h:1".into()),
            _ => None,
        });
        assert_eq!(s.database.url.expose(), "postgres://x@h/db");
        assert_eq!(s.database.legacy_url().expose(), "postgres://x@h/db");
        assert_eq!(s.redis.events_key, "evts");
        assert_eq!(s.redis.event_cap, 10);
    }

    #[test]
    fn env_wins_over_the_same_key_in_the_file() {
        let file = r#"
            [database]
            url = "postgres://file@file-host/file_db"
            legacy_url = "postgres://file@file-host/legacy_db"
            [redis]
            url = "redis://file-host:1"
            key_prefix = "file:"
            [http]
            api_token = "file-token"
            bind = "127.0.0.1:1111"
        "#;
        let mut s = Settings::from_toml(file).unwrap();
        s.apply_env(|name| {
            let value = match name {
                "DATABASE_URL" => "postgres://env@env-host/env_db",
                "LEGACY_DATABASE_URL" => "postgres://env@env-host/env_legacy",
                "REDIS_URL" => "redis://env-host:2",
                "TSMIGRATE_REDIS_PREFIX" => "env:",
                "TSMIGRATE_API_TOKEN" => "env-token",
                "TSMIGRATE_BIND" => "127.0.0.1:2222",
                _ => return None,
            };
            Some(value.to_string())
        });
        assert_eq!(s.database.url.expose(), "postgres://env@env-host/env_db");
        assert_eq!(s.database.legacy_url().expose(), "postgres://env@env-host/env_legacy");
        assert_eq!(s.redis.url.expose(), "redis://env-host:2");
        assert_eq!(s.redis.key_prefix, "env:");
        assert_eq!(s.http.api_token.as_ref().map(SecretToken::expose), Some("env-token"));
        assert_eq!(s.http.bind, "127.0.0.1:2222");

        // An empty token variable does not switch authentication off: it is refused.
        let mut s = Settings::from_toml(file).unwrap();
        s.apply_env(|name| (name == "TSMIGRATE_API_TOKEN").then(String::new));
        assert_eq!(s.http.api_token.as_ref().map(SecretToken::expose), Some("file-token"));
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("TSMIGRATE_API_TOKEN is set but empty") && err.contains("unset it"), "{err}");
    }

    #[test]
    fn the_read_replica_is_optional_checked_and_its_lag_limit_takes_a_duration() {
        let s = Settings::default();
        assert!(s.database.read_url.is_none());
        assert_eq!(s.database.read_max_lag_secs, 30);
        let mut s = Settings::from_toml("[database]\nread_url = \"postgres://r:pw@standby:5432/db\"\nread_max_lag_secs = \"2m\"\n").unwrap();
        assert_eq!(s.database.read_max_lag_secs, 120);
        assert_eq!(s.database.read_url.as_ref().map(SecretUrl::redacted).as_deref(), Some("postgres://r:***@standby:5432/db"));
        s.validate().unwrap();
        s.apply_env(|name| (name == "DATABASE_READ_URL").then(|| "redis://r:Pw7secret@standby/db".to_string()));
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("database.read_url (DATABASE_READ_URL) has scheme \"redis\""), "{err}");
        assert!(!err.contains("Pw7secret"), "{err}");
        s.apply_env(|name| (name == "DATABASE_READ_URL").then(String::new));
        assert!(s.database.read_url.is_none(), "an empty variable means no standby");
    }

    #[test]
    fn validate_lists_every_problem() {
        let mut s = Settings::default();
        s.database.url = SecretUrl::new("mysql://u:secret@h/db");
        s.target.bucket_timezone = "Mars/Olympus".into();
        s.legacy.hourly_table = "events; drop table x".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("scheme \"mysql\""), "{err}");
        assert!(err.contains("Mars/Olympus"), "{err}");
        assert!(err.contains("legacy.hourly_table"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn tls_settings_are_checked_before_any_connection() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let mut s = Settings::default();
        s.redis.url = SecretUrl::new("rediss://:pw@cache.example:6380");
        s.redis.tls_ca_file = Some(ca.clone());
        s.database.url = SecretUrl::new(format!("postgres://u@db.example/x?sslmode=verify-full&sslrootcert={}", ca.display()));
        s.validate().unwrap();

        s.redis.tls_ca_file = Some(dir.path().join("missing.pem"));
        s.database.url = SecretUrl::new("postgres://u@db.example/x?sslmode=verify-everything&sslrootcert=/nonexistent/ca.pem");
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("redis.tls_ca_file") && err.contains("missing.pem") && err.contains("existing PEM file"), "{err}");
        assert!(err.contains("sslmode=\"verify-everything\"") && err.contains("verify-full"), "{err}");
        assert!(err.contains("sslrootcert=/nonexistent/ca.pem"), "{err}");

        s = Settings::default();
        s.redis.tls_ca_file = Some(ca);
        s.redis.tls_insecure = true;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("not a rediss:// URL"), "{err}");
        assert!(err.contains("both set"), "{err}");
    }

    #[test]
    fn pgsslmode_and_pgsslrootcert_are_checked_where_the_url_sets_neither() {
        let mut s = Settings::default();
        s.apply_env(|name| match name {
            "PGSSLMODE" => Some("verify-ful".into()),
            "PGSSLROOTCERT" => Some("/nonexistent/ca.pem".into()),
            _ => None,
        });
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("PGSSLMODE=\"verify-ful\"") && err.contains("verify-full"), "{err}");
        assert!(err.contains("PGSSLROOTCERT") && err.contains("/nonexistent/ca.pem"), "{err}");
        // Where the URL sets both, the variables are not used, so not checked.
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not checked beyond existing").unwrap();
        s.database.url = SecretUrl::new(format!("postgres://u@db.example/x?sslmode=require&sslrootcert={}", ca.display()));
        s.validate().unwrap();
    }

    #[test]
    fn cluster_seed_lists_and_wait_replicas_are_checked() {
        let mut s = Settings::default();
        s.redis.url = SecretUrl::new("redis://:pw@h1:7000, redis://:pw@h2:7000");
        assert_eq!(s.redis.seed_urls(), vec!["redis://:pw@h1:7000", "redis://:pw@h2:7000"]);
        assert!(s.validate().is_ok(), "{:?}", s.validate());
        assert_eq!(s.redis.url.redacted(), "redis://:***@h1:7000,redis://:***@h2:7000");
        assert_eq!(s.redis.url.scrub("failed: pw"), "failed: ***");
        s.redis.url = SecretUrl::new("redis://h1:7000,rediss://h2:7000");
        assert!(format!("{:?}", s.validate()).contains("different schemes"));
        s.redis.url = SecretUrl::new("redis://h1:7000,redis:/h2:7000");
        assert!(format!("{:?}", s.validate()).contains("seed node 2"));
        let mut s = Settings::default();
        s.apply_env(|n| (n == "TSMIGRATE_REDIS_WAIT_REPLICAS").then(|| "two".to_string()));
        assert!(format!("{:?}", s.validate()).contains("TSMIGRATE_REDIS_WAIT_REPLICAS"));
        let mut s = Settings::default();
        s.apply_env(|n| (n == "TSMIGRATE_REDIS_WAIT_REPLICAS").then(|| "1".to_string()));
        assert_eq!(s.redis.wait_replicas, 1);
        assert!(s.validate().is_ok());
        s.redis.wait_timeout_ms = s.redis.response_timeout_ms;
        assert!(format!("{:?}", s.validate()).contains("wait_timeout_ms"));
    }

    #[test]
    fn redis_tls_settings_come_from_the_environment_too() {
        let mut s = Settings::from_toml("[redis]\nurl = \"rediss://h:6380\"\ntls_insecure = true\n").unwrap();
        assert!(s.redis.tls_insecure);
        s.apply_env(|name| match name {
            "TSMIGRATE_REDIS_TLS_CA_FILE" => Some("/etc/ca.pem".into()),
            "TSMIGRATE_REDIS_TLS_INSECURE" => Some("false".into()),
            _ => None,
        });
        assert_eq!(s.redis.tls_ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert!(!s.redis.tls_insecure);
        s.apply_env(|name| (name == "TSMIGRATE_REDIS_TLS_INSECURE").then(|| "1".into()));
        assert!(s.redis.tls_insecure);
    }

    #[test]
    fn a_url_without_a_host_is_refused_and_its_password_never_shown() {
        for (variable, typo) in [
            ("DATABASE_URL", "postgres:/root:PW-1@db.example/analytics"),
            ("LEGACY_DATABASE_URL", "postgresql:root:PW-1@db.example/legacy"),
            ("REDIS_URL", "redis:/:PW-1@cache.example:6379"),
        ] {
            let mut s = Settings::default();
            s.apply_env(|name| (name == variable).then(|| typo.to_string()));
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("({variable}) has no host")) && err.contains("://"), "{err}");
            assert!(!err.contains("PW-1") && !err.contains("root"), "{err}");
            let url = SecretUrl::new(typo);
            assert!(!url.redacted().contains("PW-1"), "{}", url.redacted());
            assert_eq!(url.scrub(&format!("database \"{typo}\" does not exist")), "database \"***\" does not exist");
        }
        // A socket directory in place of the host is a host.
        let mut s = Settings::default();
        s.database.url = SecretUrl::new("postgres:///analytics?host=/var/run/postgresql");
        s.validate().unwrap();
        // A password given as a parameter is hidden like one in the authority.
        let url = SecretUrl::new("postgres://app@db.example/x?password=p%40ss&sslmode=require");
        assert!(!url.redacted().contains("p%40ss") && url.redacted().contains("sslmode=require"), "{}", url.redacted());
        assert_eq!(url.scrub("rejected p@ss and p%40ss"), "rejected *** and ***");
        let url = SecretUrl::new("postgres://app:p%40ss@db.example/x");
        assert_eq!(url.scrub("password p@ss"), "password ***");
    }

    #[test]
    fn a_config_file_error_does_not_quote_secrets() {
        let text = "[database]\nurl = \"postgres://user:PW-2@db.example/x\nmax_connections = 2\n";
        let err = Settings::from_toml(text).unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains("PW-2"), "{err}");
        let text = "[http]\napi_token = 12x\n";
        let err = Settings::from_toml(text).unwrap_err();
        assert!(!err.contains("12x"), "{err}");
        // Lines without secrets are still quoted.
        let err = Settings::from_toml("[redis]\nevent_cap = \"many\"\n").unwrap_err();
        assert!(err.contains("event_cap"), "{err}");
        assert_eq!(hide_url_passwords("at redis://:pw@h:1 and postgres://u:p@h/db"), "at redis://:***@h:1 and postgres://u:***@h/db");
    }

    #[test]
    fn zero_connections_an_invalid_cron_and_an_empty_token_are_refused_up_front() {
        Settings::default().validate().expect("every default, every default schedule included, is valid");
        let mut s = Settings::from_toml("[database]\nmax_connections = 0\n[jobs.schedules]\nvalidation = \"every hour\"\n[http]\napi_token = \"\"\n").unwrap();
        s.ingest.max_body_bytes = 0;
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("database.max_connections must be at least 1"), "{err}");
        assert!(err.contains("jobs.schedules.validation \"every hour\" is not a cron expression"), "{err}");
        assert!(err.contains("http.api_token is empty"), "{err}");
        assert!(err.contains("ingest.max_body_bytes must be at least 1"), "{err}");
        // Five fields (no seconds) is the classic mistake.
        let s = Settings::from_toml("[jobs.schedules]\nlegacy_flush = \"5 * * * *\"\n").unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("jobs.schedules.legacy_flush"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(Settings::from_toml("[redis]\nevents_kee = \"x\"\n").unwrap_err().contains("events_kee"));
    }

    #[test]
    fn a_schedule_for_a_job_that_does_not_exist_is_refused_by_name() {
        let s = Settings::from_toml("[jobs.schedules]\nlegacy_flush = \"0 5 * * * *\"\nlegacy_flsh = \"0 5 * * * *\"\n").unwrap();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("jobs.schedules names no job \"legacy_flsh\"") && err.contains("legacy_flush, validation"), "{err}");
        assert!(!err.contains("\"legacy_flush\""), "{err}");
    }

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../tsmigrate.example.toml");
        let s = Settings::from_toml(text).unwrap();
        s.validate().unwrap();
    }

    /// The README promises the example lists every setting with its default.
    #[test]
    fn example_config_lists_every_setting_with_its_default() {
        let text = include_str!("../tsmigrate.example.toml");
        let example = serde_json::to_value(Settings::from_toml(text).unwrap()).unwrap();
        assert_eq!(example, serde_json::to_value(Settings::default()).unwrap(), "a value in the example differs from the default");
        // Settings without a default (null) may only appear commented out: `# key =`.
        let written: toml::Table = toml::from_str(text).unwrap();
        let serde_json::Value::Object(sections) = serde_json::to_value(Settings::default()).unwrap() else { unreachable!() };
        for (section, keys) in sections {
            let serde_json::Value::Object(keys) = keys else { unreachable!() };
            for (key, default) in keys {
                let listed = written.get(&section).and_then(|t| t.get(&key)).is_some();
                let commented = text.contains(&format!("# {key} ="));
                assert!(listed || (default.is_null() && commented), "[{section}] {key} is missing from tsmigrate.example.toml");
            }
        }
    }
}
