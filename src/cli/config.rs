//! `tsmigrate config show` and `tsmigrate config check`: the settings in force and where each
//! came from (built-in default, the settings file, an environment variable, the command
//! line), secrets redacted; and whether they are usable, without connecting or, with
//! `--connect`, by connecting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::config::{self, ConfigError, SecretUrl, Settings};

use super::output::ErrorBody;
use super::Reply;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The settings in force, each with where it came from (default, file, environment
    /// variable, command line). Passwords and tokens show as ***.
    Show,
    /// Check the settings file and the environment without connecting: exit 0 when usable,
    /// 2 with every problem and the setting to fix. --connect also connects to the target,
    /// the legacy database, the read replica (when set) and Redis.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Also connect to the target, the legacy database, the read replica (when set) and Redis
    /// (each with its deadline).
    #[arg(long)]
    pub connect: bool,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Show => "config show",
            Command::Check(_) => "config check",
        }
    }
}

/// The environment variables that override a setting, and the setting (`Settings::apply_env`
/// reads exactly these: checked by a unit test below).
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("LEGACY_DATABASE_URL", "database.legacy_url"),
    ("DATABASE_READ_URL", "database.read_url"),
    ("PGSSLMODE", "database.tls_env.sslmode"),
    ("PGSSLROOTCERT", "database.tls_env.sslrootcert"),
    ("REDIS_URL", "redis.url"),
    ("TSMIGRATE_REDIS_PREFIX", "redis.key_prefix"),
    ("TSMIGRATE_REDIS_TLS_CA_FILE", "redis.tls_ca_file"),
    ("TSMIGRATE_REDIS_TLS_INSECURE", "redis.tls_insecure"),
    ("TSMIGRATE_REDIS_WAIT_REPLICAS", "redis.wait_replicas"),
    ("TSMIGRATE_API_TOKEN", "http.api_token"),
    ("TSMIGRATE_BIND", "http.bind"),
    ("TSMIGRATE_LOG_FORMAT", "log.format"),
];

/// Settings whose values are secrets whatever they look like.
const SECRET_KEYS: &[&str] = &["http.api_token"];

/// The settings file in use and what chose it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileChoice {
    pub path: Option<PathBuf>,
    /// `--config`, `TSMIGRATE_CONFIG`, `./tsmigrate.toml`, or `none`.
    pub chosen_by: &'static str,
}

/// Which file `Settings::load` reads, and why (the same order).
pub fn file_choice(explicit: Option<&Path>, env: Option<PathBuf>) -> FileChoice {
    match (explicit, env) {
        (Some(path), _) => FileChoice { path: Some(path.to_path_buf()), chosen_by: "--config" },
        (None, Some(path)) => FileChoice { path: Some(path), chosen_by: config::CONFIG_ENV },
        (None, None) => match PathBuf::from(config::DEFAULT_CONFIG_FILE) {
            path if path.exists() => FileChoice { path: Some(path), chosen_by: "./tsmigrate.toml" },
            _ => FileChoice { path: None, chosen_by: "none" },
        },
    }
}

/// One setting in force.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Shown {
    pub key: String,
    /// Secrets redacted.
    pub value: Value,
    /// `default`, `file`, `env`, or `command line`.
    pub source: &'static str,
    /// The environment variable or flag, for `env` and `command line`.
    pub from: Option<String>,
}

#[derive(Debug, Serialize)]
struct ShowDetails {
    file: FileChoice,
    settings: Vec<Shown>,
}

#[derive(Debug, Serialize)]
struct CheckDetails {
    file: FileChoice,
    valid: bool,
    problems: Vec<String>,
    /// With `--connect`: each server and what happened; empty without it.
    connections: Vec<Reached>,
}

#[derive(Debug, Serialize)]
struct Reached {
    what: &'static str,
    url: String,
    ok: bool,
    error: Option<String>,
}

