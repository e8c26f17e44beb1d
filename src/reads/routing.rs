//! Which source answers reads, and whether the other is compared (shadow mode): the
//! migration state's `read_source` and `shadow`, remembered for [`ROUTING_REFRESH`].

use std::time::Duration as StdDuration;

use serde::Serialize;
use sqlx::PgPool;

use super::control::load_routing;
use crate::remembered::Remembered;

/// How long the in-process copy of `read_source` / `shadow` is trusted.
pub const ROUTING_REFRESH: StdDuration = StdDuration::from_secs(1);

/// Where reads are answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadSource {
    /// Redis plus the legacy hourly tables and function.
    Legacy,
    /// The target: raw table, aggregates and imported history.
    Target,
}

impl std::fmt::Display for ReadSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ReadSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadSource::Legacy => "legacy",
            ReadSource::Target => "target",
        }
    }

    pub fn parse(s: &str) -> Option<ReadSource> {
        match s {
            "legacy" => Some(ReadSource::Legacy),
            "target" => Some(ReadSource::Target),
            _ => None,
        }
    }

    /// The side shadow mode compares with.
    pub fn other(self) -> ReadSource {
        match self {
            ReadSource::Legacy => ReadSource::Target,
            ReadSource::Target => ReadSource::Legacy,
        }
    }
}

/// Which source answers and whether the other is compared, as the migration state says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routing {
    pub source: ReadSource,
    pub shadow: bool,
}

impl Default for Routing {
    fn default() -> Self {
        Routing { source: ReadSource::Legacy, shadow: false }
    }
}

/// `read_source` and `shadow` from `tsmigrate.migration_state`, read at most once per
/// [`ROUTING_REFRESH`]. When the target cannot be asked, the last known value stays
/// (legacy before anything was known): reads must not fail because the control table did.
pub struct RoutingCache(Remembered<Routing>);

impl Default for RoutingCache {
    fn default() -> Self {
        RoutingCache(Remembered::new(ROUTING_REFRESH))
    }
}

impl RoutingCache {
    pub async fn current(&self, target: Option<&PgPool>) -> Routing {
        let fetch = |last: Option<Routing>| async move {
            let last = last.unwrap_or_default();
            let Some(pool) = target else {
                return Ok::<_, std::convert::Infallible>(Routing::default());
            };
            Ok(match tokio::time::timeout(StdDuration::from_millis(500), load_routing(pool)).await {
                Ok(Ok(Some(routing))) => routing,
                // No state row: nothing is prepared, reads stay legacy.
                Ok(Ok(None)) => Routing::default(),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, source = last.source.as_str(), "cannot read the read source; keeping the last known one");
                    last
                }
                Err(_) => {
                    tracing::warn!(source = last.source.as_str(), "the target did not answer for the read source; keeping the last known one");
                    last
                }
            })
        };
        match self.0.get(fetch).await {
            Ok(routing) => routing,
            Err(never) => match never {},
        }
    }
}