/// Runs a `config` command. `settings` is the result of `Settings::load`, not yet validated:
/// showing and checking bad settings is the point.
pub async fn run(command: Command, explicit: Option<&Path>, settings: Result<Settings, ConfigError>, log_format_flag: bool) -> anyhow::Result<Reply> {
    let file = file_choice(explicit, std::env::var_os(config::CONFIG_ENV).map(PathBuf::from));
    match command {
        Command::Show => {
            let settings = settings?;
            let file_keys = match &file.path {
                Some(path) => file_keys(&std::fs::read_to_string(path)?),
                None => Default::default(),
            };
            let env: BTreeMap<&str, String> = ENV_OVERRIDES.iter().filter_map(|(name, _)| std::env::var(name).ok().map(|v| (*name, v))).collect();
            let shown = provenance(&settings, &file_keys, &env, log_format_flag);
            let text = show_text(&file, &shown);
            Ok(Reply::done(ShowDetails { file, settings: shown }, text))
        }
        Command::Check(args) => {
            let (problems, settings) = match settings {
                Err(e) => (vec![e.to_string()], None),
                Ok(s) => match s.validate() {
                    Err(ConfigError::Invalid(problems)) => (problems, Some(s)),
                    Err(e) => (vec![e.to_string()], Some(s)),
                    Ok(()) => (vec![], Some(s)),
                },
            };
            let connections = match (&settings, args.connect && problems.is_empty()) {
                (Some(s), true) => connect_all(s).await,
                _ => vec![],
            };
            let unreachable: Vec<&Reached> = connections.iter().filter(|c| !c.ok).collect();
            let text = check_text(&file, &problems, &connections, args.connect);
            let error = if !problems.is_empty() {
                Some(ErrorBody::new(
                    format!("the settings are not usable: {}", problems.join("; ")),
                    Some(format!("fix the settings named above ({}), then run tsmigrate config check again", where_settings_live(&file))),
                ))
            } else {
                unreachable.first().map(|c| {
                    let (message, hint) = crate::state::split_hint(c.error.as_deref().unwrap_or("unreachable"));
                    ErrorBody::new(format!("{} is unreachable: {message}", c.what), hint)
                })
            };
            let details = CheckDetails { file, valid: problems.is_empty(), problems, connections };
            let reply = Reply::done(&details, text);
            Ok(match error {
                Some(error) => reply.failing(crate::exit::ERROR, error),
                None => reply,
            })
        }
    }
}

fn where_settings_live(file: &FileChoice) -> String {
    match &file.path {
        Some(path) => format!("in {} or the environment", path.display()),
        None => "in the environment, or in a settings file given with --config".into(),
    }
}

async fn connect_all(settings: &Settings) -> Vec<Reached> {
    let pg = |what, url: &SecretUrl, error: Option<String>| Reached { what, url: url.redacted(), ok: error.is_none(), error };
    let mut reached = vec![pg("the target database", &settings.database.url, try_pool(crate::db::target_pool(settings).await).await)];
    if settings.database.legacy_url.is_some() {
        reached.push(pg("the legacy database", settings.database.legacy_url(), try_pool(crate::db::legacy_pool(settings).await).await));
    }
    if let Some(url) = &settings.database.read_url {
        reached.push(pg(
            "the read replica",
            url,
            try_pool(crate::connect::pg_pool(url, crate::connect::PgLimits::from_settings(&settings.database)).await).await,
        ));
    }
    let redis = match crate::db::redis(settings).await {
        Ok(mut conn) => redis::cmd("PING").query_async::<String>(&mut conn).await.map(|_| ()).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    reached.push(Reached { what: "Redis", url: settings.redis.url.redacted(), ok: redis.is_ok(), error: redis.err() });
    reached
}

/// The error of a pool that could not be opened; an opened one is closed again.
async fn try_pool(pool: Result<sqlx::PgPool, crate::connect::ConnectError>) -> Option<String> {
    match pool {
        Ok(pool) => {
            pool.close().await;
            None
        }
        Err(e) => Some(e.to_string()),
    }
}

/// Every leaf of a TOML document as a dotted key (`redis.event_cap`).
pub fn file_keys(text: &str) -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    if let Ok(value) = text.parse::<toml::Table>() {
        flatten_toml("", &toml::Value::Table(value), &mut keys);
    }
    keys
}

fn flatten_toml(prefix: &str, value: &toml::Value, keys: &mut std::collections::BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                flatten_toml(&join(prefix, k), v, keys);
            }
        }
        _ => {
            keys.insert(prefix.to_string());
        }
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Every setting in force with its source: the command line (`--log-format`) over the
/// environment over the file over the default. Pure.
pub fn provenance(settings: &Settings, file_keys: &std::collections::BTreeSet<String>, env: &BTreeMap<&str, String>, log_format_flag: bool) -> Vec<Shown> {
    let mut leaves = BTreeMap::new();
    flatten_json("", &serde_json::to_value(settings).unwrap_or(Value::Null), &mut leaves);
    // Only the environment sets libpq's TLS variables (no file setting), so the serialized
    // settings leave them out.
    let tls = &settings.database.tls_env;
    for (key, value) in [("database.tls_env.sslmode", &tls.sslmode), ("database.tls_env.sslrootcert", &tls.sslrootcert)] {
        leaves.insert(key.to_string(), value.clone().map_or(Value::Null, Value::from));
    }
    leaves
        .into_iter()
        .map(|(key, value)| {
            let env_name = ENV_OVERRIDES.iter().find(|(name, k)| *k == key && env.contains_key(name)).map(|(name, _)| name.to_string());
            // A file key may name a table whose leaves are the settings (jobs.schedules.x).
            let in_file = file_keys.iter().any(|k| *k == key || key.starts_with(&format!("{k}.")));
            let (source, from) = match () {
                _ if key == "log.format" && log_format_flag => ("command line", Some("--log-format".to_string())),
                _ if env_name.is_some() => ("env", env_name),
                _ if in_file => ("file", None),
                _ => ("default", None),
            };
            Shown { value: redact(&key, value), key, source, from }
        })
        .collect()
}

fn flatten_json(prefix: &str, value: &Value, leaves: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten_json(&join(prefix, k), v, leaves);
            }
        }
        // An empty table (no job schedule overridden) is not a setting of its own.
        Value::Object(_) => {}
        other => {
            leaves.insert(prefix.to_string(), other.clone());
        }
    }
}

/// A secret setting as `***`, a URL with its password as `***`; anything else as it is.
pub fn redact(key: &str, value: Value) -> Value {
    match value {
        Value::String(_) if SECRET_KEYS.contains(&key) => Value::String("***".into()),
        Value::String(s) if s.contains("://") => Value::String(SecretUrl::new(s).redacted()),
        other => other,
    }
}

fn show_text(file: &FileChoice, shown: &[Shown]) -> String {
    let mut o = match &file.path {
        Some(path) => format!("settings file: {} (chosen by {})\n", path.display(), file.chosen_by),
        None => "settings file: none (no --config, no TSMIGRATE_CONFIG, no ./tsmigrate.toml): built-in defaults and the environment\n".to_string(),
    };
    let width = shown.iter().map(|s| s.key.len()).max().unwrap_or(0);
    for s in shown {
        let value = match &s.value {
            // An unset legacy database is the target's (DatabaseSettings::legacy_url).
            Value::Null if s.key == "database.legacy_url" => "(unset: the target database)".to_string(),
            Value::Null if s.key == "database.read_url" => "(unset: reads go to the target)".to_string(),
            Value::Null => "(unset)".to_string(),
            Value::String(v) => format!("{v:?}"),
            other => other.to_string(),
        };
        let source = match &s.from {
            Some(from) => format!("{} {from}", s.source),
            None => s.source.to_string(),
        };
        o.push_str(&format!("{:<width$}  {value}  [{source}]\n", s.key));
    }
    o
}

fn check_text(file: &FileChoice, problems: &[String], connections: &[Reached], connect: bool) -> String {
    let mut o = match &file.path {
        Some(path) => format!("settings file: {} (chosen by {})\n", path.display(), file.chosen_by),
        None => "settings file: none (built-in defaults and the environment)\n".to_string(),
    };
    if problems.is_empty() {
        o.push_str("settings: ok\n");
    } else {
        o.push_str(&format!("settings: {} problem(s)\n", problems.len()));
        for p in problems {
            o.push_str(&format!("  - {p}\n"));
        }
    }
    for c in connections {
        match &c.error {
            None => o.push_str(&format!("{}: reachable at {}\n", c.what, c.url)),
            Some(e) => o.push_str(&format!("{}: UNREACHABLE at {}: {}\n", c.what, c.url, crate::state::split_hint(e).0)),
        }
    }
    if !connect && problems.is_empty() {
        o.push_str("not connected: add --connect to check that the servers answer\n");
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn the_override_table_is_what_apply_env_reads() {
        let asked = RefCell::new(Vec::new());
        Settings::default().apply_env(|name| {
            asked.borrow_mut().push(name.to_string());
            None
        });
        let mut asked = asked.into_inner();
        asked.sort();
        let mut table: Vec<String> = ENV_OVERRIDES.iter().map(|(name, _)| name.to_string()).collect();
        table.sort();
        assert_eq!(asked, table);
        // Each variable changes the setting the table names, and only it.
        let defaults = provenance(&Settings::default(), &Default::default(), &BTreeMap::new(), false);
        for (name, key) in ENV_OVERRIDES {
            let probe = match *name {
                "TSMIGRATE_REDIS_TLS_INSECURE" => "true",
                "TSMIGRATE_REDIS_WAIT_REPLICAS" => "2",
                "TSMIGRATE_LOG_FORMAT" => "json",
                n if n.ends_with("URL") => "postgres://probe@example.invalid/probe",
                _ => "probe.example:1",
            };
            let mut settings = Settings::default();
            settings.apply_env(|n| (n == *name).then(|| probe.to_string()));
            let changed: Vec<String> = provenance(&settings, &Default::default(), &BTreeMap::new(), false)
                .into_iter()
                .zip(&defaults)
                .filter(|(now, before)| now.value != before.value)
                .map(|(now, _)| now.key)
                .collect();
            assert_eq!(changed, vec![key.to_string()], "{name}");
        }
    }

    #[test]
    fn each_setting_says_where_it_came_from_and_secrets_never_show() {
        let text = "[redis]\nevent_cap = 500\n[jobs.schedules]\nlegacy_flush = \"0 5 * * * *\"\n";
        let mut settings = Settings::from_toml(text).unwrap();
        let env = BTreeMap::from([("DATABASE_URL", "postgres://app:s3cret@db/x".to_string()), ("TSMIGRATE_API_TOKEN", "tok3n".to_string())]);
        settings.apply_env(|n| env.get(n).cloned());
        let shown = provenance(&settings, &file_keys(text), &env, true);
        let get = |key: &str| shown.iter().find(|s| s.key == key).unwrap_or_else(|| panic!("{key} shown"));
        assert_eq!((get("redis.event_cap").source, &get("redis.event_cap").value), ("file", &Value::from(500)));
        assert_eq!(get("jobs.schedules.legacy_flush").source, "file");
        assert_eq!(get("database.url").source, "env");
        assert_eq!(get("database.url").from.as_deref(), Some("DATABASE_URL"));
        assert_eq!(get("database.url").value, Value::from("postgres://app:***@db/x"));
        assert_eq!(get("http.api_token").value, Value::from("***"));
        assert_eq!(get("redis.events_key").source, "default");
        assert_eq!(get("log.format").source, "command line");
        let all = show_text(&FileChoice { path: None, chosen_by: "none" }, &shown);
        assert!(!all.contains("s3cret") && !all.contains("tok3n"), "{all}");
    }
}
